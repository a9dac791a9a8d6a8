"""Breakpoints at virtual addresses the guest does not map yet (the manager's policy 12), as a
kernel debugger sets them at reset: `break *0xffff...` with the MMU off takes a hardware slot,
whose comparator matches the virtual address once the guest maps and runs it.

The guest is a few instructions assembled here: with the MMU off it builds nothing (its tables
are static data), turns the MMU on with RAM identity-mapped through TTBR0 and also mapped at
HIGH_BASE through TTBR1 (a kernel's layout), and branches to `high_code` at its high address.
"""

from __future__ import annotations

import errno

import pytest

from guestdbg.board.common import elf_symbols
from guestdbg.board.virt import VirtConfig, VirtMachine
from guestdbg.debug.manager import DebugError, GuestDebugManager, StopKind
from guestdbg.gdb.session import GdbSession
from tests.helpers.gdb_harness import Stub, require_gdb, run_gdb
from tests.helpers.mmu_guest import HIGH_BASE, MMU_ASM_HEADER, MMU_ASM_TABLES, RAM, assemble

GUEST_S = MMU_ASM_HEADER + r"""

    .text
    .global _start, mmu_on, high_code, high_done
_start:
    enable_mmu ttbr0_l1, ttbr1_l1
mmu_on:
    ldr     x1, =high_code - RAM + HIGH_BASE
    br      x1
high_code:
    mov     x2, #42
    nop
high_done:
    ldr     x0, =0x84000008   // PSCI SYSTEM_OFF
    hvc     #0
    b       .
""" + MMU_ASM_TABLES


@pytest.fixture(scope="module")
def high_guest(tmp_path_factory):
    return assemble(tmp_path_factory.mktemp("high"), "high", GUEST_S)


def _high(sym: dict[str, int], name: str) -> int:
    return sym[name] - RAM + HIGH_BASE


def _manager(elf) -> tuple[VirtMachine, GuestDebugManager]:
    m = VirtMachine(VirtConfig(), console=lambda b: None)
    m.load_elf(elf)
    return m, GuestDebugManager(m)


def test_break_at_a_high_va_before_the_mmu_is_on_hits_there(high_guest):
    sym = elf_symbols(high_guest)
    m, mgr = _manager(high_guest)
    va = _high(sym, "high_code")
    assert mgr.read_register("pc") == sym["_start"]
    with pytest.raises(DebugError):
        mgr.read_memory(va, 4)  # nothing there yet: the old way could not patch it
    assert mgr.add_breakpoint(va) == "hw"
    report = "\n".join(mgr.slots_report())
    assert "hardware breakpoints: 1/" in report
    assert f"break   {va:#x}  hw (VA not mapped yet): slot 0" in report
    assert [p.kind for p in mgr.debug_points()] == ["break"]
    event = mgr.cont()
    assert event.kind is StopKind.SWBREAK and event.pc == va
    assert mgr.read_register("pc") == va
    assert mgr.read_register("x2") != 42  # stopped before the instruction
    assert mgr.read_memory(va, 4) == mgr.read_memory(sym["high_code"], 4)  # mapped now
    # Resuming steps off it; removing it frees the slot.
    mgr.remove_breakpoint(va)
    assert "hardware breakpoints: 0/" in mgr.slots_report()[0]
    assert mgr.debug_points() == []
    event = mgr.cont()
    assert event.kind is StopKind.EXITED and event.exit_status == 0
    assert mgr.read_register("x2") == 42


def test_resume_from_it_while_still_armed(high_guest):
    sym = elf_symbols(high_guest)
    m, mgr = _manager(high_guest)
    va, done = _high(sym, "high_code"), _high(sym, "high_done")
    mgr.add_breakpoint(va)
    mgr.add_breakpoint(done)
    assert mgr.cont().pc == va
    event = mgr.cont()  # steps over the slot at va, then meets the second
    assert event.kind is StopKind.SWBREAK and event.pc == done
    assert mgr.read_register("x2") == 42
    assert mgr.cont().kind is StopKind.EXITED


def test_no_free_slot_is_a_clear_refusal_and_the_monitor_shows_the_mechanism(high_guest):
    sym = elf_symbols(high_guest)
    m, mgr = _manager(high_guest)
    s = GdbSession(mgr)
    for i in range(mgr.hw_bp_slots):
        mgr.add_hw_breakpoint(sym["_start"] + 4 * i)
    va = _high(sym, "high_code")
    with pytest.raises(DebugError) as e:
        mgr.add_breakpoint(va)
    assert e.value.errno == errno.ENOSPC
    assert "not mapped" in str(e.value) and "hardware slot" in str(e.value)
    mgr.remove_hw_breakpoint(sym["_start"])
    assert mgr.add_breakpoint(va) == "hw"
    reply = s.handle(b"qRcmd," + b"info slots".hex().encode())
    text = bytes.fromhex(reply.payload[1:].decode()).decode()
    assert "hw (VA not mapped yet)" in text
    # A mapped address still gets a software breakpoint.
    assert mgr.add_breakpoint(sym["high_done"]) == "sw"


def test_gdb_break_at_reset_on_a_high_va(high_guest, tmp_path):
    require_gdb()
    sym = elf_symbols(high_guest)
    va = _high(sym, "high_code")
    with Stub(tmp_path / "stub", high_guest) as stub:
        r = run_gdb(stub, high_guest, """
            connect()
            check("entry", pc())
            check("break", try_ex("break *%#x"))
            check("slots", ex("monitor info slots"))
            check("cont", ex("continue"))
            check("pc", pc())
            check("cont2", ex("continue"))
        """ % va)
        status = stub.wait()
    r.assert_ok()
    assert r["entry"] == sym["_start"]
    assert r["break"]["ok"], r["break"]
    assert r["pc"] == va, r.describe()
    assert "Breakpoint 1" in r["cont"], r["cont"]
    assert status == 0
