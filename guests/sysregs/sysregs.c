/*
 * sysregs: a loop dominated by MRS/MSR of system registers the VMM leaves to the CPU model
 * (SP_EL0, TPIDR_EL1, DAIF, CTR_EL0, CONTEXTIDR_EL1), mixed with loads, stores and ALU ops:
 * the run-loop benchmark's worst case for per-instruction hooks (bench/bench_runloop.py).
 *
 * The iteration count is a .data variable, so a test or bench can shrink it in the loaded
 * image. The checksum depends on it only (no timer is read), so it is the same under QEMU,
 * guestdbg and a bare Unicorn. Exit status 0 when the registers end up where they must.
 */
#include <stdint.h>
#include "uart.h"

#define TPIDR_SEED 0x0123456789abcdefULL
#define CTXID_SEED 0x1000u

uint64_t sysregs_spin(uint64_t n, uint64_t *buf);
volatile uint64_t sysregs_iterations = 1800000;
uint64_t sysregs_buf[17];

#define READ_SYSREG(name) ({ uint64_t v_; __asm__ volatile("mrs %0, " #name : "=r"(v_)); v_; })

int main(void)
{
    uint64_t n = sysregs_iterations;
    uint64_t sum = sysregs_spin(n, sysregs_buf);
    uint64_t tpidr = READ_SYSREG(tpidr_el1);
    uint64_t ctxid = READ_SYSREG(contextidr_el1);
    uint64_t daif = READ_SYSREG(daif);
    __asm__ volatile("msr daifset, #0xf" ::: "memory");

    int ok = tpidr == TPIDR_SEED + n * (n + 1) / 2 &&
             (ctxid & 0xffffffffu) == ((CTXID_SEED + n) & 0xffffffffu) &&
             daif == (n & 1 ? 0x1c0u : 0x3c0u);
    uart_puts("sysregs: ");
    uart_put_dec(n);
    uart_puts(" iterations, checksum ");
    uart_put_hex(sum);
    uart_puts(ok ? "\n" : " (system registers wrong)\n");
    return ok ? 0 : 1;
}
