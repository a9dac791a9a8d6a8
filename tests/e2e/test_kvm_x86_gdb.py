"""Real gdb-multiarch against `guestdbg run --arch x86_64 ELF --gdb ... --wait` on Linux KVM.

The scenarios of the stub's e2e tests that apply to x86-64: break (with whatever mechanism the
host probe chose: int3 or a DR execution slot), hbreak, watch/rwatch/awatch, stepi, continue,
Ctrl-C, detach, a snapshot round trip, gdb's amd64 register order against kvm_regs, and guest
exceptions (#UD, #PF) reported as signals at the faulting RIP.

Assertions follow the probe (guestdbg.board.pc_probe), so they hold on VMX/SVM hosts
as well as on kvm_pvm: e.g. a watch uses DR slots where DR watchpoints fire and page traps
elsewhere. Skipped, with the reason printed, only when /dev/kvm cannot be opened (or gdb is
missing).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from tests.helpers.gdb_harness import Stub, run_gdb
from tests.helpers.support import kvm_unavailable_reason

REPO = Path(__file__).resolve().parents[2]
X86_GUESTS = REPO / "guests" / "x86"
ARCH = ("--arch", "x86_64")


_NO_KVM = kvm_unavailable_reason()
if _NO_KVM:
    print(f"test_kvm_x86_gdb: skipping: /dev/kvm cannot be used: {_NO_KVM}")
pytestmark = pytest.mark.skipif(_NO_KVM is not None, reason=f"/dev/kvm cannot be used: {_NO_KVM}")


@pytest.fixture(scope="module")
def facts():
    from guestdbg.board.pc_probe import probe
    return probe()


@pytest.fixture(scope="module")
def guests(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("x86_gdb_guests")
    proc = subprocess.run(["make", "-C", str(X86_GUESTS), f"O={out}", "-j2"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    assert proc.returncode == 0, proc.stdout
    return out


def symbols(elf: Path) -> dict[str, int]:
    with elf.open("rb") as f:
        return {s.name: s["st_value"] for s in ELFFile(f).get_section_by_name(".symtab").iter_symbols() if s.name}


def stub(tmp_path, elf, **kw):
    return Stub(tmp_path, elf, extra_args=ARCH, **kw)


# ---------------------------------------------------------------------------- breakpoints, stepping
def test_break_hbreak_stepi_continue(guests, tmp_path, facts):
    elf = guests / "bp_targets.elf"
    s = symbols(elf)
    with stub(tmp_path, elf) as st:
        r = run_gdb(st, elf, """
            connect()
            check("arch", exs("show architecture"))
            ex("set breakpoint always-inserted on")  # so `monitor info slots` sees them at a stop
            check("b", ex("break bp_a"))
            check("hb", ex("hbreak bp_c"))
            ex("continue"); check("pc1", pc())
            ex("continue"); check("pc2", pc())
            check("slots", exs("monitor info slots"))
            ex("stepi"); check("pc3", pc())
            ex("stepi"); check("pc4", pc())
            ex("continue"); check("pc5", pc())
            check("count_a", val("bp_a_count"))
            ex("delete")
            ex("continue")
        """)
        r.assert_ok()
        assert st.wait() == 0  # the guest's isa-debug-exit value (main returned 0)
    assert "i386:x86-64" in r["arch"]
    assert r["pc1"] == s["bp_a"] and r["pc2"] == s["bp_c"] and r["pc5"] == s["bp_a"], r.describe()
    assert r["pc3"] != r["pc2"] and r["pc4"] != r["pc3"]
    assert r["count_a"] == 1
    mech = "software" if facts.int3_exits_cleanly else "slot"
    assert re.search(r"break\s+%#x\s+.*%s" % (s["bp_a"], mech) if facts.int3_exits_cleanly
                     else r"hbreak\s+%#x\s+slot \d" % s["bp_a"], r["slots"]), r["slots"]
    assert "bp_targets: a=3 b=3 c=3" in st.stdout
    assert [e["exit_code"] for e in r.exits] == [0]  # W00: the guest succeeded


def test_sw_breakpoints_past_the_debug_registers(guests, tmp_path, facts):
    """Where Z0 uses the DR slots, a fifth breakpoint is refused (ENOSPC) and nothing changes."""
    elf = guests / "bp_targets.elf"
    with stub(tmp_path, elf) as st:
        r = run_gdb(st, elf, """
            connect()
            for f in ("bp_a", "bp_b", "bp_c", "main", "uart_puts"):
                ex("break " + f)
            check("c", try_ex("continue"))
            check("pc", pc())
        """)
    if facts.int3_exits_cleanly:
        assert r["c"]["ok"], r.describe()
    else:
        assert not r["c"]["ok"], r.describe()
        assert "Cannot insert breakpoint 5" in r["c"]["out"], r.describe()


# ---------------------------------------------------------------------------- watchpoints
def test_watch_rwatch_awatch(guests, tmp_path, facts):
    elf = guests / "watch.elf"
    s = symbols(elf)
    w = s["wdata"]
    with stub(tmp_path, elf) as st:
        r = run_gdb(st, elf, """
            connect()
            w = sym("wdata")
            ex("set breakpoint always-inserted on")
            check("w1", ex("watch *(unsigned long *)%#x" % (w + 8)))
            check("slots", exs("monitor info slots"))
            check("c1", ex("continue")); check("pc1", pc())
            ex("delete")
            check("w2", ex("rwatch *(unsigned long *)%#x" % (w + 0x20)))
            check("c2", ex("continue")); check("pc2", pc())
            ex("delete")
            check("w3", ex("awatch *(unsigned long *)%#x" % (w + 0x38)))
            check("c3", ex("continue")); check("pc3", pc())
            check("c4", ex("continue")); check("pc4", pc())
            ex("delete")
            ex("continue")
        """)
        r.assert_ok()
        assert st.wait() == 0  # the guest's isa-debug-exit value (main returned 0)
    # x86 reports watchpoints after the access: the PC is past the accessing instruction.
    assert r["pc1"] == s["acc_str_unaligned"], r.describe()
    assert "Old value = 0" in r["c1"] and "New value = 4919131752989213764" in r["c1"], r["c1"]
    assert r["pc2"] == s["acc_rmw"], r.describe()
    assert "Value = 7378697629483820646" in r["c2"], r["c2"]
    # the read-modify-write reads and writes in one instruction: one stop, after it; then the
    # guest's dump loop reads byte 0x38 again
    assert r["pc3"] == s["acc_end"] and r["pc4"] > s["acc_end"], r.describe()
    mech = r"hw:\d" if facts.dr_write_watch_fires else "page-trap"
    assert re.search(r"watch\s+%#x\+8\s+%s" % (w + 8, mech), r["slots"]), r["slots"]
    assert "wdata: 0011222233333333444444444444444400000055555555555555550000000000666666666666666677777777777777779999999999999999" in st.stdout


def test_many_watches_page_traps_and_untouched_page(guests, tmp_path, facts):
    """More watches than debug registers, one on a page nothing touches: all exact."""
    elf = guests / "watch.elf"
    s = symbols(elf)
    with stub(tmp_path, elf) as st:
        r = run_gdb(st, elf, """
            connect()
            w = sym("wdata"); fp = sym("far_page")
            ex("set breakpoint always-inserted on")
            for i in range(5):
                ex("watch *(unsigned char *)%#x" % (fp + 8 * i))
            ex("watch *(unsigned short *)%#x" % (w + 2))
            ex("watch *(unsigned char *)%#x" % (w + 0x30))
            check("slots", exs("monitor info slots"))
            ex("continue"); check("pc1", pc())
            ex("continue"); check("pc2", pc())
            ex("delete")
            ex("continue")
        """)
        r.assert_ok()
        assert st.wait() == 0  # the guest's isa-debug-exit value (main returned 0)
    assert r["pc1"] == s["acc_str_w"], r.describe()
    assert r["pc2"] in (s["acc_rep_movsb"], s["acc_ldrb"]), r.describe()  # inside or past rep movsb
    assert "page-trap" in r["slots"]


# ---------------------------------------------------------------------------- registers
def test_register_order_matches_kvm_regs(guests, tmp_path):
    elf = guests / "regs.elf"
    s = symbols(elf)
    with stub(tmp_path, elf) as st:
        r = run_gdb(st, elf, """
            connect()
            ex("hbreak regs_set")
            ex("continue")
            for n in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10",
                      "r11", "r12", "r13", "r14", "r15", "rip"):
                check(n, val("$" + n))
            check("saved_rsp", val("*(unsigned long *)&saved_rsp"))
            check("info", exs("info registers rbp rsp rip eflags cs"))
            ex("set var $rbp = 0x2222222222222207")
            ex("stepi")
            check("rbp_after", val("$rbp"))
            check("fs_base", val("$fs_base"))
            check("xmm", exs("p $xmm0"))
            ex("kill")
        """)
        r.assert_ok()
    for i, n in enumerate(("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp"), start=1):
        assert r[n] == 0x1111111111111100 + i, (n, hex(r[n]))
    for i in range(8, 16):
        assert r[f"r{i}"] == 0x1111111111111100 + i
    assert r["rsp"] == r["saved_rsp"] and r["rsp"] != r["rbp"]
    assert r["rip"] == s["regs_set"]
    assert r["rbp_after"] == 0x2222222222222207


# ---------------------------------------------------------------------------- exceptions
@pytest.mark.parametrize("guest,sym_name,signame", [("fault_ud", "ud_insn", "SIGILL"),
                                                     ("fault_pf", "pf_insn", "SIGSEGV")])
def test_guest_exception_is_a_signal(guests, tmp_path, guest, sym_name, signame):
    elf = guests / f"{guest}.elf"
    s = symbols(elf)
    with stub(tmp_path, elf) as st:
        r = run_gdb(st, elf, """
            connect()
            check("c", ex("continue"))
            check("pc", pc())
            check("rsp", val("$rsp"))
            ex("kill")
        """)
        r.assert_ok()
    assert signame in r["c"], r["c"]
    assert r["pc"] == s[sym_name]
    assert 0x100000 <= r["rsp"] < 0x8000000  # the guest's stack, not the VMM's IST stack


# ---------------------------------------------------------------------------- Ctrl-C, detach, snapshot
def test_ctrl_c_detach_and_snapshot(guests, tmp_path):
    elf = guests / "loop.elf"
    snap = tmp_path / "loop.snap"
    with stub(tmp_path, elf) as st:
        r = run_gdb(st, elf, f"""
            connect()
            ex("set var *(unsigned long *)&loop_iterations = 100000000")
            ex("hbreak loop_body")
            ex("continue")
            ex("delete")
            check("save", exs("monitor snapshot save {snap}"))
            check("rcx0", val("$rcx"))
            ex("stepi"); ex("stepi"); ex("stepi")
            check("rcx1", val("$rcx"))
            check("load", exs("monitor snapshot load {snap}"))
            exs("maintenance flush register-cache")  # gdb does not know a monitor command changed them
            check("rcx2", val("$rcx"))
            check("pc2", pc())
            import signal, threading
            threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()  # Ctrl-C
            check("c", ex("continue"))
            check("stops", len(STOPS))
            check("pc3", pc())
            ex("set var *(unsigned long *)&loop_iterations = 0")
            ex("set var $rcx = 1")
            ex("detach")
        """)
        r.assert_ok()
        assert st.wait(timeout=30) == 0  # loop succeeded after the detach
    s = symbols(elf)
    assert "snapshot saved" in r["save"] and "snapshot loaded" in r["load"], r.describe()
    assert r["rcx1"] == r["rcx0"] - 1
    assert r["rcx2"] == r["rcx0"] and r["pc2"] == s["loop_body"]
    assert "SIGINT" in r["c"], r["c"]
    assert s["loop_body"] <= r["pc3"] < s["loop_end"]
    assert "loop: done" in st.stdout
