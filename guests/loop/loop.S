/*
 * Tight loop for speed measurements.
 *
 *   main:       5 instructions before the first loop_body instruction
 *   loop_body:  4 instructions per iteration (add, eor, subs, b.ne), no memory access
 *   loop_end:   the rest of main (stores the result, prints "loop: done", returns 0)
 *
 * Instructions executed from main to loop_end = 5 + 4 * loop_iterations
 * (5 when loop_iterations == 0: cbz skips the loop).
 */
    .section .data
    .balign 8
    .global loop_iterations
    .type loop_iterations, %object
loop_iterations:
    .quad   20000000
    .size loop_iterations, 8
    .global loop_result
    .type loop_result, %object
loop_result:
    .quad   0
    .size loop_result, 8

    .section .untouched, "aw", %nobits
    .balign 4096
    .global idle_page
    .type idle_page, %object
idle_page:
    .skip   4096
    .size idle_page, 4096

    .section .rodata
done_msg: .asciz "loop: done\n"

    .text
    .global main
    .type main, %function
main:
    ldr     x1, =loop_iterations
    ldr     x0, [x1]
    mov     x2, #0
    mov     x3, #0
    cbz     x0, loop_end
    .global loop_body
loop_body:
    add     x2, x2, #1
    eor     x3, x3, x2
    subs    x0, x0, #1
    b.ne    loop_body
    .global loop_end
loop_end:
    ldr     x1, =loop_result
    str     x3, [x1]
    stp     x29, x30, [sp, #-16]!
    mov     x29, sp
    ldr     x0, =done_msg
    bl      uart_puts
    ldp     x29, x30, [sp], #16
    mov     w0, #0
    ret
    .size main, . - main
    .ltorg
