"""The "virt" board: the machine a guest sees, and the VMM loop that serves the vCPU's exits.

Memory map (as qemu-system-aarch64 -M virt, so one ELF runs on both):

    0x0000_0000  flash0, 64 MiB CFI flash (board/flash.py): the firmware from --rom/--bios
    0x0400_0000  flash1, 64 MiB CFI flash: U-Boot's environment; --pflash1 keeps it in a file
    0x0800_0000  GICv2 distributor (board/gic.py); its CPU interface at 0x0801_0000
    0x0900_0000  PL011 UART (board.pl011): the console, output and input
    0x4000_0000  RAM, `ram_size` bytes

Any other address is unassigned: an access there is a synchronous external abort for the
guest, as on QEMU's TCG.

`VirtConfig(smp=N)` gives it N vCPUs (1-8, as QEMU's virt with GICv2): board/smp.py runs them
round-robin on one virtual clock and answers PSCI CPU_ON/CPU_OFF/AFFINITY_INFO; the secondaries
start powered off. With one vCPU the run loop is the single-vCPU one it always was.

PSCI SYSTEM_RESET reboots the board, as QEMU's does (`no_reboot`: the run ends instead, as
with QEMU's -no-reboot): the vCPU gets its power-on registers back (the secondaries theirs,
and they are off again), the GIC, UART and flash reset, and every image loaded at start
(firmware, kernel, initrd, DTB, ELF) is written again.
RAM is otherwise left as it was, the clock runs on, and the flash keeps what the guest wrote
(U-Boot's `saveenv; reset` keeps its environment).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from guestdbg import kvm
from guestdbg.arm import kvm_regs as kr
from guestdbg.arm.mmu import TranslationFault
from guestdbg.backends.unicorn_arm64 import Arm64Vcpu, Arm64Vm, DebugConfig, PSTATE_DAIF, PSTATE_MODE_EL1H
from guestdbg.board.clock import VirtualClock
from guestdbg.board.common import ExitStatus, GuestFault, ImageError, RunToExit, read_elf, read_image
from guestdbg.board.flash import VIRT_FLASH_BANK_SIZE, CfiFlash
from guestdbg.board.gic import Gic
from guestdbg.board.pl011 import Pl011
from guestdbg.board.smp import MAX_CPUS, OFF, ON, SmpMachine, cpu_irq
from guestdbg.vmapi import Console, stdout_console

FLASH_BANK_SIZE = VIRT_FLASH_BANK_SIZE
FLASH0_BASE, FLASH1_BASE = 0x0000_0000, 0x0400_0000
# The flash window, both banks: what the guest can execute from below RAM.
ROM_BASE = FLASH0_BASE
ROM_SIZE = 2 * FLASH_BANK_SIZE
GIC_BASE = 0x0800_0000
GIC_SIZE = 0x0002_0000  # distributor (64 KiB) then CPU interface (64 KiB), one device
GICD_BASE, GICC_BASE = GIC_BASE, GIC_BASE + 0x1_0000
# KVM_IRQ_LINE's `irq` for vCPU 0's IRQ input (type CPU, vcpu_index 0, CPU_IRQ)
CPU0_IRQ = cpu_irq(0)
UART_BASE = 0x0900_0000
UART_SIZE = 0x1000
RAM_BASE = 0x4000_0000
DEFAULT_RAM_SIZE = 128 << 20
MAX_RAM_SIZE = 8 << 30

SLOT_FLASH0, SLOT_RAM, SLOT_FLASH1 = 0, 1, 2
# The generic timers' counter keeps counting through a reset, as QEMU's virtual clock.
COUNTER_REGS = frozenset({kr.ARM64_SYS_REG(3, 3, 14, 3, 2), kr.ARM64_SYS_REG(3, 3, 14, 0, 1)})  # TIMER_CNT, CNTPCT
B_SELF = (0x14000000).to_bytes(4, "little")  # A64 `b .`
# The EL1 timers' PPIs, as in QEMU virt's DTB: virtual timer PPI 11, non-secure physical PPI 14.
UART_INTID = 33  # SPI 1


def _power_on_regs(vcpu: Arm64Vcpu) -> list[tuple[int, int]]:
    """A vCPU's registers as created (what a reboot or PSCI CPU_ON resets it to), but the
    generic timers' counter, which keeps counting."""
    return [(r, vcpu.get_one_reg(r)) for r in vcpu.get_reg_list() if r not in COUNTER_REGS]


@dataclass(frozen=True)
class VirtConfig:
    ram_size: int = DEFAULT_RAM_SIZE
    brps: int = 6
    wrps: int = 4
    ctx_cmps: int = 2
    no_reboot: bool = False  # PSCI SYSTEM_RESET ends the run (QEMU's -no-reboot)
    pflash1: str | None = None  # a 64 MiB host file holding flash1 (QEMU's -drive if=pflash,unit=1)
    smp: int = 1  # vCPUs (QEMU's -smp)

    def __post_init__(self):
        if self.ram_size % 4096 or not 4096 <= self.ram_size <= MAX_RAM_SIZE:
            raise ValueError(f"RAM size must be a multiple of 4 KiB between 4 KiB and 8 GiB, got {self.ram_size}")
        DebugConfig(self.brps, self.wrps, self.ctx_cmps)  # validates the counts
        if isinstance(self.smp, bool) or not isinstance(self.smp, int) or not 1 <= self.smp <= MAX_CPUS:
            raise ValueError(f"the number of vCPUs must be 1..{MAX_CPUS}, got {self.smp!r}")

    @property
    def debug(self) -> DebugConfig:
        return DebugConfig(self.brps, self.wrps, self.ctx_cmps)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class VirtMachine(SmpMachine, RunToExit):
    """A VM on the virt board with `config.smp` vCPUs, loaded and ready to run."""

    arch_name = "aarch64"

    config: VirtConfig = field(default_factory=VirtConfig)
    console: Console | None = None  # None: the host's standard output
    clock_mode: str = "virtual"  # see guestdbg.board.clock

    def __post_init__(self) -> None:
        self.vm = Arm64Vm(self.config.debug, console=self._console)
        self.flash = (CfiFlash(self.vm, SLOT_FLASH0, FLASH0_BASE), CfiFlash(self.vm, SLOT_FLASH1, FLASH1_BASE))
        self.vm.set_user_memory_region(SLOT_RAM, RAM_BASE, self.config.ram_size)
        if self.config.pflash1 is not None:
            self._open_pflash1(self.config.pflash1)
        if self.config.smp > 1 and self.clock_mode != "virtual":
            raise ValueError("several vCPUs run on the virtual clock only (--clock host needs --smp 1)")
        self.gic = Gic(num_cpus=self.config.smp, listener=self._gic_changed)
        self.vm.register_mmio_device(GIC_BASE, GIC_SIZE, self.gic)
        # The PL011's interrupt output is SPI 1 (INTID 33), as in QEMU's DTB.
        self.uart = Pl011(self._console, on_irq_change=lambda level: self.gic.set_level(UART_INTID, level))
        self.vm.register_mmio_device(UART_BASE, UART_SIZE, self.uart)
        self.vcpu: Arm64Vcpu = self.vm.create_vcpu()
        self.clock = VirtualClock(self.vcpu, self.clock_mode)
        self.unassigned_accesses = 0
        # What a reboot restores: the vCPU's power-on registers, then the images and entry
        # registers the loaders gave it.
        self._smp_init(self.config.smp, _power_on_regs)
        self._power_on_regs = self._vcpu_power_on[0]
        self._boot_images: list[tuple[int, bytes]] = []
        self._boot_regs: dict[int, int] = {}
        self.reboots = 0
        self._last_flash_write: tuple[int, int, int, bytes] | None = None

    def _open_pflash1(self, path: str) -> None:
        """flash1's contents from `path`, written back to it as the guest programs and erases."""
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as e:
            raise ImageError(f"--pflash1 {path}: {(e.strerror or str(e)).lower()}") from None
        size = os.fstat(fd).st_size
        if size != FLASH_BANK_SIZE:
            os.close(fd)
            raise ImageError(f"--pflash1 {path}: {size} bytes; flash1 needs a file of exactly "
                             f"{FLASH_BANK_SIZE >> 20} MiB (create one with: truncate -s 64M {path})")
        self.flash[1].load(0, os.pread(fd, size, 0))

        def write_back(offset: int, data: bytes) -> None:
            os.pwrite(fd, data, offset)
        self.flash[1].on_change = write_back

    def _gic_changed(self) -> None:
        """After every GIC change: drive each vCPU's IRQ line (KVM_IRQ_LINE) whose level moved."""
        self.drive_irq_lines()

    def _console(self, data: bytes) -> None:
        (self.console or stdout_console)(data)

    # ------------------------------------------------------------------ loading
    def load_elf(self, path: str | Path) -> int:
        """Load an AArch64 ELF at its segments' physical addresses; PC = its entry. Returns entry."""
        path = Path(path)
        entry, segments = read_elf(path, "AArch64", "a little-endian AArch64 ELF64 image")
        for paddr, data, memsz in segments:
            self._check_fits(path, paddr, memsz)
        for paddr, data, memsz in segments:
            self.load_image(paddr, data + bytes(memsz - len(data)))
        self.reset_cpu(entry)
        return entry

    def load_raw(self, path: str | Path, load_addr: int) -> None:
        data = read_image(path)
        self._check_fits(path, load_addr, len(data))
        self.load_image(load_addr, data)
        self.reset_cpu(load_addr)

    def load_rom(self, path: str | Path) -> None:
        """Firmware in flash0, as QEMU's -bios."""
        data = read_image(path)
        if len(data) > FLASH_BANK_SIZE:
            raise ImageError(f"{path}: {len(data)} bytes do not fit the {FLASH_BANK_SIZE >> 20} MiB flash0")
        self.load_image(FLASH0_BASE, data)
        self.reset_cpu(FLASH0_BASE)

    def load_image(self, pa: int, data: bytes) -> None:
        """Write an image into RAM or flash, and again at every reboot (QEMU's ROM blobs)."""
        self._write_image(pa, data)
        self._boot_images.append((pa, data))

    def _write_image(self, pa: int, data: bytes) -> None:
        for bank in self.flash:  # a bank in I/O mode has no slot: through the flash model
            start, end = max(pa, bank.base), min(pa + len(data), bank.base + bank.size)
            if start < end:
                bank.load(start - bank.base, data[start - pa:end - pa])
        if pa + len(data) > RAM_BASE:
            start = max(pa, RAM_BASE)
            self.vm.write_phys(start, data[start - pa:])

    def _check_fits(self, path, addr: int, size: int) -> None:
        for base, length in ((ROM_BASE, ROM_SIZE), (RAM_BASE, self.config.ram_size)):
            if base <= addr and addr + size <= base + length:
                return
        raise ImageError(
            f"{path}: {size:#x} bytes at {addr:#x} are outside RAM "
            f"({RAM_BASE:#x}-{RAM_BASE + self.config.ram_size - 1:#x}) and flash ({ROM_BASE:#x}-{ROM_SIZE - 1:#x})")

    def reset_cpu(self, entry: int, args: tuple[int, ...] = ()) -> None:
        """The state QEMU gives a bare-metal -kernel image: EL1h, interrupts masked, PC = entry,
        x0, x1, ... = `args`; a reboot starts the vCPU here again."""
        self._boot_regs = {kr.KVM_REG_ARM_CORE_PSTATE: PSTATE_DAIF | PSTATE_MODE_EL1H, kr.KVM_REG_ARM_CORE_PC: entry}
        self._boot_regs.update((kr.KVM_REG_ARM_CORE_X(n), value) for n, value in enumerate(args))
        for reg_id, value in self._boot_regs.items():
            self.vcpu.set_one_reg(reg_id, value)

    def reboot(self) -> None:
        """PSCI SYSTEM_RESET: the board as at power-on, with its images loaded again (see the
        module docstring)."""
        for bank in self.flash:
            bank.reset()
        self.gic.reset()
        self.uart.reset()
        self._smp_reset()
        self._gic_changed()
        for pa, data in self._boot_images:
            self._write_image(pa, data)
        for reg_id, value in self._power_on_regs:
            self.vcpu.set_one_reg(reg_id, value)
        for reg_id, value in self._boot_regs.items():
            self.vcpu.set_one_reg(reg_id, value)
        self.reboots += 1

    # ------------------------------------------------------------------ running
    def handle_exit(self, run: kvm.KvmRun) -> ExitStatus | None:
        """Serve one vCPU exit the VMM owns. Returns the guest's exit when it has ended;
        raises GuestFault for exits no one can serve. DEBUG exits are the debugger's: they
        are returned to the caller untouched by run_until()."""
        if run.exit_reason == kvm.KVM_EXIT_MMIO and run.mmio is not None:
            # Only the flash (a write in read-array mode, anything in I/O mode) and unassigned
            # addresses get here: the other devices are claimed inline.
            mmio = run.mmio
            for bank in self.flash:
                if bank.contains(mmio.phys_addr):
                    if mmio.is_write:
                        # The vCPU reports a write again when a kick (KVM_EXIT_INTR) lands between
                        # the exit and its completion after the flash took its slot away: the same
                        # instruction, not yet retired. A command must not be taken twice.
                        access = (self.vcpu.icount, self.vcpu.pc, mmio.phys_addr, bytes(mmio.data[:mmio.len]))
                        if access == self._last_flash_write:
                            return None
                        self._last_flash_write = access
                    value = bank.mmio(mmio.phys_addr - bank.base, mmio.len, mmio.is_write,
                                      int.from_bytes(mmio.data[:mmio.len], "little"))
                    if not mmio.is_write:
                        mmio.data[:mmio.len] = value.to_bytes(mmio.len, "little")
                    return None
            self.unassigned_accesses += 1
            self.vcpus[self.last_vcpu_id].set_vcpu_events(ext_dabt_pending=True)
            return None
        if run.exit_reason == kvm.KVM_EXIT_SYSTEM_EVENT and run.system_event is not None:
            ev = run.system_event
            status = ev.data[0] if ev.ndata else 0
            if ev.type == kvm.KVM_SYSTEM_EVENT_RESET and not self.config.no_reboot:
                self.reboot()
                return None
            if ev.type in (kvm.KVM_SYSTEM_EVENT_SHUTDOWN, kvm.KVM_SYSTEM_EVENT_RESET):
                return ExitStatus(status, ev.source)
        if run.exit_reason == kvm.KVM_EXIT_INTERNAL_ERROR and run.internal is not None:
            raise GuestFault(run.internal.message)
        return None

    def run_until(self, stop: Callable[[kvm.KvmRun], bool] = lambda r: False, *,
                  only: int | None = None, icount_limit: int | None = None,
                  soft_limit: int | None = None, time_limit: int | None = None,
                  soft_time_limit: int | None = None) -> kvm.KvmRun | ExitStatus:
        """Run the VMM loop until the guest ends (ExitStatus) or an exit `stop` accepts, or
        any DEBUG or INTR exit, or (with `icount_limit`) the vCPU has retired exactly that many
        instructions (EXIT_ICOUNT_LIMIT), returned as they are. With several vCPUs: the
        powered-on ones round-robin (board/smp.py), or only vCPU `only`; `last_vcpu_id` names
        the vCPU the exit came from, and `icount_limit` counts vCPU `only` (else vCPU 0).
        `time_limit` / `soft_time_limit` are in `machine_now` (instructions of the whole
        machine): EXIT_ICOUNT_LIMIT there exactly / at the block boundary at or before it."""
        if len(self.vcpus) == 1:  # the machine's time is the vCPU's instruction count
            if time_limit is not None:
                icount_limit = time_limit if icount_limit is None else min(icount_limit, time_limit)
                time_limit = None
            if soft_time_limit is not None:
                soft_limit = soft_time_limit if soft_limit is None else min(soft_limit, soft_time_limit)
                soft_time_limit = None
        if len(self.vcpus) > 1 or self.power[0] != ON:
            if soft_limit is not None and icount_limit is None:
                icount_limit = soft_limit  # one vCPU after CPU_OFF: exact rather than soft
            return self._run_smp(stop, only, icount_limit, time_limit, soft_time_limit)
        if only not in (None, 0):
            raise ValueError(f"no vCPU {only}")
        while True:
            # soft_limit (one vCPU): EXIT_ICOUNT_LIMIT at the block boundary at or before it
            # (vcpu.run's turn_end), so the stop splits no translation block.
            run = self.vcpu.run(icount_limit=icount_limit, turn_end=soft_limit)
            stopped = stop(run)
            if run.device_irq_level is not None:
                self.drive_timer_ppis(0, run.device_irq_level)  # and go on running
                if not stopped:
                    continue
            if stopped or run.exit_reason in (kvm.KVM_EXIT_DEBUG, kvm.KVM_EXIT_INTR, kvm.EXIT_ICOUNT_LIMIT):
                return run
            if run.exit_reason == kvm.KVM_EXIT_HLT:  # PSCI CPU_OFF of the only vCPU
                return self._run_smp(stop, only, icount_limit)
            ended = self.handle_exit(run)
            if ended is not None:
                return ended

    @property
    def machine_now(self) -> int:
        """The machine's time in instructions: vCPU 0's count with one vCPU, else the
        scheduler's machine_time (every vCPU's instructions, and the idle skips)."""
        return self.vcpu.icount if len(self.vcpus) == 1 else self.machine_time

    def cpu_state(self, index: int) -> str:
        """"running", "halted" (in WFI with nothing pending) or "off" (PSCI)."""
        if len(self.vcpus) == 1 and self.power[0] == ON:
            return "halted" if self.vcpu.wfi_waiting else "running"
        return super().cpu_state(index)

    def _spins_forever(self, pc: int) -> bool:
        if len(self.vcpus) > 1 or self.power[0] != ON:
            return self._smp_spins_forever()
        if self.vcpu.wfi_waiting and self.uart.rx_source is None and not self.gic.irq_pending(0):
            # In WFI with no timer armed, no interrupt pending and no input to come.
            self.SELF_LOOP = "WFI with no timer armed"
            return True
        self.SELF_LOOP = type(self).SELF_LOOP  # not a WFI left from an earlier check
        try:
            return self.vcpu.read_virt(pc, 4) == B_SELF
        except (TranslationFault, kvm.KvmError):  # PC on an unmapped page, or not in RAM/ROM
            return False

    def _smp_spins_forever(self) -> bool:
        """Several vCPUs: hung when no input is to come and every powered-on vCPU either waits
        with nothing to wake it or spins on a branch to itself with no IRQ signalled."""
        if self.uart.rx_source is not None:
            return False
        spinning = False
        for i, v in enumerate(self.vcpus):
            if self.power[i] == OFF:
                continue
            if self.gic.irq_pending(i) or (self.halted[i] and v.next_timer_event() is not None):
                return False
            if not self.halted[i]:
                try:
                    if v.read_virt(v.pc, 4) != B_SELF:
                        return False
                except (TranslationFault, kvm.KvmError):
                    return False
                spinning = True
        self.SELF_LOOP = ("every CPU off, in WFI with no timer armed, or branching to itself" if spinning
                          else "every CPU off or in WFI with no timer armed")
        return True

    # ------------------------------------------------------------------ device state
    def device_state(self) -> dict:
        state = {"pl011": self.uart.state(), "clock": self.clock.state(), "gic": self.gic.state(),
                 "flash": [bank.state() for bank in self.flash]}
        if len(self.vcpus) > 1 or self.power[0] != ON:
            state["smp"] = self.smp_state()
        return state

    def restore_device_state(self, state: dict) -> None:
        self.uart.restore(state["pl011"])
        for bank, bank_state in zip(self.flash, state.get("flash", ())):  # none before the flash model
            bank.restore(bank_state)
        if "gic" in state:  # snapshots from before the GIC: it stays as reset
            self.gic.restore(state["gic"])
        self._force_irq_lines()  # drive the lines whatever they were before
        self._timer_reports_from_gic()
        if "clock" in state:  # snapshots from before the virtual clock start it at 0
            self.clock.restore(state["clock"])
        if "smp" in state:
            self.restore_smp_state(state["smp"])
        elif len(self.vcpus) == 1:  # one vCPU, on (its snapshots have no "smp")
            self.power[0], self.halted[0] = ON, False
