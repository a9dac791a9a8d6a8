"""End to end: the real gdb-multiarch (batch mode, Python scripts) and lldb drive guestdbg's GDB
stub over guests built from guests/. Each test starts its own stub (`guestdbg run ... --gdb
... --wait`), runs one debugger scenario, and checks the values the debugger saw, the guest's
console output and the stub's exit. See tests/gdb_harness.py for the machinery."""

from __future__ import annotations

import re
import struct
import time

import pytest

from gdb_harness import Stub, lldb_missing_reason, require_gdb, run_gdb, run_lldb
from qemu_runner import elf_read, elf_symbols

HELLO_OUT = "hello: uart\nS\nhello: semihosting write0\nhello: exiting with 7\n"
WATCH_OUT = ("watch: start\nwdata: 00112222333333334444444444444444000000555555555555555500000000006666"
             "666666666666777777777777777799999999999999998888888888888888\nwatch: done\n")
MMU_OUT = ("mmu: on\nalias: 0x0000000000001111\nro: 0x0000000000002222\n"
           "exc EC=0x25 ESR=0x96000007 FAR=0x80001000\nload skipped, x0=0xdead\n"
           "exc EC=0x25 ESR=0x96000047 FAR=0x80001000\nexc EC=0x25 ESR=0x9600004f FAR=0x80002000\n"
           "ro after store: 0x0000000000002222\nexc EC=0x21 ESR=0x86000007 FAR=0x80001000\n"
           "branch returned\nmmu: faults=4\nmmu: done\n")


@pytest.fixture(autouse=True)
def _need_gdb():
    require_gdb()


def _insn_word(elf, addr: int) -> int:
    return struct.unpack("<I", elf_read(elf, addr, 4))[0]


# ---------------------------------------------------------------------------------------------
# 1. break (software), x/i at the breakpoint, info registers, run to exit
# ---------------------------------------------------------------------------------------------
def test_break_xi_registers_and_exit(guest_dir, tmp_path):
    elf = guest_dir / "hello.elf"
    syms = elf_symbols(elf)
    with Stub(tmp_path, elf) as stub:
        r = run_gdb(stub, elf, """
            connect()
            check("entry_pc", pc())
            # Keep breakpoints in the target while stopped, so reads at the breakpoint go
            # through the stub's shadowing of its BRK patch.
            ex("set breakpoint always-inserted on")
            check("break", ex("break main"))
            check("slots", ex("monitor info slots"))
            check("cont", ex("continue"))
            check("pc", pc())
            check("xi", ex("x/i $pc"))
            check("xw", val("*(unsigned int *)$pc"))
            check("regs", ex("info registers"))
            for r in ["x0", "x29", "x30", "sp", "pc"]:
                check(r, val("(unsigned long)$" + r))
            check("cpsr", int(gdb.selected_frame().read_register("cpsr")))
            check("cont2", ex("continue"))
        """)
        status = stub.wait()
    r.assert_ok()
    assert r["entry_pc"] == syms["_start"]
    assert "Breakpoint 1 at %#x" % syms["main"] in r["break"]
    slots = r["slots"]
    assert "hardware breakpoints: 0/6 used" in slots
    assert re.search(r"break\s+%#x\s+software \(BRK #0" % syms["main"], slots), slots
    assert "Breakpoint 1, main" in r["cont"]
    assert r["pc"] == syms["main"]
    # x/i shows the original instruction, not the BRK the stub patched in
    assert "brk" not in r["xi"] and "stp\tx29, x30, [sp, #-16]!" in r["xi"], r["xi"]
    assert r["xw"] == _insn_word(elf, syms["main"])
    assert r["pc"] == syms["main"]
    assert syms["_start"] < r["x30"] < syms["main"]            # returns into _start
    assert syms["__stack_bottom"] < r["sp"] <= syms["__stack_top"] and r["sp"] % 16 == 0
    assert r["cpsr"] & 0x3CF == 0x3C5                          # EL1h, DAIF masked
    regs = r["regs"]
    for name in ["x0", "x15", "x30", "sp", "pc", "cpsr", "fpsr", "fpcr", "vbar_el1"]:
        assert re.search(r"^%s\s+0x[0-9a-f]+" % name, regs, re.M), name
    assert re.search(r"^pc\s+%#x\s+%#x <main>" % (syms["main"], syms["main"]), regs, re.M)
    assert re.search(r"^vbar_el1\s+%#x" % syms["vectors"], regs, re.M)
    assert "exited with code 07" in r["cont2"]
    assert r.exits == [{"exit_code": 7}]
    assert status == 7
    assert stub.stdout == HELLO_OUT
