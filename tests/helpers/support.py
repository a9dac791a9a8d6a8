"""Helpers for driving guests on the emulated vCPU from tests."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path


from guestdbg import kvm
from guestdbg.arm import debugregs as dr
from guestdbg.arm import kvm_regs as kr
from guestdbg.board.common import ExitStatus, elf_symbols
from guestdbg.board.console_input import ConsoleInput
from guestdbg.board.virt import VirtMachine, VirtConfig

# A64 assembly for raw-ELF test guests: the virt board's GICv2 set up so that SPI 40 (INTID 40)
# reaches CPU 0 and IRQs are unmasked. Leaves x1 = GICD, x3 = GICC, w2 = 1 << 8 (INTID 40's bit
# in GICD_ISENABLER1/ISPENDR1: `str w2, [x1, #0x204]` raises it). 12 instructions.
GIC_SPI40 = """\
    ldr     x1, =0x08000000            // GICD
    ldr     x3, =0x08010000            // GICC
    mov     w2, #1
    str     w2, [x1]                   // GICD_CTLR
    strb    w2, [x1, #0x828]           // GICD_ITARGETSR: SPI 40 to CPU 0
    str     w2, [x3]                   // GICC_CTLR
    mov     w2, #0xff
    str     w2, [x3, #4]               // GICC_PMR
    mov     w2, #(1 << 8)
    str     w2, [x1, #0x104]           // GICD_ISENABLER1: INTID 40
    msr     daifclr, #2
    isb
"""

HW_DEBUG = kvm.KVM_GUESTDBG_ENABLE | kvm.KVM_GUESTDBG_USE_HW


class Guest:
    """A machine with one guest loaded and its console captured."""

    def __init__(self, elf: Path, config: VirtConfig | None = None):
        self.elf = Path(elf)
        self.output = bytearray()
        self.machine = VirtMachine(config or VirtConfig(), console=self.output.extend)
        self.machine.load_elf(self.elf)
        self.vm, self.vcpu = self.machine.vm, self.machine.vcpu
        self.sym = symbols(str(self.elf))

    @property
    def text(self) -> str:
        return self.output.decode()

    @property
    def pc(self) -> int:
        return self.vcpu.pc

    def run(self) -> kvm.KvmRun | ExitStatus:
        """Run until a debug exit, an INTR, or the guest's end (MMIO etc. served by the board)."""
        return self.machine.run_until()

    def run_to_exit(self) -> int:
        return self.machine.run_to_exit()

    def reg(self, name: str) -> int:
        return self.vcpu.get_one_reg(reg_id(name))

    def set_debug(self, control: int = HW_DEBUG, *, bps=(), wps=()) -> None:
        """bps: [(bvr, bcr)], wps: [(wvr, wcr)] in slot order."""
        arch = kr.kvm_guest_debug_arch()
        for i, (bvr, bcr) in enumerate(bps):
            arch.dbg_bvr[i], arch.dbg_bcr[i] = bvr, bcr
        for i, (wvr, wcr) in enumerate(wps):
            arch.dbg_wvr[i], arch.dbg_wcr[i] = wvr, wcr
        self.vcpu.set_guest_debug(control, arch)

    def read(self, addr: int, size: int) -> bytes:
        return self.vm.read_phys(addr, size)


def reg_id(name: str) -> int:
    name = name.upper()
    if name == "PC":
        return kr.KVM_REG_ARM_CORE_PC
    if name == "SP":
        return kr.KVM_REG_ARM_CORE_SP
    if name == "SP_EL1":
        return kr.KVM_REG_ARM_CORE_SP_EL1
    if name == "PSTATE":
        return kr.KVM_REG_ARM_CORE_PSTATE
    if name == "ELR_EL1":
        return kr.KVM_REG_ARM_CORE_ELR_EL1
    if name == "SPSR_EL1":
        return kr.KVM_REG_ARM_CORE_SPSR(kr.KVM_SPSR_EL1)
    if name[0] == "X" and name[1:].isdigit():
        return kr.KVM_REG_ARM_CORE_X(int(name[1:]))
    if name[0] == "V" and name[1:].isdigit():
        return kr.KVM_REG_ARM_CORE_V(int(name[1:]))
    return kr.sysreg_id(name)


@lru_cache(maxsize=None)
def symbols(elf: str) -> dict[str, int]:
    return elf_symbols(elf)


def breakpoint(addr: int, **kw) -> tuple[int, int]:
    return addr, dr.encode_dbgbcr(**kw)


def watchpoint(addr: int, size: int, *, lsc: int = 0b11) -> tuple[int, int]:
    """A watchpoint on [addr, addr+size) inside one aligned doubleword (BAS)."""
    base = addr & ~7
    assert addr + size <= base + 8, "use a MASK watchpoint or several slots"
    bas = ((1 << size) - 1) << (addr - base)
    return base, dr.encode_dbgwcr(lsc=lsc, bas=bas)


def ec(run) -> int:
    assert isinstance(run, kvm.KvmRun) and run.exit_reason == kvm.KVM_EXIT_DEBUG, f"expected a debug exit, got {run}"
    return run.debug.ec


@lru_cache(maxsize=None)
def kvm_unavailable_reason() -> str | None:
    """Why /dev/kvm cannot be used here, or None (the x86-64 tests' one permitted skip)."""
    from guestdbg.backends.kvm_x86 import vm as kvm_vm
    try:
        kvm_vm.X86Vm().close()
    except kvm_vm.KvmUnavailable as e:
        return str(e)
    return None


def machine_with_values(elf, clock_mode: str = "virtual", **symbol_values: int) -> tuple[VirtMachine, bytearray]:
    """A VirtMachine with `elf` loaded, each named 64-bit guest variable set to its value, and
    the bytearray its console writes to."""
    out = bytearray()
    m = VirtMachine(VirtConfig(), console=out.extend, clock_mode=clock_mode)
    m.load_elf(elf)
    syms = elf_symbols(elf)
    for name, value in symbol_values.items():
        m.vm.write_phys(syms[name], value.to_bytes(8, "little"))
    return m, out


def typed_console(machine: VirtMachine) -> ConsoleInput:
    """Console input a test pushes into, wired as `guestdbg run` wires stdin: the UART takes
    from it as the guest reads, and after a kick (the manager's wake) the board's on_intr
    delivers what arrived while the guest waits."""
    typed = ConsoleInput()
    machine.uart.rx_source = typed.take
    machine.on_intr = machine.uart.pump
    return typed


class Without:
    """`obj` without the attributes `hidden`, and with `replaced` ones: a vCPU, board or
    architecture that lacks what the manager asks for with getattr, as other back ends do."""

    def __init__(self, obj, *hidden: str, **replaced):
        self._obj, self._hidden, self._replaced = obj, hidden, replaced

    def __getattr__(self, name):
        if name in self._hidden:
            raise AttributeError(name)
        if name in self._replaced:
            return self._replaced[name]
        return getattr(self._obj, name)


# A64 words for raw-image guests.
def words(*ws: int) -> bytes:
    return b"".join(w.to_bytes(4, "little") for w in ws)


def movz_w0(v: int) -> int:
    return 0x52800000 | (v & 0xFFFF) << 5


def movk_w0_16(v: int) -> int:
    return 0x72A00000 | (v & 0xFFFF) << 5
