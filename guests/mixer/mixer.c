/*
 * Deterministic memory + FP workload for snapshot/replay tests.
 * No timers, no input: output depends only on the code.
 */
#include <stdint.h>
#include "uart.h"

#define MIXER_BYTES  (256 * 1024)
#define MIXER_WORDS  (MIXER_BYTES / 8)
#define MIXER_PASSES 200000
#define MIXER_REPORT 50000

uint64_t mixer_buf[MIXER_WORDS] __attribute__((aligned(4096)));
uint64_t mixer_rng = 0x9e3779b97f4a7c15ull;
volatile uint64_t mixer_pass;
double mixer_acc = 1.0;

static inline uint64_t xorshift64(void)
{
    uint64_t x = mixer_rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    mixer_rng = x;
    return x;
}

__attribute__((noinline)) uint64_t mixer_checksum(void)
{
    uint64_t c = 0xcbf29ce484222325ull;
    for (unsigned i = 0; i < MIXER_WORDS; i++) {
        c ^= mixer_buf[i];
        c *= 0x100000001b3ull;
        c ^= c >> 29;
    }
    return c;
}

static uint64_t double_bits(double d)
{
    union { double d; uint64_t u; } u = { .d = d };
    return u.u;
}

int main(void)
{
    uart_puts("mixer: start\n");
    for (unsigned i = 0; i < MIXER_WORDS; i++)
        mixer_buf[i] = xorshift64();

    double acc = mixer_acc;
    for (uint64_t pass = 0; pass < MIXER_PASSES; pass++) {
        uint64_t r = xorshift64();
        unsigned i = (unsigned)(r & (MIXER_WORDS - 1));
        unsigned j = (unsigned)((r >> 32) & (MIXER_WORDS - 1));
        uint64_t v = mixer_buf[i];
        v = (v ^ (r >> 3)) * 0x9e3779b97f4a7c15ull + mixer_buf[j];
        acc = acc * 0.75 + (double)(v >> 40) * (1.0 / 16777216.0);
        if ((pass & 4095) == 0)
            v ^= (uint64_t)(acc * 1.0e9);
        mixer_buf[i] = v;
        mixer_pass = pass + 1;
        if (mixer_pass % MIXER_REPORT == 0) {
            mixer_acc = acc;
            uart_puts("mixer: pass=");
            uart_put_dec(mixer_pass);
            uart_puts(" checksum=");
            uart_put_hex(mixer_checksum());
            uart_puts(" acc=");
            uart_put_hex(double_bits(acc));
            uart_puts("\n");
        }
    }
    mixer_acc = acc;
    uart_puts("mixer: checksum=");
    uart_put_hex(mixer_checksum() ^ double_bits(acc));
    uart_puts("\n");
    return 0;
}
