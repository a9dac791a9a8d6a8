"""The vCPU interface: what every back end offers the layers above it, as typed Protocols.

Both back ends (the emulated AArch64 vCPU in `backends/unicorn_arm64/` and x86-64 on real KVM
in `backends/kvm_x86/`) implement these shapes, so the board, the debug policy and the tools
above them never ask which one they hold. The calls are KVM's ioctls under their uAPI names
(Documentation/virt/kvm/api.rst): KVM_CHECK_EXTENSION is `check_extension`, KVM_RUN is `run`,
KVM_IRQ_LINE is `irq_line`, and so on. The few guestdbg extensions (watch traps, `kick`,
`translate`) are marked as such.

Per-architecture calls whose KVM structs differ (KVM_SET_VCPU_EVENTS carries an arm64
`ext_dabt_pending` but an x86 exception/NMI/SMI block) are in `Arm64Vcpu`/`X86Vcpu`, not in the
common `Vcpu`.

This module imports only `kvm` (names and numbers); everything may import it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

from guestdbg import kvm


# Where a guest's console output goes (semihosting on the VM, the UART on a board).
Console = Callable[[bytes], None]


def stdout_console(data: bytes) -> None:
    """The default Console: the host's standard output, unbuffered so output interleaves with
    the stub's log as it happens."""
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


@dataclass(frozen=True)
class WatchTrap:
    """Trap loads and/or stores to exactly [start, end) (guest virtual) by protecting just the
    pages they touch: a guestdbg vCPU extension (page protection on the emulated vCPU,
    read-only memory slots on KVM). A hit comes back as a KVM_EXIT_DEBUG watchpoint exit.
    `code` marks traps the manager keeps on its software breakpoints: the emulated vCPU also
    traps stores to the same physical bytes through any other virtual address."""

    start: int
    end: int
    loads: bool = True
    stores: bool = True
    code: bool = False


@runtime_checkable
class Vcpu(Protocol):
    """One virtual CPU (a KVM vCPU file descriptor's ioctls)."""

    # struct kvm_run.immediate_exit: the next run() returns KVM_EXIT_INTR at once.
    immediate_exit: bool

    def run(self) -> kvm.KvmRun:
        """KVM_RUN: execute until something needs the VMM, and say what."""

    def kick(self, timeout: float = 1.0) -> None:
        """Make a running (or the next) run() return KVM_EXIT_INTR. Callable from any thread
        (KVM: immediate_exit plus a signal to the vCPU thread)."""

    def set_guest_debug(self, control: int, arch: Any = None) -> None:
        """KVM_SET_GUEST_DEBUG with the architecture's struct kvm_guest_debug_arch."""

    def set_watch_traps(self, traps: list[WatchTrap]) -> None:
        """guestdbg extension: replace the debugger's page traps (see WatchTrap)."""

    def access_in_flight(self) -> bool:
        """Is an MMIO/PIO access waiting for the next run() to complete it (no snapshot now)?"""

    @property
    def pc(self) -> int:
        """The program counter (AArch64 PC, x86 RIP)."""

    def translate(self, va: int, access: str = "read") -> int:
        """guestdbg extension (KVM_TRANSLATE on x86): the guest-physical address of `va` under
        the vCPU's current translation regime; raises on a fault."""

    def get_reg_list(self) -> list[int]:
        """KVM_GET_REG_LIST: the ONE_REG ids a VMM saves and restores (migration's list). The
        debugger's own state is never in it."""

    def get_one_reg(self, reg_id: int) -> int:
        """KVM_GET_ONE_REG."""

    def set_one_reg(self, reg_id: int, value: int) -> None:
        """KVM_SET_ONE_REG."""


@runtime_checkable
class Arm64Vcpu(Vcpu, Protocol):
    """An arm64 vCPU: KVM_SET_VCPU_EVENTS carries only an external data abort."""

    def run(self, *, icount_limit: int | None = None, turn_end: int | None = None) -> kvm.KvmRun:
        """KVM_RUN; with `icount_limit`, stop after exactly that many retired instructions
        (EXIT_ICOUNT_LIMIT), which only the emulated back end can do; with `turn_end`, at the
        last block boundary before that count (a scheduler's turn, cheaper)."""

    def set_vcpu_events(self, *, ext_dabt_pending: bool = False) -> None:
        """KVM_SET_VCPU_EVENTS (arm64): inject an external data abort for an MMIO access the
        VMM cannot handle."""

    @property
    def icount(self) -> int:
        """Instructions retired (exact between run() calls): the virtual clock's source."""


@runtime_checkable
class X86Vcpu(Vcpu, Protocol):
    """An x86-64 vCPU: the register ioctls come as structs (kvm_regs, kvm_sregs, ...)."""

    def set_vcpu_events(self, events: Any) -> None:
        """KVM_SET_VCPU_EVENTS (x86): struct kvm_vcpu_events."""

    def get_vcpu_events(self) -> Any:
        """KVM_GET_VCPU_EVENTS (x86)."""


class MemorySlot(Protocol):
    """A KVM_SET_USER_MEMORY_REGION slot as the VMM set it (struct kvm_userspace_memory_region)."""

    @property
    def slot(self) -> int: ...
    @property
    def guest_phys_addr(self) -> int: ...
    @property
    def memory_size(self) -> int: ...
    @property
    def flags(self) -> int: ...


@runtime_checkable
class Vm(Protocol):
    """One virtual machine (a KVM VM file descriptor's ioctls, plus guest-physical access)."""

    # The memory slots by slot number, as set (snapshots walk them).
    @property
    def slots(self) -> Mapping[int, MemorySlot]: ...

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION: 0 means "not supported"; KVM_CAP_GUEST_DEBUG_HW_BPS/_WPS give
        the slot counts."""

    def set_user_memory_region(self, slot: int, guest_phys_addr: int, memory_size: int, flags: int = 0) -> None:
        """KVM_SET_USER_MEMORY_REGION: memory_size 0 deletes the slot; KVM_MEM_READONLY makes
        writes exit as MMIO."""

    def read_phys(self, pa: int, size: int) -> bytes:
        """Read guest-physical memory (the VMM's own mapping of guest RAM/ROM)."""

    def write_phys(self, pa: int, data: bytes) -> None:
        """Write guest-physical memory, ROM included (the VMM loads images and patches)."""

    def create_vcpu(self, vcpu_id: int = 0) -> Vcpu:
        """KVM_CREATE_VCPU."""

    def irq_line(self, irq: int, level: int) -> None:
        """KVM_IRQ_LINE: drive an interrupt line of the VM's interrupt controller. Without one
        it fails with ENXIO, as KVM does before KVM_CREATE_IRQCHIP."""
