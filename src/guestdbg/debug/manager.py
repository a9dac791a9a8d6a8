"""The guest-debug manager: breakpoint and watchpoint policy over a KVM-shaped vCPU.

This is the part of a VMM that QEMU's gdbstub and its KVM accelerator play: no sockets, no
protocol, just policy. The GDB session and the Python API both drive it.

Policy
------
1. Slot counts come from check_extension(KVM_CAP_GUEST_DEBUG_HW_BPS/_WPS), never constants.
2. `add_breakpoint` is a software breakpoint (BRK #0 patched over the instruction) unless the
   code is in read-only memory (ROM/flash): then a hardware slot. `add_hw_breakpoint` always
   uses a slot. Out of slots is an error; nothing else changes.
3. Software breakpoints are keyed and reference-counted by guest physical address (two virtual
   aliases of one page share one patch); virtual addresses go through the guest's page tables.
4. Debugger reads see the original bytes under software breakpoints; debugger writes there
   update the saved original and keep the breakpoint.
5. Code the guest rewrites keeps its breakpoints: stores to a patched word are trapped, allowed
   to complete, and the breakpoint is re-armed over the new instruction.
6. Watchpoints use hardware slots while they last, splitting an arbitrary range exactly into
   BAS pieces (inside one doubleword) and MASK pieces (aligned powers of two). A watch that
   does not fit in the free slots traps accesses to just its pages instead (the vCPU's page-trap
   extension): exact semantics, no fixed limit.
7. Resuming from a breakpoint or watchpoint steps the one instruction with only that event
   disarmed, so nothing is ever dropped, and a watched access then completes.
8. Debug exits the manager did not cause (the guest's own BRK while USE_SW_BP is on) are
   re-injected into the guest, as the hardware would have delivered them.
9. The debugger may write ROM (patching firmware, as on QEMU); the guest still cannot.
10. `reset` returns the VM to its state when the manager was created (right after loading, for
    `guestdbg run`), keeping the debugger's breakpoints and watchpoints armed.
11. Snapshots never hold the debugger's state: `snapshot` lifts the breakpoint patches while the
    image is written, and `restore` (like `reset`) keeps every breakpoint and watchpoint armed
    over the restored memory, re-patching over the restored code.
12. A breakpoint at a virtual address the guest does not map yet (`break *VA` at reset, before
    the guest turns its MMU on) takes a hardware slot, whose comparator matches virtual
    addresses whatever the translation, while one is free; with none free it is refused with
    a message that says so. Its stop is reported as a software breakpoint's (gdb asked for Z0).
    Removing it frees the slot; gdb re-inserting it once the address is mapped patches BRK.
13. Single steps (`step`, and the steps that resume past a breakpoint) take no interrupt and
    let no timer fire by default, as QEMU's gdbstub steps (SSTEP_NOIRQ | SSTEP_NOTIMER): a
    pending IRQ stays pending and is taken on the next continue. The means is the vCPU's:
    KVM_GUESTDBG_BLOCKIRQ where KVM_CAP_SET_GUEST_DEBUG2 offers it (x86), else the emulated
    vCPU's `singlestep_blocks_irq`. `step_irqs = True` (`monitor sstep irq on`) lets steps
    take them.
14. Only `interrupt()` stops a running cont()/step(). Any other KVM_EXIT_INTR is another
    thread's kick for the host's services (console input, `wake()`): the board's `on_intr` runs
    and the guest runs on, so typed input never looks like a stop to the debugger.
15. Memory requests take `physical=True` for guest-physical addresses (QEMU's PhyMemMode):
    no translation, the same originals under breakpoints. Breakpoints stay virtual.
16. Several vCPUs (a board with `vcpus`, `run_until(..., only=)`, `last_vcpu_id` and
    `cpu_state`): every breakpoint and watchpoint is armed on every vCPU, as QEMU's gdbstub
    does (the BRK patches are in shared RAM; the slots and page traps go to each vCPU's
    KVM_SET_GUEST_DEBUG and set_watch_traps), SINGLESTEP only on the vCPU being stepped. One
    vCPU is current (gdb's Hg): registers, and the translation of memory requests and
    breakpoint addresses, are its; a stop makes the vCPU that stopped current and names it
    (`StopEvent.vcpu_id`). All-stop: the board runs the vCPUs on one thread, so when one stops
    they all have. A vCPU is stepped over the breakpoint or watchpoint it last stopped at
    (alone, with the others stopped: the patch is lifted in shared RAM) before it runs again,
    as long as it has not run since.
17. Reverse execution (`start_recording`; debug/history.py keeps the checkpoints and the input
    log): runs go through the history, which stops them to take checkpoints at the live end and,
    in the past, replays its log and ends the run at the live end (a stop with history_edge
    "end"; the next resume is live). `reverse_step`, `reverse_cont` and `seek_to` restore a
    checkpoint and replay with the breakpoint patches lifted. The debugger's writes are inputs:
    logged at the live end, refused (EROFS) in the past. Console input is logged as it reaches
    the UART; replayed console output is not shown again. While recording, steps take
    interrupts (a held-back IRQ could not be replayed), as QEMU's gdbstub in record/replay mode.
    With several vCPUs the history's time is the machine's (board/smp.py) and every run, steps
    and step-overs included, goes through the scheduler, never one vCPU alone: what ran out of
    turn could not be replayed in turn. `reverse_step(vcpu)` goes back one of that vCPU's
    instructions, to where its forward step would have stopped.
18. On a vCPU that offers `set_break_filters` (the emulated one), software breakpoints are
    decided in the vCPU's run: no BRK is patched; the vCPU calls the manager before the
    instruction runs (a code hook on that one address, only while the address translates to
    the breakpoint's physical address, so another virtual alias of the page or another
    address space does not hit, as with a BRK). A plain breakpoint stops there; one with
    conditions or commands stops only when they say so, and a false one (or a dprintf) lets
    the instruction run with no exit, no step-over and no retranslation. Inserting or
    removing one touches no guest memory and no page protection, and resuming from one needs
    no step-over: the run skips that one hit (its address at that instruction count), with
    nothing to lift or re-patch (a step from it skips the hook the same way); but with several
    vCPUs, or an interrupt that could come first (`interrupt_may_preempt`), it is stepped over
    as in policy 7, so the instruction still runs before anything else. Code the
    guest rewrites keeps the breakpoint (the hook belongs to the address; rewritten code is
    translated again through it). While recording, every hit stops and is evaluated on the
    ordinary stop path. `in_run_breakpoints = False` keeps plain ones as BRK patches (policies
    2-5, as on KVM, which always uses them).

The target interface
--------------------
Everything a debugger front end needs goes through this class, under its lock: registers as
ints (`read_register(name)`/`write_register(name, value)`/`registers()` for the Python API;
`read_registers(numbers)`, `write_register_at`, `write_all_registers` and `set_pc` by catalogue
number for the GDB session), memory (`read_memory`, `write_memory`, `memory_region`,
`memory_layout`), running (`check_runnable`, `step`, `cont`, `interrupt`), the vCPUs
(`vcpu_ids`, `current_vcpu`, `select_vcpu`, `vcpu_state`; `step(vcpu, others_run=)` and
`cont(vcpu)` for gdb's per-thread vCont actions), reverse execution (`start_recording`,
`reverse_step`, `reverse_cont`, `seek_to`, `record_status`), snapshots and what the target can
do (`profile`, `hw_bp_slots`, `sw_breakpoints`, `can_record`, `can_reverse`, `check_extension`). The
architecture comes from `debug.profile`, chosen once per machine.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import signal
import threading
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence, cast

from guestdbg import kvm
from guestdbg.arm.mmu import TranslationFault
from guestdbg.board.common import Board, ExitStatus
from guestdbg.debug.arch import DebugArch
from guestdbg.debug.conditions import ConditionSpec, ConditionTable, PointKey, StopView
from guestdbg.debug.history import Event, History, HistoryError
from guestdbg.debug.profile import ArchProfile, profile_for
from guestdbg.debug.regions import PhysRegion, physical_layout, region_at
from guestdbg.vmapi import Vcpu, WatchTrap

# What the back ends' translate() raises for an address the guest's tables do not map: the
# emulated vCPU's stage-1 walk (or a table outside RAM: KvmError EFAULT), KVM_TRANSLATE on x86.
TRANSLATION_FAULTS = (TranslationFault, kvm.KvmError)
ADDRESS_END = 1 << 64


class _SavedRegisters:
    """A checkpoint's register list, read as a vCPU's ONE_REG (for the register catalogue)."""

    def __init__(self, registers: list[tuple[int, int]]):
        self._values = dict(registers)

    def get_one_reg(self, reg_id: int) -> int:
        return self._values[reg_id]


class _ReplayEnd:
    """What a run returns when replaying reached the live end of the history (policy 17)."""


REPLAY_END = _ReplayEnd()
# A seek inserts checkpoints on its way, each a quarter of the remaining distance from the
# target, until one is within this many instructions of it: the reverse steps that usually
# follow then replay at most this much.
SEEK_NEAR = 4_000


def _fault_exit(run: kvm.KvmRun) -> bool:
    """run_until() stop predicate: hand guest faults (INTERNAL_ERROR) to _classify, which reports
    them as SIGSEGV/SIGILL stops, instead of letting the board raise GuestFault."""
    return run.exit_reason == kvm.KVM_EXIT_INTERNAL_ERROR


def _at_limit(result: kvm.KvmRun | ExitStatus | _ReplayEnd) -> bool:
    """Did the run stop at the instruction count it was given (EXIT_ICOUNT_LIMIT)?"""
    return isinstance(result, kvm.KvmRun) and result.exit_reason == kvm.EXIT_ICOUNT_LIMIT


class DebugError(Exception):
    """A request the manager cannot honour; `errno` says why (the stub maps it to Exx)."""

    def __init__(self, err: int, message: str):
        super().__init__(message)
        self.errno = err


class WatchKind(Enum):
    WRITE = "watch"    # Z2
    READ = "rwatch"    # Z3
    ACCESS = "awatch"  # Z4

    @property
    def access(self) -> str:
        return {WatchKind.WRITE: "write", WatchKind.READ: "read", WatchKind.ACCESS: "access"}[self]


class StopKind(Enum):
    STEP = "step"
    SWBREAK = "swbreak"
    HWBREAK = "hwbreak"
    WATCH = "watch"
    SIGNAL = "signal"
    EXITED = "exited"


_NO_ARCH_KEY: tuple[tuple[tuple[int, int], ...], tuple[tuple[int, tuple[int, int]], ...]] = ((), ())  # _apply's key: nothing armed in hardware


@dataclass(frozen=True)
class StopEvent:
    kind: StopKind
    pc: int = 0
    signal: int = signal.SIGTRAP
    watch_kind: WatchKind | None = None
    watch_addr: int | None = None
    exit_status: int | None = None
    detail: str = ""
    completed: bool = False  # a watch reported after its access (x86): no step-over on resume
    vcpu_id: int = 0         # the vCPU that stopped (KVM vcpu id; gdb's thread id - 1)
    history_edge: str | None = None  # "begin"/"end": the recorded history ran out here (policy 17)


@dataclass(frozen=True)
class DebugPoint:
    """One breakpoint or watchpoint the manager holds, as `debug_points` lists them."""

    kind: str        # "break", "hbreak", "watch", "rwatch" or "awatch"
    addr: int
    length: int      # bytes watched; the breakpoint instruction's size for breakpoints
    mechanism: str   # "software (...)", "slot N", "hw:N,M" or "page-trap"

    def describe(self) -> str:
        where = f"{self.addr:#x}" if self.kind in ("break", "hbreak") else f"{self.addr:#x}+{self.length}"
        return f"{self.kind:<7} {where}  {self.mechanism}"


@dataclass
class _SwBreakpoint:
    pa: int
    original: bytes
    vas: set[int] = field(default_factory=set)


@dataclass
class Watch:
    addr: int
    length: int
    kind: WatchKind
    pieces: list[tuple[int, int]] = field(default_factory=list)  # slot values (arm64: wvr, wcr)
    slots: list[int] = field(default_factory=list)
    trapped: bool = False  # page-trap fallback instead of slots

    @property
    def mechanism(self) -> str:
        return "page-trap" if self.trapped else "hw:" + ",".join(map(str, self.slots))

    def overlaps(self, addr: int, size: int) -> bool:
        return addr < self.addr + self.length and self.addr < addr + size


class MultiVcpuBoard(Protocol):
    """What the manager uses of a board with several vCPUs (policy 16)."""

    vcpus: Sequence[Vcpu]  # index = vCPU id
    last_vcpu_id: int      # the vCPU the last exit run_until() returned came from

    def cpu_state(self, vcpu_id: int) -> str: ...  # "running", "halted" or "off"

    def run_until(self, stop: Callable[[kvm.KvmRun], bool] = ..., *, only: int | None = None,
                  icount_limit: int | None = None, soft_limit: int | None = None,
                  time_limit: int | None = None, soft_time_limit: int | None = None) -> kvm.KvmRun | ExitStatus: ...


class GuestDebugManager:
    """Breakpoints, watchpoints, stepping and resuming for one machine's vCPUs."""

    def __init__(self, machine: Board, profile: ArchProfile | None = None):
        """`profile`: the machine's architecture profile (`debug.profile.profile_for(machine)`
        by default)."""
        self.machine = machine
        self.vm = machine.vm
        # Every vCPU, index = vCPU id (a board without `vcpus` has its one `vcpu`).
        self._vcpus: list[Any] = list(getattr(machine, "vcpus", None) or [machine.vcpu])
        self._current = 0  # gdb's Hg: registers and address translation are this vCPU's
        self._step_vcpu: int | None = None  # the vCPU a resume in progress single-steps # pragma: no mutate (only compared with ids)
        self.profile = profile or profile_for(machine)
        self.arch: DebugArch = self.profile.debug_arch(machine)
        self._registers = self.profile.registers  # the integer-level register catalogue
        self._by_name = {r.name: r.gdb_regnum for r in self._registers.REGISTERS}
        self._numbers = range(len(self._registers.REGISTERS))  # the catalogue numbers its registers 0..n-1
        # The software breakpoint instruction; b"" where the host has none (x86 without a clean
        # int3): Z0 then takes a hardware slot.
        self._brk: bytes = self.arch.sw_break or b""
        self._arch_key: tuple | None = None  # the last kvm_guest_debug_arch built, and its key # pragma: no mutate (the first _apply sets it)
        self._watches_skipped = False  # the last _apply left every watch out (see _watch_for) # pragma: no mutate (the first _apply sets it)
        self._patches_are_lifted = False  # inside _patches_lifted: memory holds the originals
        self._lifted_pa: int | None = None  # the patch a step over it has lifted: a BRK there is the guest's # pragma: no mutate (compared with ints)
        self._arch_regs: Any = None  # pragma: no mutate (the first _apply sets it)
        # Slot counts come from KVM_CAP_GUEST_DEBUG_HW_BPS/_WPS, read by the architecture
        # (on x86 a 0 there means the 4 shared debug registers).
        self.hw_bp_slots: int
        self.hw_wp_slots: int
        self.hw_bp_slots, self.hw_wp_slots = self.arch.slot_counts(self.vm)
        self._shared_slots = self.arch.shared_slots  # one register file for both (x86 DR0-DR3)?
        self._sw: dict[int, _SwBreakpoint] = {}   # pa -> patch
        self._sw_va: dict[int, int] = {}           # va -> pa
        self._hw_bp: dict[int, int] = {}           # va -> slot
        self._unmapped_bp: set[int] = set()        # the Z0s in _hw_bp because their VA was unmapped (policy 12)
        # Software breakpoints the vCPU decides in its run (policy 18): va -> pa. All of them
        # where the vCPU offers it, unless `in_run_breakpoints` is turned off: then only those
        # with conditions or commands, and plain ones are BRK patches (as on KVM), for
        # breakpoints inserted from then on.
        self._filtered: dict[int, int] = {}
        self._can_filter = all(hasattr(v, "set_break_filters") for v in self._vcpus)
        self.in_run_breakpoints = self._can_filter
        self._deciders = [functools.partial(self._decide_in_run, v) for v in range(len(self._vcpus))]
        # vCPU -> (pc, icount): resuming from a filtered breakpoint skips that one hit, no step
        self._skip_once: dict[int, tuple[int, int]] = {}
        self._decided: tuple[int, int] | None = None  # (vCPU, pc) of a stop whose conditions held in the run # pragma: no mutate (compared with tuples)
        self._filter_stop: tuple[int, int] | None = None  # (vCPU, pc) of the last stop a filter asked for # pragma: no mutate (compared with tuples)
        self.watches: list[Watch] = []
        # Conditions and commands of breakpoints and watchpoints, evaluated at their stops
        # (gdb's target-side conditions and dprintf, `condition=` in the Python API).
        self.conditions = ConditionTable()
        self._last_stop: StopEvent | None = None
        # Each vCPU's last stop and its icount then (None without one): while the vCPU has not
        # run since, resuming it steps over the breakpoint or watchpoint it stopped at.
        self._stops: dict[int, tuple[StopEvent, int | None]] = {}
        self._lock = threading.Lock()
        self._interrupt_requested = False  # policy 14: the next KVM_EXIT_INTR is a stop
        # Policy 12: how this vCPU keeps interrupts out of a single step, if it can.
        self._blockirq_control = bool(self.vm.check_extension(kvm.KVM_CAP_SET_GUEST_DEBUG2)
                                      & kvm.KVM_GUESTDBG_BLOCKIRQ)
        self._blockirq_attr = not self._blockirq_control and hasattr(self._vcpus[0], "singlestep_blocks_irq")
        self._step_irqs = False
        self._push_step_irqs()
        self._reset_image = self._take_reset_image()
        self._history: History | None = None  # while recording (policy 17)
        self.record_mem_limit = 1 << 30  # --record-mem
        self._record_options: dict[str, Any] = {}  # pragma: no mutate (start_recording sets it before it is read)
        self._console_pulls = 0  # the guest's reads of console input so far (policy 17)
        self._serving_intr = False
        self._replay_run = False  # the run in progress replays the history (inputs from the log) # pragma: no mutate (_run_to sets it)
        self._live_run = False  # a run in progress at the live end of the history (inputs logged) # pragma: no mutate (_run_to sets it)
        self._history_stale = False  # the guest ran without the manager since (a detach) # pragma: no mutate (the first recorded run clears it, at the start)

    # ------------------------------------------------------------------ what the target offers
    @property
    def sw_breakpoints(self) -> bool:
        """Can Z0 patch a software breakpoint instruction (else it takes a hardware slot)?"""
        return bool(self._brk)

    @property
    def can_reverse(self) -> bool:
        """Can the target run backwards (reverse step/continue)? While recording (policy 17):
        the GDB session offers `bs`/`bc` then."""
        return self._history is not None

    @property
    def memory_generation(self) -> int | None:
        """Changes whenever guest memory is written from outside the guest (the debugger, the
        Python API, a restore): for a front end caching what it read while the guest is
        stopped. None where the VM does not count them."""
        return getattr(self.vm, "host_write_count", None)

    def vcpu_ids(self) -> list[int]:
        """The machine's vCPUs (KVM vcpu ids); the GDB session numbers its threads from them."""
        return list(range(len(self._vcpus)))

    @property
    def vcpu(self) -> Any:
        """The current vCPU (gdb's Hg thread)."""
        return self._vcpus[self._current]

    @property
    def current_vcpu(self) -> int:
        """The current vCPU's id: the one that last stopped, or the one `select_vcpu` chose."""
        return self._current

    def select_vcpu(self, vcpu_id: int) -> None:
        """Make `vcpu_id` current (gdb's Hg): registers, memory translation and breakpoint
        addresses go through it. ESRCH for no such vCPU, and nothing changes."""
        self._check_vcpu(vcpu_id)
        with self._lock:
            self._current = vcpu_id

    def _check_vcpu(self, vcpu_id: int) -> None:
        if not 0 <= vcpu_id < len(self._vcpus):
            raise DebugError(errno.ESRCH, f"no vCPU {vcpu_id} (the machine has {len(self._vcpus)})")

    def vcpu_pc(self, vcpu_id: int) -> int:
        """Where vCPU `vcpu_id` is (`monitor info cpus`)."""
        self._check_vcpu(vcpu_id)
        with self._lock:
            return int(self._vcpus[vcpu_id].pc)

    def vcpu_state(self, vcpu_id: int) -> str:
        """"running", "halted" (in WFI) or "off" (PSCI CPU_OFF, or not started yet)."""
        self._check_vcpu(vcpu_id)
        cpu_state = getattr(self.machine, "cpu_state", None)
        if cpu_state is not None:
            return str(cpu_state(vcpu_id))
        return "halted" if getattr(self._vcpus[vcpu_id], "wfi_waiting", False) else "running"

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on the VM (`monitor info caps`)."""
        return self.vm.check_extension(cap)

    # ------------------------------------------------------------------ stepping and interrupts
    @property
    def step_irqs(self) -> bool:
        """Do single steps take interrupts (and let timers fire)? False by default (policy 12)."""
        return self._step_irqs

    @step_irqs.setter
    def step_irqs(self, on: bool) -> None:
        if not on and self._history is not None:
            raise DebugError(errno.ENOTSUP, "while recording, steps take interrupts (as QEMU's gdbstub "
                                            "in record/replay mode): an interrupt held back by a step "
                                            "could not be replayed")
        if not on and not self.can_block_step_irqs:
            raise DebugError(errno.ENOTSUP, "this vCPU cannot keep interrupts out of a single step "
                                            "(no KVM_GUESTDBG_BLOCKIRQ): steps take them")
        with self._lock:
            self._step_irqs = bool(on)
            self._push_step_irqs()

    @property
    def can_block_step_irqs(self) -> bool:
        return self._blockirq_control or self._blockirq_attr

    def step_irq_mechanism(self) -> str:
        """How steps are kept free of interrupts here (for `monitor sstep`)."""
        if self._blockirq_control:
            return "KVM_GUESTDBG_BLOCKIRQ"
        if self._blockirq_attr:
            return "the vCPU's singlestep_blocks_irq (IRQ input held, timer levels deferred)"
        return "none: this vCPU cannot block interrupts while stepping"

    def _push_step_irqs(self) -> None:
        if self._blockirq_attr:
            for vcpu in self._vcpus:
                setattr(vcpu, "singlestep_blocks_irq", not self._step_irqs)

    def _take_reset_image(self) -> bytes | None:
        """The VM as it is now, for `reset` (registers, devices, the non-zero pages of memory)."""
        from guestdbg import snapshot
        try:
            return snapshot.dumps(self.machine, compress=False)  # kept in memory: no zlib
        except snapshot.SnapshotError:  # created mid-access (an MMIO exit not yet completed)
            return None

    # ------------------------------------------------------------------ breakpoints
    def add_breakpoint(self, va: int, condition: ConditionSpec | None = None) -> str:
        """Z0: software unless the code is in read-only memory, or the architecture has no
        clean software breakpoint on this host (arch.sw_break is None): then a hardware slot.
        Returns the mechanism used. A VA not mapped yet gets a hardware slot (policy 12).
        `condition`: a callable taking a `conditions.StopView`, or `conditions.StopConditions`
        (tests OR-ed, commands), evaluated at each hit: a false one runs on without a stop. It
        replaces the breakpoint's condition (None: it always stops)."""
        mechanism = self._add_breakpoint(va)
        self.conditions.set(("break", va, 0), condition)
        if mechanism == "sw" and self._can_filter:
            self._place_filtered(va)
        return mechanism

    def _place_filtered(self, va: int) -> None:
        """Policy 18: a software breakpoint with conditions is decided in the run (no BRK
        patched); one without goes back to a BRK patch unless plain ones are in the run too."""
        in_run = self.in_run_breakpoints or ("break", va, 0) in self.conditions.active
        if in_run and va in self._sw_va:
            pa = self._sw_va.pop(va)
            patch = self._sw[pa]
            patch.vas.discard(va)
            if not patch.vas:
                self.vm.write_phys(pa, patch.original)
                del self._sw[pa]
            self._filtered[va] = pa
            self._apply()
        elif not in_run and va in self._filtered:
            del self._filtered[va]
            self._add_breakpoint(va)

    def _decide_in_run(self, vcpu_id: int, pc: int) -> bool:
        """The vCPU reached a filtered breakpoint (policy 18), in its run: stop there?"""
        self._filter_stop = (vcpu_id, pc)
        if self._history is not None or ("break", pc, 0) not in self.conditions.active:
            return True  # unconditional; or recording or replaying: the stop path evaluates (_runs_on)
        vcpu = self._vcpus[vcpu_id]
        current, self._current = self._current, vcpu_id  # memory reads translate through it
        try:
            view = StopView(pc, vcpu_id, lambda n: self._registers.read_one(vcpu, n),
                            self._read_memory, self._number, self.conditions.output)
            stop = self.conditions.should_stop([("break", pc, 0)], view)
        finally:
            self._current = current
        if stop:
            self._decided = (vcpu_id, pc)
        else:
            self._filter_stop = None
        return stop

    def _add_breakpoint(self, va: int) -> str:
        try:
            pa = self._translate(va)
        except DebugError as e:
            if not 0 <= va < ADDRESS_END:
                raise
            return self._add_unmapped_breakpoint(va, f"{va:#x} is not mapped by the guest's page tables yet ({e})")
        slot = self.vm.slot_for(pa)
        if slot is None:
            if not self._registers.translation_enabled(self.vcpu):
                # The MMU is off: the address may well be a virtual one the guest maps later.
                return self._add_unmapped_breakpoint(va, f"{va:#x} is not mapped yet (no memory there with the guest's MMU off)")
            raise DebugError(errno.EFAULT, f"no memory at {va:#x}")
        if not self._brk:
            if va in self._hw_bp:
                return "hw"
            self.add_hw_breakpoint(va)  # the arch's refusal says why (the slots are shared here)
            return "hw"
        if slot.readonly:
            self.add_hw_breakpoint(va)
            return "hw"
        if va in self._sw_va or va in self._filtered:
            return "sw"
        if self._can_filter and self.in_run_breakpoints:  # policy 18: nothing to patch
            self._filtered[va] = pa
            self._apply()
            return "sw"
        patch = self._sw.get(pa)
        if patch is None:
            if pa + len(self._brk) > slot.guest_phys_addr + slot.memory_size:
                raise DebugError(errno.EFAULT, f"no memory for a breakpoint instruction at {va:#x}: "
                                               "it would run past the end of RAM")
            patch = _SwBreakpoint(pa, self.vm.read_phys(pa, len(self._brk)))
            self.vm.write_phys(pa, self._brk)
            self._sw[pa] = patch
        patch.vas.add(va)
        self._sw_va[va] = pa
        self._apply()
        return "sw"

    def _add_unmapped_breakpoint(self, va: int, why: str) -> str:
        """A breakpoint at a VA with no translation now: a hardware slot, which matches the
        virtual address once the guest maps and runs it."""
        if va not in self._hw_bp:
            try:
                self.add_hw_breakpoint(va)
            except DebugError as e:
                if e.errno != errno.ENOSPC:
                    raise
                raise DebugError(errno.ENOSPC, f"cannot break at {va:#x}: {why}, so the breakpoint needs a "
                                               "hardware slot (it matches virtual addresses), and none is free: "
                                               f"{e}; set it once the address is mapped, or free a slot") from None
            self._unmapped_bp.add(va)  # (an hbreak already there serves it as it is)
        return "hw"

    def remove_breakpoint(self, va: int) -> None:
        if va in self._hw_bp and va not in self._sw_va and va not in self._filtered:
            return self.remove_hw_breakpoint(va)
        if self._filtered.pop(va, None) is not None:
            self.conditions.remove(("break", va, 0))
            self._apply()
            return
        pa = self._sw_va.pop(va, None)
        if pa is None:
            raise DebugError(errno.ENOENT, f"no breakpoint at {va:#x}")
        self.conditions.remove(("break", va, 0))
        patch = self._sw[pa]
        patch.vas.discard(va)
        if not patch.vas:
            self.vm.write_phys(pa, patch.original)
            del self._sw[pa]
        self._apply()

    def add_hw_breakpoint(self, va: int, condition: ConditionSpec | None = None) -> None:
        """Z1 (`condition` as for add_breakpoint)."""
        self._add_hw_breakpoint(va)
        self.conditions.set(("break", va, 0), condition)

    def _add_hw_breakpoint(self, va: int) -> None:
        if not 0 <= va < ADDRESS_END:
            raise DebugError(errno.EINVAL, f"no address {va:#x}")
        if va in self._hw_bp:
            return
        used = set(self._hw_bp.values())
        if self._shared_slots:
            used |= {s for w in self.watches for s in w.slots}
        free = [s for s in range(self.hw_bp_slots) if s not in used]
        if not free:
            raise DebugError(errno.ENOSPC, self.arch.slots_full_message(self.hw_bp_slots))
        self._hw_bp[va] = free[0]
        self._apply()

    def remove_hw_breakpoint(self, va: int) -> None:
        if self._hw_bp.pop(va, None) is None:
            raise DebugError(errno.ENOENT, f"no hardware breakpoint at {va:#x}")
        self.conditions.remove(("break", va, 0))
        self._unmapped_bp.discard(va)
        self._apply()

    # ------------------------------------------------------------------ watchpoints
    def add_watchpoint(self, addr: int, length: int, kind: WatchKind,
                       condition: ConditionSpec | None = None) -> Watch:
        """Z2-Z4 (`condition` as for add_breakpoint)."""
        watch = self._add_watchpoint(addr, length, kind)
        self.conditions.set((kind.value, addr, length), condition)
        return watch

    def _add_watchpoint(self, addr: int, length: int, kind: WatchKind) -> Watch:
        if length <= 0 or length > self.arch.max_watch or addr + length > 1 << 64:
            raise DebugError(errno.EINVAL, f"cannot watch {length} bytes at {addr:#x}")
        for w in self.watches:
            if (w.addr, w.length, w.kind) == (addr, length, kind):
                return w
        watch = Watch(addr, length, kind)
        pieces = self.arch.plan_watch(addr, length, kind.access)
        used = {s for w in self.watches for s in w.slots}
        if self._shared_slots:
            used |= set(self._hw_bp.values())
        free = [s for s in range(self.hw_wp_slots) if s not in used]
        if len(pieces) <= len(free):
            watch.pieces = pieces
            watch.slots = free[:len(pieces)]
        else:
            watch.trapped = True
        self.watches.append(watch)
        self._apply()
        return watch

    def remove_watchpoint(self, addr: int, length: int, kind: WatchKind) -> None:
        for w in self.watches:
            if (w.addr, w.length, w.kind) == (addr, length, kind):
                self.watches.remove(w)
                self.conditions.remove((kind.value, addr, length))
                self._apply()
                return
        raise DebugError(errno.ENOENT, f"no {kind.value} of {length} bytes at {addr:#x}")

    def remove_all(self) -> None:
        """Forget every breakpoint and watchpoint and restore all patched bytes."""
        for patch in self._sw.values():
            self.vm.write_phys(patch.pa, patch.original)
        self._sw.clear()
        self._sw_va.clear()
        self._filtered.clear()
        self._hw_bp.clear()
        self._unmapped_bp.clear()
        self.watches.clear()
        self.conditions.clear()
        self._apply()

    @contextlib.contextmanager
    def breakpoints_lifted(self) -> Iterator[None]:
        """Guest memory without the debugger's BRK patches for the duration (for a snapshot,
        which must hold the guest's own code, not the debugger's state)."""
        patches = list(self._sw.values())
        for patch in patches:
            self.vm.write_phys(patch.pa, patch.original)
        try:
            yield
        finally:
            for patch in patches:
                self.vm.write_phys(patch.pa, self._brk)

    def debug_points(self) -> list[DebugPoint]:
        """Every breakpoint and watchpoint held, whoever asked for it (a client that vanished
        leaves its own armed for the next one)."""
        points = [DebugPoint("break", va, len(self._brk) if self._brk else 1, self._hw_mechanism(slot))
                  if va in self._unmapped_bp else
                  DebugPoint("hbreak", va, len(self._brk) if self._brk else 1, f"slot {slot}")
                  for va, slot in sorted(self._hw_bp.items(), key=lambda kv: kv[1])]
        points += [DebugPoint("break", va, len(self._brk), f"software ({self.arch.sw_break_name} at pa {pa:#x})")
                   for va, pa in sorted(self._sw_va.items())]
        points += [DebugPoint("break", va, len(self._brk), f"software (decided in the run, pa {pa:#x})")
                   for va, pa in sorted(self._filtered.items())]
        points += [DebugPoint(w.kind.value, w.addr, w.length, w.mechanism) for w in self.watches]
        return points

    def remove_debug_point(self, point: DebugPoint) -> None:
        if point.kind == "break":
            self.remove_breakpoint(point.addr)
        elif point.kind == "hbreak":
            self.remove_hw_breakpoint(point.addr)
        else:
            self.remove_watchpoint(point.addr, point.length, WatchKind(point.kind))

    @staticmethod
    def _hw_mechanism(slot: int) -> str:
        return f"hw (VA not mapped yet): slot {slot}"

    def slots_report(self) -> list[str]:
        lines = [f"hardware breakpoints: {len(self._hw_bp)}/{self.hw_bp_slots} used; "
                 f"hardware watchpoints: {sum(len(w.slots) for w in self.watches)}/{self.hw_wp_slots} used"]
        for va, slot in sorted(self._hw_bp.items(), key=lambda kv: kv[1]):
            if va in self._unmapped_bp:
                lines.append(f"  break   {va:#x}  {self._hw_mechanism(slot)}")
            else:
                lines.append(f"  hbreak  {va:#x}  slot {slot}")
        for va, pa in sorted(self._sw_va.items()):
            lines.append(f"  break   {va:#x}  software ({self.arch.sw_break_name} at pa {pa:#x})")
        for va, pa in sorted(self._filtered.items()):
            lines.append(f"  break   {va:#x}  software (decided in the run, pa {pa:#x})")
        for w in self.watches:
            lines.append(f"  {w.kind.value:<7} {w.addr:#x}+{w.length}  {w.mechanism}")
        return lines

    # ------------------------------------------------------------------ memory and registers
    def memory_layout(self) -> list[PhysRegion]:
        """The board's physical memory: RAM, ROM and device windows, sorted (no holes)."""
        return physical_layout(self.vm)

    def memory_region(self, va: int, *, physical: bool = False) -> PhysRegion:
        """The memory around guest virtual address `va` (regions.PhysRegion: start, end, kind
        "ram"/"rom"/"mmio"/"hole", permissions), for lldb's qMemoryRegionInfo. With the guest's
        MMU off it is the board's physical layout; with it on, the pages around `va` through the
        guest's translation (at most 1 MiB per answer), unmapped pages being a hole and the
        permissions those of both the page tables and the memory behind them."""
        with self._lock:
            return self._memory_region(va, physical)

    def _memory_region(self, va: int, physical: bool = False) -> PhysRegion:
        layout = physical_layout(self.vm)
        if physical or not self._registers.translation_enabled(self.vcpu):
            return region_at(layout, va)
        page = 4096
        start = va - va % page

        def backing(addr: int) -> tuple[int | None, PhysRegion | None, str]:
            """(pa, physical region, accesses the tables allow), or Nones where unmapped."""
            try:
                pa = self._translate(addr)
            except DebugError:
                return None, None, ""
            allowed = "r"
            for access, letter in (("write", "w"), ("exec", "x")):
                try:
                    self._translate(addr, access)
                    allowed += letter
                except DebugError:
                    pass
            return pa, region_at(layout, pa), allowed

        pa0, phys0, allowed0 = backing(start)
        end = start + page
        while end < start + (1 << 20) and end < 1 << 64:
            pa, phys, allowed = backing(end)
            if (phys is None) != (phys0 is None) or allowed != allowed0:
                break
            if phys0 is not None and phys is not None and pa0 is not None and (
                    phys.kind != phys0.kind or pa != pa0 + (end - start)):
                break
            end += page
        if phys0 is None:
            return PhysRegion(start, end, "hole")
        return PhysRegion(start, end, phys0.kind, phys0.name, allowed0)

    def _translate(self, va: int, access: str = "read") -> int:
        if not 0 <= va < ADDRESS_END:
            raise DebugError(errno.EFAULT, f"no address {va:#x}")
        try:
            return self.vcpu.translate(va, access)
        except TRANSLATION_FAULTS as e:
            raise DebugError(errno.EFAULT, f"cannot translate {va:#x}: {e}") from None

    def read_memory(self, va: int, length: int, *, physical: bool = False) -> bytes:
        """Guest virtual memory as the guest's program has it: originals under breakpoints.
        All of it or DebugError (EFAULT), never part. `physical`: `va` is a guest-physical
        address (policy 15)."""
        with self._lock:
            return self._read_memory(va, length, physical)

    def _to_phys(self, addr: int, physical: bool) -> int:
        if not physical:
            return self._translate(addr)
        if not 0 <= addr < ADDRESS_END:
            raise DebugError(errno.EFAULT, f"no address {addr:#x}")
        return addr

    def _read_memory(self, va: int, length: int, physical: bool = False) -> bytes:
        out = bytearray()
        pos, end = va, va + length
        while pos < end:
            chunk = min(end - pos, 4096 - pos % 4096)
            pa = self._to_phys(pos, physical)
            try:
                out += self.vm.read_phys(pa, chunk)
            except OSError as e:
                raise DebugError(errno.EFAULT, str(e)) from None
            for patch in self._sw.values():
                lo, hi = max(pa, patch.pa), min(pa + chunk, patch.pa + len(patch.original))
                if lo < hi:
                    base = len(out) - chunk
                    out[base + lo - pa:base + hi - pa] = patch.original[lo - patch.pa:hi - patch.pa]
            pos += chunk
        return bytes(out)

    def write_memory(self, va: int, data: bytes, *, physical: bool = False) -> None:
        """Write guest memory; all of it or none (every page is checked first). Bytes under a
        software breakpoint go into its saved original, so the breakpoint stays. `physical`:
        `va` is a guest-physical address (policy 15). While recording, an input to the history
        (refused in the recorded past: policy 17)."""
        with self._lock:
            self._check_writable()
            self._write_memory(va, data, physical)

    def _write_memory(self, va: int, data: bytes, physical: bool = False) -> None:
        spans = []
        pos, end, off = va, va + len(data), 0
        while pos < end:
            chunk = min(end - pos, 4096 - pos % 4096)
            pa = self._to_phys(pos, physical)
            slot = self.vm.slot_for(pa)
            if slot is None or pa + chunk > slot.guest_phys_addr + slot.memory_size:
                raise DebugError(errno.EFAULT, f"no RAM or ROM at {pos:#x}")
            # ROM too: read-only is the guest's view (its stores are dropped); a debugger patching
            # firmware writes it, as QEMU's gdbstub does.
            spans.append((pa, data[off:off + chunk]))
            pos, off = pos + chunk, off + chunk
        for pa, part in spans:
            self._log_input("memory", (pa, part))
            buf = bytearray(part)
            # Lifted (a replay of a logged write): memory holds the guest's own bytes, and what
            # is there when the lift ends becomes each patch's original.
            for patch in () if self._patches_are_lifted else self._sw.values():
                lo, hi = max(pa, patch.pa), min(pa + len(part), patch.pa + len(patch.original))
                if lo < hi:
                    orig = bytearray(patch.original)
                    orig[lo - patch.pa:hi - patch.pa] = part[lo - pa:hi - pa]
                    patch.original = bytes(orig)
                    buf[lo - pa:hi - pa] = self._brk[lo - patch.pa:hi - patch.pa]
            self.vm.write_phys(pa, bytes(buf))

    # ------------------------------------------------------------------ debug state
    def _apply(self, *, skip_bp_at: int | None = None, skip_watches: bool = False, step: bool = False,
               prune: bool = False) -> None:
        """Push the whole debug state to every vCPU (as QEMU does after every change).
        SINGLESTEP goes only to the vCPU stepping: the current one with `step` (the step-overs,
        which run it alone), else the one a resume in progress steps (`_step_vcpu`)."""
        stepper = self._current if step else self._step_vcpu
        # What this run leaves out is not a watch hit either: the step over a store a watch
        # stopped at may still meet a breakpoint's code-store trap at that address.
        self._watches_skipped = skip_watches
        # (Called twice a resume and once a Z or z: the usual state, no hardware breakpoint, no
        # watch, no patch, takes no loop here.)
        hw_bp, watches, sw = self._hw_bp, self.watches, self._sw
        breakpoints = {va: slot for va, slot in hw_bp.items() if va != skip_bp_at} if hw_bp else {}
        watch_slots: dict[int, tuple[int, int]] = {}
        traps = []
        for w in () if skip_watches else watches:
            if w.trapped:
                traps.append(WatchTrap(w.addr, w.addr + w.length,
                                       loads=w.kind != WatchKind.WRITE, stores=w.kind != WatchKind.READ))
            watch_slots.update(zip(w.slots, w.pieces))
        # Stores over a patched breakpoint are trapped so the patch survives guest rewrites.
        for pa, patch in sw.items():
            for va in patch.vas:
                traps.append(WatchTrap(va, va + len(self._brk), loads=False, stores=True, code=True))
        key = (tuple(sorted(breakpoints.items())), tuple(sorted(watch_slots.items()))) \
            if breakpoints or watch_slots else _NO_ARCH_KEY
        if key != self._arch_key:  # stepping toggles only SINGLESTEP: keep the same registers
            self._arch_key, self._arch_regs = key, self.arch.debug_arch(breakpoints, watch_slots)
        # What every vCPU gets while anything is armed, and the stepping one in any case.
        enabled = kvm.KVM_GUESTDBG_ENABLE
        if self._brk:  # else no software breakpoints here: the guest's own go to the guest
            enabled |= kvm.KVM_GUESTDBG_USE_SW_BP
        if hw_bp or any(w.slots for w in watches):
            enabled |= kvm.KVM_GUESTDBG_USE_HW
        stepping = enabled | kvm.KVM_GUESTDBG_SINGLESTEP
        if self._blockirq_control and not self._step_irqs:
            stepping |= kvm.KVM_GUESTDBG_BLOCKIRQ
        armed = enabled if sw or self._filtered or hw_bp or watches else 0
        arch_regs, filtered, can_filter, skip_once = self._arch_regs, self._filtered, self._can_filter, self._skip_once
        for vcpu_id, vcpu in enumerate(self._vcpus):
            if can_filter:  # policy 18
                skip = (skip_bp_at, vcpu.icount) if vcpu_id == stepper and skip_bp_at is not None \
                    else skip_once.get(vcpu_id)
                # Hooks of removed breakpoints go when the guest is let run on (not for a step,
                # which gdb brackets with z0 and Z0 of the same breakpoint).
                vcpu.set_break_filters(filtered, self._deciders[vcpu_id], skip, prune=prune)
            vcpu.set_watch_traps(traps)
            vcpu.set_guest_debug(stepping if vcpu_id == stepper else armed, arch_regs)

    # ------------------------------------------------------------------ running
    def interrupt(self) -> None:
        """Stop a running cont()/step() soon; callable from any thread."""
        self._interrupt_requested = True  # before the kick: its KVM_EXIT_INTR must see it
        self._kick_all()

    def wake(self) -> None:
        """Have a running cont()/step() serve the host's services (the board's `on_intr`:
        console input) and run on, without stopping (policy 14); callable from any thread."""
        self._kick_all()

    def _kick_all(self) -> None:
        # Whichever vCPU the board's loop runs now: a kick of one that is not running only
        # makes its next run() return KVM_EXIT_INTR, which policy 14 runs on from.
        for vcpu in self._vcpus:
            vcpu.kick()

    def discard_interrupt(self) -> None:
        """Forget an interrupt() that raced with the stop it asked for (the guest stopped for
        something else first): it must not stop the next resume. Only while nothing runs."""
        self._interrupt_requested = False

    def step(self, vcpu: int | None = None, *, others_run: bool = False) -> StopEvent:
        """Execute exactly one guest instruction on `vcpu` (the current one by default),
        stepping off any breakpoint at its PC. The other vCPUs stay stopped (gdb's `vCont;s:N`,
        scheduler-locking), or with `others_run` run meanwhile (`vCont;s:N;c`): then a stop on
        one of them may come first, and is the one returned."""
        return self._resume(step=True, vcpu=vcpu, alone=not others_run)

    def cont(self, vcpu: int | None = None) -> StopEvent:
        """Run until a breakpoint, watchpoint, signal or the guest's end: every vCPU, or only
        `vcpu` (gdb's `vCont;c:N`, scheduler-locking)."""
        return self._resume(step=False, vcpu=vcpu, alone=vcpu is not None)

    @property
    def exited(self) -> bool:
        """Has the guest ended (until a snapshot is restored)?"""
        return self._last_stop is not None and self._last_stop.kind is StopKind.EXITED

    def check_runnable(self, what: str = "continue", vcpu: int | None = None) -> None:
        """DebugError (ESRCH) if the guest has exited: there is nothing left to run; with
        `vcpu` (one to step, or to run alone), also if there is no such vCPU or it is off."""
        last = self._last_stop
        if last is not None and last.kind is StopKind.EXITED:
            raise DebugError(errno.ESRCH, f"the guest has exited (status {last.exit_status}, "
                                          f"{last.detail or 'exit'}): nothing to {what}; "
                                          "restore a snapshot to run it again")
        if vcpu is not None:
            self._check_vcpu(vcpu)
            if self.vcpu_state(vcpu) == "off":
                # It would never execute anything (PSCI CPU_ON starts it; with one vCPU, nothing).
                raise DebugError(errno.ESRCH, f"CPU#{vcpu} is off (not started, or PSCI CPU_OFF): nothing to {what}")

    def _resume(self, step: bool, vcpu: int | None = None, alone: bool = True) -> StopEvent:
        with self._lock:
            self._decided = self._filter_stop = None  # pragma: no mutate (compared with tuples)
            self._skip_once.clear()
            target = self._current if vcpu is None else vcpu
            self.check_runnable("step" if step else "continue", vcpu=target if step or alone else None)
            runners = [target] if alone else [target] + [v for v in range(len(self._vcpus)) if v != target]
            for v in runners:
                self._current = v
                last = self._pending_step_over(v)
                stopped_at = self._stops.pop(v, None)  # it runs now: what it stopped at is behind it
                if last is None:
                    continue
                if (last.kind is StopKind.SWBREAK and last.pc in self._filtered and last.pc not in self._hw_bp
                        and not (step and v == target) and stopped_at is not None and stopped_at[1] is not None
                        and len(self._vcpus) == 1 and not self.vcpu.interrupt_may_preempt()):
                    # Policy 18: nothing to lift; the run just skips this one hit. (Not when an
                    # interrupt could come first, nor with other vCPUs to run first: a step-over
                    # runs the instruction before anything else, with interrupts held.)
                    self._skip_once[v] = (last.pc, stopped_at[1])
                    continue
                event = self._step_over(last.pc, last=last)
                if event is not None or (step and v == target):
                    return self._stopped(event or StopEvent(StopKind.STEP, self.vcpu.pc))
            self._current = target
            self._step_vcpu = target if step else None
            try:
                self._apply(prune=not step)  # pragma: no mutate (prune: only speed)
                while True:
                    result = self._run(target if alone else None)
                    event = self._classify(result, stepping=step and self._current == target)
                    while event is not None and self._runs_on(event, stepping=step and self._current == target):
                        # Its conditions are false (or its commands ran: dprintf): step over it,
                        # as a resume from it would, and run on with no stop reported.
                        last = self._pending_step_over(self._stopped(event).vcpu_id)
                        self._stops.pop(self._current, None)
                        event = self._step_over(last.pc, last=last) if last is not None else None
                    if event is not None:
                        return self._stopped(event)
            finally:
                self._step_vcpu = None  # pragma: no mutate (compared with ids)
                self._skip_once.clear()
                self._apply()

    def _runs_on(self, event: StopEvent, stepping: bool) -> bool:
        """Is `event` a breakpoint or watchpoint stop whose conditions say not to report it?
        Never for the vCPU a step is for: its stop is the step's."""
        if stepping or not self.conditions:
            return False
        decided, self._decided = self._decided, None
        if decided == (self._current, event.pc) and event.kind is StopKind.SWBREAK:
            return False  # evaluated (and counted) in the run already (policy 18)
        if event.kind in (StopKind.SWBREAK, StopKind.HWBREAK):
            keys: list[PointKey] = [("break", event.pc, 0)]
        elif event.kind is StopKind.WATCH and event.watch_addr is not None and event.watch_kind is not None:
            # Every watch the access may have hit: a store hits watch and awatch alike.
            kinds = set(WatchKind) if event.watch_kind is WatchKind.ACCESS else {event.watch_kind, WatchKind.ACCESS}
            keys = [(w.kind.value, w.addr, w.length) for w in self.watches
                    if w.kind in kinds and w.overlaps(event.watch_addr, 1)]
        else:
            return False
        view = StopView(event.pc, self._current, lambda n: self._registers.read_one(self.vcpu, n),
                        self._read_memory, self._number, self.conditions.output)
        return not self.conditions.should_stop(keys, view)

    def _pending_step_over(self, vcpu_id: int) -> StopEvent | None:
        """The stop `vcpu_id` must be stepped over before it runs: a breakpoint or a watched
        access it stopped at and has not run from since. Only where it stopped, as gdb itself
        does: a PC the debugger moved (a jump, P/G) must meet the breakpoint there, as on
        hardware."""
        record = self._stops.get(vcpu_id)
        if record is None:
            return None
        last, icount = record
        vcpu = self._vcpus[vcpu_id]
        if vcpu.pc != last.pc or getattr(vcpu, "icount", None) != icount:
            return None
        pc = last.pc
        if pc in self._sw_va or pc in self._filtered or pc in self._hw_bp or (last.kind is StopKind.WATCH and not last.completed):
            return last
        return None

    def _run(self, only: int | None) -> kvm.KvmRun | ExitStatus | _ReplayEnd:
        """The board's run_until (all vCPUs, or `only` one); the vCPU the exit came from
        becomes current. While recording, through the history (policy 17)."""
        if self._history is not None:
            return self._run_recorded()
        if len(self._vcpus) == 1:
            return self.machine.run_until(_fault_exit)
        board = cast(MultiVcpuBoard, self.machine)
        try:
            return board.run_until(_fault_exit, only=only)
        finally:  # a GuestFault the board raises is that vCPU's too
            self._current = board.last_vcpu_id

    def _stopped(self, event: StopEvent) -> StopEvent:
        if event.vcpu_id != self._current:  # (dataclasses.replace costs ~10 us: only if it changes)
            event = replace(event, vcpu_id=self._current)
        self._last_stop = event
        self._stops[self._current] = (event, getattr(self.vcpu, "icount", None))
        return event

    def _patch_at(self, va: int) -> _SwBreakpoint | None:
        """The software breakpoint patched at the physical address behind `va`, if any."""
        try:
            return self._sw.get(self._translate(va))
        except DebugError:
            return None

    def _step_over(self, pc: int, patch: _SwBreakpoint | None = None, last: StopEvent | None = None) -> StopEvent | None:
        """One instruction of the current vCPU, alone, with the breakpoint at PC (or the watch
        `last` stopped at) out of the way."""
        if patch is None:
            pa = self._sw_va.get(pc)
            patch = self._sw.get(pa) if pa is not None else None
        if patch is not None:
            self.vm.write_phys(patch.pa, patch.original)
            self._lifted_pa = patch.pa
        # After a watch hit, step the access with every watch out of the way: one access can
        # hit several watches (an unaligned store over two ranges), and skipping only the one
        # reported would re-stop on the same instruction forever.
        skip_watches = last is not None and last.kind is StopKind.WATCH
        try:
            self._apply(skip_bp_at=pc, skip_watches=skip_watches, step=True)
            while True:
                result = self._run(self._current)
                event = self._classify(result, stepping=True)
                if event is not None:
                    return None if event.kind is StopKind.STEP else event
        finally:
            self._lifted_pa = None  # (one runs inside another only from one that lifted nothing) # pragma: no mutate (compared with ints)
            if patch is not None and patch.pa in self._sw:
                self._repatch(patch)
            self._apply()

    def _repatch(self, patch: _SwBreakpoint) -> None:
        current = self.vm.read_phys(patch.pa, len(self._brk))
        if current != self._brk:
            patch.original = current  # the guest (or the step) rewrote it: keep its new code
            self.vm.write_phys(patch.pa, self._brk)

    def _classify(self, result, stepping: bool) -> StopEvent | None:
        """Turn one exit into a stop, or None for exits handled here (and run on)."""
        pc = self.vcpu.pc
        if isinstance(result, _ReplayEnd):
            return StopEvent(StopKind.SIGNAL, pc, detail="the end of the recorded history", history_edge="end")
        if isinstance(result, ExitStatus):
            return StopEvent(StopKind.EXITED, pc, exit_status=result.status, detail=result.how)
        if result.exit_reason == kvm.KVM_EXIT_INTR:
            if not self._interrupt_requested:
                # A kick for the host's services (policy 14): serve them and run on; a step
                # goes on to its instruction.
                self._serve_host()
                return None
            self._interrupt_requested = False
            return StopEvent(StopKind.SIGNAL, pc, signal=signal.SIGINT)
        if result.exit_reason == kvm.KVM_EXIT_INTERNAL_ERROR:
            return self._fault_event(result, pc)
        raw = self.arch.classify(result)
        if raw.kind == "step":
            return StopEvent(StopKind.STEP, pc)
        if raw.kind == "hwbreak":
            # A Z0 that took a slot because its VA was unmapped is reported as the debugger's
            # software breakpoint (policy 12).
            return StopEvent(StopKind.SWBREAK if pc in self._unmapped_bp else StopKind.HWBREAK, pc)
        filtered = pc in self._filtered and self._filter_stop == (self._current, pc)  # not the guest's own BRK
        # With its patch lifted (the step over it), a BRK at a breakpoint is the guest's own.
        ours = pc in self._sw_va and self._sw_va[pc] != self._lifted_pa
        if raw.kind == "swbreak" and (ours or filtered):
            self._filter_stop = None  # pragma: no mutate (compared with tuples)
            return StopEvent(StopKind.SWBREAK, pc)
        alias_patch = self._patch_at(pc) if raw.kind == "swbreak" else None
        if alias_patch is not None and alias_patch.pa != self._lifted_pa:
            # Our BRK, reached through another virtual address of the patched page (a kernel's
            # linear map): a breakpoint on one VA does not fire at another, as on QEMU.
            event = self._step_over(pc, patch=alias_patch)
            if event is not None:
                return event
            return StopEvent(StopKind.STEP, self.vcpu.pc) if stepping else None
        if raw.kind == "swbreak":
            # Not ours: the guest's own breakpoint instruction goes to the guest, as without a debugger.
            self.arch.reinject(self.vcpu, result, pc)
            return StopEvent(StopKind.STEP, self.vcpu.pc) if stepping else None
        if raw.kind == "watch":
            far, is_write = raw.addr, raw.is_write
            watch = self._watch_for(far, is_write)
            if watch is not None:
                return StopEvent(StopKind.WATCH, pc, watch_kind=watch.kind,
                                 watch_addr=max(watch.addr, min(far, watch.addr + watch.length - 1)),
                                 completed=raw.completed)
            if self._code_store(far) and raw.completed:
                # The store over a patched instruction already happened: re-arm over the new code.
                for patch in list(self._sw.values()):
                    self._repatch(patch)
                return StopEvent(StopKind.STEP, pc) if stepping else None
            if self._code_store(far):
                return self._complete_code_store(pc, stepping)
            return StopEvent(StopKind.SIGNAL, pc, detail=f"unexpected watchpoint exit at {far:#x}")
        return StopEvent(StopKind.SIGNAL, pc, detail=f"unexpected {raw.detail or raw.kind}")

    def _watch_for(self, far: int, is_write: bool) -> Watch | None:
        if self._watches_skipped:
            return None
        candidates = [w for w in self.watches if w.kind is WatchKind.ACCESS or (w.kind is WatchKind.WRITE) == is_write]
        for w in candidates:
            if w.overlaps(far, 1):
                return w
        # FAR is an address of the access, which may start before the watched bytes.
        near = [w for w in candidates if w.overlaps(far, 64)]
        return min(near, key=lambda w: w.addr - far) if near else None

    def _code_store(self, far: int) -> bool:
        return any(va - 16 < far < va + len(self._brk) for va in self._sw_va)

    def _complete_code_store(self, pc: int, stepping: bool) -> StopEvent | None:
        """The guest is storing over a patched instruction: let it, then re-arm over the new code."""
        patches = list(self._sw.values())
        for patch in patches:
            self.vm.write_phys(patch.pa, patch.original)
        saved_sw, self._sw = self._sw, {}
        try:
            # A watch this run left out (the step over a store it stopped at) stays out.
            self._apply(skip_bp_at=pc, skip_watches=self._watches_skipped, step=True)
            result = self._run(self._current)
        finally:
            self._sw = saved_sw
            for patch in patches:
                self._repatch(patch)
            self._apply()
        event = self._classify(result, stepping=True)
        if event is not None and event.kind is not StopKind.STEP:
            return event
        return StopEvent(StopKind.STEP, self.vcpu.pc) if stepping else None

    def _fault_event(self, result: kvm.KvmRun, pc: int) -> StopEvent:
        internal = result.internal
        assert internal is not None  # KVM_EXIT_INTERNAL_ERROR carries one
        message = internal.message
        sig = getattr(internal, "signal", None) or signal.SIGSEGV  # a board may name it
        if "undefined" in message or "EC 0x00" in message:
            sig = signal.SIGILL
        return StopEvent(StopKind.SIGNAL, pc, signal=sig, detail=message)

    # ------------------------------------------------------------------ reverse execution
    @property
    def recording(self) -> bool:
        return self._history is not None

    @property
    def can_record(self) -> bool:
        """Can this target keep a replayable history (the emulated back end)?"""
        return getattr(self.vm, "write_phys_pages", None) is not None

    def start_recording(self, *, mem_limit: int | None = None, interval: int | None = None) -> None:
        """Keep the run's history from now on (policy 17), so that it can run backwards, in
        `mem_limit` bytes (`record_mem_limit` by default: --record-mem). ENOTSUP where it
        cannot be replayed (the x86 back end). The host's clock is paced meanwhile
        (board/clock.py): its catch-ups are logged as inputs."""
        mem_limit = self.record_mem_limit if mem_limit is None else mem_limit
        with self._lock:
            if self._history is not None:
                return
            if not self.can_record:
                raise DebugError(errno.ENOTSUP, "reverse execution needs the emulated back end")
            clock = self._host_clock()
            if clock is not None:
                clock.record_host_time(self._log_clock)
            try:
                self._history = History(self.machine, mem_limit=mem_limit, interval=interval,
                                        guest_bytes=self._guest_bytes, extra_state=self._recorder_state,
                                        restore_extra=self._restore_recorder_state)
            except HistoryError as e:
                if clock is not None:
                    clock.record_host_time(None)
                raise DebugError(errno.EINVAL, str(e)) from None  # e.g. --record-mem too small
            self._record_options = {"step_irqs": self._step_irqs}
            self._step_irqs = True
            self._push_step_irqs()

    def stop_recording(self) -> None:
        """Forget the history. In the past, the run goes on live from here (the rest of the
        recorded run is dropped)."""
        with self._lock:
            if self._history is None:
                return
            self._history.close()
            self._history = None
            clock = self._host_clock()
            if clock is not None:
                clock.record_host_time(None)
            if self.can_block_step_irqs:
                self._step_irqs = self._record_options.get("step_irqs", False)
                self._push_step_irqs()

    def record_status(self) -> dict[str, Any] | None:
        """The history's extent and cost (`monitor record status`), None when not recording."""
        with self._lock:
            h = self._current_history()
            return None if h is None else h.status()

    def _restart_history(self) -> None:
        """A snapshot load or reset starts a new history (what came before cannot be replayed
        into the loaded state)."""
        old = self._history
        if old is not None:
            old.close()
            self._history = History(self.machine, mem_limit=old.mem_limit, interval=old._fixed_interval,
                                    guest_bytes=self._guest_bytes, extra_state=self._recorder_state,
                                    restore_extra=self._restore_recorder_state)

    def _host_clock(self) -> Any:
        """The board's clock if it follows the host's (`--clock host`), else None."""
        clock = getattr(self.machine, "clock", None)
        return clock if getattr(clock, "mode", None) == "host" else None

    def _log_clock(self, counter_offset: int) -> None:
        """The paced host clock caught up (board/clock.py), in a live run: an input."""
        h = self._history
        if h is not None and self._live_run:
            h.log("clock", counter_offset)

    def _guest_bytes(self) -> list[tuple[int, bytes]]:
        """The guest's own bytes under the breakpoint patches (what a checkpoint holds)."""
        return [(patch.pa, patch.original) for patch in self._sw.values()]

    def _recorder_state(self) -> dict[str, Any]:
        # irq_due: where an interrupt raised inside a block is due (not in ONE_REG; see vcpu.py)
        return {"console_pulls": self._console_pulls, "irq_due": [getattr(v, "irq_due", 0) for v in self._vcpus]}

    def _restore_recorder_state(self, state: dict[str, Any]) -> None:
        self._console_pulls = int(state.get("console_pulls", 0))
        for vcpu, due in zip(self._vcpus, state.get("irq_due", ())):
            restore = getattr(vcpu, "restore_irq_due", None)
            if restore is None:
                vcpu.irq_due = due
            else:
                restore(due)

    def _check_writable(self) -> None:
        """The debugger's writes are inputs: logged at the live end, refused in the past."""
        h = self._history
        if h is not None and h.replaying:
            raise DebugError(errno.EROFS, f"the machine is in its recorded past (instruction {h.now} of "
                                          f"{h.end}): a write would change what was recorded; run forward "
                                          "to the end of the history first, or stop recording")

    def _log_input(self, kind: str, data: Any) -> None:
        if self._history is not None and not self._history.replaying:
            self._history.log(kind, data)

    def _serve_host(self) -> None:
        """The board's on_intr (console input) after a kick; while recording, what the console
        delivers is logged with the instruction count it arrived at."""
        if self.machine.on_intr is None:
            return
        self._wrap_console()
        self._serving_intr = True
        try:
            self.machine.on_intr()
        finally:
            self._serving_intr = False

    def _wrap_console(self) -> None:
        """While recording: the UART's input source logged (live) or answered from the log
        (replaying). Its pulls come from the guest's register reads (deterministic: numbered)
        or from a host kick (`_serve_host`: logged at its instruction count)."""
        uart = getattr(self.machine, "uart", None)
        if uart is None:
            return
        console = uart.console
        if not getattr(console, "recorded", False):
            def recorded_console(data: bytes) -> None:
                if not self._replay_run:  # replayed output was shown when it was recorded
                    console(data)
            recorded_console.recorded = True  # type: ignore[attr-defined]
            uart.console = recorded_console
        source = getattr(uart, "rx_source", None)
        if source is None or getattr(source, "recorded", False):
            return

        def recorded_source(room: int) -> bytes:
            h = self._history
            if h is None:
                return bytes(source(room))
            if self._serving_intr:
                if h.replaying:
                    return b""  # live input waits for the live end; the log gives the past's
                data = bytes(source(room))
                if data:
                    h.log("console", data)
                return data
            # Numbered, not timed: an MMIO access happens inside a slice, where the instruction
            # count is not exact, but the guest's n-th pull is the n-th in every replay.
            self._console_pulls += 1
            if self._replay_run:
                return h.console_pulls.get(self._console_pulls, b"")
            data = bytes(source(room))
            if data:
                h.console_pulls[self._console_pulls] = data
            return data
        recorded_source.recorded = True  # type: ignore[attr-defined]
        uart.rx_source = recorded_source

    def _apply_event(self, kind: str, data: Any) -> None:
        """Give a logged input again, while replaying."""
        if kind == "memory":
            pa, content = data
            self._write_memory(pa, content, physical=True)
        elif kind == "pc":
            vcpu_id, pc = data
            self._registers.set_pc(self._vcpus[vcpu_id], pc)
        elif kind == "register":
            vcpu_id, number, value = data
            self._registers.write(self._vcpus[vcpu_id], number, value)
        elif kind == "registers":
            vcpu_id, values = data
            self._registers.write_all(self._vcpus[vcpu_id], values)
        elif kind == "console":
            getattr(self.machine, "uart").feed(data)
        elif kind == "clock":  # the paced host clock's counter offset (board/clock.py)
            getattr(self.machine, "clock").vcpu.counter_offset = data
        # "split": the recorded run stopped there; the replay only stops there too

    def _current_history(self) -> History | None:
        """The history, started again if the guest ran without the manager since it was last
        used (after a detach, or before the first debugger attached to `--record` without
        --wait): what ran then was not recorded, so nothing before it can be replayed."""
        h = self._history
        if h is not None and (self._history_stale or h.now > h.end):
            self._history_stale = False
            self._restart_history()
            h = self._history
        return h

    def _run_recorded(self) -> kvm.KvmRun | ExitStatus | _ReplayEnd:
        """One run through the history: at the live end, stopping to take checkpoints; in the
        past, replaying the log, up to the live end at most (policy 17)."""
        h = self._current_history()
        assert h is not None
        self._wrap_console()
        while True:
            if h.replaying:
                for entry in h.due_events():
                    self._apply_event(entry.kind, entry.data)
                if not h.replaying:
                    return h.ended or REPLAY_END
                result = self._run_to(h.next_stop())
                if _at_limit(result):
                    if not h.replaying:
                        for entry in h.due_events():
                            self._apply_event(entry.kind, entry.data)
                        return h.ended or REPLAY_END
                    continue
                if not h.replaying:  # a step onto the live end: the writes logged there too
                    for entry in h.due_events():
                        self._apply_event(entry.kind, entry.data)
                    h.at_live_end()
                return result
            if h.checkpoint_due():
                h.take()
            start = h.now
            result = self._run_to(h.next_stop(), soft=True)
            if h.now == start and _at_limit(result):
                # A block longer than what is left of the interval: its boundary at or before the
                # limit is where the run already is. Stop exactly instead, or no run ever moves.
                result = self._run_to(h.next_stop())
            h.at_live_end()
            if _at_limit(result):
                h.take(soft=True)  # where the soft stop landed, short of the interval perhaps
                continue
            # Every other stop of the recorded run splits its translation block there: a
            # replay stops there too ("split"), so that it splits the same blocks.
            h.log("split")
            if isinstance(result, ExitStatus):
                h.ended = result  # replay reaching the end ends the same way
            return result

    def _run_to(self, icount_limit: int, *, soft: bool = False) -> kvm.KvmRun | ExitStatus:
        """The board's run_until, stopping at instruction count `icount_limit` at the latest:
        exactly, or (`soft`) at the block boundary at or before it. Where the history may stop
        as it likes (a checkpoint), it stops softly: a stop inside a translation block moves
        where an interrupt an inline device raised in that block is taken (at the stop rather
        than at the block's end), and a replay must split blocks only where the recorded run did."""
        self._wrap_console()
        h = self._history
        # Decided here, between runs, where the instruction count is exact (inside a slice it
        # runs ahead to the end of the block), and it holds for the whole run: a replay's
        # limit is the live end at the latest.
        self._replay_run = h is not None and h.now < h.end
        self._live_run = h is not None and not self._replay_run
        clock = self._host_clock()
        if clock is not None:
            clock.replaying(self._replay_run)
        if h is not None:
            h.begin_run()
        board = cast(MultiVcpuBoard, self.machine)
        try:
            # In the history's time: the machine's (every vCPU's instructions; vCPU 0's alone).
            if soft:
                return board.run_until(_fault_exit, soft_time_limit=icount_limit)
            return board.run_until(_fault_exit, time_limit=icount_limit)
        finally:
            self._replay_run = self._live_run = False
            if clock is not None:
                clock.replaying(False)
            if len(self._vcpus) > 1:  # the vCPU the exit came from is current
                self._current = board.last_vcpu_id

    def _history_or_error(self) -> History:
        h = self._current_history()
        if h is None:
            raise DebugError(errno.ENOTSUP, "not recording: reverse execution needs `monitor record on` "
                                            "or `guestdbg run --record`")
        return h

    def reverse_step(self, vcpu: int | None = None) -> StopEvent:
        """Back one instruction of `vcpu` (the current one; gdb's `bs`): the machine as it was
        before that vCPU's last instruction retired (with several vCPUs, the others as they were
        then). At the history's start: a stop there with history_edge "begin"."""
        with self._lock:
            h = self._history_or_error()
            if vcpu is not None:
                self._check_vcpu(vcpu)
                self._current = vcpu
            count = getattr(self.vcpu, "icount", 0)
            if len(self._vcpus) == 1 and count > h.begin:
                return self._stopped(self._reverse_step_one(h, count))
            target = h.time_after(self._current, count - 1) if count > 0 else None
            if target is None or target < h.begin or h.now <= h.begin:
                return self._stopped(StopEvent(StopKind.SIGNAL, self.vcpu.pc, history_edge="begin"))
            current = self._current
            self._seek(target)
            self._current = current
            return self._stopped(StopEvent(StopKind.STEP, self.vcpu.pc))

    def _reverse_step_one(self, h: History, count: int) -> StopEvent:
        """`reverse_step` with one vCPU, exceptions taken included. An interrupt (or a fault)
        is entered without retiring an instruction, so two states share an instruction count:
        the one that arrived there, and the one at the vector, as a forward step after the
        entry stops. Going back from the vector lands on the arrival; going back over an
        instruction whose count saw an entry lands on the vector, where that instruction ran."""
        pc = self.vcpu.pc
        at_vector = getattr(self.arch, "at_exception_vector", None)
        if at_vector is not None and at_vector(self.vcpu, pc):
            self._seek(count, fresh=True)  # the arrival at `count`
            if self.vcpu.pc != pc:
                return StopEvent(StopKind.STEP, self.vcpu.pc)  # it was the entry: back to before it
        self._seek(count - 1)
        if not self._may_enter_an_exception(h):
            return StopEvent(StopKind.STEP, self.vcpu.pc)
        if self._entered_by_a_step(count - 1):
            return StopEvent(StopKind.STEP, self.vcpu.pc)
        self._seek(count - 1, fresh=True)
        return StopEvent(StopKind.STEP, self.vcpu.pc)

    def _may_enter_an_exception(self, h: History) -> bool:
        """Could a step from here enter an exception before retiring an instruction? An
        interrupt (the IRQ input or a timer; the host clock's catch-up the recorded run made
        here when it resumed), or a fault or trap of the instruction at PC (any but data
        processing and plain branches, or one the debugger cannot read)."""
        never = getattr(self.arch, "never_takes_an_exception", None)
        if never is None or h.holds_back_events or getattr(self.vcpu, "interrupt_may_preempt", lambda: True)():
            return True
        try:
            return not never(int.from_bytes(self._read_memory(self.vcpu.pc, 4), "little"))
        except DebugError:
            return True

    def _entered_by_a_step(self, count: int) -> bool:
        """In the past, at `count`: one single step, replayed with nothing armed. True if it
        took an exception without retiring an instruction (the machine is at the vector),
        False if it retired one (the machine is past it: the caller seeks back)."""
        h = self._history
        assert h is not None and len(self._vcpus) == 1
        vcpu = self.vcpu
        pc = vcpu.pc
        with self._patches_lifted():
            self._disarm(kvm.KVM_GUESTDBG_ENABLE | kvm.KVM_GUESTDBG_SINGLESTEP)
            for entry in h.due_events():
                self._apply_event(entry.kind, entry.data)
            self._run_to(count + 1)
        self._apply()
        return vcpu.icount == count and vcpu.pc != pc

    def seek_to(self, icount: int) -> StopEvent:
        """The machine as it was at instruction count `icount` (the machine's: every vCPU's
        instructions, with several), anywhere in the history (`monitor record goto`; the Python
        API's way to any point of the run)."""
        with self._lock:
            h = self._history_or_error()
            if not h.begin <= icount <= h.end:
                raise DebugError(errno.EINVAL, f"instruction {icount} is outside the history ({h.begin}..{h.end})")
            self._seek(icount)
            return self._stopped(StopEvent(StopKind.SIGNAL, self.vcpu.pc, detail=f"at instruction {icount}"))

    def reverse_cont(self) -> StopEvent:
        """Back to the most recent breakpoint hit, watchpoint trigger or guest fault before now
        (gdb's `bc`), or to the history's start (history_edge "begin"). Each checkpoint interval,
        newest first, is replayed with everything armed, its hits noted; the machine is then put
        where the last one happened."""
        with self._lock:
            h = self._history_or_error()
            hi = h.now
            while hi > h.begin:
                index = h.index_at_or_before(hi - 1)
                lo = h.checkpoints[index].time
                if self._nothing_to_find(h, index, hi):
                    hi = lo
                    continue
                with self._patches_lifted():
                    h.restore(index)
                hits, interrupted = self._replay_collecting(hi)
                # At the history's start nothing is known of what came before: a breakpoint
                # there is the start, reported as such (replaylog:begin).
                hits = [hit for hit in hits if hit[0] > h.begin]
                if hits:
                    when, who, event, before_writes = hits[-1]
                    self._seek(when, before_writes=before_writes)
                    self._current = who
                    if self.vcpu.pc != event.pc and len(self._vcpus) == 1:
                        # An exception entered at the hit's count retires no instruction, so two
                        # states share it: the seek lands on the arrival, and a hit at the
                        # vector is one step (nothing armed) further. (If that step retired
                        # an instruction instead, back to the arrival: a seek to where the
                        # machine already is changes nothing.)
                        if not self._entered_by_a_step(when):
                            self._seek(when)
                    return self._stopped(replace(event, pc=self.vcpu.pc))
                if interrupted is not None:
                    return self._stopped(interrupted)
                hi = lo
            self._seek(h.begin)
            return self._stopped(StopEvent(StopKind.SIGNAL, self.vcpu.pc, history_edge="begin"))

    def _nothing_to_find(self, h: History, index: int, until: int) -> bool:
        """Can reverse_cont skip replaying from checkpoint `index` to `until`? Only when all it
        looks for is stores to watched memory (no breakpoints, no read or access watches), the
        MMU is off (watched addresses are physical) now and at both ends, and the dirty log says
        no store touched a watched page in between."""
        if self._sw or self._filtered or self._hw_bp or not self.watches or any(w.kind is not WatchKind.WRITE for w in self.watches):
            return False
        ends = [h.checkpoints[index]] + ([h.checkpoints[index + 1]] if index + 1 < len(h.checkpoints) else [])
        if any(self._registers.translation_enabled(v) for v in self._vcpus) or any(
                self._registers.translation_enabled(_SavedRegisters(r)) for c in ends for r in c.registers):
            return False
        written = h.written_in(index, until)
        if written is None:
            return False
        for w in self.watches:
            for page in range(w.addr >> 12, (w.addr + w.length - 1 >> 12) + 1):
                slot = self.vm.slot_for(page << 12)
                if slot is None or (slot.slot, page - (slot.guest_phys_addr >> 12)) in written:
                    return False
        return True

    def _replay_collecting(self, until: int) -> tuple[list[tuple[int, int, StopEvent, bool]], StopEvent | None]:
        """Replay to instruction count `until` with every breakpoint and watchpoint armed: the
        (instruction count, vCPU, stop, before the debugger's writes there) of each hit,
        stepping over each. A Ctrl-C ends it early. Where the recorded run stopped and the
        debugger then wrote, the stop there comes first, then the writes: a jump past a fault or
        off a breakpoint hides neither."""
        h = self._history
        assert h is not None
        hits: list[tuple[int, int, StopEvent, bool]] = []
        self._apply()
        while h.now < until:
            due, held = h.after_the_stop(h.due_events())
            for entry in due:
                self._apply_event(entry.kind, entry.data)
            when = h.now
            if held:
                event = self._stop_before_retiring(held)
                if event is None:  # nothing here stops it: back, and on with the writes
                    self._seek(when)
                    continue
            else:
                result = self._run_to(min(until, h.next_stop()))
                if _at_limit(result):
                    continue
                when = h.now
                event = self._classify(result, stepping=False)
                if event is None:
                    continue
            if event.kind is StopKind.SIGNAL and event.signal == signal.SIGINT:
                h.hold_back(held)  # for the run on from here (if reverse_cont stops here)
                return hits, event
            if event.kind is StopKind.EXITED:
                break
            if not self._false_in_replay(event):
                hits.append((when, self._current, event, bool(held)))
            elif not held:
                stepped = self._step_over(event.pc, last=event)
                if stepped is None:
                    continue
                when, event = h.now, stepped
                hits.append((when, self._current, event, False))
            if held:
                for entry in held:
                    self._apply_event(entry.kind, entry.data)
                if self.vcpu.pc != event.pc or event.kind is StopKind.SIGNAL:
                    continue  # the debugger moved on (or mended what faulted): the run goes on
            if event.kind in (StopKind.SWBREAK, StopKind.HWBREAK, StopKind.WATCH):
                stepped = self._step_over(event.pc, last=event)
                while stepped is not None and h.now < until:  # a second stop inside the step
                    hits.append((h.now, self._current, stepped, False))
                    stepped = self._step_over(stepped.pc, last=stepped) if stepped.kind in (
                        StopKind.SWBREAK, StopKind.HWBREAK, StopKind.WATCH) else None
            else:
                break  # a fault: nothing runs past it
        return hits, None

    def _stop_before_retiring(self, writes: list[Event]) -> StopEvent | None:
        """The machine run on by one instruction, everything armed: the stop it makes before
        retiring it (a breakpoint at a PC, a watched access, a fault; a run meets an unhandled
        fault at its empty vector, a single step would not), on the vCPU the debugger's `writes`
        went to; or None: an instruction retired (perhaps in an exception's vector), or another
        vCPU stopped (it ran after the writes: the recorded run had stopped for the writer)."""
        h = self._history
        assert h is not None
        result = self._run_to(h.now + 1)
        if _at_limit(result):
            return None
        event = self._classify(result, stepping=False)
        if event is None or (event.kind is StopKind.SIGNAL and event.signal == signal.SIGINT):
            return event
        writers = {e.data[0] for e in writes if e.kind != "memory"}  # their vCPU ids
        return event if not writers or self._current in writers else None

    def _false_in_replay(self, event: StopEvent) -> bool:
        """A breakpoint or watchpoint hit whose conditions are false is no hit for reverse_cont
        either; its commands (dprintf) printed when the run was recorded, not again."""
        if not self.conditions:
            return False
        output, self.conditions.output = self.conditions.output, lambda text: None
        try:
            return self._runs_on(event, stepping=False)
        finally:
            self.conditions.output = output

    def _seek(self, target: int, *, fresh: bool = False, before_writes: bool = False) -> None:
        """The machine as it was at instruction count `target`: the newest checkpoint at or
        before it restored (unless the machine is already between the two), then a replay with
        nothing armed. Checkpoints are inserted on the way, ever closer to `target`, so that the
        reverse steps that usually follow replay little. `fresh`: from a checkpoint before
        `target` (after `begin`), even where the machine is at `target` already: the state
        a replay arrives in, whichever state at that count the machine is in. `before_writes`:
        as the recorded run stopped there, the debugger's writes logged after the stop held
        back for the next run (reverse_cont's stop at a hit the debugger then jumped away from)."""
        h = self._history
        assert h is not None
        with self._patches_lifted():
            index = h.index_at_or_before(target - 1 if fresh and target > h.begin else target)
            if fresh or not h.checkpoints[index].time <= h.now <= target:
                h.restore(index)
            self._disarm()
            points, at = [], h.now
            while target - at > SEEK_NEAR:
                at += 3 * (target - at) // 4
                points.append(at)
            while h.now < target:
                for entry in h.due_events():
                    self._apply_event(entry.kind, entry.data)
                while points and points[0] <= h.now:
                    points.pop(0)
                soft = bool(points) and points[0] < min(target, h.next_stop())
                stop = min(target, h.next_stop(), points[0] if points else target)
                result = self._run_to(stop, soft=soft)
                if not _at_limit(result):
                    if isinstance(result, kvm.KvmRun) and result.exit_reason == kvm.KVM_EXIT_INTR:
                        self._serve_host()
                        continue
                    break  # the recorded run stopped here too (a fault or the guest's end)
                if soft:  # an insertion point (a soft stop: at or short of it)
                    h.insert()
                    points.pop(0)
            due = h.due_events(as_stopped=True)
            if before_writes:
                due, held = h.after_the_stop(due)
                h.hold_back(held)
            for entry in due:
                self._apply_event(entry.kind, entry.data)
        self._apply()

    def _disarm(self, control: int = 0) -> None:
        """Nothing armed for a replay: no watch traps, no debug registers, guest debug
        `control` only (a single step's); the next _apply lays the debug state again."""
        for vcpu in self._vcpus:
            vcpu.set_watch_traps([])
            vcpu.set_guest_debug(control, None)
        self._arch_key = None

    @contextlib.contextmanager
    def _patches_lifted(self) -> Iterator[None]:
        """The guest's own bytes under the breakpoint patches while the history rewrites memory
        and replays; then the patches go back over whatever the code is by then."""
        for patch in self._sw.values():
            self.vm.write_phys(patch.pa, patch.original)
        self._patches_are_lifted = True
        try:
            yield
        finally:
            self._patches_are_lifted = False
            for patch in self._sw.values():
                patch.original = self.vm.read_phys(patch.pa, len(patch.original))
                self.vm.write_phys(patch.pa, self._brk)

    # ------------------------------------------------------------------ registers
    # Registers are ints. By name for the Python API; by number (the catalogue's, which is gdb's
    # numbering) for the GDB session. Unknown registers are ENOENT, values the vCPU cannot take
    # EINVAL; a refused write changes nothing.

    def registers(self) -> dict[str, int]:
        """Every register by name (x0..x30, sp, pc, cpsr, v0.., sctlr_el1.. on aarch64)."""
        with self._lock:
            values = self._registers.read_all(self.vcpu)
        return {r.name: v for r, v in zip(self._registers.REGISTERS, values)}

    def read_register(self, name: str) -> int:
        return self.read_register_at(self._number(name))

    def write_register(self, name: str, value: int) -> None:
        self.write_register_at(self._number(name), value)

    def _number(self, name: str) -> int:
        n = self._by_name.get(name)
        if n is None:
            raise DebugError(errno.ENOENT, f"no register named {name!r}")
        return n

    def _known(self, numbers: Sequence[int]) -> None:
        for n in numbers:
            if n not in self._numbers:
                raise DebugError(errno.ENOENT, f"no register number {n}")

    def read_registers(self, numbers: Sequence[int] | None = None, *, vcpu: int | None = None) -> list[int]:
        """The values of these registers (catalogue numbers), or of all of them in catalogue
        order (one batch read: a `g` packet), of the current vCPU or of `vcpu`."""
        if vcpu is not None:
            self._check_vcpu(vcpu)
        target = self._vcpus[self._current if vcpu is None else vcpu]
        if numbers is None:
            with self._lock:
                return self._registers.read_all(target)
        self._known(numbers)
        with self._lock:
            return self._registers.read(target, numbers)

    def read_register_at(self, number: int) -> int:
        """One register by catalogue number (a `p` packet)."""
        if number not in self._numbers:
            raise DebugError(errno.ENOENT, f"no register number {number}")
        with self._lock:
            return self._registers.read_one(self.vcpu, number)

    def write_register_at(self, number: int, value: int) -> None:
        """Write one register by catalogue number (a read-only one only with the value it holds)."""
        self._known([number])
        with self._lock:
            self._check_writable()
            try:
                self._registers.write(self.vcpu, number, value)
            except self._registers.RegisterError as e:
                raise DebugError(errno.EINVAL, str(e)) from None
            self._log_input("register", (self._current, number, value))

    def write_all_registers(self, values: Sequence[int]) -> None:
        """Write every register (catalogue order; those that do not change are not written).
        Nothing is written if any value is refused."""
        with self._lock:
            self._check_writable()
            try:
                self._registers.write_all(self.vcpu, values)
            except self._registers.RegisterError as e:
                raise DebugError(errno.EINVAL, str(e)) from None
            self._log_input("registers", (self._current, list(values)))

    def set_pc(self, pc: int) -> None:
        """Where the next step or continue starts (`c ADDR`, `s ADDR`)."""
        if not 0 <= pc < ADDRESS_END:
            raise DebugError(errno.EINVAL, f"no address {pc:#x}")
        with self._lock:
            if pc == self.vcpu.pc:
                return  # gdb's `c ADDR` at the PC it stopped at: nothing changes
            self._check_writable()
            self._registers.set_pc(self.vcpu, pc)
            self._log_input("pc", (self._current, pc))

    # ------------------------------------------------------------------ snapshots and reset
    def snapshot(self, path: str | Path) -> None:
        """Save the VM to `path` (no debugger state: breakpoint patches are lifted while it is
        written). OSError or snapshot.SnapshotError if it cannot be written."""
        from guestdbg import snapshot
        with self._lock, self.breakpoints_lifted():
            snapshot.save(self.machine, path)

    def restore(self, path: str | Path) -> None:
        """Restore the VM from a snapshot, keeping this debugger's breakpoints and watchpoints
        armed over the restored memory. A bad file changes nothing (OSError or
        snapshot.SnapshotError)."""
        data = Path(path).read_bytes()
        with self._lock:
            self._restore_image(data)
            # The restored vCPU is stopped where the snapshot was taken: resuming steps over a
            # breakpoint there, as after any stop.
            self._stops = {
                i: (StopEvent(StopKind.SIGNAL, v.pc, signal=signal.SIGTRAP, detail="snapshot restored", vcpu_id=i),
                    getattr(v, "icount", None))
                for i, v in enumerate(self._vcpus)}
            self._last_stop = self._stops[self._current][0]
            self._restart_history()
            self._apply()

    def reset(self) -> None:
        """Reset the board: memory, devices and registers as they were when this manager was
        created (for `guestdbg run`, right after loading the image), breakpoints and watchpoints
        still armed. A breakpoint at the entry point is hit on the next resume, as after power-on."""
        if self._reset_image is None:
            raise DebugError(errno.ENOTSUP, "no reset point: the vCPU was mid-access when the debugger started")
        with self._lock:
            self._restore_image(self._reset_image)
            self._last_stop = None  # not stopped *at* anything: resuming meets a breakpoint here
            self._stops.clear()
            self._restart_history()
            self._apply()

    def _restore_image(self, data: bytes) -> None:
        from guestdbg import snapshot
        with self.breakpoints_lifted():
            snapshot.restore_into(self.machine, data)
            for patch in self._sw.values():  # the restored code is what the breakpoints cover now
                patch.original = self.vm.read_phys(patch.pa, len(patch.original))

    def detach(self) -> None:
        """Remove every trace of the debugger; the guest runs on as if never debugged (and
        unrecorded: a history being kept starts again when a debugger next resumes)."""
        self.remove_all()
        self._last_stop = None
        self._stops.clear()
        self._history_stale = self._history is not None
