"""x86 vCPU registers: the state-group ioctls and the ONE_REG-style register list over them.

The x86 state groups (kvm_regs, kvm_sregs, kvm_fpu, kvm_debugregs, kvm_vcpu_events, kvm_xcrs,
kvm_xsave and MSRs) have typed getters/setters (`RegisterGroups`, part of `X86Vcpu`), and a
*register list* of (id, bytes) for snapshots, like the arm64 ONE_REG list. x86 KVM has no
ONE_REG ids for these groups, so guestdbg invents them.

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
"""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from guestdbg import kvm
from guestdbg.backends.kvm_x86 import uapi as u
from guestdbg.backends.kvm_x86.ioctl import ioctl

if TYPE_CHECKING:
    from guestdbg.backends.kvm_x86.vm import X86Vm

KVM_REG_X86 = 0x2000_0000_0000_0000
KVM_REG_SIZE_U64 = 0x0030_0000_0000_0000
GUESTDBG_ID_MARK = 0x47 << 40
GROUP_REGS, GROUP_SREGS, GROUP_FPU, GROUP_DEBUGREGS, GROUP_VCPU_EVENTS, GROUP_XCRS, GROUP_XSAVE, GROUP_MSR = range(1, 9)
GROUP_NAMES = {GROUP_REGS: "regs", GROUP_SREGS: "sregs", GROUP_FPU: "fpu", GROUP_DEBUGREGS: "debugregs",
               GROUP_VCPU_EVENTS: "vcpu_events", GROUP_XCRS: "xcrs", GROUP_XSAVE: "xsave", GROUP_MSR: "msr"}
_GROUP_TYPES: dict[int, type[ctypes.Structure]] = {
    GROUP_REGS: u.kvm_regs, GROUP_SREGS: u.kvm_sregs, GROUP_FPU: u.kvm_fpu, GROUP_DEBUGREGS: u.kvm_debugregs,
    GROUP_VCPU_EVENTS: u.kvm_vcpu_events, GROUP_XCRS: u.kvm_xcrs, GROUP_XSAVE: u.kvm_xsave}


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

_S = TypeVar("_S", bound=ctypes.Structure)


class RegisterGroups:
    """The register ioctls of a vCPU fd, and the register list over them (a part of X86Vcpu)."""

    vm: X86Vm
    fd: int
    has_xsave: bool
    has_xcrs: bool
    has_debugregs: bool
    has_vcpu_events: bool
    _snapshot_msrs: list[int] | None

    def _get(self, request: int, ctype: type[_S], what: str) -> _S:
        obj = ctype()
        ioctl(self.fd, request, obj, what=what)
        return obj

    def get_regs(self) -> u.kvm_regs:
        return self._get(u.KVM_GET_REGS, u.kvm_regs, "KVM_GET_REGS")

    def set_regs(self, regs: u.kvm_regs) -> None:
        ioctl(self.fd, u.KVM_SET_REGS, regs, what="KVM_SET_REGS")

    def get_sregs(self) -> u.kvm_sregs:
        return self._get(u.KVM_GET_SREGS, u.kvm_sregs, "KVM_GET_SREGS")

    def set_sregs(self, sregs: u.kvm_sregs) -> None:
        ioctl(self.fd, u.KVM_SET_SREGS, sregs, what="KVM_SET_SREGS")

    def get_fpu(self) -> u.kvm_fpu:
        return self._get(u.KVM_GET_FPU, u.kvm_fpu, "KVM_GET_FPU")

    def set_fpu(self, fpu: u.kvm_fpu) -> None:
        ioctl(self.fd, u.KVM_SET_FPU, fpu, what="KVM_SET_FPU")

    def get_debugregs(self) -> u.kvm_debugregs:
        return self._get(u.KVM_GET_DEBUGREGS, u.kvm_debugregs, "KVM_GET_DEBUGREGS")

    def set_debugregs(self, dregs: u.kvm_debugregs) -> None:
        ioctl(self.fd, u.KVM_SET_DEBUGREGS, dregs, what="KVM_SET_DEBUGREGS")

    def get_vcpu_events(self) -> u.kvm_vcpu_events:
        """KVM_GET_VCPU_EVENTS (x86: struct kvm_vcpu_events)."""
        return self._get(u.KVM_GET_VCPU_EVENTS, u.kvm_vcpu_events, "KVM_GET_VCPU_EVENTS")

    def set_vcpu_events(self, events: u.kvm_vcpu_events) -> None:
        """KVM_SET_VCPU_EVENTS (x86: struct kvm_vcpu_events; pending exception, NMI, SMI)."""
        ioctl(self.fd, u.KVM_SET_VCPU_EVENTS, events, what="KVM_SET_VCPU_EVENTS")

    def get_xsave(self) -> u.kvm_xsave:
        return self._get(u.KVM_GET_XSAVE, u.kvm_xsave, "KVM_GET_XSAVE")

    def set_xsave(self, xsave: u.kvm_xsave) -> None:
        ioctl(self.fd, u.KVM_SET_XSAVE, xsave, what="KVM_SET_XSAVE")

    def get_xcrs(self) -> u.kvm_xcrs:
        return self._get(u.KVM_GET_XCRS, u.kvm_xcrs, "KVM_GET_XCRS")

    def set_xcrs(self, xcrs: u.kvm_xcrs) -> None:
        ioctl(self.fd, u.KVM_SET_XCRS, xcrs, what="KVM_SET_XCRS")

    def get_msrs(self, indices: list[int]) -> dict[int, int]:
        """KVM_GET_MSRS. KVM stops at the first MSR it cannot read; that one is an error."""
        buf, _head, entries = u.msrs_buffer(indices)
        n = ioctl(self.fd, u.KVM_GET_MSRS, buf, what="KVM_GET_MSRS")
        if n != len(indices):
            raise kvm.KvmError(errno.EINVAL, f"KVM_GET_MSRS: MSR {indices[n]:#x} cannot be read")
        return {e.index: e.data for e in entries}

    def set_msrs(self, values: dict[int, int]) -> None:
        buf, _head, entries = u.msrs_buffer(list(values))
        for e in entries:
            e.data = values[e.index]
        n = ioctl(self.fd, u.KVM_SET_MSRS, buf, what="KVM_SET_MSRS")
        if n != len(values):
            raise kvm.KvmError(errno.EINVAL, f"KVM_SET_MSRS: MSR {list(values)[n]:#x} was refused")

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
                        pass  # listed but not readable on this host: not carried
            self._snapshot_msrs = usable
        return self._snapshot_msrs

    def get_reg_list(self) -> list[int]:
        """KVM_GET_REG_LIST: every register id a snapshot carries, in the order a restore
        applies them."""
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
        getter: dict[int, Callable[[], ctypes.Structure]] = {
            GROUP_REGS: self.get_regs, GROUP_SREGS: self.get_sregs, GROUP_FPU: self.get_fpu,
            GROUP_DEBUGREGS: self.get_debugregs, GROUP_VCPU_EVENTS: self.get_vcpu_events,
            GROUP_XCRS: self.get_xcrs, GROUP_XSAVE: self.get_xsave}
        return bytes(getter[group]())

    def set_reg_bytes(self, rid: int, data: bytes) -> None:
        group, index = reg_group(rid)
        if len(data) != reg_size_bytes(rid):
            raise kvm.einval(f"{reg_name(rid)}: {len(data)} bytes, expected {reg_size_bytes(rid)}")
        if group == GROUP_MSR:
            self.set_msrs({index: int.from_bytes(data, "little")})
            return
        obj: Any = _GROUP_TYPES[group].from_buffer_copy(data)
        if group == GROUP_VCPU_EVENTS:
            # GET reports these fields but does not flag them; ask SET to restore them too.
            obj.flags |= KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR
        setter: dict[int, Callable[[Any], None]] = {
            GROUP_REGS: self.set_regs, GROUP_SREGS: self.set_sregs, GROUP_FPU: self.set_fpu,
            GROUP_DEBUGREGS: self.set_debugregs, GROUP_VCPU_EVENTS: self.set_vcpu_events,
            GROUP_XCRS: self.set_xcrs, GROUP_XSAVE: self.set_xsave}
        setter[group](obj)

    def save_registers(self) -> list[tuple[int, bytes]]:
        """(id, bytes) for every id of get_reg_list(), in restore order."""
        return [(rid, self.get_reg_bytes(rid)) for rid in self.get_reg_list()]

    def restore_registers(self, saved: list[tuple[int, bytes]]) -> None:
        for rid, data in saved:
            self.set_reg_bytes(rid, data)

    # ONE_REG-shaped access, as the arm64 back end offers (values as integers).
    def get_one_reg(self, reg_id: int) -> int:
        """KVM_GET_ONE_REG over the ids above: the group's bytes as a little-endian integer."""
        return int.from_bytes(self.get_reg_bytes(reg_id), "little")

    def set_one_reg(self, reg_id: int, value: int) -> None:
        """KVM_SET_ONE_REG over the ids above; EINVAL for a value wider than the register."""
        size = reg_size_bytes(reg_id)
        if not 0 <= value < 1 << (8 * size):
            raise kvm.einval(f"value does not fit {reg_name(reg_id)} ({size} bytes)")
        self.set_reg_bytes(reg_id, value.to_bytes(size, "little"))
