/* bp_a/bp_b/bp_c called 3 times each, then the counts are printed. */
#include "runtime.h"

volatile unsigned bp_a_count, bp_b_count, bp_c_count;

__attribute__((noinline, noipa)) void bp_a(void) { bp_a_count++; }
__attribute__((noinline, noipa)) void bp_b(void) { bp_b_count++; }
__attribute__((noinline, noipa)) void bp_c(void) { bp_c_count++; }

int main(void)
{
    for (int i = 0; i < 3; i++) {
        bp_a();
        bp_b();
        bp_c();
    }
    uart_puts("bp_targets: a=");
    uart_put_dec(bp_a_count);
    uart_puts(" b=");
    uart_put_dec(bp_b_count);
    uart_puts(" c=");
    uart_put_dec(bp_c_count);
    uart_puts("\n");
    return 0;
}
