"""A run's history, for reverse execution: checkpoints of the machine, and the log of what the
guest could not compute by itself.

The emulated board is deterministic: from a given state, the guest computes the same thing
every time, because its clock is its instruction count (board/clock.py), and nothing the VMM
does moves its interrupts (vcpu.py's irq_due). So the machine at any past instruction count can
be rebuilt by restoring an earlier checkpoint and running forward again ("replay"), provided
whatever came from outside is given again at the same points. That outside is the *input log*:
console input, the host's time (`--clock host`, paced while recording: board/clock.py), the
debugger's own writes to registers and memory, and where the recorded run
stopped ("split": a replay stops there too, so it splits the same translation blocks). Single
steps take interrupts while recording (the debug manager's policy 17), so they hold nothing back.

Time is the machine's instruction count (`VirtMachine.machine_now`): vCPU 0's with one vCPU;
with several, the scheduler's machine time (board/smp.py), which every vCPU's instructions
advance. The schedule is replayed as recorded: a turn that ended by the quantum ended at a
block boundary, so the history keeps where (`turn_ends`) and a replay ends it there exactly
(board/smp.py's ScheduleLog), whatever stops split its blocks. It also keeps which vCPU ran
when (`segments`), so that a reverse step goes back one instruction of one vCPU.

Checkpoints
-----------
Each holds every vCPU's register list (KVM_GET_REG_LIST/ONE_REG, as migration does), the
board's device state, for memory only an *undo set* (the pages that changed since the previous
checkpoint, as they were at that previous checkpoint) and the *written set* (every page a store
touched in between, unchanged or not). A copy of guest memory as of the newest checkpoint (the
*shadow*) finds the changed pages among those the VM's dirty log (KVM_GET_DIRTY_LOG) names; a
VM without one is compared whole (64 KiB chunks with memcmp). Read-only slots (flash) are
compared only after a host write to them. No page is copied unless it changed.

The memory at checkpoint j, for a page: the undo set of the first checkpoint after j that has
it, else the shadow. Restoring j writes the pages that can differ from memory now: those stored
to between now and j (the written sets, or the stores since the last restore or insertion).

Checkpoints are taken at the live end of the history, at the block boundary at or before each
`interval` (an exact stop would split a translation block the recorded run did not), the
interval chosen from what the last checkpoint cost, the dirty log's faults included, so that
they take about 5% of the run time (between 1 and 40 million instructions: a reverse step
replays at most one interval). Within `mem_limit` bytes (the shadow, the undo sets and the
registers): when it is exceeded, the checkpoint whose removal leaves the smallest gap relative
to its age goes (its undo and written sets merge into the next one's), so that checkpoints stay
dense near the present and thin out into the past; when two are left, the oldest goes and the
history's start moves forward.

Checkpoints are also inserted in the past while replaying towards a point (`insert`): that
needs only the pages of the next checkpoint's undo set, and makes the next reverse step from
around there short.

The debugger's breakpoint patches are not guest memory: checkpoints hold the guest's own bytes
under them (`guest_bytes`), and the caller lifts its patches while a checkpoint is restored.
"""

from __future__ import annotations

import bisect
import copy
import ctypes
import mmap
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

PAGE = 4096
CHUNK = 256 << 10
KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY = 1 << 0, 1 << 1
# Checkpoint intervals (instructions): chosen so checkpoints take about OVERHEAD of the run
# time, within these bounds (a reverse step replays at most one interval).
OVERHEAD = 0.05
# What the dirty log's first write to a page costs after each checkpoint (a SIGSEGV and an
# mprotect: about 8 us measured here), counted in a checkpoint's cost.
FAULT_SECONDS = 8e-6
MIN_INTERVAL, MAX_INTERVAL = 1_000_000, 40_000_000
_libc = ctypes.CDLL(None, use_errno=True)
_memcmp = _libc.memcmp
_memcmp.restype = ctypes.c_int
_memcmp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]

PageKey = tuple[int, int]  # (memory slot id, page index in the slot)


class HistoryError(Exception):
    """The history cannot do what was asked (with the reason)."""


# The debugger's own inputs (its writes to guest memory and registers; a jump is "pc").
DEBUGGER_WRITES = frozenset({"memory", "register", "registers", "pc"})


@dataclass
class Event:
    """One logged input, applied when replay reaches `time` (after the checkpoints and events
    already there)."""

    time: int
    kind: str  # "console" (input a kick delivered), "memory", "register", "registers", "pc",
    # "clock" (the paced host clock's new counter offset: board/clock.py),
    # "split" (the recorded run stopped here: a replay stops here too)
    data: Any = None


@dataclass
class Checkpoint:
    time: int
    registers: list[list[tuple[int, int]]]  # per vCPU: (ONE_REG id, value)
    devices: dict
    undo: dict[PageKey, bytes] = field(default_factory=dict)  # page -> its bytes at the previous checkpoint
    events: int = 0  # how many log entries came before it
    # The pages any store touched since the previous checkpoint (a superset; None: not known),
    # so that reverse_cont can skip an interval in which no watched page was written.
    written: frozenset[PageKey] | None = None
    extra: dict = field(default_factory=dict)  # the recorder's own state (console input positions)
    # Each vCPU's local exclusive monitor ((address, value) of its last LDXR, or None), which no
    # register holds: a STXR after a restore must succeed or fail as when it was recorded.
    monitors: list[tuple[int, int] | None] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.undo) * (PAGE + 64) + 16 * sum(len(r) for r in self.registers) + 4096


class _Region:
    """One memory slot: its host memory and the shadow copy (the newest checkpoint's memory).
    RAM is dirty-logged where the VM can (KVM_MEM_LOG_DIRTY_PAGES, KVM_GET_DIRTY_LOG): only the
    pages written since the last look are compared with the shadow, not the whole slot."""

    def __init__(self, vm: Any, slot: Any):
        self.vm = vm
        self.slot_id: int = slot.slot
        self.base: int = slot.guest_phys_addr
        self.size: int = slot.memory_size
        self.addr: int = slot.userspace_addr
        # Read-only memory (ROM, flash) changes only by a host write or a new mapping: compared
        # only after one (`changes_seen`), which spares a 64 MiB flash bank's compare each time.
        self.readonly = bool(slot.flags & KVM_MEM_READONLY)
        self.changes_seen: tuple[Any, Any] | None = None
        self.logged = False
        self.pending: set[int] = set()  # pages the log named that may still differ from the shadow
        self.since_mark: set[int] = set()  # pages the log named since History._mark
        if not self.readonly and hasattr(vm, "get_dirty_log"):
            if not slot.flags & KVM_MEM_LOG_DIRTY_PAGES:
                vm.set_user_memory_region(slot.slot, slot.guest_phys_addr, slot.memory_size,
                                          slot.flags | KVM_MEM_LOG_DIRTY_PAGES, userspace_addr=slot.userspace_addr)
            vm.get_dirty_log(self.slot_id)  # from now on
            self.logged = True
        self.shadow = mmap.mmap(-1, self.size)
        self.shadow_addr = ctypes.addressof(ctypes.c_char.from_buffer(self.shadow))
        ctypes.memmove(self.shadow_addr, self.addr, self.size)
        self.changes_seen = self.changes()

    def changes(self) -> tuple[Any, Any]:
        """What says whether a read-only slot may have changed: its host writes, the mappings."""
        counts = getattr(self.vm, "host_writes_by_slot", None)
        return (None if counts is None else counts.get(self.slot_id, 0), getattr(self.vm, "slots_version", None))

    def unchanged(self) -> bool:
        """A read-only slot nothing wrote or mapped again since the shadow took it."""
        return self.readonly and self.changes()[0] is not None and self.changes_seen == self.changes()

    def same_slot(self, slot: Any) -> bool:
        return (slot.guest_phys_addr, slot.memory_size, getattr(slot, "userspace_addr", None)) == (
            self.base, self.size, self.addr)

    def close(self) -> None:
        """Dirty logging off (the history is dropped)."""
        slot = self.vm.slots.get(self.slot_id)
        if self.logged and slot is not None and slot.flags & KVM_MEM_LOG_DIRTY_PAGES:
            self.vm.set_user_memory_region(slot.slot, slot.guest_phys_addr, slot.memory_size,
                                           slot.flags & ~KVM_MEM_LOG_DIRTY_PAGES, userspace_addr=slot.userspace_addr)
        self.logged = False

    def written_pages(self) -> set[int] | None:
        """Pages stored to since the newest checkpoint (None: not known, no dirty log)."""
        if self.readonly:
            return set()
        if not self.logged:
            return None
        log = self.vm.get_dirty_log(self.slot_id)
        for i, byte in enumerate(log):
            if byte:
                base = i * 8
                new = [base + b for b in range(8) if byte >> b & 1]
                self.pending.update(new)
                self.since_mark.update(new)
        return set(self.pending)

    def differs(self, page: int, data: bytes) -> bool:
        return bool(_memcmp(self.addr + page * PAGE, data, PAGE))

    def changed_pages(self) -> list[int]:
        """Pages whose memory differs from the shadow."""
        if self.logged:
            self.written_pages()
            return sorted(p for p in self.pending
                          if _memcmp(self.addr + p * PAGE, self.shadow_addr + p * PAGE, PAGE))
        pages: list[int] = []
        for off in range(0, self.size, CHUNK):
            n = min(CHUNK, self.size - off)
            if _memcmp(self.addr + off, self.shadow_addr + off, n):
                for p in range(off, off + n, PAGE):
                    if _memcmp(self.addr + p, self.shadow_addr + p, PAGE):
                        pages.append(p // PAGE)
        return pages

    def live(self, page: int) -> bytes:
        return ctypes.string_at(self.addr + page * PAGE, PAGE)

    def shadow_page(self, page: int) -> bytes:
        return self.shadow[page * PAGE:(page + 1) * PAGE]

    def set_shadow(self, page: int, data: bytes) -> None:
        self.shadow[page * PAGE:(page + 1) * PAGE] = data


class History:
    """Checkpoints and the input log of one machine's run (see the module docstring).

    The caller (the debug manager) runs the machine; this class says where to stop
    (`next_stop`), takes and restores checkpoints, and keeps the log."""

    def __init__(self, machine: Any, *, mem_limit: int = 1 << 30, interval: int | None = None,
                 guest_bytes: Callable[[], Sequence[tuple[int, bytes]]] = lambda: (),
                 extra_state: Callable[[], dict] = dict, restore_extra: Callable[[dict], None] = lambda s: None):
        self.machine = machine
        self.vm = machine.vm
        self.vcpus: list[Any] = list(getattr(machine, "vcpus", None) or [machine.vcpu])
        if not getattr(getattr(machine, "clock", None), "replayable", True):
            raise HistoryError("reverse execution needs a clock a replay can repeat: the virtual "
                               "clock, or the host's paced (board/clock.py record_host_time)")
        self.mem_limit = mem_limit
        self._fixed_interval = interval
        self.interval = interval or MIN_INTERVAL
        self.guest_bytes = guest_bytes
        self.extra_state, self.restore_extra = extra_state, restore_extra
        needed = sum(s.memory_size for s in self.vm.slots.values()) + PAGE
        if mem_limit < needed:
            raise HistoryError(f"the history needs more than a copy of guest memory ({needed >> 20} MiB) "
                               f"to hold checkpoints: --record-mem {mem_limit >> 20} MiB is too little")
        self.regions = [_Region(self.vm, s) for s in sorted(self.vm.slots.values(), key=lambda s: s.slot)]
        self._by_slot = {r.slot_id: r for r in self.regions}
        self._fix_shadow()
        self.events: list[Event] = []
        self.console_pulls: dict[int, bytes] = {}  # the guest's n-th read of console input -> what it got
        # The schedule (several vCPUs): (vCPU, icount its turn started at) -> the icount the
        # quantum ended it at; and per vCPU, the [machine time, first icount, end icount) of
        # each stretch it ran. Kept from the live end only (`_live`, set per run).
        self.turn_ends: dict[tuple[int, int], int] = {}
        self.segments: list[list[list[int]]] = [[] for _ in self.vcpus]
        self._live = True
        if len(self.vcpus) > 1:
            machine.schedule_log = self
        self.checkpoints: list[Checkpoint] = [self._capture(self.now, {})]
        self.end = self.now  # the live end: the furthest point the run has reached
        self.ended: Any = None  # the guest's own end there (the board's ExitStatus), if it ended
        self.next_event = 0  # while replaying: the first log entry not yet applied
        self._deferred: list[Event] = []  # applied before it (see due_events' as_stopped)
        self.stats = {"taken": 1, "inserted": 0, "thinned": 0, "restored": 0, "skipped": 0,
                      "take_seconds": 0.0, "restore_seconds": 0.0, "dropped_start": 0}
        self._last_take = (time.perf_counter(), self.now)
        self._faults = 0  # pages the dirty log marked for the checkpoint being taken
        self._mark_time = self.now  # since when each region's since_mark holds the stores

    # ------------------------------------------------------------------ where we are
    @property
    def now(self) -> int:
        if len(self.vcpus) == 1:
            return int(self.vcpus[0].icount)
        return int(self.machine.machine_now)

    # ------------------------------------------------------------------ the schedule (ScheduleLog)
    def begin_run(self) -> None:
        """A run starts: at the live end the schedule is recorded, in the past it is replayed."""
        self._live = self.now >= self.end

    def forced_turn_end(self, vcpu_id: int, start: int) -> int | None:
        return None if self._live else self.turn_ends.get((vcpu_id, start))

    def turn_ended(self, vcpu_id: int, start: int, end: int) -> None:
        if self._live:
            self.turn_ends[(vcpu_id, start)] = end

    def ran(self, vcpu_id: int, time: int, start: int, end: int) -> None:
        if not self._live:
            return
        runs = self.segments[vcpu_id]
        if runs and runs[-1][2] == start and runs[-1][0] + (start - runs[-1][1]) == time:
            runs[-1][2] = end  # the same stretch, split by an exit the board served
        else:
            runs.append([time, start, end])

    def time_after(self, vcpu_id: int, k: int) -> int | None:
        """The machine time right after vCPU `vcpu_id` retired its `k`-th instruction (None: not
        in the recorded schedule). A reverse step goes there, the state a forward step would
        have stopped at: the other vCPUs have not run on yet."""
        if len(self.vcpus) == 1:
            return k
        runs = self.segments[vcpu_id]  # in the order they ran: by first icount
        i = bisect.bisect_left(runs, k, key=lambda run: run[1])
        if i and k <= runs[i - 1][2]:
            began, start, _ = runs[i - 1]
            return max(self.begin, began + (k - start))
        if runs and runs[0][1] == k:  # before its first recorded instruction: since the start
            return self.begin
        return None

    @property
    def begin(self) -> int:
        return self.checkpoints[0].time

    @property
    def replaying(self) -> bool:
        """Is the machine in the past (forward execution replays the log)?"""
        return self.now < self.end

    def memory_used(self) -> int:
        return sum(r.size for r in self.regions) + sum(c.size for c in self.checkpoints)

    def next_stop(self) -> int:
        """The instruction count at which the run must stop next: the next log entry or the live
        end while replaying, else the next checkpoint."""
        now = self.now
        if now < self.end:
            stop = self.end
            if self.next_event < len(self.events):
                stop = min(stop, self.events[self.next_event].time)
            return stop
        return max(self.checkpoints[-1].time + self.interval, now + 1)

    def due_events(self, *, as_stopped: bool = False) -> list[Event]:
        """The log entries due now (while replaying), marked applied. `as_stopped` (a seek's
        end, in the past): the host clock's catch-ups logged here after the recorded run first
        stopped here ("split") wait for the next run. They happened as that run resumed, and
        the machine is as it first arrived here, as a forward replay stops here too (a step
        that took an interrupt without retiring an instruction is the other way to be here
        again). The debugger's writes logged here are applied."""
        due, self._deferred = self._deferred, []
        while self.next_event < len(self.events) and self.events[self.next_event].time <= self.now:
            due.append(self.events[self.next_event])
            self.next_event += 1
        if as_stopped and self.now < self.end:
            stops = [i for i, e in enumerate(due) if e.kind == "split" and e.time == self.now]
            if stops:
                self._deferred = [e for e in due[stops[0]:] if e.kind == "clock"]
                due = due[:stops[0]] + [e for e in due[stops[0]:] if e.kind != "clock"]
        return due

    def after_the_stop(self, due: list[Event]) -> tuple[list[Event], list[Event]]:
        """`due` (the entries due now) split in two: the rest, and the debugger's writes logged
        after the recorded run stopped here. Those came after whatever stopped it (a breakpoint
        hit, a fault), and a replay that looks for stops must meet it before giving them: a
        jump past a fault or off a breakpoint, given first, would hide it."""
        stop = next((i for i, e in enumerate(due) if e.kind == "split" and e.time == self.now), None)
        if stop is None:
            return due, []
        return (due[:stop] + [e for e in due[stop:] if e.kind not in DEBUGGER_WRITES],
                [e for e in due[stop:] if e.kind in DEBUGGER_WRITES])

    def hold_back(self, events: list[Event]) -> None:
        """Give `events` (due now) with the next run's, not now: the machine stays as it stopped."""
        self._deferred += events

    @property
    def holds_back_events(self) -> bool:
        """Are log entries due here held back for the next run (due_events' as_stopped)?"""
        return bool(self._deferred)

    # ------------------------------------------------------------------ the log
    def log(self, kind: str, data: Any = None) -> None:
        """Record an input at the live end (the caller refuses inputs while replaying)."""
        if self.replaying:
            raise HistoryError("the machine is in the past: an input now would change the recorded history")
        self.events.append(Event(self.now, kind, data))
        self.next_event = len(self.events)

    # ------------------------------------------------------------------ checkpoints
    def at_live_end(self) -> None:
        """The run reached a new live end."""
        self.end = max(self.end, self.now)
        self.next_event = len(self.events)

    def checkpoint_due(self) -> bool:
        return self.now >= self.end and self.now >= self.checkpoints[-1].time + self.interval

    def take(self, soft: bool = False) -> bool:
        """A checkpoint now, at the live end. False (none taken) while a memory slot is not what
        it was (a flash bank in command mode): the next stop tries again. `soft`: the run
        stopped for it at a block boundary, which may be short of the interval."""
        if self.now < self.end or self.now <= self.checkpoints[-1].time:
            return False
        if not soft and self.now < self.checkpoints[-1].time + self.interval:
            return False
        started = time.perf_counter()
        self._faults = 0
        if not self._append():
            return False
        self.stats["taken"] += 1
        self._thin()
        cost = time.perf_counter() - started + self._faults * FAULT_SECONDS
        self.stats["take_seconds"] += cost
        self._adapt_interval(cost, started)
        return True

    def _append(self) -> bool:
        """A checkpoint now, after the newest (at the live end, or in the past beyond the newest
        checkpoint: the end is then reached by replay from it)."""
        if not self._slots_unchanged():
            self.stats["skipped"] += 1
            return False
        undo: dict[PageKey, bytes] = {}
        written = self.written_since_newest()
        for region in self.regions:
            if region.unchanged():
                continue
            region.changes_seen = region.changes()
            for page in region.changed_pages():
                undo[(region.slot_id, page)] = region.shadow_page(page)
                region.set_shadow(page, region.live(page))
            self._faults += len(region.pending) if region.logged else 0
            region.pending.clear()  # the shadow holds every page the log named now
        self._mark()
        self._fix_shadow()
        # A patched page is "changed" at every checkpoint; keep only real changes.
        undo = {k: v for k, v in undo.items() if self._by_slot[k[0]].shadow_page(k[1]) != v}
        checkpoint = self._capture(self.now, undo)
        checkpoint.events = self.next_event
        checkpoint.written = written
        self.checkpoints.append(checkpoint)
        return True

    def _mark(self) -> None:
        """From now on, count stores afresh (each region's since_mark)."""
        for region in self.regions:
            region.written_pages()
            region.since_mark.clear()
        self._mark_time = self.now

    def _since_mark(self) -> frozenset[PageKey] | None:
        out: set[PageKey] = set()
        for region in self.regions:
            if region.written_pages() is None:
                return None
            out.update((region.slot_id, p) for p in region.since_mark)
        return frozenset(out)

    def written_between(self, a: int, b: int) -> frozenset[PageKey] | None:
        """The pages stored to between instruction counts a <= b (a superset, from the written
        sets of the checkpoints covering the span), None if not known."""
        out: set[PageKey] = set()
        cps = self.checkpoints
        k = self.index_at_or_before(a) + 1
        while a < b:
            written = cps[k].written if k < len(cps) else self.written_since_newest()
            if written is None:
                return None
            out |= written
            if k >= len(cps) or cps[k].time >= b:
                break
            k += 1
        return frozenset(out)

    def written_since_newest(self) -> frozenset[PageKey] | None:
        """The pages stored to since the newest checkpoint (a superset), None if not known."""
        out: set[PageKey] = set()
        for region in self.regions:
            pages = region.written_pages()
            if pages is None:
                return None
            out.update((region.slot_id, p) for p in pages)
        return frozenset(out)

    def written_in(self, index: int, until: int) -> frozenset[PageKey] | None:
        """The pages stored to between checkpoint `index` and instruction count `until` (at most
        the next checkpoint's time), as a superset; None if not known."""
        if index + 1 < len(self.checkpoints):
            return self.checkpoints[index + 1].written
        return self.written_since_newest()

    def _adapt_interval(self, cost: float, started: float) -> None:
        """About OVERHEAD of the run time in checkpoints: the next interval from this one's cost
        and the instruction rate since the last."""
        last_wall, last_time = self._last_take
        self._last_take = (time.perf_counter(), self.now)
        if self._fixed_interval is not None:
            return
        wall = started - last_wall
        if wall <= 0 or self.now <= last_time:
            return
        rate = (self.now - last_time) / wall
        self.interval = int(min(max(rate * cost / OVERHEAD, MIN_INTERVAL), MAX_INTERVAL))

    def _capture(self, t: int, undo: dict[PageKey, bytes]) -> Checkpoint:
        registers = [[(r, v.get_one_reg(r)) for r in v.get_reg_list()] for v in self.vcpus]
        devices = copy.deepcopy(self.machine.device_state())
        monitors = [getattr(v, "exclusive_monitor", lambda: None)() for v in self.vcpus]
        return Checkpoint(t, registers, devices, undo, events=len(self.events), extra=dict(self.extra_state()),
                          monitors=monitors)

    def _fix_shadow(self) -> None:
        """The shadow holds the guest's bytes, not the debugger's patches."""
        for pa, data in self.guest_bytes():
            for region in self.regions:
                if region.base <= pa < region.base + region.size:
                    off = pa - region.base
                    region.shadow[off:off + len(data)] = data

    def _slots_unchanged(self) -> bool:
        slots = self.vm.slots
        return len(slots) == len(self.regions) and all(
            r.slot_id in slots and r.same_slot(slots[r.slot_id]) for r in self.regions)

    def _thin(self) -> None:
        while self.memory_used() > self.mem_limit and len(self.checkpoints) > 1:
            cps = self.checkpoints
            if len(cps) <= 2:
                self._drop_first()
                continue
            now = cps[-1].time
            # Remove the one whose removal leaves the smallest gap for its age, but not the one
            # the machine is at or just past (a seek has just inserted it for the reverse steps
            # that follow; inserted ones sit close together, so they would go first).
            here = self.index_at_or_before(self.now) if self.now >= cps[0].time else -1
            candidates = [k for k in range(1, len(cps) - 1) if k != here]
            if not candidates:
                self._drop_first()
                continue
            i = min(candidates, key=lambda k: (cps[k + 1].time - cps[k - 1].time) / max(1, now - cps[k].time))
            merged = dict(cps[i + 1].undo)
            merged.update(cps[i].undo)
            cps[i + 1].undo = merged
            a, b = cps[i].written, cps[i + 1].written
            cps[i + 1].written = None if a is None or b is None else a | b
            del cps[i]
            self.stats["thinned"] += 1

    def _drop_first(self) -> None:
        """The oldest checkpoint goes: the history starts at the next one."""
        del self.checkpoints[0]
        self.checkpoints[0].undo = {}
        first = self.checkpoints[0]
        self.events = self.events[first.events:]
        for c in self.checkpoints:
            c.events -= first.events
        self.next_event = max(0, self.next_event - first.events)
        for runs in self.segments:
            while runs and runs[0][0] + (runs[0][2] - runs[0][1]) <= first.time:
                del runs[0]
        # The turns that ended before each vCPU's first stretch still in the history.
        firsts = [runs[0][1] if runs else None for runs in self.segments]  # None: none left
        self.turn_ends = {key: end for key, end in self.turn_ends.items()
                          if (vcpu_first := firsts[key[0]]) is not None and end > vcpu_first}
        self.stats["dropped_start"] += 1

    def index_at_or_before(self, t: int) -> int:
        for i in range(len(self.checkpoints) - 1, -1, -1):
            if self.checkpoints[i].time <= t:
                return i
        raise HistoryError(f"instruction {t} is before the history's start ({self.begin})")

    def restore(self, index: int) -> int:
        """Put the machine back to checkpoint `index` (the caller has lifted its breakpoint
        patches). Returns its time."""
        started = time.perf_counter()
        target = self.checkpoints[index]
        contents = self._contents_near(index)
        if contents is None:
            contents = {}
            for cp in reversed(self.checkpoints[index + 1:]):
                contents.update(cp.undo)
            for region in self.regions:
                if region.unchanged():
                    continue  # nothing wrote it since the shadow took it
                for page in region.changed_pages():
                    contents.setdefault((region.slot_id, page), region.shadow_page(page))
        pieces = []
        for (slot_id, page), data in contents.items():
            region = self._by_slot[slot_id]
            if region.differs(page, data):
                pieces.append((region.base + page * PAGE, data))
        self.vm.write_phys_pages(pieces)
        for k, (vcpu, registers) in enumerate(zip(self.vcpus, target.registers)):
            for reg_id, value in registers:
                vcpu.set_one_reg(reg_id, value)
            getattr(vcpu, "forget_translations", lambda: None)()
            if k < len(target.monitors) and hasattr(vcpu, "set_exclusive_monitor"):
                vcpu.set_exclusive_monitor(target.monitors[k])
        self.machine.restore_device_state(copy.deepcopy(target.devices))
        self.restore_extra(dict(target.extra))
        self.next_event = target.events
        self._deferred = []
        self._mark()
        self.stats["restored"] += 1
        self.stats["restore_seconds"] += time.perf_counter() - started
        return target.time

    def _contents_near(self, index: int) -> dict[PageKey, bytes] | None:
        """Checkpoint `index`'s bytes of just the pages that can differ from memory now: those
        stored to between now and its time (the written sets). None when those are not known, or
        read-only memory was written since (the caller then looks at every changed page)."""
        if any(r.readonly and not r.unchanged() for r in self.regions) or self.now < self.begin:
            return None
        t = self.checkpoints[index].time
        if self._mark_time <= t <= self.now:
            # Memory has run forward since a mark at or before t (the usual reverse step: back to
            # the checkpoint a seek just left): only what it stored since can differ.
            candidates = self._since_mark()
        else:
            candidates = self.written_between(min(t, self.now), max(t, self.now))
        if candidates is None:
            return None
        later = self.checkpoints[index + 1:]
        contents: dict[PageKey, bytes] = {}
        for key in candidates:
            for cp in later:
                data = cp.undo.get(key)
                if data is not None:
                    break
            else:
                data = self._by_slot[key[0]].shadow_page(key[1])
            contents[key] = data
        return contents

    def insert(self) -> bool:
        """A checkpoint now, in the past between two others (while replaying): so the next
        reverse step from around here replays little. Cheap: only the pages of the next
        checkpoint's undo set can differ."""
        now = self.now
        cps = self.checkpoints
        if now < cps[0].time:  # before the history's start (thinning moved it)
            return False
        j = self.index_at_or_before(now)
        if cps[j].time == now or not self._slots_unchanged():
            return False
        if j + 1 >= len(cps):  # past the newest checkpoint: one after it
            if self._append():
                self.stats["inserted"] += 1
                self._thin()
            return True
        after = cps[j + 1]
        # What the stores since the last mark touched, if that was at checkpoint j or before
        # (a restore there, or an insertion): else the whole interval's (a superset).
        since = self._since_mark() if self._mark_time <= cps[j].time else None
        stored = since if since is not None else after.written
        if stored is None:
            return False  # which pages changed since j is not known: no cheap insertion
        later: dict[PageKey, bytes] = {}  # each page's bytes at checkpoint j+1
        for cp in reversed(cps[j + 2:]):
            later.update(cp.undo)
        guest = self._guest_view()
        undo_new, undo_next = {}, {}
        # The pages that can differ now from j or from j+1: those that differ between j and
        # j+1 (after's undo set), and those stored to since j, which may differ now even where
        # j and j+1 agree (a page changed and changed back within the interval).
        for key in set(after.undo) | stored:
            region = self._by_slot[key[0]]
            at_next = later.get(key)
            if at_next is None:
                at_next = region.shadow_page(key[1])
            at_j = after.undo.get(key, at_next)
            live = guest(key)
            if live != at_j:
                undo_new[key] = at_j
            if live != at_next:
                undo_next[key] = live
        cp = self._capture(now, undo_new)
        cp.events = self.next_event
        cp.written = stored
        after.undo = undo_next
        cps.insert(j + 1, cp)
        self._mark()
        self.stats["inserted"] += 1
        self._thin()
        return True

    def _guest_view(self) -> Callable[[PageKey], bytes]:
        """A page's live bytes with the debugger's patches replaced by the guest's own."""
        fixes = list(self.guest_bytes())

        def page(key: PageKey) -> bytes:
            region = self._by_slot[key[0]]
            data = region.live(key[1])
            lo = region.base + key[1] * PAGE
            if not fixes:
                return data
            buf = None
            for pa, orig in fixes:
                if lo <= pa < lo + PAGE:
                    buf = buf or bytearray(data)
                    buf[pa - lo:pa - lo + len(orig)] = orig
            return bytes(buf) if buf is not None else data
        return page

    def close(self) -> None:
        for region in self.regions:
            region.close()
        if getattr(self.machine, "schedule_log", None) is self:
            self.machine.schedule_log = None

    def status(self) -> dict:
        return {"begin": self.begin, "end": self.end, "now": self.now, "checkpoints": len(self.checkpoints),
                "events": len(self.events), "inputs": len(self.events) + len(self.console_pulls), "memory": self.memory_used(), "limit": self.mem_limit,
                "interval": self.interval, **self.stats}

