/* Takes SVC, BRK, UDF, a data abort and an HVC (unknown PSCI id) in turn. */
#include <stdint.h>
#include "exc.h"
#include "uart.h"

void trigger_svc(void);
void trigger_brk(void);
void trigger_udf(void);
uint64_t trigger_dabt(uint64_t fallback);
int64_t trigger_hvc(uint64_t fn);
void trigger_iabt(void);

volatile unsigned exc_count;

void exception_handler(struct exc_frame *f, unsigned vector)
{
    unsigned ec = ESR_EC(f->esr);

    if (vector != VEC_CUR_SPX_SYNC && vector != VEC_LOW64_SYNC)
        default_exception_report(f, vector);

    exc_count++;
    uart_puts("exc vec=");
    uart_put_dec(vector);
    uart_puts(" EC=");
    uart_put_hexn(ec, 2);
    uart_puts(" ESR=");
    uart_put_hexn(f->esr, 8);
    uart_puts(" ELR=");
    uart_put_hexn(f->elr, 8);
    uart_puts(" FAR=");
    if (ec == EC_DABT_LOW || ec == EC_DABT_CUR || ec == EC_IABT_CUR)
        uart_put_hexn(f->far, 8);
    else
        uart_puts("-");
    uart_puts(" SPSR=");
    uart_put_hexn(f->spsr, 8);
    uart_puts("\n");

    switch (ec) {
    case EC_SVC64:
    case EC_HVC64:
        break;                  /* preferred return is already past the instruction */
    case EC_UNKNOWN:
    case EC_BRK64:
    case EC_DABT_CUR:
    case EC_DABT_LOW:
        f->elr += 4;
        break;
    case EC_IABT_CUR:
        f->elr = f->x[30];      /* a call to nowhere: return to the caller */
        break;
    default:
        default_exception_report(f, vector);
    }
}

int main(void)
{
    uart_puts("exceptions: start\n");
    trigger_svc();
    trigger_brk();
    trigger_udf();
    uint64_t v = trigger_dabt(0x5a5a5a5a);
    uart_puts("dabt load skipped, x0=");
    uart_put_hex_nz(v);
    uart_puts("\n");
    int64_t r = trigger_hvc(0x8400ff00u);   /* not a PSCI function */
    uart_puts("hvc x0=");
    uart_put_sdec(r);
    uart_puts("\n");
    trigger_iabt();
    uart_puts("iabt returned\n");
    uart_puts("exceptions: count=");
    uart_put_dec(exc_count);
    uart_puts("\n");
    uart_puts("exceptions: done\n");
    return 0;
}
