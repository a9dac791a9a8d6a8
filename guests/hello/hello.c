/* UART output, semihosting SYS_WRITEC / SYS_WRITE0, then SYS_EXIT(7). */
#include "uart.h"
#include "semihosting.h"

int main(void)
{
    uart_puts("hello: uart\n");
    sys_writec('S');
    sys_writec('\n');
    sys_write0("hello: semihosting write0\n");
    uart_puts("hello: exiting with 7\n");
    return 7;
}
