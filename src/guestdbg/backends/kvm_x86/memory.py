"""Guest-physical memory of an x86 KVM VM: RAM blocks, memory slots over them, page traps.

Guest RAM is anonymous host memory (mmap) in *RAM blocks*. Memory slots
(KVM_SET_USER_MEMORY_REGION) point into those blocks, so a slot can be deleted and re-created
over the same bytes with other flags: a KVM_MEM_READONLY slot makes the guest's writes there
come back as KVM_EXIT_MMIO (the page-trap watchpoints use this), and a hole with no slot makes
every access come back. `read_phys`/`write_phys` go to the RAM blocks, so the VMM and debugger
see guest memory whatever the slots currently say.

`set_trap_pages` re-lays the KVM slots under trapped pages (see PAGE TRAPS in pagetrap.py),
leaving `slots` (the logical layout that slot_for, the debugger and snapshots see) unchanged:
a page whose stores are trapped gets a KVM_MEM_READONLY slot of its own (TRAP_READONLY), a
page whose loads are trapped gets no slot at all (TRAP_NOSLOT). The pieces standing in for a
logical slot use KVM slot ids from FIRST_TRAP_SLOT up.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
from dataclasses import dataclass

from guestdbg import kvm
from guestdbg.backends.kvm_x86 import uapi as u
from guestdbg.backends.kvm_x86.ioctl import PAGE_SIZE, ioctl

TRAP_READONLY, TRAP_NOSLOT = "ro", "none"
FIRST_TRAP_SLOT = 256  # KVM slot ids for the pieces of re-laid slots (logical slots use low ids)


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


def _not_ram(pa: int) -> kvm.KvmError:
    return kvm.KvmError(errno.EFAULT, f"guest physical address {pa:#x} is not RAM")


class GuestMemory:
    """The memory half of X86Vm: RAM blocks, the logical memory slots, and the KVM slot layout
    under page traps. `fd` is the VM file descriptor."""

    fd: int

    def __init__(self) -> None:
        self.ram_blocks: list[RamBlock] = []
        self.slots: dict[int, MemorySlot] = {}
        self.trap_pages: dict[int, str] = {}    # page pa -> TRAP_READONLY / TRAP_NOSLOT
        self._pieces: dict[int, list[int]] = {}  # logical slot -> KVM slot ids standing in for it

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
        if memory_size and self._block_for(guest_phys_addr, memory_size) is None:
            self.add_ram(guest_phys_addr, memory_size)
        self._region(slot, guest_phys_addr, memory_size, flags)
        if memory_size:
            self.slots[slot] = MemorySlot(slot, guest_phys_addr, memory_size, flags)
        else:
            self.slots.pop(slot, None)

    def _region(self, kvm_slot: int, guest_phys_addr: int, memory_size: int, flags: int) -> None:
        """KVM_SET_USER_MEMORY_REGION as it is, over the RAM block holding the range."""
        host_addr = 0
        if memory_size:
            block = self._block_for(guest_phys_addr, memory_size)
            if block is None:
                raise _not_ram(guest_phys_addr)
            host_addr = block.host_addr + (guest_phys_addr - block.guest_phys_addr)
        region = u.kvm_userspace_memory_region(slot=kvm_slot, flags=flags, guest_phys_addr=guest_phys_addr,
                                               memory_size=memory_size, userspace_addr=host_addr)
        ioctl(self.fd, u.KVM_SET_USER_MEMORY_REGION, region,
              what=f"KVM_SET_USER_MEMORY_REGION(slot {kvm_slot}, {guest_phys_addr:#x}+{memory_size:#x}, flags {flags:#x})")

    def set_trap_pages(self, pages: dict[int, str]) -> None:
        """Lay the KVM slots out so each page in `pages` is read-only (TRAP_READONLY) or has no
        slot (TRAP_NOSLOT); every other page is as its logical slot says. Only slots whose
        trapped pages change are touched. Call only while the vCPU is stopped."""
        pages = {pa & ~(PAGE_SIZE - 1): mode for pa, mode in pages.items() if self.slot_for(pa) is not None}
        if pages == self.trap_pages:
            return
        changed = {p for p in set(pages) | set(self.trap_pages) if pages.get(p) != self.trap_pages.get(p)}
        affected = set()
        for p in changed:
            owner = self.slot_for(p)
            if owner is not None:  # (a page whose slot has gone since has nothing to re-lay)
                affected.add(owner.slot)
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
                raise _not_ram(pa)
            n = min(end, b.guest_phys_addr + b.size) - pa
            off = pa - b.guest_phys_addr
            out += b.mem[off:off + n]
            pa += n
        return bytes(out)

    def write_phys(self, pa: int, data: bytes) -> None:
        """Write guest RAM (the loader's and the debugger's path; read-only slots do not apply).
        Outside RAM is EFAULT, and nothing is written."""
        self._check_ram(pa, len(data))
        view = memoryview(bytes(data))
        while view:
            b = self._block_for(pa, 1)
            if b is None:
                raise _not_ram(pa)
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
                raise _not_ram(pa)
            pa = b.guest_phys_addr + b.size
