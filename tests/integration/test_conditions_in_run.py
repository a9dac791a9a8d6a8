"""Conditional breakpoints decided in the emulated vCPU's run (the manager's policy 18): no BRK
patched, a code hook on the one address asks the conditions before the instruction runs, a
false one lets it run with no exit. What must hold: the guest computes exactly what it computes
without a debugger, a true condition stops exactly where a plain breakpoint would (same
registers, same instruction count), the counts and dprintf output are exact, code rewritten
under the breakpoint (through another alias) keeps it, another alias of the page does not hit,
Ctrl-C stops a guest spinning through false hits, and reads of the code show the original.

`guests/condloop` calls bump(n) for n = 0 .. bump_calls-1 (n in x0)."""

from __future__ import annotations

import threading

import pytest

from guestdbg.arm import kvm_regs as kr
from guestdbg.board.virt import VirtConfig, VirtMachine
from guestdbg.debug.agent_expr import AgentExpr
from guestdbg.debug.conditions import StopConditions
from guestdbg.debug.manager import GuestDebugManager, StopKind
from tests.helpers.support import Guest
from tests.integration.test_code_aliases import GUEST_S as ALIAS_S
from tests.helpers.mmu_guest import assemble
from tests.unit.test_agent_expr import asm

CONDLOOP_OUT = "condloop: calls={n} total={total}\n"


def x0_equals(n: int) -> AgentExpr:
    return AgentExpr(asm(("reg", 0), ("ext", 64), ("const32", n), "equal", "end"))


def condloop(guest_dir, calls: int) -> tuple[Guest, GuestDebugManager]:
    g = Guest(guest_dir / "condloop.elf")
    g.vm.write_phys(g.sym["bump_calls"], calls.to_bytes(8, "little"))
    return g, GuestDebugManager(g.machine)


def test_a_false_condition_never_stops_and_the_guest_computes_what_it_does_alone(guest_dir):
    alone = Guest(guest_dir / "condloop.elf")
    alone.vm.write_phys(alone.sym["bump_calls"], (500).to_bytes(8, "little"))
    assert alone.run_to_exit() == 0
    g, m = condloop(guest_dir, 500)
    bump = g.sym["bump"]
    original = m.read_memory(bump, 16)
    m.add_breakpoint(bump, condition=x0_equals(100_000))
    assert [p.mechanism for p in m.debug_points()] == [f"software (decided in the run, pa {bump:#x})"]
    assert g.vm.read_phys(bump, 16) == original == alone.vm.read_phys(bump, 16)  # nothing patched
    assert m.cont().kind is StopKind.EXITED
    assert g.text == alone.text == CONDLOOP_OUT.format(n=500, total=sum(range(500)))
    assert g.vcpu.icount == alone.vcpu.icount
    assert [g.reg(f"x{n}") for n in range(31)] == [alone.reg(f"x{n}") for n in range(31)]
    r = m.conditions.get(("break", bump, 0))
    assert (r.hits, r.evaluations, r.true, r.errors) == (500, 500, 0, 0)


@pytest.mark.parametrize("n", [0, 1, 137])
def test_true_at_the_nth_hit_stops_exactly_where_a_plain_breakpoint_does(guest_dir, n):
    g0, m0 = condloop(guest_dir, 300)
    m0.add_breakpoint(g0.sym["bump"])
    for _ in range(n + 1):
        e0 = m0.cont()
    g, m = condloop(guest_dir, 300)
    m.add_breakpoint(g.sym["bump"], condition=x0_equals(n))
    e = m.cont()
    assert (e.kind, e.pc) == (StopKind.SWBREAK, g.sym["bump"]) == (e0.kind, e0.pc)
    assert m.registers() == m0.registers() and m.read_register("x0") == n
    assert g.vcpu.icount == g0.vcpu.icount
    assert m.read_memory(g.sym["bump_total"], 8) == m0.read_memory(g0.sym["bump_total"], 8)
    r = m.conditions.get(("break", g.sym["bump"], 0))
    assert (r.hits, r.evaluations, r.true) == (n + 1, n + 1, 1)
    # Resuming steps over the stop and runs on to the guest's end with no other stop.
    assert m.cont().kind is StopKind.EXITED
    assert g.text == CONDLOOP_OUT.format(n=300, total=sum(range(300)))
    assert (r.hits, r.true) == (300, 1)


def test_several_true_hits_a_step_from_one_and_a_python_condition(guest_dir):
    g, m = condloop(guest_dir, 100)
    bump = g.sym["bump"]
    m.add_breakpoint(bump, condition=lambda v: v.read_register("x0") in (10, 11, 60))
    assert m.cont().pc == bump and m.read_register("x0") == 10
    e = m.step()  # off the breakpoint: one instruction, the filter skipped there
    assert e.kind is StopKind.STEP and e.pc == bump + 4
    assert m.cont().pc == bump and m.read_register("x0") == 11
    assert m.cont().pc == bump and m.read_register("x0") == 60
    assert m.cont().kind is StopKind.EXITED
    assert g.text == CONDLOOP_OUT.format(n=100, total=sum(range(100)))
    r = m.conditions.get(("break", bump, 0))
    assert (r.hits, r.true) == (100, 3)


def test_conditional_plain_and_conditional_again_at_one_address(guest_dir):
    """With plain breakpoints kept as BRK patches (in_run_breakpoints off): a Z0 with
    conditions is decided in the run, one without is a BRK again, and back; debugger reads
    show the original code all along."""
    g, m = condloop(guest_dir, 100)
    m.in_run_breakpoints = False
    bump = g.sym["bump"]
    original = m.read_memory(bump, 4)
    m.add_breakpoint(bump, condition=x0_equals(5))
    assert m.cont().pc == bump and m.read_register("x0") == 5
    m.add_breakpoint(bump)
    assert g.vm.read_phys(bump, 4) == bytes.fromhex("000020d4") and m.read_memory(bump, 4) == original
    assert m.cont().pc == bump and m.read_register("x0") == 6
    m.add_breakpoint(bump, condition=x0_equals(40))
    assert g.vm.read_phys(bump, 4) == original
    assert m.cont().pc == bump and m.read_register("x0") == 40
    m.remove_breakpoint(bump)
    assert m.debug_points() == []
    assert m.cont().kind is StopKind.EXITED
    assert g.text == CONDLOOP_OUT.format(n=100, total=sum(range(100)))


def test_dprintf_commands_print_every_call_in_the_run(guest_dir):
    g, m = condloop(guest_dir, 250)
    printed: list[str] = []
    m.conditions.output = printed.append
    dprintf = AgentExpr(asm(("reg", 0), ("ext", 64), ("const8", 0), ("const8", 0), ("printf", (1, "n=%d\\n")),
                            "end"))
    m.add_breakpoint(g.sym["bump"], condition=StopConditions.from_agent([], [dprintf]))
    assert m.cont().kind is StopKind.EXITED
    assert printed == [f"n={n}\n" for n in range(250)]
    r = m.conditions.get(("break", g.sym["bump"], 0))
    assert (r.hits, r.commands_run, r.errors) == (250, 250, 0)
    assert g.text == CONDLOOP_OUT.format(n=250, total=sum(range(250)))


def test_a_condition_reading_memory(guest_dir):
    g, m = condloop(guest_dir, 200)
    total = AgentExpr(asm(("const32", g.sym["bump_total"]), "ref64", ("const16", sum(range(77))), "equal", "end"))
    m.add_breakpoint(g.sym["bump"], condition=total)
    assert m.cont().kind is StopKind.SWBREAK and m.read_register("x0") == 77
    assert m.conditions.get(("break", g.sym["bump"], 0)).hits == 78


def test_ctrl_c_stops_a_guest_spinning_through_false_hits(guest_dir):
    g, m = condloop(guest_dir, 1 << 40)
    bump = g.sym["bump"]
    m.add_breakpoint(bump, condition=x0_equals(1 << 31))
    record = m.conditions.get(("break", bump, 0))
    result: list = []
    runner = threading.Thread(target=lambda: result.append(m.cont()))
    runner.start()
    try:
        while record.hits < 200 and runner.is_alive():
            runner.join(0.01)
    finally:
        m.interrupt()
        runner.join(60)
    assert not runner.is_alive()
    (e,) = result
    assert e.kind is StopKind.SIGNAL and e.signal is not None and e.signal.name == "SIGINT"
    hits = record.hits
    # Every call made so far was evaluated once: bump_last is the last n the guest stored.
    last = int.from_bytes(m.read_memory(g.sym["bump_last"], 8), "little")
    assert hits in (last + 1, last + 2) and record.true == 0
    # And it goes on: a new condition a little further on stops there.
    m.add_breakpoint(bump, condition=x0_equals(hits + 50))
    assert m.cont().pc == bump and m.read_register("x0") == hits + 50


@pytest.fixture(scope="module")
def alias_guest(tmp_path_factory):
    return assemble(tmp_path_factory.mktemp("alias"), "alias", ALIAS_S)


def test_code_rewritten_through_an_alias_keeps_the_breakpoint_and_the_alias_does_not_hit(alias_guest):
    """guests from test_code_aliases: patchme runs at its high address three times, rewritten
    through its identity alias in between (x2 = 1, 2, 3). A conditional breakpoint at the high
    address stops at each call, on the new code each time; one at the identity alias (never
    executed there) never stops; false ones change nothing."""
    g = Guest(alias_guest)
    m, sym = g.machine, g.sym
    # Step until the guest has the high address in x20 (its MMU on), before the first call.
    mgr = GuestDebugManager(m)
    while mgr.read_register("x20") == 0:
        assert mgr.step().kind is StopKind.STEP
    high, low = mgr.read_register("x20"), sym["patchme"]
    assert high != low
    mgr.add_breakpoint(high, condition=lambda v: True)
    mgr.add_breakpoint(low, condition=lambda v: True)
    seen = []
    while (e := mgr.cont()).kind is StopKind.SWBREAK:
        assert e.pc == high
        assert mgr.step().pc == high + 4  # runs the instruction there now: mov x2, #k
        seen.append(mgr.read_register("x2"))
    assert e.kind is StopKind.EXITED
    assert seen == [1, 2, 3]
    assert [m.vcpu.get_one_reg(kr.KVM_REG_ARM_CORE_X(n)) for n in (3, 4, 5)] == [1, 2, 3]
    assert mgr.conditions.get(("break", low, 0)).hits == 0
    assert mgr.conditions.get(("break", high, 0)).hits == 3
    # False conditions at both: the same results, three evaluations.
    m = Guest(alias_guest).machine
    mgr = GuestDebugManager(m)
    while mgr.read_register("x20") == 0:
        mgr.step()
    mgr.add_breakpoint(high, condition=lambda v: False)
    mgr.add_breakpoint(low, condition=lambda v: False)
    assert mgr.cont().kind is StopKind.EXITED
    assert [m.vcpu.get_one_reg(kr.KVM_REG_ARM_CORE_X(n)) for n in (3, 4, 5)] == [1, 2, 3]
    assert mgr.conditions.get(("break", high, 0)).hits == 3
    assert mgr.conditions.get(("break", low, 0)).hits == 0


def test_reset_keeps_the_conditional_breakpoint(guest_dir):
    g, m = condloop(guest_dir, 50)
    m.add_breakpoint(g.sym["bump"], condition=x0_equals(7))
    assert m.cont().pc == g.sym["bump"] and m.read_register("x0") == 7
    m.reset()
    assert m.cont().pc == g.sym["bump"] and m.read_register("x0") == 7
    assert m.conditions.get(("break", g.sym["bump"], 0)).hits == 16


def test_while_recording_the_stop_path_evaluates(guest_dir):
    g, m = condloop(guest_dir, 60)
    m.start_recording()
    m.add_breakpoint(g.sym["bump"], condition=x0_equals(30))
    assert m.cont().pc == g.sym["bump"] and m.read_register("x0") == 30
    r = m.conditions.get(("break", g.sym["bump"], 0))
    assert (r.hits, r.evaluations, r.true) == (31, 31, 1)
    assert m.cont().kind is StopKind.EXITED
    assert g.text == CONDLOOP_OUT.format(n=60, total=sum(range(60)))


TIGHT_S = r"""
    .text
    .global _start, again
_start:
    mov     x1, #7
again:
    subs    x1, x1, #1        // a breakpoint here is met every second instruction
    b.ne    again
    mov     x2, #0x55
    ldr     x0, =0x84000008   // PSCI SYSTEM_OFF
    hvc     #0
    b       .
"""


def test_resuming_from_a_hit_skips_only_that_hit(tmp_path):
    """Resuming from an in-run breakpoint needs no step (nothing is patched): the run skips
    the one hit it stopped at, by instruction count, so the next pass through a two-instruction
    loop stops again; a condition on the loop counter stops exactly where it holds."""
    elf = assemble(tmp_path, "tight", TIGHT_S)
    from tests.helpers.support import symbols
    again = symbols(str(elf))["again"]
    for condition, expected in ((None, [7, 6, 5, 4, 3, 2, 1]), (lambda v: v.read_register("x1") % 3 == 0, [6, 3])):
        m = VirtMachine(VirtConfig(), console=lambda b: None)
        m.load_elf(elf)
        mgr = GuestDebugManager(m)
        mgr.add_breakpoint(again, condition=condition)
        seen, counts = [], []
        while (e := mgr.cont()).kind is StopKind.SWBREAK and len(seen) < 20:
            assert e.pc == again
            seen.append(mgr.read_register("x1"))
            counts.append(m.vcpu.icount)
        assert e.kind is StopKind.EXITED and mgr.read_register("x2") == 0x55
        assert seen == expected
        assert counts == [1 + 2 * (7 - x) for x in expected]  # before `subs`, pass 7 - x1


@pytest.mark.parametrize("condition", [None, lambda v: False, lambda v: True])
def test_the_guests_own_brk_under_an_in_run_breakpoint_still_goes_to_the_guest(guest_dir, condition):
    """guests/bp_targets executes its own BRK #0x123 at guest_brk once. A breakpoint there
    (plain, false, true) stops before it when it says so, and the guest's BRK then reaches the
    guest's handler as without a debugger (brk=1), never reported as the debugger's stop."""
    g = Guest(guest_dir / "bp_targets.elf")
    m = GuestDebugManager(g.machine)
    at = g.sym["guest_brk"]
    m.add_breakpoint(at, condition=condition)
    stops = []
    while (e := m.cont()).kind is StopKind.SWBREAK and len(stops) < 5:
        stops.append(e.pc)
    assert e.kind is StopKind.EXITED and e.exit_status == 0
    assert stops == ([] if condition is not None and not condition(None) else [at])
    assert g.text.endswith("bp_targets: a=3 b=3 c=3 brk=1\n")


def test_gdbs_remove_step_insert_cycle_keeps_the_hook_and_a_continue_drops_removed_ones(guest_dir):
    """gdb removes a breakpoint at each stop, steps over its address and inserts it again (z0,
    vCont;s, Z0). The hook of a removed breakpoint stays, idle, until the guest is let run on:
    the step is not stopped by it, the breakpoint put back hits at once, and after a continue
    with it removed nothing of it is left."""
    g, m = condloop(guest_dir, 50)
    bump = g.sym["bump"]
    m.add_breakpoint(bump)
    for n in range(3):
        e = m.cont()
        assert (e.kind, e.pc, g.reg("x0")) == (StopKind.SWBREAK, bump, n)
        m.remove_breakpoint(bump)
        assert m.step().kind is StopKind.STEP and g.vcpu.pc == bump + 4  # the idle hook lets it run
        assert list(g.vcpu._idle_filters) == [bump]
        m.add_breakpoint(bump)
        assert not g.vcpu._idle_filters and list(g.vcpu._filters) == [bump]
    m.remove_breakpoint(bump)
    assert m.cont().kind is StopKind.EXITED  # no stop at bump: removed, and its hook pruned
    assert not g.vcpu._idle_filters and not g.vcpu._filters
    assert g.text == CONDLOOP_OUT.format(n=50, total=sum(range(50)))
