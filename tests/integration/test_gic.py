"""Interrupts end to end on the virt board: the GICv2 (board/gic.py) drives vCPU 0's IRQ input
through KVM_IRQ_LINE, the vCPU turns it into HCR_EL2.VI, and the guest (guests/irq) takes the
IRQ at VBAR_EL1 + 0x280, acknowledges and ends it, with the ELR/SPSR the architecture says."""

from __future__ import annotations

import threading

from guestdbg import kvm, snapshot
from guestdbg.board.common import ExitStatus, elf_symbols
from guestdbg.board.virt import CPU0_IRQ, VirtConfig, VirtMachine
from tests.helpers.qemu_runner import run_under_qemu

LEVEL_IRQ, EDGE_IRQ = 48, 49
SPSR_EL1H_IRQS_ON = 0x345  # D, A, F masked, I clear, EL1h (the low bits of SPSR_EL1)
STEP = 5000  # instructions per slice while waiting for the guest to print something


class IrqGuest:
    def __init__(self, elf, vmm_lines: bool):
        self.elf = elf
        self.sym = elf_symbols(elf)
        self.out = bytearray()
        self.m = VirtMachine(VirtConfig(), console=self.out.extend)
        self.m.load_elf(elf)
        if vmm_lines:
            self.m.vm.write_phys(self.sym["irq_vmm_lines"], (1).to_bytes(8, "little"))

    @property
    def text(self) -> str:
        return self.out.decode()

    def run_to(self, marker: str) -> None:
        """Run in fixed slices until the guest has printed `marker` (deterministic points)."""
        while marker not in self.text:
            run = self.m.run_until(icount_limit=self.m.vcpu.icount + STEP)
            assert not isinstance(run, ExitStatus), self.text
            assert run.exit_reason == kvm.EXIT_ICOUNT_LIMIT, run

    def run_for(self, insns: int) -> None:
        run = self.m.run_until(icount_limit=self.m.vcpu.icount + insns)
        assert not isinstance(run, ExitStatus) and run.exit_reason == kvm.EXIT_ICOUNT_LIMIT, self.text

    def finish(self) -> int:
        result = self.m.run_until()
        assert isinstance(result, ExitStatus), result
        return result.status

    def u32(self, name: str) -> int:
        return int.from_bytes(self.m.vm.read_phys(self.sym[name], 4), "little")

    def log(self, i: int) -> tuple[int, int, int, int]:
        raw = self.m.vm.read_phys(self.sym["irq_log"] + 32 * i, 32)
        iar, elr, spsr, rpr = (int.from_bytes(raw[j:j + 8], "little") for j in range(0, 32, 8))
        return iar, elr, spsr, rpr


def drive_all_lines(g: IrqGuest) -> None:
    """The VMM's part: raise SPI 48 while the guest waits masked, pulse SPI 49 while it spins."""
    g.run_to("waiting for level 48")
    g.run_for(20000)
    assert g.u32("irq_count") == 1
    g.m.gic.set_level(LEVEL_IRQ, 1)
    g.run_to("spinning for edge 49")
    g.m.gic.set_level(LEVEL_IRQ, 0)
    g.run_for(20000)
    assert g.u32("irq_count") == 2  # spinning with IRQs on, nothing pending
    g.m.gic.set_level(EDGE_IRQ, 1)
    g.m.gic.set_level(EDGE_IRQ, 0)


def test_self_pended_spi_is_taken_once_unmasked(guest_dir):
    g = IrqGuest(guest_dir / "irq.elf", vmm_lines=False)
    assert g.finish() == 0
    assert g.text.splitlines() == [
        "irq: gic typer=0x8 rpr=0xff",
        "irq: self-pended hppir=40 not taken while masked",
        f"irq: taken iar=40 elr={g.sym['irq_after_unmask']:#x} spsr=0x60000345 rpr=0xa0",
        "irq: count=1 spurious=0 active-after-eoi=0 rpr=0xff",
    ]
    assert not g.m.vcpu.irq_line_level


def test_same_output_as_qemu(guest_dir):
    g = IrqGuest(guest_dir / "irq.elf", vmm_lines=False)
    assert g.finish() == 0
    out, status = run_under_qemu(guest_dir / "irq.elf")
    assert status == 0
    assert out == g.text


def test_vmm_lines_reach_the_guest(guest_dir):
    g = IrqGuest(guest_dir / "irq.elf", vmm_lines=True)
    g.run_to("waiting for level 48")
    g.run_for(20000)
    g.m.gic.set_level(LEVEL_IRQ, 1)
    g.run_for(200)  # the level is applied at the next slice; the guest still has IRQs masked
    assert g.m.vcpu.irq_line_level
    assert g.u32("irq_count") == 1
    g.run_to("spinning for edge 49")
    assert "irq: level 48 pending, not taken while masked" in g.text
    # The handler disabled 48 at the GIC (its line is still high): the IRQ output is low.
    assert not g.m.vcpu.irq_line_level and not g.m.gic.irq_pending(0)
    g.m.gic.set_level(LEVEL_IRQ, 0)
    g.run_for(20000)
    assert g.u32("irq_count") == 2
    g.m.gic.set_level(EDGE_IRQ, 1)
    g.m.gic.set_level(EDGE_IRQ, 0)
    assert g.finish() == 0, g.text

    iar, elr, spsr, rpr = g.log(1)
    assert iar == LEVEL_IRQ and elr == g.sym["irq_after_unmask"] and spsr & 0x3FF == SPSR_EL1H_IRQS_ON
    assert rpr == 0xA0
    iar, elr, spsr, _ = g.log(2)
    assert iar == EDGE_IRQ
    assert g.sym["irq_spin_loop"] <= elr < g.sym["irq_spin_end"]
    assert spsr & 0x3FF == SPSR_EL1H_IRQS_ON
    assert g.text.splitlines()[-1] == "irq: count=3 spurious=0 active-after-eoi=0 rpr=0xff"
    assert g.u32("irq_spurious") == 0


def test_interrupt_delivery_is_deterministic(guest_dir):
    results = []
    for _ in range(2):
        g = IrqGuest(guest_dir / "irq.elf", vmm_lines=True)
        drive_all_lines(g)
        assert g.finish() == 0
        regs = {r: g.m.vcpu.get_one_reg(r) for r in g.m.vcpu.get_reg_list()}
        results.append((g.text, g.m.vcpu.icount, regs))
    assert results[0] == results[1]


def test_a_line_raised_from_another_thread_ends_the_running_slice(guest_dir):
    g = IrqGuest(guest_dir / "irq.elf", vmm_lines=True)
    g.run_to("waiting for level 48")
    g.m.gic.set_level(LEVEL_IRQ, 1)
    g.run_to("spinning for edge 49")
    g.m.gic.set_level(LEVEL_IRQ, 0)
    # The guest now spins until the edge arrives; run() without a limit returns only when the
    # other thread's line reaches it.
    timer = threading.Timer(0.3, lambda: (g.m.gic.set_level(EDGE_IRQ, 1), g.m.gic.set_level(EDGE_IRQ, 0)))
    timer.start()
    try:
        assert g.finish() == 0, g.text
    finally:
        timer.cancel()
    assert g.text.splitlines()[-1] == "irq: count=3 spurious=0 active-after-eoi=0 rpr=0xff"


def test_snapshot_carries_the_gic(guest_dir, tmp_path):
    g = IrqGuest(guest_dir / "irq.elf", vmm_lines=True)
    g.run_to("waiting for level 48")
    g.m.gic.set_level(LEVEL_IRQ, 1)  # pending, enabled, priority 0xA0; IRQs masked
    want = g.m.gic.state()
    assert want["spi"]["level"] >> LEVEL_IRQ & 1 and want["spi"]["enable"] >> LEVEL_IRQ & 1
    assert want["spi_priority"][LEVEL_IRQ] == 0xA0
    path = tmp_path / "irq.snap"
    snapshot.save(g.m, path)

    out = bytearray()
    m = snapshot.load(path, console=out.extend)
    assert isinstance(m, VirtMachine)
    assert m.gic.state() == want
    assert m.gic.irq_pending(0) and m.vcpu._irq_level  # the line is driven again after restore
    # Continue in the restored machine: the guest sees 48 pending and takes it.
    r = IrqGuest.__new__(IrqGuest)
    r.elf, r.sym, r.out, r.m = g.elf, g.sym, out, m
    r.run_to("spinning for edge 49")
    m.gic.set_level(LEVEL_IRQ, 0)
    m.gic.set_level(EDGE_IRQ, 1)
    m.gic.set_level(EDGE_IRQ, 0)
    assert r.finish() == 0, g.text + r.text
    assert (g.text + r.text).splitlines()[-1] == "irq: count=3 spurious=0 active-after-eoi=0 rpr=0xff"


def test_board_drives_the_line_only_on_changes(guest_dir, monkeypatch):
    m = VirtMachine(VirtConfig(), console=lambda b: None)
    calls = []
    real = m.vm.irq_line
    monkeypatch.setattr(m.vm, "irq_line", lambda irq, level: (calls.append((irq, level)), real(irq, level)))
    gic = m.gic
    gic.write(0x000, 4, 1)
    gic.write(0x1_0000, 4, 1)
    gic.write(0x1_0004, 4, 0xF0)
    gic.write(0x400 + 40, 1, 0x80)
    gic.write(0x800 + 40, 1, 1)
    gic.write(0x104, 4, 1 << 8)
    gic.set_level(40, 1)
    gic.write(0x104, 4, 1 << 8)  # no change of the output
    gic.set_level(40, 1)
    assert calls == [(CPU0_IRQ, 1)]
    assert gic.read(0x1_000C, 4) == 40
    assert calls == [(CPU0_IRQ, 1), (CPU0_IRQ, 0)]


def test_single_steps_still_report_each_instruction(guest_dir):
    """With a level pending and IRQs unmasked, a single step still ends after one instruction
    (it may be the vector's first: the stepping policy decides; it is not changed here)."""
    g = IrqGuest(guest_dir / "irq.elf", vmm_lines=True)
    g.run_to("waiting for level 48")
    g.m.vcpu.set_guest_debug(kvm.KVM_GUESTDBG_ENABLE | kvm.KVM_GUESTDBG_SINGLESTEP)
    for _ in range(20):
        before = g.m.vcpu.icount
        run = g.m.run_until()
        assert isinstance(run, kvm.KvmRun) and run.exit_reason == kvm.KVM_EXIT_DEBUG
        assert g.m.vcpu.icount == before + 1
    g.m.vcpu.set_guest_debug(0)
    drive_all_lines(g)
    assert g.finish() == 0, g.text
