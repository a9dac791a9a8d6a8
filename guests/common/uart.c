#include "uart.h"

static inline volatile uint32_t *pl011_reg(unsigned off)
{
    return (volatile uint32_t *)(PL011_BASE + off);
}

void uart_putc(char c)
{
    while (*pl011_reg(PL011_FR) & PL011_FR_TXFF)
        ;
    *pl011_reg(PL011_DR) = (uint32_t)(unsigned char)c;
}

void uart_puts(const char *s)
{
    while (*s)
        uart_putc(*s++);
}

static const char hexdig[] = "0123456789abcdef";

void uart_put_hexn(uint64_t v, int digits)
{
    int n = 1;
    while (n < 16 && (v >> (4 * n)) != 0)
        n++;
    if (digits > 16)
        digits = 16;
    if (n < digits)
        n = digits;
    uart_putc('0');
    uart_putc('x');
    for (int i = n - 1; i >= 0; i--)
        uart_putc(hexdig[(v >> (4 * i)) & 0xf]);
}

void uart_put_hex(uint64_t v)
{
    uart_put_hexn(v, 16);
}

void uart_put_hex_nz(uint64_t v)
{
    uart_put_hexn(v, 1);
}

void uart_put_dec(uint64_t v)
{
    char buf[21];
    int i = 0;
    do {
        buf[i++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (i--)
        uart_putc(buf[i]);
}

void uart_put_sdec(int64_t v)
{
    if (v < 0) {
        uart_putc('-');
        uart_put_dec((uint64_t)0 - (uint64_t)v);
    } else {
        uart_put_dec((uint64_t)v);
    }
}
