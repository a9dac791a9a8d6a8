/* CONTEXTIDR_EL1 + EL1/EL0 switches around calls to ctx_work. */
#include <stdint.h>
#include "exc.h"
#include "uart.h"

extern volatile uint64_t ctx_work_calls;
uint64_t ctx_work(void);
void run_at_el0(void);
extern char el0_return[];

volatile unsigned el0_svcs;

void exception_handler(struct exc_frame *f, unsigned vector)
{
    if (vector == VEC_LOW64_SYNC && ESR_EC(f->esr) == EC_SVC64 &&
        ESR_ISS(f->esr) == 1 && (f->spsr & 0xf) == 0) {
        el0_svcs++;
        f->elr = (uint64_t)el0_return;
        f->spsr = 0x3c5;       /* EL1h, DAIF masked */
        return;
    }
    default_exception_report(f, vector);
}

static uint64_t read_ctx(void)
{
    uint64_t v;
    __asm__ volatile("mrs %0, contextidr_el1" : "=r"(v));
    return v;
}

static void phase(const char *el, uint64_t calls_before)
{
    uart_puts("phase ");
    uart_puts(el);
    uart_puts(" ctx=");
    uart_put_hexn(read_ctx(), 2);
    uart_puts(ctx_work_calls == calls_before + 1 ? " ok" : " BAD");
    uart_puts("\n");
}

int main(void)
{
    static const uint64_t ids[2] = {0x11, 0x22};

    for (int i = 0; i < 2; i++) {
        __asm__ volatile("msr contextidr_el1, %0\n\tisb" :: "r"(ids[i]) : "memory");
        uint64_t before = ctx_work_calls;
        ctx_work();
        phase("el1", before);
        before = ctx_work_calls;
        run_at_el0();
        phase("el0", before);
    }
    uart_puts("el0_context: calls=");
    uart_put_dec(ctx_work_calls);
    uart_puts(" svcs=");
    uart_put_dec(el0_svcs);
    uart_puts("\n");
    uart_puts("el0_context: done\n");
    return 0;
}
