/*
 * x86-64 guest runtime entry.
 *
 *   _start32  PVH entry (XEN_ELFNOTE_PHYS32_ENTRY), used by qemu-system-x86_64 -kernel:
 *             32-bit protected mode, flat segments, paging off. Builds identity page tables
 *             for the first 4 GiB (2 MiB pages), a GDT with a 64-bit code segment, enables
 *             PAE + long mode + paging and jumps to _start64.
 *   _start64  64-bit entry (the ELF's e_entry), used by guestdbg, which enters it in long mode
 *             with its own page tables, GDT and IDT already loaded. Sets the stack, zeroes .bss,
 *             calls main() and exits through isa-debug-exit with main's return value.
 */
#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define DEBUG_EXIT_PORT 0xf4

    .section .note.Xen, "a", @note
    .balign 4
    .long   4                       /* namesz: "Xen\0" */
    .long   4                       /* descsz */
    .long   XEN_ELFNOTE_PHYS32_ENTRY
    .asciz  "Xen"
    .balign 4
    .long   _start32
    .balign 4

    .section .text.boot, "ax"
    .code32
    .global _start32
    .type _start32, @function
_start32:
    cli
    /* PD entries: 2048 x 2 MiB pages covering 0..4 GiB (present, writable, PS). */
    mov     $boot_pd, %edi
    xor     %ecx, %ecx
1:  mov     %ecx, %eax
    shl     $21, %eax
    or      $0x83, %eax
    mov     %eax, (%edi,%ecx,8)
    movl    $0, 4(%edi,%ecx,8)
    inc     %ecx
    cmp     $2048, %ecx
    jb      1b
    /* PDPT entries 0..3 -> the four page directories; PML4[0] -> PDPT. */
    mov     $boot_pdpt, %edi
    xor     %ecx, %ecx
2:  mov     %ecx, %eax
    shl     $12, %eax
    add     $boot_pd + 3, %eax
    mov     %eax, (%edi,%ecx,8)
    movl    $0, 4(%edi,%ecx,8)
    inc     %ecx
    cmp     $4, %ecx
    jb      2b
    movl    $boot_pdpt + 3, boot_pml4
    movl    $0, boot_pml4 + 4
    /* The rest of PML4 and PDPT: zero (the loader zero-fills NOLOAD sections, but be sure). */
    mov     $boot_pml4 + 8, %edi
    mov     $(4096 - 8) / 4, %ecx
    xor     %eax, %eax
    rep stosl
    mov     $boot_pdpt + 32, %edi
    mov     $(4096 - 32) / 4, %ecx
    rep stosl

    mov     %cr4, %eax
    or      $0x620, %eax            /* PAE | OSFXSR | OSXMMEXCPT */
    mov     %eax, %cr4
    mov     $boot_pml4, %eax
    mov     %eax, %cr3
    mov     $0xc0000080, %ecx       /* EFER */
    rdmsr
    or      $0x100, %eax            /* LME */
    wrmsr
    mov     %cr0, %eax
    or      $0x80010001, %eax       /* PG | WP | PE */
    mov     %eax, %cr0
    lgdt    boot_gdt_desc
    ljmp    $0x08, $1f
    .code64
1:  mov     $0x10, %eax
    mov     %eax, %ds
    mov     %eax, %es
    mov     %eax, %ss
    mov     %eax, %fs
    mov     %eax, %gs
    jmp     _start64
    .size _start32, . - _start32

    .global _start64
    .type _start64, @function
_start64:
    mov     $__stack_top, %esp
    xor     %ebp, %ebp
    cld
    mov     $__bss_start, %edi
    mov     $__bss_end, %ecx
    sub     %edi, %ecx
    xor     %eax, %eax
    rep stosb
    call    main
    mov     %eax, %edi
    call    debug_exit
    .size _start64, . - _start64

    /* debug_exit(status): isa-debug-exit; guestdbg ends with status value, QEMU with (value<<1)|1. */
    .global debug_exit
    .type debug_exit, @function
debug_exit:
    mov     %edi, %eax
    mov     $DEBUG_EXIT_PORT, %dx
    out     %eax, %dx
1:  cli
    hlt
    jmp     1b
    .size debug_exit, . - debug_exit

    .section .rodata
    .balign 16
boot_gdt:
    .quad   0
    .quad   0x00af9a000000ffff      /* 0x08: 64-bit code, DPL 0 */
    .quad   0x00cf92000000ffff      /* 0x10: data, DPL 0 */
boot_gdt_end:
boot_gdt_desc:
    .word   boot_gdt_end - boot_gdt - 1
    .long   boot_gdt

    .section .boot_tables, "aw", @nobits
    .balign 4096
boot_pml4: .skip 4096
boot_pdpt: .skip 4096
boot_pd:   .skip 4 * 4096
