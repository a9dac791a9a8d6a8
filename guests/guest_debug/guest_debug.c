/*
 * The guest programs its OWN debug registers (self-hosted debug):
 *  (a) hardware breakpoint 0 on target_fn   -> EC 0x31
 *  (b) write watchpoint 0 on gvar           -> EC 0x35, WnR=1
 *  (c) write/read back BVR1/BCR1/WVR1/WCR1 and MDSCR_EL1
 */
#include <stdint.h>
#include "exc.h"
#include "uart.h"

#define MDSCR_KDE (1u << 13)
#define MDSCR_MDE (1u << 15)

#define BCR_E_PMC3_BAS_F   0x1e7u   /* E | PMC=0b11 | BAS=0xF */
#define WCR_STORE_8        (1u | (3u << 1) | (2u << 3) | (0xffu << 5))  /* 0x1ff7 */

#define BVR1_VALUE 0x0000deadbeef0000ull
#define BCR1_VALUE 0x000001e6ull   /* E=0, PMC=0b11, BAS=0xF */
#define WVR1_VALUE 0x0000123456789ab8ull
#define WCR1_VALUE 0x000001feull   /* E=0, PAC=0b11, LSC=0b11, BAS=0x0F */

#define SYSREG_READ(name) ({ uint64_t _v; __asm__ volatile("mrs %0, " #name : "=r"(_v)); _v; })
#define SYSREG_WRITE(name, v) __asm__ volatile("msr " #name ", %0" :: "r"((uint64_t)(v)) : "memory")
#define ISB() __asm__ volatile("isb" ::: "memory")

volatile uint64_t gvar __attribute__((aligned(8))) = 0xabcd;
volatile unsigned target_fn_runs;
volatile unsigned bkpt_hits, watch_hits;

__attribute__((noinline, noipa)) void target_fn(void)
{
    target_fn_runs++;
}

/* Single STR so the watchpoint hits exactly one instruction (label store_gvar). */
__attribute__((noinline, noipa)) void store_gvar(uint64_t v)
{
    __asm__ volatile(".global store_gvar_insn\n"
                     "store_gvar_insn:\n\t"
                     "str %x1, [%0]"
                     :: "r"(&gvar), "r"(v) : "memory");
}

static void put_line_hex(const char *name, uint64_t v)
{
    uart_puts(name);
    uart_put_hex(v);
    uart_puts("\n");
}

void exception_handler(struct exc_frame *f, unsigned vector)
{
    unsigned ec = ESR_EC(f->esr);

    if (vector != VEC_CUR_SPX_SYNC)
        default_exception_report(f, vector);

    if (ec == EC_BKPT_CUR) {
        bkpt_hits++;
        uart_puts("bkpt: EC=");
        uart_put_hexn(ec, 2);
        uart_puts(" ESR=");
        uart_put_hexn(f->esr, 8);
        uart_puts(f->elr == (uint64_t)&target_fn ? " ELR=target_fn" : " ELR=?");
        uart_puts(" runs=");
        uart_put_dec(target_fn_runs);
        uart_puts("\n");
        SYSREG_WRITE(dbgbcr0_el1, 0);
        ISB();
        return;                         /* re-executes target_fn's first insn */
    }
    if (ec == EC_WATCH_CUR) {
        extern char store_gvar_insn[];
        watch_hits++;
        uart_puts("watch: EC=");
        uart_put_hexn(ec, 2);
        uart_puts(" ESR=");
        uart_put_hexn(f->esr, 8);
        uart_puts(" WnR=");
        uart_put_dec((f->esr >> 6) & 1);
        uart_puts(" FAR-&gvar=");
        uart_put_sdec((int64_t)(f->far - (uint64_t)&gvar));
        uart_puts(f->elr == (uint64_t)store_gvar_insn ? " ELR=store_gvar_insn" : " ELR=?");
        uart_puts(" gvar=");
        uart_put_hex_nz(gvar);
        uart_puts("\n");
        SYSREG_WRITE(dbgwcr0_el1, 0);
        ISB();
        return;                         /* store re-executes and completes */
    }
    default_exception_report(f, vector);
}

int main(void)
{
    uint64_t dfr0 = SYSREG_READ(id_aa64dfr0_el1);
    uart_puts("dfr0=");
    uart_put_hex(dfr0);
    uart_puts(" brps=");
    uart_put_dec(((dfr0 >> 12) & 0xf) + 1);
    uart_puts(" wrps=");
    uart_put_dec(((dfr0 >> 20) & 0xf) + 1);
    uart_puts(" ctx_cmps=");
    uart_put_dec(((dfr0 >> 28) & 0xf) + 1);
    uart_puts("\n");

    /* Unlock the OS lock (set at reset) and the OS double lock. */
    SYSREG_WRITE(oslar_el1, 0);
    SYSREG_WRITE(osdlr_el1, 0);
    SYSREG_WRITE(mdscr_el1, MDSCR_MDE | MDSCR_KDE);
    ISB();
    __asm__ volatile("msr daifclr, #8" ::: "memory");
    ISB();

    /* (a) hardware breakpoint */
    SYSREG_WRITE(dbgbvr0_el1, (uint64_t)&target_fn);
    SYSREG_WRITE(dbgbcr0_el1, BCR_E_PMC3_BAS_F);
    ISB();
    target_fn();
    uart_puts("after bkpt: runs=");
    uart_put_dec(target_fn_runs);
    uart_puts(" hits=");
    uart_put_dec(bkpt_hits);
    uart_puts("\n");

    /* (b) write watchpoint */
    SYSREG_WRITE(dbgwvr0_el1, (uint64_t)&gvar);
    SYSREG_WRITE(dbgwcr0_el1, WCR_STORE_8);
    ISB();
    store_gvar(0x1234);
    uart_puts("after watch: gvar=");
    uart_put_hex_nz(gvar);
    uart_puts(" hits=");
    uart_put_dec(watch_hits);
    uart_puts("\n");

    /* (c) read back registers */
    SYSREG_WRITE(dbgbvr1_el1, BVR1_VALUE);
    SYSREG_WRITE(dbgbcr1_el1, BCR1_VALUE);
    SYSREG_WRITE(dbgwvr1_el1, WVR1_VALUE);
    SYSREG_WRITE(dbgwcr1_el1, WCR1_VALUE);
    ISB();
    put_line_hex("dbgbvr1=", SYSREG_READ(dbgbvr1_el1));
    put_line_hex("dbgbcr1=", SYSREG_READ(dbgbcr1_el1));
    put_line_hex("dbgwvr1=", SYSREG_READ(dbgwvr1_el1));
    put_line_hex("dbgwcr1=", SYSREG_READ(dbgwcr1_el1));
    put_line_hex("mdscr=", SYSREG_READ(mdscr_el1));

    /* Leave the debug hardware off. */
    SYSREG_WRITE(dbgbcr1_el1, 0);
    SYSREG_WRITE(dbgwcr1_el1, 0);
    SYSREG_WRITE(mdscr_el1, 0);
    __asm__ volatile("msr daifset, #8" ::: "memory");
    ISB();

    uart_puts("gvar=");
    uart_put_hex_nz(gvar);
    uart_puts("\n");
    uart_puts("guest_debug: done\n");
    return 0;
}
