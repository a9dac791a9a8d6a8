/*
 * MMU enable and the probe accesses. Every probed instruction carries a global
 * label so tests can find its address in the symbol table.
 */
    .text
    .global mmu_enable, alias_store, probe_load, probe_store, probe_branch
    .global alias_store_insn, probe_load_insn, probe_store_insn
    .global probe_branch_insn, probe_branch_return

#define SCTLR_M (1 << 0)
#define SCTLR_A (1 << 1)
#define SCTLR_C (1 << 2)
#define SCTLR_I (1 << 12)

    /* void mmu_enable(uint64_t ttbr0, uint64_t tcr, uint64_t mair) */
    .type mmu_enable, %function
mmu_enable:
    dsb     ish                 /* the table writes are complete */
    tlbi    vmalle1
    ic      iallu
    dsb     ish
    isb
    msr     mair_el1, x2
    msr     tcr_el1, x1
    msr     ttbr0_el1, x0
    isb
    mrs     x3, sctlr_el1
    orr     x3, x3, #SCTLR_M
    orr     x3, x3, #SCTLR_C
    orr     x3, x3, #SCTLR_I
    bic     x3, x3, #SCTLR_A
    msr     sctlr_el1, x3
    isb
    ret
    .size mmu_enable, . - mmu_enable

    /* void alias_store(volatile uint64_t *va, uint64_t v) */
    .type alias_store, %function
alias_store:
alias_store_insn:
    str     x1, [x0]
    ret
    .size alias_store, . - alias_store

    /* uint64_t probe_load(const volatile uint64_t *va, uint64_t fallback):
       returns fallback if the load is skipped */
    .type probe_load, %function
probe_load:
    mov     x2, x0
    mov     x0, x1
probe_load_insn:
    ldr     x0, [x2]
    ret
    .size probe_load, . - probe_load

    /* void probe_store(volatile uint64_t *va, uint64_t v) */
    .type probe_store, %function
probe_store:
probe_store_insn:
    str     x1, [x0]
    ret
    .size probe_store, . - probe_store

    /* void probe_branch(uintptr_t va): blr to va; the handler resumes at
       probe_branch_return (the LR the blr wrote) */
    .type probe_branch, %function
probe_branch:
    stp     x29, x30, [sp, #-16]!
    mov     x29, sp
probe_branch_insn:
    blr     x0
probe_branch_return:
    ldp     x29, x30, [sp], #16
    ret
    .size probe_branch, . - probe_branch
