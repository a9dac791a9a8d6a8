"""The EL1 generic timers (virtual and physical), as vCPU state: KVM keeps them in the vCPU too.

Unicorn 2.1.4 compiles QEMU's timer logic out (CNTV_CTL/CVAL writes are dropped, ISTATUS never
sets), so CNTV_{CTL,CVAL,TVAL}_EL0 and CNTP_{CTL,CVAL,TVAL}_EL0 are sent to the VMM by the
system-register filter and served here; nothing else about them is hot. Semantics (Arm ARM,
D11 "The Generic Timer"):

- CTL: ENABLE (bit 0), IMASK (bit 1), ISTATUS (bit 2, read-only: the condition count >= CVAL,
  reported 0 while the timer is disabled, as QEMU does).
- CVAL: 64-bit compare value. TVAL reads (CVAL - count) as a signed 32-bit value; a write sets
  CVAL = count + sign-extended TVAL.
- Both timers compare against the one counter (CNTVOFF is 0: CNTVCT == CNTPCT).
- The output level is ENABLE && ISTATUS && !IMASK.

The counter value is the caller's (the vCPU's run loop knows the instruction count, the clock
mode and the counter offset); this module is plain state and arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from guestdbg.kvm import KVM_ARM_DEV_EL1_PTIMER, KVM_ARM_DEV_EL1_VTIMER

MASK64 = (1 << 64) - 1

CTL_ENABLE, CTL_IMASK, CTL_ISTATUS = 1 << 0, 1 << 1, 1 << 2

VTIMER, PTIMER = 0, 1

# (op0, op1, CRn, CRm, op2) of the registers the filter sends here -> (timer, field)
CNTP_TVAL_EL0, CNTP_CTL_EL0, CNTP_CVAL_EL0 = (3, 3, 14, 2, 0), (3, 3, 14, 2, 1), (3, 3, 14, 2, 2)
CNTV_TVAL_EL0, CNTV_CTL_EL0, CNTV_CVAL_EL0 = (3, 3, 14, 3, 0), (3, 3, 14, 3, 1), (3, 3, 14, 3, 2)
CNTKCTL_EL1 = (3, 0, 14, 1, 0)  # Unicorn keeps it as a plain register
TIMER_REGS: dict[tuple[int, int, int, int, int], tuple[int, str]] = {
    CNTV_CTL_EL0: (VTIMER, "ctl"), CNTV_CVAL_EL0: (VTIMER, "cval"), CNTV_TVAL_EL0: (VTIMER, "tval"),
    CNTP_CTL_EL0: (PTIMER, "ctl"), CNTP_CVAL_EL0: (PTIMER, "cval"), CNTP_TVAL_EL0: (PTIMER, "tval"),
}

# kvm_run->s.regs.device_irq_level bit of each timer's output
LEVEL_BITS = (KVM_ARM_DEV_EL1_VTIMER, KVM_ARM_DEV_EL1_PTIMER)


@dataclass
class GenericTimer:
    """One EL1 timer: CTL's writable bits (ENABLE, IMASK) and CVAL."""

    ctl: int = 0
    cval: int = 0

    def istatus(self, count: int) -> bool:
        return bool(self.ctl & CTL_ENABLE) and count >= self.cval

    def read_ctl(self, count: int) -> int:
        return (self.ctl & (CTL_ENABLE | CTL_IMASK)) | (CTL_ISTATUS if self.istatus(count) else 0)

    def level(self, count: int) -> bool:
        return self.istatus(count) and not self.ctl & CTL_IMASK

    def deadline(self, count: int) -> int | None:
        """The counter value at which the output goes high, if it is low now and will rise."""
        if self.ctl & (CTL_ENABLE | CTL_IMASK) == CTL_ENABLE and count < self.cval:
            return self.cval
        return None


@dataclass
class GenericTimers:
    """The vCPU's two EL1 timers."""

    timers: list[GenericTimer] = field(default_factory=lambda: [GenericTimer(), GenericTimer()])

    @property
    def armed(self) -> bool:
        """Is either timer enabled? (If not, no level can be high and there is no deadline.)"""
        return any(t.ctl & CTL_ENABLE for t in self.timers)

    def irq_level(self, count: int) -> int:
        """The output levels as device_irq_level bits (KVM_ARM_DEV_EL1_VTIMER/PTIMER)."""
        bits = 0
        for timer, bit in zip(self.timers, LEVEL_BITS):
            if timer.level(count):
                bits |= bit
        return bits

    def next_deadline(self, count: int) -> int | None:
        """The earliest counter value at which an output goes high, or None."""
        deadlines = [d for t in self.timers if (d := t.deadline(count)) is not None]
        return min(deadlines) if deadlines else None

    def read(self, key: tuple[int, int, int, int, int], count: int) -> int:
        """MRS of CNT{V,P}_{CTL,CVAL,TVAL}_EL0."""
        n, what = TIMER_REGS[key]
        timer = self.timers[n]
        if what == "ctl":
            return timer.read_ctl(count)
        if what == "cval":
            return timer.cval
        return (timer.cval - count) & 0xFFFFFFFF  # TVAL: the low 32 bits, read as signed by the guest

    def write(self, key: tuple[int, int, int, int, int], value: int, count: int) -> None:
        """MSR of CNT{V,P}_{CTL,CVAL,TVAL}_EL0."""
        n, what = TIMER_REGS[key]
        timer = self.timers[n]
        if what == "ctl":
            timer.ctl = value & (CTL_ENABLE | CTL_IMASK)
        elif what == "cval":
            timer.cval = value & MASK64
        else:
            tval = value & 0xFFFFFFFF
            if tval & 0x80000000:
                tval -= 1 << 32
            timer.cval = (count + tval) & MASK64
