/*
 * run_at_el0(): drop to EL0 at el0_entry; return (at EL1) when EL0 does
 * `svc #1` -- the handler then sets ELR = el0_return, SPSR = EL1h.
 * ctx_work(): small leaf routine called at both EL1 and EL0.
 */
    .text
    .global ctx_work
    .type ctx_work, %function
ctx_work:
    ldr     x1, =ctx_work_calls
    ldr     x0, [x1]
    add     x0, x0, #1
    str     x0, [x1]
    ret
    .size ctx_work, . - ctx_work

    .global run_at_el0
    .type run_at_el0, %function
run_at_el0:
    stp     x29, x30, [sp, #-96]!
    mov     x29, sp
    stp     x19, x20, [sp, #16]
    stp     x21, x22, [sp, #32]
    stp     x23, x24, [sp, #48]
    stp     x25, x26, [sp, #64]
    stp     x27, x28, [sp, #80]
    ldr     x0, =el0_stack_top
    msr     sp_el0, x0
    ldr     x0, =el0_entry
    msr     elr_el1, x0
    mov     x0, #0x3c0             /* EL0t, D, A, I, F masked */
    msr     spsr_el1, x0
    isb
    eret
    .global el0_return
el0_return:                        /* back at EL1h, same SP as at the eret */
    ldp     x19, x20, [sp, #16]
    ldp     x21, x22, [sp, #32]
    ldp     x23, x24, [sp, #48]
    ldp     x25, x26, [sp, #64]
    ldp     x27, x28, [sp, #80]
    ldp     x29, x30, [sp], #96
    ret
    .size run_at_el0, . - run_at_el0

    .global el0_entry
    .type el0_entry, %function
el0_entry:
    bl      ctx_work
    .global el0_svc
el0_svc:
    svc     #1
    b       el0_entry              /* not reached */
    .size el0_entry, . - el0_entry
    .ltorg

    .section .bss
    .balign 16
    .global ctx_work_calls
ctx_work_calls:
    .skip   16
el0_stack:
    .skip   4096
el0_stack_top:
