"""The board's clock: time as the guest sees it.

By default time is virtual and deterministic, as with QEMU's `-icount shift=0`: it advances only
with the instructions the vCPU retires, at NS_PER_INSN nanoseconds each, so two runs of the
same guest with the same inputs see the same times, and a debugger stop (or a slow host) does
not move it. The generic timer's counter (CNTVCT_EL0, CNTPCT_EL0) ticks at 62.5 MHz, QEMU
virt's CNTFRQ_EL0: one tick per 16 instructions. The vCPU's native block hook keeps the
instruction count (Arm64Vcpu.icount) and answers the counter reads itself, without Python.

An idle guest (WFI with a timer armed) skips ahead: the vCPU adds the ticks to the next
deadline to its counter offset, so the counter reads icount / 16 + offset, time jumps but
stays monotonic and deterministic, and the offset travels in snapshots with icount.

`mode="host"` (`guestdbg run --clock host`) is for people who want wall-clock time in the
guest: the counter then reads the host's CLOCK_MONOTONIC in 16 ns ticks, which keeps
running while the guest is stopped. The instruction count is kept in both modes.

Recording a run for reverse execution (debug/history.py) needs what the guest computes to
repeat in a replay, and the host's clock does not. So while a history is kept, the host clock
is *paced* (`record_host_time`): the counter runs as the virtual clock does, and between
slices, wherever it has fallen 1 ms or more behind the host's time (the guest retires fewer
than one instruction per nanosecond; the debugger stops it) or host time has passed a timer's
deadline, it jumps to the host's time. Each
jump, and each WFI wait's end, is a new counter offset at an exact instruction count: the
recorder logs it, and a replay applies it there instead of looking at the host. The guest sees
the host's time within about a millisecond, never ahead of it, and timers fire when the
counter it reads reaches them. QEMU's record/replay does the like: the vCPU's time is its
instruction count (-icount), and the host clock reads it needs are logged.
"""

from __future__ import annotations

import time
from typing import Callable

from guestdbg.backends.unicorn_arm64 import COUNTER_FREQUENCY_HZ, NS_PER_INSN, Arm64Vcpu

CLOCK_MODES = ("virtual", "host")


class VirtualClock:
    """Time on the board, read from the vCPU's retired-instruction count."""

    def __init__(self, vcpu: Arm64Vcpu, mode: str = "virtual") -> None:
        if mode not in CLOCK_MODES:
            raise ValueError(f"clock must be one of {', '.join(CLOCK_MODES)}, got {mode!r}")
        self.vcpu = vcpu
        self.mode = mode
        self.paced = False  # the host clock made replayable (record_host_time)
        vcpu.set_counter_source(mode)

    @property
    def replayable(self) -> bool:
        """Does a replay see the same times as the run (the virtual clock, or a paced host clock)?"""
        return self.mode == "virtual" or self.paced

    def record_host_time(self, on_sync: Callable[[int], None] | None) -> None:
        """The host clock, paced while a recorder keeps the run's history (see the module
        docstring): `on_sync(counter_offset)` hears each new offset at the instruction count
        where it applies. None: the counter reads the host's clock again, from where it is."""
        if self.mode != "host":
            raise ValueError("only the host clock is paced (the virtual clock replays as it is)")
        self.vcpu.on_clock_sync = on_sync
        self.paced = on_sync is not None
        self.vcpu.set_counter_source("paced" if self.paced else "host")

    def replaying(self, replay: bool) -> None:
        """A paced clock in a replay takes its offsets from the log, not from the host."""
        self.vcpu.pace_live = not replay

    @property
    def icount(self) -> int:
        """Instructions retired since reset (or carried in a snapshot)."""
        return self.vcpu.icount

    @property
    def _offset_ns(self) -> int:
        """The counter offset (idle skips, TIMER_CNT writes) in nanoseconds, signed."""
        offset = self.vcpu.counter_offset
        if offset >= 1 << 63:
            offset -= 1 << 64
        return offset * 1_000_000_000 // COUNTER_FREQUENCY_HZ

    def now_ns(self) -> int:
        """The guest's time in nanoseconds (what the counter says, at full resolution)."""
        if self.mode == "host" and not self.paced:
            return time.monotonic_ns() + self._offset_ns
        return self.icount * NS_PER_INSN + self._offset_ns

    def counter(self) -> int:
        """What CNTVCT_EL0 reads now."""
        return self.vcpu.counter()

    def icount_at(self, ns: int) -> int:
        """The instruction count at which virtual time reaches `ns`: where to end a slice for
        an event due then (a device completion). While the guest idles in WFI no instructions
        retire: the vCPU skips only to its own timers' deadlines."""
        return -(-(ns - self._offset_ns) // NS_PER_INSN)

    def state(self) -> dict:
        state = {"icount": self.icount, "counter_offset": self.vcpu.counter_offset}
        if self.mode != "virtual":
            state["counter"] = self.counter()  # the reading: the offset means another thing paced
        return state

    def restore(self, state: dict) -> None:
        """The virtual clock: icount and offset, exactly. The host's clock (paced or not) goes
        on from the saved reading, as the counter of a VM restored on KVM (TIMER_CNT): its
        offset from the host's time differs between processes, and between paced and not."""
        self.vcpu.set_icount(int(state["icount"]))
        if self.mode != "virtual" and "counter" in state:
            self.vcpu.set_counter(int(state["counter"]))
        else:
            self.vcpu.counter_offset = int(state.get("counter_offset", 0))
