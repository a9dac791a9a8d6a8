/* Console input: a prompt, then each line read from the PL011 comes back uppercased; a line
 * "q" powers off (PSCI SYSTEM_OFF, exit status 0). Polls FR.RXFE; no interrupts. */
#include "uart.h"
#include "psci.h"

#define PL011_FR_RXFE  (1u << 4)
#define PL011_LCR_H    0x2c
#define PL011_CR       0x30
#define PL011_LCR_H_WLEN8_FEN 0x70u
#define PL011_CR_UARTEN_TXE_RXE 0x301u

static inline volatile uint32_t *reg(unsigned off)
{
    return (volatile uint32_t *)(PL011_BASE + off);
}

static char getc_poll(void)
{
    while (*reg(PL011_FR) & PL011_FR_RXFE)
        ;
    return (char)(*reg(PL011_DR) & 0xff);
}

int main(void)
{
    char line[128];
    unsigned n = 0;

    *reg(PL011_LCR_H) = PL011_LCR_H_WLEN8_FEN;  /* 8N1, FIFOs on */
    *reg(PL011_CR) = PL011_CR_UARTEN_TXE_RXE;
    uart_puts("echo: type lines, q to quit\n> ");
    for (;;) {
        char c = getc_poll();
        if (c != '\n' && c != '\r') {
            if (n < sizeof(line) - 1)
                line[n++] = c;
            continue;
        }
        line[n] = 0;
        if (n == 1 && line[0] == 'q') {
            uart_puts("bye\n");
            psci_system_off();
        }
        for (unsigned i = 0; i < n; i++) {
            char u = line[i];
            if (u >= 'a' && u <= 'z')
                u = (char)(u - 'a' + 'A');
            uart_putc(u);
        }
        uart_puts("\n> ");
        n = 0;
    }
}
