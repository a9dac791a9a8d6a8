"""The vCPU (KVM's vCPU file descriptor), assembled from its parts, and its run loop.

`Arm64Vcpu` stacks the layers of the other files (see the package docstring): each is a class
on the one below, so each file type-checks on its own and the hooks and the run loop pay no
delegation. This file adds construction and reset, and KVM_RUN: `run` goes round slices until
something needs the VMM; `_run_slice` runs one (core.py's `_execute`) and turns whatever a hook
recorded into an exit, an exception entered into the guest, or another slice.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from unicorn import UC_HOOK_INTR

from guestdbg import kvm
from guestdbg.backends.unicorn_arm64.arch import (
    HCR_EL2,
    HCR_EL2_RW,
    MPIDR_RES1,
    NO_LIMIT,
    PSTATE_DAIF,
    PSTATE_MODE_EL1H,
    SCR_EL3,
    SCR_EL3_NS,
    SCR_EL3_RW,
    VMPIDR_EL2,
)
from guestdbg.backends.unicorn_arm64.core import COUNTER_TICK_SHIFT, VcpuCore
from guestdbg.backends.unicorn_arm64.debughw import DebugHardware
from guestdbg.backends.unicorn_arm64.exceptions import ExceptionEntry, FatalGuestState
from guestdbg.backends.unicorn_arm64.firmware import FirmwareCalls
from guestdbg.backends.unicorn_arm64.mmio import MmioAccess
from guestdbg.backends.unicorn_arm64.one_reg import OneRegTable
from guestdbg.backends.unicorn_arm64.runctl import RunControl
from guestdbg.kvm import KVM_GUESTDBG_SINGLESTEP, KvmRun

if TYPE_CHECKING:
    from guestdbg.backends.unicorn_arm64.vm import Arm64Vm

# HCR_EL2.IMO (physical IRQs to EL2, which turns virtual IRQs on) and VI (a virtual IRQ is
# pending): how a hypervisor without a GIC virtual CPU interface gives EL1 an IRQ.
HCR_EL2_IMO, HCR_EL2_VI = 1 << 4, 1 << 7
PSTATE_I = 1 << 7


class Arm64Vcpu(OneRegTable, MmioAccess, DebugHardware, ExceptionEntry, FirmwareCalls, VcpuCore):
    """One AArch64 vCPU: run(), ONE_REG, KVM_SET_GUEST_DEBUG and KVM_SET_VCPU_EVENTS."""

    def __init__(self, vm: Arm64Vm, vcpu_id: int = 0):
        super().__init__(vm, vcpu_id)
        uc = self.uc
        uc.hook_add(UC_HOOK_INTR, self._on_exception)
        self._runctl = RunControl(uc, self._on_mrs, self._on_msr)
        self.install_memory_hooks()  # access-fault and unmapped hooks, kept off RAM (core.py)
        self._init_sysreg_filter()
        # Unicorn's Cortex-A57 implements EL2 and EL3 but resets them to AArch32, which makes
        # every EL1 ERET an illegal return. Configure them as firmware would before entering a
        # Non-secure AArch64 EL1 (QEMU's -kernel boot does the same).
        uc.cpr_write(*SCR_EL3, SCR_EL3_RW | SCR_EL3_NS)
        uc.cpr_write(*HCR_EL2, HCR_EL2_RW)
        uc.cpr_write(*VMPIDR_EL2, MPIDR_RES1 | vcpu_id)
        self._write_pstate(PSTATE_DAIF | PSTATE_MODE_EL1H)
        self._irq_level = False  # the IRQ input as the VMM last drove it (KVM_IRQ_LINE)
        # The instruction count at which a level raised inside a block may be taken: the end of
        # that block (what icount reads while a block runs), whatever stops split it later.
        self.irq_due = 0
        self._irq_applied = False  # ... and as HCR_EL2.VI has it
        # guestdbg extension, the emulated vCPU's counterpart of x86 KVM's KVM_GUESTDBG_BLOCKIRQ
        # (which arm64 KVM does not accept): while set, a KVM_GUESTDBG_SINGLESTEP run takes no
        # interrupt. HCR_EL2.VI stays clear for the step (the IRQ input's level is kept and
        # applies on the next run that is not a step) and the timers' level changes are not
        # reported until then either, so a step never ends in, or because of, an interrupt.
        # QEMU's gdbstub steps this way by default (SSTEP_NOIRQ | SSTEP_NOTIMER); the debug
        # manager sets it per its policy.
        self.singlestep_blocks_irq = False
        self._irqs_held = False  # set for the run() in progress: a step with IRQs blocked
        self._run_thread: int | None = None  # the thread inside run(), if any

    # ------------------------------------------------------------------ run
    def run(self, *, icount_limit: int | None = None, turn_end: int | None = None) -> KvmRun:
        """KVM_RUN: execute until something needs the VMM, and say what.

        With `icount_limit`, stop once the vCPU has retired exactly that many instructions (an
        EXIT_ICOUNT_LIMIT exit); this is how the VMM ends slices at points it chose.
        `turn_end` (a scheduler's turn for one of several vCPUs) is cheaper: stop with
        EXIT_ICOUNT_LIMIT before the first block that would take icount past it, so a turn
        ends at a block boundary, at most one block short. That depends only on the guest's
        code, so it is as deterministic, and it spares the exact limit's retranslation of the
        block the limit falls in (most of a turn's cost with 100k-instruction turns)."""
        state = self._runctl.state
        self._turn_end = turn_end
        self.vm.note_running(self.vcpu_id)
        self._run_thread = threading.get_ident()
        held = self._irqs_held = self.singlestep_blocks_irq and bool(self.guestdbg_control & KVM_GUESTDBG_SINGLESTEP)
        try:
            if self._pending_mmio is not None:
                done = self._finish_pending_mmio()
                if done is not None:
                    return done
            while True:
                # Clear the block hook's request before looking at immediate_exit: a kick()
                # landing in between is then seen here or at the next block, never lost.
                state.stop_request = 0
                if self.immediate_exit:
                    self.immediate_exit = False
                    return KvmRun(kvm.KVM_EXIT_INTR)
                if icount_limit is not None and state.icount >= icount_limit:
                    return KvmRun(kvm.EXIT_ICOUNT_LIMIT)
                if turn_end is not None and state.icount >= turn_end:
                    return KvmRun(kvm.EXIT_ICOUNT_LIMIT)
                due = self.irq_due if self._irq_level and not self._irq_applied else 0
                if due <= state.icount and (self._irq_level and not held) is not self._irq_applied:
                    self._apply_irq_line()
                if self.vm.shared:
                    self.apply_remote_maintenance()
                if self._rearm_pending:
                    self._rearm()
                elif self._reprotect_pending:
                    self._reprotect()
                limit = icount_limit if turn_end is None else min(turn_end, icount_limit or turn_end)
                if due > state.icount:
                    # Not yet (see set_irq_line): run to the end of the block it was raised in.
                    limit = due if limit is None else min(limit, due)
                result = self._check_context_breakpoints() or self._run_slice(limit)
                if result is not None:
                    return result
        except FatalGuestState as e:
            return self._internal_error(str(e), self.pc, e.esr)
        finally:
            self._run_thread = None
            self._irqs_held = False
            self._turn_end = None

    def kick(self, timeout: float = 1.0) -> None:
        """Make a running (or the next) run() return KVM_EXIT_INTR, as immediate_exit plus a
        signal does on KVM. Callable from any thread; it only sets two flags, which the vCPU
        thread reads at the next block boundary (Unicorn's emu_stop is never called from here:
        see "Threads" in the package docstring). `timeout` is kept for interface compatibility."""
        self.immediate_exit = True
        self._runctl.request_stop()

    def wait_for_kick(self) -> None:
        """Block the calling (vCPU) thread until another thread kicks this vCPU or raises its
        IRQ line, as run() blocks in a WFI nothing else can end: for a board whose vCPUs all
        wait with nothing due (board/smp.py). Never spins."""
        self._runctl.state.stop_request = 0
        if not self.immediate_exit:
            self._runctl.wait_for_stop(None)

    # ------------------------------------------------------------------ the IRQ input
    def set_irq_line(self, level: bool) -> None:
        """Drive the vCPU's IRQ input (Arm64Vm.irq_line, KVM_IRQ_LINE type CPU). Callable from
        any thread. The level reaches Unicorn as HCR_EL2.VI (with IMO): Unicorn's own interrupt
        code then takes the IRQ at VBAR_EL1 + 0x280 (from EL1h) once PSTATE.I is clear.

        Raising it is applied between slices, on the vCPU thread: a running slice is asked to
        end at the next block boundary (without a KVM_EXIT_INTR). Taking an IRQ inside a slice
        from a level set mid-block would let the block hook count a block that never runs.
        Lowering it from a device on the vCPU thread (an acknowledge or EOI in an inline MMIO
        access) is applied at once, so that a stale level is never taken as a spurious IRQ
        when the guest next unmasks; clearing VI only clears Unicorn's request bit."""
        self._irq_level = bool(level)
        on_vcpu_thread = self._run_thread == threading.get_ident()
        if not level and on_vcpu_thread:
            self._apply_irq_line()
        else:
            if level and on_vcpu_thread:
                # Raised by an inline device in the middle of a block: taken where that block
                # ends, as without a stop, even when a stop (a breakpoint, a single step, an
                # exact icount limit) splits the block first. Where an interrupt is taken thus
                # does not depend on where the VMM stops the vCPU: replays stay exact.
                self.irq_due = self._runctl.state.icount
            self._runctl.request_stop()

    def restore_irq_due(self, due: int) -> None:
        """guestdbg extension: a checkpoint's `irq_due`, given after its registers and device
        state (the IRQ input's level). HCR_EL2.VI then follows from them at the next run, as
        in the run that reached the checkpoint: applied if the level is high and `due` has
        come, else at `due`. Not as the run the machine comes back from left it: a level that
        run applied later would be taken at once, before the block it is due at the end of."""
        self.irq_due = due
        self._set_vi(False)

    def interrupt_may_preempt(self) -> bool:
        """guestdbg extension: could the next run take an interrupt before its first
        instruction? The IRQ input high and unmasked, or a timer output changing now or within
        a counter tick. (The debug manager then steps off a breakpoint, with interrupts held,
        instead of only skipping its hook: see its policy 18.)"""
        if self._irq_level and not self._pstate() & PSTATE_I:
            return True
        timers = self.timers
        if timers.armed or self.device_irq_level:
            count = self.counter()
            if timers.irq_level(count) != self.device_irq_level:
                return True
            deadline = timers.next_deadline(count)
            if deadline is not None and deadline - count <= 1:
                return True
        return False

    @property
    def irq_line_level(self) -> bool:
        """The IRQ input's level as HCR_EL2.VI has it now."""
        return self._irq_applied

    def _apply_irq_line(self) -> None:
        """Make HCR_EL2.VI follow the IRQ input (vCPU thread only), held low during a step
        with IRQs blocked (singlestep_blocks_irq)."""
        self._set_vi(self._irq_level and not self._irqs_held)

    def _set_vi(self, level: bool) -> None:
        """HCR_EL2.VI (with IMO; RW stays set), and _irq_applied with it."""
        hcr = self.uc.cpr_read(*HCR_EL2) | HCR_EL2_RW | HCR_EL2_IMO
        self.uc.cpr_write(*HCR_EL2, hcr | HCR_EL2_VI if level else hcr & ~HCR_EL2_VI)
        self._irq_applied = level

    def _report_timer_levels(self, limit: int) -> int | None:
        """core.VcpuCore's, except during a step with IRQs blocked: no level change is
        reported and no deadline shortens the step (the next run that is not a step reports it)."""
        if self._irqs_held:
            return limit
        return super()._report_timer_levels(limit)

    def set_counter_source(self, mode: str) -> None:
        """"virtual": CNTVCT_EL0/CNTPCT_EL0 read icount / 16 (62.5 MHz at 1 instruction per ns),
        so the guest's time is deterministic and stops with the vCPU. "host": the host's
        CLOCK_MONOTONIC in 16 ns ticks (read in C, as Unicorn's own counter reads it).
        "paced": the host's time made replayable (`--clock host` while recording): the
        virtual clock, caught up with the host's between slices (core._follow_host), each
        catch-up told to on_clock_sync. Between "host" and "paced" the counter carries on
        from where it is."""
        if mode not in ("virtual", "host", "paced"):
            raise ValueError(f"unknown clock mode {mode!r}")
        count = self.counter()
        switching = {mode, self._clock_mode} == {"host", "paced"}
        self._clock_mode = mode
        if switching:
            self.set_counter(count)
        if mode == "paced":
            self._pace_base = count - (time.monotonic_ns() >> COUNTER_TICK_SHIFT)
        self._pace_alarm = 0
        self._runctl.stop_at(None)
        self._update_sysreg_filter()

    def _run_slice(self, icount_limit: int | None) -> KvmRun | None:
        """Run until the limit, a hook's stop, or one instruction when single-stepping."""
        stepping = bool(self.guestdbg_control & KVM_GUESTDBG_SINGLESTEP)
        self._steps_in_a_row = self._steps_in_a_row + 1 if stepping else 0
        self._set_step_hook(self._steps_in_a_row >= 2)
        self._exit = None
        self._guest_exception = None
        start = self.icount
        if stepping and self._irq_applied and not self._pstate() & PSTATE_I:
            # A step that may take the IRQ (singlestep_blocks_irq clear): take it with no
            # instruction run, so the step ends at the vector, as QEMU's gdbstub does.
            pc = self.pc
            fault = self._execute(start)
            if self._exit is not None:
                return self._exit
            if fault is None and self.icount == start and self.pc != pc:
                return self._softstep_exit()
        limit = start + 1 if stepping else (NO_LIMIT if icount_limit is None else icount_limit)
        fault = self._execute(limit)
        if self._exit is not None:
            return self._exit
        if self._device_access is not None:
            return self._device_access_done()
        taken, result = self._take_pending_exception()
        if taken:
            return result or (self._softstep_exit() if stepping else None)
        if self._guest_exception is not None:
            esr, far, ret = self._guest_exception
            self._take_exception(esr, far=far, preferred_return=ret)
            return self._softstep_exit() if stepping else None
        if self._multi_access_pc is not None:
            result = self._run_multi_access_instruction()
            if result is not None or stepping:
                return result or self._softstep_exit()
            return None
        if fault is not None:
            return self._internal_error(f"emulation failed at PC={self.pc:#x}: {fault}")
        if stepping and self.icount > start:
            self.wfe_exit = self.stepped_into_wait()
            return self._softstep_exit()
        if self._turn_ended:
            return KvmRun(kvm.EXIT_ICOUNT_LIMIT)
        return None  # a limit, a kick, WFI, a context-ID change, a debug-register write: go round
