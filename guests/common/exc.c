#include "exc.h"
#include "uart.h"
#include "semihosting.h"

void default_exception_report(struct exc_frame *f, unsigned vector)
{
    uart_puts("unhandled exception vector=");
    uart_put_dec(vector);
    uart_puts(" ESR=");
    uart_put_hex_nz(f->esr);
    uart_puts(" ELR=");
    uart_put_hex_nz(f->elr);
    uart_puts(" FAR=");
    uart_put_hex_nz(f->far);
    uart_puts("\n");
    sys_exit(99);
}

__attribute__((weak)) void exception_handler(struct exc_frame *f, unsigned vector)
{
    default_exception_report(f, vector);
}
