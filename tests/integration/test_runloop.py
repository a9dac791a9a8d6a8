"""The emulated vCPU's run loop: stops from other threads never change what the guest
computes, slices end exactly at the instruction counts the VMM asks for, and the guest's
counter is a deterministic virtual clock."""

from __future__ import annotations

import hashlib
import random
import threading
import time

import pytest

from guestdbg import kvm
from guestdbg.board.common import ExitStatus, elf_symbols
from guestdbg.board.virt import RAM_BASE, VirtMachine, VirtConfig
from tests.helpers.support import HW_DEBUG, breakpoint, machine_with_values

SVC_ROUND_TRIPS = 6000


def _state(m: VirtMachine, out: bytearray) -> dict:
    """Everything the guest could have computed: registers, RAM, console output, icount."""
    vcpu = m.vcpu
    regs = {r: vcpu.get_one_reg(r) for r in vcpu.get_reg_list()}
    ram = hashlib.sha256(m.vm.read_phys(RAM_BASE, m.config.ram_size)).hexdigest()
    return {"regs": regs, "ram": ram, "output": bytes(out), "icount": vcpu.icount}


def _run_uninterrupted(m: VirtMachine) -> ExitStatus:
    result = m.run_until()
    assert isinstance(result, ExitStatus), result
    return result


def _run_with_random_stops(m: VirtMachine, seed: int, max_gap: float = 0.002) -> tuple[ExitStatus, int]:
    """Kick the vCPU from another thread at random moments until the guest ends."""
    rng = random.Random(seed)
    done = threading.Event()

    def kicker():
        while not done.wait(rng.uniform(0.0001, max_gap)):
            m.vcpu.kick()

    thread = threading.Thread(target=kicker, daemon=True)
    thread.start()
    stops = 0
    try:
        while True:
            result = m.run_until()
            if isinstance(result, ExitStatus):
                return result, stops
            assert result.exit_reason == kvm.KVM_EXIT_INTR, result
            stops += 1
    finally:
        done.set()
        thread.join()


def test_random_stops_leave_the_guest_state_identical(guest_dir):
    """The reproducer of the stale-PC corruption: system calls with SP_EL0/TPIDR traffic and a
    stop from another thread every ~1 ms. Before the fix an instruction stretch was re-executed
    (a doubled console byte, a wrong round-trip count)."""
    elf = guest_dir / "svcloop.elf"
    m, out = machine_with_values(elf, svc_iterations=SVC_ROUND_TRIPS)
    status = _run_uninterrupted(m)
    assert status.status == 0 and f"svcloop: {SVC_ROUND_TRIPS} round trips".encode() in out
    expected = _state(m, out)

    m2, out2 = machine_with_values(elf, svc_iterations=SVC_ROUND_TRIPS)
    status2, stops = _run_with_random_stops(m2, seed=8)
    assert stops >= 100, f"only {stops} stops: the test did not exercise the run loop"
    assert status2 == status
    got = _state(m2, out2)
    assert got["output"] == expected["output"]
    assert got["regs"] == expected["regs"]
    assert got["ram"] == expected["ram"]
    assert got["icount"] == expected["icount"]


def test_slices_end_exactly_at_the_requested_instruction_counts(guest_dir):
    """run(icount_limit=N) stops with exactly N instructions retired, wherever N falls inside a
    translation block, and slicing a run changes nothing the guest computes."""
    elf = guest_dir / "svcloop.elf"
    m, out = machine_with_values(elf, svc_iterations=1000)
    _run_uninterrupted(m)
    expected = _state(m, out)

    m2, out2 = machine_with_values(elf, svc_iterations=1000)
    rng = random.Random(3)
    limits = 0
    while True:
        limit = m2.vcpu.icount + rng.choice((1, 2, 3, 5, 7, 11, 64, 1000))
        result = m2.run_until(icount_limit=limit)
        if isinstance(result, ExitStatus):
            break
        assert result.exit_reason == kvm.EXIT_ICOUNT_LIMIT, result
        assert m2.vcpu.icount == limit
        limits += 1
    assert limits > 100
    assert _state(m2, out2) == expected


def test_single_steps_count_one_instruction_each(guest_dir):
    """Stepping the loop guest: every step retires exactly one instruction."""
    m, _ = machine_with_values(guest_dir / "loop.elf", loop_iterations=50)
    syms = elf_symbols(guest_dir / "loop.elf")
    m.vcpu.set_guest_debug(HW_DEBUG, _bp_arch(syms["loop_body"]))
    assert m.run_until().exit_reason == kvm.KVM_EXIT_DEBUG
    m.vcpu.set_guest_debug(kvm.KVM_GUESTDBG_ENABLE | kvm.KVM_GUESTDBG_SINGLESTEP)
    before = m.vcpu.icount
    for n in range(1, 41):
        run = m.run_until()
        assert run.exit_reason == kvm.KVM_EXIT_DEBUG
        assert m.vcpu.icount == before + n


def _bp_arch(address: int):
    from guestdbg.arm import kvm_regs as kr
    arch = kr.kvm_guest_debug_arch()
    arch.dbg_bvr[0], arch.dbg_bcr[0] = breakpoint(address)
    return arch


def _clock_samples(out: bytes) -> list[int]:
    line = out.decode().strip()
    assert line.startswith("clock: cntfrq 62500000 samples "), line
    return [int(v) for v in line.split("samples ")[1].split()]


def test_counter_reads_are_deterministic_and_follow_the_instruction_count(guest_dir):
    """CNTVCT_EL0 = retired instructions / 16, the same in every run, stops or not."""
    elf = guest_dir / "clock.elf"
    m, out = machine_with_values(elf)
    _run_uninterrupted(m)
    samples = _clock_samples(out)
    # Between the first two reads: mov-free loop of 2 x 1000 instructions plus the str and
    # the read itself; between reads 2 and 3 the loop of 7 takes 2 x 7 + 2 more.
    assert samples[1] - samples[0] in (125, 126)
    assert samples[3] - samples[2] in (0, 1)

    m2, out2 = machine_with_values(elf)
    _run_with_random_stops(m2, seed=1, max_gap=0.0005)
    assert bytes(out2) == bytes(out)


def test_counter_value_is_the_instruction_count_at_the_read(guest_dir):
    """Stop on each counter read with a breakpoint, take the vCPU's icount there, and check
    the value the guest then reads (icount // 16); stops (and the time they take) do not move
    the counter."""
    elf = guest_dir / "clock.elf"
    syms = elf_symbols(elf)
    m, out = machine_with_values(elf)
    expected = []
    for label in ("clock_read0", "clock_read1", "clock_read2", "clock_read3"):
        m.vcpu.set_guest_debug(HW_DEBUG, _bp_arch(syms[label]))
        run = m.run_until()
        assert run.exit_reason == kvm.KVM_EXIT_DEBUG and m.vcpu.pc == syms[label]
        expected.append(m.vcpu.icount // 16)
        time.sleep(0.05)
        m.vcpu.set_guest_debug(0)
        m.vcpu.set_guest_debug(kvm.KVM_GUESTDBG_ENABLE | kvm.KVM_GUESTDBG_SINGLESTEP)
        assert m.run_until().exit_reason == kvm.KVM_EXIT_DEBUG  # step over the read
        m.vcpu.set_guest_debug(0)
    _run_uninterrupted(m)
    assert _clock_samples(out) == expected


def test_host_clock_follows_the_host(guest_dir):
    m, out = machine_with_values(guest_dir / "clock.elf", clock_mode="host")
    before = time.monotonic_ns() * 62_500_000 // 1_000_000_000
    _run_uninterrupted(m)
    after = time.monotonic_ns() * 62_500_000 // 1_000_000_000
    samples = _clock_samples(out)
    assert before <= samples[0] <= samples[3] <= after


def test_icount_survives_a_snapshot(guest_dir, tmp_path):
    from guestdbg import snapshot
    elf = guest_dir / "clock.elf"
    m, out = machine_with_values(elf)
    m.run_until(icount_limit=500)
    assert m.vcpu.icount == 500
    path = tmp_path / "s.snap"
    snapshot.save(m, path)
    _run_uninterrupted(m)

    out2 = bytearray()
    restored = snapshot.load(path, console=out2.extend)
    assert restored.vcpu.icount == 500
    _run_uninterrupted(restored)
    assert bytes(out2) == bytes(out)  # the counter went on from where it was
    assert restored.vcpu.icount == m.vcpu.icount


def test_unknown_clock_mode_is_refused():
    with pytest.raises(ValueError, match="clock must be one of"):
        VirtMachine(VirtConfig(), clock_mode="wallclock")


def test_a_kick_while_stopped_is_neither_lost_nor_doubled(guest_dir):
    """KVM's immediate_exit semantics: kicks that arrive while no run() is going make the next
    run() return KVM_EXIT_INTR at once, however many there were, and only that one run()."""
    m, out = machine_with_values(guest_dir / "clock.elf")
    m.vcpu.kick()
    m.vcpu.kick()
    before = m.vcpu.icount
    assert m.vcpu.run().exit_reason == kvm.KVM_EXIT_INTR
    assert m.vcpu.icount == before  # nothing ran
    assert m.run_until(icount_limit=before + 100).exit_reason == kvm.EXIT_ICOUNT_LIMIT
    _run_uninterrupted(m)
    assert out.startswith(b"clock: cntfrq 62500000")
