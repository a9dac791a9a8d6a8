/*
 * Tight loop for speed measurements (the x86-64 twin of guests/loop).
 *
 *   main:       4 instructions before the first loop_body instruction
 *   loop_body:  4 instructions per iteration (add, xor, dec, jnz), no memory access
 *   loop_end:   the rest of main (stores the result, prints "loop: done", returns 0)
 *
 * Instructions executed from main to loop_end = 4 + 4 * loop_iterations (4 when
 * loop_iterations == 0: the test skips the loop). CPL0 code is emulated on kvm_pvm hosts at
 * about 1 M instructions/s, so the default is small.
 */
    .section .data
    .balign 8
    .global loop_iterations
    .type loop_iterations, @object
loop_iterations:
    .quad   100000
    .size loop_iterations, 8
    .global loop_result
    .type loop_result, @object
loop_result:
    .quad   0
    .size loop_result, 8

    .section .untouched, "aw", @nobits
    .balign 4096
    .global idle_page
    .type idle_page, @object
idle_page:
    .skip   4096
    .size idle_page, 4096

    .section .rodata
done_msg: .asciz "loop: done\n"

    .text
    .global main
    .type main, @function
main:
    mov     loop_iterations(%rip), %rcx
    xor     %eax, %eax
    xor     %edx, %edx
    test    %rcx, %rcx
    jz      loop_end
    .global loop_body
loop_body:
    add     $1, %rax
    xor     %rax, %rdx
    dec     %rcx
    jnz     loop_body
    .global loop_end
loop_end:
    mov     %rdx, loop_result(%rip)
    sub     $8, %rsp
    lea     done_msg(%rip), %rdi
    call    uart_puts
    add     $8, %rsp
    xor     %eax, %eax
    ret
    .size main, . - main
