/* Exits via semihosting SYS_EXIT_EXTENDED with status 5. */
#include "uart.h"
#include "semihosting.h"

int main(void)
{
    uart_puts("exit_ext: SYS_EXIT_EXTENDED 5\n");
    sys_exit_extended(5);
}
