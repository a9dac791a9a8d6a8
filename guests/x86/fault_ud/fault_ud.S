/* Prints a line, then executes ud2 at `ud_insn`: #UD (vector 6). Never returns. */
    .section .rodata
msg: .asciz "fault_ud: executing ud2\n"

    .text
    .global main
    .type main, @function
main:
    sub     $8, %rsp
    lea     msg(%rip), %rdi
    call    uart_puts
    .global ud_insn
ud_insn:
    ud2
    .size main, . - main
