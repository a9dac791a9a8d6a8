"""The EL1 generic timers on the emulated vCPU: register semantics as the guest sees them, the
output levels reported to the VMM (KVM_CAP_ARM_USER_IRQ's device_irq_level on a KVM_EXIT_INTR)
at exact instruction counts, WFI that skips ahead in the deterministic clock and sleeps with
`--clock host`, and the timer state in ONE_REG and snapshots."""

from __future__ import annotations

import threading
import time

import pytest

from guestdbg import kvm
from guestdbg.arm import kvm_regs as kr
from guestdbg.board.common import ExitStatus, GuestFault, elf_symbols
from guestdbg.board.virt import RAM_BASE, VirtConfig, VirtMachine
from tests.helpers.support import machine_with_values

TIMER_CTL = kr.ARM64_SYS_REG(3, 3, 14, 3, 1)
TIMER_CNT = kr.ARM64_SYS_REG(3, 3, 14, 3, 2)  # KVM's swapped encodings: this id is the counter
TIMER_CVAL = kr.ARM64_SYS_REG(3, 3, 14, 0, 2)
PTIMER_CTL = kr.ARM64_SYS_REG(3, 3, 14, 2, 1)
PTIMER_CNT = kr.ARM64_SYS_REG(3, 3, 14, 0, 1)
PTIMER_CVAL = kr.ARM64_SYS_REG(3, 3, 14, 2, 2)
CNTKCTL_EL1 = kr.ARM64_SYS_REG(3, 0, 14, 1, 0)

VTIMER, PTIMER = kvm.KVM_ARM_DEV_EL1_VTIMER, kvm.KVM_ARM_DEV_EL1_PTIMER
WFI_DEFAULT_TICKS = 625_000_000  # the guest's timer_wfi_ticks: 10 s at 62.5 MHz


def _level_change(run: kvm.KvmRun) -> bool:
    return run.device_irq_level is not None


def _run(m: VirtMachine) -> tuple[ExitStatus, list[tuple[int, int, int, int]]]:
    """Run to the guest's end; every level-change exit as (levels, icount, counter, pc). The
    board drives the GIC's PPIs from them and, asked to, returns them too."""
    changes = []
    while True:
        result = m.run_until(_level_change)
        if isinstance(result, ExitStatus):
            return result, changes
        assert result.exit_reason == kvm.KVM_EXIT_INTR and result.device_irq_level is not None, result
        assert m.vcpu.device_irq_level == result.device_irq_level
        changes.append((result.device_irq_level, m.vcpu.icount, m.vcpu.counter(), m.vcpu.pc))


def _lines(out: bytearray) -> list[str]:
    return [line for line in out.decode().splitlines() if line.startswith("timer:")]


def test_guest_sees_architected_timer_registers_and_two_runs_are_identical(guest_dir):
    elf = guest_dir / "timer.elf"
    m, out = machine_with_values(elf)
    status, changes = _run(m)
    assert status.status == 0, out.decode()
    assert "FAILED" not in out.decode()
    assert _lines(out)[-1].startswith("timer: irq 27 taken at ")  # through the GIC, at VBAR_EL1 + 0x280
    # Up and down for timer_fire, the virtual WFI, the physical WFI and the IRQ taken.
    assert [c[0] for c in changes] == [VTIMER, 0, VTIMER, 0, PTIMER, 0, VTIMER, 0]

    m2, out2 = machine_with_values(elf)
    status2, changes2 = _run(m2)
    assert (status2.status, changes2, bytes(out2), m2.vcpu.icount, m2.vcpu.counter_offset) == \
        (status.status, changes, bytes(out), m.vcpu.icount, m.vcpu.counter_offset)


def test_level_rises_at_the_exact_instruction_count_and_falls_at_the_mask(guest_dir):
    elf = guest_dir / "timer.elf"
    syms = elf_symbols(elf)
    m, _ = machine_with_values(elf)
    run = m.run_until(_level_change)
    assert not isinstance(run, ExitStatus)
    assert run.exit_reason == kvm.KVM_EXIT_INTR and run.device_irq_level == VTIMER
    vcpu = m.vcpu
    cval = vcpu.get_one_reg(TIMER_CVAL)
    assert int.from_bytes(m.vm.read_phys(syms["timer_fire_cval"], 8), "little") == cval
    # No WFI yet: no offset, so the counter reached CVAL at instruction CVAL * 16, exactly.
    assert vcpu.counter_offset == 0
    assert vcpu.icount == cval * 16 and vcpu.get_one_reg(TIMER_CNT) == cval
    assert syms["timer_fire_spin"] <= vcpu.pc < syms["timer_fire_mask"]
    assert vcpu.get_one_reg(TIMER_CTL) == 0b101  # ENABLE | ISTATUS, unmasked
    # The same instruction count one instruction earlier: no level yet.
    m2, _ = machine_with_values(elf)
    assert m2.vcpu.run(icount_limit=cval * 16 - 1).exit_reason == kvm.EXIT_ICOUNT_LIMIT
    assert m2.vcpu.device_irq_level == 0 and m2.vcpu.counter() == cval - 1

    run = m.run_until(_level_change)
    assert not isinstance(run, ExitStatus)
    assert run.device_irq_level == 0
    assert vcpu.pc == syms["timer_fire_mask"] + 4  # right after the MSR that set IMASK
    assert vcpu.get_one_reg(TIMER_CTL) == 0b111


def test_wfi_skips_ahead_deterministically_and_fast(guest_dir):
    elf = guest_dir / "timer.elf"
    results = []
    for _ in range(2):
        m, out = machine_with_values(elf)
        start = time.monotonic()
        status, _ = _run(m)
        elapsed = time.monotonic() - start
        assert status.status == 0
        line = next(line for line in _lines(out) if line.startswith("timer: wfi from"))
        _, _, _, start_count, _, _, woke = line.split()
        assert int(woke) - int(start_count) >= WFI_DEFAULT_TICKS
        assert elapsed < 2.0  # 10 s of guest time
        assert m.clock.now_ns() >= 10 * 10**9
        results.append((line, m.vcpu.counter_offset, m.clock.state()))
    assert results[0] == results[1]


def test_wfi_with_nothing_armed_sleeps_until_kicked():
    """No timer deadline: the vCPU thread blocks (as KVM blocks a vCPU in WFI) until another
    thread kicks it, then returns KVM_EXIT_INTR with wfi_waiting set for the VMM's hang check."""
    m = VirtMachine(VirtConfig())
    code = [0xD28000A0, 0xD503207F, 0x91000400, 0x14000000]  # mov x0,#5; wfi; add x0,x0,#1; b .
    m.vm.write_phys(RAM_BASE, b"".join(c.to_bytes(4, "little") for c in code))
    m.reset_cpu(RAM_BASE)
    entries = _count_engine_entries(m.vcpu)
    kicker = threading.Timer(0.3, m.vcpu.kick)
    kicker.start()
    wall = time.monotonic()
    run = m.vcpu.run()
    wall = time.monotonic() - wall
    kicker.join()
    assert run.exit_reason == kvm.KVM_EXIT_INTR and run.device_irq_level is None
    assert wall >= 0.25 and entries() <= 2  # asleep until the kick, not re-entering the engine
    assert m.vcpu.wfi_waiting
    assert m.vcpu.pc == RAM_BASE + 8 and m.vcpu.icount == 2  # WFI retired, nothing skipped
    assert m.vcpu.counter_offset == 0
    assert m.vcpu.run(icount_limit=3).exit_reason == kvm.EXIT_ICOUNT_LIMIT
    assert not m.vcpu.wfi_waiting
    assert m.vcpu.get_one_reg(kr.KVM_REG_ARM_CORE_X(0)) == 6


def test_timer_registers_through_one_reg():
    m = VirtMachine(VirtConfig())
    assert m.vm.check_extension(kvm.KVM_CAP_ARM_USER_IRQ) == 1
    vcpu = m.vcpu
    ids = set(vcpu.get_reg_list())
    assert {TIMER_CTL, TIMER_CNT, TIMER_CVAL, PTIMER_CTL, PTIMER_CNT, PTIMER_CVAL, CNTKCTL_EL1} <= ids
    assert vcpu.get_one_reg(TIMER_CNT) == 0
    vcpu.set_one_reg(TIMER_CNT, 1000)
    assert vcpu.get_one_reg(TIMER_CNT) == vcpu.get_one_reg(PTIMER_CNT) == m.clock.counter() == 1000
    vcpu.set_one_reg(TIMER_CVAL, 999)
    vcpu.set_one_reg(TIMER_CTL, 0b111)  # ISTATUS is read-only: ignored
    assert vcpu.get_one_reg(TIMER_CTL) == 0b111  # enabled, masked, and 1000 >= 999
    vcpu.set_one_reg(TIMER_CTL, 0b001)
    assert vcpu.get_one_reg(TIMER_CTL) == 0b101
    vcpu.set_one_reg(PTIMER_CVAL, 5000)
    vcpu.set_one_reg(PTIMER_CTL, 0b001)
    assert vcpu.get_one_reg(PTIMER_CTL) == 0b001 and vcpu.get_one_reg(PTIMER_CVAL) == 5000
    vcpu.set_one_reg(CNTKCTL_EL1, 0x3)
    assert vcpu.get_one_reg(CNTKCTL_EL1) == 0x3
    # The virtual timer's output is high now: the next run() says so before running anything.
    run = vcpu.run()
    assert run.exit_reason == kvm.KVM_EXIT_INTR and run.device_irq_level == VTIMER
    assert vcpu.icount == 0


def test_snapshot_carries_the_timer_state(guest_dir, tmp_path):
    from guestdbg import snapshot
    elf = guest_dir / "timer.elf"
    reference, out_ref = machine_with_values(elf)
    _, changes_ref = _run(reference)

    m, out = machine_with_values(elf)
    changes = []
    while len(changes) < 3:  # inside the WFI phase: the counter has skipped, the timer is up
        run = m.run_until(_level_change)
        assert not isinstance(run, ExitStatus) and run.device_irq_level is not None
        changes.append((run.device_irq_level, m.vcpu.icount, m.vcpu.counter(), m.vcpu.pc))
    assert m.vcpu.counter_offset > 0
    path = tmp_path / "timer.snap"
    snapshot.save(m, path)
    out2 = bytearray(out)
    restored = snapshot.load(path, console=out2.extend)
    assert restored.vcpu.counter() == m.vcpu.counter()
    assert restored.vcpu.counter_offset == m.vcpu.counter_offset
    assert restored.vcpu.get_one_reg(TIMER_CTL) == 0b101
    # What the restored vCPU last reported is what the restored GIC holds (the virtual timer's
    # PPI high): nothing is reported twice, and it runs on exactly as the reference did.
    assert restored.vcpu.device_irq_level == VTIMER
    status, rest = _run(restored)
    assert status.status == 0
    assert changes + rest == changes_ref
    assert bytes(out2) == bytes(out_ref)


def _count_engine_entries(vcpu):
    """Count the vCPU's emu_starts: a waiting vCPU that spins re-enters the engine hundreds of
    times in a fraction of a second, a sleeping one a few times per event. A count, unlike the
    thread's CPU time, does not depend on how busy the host is. Returns the counter."""
    count = 0
    emu = vcpu._emu

    def counted(pc):
        nonlocal count
        count += 1
        return emu(pc)
    vcpu._emu = counted
    return lambda: count


def test_host_clock_wfi_sleeps_instead_of_spinning(guest_dir):
    elf = guest_dir / "timer.elf"
    m, out = machine_with_values(elf, clock_mode="host", timer_wfi_ticks=62_500_000 * 3 // 10)  # 0.3 s
    entries = _count_engine_entries(m.vcpu)
    wall = time.monotonic()
    status, changes = _run(m)
    wall = time.monotonic() - wall
    assert isinstance(status, ExitStatus)
    # The guest's own checks, but for the one that host time decides: "tval read" expects two
    # adjacent instructions within 100,000 ticks (1.6 ms) of host time, which a host that
    # preempts the vCPU thread between them does not give.
    failed = [line for line in out.decode().splitlines() if "FAILED " in line]
    assert all(line.endswith(" tval read") for line in failed), out.decode()
    assert [c[0] for c in changes] == [VTIMER, 0, VTIMER, 0, PTIMER, 0, VTIMER, 0]
    assert wall >= 0.3  # the guest's 0.3 s WFI wait took host time (a lower bound: not flaky)
    assert entries() < 100, f"the vCPU entered the engine {entries()} times while waiting"
    assert m.vcpu.counter_offset == 0  # host time is never skipped


def test_host_clock_wfi_wakes_at_once_on_kick(guest_dir):
    elf = guest_dir / "timer.elf"
    m, _ = machine_with_values(elf, clock_mode="host", timer_wfi_ticks=62_500_000 * 60)  # a minute
    for _ in range(2):  # timer_fire's rise and fall
        run = m.run_until(_level_change)
        assert not isinstance(run, ExitStatus) and run.device_irq_level is not None
    kicker = threading.Timer(0.2, m.vcpu.kick)
    kicker.start()
    start = time.monotonic()
    run = m.run_until()
    elapsed = time.monotonic() - start
    kicker.join()
    assert not isinstance(run, ExitStatus)
    assert run.exit_reason == kvm.KVM_EXIT_INTR and run.device_irq_level is None  # the kick
    assert 0.15 <= elapsed < 30  # woken by the kick at 0.2 s, not by the timer a minute on


def test_the_board_drives_the_timer_ppis(guest_dir):
    """VirtMachine.run_until serves level changes itself: virtual timer -> INTID 27, physical
    -> INTID 30 (QEMU virt's DTB), and the guest runs on."""
    m, _ = machine_with_values(guest_dir / "timer.elf")

    def ppi_levels() -> tuple[bool, bool]:
        level = m.gic.banked[0]["level"]
        return bool(level & (1 << 27)), bool(level & (1 << 30))

    assert ppi_levels() == (False, False)
    assert m.run_until(_level_change).device_irq_level == VTIMER  # type: ignore[union-attr]
    assert ppi_levels() == (True, False)
    assert m.run_until(_level_change).device_irq_level == 0  # type: ignore[union-attr]
    assert ppi_levels() == (False, False)
    result = m.run_until()  # the WFI phases' level changes are the board's alone
    assert isinstance(result, ExitStatus) and result.status == 0
    assert ppi_levels() == (False, False)


def test_a_wfi_nothing_can_end_is_reported_as_a_hang():
    """run_to_exit's hang check (every `hang_check` s): WFI with no timer armed, nothing pending
    at the GIC and no console input is a hang, reported as one, with the thread asleep."""
    m = VirtMachine(VirtConfig(), console=lambda b: None)
    code = [0xD503207F, 0x17FFFFFF]  # 1: wfi; b 1b
    m.vm.write_phys(RAM_BASE, b"".join(c.to_bytes(4, "little") for c in code))
    m.reset_cpu(RAM_BASE)
    entries = _count_engine_entries(m.vcpu)
    with pytest.raises(GuestFault, match=r"guest hung: WFI with no timer armed at PC=0x40000004"):
        m.run_to_exit(hang_check=0.2, timeout=10)
    assert entries() <= 4  # asleep between the hang checks, not spinning


def test_a_device_state_restore_resets_what_the_vcpu_last_reported(guest_dir):
    """The vCPU reports a timer level change only when it differs from what it last reported
    (device_irq_level). Restoring an earlier device state (a snapshot, a reverse-execution
    checkpoint) sets that record from the restored GIC's timer PPIs; a record kept from after
    the state would swallow the timer's next rise (the GIC never told: the interrupt lost)."""
    m, _ = machine_with_values(guest_dir / "timer.elf")
    before = m.device_state()
    run = m.run_until(_level_change)
    assert not isinstance(run, ExitStatus) and run.device_irq_level == VTIMER
    assert m.gic.banked[0]["level"] >> 27 & 1 and m.vcpu.device_irq_level == VTIMER
    m.restore_device_state(before)
    assert m.vcpu.device_irq_level == 0
    m.restore_device_state(m.device_state() | {"gic": {**m.gic.state(), "banked": [
        {**m.gic.state()["banked"][0], "level": 1 << 27 | 1 << 30}]}})
    assert m.vcpu.device_irq_level == VTIMER | PTIMER


def test_a_kick_landing_at_a_wfi_does_not_change_the_virtual_skip(guest_dir):
    """The virtual clock's WFI skip is made whether or not a stop (a kick: console input, a
    Ctrl-C) is already asked for when the WFI retires: the guest computes the same either way,
    as a replay, which has no kick there, must. (Before, a kick landing between the WFI and
    the skip left the counter behind: a recorded Linux shell session replayed differently.)"""
    elf = guest_dir / "timer.elf"
    reference, _ = machine_with_values(elf)
    _, reference_changes = _run(reference)
    m, _ = machine_with_values(elf)
    after_wfi = m.vcpu._after_wfi
    kicked = []

    def kick_at_the_first_wfi() -> bool:
        ended_in_wfi = after_wfi()
        if ended_in_wfi and not kicked:
            kicked.append(m.vcpu.icount)
            m.vcpu._runctl.request_stop()  # as a kick from another thread landing just now
        return ended_in_wfi
    m.vcpu._after_wfi = kick_at_the_first_wfi
    status, changes = _run(m)
    assert kicked and status.status == 0
    assert changes == reference_changes  # the same levels at the same instruction counts and counts
