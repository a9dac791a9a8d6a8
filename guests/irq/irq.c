/*
 * irq: interrupts through the virt board's GICv2 (distributor 0x0800_0000, CPU interface
 * 0x0801_0000), taken at VBAR_EL1 + 0x280, acknowledged (GICC_IAR) and ended (GICC_EOIR).
 *
 * 1. SPI 40, pended by the guest itself (GICD_ISPENDR) while IRQs are masked, is taken only
 *    once it unmasks. This part runs anywhere (qemu-system-aarch64 -M virt too).
 * 2. With irq_vmm_lines set (the tests write it in the loaded image), the VMM drives lines:
 *    - SPI 48, level-sensitive, raised while IRQs are masked: the guest polls GICD_ISPENDR
 *      until it sees it, checks that no IRQ was taken, and unmasks; the handler disables the
 *      interrupt (its source stays high) and ends it.
 *    - SPI 49, edge-triggered, pulsed while the guest spins with IRQs unmasked.
 * Each IRQ taken is logged (IAR, ELR_EL1, SPSR_EL1) and printed. Exit status 0 when all is
 * as the GICv2 architecture says.
 */
#include <stdint.h>
#include "exc.h"
#include "uart.h"

#define GICD 0x08000000UL
#define GICC 0x08010000UL
#define GICD_CTLR       0x000
#define GICD_TYPER      0x004
#define GICD_ISENABLER  0x100
#define GICD_ICENABLER  0x180
#define GICD_ISPENDR    0x200
#define GICD_ISACTIVER  0x300
#define GICD_IPRIORITYR 0x400
#define GICD_ITARGETSR  0x800
#define GICD_ICFGR      0xC00
#define GICC_CTLR  0x00
#define GICC_PMR   0x04
#define GICC_IAR   0x0C
#define GICC_EOIR  0x10
#define GICC_RPR   0x14
#define GICC_HPPIR 0x18

#define SELF_IRQ  40
#define LEVEL_IRQ 48
#define EDGE_IRQ  49
#define SPURIOUS  1023

/* In .data, not .bss (which start.S zeroes), so a test can set it in the loaded image. */
__attribute__((section(".data"))) volatile uint64_t irq_vmm_lines = 0;

struct irq_record { uint64_t iar, elr, spsr, rpr; };
volatile struct irq_record irq_log[8];
volatile uint32_t irq_count;
volatile uint32_t irq_spurious;
volatile uint32_t irq_active_after_eoi;

void irq_unmask_window(void);
void irq_spin_until(volatile uint32_t *count, uint32_t n);

static inline uint32_t rd(uint64_t addr) { return *(volatile uint32_t *)addr; }
static inline void wr(uint64_t addr, uint32_t v) { *(volatile uint32_t *)addr = v; }
static inline void wr8(uint64_t addr, uint8_t v) { *(volatile uint8_t *)addr = v; }
static inline uint32_t bit(unsigned id) { return 1u << (id % 32); }
static inline uint64_t word(uint64_t reg, unsigned id) { return GICD + reg + 4 * (id / 32); }

void exception_handler(struct exc_frame *f, unsigned vector)
{
    if (vector != VEC_CUR_SPX_IRQ)
        default_exception_report(f, vector);
    uint32_t iar = rd(GICC + GICC_IAR);
    unsigned id = iar & 0x3ff;
    if (id == SPURIOUS) {
        irq_spurious++;
        return;
    }
    uint32_t n = irq_count;
    if (n < 8) {
        irq_log[n].iar = iar;
        irq_log[n].elr = f->elr;
        irq_log[n].spsr = f->spsr;
        irq_log[n].rpr = rd(GICC + GICC_RPR);
    }
    if (id == LEVEL_IRQ)
        wr(word(GICD_ICENABLER, id), bit(id)); /* its source stays high: mask it at the GIC */
    wr(GICC + GICC_EOIR, iar);
    if (rd(word(GICD_ISACTIVER, id)) & bit(id))
        irq_active_after_eoi++;
    irq_count = n + 1;
}

static void setup_spi(unsigned id, int edge)
{
    wr8(GICD + GICD_IPRIORITYR + id, 0xa0);
    wr8(GICD + GICD_ITARGETSR + id, 0x01);
    uint64_t cfg = GICD + GICD_ICFGR + 4 * (id / 16);
    uint32_t shift = 2 * (id % 16) + 1;
    wr(cfg, (rd(cfg) & ~(1u << shift)) | ((uint32_t)edge << shift));
}

static void report(uint32_t i)
{
    uart_puts("irq: taken iar=");
    uart_put_dec(irq_log[i].iar);
    uart_puts(" elr=");
    uart_put_hex_nz(irq_log[i].elr);
    uart_puts(" spsr=");
    uart_put_hex_nz(irq_log[i].spsr);
    uart_puts(" rpr=");
    uart_put_hex_nz(irq_log[i].rpr);
    uart_puts("\n");
}

int main(void)
{
    int ok = 1;
    wr(GICD + GICD_CTLR, 0);
    setup_spi(SELF_IRQ, 0);
    setup_spi(LEVEL_IRQ, 0);
    setup_spi(EDGE_IRQ, 1);
    wr(GICD + GICD_CTLR, 1);
    wr(GICC + GICC_PMR, 0xf0);
    wr(GICC + GICC_CTLR, 1);
    uart_puts("irq: gic typer=");
    uart_put_hex_nz(rd(GICD + GICD_TYPER));
    uart_puts(" rpr=");
    uart_put_hex_nz(rd(GICC + GICC_RPR));
    uart_puts("\n");

    /* 1: pended by software while masked; taken once unmasked. */
    wr(word(GICD_ISENABLER, SELF_IRQ), bit(SELF_IRQ));
    wr(word(GICD_ISPENDR, SELF_IRQ), bit(SELF_IRQ));
    uint32_t hppir = rd(GICC + GICC_HPPIR);
    uart_puts("irq: self-pended hppir=");
    uart_put_dec(hppir);
    uart_puts(irq_count == 0 ? " not taken while masked\n" : " TAKEN WHILE MASKED\n");
    ok &= hppir == SELF_IRQ && irq_count == 0;
    irq_unmask_window();
    ok &= irq_count == 1 && (irq_log[0].iar & 0x3ff) == SELF_IRQ;
    report(0);

    if (irq_vmm_lines) {
        /* 2: a level raised by the VMM while masked. */
        wr(word(GICD_ISENABLER, LEVEL_IRQ), bit(LEVEL_IRQ));
        uart_puts("irq: waiting for level 48 (masked)\n");
        while (!(rd(word(GICD_ISPENDR, LEVEL_IRQ)) & bit(LEVEL_IRQ)))
            ;
        uart_puts(irq_count == 1 ? "irq: level 48 pending, not taken while masked\n"
                                 : "irq: level 48 TAKEN WHILE MASKED\n");
        ok &= irq_count == 1;
        irq_unmask_window();
        ok &= irq_count == 2 && (irq_log[1].iar & 0x3ff) == LEVEL_IRQ;
        report(1);

        /* 3: an edge while spinning unmasked. */
        wr(word(GICD_ISENABLER, EDGE_IRQ), bit(EDGE_IRQ));
        uart_puts("irq: spinning for edge 49\n");
        irq_spin_until(&irq_count, 3);
        ok &= (irq_log[2].iar & 0x3ff) == EDGE_IRQ;
        report(2);
    }
    uart_puts("irq: count=");
    uart_put_dec(irq_count);
    uart_puts(" spurious=");
    uart_put_dec(irq_spurious);
    uart_puts(" active-after-eoi=");
    uart_put_dec(irq_active_after_eoi);
    uart_puts(" rpr=");
    uart_put_hex_nz(rd(GICC + GICC_RPR));
    uart_puts("\n");
    ok &= irq_spurious == 0 && irq_active_after_eoi == 0;
    return ok ? 0 : 1;
}
