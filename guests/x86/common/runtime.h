/* The x86-64 guests' runtime: 16550 UART output at 0x3F8 and isa-debug-exit at 0xF4. */
#ifndef RUNTIME_H
#define RUNTIME_H

#include <stdint.h>

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port)
{
    uint8_t v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

void uart_putc(char c);
void uart_puts(const char *s);
void uart_put_dec(uint64_t v);
void uart_put_hex(uint64_t v);
__attribute__((noreturn)) void debug_exit(uint32_t status);

#endif
