"""Debugger correctness found in a newcomer's trial (issue 15), each checked side by side with
QEMU's gdbstub through the real gdb-multiarch: the same scenario against both stubs must stop
at the same places."""

from __future__ import annotations

import pytest
from tests.helpers.gdb_harness import QemuStub, Stub, require_gdb, run_gdb
from tests.helpers.qemu_runner import elf_symbols


@pytest.fixture(autouse=True)
def _need_gdb():
    require_gdb()


def _both(tmp_path, elf, body: str) -> dict:
    """The gdb scenario against guestdbg and against QEMU: {"guestdbg": results, "qemu": results}."""
    out = {}
    for name, make in (("guestdbg", lambda: Stub(tmp_path / "g", elf)), ("qemu", lambda: QemuStub(tmp_path / "q", elf))):
        with make() as stub:
            r = run_gdb(stub, elf, body)
            r.assert_ok()
            out[name] = r.results
    return out


JUMP_ONTO_BREAKPOINT = """
    connect()
    ex("break bp_a")
    ex("continue")
    check("at_a", pc())
    ex("break bp_c")
    check("c_count_before", val("bp_c_count"))
    ex("jump bp_c")
    check("after_jump", pc())
    check("c_count_after", val("bp_c_count"))
"""


def test_breakpoint_where_the_debugger_moved_pc_is_hit_at_once(guest_dir, tmp_path):
    """`jump bp_c` with a breakpoint at bp_c stops before bp_c runs (guestdbg used to step over
    it and stop at the next call)."""
    elf = guest_dir / "bp_targets.elf"
    syms = elf_symbols(elf)
    r = _both(tmp_path, elf, JUMP_ONTO_BREAKPOINT)
    for name in ("guestdbg", "qemu"):
        assert r[name]["at_a"] == syms["bp_a"], name
        assert r[name]["after_jump"] == syms["bp_c"], name
        assert r[name]["c_count_after"] == r[name]["c_count_before"] == 0, name
    assert r["guestdbg"] == r["qemu"]


STEPI_ON_GUEST_BRK = """
    connect()
    ex("break guest_brk")
    ex("continue")
    check("at_brk", pc())
    check("brk_count_before", val("brk_count"))
    ex("stepi")
    check("after_stepi", pc())
    check("exited", len(EXITS))
"""


def test_stepi_on_the_guests_own_brk_stops(guest_dir, tmp_path):
    """stepi on the guest's own `brk #0x123`: gdb moves PC past it itself and continues to a
    breakpoint it inserts there; the stub must stop there, not run the guest to its end."""
    elf = guest_dir / "bp_targets.elf"
    syms = elf_symbols(elf)
    r = _both(tmp_path, elf, STEPI_ON_GUEST_BRK)
    for name in ("guestdbg", "qemu"):
        assert r[name]["at_brk"] == syms["guest_brk"], name
        assert r[name]["exited"] == 0, name
    assert r["guestdbg"]["after_stepi"] == r["qemu"]["after_stepi"]


DEVICE_WATCH = """
    connect()
    out = ex("awatch *(char*)0x09000000")
    check("accepted", out)
    pcs = []
    for _ in range(3):
        try_ex("continue")
        pcs.append(pc())
    check("pcs", pcs)
    check("exited", len(EXITS))
"""


def test_watchpoint_on_device_memory_fires_before_the_access(guest_dir, tmp_path):
    """`awatch` on the PL011 data register stops at the first UART store, before it, as QEMU
    does (guestdbg used to accept it and never fire)."""
    elf = guest_dir / "hello.elf"
    syms = elf_symbols(elf)
    r = _both(tmp_path, elf, DEVICE_WATCH)
    for name in ("guestdbg", "qemu"):
        assert "atchpoint" in r[name]["accepted"] and r[name]["exited"] == 0, (name, r[name])
        assert all(syms["uart_putc"] <= pc < syms["uart_puts"] for pc in r[name]["pcs"]) or \
            all(pc == r[name]["pcs"][0] for pc in r[name]["pcs"]), (name, r[name])
    assert r["guestdbg"]["pcs"] == r["qemu"]["pcs"]
