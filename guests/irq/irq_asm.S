/*
 * The two places the irq guest lets IRQs in, with labels the tests check ELR_EL1 against.
 *
 * irq_unmask_window(): unmask IRQs for one instruction. A pending IRQ is taken right after
 * `msr daifclr` (QEMU and guestdbg re-evaluate interrupts there), so ELR_EL1 = irq_after_unmask.
 *
 * irq_spin_until(count_ptr, n): unmask IRQs and spin until *count_ptr >= n, then mask again.
 * An IRQ taken while spinning has ELR_EL1 in [irq_spin_loop, irq_spin_end).
 */
    .text
    .global irq_unmask_window, irq_after_unmask
    .type irq_unmask_window, %function
irq_unmask_window:
    msr     daifclr, #2
irq_after_unmask:
    nop
    msr     daifset, #2
    ret
    .size irq_unmask_window, . - irq_unmask_window

    .global irq_spin_until, irq_spin_loop, irq_spin_end
    .type irq_spin_until, %function
irq_spin_until:
    msr     daifclr, #2
irq_spin_loop:
    ldr     w2, [x0]
    cmp     w2, w1
    b.lo    irq_spin_loop
irq_spin_end:
    msr     daifset, #2
    ret
    .size irq_spin_until, . - irq_spin_until
