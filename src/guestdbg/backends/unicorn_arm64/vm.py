"""The VM (KVM's VM file descriptor): capabilities, guest memory slots, in-kernel devices.

Guest memory is host memory (one anonymous mapping per slot the VM allocates, zero pages until
touched, or the VMM's own at `userspace_addr`, as on KVM), mapped with uc_mem_map_ptr into the
Unicorn engine of every vCPU: each vCPU is its own engine over the same RAM, with no copies, as
vCPU threads share a KVM VM's memory.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from unicorn import UC_ARCH_ARM64, UC_MODE_ARM, UC_PROT_ALL, UC_PROT_EXEC, UC_PROT_READ
from unicorn import arm64_const as uca
from unicorn.unicorn_py3.arch.arm64 import UcAArch64

from guestdbg import kvm
from guestdbg.backends.unicorn_arm64 import dirtylog
from guestdbg.backends.unicorn_arm64.arch import (
    KVM_GUESTDBG_VALID_MASK,
    PAGE_SIZE,
    SCTLR_EL1,
    remove_cache,
)
from guestdbg.backends.unicorn_arm64.vcpu import Arm64Vcpu
from guestdbg.kvm import (
    KVM_CAP_GUEST_DEBUG_HW_BPS,
    KVM_CAP_GUEST_DEBUG_HW_WPS,
    KVM_CAP_ONE_REG,
    KVM_CAP_SET_GUEST_DEBUG,
    KVM_CAP_SET_GUEST_DEBUG2,
)
from guestdbg.vmapi import Console, stdout_console

MAP_CHUNK = 1 << 20
TCG_BUFFER_SIZE = 32 << 20
# GICv2 addresses at most 8 CPUs (GICD_ITARGETSR is a byte per interrupt), so QEMU's virt
# board with GICv2 stops at 8 too.
MAX_VCPUS = 8


@dataclass(frozen=True)
class DebugConfig:
    """Per-VM debug hardware: breakpoint, watchpoint and context-aware breakpoint counts."""

    brps: int = 6
    wrps: int = 4
    ctx_cmps: int = 2

    def __post_init__(self) -> None:
        if not 2 <= self.brps <= 16:
            raise ValueError(f"brps must be 2..16, got {self.brps}")
        if not 2 <= self.wrps <= 16:
            raise ValueError(f"wrps must be 2..16, got {self.wrps}")
        if not 1 <= self.ctx_cmps <= self.brps:
            raise ValueError(f"ctx_cmps must be 1..brps ({self.brps}), got {self.ctx_cmps}")


class Device(Protocol):
    """What a device registered with register_mmio_device offers."""

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...


@dataclass
class MmioDevice:
    """A device the VM serves without an exit (KVM's in-kernel devices, ioeventfd)."""

    base: int
    size: int
    device: Device
    inline: bool = False  # mapped with Unicorn's mmio_map (not while a watchpoint covers it)


@dataclass
class MemorySlot:
    slot: int
    guest_phys_addr: int
    memory_size: int
    flags: int
    userspace_addr: int = 0  # where the guest memory is in this process
    owned: mmap.mmap | None = None  # the mapping behind it when the VM allocated it
    log_finalizer: weakref.finalize | None = None  # ends dirty logging with the mapping

    @property
    def readonly(self) -> bool:
        return bool(self.flags & kvm.KVM_MEM_READONLY)

    def contains(self, pa: int) -> bool:
        return self.guest_phys_addr <= pa < self.guest_phys_addr + self.memory_size


class KvmErrorExists(kvm.KvmError):
    def __init__(self, message: str):
        super().__init__(errno.EEXIST, message)


def _chunks(base: int, size: int) -> Iterator[tuple[int, int]]:
    """[base, base+size) as MAP_CHUNK-aligned pieces."""
    end = base + size
    while base < end:
        step = min(end, (base // MAP_CHUNK + 1) * MAP_CHUNK) - base
        yield base, step
        base += step


class Arm64Vm:
    """The VM: capabilities, guest memory slots and the devices handled without an exit."""

    def __init__(self, debug: DebugConfig | None = None, console: Console | None = None):
        self.debug_config = debug or DebugConfig()
        self.slots: dict[int, MemorySlot] = {}
        self.slots_version = 0  # bumped by every slot change: the vCPU redoes its memory hooks
        self.mmio_devices: list[MmioDevice] = []
        self.console = console or stdout_console
        self.vcpus: dict[int, Arm64Vcpu] = {}  # by vcpu_id, in creation order
        # Maintenance one vCPU does that the others' engines must follow (VcpuCore.
        # apply_remote_maintenance): TLBIs (a generation count) and IC invalidations.
        self.tlb_generation = 0
        # Which vCPUs have run: until a second one does, the first keeps the C hook's inline
        # IC IVAU path (a Linux boot's secondaries start late, and Debian's ftrace patching
        # alone is ~44k invalidations), since nothing else has translated code to go stale.
        self._ran: set[int] = set()
        self._icache_pending: dict[int, set[int] | None] = {}  # vcpu_id -> code pages to drop (None: all)
        # Where guest memory may be non-zero, while no vCPU has run: what the host wrote
        # (None once one has).
        self._host_writes: list[tuple[int, int]] | None = []
        # How many host writes (write_phys, write_phys_pages) each slot has had: a read-only slot
        # (ROM, flash) changes only by these or by being mapped again (slots_version).
        self.host_writes_by_slot: dict[int, int] = {}
        self.host_write_count = 0  # all of them (the GDB session's read cache keys on it)

    @property
    def shared(self) -> bool:
        """More than one vCPU has run: maintenance must be carried between their engines."""
        return len(self._ran) > 1

    def new_engine(self) -> UcAArch64:
        """A Unicorn engine for a new vCPU, with every memory slot and inline device mapped."""
        # UcAArch64 is the class Uc() returns for UC_ARCH_ARM64; named here for the type checker.
        uc = UcAArch64(UC_ARCH_ARM64, UC_MODE_ARM, uca.UC_CPU_ARM64_A57)
        # Unicorn's default 1 GiB translation buffer fills only slowly (single steps translate
        # afresh), so a long debugging session's RSS would creep towards 1 GiB before the first
        # flush. 32 MiB bounds it and still holds far more code than a guest's working set.
        uc.ctl_set_tcg_buffer_size(TCG_BUFFER_SIZE)
        # No "until" address: guests may legitimately execute at 0 (ROM).
        uc.ctl_exits_enabled(True)
        uc.ctl_set_exits([])
        for slot in self.slots.values():
            _map_slot(uc, slot)
        for dev in self.mmio_devices:
            if dev.inline:
                _map_inline(uc, dev)
        return uc

    def _engines(self) -> list[UcAArch64]:
        return [vcpu.uc for vcpu in self.vcpus.values()]

    # KVM_CHECK_EXTENSION
    def check_extension(self, cap: int) -> int:
        answers = {
            KVM_CAP_SET_GUEST_DEBUG: 1,
            KVM_CAP_SET_GUEST_DEBUG2: KVM_GUESTDBG_VALID_MASK,
            KVM_CAP_GUEST_DEBUG_HW_BPS: self.debug_config.brps,
            KVM_CAP_GUEST_DEBUG_HW_WPS: self.debug_config.wrps,
            KVM_CAP_ONE_REG: 1,
            kvm.KVM_CAP_ARM_USER_IRQ: 1,  # timer levels in KvmRun.device_irq_level (timers.py)
        }
        return answers.get(cap, 0)

    # KVM_SET_USER_MEMORY_REGION: guest RAM/ROM. memory_size 0 deletes the slot, as in KVM.
    def set_user_memory_region(self, slot: int, guest_phys_addr: int, memory_size: int, flags: int = 0,
                               userspace_addr: int = 0) -> None:
        """KVM_SET_USER_MEMORY_REGION. `userspace_addr`: memory of the caller's (page aligned,
        alive and `memory_size` long while the slot maps it), which survives the slot's
        deletion as on KVM (a flash bank leaving read-array mode); 0: the VM allocates zeroed
        memory that goes with the slot."""
        if guest_phys_addr % PAGE_SIZE or memory_size % PAGE_SIZE or userspace_addr % PAGE_SIZE:
            raise kvm.einval("memory region must be page aligned")
        if flags & ~(kvm.KVM_MEM_READONLY | kvm.KVM_MEM_LOG_DIRTY_PAGES):
            raise kvm.einval(f"unknown memory region flags {flags:#x}")
        current = self.slots.get(slot)
        if (current is not None and (current.guest_phys_addr, current.memory_size) == (guest_phys_addr, memory_size)
                and userspace_addr in (0, current.userspace_addr)
                and current.flags ^ flags == kvm.KVM_MEM_LOG_DIRTY_PAGES):
            # KVM_MR_FLAGS_ONLY: dirty logging on or off; the memory stays as it is.
            self._log_dirty(current, bool(flags & kvm.KVM_MEM_LOG_DIRTY_PAGES))
            current.flags = flags
            return
        # Refuse an overlap before touching the old slot: a failed call changes nothing, as on KVM.
        if memory_size:
            for other in self.slots.values():
                if other.slot != slot and other.guest_phys_addr < guest_phys_addr + memory_size \
                        and guest_phys_addr < other.guest_phys_addr + other.memory_size:
                    raise KvmErrorExists(f"memory slot overlaps slot {other.slot}")
        old = self.slots.pop(slot, None)
        self.slots_version += 1
        if old is not None:
            self._log_dirty(old, False)
            for uc in self._engines():
                for base, size in _chunks(old.guest_phys_addr, old.memory_size):
                    uc.mem_unmap(base, size)
        if memory_size == 0:
            return
        owned = None
        if not userspace_addr:
            owned = mmap.mmap(-1, memory_size)
            userspace_addr = ctypes.addressof(ctypes.c_char.from_buffer(owned))
        new = MemorySlot(slot, guest_phys_addr, memory_size, flags & ~kvm.KVM_MEM_LOG_DIRTY_PAGES,
                         userspace_addr, owned)
        for uc in self._engines():
            _map_slot(uc, new)
        self.slots[slot] = new
        if flags & kvm.KVM_MEM_LOG_DIRTY_PAGES:
            self._log_dirty(new, True)
            new.flags = flags

    def _log_dirty(self, slot: MemorySlot, on: bool) -> None:
        if bool(slot.flags & kvm.KVM_MEM_LOG_DIRTY_PAGES) == on:
            return
        if slot.readonly:
            raise kvm.einval("dirty logging of a read-only slot (nothing the guest does can dirty it)")
        if on:
            dirtylog.start(slot.userspace_addr, slot.memory_size)
            if slot.owned is not None:
                # The log must end before the memory is unmapped, however the VM goes (its
                # address may be mapped again, by anything).
                slot.log_finalizer = weakref.finalize(slot.owned, dirtylog.forget, slot.userspace_addr)
        else:
            if slot.log_finalizer is not None:
                slot.log_finalizer.detach()
                slot.log_finalizer = None
            dirtylog.stop(slot.userspace_addr)

    # KVM_GET_DIRTY_LOG
    def get_dirty_log(self, slot: int) -> bytes:
        """The pages of memory slot `slot` written since the last call (or since logging began):
        one bit per page, bit n of byte n // 8 for page n, as KVM_GET_DIRTY_LOG fills its bitmap.
        The slot must have KVM_MEM_LOG_DIRTY_PAGES (ENOENT otherwise, as KVM answers)."""
        s = self.slots.get(slot)
        if s is None or not s.flags & kvm.KVM_MEM_LOG_DIRTY_PAGES:
            raise kvm.KvmError(errno.ENOENT, f"memory slot {slot} does not log dirty pages")
        return dirtylog.collect(s.userspace_addr, s.memory_size)

    # KVM_IRQ_LINE
    def irq_line(self, irq: int, level: int) -> None:
        """Drive a vCPU's IRQ input, as arm64 KVM does for a userspace interrupt controller:
        `irq` = (KVM_ARM_IRQ_TYPE_CPU << 24) | (vcpu_index << 16) | KVM_ARM_IRQ_CPU_IRQ.
        Callable from any thread. SPI and PPI lines belong to an in-kernel irqchip, which is
        not modelled (KVM_CREATE_IRQCHIP): ENXIO, as KVM answers without one. FIQ: ENXIO."""
        irq_type = (irq >> kvm.KVM_ARM_IRQ_TYPE_SHIFT) & kvm.KVM_ARM_IRQ_TYPE_MASK
        index = ((irq >> kvm.KVM_ARM_IRQ_VCPU_SHIFT) & kvm.KVM_ARM_IRQ_VCPU_MASK) | (
            ((irq >> kvm.KVM_ARM_IRQ_VCPU2_SHIFT) & kvm.KVM_ARM_IRQ_VCPU2_MASK) << 8)
        num = (irq >> kvm.KVM_ARM_IRQ_NUM_SHIFT) & kvm.KVM_ARM_IRQ_NUM_MASK
        if irq_type != kvm.KVM_ARM_IRQ_TYPE_CPU:
            raise kvm.KvmError(errno.ENXIO, f"irq {irq:#x}: type {irq_type} needs an in-kernel irqchip "
                                            "(KVM_CREATE_IRQCHIP is not modelled; drive the vCPU's IRQ line)")
        vcpu = self.vcpus.get(index)
        if vcpu is None:
            raise kvm.einval(f"irq {irq:#x}: no vCPU {index}")
        if num == kvm.KVM_ARM_IRQ_CPU_FIQ:
            raise kvm.KvmError(errno.ENXIO, "the vCPU's FIQ input is not modelled")
        if num != kvm.KVM_ARM_IRQ_CPU_IRQ:
            raise kvm.einval(f"irq {irq:#x}: no CPU input {num}")
        vcpu.set_irq_line(bool(level))

    def register_mmio_device(self, base: int, size: int, device: Device) -> None:
        """Claim [base, base+size) for `device` (read(offset, size) -> int, write(offset, size, value)).

        Claimed accesses are handled inline, like an in-kernel device; unclaimed ones exit."""
        dev = MmioDevice(base, size, device)
        self.mmio_devices.append(dev)
        self.map_device(dev, True)

    def map_device(self, dev: MmioDevice, inline: bool) -> None:
        """Serve `dev` inline (Unicorn calls it mid-instruction), or unmap it so that its
        accesses fault before they happen: the vCPU then checks watchpoints first and does the
        access itself (see mmio.py). Watching device memory needs the latter. (The debugger's
        watchpoints are the same on every vCPU, so this is decided for all of them.)"""
        if dev.inline == inline:
            return
        for uc in self._engines():
            if inline:
                _map_inline(uc, dev)
            else:
                uc.mem_unmap(dev.base, dev.size)
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
        return b"".join(ctypes.string_at(slot.userspace_addr + off, n) for slot, off, n in self._spans(pa, size))

    def write_phys(self, pa: int, data: bytes) -> None:
        """Write guest RAM (or ROM: this is the loader's and debugger's path, not the guest's)."""
        self.host_write_count += 1
        self._copy_in(pa, data)
        self._drop_translations(pa, len(data))

    def write_phys_pages(self, pieces: list[tuple[int, bytes]]) -> None:
        """write_phys for many pieces (a reverse-execution checkpoint's pages), with translated
        code dropped once for all of them rather than per piece."""
        self.host_write_count += 1
        for pa, data in pieces:
            self._copy_in(pa, data)
        if pieces:
            for uc in self._engines():
                uc.ctl_flush_tb()

    def _copy_in(self, pa: int, data: bytes) -> None:
        """The host's write of `data` at `pa`, counted (written_ranges, host_writes_by_slot)."""
        if self._host_writes is not None and data:
            self._host_writes.append((pa, pa + len(data)))
        at = 0
        for slot, off, n in self._spans(pa, len(data)):
            ctypes.memmove(slot.userspace_addr + off, bytes(data[at:at + n]), n)
            self.host_writes_by_slot[slot.slot] = self.host_writes_by_slot.get(slot.slot, 0) + 1
            at += n

    def written_ranges(self) -> list[tuple[int, int]] | None:
        """Physical ranges outside which guest memory is still all zero (None: unknown, once a
        vCPU has run). Lets a snapshot skip memory nothing has touched."""
        return None if self._host_writes is None else list(self._host_writes)

    def _drop_translations(self, pa: int, size: int) -> None:
        """Forget code translated from [pa, pa+size) on every vCPU: a write to the host memory
        is seen by no engine (a debugger's BRK patch or its restore would otherwise be ignored
        for code that already ran). ctl_remove_cache takes a virtual address (Unicorn
        translates it through the guest's MMU), so it is exact only while the MMU is off;
        otherwise flush everything."""
        if size == 0:
            return
        for uc in self._engines():
            if size <= 16 * PAGE_SIZE and not uc.cpr_read(*SCTLR_EL1) & 1:
                remove_cache(uc, pa, size)
            else:
                uc.ctl_flush_tb()

    def _spans(self, pa: int, size: int) -> list[tuple[MemorySlot, int, int]]:
        """(slot, offset, length) pieces of [pa, pa+size); EFAULT if any byte is in no slot."""
        spans, end = [], pa + size
        while pa < end:
            s = self.slot_for(pa)
            if s is None:
                raise kvm.KvmError(errno.EFAULT, f"guest physical address {pa:#x} is not RAM or ROM")
            n = min(end, s.guest_phys_addr + s.memory_size) - pa
            spans.append((s, pa - s.guest_phys_addr, n))
            pa += n
        return spans

    def note_running(self, vcpu_id: int) -> None:
        """vCPU `vcpu_id` enters run(). From then guest memory may be anything (no more list of
        host writes). The second vCPU to run makes the VM shared: every vCPU's inline IC IVAU
        cache is dropped, so that from now on each invalidation reaches the others
        (VcpuCore._sync_icache)."""
        if vcpu_id in self._ran:
            return
        self._ran.add(vcpu_id)
        self._host_writes = None
        if len(self._ran) == 2:
            for vcpu in self.vcpus.values():
                vcpu.forget_executable_pages()

    def invalidate_icache(self, source_id: int, pages: set[int] | None) -> None:
        """vCPU `source_id` invalidated its instruction cache for these physical pages (None:
        all of it): every other vCPU drops that code before it runs again."""
        for vcpu_id in self.vcpus:
            if vcpu_id == source_id:
                continue
            pending = self._icache_pending.get(vcpu_id, set())
            if pending is None or pages is None:
                self._icache_pending[vcpu_id] = None
            else:
                self._icache_pending[vcpu_id] = pending | pages

    def take_icache_invalidations(self, vcpu_id: int) -> tuple[bool, set[int]]:
        """(drop everything, else these physical pages) that others asked of this vCPU."""
        if vcpu_id not in self._icache_pending:
            return False, set()
        pages = self._icache_pending.pop(vcpu_id)
        return (True, set()) if pages is None else (False, pages)

    def create_vcpu(self, vcpu_id: int = 0) -> Arm64Vcpu:
        """KVM_CREATE_VCPU: ids 0..MAX_VCPUS-1, each once. MPIDR_EL1's Aff0 is the id (QEMU's
        virt numbering up to 8 CPUs)."""
        if vcpu_id in self.vcpus:
            raise kvm.KvmError(errno.EEXIST, f"vCPU {vcpu_id} exists")
        if not 0 <= vcpu_id < MAX_VCPUS:
            raise kvm.einval(f"vCPU id {vcpu_id} is out of range (0..{MAX_VCPUS - 1})")
        vcpu = Arm64Vcpu(self, vcpu_id)
        self.vcpus[vcpu_id] = vcpu
        return vcpu


def _map_slot(uc: UcAArch64, slot: MemorySlot) -> None:
    perms = UC_PROT_READ | UC_PROT_EXEC if slot.readonly else UC_PROT_ALL
    host = slot.userspace_addr
    # Many small Unicorn regions, not one: mem_protect on part of a region copies the whole
    # region's bookkeeping, which made arming a watchpoint on 128 MiB of RAM cost ~180 ms.
    for base, size in _chunks(slot.guest_phys_addr, slot.memory_size):
        uc.mem_map_ptr(base, size, perms, host + base - slot.guest_phys_addr)
        if slot.readonly:
            # mem_map_ptr alone leaves the region writable to a store whose write-protection
            # hook lets it go on; mem_protect marks it read-only, so such stores are dropped.
            uc.mem_protect(base, size, perms)


def _map_inline(uc: UcAArch64, dev: MmioDevice) -> None:
    device = dev.device
    uc.mmio_map(dev.base, dev.size,
                lambda _uc, off, sz, _ud: device.read(off, sz), None,
                lambda _uc, off, sz, val, _ud: device.write(off, sz, val), None)
