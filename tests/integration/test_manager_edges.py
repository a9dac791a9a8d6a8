"""GuestDebugManager edge cases pinned for mutation testing (bench/README.md "Mutation
testing"): guest stores next to and over software breakpoints, which watch a hit is reported
for, guest faults' signals, removed breakpoints' conditions. Exact values only, on the emulated
vCPU, with small raw images (no guest build)."""

from __future__ import annotations

import errno
import signal
import threading

import pytest

from guestdbg import kvm
from guestdbg.arm import registers as arm_registers
from guestdbg.board.virt import VirtConfig, VirtMachine
from guestdbg.debug.arch import BRK0, Arm64DebugArch
from guestdbg.debug.manager import DebugError, GuestDebugManager, StopEvent, StopKind, WatchKind
from guestdbg.debug.profile import ArchProfile
from tests.helpers.support import Without, movk_w0_16, movz_w0, words

RAM = 0x4000_0000




def _adr(rd: int, offset: int) -> int:
    return 0x10000000 | (offset & 3) << 29 | ((offset >> 2) & 0x7FFFF) << 5 | rd


def _b(offset: int) -> int:
    return 0x14000000 | ((offset >> 2) & 0x3FFFFFF)


MOV_X2_1, MOV_X2_7, MOV_X3_9 = 0xD2800022, 0xD28000E2, 0xD2800123
STR_W0_X1 = 0xB9000020
HVC0 = 0xD4000002
NOP = 0xD503201F
SYSTEM_OFF = (movz_w0(8), movk_w0_16(0x8400), HVC0)
# At RAM: w0 = mov x2, #7; x1 = RAM + 0x10; str w0, [x1] (over the next instruction); then
# mov x2, #1 (rewritten: mov x2, #7); mov x3, #9; PSCI SYSTEM_OFF.
SELF_PATCH = words(movz_w0(MOV_X2_7), movk_w0_16(MOV_X2_7 >> 16),
                    _adr(1, 8),                 # 0x08: adr x1, .+8
                    STR_W0_X1,                  # 0x0c: str w0, [x1]
                    MOV_X2_1,                   # 0x10
                    MOV_X3_9,                   # 0x14
                    *SYSTEM_OFF)


def _machine(tmp_path, code: bytes, **config) -> VirtMachine:
    mch = VirtMachine(VirtConfig(**config), console=lambda data: None)
    image = tmp_path / "code.bin"
    image.write_bytes(code)
    mch.load_raw(image, RAM)
    return mch


# ---------------------------------------------------------------------------------------------
# a guest store over a patched instruction, with a watch 64 bytes on


def test_a_store_over_a_breakpoint_is_no_hit_of_a_watch_64_bytes_past_it(tmp_path):
    """FAR may start before a watch's bytes (a 64-byte DC ZVA), so a watch up to 63 bytes past
    the access's address is the one hit; one 64 bytes past it is not: the guest's store over
    a breakpoint is completed, and the breakpoint hits over the new instruction."""
    mch = _machine(tmp_path, SELF_PATCH)
    m = GuestDebugManager(mch)
    m.in_run_breakpoints = False  # a BRK patch, whose store trap this is
    assert m.add_breakpoint(RAM + 0x10) == "sw"
    m.add_watchpoint(RAM + 0x10 + 64, 4, WatchKind.WRITE)
    e = m.cont()
    assert (e.kind, e.pc, e.watch_addr) == (StopKind.SWBREAK, RAM + 0x10, None)
    assert m.read_memory(RAM + 0x10, 4) == words(MOV_X2_7)
    assert mch.vm.read_phys(RAM + 0x10, 4) == BRK0


# ---------------------------------------------------------------------------------------------
# a removed breakpoint's condition


def test_a_removed_conditional_brk_breakpoint_is_listed_as_not_inserted(tmp_path):
    """On a vCPU that cannot decide breakpoints in its run (KVM), a conditional breakpoint is
    a BRK patch; removing it retires its condition: `monitor info slots` lists it as not
    inserted now, and the guest runs through it."""
    mch = _machine(tmp_path, SELF_PATCH)
    vcpu = Without(mch.vcpu, "set_break_filters")
    m = GuestDebugManager(Without(mch, "vcpus", vcpu=vcpu))
    assert m.add_breakpoint(RAM + 0x14, condition=lambda view: True) == "sw"
    assert mch.vm.read_phys(RAM + 0x14, 4) == BRK0
    e = m.cont()
    assert (e.kind, e.pc) == (StopKind.SWBREAK, RAM + 0x14)
    inserted = m.conditions.report()
    m.remove_breakpoint(RAM + 0x14)
    assert mch.vm.read_phys(RAM + 0x14, 4) == words(MOV_X3_9)
    assert not m.conditions
    assert m.conditions.report() == [inserted[0], inserted[1] + "  (not inserted now)", *inserted[2:]]
    assert m.cont().kind is StopKind.EXITED


# ---------------------------------------------------------------------------------------------
# guest faults: which signal a board's message means


@pytest.mark.parametrize("message, sig", [
    ("unhandled EC 0x00 unknown reason at PC=0x40000000", signal.SIGILL),
    ("undefined instruction 0x00000000 at PC=0x40000000", signal.SIGILL),
    ("unhandled EC 0x21 instruction abort (same EL) at PC=0x40000000", signal.SIGSEGV),
    ("unhandled ec 0x00 at PC=0x40000000", signal.SIGSEGV),  # the class is written EC 0xNN
], ids=["ec-0x00", "undefined", "abort", "lower-case"])
def test_a_guest_fault_is_sigill_when_its_message_says_undefined_or_ec_0x00(tmp_path, message, sig):
    """A board's KVM_EXIT_INTERNAL_ERROR for a guest exception is a SIGNAL stop at the PC,
    with the board's message: SIGILL when it names an undefined instruction (EC 0x00, or in
    words), else SIGSEGV."""
    mch = _machine(tmp_path, SELF_PATCH)

    def run_until(stop, **limits):
        run = kvm.KvmRun(kvm.KVM_EXIT_INTERNAL_ERROR, internal=kvm.InternalErrorExit(1, message))
        assert stop(run)  # the manager asks for fault exits
        return run

    m = GuestDebugManager(Without(mch, run_until=run_until))
    e = m.cont()
    assert (e.kind, e.pc, e.signal, e.detail) == (StopKind.SIGNAL, RAM, sig, message)


# ---------------------------------------------------------------------------------------------
# what happens while a guest store over a breakpoint is let through


class _InterruptAtCodeStore(Arm64DebugArch):
    """The arm64 debug architecture, with gdb's Ctrl-C arriving (manager.interrupt()) just as
    the manager meets the guest's first store over one of its breakpoints."""

    manager: GuestDebugManager | None = None
    fired = False

    def classify(self, run):
        raw = super().classify(run)
        if raw.kind == "watch" and not self.fired and self.manager is not None:
            self.fired = True
            self.manager.interrupt()
        return raw


def test_an_interrupt_while_a_store_over_a_breakpoint_is_let_through_is_not_lost(tmp_path):
    """The step that lets the guest's store over a BRK patch through is interrupted (Ctrl-C
    before it ran): the SIGINT stop is reported there, before the store; the next continue
    does the store and meets the breakpoint over the new instruction."""
    mch = _machine(tmp_path, SELF_PATCH)
    arch = _InterruptAtCodeStore()
    m = GuestDebugManager(mch, ArchProfile("aarch64", arm_registers, lambda machine: arch))
    arch.manager = m
    m.in_run_breakpoints = False
    assert m.add_breakpoint(RAM + 0x10) == "sw"
    e = m.cont()
    assert arch.fired
    assert (e.kind, e.pc, e.signal) == (StopKind.SIGNAL, RAM + 0xC, signal.SIGINT)
    assert m.read_memory(RAM + 0x10, 4) == words(MOV_X2_1)  # not stored yet
    assert mch.vm.read_phys(RAM + 0x10, 4) == BRK0
    e = m.cont()
    assert (e.kind, e.pc) == (StopKind.SWBREAK, RAM + 0x10)
    assert m.read_memory(RAM + 0x10, 4) == words(MOV_X2_7)
    assert mch.vm.read_phys(RAM + 0x10, 4) == BRK0


def _movz_x(rd: int, v: int, shift: int = 0) -> int:
    return 0xD2800000 | (shift // 16) << 21 | (v & 0xFFFF) << 5 | rd


def _movk_x(rd: int, v: int, shift: int = 0) -> int:
    return 0xF2800000 | (shift // 16) << 21 | (v & 0xFFFF) << 5 | rd


# vCPU 0 starts vCPU 1 (PSCI CPU_ON) spinning at 0x40, waits for the debugger to set the flag
# at 0x80, then rewrites the instruction at 0x34 as SELF_PATCH does and loops at 0x38.
SMP_SELF_PATCH = words(
    _movz_x(0, 0x0003), _movk_x(0, 0xC400, 16),   # 0x00: x0 = PSCI_0_2_FN64_CPU_ON
    _movz_x(1, 1),                                # 0x08: target MPIDR 1
    _adr(2, 0x40 - 0x0C),                         # 0x0c: entry: spin
    _movz_x(3, 0),                                # 0x10
    HVC0,                                         # 0x14
    _adr(4, 0x80 - 0x18),                         # 0x18: x4 = the flag
    0xB9400085,                                   # 0x1c: ldr w5, [x4]
    0x34FFFFE5,                                   # 0x20: cbz w5, 0x1c
    movz_w0(MOV_X2_7), movk_w0_16(MOV_X2_7 >> 16),  # 0x24
    _adr(1, 8),                                   # 0x2c: x1 = 0x34
    STR_W0_X1,                                    # 0x30: str w0, [x1]
    MOV_X2_1,                                     # 0x34
    _b(0),                                        # 0x38: b .
    NOP,
    0x910004C6,                                   # 0x40 spin: add x6, x6, #1
    _b(-4),                                       # 0x44
    *[NOP] * 14,
    0)                                            # 0x80: the flag


def test_a_step_over_a_store_over_a_breakpoint_runs_that_vcpu_alone(tmp_path):
    """Stepping one vCPU (the others stopped, gdb's `vCont;s:0`) over its store over a BRK
    patch, while the other vCPU's round-robin turn is not over: the store is let through with
    the stepped vCPU alone running; the other does not move."""
    mch = _machine(tmp_path, SMP_SELF_PATCH, smp=2)
    m = GuestDebugManager(mch)
    m.in_run_breakpoints = False
    assert m.add_breakpoint(RAM + 0x34) == "sw"
    m.add_breakpoint(RAM + 0x40)
    e = m.cont()  # vCPU 0 waits for the flag; vCPU 1's turn meets its breakpoint
    assert (e.kind, e.pc, e.vcpu_id) == (StopKind.SWBREAK, RAM + 0x40, 1)
    m.remove_breakpoint(RAM + 0x40)
    m.write_memory(RAM + 0x80, b"\x01\0\0\0")
    m.select_vcpu(0)
    for _ in range(8):
        if m.vcpu_pc(0) == RAM + 0x30:
            break
        e = m.step(0)
        assert (e.kind, e.vcpu_id) == (StopKind.STEP, 0)
    assert m.vcpu_pc(0) == RAM + 0x30
    before = mch.vcpus[1].icount
    e = m.step(0)  # the store
    assert (e.kind, e.pc, e.vcpu_id) == (StopKind.STEP, RAM + 0x34, 0)
    assert mch.vcpus[1].icount == before
    assert m.read_memory(RAM + 0x34, 4) == words(MOV_X2_7)
    assert mch.vm.read_phys(RAM + 0x34, 4) == BRK0


# ---------------------------------------------------------------------------------------------
# console input while recording, after a host kick


# x1 = RAM + 0x200; x2 = the PL011; 300 loops of delay; two bytes read from its data register
# back to back (one translation block) and stored at x1, x1 + 1; PSCI SYSTEM_OFF.
READS_TWO_BYTES = words(_adr(1, 0x200), 0xD2A12002, _movz_x(4, 300),
                         0xF1000484, 0x54FFFFE1,   # 0x0c: subs x4, x4, #1; b.ne 0x0c
                         0xB9400040, 0xB9400043,   # 0x14: ldr w0, [x2]; ldr w3, [x2]
                         0x39000020, 0x39000423,   # 0x1c: strb w0, [x1]; strb w3, [x1, #1]
                         *SYSTEM_OFF)


def test_the_guests_reads_after_a_host_kick_are_replayed_the_same(tmp_path):
    """While recording, a host kick (wake(): console input arrived) is served and the guest
    runs on; the guest's own reads of the input after it are numbered pulls as ever (not
    timed inputs: inside a translation block the instruction count is not exact), so a replay
    from a checkpoint before them gives the guest the same bytes."""
    mch = _machine(tmp_path, READS_TWO_BYTES)
    pending = bytearray(b"ABCDEFGHIJKLMNOP")
    served = []

    def source(room: int) -> bytes:
        byte = bytes(pending[:1])
        del pending[:1]
        return byte
    mch.uart.rx_source = source
    mch.on_intr = lambda: served.append(mch.vcpu.icount)
    m = GuestDebugManager(mch)
    m.start_recording(interval=200)
    m.wake()  # before the run: its first exit is the kick
    assert m.cont().kind is StopKind.EXITED
    assert served == [0]
    live = m.read_memory(RAM + 0x200, 2)
    assert live == b"AB"
    m.seek_to(300)  # before the reads
    assert m.cont().kind is StopKind.EXITED
    assert m.read_memory(RAM + 0x200, 2) == live


# ---------------------------------------------------------------------------------------------
# a debugger write over part of a breakpoint, replayed


def _recorded_write_over_part_of_a_breakpoint(tmp_path) -> tuple[VirtMachine, GuestDebugManager]:
    """64 NOPs then `b .`, recorded (a checkpoint every 4 instructions), a BRK patch at 0x80;
    at instruction 10 the debugger writes AA BB CC DD at 0x7e: the end of the NOP at 0x7c and
    the first half of the patched one; five steps on."""
    mch = _machine(tmp_path, words(*[NOP] * 64, _b(0)))
    m = GuestDebugManager(mch)
    m.in_run_breakpoints = False
    m.start_recording(interval=4)
    for _ in range(10):
        m.step()
    assert m.add_breakpoint(RAM + 0x80) == "sw"
    m.write_memory(RAM + 0x7E, b"\xAA\xBB\xCC\xDD")
    assert m.read_memory(RAM + 0x7C, 8) == words(NOP)[:2] + b"\xAA\xBB\xCC\xDD" + words(NOP)[2:]
    assert mch.vm.read_phys(RAM + 0x7C, 8) == words(NOP)[:2] + b"\xAA\xBB" + BRK0
    for _ in range(5):
        m.step()
    return mch, m


def test_a_replayed_write_over_part_of_a_breakpoint_leaves_the_rest_of_it(tmp_path):
    """Seeking back before the debugger's write and forward across it replays the write (with
    the patches lifted): the bytes of the patched instruction past the write's end are still
    the guest's, and the patch is still a whole BRK."""
    mch, m = _recorded_write_over_part_of_a_breakpoint(tmp_path)
    m.seek_to(3)
    assert m.read_memory(RAM + 0x7C, 8) == words(NOP, NOP)
    m.seek_to(11)  # from the checkpoint at 8, across the write at 10
    assert m.read_memory(RAM + 0x7C, 2) == words(NOP)[:2]
    assert m.read_memory(RAM + 0x82, 2) == words(NOP)[2:]
    assert mch.vm.read_phys(RAM + 0x80, 4) == BRK0


# A bug found by mutation testing (fixed): the replay wrote BRK bytes over the patched part of
# the write while the patches were lifted, and the lift's end saved them as the guest's original.
def test_a_replayed_write_over_part_of_a_breakpoint_keeps_the_written_bytes(tmp_path):
    mch, m = _recorded_write_over_part_of_a_breakpoint(tmp_path)
    m.seek_to(3)
    m.seek_to(11)
    assert m.read_memory(RAM + 0x7C, 8) == words(NOP)[:2] + b"\xAA\xBB\xCC\xDD" + words(NOP)[2:]
    m.remove_all()
    assert mch.vm.read_phys(RAM + 0x7C, 8) == words(NOP)[:2] + b"\xAA\xBB\xCC\xDD" + words(NOP)[2:]


# ---------------------------------------------------------------------------------------------
# the dirty log's slots: a process-wide table; logs of VMs no longer reachable free theirs


def test_recordings_of_vms_no_longer_reachable_leave_room_for_new_ones(tmp_path):
    """Each recording logs its RAM's dirty pages, and the native log has a fixed number of
    slots for the whole process. A VM dropped in a reference cycle keeps its slot until the
    cycle collector runs: starting a recording must not fail for that (it did, ENOSPC, in a
    long test session)."""
    import gc
    gc.disable()  # as between two of the collector's passes in a long session
    try:
        for _ in range(20):
            mch = _machine(tmp_path, words(NOP) * 8)
            m = GuestDebugManager(mch)
            m.start_recording(interval=1000)
            assert m.step().kind is StopKind.STEP
    finally:
        gc.enable()


# ---------------------------------------------------------------------------------------------
# what cannot run: an exited guest, a vCPU that is off; a fault with several vCPUs


def test_an_exited_guest_without_a_detail_says_exit(tmp_path):
    """The refusal names the guest's status and how it ended ("exit" when the board said no
    more), and what there is to do."""
    mgr = GuestDebugManager(_machine(tmp_path, words(*SYSTEM_OFF)))
    assert mgr.cont().kind is StopKind.EXITED
    mgr._stopped(StopEvent(StopKind.EXITED, exit_status=3))  # an end the board gave no detail for
    with pytest.raises(DebugError) as refused:
        mgr.check_runnable("step")
    assert (refused.value.errno, str(refused.value)) == (errno.ESRCH, (
        "the guest has exited (status 3, exit): nothing to step; restore a snapshot to run it again"))


def test_a_step_of_the_only_vcpu_after_psci_cpu_off_is_refused(tmp_path):
    """One vCPU, turned off by PSCI CPU_OFF: nothing can turn it on again, so a step would never
    end. It is refused (ESRCH, as with several vCPUs); a continue runs until a Ctrl-C."""
    cpu_off = (movz_w0(2), movk_w0_16(0x8400), HVC0)
    mgr = GuestDebugManager(_machine(tmp_path, words(*cpu_off, _b(0))))
    timer = threading.Timer(0.2, mgr.interrupt)
    timer.start()
    event = mgr.cont()
    timer.join()
    assert (event.kind, event.signal, mgr.vcpu_state(0)) == (StopKind.SIGNAL, signal.SIGINT, "off")
    guard = threading.Timer(5, mgr.interrupt)  # if the step were let run: a SIGINT stop, not a hang
    guard.start()
    try:
        with pytest.raises(DebugError) as refused:
            mgr.step()
    finally:
        guard.cancel()
    assert refused.value.errno == errno.ESRCH and str(refused.value) == (
        "CPU#0 is off (not started, or PSCI CPU_OFF): nothing to step")


def test_a_fault_on_a_board_with_several_vcpus_is_a_signal_stop(tmp_path):
    """Not recording, two vCPUs: an undefined instruction on vCPU 0 stops the run as SIGILL
    there (the board hands the fault to the manager instead of raising it)."""
    mgr = GuestDebugManager(_machine(tmp_path, words(0x00000000), smp=2))  # udf #0
    event = mgr.cont()
    assert (event.kind, event.signal, event.pc, event.vcpu_id) == (StopKind.SIGNAL, signal.SIGILL, RAM, 0)


def test_a_breakpoint_inserted_again_after_in_run_breakpoints_went_off_is_still_one(tmp_path):
    """A breakpoint kept in the run (policy 18), in_run_breakpoints turned off, the same
    breakpoint inserted again (gdb re-sends Z0): it stays the one it was, so removing it leaves
    no BRK behind and the run goes through."""
    mch = _machine(tmp_path, words(NOP, NOP, *SYSTEM_OFF))
    mgr = GuestDebugManager(mch)
    assert mgr.in_run_breakpoints
    assert mgr.add_breakpoint(RAM + 4) == "sw"
    mgr.in_run_breakpoints = False
    assert mgr.add_breakpoint(RAM + 4) == "sw"
    mgr.remove_breakpoint(RAM + 4)
    assert mch.vm.read_phys(RAM + 4, 4) == words(NOP)
    assert mgr.cont().kind is StopKind.EXITED


# Mutants of the functions the whole run of 2026-12-02 did not reach, run by name that evening
# (mutmut 3.8 names; _apply's as numbered since its watch skip became a bool), left standing:
# - __init__ 83 (`_console_pulls = 1`): the count is only a key between a recording and its
#   replays, both counted on from the value the first checkpoint holds.
# - _take_reset_image 4, 5 (the reset image compressed): the same image, smaller and slower.
# - _apply 3, 95, 99 (`prune` True, None, left out): dropping the hooks of removed breakpoints
#   is only speed.
# - _apply 11 (the comprehension run over an empty dict), 43 (`stores=True` is WatchTrap's
#   default), 51 (nothing armed keyed by empty tuples, not _NO_ARCH_KEY: the same registers,
#   built once more).
# - _apply 78, 82 (ENABLE, with USE_SW_BP, while nothing is armed): the guest's own BRK makes a
#   round trip through the manager, which re-injects it; ENABLE alone arms nothing.
# - _apply 88 (another vCPU also skips the stepper's breakpoint): both callers that pass
#   skip_bp_at run the stepper alone, and _apply again after.
# - _resume 1 (`alone` defaults to False): every caller passes it.
# - _resume 28, 44, 45, 46, 55 (policy 18's skip of a breakpoint's hook used or not, the loop
#   left early with one runner): the instruction runs once either way; only speed.
# - _resume 100 (`_stops.pop` without a default): _stopped has just put that key there.
# - _classify 75 (`_patch_at` for every exit): a watch exit never comes from a patched
#   instruction (BRK accesses no memory), and the other kinds have returned before.
# - _classify 138 (the watch address clamped at its end + 1): a watch is found only where FAR
#   is at or before its last byte, so the clamp is FAR either way.
# And of the functions this session changed (run B): _watch_for 24 (the nearest watch keyed by
# `w.addr + far`, which orders as `w.addr - far`); _restore_recorder_state 25, 29 (every vCPU
# that can record has restore_irq_due); _entered_by_a_step 7 (`pc = None`: a step that neither
# retires an instruction nor moves the PC leaves the machine as the seek it started from).
# Not reachable on this host:
# - _apply 73 (KVM_GUESTDBG_BLOCKIRQ when steps take interrupts, not when they do not): x86 KVM
#   only, and no x86 guest here takes an interrupt.
# - _classify 145, 146, 149, 150 (x86's code store already done, a page trap over an int3
#   breakpoint): this host's KVM gives no clean int3, so x86 breakpoints take debug registers.
