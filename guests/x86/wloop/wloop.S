/*
 * A store loop for watchpoint speed measurements: `wl_iterations` turns (default 1000) of
 * `mov %rcx, wl_counter(%rip); dec %rcx; jnz`. Symbols: wl_body (the store), wl_end,
 * wl_counter (written every turn), wl_idle_page (a page nothing touches).
 */
    .section .data
    .balign 8
    .global wl_iterations
    .type wl_iterations, @object
wl_iterations:
    .quad   1000
    .size wl_iterations, 8
    .global wl_counter
    .type wl_counter, @object
wl_counter:
    .quad   0
    .size wl_counter, 8

    .section .untouched, "aw", @nobits
    .balign 4096
    .global wl_idle_page
    .type wl_idle_page, @object
wl_idle_page:
    .skip   4096
    .size wl_idle_page, 4096

    .section .rodata
done_msg: .asciz "wloop: done\n"

    .text
    .global main
    .type main, @function
main:
    mov     wl_iterations(%rip), %rcx
    test    %rcx, %rcx
    jz      wl_end
    .global wl_body
wl_body:
    mov     %rcx, wl_counter(%rip)
    dec     %rcx
    jnz     wl_body
    .global wl_end
wl_end:
    sub     $8, %rsp
    lea     done_msg(%rip), %rdi
    call    uart_puts
    add     $8, %rsp
    xor     %eax, %eax
    ret
    .size main, . - main
