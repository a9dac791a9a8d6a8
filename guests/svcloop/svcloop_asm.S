/*
 * svc_ping_pong(n): n round trips EL0 -> `svc #0` -> EL1 -> `eret` -> EL0, with system-register
 * reads and writes on both sides, as a kernel's syscall path does (SP_EL0, TPIDR_EL1, TPIDR_EL0).
 * Every step folds into x20 (a checksum) and x22 (a round-trip counter), so an instruction
 * executed twice or skipped by the VMM changes the result: the run-loop corruption reproducer.
 * (Unicorn 2.1.4 resumed a stopped emu_start from the PC its last MRS/MSR hook synced, once a
 * hook had written PC; the inner loop after `mrs x21, sp_el0` gives that stop many chained
 * block starts to land on, each of which then re-ran the `add x22`.)
 * Returns the checksum; the counter is left in svc_round_trips.
 */
    .text
    .global svc_ping_pong
    .type svc_ping_pong, %function
svc_ping_pong:
    stp     x29, x30, [sp, #-64]!
    mov     x29, sp
    stp     x19, x20, [sp, #16]
    stp     x21, x22, [sp, #32]
    stp     x23, x24, [sp, #48]
    mrs     x1, vbar_el1
    ldr     x2, =saved_vbar
    str     x1, [x2]
    ldr     x1, =pp_vectors
    msr     vbar_el1, x1
    mov     x1, sp
    ldr     x2, =saved_sp
    str     x1, [x2]
    mov     x19, x0                /* round trips left */
    mov     x20, #0x1234           /* checksum */
    mov     x21, #0
    mov     x22, #0                /* round trips done */
    ldr     x0, =pp_el0_stack_top
    msr     sp_el0, x0
    ldr     x0, =pp_el0
    msr     elr_el1, x0
    mov     x0, #0x3c0             /* EL0t, DAIF masked */
    msr     spsr_el1, x0
    isb
    eret

pp_el0:                            /* EL0: work, then a system call */
    cbz     x19, pp_el0_done
    mrs     x0, tpidr_el0
    add     x0, x0, x22
    msr     tpidr_el0, x0
    eor     x20, x20, x0, ror #7
    add     x20, x20, x21
    ldr     x1, [sp]
    add     x1, x1, #1
    str     x1, [sp]
    sub     x19, x19, #1
    svc     #0
    b       pp_el0
pp_el0_done:
    svc     #1

pp_el1_sync:                       /* EL1: the "kernel" side of the call */
    mrs     x23, esr_el1
    lsr     x24, x23, #26
    cmp     x24, #0x15             /* SVC64 */
    b.ne    pp_unexpected
    and     x23, x23, #0xffff
    cbnz    x23, pp_back_to_el1
    mrs     x21, sp_el0
    add     x22, x22, #1
    mov     x24, #16               /* chained blocks after an MRS: a stale-PC resume re-runs the add */
1:  add     x20, x20, x24
    subs    x24, x24, #1
    b.ne    1b
    mrs     x24, tpidr_el1
    add     x24, x24, x21
    msr     tpidr_el1, x24
    eor     x21, x21, x24
    eret
pp_back_to_el1:                    /* svc #1: the loop is over; return to our caller at EL1 */
    ldr     x0, =saved_vbar
    ldr     x0, [x0]
    msr     vbar_el1, x0
    ldr     x0, =pp_return
    msr     elr_el1, x0
    mov     x0, #0x3c5             /* EL1h, DAIF masked */
    msr     spsr_el1, x0
    eret
pp_return:
    ldr     x1, =saved_sp
    ldr     x1, [x1]
    mov     sp, x1
    ldr     x0, =svc_round_trips
    str     x22, [x0]
    mov     x0, x20
    ldp     x23, x24, [sp, #48]
    ldp     x21, x22, [sp, #32]
    ldp     x19, x20, [sp, #16]
    ldp     x29, x30, [sp], #64
    ret
pp_unexpected:
    hlt     #0xf000 - 1            /* undefined for guestdbg: an unhandled exception is reported */
    b       .
    .size svc_ping_pong, . - svc_ping_pong
    .ltorg

    .section .vectors, "ax"
    .balign 2048
pp_vectors:
    .rept 8
    .balign 0x80
    b       pp_unexpected
    .endr
    .balign 0x80                   /* 0x400: lower EL, AArch64, synchronous */
    b       pp_el1_sync
    .rept 7
    .balign 0x80
    b       pp_unexpected
    .endr

    .section .bss
    .balign 16
saved_vbar: .skip 8
saved_sp:   .skip 8
    .global svc_round_trips
svc_round_trips: .skip 8
    .balign 16
pp_el0_stack: .skip 4096
pp_el0_stack_top:
