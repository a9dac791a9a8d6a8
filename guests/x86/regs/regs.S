/*
 * Every general-purpose register gets a distinct known value, then `regs_set` (a nop) is
 * reached: a debugger stopped there must show rax = 0x1111111111111101, rbx = ...02, and so on
 * in kvm_regs order (rax rbx rcx rdx rsi rdi, rbp = ...07, r8 = ...08 ... r15 = ...0f), and
 * rsp equal to the value saved in `saved_rsp` (gdb numbers rbp before rsp; KVM the other way).
 */
    .section .bss
    .balign 8
    .global saved_rsp
    .type saved_rsp, @object
saved_rsp:
    .skip   8
    .size saved_rsp, 8
saved_regs:
    .skip   8 * 8

    .text
    .global main
    .type main, @function
main:
    lea     saved_regs(%rip), %rax
    mov     %rbx, 0(%rax)
    mov     %rbp, 8(%rax)
    mov     %r12, 16(%rax)
    mov     %r13, 24(%rax)
    mov     %r14, 32(%rax)
    mov     %r15, 40(%rax)
    mov     %rsp, saved_rsp(%rip)
    movabs  $0x1111111111111101, %rax
    movabs  $0x1111111111111102, %rbx
    movabs  $0x1111111111111103, %rcx
    movabs  $0x1111111111111104, %rdx
    movabs  $0x1111111111111105, %rsi
    movabs  $0x1111111111111106, %rdi
    movabs  $0x1111111111111107, %rbp
    movabs  $0x1111111111111108, %r8
    movabs  $0x1111111111111109, %r9
    movabs  $0x111111111111110a, %r10
    movabs  $0x111111111111110b, %r11
    movabs  $0x111111111111110c, %r12
    movabs  $0x111111111111110d, %r13
    movabs  $0x111111111111110e, %r14
    movabs  $0x111111111111110f, %r15
    .global regs_set
regs_set:
    nop
    lea     saved_regs(%rip), %rax
    mov     0(%rax), %rbx
    mov     8(%rax), %rbp
    mov     16(%rax), %r12
    mov     24(%rax), %r13
    mov     32(%rax), %r14
    mov     40(%rax), %r15
    xor     %eax, %eax
    ret
    .size main, . - main
