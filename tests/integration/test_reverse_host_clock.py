"""Reverse execution on the host's clock (`--clock host --record`, issue 12): while a history is
kept the counter is paced (board/clock.py): the virtual clock, caught up with the host's time
between slices, each catch-up and each WFI wait's end logged as a counter offset. There is no
straight run to compare with (the host's time differs every run), so the reference is the
recorded run itself: the fingerprint of each point where it stopped, taken then. A replay that
missed a logged offset reads other counter values, takes its timer interrupts elsewhere and
differs in its registers, its timer state and the counter values it stores.

The guest (guests/timer) reads the counter, polls a timer, waits in WFI for both timers (host
time passes) and takes a timer interrupt; it prints the counter values it saw.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from guestdbg.arm import kvm_regs as kr
from guestdbg.board.virt import VirtConfig, VirtMachine
from guestdbg.debug.manager import GuestDebugManager, StopKind
from tests.helpers.support import symbols
from tests.integration.test_reverse import fingerprint

TICKS_PER_S = 62_500_000


@pytest.fixture(scope="module")
def timer_elf(guest_dir):
    return guest_dir / "timer.elf"


def host_machine(elf, out: list[bytes], wfi_seconds: float):
    m = VirtMachine(VirtConfig(), console=out.append, clock_mode="host")
    m.load_elf(elf)
    syms = symbols(str(elf))
    m.vm.write_phys(syms["timer_wfi_ticks"], int(TICKS_PER_S * wfi_seconds).to_bytes(8, "little"))
    return m, syms


KVM_REG_ARM_TIMER_CNT = kr.ARM64_SYS_REG(3, 3, 14, 3, 2)  # Linux's name: CNTVCT_EL0's encoding


def timer_counter(m) -> int:
    return m.vcpu.get_one_reg(KVM_REG_ARM_TIMER_CNT)


def clock_events(mgr: GuestDebugManager) -> list:
    h = mgr._history
    assert h is not None
    return [e for e in h.events if e.kind == "clock"]


def record_with_stops(elf, syms, out, *, wfi_seconds: float, interrupt_after: float | None = None):
    """Record the guest on the host's clock to its end: stops at every timer interrupt (the
    exception handler) with two steps after each, and optionally a Ctrl-C during its first
    WFI wait. Returns the machine, the manager and {time: fingerprint} of each point where
    the recorded run first arrived."""
    m, _ = host_machine(elf, out, wfi_seconds)
    mgr = GuestDebugManager(m)
    mgr.start_recording(interval=5000)
    assert m.clock.paced
    seen: dict[int, tuple] = {}

    def note() -> None:
        seen.setdefault(mgr.record_status()["now"], fingerprint(m))

    mgr.add_breakpoint(syms["exception_handler"])
    if interrupt_after is not None:
        timer = threading.Timer(interrupt_after, mgr.interrupt)
        timer.start()
        event = mgr.cont()
        timer.join()
        assert event.kind is StopKind.SIGNAL, event
        note()
    while (event := mgr.cont()).kind is StopKind.SWBREAK:
        note()
        for _ in range(2):
            mgr.step()
            note()
    # Not its exit status: its checks assume two adjacent instructions run within 1.6 ms of
    # host time (a TVAL written then read back), which a busy host does not promise.
    assert event.kind is StopKind.EXITED, (event, b"".join(out))
    note()
    return m, mgr, seen


def test_a_recording_on_the_host_clock_replays_as_recorded(timer_elf):
    out: list[bytes] = []
    syms = symbols(str(timer_elf))
    started = time.monotonic()
    m, mgr, seen = record_with_stops(timer_elf, syms, out, wfi_seconds=0.2)
    assert time.monotonic() - started >= 0.2  # the guest's WFI waited host time
    shown = b"".join(out)
    assert b"irq 27 taken" in shown and len(seen) >= 4, shown
    clock = clock_events(mgr)
    assert clock, "the host clock never caught up: nothing here tests the log"
    # The guest saw the host's time: its WFI of 0.2 s, woken by the timer, lasted >= 0.2 s of counter.
    wfi = next(line for line in shown.decode().splitlines() if "wfi from" in line).split()
    assert int(wfi[-1]) - int(wfi[-4]) >= TICKS_PER_S // 5

    points = list(seen.items())
    random.Random(12).shuffle(points)
    for t, recorded_state in points:
        mgr.seek_to(t)
        assert fingerprint(m) == recorded_state, f"the replay differs at instruction {t}"
    assert b"".join(out) == shown  # replayed output is not shown again

    # Forward through the past: to the end as recorded, and bc back through every hit.
    first = min(seen)
    mgr.seek_to(first)
    mgr.remove_breakpoint(syms["exception_handler"])
    assert mgr.cont().kind is StopKind.EXITED
    assert fingerprint(m) == seen[max(seen)]
    mgr.add_breakpoint(syms["exception_handler"])
    hits = []
    while (event := mgr.reverse_cont()).history_edge is None:
        assert event.kind is StopKind.SWBREAK and event.pc == syms["exception_handler"]
        hits.append(m.vcpu.icount)
        assert fingerprint(m) == seen[m.vcpu.icount]
    assert hits and hits == sorted(hits, reverse=True)


def test_a_ctrl_c_during_a_wait_on_the_host_clock_replays(timer_elf):
    """The WFI sleep cut short by a kick (no offset logged for it; the next slice catches up):
    the replay takes the same path."""
    out: list[bytes] = []
    syms = symbols(str(timer_elf))
    m, mgr, seen = record_with_stops(timer_elf, syms, out, wfi_seconds=0.6, interrupt_after=0.25)
    for t, recorded_state in sorted(seen.items(), reverse=True):
        mgr.seek_to(t)
        assert fingerprint(m) == recorded_state, f"the replay differs at instruction {t}"


def test_without_the_logged_offsets_a_replay_differs(timer_elf, monkeypatch):
    """The control for the tests above: a replay that ignores the clock's log does not match."""
    out: list[bytes] = []
    syms = symbols(str(timer_elf))
    m, mgr, seen = record_with_stops(timer_elf, syms, out, wfi_seconds=0.2)
    apply_event = GuestDebugManager._apply_event
    monkeypatch.setattr(GuestDebugManager, "_apply_event",
                        lambda self, kind, data: None if kind == "clock" else apply_event(self, kind, data))
    differ = 0
    for t, recorded_state in sorted(seen.items()):
        mgr.seek_to(t)
        differ += fingerprint(m) != recorded_state
    assert differ


def test_the_counter_carries_on_as_recording_starts_and_stops(timer_elf):
    """Pacing the clock and letting it go never moves the counter back; the paced counter is
    never ahead of the host's time and catches up with it; after recording, it reads the
    host's clock again."""
    out: list[bytes] = []
    m, _ = host_machine(timer_elf, out, 0.2)
    mgr = GuestDebugManager(m)
    before, started = timer_counter(m), time.monotonic_ns()
    mgr.start_recording()
    paced = timer_counter(m)
    assert before <= paced < before + TICKS_PER_S // 100
    time.sleep(0.05)
    assert timer_counter(m) == paced  # paced: still while nothing runs
    mgr.step()  # the slice starts by catching up with the host's 50 ms
    caught_up = timer_counter(m)
    assert caught_up >= paced + TICKS_PER_S // 20
    assert caught_up <= paced + ((time.monotonic_ns() - started) >> 4)  # never ahead of the host
    mgr.stop_recording()
    assert not m.clock.paced and m.clock.replayable is False
    after = timer_counter(m)
    assert after >= caught_up
    time.sleep(0.05)
    assert timer_counter(m) >= after + TICKS_PER_S // 20  # the host's clock again


def test_a_snapshot_on_the_host_clock_goes_on_from_its_reading(timer_elf, tmp_path):
    """A snapshot saved while the host clock is paced (recording), loaded into a machine on
    the host clock that is not recording, and the other way round: the counter goes on from
    the saved reading (the paced offset and the host offset mean different things)."""
    from guestdbg import snapshot
    out: list[bytes] = []
    m, _ = host_machine(timer_elf, out, 0.2)
    mgr = GuestDebugManager(m)
    mgr.start_recording()
    for _ in range(50):
        mgr.step()
    saved = timer_counter(m)
    mgr.snapshot(tmp_path / "paced")
    time.sleep(0.05)
    plain, _ = host_machine(timer_elf, [], 0.2)
    snapshot.restore_into(plain, (tmp_path / "paced").read_bytes())
    assert saved <= timer_counter(plain) < saved + TICKS_PER_S // 50  # not the paced offset read as a host one
    before = timer_counter(plain)
    snapshot.save(plain, tmp_path / "plain")
    after = timer_counter(plain)
    mgr.restore(tmp_path / "plain")  # into the recording (paced) machine: a new history
    assert before <= timer_counter(m) <= after  # paced: still until it runs
    assert m.clock.paced and mgr.record_status()["begin"] == m.vcpu.icount
