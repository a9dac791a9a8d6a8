/*
 * timer_fire(ticks_ahead, spins): arm the virtual timer `ticks_ahead` counter ticks from now,
 * unmasked (PSTATE.I stays masked, so no exception is taken: only the output level rises),
 * store its CVAL in timer_fire_cval, spin `spins` times (2 instructions each), then set IMASK
 * (the output falls) and disable it. Returns the counter read after the spin.
 */
    .text
    .global timer_fire
    .type timer_fire, %function
timer_fire:
    isb
    mrs     x2, cntvct_el0
    add     x2, x2, x0
    adrp    x3, timer_fire_cval
    str     x2, [x3, :lo12:timer_fire_cval]
    msr     cntv_cval_el0, x2
    mov     x3, #1                  /* ENABLE */
    msr     cntv_ctl_el0, x3
    .global timer_fire_spin
timer_fire_spin:
1:  subs    x1, x1, #1
    b.ne    1b
    isb
    mrs     x0, cntvct_el0
    mov     x3, #3                  /* ENABLE | IMASK: the output falls */
    .global timer_fire_mask
timer_fire_mask:
    msr     cntv_ctl_el0, x3
    msr     cntv_ctl_el0, xzr
    ret
    .size timer_fire, . - timer_fire
