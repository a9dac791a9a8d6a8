/*
 * counter_samples(out): CNTVCT_EL0 read at four fixed points in the instruction stream, with
 * known-length loops between them, into out[0..3]. Under guestdbg's virtual clock (one tick per
 * 16 instructions retired) the values depend on nothing but the instructions before them.
 * The labels mark the reads, so a debugger can stop on them.
 */
    .text
    .global counter_samples
    .type counter_samples, %function
counter_samples:
    mov     x2, #1000
    .global clock_read0
clock_read0:
    mrs     x1, cntvct_el0
    str     x1, [x0]
1:  subs    x2, x2, #1             /* 2 instructions x 1000 */
    b.ne    1b
    .global clock_read1
clock_read1:
    mrs     x1, cntvct_el0
    str     x1, [x0, #8]
    mov     x2, #50000
2:  subs    x2, x2, #1
    b.ne    2b
    .global clock_read2
clock_read2:
    mrs     x1, cntpct_el0         /* the physical count: the same clock here (CNTVOFF = 0) */
    str     x1, [x0, #16]
    mov     x2, #7
3:  subs    x2, x2, #1
    b.ne    3b
    .global clock_read3
clock_read3:
    mrs     x1, cntvct_el0
    str     x1, [x0, #24]
    ret
    .size counter_samples, . - counter_samples
