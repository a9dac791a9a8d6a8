/*
 * EL1 vector table: 16 entries of 0x80 bytes, 2 KiB aligned.
 * Each entry builds a struct exc_frame (see exc.h) on the current SP
 * and calls exception_handler(frame, vector).  ELR_EL1 and SPSR_EL1 are
 * reloaded from the frame, so handlers may change them.
 */
#define FRAME_SIZE 0x120

    .macro VENTRY n
    .balign 0x80
    sub     sp, sp, #FRAME_SIZE
    stp     x0, x1, [sp, #0x00]
    mov     x1, #\n
    b       exc_common
    .endm

    .section .vectors, "ax"
    .balign 2048
    .global vectors
vectors:
    VENTRY 0
    VENTRY 1
    VENTRY 2
    VENTRY 3
    VENTRY 4
    VENTRY 5
    VENTRY 6
    VENTRY 7
    VENTRY 8
    VENTRY 9
    VENTRY 10
    VENTRY 11
    VENTRY 12
    VENTRY 13
    VENTRY 14
    VENTRY 15
    .balign 0x80
    .global vectors_end
vectors_end:

    .text
    .type exc_common, %function
exc_common:
    stp     x2, x3, [sp, #0x10]
    stp     x4, x5, [sp, #0x20]
    stp     x6, x7, [sp, #0x30]
    stp     x8, x9, [sp, #0x40]
    stp     x10, x11, [sp, #0x50]
    stp     x12, x13, [sp, #0x60]
    stp     x14, x15, [sp, #0x70]
    stp     x16, x17, [sp, #0x80]
    stp     x18, x19, [sp, #0x90]
    stp     x20, x21, [sp, #0xa0]
    stp     x22, x23, [sp, #0xb0]
    stp     x24, x25, [sp, #0xc0]
    stp     x26, x27, [sp, #0xd0]
    stp     x28, x29, [sp, #0xe0]
    mrs     x2, elr_el1
    stp     x30, x2, [sp, #0xf0]
    mrs     x3, spsr_el1
    mrs     x4, esr_el1
    stp     x3, x4, [sp, #0x100]
    mrs     x5, far_el1
    stp     x5, xzr, [sp, #0x110]
    mov     x0, sp
    bl      exception_handler
    ldp     x30, x2, [sp, #0xf0]
    msr     elr_el1, x2
    ldr     x3, [sp, #0x100]
    msr     spsr_el1, x3
    ldp     x2, x3, [sp, #0x10]
    ldp     x4, x5, [sp, #0x20]
    ldp     x6, x7, [sp, #0x30]
    ldp     x8, x9, [sp, #0x40]
    ldp     x10, x11, [sp, #0x50]
    ldp     x12, x13, [sp, #0x60]
    ldp     x14, x15, [sp, #0x70]
    ldp     x16, x17, [sp, #0x80]
    ldp     x18, x19, [sp, #0x90]
    ldp     x20, x21, [sp, #0xa0]
    ldp     x22, x23, [sp, #0xb0]
    ldp     x24, x25, [sp, #0xc0]
    ldp     x26, x27, [sp, #0xd0]
    ldp     x28, x29, [sp, #0xe0]
    ldp     x0, x1, [sp, #0x00]
    add     sp, sp, #FRAME_SIZE
    eret
    .size exc_common, . - exc_common
