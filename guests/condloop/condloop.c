/* condloop: bump(i) called for i = 0 .. bump_calls-1, for conditional breakpoints and dprintf
 * (`break bump if $x0 == 77`, `dprintf bump,"n=%d\n",n`). bump_calls is in .data (10000), so a
 * debugger can set it before the loop starts. */
#include <stdint.h>
#include "uart.h"

volatile uint64_t bump_calls = 10000;
volatile uint64_t bump_total;  /* the sum of every n so far */
volatile uint64_t bump_last;   /* the last n */

__attribute__((noinline, noipa)) uint64_t bump(uint64_t n)
{
    bump_last = n;
    bump_total += n;
    return bump_total;
}

int main(void)
{
    uint64_t calls = bump_calls;
    for (uint64_t i = 0; i < calls; i++)
        bump(i);
    uart_puts("condloop: calls=");
    uart_put_dec(calls);
    uart_puts(" total=");
    uart_put_dec(bump_total);
    uart_puts("\n");
    return 0;
}
