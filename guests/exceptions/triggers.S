/*
 * Each trigger is a tiny function; the faulting instruction carries a
 * global label so tests can find its address in the symbol table.
 */
#define UNASSIGNED_ADDR 0x7ff00000   /* between end of 128 MiB RAM and 0x8000_0000 */

    .text
    .global trigger_svc, trigger_brk, trigger_udf, trigger_dabt, trigger_hvc, trigger_iabt
    .global exc_svc, exc_brk, exc_udf, exc_dabt, exc_hvc, exc_iabt

    .type trigger_svc, %function
trigger_svc:
exc_svc:
    svc     #0x42
    ret
    .size trigger_svc, . - trigger_svc

    .type trigger_brk, %function
trigger_brk:
exc_brk:
    brk     #0x7
    ret
    .size trigger_brk, . - trigger_brk

    .type trigger_udf, %function
trigger_udf:
exc_udf:
    .inst   0x00000000          /* UDF #0 */
    ret
    .size trigger_udf, . - trigger_udf

    /* uint64_t trigger_dabt(uint64_t fallback): returns fallback if the load is skipped */
    .type trigger_dabt, %function
trigger_dabt:
    mov     x1, #UNASSIGNED_ADDR
exc_dabt:
    ldr     x0, [x1]
    ret
    .size trigger_dabt, . - trigger_dabt

    /* int64_t trigger_hvc(uint64_t fn): HVC #0 with x0 = fn, returns x0 */
    .type trigger_hvc, %function
trigger_hvc:
exc_hvc:
    hvc     #0
    ret
    .size trigger_hvc, . - trigger_hvc

    /* void trigger_iabt(void): a call to an unassigned address; the handler returns to LR */
    .type trigger_iabt, %function
trigger_iabt:
    stp     x29, x30, [sp, #-16]!
    mov     x1, #UNASSIGNED_ADDR
exc_iabt:
    blr     x1
    ldp     x29, x30, [sp], #16
    ret
    .size trigger_iabt, . - trigger_iabt

    .section .rodata
    .global exc_unassigned_addr
    .balign 8
exc_unassigned_addr:
    .quad   UNASSIGNED_ADDR
