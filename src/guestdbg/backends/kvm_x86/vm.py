"""A Linux KVM x86-64 VM and vCPU in pure Python: ioctls through ctypes, guest RAM and kvm_run by mmap.

Theory of operation
-------------------
`X86Vm` is the VM file descriptor and `X86Vcpu` the vCPU one, shaped like the emulated
AArch64 back end (`Arm64Vm`/`Arm64Vcpu`) and typed by `guestdbg.vmapi` (`Vm`, `X86Vcpu`), so
the board, the guest-debug manager and the GDB stub can drive either. The package's modules:

- ioctl.py    ioctl(2) through ctypes (the GIL is released), KvmError with the errno;
- uapi.py     the <linux/kvm.h> x86 structures and ioctl numbers as ctypes;
- vm.py       this module: X86Vm (capabilities, CPUID and MSR lists, vCPUs, interrupt lines);
- memory.py   RAM blocks, memory slots over them, and the slot layout under page traps;
- vcpu.py     X86Vcpu: KVM_RUN and its exits, kick(), KVM_SET_GUEST_DEBUG, KVM_TRANSLATE;
- regs.py     the register ioctls and guestdbg's ONE_REG-style ids for the register list;
- pagetrap.py watchpoints without debug registers (PAGE TRAPS, FETCH ASSIST);
- decode.py   the x86 instruction decoder the fetch assist uses for an instruction's loads.

1. Capabilities are asked on the VM fd (KVM_CHECK_EXTENSION), as api.rst recommends.
2. Guest RAM is host memory that memory slots point into (memory.py), so the VMM and the
   debugger read and write it whatever the slots say.
3. Interrupt lines (KVM_IRQ_LINE): the pc board creates no in-kernel interrupt controller
   (KVM_CREATE_IRQCHIP), so KVM refuses them with ENXIO; `irq_line` says so.

This module is the back end's public entry: `X86Vm`, `X86Vcpu`, `KvmUnavailable` and the
register-id helpers are importable from here.
"""

from __future__ import annotations

import ctypes
import errno
import os

from guestdbg import kvm
from guestdbg.backends.kvm_x86 import uapi as u
from guestdbg.backends.kvm_x86.ioctl import KVM_DEVICE, PAGE_SIZE, KvmUnavailable, ioctl
from guestdbg.backends.kvm_x86.memory import GuestMemory
from guestdbg.backends.kvm_x86.regs import reg_group as reg_group, reg_id as reg_id, reg_name as reg_name
from guestdbg.backends.kvm_x86.regs import reg_size_bytes as reg_size_bytes
from guestdbg.backends.kvm_x86.vcpu import X86Vcpu

__all__ = ["KVM_DEVICE", "PAGE_SIZE", "TSS_ADDR", "KvmUnavailable", "X86Vcpu", "X86Vm",
           "reg_group", "reg_id", "reg_name", "reg_size_bytes"]

# Where KVM_SET_TSS_ADDR puts the three pages VMX needs for real mode: above any RAM we map.
TSS_ADDR = 0xFFFB_D000


class X86Vm(GuestMemory):
    """A KVM VM: capabilities, memory slots over RAM blocks (GuestMemory), and its vCPUs."""

    def __init__(self, device: str = KVM_DEVICE):
        try:
            self.kvm_fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise KvmUnavailable(f"cannot open {device}: {e.strerror}") from None
        self.fd = -1
        try:
            version = ioctl(self.kvm_fd, u.KVM_GET_API_VERSION, what="KVM_GET_API_VERSION")
            if version != u.KVM_API_VERSION:
                raise KvmUnavailable(f"{device}: KVM API version {version}, expected {u.KVM_API_VERSION}")
            self.fd = ioctl(self.kvm_fd, u.KVM_CREATE_VM, 0, what="KVM_CREATE_VM")
        except kvm.KvmError as e:
            os.close(self.kvm_fd)
            raise KvmUnavailable(f"{device}: {e.strerror}") from None
        if self.check_extension(kvm.KVM_CAP_SET_TSS_ADDR):
            try:
                ioctl(self.fd, u.KVM_SET_TSS_ADDR, TSS_ADDR, what="KVM_SET_TSS_ADDR")
            except kvm.KvmError:
                pass  # only VMX needs it (for real mode); a host that refuses it does not
        self.vcpu_mmap_size = ioctl(self.kvm_fd, u.KVM_GET_VCPU_MMAP_SIZE, what="KVM_GET_VCPU_MMAP_SIZE")
        super().__init__()
        self.vcpus: list[X86Vcpu] = []
        self._supported_cpuid: tuple[int, bytes] | None = None

    # KVM_CHECK_EXTENSION, on the VM fd
    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION: 0 for a capability this KVM does not have (or refuses to say)."""
        try:
            return ioctl(self.fd, u.KVM_CHECK_EXTENSION, cap, what="KVM_CHECK_EXTENSION")
        except kvm.KvmError:
            return 0

    # ------------------------------------------------------------------ interrupt lines
    def irq_line(self, irq: int, level: int) -> None:
        """KVM_IRQ_LINE: drive interrupt line `irq` to `level`. This VM has no in-kernel
        interrupt controller (no KVM_CREATE_IRQCHIP), so KVM answers ENXIO, raised as KvmError."""
        req = u.kvm_irq_level(level=level)
        req.irq = irq
        try:
            ioctl(self.fd, u.KVM_IRQ_LINE, req, what=f"KVM_IRQ_LINE(irq {irq}, level {level})")
        except kvm.KvmError as e:
            if e.errno == errno.ENXIO:
                raise kvm.KvmError(errno.ENXIO, f"KVM_IRQ_LINE(irq {irq}, level {level}): this VM has no "
                                                "interrupt controller (the pc board creates no KVM irqchip)") from None
            raise

    # ------------------------------------------------------------------ vCPUs
    def supported_cpuid(self) -> tuple[int, bytes]:
        """KVM_GET_SUPPORTED_CPUID on /dev/kvm, growing the buffer on E2BIG: (nent, entries bytes)."""
        if self._supported_cpuid is None:
            nent = 64
            while True:
                buf, head, entries = u.cpuid2_buffer(nent)
                try:
                    ioctl(self.kvm_fd, u.KVM_GET_SUPPORTED_CPUID, buf, what="KVM_GET_SUPPORTED_CPUID")
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
                ioctl(self.kvm_fd, u.KVM_GET_MSR_INDEX_LIST, buf, what="KVM_GET_MSR_INDEX_LIST")
            except kvm.KvmError as e:
                if e.errno != errno.E2BIG:
                    raise
                n = u.kvm_msr_list.from_buffer(buf).nmsrs
                continue
            count = u.kvm_msr_list.from_buffer(buf).nmsrs
            return list((u.u32 * count).from_buffer(buf, 4))

    def create_vcpu(self, vcpu_id: int = 0) -> X86Vcpu:
        """KVM_CREATE_VCPU, with this host's supported CPUID set on it."""
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

    def __enter__(self) -> X86Vm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
