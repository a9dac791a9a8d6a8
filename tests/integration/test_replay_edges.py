"""Replays at their edges, pinned for mutation testing of debug/manager.py: where `seek_to`
lands and what it restores and inserts, what reverse_cont reports, in-run breakpoints'
conditions, and the recorder's own state in a checkpoint. Small guests assembled here; exact
PCs, instruction counts and checkpoint times."""

from __future__ import annotations

import signal

import pytest

from guestdbg.debug.manager import GuestDebugManager, StopKind, WatchKind
from tests.helpers.support import GIC_SPI40
from tests.integration.test_reverse_step_edges import _load


def _restored(mgr) -> int:
    return mgr.record_status()["restored"]


def _times(mgr) -> list[int]:
    return [c.time for c in mgr._history.checkpoints]


# A counting loop (3 instructions an iteration) then a halt: long enough for a seek to insert
# checkpoints on its way (SEEK_NEAR is 4000 instructions).
LOOP_S = r"""
    .text
    .global _start, loop, done, store, after
_start:
    mov     x0, #0
    ldr     x1, =0x40100000
store:
    str     x0, [x1]
after:
    add     x2, x2, #1
    add     x2, x2, #1
    mov     x3, #6000
loop:
    add     x0, x0, #1
    cmp     x0, x3
    b.ne    loop
done:
    b       done
"""


def _loop(tmp_path, interval: int = 1_000_000):
    m, mgr, sym = _load(tmp_path, "loop", LOOP_S)
    mgr.start_recording(interval=interval)
    return m, mgr, sym


# ---------------------------------------------------------------------------------------------
# the recorder's own state in a checkpoint

def test_recorder_state_without_its_entries_restores_the_defaults(tmp_path):
    """A checkpoint's recorder state without console pulls or interrupt due times (as one taken
    before they were kept) restores no pulls, and leaves irq_due alone; one with them restores
    both."""
    m, mgr, _ = _loop(tmp_path)
    mgr._console_pulls = 5
    m.vcpu.irq_due = 0
    mgr._restore_recorder_state({"console_pulls": 3, "irq_due": [77]})
    assert (mgr._console_pulls, m.vcpu.irq_due) == (3, 77)
    mgr._restore_recorder_state({})
    assert (mgr._console_pulls, m.vcpu.irq_due) == (0, 77)


# ---------------------------------------------------------------------------------------------
# seeks that need no restore, and the reverse_cont one step into the history

def test_a_seek_to_where_the_machine_is_restores_nothing(tmp_path):
    """At a checkpoint's count, or between it and the target, a seek replays from where the
    machine is: no checkpoint restored, and the machine where it was."""
    m, mgr, sym = _loop(tmp_path)
    begin = mgr.record_status()["begin"]
    r = _restored(mgr)
    ev = mgr.seek_to(begin)  # at the first checkpoint's count
    assert (ev.pc, m.vcpu.pc, m.vcpu.icount, _restored(mgr) - r) == (sym["_start"], sym["_start"], begin, 0)
    for _ in range(4):
        mgr.step()
    now = m.vcpu.icount
    assert now == begin + 4
    r = _restored(mgr)
    ev = mgr.seek_to(now)  # where it is (a checkpoint before it)
    assert (ev.pc, m.vcpu.icount, _restored(mgr) - r) == (sym["after"] + 4, now, 0)
    ev = mgr.seek_to(begin + 2)
    assert (ev.pc, m.vcpu.icount, _restored(mgr) - r) == (sym["store"], begin + 2, 1)
    ev = mgr.seek_to(begin + 3)  # forward from there: no restore
    assert (ev.pc, m.vcpu.icount, _restored(mgr) - r) == (sym["after"], begin + 3, 1)


def test_reverse_cont_one_instruction_into_the_history_stops_at_its_start(tmp_path):
    m, mgr, sym = _loop(tmp_path)
    begin = mgr.record_status()["begin"]
    mgr.step()
    ev = mgr.reverse_cont()
    assert (ev.kind, ev.history_edge, ev.pc, m.vcpu.pc, m.vcpu.icount) == (
        StopKind.SIGNAL, "begin", sym["_start"], sym["_start"], begin)


# ---------------------------------------------------------------------------------------------
# the checkpoints a seek inserts on its way

def test_seeks_insert_checkpoints_ever_closer_to_their_targets(tmp_path):
    """A seek far from every checkpoint inserts one three quarters of the way (a soft stop: at
    the block boundary at or before it), again and again while it is still more than 4000
    instructions away; one from within 4000 inserts none."""
    m, mgr, sym = _loop(tmp_path)
    begin = mgr.record_status()["begin"]
    assert begin == 0
    mgr.add_breakpoint(sym["done"])
    assert (mgr.cont().pc, m.vcpu.icount) == (sym["done"], 18006)
    mgr.remove_breakpoint(sym["done"])
    assert _times(mgr) == [0]
    ev = mgr.seek_to(16000)  # 12000 is exactly 4000 short: no second one
    assert (ev.pc, m.vcpu.icount, mgr.read_register("x0")) == (sym["loop"] + 4, 16000, 5332)
    assert _times(mgr) == [0, 12000]
    mgr.seek_to(0)
    ev = mgr.seek_to(17000)  # from the checkpoint near 12000: one near 15750
    assert (ev.pc, m.vcpu.icount, mgr.read_register("x0")) == (sym["loop"] + 8, 17000, 5665)
    assert _times(mgr) == [0, 12000, 15750]
    ev = mgr.seek_to(12900)  # from within 4000 of a checkpoint: none inserted
    assert (ev.pc, m.vcpu.icount, mgr.read_register("x0")) == (sym["loop"], 12900, 4298)
    assert _times(mgr) == [0, 12000, 15750]


# Two counting loops: the live run stops between them (at `mid`, instruction 12003), so the
# history's log has a stop there that a replay stops at too.
TWO_LOOPS_S = r"""
    .text
    .global _start, loop1, mid, loop2, done
_start:
    mov     x0, #0
    mov     x3, #4000
    nop
loop1:
    add     x0, x0, #1
    cmp     x0, x3
    b.ne    loop1
mid:
    mov     x0, #0
    mov     x3, #2000
loop2:
    add     x0, x0, #1
    cmp     x0, x3
    b.ne    loop2
done:
    b       done
"""


def test_a_seek_whose_insertion_point_is_a_logged_stop_inserts_past_it(tmp_path):
    """From the start to 16004: the first insertion point (3/4 of the way: 12003) is where the
    recorded run stopped, which the replay stops at exactly (no checkpoint there); the next
    (15003) gets one, at the block boundary before it (15002)."""
    m, mgr, sym = _load(tmp_path, "two", TWO_LOOPS_S)
    mgr.start_recording(interval=1_000_000)
    mgr.add_breakpoint(sym["mid"])
    assert (mgr.cont().pc, m.vcpu.icount) == (sym["mid"], 12003)
    mgr.remove_breakpoint(sym["mid"])
    mgr.add_breakpoint(sym["done"])
    assert (mgr.cont().pc, m.vcpu.icount) == (sym["done"], 18005)
    mgr.remove_breakpoint(sym["done"])
    assert _times(mgr) == [0]
    ev = mgr.seek_to(16004)
    assert (ev.pc, m.vcpu.icount, mgr.read_register("x0"), mgr.read_register("x3")) == (
        sym["loop2"], 16004, 1333, 2000)
    assert _times(mgr) == [0, 15002]


# ---------------------------------------------------------------------------------------------
# in-run breakpoints (policy 18) and their conditions, not recording

def _count_runs(m, limit: int = 100, interrupt_at: tuple[int, GuestDebugManager] | None = None) -> list[int]:
    """Count the board's runs in runs[0], and fail past `limit` (not hang); with
    `interrupt_at` (n, manager): a Ctrl-C (interrupt()) as the n-th run starts."""
    runs = [0]
    run_until = m.run_until

    def counted(*args, **kwargs):
        runs[0] += 1
        assert runs[0] < limit, "the debugger runs the guest on and on"  # fail, not hang
        if interrupt_at is not None and runs[0] == interrupt_at[0]:
            interrupt_at[1].interrupt()
        return run_until(*args, **kwargs)
    m.run_until = counted
    return runs


def test_a_false_condition_decided_in_the_run_costs_no_exit(tmp_path):
    """A conditional breakpoint in the loop whose condition is false until x0 is 7: the run
    decides each hit itself (the condition asked at every one) and exits only at the true one."""
    m, mgr, sym = _load(tmp_path, "loop", LOOP_S)
    asked = []

    def cond(view):
        asked.append(view.read_register("x0"))
        return view.read_register("x0") == 7
    mgr.add_breakpoint(sym["loop"] + 4, condition=cond)
    assert mgr.debug_points()[0].mechanism.startswith("software (decided in the run")
    runs = _count_runs(m)
    ev = mgr.cont()
    assert (ev.kind, ev.pc, mgr.read_register("x0"), runs[0]) == (StopKind.SWBREAK, sym["loop"] + 4, 7, 1)
    assert asked == [1, 2, 3, 4, 5, 6, 7]


def test_a_condition_given_again_keeps_the_breakpoint_in_the_run(tmp_path):
    """With plain breakpoints as BRK patches (`in_run_breakpoints = False`), a conditional one
    is still decided in the run, also when its condition is set again: no BRK in guest memory."""
    m, mgr, sym = _load(tmp_path, "loop", LOOP_S)
    mgr.in_run_breakpoints = False
    va = sym["loop"] + 4
    code = m.vm.read_phys(va, 4)
    mgr.add_breakpoint(va, condition=lambda view: view.read_register("x0") == 3)
    mgr.add_breakpoint(va, condition=lambda view: view.read_register("x0") == 5)
    assert [p.mechanism for p in mgr.debug_points()] == [f"software (decided in the run, pa {va:#x})"]
    assert m.vm.read_phys(va, 4) == code
    runs = _count_runs(m)
    ev = mgr.cont()
    assert (ev.kind, ev.pc, mgr.read_register("x0"), runs[0]) == (StopKind.SWBREAK, va, 5, 1)


# ---------------------------------------------------------------------------------------------
# reverse steps over a store with a checkpoint at every instruction

def test_a_reverse_step_over_a_store_with_checkpoints_everywhere_lands_before_it(tmp_path):
    """Checkpoints at every count (interval 1): back over the add and then over the store (an
    instruction that may fault: the careful path replays it afresh from the checkpoint before
    it), landing on it."""
    m, mgr, sym = _loop(tmp_path, interval=1)
    for _ in range(4):
        mgr.step()
    assert (m.vcpu.pc, m.vcpu.icount) == (sym["after"] + 4, 4)
    assert mgr.read_memory(0x40100000, 8) == (0).to_bytes(8, "little")
    ev = mgr.reverse_step()
    assert (ev.kind, ev.pc, m.vcpu.pc, m.vcpu.icount) == (StopKind.STEP, sym["after"], sym["after"], 3)
    runs = _count_runs(m)
    ev = mgr.reverse_step()
    assert (ev.kind, ev.pc, m.vcpu.pc, m.vcpu.icount) == (StopKind.STEP, sym["store"], sym["store"], 2)
    assert mgr.read_register("x2") == 0
    # The checkpoint at 2 restored (no run), one step to see that the store retires, then
    # afresh: the checkpoint before 2 (at 1) and a replay of one instruction to 2.
    assert runs[0] == 2


# ---------------------------------------------------------------------------------------------
# an interrupt entry: two states share an instruction count (the arrival, and the vector)

IRQ_S = r"""
    .text
    .global _start, raise_irq, interrupted, vectors, irq
_start:
    ldr     x0, =vectors
    msr     vbar_el1, x0
    isb
""" + GIC_SPI40 + r"""
raise_irq:
    str     w2, [x1, #0x204]           // GICD_ISPENDR1: taken where this block ends
    add     x4, x4, #1
    add     x4, x4, #1
    add     x4, x4, #1
    b       1f                         // the block ends here
interrupted:
1:  b       1b
    .balign 2048
vectors:
    .skip   0x280
irq:
    add     x7, x7, #1
    add     x7, x7, #1
    b       .
"""


def _irq(tmp_path, interval: int):
    m, mgr, sym = _load(tmp_path, "irq", IRQ_S)
    mgr.start_recording(interval=interval)
    return m, mgr, sym


def _step_to(m, mgr, pc: int, limit: int = 100) -> int:
    for _ in range(limit):
        if m.vcpu.pc == pc:
            return m.vcpu.icount
        assert mgr.step().kind is StopKind.STEP
    raise AssertionError(f"never at {pc:#x}")


def _past_the_entry(m, mgr, sym) -> int:
    t = _step_to(m, mgr, sym["interrupted"])
    assert (mgr.step().pc, m.vcpu.icount) == (sym["irq"], t)
    assert (mgr.step().pc, m.vcpu.icount) == (sym["irq"] + 4, t + 1)
    return t


def _where(m, event) -> tuple:
    return (event.kind, event.pc, event.history_edge, m.vcpu.pc, m.vcpu.icount)


def test_reverse_cont_to_a_breakpoint_at_a_vector_reports_where_the_machine_is(tmp_path):
    """A breakpoint on the interrupt vector's first instruction, reverse_cont from past it: a
    SWBREAK at the count of the entry, reported at the PC the machine is at (whichever of the
    two states sharing that count it lands in), the interrupted adds done."""
    m, mgr, sym = _irq(tmp_path, 1000)
    t = _past_the_entry(m, mgr, sym)
    mgr.add_breakpoint(sym["irq"])
    ev = mgr.reverse_cont()
    assert (ev.kind, ev.pc, m.vcpu.icount, mgr.read_register("x4"), mgr.read_register("x7")) == (
        StopKind.SWBREAK, m.vcpu.pc, t, 3, 0)
    assert m.vcpu.pc in (sym["irq"], sym["interrupted"])


def test_reverse_cont_to_a_breakpoint_at_a_vector_lands_on_the_vector(tmp_path):
    """The hit's count is shared by the arrival (the interrupted branch) and the vector: the
    stop is at the vector, where the breakpoint is (it landed on the branch before)."""
    m, mgr, sym = _irq(tmp_path, 1000)
    t = _past_the_entry(m, mgr, sym)
    mgr.add_breakpoint(sym["irq"])
    assert _where(m, mgr.reverse_cont()) == (StopKind.SWBREAK, sym["irq"], None, sym["irq"], t)


def test_reverse_steps_through_an_interrupt_entry_with_checkpoints_everywhere(tmp_path):
    """A checkpoint at every count (interval 1), among them the two inside the block the
    interrupt is due at the end of. Restoring one of those leaves the interrupt due there (the
    vCPU's HCR_EL2.VI as the recorded run had it, not as the run after the entry left it):
    reverse steps land where the forward steps were, the vector only at the entry's count."""
    m, mgr, sym = _irq(tmp_path, 1)
    t = _past_the_entry(m, mgr, sym)
    vector, branch = sym["irq"], sym["interrupted"]
    assert _where(m, mgr.reverse_step()) == (StopKind.STEP, vector, None, vector, t)
    assert _where(m, mgr.reverse_step()) == (StopKind.STEP, branch, None, branch, t)
    assert _where(m, mgr.reverse_step()) == (StopKind.STEP, branch - 4, None, branch - 4, t - 1)


# ---------------------------------------------------------------------------------------------
# reverse_cont over the guest's own breakpoint instruction (re-injected into the guest)

GUEST_BRK_S = r"""
    .text
    .global _start, own_brk, mark, done, vectors
_start:
    ldr     x0, =vectors
    msr     vbar_el1, x0
    isb
    mov     x5, #0
own_brk:
    brk     #1                         // the guest's own: its handler skips it
    add     x5, x5, #1
mark:
    add     x5, x5, #1
    add     x5, x5, #1
done:
    b       done
    .balign 2048
vectors:
    mrs     x9, elr_el1                // current EL, SP0: synchronous
    add     x9, x9, #4
    msr     elr_el1, x9
    add     x6, x6, #1
    eret
    .balign 0x200
    mrs     x9, elr_el1                // current EL, SPx: synchronous
    add     x9, x9, #4
    msr     elr_el1, x9
    add     x6, x6, #1
    eret
"""


@pytest.mark.parametrize("in_run", [False, True])
def test_reverse_cont_replays_past_the_guests_own_brk_to_the_breakpoint_after_it(tmp_path, in_run):
    """The guest's BRK (re-injected to its handler, which counts it in x6) is no stop: a replay
    goes on past it and finds the breakpoint after it."""
    m, mgr, sym = _load(tmp_path, "gbrk", GUEST_BRK_S)
    mgr.in_run_breakpoints = in_run
    mgr.start_recording(interval=1000)
    mgr.add_breakpoint(sym["mark"])
    ev = mgr.cont()
    assert (ev.kind, ev.pc, mgr.read_register("x5"), mgr.read_register("x6")) == (StopKind.SWBREAK, sym["mark"], 1, 1)
    t = m.vcpu.icount
    for _ in range(2):
        mgr.step()
    assert (m.vcpu.pc, mgr.read_register("x5")) == (sym["done"], 3)
    ev = mgr.reverse_cont()
    assert _where(m, ev) == (StopKind.SWBREAK, sym["mark"], None, sym["mark"], t)
    assert (mgr.read_register("x5"), mgr.read_register("x6")) == (1, 1)


# ---------------------------------------------------------------------------------------------
# reverse_cont over a guest fault, and a Ctrl-C in its replay

FAULT_S = r"""
    .text
    .global _start, mark, mark2, fault, resume, done
_start:
    mov     x5, #0
mark:
    add     x5, x5, #1
mark2:
    add     x5, x5, #1
fault:
    udf     #0
resume:
    add     x5, x5, #1
done:
    b       done
"""


def _past_the_fault(tmp_path):
    m, mgr, sym = _load(tmp_path, "fault", FAULT_S)
    mgr.start_recording(interval=1000)
    ev = mgr.cont()
    assert (ev.kind, ev.signal, ev.pc, m.vcpu.icount) == (StopKind.SIGNAL, signal.SIGILL, sym["fault"], 3)
    mgr.set_pc(sym["resume"])
    mgr.step()
    assert (m.vcpu.pc, mgr.read_register("x5")) == (sym["done"], 3)
    return m, mgr, sym


def test_reverse_cont_stops_at_the_guest_fault_after_a_breakpoint(tmp_path):
    """A breakpoint hit and then a fault in one replayed interval: the fault, the most recent,
    is where reverse_cont stops (SIGILL at the undefined instruction)."""
    m, mgr, sym = _past_the_fault(tmp_path)
    mgr.add_breakpoint(sym["mark"])
    ev = mgr.reverse_cont()
    assert (ev.kind, ev.signal, ev.pc, m.vcpu.pc, m.vcpu.icount) == (StopKind.SIGNAL, signal.SIGILL, sym["fault"], sym["fault"], 3)
    assert mgr.read_register("x5") == 2


def test_reverse_cont_stops_at_the_fault_and_a_step_from_there_replays_the_jump(tmp_path):
    """The jump past the fault (set_pc, logged at the fault's count) came after the fault:
    reverse_cont stops at the fault as the recorded run did, and a step from there gives the
    jump before it runs on, as the recorded run went on."""
    m, mgr, sym = _past_the_fault(tmp_path)
    ev = mgr.reverse_cont()
    assert _where(m, ev) == (StopKind.SIGNAL, sym["fault"], None, sym["fault"], 3)
    assert ev.signal == signal.SIGILL and mgr.read_register("x5") == 2
    assert _where(m, mgr.step()) == (StopKind.STEP, sym["done"], None, sym["done"], 4)
    assert mgr.read_register("x5") == 3
    # Back over the jump's count: the state after the jump (a seek gives the debugger's writes).
    assert _where(m, mgr.reverse_step()) == (StopKind.STEP, sym["resume"], None, sym["resume"], 3)


def test_a_ctrl_c_as_the_replay_meets_the_fault_keeps_the_jump_for_the_run_on(tmp_path):
    """A Ctrl-C (interrupt()) arriving as reverse_cont's replay runs the faulting instruction
    to meet the fault: it stops there, before the jump; the step from there gives the jump."""
    m, mgr, sym = _past_the_fault(tmp_path)
    # To the fault's count (1), then the run that meets the fault (2).
    runs = _count_runs(m, interrupt_at=(2, mgr))
    ev = mgr.reverse_cont()
    assert (ev.kind, ev.signal, m.vcpu.pc, m.vcpu.icount, runs[0]) == (StopKind.SIGNAL, signal.SIGINT, sym["fault"], 3, 2)
    assert _where(m, mgr.step()) == (StopKind.STEP, sym["done"], None, sym["done"], 4)
    assert mgr.read_register("x5") == 3


def test_reverse_cont_finds_a_breakpoint_hit_the_debugger_jumped_away_from(tmp_path):
    """A breakpoint hit, then a jump (set_pc) off it at that count: the replay meets the hit
    before the jump, and reverse_cont stops there; a step from the stop replays the jump."""
    m, mgr, sym = _load(tmp_path, "fault", FAULT_S)
    mgr.start_recording(interval=1000)
    mgr.add_breakpoint(sym["mark"])
    assert _where(m, mgr.cont()) == (StopKind.SWBREAK, sym["mark"], None, sym["mark"], 1)
    mgr.set_pc(sym["mark2"])
    assert _where(m, mgr.step()) == (StopKind.STEP, sym["fault"], None, sym["fault"], 2)
    ev = mgr.reverse_cont()
    assert _where(m, ev) == (StopKind.SWBREAK, sym["mark"], None, sym["mark"], 1)
    assert mgr.read_register("x5") == 0
    assert _where(m, mgr.step()) == (StopKind.STEP, sym["fault"], None, sym["fault"], 2)
    assert mgr.read_register("x5") == 1  # mark2's add, not mark's: the jump was replayed


def test_reverse_cont_stops_where_a_breakpoint_stopped_before_the_register_written_there(tmp_path):
    """At a breakpoint stop the debugger wrote x5 and went on (the step-over after the write):
    reverse_cont to that hit shows x5 as the hit left it; going forward gives the write."""
    m, mgr, sym = _load(tmp_path, "fault", FAULT_S)
    mgr.start_recording(interval=1000)
    mgr.add_breakpoint(sym["mark"])
    assert mgr.cont().pc == sym["mark"]
    mgr.write_register("x5", 100)
    assert _where(m, mgr.step()) == (StopKind.STEP, sym["mark2"], None, sym["mark2"], 2)
    assert mgr.read_register("x5") == 101
    assert _where(m, mgr.reverse_cont()) == (StopKind.SWBREAK, sym["mark"], None, sym["mark"], 1)
    assert mgr.read_register("x5") == 0
    assert (mgr.step().pc, mgr.read_register("x5")) == (sym["mark2"], 101)


def test_reverse_cont_replays_a_write_made_at_the_start_of_the_history(tmp_path):
    """A register written where the history starts, before any run (no stop logged there):
    the replay gives it from the first checkpoint on, and the hit it finds has it."""
    m, mgr, sym = _load(tmp_path, "fault", FAULT_S)
    mgr.start_recording(interval=1000)
    mgr.write_register("x6", 10)
    mgr.add_breakpoint(sym["mark2"])
    assert mgr.cont().pc == sym["mark2"]
    mgr.step()
    assert _where(m, mgr.reverse_cont()) == (StopKind.SWBREAK, sym["mark2"], None, sym["mark2"], 2)
    assert (mgr.read_register("x5"), mgr.read_register("x6")) == (1, 10)


def test_a_false_conditional_breakpoint_where_the_debugger_jumped_runs_on_from_the_jump(tmp_path):
    """The recorded run stopped at mark and jumped to resume. Replayed with a conditional
    breakpoint at mark whose condition is false and one at resume: mark's is no hit, and the
    run goes on from the jump (not over mark's instruction), to the hit at resume."""
    m, mgr, sym = _load(tmp_path, "fault", FAULT_S)
    mgr.start_recording(interval=1000)
    mgr.add_breakpoint(sym["mark"])
    assert mgr.cont().pc == sym["mark"]
    mgr.set_pc(sym["resume"])
    assert _where(m, mgr.step()) == (StopKind.STEP, sym["done"], None, sym["done"], 2)
    mgr.add_breakpoint(sym["mark"], condition=lambda view: False)
    mgr.add_breakpoint(sym["resume"])
    assert _where(m, mgr.reverse_cont()) == (StopKind.SWBREAK, sym["resume"], None, sym["resume"], 1)
    assert mgr.read_register("x5") == 0


def test_the_stop_looked_for_where_the_debugger_wrote_is_only_at_that_count(tmp_path):
    """A step stopped at mark and the debugger wrote x6 there; a breakpoint at the next
    instruction (mark2) is no stop at mark's count: reverse_cont finds it at its own count, x6
    written."""
    m, mgr, sym = _load(tmp_path, "fault", FAULT_S)
    mgr.start_recording(interval=1000)
    assert mgr.step().pc == sym["mark"]
    mgr.write_register("x6", 5)
    for _ in range(2):
        mgr.step()
    assert (m.vcpu.pc, m.vcpu.icount) == (sym["fault"], 3)
    mgr.add_breakpoint(sym["mark2"])
    assert _where(m, mgr.reverse_cont()) == (StopKind.SWBREAK, sym["mark2"], None, sym["mark2"], 2)
    assert (mgr.read_register("x5"), mgr.read_register("x6")) == (1, 5)


def test_the_guests_own_brk_where_the_debugger_wrote_is_no_stop_of_reverse_cont(tmp_path):
    """The recorded run stopped at the guest's own BRK (a step) and the debugger wrote x8 there.
    Replayed, that BRK goes to the guest's handler as it did, no stop: reverse_cont finds the
    breakpoint before it."""
    m, mgr, sym = _load(tmp_path, "gbrk", GUEST_BRK_S)
    mgr.start_recording(interval=1000)
    while m.vcpu.pc != sym["own_brk"]:
        mgr.step()
    at_brk = m.vcpu.icount
    mgr.write_register("x8", 1)
    mgr.add_breakpoint(sym["mark"])
    assert mgr.cont().pc == sym["mark"]
    mgr.remove_breakpoint(sym["mark"])
    mgr.add_breakpoint(sym["own_brk"] - 4)  # mov x5, #0
    ev = mgr.reverse_cont()
    assert _where(m, ev) == (StopKind.SWBREAK, sym["own_brk"] - 4, None, sym["own_brk"] - 4, at_brk - 1)
    assert mgr.read_register("x8") == 0


STORE_S = r"""
    .text
    .global _start, store, data
_start:
    adr     x1, data
    mov     x2, #7
store:
    str     x2, [x1]
    add     x3, x3, #1
    b       .
    .balign 8
data:
    .quad   0
"""


def test_reverse_cont_to_a_watch_hit_after_a_write_at_a_breakpoint_shows_the_write(tmp_path):
    """At a breakpoint on a store the debugger wrote the stored register, then the step over
    it met a write watch (the second stop at that count). reverse_cont back to the watch hit:
    it came after the write, so the register shows the written value; back to the breakpoint
    hit before it, the value before the write."""
    m, mgr, sym = _load(tmp_path, "store", STORE_S)
    mgr.start_recording(interval=1000)
    mgr.add_breakpoint(sym["store"])
    assert mgr.cont().pc == sym["store"]
    mgr.write_register("x2", 9)
    mgr.add_watchpoint(sym["data"], 8, WatchKind.WRITE)
    ev = mgr.cont()
    assert (ev.kind, ev.pc, m.vcpu.icount) == (StopKind.WATCH, sym["store"], 2)
    mgr.step()
    assert mgr.read_memory(sym["data"], 8) == (9).to_bytes(8, "little")
    ev = mgr.reverse_cont()
    assert (ev.kind, ev.pc, m.vcpu.icount, mgr.read_register("x2")) == (StopKind.WATCH, sym["store"], 2, 9)
    mgr.remove_watchpoint(sym["data"], 8, WatchKind.WRITE)
    mgr.step()  # over the store: the history's next stop is the one past it
    ev = mgr.reverse_cont()
    assert (ev.kind, ev.pc, m.vcpu.icount, mgr.read_register("x2")) == (StopKind.SWBREAK, sym["store"], 2, 7)


@pytest.mark.parametrize("jump", [False, True], ids=["memory", "memory-and-jump"])
def test_reverse_cont_meets_a_hit_where_the_debugger_wrote_memory(tmp_path, jump):
    """At a breakpoint the debugger wrote guest memory (and, in one case, jumped past the
    store). reverse_cont stops at that hit, the memory as the hit found it; a step from there
    gives the write."""
    m, mgr, sym = _load(tmp_path, "store", STORE_S)
    mgr.start_recording(interval=1000)
    mgr.add_breakpoint(sym["store"])
    assert mgr.cont().pc == sym["store"]
    mgr.write_memory(sym["data"] + 8, (5).to_bytes(8, "little"))
    if jump:
        mgr.set_pc(sym["store"] + 4)
    mgr.step()
    ev = mgr.reverse_cont()
    assert (ev.kind, ev.pc, m.vcpu.icount) == (StopKind.SWBREAK, sym["store"], 2)
    assert mgr.read_memory(sym["data"] + 8, 8) == bytes(8)
    mgr.remove_breakpoint(sym["store"])
    mgr.step()
    assert mgr.read_memory(sym["data"] + 8, 8) == (5).to_bytes(8, "little")
    assert mgr.read_memory(sym["data"], 8) == (0 if jump else 7).to_bytes(8, "little")


MEND_S = r"""
    .text
    .global _start, load, done, good
_start:
    ldr     x1, =0x7ff00000            // past the end of RAM: the load faults
    mov     x5, #0
load:
    ldr     x2, [x1]
    add     x5, x5, #1
done:
    b       done
    .balign 8
good:
    .quad   42
"""


def test_reverse_cont_stops_at_a_fault_the_debugger_mended_in_place(tmp_path):
    """A data abort the debugger mends without moving the PC (x1 pointed at RAM): the run
    went on through the same instruction. reverse_cont stops at the abort, x1 as it was, and
    the run forward from there gives the mend and loads 42."""
    m, mgr, sym = _load(tmp_path, "mend", MEND_S)
    mgr.start_recording(interval=1000)
    ev = mgr.cont()
    assert (ev.kind, ev.signal, ev.pc, m.vcpu.icount) == (StopKind.SIGNAL, signal.SIGSEGV, sym["load"], 2)
    mgr.write_register("x1", sym["good"])
    mgr.step()
    mgr.step()
    assert (m.vcpu.pc, mgr.read_register("x2"), mgr.read_register("x5")) == (sym["done"], 42, 1)
    ev = mgr.reverse_cont()
    assert _where(m, ev) == (StopKind.SIGNAL, sym["load"], None, sym["load"], 2)
    assert (ev.signal, mgr.read_register("x1"), mgr.read_register("x2")) == (signal.SIGSEGV, 0x7FF0_0000, 0)
    assert _where(m, mgr.step()) == (StopKind.STEP, sym["load"] + 4, None, sym["load"] + 4, 3)
    assert mgr.read_register("x2") == 42


def test_a_ctrl_c_in_reverse_conts_replay_stops_at_the_last_hit_found(tmp_path):
    """Two breakpoint hits in the replayed interval; a Ctrl-C (interrupt()) arrives as the
    replay runs on from the first: reverse_cont stops at the first, the last one it found."""
    m, mgr, sym = _past_the_fault(tmp_path)
    mgr.add_breakpoint(sym["mark"])
    mgr.add_breakpoint(sym["mark2"])
    runs = _count_runs(m, interrupt_at=(3, mgr))  # the first hit (1), its step-over (2), then on (3)
    ev = mgr.reverse_cont()
    assert _where(m, ev) == (StopKind.SWBREAK, sym["mark"], None, sym["mark"], 1)
    assert (mgr.read_register("x5"), runs[0]) == (0, 4)  # and the seek back to the first: 4


# ---------------------------------------------------------------------------------------------
# reverse_cont to watched stores

WATCH_S = r"""
    .text
    .global _start, loop, store, done
_start:
    mov     x0, #0
    ldr     x1, =0x40100000
    mov     x3, #4
loop:
    add     x0, x0, #1
store:
    str     x0, [x1]
    cmp     x0, x3
    b.ne    loop
done:
    b       done
"""
WATCHED = 0x40100000


def _watched_run(tmp_path, condition=None):
    m, mgr, sym = _load(tmp_path, "watch", WATCH_S)
    mgr.start_recording(interval=1000)
    mgr.add_breakpoint(sym["done"])
    ev = mgr.cont()
    assert (ev.pc, m.vcpu.icount) == (sym["done"], 19)
    mgr.add_watchpoint(WATCHED, 8, WatchKind.WRITE, condition=condition)
    return m, mgr, sym


def test_reverse_cont_passes_the_watched_stores_whose_condition_is_false(tmp_path):
    """Four stores to the watched word; the condition holds at the second only (x0 == 2):
    reverse_cont stops there, before it (the old value in memory)."""
    m, mgr, sym = _watched_run(tmp_path, condition=lambda view: view.read_register("x0") == 2)
    ev = mgr.reverse_cont()
    assert (ev.kind, ev.pc, ev.watch_addr, m.vcpu.pc, m.vcpu.icount) == (StopKind.WATCH, sym["store"], WATCHED, sym["store"], 8)
    assert (mgr.read_register("x0"), mgr.read_memory(WATCHED, 8)) == (2, (1).to_bytes(8, "little"))


def test_reverse_cont_to_the_last_watched_store_steps_each_store_once(tmp_path):
    """Four stores in the replayed interval: each stops the replay once and is stepped over once
    (every watch out of the way), then the seek back to the last: 4 stops + 4 step-overs + the
    run to the end + the seek."""
    m, mgr, sym = _watched_run(tmp_path)
    runs = _count_runs(m)
    ev = mgr.reverse_cont()
    assert (ev.kind, ev.pc, ev.watch_addr, m.vcpu.pc, m.vcpu.icount) == (StopKind.WATCH, sym["store"], WATCHED, sym["store"], 16)
    assert (mgr.read_register("x0"), mgr.read_memory(WATCHED, 8), runs[0]) == (4, (3).to_bytes(8, "little"), 10)


def test_reverse_cont_to_a_breakpoint_on_a_watched_store(tmp_path):
    """A breakpoint on the store and a watch on what it stores to: each time round, the replay
    stops at the breakpoint, then its step-over at the watch (a second stop inside the step),
    which is stepped over in turn. The newest of them is the watch at the last store."""
    m, mgr, sym = _watched_run(tmp_path)
    mgr.add_breakpoint(sym["store"])
    runs = _count_runs(m)
    ev = mgr.reverse_cont()
    assert (ev.kind, ev.pc, ev.watch_addr, m.vcpu.pc, m.vcpu.icount) == (StopKind.WATCH, sym["store"], WATCHED, sym["store"], 16)
    assert (mgr.read_register("x0"), mgr.read_memory(WATCHED, 8), runs[0]) == (4, (3).to_bytes(8, "little"), 14)


# Mutants of reverse_cont and _replay_collecting left standing (run C of 2026-12-02 night at
# 40a966e, mutmut 3.8 names; bench/README.md "debug/manager.py: what the whole run left"):
# - reverse_cont 35 (seek back only if the step at a vector hit entered the exception): that
#   step takes again the exception the hit came after (the replay is deterministic), and a
#   seek to where the machine is changes nothing.
# - reverse_cont 42 (the hit reported at its own PC, not the machine's): they differ only where
#   that step would not enter the exception.
# - _replay_collecting 59 (a hit found after the writes positioned as before them): found so
#   only where no writes were held at its count, so there are none to hold back.
# - _replay_collecting 76 (`h.now <= until` for a stop inside a step-over): such a stop retires
#   nothing, so it is at the hit's own count, before `until`.
# - _replay_collecting 81 (a step over every stop inside a step-over, faults too): a step-over
#   faults only where the recorded run stopped for that fault, and there the debugger's writes
#   are held and go first.
# And of _stop_before_retiring (run D at b823c38): 17-20, 23, 24, 26 change only which vCPU's
# stop the probe takes; with one vCPU every stop is the writer's. With several no test makes
# another vCPU stop at that count (the one that stopped runs on first).
