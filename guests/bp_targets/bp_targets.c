/* bp_a/bp_b/bp_c called 3 times each; one guest-owned BRK #0x123 at guest_brk. */
#include <stdint.h>
#include "exc.h"
#include "uart.h"

volatile unsigned bp_a_count, bp_b_count, bp_c_count, brk_count;

__attribute__((noinline, noipa)) void bp_a(void) { bp_a_count++; }
__attribute__((noinline, noipa)) void bp_b(void) { bp_b_count++; }
__attribute__((noinline, noipa)) void bp_c(void) { bp_c_count++; }

/* guest_brk_fn: `guest_brk: brk #0x123; ret` */
void guest_brk_fn(void);
__asm__(".text\n"
        ".global guest_brk_fn, guest_brk\n"
        ".type guest_brk_fn, %function\n"
        "guest_brk_fn:\n"
        "guest_brk:\n\t"
        "brk #0x123\n\t"
        "ret\n"
        ".size guest_brk_fn, . - guest_brk_fn\n");

void exception_handler(struct exc_frame *f, unsigned vector)
{
    if (vector == VEC_CUR_SPX_SYNC && ESR_EC(f->esr) == EC_BRK64 &&
        (f->esr & 0xffff) == 0x123) {
        brk_count++;
        f->elr += 4;
        return;
    }
    default_exception_report(f, vector);
}

int main(void)
{
    for (int i = 0; i < 3; i++) {
        bp_a();
        bp_b();
        bp_c();
    }
    guest_brk_fn();
    uart_puts("bp_targets: a=");
    uart_put_dec(bp_a_count);
    uart_puts(" b=");
    uart_put_dec(bp_b_count);
    uart_puts(" c=");
    uart_put_dec(bp_c_count);
    uart_puts(" brk=");
    uart_put_dec(brk_count);
    uart_puts("\n");
    return 0;
}
