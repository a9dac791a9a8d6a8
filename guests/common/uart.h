#ifndef GUEST_UART_H
#define GUEST_UART_H
#include <stdint.h>

#define PL011_BASE 0x09000000UL
#define PL011_DR   0x00
#define PL011_FR   0x18
#define PL011_FR_TXFF (1u << 5)

void uart_putc(char c);
void uart_puts(const char *s);          /* no newline added */
void uart_put_hex(uint64_t v);          /* 0x%016lx */
void uart_put_hexn(uint64_t v, int digits); /* 0x + exactly `digits` digits (more if needed) */
void uart_put_hex_nz(uint64_t v);       /* 0x%lx (no leading zeros) */
void uart_put_dec(uint64_t v);
void uart_put_sdec(int64_t v);
#endif
