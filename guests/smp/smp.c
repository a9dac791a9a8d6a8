/*
 * smp: several CPUs on the virt board (guestdbg --smp N, qemu-system-aarch64 -smp N).
 *
 * CPU 0 reads the CPU count from GICD_TYPER, checks PSCI's answers that do not depend on
 * timing (CPU_ON of itself: ALREADY_ON; of a CPU that does not exist or with a misaligned
 * entry: INVALID_PARAMETERS; AFFINITY_INFO of the others: OFF; PSCI_FEATURES), and starts
 * every other CPU with PSCI CPU_ON (entry secondary_entry, context_id = its index). Then:
 *
 * 0. CPU 0 holds the spinlock while it starts the others, until each has arrived (an exclusive
 *    increment) and then for HANDOFF_ROUNDS more rounds of work: the others wait for the lock in
 *    WFE (smp_asm.S), and take it in turn once CPU 0 releases it.
 * 1. Every CPU takes the spinlock (LDAXR/STLXR) SMP_ITERS times to increment a shared counter,
 *    then prints a line when its turn comes (CPU 0 first, then 1, 2, ...: the output does not
 *    depend on how the CPUs interleave), waiting for it in WFE: each turn's end is a store and
 *    an SEV; CPU 0 prints the total.
 * 2. CPU 0 sends each secondary i SGI i (GICD_SGIR, target list), then SGI 13 to all but itself,
 *    and SGI 12 to itself; the secondaries acknowledge them (GICC_IAR: SGI and source CPU).
 * 3. SPI 40, routed to the last CPU with GICD_ITARGETSR and pended by CPU 0, is taken there.
 * 4. Woken by SGI 14, the secondaries reply with SGI 15 to CPU 0 and turn themselves off
 *    (PSCI CPU_OFF); CPU 0 waits until AFFINITY_INFO says each is OFF, then powers the board off (SYSTEM_OFF).
 *
 * `smp_work` (in .data, so a benchmark can set it in the loaded image) adds that many rounds
 * of a CPU-bound loop on every CPU before step 2.
 */
#include <stdint.h>
#include "exc.h"
#include "psci.h"
#include "uart.h"

#define GICD 0x08000000UL
#define GICC 0x08010000UL
#define GICD_CTLR       0x000
#define GICD_TYPER      0x004
#define GICD_ISENABLER  0x100
#define GICD_ISPENDR    0x200
#define GICD_IPRIORITYR 0x400
#define GICD_ITARGETSR  0x800
#define GICD_SGIR       0xF00
#define GICC_CTLR 0x00
#define GICC_PMR  0x04
#define GICC_IAR  0x0C
#define GICC_EOIR 0x10
#define SPURIOUS  1023

#define PSCI_CPU_OFF          0x84000002u
#define PSCI_CPU_ON64         0xC4000003u
#define PSCI_AFFINITY_INFO64  0xC4000004u
#define PSCI_FEATURES         0x8400000Au

#define MAX_CPUS  8
#define SMP_ITERS 1000
#define SGI_BROADCAST 13
#define SGI_SELF      12
#define SGI_WAKE      14
#define SGI_REPLY     15
#define SPI_ROUTED    40
#define HANDOFF_ROUNDS 300000

void secondary_entry(uint64_t cpu);
void spin_lock(volatile uint32_t *lock);
void spin_unlock(volatile uint32_t *lock);
void atomic_inc(volatile uint32_t *p);

__attribute__((section(".data"))) volatile uint64_t smp_work = 0;

volatile uint32_t smp_lock;
volatile uint64_t smp_counter;
volatile uint32_t smp_turn;
volatile uint32_t smp_release;
volatile uint32_t smp_arrived;
volatile uint64_t smp_handoff_result;
volatile uint64_t smp_work_result[MAX_CPUS];
/* Per CPU, written by its IRQ handler: SGIs taken, the last IAR, SPIs taken. */
volatile uint32_t sgi_count[MAX_CPUS];
volatile uint32_t sgi_last[MAX_CPUS];
volatile uint32_t spi_count[MAX_CPUS];
volatile uint32_t reply_count;

static inline uint32_t rd(uint64_t a) { return *(volatile uint32_t *)a; }
static inline void wr(uint64_t a, uint32_t v) { *(volatile uint32_t *)a = v; }
static inline void wr8(uint64_t a, uint8_t v) { *(volatile uint8_t *)a = v; }

static unsigned this_cpu(void)
{
    uint64_t mpidr;
    __asm__ volatile("mrs %0, mpidr_el1" : "=r"(mpidr));
    return mpidr & 0xff;
}

void exception_handler(struct exc_frame *f, unsigned vector)
{
    if (vector != VEC_CUR_SPX_IRQ)
        default_exception_report(f, vector);
    unsigned cpu = this_cpu();
    uint32_t iar = rd(GICC + GICC_IAR);
    unsigned id = iar & 0x3ff;
    if (id == SPURIOUS)
        return;
    if (id < 16) {
        sgi_last[cpu] = iar;
        if (id == SGI_REPLY)
            reply_count++;
        else
            sgi_count[cpu]++;
    } else {
        spi_count[cpu]++;
    }
    wr(GICC + GICC_EOIR, iar);
}

/* This CPU's interface: SGIs enabled (banked), every priority let through. */
static void gic_cpu_init(void)
{
    wr(GICD + GICD_ISENABLER, 0xffff);
    wr(GICC + GICC_PMR, 0xf0);
    wr(GICC + GICC_CTLR, 1);
}

/* With IRQs masked: WFI until *p >= n, letting the pending IRQ in after each wake-up. */
static void wait_irq_until(volatile uint32_t *p, uint32_t n)
{
    while (*p < n) {
        __asm__ volatile("wfi; msr daifclr, #2; isb; msr daifset, #2" ::: "memory");
    }
}

static void wait_until(volatile uint32_t *p, uint32_t n)
{
    while (*p < n)
        ;
}

/* Until *p >= n, waiting for an event (the writer's SEV) in between. */
static void wait_event_until(volatile uint32_t *p, uint32_t n)
{
    while (*p < n)
        __asm__ volatile("wfe" ::: "memory");
}

static void send_sgi(uint32_t filter, uint32_t targets, uint32_t sgi)
{
    __asm__ volatile("dmb ish" ::: "memory");
    wr(GICD + GICD_SGIR, (filter << 24) | (targets << 16) | sgi);
}

static uint64_t crunch(unsigned cpu, uint64_t rounds)
{
    uint64_t x = cpu + 1;
    for (uint64_t i = 0; i < rounds; i++)
        x = x * 6364136223846793005ull + 1442695040888963407ull;
    return x;
}

static void count_and_report(unsigned cpu)
{
    for (int i = 0; i < SMP_ITERS; i++) {
        spin_lock(&smp_lock);
        smp_counter = smp_counter + 1;
        spin_unlock(&smp_lock);
    }
    wait_event_until(&smp_turn, cpu);
    uart_puts("cpu ");
    uart_put_dec(cpu);
    uart_puts(": ");
    uart_put_dec(SMP_ITERS);
    uart_puts(" increments under the lock\n");
    __asm__ volatile("dmb ish" ::: "memory");
    smp_turn = cpu + 1;
    __asm__ volatile("dsb ish; sev" ::: "memory");
}

void secondary_main(uint64_t cpu)
{
    gic_cpu_init();
    atomic_inc(&smp_arrived);
    spin_lock(&smp_lock);               /* held by CPU 0 until everyone has arrived */
    spin_unlock(&smp_lock);
    count_and_report(cpu);
    smp_work_result[cpu] = crunch(cpu, smp_work);
    wait_irq_until(&smp_release, 1);
    send_sgi(0, 1, SGI_REPLY);
    psci_call(PSCI_CPU_OFF, 0, 0, 0);
    uart_puts("smp: CPU_OFF returned\n");
}

static void show(const char *what, int64_t value)
{
    uart_puts(what);
    uart_put_sdec(value);
    uart_puts("\n");
}

int main(void)
{
    unsigned n = ((rd(GICD + GICD_TYPER) >> 5) & 7) + 1;
    uint64_t entry = (uint64_t)secondary_entry;
    uart_puts("smp: ");
    uart_put_dec(n);
    uart_puts(" cpus\n");
    wr(GICD + GICD_CTLR, 1);
    gic_cpu_init();

    show("psci: features CPU_ON=", psci_call(PSCI_FEATURES, PSCI_CPU_ON64, 0, 0));
    show("psci: features CPU_OFF=", psci_call(PSCI_FEATURES, PSCI_CPU_OFF, 0, 0));
    show("psci: features AFFINITY_INFO=", psci_call(PSCI_FEATURES, PSCI_AFFINITY_INFO64, 0, 0));
    show("psci: CPU_ON self=", psci_call(PSCI_CPU_ON64, 0, entry, 0));
    show("psci: CPU_ON no such cpu=", psci_call(PSCI_CPU_ON64, n, entry, 0));
    show("psci: AFFINITY_INFO no such cpu=", psci_call(PSCI_AFFINITY_INFO64, n, 0, 0));
    show("psci: AFFINITY_INFO cpu 0=", psci_call(PSCI_AFFINITY_INFO64, 0, 0, 0));
    if (n > 1) {
        show("psci: CPU_ON misaligned entry=", psci_call(PSCI_CPU_ON64, 1, entry + 2, 0));
        show("psci: AFFINITY_INFO cpu 1 before CPU_ON=", psci_call(PSCI_AFFINITY_INFO64, 1, 0, 0));
    }
    spin_lock(&smp_lock);
    for (unsigned i = 1; i < n; i++) {
        uart_puts("psci: CPU_ON cpu ");
        uart_put_dec(i);
        show("=", psci_call(PSCI_CPU_ON64, i, entry, i));
    }
    wait_until(&smp_arrived, n - 1);
    smp_handoff_result = crunch(0, HANDOFF_ROUNDS);
    spin_unlock(&smp_lock);

    count_and_report(0);
    wait_event_until(&smp_turn, n);
    uart_puts("counter: ");
    uart_put_dec(smp_counter);
    uart_puts(smp_counter == (uint64_t)n * SMP_ITERS ? " (ok)\n" : " (WRONG)\n");
    smp_work_result[0] = crunch(0, smp_work);

    /* SGIs: to each secondary by target list, then to all but self, then to self. */
    __asm__ volatile("msr daifset, #2" ::: "memory");
    for (unsigned i = 1; i < n; i++) {
        send_sgi(0, 1u << i, i);
        wait_until(&sgi_count[i], 1);
        uart_puts("ipi: cpu ");
        uart_put_dec(i);
        uart_puts(" took sgi ");
        uart_put_dec(sgi_last[i] & 0x3ff);
        uart_puts(" from cpu ");
        uart_put_dec((sgi_last[i] >> 10) & 7);
        uart_puts("\n");
    }
    send_sgi(1, 0, SGI_BROADCAST);
    unsigned took = 0;
    for (unsigned i = 1; i < n; i++) {
        wait_until(&sgi_count[i], 2);
        took += (sgi_last[i] & 0x3ff) == SGI_BROADCAST;
    }
    uart_puts("ipi: all-but-self sgi 13 taken by ");
    uart_put_dec(took);
    uart_puts(" cpus\n");
    send_sgi(2, 0, SGI_SELF);
    wait_irq_until(&sgi_count[0], 1);
    uart_puts("ipi: self sgi ");
    uart_put_dec(sgi_last[0] & 0x3ff);
    uart_puts(" from cpu ");
    uart_put_dec((sgi_last[0] >> 10) & 7);
    uart_puts("\n");

    /* An SPI routed to the last CPU. */
    unsigned last = n - 1;
    wr8(GICD + GICD_IPRIORITYR + SPI_ROUTED, 0xa0);
    wr8(GICD + GICD_ITARGETSR + SPI_ROUTED, 1u << last);
    wr(GICD + GICD_ISENABLER + 4 * (SPI_ROUTED / 32), 1u << (SPI_ROUTED % 32));
    wr(GICD + GICD_ISPENDR + 4 * (SPI_ROUTED / 32), 1u << (SPI_ROUTED % 32));
    if (last == 0)
        wait_irq_until(&spi_count[0], 1);
    else
        wait_until(&spi_count[last], 1);
    uart_puts("spi 40: routed to cpu ");
    uart_put_dec(last);
    uart_puts(", taken by ");
    unsigned takers = 0;
    for (unsigned i = 0; i < n; i++)
        takers += spi_count[i];
    uart_put_dec(takers);
    uart_puts(" cpu(s)\n");

    /* The secondaries reply and turn themselves off. */
    smp_release = 1;
    send_sgi(1, 0, SGI_WAKE);
    wait_irq_until(&reply_count, n - 1);
    uart_puts("ipi: ");
    uart_put_dec(reply_count);
    uart_puts(" replies to cpu 0\n");
    for (unsigned i = 1; i < n; i++) {
        while (psci_call(PSCI_AFFINITY_INFO64, i, 0, 0) != 1)
            ;
        uart_puts("cpu ");
        uart_put_dec(i);
        uart_puts(": off\n");
    }
    uint64_t sum = 0;
    for (unsigned i = 0; i < n; i++)
        sum ^= smp_work_result[i];
    if (smp_work) {
        uart_puts("work: ");
        uart_put_hex(sum);
        uart_puts("\n");
    }
    uart_puts("smp: done\n");
    psci_system_off();
}
