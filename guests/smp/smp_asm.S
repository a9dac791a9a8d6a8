/*
 * smp: the secondary CPUs' entry point (PSCI CPU_ON's entry, context_id = the CPU's index in
 * x0) and the spinlock (LDAXR/STLXR acquire, STLR release), which waits for the lock in WFE as
 * Linux's arm64 spinlocks did before qspinlock: the release's store to the lock clears the
 * waiter's exclusive monitor, an event that ends its WFE (no SEV needed).
 *
 * A secondary starts at EL1h with the MMU off and DAIF masked, as QEMU's virt powers it on:
 * it takes its own 4 KiB stack from smp_stacks (CPU i: the i-th slot; CPU 0 keeps the common
 * runtime's stack), points VBAR_EL1 at the common vectors and calls secondary_main(cpu).
 */
    .text
    .global secondary_entry
    .type secondary_entry, %function
secondary_entry:
    msr     spsel, #1
    ldr     x1, =smp_stacks
    add     x2, x0, #1
    lsl     x2, x2, #12
    add     sp, x1, x2
    mov     x1, #(3 << 20)
    msr     cpacr_el1, x1
    isb
    ldr     x1, =vectors
    msr     vbar_el1, x1
    isb
    mov     x29, #0
    mov     x30, #0
    bl      secondary_main
1:  wfi
    b       1b
    .size secondary_entry, . - secondary_entry

    .global spin_lock, spin_lock_retry
    .type spin_lock, %function
spin_lock:                      /* x0 = &lock (u32): 0 free, 1 taken */
    mov     w2, #1
    sevl                            /* the first WFE falls through */
spin_lock_wait:
    wfe
spin_lock_retry:
    ldaxr   w1, [x0]
    cbnz    w1, spin_lock_wait      /* taken: wait for an event (the holder's release) */
    stlxr   w1, w2, [x0]
    cbnz    w1, spin_lock_retry
    ret
    .size spin_lock, . - spin_lock

    .global atomic_inc
    .type atomic_inc, %function
atomic_inc:                     /* x0 = &counter (u32) */
    ldxr    w1, [x0]
    add     w1, w1, #1
    stxr    w2, w1, [x0]
    cbnz    w2, atomic_inc
    ret
    .size atomic_inc, . - atomic_inc

    .global spin_unlock
    .type spin_unlock, %function
spin_unlock:
    stlr    wzr, [x0]
    ret
    .size spin_unlock, . - spin_unlock

    .ltorg

    .bss
    .balign 16
    .global smp_stacks
smp_stacks:
    .fill   8 * 4096, 1, 0
