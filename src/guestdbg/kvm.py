"""Linux KVM uAPI names and numbers shared by every guestdbg back end.

Values are those of <linux/kvm.h> (see Documentation/virt/kvm/api.rst), so a reader who knows
KVM can grep for them. The emulated back ends answer with these same numbers; the real KVM back
end passes them to the kernel unchanged.
"""

from __future__ import annotations

import errno as _errno
from dataclasses import dataclass, field

KVMIO = 0xAE

# Capabilities (KVM_CHECK_EXTENSION), every one a back end asks for or `guestdbg caps` shows.
KVM_CAP_SET_TSS_ADDR = 4  # x86
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_SET_GUEST_DEBUG = 23
KVM_CAP_VCPU_EVENTS = 41
KVM_CAP_DEBUGREGS = 50  # x86
KVM_CAP_XSAVE = 55  # x86
KVM_CAP_XCRS = 56  # x86
KVM_CAP_ONE_REG = 70
KVM_CAP_READONLY_MEM = 81
KVM_CAP_GUEST_DEBUG_HW_BPS = 119
KVM_CAP_GUEST_DEBUG_HW_WPS = 120
KVM_CAP_IMMEDIATE_EXIT = 136
KVM_CAP_ARM_USER_IRQ = 144  # arm64: timer/PMU output levels in kvm_run.s.regs.device_irq_level
KVM_CAP_SET_GUEST_DEBUG2 = 195

#: Number -> name of every capability above: the one table the CLI and the monitor print from.
CAPABILITY_NAMES: dict[int, str] = {
    value: name for name, value in globals().items() if name.startswith("KVM_CAP_")
}

#: What the debugger relies on, on every architecture (`guestdbg caps`, `monitor info caps`).
DEBUG_CAPABILITIES = (KVM_CAP_SET_GUEST_DEBUG, KVM_CAP_ONE_REG, KVM_CAP_GUEST_DEBUG_HW_BPS,
                      KVM_CAP_GUEST_DEBUG_HW_WPS, KVM_CAP_SET_GUEST_DEBUG2)

#: What the x86 back end on Linux KVM also needs from the host (`guestdbg caps --arch x86_64`).
X86_CAPABILITIES = DEBUG_CAPABILITIES + (
    KVM_CAP_READONLY_MEM, KVM_CAP_IMMEDIATE_EXIT, KVM_CAP_DEBUGREGS, KVM_CAP_VCPU_EVENTS,
    KVM_CAP_XSAVE, KVM_CAP_XCRS, KVM_CAP_NR_MEMSLOTS, KVM_CAP_SET_TSS_ADDR,
)

# struct kvm_guest_debug.control
KVM_GUESTDBG_ENABLE = 0x00000001
KVM_GUESTDBG_SINGLESTEP = 0x00000002
KVM_GUESTDBG_USE_SW_BP = 0x00010000
KVM_GUESTDBG_USE_HW = 0x00020000  # arm64 name
KVM_GUESTDBG_USE_HW_BP = 0x00020000  # x86 name of the same bit
KVM_GUESTDBG_INJECT_DB = 0x00040000  # x86 only
KVM_GUESTDBG_INJECT_BP = 0x00080000  # x86 only
KVM_GUESTDBG_BLOCKIRQ = 0x00100000  # x86 only

# kvm_run.exit_reason
KVM_EXIT_UNKNOWN = 0
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_SYSTEM_EVENT = 24
# guestdbg's own exit reason, outside KVM's numbering: run(icount_limit=N) retired exactly N
# instructions. KVM has no instruction budget; QEMU's icount ends such slices inside its vCPU loop.
EXIT_ICOUNT_LIMIT = 1000

EXIT_REASON_NAMES = {
    KVM_EXIT_UNKNOWN: "KVM_EXIT_UNKNOWN",
    KVM_EXIT_IO: "KVM_EXIT_IO",
    KVM_EXIT_HYPERCALL: "KVM_EXIT_HYPERCALL",
    KVM_EXIT_DEBUG: "KVM_EXIT_DEBUG",
    KVM_EXIT_HLT: "KVM_EXIT_HLT",
    KVM_EXIT_MMIO: "KVM_EXIT_MMIO",
    KVM_EXIT_SHUTDOWN: "KVM_EXIT_SHUTDOWN",
    KVM_EXIT_FAIL_ENTRY: "KVM_EXIT_FAIL_ENTRY",
    KVM_EXIT_INTR: "KVM_EXIT_INTR",
    KVM_EXIT_INTERNAL_ERROR: "KVM_EXIT_INTERNAL_ERROR",
    KVM_EXIT_SYSTEM_EVENT: "KVM_EXIT_SYSTEM_EVENT",
    EXIT_ICOUNT_LIMIT: "EXIT_ICOUNT_LIMIT",
}

# kvm_run.internal.suberror
KVM_INTERNAL_ERROR_EMULATION = 1
KVM_INTERNAL_ERROR_SIMUL_EX = 2
KVM_INTERNAL_ERROR_DELIVERY_EV = 3
KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON = 4

# kvm_run.system_event.type
KVM_SYSTEM_EVENT_SHUTDOWN = 1
KVM_SYSTEM_EVENT_RESET = 2
KVM_SYSTEM_EVENT_CRASH = 3

# kvm_run.flags (arm64): hsr_high is valid.
KVM_DEBUG_ARCH_HSR_HIGH_VALID = 1 << 0

# struct kvm_userspace_memory_region.flags
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1

KVM_ARM_MAX_DBG_REGS = 16

# KVM_IRQ_LINE's `irq` on arm64 (arch/arm64/include/uapi/asm/kvm.h, Documentation/virt/kvm/
# api.rst): bits [31:28] vcpu2_index, [27:24] irq_type, [23:16] vcpu_index, [15:0] irq_id.
# Without an in-kernel irqchip a userspace GIC drives a vCPU's own IRQ/FIQ inputs with type CPU.
KVM_ARM_IRQ_VCPU2_SHIFT = 28
KVM_ARM_IRQ_VCPU2_MASK = 0xF
KVM_ARM_IRQ_TYPE_SHIFT = 24
KVM_ARM_IRQ_TYPE_MASK = 0xF
KVM_ARM_IRQ_VCPU_SHIFT = 16
KVM_ARM_IRQ_VCPU_MASK = 0xFF
KVM_ARM_IRQ_NUM_SHIFT = 0
KVM_ARM_IRQ_NUM_MASK = 0xFFFF
KVM_ARM_IRQ_TYPE_CPU = 0
KVM_ARM_IRQ_TYPE_SPI = 1
KVM_ARM_IRQ_TYPE_PPI = 2
KVM_ARM_IRQ_CPU_IRQ = 0
KVM_ARM_IRQ_CPU_FIQ = 1

# kvm_run.s.regs.device_irq_level (arm64, KVM_CAP_ARM_USER_IRQ): the output levels of the vCPU's
# own devices, for a VMM with a userspace interrupt controller to drive its PPIs from.
KVM_ARM_DEV_EL1_VTIMER = 1 << 0
KVM_ARM_DEV_EL1_PTIMER = 1 << 1
KVM_ARM_DEV_PMU = 1 << 2


class KvmError(OSError):
    """What a failing KVM ioctl reports: an errno (EINVAL, ENOENT, E2BIG, ...) and a message."""

    def __init__(self, err: int, message: str):
        super().__init__(err, f"{_errno.errorcode.get(err, err)}: {message}")


def einval(message: str) -> KvmError:
    return KvmError(_errno.EINVAL, message)


def enoent(message: str) -> KvmError:
    return KvmError(_errno.ENOENT, message)


@dataclass
class DebugExitArm64:
    """kvm_run.debug.arch on arm64: ESR_EL2 split in two words, and FAR for watchpoints."""

    hsr: int
    hsr_high: int = 0
    far: int = 0

    @property
    def ec(self) -> int:
        return (self.hsr >> 26) & 0x3F


@dataclass
class DebugExitX86:
    """kvm_run.debug.arch on x86 (struct kvm_debug_exit_arch): exception is the vector (1 = #DB,
    3 = #BP), pc the linear RIP, dr6/dr7 the debug status and control the exit saw."""

    exception: int
    pc: int
    dr6: int = 0
    dr7: int = 0


# kvm_run.io.direction
KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1


@dataclass
class IoExit:
    """kvm_run.io (x86 port I/O): `count` accesses of `size` bytes each. `data` holds size*count
    bytes: what the guest wrote (OUT), or what the VMM fills in for an IN before the next run()."""

    direction: int
    size: int
    port: int
    count: int
    data: bytearray = field(default_factory=bytearray)

    @property
    def is_out(self) -> bool:
        return self.direction == KVM_EXIT_IO_OUT


@dataclass
class MmioExit:
    """kvm_run.mmio. For a read, the VMM fills `data` before the next run() completes it."""

    phys_addr: int
    len: int
    is_write: bool
    data: bytearray = field(default_factory=lambda: bytearray(8))


@dataclass
class SystemEventExit:
    """kvm_run.system_event: type is KVM_SYSTEM_EVENT_*, data[0] carries an exit status.
    `source` says what the guest used (guestdbg's addition), e.g. "PSCI SYSTEM_OFF"."""

    type: int
    data: list[int] = field(default_factory=list)
    source: str = ""

    @property
    def ndata(self) -> int:
        return len(self.data)


@dataclass
class InternalErrorExit:
    """kvm_run.internal, with a human-readable message (guestdbg's addition)."""

    suberror: int
    message: str
    data: list[int] = field(default_factory=list)

    @property
    def ndata(self) -> int:
        return len(self.data)


@dataclass
class KvmRun:
    """What run() returns: the exit reason and the payload that goes with it, as in kvm_run."""

    exit_reason: int
    flags: int = 0
    debug: DebugExitArm64 | DebugExitX86 | None = None
    mmio: MmioExit | None = None
    io: IoExit | None = None
    system_event: SystemEventExit | None = None
    internal: InternalErrorExit | None = None
    # arm64 KVM_CAP_ARM_USER_IRQ: set (to the new kvm_run.s.regs.device_irq_level bits) on the
    # KVM_EXIT_INTR a change of the timers' output levels causes; None on every other exit.
    device_irq_level: int | None = None

    @property
    def exit_reason_name(self) -> str:
        return EXIT_REASON_NAMES.get(self.exit_reason, str(self.exit_reason))

    def __str__(self) -> str:
        payload = self.debug or self.mmio or self.io or self.system_event or self.internal
        return f"{self.exit_reason_name}({payload})" if payload else self.exit_reason_name
