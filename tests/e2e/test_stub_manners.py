"""Issue 15, "gdb and lldb manners": what the stub tells debuggers about memory, breakpoints,
resets and errors, checked with the real gdb-multiarch and lldb, side by side with
qemu-system-aarch64's gdbstub where QEMU has the behaviour, plus the README's Python snippets.

The lost client's breakpoints are in tests/e2e/test_gdb_e2e.py
(test_lost_connection_keeps_breakpoints_and_the_next_gdb_sees_their_stops)."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tests.helpers.gdb_harness import (
    QemuBiosStub,
    QemuStub,
    Stub,
    lldb_missing_reason,
    require_gdb,
    run_gdb,
    run_lldb_on,
)
from tests.helpers.qemu_runner import elf_symbols, missing_tool
from tests.helpers.support import Guest

from guestdbg.board.virt import VirtMachine
from guestdbg.debug.manager import DebugError, GuestDebugManager, StopKind, WatchKind
from guestdbg.debug.regions import LAST_ADDRESS
from guestdbg.gdb.session import GdbSession, Reply

REPO = Path(__file__).resolve().parents[2]


def _need_lldb():
    reason = lldb_missing_reason()
    if reason:
        missing_tool(reason)


def _monitor(session: GdbSession, command: str) -> str:
    r = session.handle(b"qRcmd," + command.encode().hex().encode())
    assert isinstance(r, Reply)
    return "" if r.payload == b"OK" else bytes.fromhex(r.payload[1:].decode()).decode()


def _region(session: GdbSession, addr: int) -> dict:
    reply = session.handle(b"qMemoryRegionInfo:%x" % addr).payload.decode()
    fields = dict(f.split(":", 1) for f in reply.split(";") if f)
    out = {"start": int(fields["start"], 16), "size": int(fields["size"], 16),
           "permissions": fields.get("permissions", "")}
    if "name" in fields:
        out["name"] = bytes.fromhex(fields["name"]).decode()
    return out


# ---------------------------------------------------------------------------------------------
# 1. Memory described honestly: lldb's expressions print no region assertion


def test_lldb_expressions_print_no_region_assertion_like_qemu(guest_dir, tmp_path):
    """lldb 14 hunts for unused address space by walking qMemoryRegionInfo (or the memory map)
    region after region; a map that claimed all of 0x0800_0000..2**64 as RAM made it assert
    "GetMemoryRegionInfo() succeeded, then failed". QEMU answers neither and lldb is quiet."""
    _need_lldb()
    elf = guest_dir / "bp_targets.elf"
    syms = elf_symbols(elf)
    commands = [f"breakpoint set --address {syms['bp_b']:#x}", "continue",
                "expression bp_a_count", "p bp_a_count + 1",
                "memory read --size 4 --format x --count 1 &bp_a_count",
                "memory region 0x0", "memory region 0x08000000", "memory region 0x08020000",
                "memory region 0x09000000", f"memory region {syms['bp_b']:#x}", "memory region 0x48000000"]
    outputs = {}
    for name, make in (("guestdbg", lambda: Stub(tmp_path, elf, name="stub")),
                       ("qemu", lambda: QemuStub(tmp_path, elf))):
        with make() as stub:
            res = run_lldb_on(stub, elf, commands)
        outputs[name] = res.stdout + res.stderr
    for name, out in outputs.items():
        assert "Assertion failed" not in out and "succeeded, then failed" not in out, (name, out)
        assert "stop reason = breakpoint 1.1" in out, (name, out)
        assert re.search(r"\$0 = 1\b", out) and re.search(r"\$1 = 2\b", out), (name, out)
        assert "0x40101080: 0x00000001" in out, (name, out)
    out = outputs["guestdbg"]
    assert "[0x0000000000000000-0x0000000004000000) r-x rom" in out, out  # flash0
    assert "[0x0000000008000000-0x0000000008020000) rw- gic" in out, out   # the GIC
    assert "[0x0000000008020000-0x0000000009000000) ---" in out, out                # a hole
    assert "[0x0000000009000000-0x0000000009001000) rw- pl011" in out, out
    assert "[0x0000000040000000-0x0000000048000000) rwx ram" in out, out
    assert "[0x0000000048000000-0xffffffffffffffff) ---" in out, out


def test_memory_regions_tile_the_address_space_as_lldb_walks_it(guest_dir):
    """lldb's walk (IRMemoryMap::FindSpace): from 0, query the end of each region; every query
    must succeed, and a hole big enough ends it. Here: the whole space, with the MMU off."""
    g = Guest(guest_dir / "bp_targets.elf")
    s = GdbSession(GuestDebugManager(g.machine))
    addr, seen = 0, []
    while True:
        r = _region(s, addr)
        assert r["start"] == addr and r["size"] > 0, (hex(addr), r)
        seen.append((r["start"], r.get("name", ""), r["permissions"]))
        addr = r["start"] + r["size"]
        if addr >= LAST_ADDRESS:
            break
    assert seen == [(0, "rom", "rx"), (0x0400_0000, "rom", "rx"), (0x0800_0000, "gic", "rw"), (0x0802_0000, "", ""),
                    (0x0900_0000, "pl011", "rw"), (0x0900_1000, "", ""), (0x4000_0000, "ram", "rwx"),
                    (0x4800_0000, "", "")]
    assert _region(s, 0x0900_0800)["start"] == 0x0900_0000              # any address inside
    assert _region(s, LAST_ADDRESS)["permissions"] == ""
    assert s.handle(b"qMemoryRegionInfo:zz").payload.startswith(b"E")


def test_memory_regions_follow_the_page_tables_with_the_mmu_on(guest_dir):
    """The `mmu` guest maps VA 0x8000_0000 to RAM (read-write), leaves 0x8000_1000 unmapped and
    maps 0x8000_2000 read-only: lldb is told so, page by page, for virtual addresses."""
    g = Guest(guest_dir / "mmu.elf")
    m = GuestDebugManager(g.machine)
    m.add_breakpoint(g.sym["alias_store"])
    assert m.cont().pc == g.sym["alias_store"]
    s = GdbSession(m)
    alias, unmapped, ro = _region(s, 0x8000_0000), _region(s, 0x8000_1234), _region(s, 0x8000_2000)
    assert (alias["start"], alias["size"], alias["permissions"], alias["name"]) == (0x8000_0000, 0x1000, "rw", "ram")
    assert (unmapped["start"], unmapped["size"], unmapped["permissions"]) == (0x8000_1000, 0x1000, "")
    assert (ro["start"], ro["permissions"]) == (0x8000_2000, "r")
    code = _region(s, g.sym["alias_store"])
    assert code["start"] <= g.sym["alias_store"] < code["start"] + code["size"] and "x" in code["permissions"]
    gap = _region(s, 1 << 40)                          # outside TTBR0's range: unmapped
    assert gap["permissions"] == "" and gap["size"] <= 1 << 20


# ---------------------------------------------------------------------------------------------
# 2. monitor info slots under gdb's default settings


def test_info_slots_shows_what_gdb_armed_while_the_guest_ran(guest_dir, tmp_path):
    require_gdb()
    elf = guest_dir / "bp_targets.elf"
    syms = elf_symbols(elf)
    with Stub(tmp_path, elf) as stub:
        r = run_gdb(stub, elf, """
            connect()
            ex("break *%#x" % sym("bp_b"))
            ex("hbreak *%#x" % sym("bp_c"))
            ex("watch *(unsigned int *)%#x" % sym("bp_a_count"))
            check("c", ex("continue"))      # .bss zeroing stores to bp_a_count: the watch
            check("slots", ex("monitor info slots"))
            ex("set breakpoint always-inserted on")
            ex("stepi")                     # gdb inserts them at its next resume, then keeps them
            check("slots_on", ex("monitor info slots"))
        """)
    r.assert_ok()
    slots = r["slots"]
    assert slots.startswith("hardware breakpoints: 0/6 used; hardware watchpoints: 0/4 used\n"), slots
    assert "set breakpoint always-inserted on" in slots
    last = slots[slots.index("while the guest last continued:"):]
    assert "hardware breakpoints: 1/6 used; hardware watchpoints: 1/4 used" in last
    assert re.search(r"hbreak\s+%#x\s+slot 0" % syms["bp_c"], last), last
    assert re.search(r"break\s+%#x\s+software" % syms["bp_b"], last), last
    assert re.search(r"watch\s+%#x\+4\s+hw:0" % syms["bp_a_count"], last), last
    # always-inserted on: gdb puts them back at once, so "now" is the whole story
    on = r["slots_on"]
    assert "hardware breakpoints: 1/6 used" in on and "while the guest last continued" not in on, on


# ---------------------------------------------------------------------------------------------
# 3. breakpoints left by another client: listed, cleared, and their stops reported


def test_monitor_breakpoints_marks_and_clears_what_this_client_did_not_insert(guest_dir):
    g = Guest(guest_dir / "bp_targets.elf")
    m = GuestDebugManager(g.machine)
    m.add_breakpoint(g.sym["bp_a"])                          # "left by a lost client"
    m.add_watchpoint(g.sym["bp_c_count"], 4, WatchKind.WRITE)
    s = GdbSession(m)
    s.handle(b"qSupported:swbreak+;hwbreak+")
    assert s.handle(b"Z1,%x,4" % g.sym["bp_b"]).payload == b"OK"     # this client's
    text = _monitor(s, "breakpoints")
    assert "3 armed in the VM" in text
    assert re.search(r"hbreak\s+%#x\s+slot 0\s+\(this debugger's\)" % g.sym["bp_b"], text), text
    assert re.search(r"break\s+%#x\s+software.*left by an earlier client" % g.sym["bp_a"], text), text
    assert re.search(r"watch\s+%#x\+4.*left by an earlier client" % g.sym["bp_c_count"], text), text
    # a stop at a foreign breakpoint or watchpoint carries no reason (gdb shows SIGTRAP); at
    # our own, hwbreak
    e = m.cont()
    assert e.kind is StopKind.WATCH                           # .bss zeroing in _start
    p = s.stopped(e)
    assert p.startswith(b"T05") and b"watch:" not in p
    e = m.cont()
    assert (e.kind, e.pc) == (StopKind.SWBREAK, g.sym["bp_a"])
    p = s.stopped(e)
    assert p.startswith(b"T05") and b"swbreak" not in p and b"hwbreak" not in p
    e = m.cont()
    assert (e.kind, e.pc) == (StopKind.HWBREAK, g.sym["bp_b"])
    assert b"hwbreak:;" in s.stopped(e)
    assert s.handle(b"Z2,%x,4" % g.sym["bp_c_count"]).payload == b"OK"   # now this client's too
    e = m.cont()
    assert e.kind is StopKind.WATCH
    assert b"watch:%x;" % g.sym["bp_c_count"] in s.stopped(e)
    assert s.handle(b"z2,%x,4" % g.sym["bp_c_count"]).payload == b"OK"
    assert "removed 1" in _monitor(s, "breakpoints clear")       # bp_a (the z2 took the watch)
    assert [pt.kind for pt in m.debug_points()] == ["hbreak"]
    assert "(this debugger's)" in _monitor(s, "breakpoints")
    assert s.handle(b"z1,%x,4" % g.sym["bp_b"]).payload == b"OK"
    assert "no breakpoints or watchpoints" in _monitor(s, "breakpoints")


# ---------------------------------------------------------------------------------------------
# 4. gdb's register cache after monitor snapshot load / reset


def test_snapshot_load_stale_registers_and_how_gdb_rereads_them(guest_dir, tmp_path):
    """gdb keeps the registers it read before `monitor snapshot load` (no reply can make it
    re-read them): the stub's output says how, and `hookpost-monitor` automates it."""
    require_gdb()
    elf = guest_dir / "bp_targets.elf"
    syms = elf_symbols(elf)
    snap = tmp_path / "vm.snap"
    with Stub(tmp_path, elf) as stub:
        r = run_gdb(stub, elf, """
            connect()
            ex("break *%%#x" %% sym("bp_b"))
            ex("continue")
            ex("monitor snapshot save %s")
            ex("stepi")
            ex("stepi")
            check("stepped", pc())
            check("load", ex("monitor snapshot load %s"))
            check("stale", pc())
            ex("maintenance flush register-cache")
            check("fresh", pc())
            ex("stepi")
            ex("define hookpost-monitor\\nmaintenance flush register-cache\\nend")
            ex("monitor snapshot load %s")
            check("hooked", pc())
        """ % (snap, snap, snap))
    r.assert_ok()
    assert r["stepped"] == syms["bp_b"] + 8
    assert "snapshot loaded" in r["load"] and "maintenance flush register-cache" in r["load"]
    assert r["stale"] == syms["bp_b"] + 8                 # gdb's cache, not the VM
    assert r["fresh"] == syms["bp_b"] and r["hooked"] == syms["bp_b"]


# ---------------------------------------------------------------------------------------------
# 5. monitor reset (QEMU: monitor system_reset)


def test_monitor_reset_side_by_side_with_qemu_system_reset(guest_dir, tmp_path):
    require_gdb()
    elf = guest_dir / "bp_targets.elf"
    syms = elf_symbols(elf)
    body = """
        connect()
        check("entry", pc())
        ex("break *%#x" % sym("bp_b"))
        ex("continue")
        check("before", [pc(), val("bp_a_count"), val("bp_b_count")])
        check("reset", ex("monitor @CMD@"))
        check("stale", pc())
        ex("maintenance flush register-cache")
        check("after", [pc(), val("bp_a_count"), val("bp_b_count")])
        check("c", ex("continue"))
        check("again", [pc(), val("bp_a_count"), val("bp_b_count")])
    """
    results = {}
    for name, make, cmd in (("guestdbg", lambda: Stub(tmp_path, elf, name="stub"), "reset"),
                            ("guestdbg-alias", lambda: Stub(tmp_path, elf, name="stub2"), "system_reset"),
                            ("qemu", lambda: QemuStub(tmp_path, elf), "system_reset")):
        with make() as stub:
            r = run_gdb(stub, elf, body.replace("@CMD@", cmd), name=f"gdb-{name}")
        r.assert_ok()
        results[name] = r
    for name, r in results.items():
        assert r["entry"] == syms["_start"], name
        assert r["before"] == [syms["bp_b"], 1, 0], (name, r["before"])
        assert r["stale"] == syms["bp_b"], name                # both stubs: gdb keeps its cache
        assert r["after"] == [syms["_start"], 0, 0], (name, r["after"])   # loaded image again
        assert "Breakpoint 1, " in r["c"] and r["again"] == [syms["bp_b"], 1, 0], (name, r["c"])
    assert "board reset" in results["guestdbg"]["reset"]


def test_python_reset_after_the_guest_exited_runs_it_again(guest_dir):
    g = Guest(guest_dir / "bp_targets.elf")
    m = GuestDebugManager(g.machine)
    m.add_breakpoint(g.sym["_start"])                     # at the entry point
    assert m.cont().kind is StopKind.SWBREAK              # first resume: hit at entry
    assert m.cont().kind is StopKind.EXITED
    first = g.text
    with pytest.raises(DebugError):
        m.cont()
    m.write_memory(g.sym["bp_a_count"], b"\x07\x00\x00\x00")
    m.reset()
    assert g.vcpu.pc == g.sym["_start"]
    assert m.read_memory(g.sym["bp_a_count"], 4) == bytes(4)
    e = m.cont()                                          # the entry breakpoint was kept
    assert (e.kind, e.pc) == (StopKind.SWBREAK, g.sym["_start"])
    assert m.cont().kind is StopKind.EXITED
    assert g.text == first * 2 == "bp_targets: a=3 b=3 c=3 brk=1\n" * 2


# ---------------------------------------------------------------------------------------------
# 6. the debugger writes ROM (QEMU too); the guest still cannot


def test_gdb_writes_rom_side_by_side_with_qemu(guest_dir, tmp_path):
    """rom_boot stores 0xdeadbeef to rom_data (in ROM) and reads it back. A value gdb patched
    in stays: the debugger's write lands, the guest's is dropped, on both."""
    require_gdb()
    elf = guest_dir / "rom_boot.elf"
    syms = elf_symbols(elf)
    body = """
        connect()
        check("before", val("*(unsigned int *)&rom_data"))
        # gdb refuses writes its memory map calls read-only; `delete mem` lifts that
        check("refused", try_ex("set var *(unsigned int *)&rom_data = 0x12345678"))
        ex("delete mem")
        check("write", try_ex("set var *(unsigned int *)&rom_data = 0x12345678"))
        check("after", val("*(unsigned int *)&rom_data"))
        check("break", ex("break *%#x" % sym("rom_store")))
        check("c", ex("continue"))
        check("pc", pc())
        ex("stepi")
        ex("stepi")
        ex("stepi")
        check("read_back", [val("$w20"), val("$w21"), val("*(unsigned int *)&rom_data")])
        ex("delete")
    """
    results = {}
    for name, stub in (("guestdbg", Stub(tmp_path, rom=guest_dir / "rom_boot.bin", name="stub")),
                       ("qemu", QemuBiosStub(tmp_path, guest_dir / "rom_boot.bin"))):
        with stub:
            r = run_gdb(stub, elf, body, name=f"gdb-{name}")
            if name == "guestdbg":
                status = stub.wait()
                output = stub.stdout
        r.assert_ok()
        results[name] = r
    for name, r in results.items():
        assert r["write"]["ok"], (name, r["write"])
        assert r["after"] == 0x12345678 and r["before"] != 0x12345678, name
        assert "Breakpoint 1, " in r["c"] and r["pc"] == syms["rom_store"], (name, r["c"])
        assert r["read_back"] == [0x12345678] * 3, (name, r["read_back"])   # the guest's store dropped
    assert "Cannot access memory" in results["guestdbg"]["refused"]["error"]
    assert results["qemu"]["refused"]["ok"]                    # QEMU sends no memory map
    assert status == 0 and output.splitlines()[1] == "rom write ignored"


def test_rom_writes_through_the_session_and_the_python_api(guest_dir):
    out = bytearray()
    mch = VirtMachine(console=out.extend)
    mch.load_rom(guest_dir / "rom_boot.bin")
    syms = elf_symbols(guest_dir / "rom_boot.elf")
    m = GuestDebugManager(mch)
    s = GdbSession(m)
    data = syms["rom_data"]
    assert s.handle(b"M%x,4:78563412" % data).payload == b"OK"
    assert mch.vm.read_phys(data, 4) == bytes.fromhex("78563412")
    assert s.handle(b"X%x,2:\xaa\xbb" % (data + 4)).payload == b"OK"
    m.write_memory(0x10_0000, b"\x01\x02")                       # anywhere in the 128 MiB
    assert mch.vm.read_phys(0x10_0000, 2) == b"\x01\x02"
    assert m.add_breakpoint(syms["rom_store"]) == "hw"          # ROM keeps hardware breakpoints
    assert m.cont().pc == syms["rom_store"]
    assert m.cont().kind is StopKind.EXITED
    assert out.decode().splitlines()[1] == "rom write ignored"
    assert mch.vm.read_phys(data, 4) == bytes.fromhex("78563412")   # the guest's store dropped
    assert s.handle(b"M%x,4:00000000" % 0x0900_0000).payload.startswith(b"E")   # MMIO: still refused


# ---------------------------------------------------------------------------------------------
# 7. the README's Python snippets run as written


def test_readme_python_snippets_run_in_a_clean_directory(guest_dir, tmp_path):
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("\n## Python\n"):]
    section = section[:section.index("\n## ", 1)]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert len(blocks) >= 2
    code = "\n".join(blocks)
    assert "guests/build/" in code and "0x401" not in code        # addresses come from elf_symbols
    script = code.replace("guests/build", str(guest_dir))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(cwd.iterdir()) == []                                # nothing left behind
    assert "KVM_EXIT_DEBUG" in proc.stdout and "StopKind" in proc.stdout, proc.stdout


# ---------------------------------------------------------------------------------------------
# 8. error replies with text where the client can show it


def _full_session(guest_dir):
    g = Guest(guest_dir / "bp_targets.elf")
    m = GuestDebugManager(g.machine)
    for i in range(m.hw_bp_slots):
        m.add_hw_breakpoint(0x4000_0000 + 4 * i)
    return g, m


@pytest.mark.parametrize("client", ["gdb13", "gdb15", "lldb"])
def test_error_replies_carry_text_when_the_client_takes_it(guest_dir, client):
    g, m = _full_session(guest_dir)
    s = GdbSession(m)
    if client == "gdb15":
        s.handle(b"qSupported:multiprocess+;swbreak+;hwbreak+;error-message+")
    elif client == "lldb":
        assert s.handle(b"QEnableErrorStrings").payload == b"OK"
    else:
        s.handle(b"qSupported:multiprocess+;swbreak+;hwbreak+;qRelocInsn+")
    reply = s.handle(b"Z1,%x,4" % g.sym["bp_c"]).payload
    text = "all 6 hardware breakpoints are in use"
    expected = {"gdb13": b"E%02x" % errno.ENOSPC, "gdb15": b"E." + text.encode(),
                "lldb": b"E%02x;%s" % (errno.ENOSPC, text.encode().hex().encode())}[client]
    assert reply == expected
    # malformed packets say why too; memory reads stay Exx for gdb 13 (it would parse E.text as data)
    bad = s.handle(b"m40100000,zz").payload
    assert bad == {"gdb13": b"E16", "gdb15": b"E.bad hex number b'zz'",
                   "lldb": b"E16;" + b"bad hex number b'zz'".hex().encode()}[client]
    # gdb 13 cannot show the text: monitor commands repeat the last refusal
    assert f"last refused request: Z1,{g.sym['bp_c']:x},4: {text}" in _monitor(s, "info slots")


def test_gdb13_sees_the_reason_for_a_refused_hbreak_in_the_monitor(guest_dir, tmp_path):
    require_gdb()
    elf = guest_dir / "hello.elf"
    with Stub(tmp_path, elf) as stub:
        r = run_gdb(stub, elf, """
            connect()
            for i in range(7):
                ex("hbreak *%#x" % (sym("main") + 4 * i))
            check("c", try_ex("continue"))
            check("slots", ex("monitor info slots"))
        """)
    r.assert_ok()
    assert not r["c"]["ok"] and "Could not insert hardware breakpoint" in r["c"]["out"], r["c"]
    assert "last refused request: Z1," in r["slots"] and "hardware breakpoints are in use" in r["slots"], r["slots"]


def test_lldb_gets_the_error_code_with_text(guest_dir, tmp_path):
    """lldb enables error strings and still reads the number (ENOSPC = 28) from `Exx;text`."""
    _need_lldb()
    elf = guest_dir / "hello.elf"
    syms = elf_symbols(elf)
    log = tmp_path / "packets.log"
    commands = [f"log enable -f {log} gdb-remote packets"]
    commands += [f"breakpoint set -H --address {syms['main'] + 4 * i:#x}" for i in range(7)]
    commands += ["continue"]
    with Stub(tmp_path, elf) as stub:
        res = run_lldb_on(stub, elf, commands)
    out = res.stdout + res.stderr
    assert "error: 28 sending the hardware breakpoint request" in out, out
    text = b"all 6 hardware breakpoints are in use".hex()
    assert f"$E1c;{text}" in log.read_text()
