/*
 * Prints a line, then stores to `pf_address` (256 GiB: beyond the identity map of the first
 * 4 GiB, so not present) at `pf_insn`: #PF (vector 14), CR2 = pf_address, error code 0x2
 * (write, not present). Never returns.
 */
    .set pf_address, 0x4000000000
    .global pf_address
    .section .rodata
msg: .asciz "fault_pf: writing to an unmapped address\n"

    .text
    .global main
    .type main, @function
main:
    sub     $8, %rsp
    lea     msg(%rip), %rdi
    call    uart_puts
    movabs  $pf_address, %rax
    .global pf_insn
pf_insn:
    movq    $0x1234, (%rax)
    ud2
    .size main, . - main
