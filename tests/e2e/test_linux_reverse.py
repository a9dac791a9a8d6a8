"""Reverse execution over a real guest (issue 12): Debian's arm64 kernel booting (MMU on, timer
interrupts, the GIC, the UART, page faults, self-modifying code: ftrace patching, IC
invalidations), recorded for its first few seconds. Seeks to points across the
history, in random order, land on exactly the state a straight run without the debugger has
there (registers, device state, every byte of RAM), and reverse steps retrace forward steps.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading

import pytest

from guestdbg import kvm
from guestdbg.arm import kvm_regs as kr
from guestdbg.board import loader
from guestdbg.board.virt import RAM_BASE, VirtConfig, VirtMachine
from guestdbg.debug.manager import GuestDebugManager, StopKind

MEMORY_MB = 256


def boot_machine(guest, smp: int = 1, clock_mode: str = "virtual") -> VirtMachine:
    m = VirtMachine(VirtConfig(ram_size=MEMORY_MB << 20, smp=smp), console=lambda b: None, clock_mode=clock_mode)
    loader.apply_linux(m, loader.plan_linux(MEMORY_MB << 20, str(guest.kernel), initrd=str(guest.initrd),
                                            append=guest.append, cpus=smp))
    return m


def fingerprint(m: VirtMachine) -> tuple:
    v = m.vcpu
    regs = hashlib.sha256(repr([v.get_one_reg(r) for r in v.get_reg_list()]).encode()).hexdigest()
    ram = hashlib.blake2b(m.vm.read_phys(RAM_BASE, MEMORY_MB << 20)).hexdigest()
    return v.icount, v.pc, regs, json.dumps(m.device_state(), sort_keys=True), ram


def run_to(m: VirtMachine, t: int) -> None:
    while m.vcpu.icount < t:
        run = m.run_until(icount_limit=t)
        assert isinstance(run, kvm.KvmRun) and run.exit_reason in (kvm.EXIT_ICOUNT_LIMIT, kvm.KVM_EXIT_INTR), run


@pytest.fixture(scope="module")
def run_init_process(linux_guest) -> int:
    """Where the kernel starts /init (from a first boot's /proc/kallsyms; nokaslr)."""
    from tests.helpers.linux_guest import qemu_linux_command, read_kallsyms
    from tests.helpers.qemu_runner import qemu_missing_reason
    from tests.helpers.linux_guest import guestdbg_linux_command
    command = (guestdbg_linux_command(linux_guest, MEMORY_MB) if qemu_missing_reason()
               else qemu_linux_command(linux_guest, MEMORY_MB))
    return read_kallsyms(command, ["run_init_process"])["run_init_process"]


def test_seeks_across_a_recorded_linux_boot_match_a_straight_run(linux_guest, run_init_process):
    """Recorded through the manager as `--record` does (single steps at the start, a continue
    to a breakpoint where the kernel starts /init, single steps), then points across the
    history. The recording's end is the breakpoint's, so every run checks the same points."""
    m = boot_machine(linux_guest)
    mgr = GuestDebugManager(m)
    mgr.start_recording()
    for _ in range(3):
        mgr.step()
    mgr.add_hw_breakpoint(run_init_process)
    event = mgr.cont()
    assert event.kind is StopKind.HWBREAK and event.pc == run_init_process, event
    mgr.remove_hw_breakpoint(run_init_process)
    for _ in range(3):
        mgr.step()
    status = mgr.record_status()
    end = status["end"]
    assert end > 20_000_000 and status["checkpoints"] >= 3, status

    rng = random.Random(2026)
    points = sorted(rng.sample(range(1, end), 6)) + [end]
    # A straight run stopped once, at the point: each stop inside a translation block moves
    # where an interrupt a device raised earlier in that block is taken (there, rather than at
    # the block's end), so a reference stopped at every point in turn would itself drift.
    reference = {}
    for t in points[:4] + points[-1:]:
        straight = boot_machine(linux_guest)
        run_to(straight, t)
        reference[t] = fingerprint(straight)
        del straight
    points = sorted(reference)
    order = list(points)
    rng.shuffle(order)
    for t in order:
        mgr.seek_to(t)
        assert fingerprint(m) == reference[t], t
    # reverse steps retrace forward steps deep in the kernel
    mgr.seek_to(points[-2])
    trace = [fingerprint(m)[:4]]
    for _ in range(20):
        assert mgr.step().kind is StopKind.STEP
        trace.append(fingerprint(m)[:4])
    for expected in reversed(trace[:-1]):
        mgr.reverse_step()
        assert fingerprint(m)[:4] == expected


def smp_fingerprint(m: VirtMachine) -> tuple:
    regs = [hashlib.sha256(repr([v.get_one_reg(r) for r in v.get_reg_list()]).encode()).hexdigest() for v in m.vcpus]
    ram = hashlib.blake2b(m.vm.read_phys(RAM_BASE, MEMORY_MB << 20)).hexdigest()
    return m.machine_now, [v.icount for v in m.vcpus], regs, json.dumps(m.device_state(), sort_keys=True), ram


def test_a_recorded_two_cpu_linux_boot_replays_exactly(linux_guest, run_init_process):
    """`--smp 2`: the boot recorded to where the kernel starts /init (the second CPU is up by
    then: smp_init came first); seeks in random order land on a straight run's state at that
    machine time (both vCPUs, the devices and scheduler, all of RAM), and reverse steps of
    the second vCPU retrace its forward steps."""
    m = boot_machine(linux_guest, smp=2)
    mgr = GuestDebugManager(m)
    mgr.start_recording()
    mgr.add_hw_breakpoint(run_init_process)
    event = mgr.cont()
    assert event.kind is StopKind.HWBREAK and event.pc == run_init_process, event
    mgr.remove_hw_breakpoint(run_init_process)
    end = mgr.record_status()["end"]
    assert m.vcpus[1].icount > 1_000_000, [v.icount for v in m.vcpus]
    rng = random.Random(2)
    points = sorted(rng.sample(range(end // 2, end), 3))
    reference = {}
    for t in points:
        straight = boot_machine(linux_guest, smp=2)
        while straight.machine_now < t:
            run = straight.run_until(time_limit=t)
            assert isinstance(run, kvm.KvmRun) and run.exit_reason in (kvm.EXIT_ICOUNT_LIMIT, kvm.KVM_EXIT_INTR), run
        reference[t] = smp_fingerprint(straight)
        del straight
    for t in rng.sample(points, len(points)):
        mgr.seek_to(t)
        assert smp_fingerprint(m) == reference[t], t
    trace = [smp_fingerprint(m)[:3]]
    for _ in range(10):
        assert mgr.step(1).kind is StopKind.STEP
        trace.append(smp_fingerprint(m)[:3])
    for expected in reversed(trace[:-1]):
        assert mgr.reverse_step(1).vcpu_id == 1
        assert smp_fingerprint(m)[:3] == expected


def test_a_linux_boot_on_the_host_clock_replays_as_recorded(linux_guest, run_init_process):
    """`--clock host --record`: the host's time, paced and logged (board/clock.py), drives the
    kernel's timekeeping and its timer interrupts. The boot is recorded to where the kernel
    starts /init, with Ctrl-C stops along the way and two steps after each stop; seeks in
    random order land on the state the recorded run had at each of those points (registers,
    devices, all of RAM). No straight run can be the reference: the host's time differs."""
    m = boot_machine(linux_guest, clock_mode="host")
    mgr = GuestDebugManager(m)
    mgr.start_recording()
    seen: dict[int, tuple] = {}
    vbar_el1 = kr.ARM64_SYS_REG(*kr.SYSREG_ENCODINGS["VBAR_EL1"])

    def note() -> None:
        # A stop right after an interrupt was taken (no instruction retired since) shares its
        # instruction count with the state before: a seek lands on that one (README).
        if m.vcpu.pc - m.vcpu.get_one_reg(vbar_el1) not in (0x080, 0x280, 0x480, 0x680):
            seen.setdefault(mgr.record_status()["now"], fingerprint(m))

    mgr.add_hw_breakpoint(run_init_process)
    for _ in range(3):
        timer = threading.Timer(1.5, mgr.interrupt)
        timer.start()
        event = mgr.cont()
        timer.join()
        if event.kind is not StopKind.SIGNAL:
            break
        for _ in range(2):
            note()
            mgr.step()
        note()
    else:
        event = mgr.cont()
    assert event.kind is StopKind.HWBREAK and event.pc == run_init_process, event
    note()
    h = mgr._history
    assert h is not None
    catch_ups = sum(e.kind == "clock" for e in h.events)
    assert catch_ups > 100 and len(seen) >= 4, (catch_ups, len(seen))
    order = list(seen)
    random.Random(7).shuffle(order)
    for t in order:
        mgr.seek_to(t)
        assert fingerprint(m) == seen[t], t


def test_console_input_to_a_linux_shell_is_replayed(linux_guest):
    """The shell answers a command typed while recording (console input through the PL011 and
    its interrupt); from the start of the history the replay reaches the recorded end state
    exactly, and shows none of its output again."""
    from tests.helpers.support import typed_console
    from tests.helpers.linux_guest import PROMPT
    out = bytearray()
    m = VirtMachine(VirtConfig(ram_size=MEMORY_MB << 20), console=out.extend)
    loader.apply_linux(m, loader.plan_linux(MEMORY_MB << 20, str(linux_guest.kernel), initrd=str(linux_guest.initrd),
                                            append=linux_guest.append))
    mgr = GuestDebugManager(m)
    mgr.start_recording()
    typed = typed_console(m)
    done = threading.Event()

    def typist() -> None:
        while PROMPT.encode() not in out and not done.wait(0.05):
            pass
        typed.push(b"echo reverse-$((6*7))\n")
        mgr.wake()
        while b"reverse-42" not in out and not done.wait(0.05):
            pass
        done.wait(0.3)  # the next prompt
        mgr.interrupt()
    t = threading.Thread(target=typist)
    t.start()
    try:
        event = mgr.cont()
    finally:
        done.set()
        t.join()
    assert event.kind is StopKind.SIGNAL and b"reverse-42" in out, out[-500:]
    shown = bytes(out)
    end = fingerprint(m)
    status = mgr.record_status()
    assert status["inputs"] >= 1, status
    mgr.seek_to(status["begin"])
    assert mgr.cont().history_edge == "end"
    assert fingerprint(m) == end
    assert bytes(out) == shown
