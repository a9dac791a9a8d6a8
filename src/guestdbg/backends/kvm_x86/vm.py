"""A Linux KVM x86-64 VM and vCPU in pure Python: ioctls through ctypes, guest RAM and kvm_run by mmap.

Theory of operation
-------------------
`X86Vm` is the VM file descriptor and `X86Vcpu` the vCPU one, shaped like the emulated
AArch64 back end (`Arm64Vm`/`Arm64Vcpu`) so the board, the guest-debug manager and the GDB
stub can drive either:

1. Capabilities are asked on the VM fd (KVM_CHECK_EXTENSION), as api.rst recommends.
2. Guest RAM is anonymous host memory (mmap) in *RAM blocks*. Memory slots
   (KVM_SET_USER_MEMORY_REGION) point into those blocks, so a slot can be deleted and
   re-created over the same bytes with other flags: a KVM_MEM_READONLY slot makes the guest's
   writes there come back as KVM_EXIT_MMIO (the page-trap watchpoints use this), and a hole
   with no slot makes every access come back. `read_phys`/`write_phys` go to the RAM blocks,
   so the VMM and debugger see guest memory whatever the slots currently say.
3. run() is KVM_RUN, called through ctypes so the GIL is released while the guest runs. Its
   exit is decoded from the shared kvm_run page into guestdbg.kvm.KvmRun (Linux field names).
   An IN or an MMIO read is completed by the VMM filling `run.io.data` / `run.mmio.data`; the
   next run() copies that back into kvm_run before re-entering, as KVM requires.
4. kick() (any thread): set kvm_run.immediate_exit, then send SIGUSR1 to the thread inside
   KVM_RUN. A no-op SIGUSR1 handler is installed so the signal only interrupts the ioctl
   (EINTR). immediate_exit covers the window where the signal lands just before KVM_RUN is
   entered; run() clears it after the resulting KVM_EXIT_INTR.
5. Registers: the x86 state groups (kvm_regs, kvm_sregs, kvm_fpu, kvm_debugregs,
   kvm_vcpu_events, kvm_xcrs, kvm_xsave and MSRs) have typed getters/setters, and a *register
   list* of (id, bytes) for snapshots, like the arm64 ONE_REG list. x86 KVM has no ONE_REG ids
   for these groups, so guestdbg invents them (REGISTER ID SCHEME below).

REGISTER ID SCHEME (guestdbg's, not the kernel's)
-------------------------------------------------
    bits 63..56  0x20   KVM_REG_X86, the arch field of ONE_REG ids
    bits 55..52  size   KVM_REG_SIZE_U64 for MSRs; 0 for groups (their sizes exceed the
                        field's range: reg_size_bytes() gives them from a table)
    bits 47..40  0x47   'G': a guestdbg id; Linux's own x86 ONE_REG ids leave these bits 0
    bits 39..32  group  1 regs, 2 sregs, 3 fpu, 4 debugregs, 5 vcpu_events, 6 xcrs, 7 xsave,
                        8 msr
    bits 31..0   index  0 for whole-structure groups; the MSR number for group 8

The value of a group id is the raw bytes of its structure, exactly as the GET ioctl returns
them; an MSR's is its 8 bytes, little-endian. get_reg_list() lists ids in the order a
restore must apply them (sregs before regs, xcrs before xsave, events last).

Only this vCPU's guest state is listed: the debugger's KVM_SET_GUEST_DEBUG state has no id,
as on arm64.

PAGE TRAPS (watchpoints without debug registers)
------------------------------------------------
`X86Vcpu.set_watch_traps(traps)` takes the manager's WatchTraps (guest-virtual [start, end),
loads and/or stores). Their pages are translated (KVM_TRANSLATE) and `X86Vm.set_trap_pages`
re-lays the KVM memory slots under them, leaving `X86Vm.slots` (the logical layout that
slot_for, the debugger and snapshots see) unchanged:

- a page whose *stores* are trapped gets a KVM_MEM_READONLY slot of its own;
- a page whose *loads* are trapped gets no slot at all (a hole), so loads and stores exit.

Every access to such a page comes back as KVM_EXIT_MMIO, which run() serves before the board
sees it: a store is applied to RAM with write_phys (on x86 KVM reports a store to a read-only
slot *after* the instruction: RIP is past it and the data is not yet written), a load gets its
data from RAM. The access is then checked against the exact watched byte ranges:

- a miss goes on transparently (run() re-enters KVM_RUN);
- a hit completes the instruction (KVM_RUN with immediate_exit = 1) and comes back as a
  KVM_EXIT_DEBUG exit whose payload is a `PageTrapExit` (exception 1, `page_trap` naming the
  guest-virtual address, size and direction). Like x86 data breakpoints, page-trap hits are
  reported AFTER the access: RIP is past the instruction and the manager must not re-run it.

While single-stepping (KVM_GUESTDBG_SINGLESTEP), an instruction whose access exits to the VMM
(an I/O port, MMIO or a page trap) is completed with immediate_exit = 1 and reported as the
step (KVM_EXIT_DEBUG, exception 1, DR6.BS), as `finish_step()` does: on kvm_pvm hosts KVM
would otherwise run on past the instruction without a step exit.

FETCH ASSIST (code on a load-trapped page)
------------------------------------------
KVM cannot fetch an instruction from a page with no slot: KVM_RUN ends in
KVM_EXIT_INTERNAL_ERROR with RIP on that instruction (on kvm_pvm, which emulates CPL0 code,
always). A watch on data that shares a page with code (small guests put .bss right after .text)
would make the guest unrunnable, so run() takes over: when the instruction at RIP has bytes on
a load-trapped page, the vCPU

1. decodes it (`decode.decode(...).loads`: explicit operands, pop/ret/leave/iret/xlat) and translates its
   loads;
2. gives the page a slot again, read-only if stores to it are trapped (so its stores still
   exit and are checked as above), and single-steps the instruction (KVM_GUESTDBG_SINGLESTEP
   added to the debugger's own control, with the same debug registers);
3. after the step checks the decoded loads against the watched ranges: a hit is reported as a
   page-trap hit (after the access, as always); otherwise, while the next instruction is
   fetched from a load-trapped page too, it goes on stepping (the slots stay as they are),
   and once RIP leaves those pages the traps are laid out again and the guest runs freely.

An I/O or MMIO exit in the middle goes to the board as usual; `stepping` tells it to finish
the instruction with finish_step(), which carries on the assist. Anything else (a breakpoint,
a kick, a fault, a change of debug state or traps by the debugger) ends the assist first, so
the debugger never sees its layout. Code on such a page runs one instruction per KVM_RUN:
slower, never wrong. Instruction fetches themselves are never reported as loads.

Limits: a load trap on a page holding the guest's page tables would leave KVM's page walk
nothing to read (the guest triple-faults), so X86DebugArch refuses such a watch when it is
placed (`page_table_pages`); `decode` does not model every implicit read (enter's nested
frames, a bit test's offset past its operand).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import signal
import threading
from dataclasses import dataclass

from guestdbg import kvm
from guestdbg.backends.kvm_x86 import decode
from guestdbg.backends.kvm_x86 import uapi as u
from guestdbg.kvm import KvmRun

PAGE_SIZE = 4096
KVM_DEVICE = "/dev/kvm"
KICK_SIGNAL = signal.SIGUSR1
# Where KVM_SET_TSS_ADDR puts the three pages VMX needs for real mode: above any RAM we map.
TSS_ADDR = 0xFFFB_D000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_libc.ioctl.restype = ctypes.c_int


def _ioctl(fd: int, request: int, arg=None, what: str = "") -> int:
    """One ioctl; `arg` is a ctypes object (passed by reference), an int, or None.
    Raises KvmError with the errno. The GIL is released for the call (KVM_RUN relies on it)."""
    if arg is None:
        ptr = None
    elif isinstance(arg, int):
        ptr = arg
    else:
        ptr = ctypes.addressof(arg)
    ret = _libc.ioctl(fd, request, ptr)
    if ret < 0:
        err = ctypes.get_errno()
        raise kvm.KvmError(err, f"{what or hex(request)} failed: {os.strerror(err)}")
    return ret


class KvmUnavailable(RuntimeError):
    """/dev/kvm cannot be opened or used (the message says why)."""


# ---------------------------------------------------------------------------- register ids
KVM_REG_X86 = 0x2000_0000_0000_0000
KVM_REG_SIZE_U64 = 0x0030_0000_0000_0000
GUESTDBG_ID_MARK = 0x47 << 40
GROUP_REGS, GROUP_SREGS, GROUP_FPU, GROUP_DEBUGREGS, GROUP_VCPU_EVENTS, GROUP_XCRS, GROUP_XSAVE, GROUP_MSR = range(1, 9)
GROUP_NAMES = {GROUP_REGS: "regs", GROUP_SREGS: "sregs", GROUP_FPU: "fpu", GROUP_DEBUGREGS: "debugregs",
               GROUP_VCPU_EVENTS: "vcpu_events", GROUP_XCRS: "xcrs", GROUP_XSAVE: "xsave", GROUP_MSR: "msr"}
_GROUP_TYPES = {GROUP_REGS: u.kvm_regs, GROUP_SREGS: u.kvm_sregs, GROUP_FPU: u.kvm_fpu,
                GROUP_DEBUGREGS: u.kvm_debugregs, GROUP_VCPU_EVENTS: u.kvm_vcpu_events,
                GROUP_XCRS: u.kvm_xcrs, GROUP_XSAVE: u.kvm_xsave}


def reg_id(group: int, index: int = 0) -> int:
    size = KVM_REG_SIZE_U64 if group == GROUP_MSR else 0
    return KVM_REG_X86 | size | GUESTDBG_ID_MARK | (group << 32) | (index & 0xFFFF_FFFF)


def reg_group(rid: int) -> tuple[int, int]:
    """(group, index) of a guestdbg x86 register id; ENOENT for anything else."""
    group = (rid >> 32) & 0xFF
    if rid & 0xFF00_0000_0000_0000 != KVM_REG_X86 or rid & (0xFF << 40) != GUESTDBG_ID_MARK \
            or group not in GROUP_NAMES or rid != reg_id(group, rid & 0xFFFF_FFFF):
        raise kvm.enoent(f"{rid:#x} is not a guestdbg x86 register id")
    return group, rid & 0xFFFF_FFFF


def reg_size_bytes(rid: int) -> int:
    group, _ = reg_group(rid)
    return 8 if group == GROUP_MSR else ctypes.sizeof(_GROUP_TYPES[group])


def reg_name(rid: int) -> str:
    group, index = reg_group(rid)
    return f"msr {index:#x}" if group == GROUP_MSR else GROUP_NAMES[group]


# MSRs a snapshot carries, when KVM_GET_MSR_INDEX_LIST offers them.
SNAPSHOT_MSRS = (
    u.MSR_IA32_SYSENTER_CS, u.MSR_IA32_SYSENTER_ESP, u.MSR_IA32_SYSENTER_EIP, u.MSR_IA32_CR_PAT,
    u.MSR_STAR, u.MSR_LSTAR, u.MSR_CSTAR, u.MSR_SYSCALL_MASK, u.MSR_KERNEL_GS_BASE, u.MSR_TSC_AUX,
    u.MSR_IA32_MISC_ENABLE, u.MSR_IA32_TSC,
)

KVM_VCPUEVENT_VALID_NMI_PENDING = 0x1
KVM_VCPUEVENT_VALID_SIPI_VECTOR = 0x2

INTERNAL_SUBERRORS = {
    kvm.KVM_INTERNAL_ERROR_EMULATION: "KVM_INTERNAL_ERROR_EMULATION (KVM could not emulate an instruction)",
    kvm.KVM_INTERNAL_ERROR_SIMUL_EX: "KVM_INTERNAL_ERROR_SIMUL_EX (exception during exception delivery)",
    kvm.KVM_INTERNAL_ERROR_DELIVERY_EV: "KVM_INTERNAL_ERROR_DELIVERY_EV (event delivery failed)",
    kvm.KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON: "KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON",
}


# ---------------------------------------------------------------------------- page traps
@dataclass(frozen=True)
class PageTrapHit:
    """A page-trap watch hit: guest-virtual address and size of the access, its direction."""

    addr: int
    size: int
    is_write: bool
    pa: int


@dataclass
class PageTrapExit(kvm.DebugExitX86):
    """The KVM_EXIT_DEBUG payload run() returns for a page-trap hit (exception 1, DR6 0)."""

    page_trap: PageTrapHit | None = None


@dataclass(frozen=True)
class _PaTrap:
    pa_lo: int
    pa_hi: int
    va_lo: int
    loads: bool
    stores: bool
    code: bool


TRAP_READONLY, TRAP_NOSLOT = "ro", "none"
FIRST_TRAP_SLOT = 256  # KVM slot ids for the pieces of re-laid slots (logical slots use low ids)
DR6_BS = 1 << 14
DR6_STEP = 0xFFFF0FF0 | DR6_BS  # what a single-step #DB leaves in DR6 (reserved bits read as 1)


@dataclass
class _FetchAssist:
    """Instructions being stepped from load-trapped pages (see FETCH ASSIST)."""

    pages: set[int]                         # load-trapped pages given a slot for the fetch
    loads: list[tuple[int, int, int]]       # the stepped instruction's loads: (pa, size, va)
    tlb: dict[int, int | None]              # va page -> pa page, kept while the assist lasts


# ---------------------------------------------------------------------------- the VM
@dataclass
class RamBlock:
    """Host memory backing [guest_phys_addr, +size). Slots point into it."""

    guest_phys_addr: int
    size: int
    mem: mmap.mmap
    host_addr: int

    def contains(self, pa: int, size: int = 1) -> bool:
        return self.guest_phys_addr <= pa and pa + size <= self.guest_phys_addr + self.size


@dataclass(frozen=True)
class MemorySlot:
    slot: int
    guest_phys_addr: int
    memory_size: int
    flags: int = 0

    @property
    def readonly(self) -> bool:
        return bool(self.flags & kvm.KVM_MEM_READONLY)

    def contains(self, pa: int) -> bool:
        return self.guest_phys_addr <= pa < self.guest_phys_addr + self.memory_size


class X86Vm:
    """A KVM VM: capabilities, memory slots over RAM blocks, and its vCPUs."""

    def __init__(self, device: str = KVM_DEVICE):
        try:
            self.kvm_fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise KvmUnavailable(f"cannot open {device}: {e.strerror}") from None
        self.fd = -1
        try:
            version = _ioctl(self.kvm_fd, u.KVM_GET_API_VERSION, what="KVM_GET_API_VERSION")
            if version != u.KVM_API_VERSION:
                raise KvmUnavailable(f"{device}: KVM API version {version}, expected {u.KVM_API_VERSION}")
            self.fd = _ioctl(self.kvm_fd, u.KVM_CREATE_VM, 0, what="KVM_CREATE_VM")
        except kvm.KvmError as e:
            os.close(self.kvm_fd)
            raise KvmUnavailable(f"{device}: {e.strerror}") from None
        if self.check_extension(u.KVM_CAP_SET_TSS_ADDR):
            try:
                _ioctl(self.fd, u.KVM_SET_TSS_ADDR, TSS_ADDR, what="KVM_SET_TSS_ADDR")
            except kvm.KvmError:
                pass  # only VMX needs it (for real mode); a host that refuses it does not
        self.vcpu_mmap_size = _ioctl(self.kvm_fd, u.KVM_GET_VCPU_MMAP_SIZE, what="KVM_GET_VCPU_MMAP_SIZE")
        self.ram_blocks: list[RamBlock] = []
        self.slots: dict[int, MemorySlot] = {}
        self.vcpus: list[X86Vcpu] = []
        self._supported_cpuid: tuple[int, bytes] | None = None
        self.trap_pages: dict[int, str] = {}              # page pa -> TRAP_READONLY / TRAP_NOSLOT
        self._pieces: dict[int, list[int]] = {}            # logical slot -> KVM slot ids standing in for it

    # KVM_CHECK_EXTENSION, on the VM fd
    def check_extension(self, cap: int) -> int:
        try:
            return _ioctl(self.fd, u.KVM_CHECK_EXTENSION, cap, what="KVM_CHECK_EXTENSION")
        except kvm.KvmError:
            return 0

    # ------------------------------------------------------------------ memory
    def add_ram(self, guest_phys_addr: int, size: int) -> RamBlock:
        """Allocate host memory for guest RAM at [guest_phys_addr, +size) (no slot yet)."""
        if guest_phys_addr % PAGE_SIZE or size % PAGE_SIZE or size <= 0:
            raise kvm.einval("RAM must be page aligned and non-empty")
        for b in self.ram_blocks:
            if b.guest_phys_addr < guest_phys_addr + size and guest_phys_addr < b.guest_phys_addr + b.size:
                raise kvm.KvmError(errno.EEXIST, f"RAM at {guest_phys_addr:#x} overlaps RAM at {b.guest_phys_addr:#x}")
        mem = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                        prot=mmap.PROT_READ | mmap.PROT_WRITE)
        block = RamBlock(guest_phys_addr, size, mem, ctypes.addressof(ctypes.c_char.from_buffer(mem)))
        self.ram_blocks.append(block)
        return block

    def set_user_memory_region(self, slot: int, guest_phys_addr: int, memory_size: int, flags: int = 0) -> None:
        """KVM_SET_USER_MEMORY_REGION over this VM's RAM blocks (allocating a block when none
        covers the range). memory_size 0 deletes the slot; its RAM keeps its contents. A slot
        that exists with another address, size or KVM_MEM_READONLY is deleted and re-created
        (KVM refuses to change those in place); do this only while the vCPU is stopped."""
        if guest_phys_addr % PAGE_SIZE or memory_size % PAGE_SIZE:
            raise kvm.einval("memory region must be page aligned")
        old = self.slots.get(slot)
        if memory_size and old is not None and (old.guest_phys_addr, old.memory_size, old.flags | kvm.KVM_MEM_LOG_DIRTY_PAGES) \
                != (guest_phys_addr, memory_size, flags | kvm.KVM_MEM_LOG_DIRTY_PAGES):
            # KVM cannot move, resize or change KVM_MEM_READONLY on a live slot: delete it first.
            self.set_user_memory_region(slot, old.guest_phys_addr, 0)
        host_addr = 0
        if memory_size:
            block = self._block_for(guest_phys_addr, memory_size)
            if block is None:
                block = self.add_ram(guest_phys_addr, memory_size)
            host_addr = block.host_addr + (guest_phys_addr - block.guest_phys_addr)
        region = u.kvm_userspace_memory_region(slot=slot, flags=flags, guest_phys_addr=guest_phys_addr,
                                               memory_size=memory_size, userspace_addr=host_addr)
        _ioctl(self.fd, u.KVM_SET_USER_MEMORY_REGION, region,
               what=f"KVM_SET_USER_MEMORY_REGION(slot {slot}, {guest_phys_addr:#x}+{memory_size:#x}, flags {flags:#x})")
        if memory_size:
            self.slots[slot] = MemorySlot(slot, guest_phys_addr, memory_size, flags)
        else:
            self.slots.pop(slot, None)

    def _region(self, kvm_slot: int, guest_phys_addr: int, memory_size: int, flags: int) -> None:
        host_addr = 0
        if memory_size:
            block = self._block_for(guest_phys_addr, memory_size)
            host_addr = block.host_addr + (guest_phys_addr - block.guest_phys_addr)
        region = u.kvm_userspace_memory_region(slot=kvm_slot, flags=flags, guest_phys_addr=guest_phys_addr,
                                               memory_size=memory_size, userspace_addr=host_addr)
        _ioctl(self.fd, u.KVM_SET_USER_MEMORY_REGION, region,
               what=f"KVM_SET_USER_MEMORY_REGION(slot {kvm_slot}, {guest_phys_addr:#x}+{memory_size:#x}, flags {flags:#x})")

    def set_trap_pages(self, pages: dict[int, str]) -> None:
        """Lay the KVM slots out so each page in `pages` is read-only (TRAP_READONLY) or has no
        slot (TRAP_NOSLOT); every other page is as its logical slot says. Only slots whose
        trapped pages change are touched. Call only while the vCPU is stopped."""
        pages = {pa & ~(PAGE_SIZE - 1): mode for pa, mode in pages.items() if self.slot_for(pa) is not None}
        if pages == self.trap_pages:
            return
        changed = {p for p in set(pages) | set(self.trap_pages) if pages.get(p) != self.trap_pages.get(p)}
        affected = {self.slot_for(p).slot for p in changed}
        for n in sorted(affected):
            slot = self.slots[n]
            for kvm_slot in self._pieces.pop(n, [n]):
                self._region(kvm_slot, 0, 0, 0)
            mine = sorted((p, m) for p, m in pages.items() if slot.contains(p))
            if not mine:
                self._region(n, slot.guest_phys_addr, slot.memory_size, slot.flags)
                continue
            segments = []  # (start, size, flags)
            pos, end = slot.guest_phys_addr, slot.guest_phys_addr + slot.memory_size
            for page, mode in mine:
                if page > pos:
                    segments.append((pos, page - pos, slot.flags))
                if mode == TRAP_READONLY:
                    segments.append((page, PAGE_SIZE, slot.flags | kvm.KVM_MEM_READONLY))
                pos = page + PAGE_SIZE
            if pos < end:
                segments.append((pos, end - pos, slot.flags))
            merged: list[list[int]] = []
            for start, size, flags in segments:
                if merged and merged[-1][0] + merged[-1][1] == start and merged[-1][2] == flags:
                    merged[-1][1] += size
                else:
                    merged.append([start, size, flags])
            used = {i for ids in self._pieces.values() for i in ids}
            ids, candidate = [], FIRST_TRAP_SLOT
            for _ in merged:
                while candidate in used or candidate in self.slots:
                    candidate += 1
                ids.append(candidate)
                used.add(candidate)
            for kvm_slot, (start, size, flags) in zip(ids, merged):
                self._region(kvm_slot, start, size, flags)
            self._pieces[n] = ids
        self.trap_pages = pages

    def free_slot_number(self) -> int:
        n = 0
        while n in self.slots:
            n += 1
        return n

    def slot_for(self, pa: int) -> MemorySlot | None:
        for s in self.slots.values():
            if s.contains(pa):
                return s
        return None

    def _block_for(self, pa: int, size: int) -> RamBlock | None:
        for b in self.ram_blocks:
            if b.contains(pa, size):
                return b
        return None

    def read_phys(self, pa: int, size: int) -> bytes:
        """Read guest RAM (whatever the slots say). Outside RAM is EFAULT, never a partial read."""
        out = bytearray()
        end = pa + size
        while pa < end:
            b = self._block_for(pa, 1)
            if b is None:
                raise kvm.KvmError(errno.EFAULT, f"guest physical address {pa:#x} is not RAM")
            n = min(end, b.guest_phys_addr + b.size) - pa
            off = pa - b.guest_phys_addr
            out += b.mem[off:off + n]
            pa += n
        return bytes(out)

    def write_phys(self, pa: int, data: bytes) -> None:
        """Write guest RAM (the loader's and the debugger's path; read-only slots do not apply)."""
        self._check_ram(pa, len(data))
        view = memoryview(bytes(data))
        while view:
            b = self._block_for(pa, 1)
            off = pa - b.guest_phys_addr
            n = min(len(view), b.size - off)
            b.mem[off:off + n] = view[:n]
            view = view[n:]
            pa += n

    def _check_ram(self, pa: int, size: int) -> None:
        end = pa + size
        while pa < end:
            b = self._block_for(pa, 1)
            if b is None:
                raise kvm.KvmError(errno.EFAULT, f"guest physical address {pa:#x} is not RAM")
            pa = b.guest_phys_addr + b.size

    # ------------------------------------------------------------------ vCPUs
    def supported_cpuid(self) -> tuple[int, bytes]:
        """KVM_GET_SUPPORTED_CPUID on /dev/kvm, growing the buffer on E2BIG: (nent, entries bytes)."""
        if self._supported_cpuid is None:
            nent = 64
            while True:
                buf, head, entries = u.cpuid2_buffer(nent)
                try:
                    _ioctl(self.kvm_fd, u.KVM_GET_SUPPORTED_CPUID, buf, what="KVM_GET_SUPPORTED_CPUID")
                    break
                except kvm.KvmError as e:
                    if e.errno != errno.E2BIG or nent >= 4096:
                        raise
                    nent *= 2
            n = head.nent
            self._supported_cpuid = (n, bytes(entries)[:n * ctypes.sizeof(u.kvm_cpuid_entry2)])
        return self._supported_cpuid

    def msr_index_list(self) -> list[int]:
        """KVM_GET_MSR_INDEX_LIST: the MSRs KVM saves and restores."""
        n = 0
        while True:
            buf = (ctypes.c_char * (4 + 4 * n))()
            u.kvm_msr_list.from_buffer(buf).nmsrs = n
            try:
                _ioctl(self.kvm_fd, u.KVM_GET_MSR_INDEX_LIST, buf, what="KVM_GET_MSR_INDEX_LIST")
            except kvm.KvmError as e:
                if e.errno != errno.E2BIG:
                    raise
                n = u.kvm_msr_list.from_buffer(buf).nmsrs
                continue
            count = u.kvm_msr_list.from_buffer(buf).nmsrs
            return list((u.u32 * count).from_buffer(buf, 4))

    def create_vcpu(self, vcpu_id: int = 0) -> X86Vcpu:
        vcpu = X86Vcpu(self, vcpu_id)
        self.vcpus.append(vcpu)
        return vcpu

    def close(self) -> None:
        for v in self.vcpus:
            v.close()
        self.vcpus.clear()
        for fd in (self.fd, self.kvm_fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.kvm_fd = -1
        # RAM blocks are unmapped when the last reference goes (ctypes keeps the mmap exported).

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------------------- the vCPU
_handler_lock = threading.Lock()


def _noop_handler(_signum, _frame) -> None:
    pass


def install_kick_handler() -> bool:
    """Install the no-op SIGUSR1 handler that lets kick() interrupt KVM_RUN. Python only allows
    this from the main thread; returns whether a handler is in place."""
    with _handler_lock:
        current = signal.getsignal(KICK_SIGNAL)
        if current not in (signal.SIG_DFL, signal.SIG_IGN, None):
            return True
        if threading.current_thread() is not threading.main_thread():
            return False
        signal.signal(KICK_SIGNAL, _noop_handler)
        signal.siginterrupt(KICK_SIGNAL, True)
        return True


class X86Vcpu:
    """One KVM x86-64 vCPU: run(), kick(), registers, the register list, KVM_SET_GUEST_DEBUG."""

    def __init__(self, vm: X86Vm, vcpu_id: int = 0):
        self.vm = vm
        self.vcpu_id = vcpu_id
        self.fd = _ioctl(vm.fd, u.KVM_CREATE_VCPU, vcpu_id, what="KVM_CREATE_VCPU")
        self._run_mmap = mmap.mmap(self.fd, vm.vcpu_mmap_size, flags=mmap.MAP_SHARED,
                                   prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self.kvm_run = u.kvm_run.from_buffer(self._run_mmap)
        nent, entries = vm.supported_cpuid()
        buf, _head, ents = u.cpuid2_buffer(nent)
        ctypes.memmove(ctypes.addressof(ents), entries, len(entries))
        _ioctl(self.fd, u.KVM_SET_CPUID2, buf, what="KVM_SET_CPUID2")
        self.has_xsave = bool(vm.check_extension(u.KVM_CAP_XSAVE))
        self.has_xcrs = bool(vm.check_extension(u.KVM_CAP_XCRS))
        self.has_debugregs = bool(vm.check_extension(u.KVM_CAP_DEBUGREGS))
        self.has_vcpu_events = bool(vm.check_extension(u.KVM_CAP_VCPU_EVENTS))
        self.kick_handler_installed = install_kick_handler()
        self.guestdbg_control = 0
        self.guestdbg_arch = u.kvm_guest_debug_arch()
        self._run_lock = threading.Lock()
        self._running_thread: int | None = None
        self._pending_in: kvm.KvmRun | None = None  # an IN or MMIO read the VMM must complete
        self._snapshot_msrs: list[int] | None = None
        self._trap_specs: list = []
        self._pa_traps: list[_PaTrap] = []
        self._trap_layout: dict[int, str] = {}  # the traps' pages, as set_trap_pages gets them
        self._assist: _FetchAssist | None = None
        self._kick_pending = False  # kick() not yet answered by a KVM_EXIT_INTR from run()
        self.page_trap_exits = 0  # MMIO exits served for page traps (hits and misses)
        self.fetch_assists = 0    # instructions stepped from load-trapped pages (FETCH ASSIST)
        self.guestdbg_valid_mask = vm.check_extension(kvm.KVM_CAP_SET_GUEST_DEBUG2)

    def close(self) -> None:
        if self.fd >= 0:
            del self.kvm_run
            try:
                self._run_mmap.close()
            except BufferError:
                pass
            os.close(self.fd)
            self.fd = -1

    # ------------------------------------------------------------------ run
    @property
    def immediate_exit(self) -> bool:
        return bool(self.kvm_run.immediate_exit)

    @immediate_exit.setter
    def immediate_exit(self, value: bool) -> None:
        self.kvm_run.immediate_exit = 1 if value else 0

    @property
    def stepping(self) -> bool:
        """Does an instruction that exited to the VMM have to be finished with finish_step()?
        (The debugger is single-stepping, or the vCPU is stepping code from a load-trapped page.)"""
        return bool(self.guestdbg_control & kvm.KVM_GUESTDBG_SINGLESTEP) or self._assist is not None

    def run(self) -> KvmRun:
        """KVM_RUN: run the guest until it needs the VMM, and say why (KVM_EXIT_INTR after a kick).
        Page-trap MMIO exits are served here (see PAGE TRAPS): misses never come back; so is
        code fetched from a load-trapped page (FETCH ASSIST)."""
        while True:
            out = self._run_once()
            if self._assist is not None:
                out = self._assisted_exit(out)
            elif out.exit_reason == kvm.KVM_EXIT_INTERNAL_ERROR and self._trap_layout \
                    and self._assist_prepare():
                continue  # KVM could not fetch from a load-trapped page: step it (FETCH ASSIST)
            elif self._is_trapped(out):
                out = self._page_trap(out)
            if out is not None:
                if out.exit_reason == kvm.KVM_EXIT_INTR:
                    self._kick_pending = False
                return out

    def _is_trapped(self, out: KvmRun) -> bool:
        return out.exit_reason == kvm.KVM_EXIT_MMIO and bool(self._pa_traps) \
            and (out.mmio.phys_addr & ~(PAGE_SIZE - 1)) in self.vm.trap_pages

    def _match(self, m) -> PageTrapHit | None:
        """The watched range an access to a trapped page hits, if any."""
        pa, size = m.phys_addr, m.len
        for t in self._pa_traps:
            if pa < t.pa_hi and t.pa_lo < pa + size and (t.stores if m.is_write else t.loads):
                lo = max(pa, t.pa_lo)
                return PageTrapHit(t.va_lo + (lo - t.pa_lo), size, bool(m.is_write), pa)
        return None

    def _page_trap(self, out: KvmRun) -> KvmRun | None:
        self._serve_trapped(out.mmio)
        hit = self._match(out.mmio)
        stepping = bool(self.guestdbg_control & kvm.KVM_GUESTDBG_SINGLESTEP)
        if hit is None and not stepping:
            return None  # a miss: re-enter; KVM completes the access
        done = self.finish_step()
        if hit is None:
            return done
        if done.exit_reason not in (kvm.KVM_EXIT_DEBUG, kvm.KVM_EXIT_INTR):
            raise kvm.KvmError(errno.EIO, f"completing a trapped access gave {done}")
        return KvmRun(kvm.KVM_EXIT_DEBUG, debug=PageTrapExit(1, self.pc, 0, 0, page_trap=hit))

    def finish_step(self) -> KvmRun:
        """After an exit the VMM has served (I/O, MMIO), let KVM finish that instruction and
        nothing more (KVM_RUN with immediate_exit = 1). Returns KVM_EXIT_DEBUG as a single-step
        exit (exception 1, DR6.BS) when that is all that happened, or KVM's own exit. During a
        fetch assist the finished instruction is the assist's step, which goes on as run()."""
        run = self._finish()
        if self._assist is not None:
            # KVM may say INTR (done, nothing more) or already report the step it had pending.
            done = self._assist_step_done(None) if run.exit_reason == kvm.KVM_EXIT_INTR \
                else self._assisted_exit(run)
            return done if done is not None else self.run()
        if run.exit_reason != kvm.KVM_EXIT_INTR:
            return run
        return KvmRun(kvm.KVM_EXIT_DEBUG, debug=kvm.DebugExitX86(1, self.pc, DR6_STEP, 0))

    def _finish(self) -> KvmRun:
        """KVM_RUN with immediate_exit = 1 until the served instruction is complete
        (KVM_EXIT_INTR), serving its further accesses to trapped pages; or KVM's other exit."""
        while True:
            self.kvm_run.immediate_exit = 1
            try:
                run = self._run_once()
            finally:
                self.kvm_run.immediate_exit = 1 if self._kick_pending else 0
            if self._pa_traps and self._is_trapped(run):
                # The same instruction's next access to a trapped page (the store of a
                # read-modify-write, a second fragment): serve it and go on finishing.
                self._serve_trapped(run.mmio)
                continue
            return run

    # ------------------------------------------------------------------ fetch assist
    def _assist_prepare(self, regs: u.kvm_regs | None = None) -> bool:
        """If the instruction at RIP has bytes on a load-trapped page, give those pages a slot
        and set up its single step (FETCH ASSIST); False (nothing changed) otherwise."""
        noslot = {p for p, mode in self._trap_layout.items() if mode == TRAP_NOSLOT}
        if not noslot:
            return False
        regs = regs or self.get_regs()
        rip = regs.rip
        # Translations are kept while one assist lasts (an instruction that may change them
        # drops them): code on a trapped page runs one KVM_RUN per instruction, keep it cheap.
        tlb = self._assist.tlb if self._assist is not None else {}
        code, spans = b"", []  # spans: (va, pa, length) of the bytes read
        va = rip
        while len(code) < decode.MAX_INSN:
            n = min(decode.MAX_INSN - len(code), PAGE_SIZE - va % PAGE_SIZE)
            pa = self._translate_cached(tlb, va)
            if pa is None:
                break
            try:
                code += self.vm.read_phys(pa, n)
            except kvm.KvmError:
                break
            spans.append((va, pa, n))
            va += n
        insn = decode.decode(code, rip)
        size = insn.size if insn is not None else len(code)
        pages = set()
        for span_va, pa, n in spans:
            used = min(n, rip + size - span_va)
            if used > 0:
                pages |= {p for p in (pa & ~(PAGE_SIZE - 1), (pa + used - 1) & ~(PAGE_SIZE - 1)) if p in noslot}
        if not pages:
            return False
        if self._assist is not None:
            pages |= self._assist.pages
        loads = []
        if insn is not None and insn.reads:
            seg_bases = None
            if insn.segments:
                sregs = self.get_sregs()
                seg_bases = {"fs": sregs.fs.base, "gs": sregs.gs.base}
            for lva, lsize in insn.loads(regs, seg_bases):
                pos, end = lva, lva + lsize
                while pos < end:  # page by page: a load can straddle two mappings
                    n = min(end - pos, PAGE_SIZE - pos % PAGE_SIZE)
                    pa = self._translate_cached(tlb, pos)
                    if pa is not None and (pa & ~(PAGE_SIZE - 1)) in pages:
                        loads.append((pa, n, pos))
                    pos += n
        if insn is None or insn.tlb_change:
            tlb = {}
        if self._assist is None or not pages <= self._assist.pages:
            layout = dict(self._trap_layout)
            for p in pages:
                if any(t.stores and t.pa_lo < p + PAGE_SIZE and p < t.pa_hi for t in self._pa_traps):
                    layout[p] = TRAP_READONLY  # its stores still exit and are checked
                else:
                    del layout[p]
            self.vm.set_trap_pages(layout)
        if self._assist is None:
            self._program_debug(self.guestdbg_control | kvm.KVM_GUESTDBG_ENABLE | kvm.KVM_GUESTDBG_SINGLESTEP,
                                self.guestdbg_arch)
        self._assist = _FetchAssist(pages, loads, tlb)
        self.fetch_assists += 1
        return True

    def _translate_cached(self, tlb: dict[int, int | None], va: int) -> int | None:
        page = va & ~(PAGE_SIZE - 1)
        if page not in tlb:
            got = self.kvm_translate(page)
            tlb[page] = got[0] if got is not None else None
        pa = tlb[page]
        return None if pa is None else pa + va % PAGE_SIZE

    def _assisted_exit(self, out: KvmRun) -> KvmRun | None:
        """An exit while stepping an instruction fetched from a load-trapped page: the result to
        return, or None to run on."""
        reason = out.exit_reason
        if reason == kvm.KVM_EXIT_DEBUG and out.debug.exception == 1 and out.debug.dr6 & DR6_BS \
                and not out.debug.dr6 & self._armed_drs():
            return self._assist_step_done(None)
        if self._is_trapped(out):
            self._serve_trapped(out.mmio)
            hit = self._match(out.mmio)
            done = self._finish()
            if done.exit_reason == kvm.KVM_EXIT_INTR:
                return self._assist_step_done(hit)
            self._assist_end()
            return done
        if reason in (kvm.KVM_EXIT_IO, kvm.KVM_EXIT_MMIO):
            return out  # the board serves it, then finish_step() completes the step
        # A breakpoint, a kick, a fault: back to the debugger's layout, and report it as it is.
        self._assist_end()
        return out

    def _assist_step_done(self, hit: PageTrapHit | None) -> KvmRun | None:
        """The stepped instruction is complete: report a load it made from a watched range (or a
        store `hit`), or the debugger's own step; else step on or go back to running freely."""
        for pa, size, va in self._assist.loads:
            load = self._match(kvm.MmioExit(pa, size, False, bytearray(size)))
            if load is not None:
                hit = PageTrapHit(load.addr, size, False, pa)  # an RMW is reported as its load
                break
        user_step = self.guestdbg_control & kvm.KVM_GUESTDBG_SINGLESTEP
        if hit is not None or user_step:
            self._assist_end()
            if hit is not None:
                return KvmRun(kvm.KVM_EXIT_DEBUG, debug=PageTrapExit(1, self.pc, 0, 0, page_trap=hit))
            return KvmRun(kvm.KVM_EXIT_DEBUG, debug=kvm.DebugExitX86(1, self.pc, DR6_STEP, 0))
        if not self._assist_prepare():
            self._assist_end()
        return None

    def _assist_end(self) -> None:
        """Lay the page traps out again and give KVM back the debugger's own guest-debug state."""
        if self._assist is None:
            return
        self._assist = None
        self.vm.set_trap_pages(self._trap_layout)
        self._program_debug(self.guestdbg_control, self.guestdbg_arch)

    def _armed_drs(self) -> int:
        """DR6 B0-B3 bits of the debugger's enabled debug registers."""
        dr7 = self.guestdbg_arch.debugreg[7]
        return sum(1 << n for n in range(4) if dr7 & (3 << (2 * n)))

    def _serve_trapped(self, m) -> None:
        self.page_trap_exits += 1
        if m.is_write:
            self.vm.write_phys(m.phys_addr, bytes(m.data[:m.len]))
        else:
            m.data[:m.len] = self.vm.read_phys(m.phys_addr, m.len)

    def set_watch_traps(self, traps) -> None:
        """Replace the debugger's page traps (guestdbg.debug.arch.WatchTrap list; see PAGE TRAPS).
        Pages the guest has not mapped yet are skipped."""
        self._assist_end()  # the debugger is changing things: it sees its own layout
        traps = list(traps)
        if traps == self._trap_specs:
            return
        pa_traps, pages = [], {}
        for t in traps:
            va = t.start
            while va < t.end:
                page_end = (va | (PAGE_SIZE - 1)) + 1
                hi = min(t.end, page_end)
                got = self.kvm_translate(va)
                if got is not None:
                    pa = got[0]
                    pa_traps.append(_PaTrap(pa, pa + (hi - va), va, t.loads, t.stores, t.code))
                    page = pa & ~(PAGE_SIZE - 1)
                    if t.loads:
                        pages[page] = TRAP_NOSLOT
                    else:
                        pages.setdefault(page, TRAP_READONLY)
                va = hi
        self.vm.set_trap_pages(pages)
        self._trap_specs, self._pa_traps, self._trap_layout = traps, pa_traps, pages

    def _run_once(self) -> KvmRun:
        self._complete_pending_in()
        with self._run_lock:
            self._running_thread = threading.get_ident()
        try:
            ret = _libc.ioctl(self.fd, u.KVM_RUN, None)
            err = ctypes.get_errno() if ret < 0 else 0
        finally:
            with self._run_lock:
                self._running_thread = None
        if ret < 0:
            if err in (errno.EINTR, errno.EAGAIN):
                self.kvm_run.immediate_exit = 0
                return KvmRun(kvm.KVM_EXIT_INTR)
            raise kvm.KvmError(err, f"KVM_RUN failed: {os.strerror(err)}")
        return self._decode_exit()

    def kick(self, timeout: float = 1.0) -> None:
        """Make run() return KVM_EXIT_INTR soon; callable from any thread. If no run() is in
        progress, the next one returns KVM_EXIT_INTR at once."""
        self._kick_pending = True  # survives finish_step()'s own use of immediate_exit
        self.kvm_run.immediate_exit = 1
        with self._run_lock:
            tid = self._running_thread
            if tid is not None and tid != threading.get_ident():
                signal.pthread_kill(tid, KICK_SIGNAL)

    def complete_pending_io(self) -> None:
        """Let KVM finish an instruction whose I/O or MMIO exit was just served, without running
        any further (KVM_RUN with immediate_exit = 1, per api.rst). Needed before reading
        registers for a snapshot or single-stepping past an `out`: until then RIP is still on
        the instruction and its effect is not complete."""
        self.kvm_run.immediate_exit = 1
        run = self.run()
        if run.exit_reason != kvm.KVM_EXIT_INTR:
            raise kvm.KvmError(errno.EIO, f"completing pending I/O gave {run} instead of KVM_EXIT_INTR")

    def access_in_flight(self) -> bool:
        """Is an IN or MMIO read waiting for the next run() to complete it (no snapshot now)?"""
        return self._pending_in is not None

    def _complete_pending_in(self) -> None:
        pending, self._pending_in = self._pending_in, None
        if pending is None:
            return
        r = self.kvm_run
        if pending.io is not None:
            n = pending.io.size * pending.io.count
            data = bytes(pending.io.data[:n]).ljust(n, b"\0")
            ctypes.memmove(ctypes.addressof(r) + r.io.data_offset, data, n)
        elif pending.mmio is not None:
            n = min(8, pending.mmio.len)
            ctypes.memmove(r.mmio.data, bytes(pending.mmio.data[:n]).ljust(n, b"\0"), n)

    def _decode_exit(self) -> KvmRun:
        r = self.kvm_run
        reason = r.exit_reason
        out = KvmRun(reason, flags=r.flags)
        if reason == kvm.KVM_EXIT_IO:
            io = r.io
            n = io.size * io.count
            data = bytearray(ctypes.string_at(ctypes.addressof(r) + io.data_offset, n))
            out.io = kvm.IoExit(io.direction, io.size, io.port, io.count, data)
            if io.direction == u.KVM_EXIT_IO_IN:
                self._pending_in = out
        elif reason == kvm.KVM_EXIT_MMIO:
            m = r.mmio
            out.mmio = kvm.MmioExit(m.phys_addr, m.len, bool(m.is_write), bytearray(bytes(m.data)))
            if not m.is_write:
                self._pending_in = out
        elif reason == kvm.KVM_EXIT_DEBUG:
            a = r.debug.arch
            out.debug = kvm.DebugExitX86(a.exception, a.pc, a.dr6, a.dr7)
        elif reason == kvm.KVM_EXIT_INTERNAL_ERROR:
            i = r.internal
            data = list(i.data[:min(i.ndata, 16)])
            what = INTERNAL_SUBERRORS.get(i.suberror, f"suberror {i.suberror}")
            out.internal = kvm.InternalErrorExit(i.suberror, f"KVM_EXIT_INTERNAL_ERROR: {what}", data)
        elif reason == kvm.KVM_EXIT_FAIL_ENTRY:
            f = r.fail_entry
            out.internal = kvm.InternalErrorExit(
                0, f"KVM_EXIT_FAIL_ENTRY: hardware_entry_failure_reason={f.hardware_entry_failure_reason:#x} "
                   f"on cpu {f.cpu}", [f.hardware_entry_failure_reason])
        elif reason == kvm.KVM_EXIT_SYSTEM_EVENT:
            e = r.system_event
            out.system_event = kvm.SystemEventExit(e.type, list(e.data[:min(e.ndata, 16)]), "KVM")
        return out

    # ------------------------------------------------------------------ KVM_SET_GUEST_DEBUG
    def set_guest_debug(self, control: int, arch: u.kvm_guest_debug_arch | None = None) -> None:
        """KVM_SET_GUEST_DEBUG: control is KVM_GUESTDBG_*, arch.debugreg = DR0-3, -, -, DR6, DR7.
        Control bits outside KVM_CAP_SET_GUEST_DEBUG2's mask are EINVAL (checked here too, so a
        host that does not check behaves the same)."""
        mask = self.guestdbg_valid_mask
        if mask and control & ~mask:
            raise kvm.einval(f"unsupported guest debug control bits {control & ~mask:#x} (valid: {mask:#x})")
        self._assist_end()
        self.guestdbg_arch = self._program_debug(control, arch)
        self.guestdbg_control = control

    def _program_debug(self, control: int, arch: u.kvm_guest_debug_arch | None) -> u.kvm_guest_debug_arch:
        """KVM_SET_GUEST_DEBUG as it is, without changing what the debugger asked for (the fetch
        assist adds its single step this way)."""
        dbg = u.kvm_guest_debug(control=control)
        if arch is not None:
            dbg.arch = arch
        _ioctl(self.fd, u.KVM_SET_GUEST_DEBUG, dbg, what=f"KVM_SET_GUEST_DEBUG(control={control:#x})")
        return dbg.arch

    # ------------------------------------------------------------------ register groups
    def _get(self, request: int, ctype, what: str):
        obj = ctype()
        _ioctl(self.fd, request, obj, what=what)
        return obj

    def get_regs(self) -> u.kvm_regs:
        return self._get(u.KVM_GET_REGS, u.kvm_regs, "KVM_GET_REGS")

    def set_regs(self, regs: u.kvm_regs) -> None:
        _ioctl(self.fd, u.KVM_SET_REGS, regs, what="KVM_SET_REGS")

    def get_sregs(self) -> u.kvm_sregs:
        return self._get(u.KVM_GET_SREGS, u.kvm_sregs, "KVM_GET_SREGS")

    def set_sregs(self, sregs: u.kvm_sregs) -> None:
        _ioctl(self.fd, u.KVM_SET_SREGS, sregs, what="KVM_SET_SREGS")

    def get_fpu(self) -> u.kvm_fpu:
        return self._get(u.KVM_GET_FPU, u.kvm_fpu, "KVM_GET_FPU")

    def set_fpu(self, fpu: u.kvm_fpu) -> None:
        _ioctl(self.fd, u.KVM_SET_FPU, fpu, what="KVM_SET_FPU")

    def get_debugregs(self) -> u.kvm_debugregs:
        return self._get(u.KVM_GET_DEBUGREGS, u.kvm_debugregs, "KVM_GET_DEBUGREGS")

    def set_debugregs(self, dregs: u.kvm_debugregs) -> None:
        _ioctl(self.fd, u.KVM_SET_DEBUGREGS, dregs, what="KVM_SET_DEBUGREGS")

    def get_vcpu_events(self) -> u.kvm_vcpu_events:
        return self._get(u.KVM_GET_VCPU_EVENTS, u.kvm_vcpu_events, "KVM_GET_VCPU_EVENTS")

    def set_vcpu_events(self, events: u.kvm_vcpu_events) -> None:
        _ioctl(self.fd, u.KVM_SET_VCPU_EVENTS, events, what="KVM_SET_VCPU_EVENTS")

    def get_xsave(self) -> u.kvm_xsave:
        return self._get(u.KVM_GET_XSAVE, u.kvm_xsave, "KVM_GET_XSAVE")

    def set_xsave(self, xsave: u.kvm_xsave) -> None:
        _ioctl(self.fd, u.KVM_SET_XSAVE, xsave, what="KVM_SET_XSAVE")

    def get_xcrs(self) -> u.kvm_xcrs:
        return self._get(u.KVM_GET_XCRS, u.kvm_xcrs, "KVM_GET_XCRS")

    def set_xcrs(self, xcrs: u.kvm_xcrs) -> None:
        _ioctl(self.fd, u.KVM_SET_XCRS, xcrs, what="KVM_SET_XCRS")

    def get_msrs(self, indices: list[int]) -> dict[int, int]:
        """KVM_GET_MSRS. KVM stops at the first MSR it cannot read; that one is an error."""
        buf, _head, entries = u.msrs_buffer(indices)
        n = _ioctl(self.fd, u.KVM_GET_MSRS, buf, what="KVM_GET_MSRS")
        if n != len(indices):
            raise kvm.KvmError(errno.EINVAL, f"KVM_GET_MSRS: MSR {indices[n]:#x} cannot be read")
        return {e.index: e.data for e in entries}

    def set_msrs(self, values: dict[int, int]) -> None:
        buf, _head, entries = u.msrs_buffer(list(values))
        for e in entries:
            e.data = values[e.index]
        n = _ioctl(self.fd, u.KVM_SET_MSRS, buf, what="KVM_SET_MSRS")
        if n != len(values):
            raise kvm.KvmError(errno.EINVAL, f"KVM_SET_MSRS: MSR {list(values)[n]:#x} was refused")

    def page_table_pages(self, limit: int = 4096) -> set[int]:
        """Physical pages of the guest's current page tables (from CR3; 5 levels with
        CR4.LA57), the first `limit` found (a bound on the time spent, not on correctness for
        small guests). A load trap must not remove one: KVM's page walk reads them for every
        access, and the guest would triple-fault."""
        sregs = self.get_sregs()
        if not sregs.cr0 & (1 << 31):
            return set()
        levels = 5 if sregs.cr4 & (1 << 12) else 4
        addr_mask = 0x000F_FFFF_FFFF_F000
        tables, todo = set(), [(sregs.cr3 & addr_mask, levels)]
        while todo and len(tables) < limit:
            pa, level = todo.pop()
            if pa in tables:
                continue
            try:
                raw = self.vm.read_phys(pa, PAGE_SIZE)
            except kvm.KvmError:
                continue
            tables.add(pa)
            if level == 1:
                continue
            # present entries, less large pages (PS in a PDPT or PD entry is a leaf)
            leaf_ps = 0x80 if level in (2, 3) else 0
            todo += [(e & addr_mask, level - 1) for e in memoryview(raw).cast("Q") if e & 1 and not e & leaf_ps]
        return tables

    def kvm_translate(self, linear_address: int) -> tuple[int, bool] | None:
        """KVM_TRANSLATE: (physical address, writeable) of a linear address, or None if unmapped."""
        t = u.kvm_translation(linear_address=linear_address)
        _ioctl(self.fd, u.KVM_TRANSLATE, t, what="KVM_TRANSLATE")
        return (t.physical_address, bool(t.writeable)) if t.valid else None

    def translate(self, va: int, access: str = "read") -> int:
        """Guest virtual to physical through the guest's page tables (KVM_TRANSLATE), as the
        manager asks it; EFAULT when unmapped, EACCES for a write to a read-only mapping."""
        got = self.kvm_translate(va)
        if got is None:
            raise kvm.KvmError(errno.EFAULT, f"{va:#x} is not mapped")
        if access == "write" and not got[1]:
            raise kvm.KvmError(errno.EACCES, f"{va:#x} is mapped read-only")
        return got[0]

    @property
    def pc(self) -> int:
        return self.get_regs().rip

    # ------------------------------------------------------------------ register list
    def _msrs_for_snapshot(self) -> list[int]:
        if self._snapshot_msrs is None:
            offered = set(self.vm.msr_index_list())
            usable = []
            for index in SNAPSHOT_MSRS:
                if index in offered:
                    try:
                        self.get_msrs([index])
                        usable.append(index)
                    except kvm.KvmError:
                        pass
            self._snapshot_msrs = usable
        return self._snapshot_msrs

    def get_reg_list(self) -> list[int]:
        """Every register id a snapshot carries, in the order a restore applies them."""
        ids = [reg_id(GROUP_SREGS)]
        ids.append(reg_id(GROUP_REGS))
        if self.has_xcrs:
            ids.append(reg_id(GROUP_XCRS))
        ids.append(reg_id(GROUP_XSAVE) if self.has_xsave else reg_id(GROUP_FPU))
        ids += [reg_id(GROUP_MSR, i) for i in self._msrs_for_snapshot()]
        if self.has_debugregs:
            ids.append(reg_id(GROUP_DEBUGREGS))
        if self.has_vcpu_events:
            ids.append(reg_id(GROUP_VCPU_EVENTS))
        return ids

    def get_reg_bytes(self, rid: int) -> bytes:
        group, index = reg_group(rid)
        if group == GROUP_MSR:
            return self.get_msrs([index])[index].to_bytes(8, "little")
        getter = {GROUP_REGS: self.get_regs, GROUP_SREGS: self.get_sregs, GROUP_FPU: self.get_fpu,
                  GROUP_DEBUGREGS: self.get_debugregs, GROUP_VCPU_EVENTS: self.get_vcpu_events,
                  GROUP_XCRS: self.get_xcrs, GROUP_XSAVE: self.get_xsave}[group]
        return bytes(getter())

    def set_reg_bytes(self, rid: int, data: bytes) -> None:
        group, index = reg_group(rid)
        if len(data) != reg_size_bytes(rid):
            raise kvm.einval(f"{reg_name(rid)}: {len(data)} bytes, expected {reg_size_bytes(rid)}")
        if group == GROUP_MSR:
            self.set_msrs({index: int.from_bytes(data, "little")})
            return
        obj = _GROUP_TYPES[group].from_buffer_copy(data)
        if group == GROUP_VCPU_EVENTS:
            # GET reports these fields but does not flag them; ask SET to restore them too.
            obj.flags |= KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR
        setter = {GROUP_REGS: self.set_regs, GROUP_SREGS: self.set_sregs, GROUP_FPU: self.set_fpu,
                  GROUP_DEBUGREGS: self.set_debugregs, GROUP_VCPU_EVENTS: self.set_vcpu_events,
                  GROUP_XCRS: self.set_xcrs, GROUP_XSAVE: self.set_xsave}[group]
        setter(obj)

    def save_registers(self) -> list[tuple[int, bytes]]:
        """(id, bytes) for every id of get_reg_list(), in restore order."""
        return [(rid, self.get_reg_bytes(rid)) for rid in self.get_reg_list()]

    def restore_registers(self, saved: list[tuple[int, bytes]]) -> None:
        for rid, data in saved:
            self.set_reg_bytes(rid, data)

    # ONE_REG-shaped access, as the arm64 back end offers (values as integers).
    def get_one_reg(self, rid: int) -> int:
        return int.from_bytes(self.get_reg_bytes(rid), "little")

    def set_one_reg(self, rid: int, value: int) -> None:
        size = reg_size_bytes(rid)
        if not 0 <= value < 1 << (8 * size):
            raise kvm.einval(f"value does not fit {reg_name(rid)} ({size} bytes)")
        self.set_reg_bytes(rid, value.to_bytes(size, "little"))
