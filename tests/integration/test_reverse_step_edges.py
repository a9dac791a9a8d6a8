"""Reverse steps at their edges (issue 12), pinned for mutation testing of debug/manager.py:
exceptions entered without retiring an instruction (a data abort, a prefetch abort at a PC the
debugger cannot read, an interrupt), an architecture or vCPU that lacks the manager's optional
hooks, several vCPUs, and what a reverse step costs (checkpoints restored). Small guests
assembled here; exact PCs, instruction counts and stops."""

from __future__ import annotations

import time

import pytest

from guestdbg.board.common import elf_symbols
from guestdbg.board.virt import VirtConfig, VirtMachine
from guestdbg.debug.manager import GuestDebugManager, StopKind
from tests.helpers.mmu_guest import assemble
from tests.helpers.support import GIC_SPI40, Without

UNMAPPED = 0x7FF0_0000  # past the default 128 MiB of RAM at 0x4000_0000


class _Without(Without):
    """`Without`, forwarding the attributes set on it (but its own) to `obj`."""

    def __setattr__(self, name, value):
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._obj, name, value)


def _load(tmp_path, name: str, source: str, smp: int = 1) -> tuple[VirtMachine, GuestDebugManager, dict[str, int]]:
    elf = assemble(tmp_path, name, source)
    m = VirtMachine(VirtConfig(smp=smp), console=lambda b: None)
    m.load_elf(elf)
    return m, GuestDebugManager(m), elf_symbols(elf)


def _where(m: VirtMachine, event) -> tuple:
    return (event.kind, event.pc, event.history_edge, m.vcpu.pc, m.vcpu.icount)


# ---------------------------------------------------------------------------------------------
# an interrupt entry: two states share an instruction count (the arrival, and the vector)

IRQ_S = r"""
    .text
    .global _start, plain, raise_irq, interrupted, vectors
_start:
    ldr     x0, =vectors
    msr     vbar_el1, x0
    isb
    mov     x5, #1
plain:
    add     x5, x5, #1                 // 0x910004a5: byte-swapped it is no data processing
    add     x5, x5, #1
""" + GIC_SPI40 + r"""
raise_irq:
    str     w2, [x1, #0x204]           // GICD_ISPENDR1: taken where this block ends
    add     x4, x4, #1
    add     x4, x4, #1
    add     x4, x4, #1
    b       1f                         // the block ends here
interrupted:
1:  b       1b
    .balign 2048
vectors:
    .skip   0x280
irq:
    add     x7, x7, #1
    add     x7, x7, #1
    b       .
"""


def _irq(tmp_path):
    m, mgr, sym = _load(tmp_path, "irq", IRQ_S)
    mgr.start_recording(interval=1000)
    return m, mgr, sym


def _step_to(m, mgr, pc: int, limit: int = 100) -> int:
    for _ in range(limit):
        if m.vcpu.pc == pc:
            return m.vcpu.icount
        assert mgr.step().kind is StopKind.STEP
    raise AssertionError(f"never at {pc:#x}")


def _past_the_entry(m, mgr, sym) -> int:
    """Steps to the interrupted branch, into the interrupt (the vector, no instruction
    retired) and past the vector's first instruction. Returns the count at the branch."""
    t = _step_to(m, mgr, sym["interrupted"])
    vector = sym["vectors"] + 0x280
    assert (mgr.step().pc, m.vcpu.icount) == (vector, t)
    assert (mgr.step().pc, m.vcpu.icount) == (vector + 4, t + 1)
    return t


def test_reverse_steps_through_an_interrupt_entry_say_where_they_land(tmp_path):
    """From past the vector's first instruction back to the vector (a step from the branch
    enters the interrupt: the careful path finds it), from the vector back to the branch (the
    arrival: the same count), then back over the add before it."""
    m, mgr, sym = _irq(tmp_path)
    t = _past_the_entry(m, mgr, sym)
    vector, branch = sym["vectors"] + 0x280, sym["interrupted"]
    assert _where(m, mgr.reverse_step()) == (StopKind.STEP, vector, None, vector, t)
    assert mgr.read_register("x7") == 0
    assert _where(m, mgr.reverse_step()) == (StopKind.STEP, branch, None, branch, t)
    assert _where(m, mgr.reverse_step()) == (StopKind.STEP, branch - 4, None, branch - 4, t - 1)
    assert mgr.read_register("x4") == 3


def test_without_the_architectures_vector_test_a_reverse_step_goes_back_by_count(tmp_path):
    """An architecture that cannot say where its vectors are: from the vector, a reverse step
    goes back one instruction count (over the branch and the entry together)."""
    m, mgr, sym = _irq(tmp_path)
    t = _past_the_entry(m, mgr, sym)
    vector, branch = sym["vectors"] + 0x280, sym["interrupted"]
    mgr.reverse_step()
    assert (m.vcpu.pc, m.vcpu.icount) == (vector, t)
    mgr.arch = _Without(mgr.arch, "at_exception_vector")
    assert _where(m, mgr.reverse_step()) == (StopKind.STEP, branch - 4, None, branch - 4, t - 1)


def test_without_the_architectures_instruction_test_every_reverse_step_is_careful(tmp_path):
    """An architecture that cannot say which instructions never fault: every reverse step
    steps to find out (two restores, not one), and still lands right."""
    m, mgr, sym = _irq(tmp_path)
    t = _past_the_entry(m, mgr, sym)
    mgr.arch = _Without(mgr.arch, "never_takes_an_exception")
    vector = sym["vectors"] + 0x280
    assert _where(m, mgr.reverse_step()) == (StopKind.STEP, vector, None, vector, t)
    mgr.seek_to(5)
    restored = mgr.record_status()["restored"]
    plain = sym["plain"]
    assert _where(m, mgr.reverse_step()) == (StopKind.STEP, plain, None, plain, 4)
    assert mgr.record_status()["restored"] - restored == 2


@pytest.mark.parametrize("how", ["hidden", "says-yes"])
def test_a_vcpu_that_cannot_say_whether_an_interrupt_is_coming_is_assumed_to_have_one(tmp_path, how):
    """A vCPU without interrupt_may_preempt: the reverse step from past the vector's first
    instruction steps to find out, and lands on the vector, as with one that says yes."""
    m, mgr, sym = _irq(tmp_path)
    t = _past_the_entry(m, mgr, sym)
    if how == "hidden":
        mgr._vcpus = [_Without(m.vcpu, "interrupt_may_preempt")]
    else:
        mgr._vcpus = [_Without(m.vcpu, interrupt_may_preempt=lambda: True)]
    vector = sym["vectors"] + 0x280
    assert _where(m, mgr.reverse_step()) == (StopKind.STEP, vector, None, vector, t)


@pytest.mark.parametrize("insn", ["mov", "add"])
def test_a_reverse_step_over_plain_code_with_no_interrupt_to_come_replays_once(tmp_path, insn):
    """Over a data-processing instruction with no interrupt to come (the timers idle, the IRQ
    line low), a reverse step restores one checkpoint and replays to it: no step to find out
    whether it entered an exception."""
    m, mgr, sym = _irq(tmp_path)
    plain = sym["plain"]
    _step_to(m, mgr, plain + 8)
    target = plain - 4 if insn == "mov" else plain + 4
    if insn == "mov":
        mgr.seek_to(4)
    restored = mgr.record_status()["restored"]
    at = m.vcpu.icount
    assert _where(m, mgr.reverse_step()) == (StopKind.STEP, target, None, target, at - 1)
    assert mgr.record_status()["restored"] - restored == 1
    assert mgr.read_register("x5") == (0 if insn == "mov" else 2)


# ---------------------------------------------------------------------------------------------
# a vCPU that counts no instructions

def test_a_vcpu_that_counts_no_instructions_is_at_the_start_of_its_history(tmp_path):
    """A vCPU without `icount` (as x86's): a reverse step has nothing to go back over; it
    stops where it is, at the history's start edge, and moves nothing."""
    m, mgr, sym = _irq(tmp_path)
    for _ in range(3):
        mgr.step()
    mgr._vcpus = [_Without(m.vcpu, "icount")]
    e = mgr.reverse_step()
    assert (e.kind, e.pc, e.history_edge) == (StopKind.SIGNAL, sym["_start"] + 12, "begin")
    assert (m.vcpu.pc, m.vcpu.icount, mgr.record_status()["now"]) == (sym["_start"] + 12, 3, 3)


COUNTER_S = r"""
    .text
    .global _start, read
_start:
    mov     x1, #1
read:
    mrs     x0, cntvct_el0
    add     x1, x1, #1
    b       .
"""


def test_a_careful_reverse_step_gives_the_host_clocks_catch_up_logged_where_it_stopped(tmp_path):
    """On the host's clock (paced while recording) a resume after a stop logs the clock's
    catch-up there, after the stop. A reverse step back over the counter read at that count
    steps it once to see whether it enters an exception: that step gives the catch-up first,
    as the recorded run did, and the read it replays sees the value the run read."""
    elf = assemble(tmp_path, "counter", COUNTER_S)
    m = VirtMachine(VirtConfig(), console=lambda b: None, clock_mode="host")
    m.load_elf(elf)
    sym = elf_symbols(elf)
    mgr = GuestDebugManager(m)
    mgr.start_recording(interval=1000)
    assert mgr.step().pc == sym["read"]
    time.sleep(0.02)  # host time passes while stopped: the next resume catches up
    assert mgr.step().pc == sym["read"] + 4
    read = mgr.read_register("x0")
    h = mgr._history
    assert h is not None and [e.kind for e in h.events if e.time == 1] == ["split", "clock"]
    assert _where(m, mgr.reverse_step()) == (StopKind.STEP, sym["read"], None, sym["read"], 1)
    assert _where(m, mgr.step()) == (StopKind.STEP, sym["read"] + 4, None, sym["read"] + 4, 2)
    assert mgr.read_register("x0") == read


# ---------------------------------------------------------------------------------------------
# several vCPUs: back one instruction of one vCPU, in the recorded schedule

SMP_S = r"""
    .text
    .global _start, secondary, spin
_start:
    mov     x5, #1
    add     x5, x5, #1
    ldr     x0, =0xc4000003            // PSCI CPU_ON
    mov     x1, #1
    ldr     x2, =secondary
    mov     x3, #0
    hvc     #0
    mov     x6, #4000
spin:
    subs    x6, x6, #1
    b.ne    spin
    ldr     x0, =0x84000008            // PSCI SYSTEM_OFF
    hvc     #0
    b       .
secondary:
    mov     x7, #1
    add     x7, x7, #1
    add     x7, x7, #1
2:  add     x8, x8, #1
    b       2b
"""


def _smp(tmp_path, **recording):
    m, mgr, sym = _load(tmp_path, "smp2", SMP_S, smp=2)
    mgr.start_recording(**({"interval": 1000} | recording))
    return m, mgr, sym


def _smp_where(m, mgr, e) -> tuple:
    return (e.kind, e.vcpu_id, e.pc, e.history_edge, m.vcpus[0].icount, m.vcpus[1].icount, mgr.record_status()["now"])


def test_with_several_vcpus_a_reverse_step_over_the_first_instruction_reaches_the_start(tmp_path):
    """vCPU 0's first instruction: back over it is the history's start, as a step (the
    start edge is only for a reverse step from there)."""
    m, mgr, sym = _smp(tmp_path)
    start = sym["_start"]
    assert mgr.step(0).pc == start + 4
    assert _smp_where(m, mgr, mgr.reverse_step(0)) == (StopKind.STEP, 0, start, None, 0, 0, 0)
    assert mgr.read_register("x5") == 0
    assert _smp_where(m, mgr, mgr.reverse_step(0)) == (StopKind.SIGNAL, 0, start, "begin", 0, 0, 0)


def test_with_several_vcpus_reverse_steps_go_back_one_instruction_of_that_vcpu(tmp_path):
    """vCPU 0 starts vCPU 1 and both run, in short turns. While recording a step of vCPU 1
    goes through the scheduler (vCPU 0 may run in between); reverse steps of vCPU 1 go back
    over its own instructions, one at a time, to the machine times its forward steps stopped
    at, vCPU 0 as it was then."""
    m, mgr, sym = _smp(tmp_path)
    m.quantum = 50
    secondary = sym["secondary"]
    mgr.add_hw_breakpoint(secondary + 12)
    e = mgr.cont()
    assert (e.kind, e.vcpu_id, e.pc, m.vcpus[1].icount) == (StopKind.HWBREAK, 1, secondary + 12, 3)
    mgr.remove_hw_breakpoint(secondary + 12)
    trail = []
    for _ in range(4):
        trail.append((m.vcpus[1].pc, m.vcpus[0].icount, m.vcpus[1].icount, m.machine_now))
        assert mgr.step(1).kind is StopKind.STEP
    assert m.vcpus[1].icount == 7 and m.machine_now == m.vcpus[0].icount + 7
    for pc, icount0, icount1, now in reversed(trail):
        e = mgr.reverse_step(1)
        assert _smp_where(m, mgr, e) == (StopKind.STEP, 1, pc, None, icount0, icount1, now)
    assert mgr.read_register("x7") == 3 and mgr.read_register("x8") == 0
    # vCPU 0 too: back one of its instructions from here.
    before = (m.vcpus[0].pc, m.vcpus[0].icount)
    e = mgr.reverse_step(0)
    assert (e.kind, e.vcpu_id, e.history_edge, m.vcpus[0].icount) == (StopKind.STEP, 0, None, before[1] - 1)
    assert e.pc == m.vcpus[0].pc and m.vcpus[0].pc in (before[0], before[0] - 4, sym["spin"] + 4)


def test_with_several_vcpus_reverse_cont_finds_a_hit_the_debugger_jumped_away_from(tmp_path):
    """vCPU 1 stops at a breakpoint on its first add and the debugger jumps it past the next
    one (set_pc). reverse_cont from later, the breakpoint there again: the replay meets the hit
    before the jump, on vCPU 1, at its machine time; a step of vCPU 1 from there replays the
    jump (x7 stays 1, the add at 2: runs)."""
    m, mgr, sym = _smp(tmp_path)
    m.quantum = 50
    secondary = sym["secondary"]
    mgr.add_breakpoint(secondary + 4)
    e = mgr.cont()
    hit = (m.vcpus[0].icount, m.vcpus[1].icount, mgr.record_status()["now"])
    assert (e.kind, e.vcpu_id, e.pc) == (StopKind.SWBREAK, 1, secondary + 4)
    mgr.set_pc(secondary + 12)
    mgr.remove_breakpoint(secondary + 4)
    assert mgr.step(1).pc == secondary + 16
    mgr.add_breakpoint(secondary + 4)
    e = mgr.reverse_cont()
    assert _smp_where(m, mgr, e) == (StopKind.SWBREAK, 1, secondary + 4, None, *hit)
    assert (mgr.read_register("x7"), mgr.read_register("x8")) == (1, 0)
    mgr.remove_breakpoint(secondary + 4)
    assert mgr.step(1).pc == secondary + 16
    assert (mgr.read_register("x7"), mgr.read_register("x8")) == (1, 1)


def test_with_several_vcpus_a_reverse_step_where_the_history_starts_mid_run_is_the_start(tmp_path):
    """--record-mem so small that the history keeps one checkpoint: a seek's inserted one
    becomes the start, inside a stretch vCPU 1 ran. There, vCPU 1's instruction before is
    older than the history (its time is the start itself): a reverse step of either vCPU is
    the start edge, and the machine stays where it is."""
    probe = GuestDebugManager(VirtMachine(VirtConfig(smp=2), console=lambda b: None))
    probe.start_recording(interval=10_000)
    m, mgr, sym = _load(tmp_path, "smp2", SMP_S, smp=2)
    m.quantum = 300
    mgr.start_recording(interval=10_000, mem_limit=probe.record_status()["memory"])
    assert mgr.cont().kind is StopKind.EXITED
    end = mgr.record_status()["end"]
    mgr.seek_to(end - 800)  # inserts a checkpoint on the way; the old start goes
    begin = mgr.record_status()["begin"]
    h = mgr._history
    assert h is not None and h.segments[1][0][0] < begin < h.segments[1][0][0] + h.segments[1][0][2] - h.segments[1][0][1]
    mgr.seek_to(begin)
    here = (m.vcpus[0].icount, m.vcpus[1].icount, begin)
    for vcpu in (1, 0):
        pc = m.vcpus[vcpu].pc
        assert _smp_where(m, mgr, mgr.reverse_step(vcpu)) == (StopKind.SIGNAL, vcpu, pc, "begin", *here)


# ---------------------------------------------------------------------------------------------
# reverse_cont's shortcut (skip an interval the dirty log says no watched page was stored to)
# holds only where watched addresses are physical: the MMU off now and at both ends

ALIAS_VA = 0x4140_0000   # with the MMU on: the 2 MiB at PA 0x4160_0000 (elsewhere identity)
ALIAS_PA = 0x4160_0000


def _mmu_detour_source() -> str:
    from tests.helpers.mmu_guest import MMU_ASM_HEADER, level2_table
    alias_block = (ALIAS_VA - 0x4000_0000) >> 21
    table = level2_table("ram_l2", lambda n: 0x4000_0000 + ((n + 1 if n == alias_block else n) << 21))
    return MMU_ASM_HEADER + r"""
    .text
    .global _start, store, mmu_off
_start:
    mov     x2, #750
1:  subs    x2, x2, #1                 // MMU off: 1,500 instructions
    b.ne    1b
    enable_mmu ttbr0_l1, ttbr1_l1
    ldr     x6, =0x41400000
    mov     x7, #0x77
store:
    str     x7, [x6]                   // VA 0x41400000: PA 0x41600000
    mov     x2, #400
2:  subs    x2, x2, #1                 // MMU on: 800 instructions (a checkpoint in here)
    b.ne    2b
mmu_off:
    mrs     x0, sctlr_el1
    bic     x0, x0, #1
    msr     sctlr_el1, x0
    isb
    mov     x2, #100
3:  subs    x2, x2, #1                 // MMU off again, to the end
    b.ne    3b
    ldr     x0, =0x84000008            // PSCI SYSTEM_OFF
    hvc     #0
    b       .
    .data
    .balign 4096
ttbr0_l1:
    .quad   0x00000000 | BLOCK_DEVICE
    .quad   ram_l2 + 3
    .fill   510, 8, 0
ttbr1_l1:
    .quad   RAM | BLOCK_NORMAL
    .fill   511, 8, 0
    .balign 4096
""" + table


@pytest.mark.parametrize("in_run", [False, True], ids=["brk", "in-run"])
def test_a_condition_reads_guest_memory_by_virtual_address(tmp_path, in_run):
    """A Python condition reading 0x41400000 while the MMU maps it to PA 0x41600000: it reads
    what the guest stored there through that VA (0x77), not the physical page at 0x41400000."""
    m, mgr, sym = _load(tmp_path, "detour", _mmu_detour_source())
    mgr.in_run_breakpoints = in_run
    mgr.add_breakpoint(sym["mmu_off"], condition=lambda view: view.read_u64(ALIAS_VA) == 0x77)
    e = mgr.cont()
    assert (e.kind, e.pc, mgr.read_register("x7")) == (StopKind.SWBREAK, sym["mmu_off"], 0x77)
    assert mgr.read_memory(ALIAS_PA, 8, physical=True) == (0x77).to_bytes(8, "little")
    assert mgr.read_memory(ALIAS_VA, 8, physical=True) == bytes(8)


def test_reverse_continue_replays_an_interval_that_ends_with_the_mmu_on(tmp_path):
    """A write watch on 0x41400000, from the end (MMU off): the MMU was on from before the
    store to past the second checkpoint, with 0x41400000 mapped to other memory. The dirty log
    never saw the watched physical page written, yet the interval from the checkpoint before
    the store (MMU off) to the next (MMU on) must be replayed: there the watch is a VA, and
    the store to it is the stop. Also from a point with the MMU on: every interval replayed."""
    from guestdbg.debug.manager import WatchKind
    m, mgr, sym = _load(tmp_path, "mmu_detour", _mmu_detour_source())
    mgr.start_recording(interval=1000)
    assert mgr.cont().kind is StopKind.EXITED
    times = [c.time for c in mgr._history.checkpoints]
    assert len(times) == 3 and times[1] < 1500 < 1520 < times[2] < 2300 < mgr.record_status()["end"] < 3000, times
    mgr.add_watchpoint(ALIAS_VA, 8, WatchKind.WRITE)
    store = sym["store"]
    for start_at in ("end", "mmu on"):
        if start_at == "mmu on":
            mgr.seek_to(times[2] + 10)
        e = mgr.reverse_cont()
        assert (e.kind, e.pc, e.watch_addr, e.history_edge) == (StopKind.WATCH, store, ALIAS_VA, None)
        assert (m.vcpu.pc, mgr.read_register("x7")) == (store, 0x77)
        assert mgr.read_memory(ALIAS_VA, 8) == bytes(8)
        assert mgr.read_memory(ALIAS_PA, 8, physical=True) == bytes(8)


LATE_STORE_S = r"""
    .text
    .global _start, store
_start:
    ldr     x6, =target
    mov     x2, #600
1:  subs    x2, x2, #1
    b.ne    1b
    mov     x7, #0x55
store:
    str     x7, [x6]                   // after the second checkpoint
    mov     x2, #10
2:  subs    x2, x2, #1
    b.ne    2b
    ldr     x0, =0x84000008            // PSCI SYSTEM_OFF
    hvc     #0
    b       .
    .bss
    .balign 4096
target: .skip 8
"""


def test_reverse_continue_without_a_dirty_log_replays_every_interval(tmp_path):
    """A VM with no dirty log (no get_dirty_log): which pages a stretch stored to is not
    known, so no interval is skipped; the watch finds the one store, in the last interval."""
    from guestdbg.debug.manager import WatchKind
    elf = assemble(tmp_path, "late_store", LATE_STORE_S)
    m = VirtMachine(VirtConfig(), console=lambda b: None)
    m.load_elf(elf)
    sym = elf_symbols(elf)
    m.vm = _Without(m.vm, "get_dirty_log")
    mgr = GuestDebugManager(m)
    mgr.start_recording(interval=1000)
    assert mgr.cont().kind is StopKind.EXITED
    times = [c.time for c in mgr._history.checkpoints]
    assert len(times) == 2 and times[1] < 1203 < mgr.record_status()["end"], times
    mgr.add_watchpoint(sym["target"], 8, WatchKind.WRITE)
    e = mgr.reverse_cont()
    assert (e.kind, e.pc, e.watch_addr, e.history_edge) == (StopKind.WATCH, sym["store"], sym["target"], None)
    assert (m.vcpu.icount, mgr.read_memory(sym["target"], 8)) == (1203, bytes(8))
    mgr.seek_to(times[1])
    e = mgr.reverse_cont()  # nothing before: the start
    assert (e.kind, e.pc, e.history_edge, m.vcpu.icount) == (StopKind.SIGNAL, sym["_start"], "begin", 0)


# ---------------------------------------------------------------------------------------------
# a reset while recording: the new history keeps the recorder's own state in its checkpoints


def test_console_input_after_a_reset_while_recording_is_replayed(guest_dir):
    """The echo guest reads a line while recording, is reset (a new history), then given
    its input: back at the new history's start and forward again, the guest reads the same
    input in the replay (the checkpoints hold how many reads of the console came before, the
    ones before the reset included) and reaches its own end, in the same state, showing
    nothing twice."""
    import threading
    from tests.helpers.support import typed_console
    out: list[bytes] = []
    m = VirtMachine(VirtConfig(), console=out.append)
    m.load_elf(guest_dir / "echo.elf")
    typed = typed_console(m)
    mgr = GuestDebugManager(m)
    mgr.start_recording(interval=5000)
    typed.push(b"ab\n")
    for _ in range(50):  # until the guest has echoed the line (a Ctrl-C ends each run)
        timer = threading.Timer(0.05, mgr.interrupt)
        timer.start()
        assert mgr.cont().kind is StopKind.SIGNAL
        timer.join()
        if b"AB" in b"".join(out):
            break
    assert mgr._console_pulls > 0
    mgr.reset()
    out.clear()
    typed.push(b"hello\nq\n")
    assert mgr.cont().kind is StopKind.EXITED
    shown = b"".join(out)
    assert b"HELLO" in shown
    end = (m.vcpu.icount, m.vcpu.pc, mgr.read_registers())
    mgr.seek_to(mgr.record_status()["begin"])
    assert m.vcpu.icount == 0
    e = mgr.cont()
    assert (e.kind, e.history_edge) == (StopKind.EXITED, None)
    assert (m.vcpu.icount, m.vcpu.pc, mgr.read_registers()) == end
    assert b"".join(out) == shown


# ---------------------------------------------------------------------------------------------
# the instruction at PC, read to decide whether a reverse step must step to find out


def _ram_end_loop(tmp_path) -> tuple[VirtMachine, GuestDebugManager]:
    """RAM's last two words: `add x1, x1, #1; b .-4`, jumped to from RAM's start."""
    ram, ram_end = 0x4000_0000, 0x4800_0000
    words = (0xD2A8FFE0, 0xF29FFF00, 0xD61F0000)  # movz x0, #0x47ff, lsl #16; movk x0, #0xfff8; br x0
    image = tmp_path / "ram_end.bin"
    image.write_bytes(b"".join(w.to_bytes(4, "little") for w in words))
    m = VirtMachine(VirtConfig(), console=lambda b: None)
    m.load_raw(image, ram)
    m.vm.write_phys(ram_end - 8, (0x91000421).to_bytes(4, "little") + (0x17FFFFFF).to_bytes(4, "little"))
    mgr = GuestDebugManager(m)
    mgr.start_recording(interval=1000)
    for pc in (ram + 4, ram + 8, ram_end - 8, ram_end - 4, ram_end - 8):
        assert mgr.step().pc == pc
    return m, mgr


def test_a_reverse_step_onto_rams_last_word_reads_just_that_instruction(tmp_path):
    """The branch in RAM's last word is readable (4 bytes, to the end): plain code, so a
    reverse step onto it replays once; onto the add before it, the same."""
    m, mgr = _ram_end_loop(tmp_path)
    for pc, icount in ((0x4800_0000 - 4, 4), (0x4800_0000 - 8, 3)):
        restored = mgr.record_status()["restored"]
        assert _where(m, mgr.reverse_step()) == (StopKind.STEP, pc, None, pc, icount)
        assert mgr.record_status()["restored"] - restored == 1


def test_an_instruction_the_debugger_cannot_read_makes_a_reverse_step_careful(tmp_path, monkeypatch):
    """Where the debugger cannot read the instruction at PC, a reverse step cannot tell that
    it never faults: it steps to find out (two restores, not one), and lands right."""
    from guestdbg.debug.manager import DebugError
    m, mgr = _ram_end_loop(tmp_path)
    real = mgr._read_memory

    def unreadable(addr, length, *args, **kwargs):
        if addr == 0x4800_0000 - 4:
            raise DebugError(14, f"cannot read {addr:#x}")
        return real(addr, length, *args, **kwargs)

    monkeypatch.setattr(mgr, "_read_memory", unreadable)
    restored = mgr.record_status()["restored"]
    pc = 0x4800_0000 - 4
    assert _where(m, mgr.reverse_step()) == (StopKind.STEP, pc, None, pc, 4)
    assert mgr.record_status()["restored"] - restored == 2
