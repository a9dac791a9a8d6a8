/* guestdbg's built-in demo guest. */
#include <stdint.h>
#include "uart.h"

#define DEMO_ITERATIONS 100

/* Watch this one from gdb: `watch demo_counter` */
volatile uint64_t demo_counter;

uint8_t demo_buffer[256];
uint64_t demo_fib[12];

__attribute__((noinline)) uint64_t fib(unsigned n)
{
    uint64_t a = 0, b = 1;
    for (unsigned i = 0; i < n; i++) {
        uint64_t t = a + b;
        a = b;
        b = t;
    }
    return a;
}

__attribute__((noinline)) uint32_t crc32(const uint8_t *p, unsigned len)
{
    uint32_t crc = 0xffffffffu;
    for (unsigned i = 0; i < len; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++)
            crc = (crc >> 1) ^ (0xedb88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}

__attribute__((noinline)) void demo_tick(void)
{
    demo_counter = demo_counter + 1;
}

int main(void)
{
    uart_puts("guestdbg demo guest\n");

    uart_puts("fib:");
    for (unsigned i = 0; i < 12; i++) {
        demo_fib[i] = fib(i);
        uart_putc(' ');
        uart_put_dec(demo_fib[i]);
    }
    uart_puts("\n");

    for (unsigned i = 0; i < sizeof demo_buffer; i++)
        demo_buffer[i] = (uint8_t)i;
    uart_puts("crc32: ");
    uart_put_hexn(crc32(demo_buffer, sizeof demo_buffer), 8);
    uart_puts("\n");

    for (unsigned i = 0; i < DEMO_ITERATIONS; i++)
        demo_tick();
    uart_puts("counter: ");
    uart_put_dec(demo_counter);
    uart_puts("\n");

    uart_puts("demo: done\n");
    return 0;
}
