"""The recorded run's own stops, pinned for mutation testing of debug/manager.py
(`_run_recorded`, `start_recording`, `_runs_on`): checkpoints taken softly at block boundaries,
and the replay from them. Small guests assembled here (test_replay_edges.py); exact PCs,
instruction counts, register values and checkpoint times."""

from __future__ import annotations

import signal

from guestdbg.debug.manager import StopKind, WatchKind
from tests.integration.test_replay_edges import FAULT_S, IRQ_S, _count_runs, _times
from tests.integration.test_reverse_step_edges import _load


def _to_the_vector(tmp_path, name: str, interval: int | None):
    m, mgr, sym = _load(tmp_path, name, IRQ_S)
    if interval is not None:
        mgr.start_recording(interval=interval)
    mgr.add_breakpoint(sym["irq"])
    ev = mgr.cont()
    return m, mgr, sym, (ev.kind, ev.pc, m.vcpu.icount, mgr.read_register("x4"), mgr.read_register("x7"))


def test_a_checkpoint_due_inside_the_irq_raising_block_is_taken_at_its_start(tmp_path):
    """IRQ_S raises its interrupt in the block at raise_irq (instructions 16..20: the store, three
    adds, the branch), taken where that block ends. A checkpoint due at 17, inside it, is taken
    softly where the block starts (15), not at 17: a replay from it (a reverse_step back over
    the interrupt entry, a step forward) takes the interrupt where the recorded run did, after
    the three adds, as a run without recording does."""
    _, _, sym, live = _to_the_vector(tmp_path, "plain", None)
    assert live == (StopKind.SWBREAK, sym["irq"], 20, 3, 0)
    m, mgr, sym, recorded = _to_the_vector(tmp_path, "rec", 17)
    assert recorded == live
    assert _times(mgr) == [0, 15]
    ev = mgr.reverse_step()
    assert (ev.kind, ev.pc, m.vcpu.icount) == (StopKind.STEP, sym["interrupted"], 20)
    ev = mgr.step()
    assert (ev.kind, ev.pc, m.vcpu.icount, mgr.read_register("x4"), mgr.read_register("x7")) == (
        StopKind.STEP, sym["irq"], 20, 3, 0)


# Seven instructions in one translation block up to the hvc: no block boundary before 7.
OFF_S = r"""
    .text
    .global _start
_start:
    mov     x0, #0
    ldr     x1, =0x40100000
    str     x0, [x1]
    add     x2, x2, #1
    add     x2, x2, #1
    ldr     x0, =0x84000008            // PSCI SYSTEM_OFF
    hvc     #0
    b       .
"""


def test_a_checkpoint_interval_shorter_than_the_block_still_makes_progress(tmp_path):
    """A block longer than the checkpoint interval: the soft stop at its boundary at or before
    the interval's end is where the run already is (the recorded cont used to loop there)."""
    m, mgr, _ = _load(tmp_path, "off", OFF_S)
    mgr.start_recording(interval=3)
    run_to, calls = mgr._run_to, []

    def counted(*args, **kwargs):  # a livelock shows as runs without end: stop it, deterministically
        calls.append(args)
        if len(calls) > 200:
            raise RuntimeError("no progress")
        return run_to(*args, **kwargs)

    mgr._run_to = counted
    ev = mgr.cont()
    assert (ev.kind, ev.exit_status, m.vcpu.icount) == (StopKind.EXITED, 0, 7)


# Two byte stores to `data`, then the guest powers off.
STRB_S = r"""
    .text
    .global _start, data
_start:
    ldr     x1, =data
    mov     w0, #7
    strb    w0, [x1]
    strb    w0, [x1]
    ldr     x0, =0x84000008            // PSCI SYSTEM_OFF
    hvc     #0
    b       .
    .data
    .balign 16
data: .quad 0
"""


def test_a_byte_store_is_judged_by_the_watches_on_that_byte_only(tmp_path):
    """A watch on `data` whose condition is false and one on the next byte whose condition is
    true: the byte stores to `data` hit only the first, so the guest runs to its end unreported
    (the next byte's watch is not consulted for them)."""
    m, mgr, sym = _load(tmp_path, "strb", STRB_S)
    mgr.add_watchpoint(sym["data"], 1, WatchKind.WRITE, condition=lambda v: False)
    mgr.add_watchpoint(sym["data"] + 1, 1, WatchKind.WRITE, condition=lambda v: True)
    ev = mgr.cont()
    assert (ev.kind, ev.exit_status, m.vcpu.icount) == (StopKind.EXITED, 0, 6)



def test_an_access_stop_consults_a_read_watch_on_the_same_byte(tmp_path):
    """An awatch on `data` whose condition is false, then a rwatch there whose condition is true:
    a byte load from `data` is reported as the awatch's (ACCESS), and the rwatch it hit too says
    to stop: the first load stops."""
    loads = STRB_S.replace("strb    w0, [x1]\n    strb    w0, [x1]", "ldrb    w0, [x1]\n    ldrb    w0, [x1]")
    m, mgr, sym = _load(tmp_path, "ldrb", loads)
    mgr.add_watchpoint(sym["data"], 1, WatchKind.ACCESS, condition=lambda v: False)
    mgr.add_watchpoint(sym["data"], 1, WatchKind.READ, condition=lambda v: True)
    ev = mgr.cont()
    assert (ev.kind, ev.watch_kind, ev.watch_addr, m.vcpu.icount) == (
        StopKind.WATCH, WatchKind.ACCESS, sym["data"], 2)


# Equivalent mutants (no test can tell): _recorder_state mutants 7, 10, 13 (getattr's default
# for irq_due None / absent / 1): only a vCPU of the emulated back end can record (can_record:
# its VM alone has write_phys_pages), and its vCPU sets irq_due in __init__, so the default is
# never used.


SPIN_S = r"""
    .text
    .global _start
_start:
    add     x2, x2, #1
    b       _start
"""


def test_a_ctrl_c_before_a_recorded_continue_stops_it_before_any_instruction(tmp_path):
    """interrupt() just before cont() (a Ctrl-C racing the resume): the recorded run's first
    run returns at once, where it started, and that is the SIGINT stop; it is not taken for a
    soft stop that made no progress and run again (which would lose the Ctrl-C)."""
    m, mgr, _ = _load(tmp_path, "spin", SPIN_S)
    mgr.start_recording(interval=1000)
    runs = _count_runs(m, limit=21)  # a lost Ctrl-C: fail, not run for ever
    mgr.interrupt()
    ev = mgr.cont()
    assert (ev.kind, ev.signal, m.vcpu.icount, runs[0]) == (StopKind.SIGNAL, signal.SIGINT, 0, 1)


def test_a_breakpoint_patched_when_recording_starts_is_not_in_the_history(tmp_path):
    """A BRK-patched breakpoint (in_run_breakpoints off) set before recording starts, removed
    later: the history's first checkpoint holds the guest's instruction under the patch, so a
    seek back there restores that instruction, not the BRK, and the replay runs through."""
    m, mgr, sym = _load(tmp_path, "fault", FAULT_S)
    mgr.in_run_breakpoints = False
    mark2 = sym["mark2"]
    instruction = m.vm.read_phys(mark2, 4)
    mgr.add_breakpoint(mark2)
    assert m.vm.read_phys(mark2, 4) != instruction  # the BRK
    mgr.start_recording(interval=1000)
    assert mgr.cont().pc == mark2
    mgr.remove_breakpoint(mark2)
    ev = mgr.cont()
    assert (ev.kind, ev.pc, m.vcpu.icount) == (StopKind.SIGNAL, sym["fault"], 3)
    mgr.seek_to(0)
    assert m.vm.read_phys(mark2, 4) == instruction
    ev = mgr.cont()
    assert (ev.kind, ev.pc, ev.history_edge, m.vcpu.icount) == (StopKind.SIGNAL, sym["fault"], "end", 3)
