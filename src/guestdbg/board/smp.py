"""Several vCPUs on the virt board (`--smp N`): PSCI power control and the round-robin scheduler.

`SmpMachine` is the part of `board.virt.VirtMachine` that knows about more than one vCPU. One
thread runs every vCPU (each its own Unicorn engine over the shared RAM, see
backends/unicorn_arm64/vm.py), one at a time, in a fixed order, as QEMU's single-threaded TCG
round-robin does with `-icount`:

- **Turns.** The powered-on vCPUs take turns in index order (0, 1, ..., N-1, 0, ...). A turn
  ends when the vCPU has retired QUANTUM instructions in it, or halts (WFI with nothing pending:
  the vCPU's `halt_exits` makes run() return KVM_EXIT_HLT with PC past the WFI), or waits in
  WFE (below), or turns itself off (PSCI CPU_OFF). Exits the board serves inside a turn (the
  flash, a timer level change) do not end it; exits that go to the caller (DEBUG, INTR, an exit
  `stop` accepts, the guest's end) leave the rest of the turn for the next run_until(), so a
  debugger stop does not move the interleaving either.
- **Time.** The machine has one virtual clock, `machine_time`, in instructions (1 ns each):
  every instruction any vCPU retires advances it, as QEMU's -icount counts them. Before a
  vCPU's turn its `time_offset` is set to `machine_time - icount`, so its counter reads
  (machine_time + the instructions it has run in this turn) / 16 (62.5 MHz). Everything the
  schedule depends on (instruction counts, the clock, the order) is guest state, so two runs of
  the same guest with the same input interleave identically.
- **Halts.** A halted vCPU (in WFI) is skipped until its GIC CPU interface signals an IRQ
  (`Gic.irq_pending(cpu)`) or the machine time reaches its next timer event
  (`vcpu.next_timer_event()`); it then resumes past its WFI (a WFI may end early; guests loop
  on it). When every powered-on vCPU is halted, the clock skips ahead to the earliest timer
  event, as one vCPU's idle WFI does. With no event at all the thread blocks until another
  thread kicks vCPU 0 (the console reader, a debugger's interrupt), as a lone vCPU blocks in
  WFI; `run_to_exit`'s hang check then sees "every CPU waiting with nothing to wake it".
- **Exclusive monitors.** When a vCPU's turn starts and another vCPU ran since its last one,
  its local exclusive monitor is cleared, as a context switch on hardware would (Arm lets a
  local monitor be cleared at any time): a STXR whose LDXR came before the switch fails and
  the LDXR/STXR loop goes round. Without this, Unicorn's store-exclusive (QEMU TCG's: a
  compare-and-swap against the value the LDXR loaded) would succeed after another vCPU changed
  the word and changed it back (ABA). Within a turn the monitor is Unicorn's: a store by the same vCPU to
  the monitored word does not clear it, and nothing tracks granules. The monitor lives in
  Unicorn's CPU state, where no register reaches it: `VcpuCore.clear_exclusive_monitor`
  edits it through uc_context_save/restore at an offset found once by running LDXR on a
  scratch engine (backends/unicorn_arm64/core.py, `exclusive_monitor_offset`).
- **WFE and SEV.** A WFE with the event register clear ends the vCPU's turn (its run() ends
  with KVM_EXIT_HLT, `vcpu.wfe_exit`, PC past the WFE) and it waits, skipped like a halted
  vCPU, until an event: an SEV executed by any vCPU since its event register was last
  cleared; its exclusive monitor lost (the word at the physical address its last LDXR loaded
  no longer holds the value loaded: another vCPU stored there, which on hardware clears the
  global monitor and sends the event; checked between turns); an IRQ signalled to it or its
  timer due (as for WFI); or WFE_MAX_WAIT (1 ms) of machine time, a bound for an event the
  model misses (an ABA store, a store without SEV). An SEV or SEVL executed before the WFE
  sets the event register, so `SEVL; WFE` falls through and a WFE after an SEV does not wait;
  the exception-return and event-stream (CNTKCTL_EL1.EVNTEN) events are not modelled. A vCPU
  in WFE shows as "running" (it is not halted: it loops on its own). When every powered-on
  vCPU halts or waits, the clock skips to the earliest timer event or WFE_MAX_WAIT. With one
  vCPU, WFE and SEV stay Unicorn's no-ops. A single step sets and consumes the event register
  as a run does; a step over a WFE with it clear completes, and the vCPU then waits as after a
  run through it (vcpu.stepped_into_wait): before, a step left them no-ops, and each step-over
  of a breakpoint on a spinlock's SEVL made the WFE after it wait WFE_MAX_WAIT, and a replay
  through a stepped WFE differed from the step. The run loop finds WFE, SEV and SEVL as code
  is translated and hooks only those instructions (_runctl.c,
  runctl_edge_hook), so blocks without them cost nothing more; the first block an engine
  translates is not looked at, and past 128 such instructions per vCPU the rest stay no-ops.
- **QUANTUM = 100 000 instructions** (100 us of virtual time). Short against what guests wait
  for (Linux's tick is 4 ms; a CPU spinning on a lock or an IPI answer that a descheduled CPU
  owes wastes at most one turn, and an IPI reaches a halted CPU within one round), and long
  against a turn's fixed cost on the host: switching engines costs about 0.3-0.45 ms a turn
  (two emu_starts, the exact-limit countdown and the translation it drops, Python), measured
  on the CPU-bound guests/smp: 4 vCPUs ran 0.24x one vCPU's MIPS with 20 000-instruction turns,
  0.43x with 50 000, 0.60x with 100 000, 0.8x with 200 000 (bench/bench_smp.py).

- **Recording (reverse execution).** `run_until` takes limits in machine time (`time_limit`
  exact, `soft_time_limit` at a block boundary at or before it). A turn ended by the quantum
  ends at a block boundary, which depends on where stops split blocks; a recorder
  (`schedule_log`, debug/history.py) keeps where each such turn ended and, when it replays,
  has it end there exactly (`ScheduleLog.forced_turn_end`), and notes which vCPU ran when
  (`ran`). A turn whose end falls where a caller's limit stops the run is over there: the next
  run starts the next vCPU's turn, wherever the caller stopped.

PSCI (DEN0022, as QEMU's target/arm/psci.c and arm-powerctl.c answer it): the vCPU's firmware
layer calls `psci_power` (installed as each vCPU's `power_control`) for CPU_ON, CPU_OFF and
AFFINITY_INFO.

- CPU_ON(target MPIDR, entry, context_id): the target must be a vCPU's MPIDR affinity (Aff0 =
  index, nothing else set), else INVALID_PARAMETERS; a misaligned entry is INVALID_PARAMETERS
  (checked first, as QEMU does); a CPU that is on is ALREADY_ON, one turned on and not yet run
  ON_PENDING. The target is reset to its power-on registers and starts at `entry` in EL1h, MMU
  and caches off, DAIF masked, x0 = context_id (QEMU virt without EL2 starts secondaries at
  EL1). It is ON_PENDING until its first turn.
- CPU_OFF: the caller is off from its next instruction (its run() ends with KVM_EXIT_HLT).
- AFFINITY_INFO(target, level): 0 ON, 1 OFF, 2 ON_PENDING; levels above 0 are always ON (0).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Protocol

from guestdbg import kvm
from guestdbg.arm import kvm_regs as kr
from guestdbg.arm.mmu import TranslationFault
from guestdbg.backends.unicorn_arm64 import PSTATE_DAIF, PSTATE_MODE_EL1H, Arm64Vcpu
from guestdbg.backends.unicorn_arm64.firmware import (
    PSCI_0_2_FN64_AFFINITY_INFO,
    PSCI_0_2_FN64_CPU_ON,
    PSCI_0_2_FN_AFFINITY_INFO,
    PSCI_0_2_FN_CPU_OFF,
    PSCI_0_2_FN_CPU_ON,
    PSCI_RET_ALREADY_ON,
    PSCI_RET_INVALID_PARAMS,
    PSCI_RET_NOT_SUPPORTED,
    PSCI_RET_ON_PENDING,
    PSCI_RET_SUCCESS,
)
from guestdbg.board.common import ExitStatus

if TYPE_CHECKING:
    from guestdbg.board.gic import Gic

MAX_CPUS = 8
QUANTUM = 100_000
# The longest a WFE waits for an event (virtual ns; 1 ms, ten turns). A WFE may complete at any
# time, so this only bounds the wait for an event the model does not see (an ABA store to the
# monitored word, a plain store with no SEV, an exception return, a site past the hook limit).
WFE_MAX_WAIT = 1_000_000
# AFFINITY_INFO's answers, and the power states they name.
ON, OFF, ON_PENDING = 0, 1, 2
_STATE_NAMES = {ON: "on", OFF: "off", ON_PENDING: "on_pending"}
_STATE_VALUES = {name: value for value, name in _STATE_NAMES.items()}
VTIMER_INTID, PTIMER_INTID = 27, 30  # the EL1 timers' PPIs (11 and 14), as in QEMU's DTB


def cpu_irq(index: int) -> int:
    """What vCPU `index`'s IRQ input is for KVM_IRQ_LINE (type CPU, vcpu_index, CPU_IRQ)."""
    return ((kvm.KVM_ARM_IRQ_TYPE_CPU << kvm.KVM_ARM_IRQ_TYPE_SHIFT) | (index << kvm.KVM_ARM_IRQ_VCPU_SHIFT)
            | kvm.KVM_ARM_IRQ_CPU_IRQ)


def _never(run: kvm.KvmRun) -> bool:
    return False


class ScheduleLog(Protocol):
    """What a recorder (debug/history.py) keeps of the schedule, so that a replay interleaves
    the vCPUs exactly as the recorded run did: a turn that ended by the quantum ended at a
    block boundary (vcpu.run's turn_end), which depends on how the code was cut into
    translation blocks, and a replay may cut them elsewhere (its stops split blocks the
    recorded run did not)."""

    def forced_turn_end(self, vcpu_id: int, start: int) -> int | None:
        """Where the turn of `vcpu_id` that started at its instruction count `start` ended by
        the quantum when it was recorded (the replay ends it there exactly), or None."""

    def turn_ended(self, vcpu_id: int, start: int, end: int) -> None:
        """A turn ended by the quantum, at a block boundary (at the live end: recorded)."""

    def ran(self, vcpu_id: int, time: int, start: int, end: int) -> None:
        """vCPU `vcpu_id` retired its instructions start..end-1 from machine time `time` on."""


class SmpMachine:
    """The vCPUs, their power states and the scheduler (see the module docstring). The board
    gives it `vm`, `gic`, `vcpu` (vCPU 0) and `handle_exit`, then calls `_smp_init`."""

    vcpu: Arm64Vcpu
    gic: Gic
    handle_exit: Callable[[kvm.KvmRun], ExitStatus | None]
    quantum: int = QUANTUM

    def _smp_init(self, n: int, power_on_regs: Callable[[Arm64Vcpu], list[tuple[int, int]]]) -> None:
        if not 1 <= n <= MAX_CPUS:
            raise ValueError(f"--smp must be 1..{MAX_CPUS}, got {n}")
        vm = self.vcpu.vm
        self.vcpus: list[Arm64Vcpu] = [self.vcpu] + [vm.create_vcpu(i) for i in range(1, n)]
        # Every vCPU's power-on registers: what CPU_ON (and a reboot) resets it to.
        self._vcpu_power_on = [power_on_regs(v) for v in self.vcpus]
        self.power = [ON] + [OFF] * (n - 1)  # secondaries start off, as on QEMU's virt
        self.halted = [False] * n
        self.machine_time = 0
        self.last_vcpu_id = 0
        self._turn = 0  # whose turn it is (or is next)
        self._turn_end: int | None = None  # icount at which that vCPU's turn ends, while it lasts
        self._turn_start = 0  # that vCPU's icount when its turn started
        self.schedule_log: ScheduleLog | None = None  # while recording (debug/history.py)
        self._irq_outs = [False] * n
        self.all_waiting = False  # every powered-on vCPU halted with nothing due to wake it
        # A vCPU waiting in WFE: (the SEV total it waits past, its exclusive monitor (physical
        # address, value) or None, the machine time its wait ends by); None when not waiting.
        self._wfe_wait: list[tuple[int, tuple[int, int] | None, int] | None] = [None] * n
        self._sev_seen = [0] * n  # the SEV total when each vCPU's event register was last cleared
        for v in self.vcpus:
            v.power_control = self.psci_power
            v.halt_exits = n > 1

    # ------------------------------------------------------------------ state
    def cpu_state(self, index: int) -> str:
        """"running", "halted" (in WFI with nothing pending) or "off" (PSCI)."""
        if self.power[index] == OFF:
            return "off"
        return "halted" if self.halted[index] else "running"

    def drive_irq_lines(self) -> None:
        """Each CPU interface's IRQ output to its vCPU's IRQ input, where the level moved."""
        for i in range(len(self.vcpus)):
            level = self.gic.irq_pending(i)
            if level != self._irq_outs[i]:
                self._irq_outs[i] = level
                self.vcpu.vm.irq_line(cpu_irq(i), int(level))

    def drive_timer_ppis(self, cpu: int, device_irq_level: int) -> None:
        """A vCPU's timers changed their output levels (KVM_CAP_ARM_USER_IRQ's
        kvm_run.s.regs.device_irq_level): drive that CPU's PPIs, as QEMU's kvm_arch_post_run."""
        self.gic.set_level(VTIMER_INTID, device_irq_level & kvm.KVM_ARM_DEV_EL1_VTIMER, cpu=cpu)
        self.gic.set_level(PTIMER_INTID, device_irq_level & kvm.KVM_ARM_DEV_EL1_PTIMER, cpu=cpu)

    def _force_irq_lines(self) -> None:
        for i in range(len(self.vcpus)):
            self._irq_outs[i] = self.gic.irq_pending(i)
            self.vcpu.vm.irq_line(cpu_irq(i), int(self._irq_outs[i]))

    def _timer_reports_from_gic(self) -> None:
        """After a restore: what each vCPU last told the VMM of its timers' output levels
        (device_irq_level) is what the restored GIC's timer PPIs hold. A record left from
        before the restore could swallow the next change: a timer firing before the vCPU next
        looks (the host clock's logged catch-up, applied as a replay resumes) would never
        reach the GIC, and its interrupt would be lost."""
        for i, vcpu in enumerate(self.vcpus):
            level = self.gic.banked[i]["level"]
            vcpu.device_irq_level = ((kvm.KVM_ARM_DEV_EL1_VTIMER if level >> VTIMER_INTID & 1 else 0)
                                     | (kvm.KVM_ARM_DEV_EL1_PTIMER if level >> PTIMER_INTID & 1 else 0))

    def smp_state(self) -> dict:
        """What a snapshot needs beyond the registers: per vCPU its instruction count, counter
        and time offsets (its counter's reading) and power state, and the scheduler's position."""
        return {"machine_time": self.machine_time, "turn": self._turn, "turn_end": self._turn_end,
                "turn_start": self._turn_start,
                "last_vcpu_id": self.last_vcpu_id,
                "vcpus": [{"icount": v.icount, "counter_offset": v.counter_offset, "time_offset": v.time_offset,
                           "power": _STATE_NAMES[p], "halted": h, "sev_count": v.sev_count,
                           "sev_seen": seen, "event_register": v.event_register,
                           "wfe": None if w is None else [w[0], None if w[1] is None else list(w[1]), w[2]]}
                          for v, p, h, seen, w in zip(self.vcpus, self.power, self.halted, self._sev_seen,
                                                      self._wfe_wait)]}

    def restore_smp_state(self, state: dict) -> None:
        cpus = state["vcpus"]
        if len(cpus) != len(self.vcpus):
            raise ValueError(f"state for {len(cpus)} vCPUs, this machine has {len(self.vcpus)}")
        for v, s in zip(self.vcpus, cpus):
            v.set_icount(int(s["icount"]))
            v.counter_offset = int(s["counter_offset"])
            v.time_offset = int(s["time_offset"])
            v.sev_count = int(s.get("sev_count", 0))
            v.event_register = bool(s.get("event_register", False))
        self._sev_seen = [int(s.get("sev_seen", 0)) for s in cpus]
        self._wfe_wait = [None if s.get("wfe") is None
                          else (int(s["wfe"][0]), None if s["wfe"][1] is None else (int(s["wfe"][1][0]),
                                                                                    int(s["wfe"][1][1])),
                                int(s["wfe"][2]))
                          for s in cpus]
        self.power = [_STATE_VALUES[s["power"]] for s in cpus]
        self.halted = [bool(s["halted"]) for s in cpus]
        self.machine_time = int(state["machine_time"])
        self._turn = int(state["turn"])
        self._turn_end = None if state["turn_end"] is None else int(state["turn_end"])
        self._turn_start = int(state.get("turn_start", 0))
        self.last_vcpu_id = int(state.get("last_vcpu_id", 0))

    def _smp_reset(self) -> None:
        """A reboot: every secondary off at its power-on registers; vCPU 0 runs."""
        for i, v in enumerate(self.vcpus):
            if i:
                self._reset_vcpu(i)
        self.power = [ON] + [OFF] * (len(self.vcpus) - 1)
        self.halted = [False] * len(self.vcpus)
        self._wfe_wait = [None] * len(self.vcpus)
        self._turn, self._turn_end = 0, None

    def _reset_vcpu(self, index: int) -> None:
        v = self.vcpus[index]
        for reg_id, value in self._vcpu_power_on[index]:
            v.set_one_reg(reg_id, value)

    # ------------------------------------------------------------------ PSCI
    def psci_power(self, caller: int, fn: int, target: int, entry: int, context_id: int) -> int:
        """PSCI CPU_ON, CPU_OFF and AFFINITY_INFO for vCPU `caller` (see the module docstring)."""
        if fn in (PSCI_0_2_FN_CPU_ON, PSCI_0_2_FN64_CPU_ON):
            if entry & 3:
                return PSCI_RET_INVALID_PARAMS
            index = self._mpidr_index(target)
            if index is None:
                return PSCI_RET_INVALID_PARAMS
            if self.power[index] == ON:
                return PSCI_RET_ALREADY_ON
            if self.power[index] == ON_PENDING:
                return PSCI_RET_ON_PENDING
            self._reset_vcpu(index)
            v = self.vcpus[index]
            v.set_one_reg(kr.KVM_REG_ARM_CORE_PSTATE, PSTATE_DAIF | PSTATE_MODE_EL1H)
            v.set_one_reg(kr.KVM_REG_ARM_CORE_PC, entry)
            v.set_one_reg(kr.KVM_REG_ARM_CORE_X(0), context_id)
            self.power[index] = ON_PENDING
            self.halted[index] = False
            self._wfe_wait[index] = None
            return PSCI_RET_SUCCESS
        if fn == PSCI_0_2_FN_CPU_OFF:
            self.power[caller] = OFF
            self.halted[caller] = False
            self._wfe_wait[caller] = None
            return PSCI_RET_SUCCESS
        if fn in (PSCI_0_2_FN_AFFINITY_INFO, PSCI_0_2_FN64_AFFINITY_INFO):
            if entry != 0:  # lowest affinity level: above 0 everything is on
                return ON
            index = self._mpidr_index(target)
            return PSCI_RET_INVALID_PARAMS if index is None else self.power[index]
        return PSCI_RET_NOT_SUPPORTED

    def _mpidr_index(self, mpidr: int) -> int | None:
        """The vCPU whose MPIDR affinity is `mpidr` (QEMU's arm_get_cpu_by_id: an exact match)."""
        return mpidr if 0 <= mpidr < len(self.vcpus) else None

    # ------------------------------------------------------------------ the scheduler
    def _wakes(self, index: int) -> bool:
        """Is halted vCPU `index` due to run: an IRQ signalled to it, or a timer event due?"""
        if self.gic.irq_pending(index):
            return True
        due = self.vcpus[index].next_timer_event()
        return due is not None and due <= self.machine_time

    def _sev_total(self) -> int:
        return sum(v.sev_count for v in self.vcpus)

    def _event_pending(self, sev_seen: int, watch: tuple[int, int] | None) -> bool:
        """Is a waiting vCPU's event register set: an SEV (any vCPU's) since `sev_seen`, or its
        exclusive monitor lost: `watch` is (physical address, value) of its last exclusive
        load, and the word there no longer holds that value (another vCPU stored to it, which
        clears the global monitor)?"""
        if self._sev_total() > sev_seen:
            return True
        if watch is None:
            return False
        pa, value = watch
        try:
            data = self.vcpu.vm.read_phys(pa, 8)
        except kvm.KvmError:
            try:
                data = self.vcpu.vm.read_phys(pa, 4)  # at the end of RAM: a 32-bit load's word
            except kvm.KvmError:
                return True
        # The load's size is not kept: the monitor holds if any size the value fits in matches.
        for size in (1, 2, 4, 8):
            if value >> (8 * size) == 0 and int.from_bytes(data[:size], "little") == value:
                return False
        return True

    def _wfe(self, i: int) -> bool:
        """vCPU `i` ran a WFE (its run() ended with KVM_EXIT_HLT, wfe_exit): True if it waits
        now (its turn is over), False if its event register was set (the WFE completes at once
        and clears it). The monitor's address is translated once, here: the waiter's own
        translation cannot change while it waits."""
        total = self._sev_total()
        v = self.vcpus[i]
        monitor = v.exclusive_monitor()
        watch = None
        lost = False
        if monitor is not None:
            try:
                watch = (v.translate(monitor[0]), monitor[1])
            except (TranslationFault, kvm.KvmError):
                lost = True  # not mapped: no store can reach it, treat it as an event
        if lost or self._event_pending(self._sev_seen[i], watch):
            self._sev_seen[i] = total
            return False
        self._wfe_wait[i] = (total, watch, self.machine_time + WFE_MAX_WAIT)
        return True

    def _wfe_wakes(self, index: int) -> bool:
        """Is vCPU `index`, waiting in WFE, due to run: an event (SEV, its monitor lost), an IRQ
        or timer event as for a halted vCPU, or its longest wait over?"""
        wait = self._wfe_wait[index]
        assert wait is not None
        sev_seen, watch, deadline = wait
        return self.machine_time >= deadline or self._wakes(index) or self._event_pending(sev_seen, watch)

    def _pick(self, only: int | None) -> int | None:
        """The vCPU to run next (its turn starts now unless it is the one whose turn lasts)."""
        n = len(self.vcpus)
        order = [only] if only is not None else [(self._turn + k) % n for k in range(n)]
        for i in order:
            if self.power[i] == OFF:
                continue
            if self.halted[i]:
                if not self._wakes(i):
                    continue
                self.halted[i] = False
            elif self._wfe_wait[i] is not None:
                if not self._wfe_wakes(i):
                    continue
                self._wfe_wait[i] = None
                self._sev_seen[i] = self._sev_total()  # the WFE completes: its event is consumed
            return i
        return None

    def _idle_until_event(self, only: int | None, limit: int | None = None) -> bool:
        """Nothing can run: skip the clock to the earliest timer event of a halted vCPU, or the
        end of a WFE's longest wait (True), or say there is none (False). Not past `limit`
        (the caller's machine-time limit): the next look returns there."""
        candidates = [only] if only is not None else range(len(self.vcpus))
        events = [e for i in candidates if self.power[i] != OFF and self.halted[i]
                  and (e := self.vcpus[i].next_timer_event()) is not None]
        for i in candidates:
            wait = self._wfe_wait[i]
            if self.power[i] != OFF and wait is not None:
                timer = self.vcpus[i].next_timer_event()
                events.append(wait[2] if timer is None else min(wait[2], timer))
        if not events:
            return False
        self.machine_time = max(self.machine_time, min(events) if limit is None else min(min(events), limit))
        return True

    def _kicked(self) -> bool:
        """Did another thread kick a vCPU (immediate_exit)? Clears every vCPU's request: one
        KVM_EXIT_INTR answers them all (the machine stops as a whole)."""
        if not any(v.immediate_exit for v in self.vcpus):
            return False
        for v in self.vcpus:
            v.immediate_exit = False
        return True

    def _block(self) -> None:
        """Every vCPU waits with nothing due: sleep until another thread kicks vCPU 0 (or
        raises its IRQ line), as a lone vCPU sleeps in WFI."""
        self.all_waiting = True
        try:
            self.vcpu.wait_for_kick()
        finally:
            self.all_waiting = False

    def _run_smp(self, stop: Callable[[kvm.KvmRun], bool] = _never, only: int | None = None,
                 icount_limit: int | None = None, time_limit: int | None = None,
                 soft_time_limit: int | None = None) -> kvm.KvmRun | ExitStatus:
        """run_until() with several vCPUs (see the module docstring). `icount_limit` applies to
        the vCPU `only` (vCPU 0 without it). `time_limit`: EXIT_ICOUNT_LIMIT when the machine
        time reaches it, exactly; `soft_time_limit`: at the block boundary at or before it (a
        recorder's checkpoints, which should split no block)."""
        limited = 0 if only is None else only
        n = len(self.vcpus)
        while True:
            if self._kicked():
                return kvm.KvmRun(kvm.KVM_EXIT_INTR)
            limit = min((t for t in (time_limit, soft_time_limit) if t is not None), default=None)
            if limit is not None and self.machine_time >= limit:
                return kvm.KvmRun(kvm.EXIT_ICOUNT_LIMIT)
            i = self._pick(only)
            if i is None:
                if self._idle_until_event(only, limit):
                    continue
                if any(self.gic.irq_pending(k) for k in range(n) if self.power[k] != OFF):
                    continue  # raised from another thread since _pick looked
                self._block()
                continue
            vcpu = self.vcpus[i]
            if self.power[i] == ON_PENDING:
                self.power[i] = ON
            log = self.schedule_log
            if only is None and (i != self._turn or self._turn_end is None or vcpu.icount >= self._turn_end):
                self._turn, self._turn_start, self._turn_end = i, vcpu.icount, vcpu.icount + self.quantum
            if only is None and self._turn_end is not None:
                # A replayed turn ends where the recorded one did, exactly (ScheduleLog). The
                # scheduler's state keeps the quantum's end, as the recorded run had it.
                forced = log.forced_turn_end(i, self._turn_start) if log is not None else None
                end, exact_end = (self._turn_end, False) if forced is None else (forced, True)
            else:
                end, exact_end = vcpu.icount + self.quantum, False
            # The caller's limit in this vCPU's instructions, if it comes first.
            caps = []
            if icount_limit is not None and i == limited:
                caps.append((icount_limit, True))
            if time_limit is not None:
                caps.append((vcpu.icount + time_limit - self.machine_time, True))
            if soft_time_limit is not None:
                caps.append((vcpu.icount + soft_time_limit - self.machine_time, False))
            cap = min(caps, key=lambda c: (c[0], not c[1])) if caps else None
            if i != self.last_vcpu_id:
                # Another vCPU ran since this one last did: its local exclusive monitor is
                # cleared (as a context switch would), so a STXR whose LDXR came before that
                # fails, even if the value it loaded is back (ABA), and the loop goes round.
                vcpu.clear_exclusive_monitor()
            self.last_vcpu_id = i
            self.gic.current_cpu = i
            result = self._turn_of(i, end, exact_end, cap, stop, only is None)
            if result is not None:
                return result

    def _turn_of(self, i: int, end: int, exact_end: bool, cap: tuple[int, bool] | None,
                 stop: Callable[[kvm.KvmRun], bool], scheduled: bool) -> kvm.KvmRun | ExitStatus | None:
        """Run vCPU `i` until `end` (its icount; exactly with `exact_end`, else at the block
        boundary at or before it), a halt or CPU_OFF (None: the turn is over), the caller's
        `cap` (its icount, exact or not: EXIT_ICOUNT_LIMIT), or an exit that goes to the caller.
        `scheduled`: a turn of the round-robin (not a run of one vCPU alone)."""
        vcpu = self.vcpus[i]
        log = self.schedule_log
        while True:
            before = vcpu.icount
            vcpu.time_offset = self.machine_time - before
            if cap is not None and cap[0] <= end:
                piece_end, exact = cap[0], cap[1] or (cap[0] == end and exact_end)
            else:
                piece_end, exact = end, exact_end
            # A turn ends at a block boundary short of `end` (turn_end: no exact split, which
            # cost most of a turn); a limit the caller asked for stays exact.
            run = vcpu.run(icount_limit=piece_end) if exact else vcpu.run(turn_end=piece_end)
            if log is not None and vcpu.icount > before:
                log.ran(i, self.machine_time, before, vcpu.icount)
            self.machine_time += vcpu.icount - before
            stopped = stop(run)
            if run.device_irq_level is not None:
                self.drive_timer_ppis(i, run.device_irq_level)
                if not stopped:
                    continue
            reason = run.exit_reason
            if reason == kvm.EXIT_ICOUNT_LIMIT and not stopped:
                # The turn is over when its end was this piece's end and came (exactly, or as the
                # block boundary before it); the caller's limit, when it was this piece's.
                turn_over = piece_end == end and (vcpu.icount >= end or not exact or not exact_end)
                caller = cap is not None and piece_end == cap[0] and (vcpu.icount >= cap[0] or not cap[1])
                if turn_over and scheduled:
                    if log is not None and not exact_end:
                        log.turn_ended(i, self._turn_start, vcpu.icount)
                    self._next_turn(i)
                if caller:
                    return run
                if turn_over:
                    return None
                continue
            if reason == kvm.KVM_EXIT_HLT and not stopped:
                if vcpu.wfe_exit and self.power[i] != OFF:
                    if self._wfe(i):
                        self._turn_done(i, scheduled)
                        return None
                    continue  # its event register was set: the WFE completed
                if self.power[i] != OFF:
                    self.halted[i] = True
                self._turn_done(i, scheduled)
                return None
            if stopped or reason in (kvm.KVM_EXIT_DEBUG, kvm.KVM_EXIT_INTR):
                if reason == kvm.KVM_EXIT_DEBUG and vcpu.wfe_exit and self.power[i] != OFF and self._wfe(i):
                    # A step ran a WFE that a run would wait in: the vCPU waits from here (its
                    # turn is over), so a replay that runs through the WFE matches the step.
                    self._turn_done(i, scheduled)
                if reason == kvm.KVM_EXIT_INTR:
                    for v in self.vcpus:  # one stop answers every vCPU's kick
                        v.immediate_exit = False
                return run
            ended = self.handle_exit(run)
            if ended is not None:
                return ended
            if self.power[i] == OFF:  # a reboot (SYSTEM_RESET) turned it off
                self._turn_done(i, scheduled)
                return None

    def _next_turn(self, i: int) -> None:
        self._turn, self._turn_end = (i + 1) % len(self.vcpus), None

    def _turn_done(self, i: int, scheduled: bool) -> None:
        """The turn ended by the guest (a halt, a WFE wait, CPU_OFF): the next vCPU's comes."""
        if scheduled:
            self._next_turn(i)

    def _smp_hung(self) -> bool:
        """For the hang check: no vCPU can ever run again without input (every powered-on one
        halted with no timer armed and no IRQ signalled, or all off) and none is to come."""
        for i, v in enumerate(self.vcpus):
            if self.power[i] == OFF:
                continue
            if not self.halted[i] or self.gic.irq_pending(i) or v.next_timer_event() is not None:
                return False  # a vCPU in WFE is not halted: its wait ends by WFE_MAX_WAIT
        return True

    def kick_all(self) -> None:
        """From any thread: stop the machine (every vCPU's immediate_exit)."""
        for v in self.vcpus:
            v.kick()
