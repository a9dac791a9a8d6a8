"""An emulated AArch64 VM and vCPU on Unicorn, behind the KVM guest-debug interface.

Theory of operation
-------------------
This module plays the part Linux KVM plays for QEMU: `Arm64Vm` is the VM file descriptor
(capabilities, memory slots, in-kernel devices) and `Arm64Vcpu` the vCPU one (run, ONE_REG,
KVM_SET_GUEST_DEBUG, KVM_SET_VCPU_EVENTS). Unicorn executes the guest; this module adds what
Unicorn leaves out:

1. Exception entry. Unicorn reports exceptions to UC_HOOK_INTR and does not enter the vector.
   The hook only records the exception and stops; between emu_starts the run loop sets
   ESR/ELR/SPSR/FAR_EL1, PSTATE and PC, as the Arm ARM's AArch64.TakeException does (and as
   QEMU's TCG does, so both boards print the same values). PSCI and semihosting are served
   there too. No hook writes PC and lets emulation go on: Unicorn 2.1.4 then keeps
   skip_sync_pc_on_exit set for the rest of the emu_start, and any later stop resumes from a
   stale PC, re-running a stretch of the guest (shared/REFERENCE.md §6; tests/test_runloop.py
   reproduces it).
2. The Arm debug architecture. Two register sets exist: the guest's own (DBGB/WCRn_EL1,
   MDSCR_EL1, reached by MRS/MSR, which we intercept, and by ONE_REG) and the debugger's
   (kvm_guest_debug_arch, with no ONE_REG id). Exactly one set is live: the debugger's while
   KVM_GUESTDBG_ENABLE|USE_HW is set, the guest's otherwise. Hits of the live set become either
   a KVM_EXIT_DEBUG (debugger) or an exception entered into the guest (guest).
3. Zero cost when not hit. An address breakpoint is a UC_HOOK_CODE bounded to its one address;
   a watchpoint removes read or write permission from just the pages it covers, so accesses to
   other pages run at full speed (a load watchpoint also puts a no-op UC_HOOK_MEM_READ on its
   pages: Unicorn checks read permission only on its slow path, which a cached TLB entry
   skips). Both are set up between emu_start calls only: hooks deleted
   inside a long emu_start keep costing until it returns.
4. Before-the-access watchpoints. A store to a write-protected page faults precisely in Unicorn
   (PC on the store, base register not written back, memory unchanged), so a hit is reported
   with the access not done. Accesses that miss are done by hand and the instruction goes on.
   Instructions that make several accesses (pairs, 128-bit SIMD) are first run once with their
   stores dropped, to learn every address they touch; then the state is rolled back or the
   stores are applied, so no half-done pair is ever visible.
5. MMIO. Devices the VMM registered are called inline (unicorn mmio_map). Any other access
   outside RAM/ROM stops the vCPU with KVM_EXIT_MMIO before the access; the next run()
   completes it with the data the VMM put in kvm_run.mmio.data, or enters a synchronous
   external abort if the VMM asked for one with set_vcpu_events(ext_dabt_pending=True).
   Writes to a KVM_MEM_READONLY slot (ROM) exit the same way and are then dropped.
6. Firmware services the hypervisor provides: PSCI over HVC/SMC and Arm semihosting (HLT
   #0xF000). A guest's power-off or exit is a KVM_EXIT_SYSTEM_EVENT carrying its exit status.
7. Page traps (a guestdbg extension, `set_watch_traps`): the debugger's exact-range watches
   past its hardware slots, and its guard on software-breakpoint words, ride on the same page
   protection as point 4 and always exit to the debugger.
8. The guest's MMU. Unicorn's memory hooks see physical addresses while watchpoints match
   virtual ones, so with SCTLR_EL1.M set the load/store at PC is decoded to recover the
   virtual address; protections are recomputed when SCTLR/TTBR/TCR are written. Unicorn's own
   translation faults carry no syndrome either: the same decoding plus a walk of the guest's
   tables (guestdbg.arm.mmu) gives the data/instruction abort ESR and FAR the guest sees.

9. The run loop and the instruction count (backends/_unicorn_runctl.c, in C because it runs
   for every translation block and every MRS/MSR). A block hook counts the instructions of
   every block entered; the slice ends at a block boundary when another thread asked for a
   stop or when the next block would pass the instruction limit the VMM set. A limit inside
   a block is reached by running that block once more under a countdown code hook bounded to
   it (while single-stepping the countdown hook is on every instruction instead). When a
   slice ends inside a block (an exception, a fault, a breakpoint, the countdown),
   _settle_icount takes back the instructions not reached. So `icount` is exact between
   runs, and CNTVCT_EL0/CNTPCT_EL0, answered in C from it (1 tick per 16 instructions), are
   deterministic. Unicorn's own emu_start(count=) is never used: it instruments every
   instruction (1.5-7x slower) and flushes every translation when dropped.
10. The system-register filter. Every MRS/MSR reaches the C hook first; a table says which
   ones go to Python (the guest's debug registers, ID_AA64DFR0_EL1, and, only while something
   is armed that depends on them, writes to CONTEXTIDR_EL1 and the translation registers).
   Everything else (SP_EL0, TPIDR_*, DAIF, CTR_EL0, ...) Unicorn executes itself.

Threads
-------
Everything here runs on the one thread that calls run() (the vCPU thread), with two
exceptions, both from any thread: kick() (KVM_RUN's immediate_exit plus a signal) and reading
public attributes. kick() sets `immediate_exit` and the C hook's stop word, nothing else; the
block hook then calls uc_emu_stop() on the vCPU thread at the next block boundary, where PC is
exact. No other thread ever calls into Unicorn, so an emu_stop() can never land in the middle
of a hook or just before an emu_start (where Unicorn would lose it), and the run loop's state
is never shared. Unicorn calls our hooks on the vCPU thread, inside emu_start; they touch only
the vCPU's own state and may call emu_stop() and reg_write() (never of PC, except right
before ending the emu_start) on the same thread.

Architectural choices where the Arm ARM leaves room are listed in guestdbg.arm.debugregs;
the ones made here: a write to CONTEXTIDR_EL1 takes effect for breakpoints at the next
instruction (no ISB needed), and WFI completes at once (no interrupt source is modelled).
"""

from __future__ import annotations

import ctypes
import errno
import struct
import sys
from dataclasses import dataclass, field
from typing import Callable

from unicorn import (
    UC_ARCH_ARM64, UC_HOOK_CODE, UC_HOOK_INTR, UC_HOOK_MEM_READ, UC_HOOK_MEM_READ_PROT,
    UC_HOOK_MEM_UNMAPPED, UC_HOOK_MEM_WRITE_PROT, UC_MEM_FETCH_UNMAPPED, UC_MEM_WRITE_PROT,
    UC_MEM_WRITE_UNMAPPED, UC_MODE_ARM, UC_PROT_ALL, UC_PROT_EXEC, UC_PROT_READ, UC_PROT_WRITE,
    Uc, UcError,
)
from unicorn import arm64_const as uca
from unicorn.unicorn_py3.unicorn import uclib

from guestdbg import kvm
from guestdbg.arm import debugregs as dr
from guestdbg.arm import kvm_regs as kr
from guestdbg.arm import mmu
from guestdbg.backends.unicorn_runctl import (
    ACTION_UNICORN, ACTION_VIRTUAL_COUNTER, ACTION_VMM, STOP_LIMIT, CpReg, RunControl,
)
from guestdbg.vmapi import WatchTrap
from guestdbg.kvm import (
    KVM_CAP_GUEST_DEBUG_HW_BPS, KVM_CAP_GUEST_DEBUG_HW_WPS, KVM_CAP_ONE_REG,
    KVM_CAP_SET_GUEST_DEBUG, KVM_CAP_SET_GUEST_DEBUG2, KVM_GUESTDBG_ENABLE,
    KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW, KVM_GUESTDBG_USE_SW_BP, KvmRun,
)

PAGE_SIZE = 4096
PAGE_MASK = ~(PAGE_SIZE - 1)

# The control bits arm64 KVM accepts (KVM_GUESTDBG_VALID_MASK); KVM_CAP_SET_GUEST_DEBUG2 reports it.
KVM_GUESTDBG_VALID_MASK = (
    KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP | KVM_GUESTDBG_USE_SW_BP | KVM_GUESTDBG_USE_HW
)

# QEMU's exception numbers, as Unicorn hands them to UC_HOOK_INTR.
EXCP_UDEF, EXCP_SWI, EXCP_PREFETCH_ABORT, EXCP_DATA_ABORT, EXCP_BKPT = 1, 2, 3, 4, 7

# PSTATE
PSTATE_EL_SHIFT = 2
PSTATE_SP = 1  # SPSel: 1 = SP_ELx
PSTATE_DAIF = 0xF << 6
PSTATE_MODE_EL1H = 0b0101

# PSCI (DEN0022) and SMCCC function ids and results.
PSCI_0_2_FN_PSCI_VERSION = 0x84000000
PSCI_0_2_FN_CPU_OFF = 0x84000002
PSCI_0_2_FN_CPU_ON = 0x84000003
PSCI_0_2_FN64_CPU_ON = 0xC4000003
PSCI_0_2_FN_SYSTEM_OFF = 0x84000008
PSCI_0_2_FN_SYSTEM_RESET = 0x84000009
PSCI_1_0_FN_PSCI_FEATURES = 0x8400000A
PSCI_VERSION_1_1 = 0x00010001
PSCI_RET_NOT_SUPPORTED = -1
PSCI_RET_INVALID_PARAMS = -2

# Arm semihosting (IHI 0016) operations.
SYS_WRITEC = 0x03
SYS_WRITE0 = 0x04
SYS_EXIT = 0x18
SYS_EXIT_EXTENDED = 0x20
ADP_Stopped_ApplicationExit = 0x20026  # noqa: N816 (semihosting spec name)
SEMIHOSTING_HLT = 0xD4400000 | (0xF000 << 5)

# System register keys (op0, op1, CRn, CRm, op2) the vCPU intercepts.
ID_AA64DFR0_EL1 = kr.SYSREG_ENCODINGS["ID_AA64DFR0_EL1"]
MDSCR_EL1 = kr.SYSREG_ENCODINGS["MDSCR_EL1"]
CONTEXTIDR_EL1 = kr.SYSREG_ENCODINGS["CONTEXTIDR_EL1"]
SPSR_EL1 = (3, 0, 4, 0, 0)
TPIDR_EL1 = kr.SYSREG_ENCODINGS["TPIDR_EL1"]
SCTLR_EL1 = kr.SYSREG_ENCODINGS["SCTLR_EL1"]
SCR_EL3, SCR_EL3_NS, SCR_EL3_RW = (3, 6, 1, 1, 0), 1 << 0, 1 << 10
HCR_EL2, HCR_EL2_RW = (3, 4, 1, 1, 0), 1 << 31
TRANSLATION_REGS = {SCTLR_EL1, kr.SYSREG_ENCODINGS["TTBR0_EL1"], kr.SYSREG_ENCODINGS["TTBR1_EL1"],
                    kr.SYSREG_ENCODINGS["TCR_EL1"]}
DEBUG_REG_OP2 = {4: "bvr", 5: "bcr", 6: "wvr", 7: "wcr"}
CNTPCT_EL0, CNTVCT_EL0 = (3, 3, 14, 0, 1), (3, 3, 14, 0, 2)
# Unicorn's Cortex-A57 implements DBGB*n_EL1 for n < 6 and DBGW*n_EL1 for n < 4 (its
# ID_AA64DFR0_EL1 says so); for higher n it has no register and raises UNDEF itself.
UNICORN_BRPS, UNICORN_WRPS = 6, 4

# The system-register hook, the run-slice limit and the instruction count live in C
# (backends/_unicorn_runctl.c). Slices end at block boundaries unless a limit falls inside a
# block; then that block is run once more under a countdown. "No limit":
NO_LIMIT = (1 << 64) - 1

_EXCEPTION_READS = (uca.UC_ARM64_REG_PSTATE, uca.UC_ARM64_REG_SP, uca.UC_ARM64_REG_SP_EL0, uca.UC_ARM64_REG_SP_EL1,
                    uca.UC_ARM64_REG_VBAR_EL1)
_EXCEPTION_WRITES = (uca.UC_ARM64_REG_ESR_EL1, uca.UC_ARM64_REG_ELR_EL1,
                     uca.UC_ARM64_REG_PSTATE, uca.UC_ARM64_REG_SP_EL0, uca.UC_ARM64_REG_SP_EL1, uca.UC_ARM64_REG_SP,
                     SPSR_EL1, uca.UC_ARM64_REG_PC)
_PSTATE_READ = (uca.UC_ARM64_REG_PSTATE,)
_SP_READS = (uca.UC_ARM64_REG_PSTATE, uca.UC_ARM64_REG_SP, uca.UC_ARM64_REG_SP_EL0, uca.UC_ARM64_REG_SP_EL1)
_TRANSLATION_READS = (SCTLR_EL1, kr.SYSREG_ENCODINGS["TCR_EL1"], kr.SYSREG_ENCODINGS["TTBR0_EL1"],
                      kr.SYSREG_ENCODINGS["TTBR1_EL1"], uca.UC_ARM64_REG_PSTATE)
_X_REGS = [getattr(uca, f"UC_ARM64_REG_X{n}") for n in range(31)]
_V_REGS = [getattr(uca, f"UC_ARM64_REG_V{n}") for n in range(32)]
_V_REGS_SET = frozenset(_V_REGS)


@dataclass(frozen=True)
class DebugConfig:
    """Per-VM debug hardware: breakpoint, watchpoint and context-aware breakpoint counts."""

    brps: int = 6
    wrps: int = 4
    ctx_cmps: int = 2

    def __post_init__(self):
        if not 2 <= self.brps <= 16:
            raise ValueError(f"brps must be 2..16, got {self.brps}")
        if not 2 <= self.wrps <= 16:
            raise ValueError(f"wrps must be 2..16, got {self.wrps}")
        if not 1 <= self.ctx_cmps <= self.brps:
            raise ValueError(f"ctx_cmps must be 1..brps ({self.brps}), got {self.ctx_cmps}")


@dataclass
class MmioDevice:
    """A device the VM serves without an exit (KVM's in-kernel devices, ioeventfd)."""

    base: int
    size: int
    device: object  # read(offset, size) -> int, write(offset, size, value)
    inline: bool = False  # mapped with Unicorn's mmio_map (not while a watchpoint covers it)


@dataclass
class MemorySlot:
    slot: int
    guest_phys_addr: int
    memory_size: int
    flags: int

    @property
    def readonly(self) -> bool:
        return bool(self.flags & kvm.KVM_MEM_READONLY)

    def contains(self, pa: int) -> bool:
        return self.guest_phys_addr <= pa < self.guest_phys_addr + self.memory_size


@dataclass
class GuestDebugRegs:
    """The guest's own debug registers (what MRS/MSR and ONE_REG see)."""

    bcr: list[int] = field(default_factory=lambda: [0] * 16)
    bvr: list[int] = field(default_factory=lambda: [0] * 16)
    wcr: list[int] = field(default_factory=lambda: [0] * 16)
    wvr: list[int] = field(default_factory=lambda: [0] * 16)
    mdscr: int = 0


class Arm64Vm:
    """The VM: capabilities, guest memory slots and the devices handled without an exit."""

    def __init__(self, debug: DebugConfig | None = None, console: Callable[[bytes], None] | None = None):
        self.debug_config = debug or DebugConfig()
        self.uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM, uca.UC_CPU_ARM64_A57)
        # Unicorn's default 1 GiB translation buffer fills only slowly (single steps translate
        # afresh), so a long debugging session's RSS would creep towards 1 GiB before the first
        # flush. 32 MiB bounds it and still holds far more code than a guest's working set.
        self.uc.ctl_set_tcg_buffer_size(TCG_BUFFER_SIZE)
        # No "until" address: guests may legitimately execute at 0 (ROM).
        self.uc.ctl_exits_enabled(True)
        self.uc.ctl_set_exits([])
        self.slots: dict[int, MemorySlot] = {}
        self.mmio_devices: list[MmioDevice] = []
        self.console = console or _stdout_console
        self._vcpu: Arm64Vcpu | None = None

    # KVM_CHECK_EXTENSION
    def check_extension(self, cap: int) -> int:
        answers = {
            KVM_CAP_SET_GUEST_DEBUG: 1,
            KVM_CAP_SET_GUEST_DEBUG2: KVM_GUESTDBG_VALID_MASK,
            KVM_CAP_GUEST_DEBUG_HW_BPS: self.debug_config.brps,
            KVM_CAP_GUEST_DEBUG_HW_WPS: self.debug_config.wrps,
            KVM_CAP_ONE_REG: 1,
        }
        return answers.get(cap, 0)

    # KVM_SET_USER_MEMORY_REGION: guest RAM/ROM. memory_size 0 deletes the slot, as in KVM.
    def set_user_memory_region(self, slot: int, guest_phys_addr: int, memory_size: int, flags: int = 0) -> None:
        if guest_phys_addr % PAGE_SIZE or memory_size % PAGE_SIZE:
            raise kvm.einval("memory region must be page aligned")
        if flags & ~(kvm.KVM_MEM_READONLY | kvm.KVM_MEM_LOG_DIRTY_PAGES):
            raise kvm.einval(f"unknown memory region flags {flags:#x}")
        old = self.slots.pop(slot, None)
        if old is not None:
            for base, size in _chunks(old.guest_phys_addr, old.memory_size):
                self.uc.mem_unmap(base, size)
        if memory_size == 0:
            return
        new = MemorySlot(slot, guest_phys_addr, memory_size, flags)
        for other in self.slots.values():
            if other.guest_phys_addr < guest_phys_addr + memory_size and guest_phys_addr < other.guest_phys_addr + other.memory_size:
                raise KvmErrorExists(f"memory slot overlaps slot {other.slot}")
        perms = UC_PROT_READ | UC_PROT_EXEC if new.readonly else UC_PROT_ALL
        # Many small Unicorn regions, not one: mem_protect on part of a region copies the whole
        # region, which made arming a watchpoint on 128 MiB of RAM cost ~180 ms per page.
        for base, size in _chunks(guest_phys_addr, memory_size):
            self.uc.mem_map(base, size, perms)
        self.slots[slot] = new

    def register_mmio_device(self, base: int, size: int, device) -> None:
        """Claim [base, base+size) for `device` (read(offset, size) -> int, write(offset, size, value)).

        Claimed accesses are handled inline, like an in-kernel device; unclaimed ones exit."""
        dev = MmioDevice(base, size, device)
        self.mmio_devices.append(dev)
        self.map_device(dev, True)

    def map_device(self, dev: MmioDevice, inline: bool) -> None:
        """Serve `dev` inline (Unicorn calls it mid-instruction), or unmap it so that its
        accesses fault before they happen: the vCPU then checks watchpoints first and does the
        access itself (see Arm64Vcpu._device_access). Watching device memory needs the latter."""
        if dev.inline == inline:
            return
        if inline:
            device = dev.device
            self.uc.mmio_map(
                dev.base, dev.size,
                lambda _uc, off, sz, _ud: device.read(off, sz), None,
                lambda _uc, off, sz, val, _ud: device.write(off, sz, val), None,
            )
        else:
            self.uc.mem_unmap(dev.base, dev.size)
        dev.inline = inline

    def device_at(self, pa: int) -> MmioDevice | None:
        for dev in self.mmio_devices:
            if dev.base <= pa < dev.base + dev.size:
                return dev
        return None

    def slot_for(self, pa: int) -> MemorySlot | None:
        for s in self.slots.values():
            if s.contains(pa):
                return s
        return None

    def read_phys(self, pa: int, size: int) -> bytes:
        """Read guest RAM/ROM. Anything outside a memory slot is an error, never a partial read."""
        self._check_phys_range(pa, size)
        return bytes(self.uc.mem_read(pa, size))

    def write_phys(self, pa: int, data: bytes) -> None:
        """Write guest RAM (or ROM: this is the loader's and debugger's path, not the guest's)."""
        self._check_phys_range(pa, len(data))
        self.uc.mem_write(pa, bytes(data))
        self._drop_translations(pa, len(data))

    def _drop_translations(self, pa: int, size: int) -> None:
        """Forget code translated from [pa, pa+size): Unicorn's mem_write does not (a debugger's
        BRK patch or its restore would otherwise be ignored for code that already ran).
        ctl_remove_cache takes a virtual address (Unicorn translates it through the guest's
        MMU), so it is exact only while the MMU is off; otherwise flush everything."""
        if size == 0:
            return
        if size <= 16 * PAGE_SIZE and not self.uc.cpr_read(*SCTLR_EL1) & 1:
            _remove_cache(self.uc, pa, size)
        else:
            self.uc.ctl_flush_tb()

    def _check_phys_range(self, pa: int, size: int) -> None:
        end = pa + size
        while pa < end:
            s = self.slot_for(pa)
            if s is None:
                raise kvm.KvmError(errno.EFAULT, f"guest physical address {pa:#x} is not RAM or ROM")
            pa = s.guest_phys_addr + s.memory_size

    def create_vcpu(self, vcpu_id: int = 0) -> Arm64Vcpu:
        if self._vcpu is not None:
            raise kvm.KvmError(errno.EEXIST, "this VM has one vCPU")
        self._vcpu = Arm64Vcpu(self, vcpu_id)
        return self._vcpu


MAP_CHUNK = 1 << 20
TCG_BUFFER_SIZE = 32 << 20


def _register_slots(keys: tuple):
    """(ids, buffer, pointers) for uc_reg_read/write_batch over `keys` (Unicorn register ids,
    or (op0, op1, CRn, CRm, op2) system-register encodings). Every value gets a 48-byte slot:
    wide enough for a V register and for Unicorn's uc_arm64_cp_reg {u32 crn, crm, op0, op1,
    op2; u64 val} (val at byte 24), whose key fields are filled in here."""
    n = len(keys)
    ids = (ctypes.c_int * n)(*(k if isinstance(k, int) else uca.UC_ARM64_REG_CP_REG for k in keys))
    buf = (ctypes.c_uint64 * (6 * n))()
    base = ctypes.addressof(buf)
    ptrs = (ctypes.c_void_p * n)(*(base + 48 * i for i in range(n)))
    words = ctypes.cast(buf, ctypes.POINTER(ctypes.c_uint32))
    for i, k in enumerate(keys):
        if not isinstance(k, int):
            op0, op1, crn, crm, op2 = k
            for j, field_value in enumerate((crn, crm, op0, op1, op2)):
                words[12 * i + j] = field_value
    return ids, buf, ptrs


def _remove_cache(uc: Uc, va: int, size: int) -> None:
    """Drop code translated from [va, va+size). Nothing was translated at an address whose
    range wraps past 2**64 (Unicorn rejects it), so there is nothing to drop there."""
    if va + size < 1 << 64:
        uc.ctl_remove_cache(va, va + size)


def _slot_perms(slot: MemorySlot) -> int:
    return UC_PROT_READ | UC_PROT_EXEC if slot.readonly else UC_PROT_ALL


def _runs(pages: dict[int, int]):
    """(base, size, perms) for each run of contiguous pages with equal permissions."""
    run = None
    for page in sorted(pages):
        perms = pages[page]
        if run and run[0] + run[1] == page and run[2] == perms:
            run[1] += PAGE_SIZE
            continue
        if run:
            yield tuple(run)
        run = [page, PAGE_SIZE, perms]
    if run:
        yield tuple(run)


def _chunks(base: int, size: int):
    """[base, base+size) as MAP_CHUNK-aligned pieces."""
    end = base + size
    while base < end:
        step = min(end, (base // MAP_CHUNK + 1) * MAP_CHUNK) - base
        yield base, step
        base += step


class KvmErrorExists(kvm.KvmError):
    def __init__(self, message: str):
        super().__init__(errno.EEXIST, message)


def _stdout_console(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


class Arm64Vcpu:
    """One AArch64 vCPU: run(), ONE_REG, KVM_SET_GUEST_DEBUG and KVM_SET_VCPU_EVENTS."""

    def __init__(self, vm: Arm64Vm, vcpu_id: int = 0):
        self.vm = vm
        self.uc = vm.uc
        self._uch = vm.uc._uch
        self._pc_buf = ctypes.c_uint64()
        self._pc_ref = ctypes.byref(self._pc_buf)
        self.vcpu_id = vcpu_id
        cfg = vm.debug_config
        self.brps, self.wrps, self.ctx_cmps = cfg.brps, cfg.wrps, cfg.ctx_cmps
        self.id_aa64dfr0 = dr.id_aa64dfr0_el1(cfg.brps, cfg.wrps, cfg.ctx_cmps)
        self.guest_debug_regs = GuestDebugRegs()
        self.guestdbg_control = 0
        self.guestdbg_arch = kr.kvm_guest_debug_arch()
        # Set from another thread to make run() return KVM_EXIT_INTR (kvm_run.immediate_exit).
        self.immediate_exit = False
        self._spsr_other = [0] * 4  # SPSR_abt/und/irq/fiq: AArch32 state, carried for migration only

        # Decoded live debug state, rebuilt by _rearm().
        self._bp_table: list[dr.Breakpoint | None] = []
        self._wp_table: list[dr.Watchpoint | None] = []
        self._bp_hooks: dict[int, int] = {}
        self._context_bps: list[dr.Breakpoint] = []
        self._context_hook: int | None = None
        self._protected: dict[int, int] = {}  # page -> perms we set (only pages differing from the slot's)
        self._traps: list[dr.Watchpoint] = []  # the debugger's page traps (WatchTrap)
        self._trap_specs: list[WatchTrap] = []
        self._armed_key = None  # _live_key() at the last _rearm
        self._read_hooks: dict[tuple[int, int], int] = {}  # (pa, size) run -> no-op UC_HOOK_MEM_READ forcing the checked path
        self._rearm_pending = False

        # Per-run scratch state, set by hooks. Hooks never write PC and never enter exceptions:
        # they record what happened here and stop, and the run loop acts between emu_starts.
        self._exit: KvmRun | None = None
        self._guest_exception: tuple[int, int | None, int] | None = None  # (esr, far, preferred return)
        self._pending_exception: tuple[int, int] | None = None  # (QEMU exception number, PC)
        self._stopped_at: int | None = None  # where a hook ended the slice, if PC will not say
        self._hook_error: BaseException | None = None
        self._counting_down = False  # _execute is running under the countdown hook
        self._step_hook: int | None = None  # the countdown hook on every instruction, while stepping
        self._steps_in_a_row = 0
        self._pending_mmio: kvm.MmioExit | None = None
        self._pending_mmio_va = 0
        self._device_access: MmioDevice | None = None  # a watched device's access to do
        self._ext_dabt_pending = False
        self._suppress_pc: int | None = None  # the instruction being completed already passed its checks
        self._multi_access_pc: int | None = None
        self._probe: list[tuple[bool, int, int, int, int]] | None = None  # (is_write, va, pa, size, value)
        self._recheck_context = False

        uc = self.uc
        uc.hook_add(UC_HOOK_INTR, self._on_exception)
        uc.hook_add(UC_HOOK_MEM_READ_PROT | UC_HOOK_MEM_WRITE_PROT, self._on_protected_access)
        uc.hook_add(UC_HOOK_MEM_UNMAPPED, self._on_unmapped_access)
        self._runctl = RunControl(uc, self._on_mrs, self._on_msr)
        self._clock_mode = "virtual"
        self._init_sysreg_filter()
        # Unicorn's Cortex-A57 implements EL2 and EL3 but resets them to AArch32, which makes
        # every EL1 ERET an illegal return. Configure them as firmware would before entering a
        # Non-secure AArch64 EL1 (QEMU's -kernel boot does the same).
        uc.cpr_write(*SCR_EL3, SCR_EL3_RW | SCR_EL3_NS)
        uc.cpr_write(*HCR_EL2, HCR_EL2_RW)
        self._write_pstate(PSTATE_DAIF | PSTATE_MODE_EL1H)

    # ------------------------------------------------------------------ KVM_SET_GUEST_DEBUG
    def set_guest_debug(self, control: int, arch: kr.kvm_guest_debug_arch | None = None) -> None:
        """KVM_SET_GUEST_DEBUG. Unknown control bits are EINVAL; without ENABLE, debug is off."""
        if control & ~KVM_GUESTDBG_VALID_MASK:
            raise kvm.einval(f"unsupported guest debug control bits {control & ~KVM_GUESTDBG_VALID_MASK:#x}")
        if control & KVM_GUESTDBG_ENABLE:
            self.guestdbg_control = control
            if control & KVM_GUESTDBG_USE_HW:
                arch = arch or kr.kvm_guest_debug_arch()
                kr.ctypes.memmove(kr.ctypes.addressof(self.guestdbg_arch), kr.ctypes.addressof(arch),
                                  kr.ctypes.sizeof(arch))
        else:
            self.guestdbg_control = 0
        # Stepping toggles SINGLESTEP on every stop: rebuild hooks and protections only when
        # the live breakpoint/watchpoint set itself changed.
        if self._live_key() != self._armed_key:
            self._rearm()

    def _live_key(self):
        owns = self.debugger_owns_hw
        return owns, bytes(self.guestdbg_arch) if owns else None

    def set_watch_traps(self, traps: list[WatchTrap]) -> None:
        """Replace the debugger's page traps (see WatchTrap). Not a KVM ioctl: on KVM the same
        effect comes from read-only memory slots."""
        traps = list(traps)
        if traps == self._trap_specs:
            return
        self._trap_specs = traps
        self._traps = [dr.Watchpoint(index=-1 - i, ranges=((t.start, t.end),), loads=t.loads, stores=t.stores,
                                     el0=True, el1=True, linked=False, lbn=0) for i, t in enumerate(traps)]
        self._reprotect()

    @property
    def debugger_owns_hw(self) -> bool:
        c = self.guestdbg_control
        return bool(c & KVM_GUESTDBG_ENABLE and c & KVM_GUESTDBG_USE_HW)

    # KVM_SET_VCPU_EVENTS (arm64): the only event modelled is an external data abort, which a
    # VMM injects for an MMIO access it cannot handle.
    def set_vcpu_events(self, *, ext_dabt_pending: bool = False) -> None:
        self._ext_dabt_pending = ext_dabt_pending

    # ------------------------------------------------------------------ run
    def run(self, *, icount_limit: int | None = None) -> KvmRun:
        """KVM_RUN: execute until something needs the VMM, and say what.

        With `icount_limit`, stop once the vCPU has retired exactly that many instructions (an
        EXIT_ICOUNT_LIMIT exit); this is how the VMM ends slices at points it chose."""
        state = self._runctl.state
        try:
            if self._pending_mmio is not None:
                done = self._finish_pending_mmio()
                if done is not None:
                    return done
            while True:
                # Clear the block hook's request before looking at immediate_exit: a kick()
                # landing in between is then seen here or at the next block, never lost.
                state.stop_request = 0
                if self.immediate_exit:
                    self.immediate_exit = False
                    return KvmRun(kvm.KVM_EXIT_INTR)
                if icount_limit is not None and state.icount >= icount_limit:
                    return KvmRun(kvm.EXIT_ICOUNT_LIMIT)
                if self._rearm_pending:
                    self._rearm()
                result = self._check_context_breakpoints() or self._run_slice(icount_limit)
                if result is not None:
                    return result
        except _FatalGuestState as e:
            return self._internal_error(str(e), self.pc, e.esr)

    def access_in_flight(self) -> bool:
        """Is an MMIO access waiting for the next run() to complete it (no snapshot now)?"""
        return self._pending_mmio is not None

    def kick(self, timeout: float = 1.0) -> None:
        """Make a running (or the next) run() return KVM_EXIT_INTR, as immediate_exit plus a
        signal does on KVM. Callable from any thread; it only sets two flags, which the vCPU
        thread reads at the next block boundary (Unicorn's emu_stop is never called from here:
        see "Threads" in the module docstring). `timeout` is kept for interface compatibility."""
        self.immediate_exit = True
        self._runctl.request_stop()

    # ------------------------------------------------------------------ instruction count
    @property
    def icount(self) -> int:
        """Instructions this vCPU has retired (exact between run() calls): the virtual clock's
        source. An instruction that takes an exception, or a debug or MMIO exit before it
        completes, has not retired."""
        return self._runctl.state.icount

    def set_icount(self, value: int) -> None:
        """Restore the instruction count (snapshots)."""
        self._runctl.state.icount = value

    def set_counter_source(self, mode: str) -> None:
        """"virtual": CNTVCT_EL0/CNTPCT_EL0 read icount / 16 (62.5 MHz at 1 instruction per ns),
        so the guest's time is deterministic and stops with the vCPU. "host": Unicorn's own
        counter, the host's CLOCK_MONOTONIC in 16 ns ticks."""
        if mode not in ("virtual", "host"):
            raise ValueError(f"unknown clock mode {mode!r}")
        self._clock_mode = mode
        self._update_sysreg_filter()

    def _run_slice(self, icount_limit: int | None) -> KvmRun | None:
        """Run until the limit, a hook's stop, or one instruction when single-stepping."""
        stepping = bool(self.guestdbg_control & KVM_GUESTDBG_SINGLESTEP)
        self._steps_in_a_row = self._steps_in_a_row + 1 if stepping else 0
        self._set_step_hook(self._steps_in_a_row >= 2)
        self._exit = None
        self._guest_exception = None
        start = self.icount
        limit = start + 1 if stepping else (NO_LIMIT if icount_limit is None else icount_limit)
        fault = self._execute(limit)
        if self._exit is not None:
            return self._exit
        if self._device_access is not None:
            return self._device_access_done()
        taken, result = self._take_pending_exception()
        if taken:
            return result or (self._softstep_exit() if stepping else None)
        if self._guest_exception is not None:
            esr, far, ret = self._guest_exception
            self._take_exception(esr, far=far, preferred_return=ret)
            return self._softstep_exit() if stepping else None
        if self._multi_access_pc is not None:
            result = self._run_multi_access_instruction()
            if result is not None or stepping:
                return result or self._softstep_exit()
            return None
        if fault is not None:
            return self._internal_error(f"emulation failed at PC={self.pc:#x}: {fault}")
        if stepping and self.icount > start:
            return self._softstep_exit()
        return None  # a limit, a kick, WFI, a context-ID change, a debug-register write: go round

    def _execute(self, limit: int) -> UcError | None:
        """emu_start from PC until icount reaches `limit` or a hook stops; then settle icount.

        The block hook (C) ends a slice before a block that would cross the limit. If the limit
        falls inside that block, the block is translated afresh under a countdown code hook
        bounded to it, run once to exactly the limit, and translated afresh again so the
        instrumented copy does not linger."""
        state = self._runctl.state
        state.stop_reason = 0
        if self._step_hook is not None:
            # Single-stepping: every translation calls the countdown already.
            state.limit = NO_LIMIT
            state.countdown_end = limit
            self._counting_down = True
            try:
                return self._emu(self.pc)
            finally:
                self._counting_down = False
        state.limit = limit
        fault = self._emu(self.pc)
        if (state.stop_reason != STOP_LIMIT or fault is not None or self._stop_pending()
                or state.icount >= limit):
            return fault
        start, insns = state.split_pc, state.split_insns
        hook = self._runctl.add_countdown(start, insns, limit)
        _remove_cache(self.uc, start, 4 * insns)
        state.split_armed = 1
        state.stop_reason = 0
        self._counting_down = True
        try:
            fault = self._emu(start)
        finally:
            self._counting_down = False
            state.split_armed = 0
            self._runctl.remove_hook(hook)
            _remove_cache(self.uc, start, 4 * insns)
        return fault

    def _set_step_hook(self, stepping: bool) -> None:
        """From the second single step in a row, keep the countdown hook on every instruction:
        one emu_start a step, no retranslation. A free run drops it and its instrumented
        translations (as Unicorn does when count= is dropped). A lone step (a step-over of a
        breakpoint between continues) takes the bounded path instead: no flush at all."""
        if stepping and self._step_hook is None:
            self._step_hook = self._runctl.add_countdown_everywhere()
        elif not stepping and self._step_hook is not None:
            self._runctl.remove_hook(self._step_hook)
            self._step_hook = None
            self.uc.ctl_flush_tb()

    def _at_limit(self, address: int) -> bool:
        """Is the instruction at `address`, whose code hooks are running, past the slice's
        end? Then breakpoints there are for the next slice: the countdown hook (before or
        after this one) ends this slice."""
        return self._counting_down and self._runctl.icount_at(address) >= self._runctl.state.countdown_end

    def _stop_pending(self) -> bool:
        return (self._exit is not None or self._pending_exception is not None or self._device_access is not None
                or self._guest_exception is not None or self._multi_access_pc is not None)

    def _emu(self, pc: int) -> UcError | None:
        """One emu_start, never with count= (which instruments every instruction and, once
        dropped, flushes every translation); then correct icount for a block left part way."""
        self._stopped_at = None
        try:
            self.uc.emu_start(pc, 0)
            fault = None
        except UcError as e:
            fault = e
        self._settle_icount()
        if self._hook_error is not None:
            error, self._hook_error = self._hook_error, None
            raise error
        return fault

    def _settle_icount(self) -> None:
        """The block hook counted the last block whole when it was entered; if the slice ended
        inside it (a fault, an exception, a breakpoint, the countdown), count only the
        instructions before the one where it stopped."""
        state = self._runctl.state
        if not state.in_block:
            return
        state.in_block = 0
        start, insns = state.block_start, state.block_insns
        pc = self._stopped_at if self._stopped_at is not None else self.pc
        done = (pc - start) >> 2 if start <= pc <= start + 4 * insns else insns
        state.icount -= insns - done

    def _take_pending_exception(self) -> tuple[bool, KvmRun | None]:
        """Act on the exception a hook recorded: (was there one, the exit it gives if any)."""
        if self._pending_exception is None:
            return False, None
        intno, pc = self._pending_exception
        self._pending_exception = None
        return True, self._dispatch_exception(intno, pc)

    def _retire(self, count: int = 1) -> None:
        """The VMM completed an instruction on the guest's behalf (HVC, SMC, semihosting)."""
        self._runctl.state.icount += count

    def _softstep_exit(self) -> KvmRun:
        # ISV=1, EX=0: the stepped instruction was not a load/store-exclusive.
        return self._debug_exit(dr.esr_softstep(lower_el=True))

    def _debug_exit(self, esr: int, far: int = 0) -> KvmRun:
        return KvmRun(kvm.KVM_EXIT_DEBUG, flags=kvm.KVM_DEBUG_ARCH_HSR_HIGH_VALID,
                      debug=kvm.DebugExitArm64(hsr=esr & 0xFFFFFFFF, hsr_high=esr >> 32, far=far))

    def _internal_error(self, message: str, *data: int) -> KvmRun:
        return KvmRun(kvm.KVM_EXIT_INTERNAL_ERROR,
                      internal=kvm.InternalErrorExit(kvm.KVM_INTERNAL_ERROR_EMULATION, message, list(data)))

    def _stop(self, run: KvmRun) -> None:
        self._exit = run
        self.uc.emu_stop()

    # ------------------------------------------------------------------ registers
    @property
    def pc(self) -> int:
        # Straight to the C API with a buffer made once: the run loop reads PC around every
        # slice, and the binding's reg_read costs several microseconds.
        uclib.uc_reg_read(self._uch, uca.UC_ARM64_REG_PC, self._pc_ref)
        return self._pc_buf.value

    def _pstate(self) -> int:
        return self._batch_reader(_PSTATE_READ)()[0]

    def current_el(self) -> int:
        return (self._pstate() >> PSTATE_EL_SHIFT) & 3

    @staticmethod
    def _uses_sp_el0(pstate: int) -> bool:
        return ((pstate >> PSTATE_EL_SHIFT) & 3) == 0 or not pstate & PSTATE_SP

    def _get_sp(self, el: int) -> int:
        """SP_EL0 or SP_EL1, wherever Unicorn keeps it (live in SP, or banked)."""
        pstate, sp, sp_el0, sp_el1 = self._batch_reader(_SP_READS)()
        if self._uses_sp_el0(pstate) == (el == 0):
            return sp
        return sp_el0 if el == 0 else sp_el1

    def _set_sp(self, el: int, value: int) -> None:
        uc, pstate = self.uc, self._pstate()
        uc.reg_write(uca.UC_ARM64_REG_SP_EL0 if el == 0 else uca.UC_ARM64_REG_SP_EL1, value)
        if self._uses_sp_el0(pstate) == (el == 0):
            uc.reg_write(uca.UC_ARM64_REG_SP, value)

    def _write_pstate(self, value: int) -> None:
        """Write PSTATE keeping SP_EL0/SP_EL1 where the new mode expects them."""
        sp0, sp1 = self._get_sp(0), self._get_sp(1)
        self.uc.reg_write(uca.UC_ARM64_REG_PSTATE, value & 0xFFFFFFFF)
        # Unicorn rebuilds its cached EL/translation flags only on a system-register write.
        self.uc.cpr_write(*TPIDR_EL1, self.uc.cpr_read(*TPIDR_EL1))
        self._set_sp(0, sp0)
        self._set_sp(1, sp1)

    def get_one_reg(self, reg_id: int) -> int:
        """KVM_GET_ONE_REG. Unknown ids are ENOENT."""
        return self._one_reg(reg_id).get()

    def set_one_reg(self, reg_id: int, value: int) -> None:
        """KVM_SET_ONE_REG. Unknown ids are ENOENT; values that do not fit, or writes to
        read-only identification registers that change them, are EINVAL."""
        reg = self._one_reg(reg_id)
        size = kr.reg_size_bytes(reg_id)
        if not 0 <= value < 1 << (8 * size):
            raise kvm.einval(f"value {value:#x} does not fit register {reg_id:#x} ({size} bytes)")
        if reg.set is None:
            if value != reg.get():
                raise kvm.einval(f"register {reg_id:#x} is read-only")
            return
        reg.set(value)

    def get_one_regs(self, reg_ids: list[int]) -> list[int]:
        """Several KVM_GET_ONE_REGs at once (what a `g` packet needs): plain registers are read
        in one Unicorn batch call instead of one binding call each."""
        plans = self.__dict__.setdefault("_batch_plans", {})
        key = tuple(reg_ids)
        plan = plans.get(key)
        if plan is None:
            regs = [self._one_reg(r) for r in reg_ids]
            keys = tuple(r.batch_key for r in regs if r.batch_key is not None)
            others = [(i, r.get) for i, r in enumerate(regs) if r.batch_key is None]
            batched = [i for i, r in enumerate(regs) if r.batch_key is not None]
            plan = plans[key] = (self._batch_reader(keys) if keys else (lambda: []), batched, others)
        reader, batched, others = plan
        out = [0] * len(reg_ids)
        for i, value in zip(batched, reader()):
            out[i] = value
        for i, get in others:
            out[i] = get()
        return out

    def _batch_reader(self, keys: tuple) -> Callable[[], list[int]]:
        """A reader for these Unicorn registers (ids, or system-register encodings) in one
        uc_reg_read_batch call into buffers made once: the binding's own reg_read builds ctypes
        objects per register per call, which made a `g` packet cost ~90 binding calls."""
        cache = self.__dict__.setdefault("_batch_readers", {})
        reader = cache.get(keys)
        if reader is None:
            n = len(keys)
            ids, buf, ptrs = _register_slots(keys)
            template = _register_slots(keys)[1]  # the keys, values zero: reset before each read
            # One struct unpack pulls every value out of the 48-byte slots (a Python loop over
            # ~80 registers cost more than the batch read itself): a system register's value is
            # at byte 24, a V register is two u64 halves, anything else one u64.
            layout = "".join("24xQ16x" if not isinstance(k, int) else ("QQ32x" if k in _V_REGS_SET else "Q40x")
                             for k in keys)
            unpack = struct.Struct("<" + layout).unpack_from
            wide = frozenset(i for i, k in enumerate(keys) if isinstance(k, int) and k in _V_REGS_SET)
            size = ctypes.sizeof(buf)
            uch = self.uc._uch

            def reader() -> list[int]:
                ctypes.memmove(buf, template, size)
                status = uclib.uc_reg_read_batch(uch, ids, ptrs, n)
                if status:
                    raise UcError(status)
                flat = unpack(buf)
                if not wide:
                    return list(flat)
                out, j = [], 0
                for i in range(n):
                    if i in wide:
                        out.append(flat[j] | (flat[j + 1] << 64))
                        j += 2
                    else:
                        out.append(flat[j])
                        j += 1
                return out

            cache[keys] = reader
        return reader

    def _batch_writer(self, keys: tuple) -> Callable[[tuple[int, ...]], None]:
        """A writer for these Unicorn registers (ids, or system-register encodings) in one
        uc_reg_write_batch call (the binding's reg_write costs ~6 us a register)."""
        cache = self.__dict__.setdefault("_batch_writers", {})
        writer = cache.get(keys)
        if writer is None:
            n = len(keys)
            ids, buf, ptrs = _register_slots(keys)
            slots = [6 * i if isinstance(k, int) else 6 * i + 3 for i, k in enumerate(keys)]
            uch = self.uc._uch

            def writer(values: tuple[int, ...]) -> None:
                for slot, value in zip(slots, values):
                    buf[slot] = value
                status = uclib.uc_reg_write_batch(uch, ids, ptrs, n)
                if status:
                    raise UcError(status)

            cache[keys] = writer
        return writer

    def get_reg_list(self) -> list[int]:
        """KVM_GET_REG_LIST: every register migration must carry (never the debugger's)."""
        return list(self._one_regs)

    def _one_reg(self, reg_id: int) -> _OneReg:
        try:
            return self._one_regs[reg_id]
        except KeyError:
            raise kvm.enoent(f"no register with ONE_REG id {reg_id:#x}") from None

    @property
    def _one_regs(self) -> dict[int, _OneReg]:
        regs = getattr(self, "_one_regs_cache", None)
        if regs is None:
            regs = self._one_regs_cache = self._build_one_regs()
        return regs

    def _build_one_regs(self) -> dict[int, _OneReg]:
        uc = self.uc
        regs: dict[int, _OneReg] = {}

        def plain(uc_reg):
            return _OneReg(lambda: uc.reg_read(uc_reg), lambda v: uc.reg_write(uc_reg, v), uc_reg)

        def cp(enc):
            return _OneReg(lambda: uc.cpr_read(*enc), lambda v: uc.cpr_write(*enc, v), cp_enc=enc)

        for n in range(31):
            regs[kr.KVM_REG_ARM_CORE_X(n)] = plain(_X_REGS[n])
        regs[kr.KVM_REG_ARM_CORE_SP] = _OneReg(lambda: self._get_sp(0), lambda v: self._set_sp(0, v))
        regs[kr.KVM_REG_ARM_CORE_PC] = plain(uca.UC_ARM64_REG_PC)
        regs[kr.KVM_REG_ARM_CORE_PSTATE] = _OneReg(self._pstate, self._write_pstate)
        regs[kr.KVM_REG_ARM_CORE_SP_EL1] = _OneReg(lambda: self._get_sp(1), lambda v: self._set_sp(1, v))
        regs[kr.KVM_REG_ARM_CORE_ELR_EL1] = plain(uca.UC_ARM64_REG_ELR_EL1)
        regs[kr.KVM_REG_ARM_CORE_SPSR(kr.KVM_SPSR_EL1)] = cp(SPSR_EL1)
        for n in range(1, 5):
            regs[kr.KVM_REG_ARM_CORE_SPSR(n)] = _OneReg(
                lambda n=n: self._spsr_other[n - 1], lambda v, n=n: self._spsr_other.__setitem__(n - 1, v))
        for n in range(32):
            regs[kr.KVM_REG_ARM_CORE_V(n)] = plain(_V_REGS[n])
        regs[kr.KVM_REG_ARM_CORE_FPSR] = plain(uca.UC_ARM64_REG_FPSR)
        regs[kr.KVM_REG_ARM_CORE_FPCR] = plain(uca.UC_ARM64_REG_FPCR)

        for name, enc in kr.SYSREG_ENCODINGS.items():
            reg_id = kr.ARM64_SYS_REG(*enc)
            if name == "ID_AA64DFR0_EL1":
                regs[reg_id] = _OneReg(lambda: self.id_aa64dfr0, None)
            elif name in ("MIDR_EL1", "MPIDR_EL1"):
                regs[reg_id] = _OneReg(lambda enc=enc: uc.cpr_read(*enc), None, cp_enc=enc)
            elif name == "MDSCR_EL1":
                regs[reg_id] = _OneReg(lambda: self.guest_debug_regs.mdscr,
                                       lambda v: self._write_guest_debug_reg("mdscr", 0, v))
            elif name == "CONTEXTIDR_EL1":
                regs[reg_id] = _OneReg(lambda enc=enc: uc.cpr_read(*enc), self._set_contextidr, cp_enc=enc)
            else:
                regs[reg_id] = cp(enc)
        g = self.guest_debug_regs
        for kind, count, enc_of in (("bvr", self.brps, kr.DBGBVRn_EL1), ("bcr", self.brps, kr.DBGBCRn_EL1),
                                    ("wvr", self.wrps, kr.DBGWVRn_EL1), ("wcr", self.wrps, kr.DBGWCRn_EL1)):
            for n in range(count):
                regs[kr.ARM64_SYS_REG(*enc_of(n))] = _OneReg(
                    lambda kind=kind, n=n: getattr(g, kind)[n],
                    lambda v, kind=kind, n=n: self._write_guest_debug_reg(kind, n, v))
        return regs

    def _set_contextidr(self, value: int) -> None:
        self.uc.cpr_write(*CONTEXTIDR_EL1, value)

    def _contextidr(self) -> int:
        return self.uc.cpr_read(*CONTEXTIDR_EL1) & 0xFFFFFFFF

    def _write_guest_debug_reg(self, kind: str, n: int, value: int) -> None:
        g = self.guest_debug_regs
        if kind == "mdscr":
            g.mdscr = value
        else:
            getattr(g, kind)[n] = value
        if not self.debugger_owns_hw:
            self._rearm_pending = True

    # ------------------------------------------------------------------ debug state
    def _live_debug_regs(self) -> tuple[str, list[int], list[int], list[int], list[int]] | None:
        if self.debugger_owns_hw:
            a = self.guestdbg_arch
            return "debugger", list(a.dbg_bcr), list(a.dbg_bvr), list(a.dbg_wcr), list(a.dbg_wvr)
        g = self.guest_debug_regs
        if dr.MDSCR_EL1.MDE.extract(g.mdscr):
            return "guest", g.bcr, g.bvr, g.wcr, g.wvr
        return None

    def _rearm(self) -> None:
        """Rebuild hooks and page protections from whichever debug register set is live."""
        self._rearm_pending = False
        self._armed_key = self._live_key()
        live = self._live_debug_regs()
        self._owner = live[0] if live else None
        if live:
            _, bcr, bvr, wcr, wvr = live
            self._bp_table = [dr.decode_breakpoint(i, bcr[i], bvr[i], brps=self.brps, ctx_cmps=self.ctx_cmps)
                              for i in range(self.brps)]
            self._wp_table = [dr.decode_watchpoint(i, wcr[i], wvr[i]) for i in range(self.wrps)]
        else:
            self._bp_table, self._wp_table = [], []
        address_kinds = (dr.BT_UNLINKED_ADDRESS, dr.BT_LINKED_ADDRESS)
        wanted = {bp.address for bp in self._bp_table if bp and bp.bt in address_kinds}
        for addr in set(self._bp_hooks) - wanted:
            self.uc.hook_del(self._bp_hooks.pop(addr))
            _remove_cache(self.uc, addr, 4)
        for addr in wanted - set(self._bp_hooks):
            self._bp_hooks[addr] = self.uc.hook_add(UC_HOOK_CODE, self._on_breakpoint_address, None, addr, addr)
            # Code translated before the hook existed would never call it.
            _remove_cache(self.uc, addr, 4)
        self._context_bps = [bp for bp in self._bp_table if bp and bp.bt == dr.BT_UNLINKED_CONTEXT]
        self._reprotect()

    def _reprotect(self) -> None:
        """Take read/write permission away from exactly the pages live watchpoints cover, and
        take the devices they cover off Unicorn's inline path."""
        want: dict[int, int] = {}
        watched_devices: set[int] = set()
        for wp in self._wp_table + self._traps:
            if wp is None:
                continue
            for va_page in wp.pages(PAGE_SIZE):
                pa_page = self._translate_page(va_page)
                if pa_page is None:
                    continue
                watched_devices.update(id(dev) for dev in self.vm.mmio_devices
                                       if dev.base < pa_page + PAGE_SIZE and pa_page < dev.base + dev.size)
                slot = self.vm.slot_for(pa_page)
                if slot is None:
                    continue
                perms = want.get(pa_page, _slot_perms(slot))
                if wp.loads:
                    perms &= ~UC_PROT_READ
                if wp.stores:
                    perms &= ~UC_PROT_WRITE
                want[pa_page] = perms
        for dev in self.vm.mmio_devices:
            self.vm.map_device(dev, id(dev) not in watched_devices)
        changes = {page: _slot_perms(self.vm.slot_for(page)) for page in set(self._protected) - set(want)
                   if self.vm.slot_for(page) is not None}
        changes.update({page: perms for page, perms in want.items() if self._protected.get(page) != perms})
        for base, size, perms in _runs(changes):
            self.uc.mem_protect(base, size, perms)
        self._protected = want
        # Unicorn checks a page's read permission only on its slow path: once any access (an
        # allowed read, a store, a fetch) has filled the TLB entry, loads there run unchecked. A
        # bounded UC_HOOK_MEM_READ on the page keeps every load on the checked path. Unicorn
        # checks hook bounds against the physical address, so bound them by physical pages.
        read_runs = {(base, size) for base, size, perms in _runs(want) if not perms & UC_PROT_READ}
        for run in set(self._read_hooks) - read_runs:
            self.uc.hook_del(self._read_hooks.pop(run))
        added = read_runs - set(self._read_hooks)
        for base, size in added:
            self._read_hooks[(base, size)] = self.uc.hook_add(
                UC_HOOK_MEM_READ, _ignore_access, None, base, base + size - 1)
        if added:
            self.uc.ctl_flush_tb()  # code translated before a hook exists would not call it
        self._update_sysreg_filter()

    def _translate_page(self, va_page: int) -> int | None:
        try:
            return self.translate(va_page, "read") & PAGE_MASK
        except Exception:  # unmapped for now: nothing to protect
            return None

    def translate(self, va: int, access: str = "read") -> int:
        """Guest virtual to physical, through the guest's stage-1 tables when its MMU is on."""
        sctlr, tcr, ttbr0, ttbr1, pstate = self._batch_reader(_TRANSLATION_READS)()
        if not sctlr & 1:
            return va
        t = mmu.translate(
            va, sctlr_el1=sctlr, tcr_el1=tcr, ttbr0_el1=ttbr0, ttbr1_el1=ttbr1,
            read_u64=lambda pa: int.from_bytes(self.vm.read_phys(pa, 8), "little"),
            access=access, el=(pstate >> PSTATE_EL_SHIFT) & 3)
        return t.pa

    def read_virt(self, va: int, size: int) -> bytes:
        out = bytearray()
        while size:
            chunk = min(size, PAGE_SIZE - (va % PAGE_SIZE))
            out += self.vm.read_phys(self.translate(va), chunk)
            va, size = va + chunk, size - chunk
        return bytes(out)

    def _debug_events_enabled(self, el: int) -> bool:
        """May a guest-owned breakpoint or watchpoint generate an exception right now?"""
        if self._owner == "debugger":
            return True  # routed to the hypervisor: the guest's masks do not apply
        mdscr = self.guest_debug_regs.mdscr
        if not dr.MDSCR_EL1.MDE.extract(mdscr):
            return False
        if el == 0:
            return True
        return bool(dr.MDSCR_EL1.KDE.extract(mdscr)) and not self._pstate() & dr.PSTATE_D

    def _debug_event(self, esr_for_lower_el: Callable[[bool], int], *, far: int | None, at_pc: int,
                     owner: str | None = None) -> None:
        """A live breakpoint or watchpoint fired before the instruction at `at_pc` completed."""
        el = self.current_el()
        if (owner or self._owner) == "debugger":
            self._stop(self._debug_exit(esr_for_lower_el(True), far or 0))
        else:
            self._guest_exception = (esr_for_lower_el(el == 0), far, at_pc)
            self.uc.emu_stop()

    # ------------------------------------------------------------------ breakpoints
    def _on_breakpoint_address(self, uc, address, size, _user):
        if address == self._suppress_pc or self._at_limit(address):
            return
        el = self.current_el()
        if not self._debug_events_enabled(el):
            return
        ctx = self._contextidr() if any(bp and bp.bt == dr.BT_LINKED_ADDRESS for bp in self._bp_table) else 0
        for bp in self._bp_table:
            if bp and bp.bt in (dr.BT_UNLINKED_ADDRESS, dr.BT_LINKED_ADDRESS) and \
                    dr.breakpoint_matches(self._bp_table, bp, pc=address, el=el, contextidr=ctx):
                self._debug_event(dr.esr_breakpoint, far=None, at_pc=address)
                return

    def _check_context_breakpoints(self) -> KvmRun | None:
        """Unlinked context-ID breakpoints match every instruction while CONTEXTIDR_EL1 matches."""
        if not self._context_bps:
            self._set_context_hook(False)
            return None
        ctx, el, pc = self._contextidr(), self.current_el(), self.pc
        live = [bp for bp in self._context_bps if bp.context_id == ctx]
        if any(dr.breakpoint_matches(self._bp_table, bp, pc=pc, el=el, contextidr=ctx) for bp in live) \
                and self._debug_events_enabled(el):
            if self._owner == "debugger":
                return self._debug_exit(dr.esr_breakpoint(True))
            self._take_exception(dr.esr_breakpoint(el == 0), far=None, preferred_return=pc)
            return None
        # Matching context but the wrong EL for now: watch every instruction until that changes.
        self._set_context_hook(bool(live))
        return None

    def _set_context_hook(self, on: bool) -> None:
        if on and self._context_hook is None:
            self._context_hook = self.uc.hook_add(UC_HOOK_CODE, self._on_context_step, None, 1, 0)
            self.uc.ctl_flush_tb()
        elif not on and self._context_hook is not None:
            self.uc.hook_del(self._context_hook)
            self._context_hook = None
            self.uc.ctl_flush_tb()

    def _on_context_step(self, uc, address, size, _user):
        if self._at_limit(address):
            return
        ctx, el = self._contextidr(), self.current_el()
        if any(dr.breakpoint_matches(self._bp_table, bp, pc=address, el=el, contextidr=ctx)
               for bp in self._context_bps):
            uc.emu_stop()  # run() re-checks before this instruction and takes the event

    # ------------------------------------------------------------------ watchpoints
    def _watch_hit(self, is_write: bool, va: int, size: int) -> str | None:
        """Who an access hits: "debugger" (a page trap, or its hardware watchpoints), "guest"
        (the guest's own watchpoints), or None. Honours LSC, PAC and links."""
        for trap in self._traps:
            if (trap.stores if is_write else trap.loads) and trap.overlaps(va, size):
                return "debugger"
        if not self._wp_table:
            return None
        el = self.current_el()
        if not self._debug_events_enabled(el):
            return None
        ctx = self._contextidr()
        for wp in self._wp_table:
            if wp and dr.watchpoint_matches(self._bp_table, wp, addr=va, size=size, is_write=is_write,
                                            el=el, contextidr=ctx):
                return self._owner
        return None

    def _va_of_access(self, addr: int) -> int:
        """Unicorn's memory hooks get the physical address; watchpoints match virtual ones.
        With the MMU on, find the access's virtual address from the load/store at PC."""
        if not self.uc.cpr_read(*SCTLR_EL1) & 1:
            return addr
        decoded = _decode_access(self._insn_at(self.pc), self.pc, self._read_gpr)
        if decoded is None:
            return addr
        va, size, _ = decoded
        for va_page in {va & PAGE_MASK, (va + size - 1) & PAGE_MASK}:
            if self._translate_page(va_page) == addr & PAGE_MASK:
                return va_page | (addr & (PAGE_SIZE - 1))
        return addr

    def _on_protected_access(self, uc, access, pa, size, value, _user) -> bool:
        is_write = access == UC_MEM_WRITE_PROT
        va = self._va_of_access(pa)
        if self._probe is not None:  # learning a multi-access instruction's accesses
            self._probe.append((is_write, va, pa, size, value))
            return True  # reads go ahead; stores to a protected page are dropped by Unicorn
        pc = self.pc
        slot = self.vm.slot_for(pa)
        if pc != self._suppress_pc:
            if _is_multi_access(self._insn_at(pc)):
                self._multi_access_pc = pc
                return False
            owner = self._watch_hit(is_write, va, size)
            if owner is not None:
                self._debug_event(lambda lower: dr.esr_watchpoint(lower, wnr=is_write), far=va, at_pc=pc,
                                  owner=owner)
                return False
        if is_write and slot is not None and slot.readonly:
            if pc == self._suppress_pc:
                return True  # completing a ROM write the VMM has seen: drop it
            self._mmio_exit(va, pa, size, True, value)
            return False
        if is_write:
            self._store(va, pa, size, value)
        return True

    def _store(self, va: int, pa: int, size: int, value: int) -> None:
        """Do a store Unicorn was not allowed to do, as the guest would have (code included)."""
        self.uc.mem_write(pa, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))
        _remove_cache(self.uc, va, size)  # the guest may be rewriting code

    def _run_multi_access_instruction(self) -> KvmRun | None:
        """Run a pair/SIMD access on a watched page once with its stores held back, then either
        roll back (a watchpoint hit: nothing happened) or apply the stores (no hit)."""
        pc = self._multi_access_pc
        self._multi_access_pc = None
        saved, saved_icount = self.uc.context_save(), self.icount
        self._probe = []
        self._suppress_pc = pc
        try:
            fault = self._execute(saved_icount + 1)
        finally:
            accesses, self._probe, self._suppress_pc = self._probe, None, None
        for is_write, va, _pa, size, _ in accesses:
            owner = self._watch_hit(is_write, va, size)
            if owner is not None:
                self.uc.context_restore(saved)
                self.set_icount(saved_icount)
                self._pending_exception = None
                self._exit = None
                self._debug_event(lambda lower: dr.esr_watchpoint(lower, wnr=is_write), far=va, at_pc=pc,
                                  owner=owner)
                if self._exit is not None:
                    return self._exit
                esr, far, ret = self._guest_exception
                self._take_exception(esr, far=far, preferred_return=ret)
                return None
        for is_write, va, pa, size, value in accesses:
            if is_write:
                slot = self.vm.slot_for(pa)
                if slot is not None and not slot.readonly:
                    self._store(va, pa, size, value)
        if self._exit is not None:
            return self._exit
        taken, result = self._take_pending_exception()
        if taken:
            return result
        if fault is not None:
            return self._internal_error(f"emulation failed at PC={pc:#x}: {fault}")
        return None

    # ------------------------------------------------------------------ MMIO
    def _on_unmapped_access(self, uc, access, pa, size, value, _user) -> bool:
        if access == UC_MEM_FETCH_UNMAPPED:
            # Nothing is there to execute: a synchronous external abort on the fetch, taken by
            # the guest as QEMU's TCG does (an instruction abort, FSC 0x10, FAR = the address).
            # A guest with no handler then faults at its vector, which run() reports.
            pc = self.pc
            el = self.current_el()
            self._guest_exception = (dr.esr_instruction_abort(el == 0, dr.DFSC_EXTERNAL_ABORT), pc, pc)
            self._stopped_at = pc
            return False
        pc = self.pc
        if pc == self._suppress_pc and self._pending_mmio is not None:
            return False
        va, is_write = self._va_of_access(pa), access == UC_MEM_WRITE_UNMAPPED
        dev = self.vm.device_at(pa)
        if dev is not None:  # a device taken off the inline path because a watchpoint covers it
            owner = self._watch_hit(is_write, va, size) if pc != self._suppress_pc else None
            if owner is not None:
                self._debug_event(lambda lower: dr.esr_watchpoint(lower, wnr=is_write), far=va, at_pc=pc,
                                  owner=owner)
                return False
            self._mmio_exit(va, pa, size, is_write, value, to_vmm=False)
            self._device_access = dev
            return False
        self._mmio_exit(va, pa, size, is_write, value)
        return False

    def _mmio_exit(self, va: int, pa: int, size: int, is_write: bool, value: int, to_vmm: bool = True) -> None:
        data = bytearray(8)
        if is_write:
            data[:size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        self._pending_mmio = kvm.MmioExit(phys_addr=pa, len=size, is_write=is_write, data=data)
        self._pending_mmio_va = va
        if to_vmm:
            self._stop(KvmRun(kvm.KVM_EXIT_MMIO, mmio=self._pending_mmio))

    def _device_access_done(self) -> KvmRun | None:
        """Do the access to a watched device that faulted (no watchpoint hit), then complete
        its instruction as for an MMIO exit the VMM served."""
        dev, self._device_access = self._device_access, None
        mmio = self._pending_mmio
        offset = mmio.phys_addr - dev.base
        if mmio.is_write:
            dev.device.write(offset, mmio.len, int.from_bytes(mmio.data[:mmio.len], "little"))
        else:
            mmio.data[:mmio.len] = dev.device.read(offset, mmio.len).to_bytes(mmio.len, "little")
        return self._finish_pending_mmio()

    def _finish_pending_mmio(self) -> KvmRun | None:
        """Complete (or abort, if the VMM asked) the access that caused the last MMIO exit."""
        mmio, va = self._pending_mmio, self._pending_mmio_va
        pc = self.pc
        if self._ext_dabt_pending:
            self._pending_mmio = None
            self._ext_dabt_pending = False
            el = self.current_el()
            esr = dr.esr_data_abort(el == 0, mmio.is_write, dr.DFSC_EXTERNAL_ABORT)
            self._take_exception(esr, far=va, preferred_return=pc)
            return None
        slot = self.vm.slot_for(mmio.phys_addr)
        self._suppress_pc = pc
        mapped = None
        if slot is None:  # map a stand-in device for one instruction
            first = mmio.phys_addr & PAGE_MASK
            last = (mmio.phys_addr + mmio.len - 1) & PAGE_MASK
            mapped = (first, last + PAGE_SIZE - first)
            value = int.from_bytes(mmio.data[:mmio.len], "little")

            def read(_uc, offset, size, _ud):
                shift = 8 * (first + offset - mmio.phys_addr)
                return (value >> shift) & ((1 << (8 * size)) - 1) if shift >= 0 else 0

            self.uc.mmio_map(first, mapped[1], read, None, lambda *a: None, None)
        stepping = bool(self.guestdbg_control & KVM_GUESTDBG_SINGLESTEP)
        try:
            self._exit = None
            self._guest_exception = None
            fault = self._execute(self.icount + 1)
        finally:
            self._suppress_pc = None
            self._pending_mmio = None
            if mapped:
                self.uc.mem_unmap(*mapped)
        if self._exit is not None:
            return self._exit
        taken, result = self._take_pending_exception()
        if taken:
            return result or (self._softstep_exit() if stepping else None)
        if fault is not None:
            return self._internal_error(f"completing MMIO access at PC={pc:#x} failed: {fault}")
        return self._softstep_exit() if stepping else None

    # ------------------------------------------------------------------ system registers
    # Every MRS/MSR goes to the C hook first; only registers this table sends to the VMM reach
    # Python. The table changes with the debug state, and takes effect at once (it is read at
    # run time, not baked into translations).
    def _init_sysreg_filter(self) -> None:
        """The registers that always go to the VMM: the guest's own debug registers."""
        rc = self._runctl
        for crm in range(16):
            for op2 in DEBUG_REG_OP2:
                rc.set_action((2, 0, 0, crm, op2), read=ACTION_VMM, write=ACTION_VMM)
        rc.set_action(MDSCR_EL1, read=ACTION_VMM, write=ACTION_VMM)
        rc.set_action(ID_AA64DFR0_EL1, read=ACTION_VMM)
        self._update_sysreg_filter()

    def _update_sysreg_filter(self) -> None:
        """The registers that go to the VMM depending on the clock and the armed debug state."""
        rc = self._runctl
        counter = ACTION_VIRTUAL_COUNTER if self._clock_mode == "virtual" else ACTION_UNICORN
        rc.set_action(CNTVCT_EL0, read=counter)
        rc.set_action(CNTPCT_EL0, read=counter)
        # Writes that change what the armed debug state matches: only while something is armed.
        rc.set_action(CONTEXTIDR_EL1, write=ACTION_VMM if self._bp_table else ACTION_UNICORN)
        watching = bool(self._protected or self._wp_table or self._traps)
        for key in TRANSLATION_REGS:
            rc.set_action(key, write=ACTION_VMM if watching else ACTION_UNICORN)

    def _on_mrs(self, reg: int, cp: CpReg) -> int:
        """A read of a register the VMM models. Returns 1 when it supplied the value."""
        try:
            key = (cp.op0, cp.op1, cp.crn, cp.crm, cp.op2)
            if key[:3] == (2, 0, 0) and cp.op2 in DEBUG_REG_OP2:
                kind = DEBUG_REG_OP2[cp.op2]
                return self._debug_reg_access(reg, kind, cp.crm, None)
            if key == MDSCR_EL1:
                self.uc.reg_write(reg, self.guest_debug_regs.mdscr)
                return 1
            if key == ID_AA64DFR0_EL1:
                self.uc.reg_write(reg, self.id_aa64dfr0)
                return 1
            return 0
        except BaseException as e:  # noqa: BLE001 - a ctypes callback must not raise
            return self._hook_failed(e)

    def _on_msr(self, reg: int, cp: CpReg) -> int:
        """A write to a register the VMM models or watches. Returns 1 when it consumed it."""
        try:
            key = (cp.op0, cp.op1, cp.crn, cp.crm, cp.op2)
            if key[:3] == (2, 0, 0) and cp.op2 in DEBUG_REG_OP2:
                return self._debug_reg_access(reg, DEBUG_REG_OP2[cp.op2], cp.crm, cp.val)
            if key == MDSCR_EL1:
                self._write_guest_debug_reg("mdscr", 0, cp.val)
                if self._rearm_pending:
                    self.uc.emu_stop()  # an MSR ends its block: the slice ends right after it
                return 1
            if key == CONTEXTIDR_EL1:
                self.uc.emu_stop()  # let the write happen, then re-check context-ID breakpoints
            elif key in TRANSLATION_REGS:
                # Watched virtual pages may now be other physical pages: re-protect after it.
                self._rearm_pending = True
                self.uc.emu_stop()
            return 0
        except BaseException as e:  # noqa: BLE001 - a ctypes callback must not raise
            return self._hook_failed(e)

    def _debug_reg_access(self, reg: int, kind: str, n: int, value: int | None) -> int:
        """MRS (value None) or MSR of the guest's DBG{B,W}{V,C}Rn_EL1."""
        implemented = self.brps if kind[0] == "b" else self.wrps
        in_unicorn = n < (UNICORN_BRPS if kind[0] == "b" else UNICORN_WRPS)
        if n >= implemented:
            if not in_unicorn:
                return 0  # Unicorn has no such register either: it raises UNDEF, precisely
            # Unicorn has it and would read or write it: UNDEF by hand. An MSR ends its block,
            # so this is exact; after an MRS the rest of its block runs first (a documented
            # imprecision, reachable only with fewer slots than Unicorn's 6/4).
            pc = self.pc
            self._guest_exception = (dr.esr_unknown(), None, pc)
            self._stopped_at = pc
            self.uc.emu_stop()
            return 1
        if value is None:
            if reg != uca.UC_ARM64_REG_XZR:
                self.uc.reg_write(reg, getattr(self.guest_debug_regs, kind)[n])
        else:
            self._write_guest_debug_reg(kind, n, value)
            if self._rearm_pending:
                self.uc.emu_stop()
        if not in_unicorn:
            # Skipping an instruction Unicorn translated as UNDEF falls off the end of its
            # block, and Unicorn would resume at the block's start: resume past it instead.
            # (A PC write from a hook must end the emu_start: see _on_exception.)
            self.uc.reg_write(uca.UC_ARM64_REG_PC, self.pc + 4)
            self.uc.emu_stop()
        return 1

    def _hook_failed(self, error: BaseException) -> int:
        self._hook_error = error
        self.uc.emu_stop()
        return 1

    # ------------------------------------------------------------------ exceptions
    def _insn_at(self, va: int) -> int:
        return int.from_bytes(self.read_virt(va, 4), "little")

    def _on_exception(self, uc, intno, _user):
        # Only record it: writing PC from a hook leaves Unicorn's skip_sync_pc_on_exit set for
        # the rest of the emu_start, and a later stop would then resume from a stale PC
        # (shared/REFERENCE.md §6). Exception entry happens in _dispatch_exception, between
        # emu_starts.
        pc = self.pc
        self._pending_exception = (intno, pc)
        self._stopped_at = pc
        uc.emu_stop()

    def _dispatch_exception(self, intno: int, pc: int) -> KvmRun | None:
        """An exception Unicorn reported at `pc`: a debug exit, a firmware call done for the
        guest, or entry to the guest's vector."""
        if intno == EXCP_SWI:  # PC is already past the SVC
            imm = (self._insn_at(pc - 4) >> 5) & 0xFFFF
            self._take_exception(dr.esr_svc64(imm), far=None, preferred_return=pc)
        elif intno == EXCP_BKPT:
            imm = (self._insn_at(pc) >> 5) & 0xFFFF
            if self.guestdbg_control & KVM_GUESTDBG_ENABLE and self.guestdbg_control & KVM_GUESTDBG_USE_SW_BP:
                return self._debug_exit(dr.esr_brk64(imm))
            self._take_exception(dr.esr_brk64(imm), far=None, preferred_return=pc)
        elif intno == EXCP_UDEF:
            return self._on_undefined(pc)
        elif intno == EXCP_PREFETCH_ABORT:
            el = self.current_el()
            fsc = self._fault_status(pc, "exec")
            self._take_exception(dr.esr_instruction_abort(el == 0, fsc), far=pc, preferred_return=pc)
        elif intno == EXCP_DATA_ABORT:
            self._enter_data_abort(pc)
        else:
            return self._internal_error(f"unexpected exception {intno} at PC={pc:#x}", pc)
        return None

    def _enter_data_abort(self, pc: int) -> None:
        """A fault in Unicorn's own stage-1 walk. Unicorn does not say which address faulted,
        so decode the load/store at PC to find it, and walk the tables to classify the fault."""
        decoded = _decode_access(self._insn_at(pc), pc, self._read_gpr)
        if decoded is None:
            raise _FatalGuestState(f"data abort at PC={pc:#x} by an instruction guestdbg cannot decode")
        va, size, is_write = decoded
        access = "write" if is_write else "read"
        far, fsc = va, None
        for probe in (va, (va + size - 1) & PAGE_MASK if size > 1 else va):
            fsc = self._fault_status(probe, access, default=None)
            if fsc is not None:
                far = max(probe, va)
                break
        el = self.current_el()
        self._take_exception(dr.esr_data_abort(el == 0, is_write, fsc if fsc is not None else 0x07),
                             far=far, preferred_return=pc)

    def _fault_status(self, va: int, access: str, default: int | None = 0x04) -> int | None:
        """The FSC a stage-1 walk gives for `va` (None/`default` when it translates fine)."""
        try:
            self.translate(va, access)
        except mmu.TranslationFault as fault:
            return fault.fsc()
        return default

    def _read_gpr(self, name: str) -> int:
        if name in ("sp", "wsp"):
            return self.uc.reg_read(uca.UC_ARM64_REG_SP)
        if name in ("xzr", "wzr"):
            return 0
        value = self.uc.reg_read(_X_REGS[int(name[1:])])
        return value & 0xFFFFFFFF if name[0] == "w" else value

    def _on_undefined(self, pc: int) -> KvmRun | None:
        insn = self._insn_at(pc)
        if insn == SEMIHOSTING_HLT:
            return self._semihosting(pc)
        if insn & 0xFFE0001F in (0xD4000002, 0xD4000003):  # HVC #imm, SMC #imm
            return self._psci(pc)
        self._take_exception(dr.esr_unknown(), far=None, preferred_return=pc)
        return None

    def _take_exception(self, esr: int, *, far: int | None, preferred_return: int) -> None:
        """AArch64.TakeException to EL1: syndrome, return state, mode, vector. Guests take
        these all the time (system calls), so the registers go in one batch each way."""
        uc = self.uc
        pstate, sp, sp_el0, sp_el1, vbar = self._batch_reader(_EXCEPTION_READS)()
        el = (pstate >> PSTATE_EL_SHIFT) & 3
        offset = 0x400 if el == 0 else (0x200 if pstate & PSTATE_SP else 0x000)
        vector = vbar + offset
        if preferred_return == vector:
            # The vector itself faulted: the exception entered just before (still in ESR/ELR/
            # FAR_EL1) is the one the guest could not handle. Name it.
            first_esr = uc.reg_read(uca.UC_ARM64_REG_ESR_EL1)
            first_pc = uc.reg_read(uca.UC_ARM64_REG_ELR_EL1)
            ec = dr.esr_ec(first_esr)
            is_abort = ec in (dr.ESR_ELx_EC_DABT_LOW, dr.ESR_ELx_EC_DABT_CUR, dr.ESR_ELx_EC_IABT_LOW,
                              dr.ESR_ELx_EC_IABT_CUR, dr.ESR_ELx_EC_WATCHPT_LOW, dr.ESR_ELx_EC_WATCHPT_CUR)
            where = f", address {uc.reg_read(uca.UC_ARM64_REG_FAR_EL1):#x}" if is_abort else ""
            # Leave the vCPU where the guest went wrong, not at the empty vector: back to the
            # state before that first entry, with its ESR/FAR_EL1 (and ELR/SPSR_EL1) kept for
            # the debugger to read, so a backtrace starts at the faulting instruction.
            self._write_pstate(uc.cpr_read(*SPSR_EL1))
            uc.reg_write(uca.UC_ARM64_REG_PC, first_pc)
            raise _FatalGuestState(
                f"unhandled {dr.describe_esr(first_esr)} at PC={first_pc:#x}{where} "
                f"(ESR {first_esr:#010x}; no exception handler at VBAR_EL1+{offset:#x} = {vector:#x})",
                first_esr)
        # SP is the live stack pointer of the current mode; the banked copy of that mode is
        # stale until Unicorn next switches. EL1h runs on SP_EL1.
        if self._uses_sp_el0(pstate):
            sp_el0 = sp
        else:
            sp_el1 = sp
        # The SPSR_EL1 write goes last but one: a system-register write is what makes Unicorn
        # rebuild its cached EL and translation flags for the new PSTATE.
        values = (esr, preferred_return, PSTATE_DAIF | PSTATE_MODE_EL1H, sp_el0, sp_el1, sp_el1, pstate, vector)
        if far is None:
            self._batch_writer(_EXCEPTION_WRITES)(values)
        else:
            self._batch_writer((uca.UC_ARM64_REG_FAR_EL1,) + _EXCEPTION_WRITES)((far,) + values)

    def _semihosting(self, pc: int) -> KvmRun | None:
        """HLT #0xF000 at `pc`, done for the guest; it then returns past the HLT."""
        uc = self.uc
        self._retire()
        op = uc.reg_read(uca.UC_ARM64_REG_X0) & 0xFFFFFFFF
        arg = uc.reg_read(uca.UC_ARM64_REG_X1)
        result = 0
        if op == SYS_WRITEC:
            self.vm.console(self.read_virt(arg, 1))
        elif op == SYS_WRITE0:
            self.vm.console(self._read_c_string(arg))
        elif op in (SYS_EXIT, SYS_EXIT_EXTENDED):
            block = self.read_virt(arg, 16)
            reason = int.from_bytes(block[:8], "little")
            subcode = int.from_bytes(block[8:], "little")
            status = subcode & 0xFFFFFFFF if reason == ADP_Stopped_ApplicationExit else 1
            uc.reg_write(uca.UC_ARM64_REG_PC, pc + 4)
            return KvmRun(kvm.KVM_EXIT_SYSTEM_EVENT,
                          system_event=kvm.SystemEventExit(kvm.KVM_SYSTEM_EVENT_SHUTDOWN, [status],
                                                           f"semihosting {'SYS_EXIT' if op == SYS_EXIT else 'SYS_EXIT_EXTENDED'}"))
        else:
            result = (1 << 64) - 1  # -1: operation not supported
        uc.reg_write(uca.UC_ARM64_REG_X0, result)
        uc.reg_write(uca.UC_ARM64_REG_PC, pc + 4)
        return None

    def _read_c_string(self, va: int, limit: int = 1 << 20) -> bytes:
        out = bytearray()
        while len(out) < limit:
            chunk = self.read_virt(va, min(64, PAGE_SIZE - va % PAGE_SIZE))
            nul = chunk.find(0)
            if nul >= 0:
                return bytes(out + chunk[:nul])
            out += chunk
            va += len(chunk)
        return bytes(out)

    def _psci(self, pc: int) -> KvmRun | None:
        """A PSCI call (HVC or SMC at `pc`), done for the guest as a hypervisor would."""
        uc = self.uc
        fn = uc.reg_read(uca.UC_ARM64_REG_X0) & 0xFFFFFFFF
        uc.reg_write(uca.UC_ARM64_REG_PC, pc + 4)  # HVC/SMC return past the call
        self._retire()
        if fn in (PSCI_0_2_FN_SYSTEM_OFF, PSCI_0_2_FN_SYSTEM_RESET):
            off = fn == PSCI_0_2_FN_SYSTEM_OFF
            event = kvm.SystemEventExit(kvm.KVM_SYSTEM_EVENT_SHUTDOWN if off else kvm.KVM_SYSTEM_EVENT_RESET, [0],
                                        "PSCI SYSTEM_OFF" if off else "PSCI SYSTEM_RESET")
            return KvmRun(kvm.KVM_EXIT_SYSTEM_EVENT, system_event=event)
        known = {PSCI_0_2_FN_PSCI_VERSION, PSCI_0_2_FN_SYSTEM_OFF, PSCI_0_2_FN_SYSTEM_RESET,
                 PSCI_1_0_FN_PSCI_FEATURES}
        if fn == PSCI_0_2_FN_PSCI_VERSION:
            result = PSCI_VERSION_1_1
        elif fn == PSCI_1_0_FN_PSCI_FEATURES:
            result = 0 if uc.reg_read(uca.UC_ARM64_REG_X1) & 0xFFFFFFFF in known else PSCI_RET_NOT_SUPPORTED
        elif fn in (PSCI_0_2_FN_CPU_ON, PSCI_0_2_FN64_CPU_ON):
            result = PSCI_RET_INVALID_PARAMS  # one vCPU: there is no other CPU to turn on
        else:
            result = PSCI_RET_NOT_SUPPORTED
        uc.reg_write(uca.UC_ARM64_REG_X0, result & ((1 << 64) - 1))
        return None


class _FatalGuestState(Exception):
    """The guest is in a state it cannot leave (e.g. an exception at its own vector)."""

    def __init__(self, message: str, esr: int = 0):
        super().__init__(message)
        self.esr = esr


@dataclass
class _OneReg:
    get: Callable[[], int]
    set: Callable[[int], None] | None
    uc_reg: int | None = None  # a plain Unicorn register: readable in a batch
    cp_enc: tuple[int, int, int, int, int] | None = None  # a system register Unicorn holds: batchable too

    @property
    def batch_key(self):
        return self.uc_reg if self.uc_reg is not None else self.cp_enc


_capstone = None


def _decode_access(insn: int, pc: int, read_gpr: Callable[[str], int]) -> tuple[int, int, bool] | None:
    """(virtual address, size, is_write) of the load/store `insn`, or None if it is not one."""
    global _capstone
    import capstone
    from capstone import arm64 as cs64
    if _capstone is None:
        _capstone = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
        _capstone.detail = True
    decoded = list(_capstone.disasm(insn.to_bytes(4, "little"), pc))
    if not decoded:
        return None
    i = decoded[0]
    mems = [op for op in i.operands if op.type == cs64.ARM64_OP_MEM]
    if not mems:
        return _decode_other_access(i, read_gpr)
    mem = mems[0].mem
    addr = read_gpr(i.reg_name(mem.base)) + mem.disp  # post-index forms carry disp 0 here
    if mem.index:
        index = read_gpr(i.reg_name(mem.index))
        ext = mems[0].ext
        if ext in (cs64.ARM64_EXT_UXTW,):
            index &= 0xFFFFFFFF
        elif ext in (cs64.ARM64_EXT_SXTW,):
            index = (index & 0xFFFFFFFF) - ((index & 0x80000000) << 1)
        addr += index << mems[0].shift.value
    m = i.mnemonic
    regs = [i.reg_name(op.reg) for op in i.operands if op.type == cs64.ARM64_OP_REG]
    if m.startswith(("stxr", "stlxr", "stxp", "stlxp")):
        regs = regs[1:]  # the first register is the status result, not data
    pair = m.startswith(("ldp", "stp", "ldnp", "stnp", "ldxp", "ldaxp", "stxp", "stlxp", "casp"))
    # The access size: the mnemonic's b/h/sw suffix, else the data register's width.
    if m.endswith("b"):
        element = 1
    elif m.endswith("h"):
        element = 2
    elif m.endswith("sw"):
        element = 4
    else:
        element = _REG_CLASS_BYTES.get(regs[0][0], 8) if regs else 8
    size = element * (2 if pair else 1)
    atomic_rmw = m.startswith("ld") and m[2:5] in ("add", "clr", "eor", "set", "sma", "smi", "uma", "umi")
    is_write = m.startswith(("st", "swp", "cas")) or atomic_rmw
    return addr & ((1 << 64) - 1), size, is_write


_REG_CLASS_BYTES = {"w": 4, "x": 8, "b": 1, "h": 2, "s": 4, "d": 8, "q": 16}
DC_ZVA_BLOCK = 64  # DCZID_EL0.BS = 4 on the Cortex-A57 (and QEMU's virt CPUs): 64-byte blocks


def _decode_other_access(i, read_gpr) -> tuple[int, int, bool] | None:
    """The accesses capstone gives no memory operand: a PC-relative literal load (its target
    is an immediate) and DC ZVA (it zeroes the aligned block holding Xt)."""
    from capstone import arm64 as cs64
    ops = i.operands
    if i.mnemonic in ("ldr", "ldrsw") and len(ops) == 2 and ops[1].type == cs64.ARM64_OP_IMM:
        size = 4 if i.mnemonic == "ldrsw" else _REG_CLASS_BYTES.get(i.reg_name(ops[0].reg)[0], 8)
        return ops[1].imm & ((1 << 64) - 1), size, False
    if i.mnemonic == "dc" and i.op_str.startswith("zva,"):
        xt = read_gpr(i.reg_name(ops[-1].reg))
        return xt & ~(DC_ZVA_BLOCK - 1) & ((1 << 64) - 1), DC_ZVA_BLOCK, True
    return None


def _ignore_access(_uc, _access, _va, _size, _value, _user) -> None:
    """UC_HOOK_MEM_READ callback that only exists to keep loads on Unicorn's checked path."""


def _is_multi_access(insn: int) -> bool:
    """Does this A64 load/store make more than one memory access in Unicorn (pairs, 128-bit)?"""
    if insn & 0x3A000000 == 0x28000000:  # load/store pair (all addressing forms)
        return True
    if insn & 0x3B000000 == 0x39000000 or insn & 0x3B200000 == 0x38000000 or insn & 0x3B200C00 == 0x38200800:
        # load/store register (unsigned imm / unscaled, pre/post-index / register offset)
        v, size, opc = (insn >> 26) & 1, insn >> 30, (insn >> 22) & 3
        return bool(v and size == 0 and opc & 2)  # 128-bit Q register
    if insn & 0xBF000000 == 0x0C000000 or insn & 0xBF000000 == 0x0D000000:
        return True  # SIMD load/store multiple or single structures
    if insn & 0xFFA00000 == 0xC8200000:
        return True  # LDXP/LDAXP/STXP/STLXP of X registers: two 8-byte accesses
    if insn & 0xFF000000 == 0x9C000000:
        return True  # LDR Qt (literal): two 8-byte accesses
    if insn & 0xFFFFFFE0 == 0xD50B7420:
        return True  # DC ZVA: its block, one byte at a time
    return False
