/*
 * history: a guest for reverse execution. The virtual timer interrupts every TICK_PERIOD
 * counter ticks while main runs `rounds` rounds of mix(i); the handler counts `ticks`, which
 * mix() folds into `state`, so where each interrupt lands changes what the guest computes.
 * Every round writes `last_i`; every 16th round appends `state` to `trail`. A replay that put
 * one interrupt one instruction late would print another checksum.
 * Prints the checksum and the interrupt count (the same in every run under the deterministic
 * clock) and exits 0.
 */
#include <stdint.h>
#include "exc.h"
#include "uart.h"

#define GICD 0x08000000UL
#define GICC 0x08010000UL
#define MMIO32(a) (*(volatile uint32_t *)(a))
#define VTIMER_INTID 27
#define TICK_PERIOD 100 /* counter ticks: 1600 instructions */

#define READ(name) ({ uint64_t v_; __asm__ volatile("mrs %0, " #name : "=r"(v_) :: "memory"); v_; })
#define WRITE(name, v) __asm__ volatile("msr " #name ", %0\n\tisb" :: "r"((uint64_t)(v)) : "memory")

volatile uint64_t rounds = 3000;
volatile uint64_t state = 1, last_i, ticks;
volatile uint64_t trail[256];

void exception_handler(struct exc_frame *f, unsigned vector)
{
    if (vector != VEC_CUR_SPX_IRQ)
        default_exception_report(f, vector);
    uint32_t iar = MMIO32(GICC + 0x0C);            /* GICC_IAR */
    if ((iar & 0x3ff) == VTIMER_INTID) {
        ticks++;
        WRITE(cntv_cval_el0, READ(cntv_cval_el0) + TICK_PERIOD);
    }
    MMIO32(GICC + 0x10) = iar;                    /* GICC_EOIR */
}

__attribute__((noinline, noipa)) uint64_t mix(uint64_t i)
{
    uint64_t s = state * 6364136223846793005ull + i + ticks;
    state = s;
    last_i = i;
    return s >> 33;
}

int main(void)
{
    MMIO32(GICD + 0x000) = 1;                     /* GICD_CTLR */
    MMIO32(GICD + 0x100) = 1u << VTIMER_INTID;    /* GICD_ISENABLER0 */
    MMIO32(GICC + 0x004) = 0xff;                  /* GICC_PMR */
    MMIO32(GICC + 0x000) = 1;                     /* GICC_CTLR */
    WRITE(cntv_cval_el0, READ(cntvct_el0) + TICK_PERIOD);
    WRITE(cntv_ctl_el0, 1);                       /* ENABLE */
    __asm__ volatile("msr daifclr, #2" ::: "memory");
    uint64_t acc = 0;
    for (uint64_t i = 0; i < rounds; i++) {
        acc ^= mix(i);
        if (i % 16 == 0)
            trail[(i / 16) % 256] = state;
    }
    __asm__ volatile("msr daifset, #2" ::: "memory");
    WRITE(cntv_ctl_el0, 0);
    uart_puts("history: ");
    uart_put_hex(acc);
    uart_puts(" ticks ");
    uart_put_dec(ticks);
    uart_puts("\n");
    return 0;
}
