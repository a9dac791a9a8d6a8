"""The debugger over several vCPUs (issue 11): the manager arms every breakpoint and watchpoint
on every vCPU, steps only the vCPU asked for, and names the vCPU each stop came from; the GDB
session shows the vCPUs as threads (vCPU id + 1) and its stop replies name the thread.

The machines: `SmpBoard`, the virt board with extra vCPUs (one Unicorn engine each over the
same RAM) and a round-robin `run_until(stop, *, only=)` in small slices, following the board
contract the manager codes against (`vcpus`, `last_vcpu_id`, `cpu_state`, `only`); and the
real virt board with several vCPUs, where it has them (`real_board`). The guest's CPU 0 turns
the others on with PSCI CPU_ON (refused on SmpBoard, which starts them all), then every vCPU
runs the same loop (a call to `shared`, then a store to its own counter) a fixed number of
times and parks in WFI; on SmpBoard the run ends once every vCPU is parked, so a stop that
never comes fails a test there instead of hanging it.
"""

from __future__ import annotations

import dataclasses
import inspect
import signal
import threading

import pytest

from guestdbg import kvm
from guestdbg.arm import kvm_regs as kr
from guestdbg.board.common import ExitStatus
from guestdbg.board.virt import VirtConfig, VirtMachine
from guestdbg.debug.manager import GuestDebugManager, StopKind, WatchKind
from guestdbg.gdb.session import GdbSession, Reply, Resume
from tests.helpers.mmu_guest import assemble
from tests.helpers.support import symbols

ROUNDS = 40
SLICE = 64  # instructions per vCPU turn: several loop iterations, so turns alternate often

GUEST_S = rf"""
    .text
    .global _start, go, shared, after_call, cpu1_only, counters, done
_start:
    mrs     x0, mpidr_el1
    and     x0, x0, #0xff               // this vCPU's id
    cbnz    x0, go
    // CPU 0 turns the others on with PSCI CPU_ON (hvc, as the DTB says) until one is refused:
    // no such CPU (or, on a board that starts them all, no CPU_ON at all).
    mov     x19, #1
1:  ldr     x0, =0xC4000003             // PSCI_0_2_FN64_CPU_ON
    mov     x1, x19                     // target MPIDR: Aff0 = id
    adr     x2, _start
    mov     x3, #0
    hvc     #0
    cbnz    x0, 2f
    add     x19, x19, #1
    b       1b
2:  mov     x0, #0
go:
    adr     x1, counters
    add     x1, x1, x0, lsl #3          // its own counter
    mov     x2, #0
loop:
    bl      shared
after_call:
    add     x2, x2, #1
    str     x2, [x1]
    cbz     x0, 1f
cpu1_only:
    nop
1:  cmp     x2, #{ROUNDS}
    b.lt    loop
done:
    wfi
    b       done
shared:
    add     x3, x3, #1
    ret
    .ltorg

    .data
    .balign 64
counters:
    .fill   8, 8, 0
"""


class SmpBoard(VirtMachine):
    """The virt board with `n` vCPUs run round-robin, SLICE instructions a turn (see module
    docstring). Every vCPU starts at the ELF's entry; one parked in WFI is "halted"."""

    def __init__(self, n: int = 2):
        super().__init__(VirtConfig(), console=lambda data: None)
        self.vcpus = [self.vcpu] + [self.vm.create_vcpu(i) for i in range(1, n)]
        for v in self.vcpus:
            v.halt_exits = True
            v.power_control = None  # no PSCI CPU_ON here: every vCPU starts at the entry
        self.last_vcpu_id = 0
        self.parked: set[int] = set()
        self.powered_off: set[int] = set()
        self._turn = 0

    def start_all(self, entry: int) -> None:
        for v in self.vcpus[1:]:
            v.set_one_reg(kr.KVM_REG_ARM_CORE_PSTATE, self.vcpu.get_one_reg(kr.KVM_REG_ARM_CORE_PSTATE))
            v.set_one_reg(kr.KVM_REG_ARM_CORE_PC, entry)

    def cpu_state(self, i: int) -> str:
        return "off" if i in self.powered_off else "halted" if i in self.parked else "running"

    def run_until(self, stop=lambda r: False, *, only=None, icount_limit=None):
        n = len(self.vcpus)
        while True:
            order = [only] if only is not None else [(self._turn + k) % n for k in range(n)]
            runnable = [i for i in order if i not in self.parked and i not in self.powered_off]
            if not runnable:
                return ExitStatus(0, "every vCPU parked in WFI")
            for i in runnable:
                vcpu = self.vcpus[i]
                self.last_vcpu_id = i
                if only is None:
                    self._turn = (i + 1) % n
                run = vcpu.run(icount_limit=vcpu.icount + SLICE)
                if run.exit_reason == kvm.EXIT_ICOUNT_LIMIT:
                    continue
                if run.exit_reason == kvm.KVM_EXIT_HLT:
                    self.parked.add(i)
                    continue
                if stop(run) or run.exit_reason in (kvm.KVM_EXIT_DEBUG, kvm.KVM_EXIT_INTR):
                    return run
                ended = self.handle_exit(run)
                if ended is not None:
                    return ended


@pytest.fixture(scope="module")
def smp_elf(tmp_path_factory):
    return assemble(tmp_path_factory.mktemp("smpdbg"), "smpdbg", GUEST_S)


def real_board(n: int) -> VirtMachine | None:
    """The virt board with `n` vCPUs, if it has SMP (`run_until(..., only=)` and a vCPU count
    in VirtConfig); else None."""
    if "only" not in inspect.signature(VirtMachine.run_until).parameters:
        return None
    names = {f.name for f in dataclasses.fields(VirtConfig)}
    field = next((f for f in ("smp", "cpus", "num_cpus", "n_cpus", "vcpus") if f in names), None)
    if field is None:
        return None
    return VirtMachine(VirtConfig(**{field: n}), console=lambda data: None)  # type: ignore[arg-type]


@pytest.fixture
def smp(smp_elf):
    """(manager, board, symbols) for a 2-vCPU SmpBoard with the guest loaded."""
    return make(smp_elf, 2)


@pytest.fixture(params=["SmpBoard", "virt"])
def any_smp(request, smp_elf):
    """The same on SmpBoard and on the real virt board (skipped until it has SMP). On the real
    board a stop that never comes would wait forever (every vCPU parked, no timer): a watchdog
    interrupts it after 30 s, which fails the test with a SIGINT stop instead of hanging."""
    m, board, sym = make(smp_elf, 2, real=request.param == "virt")
    watchdog = threading.Timer(30, m.interrupt)
    watchdog.start()
    yield m, board, sym
    watchdog.cancel()


def make(elf, n, real=False):
    if real:
        board = real_board(n)
        if board is None:
            pytest.skip("the virt board has no SMP yet")
        board.load_elf(elf)
    else:
        board = SmpBoard(n)
        board.start_all(board.load_elf(elf))
    return GuestDebugManager(board), board, symbols(str(elf))


def x(board, vcpu_id, n):
    return board.vcpus[vcpu_id].get_one_reg(kr.KVM_REG_ARM_CORE_X(n))


# ---------------------------------------------------------------------------------------------
# the manager


def test_vcpu_ids_and_states(smp):
    m, board, sym = smp
    assert m.vcpu_ids() == [0, 1]
    assert [m.vcpu_state(i) for i in (0, 1)] == ["running", "running"]
    board.powered_off.add(1)
    assert m.vcpu_state(1) == "off"
    with pytest.raises(Exception, match="off"):
        m.step(1)
    with pytest.raises(Exception, match="no vCPU 2"):
        m.select_vcpu(2)
    assert m.current_vcpu == 0


def test_breakpoint_in_shared_code_reports_each_vcpu(any_smp):
    m, board, sym = any_smp
    m.add_breakpoint(sym["shared"])
    hits = []
    for _ in range(2 * ROUNDS):
        e = m.cont()
        assert e.kind is StopKind.SWBREAK and e.pc == sym["shared"]
        # The vCPU named is the one at the breakpoint (its x0 holds its MPIDR Aff0), and it is
        # current: register reads are its.
        assert x(board, e.vcpu_id, 0) == e.vcpu_id
        assert m.current_vcpu == e.vcpu_id and m.read_register("pc") == sym["shared"]
        hits.append(e.vcpu_id)
    # Every call on every vCPU was reported once: the step-over happens on the vCPU that sits
    # on the breakpoint, and the breakpoint stays armed for the others.
    assert sorted(hits) == [0] * ROUNDS + [1] * ROUNDS
    assert 0 < hits.index(1)  # they interleave


def test_step_over_is_for_the_vcpu_that_stopped_not_the_current_one(any_smp):
    """gdb's `thread N` (Hg) to another vCPU after each stop, then continue: the vCPU that
    stopped must step off its breakpoint when it runs again, not stop there a second time
    without having moved."""
    m, board, sym = any_smp
    m.add_breakpoint(sym["shared"])
    hits = []
    for _ in range(2 * ROUNDS):
        e = m.cont()
        assert e.kind is StopKind.SWBREAK
        hits.append((e.vcpu_id, board.vcpus[e.vcpu_id].icount))
        m.select_vcpu(1 - e.vcpu_id)
    assert len(set(hits)) == len(hits)
    assert sorted(v for v, _ in hits) == [0] * ROUNDS + [1] * ROUNDS


def test_hw_breakpoint_and_watchpoints_are_armed_on_every_vcpu(any_smp):
    m, board, sym = any_smp
    # (CPU 0 first: on the real board it runs all its rounds in its first turn.)
    for vcpu_id in (0, 1):
        m.add_watchpoint(sym["counters"] + 8 * vcpu_id, 8, WatchKind.WRITE)
        e = m.cont()
        assert (e.kind, e.vcpu_id, e.watch_addr) == (StopKind.WATCH, vcpu_id, sym["counters"] + 8 * vcpu_id)
        assert x(board, vcpu_id, 0) == vcpu_id
        m.remove_watchpoint(sym["counters"] + 8 * vcpu_id, 8, WatchKind.WRITE)
    m.add_hw_breakpoint(sym["cpu1_only"])  # a slot: KVM_SET_GUEST_DEBUG on each vCPU
    e = m.cont()
    assert (e.kind, e.pc, e.vcpu_id) == (StopKind.HWBREAK, sym["cpu1_only"], 1)


def test_watchpoint_page_trap_fires_on_the_writer(any_smp):
    m, board, sym = any_smp
    slots = [m.add_watchpoint(0x4100_0000 + 64 * i, 8, WatchKind.WRITE) for i in range(m.hw_wp_slots)]
    assert all(not w.trapped for w in slots)
    w = m.add_watchpoint(sym["counters"] + 8, 8, WatchKind.WRITE)  # no slot left: page traps
    assert w.trapped
    e = m.cont()
    assert (e.kind, e.vcpu_id, e.watch_addr) == (StopKind.WATCH, 1, sym["counters"] + 8)


def test_stepping_one_vcpu_alone_leaves_the_others(any_smp):
    m, board, sym = any_smp
    m.add_breakpoint(sym["after_call"])
    e = m.cont()
    other = 1 - e.vcpu_id
    pcs = [v.pc for v in board.vcpus]
    counts = [v.icount for v in board.vcpus]
    s = m.step(other)  # scheduler-locking: only `other` runs
    assert (s.kind, s.vcpu_id) == (StopKind.STEP, other)
    assert board.vcpus[other].icount == counts[other] + 1 and board.vcpus[other].pc != pcs[other]
    assert board.vcpus[e.vcpu_id].pc == pcs[e.vcpu_id] and board.vcpus[e.vcpu_id].icount == counts[e.vcpu_id]
    assert m.current_vcpu == other
    # The vCPU left at its breakpoint steps off it when it next runs, alone, in its own step.
    s = m.step(e.vcpu_id)
    assert (s.kind, s.vcpu_id, s.pc) == (StopKind.STEP, e.vcpu_id, sym["after_call"] + 4)
    assert board.vcpus[other].icount == counts[other] + 1


def test_step_with_others_running(any_smp):
    m, board, sym = any_smp
    m.add_breakpoint(sym["after_call"])
    e = m.cont()
    m.remove_breakpoint(sym["after_call"])
    other = 1 - e.vcpu_id
    before = [v.icount for v in board.vcpus]
    s = m.step(e.vcpu_id, others_run=True)
    assert (s.kind, s.vcpu_id) == (StopKind.STEP, e.vcpu_id)
    assert board.vcpus[e.vcpu_id].icount == before[e.vcpu_id] + 1
    if isinstance(board, SmpBoard):
        # Only the stepped vCPU had SINGLESTEP: the other ran its turn (if it came first) whole.
        assert board.vcpus[other].icount - before[other] in (0, SLICE)


def test_interrupt_stops_all(any_smp):
    m, board, sym = any_smp
    m.interrupt()
    e = m.cont()
    assert e.kind is StopKind.SIGNAL and e.signal == signal.SIGINT
    assert e.vcpu_id in (0, 1)


# ---------------------------------------------------------------------------------------------
# the GDB session over the manager


def test_session_threads_and_stop_replies(smp_elf):
    m, board, sym = make(smp_elf, 4)
    s = GdbSession(m)

    def ask(p: bytes) -> bytes:
        r = s.handle(p)
        assert isinstance(r, Reply), r
        return r.payload

    assert ask(b"qfThreadInfo") == b"m1,2,3,4" and ask(b"qsThreadInfo") == b"l"
    assert bytes.fromhex(ask(b"qThreadExtraInfo,3").decode()) == b"CPU#2 [running]"
    board.powered_off.add(3)
    assert bytes.fromhex(ask(b"qThreadExtraInfo,4").decode()) == b"CPU#3 [off    ]"
    assert ask(b"T4") == b"OK" and ask(b"T5")[:1] == b"E"
    # Hg picks the vCPU whose registers g and p read.
    assert ask(b"Hg3") == b"OK" and ask(b"qC") == b"QC3"
    pc_regnum = 32
    board.vcpus[2].set_one_reg(kr.KVM_REG_ARM_CORE_PC, sym["shared"])
    assert int.from_bytes(bytes.fromhex(ask(b"p%x" % pc_regnum).decode()), "little") == sym["shared"]
    assert ask(b"Hg9")[:1] == b"E" and ask(b"qC") == b"QC3"  # no such thread: nothing changes
    assert ask(b"Hg0") == b"OK" and m.current_vcpu == 2      # "any": the current one stays
    board.vcpus[2].set_one_reg(kr.KVM_REG_ARM_CORE_PC, board.vcpus[0].pc)
    # vCont per-thread actions become per-vCPU resumes.
    assert s.handle(b"vCont;s:2;c") == Resume(step=True, vcpu=1, alone=False)
    assert s.handle(b"vCont;s:2") == Resume(step=True, vcpu=1, alone=True)
    assert s.handle(b"vCont;c:3") == Resume(step=False, vcpu=2, alone=True)
    assert s.handle(b"vCont;c") == Resume(step=False)
    assert ask(b"vCont;s:4")[:1] == b"E"  # CPU#3 is off
    assert ask(b"Hc2") == b"OK" and s.handle(b"s") == Resume(step=True, vcpu=1, alone=True)
    assert ask(b"Hc-1") == b"OK" and s.handle(b"c") == Resume(step=False)
    # A stop names the vCPU that stopped, and makes it the current thread.
    assert ask(b"Z2,%x,8" % (sym["counters"] + 8 * 2)) == b"OK"
    stop = s.stopped(m.cont())
    assert b"thread:3;" in stop and b"watch:%x;" % (sym["counters"] + 16) in stop
    assert ask(b"qC") == b"QC3" and s.selected_thread[b"g"] == 3
    # The expedited PC is that vCPU's.
    assert b"20:%s;" % board.vcpus[2].pc.to_bytes(8, "little").hex().encode() in stop
    # Stepping thread 2 alone, as gdb's `thread 2` + `stepi` with scheduler-locking.
    assert ask(b"Hg2") == b"OK"
    before = [v.pc for v in board.vcpus]
    reply = s.stopped(s.handle(b"vCont;s:2").run(m))
    assert b"T05" in reply and b"thread:2;" in reply
    assert board.vcpus[1].pc != before[1] and [v.pc for i, v in enumerate(board.vcpus) if i != 1] == \
        [p for i, p in enumerate(before) if i != 1]


def test_monitor_info_version_and_cpus(smp):
    m, board, sym = smp
    s = GdbSession(m)
    text = s.monitor.run("info version")
    assert text.strip() and "guestdbg" in text  # Linux's scripts/gdb: non-empty means QEMU
    board.vcpus[1].set_one_reg(kr.KVM_REG_ARM_CORE_PC, sym["shared"])
    board.powered_off.add(1)
    m.select_vcpu(1)
    assert s.monitor.run("info cpus") == (f"  CPU #0: pc={board.vcpus[0].pc:#x} (running) thread 1\n"
                                          f"* CPU #1: pc={sym['shared']:#x} (off) thread 2\n")
