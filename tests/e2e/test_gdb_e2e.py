"""End to end: the real gdb-multiarch (batch mode, Python scripts) and lldb drive guestdbg's GDB
stub over guests built from guests/. Each test starts its own stub (`guestdbg run ... --gdb
... --wait`), runs one debugger scenario, and checks the values the debugger saw, the guest's
console output and the stub's exit. See tests/helpers/gdb_harness.py for the machinery."""

from __future__ import annotations

import re
import struct
import time

import pytest
from tests.helpers.gdb_harness import Stub, lldb_missing_reason, require_gdb, run_gdb, run_lldb
from tests.helpers.qemu_runner import elf_read, elf_symbols, missing_tool

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
    # decided in the vCPU's run (the manager's policy 18): no BRK patched
    assert re.search(r"break\s+%#x\s+software \(decided in the run, pa %#x\)" % (syms["main"], syms["main"]), slots), slots
    assert "Breakpoint 1, main" in r["cont"]
    assert r["pc"] == syms["main"]
    # x/i shows the original instruction (nothing is patched in)
    assert "brk" not in r["xi"] and "stp\tx29, x30, [sp, #-16]!" in r["xi"], r["xi"]
    assert r["xw"] == _insn_word(elf, syms["main"])
    assert r["pc"] == syms["main"]
    assert syms["_start"] < r["x30"] < syms["main"]            # returns into _start
    assert syms["__stack_bottom"] < r["sp"] <= syms["__stack_top"] and r["sp"] % 16 == 0
    assert r["cpsr"] & 0x3CF == 0x3C5                          # EL1h, DAIF masked
    regs = r["regs"]
    for name in ["x0", "x15", "x30", "sp", "pc", "cpsr", "fpsr", "fpcr", "vbar_el1"]:
        assert re.search(r"^%s\s+0x[0-9a-f]+" % name, regs, re.MULTILINE), name
    assert re.search(r"^pc\s+%#x\s+%#x <main>" % (syms["main"], syms["main"]), regs, re.MULTILINE)
    assert re.search(r"^vbar_el1\s+%#x" % syms["vectors"], regs, re.MULTILINE)
    assert "exited with code 07" in r["cont2"]
    assert r.exits == [{"exit_code": 7}]
    assert status == 7
    assert stub.stdout == HELLO_OUT


# ---------------------------------------------------------------------------------------------
# 2. hbreak to exhaustion: the 7th makes `continue` fail; deleting one lets the guest go on
# ---------------------------------------------------------------------------------------------
def test_hbreak_exhaustion(guest_dir, tmp_path):
    elf = guest_dir / "hello.elf"
    syms = elf_symbols(elf)
    # sys_write0 runs once; the others never run in `hello`
    targets = ["sys_write0", "uart_put_hex", "uart_put_dec", "psci_call", "memcmp", "memmove",
               "sys_exit_extended"]
    with Stub(tmp_path, elf) as stub:
        r = run_gdb(stub, elf, """
            connect()
            targets = %r
            for i, t in enumerate(targets):
                check("hbreak%%d" %% (i + 1), ex("hbreak *%%#x" %% sym(t)))
            check("cont_fail", try_ex("continue"))
            check("pc_after_fail", pc())
            check("slots_after_fail", ex("monitor info slots"))
            ex("delete 7")
            check("cont", ex("continue"))
            check("pc", pc())
            check("slots_at_stop", ex("monitor info slots"))
            check("cont2", ex("continue"))
        """ % targets)
        status = stub.wait()
    r.assert_ok()
    for i, t in enumerate(targets):
        assert "Hardware assisted breakpoint %d at %#x" % (i + 1, syms[t]) in r["hbreak%d" % (i + 1)]
    fail = r["cont_fail"]
    assert not fail["ok"], fail
    # gdb inserts in address order, so the one it names is whichever came 7th
    assert "Could not insert hardware breakpoints:" in fail["out"], fail
    assert re.search(r"Cannot insert hardware breakpoint [1-7]\.", fail["out"]), fail
    assert "too many hardware breakpoints" in fail["out"], fail
    assert r["pc_after_fail"] == syms["_start"]          # the guest did not move
    # gdb 13 leaves the six it did insert in the target when the seventh fails (it takes them
    # out at its next resume); the refused seventh changed nothing
    assert "hardware breakpoints: 6/6 used" in r["slots_after_fail"], r["slots_after_fail"]
    assert "Breakpoint 1, " in r["cont"] and "sys_write0" in r["cont"]
    assert r["pc"] == syms["sys_write0"]
    assert r.stops[-1].get("breakpoints") == [1]
    assert "exited with code 07" in r["cont2"]
    assert status == 7
    assert stub.stdout == HELLO_OUT                     # undisturbed


# ---------------------------------------------------------------------------------------------
# 3. break in ROM: gdb turns it into a hardware breakpoint (memory map), and it hits
# ---------------------------------------------------------------------------------------------
def test_break_in_rom_becomes_hardware(guest_dir, tmp_path):
    elf = guest_dir / "rom_boot.elf"
    syms = elf_symbols(elf)
    with Stub(tmp_path, rom=guest_dir / "rom_boot.bin") as stub:
        r = run_gdb(stub, elf, """
            connect()
            check("entry_pc", pc())
            check("memmap", exs("info mem"))
            ex("set breakpoint always-inserted on")
            check("break", ex("break *%#x" % sym("rom_store")))
            check("slots", ex("monitor info slots"))
            check("cont", ex("continue"))
            check("pc", pc())
            check("xi", ex("x/i $pc"))
            # RAM code the ROM copies in later: a software breakpoint, re-armed over the copy
            check("break_ram", ex("break *%#x" % sym("ram_code")))
            check("slots2", ex("monitor info slots"))
            check("cont2", ex("continue"))
            check("pc2", pc())
            check("xi2", ex("x/i $pc"))
            ex("delete")
            check("cont3", ex("continue"))
        """)
        status = stub.wait()
    r.assert_ok()
    assert r["entry_pc"] == 0
    # ROM is read-only; everything else is left to the stub (RAM, MMIO, virtual aliases).
    # the two CFI flash banks (read-only to the guest: its writes are flash commands)
    assert re.search(r"0x0{16}\s+0x0{8}04000000\s+ro\b", r["memmap"]), r["memmap"]
    assert re.search(r"0x0{8}04000000\s+0x0{8}08000000\s+ro\b", r["memmap"]), r["memmap"]
    assert re.search(r"0x0{8}08000000\s+0xf{16}\s+rw\b", r["memmap"]), r["memmap"]
    assert "automatically using hardware breakpoints for read-only addresses" in r["break"], r["break"]
    assert "hardware breakpoints: 1/6 used" in r["slots"]
    assert re.search(r"hbreak\s+%#x\s+slot 0" % syms["rom_store"], r["slots"]), r["slots"]
    assert r["pc"] == syms["rom_store"]
    assert "str\tw1, [x19]" in r["xi"]
    assert re.search(r"break\s+0x40100000\s+software", r["slots2"]), r["slots2"]
    assert r["pc2"] == syms["ram_code"] == 0x40100000
    assert "adr\tx0," in r["xi2"]                        # ram_routine's first instruction
    assert "exited normally" in r["cont3"]
    assert status == 0
    assert stub.stdout.splitlines()[0] == "rom_boot: start"
    assert stub.stdout.splitlines()[2:] == ["ram routine ran", "rom_boot: done"]


# ---------------------------------------------------------------------------------------------
# 4. watch / rwatch / awatch with odd lengths and alignments (the `watch` guest)
# ---------------------------------------------------------------------------------------------
def _watch_syms(guest_dir):
    elf = guest_dir / "watch.elf"
    return elf, elf_symbols(elf)


def test_watch_straddling_doublewords(guest_dir, tmp_path):
    """Two 3-byte write watches, each crossing a doubleword boundary (two BAS slots each)."""
    elf, syms = _watch_syms(guest_dir)
    with Stub(tmp_path, elf) as stub:
        r = run_gdb(stub, elf, """
            connect()
            w = sym("wdata")
            ex("set breakpoint always-inserted on")  # inserted now, so `info slots` shows them
            check("wa", ex("watch *(unsigned char (*)[3])%#x" % (w + 0x0e)))  # bytes 0x0e-0x10
            check("wb", ex("watch *(unsigned char (*)[3])%#x" % (w + 0x16)))  # bytes 0x16-0x18
            check("slots", ex("monitor info slots"))
            check("c1", ex("continue"))
            check("pc1", pc())
            check("c2", ex("continue"))
            check("pc2", pc())
            check("c3", ex("continue"))
        """)
        status = stub.wait()
    r.assert_ok()
    w = syms["wdata"]
    assert re.search(r"watch\s+%#x\+3\s+hw:0,1" % (w + 0x0e), r["slots"]), r["slots"]
    assert re.search(r"watch\s+%#x\+3\s+hw:2,3" % (w + 0x16), r["slots"]), r["slots"]
    # str x4, [x19, #8] writes bytes 0x08-0x0f: two of watch A's bytes
    assert "Hardware watchpoint 1: *(unsigned char (*)[3])%#x" % (w + 0x0e) in r["c1"]
    assert "Old value = \"\\000\\000\"" in r["c1"] or "Old value = {0, 0, 0}" in r["c1"], r["c1"]
    assert re.search(r"New value = (\{68, 68, 0\}|\"DD\")", r["c1"]), r["c1"]
    assert r["pc1"] == syms["acc_str_unaligned"]          # gdb reports after the store
    # str x5, [x19, #0x13] writes 0x13-0x1a: all of watch B, none of A's 0x10
    assert "Hardware watchpoint 2: *(unsigned char (*)[3])%#x" % (w + 0x16) in r["c2"]
    assert re.search(r"New value = (\{85, 85, 85\}|\"UUU\")", r["c2"]), r["c2"]
    assert r["pc2"] == syms["acc_stp"]
    assert "exited normally" in r["c3"]                     # nothing else writes those bytes
    # the entry stop, then one stop for each watch, in order; nothing in between
    assert [s.get("breakpoints") for s in r.stops] == [None, [1], [2]], r.stops
    assert status == 0 and stub.stdout == WATCH_OUT


def test_watch_64_byte_aligned_region(guest_dir, tmp_path):
    """One MASK slot covers all of wdata; each store in turn is reported with its values."""
    elf, syms = _watch_syms(guest_dir)
    with Stub(tmp_path, elf) as stub:
        r = run_gdb(stub, elf, """
            connect()
            ex("set breakpoint always-inserted on")
            check("w", ex("watch *(unsigned long (*)[8])%#x" % sym("wdata")))
            check("slots", ex("monitor info slots"))
            for i in range(1, 8):
                check("c%d" % i, ex("continue"))
                check("pc%d" % i, pc())
            check("c8", ex("continue"))
        """)
        status = stub.wait()
    r.assert_ok()
    w = syms["wdata"]
    assert re.search(r"watch\s+%#x\+64\s+hw:0$" % w, r["slots"], re.MULTILINE), r["slots"]
    assert "hardware watchpoints: 1/4 used" in r["slots"]
    expect = [  # (pc after the store, new value of the 8 doublewords)
        ("acc_strh", [0x1100, 0, 0, 0, 0, 0, 0, 0]),
        ("acc_str_w", [0x22221100, 0, 0, 0, 0, 0, 0, 0]),
        ("acc_str_x", [0x3333333322221100, 0, 0, 0, 0, 0, 0, 0]),
        ("acc_str_unaligned", [0x3333333322221100, 0x4444444444444444, 0, 0, 0, 0, 0, 0]),
        ("acc_stp", [0x3333333322221100, 0x4444444444444444, 0x5555555555000000, 0x555555, 0, 0, 0, 0]),
        ("acc_str_q", [0x3333333322221100, 0x4444444444444444, 0x5555555555000000, 0x555555,
                       0x6666666666666666, 0x7777777777777777, 0, 0]),
        ("acc_ldrb", [0x3333333322221100, 0x4444444444444444, 0x5555555555000000, 0x555555,
                      0x6666666666666666, 0x7777777777777777, 0x9999999999999999, 0x8888888888888888]),
    ]
    for i, (label, values) in enumerate(expect, start=1):
        out = r["c%d" % i]
        assert "Hardware watchpoint 1: *(unsigned long (*)[8])%#x" % w in out, out
        assert "New value = {%s}" % ", ".join(str(v) for v in values) in out, out
        assert r["pc%d" % i] == syms[label], (i, label, out)
    # the 8th continue: no more writes to wdata; the guest prints and exits
    assert "exited normally" in r["c8"], r["c8"]
    assert status == 0 and stub.stdout == WATCH_OUT


def test_rwatch_doubleword(guest_dir, tmp_path):
    elf, syms = _watch_syms(guest_dir)
    with Stub(tmp_path, elf) as stub:
        r = run_gdb(stub, elf, """
            connect()
            check("w", ex("rwatch *(unsigned long *)%#x" % (sym("wdata") + 8)))
            check("c1", ex("continue"))
            check("pc1", pc())
            check("x11", val("$x11"))
            check("c2", ex("continue"))
            check("pc2", pc())
            ex("delete")
            check("end", ex("continue"))
        """)
        status = stub.wait()
    r.assert_ok()
    # the store to those bytes (acc_str_x) is not a read: the first stop is the load
    assert "Hardware read watchpoint 1: *(unsigned long *)%#x" % (syms["wdata"] + 8) in r["c1"], r["c1"]
    assert "Value = %d" % 0x4444444444444444 in r["c1"], r["c1"]
    assert r["pc1"] == syms["acc_ldp"]                     # reported after the load completes
    assert r["x11"] == 0x4444444444444444
    # next read of those bytes: the hex dump's byte loads, after the labelled accesses
    assert "Hardware read watchpoint 1" in r["c2"]
    assert not syms["acc_strb"] <= r["pc2"] <= syms["acc_end"]
    assert "exited normally" in r["end"]
    assert status == 0 and stub.stdout == WATCH_OUT


def test_awatch_byte(guest_dir, tmp_path):
    elf, syms = _watch_syms(guest_dir)
    with Stub(tmp_path, elf) as stub:
        r = run_gdb(stub, elf, """
            connect()
            check("w", ex("awatch *(unsigned char *)%#x" % (sym("wdata") + 1)))
            check("c1", ex("continue"))
            check("pc1", pc())
            check("c2", ex("continue"))
            check("pc2", pc())
            check("w10", val("$w10"))
            ex("delete")
            check("end", ex("continue"))
        """)
        status = stub.wait()
    r.assert_ok()
    expr = "*(unsigned char *)%#x" % (syms["wdata"] + 1)
    c1, c2 = r["c1"], r["c2"]
    assert "Hardware access (read/write) watchpoint 1: %s" % expr in c1, c1
    assert "Old value = 0 '\\000'" in c1 and "New value = 17 '\\021'" in c1, c1
    assert r["pc1"] == syms["acc_strh"]                    # after strb w1, [x19, #1]
    assert "Hardware access (read/write) watchpoint 1: %s" % expr in c2, c2
    assert "Value = 17 '\\021'" in c2, c2
    assert r["pc2"] == syms["acc_ldr_x"]                   # after ldrb w10, [x19, #1]
    assert r["w10"] == 0x11
    assert "exited normally" in r["end"]
    assert status == 0 and stub.stdout == WATCH_OUT


# ---------------------------------------------------------------------------------------------
# 5. more watches than hardware slots: the extra ones fall back to page traps and still work
# ---------------------------------------------------------------------------------------------
def test_watch_past_hardware_slots(guest_dir, tmp_path):
    elf, syms = _watch_syms(guest_dir)
    with Stub(tmp_path, elf) as stub:
        r = run_gdb(stub, elf, """
            connect()
            ex("set breakpoint always-inserted on")
            fp, w = sym("far_page"), sym("wdata")
            for i in range(4):
                ex("watch *(unsigned char *)%#x" % (fp + 8 * i))
            check("w5", ex("watch *(unsigned long *)%#x" % (w + 0x20)))   # written by acc_stp
            check("w6", ex("rwatch *(unsigned long *)%#x" % (w + 0x30)))  # read by acc_ldr_q
            check("slots", ex("monitor info slots"))
            check("c1", ex("continue"))
            check("pc1", pc())
            check("c2", ex("continue"))
            check("pc2", pc())
            ex("delete")
            check("end", ex("continue"))
        """)
        status = stub.wait()
    r.assert_ok()
    w, fp = syms["wdata"], syms["far_page"]
    slots = r["slots"]
    assert "hardware watchpoints: 4/4 used" in slots, slots
    for i in range(4):
        assert re.search(r"watch\s+%#x\+1\s+hw:%d$" % (fp + 8 * i, i), slots, re.MULTILINE), slots
    assert re.search(r"watch\s+%#x\+8\s+page-trap$" % (w + 0x20), slots, re.MULTILINE), slots
    assert re.search(r"rwatch\s+%#x\+8\s+page-trap$" % (w + 0x30), slots, re.MULTILINE), slots
    assert "Hardware watchpoint 5: *(unsigned long *)%#x" % (w + 0x20) in r["c1"], r["c1"]
    assert "Old value = 0" in r["c1"] and "New value = %d" % 0x6666666666666666 in r["c1"], r["c1"]
    assert r["pc1"] == syms["acc_str_q"]
    # str q0 writes those bytes, but it is a read watch: the first stop is ldr q1
    assert "Hardware read watchpoint 6: *(unsigned long *)%#x" % (w + 0x30) in r["c2"], r["c2"]
    assert "Value = %d" % 0x9999999999999999 in r["c2"], r["c2"]
    assert r["pc2"] == syms["acc_end"]
    assert "exited normally" in r["end"]
    assert status == 0 and stub.stdout == WATCH_OUT


# ---------------------------------------------------------------------------------------------
# 6. stepi, continue, Ctrl-C
# ---------------------------------------------------------------------------------------------
def test_stepi_continue_and_ctrl_c(guest_dir, tmp_path):
    elf = guest_dir / "loop.elf"
    syms = elf_symbols(elf)
    n = 10 ** 13  # hours of looping: only an interrupt stops it
    with Stub(tmp_path, elf) as stub:
        r = run_gdb(stub, elf, """
            import signal, threading
            connect()
            ex("break *%%#x" %% sym("main"))
            check("c0", ex("continue"))
            ex("set var *(unsigned long *)%%#x = %d" %% sym("loop_iterations"))
            pcs = [pc()]
            for _ in range(5):
                ex("stepi")
                pcs.append(pc())
            check("pcs", pcs)
            check("x0", val("$x0"))
            check("x1", val("$x1"))
            ex("delete")
            sent = []
            def interrupt():
                sent.append(time.monotonic())
                os.kill(os.getpid(), signal.SIGINT)   # what Ctrl-C in gdb's terminal does
            threading.Timer(1.0, interrupt).start()
            t0 = time.monotonic()
            check("c1", ex("continue"))
            t1 = time.monotonic()
            check("ran", t1 - t0)
            check("stop_latency", t1 - sent[0] if sent else None)
            check("pc1", pc())
            check("x0_1", val("$x0"))
            check("x2_1", val("$x2"))
            check("regs", ex("info registers x0 x2 pc"))
            ex("stepi")
            check("pc_step", pc())
            ex("set var $x0 = 1")        # end the loop within one iteration
            check("end", ex("continue"))
        """ % n)
        status = stub.wait()
    r.assert_ok()
    main = syms["main"]
    assert r["pcs"] == [main + 4 * i for i in range(6)], [hex(p) for p in r["pcs"]]
    assert r["x1"] == syms["loop_iterations"] and r["x0"] == n
    assert "Program received signal SIGINT" in r["c1"], r["c1"]
    sigint = [s for s in r.stops if s.get("signal") == "SIGINT"]
    assert len(sigint) == 1 and sigint[0]["pc"] == r["pc1"], r.stops
    assert r["stop_latency"] is not None  # the interrupt was sent while the guest ran
    assert syms["loop_body"] <= r["pc1"] < syms["loop_end"], hex(r["pc1"])
    done = r["x2_1"]
    assert done > 1000 and n <= r["x0_1"] + done <= n + 1    # iterations done + left = n
    assert syms["loop_body"] <= r["pc_step"] < syms["loop_end"]
    assert r["pc_step"] in (r["pc1"] + 4, syms["loop_body"])
    assert "exited normally" in r["end"]
    assert status == 0 and stub.stdout == "loop: done\n"


# ---------------------------------------------------------------------------------------------
# 7. detach, lost connection and re-attach, kill
# ---------------------------------------------------------------------------------------------
def test_detach_lets_the_guest_run_to_its_end(guest_dir, tmp_path):
    elf = guest_dir / "loop.elf"
    syms = elf_symbols(elf)
    with Stub(tmp_path, elf, tcp=True) as stub:
        r = run_gdb(stub, elf, """
            connect()
            ex("set breakpoint always-inserted on")
            ex("break *%#x" % sym("loop_body"))
            ex("hbreak *%#x" % sym("loop_end"))
            ex("watch *(unsigned long *)%#x" % sym("loop_result"))
            check("c", ex("continue"))
            check("pc", pc())
            check("x2", val("$x2"))
            check("slots", ex("monitor info slots"))
            check("detach", ex("detach"))
        """)
        status = stub.wait(timeout=30)
    r.assert_ok()
    assert r["pc"] == syms["loop_body"] and r["x2"] == 0
    assert "software" in r["slots"] and "slot 0" in r["slots"]
    assert "Detaching from program" in r["detach"] or "detached" in r["detach"], r["detach"]
    # nothing of the debugger is left: no BRK, no hw breakpoint, no watchpoint stops the guest
    assert status == 0
    assert stub.stdout == "loop: done\n"
    assert "debugger detached" in stub.stderr


def test_lost_connection_then_second_gdb_continues_and_kills(guest_dir, tmp_path):
    elf = guest_dir / "bp_targets.elf"
    syms = elf_symbols(elf)
    with Stub(tmp_path, elf) as stub:
        first = run_gdb(stub, elf, """
            connect()
            ex("break *%#x" % sym("bp_b"))
            check("c", ex("continue"))
            check("pc", pc())
            check("count_a", val("bp_a_count"))
            _save()
            os.kill(os.getpid(), 9)      # the debugger dies: no detach, no kill
        """, name="gdb1")
        assert first.returncode == -9
        time.sleep(0.5)
        assert stub.running(), stub.stderr
        second = run_gdb(stub, elf, """
            connect()
            check("pc", pc())
            check("count_a", val("bp_a_count"))
            check("count_b", val("bp_b_count"))
            check("slots", ex("monitor info slots"))
            ex("break *%#x" % sym("bp_c"))
            check("c", ex("continue"))
            check("pc2", pc())
            check("count_b2", val("bp_b_count"))
            check("kill", ex("kill"))
        """, name="gdb2")
        status = stub.wait(timeout=10)
    assert "Breakpoint 1, " in first["c"] and first["pc"] == syms["bp_b"] and first["count_a"] == 1
    second.assert_ok()
    assert "connection lost" in stub.stderr
    # the VM waited, stopped where the first debugger left it
    assert second["pc"] == syms["bp_b"]
    assert second["count_a"] == 1 and second["count_b"] == 0
    # and goes on for the second one
    assert "Breakpoint 1, " in second["c"] and second["pc2"] == syms["bp_c"], second["c"]
    assert second["count_b2"] == 1
    assert "[Inferior 1 (Remote target) killed]" in second["kill"]
    assert status == 137 and "killed by the debugger" in stub.stderr
    assert stub.stdout == ""                           # it never got to print


# ---------------------------------------------------------------------------------------------
# 8. a software breakpoint survives the guest rewriting the code under it
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("always_inserted", ["on", "off"])
def test_breakpoint_survives_self_modifying_code(guest_dir, tmp_path, always_inserted):
    elf = guest_dir / "selfmod.elf"
    syms = elf_symbols(elf)
    with Stub(tmp_path, elf) as stub:
        r = run_gdb(stub, elf, """
            connect()
            ex("set breakpoint always-inserted %s")
            slot = sym("code_slot")
            check("before", ex("x/i %%#x" %% slot))
            check("break", ex("break *%%#x" %% slot))
            check("c1", ex("continue"))
            check("pc1", pc())
            check("x1i", ex("x/2i $pc"))
            check("slots", ex("monitor info slots"))
            ex("stepi")
            check("x0_after_step", val("$x0"))
            check("c2", ex("continue"))
            check("pc2", pc())
            check("x2i", ex("x/3i $pc"))
            check("results", [val("selfmod_results[0]"), val("selfmod_results[1]")])
            check("end", ex("continue"))
        """ % always_inserted)
        status = stub.wait()
    r.assert_ok()
    slot = syms["code_slot"]
    assert "udf" in r["before"] or ".inst\t0x00000000" in r["before"], r["before"]
    assert "Breakpoint 1, " in r["c1"] and r["pc1"] == slot
    assert "mov\tx0, #0x1" in r["x1i"] and "brk" not in r["x1i"], r["x1i"]
    if always_inserted == "on":
        assert re.search(r"break\s+%#x\s+software" % slot, r["slots"]), r["slots"]
    assert r["x0_after_step"] == 1
    # the second copy rewrote the slot: the breakpoint was re-armed over the new code
    assert "Breakpoint 1, " in r["c2"] and r["pc2"] == slot, r["c2"]
    assert "mov\tx0, #0x0" in r["x2i"] and "add\tx0, x0, #0x2" in r["x2i"] and "brk" not in r["x2i"], r["x2i"]
    assert r["results"] == [1, 0]
    assert "exited normally" in r["end"]
    assert [s.get("pc") for s in r.stops if s["type"] == "BreakpointEvent"] == [slot, slot]
    assert status == 0
    assert stub.stdout == ("selfmod: start\nselfmod: first call returned 1\n"
                           "selfmod: second call returned 2\nselfmod: done\n")


# ---------------------------------------------------------------------------------------------
# 9. an MMU-enabled guest: breakpoints and watchpoints at virtual addresses
# ---------------------------------------------------------------------------------------------
def test_mmu_guest_break_and_watch_alias(guest_dir, tmp_path):
    elf = guest_dir / "mmu.elf"
    syms = elf_symbols(elf)
    with Stub(tmp_path, elf) as stub:
        r = run_gdb(stub, elf, """
            connect()
            # The stub's memory map lists physical ROM and RAM only; by default gdb then refuses
            # any address outside them, such as this guest's virtual 0x8000_0000 (see
            # test_mmu_guest_alias_readable_with_default_memory_settings).
            ex("set mem inaccessible-by-default off")
            check("break", ex("break *%#x" % sym("alias_store")))
            check("c1", ex("continue"))
            check("pc1", pc())
            check("x0", val("$x0"))
            check("sctlr", val("$sctlr_el1"))
            check("ttbr0", val("$ttbr0_el1"))
            check("tcr", val("$tcr_el1"))
            check("alias_before", val("*(unsigned long *)0x80000000"))
            check("unmapped", try_ex("x/gx 0x80001000"))
            check("watch", ex("watch *(unsigned long *)0x80000000"))
            check("c2", ex("continue"))
            check("pc2", pc())
            check("alias_after", val("*(unsigned long *)0x80000000"))
            check("identity_after", val("*(unsigned long *)%#x" % sym("alias_target")))
            ex("delete")
            check("end", ex("continue"))
        """)
        status = stub.wait()
    r.assert_ok()
    assert "Breakpoint 1, " in r["c1"] and r["pc1"] == syms["alias_store"]
    assert r["x0"] == 0x8000_0000
    assert r["sctlr"] & 1 == 1                                    # the MMU is on
    assert r["ttbr0"] == syms["mmu_l1"] and r["tcr"] == 0x2_8099_3519
    assert r["alias_before"] == 0x5A5A5A5A5A5A5A5A               # read through the page tables
    assert not r["unmapped"]["ok"] and "Cannot access memory at address 0x80001000" in r["unmapped"]["error"]
    c2 = r["c2"]
    assert "Hardware watchpoint 2: *(unsigned long *)0x80000000" in c2, c2
    assert "Old value = %d" % 0x5A5A5A5A5A5A5A5A in c2 and "New value = 4369" in c2, c2
    assert r["pc2"] == syms["alias_store"] + 4
    assert r["alias_after"] == r["identity_after"] == 0x1111
    assert "exited normally" in r["end"]
    assert status == 0 and stub.stdout == MMU_OUT


def test_mmu_guest_alias_readable_with_default_memory_settings(guest_dir, tmp_path):
    elf = guest_dir / "mmu.elf"
    with Stub(tmp_path, elf) as stub:
        r = run_gdb(stub, elf, """
            connect()
            ex("break *%#x" % sym("alias_store"))
            ex("continue")
            check("alias", try_ex("x/gx 0x80000000"))
            check("watch", try_ex("watch *(unsigned long *)0x80000000"))
        """)
    r.assert_ok()
    assert r["alias"]["ok"], r["alias"]
    assert r["watch"]["ok"] and "Hardware watchpoint 2" in r["watch"]["out"], r["watch"]


# ---------------------------------------------------------------------------------------------
# 10. system registers and SIMD registers
# ---------------------------------------------------------------------------------------------
def test_system_and_vector_registers(guest_dir, tmp_path):
    elf = guest_dir / "hello.elf"
    syms = elf_symbols(elf)
    with Stub(tmp_path, elf) as stub:
        r = run_gdb(stub, elf, """
            connect()
            ex("break *%#x" % sym("main"))
            ex("continue")
            check("info", ex("info registers sctlr_el1 vbar_el1 mdscr_el1 id_aa64dfr0_el1"))
            for reg in ["sctlr_el1", "vbar_el1", "mdscr_el1", "id_aa64dfr0_el1", "cpacr_el1", "midr_el1"]:
                check(reg, val("$" + reg))
            check("v0", ex("p $v0"))
            ex("set var $v0.d.u[0] = 0x1122334455667788")
            ex("set var $v0.d.u[1] = 0x99aabbccddeeff00")
            check("v0_after", ex("p/x $v0.q.u[0]"))
            check("d0", val("$v0.d.u[0]"))
            check("s1", val("$v0.s.u[1]"))
            ex("set var $x5 = 0xfeedface")
            check("x5", val("$x5"))
            ex("set var $x5 = 0")
            ex("delete")
            check("end", ex("continue"))
        """)
        status = stub.wait()
    r.assert_ok()
    info = r["info"]
    for reg in ["sctlr_el1", "vbar_el1", "mdscr_el1", "id_aa64dfr0_el1"]:
        assert re.search(r"^%s\s+%#x\b" % (reg, r[reg]), info, re.MULTILINE), (reg, info)
    assert r["id_aa64dfr0_el1"] == 0x10305106
    assert r["sctlr_el1"] & 1 == 0                  # MMU off in `hello`
    assert r["sctlr_el1"] == 0x00C50838             # the Cortex-A57 reset value QEMU uses too
    assert r["vbar_el1"] == syms["vectors"]          # set by _start
    assert r["mdscr_el1"] == 0                       # the guest's own, not the debugger's
    assert r["cpacr_el1"] & (3 << 20) == 3 << 20     # FPEN = 0b11 (set by _start)
    assert r["midr_el1"] >> 24 == 0x41               # Arm
    assert "u = " in r["v0"] or "{d = " in r["v0"], r["v0"]
    assert "0x99aabbccddeeff001122334455667788" in r["v0_after"], r["v0_after"]
    assert r["d0"] == 0x1122334455667788 and r["s1"] == 0x11223344
    assert r["x5"] == 0xFEEDFACE
    assert "exited with code 07" in r["end"]
    assert status == 7 and stub.stdout == HELLO_OUT


# ---------------------------------------------------------------------------------------------
# 11. LLDB smoke test
# ---------------------------------------------------------------------------------------------
def test_lldb_connect_break_continue_registers(guest_dir, tmp_path):
    reason = lldb_missing_reason()
    if reason:
        missing_tool(reason)
    elf = guest_dir / "hello.elf"
    syms = elf_symbols(elf)
    with Stub(tmp_path, elf, tcp=True) as stub:
        res = run_lldb(stub, elf, [
            f"breakpoint set --address {syms['sys_write0']:#x}",
            "continue",
            "register read pc x30 sp cpsr",
            "register read vbar_el1",
            "memory read --format x --size 4 --count 1 $pc",
            "continue",
        ])
        status = stub.wait()
    out = res.stdout
    assert "Breakpoint 1: " in out and "address = %#018x" % syms["sys_write0"] in out, out
    assert "stop reason = breakpoint 1.1" in out, out
    assert re.search(r"pc = %#018x\s+hello.elf`sys_write0" % syms["sys_write0"], out), out
    assert re.search(r"x30 = 0x00000000401000[0-9a-f]{2}\s+hello.elf`main", out), out
    assert re.search(r"cpsr = 0x[0-9a-f]{4}03c5", out), out
    assert re.search(r"vbar_el1 = %#018x" % syms["vectors"], out), out
    assert "%#010x" % _insn_word(elf, syms["sys_write0"]) in out, out
    assert "Process 1 exited with status = 7" in out, out
    assert status == 7 and stub.stdout == HELLO_OUT


def test_lost_connection_keeps_breakpoints_and_the_next_gdb_sees_their_stops(guest_dir, tmp_path):
    """The first gdb dies with its breakpoints still inserted (always-inserted on). Issue 4's
    policy: the next client finds every breakpoint the previous one left (QEMU instead clears
    them on the new client's `?`). Issue 15: gdb knows nothing of them, and resumed silently
    over a `swbreak`/`hwbreak`/watch stop it could not explain; their stops now come as plain
    SIGTRAPs it shows, `monitor breakpoints` says whose they are and `clear` removes them."""
    elf = guest_dir / "bp_targets.elf"
    syms = elf_symbols(elf)
    with Stub(tmp_path, elf) as stub:
        first = run_gdb(stub, elf, """
            connect()
            ex("set breakpoint always-inserted on")
            ex("break *%#x" % sym("bp_b"))
            ex("hbreak *%#x" % sym("bp_a"))
            ex("watch *(unsigned int *)%#x" % sym("bp_c_count"))
            check("c", ex("continue"))
            check("slots", ex("monitor info slots"))
            _save()
            os.kill(os.getpid(), 9)
        """, name="gdb1")
        second = run_gdb(stub, elf, """
            connect()
            check("pc", pc())
            check("slots", ex("monitor info slots"))
            check("bps", ex("monitor breakpoints"))
            check("c", ex("continue"))
            check("pc_b", pc())
            check("c2", ex("continue"))
            check("pc_c", pc())
            check("clear", ex("monitor breakpoints clear"))
            check("bps2", ex("monitor breakpoints"))
            check("end", ex("continue"))
        """, name="gdb2")
        status = stub.wait(timeout=10)
    assert "Breakpoint 2, " in first["c"]
    for slots in (first["slots"], second["slots"]):
        assert re.search(r"hbreak\s+%#x\s+slot 0" % syms["bp_a"], slots), slots
        assert re.search(r"break\s+%#x\s+software" % syms["bp_b"], slots), slots
        assert re.search(r"watch\s+%#x\+4\s+hw:0" % syms["bp_c_count"], slots), slots
    second.assert_ok()
    assert second["pc"] == syms["bp_a"]
    assert second["bps"].count("left by an earlier client") == 3, second["bps"]
    # bp_a steps over (the vCPU stopped there); bp_b's stop and the watch on bp_c are shown
    assert "Program received signal SIGTRAP" in second["c"] and second["pc_b"] == syms["bp_b"], second["c"]
    assert "Program received signal SIGTRAP" in second["c2"], second["c2"]
    assert syms["bp_c"] <= second["pc_c"] < syms["bp_c"] + 0x20
    assert "removed 3" in second["clear"] and "no breakpoints or watchpoints" in second["bps2"]
    assert "exited normally" in second["end"], second["end"]
    assert [s["type"] for s in second.stops] == ["StopEvent"] * 3  # SIGTRAPs, no breakpoint of gdb's
    assert status == 0 and stub.stdout == "bp_targets: a=3 b=3 c=3 brk=1\n"
