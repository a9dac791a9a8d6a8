"""Code rewritten through another virtual address (an alias of the same physical page) and made
visible the architected way: the guest cleans the data cache and invalidates the instruction
cache (IC IVAU by address, or IC IALLU), then runs the new instruction, as Linux does when it
patches its text through the fixmap or the linear map. The emulated vCPU keeps its stores to
RAM on Unicorn's fast path, so it learns of such changes from those invalidations
(backends/unicorn_arm64: the SYS-instruction hook); this pins that the new code runs.

The guest maps RAM twice (identity through TTBR0, and at HIGH_BASE through TTBR1), runs
`patchme` at its high address, rewrites its first instruction through the identity alias,
invalidates, and runs it again: x3 = the first result (1), x4 = after IC IVAU (2), x5 = after a
second rewrite and IC IALLU (3).
"""

from __future__ import annotations


import pytest

from guestdbg.arm import kvm_regs as kr
from guestdbg.board.virt import VirtConfig, VirtMachine
from tests.helpers.mmu_guest import MMU_ASM_HEADER, MMU_ASM_TABLES, assemble

GUEST_S = MMU_ASM_HEADER + r"""

    .text
    .global _start, patchme
_start:
    enable_mmu ttbr0_l1, ttbr1_l1, (1<<2)|(1<<12)  // and the C and I caches
    ldr     x20, =patchme - RAM + HIGH_BASE   // where the code runs
    ldr     x21, =patchme                     // its identity alias, where it is rewritten
    blr     x20
    mov     x3, x2                     // 1
    ldr     w6, =0xD2800042            // mov x2, #2
    str     w6, [x21]
    dc      cvau, x21
    dsb     ish
    ic      ivau, x20
    dsb     ish
    isb
    blr     x20
    mov     x4, x2                     // 2
    ldr     w6, =0xD2800062            // mov x2, #3
    str     w6, [x21]
    dc      cvau, x21
    dsb     ish
    ic      iallu
    dsb     ish
    isb
    blr     x20
    mov     x5, x2                     // 3
    ldr     x0, =0x84000008            // PSCI SYSTEM_OFF
    hvc     #0
    b       .

    .balign 4096
patchme:
    mov     x2, #1
    ret
""" + MMU_ASM_TABLES


@pytest.fixture(scope="module")
def alias_guest(tmp_path_factory):
    return assemble(tmp_path_factory.mktemp("alias"), "alias", GUEST_S)


def test_code_rewritten_through_an_alias_runs_after_the_invalidation(alias_guest):
    m = VirtMachine(VirtConfig(), console=lambda b: None)
    m.load_elf(alias_guest)
    assert m.run_to_exit(timeout=30) == 0
    x = [m.vcpu.get_one_reg(kr.KVM_REG_ARM_CORE_X(n)) for n in (3, 4, 5)]
    assert x == [1, 2, 3]


def test_and_under_a_debugger_stepping_through_it(alias_guest):
    """The same with every instruction single-stepped by the debug manager: the stepping path
    (its own slices and hooks) sees the rewritten code too."""
    from guestdbg.debug.manager import GuestDebugManager, StopKind
    m = VirtMachine(VirtConfig(), console=lambda b: None)
    m.load_elf(alias_guest)
    mgr = GuestDebugManager(m)
    for _ in range(200):
        event = mgr.step()
        if event.kind is StopKind.EXITED:
            break
    else:
        pytest.fail("the guest did not finish in 200 steps")
    assert [mgr.read_register(f"x{n}") for n in (3, 4, 5)] == [1, 2, 3]
