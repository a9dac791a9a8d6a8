/*
 * clock: the generic timer's counter as the guest sees it. Prints CNTFRQ_EL0 and the counter
 * at four fixed points (see clock_asm.S). Under guestdbg's deterministic clock the values are
 * the same in every run; under QEMU or `--clock host` they follow the host's time.
 */
#include <stdint.h>
#include "uart.h"

void counter_samples(uint64_t out[4]);
uint64_t clock_samples[4];

int main(void)
{
    uint64_t frq;
    __asm__ volatile("mrs %0, cntfrq_el0" : "=r"(frq));
    counter_samples(clock_samples);
    uart_puts("clock: cntfrq ");
    uart_put_dec(frq);
    for (int i = 0; i < 4; i++) {
        uart_puts(i ? " " : " samples ");
        uart_put_dec(clock_samples[i]);
    }
    uart_puts("\n");
    /* The counter never goes backwards. */
    for (int i = 1; i < 4; i++)
        if (clock_samples[i] < clock_samples[i - 1])
            return 1;
    return 0;
}
