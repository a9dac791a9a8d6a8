"""The "pc" board: an x86-64 machine on Linux KVM, and the VMM loop that serves its exits.

The VMM puts the vCPU straight into 64-bit long mode, so a guest ELF starts at its 64-bit
entry (e_entry) with paging on. The same ELF boots under qemu-system-x86_64 through its PVH
note (a 32-bit entry that builds its own page tables); guestdbg does not use that entry.

Physical memory (RAM from 0, one KVM memory slot; everything the VMM builds sits below 1 MiB):

    0x0000_1000  GDT: 0x08 64-bit code, 0x10 data, 0x18 32-bit code, 0x20 64-bit TSS
    0x0000_2000  IDT: 256 interrupt gates, all on IST1, each to its stub
    0x0000_3000  exception stubs, 16 bytes each: `mov eax, vector; mov dx, EXC_PORT;
                 out dx, eax; hlt; jmp .-1`: an exception becomes an I/O exit naming it
    0x0000_4000  TSS (IST1 = 0x6000)
    0x0000_5000  the exception stack (IST1, one page), so a broken guest RSP still reports
    0x0001_0000  PML4, then PDPT, then 4 page directories: identity map of 0-4 GiB, 2 MiB pages
    0x0009_0000  initial RSP (guests set their own)
    0x0010_0000  guests load here (1 MiB)

Addresses in the identity map that are not RAM are MMIO: accesses exit to the VMM, which
counts them and reads all-ones / drops writes, as an unassigned PC bus does. Above 4 GiB
nothing is mapped: a guest access there is a #PF.

I/O ports:

    0x3F8-0x3FF  16550 UART (COM1): THR sends a byte to the console; LSR says THRE|TEMT
    0xF4         isa-debug-exit: a write of v ends the guest with status v (EXIT_STATUS_MAX for
                 anything larger). QEMU's device ends QEMU with (v << 1) | 1 instead, which can
                 never be 0: a guest's success (v = 0) would read as 1, exactly like guestdbg's
                 own "guest fault" status, so guestdbg reports the value the guest wrote.
    EXC_PORT     the exception stubs' report (guestdbg's own; QEMU never sees it)

Other ports read as all-ones and ignore writes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from guestdbg import kvm
from guestdbg.backends.kvm_x86 import uapi as u
from guestdbg.backends.kvm_x86.vcpu import X86Vcpu
from guestdbg.backends.kvm_x86.vm import X86Vm
from guestdbg.board.common import ExitStatus, GuestFault, ImageError, RunToExit, read_elf
from guestdbg.board.pc_facts import HostDebugFacts
from guestdbg.vmapi import Console, stdout_console

GDT_ADDR = 0x1000
IDT_ADDR = 0x2000
STUBS_ADDR = 0x3000
TSS_ADDR = 0x4000
EXC_STACK_TOP = 0x6000
PML4_ADDR = 0x10000
PDPT_ADDR = 0x11000
PD_ADDR = 0x12000
IDENTITY_MAP_GIB = 4
BOOT_RSP = 0x90000
LOW_RESERVED_END = 0x100000  # guests load at or above 1 MiB

SEL_CODE64, SEL_DATA, SEL_CODE32, SEL_TSS = 0x08, 0x10, 0x18, 0x20

COM1_BASE = 0x3F8
DEBUG_EXIT_PORT = 0xF4
EXC_PORT = 0x0F00

EXIT_STATUS_MAX = 255  # a larger isa-debug-exit value must not wrap to 0 (success) in 8 bits
DEFAULT_RAM_SIZE = 128 << 20
MAX_RAM_SIZE = 3 << 30  # below the 4 GiB identity map, leaving room for MMIO
SLOT_RAM = 0

CR0_PE, CR0_MP, CR0_ET, CR0_NE, CR0_WP, CR0_AM, CR0_PG = 1, 2, 0x10, 0x20, 1 << 16, 1 << 18, 1 << 31
CR4_PAE, CR4_OSFXSR, CR4_OSXMMEXCPT = 0x20, 0x200, 0x400
EFER_SCE, EFER_LME, EFER_LMA = 1, 1 << 8, 1 << 10
RFLAGS_RESERVED1, RFLAGS_IF = 0x2, 0x200
JMP_SELF = b"\xeb\xfe"

# Vector -> (mnemonic, name). Vectors that push an error code are in ERROR_CODE_VECTORS.
EXCEPTIONS = {
    0: ("#DE", "divide error"), 1: ("#DB", "debug"), 2: ("NMI", "non-maskable interrupt"),
    3: ("#BP", "breakpoint"), 4: ("#OF", "overflow"), 5: ("#BR", "bound range exceeded"),
    6: ("#UD", "invalid opcode"), 7: ("#NM", "device not available"), 8: ("#DF", "double fault"),
    10: ("#TS", "invalid TSS"), 11: ("#NP", "segment not present"), 12: ("#SS", "stack fault"),
    13: ("#GP", "general protection"), 14: ("#PF", "page fault"), 16: ("#MF", "x87 FP error"),
    17: ("#AC", "alignment check"), 18: ("#MC", "machine check"), 19: ("#XM", "SIMD FP exception"),
    20: ("#VE", "virtualization exception"), 21: ("#CP", "control protection"),
}
ERROR_CODE_VECTORS = frozenset({8, 10, 11, 12, 13, 14, 17, 21, 29, 30})


# Vector -> the POSIX signal a debugger reports for it (SIGFPE 8, SIGILL 4, SIGTRAP 5, SIGBUS 7,
# SIGSEGV 11 for the rest).
VECTOR_SIGNALS = {0: 8, 1: 5, 3: 5, 4: 11, 5: 11, 6: 4, 7: 8, 16: 8, 17: 7, 19: 8}


@dataclass
class FaultExit(kvm.InternalErrorExit):
    """A guest exception reported to the debugger (see PcMachine._fault_stop)."""

    signal: int = 11
    exception: GuestException | None = None


class GuestException(GuestFault):
    """An exception the guest took through the VMM's IDT: vector, RIP, error code and CR2."""

    def __init__(self, vector: int, rip: int, error_code: int | None, cr2: int, cs: int = 0, rsp: int = 0):
        self.vector, self.rip, self.error_code, self.cr2, self.cs, self.rsp = vector, rip, error_code, cr2, cs, rsp
        mnemonic, name = EXCEPTIONS.get(vector, (f"vector {vector}", "interrupt"))
        msg = f"guest exception {mnemonic} ({name}, vector {vector}) at RIP={rip:#x}"
        if error_code is not None:
            msg += f", error code {error_code:#x}"
        if vector == 14:
            msg += f", CR2={cr2:#x} ({_pf_error_text(error_code or 0)})"
        super().__init__(msg)

    @property
    def mnemonic(self) -> str:
        return EXCEPTIONS.get(self.vector, (f"vector {self.vector}", ""))[0]


def _pf_error_text(code: int) -> str:
    parts = ["protection violation" if code & 1 else "not present", "write" if code & 2 else "read"]
    if code & 4:
        parts.append("user")
    if code & 16:
        parts.append("instruction fetch")
    return ", ".join(parts)


@dataclass(frozen=True)
class PcConfig:
    ram_size: int = DEFAULT_RAM_SIZE

    def __post_init__(self) -> None:
        if self.ram_size % (2 << 20) or not 2 << 20 <= self.ram_size <= MAX_RAM_SIZE:
            raise ValueError(f"RAM size must be a multiple of 2 MiB between 2 MiB and 3 GiB, got {self.ram_size}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Uart16550:
    """The transmit side of a 16550 at COM1: THR sends a byte; LSR is always THRE|TEMT; the
    other registers keep what the guest writes (DLAB selects DLL/DLM at +0/+1)."""

    THR, IER, IIR, LCR, MCR, LSR, MSR, SCR = range(8)
    LCR_DLAB = 0x80
    LSR_THRE, LSR_TEMT = 0x20, 0x40
    IIR_NO_INT = 0x01

    def __init__(self, console: Console):
        self.console = console
        self.regs: dict[int, int] = {self.LCR: 0x03}
        self.divisor = 1

    def read(self, offset: int) -> int:
        dlab = self.regs.get(self.LCR, 0) & self.LCR_DLAB
        if offset == self.THR:
            return self.divisor & 0xFF if dlab else 0
        if offset == self.IER and dlab:
            return self.divisor >> 8
        if offset == self.IIR:
            return self.IIR_NO_INT
        if offset == self.LSR:
            return self.LSR_THRE | self.LSR_TEMT
        return self.regs.get(offset, 0)

    def write(self, offset: int, value: int) -> None:
        dlab = self.regs.get(self.LCR, 0) & self.LCR_DLAB
        if offset == self.THR and not dlab:
            self.console(bytes([value & 0xFF]))
        elif offset == self.THR:
            self.divisor = (self.divisor & 0xFF00) | value
        elif offset == self.IER and dlab:
            self.divisor = (self.divisor & 0xFF) | (value << 8)
        elif offset != self.LSR:
            self.regs[offset] = value & 0xFF

    def state(self) -> dict[str, Any]:
        return {"regs": {str(k): v for k, v in self.regs.items()}, "divisor": self.divisor}

    def restore(self, state: dict[str, Any]) -> None:
        self.regs = {int(k): v for k, v in state["regs"].items()}
        self.divisor = state["divisor"]


@dataclass
class PcMachine(RunToExit):
    """A KVM VM on the pc board with one vCPU in long mode, loaded and ready to run.

    Constructing one only builds the VM (no probing, no other side effects). `debug_facts` is
    what the host's KVM does for a debugger (guestdbg.board.pc_facts); None means "assume a
    VMX/SVM host". guestdbg.board.pc_probe.create_pc_machine() builds one with the probed facts,
    which is how the CLI, snapshots and the debugger get theirs."""

    PC_NAME = "RIP"
    SELF_LOOP = "jump-to-self (interrupts off)"

    arch_name = "x86_64"

    config: PcConfig = field(default_factory=PcConfig)
    console: Console | None = None
    debug_facts: HostDebugFacts | None = None

    def __post_init__(self) -> None:
        self.console = self.console or stdout_console
        self.vm = X86Vm()
        self.vm.set_user_memory_region(SLOT_RAM, 0, self.config.ram_size)
        self.uart = Uart16550(self._console)
        self.vcpu: X86Vcpu = self.vm.create_vcpu()
        self.unassigned_accesses = 0
        self.entry = 0
        self._build_system_tables()
        self.reset_cpu(0)

    def _console(self, data: bytes) -> None:
        (self.console or stdout_console)(data)  # looked up per byte: the console may be swapped

    def close(self) -> None:
        self.vm.close()

    def __enter__(self) -> PcMachine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ long mode set-up
    def _build_system_tables(self) -> None:
        w = self.vm.write_phys
        # Page tables: PML4[0] -> PDPT; PDPT[i] -> PD i; PD entries: 2 MiB pages, present|rw|PS.
        w(PML4_ADDR, struct.pack("<Q", PDPT_ADDR | 0x3) + bytes(4096 - 8))
        pdpt = b"".join(struct.pack("<Q", (PD_ADDR + i * 4096) | 0x3) for i in range(IDENTITY_MAP_GIB))
        w(PDPT_ADDR, pdpt + bytes(4096 - len(pdpt)))
        w(PD_ADDR, b"".join(struct.pack("<Q", (i << 21) | 0x83) for i in range(512 * IDENTITY_MAP_GIB)))
        # GDT
        tss_lo, tss_hi = _tss_descriptor(TSS_ADDR, 0x67)
        gdt = struct.pack("<6Q", 0, 0x00AF9A000000FFFF, 0x00CF92000000FFFF, 0x00CF9A000000FFFF, tss_lo, tss_hi)
        w(GDT_ADDR, gdt)
        self._gdt_limit = len(gdt) - 1
        # TSS: IST1 at offset 0x24; I/O map base past the limit (no I/O bitmap).
        tss = bytearray(0x68)
        struct.pack_into("<Q", tss, 0x24, EXC_STACK_TOP)
        struct.pack_into("<H", tss, 0x66, 0x68)
        w(TSS_ADDR, bytes(tss))
        # Exception stubs and the IDT.
        stubs = bytearray()
        idt = bytearray()
        for vector in range(256):
            addr = STUBS_ADDR + len(stubs)
            stub = (b"\xb8" + struct.pack("<I", vector)          # mov eax, vector
                    + b"\x66\xba" + struct.pack("<H", EXC_PORT)  # mov dx, EXC_PORT
                    + b"\xef"                                    # out dx, eax
                    + b"\xf4\xeb\xfd")                           # hlt; jmp .-1 (back to hlt)
            stubs += stub.ljust(16, b"\xcc")
            idt += _idt_gate(addr, SEL_CODE64, ist=1)
        w(STUBS_ADDR, bytes(stubs))
        w(IDT_ADDR, bytes(idt))

    def reset_cpu(self, entry: int) -> None:
        """Long mode at CPL0: paging on (identity map), GDT/IDT/TSS loaded, interrupts off,
        RIP = entry, RSP = BOOT_RSP."""
        s = self.vcpu.get_sregs()
        code = u.kvm_segment(base=0, limit=0xFFFFFFFF, selector=SEL_CODE64, type=0xB, present=1, dpl=0,
                             db=0, s=1, l=1, g=1)
        data = u.kvm_segment(base=0, limit=0xFFFFFFFF, selector=SEL_DATA, type=0x3, present=1, dpl=0,
                             db=1, s=1, l=0, g=1)
        s.cs = code
        s.ds = s.es = s.fs = s.gs = s.ss = data
        s.tr = u.kvm_segment(base=TSS_ADDR, limit=0x67, selector=SEL_TSS, type=0xB, present=1, s=0)
        s.ldt = u.kvm_segment(base=0, limit=0xFFFF, selector=0, type=0x2, present=1, s=0)
        s.gdt = u.kvm_dtable(base=GDT_ADDR, limit=self._gdt_limit)
        s.idt = u.kvm_dtable(base=IDT_ADDR, limit=256 * 16 - 1)
        s.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_PG
        s.cr3 = PML4_ADDR
        s.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT
        s.efer = EFER_SCE | EFER_LME | EFER_LMA
        self.vcpu.set_sregs(s)
        regs = u.kvm_regs(rip=entry, rsp=BOOT_RSP, rflags=RFLAGS_RESERVED1)
        self.vcpu.set_regs(regs)
        self.entry = entry

    # ------------------------------------------------------------------ loading
    def load_elf(self, path: str | Path) -> int:
        """Load an x86-64 ELF64 at its segments' physical addresses; RIP = e_entry (its 64-bit
        entry). Returns the entry."""
        path = Path(path)
        entry, segments = read_elf(path, "x64", "an x86-64 ELF64 image", "; the x86_64 board runs EM_X86_64 only")
        for paddr, _data, memsz in segments:
            if paddr < LOW_RESERVED_END or paddr + memsz > self.config.ram_size:
                raise ImageError(f"{path}: segment {paddr:#x}+{memsz:#x} is outside guest RAM "
                                 f"{LOW_RESERVED_END:#x}-{self.config.ram_size - 1:#x} (below 1 MiB is the VMM's)")
        for paddr, data, memsz in segments:
            self.vm.write_phys(paddr, data + bytes(memsz - len(data)))
        self.reset_cpu(entry)
        return entry

    # ------------------------------------------------------------------ running
    def handle_exit(self, run: kvm.KvmRun) -> ExitStatus | None:
        """Serve one exit the VMM owns. Returns the guest's end as an ExitStatus, or None to go
        on; raises GuestFault (GuestException for a guest exception) for what cannot go on.
        DEBUG and INTR exits are the debugger's; run_until() returns them untouched."""
        reason = run.exit_reason
        if reason == kvm.KVM_EXIT_IO and run.io is not None:
            return self._io(run.io)
        mmio = run.mmio
        if reason == kvm.KVM_EXIT_MMIO and mmio is not None:
            slot = self.vm.slot_for(mmio.phys_addr)
            if slot is None or not slot.readonly or not mmio.is_write:
                self.unassigned_accesses += 1
            if not mmio.is_write:
                mmio.data[:] = b"\xff" * len(mmio.data)
            return None
        if reason == kvm.KVM_EXIT_HLT:
            raise GuestFault(f"guest halted (HLT) at RIP={self.vcpu.pc:#x} with nothing to wake it "
                             "(no interrupt controller)")
        if reason == kvm.KVM_EXIT_SHUTDOWN:
            raise GuestFault(f"guest triple fault (KVM_EXIT_SHUTDOWN) at RIP={self.vcpu.pc:#x}")
        internal = run.internal
        if reason in (kvm.KVM_EXIT_INTERNAL_ERROR, kvm.KVM_EXIT_FAIL_ENTRY) and internal is not None:
            data = " ".join(f"{d:#x}" for d in internal.data)
            raise GuestFault(f"{internal.message} at RIP={self.vcpu.pc:#x}" + (f" (data {data})" if data else ""))
        ev = run.system_event
        if reason == kvm.KVM_EXIT_SYSTEM_EVENT and ev is not None:
            if ev.type in (kvm.KVM_SYSTEM_EVENT_SHUTDOWN, kvm.KVM_SYSTEM_EVENT_RESET):
                return ExitStatus(ev.data[0] if ev.ndata else 0, f"KVM system event {ev.type}")
            raise GuestFault(f"KVM system event {ev.type} (data {ev.data})")
        raise GuestFault(f"unexpected exit {run} at RIP={self.vcpu.pc:#x}")

    def _io(self, io: kvm.IoExit) -> ExitStatus | None:
        for i in range(io.count):
            chunk = slice(i * io.size, (i + 1) * io.size)
            if io.is_out:
                value = int.from_bytes(io.data[chunk], "little")
                if io.port == DEBUG_EXIT_PORT:
                    return ExitStatus(min(value, EXIT_STATUS_MAX),
                                      f"isa-debug-exit {value:#x} (QEMU's status would be {((value << 1) | 1) & 0xFF})")
                if io.port == EXC_PORT:
                    raise self._guest_exception(value)
                if COM1_BASE <= io.port < COM1_BASE + 8:
                    self.uart.write(io.port - COM1_BASE, value & 0xFF)
            else:
                value = self.uart.read(io.port - COM1_BASE) if COM1_BASE <= io.port < COM1_BASE + 8 else 0xFFFFFFFF
                io.data[chunk] = (value & ((1 << (8 * io.size)) - 1)).to_bytes(io.size, "little")
        return None

    def _guest_exception(self, vector: int) -> GuestException:
        regs = self.vcpu.get_regs()
        frame = self.vm.read_phys(regs.rsp, 48)
        words = struct.unpack("<6Q", frame)
        error_code = None
        if vector in ERROR_CODE_VECTORS:
            error_code, words = words[0], words[1:]
        rip, cs, _rflags, rsp = words[0], words[1], words[2], words[3]
        return GuestException(vector, rip, error_code, self.vcpu.get_sregs().cr2, cs=cs, rsp=rsp)

    def run_until(self, stop: Callable[[kvm.KvmRun], bool] = lambda r: False) -> kvm.KvmRun | ExitStatus:
        """Run the VMM loop until the guest ends (ExitStatus), an exit `stop` accepts, or any
        DEBUG or INTR exit (returned as they are)."""
        while True:
            run = self.vcpu.run()
            while True:
                if stop(run) or run.exit_reason in (kvm.KVM_EXIT_DEBUG, kvm.KVM_EXIT_INTR):
                    return run
                try:
                    ended = self.handle_exit(run)
                except GuestException as e:
                    fault = self._fault_stop(e)
                    if stop(fault):
                        return fault
                    raise
                if ended is not None:
                    return ended
                if run.exit_reason not in (kvm.KVM_EXIT_IO, kvm.KVM_EXIT_MMIO) or not self.vcpu.stepping:
                    break
                # Single-stepping (the debugger, or the vCPU's fetch assist) across an instruction
                # that exited to us: finish it and report the step (on kvm_pvm KVM would otherwise
                # run on without a step exit). What comes back may be another exit to serve.
                run = self.vcpu.finish_step()

    def _fault_stop(self, e: GuestException) -> kvm.KvmRun:
        """A guest exception as a debugger sees it: the vCPU put back on the faulting
        instruction (RIP, RSP, RFLAGS from the exception frame; CR2 kept), reported as a
        KVM_EXIT_INTERNAL_ERROR whose payload names the signal (`FaultExit`)."""
        self.vcpu.complete_pending_io()  # finish the stub's OUT before rewriting RIP
        regs = self.vcpu.get_regs()
        frame = self.vm.read_phys(regs.rsp, 48)
        words = struct.unpack("<6Q", frame)
        if e.vector in ERROR_CODE_VECTORS:
            words = words[1:]
        regs.rip, regs.rflags, regs.rsp = words[0], words[2], words[3]
        self.vcpu.set_regs(regs)
        return kvm.KvmRun(kvm.KVM_EXIT_INTERNAL_ERROR,
                          internal=FaultExit(0, str(e), [e.vector], signal=VECTOR_SIGNALS.get(e.vector, 11),
                                             exception=e))

    def _spins_forever(self, rip: int) -> bool:
        try:
            return self.vm.read_phys(rip, 2) == JMP_SELF and not self.vcpu.get_regs().rflags & RFLAGS_IF
        except kvm.KvmError:
            return False

    # ------------------------------------------------------------------ device state
    def device_state(self) -> dict:
        return {"uart16550": self.uart.state()}

    def restore_device_state(self, state: dict) -> None:
        self.uart.restore(state["uart16550"])


def _tss_descriptor(base: int, limit: int) -> tuple[int, int]:
    """A 16-byte available 64-bit TSS descriptor (type 9), as two quadwords."""
    lo = (limit & 0xFFFF) | ((base & 0xFFFFFF) << 16) | (0x89 << 40) | (((limit >> 16) & 0xF) << 48) \
        | (((base >> 24) & 0xFF) << 56)
    return lo, base >> 32


def _idt_gate(offset: int, selector: int, ist: int = 0, dpl: int = 0) -> bytes:
    """A 16-byte 64-bit interrupt gate (type 0xE, present)."""
    attrs = 0x80 | (dpl << 5) | 0xE
    return struct.pack("<HHBBHII", offset & 0xFFFF, selector, ist & 7, attrs, (offset >> 16) & 0xFFFF,
                       offset >> 32, 0)

