/*
 * Turns the stage-1 MMU on (4 KiB granule, TTBR0, 39-bit VA) and takes MMU
 * faults: translation faults (load, store, instruction fetch) and a permission
 * fault, all at level 3.
 */
#include <stdint.h>
#include "exc.h"
#include "uart.h"

#define ALIAS_VA     0x80000000UL   /* -> alias_target */
#define UNMAPPED_VA  0x80001000UL   /* invalid level-3 descriptor */
#define RO_VA        0x80002000UL   /* -> ro_target, AP=0b10 (EL1 read-only) */

/* Descriptors */
#define DESC_TABLE   0x3UL
#define DESC_BLOCK   0x1UL
#define DESC_PAGE    0x3UL
#define ATTRIDX(n)   ((uint64_t)(n) << 2)
#define AP_RW_EL1    (0UL << 6)
#define AP_RO_EL1    (2UL << 6)
#define SH_INNER     (3UL << 8)
#define AF           (1UL << 10)
#define PXN          (1UL << 53)
#define UXN          (1UL << 54)

#define MAIR_DEVICE_IDX 0           /* attr 0x00: Device-nGnRnE */
#define MAIR_NORMAL_IDX 1           /* attr 0xff: Normal, inner/outer WB RW-allocate */
#define MAIR_VALUE   ((0x00UL << (8 * MAIR_DEVICE_IDX)) | (0xffUL << (8 * MAIR_NORMAL_IDX)))

#define NORMAL_ATTRS (ATTRIDX(MAIR_NORMAL_IDX) | SH_INNER | AF)
#define DEVICE_ATTRS (ATTRIDX(MAIR_DEVICE_IDX) | AF | PXN | UXN)

/* TCR_EL1 */
#define TCR_T0SZ(n)  ((uint64_t)(n) << 0)
#define TCR_IRGN0_WB (1UL << 8)
#define TCR_ORGN0_WB (1UL << 10)
#define TCR_SH0_IS   (3UL << 12)
#define TCR_TG0_4K   (0UL << 14)
#define TCR_T1SZ(n)  ((uint64_t)(n) << 16)
#define TCR_EPD1     (1UL << 23)
#define TCR_TG1_4K   (2UL << 30)
#define TCR_IPS_40   (2UL << 32)
#define TCR_VALUE    (TCR_T0SZ(25) | TCR_IRGN0_WB | TCR_ORGN0_WB | TCR_SH0_IS | TCR_TG0_4K | \
                      TCR_T1SZ(25) | TCR_EPD1 | TCR_TG1_4K | TCR_IPS_40)

void mmu_enable(uint64_t ttbr0, uint64_t tcr, uint64_t mair);
void alias_store(volatile uint64_t *va, uint64_t v);
uint64_t probe_load(const volatile uint64_t *va, uint64_t fallback);
void probe_store(volatile uint64_t *va, uint64_t v);
void probe_branch(uintptr_t va);

/* Translation tables (.bss, zeroed by _start before main) */
uint64_t mmu_l1[512] __attribute__((aligned(4096)));        /* VA[38:30] */
uint64_t mmu_l2_low[512] __attribute__((aligned(4096)));    /* 0x0000_0000..0x3fff_ffff */
uint64_t mmu_l2_alias[512] __attribute__((aligned(4096)));  /* 0x8000_0000..0xbfff_ffff */
uint64_t mmu_l3_alias[512] __attribute__((aligned(4096)));  /* 0x8000_0000..0x801f_ffff */

/* Data pages (.data: loaded with the image, never written by _start) */
volatile uint64_t alias_target[512] __attribute__((aligned(4096))) = { 0x5a5a5a5a5a5a5a5aUL };
volatile uint64_t ro_target[512] __attribute__((aligned(4096))) = { 0x2222 };

volatile unsigned mmu_faults;

void exception_handler(struct exc_frame *f, unsigned vector)
{
    unsigned ec = ESR_EC(f->esr);

    if (vector != VEC_CUR_SPX_SYNC)
        default_exception_report(f, vector);

    uart_puts("exc EC=");
    uart_put_hexn(ec, 2);
    uart_puts(" ESR=");
    uart_put_hexn(f->esr, 8);
    uart_puts(" FAR=");
    uart_put_hexn(f->far, 8);
    uart_puts("\n");

    switch (ec) {
    case EC_DABT_CUR:
        f->elr += 4;            /* skip the load/store */
        break;
    case EC_IABT_CUR:
        f->elr = f->x[30];      /* back to the instruction after the blr */
        break;
    default:
        default_exception_report(f, vector);
    }
    mmu_faults++;
}

static void build_tables(void)
{
    /* Level 1: 1 GiB each */
    mmu_l1[0] = (uintptr_t)mmu_l2_low | DESC_TABLE;
    mmu_l1[1] = 0x40000000UL | NORMAL_ATTRS | AP_RW_EL1 | DESC_BLOCK;     /* RAM, identity */
    mmu_l1[2] = (uintptr_t)mmu_l2_alias | DESC_TABLE;

    /* Level 2: 2 MiB each. UART page (and the rest of its 2 MiB) as Device */
    mmu_l2_low[0x09000000UL >> 21] = 0x09000000UL | DEVICE_ATTRS | AP_RW_EL1 | DESC_BLOCK;
    mmu_l2_alias[0] = (uintptr_t)mmu_l3_alias | DESC_TABLE;

    /* Level 3: 4 KiB pages */
    mmu_l3_alias[0] = (uintptr_t)alias_target | NORMAL_ATTRS | AP_RW_EL1 | PXN | UXN | DESC_PAGE;
    mmu_l3_alias[1] = 0;                                                   /* unmapped */
    mmu_l3_alias[2] = (uintptr_t)ro_target | NORMAL_ATTRS | AP_RO_EL1 | PXN | UXN | DESC_PAGE;
}

int main(void)
{
    build_tables();
    mmu_enable((uintptr_t)mmu_l1, TCR_VALUE, MAIR_VALUE);
    uart_puts("mmu: on\n");

    alias_store((volatile uint64_t *)ALIAS_VA, 0x1111);
    uart_puts("alias: ");
    uart_put_hex(alias_target[0]);              /* through the identity mapping */
    uart_puts("\n");

    uart_puts("ro: ");
    uart_put_hex(probe_load((const volatile uint64_t *)RO_VA, 0));
    uart_puts("\n");

    uint64_t v = probe_load((const volatile uint64_t *)UNMAPPED_VA, 0xdead);
    uart_puts("load skipped, x0=");
    uart_put_hex_nz(v);
    uart_puts("\n");

    probe_store((volatile uint64_t *)UNMAPPED_VA, 0x3333);
    probe_store((volatile uint64_t *)RO_VA, 0x4444);
    uart_puts("ro after store: ");
    uart_put_hex(ro_target[0]);
    uart_puts("\n");

    probe_branch(UNMAPPED_VA);
    uart_puts("branch returned\n");

    uart_puts("mmu: faults=");
    uart_put_dec(mmu_faults);
    uart_puts("\n");
    uart_puts("mmu: done\n");
    return 0;
}
