"""Tiny AArch64 guests written in the tests themselves, with RAM mapped twice: identity through
TTBR0 and at HIGH_BASE through TTBR1 (a kernel's layout). `MMU_ASM_HEADER` gives the constants
and the `enable_mmu TTBR0_TABLE, TTBR1_TABLE[, SCTLR_BITS]` macro, `MMU_ASM_TABLES` the two level-1 tables (static data, so the guest builds nothing with the MMU
off), and `assemble` builds the ELF with the aarch64 cross gcc (linked at 0x40080000)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.helpers.qemu_runner import DEFAULT_CROSS, missing_tool

RAM = 0x4000_0000
HIGH_BASE = 0xFFFF_FF80_0000_0000  # TTBR1, T1SZ = 25: VA[38:30] = 0 -> the RAM gigabyte

MMU_ASM_HEADER = r"""
    .equ HIGH_BASE, 0xFFFFFF8000000000
    .equ RAM, 0x40000000
    .equ BLOCK_NORMAL, 0x705      // AF | SH inner | AttrIndx 1 | block
    .equ BLOCK_DEVICE, 0x401      // AF | AttrIndx 0 | block
    .equ TCR, (25 | (1 << 8) | (1 << 10) | (3 << 12) | (25 << 16) | (1 << 24) | (1 << 26) | (3 << 28) | (2 << 30) | (2 << 32))
    .equ MAIR, 0xff00

    // Turn the MMU on with these level-1 tables (labels), TCR and MAIR as above; `sctlr` ORs
    // more SCTLR_EL1 bits than M (bit 0). Clobbers x0 and x1.
    .macro enable_mmu ttbr0, ttbr1, sctlr=0
    ldr     x0, =\ttbr0
    msr     ttbr0_el1, x0
    ldr     x0, =\ttbr1
    msr     ttbr1_el1, x0
    ldr     x0, =TCR
    msr     tcr_el1, x0
    ldr     x0, =MAIR
    msr     mair_el1, x0
    isb
    mrs     x0, sctlr_el1
    ldr     x1, =1 | \sctlr
    orr     x0, x0, x1
    msr     sctlr_el1, x0
    isb
    .endm
"""

BLOCK_2M = 2 << 20


def level2_table(label: str, descriptor_of) -> str:
    """A level-2 table of 512 2 MiB block descriptors (normal memory, AF, inner shareable), entry n
    = descriptor_of(n) | 0x705: the output address and any upper attributes (XN) it adds."""
    return f"{label}:\n" + "".join(f"    .quad   {descriptor_of(n):#x} | 0x705\n" for n in range(512))


MMU_ASM_TABLES = r"""
    .data
    .balign 4096
ttbr0_l1:
    .quad   0x00000000 | BLOCK_DEVICE
    .quad   RAM | BLOCK_NORMAL
    .fill   510, 8, 0
ttbr1_l1:
    .quad   RAM | BLOCK_NORMAL
    .fill   511, 8, 0
"""


def assemble(directory: Path, name: str, source: str) -> Path:
    """`directory`/`name`.elf from `source` (fails under CI without the cross gcc, else skips)."""
    cross = os.environ.get("CROSS", DEFAULT_CROSS)
    if shutil.which(cross + "gcc") is None:
        missing_tool(f"{cross}gcc is not installed (apt install gcc-aarch64-linux-gnu)")
    src, elf = directory / f"{name}.S", directory / f"{name}.elf"
    src.write_text(source)
    subprocess.run([cross + "gcc", "-nostdlib", "-static", "-Wl,-Ttext=0x40080000", "-Wl,--build-id=none",
                    "-o", str(elf), str(src)], check=True, capture_output=True, text=True)
    return elf
