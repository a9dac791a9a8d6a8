/*
 * timer: the EL1 generic timers as the guest sees them (guestdbg's emulated CNTV_* / CNTP_*).
 *
 * 1. Register semantics of both timers, checked by the guest itself: CVAL reads back, CTL's
 *    ISTATUS is read-only and reads 0 while disabled, TVAL reads CVAL - count as a signed
 *    32-bit value and a write sets CVAL = count + TVAL.
 * 2. ISTATUS sets exactly when the counter reaches CVAL (polled with the timer masked).
 * 3. timer_fire(): the virtual timer's output goes high with IRQs masked in PSTATE (the VMM
 *    sees the level change), then low again when the guest sets IMASK.
 * 4. WFI with the virtual timer `timer_wfi_ticks` ahead (10 s of guest time by default): under
 *    the deterministic clock the counter skips ahead; with `--clock host` the vCPU sleeps.
 *    Then the same with the physical timer, 1000 ticks ahead. The GIC forwards the timers'
 *    PPIs (27, 30) to the CPU interface, which is what wakes a WFI (IRQs stay masked in PSTATE,
 *    so none is taken: the architecture wakes WFI on a pending IRQ whatever PSTATE.I says).
 * 5. The virtual timer's IRQ taken at VBAR_EL1 + 0x280 (IRQs unmasked), acknowledged and ended
 *    at the GIC; the handler masks the timer.
 * Prints the counter values it saw (the same in every run under the deterministic clock);
 * exit status 0 when every check passed, else the number of failed checks.
 */
#include <stdint.h>
#include "exc.h"
#include "uart.h"

#define GICD 0x08000000UL
#define GICC 0x08010000UL
#define MMIO32(a) (*(volatile uint32_t *)(a))
#define VTIMER_INTID 27
#define PTIMER_INTID 30

#define CTL_ENABLE  1u
#define CTL_IMASK   2u
#define CTL_ISTATUS 4u

#define READ(name) ({ uint64_t v_; __asm__ volatile("mrs %0, " #name : "=r"(v_) :: "memory"); v_; })
#define WRITE(name, v) __asm__ volatile("msr " #name ", %0\n\tisb" :: "r"((uint64_t)(v)) : "memory")

volatile uint64_t timer_wfi_ticks = 625000000; /* 10 s at 62.5 MHz; a test may shrink it */
uint64_t timer_fire_cval;
uint64_t timer_fire(uint64_t ticks_ahead, uint64_t spins);

static int failures;
static volatile uint64_t irqs_taken, irq_iar, irq_count_at;

void exception_handler(struct exc_frame *f, unsigned vector)
{
    if (vector != VEC_CUR_SPX_IRQ)
        default_exception_report(f, vector);
    uint32_t iar = MMIO32(GICC + 0x0C);           /* GICC_IAR */
    irq_count_at = READ(cntvct_el0);
    if ((iar & 0x3ff) == VTIMER_INTID)
        WRITE(cntv_ctl_el0, 3);                  /* ENABLE | IMASK: the line falls */
    irq_iar = iar;
    irqs_taken++;
    MMIO32(GICC + 0x10) = iar;                   /* GICC_EOIR */
}

static void gic_init(void)
{
    MMIO32(GICD + 0x000) = 1;                    /* GICD_CTLR: forward group 0 */
    MMIO32(GICD + 0x100) = (1u << VTIMER_INTID) | (1u << PTIMER_INTID); /* GICD_ISENABLER0 */
    MMIO32(GICC + 0x004) = 0xff;                 /* GICC_PMR: every priority */
    MMIO32(GICC + 0x000) = 1;                    /* GICC_CTLR: signal group 0 */
}

static void check(int ok, const char *what)
{
    if (!ok) {
        failures++;
        uart_puts("timer: FAILED ");
        uart_puts(what);
        uart_puts("\n");
    }
}

static uint64_t count(void) { __asm__ volatile("isb" ::: "memory"); return READ(cntvct_el0); }

#define SEMANTICS(T)                                                                        \
    do {                                                                                    \
        WRITE(cnt##T##_ctl_el0, 0);                                                         \
        WRITE(cnt##T##_cval_el0, 0x123456789abcULL);                                        \
        check(READ(cnt##T##_cval_el0) == 0x123456789abcULL, #T " cval reads back");         \
        check(READ(cnt##T##_ctl_el0) == 0, #T " ctl disabled");                             \
        WRITE(cnt##T##_ctl_el0, CTL_ENABLE | CTL_IMASK | CTL_ISTATUS);                      \
        check(READ(cnt##T##_ctl_el0) == (CTL_ENABLE | CTL_IMASK), #T " istatus read-only"); \
        uint64_t before = count();                                                          \
        WRITE(cnt##T##_tval_el0, 100000);                                                   \
        uint64_t after = count();                                                           \
        uint64_t cval = READ(cnt##T##_cval_el0);                                            \
        check(cval >= before + 100000 && cval <= after + 100000, #T " tval write");         \
        int32_t tval = (int32_t)READ(cnt##T##_tval_el0);                                    \
        check(tval > 0 && tval <= 100000, #T " tval read");                                 \
        WRITE(cnt##T##_tval_el0, (uint32_t)-5);                                             \
        check(READ(cnt##T##_ctl_el0) == (CTL_ENABLE | CTL_IMASK | CTL_ISTATUS),             \
              #T " istatus when past");                                                     \
        check((int32_t)READ(cnt##T##_tval_el0) <= -5, #T " tval negative");                 \
        WRITE(cnt##T##_ctl_el0, CTL_IMASK);                                                 \
        check(READ(cnt##T##_ctl_el0) == CTL_IMASK, #T " istatus 0 while disabled");         \
        WRITE(cnt##T##_ctl_el0, 0);                                                         \
    } while (0)

int main(void)
{
    while (count() < 1000)  /* so that CVAL = count - 5 below does not wrap */
        ;
    SEMANTICS(v);
    SEMANTICS(p);
    gic_init();

    /* 2. ISTATUS edge: a count read before a CTL read without ISTATUS is < CVAL; a count read
     * after a CTL read with ISTATUS is >= CVAL. */
    uint64_t cval = count() + 50;
    WRITE(cntv_cval_el0, cval);
    WRITE(cntv_ctl_el0, CTL_ENABLE | CTL_IMASK);
    for (;;) {
        uint64_t c0 = count();
        uint64_t ctl = READ(cntv_ctl_el0);
        uint64_t c1 = count();
        if (ctl & CTL_ISTATUS) {
            check(c1 >= cval, "istatus only once the count reached cval");
            break;
        }
        check(c0 < cval, "istatus as soon as the count reached cval");
    }
    WRITE(cntv_ctl_el0, 0);

    /* 3. The output level, seen by the VMM. */
    uint64_t fired = timer_fire(100, 10000);
    uart_puts("timer: fire cval ");
    uart_put_dec(timer_fire_cval);
    uart_puts(" seen at ");
    uart_put_dec(fired);
    uart_puts("\n");
    check(fired >= timer_fire_cval, "fire");

    /* 4. WFI until the virtual timer fires, then until the physical one does. */
    uint64_t start = count();
    cval = start + timer_wfi_ticks;
    WRITE(cntv_cval_el0, cval);
    WRITE(cntv_ctl_el0, CTL_ENABLE);
    while (!(READ(cntv_ctl_el0) & CTL_ISTATUS))
        __asm__ volatile("wfi" ::: "memory");
    uint64_t woke = count();
    WRITE(cntv_ctl_el0, 0);
    check(woke >= cval, "vtimer wfi woke early");
    uart_puts("timer: wfi from ");
    uart_put_dec(start);
    uart_puts(" woke at ");
    uart_put_dec(woke);
    uart_puts("\n");

    cval = count() + 1000;
    WRITE(cntp_cval_el0, cval);
    WRITE(cntp_ctl_el0, CTL_ENABLE);
    while (!(READ(cntp_ctl_el0) & CTL_ISTATUS))
        __asm__ volatile("wfi" ::: "memory");
    woke = count();
    WRITE(cntp_ctl_el0, 0);
    check(woke >= cval, "ptimer wfi woke early");
    uart_puts("timer: ptimer woke at ");
    uart_put_dec(woke);
    uart_puts("\n");

    /* 5. The virtual timer's IRQ, taken. */
    cval = count() + 1000;
    WRITE(cntv_cval_el0, cval);
    WRITE(cntv_ctl_el0, CTL_ENABLE);
    __asm__ volatile("msr daifclr, #2" ::: "memory");
    while (!irqs_taken)
        __asm__ volatile("wfi" ::: "memory");
    __asm__ volatile("msr daifset, #2" ::: "memory");
    WRITE(cntv_ctl_el0, 0);
    check(irqs_taken == 1 && (irq_iar & 0x3ff) == VTIMER_INTID, "one vtimer irq");
    check(irq_count_at >= cval, "irq before cval");
    uart_puts("timer: irq ");
    uart_put_dec(irq_iar & 0x3ff);
    uart_puts(" taken at ");
    uart_put_dec(irq_count_at);
    uart_puts(failures ? " FAILED\n" : " ok\n");
    return failures;
}
