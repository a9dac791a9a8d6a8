/* Prints a line, then PSCI SYSTEM_OFF via HVC #0 (exit status 0). */
#include "uart.h"
#include "psci.h"

int main(void)
{
    uart_puts("poweroff: calling PSCI SYSTEM_OFF\n");
    psci_system_off();
}
