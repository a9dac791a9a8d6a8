/* _start: EL1 entry for guests loaded with -kernel. */
    .section .text.boot, "ax"
    .global _start
    .type _start, %function
_start:
    msr     spsel, #1
    ldr     x0, =__stack_top
    mov     sp, x0
    /* CPACR_EL1.FPEN = 0b11: no FP/SIMD traps at EL0/EL1 */
    mov     x0, #(3 << 20)
    msr     cpacr_el1, x0
    isb
    ldr     x0, =vectors
    msr     vbar_el1, x0
    isb
    /* zero .bss (16-byte aligned bounds) */
    ldr     x0, =__bss_start
    ldr     x1, =__bss_end
1:  cmp     x0, x1
    b.hs    2f
    stp     xzr, xzr, [x0], #16
    b       1b
2:  mov     x29, #0
    mov     x30, #0
    bl      main
    .global _start_main_returned
_start_main_returned:
    /* w0 = main's return value -> semihosting SYS_EXIT(ApplicationExit, w0) */
    bl      sys_exit
3:  wfi
    b       3b
    .size _start, . - _start
    .ltorg
