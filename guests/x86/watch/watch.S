/*
 * Labelled loads and stores on `wdata` for watchpoint tests (the x86-64 twin of guests/watch).
 * Every acc_* label is the address of exactly one access instruction; %rbx holds &wdata.
 * Values: strb 0x11 @1, strh 0x2222 @2, str32 0x33333333 @4, str64 0x4444444444444444 @8,
 * unaligned str64 0x5555555555555555 @0x13 (crosses a quadword), a pair of str64
 * 0x6666.../0x7777... @0x20/@0x28 (two instructions), `rep movsb` of 16 bytes @0x30 from wsrc;
 * then loads of bytes @1, quadword @8, quadword @0x20, and a read-modify-write `addq $1` @0x38.
 */
    .section .data
    .balign 64
    .global wdata
    .type wdata, @object
wdata:
    .fill   64, 1, 0
    .size wdata, 64
    .global wsrc
    .type wsrc, @object
wsrc:
    .quad   0x9999999999999999, 0x8888888888888888
    .size wsrc, 16

    .section .untouched, "aw", @nobits
    .balign 4096
    .global far_page
    .type far_page, @object
far_page:
    .skip   4096
    .size far_page, 4096

    .section .bss
    .balign 16
    .global wload
    .type wload, @object
wload:                         /* values read back by the loads, for gdb */
    .skip   32
    .size wload, 32

    .section .rodata
hdr:    .asciz "watch: start\n"
lbl:    .asciz "wdata: "
done:   .asciz "watch: done\n"

    .text
    .global main
    .type main, @function
main:
    push    %rbx
    push    %r12
    sub     $8, %rsp
    lea     hdr(%rip), %rdi
    call    uart_puts

    lea     wdata(%rip), %rbx
    movabs  $0x4444444444444444, %r8
    movabs  $0x5555555555555555, %r9
    movabs  $0x6666666666666666, %r10
    movabs  $0x7777777777777777, %r11

    .global acc_strb
acc_strb:
    movb    $0x11, 1(%rbx)
    .global acc_strh
acc_strh:
    movw    $0x2222, 2(%rbx)
    .global acc_str_w
acc_str_w:
    movl    $0x33333333, 4(%rbx)
    .global acc_str_x
acc_str_x:
    mov     %r8, 8(%rbx)
    .global acc_str_unaligned
acc_str_unaligned:
    mov     %r9, 0x13(%rbx)
    .global acc_stp
acc_stp:
    mov     %r10, 0x20(%rbx)
    .global acc_stp2
acc_stp2:
    mov     %r11, 0x28(%rbx)
    lea     wsrc(%rip), %rsi
    lea     0x30(%rbx), %rdi
    mov     $16, %ecx
    .global acc_rep_movsb
acc_rep_movsb:
    rep movsb

    .global acc_ldrb
acc_ldrb:
    movzbl  1(%rbx), %eax
    .global acc_ldr_x
acc_ldr_x:
    mov     8(%rbx), %rcx
    .global acc_ldp
acc_ldp:
    mov     0x20(%rbx), %rdx
    .global acc_rmw
acc_rmw:
    addq    $1, 0x38(%rbx)
    .global acc_end
acc_end:
    lea     wload(%rip), %rsi
    mov     %rax, 0(%rsi)
    mov     %rcx, 8(%rsi)
    mov     %rdx, 16(%rsi)

    lea     lbl(%rip), %rdi
    call    uart_puts
    xor     %r12d, %r12d
1:  movzbl  (%rbx,%r12), %edi
    call    put_byte_hex
    inc     %r12
    cmp     $64, %r12
    jb      1b
    mov     $'\n', %edi
    call    uart_putc
    lea     done(%rip), %rdi
    call    uart_puts

    xor     %eax, %eax
    add     $8, %rsp
    pop     %r12
    pop     %rbx
    ret
    .size main, . - main

    /* put_byte_hex(%dil): two lowercase hex digits */
    .type put_byte_hex, @function
put_byte_hex:
    push    %rbx
    movzbl  %dil, %ebx
    mov     %ebx, %edi
    shr     $4, %edi
    call    hexdigit
    mov     %eax, %edi
    call    uart_putc
    mov     %ebx, %edi
    and     $0xf, %edi
    call    hexdigit
    mov     %eax, %edi
    call    uart_putc
    pop     %rbx
    ret
    .size put_byte_hex, . - put_byte_hex

hexdigit:
    lea     '0'(%rdi), %eax
    lea     'a' - 10(%rdi), %ecx
    cmp     $10, %edi
    cmovae  %ecx, %eax
    ret
