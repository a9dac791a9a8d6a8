/*
 * Code the guest copies over `code_slot` (a RAM buffer in .data) and then calls:
 * patched_fn (version 1, returns 1) and later patched_fn_v2 (returns 2, a different first
 * instruction and a different length). Both are position independent.
 */
    .text
    .balign 4
    .global patched_fn, patched_fn_end
    .type patched_fn, %function
patched_fn:
    mov     x0, #1
    ret
patched_fn_end:
    .size patched_fn, . - patched_fn

    .balign 4
    .global patched_fn_v2, patched_fn_v2_end
    .type patched_fn_v2, %function
patched_fn_v2:
    mov     x0, #0
    add     x0, x0, #2
    ret
patched_fn_v2_end:
    .size patched_fn_v2, . - patched_fn_v2

/*
 * void install_code(void *dst, const void *src, const void *src_end)
 * Copies [src, src_end) to dst one 32-bit word at a time (str w: a plain store over the
 * code), then makes it visible to instruction fetch as the architecture requires:
 * DC CVAU over the range, DSB ISH, IC IVAU over the range, DSB ISH, ISB. Line sizes come
 * from CTR_EL0.
 */
    .global install_code
    .type install_code, %function
install_code:
    mov     x3, x0
1:  ldr     w4, [x1], #4
    .global install_store
install_store:
    str     w4, [x3], #4
    cmp     x1, x2
    b.lo    1b
    mrs     x5, ctr_el0
    mov     x7, #4
    ubfx    x6, x5, #16, #4         /* DminLine: log2 of the line size in words */
    lsl     x6, x7, x6
    sub     x8, x6, #1
    bic     x9, x0, x8
2:  dc      cvau, x9
    add     x9, x9, x6
    cmp     x9, x3
    b.lo    2b
    dsb     ish
    and     x6, x5, #0xf            /* IminLine */
    lsl     x6, x7, x6
    sub     x8, x6, #1
    bic     x9, x0, x8
3:  ic      ivau, x9
    add     x9, x9, x6
    cmp     x9, x3
    b.lo    3b
    dsb     ish
    isb
    ret
    .size install_code, . - install_code

    .section .data
    .balign 64
    .global code_slot
    .type code_slot, %object
code_slot:                          /* starts as udf #0 words; loaded with the image */
    .fill   16, 4, 0
    .size code_slot, 64
