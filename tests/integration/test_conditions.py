"""Conditional breakpoints, watchpoints and dprintf commands evaluated in the stub, over real
machines: the Python API (`add_breakpoint(va, condition=...)`), gdb's agent bytecode through the
manager and through the GDB session's `Z` packets, the x86-64 KVM back end, and the rule that a
failing condition counts as true and never changes the guest.

`guests/condloop` calls bump(n) for n = 0 .. bump_calls-1 (n in x0)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guestdbg.debug.agent_expr import AgentExpr
from guestdbg.debug.conditions import StopConditions
from guestdbg.debug.manager import GuestDebugManager, StopKind, WatchKind
from guestdbg.gdb.session import GdbSession, Reply, Resume
from tests.helpers.support import Guest, kvm_unavailable_reason
from tests.unit.test_agent_expr import asm  # the one bytecode assembler the tests share

CONDLOOP_OUT = "condloop: calls={n} total={total}\n"




def x0_equals(n: int) -> bytes:
    """`$x0 == n` as gdb-multiarch compiles it (reg 0; ext 64; const16 n; equal; end)."""
    return asm(("reg", 0), ("ext", 64), ("const16", n), "equal", "end")


def set_calls(g: Guest, n: int) -> None:
    g.vm.write_phys(g.sym["bump_calls"], n.to_bytes(8, "little"))


@pytest.fixture
def condloop(guest_dir):
    g = Guest(guest_dir / "condloop.elf")
    return g, GuestDebugManager(g.machine)


def run_to_exit(m: GuestDebugManager) -> StopKind:
    for _ in range(50):
        e = m.cont()
        if e.kind is StopKind.EXITED:
            return e.kind
    raise AssertionError("the guest did not finish")


# ---------------------------------------------------------------------------------------------
# the Python API


def test_python_condition_stops_once_at_the_right_call(condloop):
    g, m = condloop
    set_calls(g, 300)
    bump = g.sym["bump"]
    m.add_breakpoint(bump, condition=lambda v: v.read_register("x0") == 77)
    e = m.cont()
    assert (e.kind, e.pc) == (StopKind.SWBREAK, bump)
    assert m.read_register("x0") == 77
    assert int.from_bytes(m.read_memory(g.sym["bump_total"], 8), "little") == sum(range(77))
    record = m.conditions.get(("break", bump, 0))
    assert (record.hits, record.evaluations, record.true, record.errors) == (78, 78, 1, 0)
    assert m.cont().kind is StopKind.EXITED
    assert g.text == CONDLOOP_OUT.format(n=300, total=sum(range(300)))
    assert record.hits == 300


def test_agent_condition_on_memory_and_on_a_hardware_breakpoint(condloop):
    """`bump_total == 2926` (the sum of 0..76) reads guest memory: the stop is at bump(77);
    the same on a hardware slot (Z1)."""
    g, m = condloop
    set_calls(g, 200)
    total = asm(("const32", g.sym["bump_total"]), "ref64", ("const16", sum(range(77))), "equal", "end")
    m.add_hw_breakpoint(g.sym["bump"], condition=AgentExpr(total))
    e = m.cont()
    assert e.kind is StopKind.HWBREAK and m.read_register("x0") == 77
    assert m.conditions.get(("break", g.sym["bump"], 0)).hits == 78
    assert run_to_exit(m) is StopKind.EXITED
    assert g.text == CONDLOOP_OUT.format(n=200, total=sum(range(200)))


def test_conditions_are_or_ed_and_replaced_by_a_new_insertion(condloop):
    g, m = condloop
    set_calls(g, 100)
    bump = g.sym["bump"]
    m.add_breakpoint(bump, condition=StopConditions.from_agent([AgentExpr(x0_equals(30)), AgentExpr(x0_equals(10))]))
    assert m.cont().kind is StopKind.SWBREAK and m.read_register("x0") == 10
    assert m.cont().kind is StopKind.SWBREAK and m.read_register("x0") == 30
    # inserted again with another condition (gdb re-sends Z0): one breakpoint, the new condition
    m.add_breakpoint(bump, condition=AgentExpr(x0_equals(50)))
    assert [p.addr for p in m.debug_points()] == [bump]
    assert m.cont().kind is StopKind.SWBREAK and m.read_register("x0") == 50
    m.add_breakpoint(bump)  # no condition: every call stops again
    assert m.cont().kind is StopKind.SWBREAK and m.read_register("x0") == 51
    m.remove_breakpoint(bump)
    assert run_to_exit(m) is StopKind.EXITED and g.text == CONDLOOP_OUT.format(n=100, total=sum(range(100)))


def test_a_failing_condition_counts_as_true_and_changes_nothing(condloop, guest_dir):
    """Bad bytecode, an unreadable address and a raising Python condition all stop at the
    first hit, with the guest exactly as an unconditional breakpoint leaves it."""
    g0, m0 = condloop
    set_calls(g0, 5)
    m0.add_breakpoint(g0.sym["bump"])
    m0.cont()
    reference = (m0.registers(), m0.read_memory(g0.sym["bump_calls"], 64))
    for bad in (AgentExpr(bytes([0xFE])),                                   # unknown opcode
                AgentExpr(asm(("const32", 0x7FF0_0000), "ref32", "end")),   # unassigned address
                AgentExpr(asm("add", "end")),                                # stack underflow
                AgentExpr(asm(("goto", 0))),                                 # endless loop
                AgentExpr(asm(("reg", 999), "end")),                         # no such register
                lambda v: v.read_register("nonexistent")):
        g = Guest(guest_dir / "condloop.elf")
        set_calls(g, 5)
        m = GuestDebugManager(g.machine)
        m.add_breakpoint(g.sym["bump"], condition=bad)
        e = m.cont()
        assert e.kind is StopKind.SWBREAK and m.read_register("x0") == 0, bad
        assert (m.registers(), m.read_memory(g.sym["bump_calls"], 64)) == reference, bad
        record = m.conditions.get(("break", g.sym["bump"], 0))
        assert record.errors == 1 and record.last_error, bad
        assert run_to_exit(m) is StopKind.EXITED
        assert g.text == CONDLOOP_OUT.format(n=5, total=10)


def test_commands_print_without_stopping(condloop):
    """dprintf's agent form: the commands run at each hit whose condition holds; no stop."""
    g, m = condloop
    set_calls(g, 40)
    printed: list[str] = []
    m.conditions.output = printed.append
    fmt = "n=%d total=%lu\\n"
    dprintf = asm(("const32", g.sym["bump_total"]), "ref64", ("reg", 0), ("ext", 64), ("const8", 0), ("const8", 0),
                  ("printf", (2, fmt)), "end")
    odd = asm(("reg", 0), ("const8", 1), "bit_and", "end")
    m.add_breakpoint(g.sym["bump"], condition=StopConditions.from_agent([AgentExpr(odd)], [AgentExpr(dprintf)]))
    assert m.cont().kind is StopKind.EXITED
    assert printed == [f"n={n} total={sum(range(n))}\n" for n in range(1, 40, 2)]
    assert g.text == CONDLOOP_OUT.format(n=40, total=sum(range(40)))


def test_watchpoint_condition(condloop):
    """A write watch on bump_last with a condition on the value being stored (x0): one stop,
    before the store (the old value still in memory), and the rest of the run undisturbed."""
    g, m = condloop
    set_calls(g, 120)
    last = g.sym["bump_last"]
    m.add_watchpoint(last, 8, WatchKind.WRITE, condition=lambda v: v.read_register("x0") == 100)
    e = m.cont()
    assert e.kind is StopKind.WATCH and e.watch_addr == last
    assert m.read_register("x0") == 100 and int.from_bytes(m.read_memory(last, 8), "little") == 99
    record = m.conditions.get(("watch", last, 8))
    assert (record.hits, record.true) == (1 + 101, 1)  # _start zeroing .bss, then bump(0..100)
    assert m.cont().kind is StopKind.EXITED
    assert g.text == CONDLOOP_OUT.format(n=120, total=sum(range(120)))


def test_a_false_watch_condition_does_not_hide_another_watch(condloop):
    """A store to bump_last hits both a conditional `watch` (false) and a plain `awatch`: the
    stop is reported, whichever of the two the exit was attributed to."""
    g, m = condloop
    set_calls(g, 10)
    last = g.sym["bump_last"]
    m.add_watchpoint(last, 8, WatchKind.WRITE, condition=lambda v: False)
    m.add_watchpoint(last, 8, WatchKind.ACCESS)
    e = m.cont()
    assert e.kind is StopKind.WATCH and e.watch_addr == last


def test_conditions_survive_removal_for_the_counts(condloop):
    """gdb removes its breakpoints at each stop and re-inserts them: the counts go on."""
    g, m = condloop
    set_calls(g, 100)
    bump = g.sym["bump"]
    cond = lambda n: StopConditions.from_agent([AgentExpr(x0_equals(n))])  # noqa: E731
    m.add_breakpoint(bump, condition=cond(20))
    m.cont()
    m.remove_breakpoint(bump)
    assert not m.conditions and "not inserted now" in "\n".join(m.conditions.report())
    m.add_breakpoint(bump, condition=cond(20))
    assert m.conditions.get(("break", bump, 0)).hits == 21
    m.remove_all()
    assert not m.conditions


def test_conditions_on_several_vcpus(guest_dir):
    """--smp 4 (guests/smp, every CPU takes smp_lock 1000 times): a condition on the vCPU and
    on memory stops the right vCPU; false hits on the others are stepped over on theirs."""
    from guestdbg.board.virt import VirtConfig, VirtMachine
    from tests.helpers.support import symbols
    elf = guest_dir / "smp.elf"
    sym = symbols(str(elf))
    out = bytearray()
    mch = VirtMachine(VirtConfig(smp=4), console=out.extend)
    mch.load_elf(elf)
    m = GuestDebugManager(mch)
    seen: set[int] = set()

    def cond(v) -> bool:
        seen.add(v.vcpu_id)
        return v.vcpu_id == 2 and int.from_bytes(v.read_memory(sym["smp_counter"], 8), "little") >= 1500

    m.add_breakpoint(sym["spin_unlock"], condition=cond)
    e = m.cont()
    assert e.kind is StopKind.SWBREAK and e.vcpu_id == 2 and m.current_vcpu == 2
    assert int.from_bytes(m.read_memory(sym["smp_counter"], 8), "little") >= 1500
    assert {0, 1, 2} <= seen  # the others hit it too (false), and ran on
    m.remove_breakpoint(sym["spin_unlock"])
    assert m.cont().kind is StopKind.EXITED
    assert "counter: 4000 (ok)" in out.decode() and out.decode().endswith("smp: done\n")


# ---------------------------------------------------------------------------------------------
# the GDB session: Z packets with conditions and commands


def rcmd(s: GdbSession, text: str) -> str:
    r = s.handle(b"qRcmd," + text.encode().hex().encode())
    return bytes.fromhex(r.payload[1:].decode()).decode()


def test_session_z_packets_with_conditions(condloop):
    g, m = condloop
    set_calls(g, 100)
    s = GdbSession(m)
    features = s.handle(b"qSupported:swbreak+;hwbreak+").payload.split(b";")
    assert b"ConditionalBreakpoints+" in features and b"BreakpointCommands+" in features
    bump = g.sym["bump"]
    z = b"Z0,%x,4;X%x,%s" % (bump, len(x0_equals(42)), x0_equals(42).hex().encode())
    assert s.handle(z) == Reply(b"OK")
    action = s.handle(b"vCont;c")
    assert isinstance(action, Resume)
    e = action.run(m)
    assert e.kind is StopKind.SWBREAK and m.read_register("x0") == 42
    assert b"swbreak:" in s.stopped(e)
    text = rcmd(s, "info slots")
    assert "hits 43, evaluated 43, true 1, errors 0" in text and "const16 42; equal" in text
    # options that do not parse are ignored, as gdbserver does: the breakpoint always stops
    for bad in (b"Z0,%x,4;X3,26" % bump, b"Z0,%x,4;Q" % bump, b"Z0,%x,4;cmds:7,X1,27" % bump):
        assert s.handle(bad) == Reply(b"OK")
        assert [p.addr for p in m.debug_points()] == [bump] and not m.conditions
        assert s.handle(b"vCont;c").run(m).kind is StopKind.SWBREAK
    assert "conditions ignored" in rcmd(s, "info slots") and m.read_register("x0") == 42 + 3
    # bad bytecode from a raw client counts as true: the next call stops
    assert s.handle(b"Z0,%x,4;X1,fe" % bump) == Reply(b"OK")
    e = s.handle(b"vCont;c").run(m)
    assert e.kind is StopKind.SWBREAK and m.read_register("x0") == 46
    assert "unknown opcode 0xfe" in rcmd(s, "info slots")
    # commands (dprintf, agent style): printed, no stop
    printed: list[str] = []
    m.conditions.output = printed.append
    cmd = asm(("reg", 0), ("const8", 0), ("const8", 0), ("printf", (1, "n=%d\\n")), "end")
    assert s.handle(b"Z0,%x,4;cmds:1,X%x,%s" % (bump, len(cmd), cmd.hex().encode())) == Reply(b"OK")
    assert s.handle(b"vCont;c").run(m).kind is StopKind.EXITED
    assert printed == [f"n={n}\n" for n in range(47, 100)]


# ---------------------------------------------------------------------------------------------
# x86-64 on KVM: the same evaluator, other registers

_NO_KVM = kvm_unavailable_reason()


@pytest.mark.kvm
@pytest.mark.skipif(_NO_KVM is not None, reason=f"/dev/kvm cannot be used: {_NO_KVM}")
def test_x86_kvm_conditions(tmp_path_factory):
    import subprocess
    from pathlib import Path

    from guestdbg.board.pc_probe import create_pc_machine
    from tests.integration.test_x86_manners import symbols
    out_dir = tmp_path_factory.mktemp("x86_cond_guests")
    x86 = Path(__file__).resolve().parents[2] / "guests" / "x86"
    proc = subprocess.run(["make", "-C", str(x86), f"O={out_dir}", "-j2"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    elf = out_dir / "bp_targets.elf"
    sym = symbols(elf)
    out = bytearray()
    mch = create_pc_machine(console=out.extend)
    mch.load_elf(elf)
    m = GuestDebugManager(mch)
    # rip (gdb's amd64 register 16) is bp_b, and bp_b_count (memory) is 2: the third call
    code = asm(("reg", 16), ("const32", sym["bp_b"]), "equal", ("const32", sym["bp_b_count"]), "ref32",
               ("const8", 2), "equal", "bit_and", "end")
    m.add_breakpoint(sym["bp_b"], condition=AgentExpr(code))
    m.add_breakpoint(sym["bp_c"], condition=lambda v: v.read_register("rip") == 0)  # never
    e = m.cont()
    assert e.kind in (StopKind.SWBREAK, StopKind.HWBREAK) and e.pc == sym["bp_b"]
    assert int.from_bytes(m.read_memory(sym["bp_b_count"], 4), "little") == 2
    assert m.conditions.get(("break", sym["bp_b"], 0)).hits == 3
    assert m.cont().kind is StopKind.EXITED
    assert out.decode() == "bp_targets: a=3 b=3 c=3\n"
    assert m.conditions.get(("break", sym["bp_c"], 0)).hits == 3


# ---------------------------------------------------------------------------------------------
# fuzzing Z packets with conditions and commands

_OPTION = st.one_of(
    st.builds(lambda code: b"X%x,%s" % (len(code), code.hex().encode()), st.binary(min_size=1, max_size=24)),
    st.builds(lambda n, h: b"X%x,%s" % (n, h), st.integers(0, 0x20000), st.binary(max_size=12).map(lambda b: b.hex().encode())),
    st.sampled_from([b"cmds:1,", b"cmds:0,", b"cmds:", b";", b"X", b",", b"Xz,", b"cmds:9,X1,27", b"X1,2"]),
    st.binary(max_size=8),
)


@settings(max_examples=100, deadline=None)
@given(kind=st.sampled_from([0, 1]), parts=st.lists(_OPTION, max_size=4), run=st.booleans())
def test_fuzz_z_packets_with_options(guest_dir, kind, parts, run):
    """Any options after `Z0/Z1,ADDR,4;`: OK, a breakpoint there, with the conditions parsed
    or none (what does not parse is ignored); then running stops at it or ends, never raising."""
    g = Guest(guest_dir / "condloop.elf")
    m = GuestDebugManager(g.machine)
    set_calls(g, 3)
    s = GdbSession(m)
    bump = g.sym["bump"]
    reply = s.handle(b"Z%d,%x,4;" % (kind, bump) + b"".join(parts))
    assert reply == Reply(b"OK")
    assert [p.addr for p in m.debug_points()] == [bump]
    if run:
        m.conditions.output = lambda text: None
        e = s.handle(b"vCont;c").run(m)
        assert e.kind in (StopKind.SWBREAK, StopKind.HWBREAK, StopKind.EXITED)
    assert s.handle(b"z%d,%x,4" % (kind, bump)).payload in (b"OK", b"E02")
