"""A guest that stores through non-executable mappings (as every kernel maps its data, and as
Linux patches its text: through the fixmap or the linear map, both PXN) while the debugger has
a watchpoint on the page, or a software breakpoint on the code being patched.

The emulated vCPU does such stores itself when the page is protected for the debugger. It
used to drop the stored page's translations by the store's virtual address, and Unicorn walks
that address as an instruction fetch: the PXN mapping made it raise a prefetch abort in the
guest (Debian's kernel oopsed in ftrace_init with a breakpoint set, and panicked in the timer
interrupt with a watchpoint on jiffies). And a store over a software breakpoint through
another mapping overwrote the BRK behind the debugger's back.

The guest maps the first 2 MiB of RAM a second time at ALIAS, execute-never (PXN | UXN).
"""

from __future__ import annotations

import pytest

from guestdbg.arm import kvm_regs as kr
from guestdbg.board.common import elf_symbols
from guestdbg.board.virt import VirtConfig, VirtMachine
from guestdbg.debug.manager import GuestDebugManager, StopKind, WatchKind
from tests.helpers.mmu_guest import BLOCK_2M as BLOCK, HIGH_BASE, MMU_ASM_HEADER, MMU_ASM_TABLES, RAM, assemble, level2_table

ALIAS_ENTRY = 10
ALIAS = HIGH_BASE + ALIAS_ENTRY * BLOCK     # RAM + 0, execute-never
XN = (1 << 53) | (1 << 54)
MOV_X0_2 = 0xD2800040

GUEST_S = MMU_ASM_HEADER + rf"""
    .text
    .global _start, patchme, neighbour_store, watched_store, alias_code_store, data
_start:
    enable_mmu ttbr0_l1, ttbr1_l1_xn
    ldr     x10, =data - RAM + {ALIAS:#x}
    mov     x1, #1
neighbour_store:
    str     x1, [x10, #8]               // the watched page, not the watched word
    mov     x1, #2
watched_store:
    str     x1, [x10]
    bl      patchme
    mov     x4, x0                      // 1
    ldr     x11, =patchme - RAM + {ALIAS:#x}
    ldr     w0, ={MOV_X0_2:#x}
alias_code_store:
    str     w0, [x11]                   // rewrite patchme through the execute-never alias
    dc      cvau, x11
    dsb     ish
    adr     x12, patchme
    ic      ivau, x12
    dsb     ish
    isb
    bl      patchme
    mov     x3, x0                      // 2
    ldr     x0, =0x84000008             // PSCI SYSTEM_OFF
    hvc     #0
    b       .

    .balign 4096
patchme:
    mov     x0, #1
    ret

    .data
    .balign 4096
data:
    .quad   0, 0
    .balign 4096
ttbr1_l1_xn:
    .quad   l2 + 3
    .fill   511, 8, 0
""" + level2_table("l2", lambda n: RAM | XN if n == ALIAS_ENTRY else RAM + n * BLOCK) + MMU_ASM_TABLES


@pytest.fixture(scope="module")
def xn_guest(tmp_path_factory):
    return assemble(tmp_path_factory.mktemp("xn"), "xn", GUEST_S)


def test_stores_through_execute_never_mappings_under_a_watchpoint_and_a_breakpoint(xn_guest):
    m = VirtMachine(VirtConfig(), console=lambda b: None)
    m.load_elf(xn_guest)
    sym = elf_symbols(xn_guest)
    mgr = GuestDebugManager(m)
    watched = sym["data"] - RAM + ALIAS
    mgr.add_hw_breakpoint(sym["neighbour_store"])
    assert mgr.cont().pc == sym["neighbour_store"]   # the MMU is on: the alias is mapped
    mgr.remove_hw_breakpoint(sym["neighbour_store"])
    mgr.add_watchpoint(watched, 8, WatchKind.WRITE)
    assert mgr.add_breakpoint(sym["patchme"]) == "sw"
    stops = []
    for _ in range(6):
        event = mgr.cont()
        stops.append((event.kind, event.pc))
        if event.kind is StopKind.EXITED:
            break
    assert stops == [(StopKind.WATCH, sym["watched_store"]), (StopKind.SWBREAK, sym["patchme"]),
                     (StopKind.SWBREAK, sym["patchme"]), (StopKind.EXITED, stops[-1][1])]
    assert event.exit_status == 0
    # The guest's new code ran (x3) and is what the debugger shows under its breakpoint.
    assert [m.vcpu.get_one_reg(kr.KVM_REG_ARM_CORE_X(n)) for n in (4, 3)] == [1, 2]
    assert int.from_bytes(mgr.read_memory(sym["patchme"], 4), "little") == MOV_X0_2
    assert int.from_bytes(m.vm.read_phys(sym["data"], 16), "little") == 2 | (1 << 64)
