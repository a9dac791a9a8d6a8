/*
 * Boots from ROM/flash at 0x0 (qemu: -bios rom_boot.bin).
 *  1. SP in RAM
 *  2. store a word to rom_data (in ROM) and read it back
 *  3. copy ram_routine to ram_code (RAM) and call it
 *  4. semihosting SYS_EXIT(ApplicationExit, 0)
 */
#define UART_BASE 0x09000000
#define ROM_WRITE_VALUE 0xdeadbeef

    .section .text.boot, "ax"
    .global _start
    .type _start, %function
_start:
    ldr     x0, =rom_stack_top
    mov     sp, x0
    adr     x0, msg_start
    bl      rom_puts

    ldr     x19, =rom_data
    ldr     w20, [x19]              /* original value */
    ldr     w1, =ROM_WRITE_VALUE
    .global rom_store
rom_store:
    str     w1, [x19]
    dsb     sy
    ldr     w21, [x19]              /* read back */
    cmp     w21, w20
    adr     x0, msg_ignored
    adr     x1, msg_took
    csel    x0, x0, x1, eq
    bl      rom_puts

    /* copy ram_routine .. ram_routine_end to ram_code */
    adr     x1, ram_routine
    adr     x2, ram_routine_end
    ldr     x3, =ram_code
    mov     x4, x3
1:  ldr     w5, [x1], #4
    str     w5, [x4], #4
    cmp     x1, x2
    b.lo    1b
    dsb     ish
    ic      iallu
    dsb     ish
    isb
    blr     x3

    adr     x0, msg_done
    bl      rom_puts
    mov     w0, #0x18               /* SYS_EXIT */
    adr     x1, exit_block
    hlt     #0xf000
2:  wfi
    b       2b
    .size _start, . - _start

    /* rom_puts(x0 = string); clobbers x0-x2 */
    .type rom_puts, %function
rom_puts:
    mov     x1, #UART_BASE
3:  ldrb    w2, [x0], #1
    cbz     w2, 5f
4:  ldr     w3, [x1, #0x18]
    tbnz    w3, #5, 4b
    str     w2, [x1]
    b       3b
5:  ret
    .size rom_puts, . - rom_puts

    /* Position-independent: runs from RAM after the copy. */
    .balign 4
    .global ram_routine, ram_routine_end
    .type ram_routine, %function
ram_routine:
    adr     x0, ram_msg
    mov     x1, #UART_BASE
6:  ldrb    w2, [x0], #1
    cbz     w2, 8f
7:  ldr     w3, [x1, #0x18]
    tbnz    w3, #5, 7b
    str     w2, [x1]
    b       6b
8:  ret
ram_msg:
    .asciz  "ram routine ran\n"
    .balign 4
ram_routine_end:
    .size ram_routine, . - ram_routine

    .ltorg

    .section .rodata
    .balign 8
    .global rom_data
    .type rom_data, %object
rom_data:
    .word   0x600dc0de
    .word   0
    .size rom_data, 8
exit_block:
    .quad   0x20026, 0
msg_start:   .asciz "rom_boot: start\n"
msg_ignored: .asciz "rom write ignored\n"
msg_took:    .asciz "rom write took effect\n"
msg_done:    .asciz "rom_boot: done\n"
