"""Reverse execution (issue 12) on the emulated board: the recorded history, replay, and the
manager's reverse_step / reverse_cont / seek_to.

The reference for "the state at instruction N" is a *straight run*: a fresh machine, no
debugger, run with the board's icount limit to N. Every check compares a whole fingerprint
(vCPU 0's full ONE_REG list, the device state, and a hash of the guest's memory) with it.

The guest (guests/history) takes a timer interrupt every 1600 instructions and folds the
interrupt count into what it computes, so an interrupt replayed one instruction early or late
changes the memory it writes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import random
import threading

import pytest

from guestdbg import kvm
from guestdbg.board.virt import RAM_BASE, VirtConfig, VirtMachine
from guestdbg.debug.manager import DebugError, GuestDebugManager, StopKind, WatchKind
from tests.helpers.support import GIC_SPI40, symbols, typed_console

IMAGE_SPAN = 4 << 20  # the guests' image, data, bss and stack: the memory a fingerprint hashes


def machine(elf, out: list[bytes] | None = None, **config) -> VirtMachine:
    m = VirtMachine(VirtConfig(**config), console=(out.append if out is not None else lambda b: None))
    m.load_elf(elf)
    return m


def fingerprint(m: VirtMachine) -> tuple:
    v = m.vcpu
    regs = tuple(v.get_one_reg(r) for r in v.get_reg_list())
    devices = json.dumps(m.device_state(), sort_keys=True)
    memory = hashlib.sha256(m.vm.read_phys(RAM_BASE, IMAGE_SPAN)).hexdigest()
    return (v.icount, v.pc, hashlib.sha256(repr(regs).encode()).hexdigest(), devices, memory)


def straight_run(elf, points: list[int]) -> dict[int, tuple]:
    """The fingerprint at each of `points` (instruction counts) of a run with no debugger."""
    m = machine(elf)
    out = {}
    for t in sorted(set(points)):
        while m.vcpu.icount < t:
            run = m.run_until(icount_limit=t)
            assert not isinstance(run, kvm.KvmRun) or run.exit_reason in (kvm.EXIT_ICOUNT_LIMIT, kvm.KVM_EXIT_INTR), run
        out[t] = fingerprint(m)
    return out


@pytest.fixture(scope="module")
def history_elf(guest_dir):
    return guest_dir / "history.elf"


@pytest.fixture(scope="module")
def syms(history_elf):
    return symbols(str(history_elf))


def recorded(elf, *, interval: int | None = 5000, mem_limit: int | None = None, out=None):
    m = machine(elf, out)
    mgr = GuestDebugManager(m)
    mgr.start_recording(interval=interval, mem_limit=mem_limit)
    return m, mgr


def run_to_exit(mgr: GuestDebugManager):
    event = mgr.cont()
    assert event.kind is StopKind.EXITED, event
    return event


def test_the_guest_depends_on_where_its_interrupts_land(history_elf):
    """Sanity: the guest's result changes if its timer interrupts move (a checksum and an
    interrupt count that a straight run prints; a different tick period would change both)."""
    out: list[bytes] = []
    m = machine(history_elf, out)
    assert m.run_to_exit() == 0
    text = b"".join(out).decode()
    assert text.startswith("history: 0x") and int(text.split("ticks ")[1]) > 30, text


def test_seek_reaches_the_state_of_a_straight_run_everywhere(history_elf, syms):
    """The whole run recorded (with the debugger stopping in it on the way: breakpoint hits
    stepped over, single steps), then 40 points of the history visited in random order: each
    one's fingerprint is the straight run's, including the start, checkpoint times and the end."""
    m, mgr = recorded(history_elf)
    mgr.add_breakpoint(syms["mix"])
    for _ in range(5):
        assert mgr.cont().kind is StopKind.SWBREAK
        for _ in range(3):
            mgr.step()
    mgr.remove_breakpoint(syms["mix"])
    run_to_exit(mgr)
    status = mgr.record_status()
    assert status["checkpoints"] > 5
    end = status["end"]
    rng = random.Random(12)
    checkpoint_times = [c.time for c in mgr._history.checkpoints]
    points = [0, end, *rng.sample(checkpoint_times, 4), *[c + 1 for c in checkpoint_times[:3]],
              *(rng.randrange(end) for _ in range(31))]
    reference = straight_run(history_elf, points)
    rng.shuffle(points)
    for t in points:
        mgr.seek_to(t)
        assert fingerprint(m) == reference[t], t


def test_reverse_steps_retrace_the_forward_steps(history_elf, syms):
    """60 forward steps through an interrupt (steps take interrupts while recording), then 60
    reverse steps: each lands on the state the forward steps passed, and stepping forward again
    passes them once more."""
    m, mgr = recorded(history_elf)
    mgr.add_hw_breakpoint(syms["exception_handler"])
    for _ in range(3):
        assert mgr.cont().kind is StopKind.HWBREAK
    mgr.remove_hw_breakpoint(syms["exception_handler"])
    for _ in range(30):  # leave the handler's first instructions behind, into mix's loop
        mgr.step()
    trace = [fingerprint(m)]
    for _ in range(60):
        assert mgr.step().kind is StopKind.STEP
        trace.append(fingerprint(m))
    assert len({t[0] for t in trace}) > 50  # icounts move on
    for expected in reversed(trace[:-1]):
        event = mgr.reverse_step()
        assert event.kind is StopKind.STEP and event.history_edge is None
        assert fingerprint(m) == expected
    for expected in trace[1:]:
        mgr.step()
        assert fingerprint(m) == expected


def test_reverse_steps_retrace_an_interrupt_entry(history_elf, syms):
    """A step that takes an interrupt retires no instruction: the state at the vector shares
    its instruction count with the one before. Reverse steps visit both, as forward steps did
    (from the vector back to the interrupted instruction, from past the vector's first
    instruction back to the vector)."""
    m, mgr = recorded(history_elf)
    irq_vector = syms["vectors"] + 0x280  # IRQ, current EL with SP_ELx
    mgr.add_hw_breakpoint(irq_vector)
    for _ in range(2):
        assert mgr.cont().kind is StopKind.HWBREAK and m.vcpu.pc == irq_vector
    mgr.remove_hw_breakpoint(irq_vector)
    entered_at = m.vcpu.icount
    mgr.seek_to(entered_at - 15)  # forward steps from here replay up to the entry, then run live
    trace = [fingerprint(m)]
    for _ in range(30):
        assert mgr.step().kind is StopKind.STEP
        trace.append(fingerprint(m))
    at_vector = [i for i, f in enumerate(trace) if f[1] == irq_vector]
    assert len(at_vector) == 1 and trace[at_vector[0]][0] == trace[at_vector[0] - 1][0] == entered_at
    for expected in reversed(trace[:-1]):
        assert mgr.reverse_step().kind is StopKind.STEP
        assert fingerprint(m) == expected
    for expected in trace[1:]:
        mgr.step()
        assert fingerprint(m) == expected


def test_reverse_continue_returns_to_every_breakpoint_hit_newest_first(history_elf, syms):
    """Every hit of a breakpoint on the interrupt handler, noted on the way forward, is where
    reverse_cont stops, newest first; past the first one: the history's start, with
    history_edge "begin" (gdb's replaylog:begin)."""
    m, mgr = recorded(history_elf)
    handler = syms["exception_handler"]
    mgr.add_breakpoint(handler)
    hits = []
    while (event := mgr.cont()).kind is StopKind.SWBREAK:
        assert event.pc == handler
        hits.append(fingerprint(m))
    assert event.kind is StopKind.EXITED and len(hits) > 30
    for expected in reversed(hits):
        event = mgr.reverse_cont()
        assert (event.kind, event.pc, event.history_edge) == (StopKind.SWBREAK, handler, None)
        assert fingerprint(m) == expected
    event = mgr.reverse_cont()
    assert event.history_edge == "begin" and m.vcpu.icount == 0
    assert mgr.reverse_step().history_edge == "begin"


def test_reverse_continue_to_a_watchpoint_stops_before_the_store(history_elf, syms):
    """`watch ticks` from the end: reverse_cont stops at the handler's store to `ticks`, before
    it (the old value in memory, PC on the store), as a forward watchpoint stops on Arm."""
    m, mgr = recorded(history_elf)
    run_to_exit(mgr)
    ticks = syms["ticks"]
    final = int.from_bytes(mgr.read_memory(ticks, 8), "little")
    mgr.add_watchpoint(ticks, 8, WatchKind.WRITE)
    event = mgr.reverse_cont()
    assert event.kind is StopKind.WATCH and event.watch_addr == ticks
    assert int.from_bytes(mgr.read_memory(ticks, 8), "little") == final - 1
    insn = int.from_bytes(mgr.read_memory(event.pc, 4), "little")
    assert insn & 0x3B000000 == 0x39000000 or insn & 0x3B000000 == 0x38000000  # a load/store
    at = m.vcpu.icount
    assert mgr.step().kind is StopKind.STEP
    assert int.from_bytes(mgr.read_memory(ticks, 8), "little") == final
    mgr.reverse_step()
    assert m.vcpu.icount == at
    event = mgr.reverse_cont()  # the store before it
    assert event.kind is StopKind.WATCH
    assert int.from_bytes(mgr.read_memory(ticks, 8), "little") == final - 2


def test_forward_in_the_past_stops_at_the_live_end_then_runs_live(history_elf, syms):
    """Continuing in the past replays up to where the run had got to, and stops there (gdb's
    replaylog:end: "No more reverse-execution history"); the next continue runs live."""
    m, mgr = recorded(history_elf)
    mgr.add_breakpoint(syms["mix"])
    for _ in range(40):
        mgr.cont()
    mgr.remove_breakpoint(syms["mix"])
    live_end = fingerprint(m)
    for _ in range(3):
        mgr.reverse_step()
    mgr.seek_to(100)
    event = mgr.cont()
    assert event.history_edge == "end" and fingerprint(m) == live_end
    assert mgr.cont().kind is StopKind.EXITED


def test_writes_are_logged_at_the_live_end_and_refused_in_the_past(history_elf, syms):
    """The debugger's writes are inputs: made at the live end they are replayed at the same
    instruction (the end state after going back and forth is the same), made in the past they
    are refused (EROFS) and change nothing."""
    m, mgr = recorded(history_elf)
    mgr.add_breakpoint(syms["mix"])
    for _ in range(20):
        mgr.cont()
    written_at = m.vcpu.icount
    mgr.write_memory(syms["state"], (12345).to_bytes(8, "little"))
    mgr.write_register("x0", 777)  # mix(i): i is x0
    for _ in range(5):
        mgr.cont()
    mgr.remove_breakpoint(syms["mix"])
    run_to_exit(mgr)
    end = fingerprint(m)
    mgr.seek_to(written_at - 5)
    before = fingerprint(m)
    with pytest.raises(DebugError) as e:
        mgr.write_memory(syms["state"], b"\0" * 8)
    assert e.value.errno == errno.EROFS
    with pytest.raises(DebugError):
        mgr.write_register("x0", 1)
    assert fingerprint(m) == before
    mgr.seek_to(written_at)
    assert int.from_bytes(mgr.read_memory(syms["state"], 8), "little") == 12345
    assert mgr.read_register("x0") == 777
    assert mgr.cont().kind is StopKind.EXITED  # the recorded run's end was the guest's exit: again
    assert fingerprint(m) == end


@pytest.mark.parametrize("extra, start_moves", [(96 << 10, False), (8 << 10, True)])
def test_the_history_stays_within_its_memory_and_thins_out_into_the_past(history_elf, extra, start_moves):
    """A limit a little above the copy of guest memory: checkpoints are thinned (more near the
    present); with too little for even that, the oldest go and the history's start moves
    forward. Every point still in the history is reached exactly."""
    probe = GuestDebugManager(machine(history_elf))
    probe.start_recording(interval=2000)
    base = probe.record_status()["memory"]
    m, mgr = recorded(history_elf, interval=2000, mem_limit=base + extra)
    run_to_exit(mgr)
    status = mgr.record_status()
    assert status["memory"] <= status["limit"]
    assert status["thinned" if not start_moves else "dropped_start"] > 0
    assert (status["begin"] > 0) == start_moves
    times = [c.time for c in mgr._history.checkpoints]
    if len(times) > 3:
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert gaps[-1] <= gaps[0]  # denser near the present
    rng = random.Random(3)
    points = [status["begin"], *(rng.randrange(status["begin"], status["end"]) for _ in range(8))]
    reference = straight_run(history_elf, points)
    for t in points:
        mgr.seek_to(t)
        assert fingerprint(m) == reference[t]
    if start_moves:
        with pytest.raises(DebugError):
            mgr.seek_to(status["begin"] - 1)
        assert mgr.seek_to(status["begin"]) and mgr.reverse_step().history_edge == "begin"


def test_console_input_is_replayed_and_replayed_output_not_shown_again(guest_dir):
    """The echo guest under recording, with input typed (from another thread) while it runs:
    a trip back to the start and forward to the end gives the same state, and the console shows
    the guest's output once."""
    out: list[bytes] = []
    m, mgr = recorded(guest_dir / "echo.elf", out=out)
    typed = typed_console(m)
    stop = threading.Event()

    def typist() -> None:
        for line in (b"hello\n", b"reverse\n", b"q\n"):
            if stop.wait(0.05):
                return
            typed.push(line)
            mgr.wake()
    t = threading.Thread(target=typist)
    t.start()
    event = mgr.cont()
    stop.set()
    t.join()
    assert event.kind is StopKind.EXITED, event
    shown = b"".join(out)
    assert b"HELLO" in shown and b"REVERSE" in shown
    end = fingerprint(m)
    status = mgr.record_status()
    assert status["inputs"] >= 1  # the input, logged as it arrived (lines may arrive together)
    mgr.seek_to(0)
    assert mgr.cont().kind is StopKind.EXITED  # replayed to the guest's own end (its "q")
    assert fingerprint(m) == end
    assert b"".join(out) == shown  # nothing shown twice


def test_what_cannot_be_recorded_is_refused(history_elf, guest_dir):
    """Several vCPUs and the host's clock can be recorded (test_reverse_smp.py,
    test_reverse_host_clock.py). While recording, steps take interrupts (as QEMU's gdbstub in
    record/replay mode): `sstep irq off` is refused."""
    m = VirtMachine(VirtConfig(), console=lambda b: None, clock_mode="host")
    m.load_elf(history_elf)
    assert GuestDebugManager(m).can_record
    smp = VirtMachine(VirtConfig(smp=2), console=lambda b: None)
    smp.load_elf(history_elf)
    assert GuestDebugManager(smp).can_record
    m, mgr = recorded(history_elf)
    assert mgr.step_irqs
    with pytest.raises(DebugError):
        mgr.step_irqs = False
    with pytest.raises(DebugError):
        GuestDebugManager(machine(history_elf)).reverse_step()
    mgr.stop_recording()
    mgr.step_irqs = False  # the user's setting is back


def test_a_snapshot_load_starts_a_new_history(history_elf, tmp_path):
    m, mgr = recorded(history_elf)
    for _ in range(3):
        mgr.step()
    mgr.snapshot(tmp_path / "s")
    mgr.cont()
    mgr.restore(tmp_path / "s")
    status = mgr.record_status()
    assert status["begin"] == status["end"] == status["now"] == 3
    assert mgr.reverse_step().history_edge == "begin"


def test_reverse_continue_honours_breakpoint_conditions(history_elf, syms):
    """A conditional breakpoint (issue 13's, evaluated in the stub) stops reverse_cont only
    where its condition held when the hit was recorded."""
    m, mgr = recorded(history_elf)
    run_to_exit(mgr)
    mgr.add_breakpoint(syms["mix"], condition=lambda view: view.read_register("x0") % 500 == 7)
    seen = []
    while (event := mgr.reverse_cont()).history_edge is None:
        assert event.kind is StopKind.SWBREAK
        seen.append(mgr.read_register("x0"))
    assert seen == [2507, 2007, 1507, 1007, 507, 7]


@pytest.mark.parametrize("args, needle", [
    (["--record"], "--record needs --gdb"),
    (["--record", "--gdb", "unix:{sock}", "--record-mem", "64M"], "--record: the history needs more than a copy"),
    (["--record", "--arch", "x86_64"], "--record is not supported with --arch x86_64"),
])
def test_the_command_line_refuses_what_cannot_be_recorded(tmp_path, history_elf, args, needle):
    from tests.helpers.cli import assert_one_line, guestdbg
    args = [a.format(sock=tmp_path / "s") for a in args]
    r = guestdbg("run", history_elf, *args)
    assert r.returncode != 0
    assert_one_line(r.stderr, needle, after_log=True)


def test_a_run_without_the_debugger_starts_the_history_again(history_elf, syms):
    """The guest running free (before a debugger attaches to `--record` without --wait, or
    after a detach) is not recorded: the history starts again where the debugger takes over,
    rather than replaying a past that did not happen that way."""
    m, mgr = recorded(history_elf)
    m.run_until(icount_limit=5000)  # the server's free run goes straight to the board
    status = mgr.record_status()
    assert status["begin"] == status["end"] == 5000
    assert mgr.reverse_step().history_edge == "begin"
    mgr.add_breakpoint(syms["mix"])
    mgr.cont()
    mgr.detach()
    m.run_until(icount_limit=m.vcpu.icount + 100)
    at = m.vcpu.icount
    assert mgr.reverse_step().history_edge == "begin" and m.vcpu.icount == at
    for _ in range(3):
        mgr.step()
    mgr.reverse_step()
    assert m.vcpu.icount == at + 2


def test_ctrl_c_stops_a_long_reverse_continue_in_the_past(guest_dir):
    """A reverse_cont with nothing to find replays the whole history; interrupt() stops it
    where the replay is (SIGINT), in the past, from where forward execution replays to the end."""
    import signal
    m, mgr = recorded(guest_dir / "crunch.elf", interval=None)
    run_to_exit(mgr)
    end = m.vcpu.icount
    assert end > 5_000_000
    mgr.add_breakpoint(0x40000000)  # never reached
    timer = threading.Timer(0.05, mgr.interrupt)
    timer.start()
    event = mgr.reverse_cont()
    timer.join()
    assert event.kind is StopKind.SIGNAL and event.signal == signal.SIGINT and event.history_edge is None
    assert 0 < m.vcpu.icount < end and mgr.record_status()["now"] == m.vcpu.icount
    assert mgr.cont().kind is StopKind.EXITED and m.vcpu.icount == end


def test_reverse_continue_to_a_store_skips_intervals_no_store_touched(tmp_path):
    """With only write watches armed and the MMU off, reverse_cont replays no interval in which
    the dirty log saw no store to a watched page: the one write, millions of instructions back,
    is found with almost nothing replayed, and where it is found is exactly right."""
    from tests.helpers.mmu_guest import assemble
    from bench.bench_reverse import STORES_S
    from guestdbg.board.common import elf_symbols
    elf = assemble(tmp_path, "stores", STORES_S.format(passes=3))
    m, mgr = recorded(elf, interval=1_000_000)
    run_to_exit(mgr)
    check_reverse_cont_to_the_first_store(m, mgr, elf_symbols(elf)["target"])


def check_reverse_cont_to_the_first_store(m: VirtMachine, mgr: GuestDebugManager, target: int) -> None:
    """A recorded run of STORES_S (or a shorter one of its shape), at its end: a write watch on
    `target` finds its one store, at instruction 2, replaying few intervals; a breakpoint
    somewhere makes it replay every interval, to the same answer."""
    mgr.add_watchpoint(target, 8, WatchKind.WRITE)
    restored = mgr.record_status()["restored"]
    event = mgr.reverse_cont()
    assert event.kind is StopKind.WATCH and event.watch_addr == target
    assert m.vcpu.icount == 2 and mgr.read_memory(target, 8) == bytes(8)  # before the str
    assert mgr.record_status()["restored"] - restored <= 3  # not one per checkpoint interval
    # the same answer without the shortcut: a breakpoint somewhere makes it replay everything
    mgr.seek_to(mgr.record_status()["end"])
    mgr.add_hw_breakpoint(0x40000000)  # never reached
    assert mgr.reverse_cont().kind is StopKind.WATCH and m.vcpu.icount == 2


IRQ_IN_BLOCK_S = r"""
    .text
    .global _start, raise_irq, vectors
_start:
    ldr     x0, =vectors
    msr     vbar_el1, x0
    isb
""" + GIC_SPI40 + r"""
raise_irq:
    str     w2, [x1, #0x204]           // GICD_ISPENDR1: the line rises inside this block
    add     x4, x4, #1
    add     x4, x4, #1
    add     x4, x4, #1
    add     x4, x4, #1
    add     x4, x4, #1
    add     x4, x4, #1
    b       1f
1:  b       1b
    .balign 2048
vectors:
    .skip   0x280
irq:
    b       irq
"""


def test_an_interrupt_a_device_raises_in_a_block_is_taken_where_the_block_ends_even_if_a_stop_splits_it(tmp_path):
    """An inline device (the GIC) raises the vCPU's IRQ line in the middle of a translation
    block: the interrupt is taken where that block ends, with or without a stop (an exact icount
    limit, a single step) in between. Otherwise where it is taken would depend on where the VMM
    stopped the vCPU, and a replay that stops elsewhere than the recording did would diverge."""
    from tests.helpers.mmu_guest import assemble
    from guestdbg.board.common import elf_symbols
    elf = assemble(tmp_path, "irqblock", IRQ_IN_BLOCK_S)
    syms = elf_symbols(elf)
    vector = syms["vectors"] + 0x280
    raise_at = None

    def run(stop_after_raise: int | None, step: bool = False) -> tuple[int, int]:
        nonlocal raise_at
        m = machine(elf)
        mgr = GuestDebugManager(m)
        mgr.add_hw_breakpoint(syms["raise_irq"])
        assert mgr.cont().pc == syms["raise_irq"]
        raise_at = m.vcpu.icount
        mgr.remove_hw_breakpoint(syms["raise_irq"])
        mgr.add_hw_breakpoint(vector)
        if stop_after_raise is not None:
            if step:
                mgr.step_irqs = True
                for _ in range(stop_after_raise):
                    mgr.step()
            else:
                m.run_until(icount_limit=raise_at + stop_after_raise)
        event = mgr.cont() if m.vcpu.pc != vector else None
        assert m.vcpu.pc == vector, event
        return m.vcpu.icount, int(mgr.read_register("x4"))

    straight = run(None)
    assert straight[1] == 6  # the whole block ran before the interrupt
    for split in (1, 3, 6):
        assert run(split) == straight, split
    assert run(2, step=True) == straight


# A word that each round sets to the round's number and, after a delay in other translation
# blocks, back to 0: a checkpoint inserted inside a round sees a page that the checkpoints on
# either side of it hold alike (0) but that differs at the insertion.
ABA_PAGE = r"""
    .text
    .global _start
_start:
    ldr     x1, =word
    mov     x2, #0
    ldr     x3, =400
round:
    add     x2, x2, #1
    str     x2, [x1]
    bl      delay
    str     xzr, [x1]
    bl      delay
    subs    x3, x3, #1
    b.ne    round
    ldr     x0, =0x84000008            // PSCI SYSTEM_OFF
    hvc     #0
    b       .
delay:
    mov     x4, #700
1:  subs    x4, x4, #1
    b.ne    1b
    ret
    .data
    .balign 4096
word: .quad 0
"""


def test_a_checkpoint_inserted_while_a_page_is_changed_and_back_restores_it(tmp_path):
    """Seeks insert checkpoints near their target. A page that changed after the checkpoint
    before and changed back by the one after is in neither's undo set, yet differs at the
    insertion: the inserted checkpoint must hold it (it did not, and a later seek through that
    checkpoint, from elsewhere, gave the page the value of its neighbours)."""
    from tests.helpers.mmu_guest import assemble
    elf = assemble(tmp_path, "aba_page", ABA_PAGE)
    m, mgr = recorded(elf, interval=100_000)
    run_to_exit(mgr)
    end = mgr.record_status()["end"]
    rng = random.Random(12)
    points = rng.sample(range(1, end), 12)
    reference = straight_run(elf, points)
    for p in points:
        mgr.seek_to(end)
        mgr.seek_to(p)  # from the end: inserts checkpoints on the way, the last within 4,000
        assert fingerprint(m) == reference[p]
        mgr.seek_to(0)
        mgr.seek_to(p)  # from the start: through the checkpoint inserted nearest p
        assert fingerprint(m) == reference[p]
