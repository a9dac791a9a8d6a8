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
"""

from __future__ import annotations

import time

from guestdbg.backends.unicorn_arm64 import COUNTER_FREQUENCY_HZ, NS_PER_INSN, Arm64Vcpu

CLOCK_MODES = ("virtual", "host")


class VirtualClock:
    """Time on the board, read from the vCPU's retired-instruction count."""

    def __init__(self, vcpu: Arm64Vcpu, mode: str = "virtual") -> None:
        if mode not in CLOCK_MODES:
            raise ValueError(f"clock must be one of {', '.join(CLOCK_MODES)}, got {mode!r}")
        self.vcpu = vcpu
        self.mode = mode
        vcpu.set_counter_source(mode)

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
        if self.mode == "host":
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
        return {"icount": self.icount, "counter_offset": self.vcpu.counter_offset}

    def restore(self, state: dict) -> None:
        self.vcpu.set_icount(int(state["icount"]))
        self.vcpu.counter_offset = int(state.get("counter_offset", 0))
