"""Watchpoints that follow the guest's page tables as it edits them.

The emulated vCPU places a watchpoint on the physical page its virtual address translates to
(backends/unicorn_arm64/debughw.py). When the guest moves that virtual address to another
physical page, the architecture has it say so: a TLBI after the table edit, or a write to a
translation register. The vCPU then places the watchpoint again. These tests pin that the
watchpoint keeps hitting at its virtual address after every kind of move, as on hardware
(which matches virtual addresses) and under QEMU TCG, for hardware slots and for the page
traps used past the slots.

The guest watches WATCH_VA (upper half, a 2 MiB block through a level-2 table) and LOW_VA
(lower half). It stores to each, moving WATCH_VA's block between BLOCK_A and BLOCK_B:
  1. the level-2 descriptor edited, a TLBI VAE1IS of an unrelated page, then of the watched one;
  2. the descriptor edited back, TLBI VMALLE1IS;
  3. TTBR1_EL1 switched to a second table that maps the block at BLOCK_B;
and LOW_VA moved by switching TTBR0_EL1 to a table that maps it 2 MiB further on (Linux's
SW_TTBR0_PAN switches TTBR0 this way at every user access).
"""

from __future__ import annotations

import pytest

from guestdbg.board.common import elf_symbols
from guestdbg.board.virt import VirtConfig, VirtMachine
from guestdbg.debug.manager import GuestDebugManager, StopKind, WatchKind
from tests.helpers.mmu_guest import BLOCK_2M as BLOCK, HIGH_BASE, MMU_ASM_HEADER, RAM, assemble, level2_table

WATCH_ENTRY = 8                               # level-2 entry of the watched block
WATCH_VA = HIGH_BASE + WATCH_ENTRY * BLOCK + 0x1230
BLOCK_A, BLOCK_B = RAM + WATCH_ENTRY * BLOCK, RAM + (WATCH_ENTRY + 1) * BLOCK
LOW_VA = 0x8000_4560                          # TTBR0 gigabyte 2: RAM + 0x4560, later RAM + 2 MiB + 0x4560
LOW_PA_BEFORE, LOW_PA_AFTER = RAM + 0x4560, RAM + BLOCK + 0x4560
FILLERS = [RAM + 0x100 + 8 * i for i in range(4)]  # never written: they take the hardware slots


GUEST_S = MMU_ASM_HEADER + rf"""
    .text
    .global _start, first_store, store_after_tlbi_va, store_after_vmalle1, store_after_ttbr1
    .global store_low, store_after_ttbr0
_start:
    enable_mmu ttbr0_l1, ttbr1_l1
    ldr     x9, ={WATCH_VA:#x}
    ldr     x10, =l2_table + 8 * {WATCH_ENTRY}
    mov     x1, #1
first_store:
    str     x1, [x9]
    ldr     x0, ={BLOCK_B:#x} | 0x705
    str     x0, [x10]
    dsb     ishst
    ldr     x0, ={(WATCH_VA + 0x10_0000) >> 12:#x}
    tlbi    vae1is, x0
    ldr     x0, ={WATCH_VA >> 12 & 0xFFF_FFFF_FFFF:#x}
    tlbi    vae1is, x0
    dsb     ish
    isb
    mov     x1, #2
store_after_tlbi_va:
    str     x1, [x9]
    ldr     x0, ={BLOCK_A:#x} | 0x705
    str     x0, [x10]
    dsb     ishst
    tlbi    vmalle1is
    dsb     ish
    isb
    mov     x1, #3
store_after_vmalle1:
    str     x1, [x9]
    ldr     x0, =ttbr1_l1_b
    msr     ttbr1_el1, x0
    isb
    mov     x1, #4
store_after_ttbr1:
    str     x1, [x9]
    ldr     x11, ={LOW_VA:#x}
    mov     x1, #5
store_low:
    str     x1, [x11]
    ldr     x0, =ttbr0_l1_b
    msr     ttbr0_el1, x0
    isb
    mov     x1, #6
store_after_ttbr0:
    str     x1, [x11]
    ldr     x0, =0x84000008            // PSCI SYSTEM_OFF
    hvc     #0
    b       .

    .data
    .balign 4096
ttbr0_l1:
    .quad   0x00000000 | BLOCK_DEVICE
    .quad   RAM | BLOCK_NORMAL
    .quad   RAM | BLOCK_NORMAL
    .fill   509, 8, 0
ttbr0_l1_b:
    .quad   0x00000000 | BLOCK_DEVICE
    .quad   RAM | BLOCK_NORMAL
    .quad   l2_low + 3
    .fill   509, 8, 0
ttbr1_l1:
    .quad   l2_table + 3
    .fill   511, 8, 0
ttbr1_l1_b:
    .quad   l2_table_b + 3
    .fill   511, 8, 0
    .balign 4096
""" + level2_table("l2_table", lambda n: RAM + n * BLOCK) \
    + level2_table("l2_table_b", lambda n: BLOCK_B if n == WATCH_ENTRY else RAM + n * BLOCK) \
    + level2_table("l2_low", lambda n: RAM + (n + 1) * BLOCK)

# The stores that must stop, in order (label, watched address).
EXPECTED_HITS = [("first_store", WATCH_VA), ("store_after_tlbi_va", WATCH_VA), ("store_after_vmalle1", WATCH_VA),
                 ("store_after_ttbr1", WATCH_VA), ("store_low", LOW_VA), ("store_after_ttbr0", LOW_VA)]


@pytest.fixture(scope="module")
def remap_guest(tmp_path_factory):
    return assemble(tmp_path_factory.mktemp("remap"), "remap", GUEST_S)


@pytest.mark.parametrize("mechanism", ["hardware", "page-trap"])
def test_write_watchpoints_follow_table_edits_tlbis_and_ttbr_switches(remap_guest, mechanism):
    m = VirtMachine(VirtConfig(), console=lambda b: None)
    m.load_elf(remap_guest)
    symbols = elf_symbols(remap_guest)
    mgr = GuestDebugManager(m)
    if mechanism == "page-trap":
        for addr in FILLERS:
            mgr.add_watchpoint(addr, 8, WatchKind.WRITE)
    watches = [mgr.add_watchpoint(va, 8, WatchKind.WRITE) for va in (WATCH_VA, LOW_VA)]
    assert all(bool(w.trapped) == (mechanism == "page-trap") for w in watches)
    hits = []
    for _ in range(len(EXPECTED_HITS) + 1):
        event = mgr.cont()
        if event.kind is StopKind.EXITED:
            break
        assert event.kind is StopKind.WATCH, event
        hits.append((event.pc, event.watch_addr))
    assert hits == [(symbols[label], va) for label, va in EXPECTED_HITS]
    assert event.kind is StopKind.EXITED and event.exit_status == 0

    def u64(pa: int) -> int:
        return int.from_bytes(m.vm.read_phys(pa, 8), "little")
    # Each store went where the tables said at the time.
    assert [u64(BLOCK_A + 0x1230), u64(BLOCK_B + 0x1230)] == [3, 4]
    assert [u64(LOW_PA_BEFORE), u64(LOW_PA_AFTER)] == [5, 6]
