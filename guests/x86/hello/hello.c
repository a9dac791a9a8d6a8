/* UART output, then isa-debug-exit with 21: the process / guestdbg status is (21<<1)|1 = 43. */
#include "runtime.h"

int main(void)
{
    uart_puts("hello: x86-64 guest on the 16550 UART\n");
    uart_puts("hello: 6*7=");
    uart_put_dec(6 * 7);
    uart_puts("\nhello: exiting with 21\n");
    return 21;
}
