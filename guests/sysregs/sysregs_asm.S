/*
 * sysregs_spin(n, buf): n iterations of a loop dominated by MRS/MSR of system registers the
 * VMM does not model (SP_EL0, TPIDR_EL1, DAIF, CTR_EL0, CONTEXTIDR_EL1), mixed with loads,
 * stores and ALU work: 36 instructions per iteration, 9 of them MRS/MSR (1 in 4), 4 of those
 * MSRs (each ends a translation block in QEMU/Unicorn). Returns a checksum of everything it
 * read, which depends only on n (no counter or timer is read).
 *
 * On return: TPIDR_EL1 = TPIDR_SEED + n(n+1)/2, CONTEXTIDR_EL1 = CTXID_SEED + n (32 bits),
 * DAIF = 0x3c0 with D toggled n times, SP_EL0 = whatever the loop left; main checks the first
 * three. Must run at EL1 with SPSel = 1 (SP_EL0 is not the live stack pointer).
 *
 * Instructions executed by one call = 16 (up to the cbz) + 36 * n + 2 (eor, ret).
 * buf: 17 u64 words (16 indexed by the iteration's low bits, word 16 a running sum).
 */
    .set TPIDR_SEED, 0x0123456789abcdef    /* keep in step with sysregs.c */
    .set SP_EL0_SEED, 0x00f0e1d2c3b4a596
    .set CTXID_SEED, 0x1000

    .text
    .global sysregs_spin
    .type sysregs_spin, %function
sysregs_spin:
    mov     x9, x0                 /* iterations left */
    ldr     x2, =TPIDR_SEED
    msr     tpidr_el1, x2
    ldr     x2, =SP_EL0_SEED
    msr     sp_el0, x2
    mov     x2, #0x3c0             /* D, A, I, F masked */
    msr     daif, x2
    mov     x2, #CTXID_SEED
    msr     contextidr_el1, x2
    mov     x10, #0x5a5a           /* checksum */
    mov     x12, #0
    isb
    mov     x13, #0
    mov     x14, #0
    mov     x15, #0
    cbz     x9, 2f
1:  mrs     x2, tpidr_el1          /*  1 S */
    add     x2, x2, x9
    msr     tpidr_el1, x2          /*  3 S */
    and     x3, x9, #15
    ldr     x4, [x1, x3, lsl #3]   /*  5 load */
    eor     x4, x4, x2, ror #17
    add     x4, x4, x10
    str     x4, [x1, x3, lsl #3]   /*  8 store */
    mrs     x5, sp_el0             /*  9 S */
    add     x5, x5, x4
    eor     x5, x5, x9
    msr     sp_el0, x5             /* 12 S */
    mrs     x6, ctr_el0            /* 13 S (read-only) */
    eor     x10, x10, x5, ror #9
    add     x10, x10, x6
    mrs     x7, daif               /* 16 S */
    eor     x7, x7, #0x200         /* toggle D (no debug event is ever pending) */
    msr     daif, x7               /* 18 S */
    add     x10, x10, x7
    ldr     x8, [x1, #128]         /* 20 load */
    add     x8, x8, x10, lsr #3
    str     x8, [x1, #128]         /* 22 store */
    mrs     x11, contextidr_el1    /* 23 S */
    add     w11, w11, #1
    msr     contextidr_el1, x11    /* 25 S */
    eor     x10, x10, x11
    eor     x10, x10, x8, ror #29
    extr    x10, x10, x10, #63     /* rotate left by 1 */
    add     x12, x12, x10
    eor     x13, x13, x12, lsr #5
    add     x14, x14, x13
    sub     x15, x15, x4
    eor     x10, x10, x14
    add     x10, x10, x15
    subs    x9, x9, #1
    b.ne    1b                     /* 36 */
2:  eor     x0, x10, x12
    ret
    .size sysregs_spin, . - sysregs_spin
    .ltorg
