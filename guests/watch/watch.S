/*
 * Labelled loads and stores on `wdata` for watchpoint tests.
 * Every acc_* label is the address of exactly one access instruction.
 * x19 holds &wdata throughout.
 */
    .section .data
    .balign 64
    .global wdata
    .type wdata, %object
wdata:
    .fill   64, 1, 0
    .size wdata, 64

    /* A separate page that nothing ever touches. */
    .section .untouched, "aw", %nobits
    .balign 4096
    .global far_page
    .type far_page, %object
far_page:
    .skip   4096
    .size far_page, 4096

    .section .bss
    .balign 16
    .global wload
    .type wload, %object
wload:                         /* values read back by the loads, for gdb */
    .skip   64
    .size wload, 64

    .section .rodata
hdr:    .asciz "watch: start\n"
lbl:    .asciz "wdata: "
done:   .asciz "watch: done\n"

    .text
    .global main
    .type main, %function
main:
    stp     x29, x30, [sp, #-32]!
    mov     x29, sp
    stp     x19, x20, [sp, #16]
    ldr     x0, =hdr
    bl      uart_puts

    ldr     x19, =wdata
    mov     w1, #0x11
    mov     w2, #0x2222
    ldr     w3, =0x33333333
    ldr     x4, =0x4444444444444444
    ldr     x5, =0x5555555555555555
    ldr     x6, =0x6666666666666666
    ldr     x7, =0x7777777777777777
    ldr     x8, =0x9999999999999999
    ldr     x9, =0x8888888888888888
    fmov    d0, x8
    mov     v0.d[1], x9           /* q0 = 0x8888..._9999... */

    .global acc_strb
acc_strb:
    strb    w1, [x19, #1]
    .global acc_strh
acc_strh:
    strh    w2, [x19, #2]
    .global acc_str_w
acc_str_w:
    str     w3, [x19, #4]
    .global acc_str_x
acc_str_x:
    str     x4, [x19, #8]
    .global acc_str_unaligned
acc_str_unaligned:
    str     x5, [x19, #0x13]      /* bytes 0x13..0x1a: crosses a doubleword */
    .global acc_stp
acc_stp:
    stp     x6, x7, [x19, #0x20]
    .global acc_str_q
acc_str_q:
    str     q0, [x19, #0x30]

    .global acc_ldrb
acc_ldrb:
    ldrb    w10, [x19, #1]
    .global acc_ldr_x
acc_ldr_x:
    ldr     x11, [x19, #8]
    .global acc_ldp
acc_ldp:
    ldp     x12, x13, [x19, #0x20]
    .global acc_ldr_q
acc_ldr_q:
    ldr     q1, [x19, #0x30]
    .global acc_end
acc_end:
    ldr     x20, =wload
    str     x10, [x20, #0]
    str     x11, [x20, #8]
    stp     x12, x13, [x20, #16]
    str     q1, [x20, #32]

    ldr     x0, =lbl
    bl      uart_puts
    mov     x20, #0
1:  ldrb    w0, [x19, x20]
    bl      put_byte_hex
    add     x20, x20, #1
    cmp     x20, #64
    b.lo    1b
    mov     w0, #'\n'
    bl      uart_putc
    ldr     x0, =done
    bl      uart_puts

    mov     w0, #0
    ldp     x19, x20, [sp, #16]
    ldp     x29, x30, [sp], #32
    ret
    .size main, . - main

    /* put_byte_hex(w0): two lowercase hex digits */
    .type put_byte_hex, %function
put_byte_hex:
    stp     x29, x30, [sp, #-32]!
    mov     x29, sp
    str     x19, [sp, #16]
    and     w19, w0, #0xff
    lsr     w0, w19, #4
    bl      hexdigit
    bl      uart_putc
    and     w0, w19, #0xf
    bl      hexdigit
    bl      uart_putc
    ldr     x19, [sp, #16]
    ldp     x29, x30, [sp], #32
    ret
    .size put_byte_hex, . - put_byte_hex

hexdigit:
    cmp     w0, #10
    add     w1, w0, #'0'
    add     w2, w0, #('a' - 10)
    csel    w0, w1, w2, lo
    ret
    .ltorg
