"""Issue 15 on x86-64 (Linux KVM), side by side with qemu-system-x86_64 (TCG, PVH boot) where
QEMU has the behaviour:

- A load watchpoint (rwatch/awatch) on data that shares a page with code, as bp_targets' .bss
  does: the page has no memory slot, KVM cannot fetch from it, and every `continue` used to
  report SIGSEGV in _start64 without the guest moving. Now the vCPU steps the code on that page
  (FETCH ASSIST in backends/kvm_x86/pagetrap.py): the Python API and real gdb-multiarch see the same
  stops, at the same PCs with the same values, as gdb against QEMU; breakpoints, stepi and
  Ctrl-C still work there, and the guest finishes. A load watch on the page tables, which no
  slot-less page can serve, is refused when placed instead of triple-faulting the guest.
- A fifth `break` past DR0-DR3 is refused with ENOSPC and a message naming the cause.
- gdb reads cr0, cr2, cr3, cr4, cr8, efer and k_gs_base, under QEMU's names and flag layouts.
- Exit status: the guest's isa-debug-exit value, so a guest's success (0) is not guestdbg's
  fault status (1).

Skipped, with the reason printed, when /dev/kvm cannot be opened (or gdb / QEMU is missing).
"""

from __future__ import annotations

import errno
import re
import signal
import subprocess
import threading
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from tests.helpers.gdb_harness import QemuStub, Stub, run_gdb

from guestdbg.backends.kvm_x86 import memory as kvm_memory
from tests.helpers.support import kvm_unavailable_reason

REPO = Path(__file__).resolve().parents[2]
X86_GUESTS = REPO / "guests" / "x86"
QEMU_X86 = "qemu-system-x86_64"


_NO_KVM = kvm_unavailable_reason()
if _NO_KVM:
    print(f"test_x86_manners: skipping: /dev/kvm cannot be used: {_NO_KVM}")
pytestmark = pytest.mark.skipif(_NO_KVM is not None, reason=f"/dev/kvm cannot be used: {_NO_KVM}")
needs_qemu = pytest.mark.usefixtures("qemu_x86")


@pytest.fixture(scope="module")
def guests(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("x86_manners_guests")
    proc = subprocess.run(["make", "-C", str(X86_GUESTS), f"O={out}", "-j2"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    assert proc.returncode == 0, proc.stdout
    return out


@pytest.fixture(scope="module")
def facts():
    from guestdbg.board.pc_probe import probe
    return probe()


def symbols(elf: Path) -> dict[str, int]:
    with elf.open("rb") as f:
        return {s.name: s["st_value"] for s in ELFFile(f).get_section_by_name(".symtab").iter_symbols() if s.name}


class X86QemuStub(QemuStub):
    """qemu-system-x86_64 -accel tcg -kernel ELF (PVH) -gdb unix:... -S: gdb's peer."""

    def __init__(self, workdir: Path, image: Path, *, name: str = "qemu"):
        Stub.__init__(self, workdir, image, name=name)
        self.argv = [QEMU_X86, "-accel", "tcg", "-M", "pc", "-m", "128M", "-nodefaults", "-display", "none",
                     "-vga", "none", "-no-reboot", "-serial", "stdio",
                     "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-kernel", str(image),
                     "-gdb", f"unix:{self.sock_path},server=on,wait=off", "-S"]


def debugger(guest: str, guests: Path):
    from guestdbg.board.pc_probe import create_pc_machine
    from guestdbg.debug.manager import GuestDebugManager
    elf = guests / f"{guest}.elf"
    out = bytearray()
    m = create_pc_machine(console=out.extend)
    m.load_elf(elf)
    return m, GuestDebugManager(m), symbols(elf), out


# ---------------------------------------------------------------------------- a watch on a code page
def test_bp_targets_counters_share_a_page_with_code(guests):
    s = symbols(guests / "bp_targets.elf")
    assert s["bp_b_count"] >> 12 == s["bp_b"] >> 12 == s["_start64"] >> 12  # the case under test


@pytest.mark.parametrize("kind", ["READ", "ACCESS"])
def test_load_watch_on_a_code_page_python_api(guests, kind):
    """Before the fix every cont() was a SIGSEGV at _start64 (KVM_EXIT_INTERNAL_ERROR: KVM
    cannot fetch from a page without a memory slot) and the guest never moved."""
    from guestdbg.debug.manager import StopKind, WatchKind
    m, d, s, out = debugger("bp_targets", guests)
    counter = s["bp_b_count"]
    w = d.add_watchpoint(counter, 4, WatchKind[kind])
    assert w.mechanism == "page-trap" or m.debug_facts.dr_write_watch_fires
    stops = []
    for _ in range(20):
        e = d.cont()
        if e.kind is StopKind.EXITED:
            break
        assert e.kind is StopKind.WATCH, e
        stops.append((e.pc, e.watch_addr, int.from_bytes(m.vm.read_phys(counter, 4), "little")))
    assert e.kind is StopKind.EXITED and e.exit_status == 0, e
    assert bytes(out) == b"bp_targets: a=3 b=3 c=3\n"
    in_bp_b = [st for st in stops if s["bp_b"] <= st[0] < s["bp_c"]]
    in_main = [st for st in stops if s["main"] <= st[0] < s["uart_putc"]]
    assert all(counter <= addr < counter + 4 for _pc, addr, _v in stops)
    if kind == "READ":
        # bp_b's load of the counter, three times, then main reads it to print it
        assert len(in_bp_b) == 3 and len(in_main) == 1 and len(stops) == 4, [tuple(map(hex, st)) for st in stops]
        assert [v for _pc, _a, v in in_bp_b] == [0, 1, 2]  # after the load, before the store
    else:
        # plus the four byte stores of _start64's `rep stosb` over .bss, and bp_b's stores
        at_start = [st for st in stops if s["_start64"] <= st[0] < s["debug_exit"]]
        assert len(at_start) == 4 and len(in_bp_b) == 6 and len(in_main) == 1, [tuple(map(hex, st)) for st in stops]
        assert [v for _pc, _a, v in in_bp_b] == [0, 1, 1, 2, 2, 3]
    if w.mechanism == "page-trap":
        assert m.vcpu.fetch_assists > 0


def test_code_page_watch_with_breakpoint_and_stepi(guests):
    """A breakpoint and single steps on the trapped page: each stepi is one instruction."""
    from guestdbg.backends.kvm_x86 import decode
    from guestdbg.debug.manager import StopKind, WatchKind
    m, d, s, out = debugger("bp_targets", guests)
    d.add_watchpoint(s["bp_b_count"], 4, WatchKind.READ)
    d.add_hw_breakpoint(s["bp_c"])
    seen = []
    for _ in range(12):
        e = d.cont()
        if e.kind is StopKind.EXITED:
            break
        seen.append((e.kind, e.pc))
        if e.kind is StopKind.HWBREAK and len(seen) == 2:
            for _ in range(3):  # bp_c's load, add, store: straight-line code
                pc = m.vcpu.pc
                length = decode.decode(m.vm.read_phys(pc, 15), pc).size
                step = d.step()
                assert step.kind is StopKind.STEP and step.pc == pc + length, (hex(pc), step)
    assert e.kind is StopKind.EXITED and e.exit_status == 0
    kinds = [k for k, _ in seen]
    assert kinds == [StopKind.WATCH, StopKind.HWBREAK] * 3 + [StopKind.WATCH], seen
    assert all(pc == s["bp_c"] for k, pc in seen if k is StopKind.HWBREAK)
    assert bytes(out) == b"bp_targets: a=3 b=3 c=3\n"


def test_ctrl_c_while_stepping_a_code_page(guests):
    """A kick ends the assist: the stop is SIGINT inside the loop with the traps laid out as the
    debugger set them; the guest then runs on to its end."""
    from guestdbg.debug.manager import StopKind, WatchKind
    m, d, s, out = debugger("loop", guests)
    m.vm.write_phys(s["loop_iterations"], (10**9).to_bytes(8, "little"))
    d.add_watchpoint(s["loop_end"], 1, WatchKind.READ)  # a load trap on the loop's own page
    timer = threading.Timer(0.5, d.interrupt)
    timer.start()
    e = d.cont()
    timer.join()
    assert e.kind is StopKind.SIGNAL and e.signal == signal.SIGINT, e
    assert s["loop_body"] <= e.pc < s["loop_end"]
    page = s["loop_body"] & ~0xFFF
    assert m.vm.trap_pages == {page: kvm_memory.TRAP_NOSLOT} and m.vcpu._assist is None
    assert m.vcpu.fetch_assists > 100
    d.remove_watchpoint(s["loop_end"], 1, WatchKind.READ)
    m.vm.write_phys(s["loop_iterations"], (0).to_bytes(8, "little"))
    d.write_register("rcx", 1)
    e = d.cont()
    assert e.kind is StopKind.EXITED and e.exit_status == 0 and bytes(out) == b"loop: done\n"


_WATCH_SCENARIO = """
    connect()
    if pc() != sym("_start64"):  # QEMU starts in the firmware; guestdbg at _start64
        ex("hbreak _start64"); ex("continue"); ex("delete")
    check("w", ex("%s bp_b_count"))
    outs, pcs = [], []
    for i in range(20):
        r = try_ex("continue")
        if not r["ok"] or EXITS or STOPS[-1]["type"] != "BreakpointEvent":
            break
        outs.append(r["out"]); pcs.append(pc())
    check("outs", outs)
    check("pcs", pcs)
"""


def _watch_stops(r) -> list[tuple[int, list[str]]]:
    return [(pc, re.findall(r"(?:Old value|New value|Value) = \d+", out)) for pc, out in zip(r["pcs"], r["outs"])]


@needs_qemu
@pytest.mark.parametrize("cmd", ["rwatch", "awatch"])
def test_load_watch_on_a_code_page_gdb_vs_qemu(guests, tmp_path, cmd):
    elf = guests / "bp_targets.elf"
    with Stub(tmp_path / "g", elf, extra_args=("--arch", "x86_64")) as st:
        ours = run_gdb(st, elf, _WATCH_SCENARIO % cmd)
        ours.assert_ok()
        assert st.wait() == 0
    with X86QemuStub(tmp_path / "q", elf) as q:
        theirs = run_gdb(q, elf, _WATCH_SCENARIO % cmd)
        theirs.assert_ok()
    assert "SIGSEGV" not in ours.stdout, ours.describe()
    assert _watch_stops(ours) == _watch_stops(theirs), (ours.describe(), theirs.describe())
    assert len(ours["pcs"]) == (4 if cmd == "rwatch" else 11)
    assert "bp_targets: a=3 b=3 c=3" in st.stdout
    assert [e["exit_code"] for e in ours.exits] == [0]


def test_load_watch_on_the_page_tables_is_refused_not_a_triple_fault(guests, facts):
    """Without its slot the page walk has nothing to read: before, the guest triple-faulted at
    the first continue (GuestFault out of cont()). Refused when placed; nothing else changes."""
    from guestdbg.board.pc import PD_ADDR
    from guestdbg.debug.manager import DebugError, StopKind, WatchKind
    if facts.dr_write_watch_fires:
        pytest.skip("this host watches with the debug registers: no page trap to refuse")
    m, d, _s, out = debugger("bp_targets", guests)
    for kind in (WatchKind.READ, WatchKind.ACCESS):
        with pytest.raises(DebugError) as info:
            d.add_watchpoint(PD_ADDR + 8, 8, kind)
        assert info.value.errno == errno.ENOTSUP and "page tables" in str(info.value), str(info.value)
    assert d.watches == [] and m.vm.trap_pages == {}
    d.add_watchpoint(PD_ADDR + 8, 8, WatchKind.WRITE)  # stores: a read-only slot, the walk reads it
    e = d.cont()
    assert e.kind is StopKind.EXITED and e.exit_status == 0 and bytes(out) == b"bp_targets: a=3 b=3 c=3\n"


# ---------------------------------------------------------------------------- a fifth breakpoint
def test_fifth_breakpoint_is_enospc_naming_the_debug_registers(guests, facts):
    from guestdbg.debug.manager import DebugError
    from guestdbg.debug.x86_arch import X86DebugArch
    _m, d, s, _out = debugger("bp_targets", guests)
    for name in ("bp_a", "bp_b", "bp_c", "main"):
        d.add_breakpoint(s[name])
    if facts.int3_exits_cleanly:
        assert d.add_breakpoint(s["uart_puts"]) == "sw"  # int3: no limit
        return
    with pytest.raises(DebugError) as info:
        d.add_breakpoint(s["uart_puts"])
    assert info.value.errno == errno.ENOSPC
    assert "4" in str(info.value) and "in use" in str(info.value), str(info.value)
    assert d.slots_report()[0].startswith("hardware breakpoints: 4/4 used")
    # What the refusal should say (the manager's ENOSPC text; see the issue-15 report)
    text = X86DebugArch(facts).slots_full_message()
    assert "DR0-DR3" in text and "in use" in text and "delete a breakpoint" in text and "int3" in text
    # Nothing changed: the four still stop the guest, in order
    assert [d.cont().pc for _ in range(2)] == [s["main"], s["bp_a"]]


def test_fifth_breakpoint_under_gdb_says_why(guests, tmp_path, facts):
    """gdb 13 shows a refused Z0 as "Cannot access memory"; the reason (ENOSPC, the debug
    registers) is in `monitor info slots`, which also lists who holds them."""
    elf = guests / "bp_targets.elf"
    with Stub(tmp_path, elf, extra_args=("--arch", "x86_64")) as st:
        r = run_gdb(st, elf, """
            connect()
            for f in ("bp_a", "bp_b", "bp_c", "main", "uart_puts"):
                ex("break " + f)
            check("c", try_ex("continue"))
            check("slots", exs("monitor info slots"))
            ex("delete 5")
            check("c2", try_ex("continue"))
            check("pc", pc())
            try_ex("kill")
        """)
    r.assert_ok()
    if facts.int3_exits_cleanly:
        assert r["c"]["ok"], r.describe()
        return
    assert not r["c"]["ok"] and "Cannot insert breakpoint 5" in r["c"]["out"], r.describe()
    assert "in use" in r["slots"] and r["slots"].count("slot ") == 4, r["slots"]
    assert r["c2"]["ok"] and r["pc"] == symbols(elf)["main"], r.describe()  # the four still work


# ---------------------------------------------------------------------------- control registers
_CR_SCENARIO = """
    connect()
    ex("hbreak bp_a")
    ex("continue")
    check("info", exs("info registers cr0 cr2 cr3 cr4 cr8 efer fs_base gs_base k_gs_base"))
    check("all", exs("info registers"))
    for n in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "k_gs_base"):
        check(n, val("$" + n))
    ex("set var $cr2 = 0x1234000")
    check("cr2_set", val("$cr2"))
    check("ptype_cr0", exs("ptype $cr0"))
    try_ex("kill")  # QEMU drops the connection
"""

SYS_REGS = ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "fs_base", "gs_base", "k_gs_base")


def _info_rows(text: str) -> dict[str, str]:
    return {m[1]: m[2] for m in re.finditer(r"^(\w+)\s+0x[0-9a-f]+\s+(.*)$", text, re.MULTILINE)}


@needs_qemu
def test_control_registers_gdb_vs_qemu(guests, tmp_path):
    from guestdbg.board import pc as board
    elf = guests / "bp_targets.elf"
    with Stub(tmp_path / "g", elf, extra_args=("--arch", "x86_64")) as st:
        ours = run_gdb(st, elf, _CR_SCENARIO)
    with X86QemuStub(tmp_path / "q", elf) as q:
        theirs = run_gdb(q, elf, _CR_SCENARIO)
    ours.assert_ok()
    theirs.assert_ok()
    rows, qrows = _info_rows(ours["info"]), _info_rows(theirs["info"])
    assert list(rows) == list(qrows) == list(SYS_REGS), (ours["info"], theirs["info"])
    for n in SYS_REGS:  # both in `info registers` too, as QEMU has them
        assert re.search(rf"^{n}\s", ours["all"], re.MULTILINE) and re.search(rf"^{n}\s", theirs["all"], re.MULTILINE)
    # Flags are decoded the same way ([ PG WP ... ]); the values are each machine's own set-up:
    # guestdbg's long mode (pc.py) vs the PVH entry's (start.S).
    for n in ("cr0", "cr3", "cr4", "efer"):
        assert rows[n].startswith("[ ") and qrows[n].startswith("[ "), (n, rows[n], qrows[n])
    assert ours["cr0"] == board.CR0_PE | board.CR0_MP | board.CR0_ET | board.CR0_NE | board.CR0_WP \
        | board.CR0_AM | board.CR0_PG
    assert ours["cr3"] == board.PML4_ADDR and ours["cr4"] == theirs["cr4"] == 0x620
    assert ours["efer"] == board.EFER_SCE | board.EFER_LME | board.EFER_LMA
    for bits, name in ((0x8001_0001, "cr0"), (0x500, "efer")):  # PG WP PE; LMA LME: long mode on both
        assert ours[name] & bits == theirs[name] & bits == bits
    assert all(w in rows["cr0"] and w in qrows["cr0"] for w in ("PG", "WP", "PE"))
    assert all(w in rows["efer"] and w in qrows["efer"] for w in ("LMA", "LME"))
    assert ours["cr2"] == theirs["cr2"] == 0 and ours["cr8"] == theirs["cr8"] == 0
    assert ours["k_gs_base"] == theirs["k_gs_base"] == 0
    assert ours["cr2_set"] == theirs["cr2_set"] == 0x1234000
    assert "PG @31" in ours["ptype_cr0"] and "PG @31" in theirs["ptype_cr0"]


def test_control_register_writes_reach_kvm_or_are_refused(guests):
    from guestdbg.debug.manager import DebugError
    m, d, _s, _out = debugger("bp_targets", guests)
    d.write_register("cr2", 0xABC000)
    d.write_register("k_gs_base", 0xFFFF_8000_0000_1000)
    assert m.vcpu.get_sregs().cr2 == 0xABC000
    assert m.vcpu.get_msrs([0xC000_0102])[0xC000_0102] == 0xFFFF_8000_0000_1000
    assert d.read_register("cr3") == m.vcpu.get_sregs().cr3 and d.read_register("efer") & 0x500 == 0x500
    before = bytes(m.vcpu.get_sregs())
    with pytest.raises(DebugError) as info:
        d.write_register("cr0", 0x8000_0000)  # PG without PE: KVM_SET_SREGS refuses it
    assert info.value.errno == errno.EINVAL and "KVM refused" in str(info.value)
    assert bytes(m.vcpu.get_sregs()) == before


# ---------------------------------------------------------------------------- exit status
def test_exit_status_is_the_guests_value_not_guestdbgs_fault_status(guests):
    """`loop` succeeds (main returns 0): 0, where QEMU gives (0 << 1) | 1 = 1, the status
    guestdbg uses for a guest fault; a fault is still 1; values past 255 do not wrap to 0."""
    from guestdbg.cli import main
    assert main(["run", "--arch", "x86_64", str(guests / "loop.elf")]) == 0
    assert main(["run", "--arch", "x86_64", str(guests / "hello.elf")]) == 21
    assert main(["run", "--arch", "x86_64", str(guests / "fault_ud.elf")]) == 1
    m, _d, s, _out = debugger("loop", guests)
    code = bytes.fromhex("b800010000" "e6f4")  # mov eax, 0x100; out 0xf4, al (isa-debug-exit, 1 byte)
    m.vm.write_phys(s["main"], code)
    assert m.run_to_exit() == 0  # an 8-bit OUT: the value is 0x00
    m, _d, s, _out = debugger("loop", guests)
    m.vm.write_phys(s["main"], bytes.fromhex("b800010000" "e7f4"))  # out 0xf4, eax: 0x100
    assert m.run_to_exit() == 255


def test_exit_statuses_under_gdb_success_fault_and_kill(guests, tmp_path):
    """Under gdb too: the guest's success is 0 (gdb: exited normally); gdb's kill is 137
    (128 + SIGKILL, the server's), not 0 like success nor 1 like a fault."""
    elf = guests / "loop.elf"
    with Stub(tmp_path / "ok", elf, extra_args=("--arch", "x86_64")) as st:
        r = run_gdb(st, elf, 'connect()\nex("continue")')
        r.assert_ok()
        assert st.wait() == 0
    assert [e["exit_code"] for e in r.exits] == [0] and "exited normally" in r.stdout
    with Stub(tmp_path / "kill", elf, extra_args=("--arch", "x86_64")) as st:
        r = run_gdb(st, elf, 'connect()\nex("kill")')
        r.assert_ok()
        assert st.wait() == 128 + signal.SIGKILL
