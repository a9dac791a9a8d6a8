/*
 * crunch: compiled, CPU-bound integer work with ordinary control flow (a CRC-32 over a buffer,
 * an insertion sort, a hash table walk), as a benchmark of the run loop on code a compiler
 * wrote rather than a hand-made 4-instruction loop. The number of rounds is a variable, so a
 * bench can change it in the loaded image. Prints a checksum.
 */
#include <stdint.h>
#include "uart.h"

volatile uint64_t crunch_rounds = 400;

#define BUF_WORDS 2048
static uint32_t buf[BUF_WORDS];
static uint32_t table[256];

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        table[i] = c;
    }
}

static uint32_t crc32(const uint8_t *p, uint32_t n, uint32_t crc)
{
    crc = ~crc;
    while (n--)
        crc = table[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

static void insertion_sort(uint32_t *a, int n)
{
    for (int i = 1; i < n; i++) {
        uint32_t v = a[i];
        int j = i - 1;
        while (j >= 0 && a[j] > v) {
            a[j + 1] = a[j];
            j--;
        }
        a[j + 1] = v;
    }
}

int main(void)
{
    uint64_t rounds = crunch_rounds, sum = 0;
    uint32_t x = 2463534242u;
    crc_init();
    for (uint64_t r = 0; r < rounds; r++) {
        for (int i = 0; i < BUF_WORDS; i++) {
            x ^= x << 13; x ^= x >> 17; x ^= x << 5;
            buf[i] = x;
        }
        sum += crc32((const uint8_t *)buf, sizeof(buf), (uint32_t)r);
        insertion_sort(buf, 256);
        for (int i = 0; i < 256; i += 7)
            sum = sum * 31 + buf[i] + (buf[(buf[i] >> 3) % BUF_WORDS] & 0xFFFF);
    }
    uart_puts("crunch: ");
    uart_put_dec(rounds);
    uart_puts(" rounds, checksum ");
    uart_put_hex(sum);
    uart_puts("\n");
    return 0;
}
