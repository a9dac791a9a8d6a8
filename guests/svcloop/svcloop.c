/*
 * svcloop: system calls in a loop (EL0 <-> EL1 with SP_EL0/TPIDR traffic), then the checksum.
 * The number of round trips is a variable, so a test can change it in the loaded image.
 */
#include <stdint.h>
#include "uart.h"

uint64_t svc_ping_pong(uint64_t n);
extern uint64_t svc_round_trips;
volatile uint64_t svc_iterations = 50000;

int main(void)
{
    uint64_t n = svc_iterations;
    uint64_t sum = svc_ping_pong(n);
    uart_puts("svcloop: ");
    uart_put_dec(svc_round_trips);
    uart_puts(" round trips, checksum ");
    uart_put_hex(sum);
    uart_puts("\n");
    return svc_round_trips == n ? 0 : 1;
}
