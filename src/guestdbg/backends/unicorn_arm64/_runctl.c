/*
 * The hot half of the emulated vCPU's run loop, in C: Unicorn hook callbacks that run for every
 * translation block and every MRS/MSR, where a Python callback would cost 1-30 us each.
 *
 * - runctl_block_hook (UC_HOOK_BLOCK, every block): counts retired instructions (the virtual
 *   clock) and ends the slice at a block boundary when another thread asked for a stop or when
 *   the next block would run past the instruction limit the VMM chose.
 * - runctl_countdown_hook (UC_HOOK_CODE, bounded to one block for one emu_start, or everywhere
 *   while single-stepping): ends the slice before the instruction that would be number
 *   `countdown_end`, for a limit that falls inside a block.
 * - runctl_mrs_hook / runctl_msr_hook (UC_HOOK_INSN): look the register up in a table the VMM
 *   fills. Registers it does not model go straight back to Unicorn (return 0: Unicorn executes
 *   the instruction itself); CNTVCT_EL0/CNTPCT_EL0 read the virtual clock here; modelled ones
 *   call the VMM's callback.
 * - runctl_sys_hook (UC_HOOK_INSN, SYS): IC and TLBI bookkeeping, see below.
 * - runctl_edge_hook (UC_HOOK_EDGE_GENERATED, once per translated block) and runctl_event_hook
 *   (UC_HOOK_CODE on single WFE/SEV/SEVL instructions), with several vCPUs: see near the end.
 *
 * Watchpoints are placed by physical page (the VMM translates each watched virtual page once),
 * so a translation change under a watched page must end the slice for the VMM to re-place
 * them (STOP_XLATE): a write to a translation register whose half of the address space holds
 * a watched page, or a TLBI that may cover one. The VMM lists the watched pages in watch_va.
 *
 * No Unicorn or Python headers or libraries are needed: the few Unicorn entry points used are
 * passed in as function pointers, and the struct layouts are Unicorn 2.1's public ones.
 * Python loads this file with ctypes (guestdbg.backends.unicorn_arm64.runctl) and mirrors
 * `struct runctl` there; keep the two in step.
 */
#include <stddef.h>
#include <stdint.h>
#include <time.h>

typedef void uc_engine;

typedef struct uc_arm64_cp_reg {
    uint32_t crn, crm, op0, op1, op2;
    uint64_t val;
} uc_arm64_cp_reg;

typedef int (*uc_emu_stop_fn)(uc_engine *uc);
typedef int (*uc_reg_read_fn)(uc_engine *uc, int regid, void *value);
typedef int (*uc_reg_write_fn)(uc_engine *uc, int regid, const void *value);
typedef int (*uc_ctl_fn)(uc_engine *uc, int control, ...);
typedef uint32_t (*sysreg_fn)(uc_engine *uc, int reg, const uc_arm64_cp_reg *cp, void *user);
typedef int (*uc_vmem_read_fn)(uc_engine *uc, uint64_t address, int prot, void *bytes, size_t size);

/* unicorn/arm64.h */
#define UC_ARM64_REG_XZR 7
#define UC_ARM64_REG_PC 260
#define UC_ARM64_REG_PSTATE 265
/* uc_ctl(uc, UC_CTL_WRITE(UC_CTL_TB_REMOVE_CACHE, 2), begin, end) */
#define UC_CTL_TB_REMOVE_CACHE_WRITE2 ((9) | (2 << 26) | (1u << 30))

/* sysreg_action values */
enum { ACTION_UNICORN = 0, ACTION_VMM = 1, ACTION_VIRTUAL_COUNTER = 2, ACTION_HOST_COUNTER = 3,
       ACTION_IC_VA = 4, ACTION_IC_ALL = 5, ACTION_TLBI = 6,
       ACTION_XLATE = 7, ACTION_XLATE_TTBR1 = 8, ACTION_XLATE_TTBR0 = 9 };

/* stop_reason bits */
#define STOP_LIMIT 1u
#define STOP_REQUEST 2u
#define STOP_ICACHE 4u
#define STOP_XLATE 8u
#define STOP_WFE 16u
#define STOP_SITES 32u

/* WFE, SEV and SEVL (several vCPUs): see runctl_edge_hook and runctl_event_hook */
#define UC_PROT_EXEC 4
#define EVENTS_STEP 2 /* state.events in a single step (1: in a run) */
#define INSN_WFE 0xD503205Fu
#define INSN_SEV 0xD503209Fu
#define INSN_SEVL 0xD50320BFu
#define TB_MAX_BYTES 2048  /* 512 instructions: QEMU's longest block */
#define SITES_NEW 32       /* sites found and not yet hooked by the VMM */
#define SITES_MAX 128      /* sites hooked at most (each code hook costs every translation a check) */
#define SITES_TABLE 256    /* open-addressing set of the sites found */

typedef struct uc_tb {
    uint64_t pc;
    uint16_t icount;
    uint16_t size;
} uc_tb;

/* watch_flags: which halves of the address space hold watched pages (VA bit 55 picks the
 * TTBR), and whether watch_va lists them all */
#define WATCH_LOW 1u
#define WATCH_HIGH 2u
#define WATCH_OVERFLOW 4u
#define WATCH_PAGES 64

/* IC IVAU pages remembered before the run loop must drop their translations */
#define IC_PAGES 64
/* kernel-half pages known executable at EL1 (the VMM walked the guest's tables) */
#define EXEC_PAGES 256

/* Virtual time: one instruction is one nanosecond (QEMU's -icount shift=0), and the generic
 * timer counts at 62.5 MHz (CNTFRQ_EL0 on QEMU's virt board): one tick per 16 instructions. */
#define INSNS_PER_COUNTER_TICK_SHIFT 4

struct runctl {
    uc_emu_stop_fn emu_stop;
    uc_reg_read_fn reg_read;
    uc_reg_write_fn reg_write;
    sysreg_fn vmm_read;    /* the VMM's MRS handler (ACTION_VMM) */
    sysreg_fn vmm_write;   /* the VMM's MSR handler */
    void *vmm_user;

    uint64_t icount;       /* instructions of every block entered, less the VMM's corrections */
    uint64_t limit;        /* never enter a block that would take icount past this */
    uint64_t block_start;  /* the last block counted: where it starts ... */
    uint64_t block_insns;  /* ... and how many instructions it has */
    uint64_t split_pc;     /* a block the limit fell inside, to be entered under the countdown */
    uint64_t split_insns;
    uint64_t countdown_end; /* the countdown hook stops before the instruction with this icount */
    uint64_t counter_offset; /* added to the counter (mod 2^64): idle skips, TIMER_CNT writes */
    uint32_t in_block;     /* the last counted block may have been left part way */
    uint32_t stop_reason;  /* STOP_* bits, why the hooks ended the slice */
    volatile uint32_t stop_request; /* set from any thread: end the slice at the next block */
    uint32_t split_armed;  /* the next block at split_pc is let in despite the limit */
    uint32_t ic_pending;   /* an IC instruction ran: end the slice before any other block */
    uint32_t ic_all;       /* ... IC IALLU(IS), or more pages than ic_va holds: drop everything */
    uint32_t ic_count;     /* pages in ic_va */
    uint32_t wfe_armed;    /* a WFE is about to run: the next block, if at wfe_after, ends the slice */
    uint64_t tlbi_count;   /* TLBIs executed */
    uc_ctl_fn ctl;
    uint64_t exec_gen;     /* bumped by TLBIs of everything and writes to translation registers */
    uint64_t ic_inline;    /* IC IVAUs served in the hook */
    uint64_t ttbr1_baddr;  /* TTBR1_EL1's table address last written (an ASID change keeps pages) */
    uint64_t exec_page[EXEC_PAGES];
    uint64_t exec_page_gen[EXEC_PAGES]; /* an entry is valid while this equals exec_gen + 1 */
    uint64_t ic_block;     /* the block the IC instruction is in (a by-line loop stays in it) */
    uint64_t ic_va[IC_PAGES]; /* virtual pages IC IVAU named */
    uint32_t watch_flags;  /* WATCH_* bits; 0: nothing watched, translation changes go unseen */
    uint32_t watch_count;  /* pages in watch_va */
    uint64_t watch_va[WATCH_PAGES]; /* watched virtual pages as TLBI names them: VA[55:12] */
    uint64_t time_offset;  /* icount + time_offset = the machine's virtual time (several vCPUs
                            * share one clock: the board sets it before each vCPU's slice) */
    uint32_t events;       /* WFE ends the slice, SEV and SEVL count (a board with several vCPUs) */
    uint32_t local_event;  /* the event register as SEVL sets it (WFE clears it) */
    uint64_t wfe_after;    /* the address after the armed WFE */
    uint64_t sev_count;    /* SEVs executed */
    uint64_t wfe_count;    /* WFEs that ended the slice */
    uc_vmem_read_fn vmem_read;
    uint32_t site_new;     /* sites in site_va the VMM is still to hook */
    uint32_t site_count;   /* sites in site_table */
    uint64_t site_va[SITES_NEW];
    uint64_t site_table[SITES_TABLE]; /* every site found (virtual address; 0: empty) */
    uint8_t sysreg_action[2][1 << 16]; /* [is_write][op0:2 op1:3 CRn:4 CRm:4 op2:3] */
};

static inline unsigned sysreg_key(const uc_arm64_cp_reg *cp)
{
    return ((cp->op0 & 3u) << 14) | ((cp->op1 & 7u) << 11) | ((cp->crn & 15u) << 7) |
           ((cp->crm & 15u) << 3) | (cp->op2 & 7u);
}

void runctl_block_hook(uc_engine *uc, uint64_t address, uint32_t size, void *user)
{
    struct runctl *s = user;
    uint64_t insns = size >> 2;

    if (s->wfe_armed) {
        /* The event hook saw a WFE about to run: if this block is the one after it, the WFE
         * ran (Unicorn's WFE yields to its loop and goes on here) and the slice ends before
         * this block, for the VMM to let another vCPU run. Anything else (an IRQ taken, a stop
         * before the WFE) disarms it. */
        s->wfe_armed = 0;
        if (address == s->wfe_after) {
            s->stop_reason |= STOP_WFE;
            s->wfe_count++;
            s->in_block = 0;
            s->emu_stop(uc);
            return;
        }
    }
    if (s->stop_request) {
        s->stop_reason |= STOP_REQUEST;
    } else if (s->ic_pending && address != s->ic_block) {
        /* Code was changed and the instruction cache invalidated: the run loop drops the stale
         * translations before the guest goes past the invalidating loop (its ISB ends the
         * block, so the changed code can only run in a later one). */
        s->stop_reason |= STOP_ICACHE;
    } else if (s->icount + insns > s->limit &&
               !(s->split_armed && address == s->split_pc)) {
        s->split_pc = address;
        s->split_insns = insns;
        s->stop_reason |= STOP_LIMIT;
    } else {
        s->split_armed = 0;
        s->icount += insns;
        s->block_start = address;
        s->block_insns = insns;
        s->in_block = 1;
        return;
    }
    /* Stopping here, before the block's first instruction, is exact: Unicorn synced PC to the
     * block's start before calling us, and checks for the stop before running the block. */
    s->in_block = 0;
    s->emu_stop(uc);
}

/* The instruction count before the instruction at `pc` in the block being run. */
static inline uint64_t icount_at(const struct runctl *s, uint64_t pc)
{
    if (s->in_block && pc >= s->block_start && pc - s->block_start < 4 * s->block_insns)
        return s->icount - s->block_insns + ((pc - s->block_start) >> 2);
    return s->icount;
}

void runctl_countdown_hook(uc_engine *uc, uint64_t address, uint32_t size, void *user)
{
    struct runctl *s = user;

    /* Stateless, so it does not matter whether other code hooks run before or after it. */
    if (icount_at(s, address) >= s->countdown_end) {
        s->stop_reason |= STOP_LIMIT;
        s->emu_stop(uc); /* before this instruction: Unicorn checks right after code hooks */
    }
}

/* The host's CLOCK_MONOTONIC in ns (Python's time.monotonic_ns(): the same clock). One
 * counter tick is 16 ns at 62.5 MHz, so the same shift turns it into ticks. */
static uint64_t runctl_host_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The instruction count at the MRS being executed: Unicorn syncs PC before an MRS hook. */
static uint64_t icount_now(uc_engine *uc, struct runctl *s)
{
    uint64_t pc = 0;
    s->reg_read(uc, UC_ARM64_REG_PC, &pc);
    return icount_at(s, pc);
}

uint32_t runctl_mrs_hook(uc_engine *uc, int reg, const uc_arm64_cp_reg *cp, void *user)
{
    struct runctl *s = user;
    uint64_t value;

    switch (s->sysreg_action[0][sysreg_key(cp)]) {
    case ACTION_UNICORN:
        return 0;
    case ACTION_VIRTUAL_COUNTER:
        value = ((icount_now(uc, s) + s->time_offset) >> INSNS_PER_COUNTER_TICK_SHIFT) + s->counter_offset;
        if (reg != UC_ARM64_REG_XZR)
            s->reg_write(uc, reg, &value);
        return 1;
    case ACTION_HOST_COUNTER:
        value = (runctl_host_ns() >> INSNS_PER_COUNTER_TICK_SHIFT) + s->counter_offset;
        if (reg != UC_ARM64_REG_XZR)
            s->reg_write(uc, reg, &value);
        return 1;
    default:
        return s->vmm_read(uc, reg, cp, s->vmm_user);
    }
}

/* The write or TLBI being executed may move a watched page: end the slice after it (an MSR or
 * SYS write ends its translation block) so that the VMM re-places the watchpoints before the
 * guest's next access. */
static void stop_for_xlate(uc_engine *uc, struct runctl *s)
{
    s->stop_reason |= STOP_XLATE;
    s->emu_stop(uc);
}

/* May this TLBI (EL1&0 forms, op1 0) change the translation of a watched page? */
static int tlbi_hits_watch(const struct runctl *s, const uc_arm64_cp_reg *cp)
{
    unsigned i;
    uint64_t page;

    if (!s->watch_flags || cp->op1 != 0)
        return 0; /* EL2/EL3 forms never change the EL1&0 regime's tables */
    if ((cp->crm == 1 || cp->crm == 3 || cp->crm == 7) && (cp->op2 & 1)) {
        /* VAE1, VAAE1, VALE1, VAALE1 (OS, IS, local): one page, VA[55:12] in Xt[43:0] */
        if (s->watch_flags & WATCH_OVERFLOW)
            return 1;
        page = cp->val & 0xfffffffffffull;
        for (i = 0; i < s->watch_count; i++)
            if (s->watch_va[i] == page)
                return 1;
        return 0;
    }
    if ((cp->crm == 1 || cp->crm == 3 || cp->crm == 7) && cp->op2 == 2)
        return (s->watch_flags & WATCH_LOW) != 0; /* ASIDE1: non-global (user) entries only */
    return 1; /* VMALLE1 and the range forms (RVA*): anything may have moved */
}

uint32_t runctl_msr_hook(uc_engine *uc, int reg, const uc_arm64_cp_reg *cp, void *user)
{
    struct runctl *s = user;

    unsigned action = s->sysreg_action[1][sysreg_key(cp)];

    if (action == ACTION_UNICORN)
        return 0;
    if (action == ACTION_XLATE_TTBR0) {
        /* TTBR0 never maps the kernel half; Linux writes it at every uaccess (SW_TTBR0_PAN)
         * and context switch, so only a watched page in the lower half makes it matter. */
        if (s->watch_flags & WATCH_LOW)
            stop_for_xlate(uc, s);
        return 0;
    }
    if (action == ACTION_XLATE_TTBR1) {
        /* Linux writes TTBR1 at every context switch for its ASID (TCR.A1): the kernel's
         * global pages stay as they were unless the table address moves. */
        if ((cp->val & 0x0000fffffffffffeull) != s->ttbr1_baddr) {
            s->ttbr1_baddr = cp->val & 0x0000fffffffffffeull;
            s->exec_gen++;
            if (s->watch_flags & WATCH_HIGH)
                stop_for_xlate(uc, s);
        }
        return 0;
    }
    s->exec_gen++; /* translation registers (and the VMM's ones): known-executable pages lapse */
    if (action == ACTION_XLATE) {
        if (s->watch_flags)
            stop_for_xlate(uc, s); /* SCTLR_EL1 (the MMU on or off), TCR_EL1 */
        return 0;
    }
    return s->vmm_write(uc, reg, cp, s->vmm_user);
}

/* SYS (op0 = 1): IC IVAU / IC IALLU(IS). Unicorn tracks writes to code only through the TLB entry
 * of the virtual address the code was translated from, so code written through another mapping
 * (Linux patches its text through the linear map or a fixmap, and fills user pages through the
 * linear map) would keep running stale; the architecture has the guest say so with IC, and the
 * run loop then drops the translations (core.py, _sync_icache). TLBIs lapse the known-
 * executable pages they name and may move a watched page. Unicorn executes every SYS itself
 * (DC ZVA, DC CVAU, TLBI, AT ...). */
uint32_t runctl_sys_hook(uc_engine *uc, int reg, const uc_arm64_cp_reg *cp, void *user)
{
    struct runctl *s = user;
    uint64_t page, pstate = 0;
    unsigned slot;

    (void)reg;
    switch (s->sysreg_action[1][sysreg_key(cp)]) {
    case ACTION_IC_VA:
        page = cp->val & ~(uint64_t)0xfff;
        slot = (unsigned)(page >> 12) % EXEC_PAGES;
        if (s->exec_page[slot] == page && s->exec_page_gen[slot] == s->exec_gen + 1) {
            /* A kernel page the VMM found executable at EL1, with no TLBI or translation
             * register write since: Unicorn can find its code by this address without a
             * fault, so drop it here and let the guest go on. */
            s->reg_read(uc, UC_ARM64_REG_PSTATE, &pstate);
            if (((pstate >> 2) & 3) == 1) {
                s->ctl(uc, UC_CTL_TB_REMOVE_CACHE_WRITE2, page, page + 0x1000);
                s->ic_inline++;
                return 0;
            }
        }
        if (s->ic_count == 0 || s->ic_va[s->ic_count - 1] != page) {
            if (s->ic_count < IC_PAGES)
                s->ic_va[s->ic_count++] = page;
            else
                s->ic_all = 1;
        }
        break;
    case ACTION_IC_ALL:
        s->ic_all = 1;
        break;
    case ACTION_TLBI:
        s->tlbi_count++;
        if (tlbi_hits_watch(s, cp))
            stop_for_xlate(uc, s);
        /* TLBI VAE1, VAAE1, VALE1, VAALE1 (IS, OS): one page, VA[55:12] in Xt[43:0]. */
        if (cp->op1 == 0 && (cp->crm == 1 || cp->crm == 3 || cp->crm == 7) && (cp->op2 & 1)) {
            slot = (unsigned)(cp->val & 0xfffffffffffull) % EXEC_PAGES;
            if (((s->exec_page[slot] >> 12) & 0xfffffffffffull) == (cp->val & 0xfffffffffffull))
                s->exec_page_gen[slot] = 0;
        } else {
            s->exec_gen++;
        }
        return 0;
    default:
        return 0;
    }
    s->ic_pending = 1;
    s->ic_block = s->block_start;
    return 0; /* Unicorn executes the IC itself (a no-op there) */
}

/* WFE, SEV and SEVL, for a board with several vCPUs. Unicorn treats WFE as a yield to its own
 * loop (QEMU's helper_wfe, EXCP_YIELD), which no hook sees, and SEV and SEVL as no-ops; and
 * UC_HOOK_INSN does not cover hints. So the sites are found as code is translated:
 * runctl_edge_hook (UC_HOOK_EDGE_GENERATED: once per new block) reads the block's code and,
 * for a WFE, SEV or SEVL not seen before, lists it in site_va and ends the slice before the
 * block runs (STOP_SITES); the VMM puts runctl_event_hook on each (a UC_HOOK_CODE bounded to
 * the one instruction) and drops the block, so the code is translated again with the hook
 * before it ever runs. Nothing is added to the blocks without such an instruction: the run
 * loop's per-block cost is unchanged. Unicorn skips the edge hook for the first block an engine
 * translates (no previous block); past SITES_MAX sites, WFE stays a no-op. */
static int site_known_or_add(struct runctl *s, uint64_t va)
{
    unsigned i, slot = (unsigned)(va >> 2) % SITES_TABLE;

    for (i = 0; i < SITES_TABLE; i++, slot = (slot + 1) % SITES_TABLE) {
        if (s->site_table[slot] == va)
            return 1;
        if (s->site_table[slot] == 0)
            break;
    }
    if (s->site_count >= SITES_MAX || s->site_new >= SITES_NEW || i == SITES_TABLE)
        return 1; /* no room (now): left unhooked, a no-op */
    s->site_table[slot] = va;
    s->site_count++;
    s->site_va[s->site_new++] = va;
    return 0;
}

void runctl_edge_hook(uc_engine *uc, uc_tb *cur, uc_tb *prev, void *user)
{
    struct runctl *s = user;
    uint32_t code[TB_MAX_BYTES / 4];
    unsigned i, n, added = 0;

    (void)prev;
    if (cur->size < 4 || cur->size > TB_MAX_BYTES ||
        s->vmem_read(uc, cur->pc, UC_PROT_EXEC, code, cur->size) != 0)
        return;
    n = cur->size >> 2;
    for (i = 0; i < n; i++)
        if ((code[i] == INSN_WFE || code[i] == INSN_SEV || code[i] == INSN_SEVL) &&
                cur->pc + 4 * i != 0 && !site_known_or_add(s, cur->pc + 4 * i))
            added = 1;
    if (added) {
        /* The block will not run (Unicorn checks for a stop at its start, and calls no block
         * hook once a stop is asked for); the one before it ran whole. */
        s->stop_reason |= STOP_SITES;
        s->in_block = 0;
        s->emu_stop(uc);
    }
}

void runctl_event_hook(uc_engine *uc, uint64_t address, uint32_t size, void *user)
{
    struct runctl *s = user;
    uint32_t insn;

    (void)size;
    if (!s->events || icount_at(s, address) >= s->countdown_end)
        return; /* the countdown ends the slice before this instruction: it runs in the next */
    if (s->vmem_read(uc, address, UC_PROT_EXEC, &insn, 4) != 0)
        return; /* the code at a site may have changed since: look at what is there now */
    switch (insn) {
    case INSN_SEV:
        s->sev_count++;
        break;
    case INSN_SEVL:
        s->local_event = 1;
        break;
    case INSN_WFE:
        if (s->local_event) {
            s->local_event = 0; /* the event register was set: this WFE completes at once */
            break;
        }
        if (s->events == EVENTS_STEP) {
            s->wfe_after = address + 4; /* a single step: the WFE completes, and the VMM lets the */
            break;                      /* vCPU wait from there as a run would (stepped_into_wait) */
        }
        /* No stop here: a code hook that stops keeps the hooks after it (a breakpoint's, the
         * countdown) from running. The block hook ends the slice once the WFE has run. */
        s->wfe_armed = 1;
        s->wfe_after = address + 4;
        break;
    }
}

/* For the Python mirror to check its layout against. */
uint64_t runctl_sizeof(void) { return sizeof(struct runctl); }
uint64_t runctl_offsetof_sysreg_action(void) { return __builtin_offsetof(struct runctl, sysreg_action); }
