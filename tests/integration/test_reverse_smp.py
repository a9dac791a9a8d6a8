"""Reverse execution with several vCPUs (issue 12): the recorded schedule is replayed exactly.

The guest is guests/smp (spinlocks with LDAXR/STLXR and WFE, SGIs, an SPI, PSCI CPU_ON and
CPU_OFF): how the vCPUs interleave decides who takes the lock when, so a replay that ended one
turn a block early or late would show in memory and registers. The reference is the recorded
run itself: its fingerprints (every vCPU's ONE_REG list, the device state with the scheduler's,
the guest's memory as the guest has it, the machine time) at each breakpoint stop, compared
with what seeks and reverse execution give later, in random order.
"""

from __future__ import annotations

import hashlib
import json
import random

import pytest

from guestdbg.board.virt import RAM_BASE, VirtConfig, VirtMachine
from guestdbg.debug.manager import GuestDebugManager, StopKind
from tests.helpers.support import symbols

IMAGE_SPAN = 4 << 20


@pytest.fixture(scope="module")
def smp_elf(guest_dir):
    return guest_dir / "smp.elf"


def recorded(elf, n: int) -> tuple[VirtMachine, GuestDebugManager, dict]:
    m = VirtMachine(VirtConfig(smp=n), console=lambda b: None)
    m.load_elf(elf)
    mgr = GuestDebugManager(m)
    syms = symbols(str(elf))
    mgr.start_recording(interval=200_000)
    return m, mgr, syms


def fingerprint(m: VirtMachine, mgr: GuestDebugManager) -> tuple:
    regs = [tuple(v.get_one_reg(r) for r in v.get_reg_list()) for v in m.vcpus]
    return (m.machine_now, [v.icount for v in m.vcpus], hashlib.sha256(repr(regs).encode()).hexdigest(),
            json.dumps(m.device_state(), sort_keys=True),
            hashlib.sha256(mgr.read_memory(RAM_BASE, IMAGE_SPAN, physical=True)).hexdigest())


@pytest.mark.parametrize("n", [2, 4])
def test_seeks_and_reverse_continue_replay_the_recorded_schedule(smp_elf, n):
    m, mgr, syms = recorded(smp_elf, n)
    mgr.add_breakpoint(syms["spin_lock"])
    hits = []
    for _ in range(24):
        event = mgr.cont()
        assert event.kind is StopKind.SWBREAK and event.pc == syms["spin_lock"], event
        hits.append((m.machine_now, event.vcpu_id, fingerprint(m, mgr)))
    assert {who for _, who, _ in hits} == set(range(n))  # every vCPU took the lock
    mgr.remove_breakpoint(syms["spin_lock"])
    assert mgr.cont().kind is StopKind.EXITED
    end = fingerprint(m, mgr)
    status = mgr.record_status()
    assert status["end"] == m.machine_now and status["checkpoints"] >= 4, status

    rng = random.Random(n)
    for when, _, expected in rng.sample(hits, len(hits)):
        mgr.seek_to(when)
        assert fingerprint(m, mgr) == expected
    # A point reached from a checkpoint after a restore, and by replaying on from the start.
    for point in sorted(rng.sample(range(status["begin"] + 1, status["end"]), 6)):
        mgr.seek_to(point)
        first = fingerprint(m, mgr)
        mgr.seek_to(status["begin"])
        mgr.seek_to(point)
        assert fingerprint(m, mgr) == first and m.machine_now == point
    mgr.seek_to(status["end"])
    assert fingerprint(m, mgr) == end

    # reverse-continue from just after the last recorded hit visits the hits newest first, each
    # on its vCPU (the breakpoint was there all along, so no other hit lies between them).
    mgr.seek_to(hits[-1][0] + 1)
    mgr.add_breakpoint(syms["spin_lock"])
    for when, who, expected in reversed(hits[-6:]):
        event = mgr.reverse_cont()
        assert (event.kind, event.vcpu_id, m.machine_now) == (StopKind.SWBREAK, who, when)
        assert fingerprint(m, mgr) == expected


@pytest.mark.parametrize("where", ["uart_put_dec", "spin_lock"])
def test_reverse_steps_retrace_forward_steps_of_each_vcpu(smp_elf, where):
    """`bs` goes back one instruction of the vCPU it is for, to the state its forward step
    stopped at (the other vCPUs as they were then); forward steps in the past replay. From
    uart_put_dec (each vCPU prints its report: plain code and UART stores), and from
    spin_lock (SEVL, WFE, LDAXR/STLXR: the steps set and consume the event register and may
    leave the vCPU waiting, as the recorded run did)."""
    m, mgr, syms = recorded(smp_elf, 3)
    mgr.add_breakpoint(syms[where])
    stops = []
    while len({who for _, who in stops}) < 3:
        event = mgr.cont()
        assert event.kind is StopKind.SWBREAK, event
        stops.append((m.machine_now, event.vcpu_id))
    mgr.remove_breakpoint(syms[where])
    assert mgr.cont().kind is StopKind.EXITED
    first_of_each = {who: when for when, who in reversed(stops)}
    for who, when in sorted(first_of_each.items()):
        mgr.seek_to(when)
        trail = []
        for _ in range(6):
            trail.append((m.vcpus[who].icount, fingerprint(m, mgr)))
            assert mgr.step(who).kind is StopKind.STEP
        for icount, expected in reversed(trail):
            event = mgr.reverse_step(who)
            assert event.kind is StopKind.STEP and event.vcpu_id == who
            assert m.vcpus[who].icount == icount
            assert fingerprint(m, mgr) == expected


def test_reverse_step_at_the_start_of_a_vcpu_history(smp_elf):
    """A vCPU that has not run since the history began has nothing to step back over."""
    m, mgr, syms = recorded(smp_elf, 2)
    event = mgr.reverse_step(1)
    assert event.history_edge == "begin"
    mgr.add_breakpoint(syms["secondary_main"])
    assert mgr.cont().vcpu_id == 1
    # Back over vCPU 1's instructions, one at a time, to its first in the history.
    count = m.vcpus[1].icount
    for k in range(count - 1, -1, -1):
        assert mgr.reverse_step(1).history_edge is None
        assert m.vcpus[1].icount == k
    assert mgr.reverse_step(1).history_edge == "begin"


@pytest.mark.parametrize("breakpoints_in", ["recording", "replay"])
def test_a_replay_cut_into_other_blocks_keeps_the_recorded_schedule(smp_elf, breakpoints_in):
    """Breakpoints in the middle of translation blocks (and their step-overs) cut the code into
    other blocks, in the recorded run or in the replay. A turn that ended by the quantum ended
    at a block boundary, so the replay ends it where the recording did, exactly: running
    forward through the past, with the breakpoints or without them, reaches the recorded end bit
    for bit. (Short turns, so that many turns end in the code the breakpoints cut.)"""
    m, mgr, syms = recorded(smp_elf, 4)
    m.quantum = 3_000
    cuts = (syms["spin_lock"] + 4,        # SEVL: a block runs from spin_lock through WFE
            syms["spin_lock_retry"] + 8,  # STLXR, inside the LDAXR/STLXR loop
            syms["atomic_inc"] + 4)

    def run_to_the_end() -> int:
        hits = 0
        while (event := mgr.cont()).kind is StopKind.SWBREAK:
            hits += 1
        assert event.kind is StopKind.EXITED
        return hits

    if breakpoints_in == "recording":
        for va in cuts:
            mgr.add_breakpoint(va)
    assert run_to_the_end() > (1000 if breakpoints_in == "recording" else -1)
    end = fingerprint(m, mgr)
    mgr.seek_to(mgr.record_status()["begin"])
    for va in cuts:
        if breakpoints_in == "recording":
            mgr.remove_breakpoint(va)
        else:
            mgr.add_breakpoint(va)
    assert run_to_the_end() > (1000 if breakpoints_in == "replay" else -1)  # the end, replayed
    assert fingerprint(m, mgr) == end


class _Log:
    """A ScheduleLog that forces the turn ends it is given and notes every stretch run."""

    def __init__(self, forced: dict[tuple[int, int], int]):
        self.forced, self.ended, self.runs = forced, [], []

    def forced_turn_end(self, vcpu_id, start):
        return self.forced.get((vcpu_id, start))

    def turn_ended(self, vcpu_id, start, end):
        self.ended.append((vcpu_id, start, end))

    def ran(self, vcpu_id, time, start, end):
        self.runs.append((vcpu_id, time, start, end))


def test_the_scheduler_ends_a_logged_turn_exactly_and_stops_at_machine_times(smp_elf):
    """What a replay relies on: a turn the log names ends at its icount exactly, even inside a
    block (a quantum's own end is a block boundary at or before it); `time_limit` stops at a
    machine time exactly, `soft_time_limit` at or before it; every instruction is in `ran`."""
    from guestdbg import kvm
    free = VirtMachine(VirtConfig(smp=2), console=lambda b: None)
    free.load_elf(smp_elf)
    free.quantum = 3_000
    free.schedule_log = log = _Log({})
    while free.machine_now < 150_000:
        free.run_until(time_limit=150_000)
    natural = [e for e in log.ended if e[2] - e[1] < 3_000]
    assert natural, "some turn ends short of the quantum (a block boundary)"
    vcpu_id, start, end = natural[0]
    forced = VirtMachine(VirtConfig(smp=2), console=lambda b: None)
    forced.load_elf(smp_elf)
    forced.quantum = 3_000
    forced.schedule_log = flog = _Log({(vcpu_id, start): end - 1})  # inside the block before it
    run = forced.run_until(time_limit=150_000)
    assert isinstance(run, kvm.KvmRun) and run.exit_reason == kvm.EXIT_ICOUNT_LIMIT
    assert forced.machine_now == 150_000
    mine = [r for r in flog.runs if r[0] == vcpu_id]
    assert any(r[3] == end - 1 for r in mine) and not any(r[3] == end for r in mine), mine[:4]
    assert not any(e[:2] == (vcpu_id, start) for e in flog.ended)  # a forced end is not logged again
    assert sum(r[3] - r[2] for r in flog.runs) <= forced.machine_now
    run = forced.run_until(soft_time_limit=200_000)
    assert run.exit_reason == kvm.EXIT_ICOUNT_LIMIT and 190_000 < forced.machine_now <= 200_000


def test_a_recorded_step_into_a_wfe_wait_replays_as_the_step(smp_elf):
    """A step over a WFE that waits (the lock is held elsewhere) leaves the vCPU waiting, as a
    run through it would: a replay, which runs through the WFE rather than stepping it, lands
    on the state the step left, and the rest of the recording replays exactly."""
    m, mgr, syms = recorded(smp_elf, 2)
    wfe = syms["spin_lock_wait"]
    mgr.add_breakpoint(wfe)
    while True:
        e = mgr.cont()
        assert e.kind is StopKind.SWBREAK
        if not m.vcpus[e.vcpu_id].event_register:
            break
    mgr.remove_breakpoint(wfe)
    assert mgr.step(e.vcpu_id).kind is StopKind.STEP
    after_step = (m.machine_now, fingerprint(m, mgr))
    assert m.smp_state()["vcpus"][e.vcpu_id]["wfe"] is not None
    assert mgr.cont().kind is StopKind.EXITED
    end = fingerprint(m, mgr)
    mgr.seek_to(after_step[0])
    assert fingerprint(m, mgr) == after_step[1]
    mgr.seek_to(mgr.record_status()["begin"])
    assert mgr.cont().kind is StopKind.EXITED
    assert fingerprint(m, mgr) == end


def test_when_the_history_start_moves_the_schedule_before_it_goes(smp_elf):
    """--record-mem too small for the whole run: the oldest checkpoints go, and with them the
    schedule's entries from before the new start (turns that ended by the quantum, stretches
    each vCPU ran). What is left still replays: seeks land on a straight run's state."""
    probe = GuestDebugManager(VirtMachine(VirtConfig(smp=2), console=lambda b: None))
    probe.start_recording(interval=100_000)
    base = probe.record_status()["memory"]
    m = VirtMachine(VirtConfig(smp=2), console=lambda b: None)
    m.load_elf(smp_elf)
    mgr = GuestDebugManager(m)
    mgr.start_recording(interval=100_000, mem_limit=base + (8 << 10))
    assert mgr.cont().kind is StopKind.EXITED
    status = mgr.record_status()
    assert status["dropped_start"] > 0 and status["begin"] > 0, status
    h = mgr._history
    assert h.turn_ends and all(end > h.segments[cpu][0][1] for (cpu, _), end in h.turn_ends.items())
    assert len(h.turn_ends) < status["end"] // 100_000  # one per quantum of the whole run, unpruned
    rng = random.Random(9)
    for _ in range(4):  # (a seek's inserted checkpoints may move the start on again)
        status = mgr.record_status()
        t = rng.randrange(status["begin"], status["end"])
        straight = VirtMachine(VirtConfig(smp=2), console=lambda b: None)
        straight.load_elf(smp_elf)
        while straight.machine_now < t:
            straight.run_until(time_limit=t)
        mgr.seek_to(t)
        assert fingerprint(m, mgr) == fingerprint(straight, GuestDebugManager(straight)), t
