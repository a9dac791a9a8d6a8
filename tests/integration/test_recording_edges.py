"""Recording at its edges, pinned for mutation testing of debug/manager.py (_run_to,
_current_history, _host_clock, _recorder_state): a history kept across a detach, boards
without a clock or without `last_vcpu_id`, the recorder's own state in a checkpoint, the
console's output after recording stops, and the paced host clock of a detached guest.
Small guests assembled here; exact PCs, instruction counts and register values.

Mutants of _run_to left equivalent: `_live_run = h is not None or not _replay_run` (8) only
differs in a replay run or with no history, and _log_clock, its one reader, ignores no history
while a replay's paced clock (pace_live False: --clock host needs one vCPU) never calls
on_clock_sync; `clock.replaying(None)` (31) sets pace_live = not None, as False does. (Run
without _fault_exit in the exact path (26) is killed since reverse_cont's replay runs the
faulting instruction before the debugger's remedy: tests/integration/test_replay_edges.py.)"""

from __future__ import annotations

import time

from guestdbg import kvm
from guestdbg.board.virt import VirtConfig, VirtMachine
from guestdbg.debug.manager import GuestDebugManager, StopKind
from tests.helpers.mmu_guest import assemble
from tests.helpers.support import Without
from tests.integration.test_replay_edges import LOOP_S
from tests.integration.test_reverse_step_edges import _load
from tests.integration.test_console_record_edges import _exits, _Guest


def _steps(mgr, n: int) -> list[int]:
    """The PCs after each of `n` steps."""
    return [mgr.step().pc for _ in range(n)]


def _at(sym, count: int) -> int:
    """Where the loop guest is after `count` instructions from _start (straight-line up to `loop`)."""
    return sym["_start"] + 4 * count


# ---------------------------------------------------------------------------------------------
# a history kept across a detach starts again once, then records as before

def test_after_a_detach_the_history_starts_again_once_and_then_keeps_the_run(tmp_path):
    """Recording, two steps, a detach: the next step starts the history again there (what came
    before may not be replayable), once: the steps after it are kept, and reverse steps go
    back through them to the new start."""
    m, mgr, sym = _load(tmp_path, "loop", LOOP_S)
    mgr.start_recording(interval=1_000_000)
    assert _steps(mgr, 2) == [_at(sym, 1), _at(sym, 2)]
    mgr.detach()
    assert _steps(mgr, 3) == [_at(sym, 3), _at(sym, 4), _at(sym, 5)]
    status = mgr.record_status()
    assert (status["begin"], status["end"], m.vcpu.icount) == (2, 5, 5)
    ev = mgr.reverse_step()
    assert (ev.kind, ev.pc, m.vcpu.icount) == (StopKind.STEP, _at(sym, 4), 4)
    ev = mgr.reverse_step()
    assert (ev.kind, ev.pc, m.vcpu.icount) == (StopKind.STEP, _at(sym, 3), 3)
    ev = mgr.reverse_step()
    assert (ev.pc, m.vcpu.icount, ev.history_edge) == (_at(sym, 2), 2, None)
    assert mgr.record_status()["begin"] == 2


# ---------------------------------------------------------------------------------------------
# boards the manager asks with getattr

def test_recording_on_a_board_without_a_clock(tmp_path):
    """A board with no `clock` (no host clock to pace): it records, steps and steps back."""
    elf_m, _, sym = _load(tmp_path, "loop", LOOP_S)
    mgr = GuestDebugManager(Without(elf_m, "clock"))
    mgr.start_recording(interval=1_000_000)
    assert _steps(mgr, 3) == [_at(sym, 1), _at(sym, 2), _at(sym, 3)]
    ev = mgr.reverse_step()
    assert (ev.kind, ev.pc, elf_m.vcpu.icount) == (StopKind.STEP, _at(sym, 2), 2)
    mgr.stop_recording()
    assert mgr.record_status() is None


def test_recording_on_a_board_whose_clock_has_no_mode(tmp_path):
    """A board whose clock says no `mode` (not the host's): recorded all the same."""
    m, _, sym = _load(tmp_path, "loop", LOOP_S)
    mgr = GuestDebugManager(Without(m, clock=Without(m.clock, "mode")))
    mgr.start_recording(interval=1_000_000)
    assert _steps(mgr, 2) == [_at(sym, 1), _at(sym, 2)]
    ev = mgr.reverse_step()
    assert (ev.pc, m.vcpu.icount) == (_at(sym, 1), 1)


def test_recording_one_vcpu_on_a_board_without_last_vcpu_id(tmp_path):
    """One vCPU on a board that keeps no `last_vcpu_id` (it has only vCPU 0): recorded runs
    do not ask for it."""
    m, _, sym = _load(tmp_path, "loop", LOOP_S)
    mgr = GuestDebugManager(Without(m, "last_vcpu_id"))
    mgr.start_recording(interval=1_000_000)
    assert _steps(mgr, 2) == [_at(sym, 1), _at(sym, 2)]
    mgr.add_breakpoint(sym["done"])
    ev = mgr.cont()
    assert (ev.kind, ev.pc, m.vcpu.icount) == (StopKind.SWBREAK, sym["done"], 18006)
    ev = mgr.reverse_step()
    assert (ev.pc, m.vcpu.icount, mgr.read_register("x0")) == (sym["loop"] + 8, 18005, 6000)


# ---------------------------------------------------------------------------------------------
# the recorder's own state travels in a checkpoint

def test_a_checkpoint_restores_the_vcpus_irq_due(tmp_path):
    """The history's first checkpoint holds where the vCPU's interrupt was due then (irq_due,
    not in ONE_REG); a seek back to it restores it, whatever it became since."""
    m, mgr, sym = _load(tmp_path, "loop", LOOP_S)
    m.vcpu.irq_due = 77
    mgr.start_recording(interval=1_000_000)
    assert _steps(mgr, 3) == [_at(sym, 1), _at(sym, 2), _at(sym, 3)]
    m.vcpu.irq_due = 0
    mgr.seek_to(0)
    assert (m.vcpu.pc, m.vcpu.icount, m.vcpu.irq_due) == (sym["_start"], 0, 77)


# ---------------------------------------------------------------------------------------------
# the console's output after recording stops

def test_the_guests_output_after_recording_stops_is_shown(tmp_path):
    """One recorded step (the console's output is wrapped: not shown again in a replay), then
    recording stops: the guest's output from the unrecorded run is shown."""
    g = _Guest(tmp_path)
    g.mgr.start_recording(interval=5000)
    g.mgr.step()
    g.mgr.stop_recording()
    _exits(g.mgr)
    assert g.shown() == b"!"


# ---------------------------------------------------------------------------------------------
# the paced host clock of a guest running on without the debugger

def test_a_detached_guests_paced_clock_catches_up_with_the_host(tmp_path):
    """`--clock host` while recording: the counter is paced. After a recorded step the
    debugger detaches and the guest runs on by the board alone (as `guestdbg run` does): the
    counter, fallen behind the host's time while the guest was stopped (more than the 1 ms
    slack), catches up at the board's first slice, as in a live run (not held as in a replay).
    The host's time only bounds the catch-up from below (a sleep lasts at least as asked)."""
    m = VirtMachine(VirtConfig(), console=lambda b: None, clock_mode="host")
    m.load_elf(assemble(tmp_path, "loop", LOOP_S))
    mgr = GuestDebugManager(m)
    mgr.start_recording(interval=1_000_000)
    mgr.step()
    mgr.detach()
    before = m.vcpu.counter_offset
    time.sleep(0.05)  # the host's time runs on: at least 50 ms (3,125,000 ticks at 62.5 MHz)
    run = m.run_until(icount_limit=m.vcpu.icount + 10)
    assert run.exit_reason == kvm.EXIT_ICOUNT_LIMIT
    # Caught up to within the slack: 40 ms leaves room for it (a held clock gains nothing).
    assert m.vcpu.counter_offset - before >= 2_500_000
