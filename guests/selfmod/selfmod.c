/* Self-modifying code: copy patched_fn over code_slot and call it (returns 1), then copy
 * patched_fn_v2 over the same bytes and call it again (returns 2). A debugger's software
 * breakpoint on code_slot must survive both rewrites. */
#include <stdint.h>
#include "uart.h"

typedef uint64_t (*slot_fn)(void);

extern uint32_t code_slot[16];
extern const char patched_fn[], patched_fn_end[], patched_fn_v2[], patched_fn_v2_end[];
void install_code(void *dst, const void *src, const void *src_end);

volatile uint64_t selfmod_results[2];

static void report(const char *what, uint64_t v)
{
    uart_puts(what);
    uart_put_dec(v);
    uart_puts("\n");
}

int main(void)
{
    uart_puts("selfmod: start\n");
    install_code(code_slot, patched_fn, patched_fn_end);
    selfmod_results[0] = ((slot_fn)(uintptr_t)code_slot)();
    report("selfmod: first call returned ", selfmod_results[0]);
    install_code(code_slot, patched_fn_v2, patched_fn_v2_end);
    selfmod_results[1] = ((slot_fn)(uintptr_t)code_slot)();
    report("selfmod: second call returned ", selfmod_results[1]);
    uart_puts("selfmod: done\n");
    return selfmod_results[0] == 1 && selfmod_results[1] == 2 ? 0 : 1;
}
