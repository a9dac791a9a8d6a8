"""The Linux KVM x86-64 uAPI as ctypes: structures, ioctl numbers, capability and MSR numbers.

Every structure is named and laid out as in <linux/kvm.h> and <asm/kvm.h> (x86), field for
field, so a reader can grep either side. Flexible arrays (`entries[]`) are left out of the
base structure; `msrs_buffer` and `cpuid2_buffer` build a header followed by N entries.
tests/integration/test_kvm_x86.py compiles a C program against the installed headers and checks every
size, the offsets that matter and every ioctl number here.
"""

from __future__ import annotations

import ctypes

u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64

# ---------------------------------------------------------------------- ioctl number encoding
# <asm-generic/ioctl.h>: dir(2) | size(14) | type(8) | nr(8), from the top bit down.
_IOC_NRBITS, _IOC_TYPEBITS, _IOC_SIZEBITS = 8, 8, 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def _IOC(direction: int, type_: int, nr: int, size: int) -> int:
    if not 0 <= size < 1 << _IOC_SIZEBITS:
        raise ValueError(f"ioctl argument size {size} does not fit {_IOC_SIZEBITS} bits")
    return (direction << _IOC_DIRSHIFT) | (type_ << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT) | (size << _IOC_SIZESHIFT)


def _IO(type_: int, nr: int) -> int:
    return _IOC(_IOC_NONE, type_, nr, 0)


def _IOR(type_: int, nr: int, ctype) -> int:
    return _IOC(_IOC_READ, type_, nr, ctypes.sizeof(ctype))


def _IOW(type_: int, nr: int, ctype) -> int:
    return _IOC(_IOC_WRITE, type_, nr, ctypes.sizeof(ctype))


def _IOWR(type_: int, nr: int, ctype) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, type_, nr, ctypes.sizeof(ctype))


KVMIO = 0xAE


# ---------------------------------------------------------------------- structures (asm/kvm.h, x86)
class kvm_regs(ctypes.Structure):
    _fields_ = [(name, u64) for name in (
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")]


class kvm_segment(ctypes.Structure):
    _fields_ = [
        ("base", u64), ("limit", u32), ("selector", u16), ("type", u8),
        ("present", u8), ("dpl", u8), ("db", u8), ("s", u8), ("l", u8), ("g", u8), ("avl", u8),
        ("unusable", u8), ("padding", u8),
    ]


class kvm_dtable(ctypes.Structure):
    _fields_ = [("base", u64), ("limit", u16), ("padding", u16 * 3)]


KVM_NR_INTERRUPTS = 256


class kvm_sregs(ctypes.Structure):
    _fields_ = [
        ("cs", kvm_segment), ("ds", kvm_segment), ("es", kvm_segment), ("fs", kvm_segment),
        ("gs", kvm_segment), ("ss", kvm_segment), ("tr", kvm_segment), ("ldt", kvm_segment),
        ("gdt", kvm_dtable), ("idt", kvm_dtable),
        ("cr0", u64), ("cr2", u64), ("cr3", u64), ("cr4", u64), ("cr8", u64),
        ("efer", u64), ("apic_base", u64),
        ("interrupt_bitmap", u64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    ]


class kvm_fpu(ctypes.Structure):
    _fields_ = [
        ("fpr", (u8 * 16) * 8), ("fcw", u16), ("fsw", u16), ("ftwx", u8), ("pad1", u8),
        ("last_opcode", u16), ("last_ip", u64), ("last_dp", u64),
        ("xmm", (u8 * 16) * 16), ("mxcsr", u32), ("pad2", u32),
    ]


class kvm_msr_entry(ctypes.Structure):
    _fields_ = [("index", u32), ("reserved", u32), ("data", u64)]


class kvm_msrs(ctypes.Structure):
    """Header only; entries[] follow it (see msrs_buffer)."""
    _fields_ = [("nmsrs", u32), ("pad", u32)]


class kvm_msr_list(ctypes.Structure):
    """Header only; u32 indices[] follow it."""
    _fields_ = [("nmsrs", u32)]


class kvm_cpuid_entry2(ctypes.Structure):
    _fields_ = [("function", u32), ("index", u32), ("flags", u32),
                ("eax", u32), ("ebx", u32), ("ecx", u32), ("edx", u32), ("padding", u32 * 3)]


class kvm_cpuid2(ctypes.Structure):
    """Header only; entries[] follow it (see cpuid2_buffer)."""
    _fields_ = [("nent", u32), ("padding", u32)]


KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1 << 0  # sic, as the header spells it


class kvm_debug_exit_arch(ctypes.Structure):
    _fields_ = [("exception", u32), ("pad", u32), ("pc", u64), ("dr6", u64), ("dr7", u64)]


class kvm_guest_debug_arch(ctypes.Structure):
    """debugreg[0..3] = DR0-DR3, [4], [5] unused, [6] = DR6, [7] = DR7."""
    _fields_ = [("debugreg", u64 * 8)]


class _vcpu_events_exception(ctypes.Structure):
    _fields_ = [("injected", u8), ("nr", u8), ("has_error_code", u8), ("pending", u8), ("error_code", u32)]


class _vcpu_events_interrupt(ctypes.Structure):
    _fields_ = [("injected", u8), ("nr", u8), ("soft", u8), ("shadow", u8)]


class _vcpu_events_nmi(ctypes.Structure):
    _fields_ = [("injected", u8), ("pending", u8), ("masked", u8), ("pad", u8)]


class _vcpu_events_smi(ctypes.Structure):
    _fields_ = [("smm", u8), ("pending", u8), ("smm_inside_nmi", u8), ("latched_init", u8)]


class _vcpu_events_triple_fault(ctypes.Structure):
    _fields_ = [("pending", u8)]


class kvm_vcpu_events(ctypes.Structure):
    _fields_ = [
        ("exception", _vcpu_events_exception), ("interrupt", _vcpu_events_interrupt),
        ("nmi", _vcpu_events_nmi), ("sipi_vector", u32), ("flags", u32),
        ("smi", _vcpu_events_smi), ("triple_fault", _vcpu_events_triple_fault),
        ("reserved", u8 * 26), ("exception_has_payload", u8), ("exception_payload", u64),
    ]


class kvm_debugregs(ctypes.Structure):
    _fields_ = [("db", u64 * 4), ("dr6", u64), ("dr7", u64), ("flags", u64), ("reserved", u64 * 9)]


class kvm_xsave(ctypes.Structure):
    """The legacy 4 KiB form (KVM_GET_XSAVE); KVM_CAP_XSAVE2 may ask for more (extra[])."""
    _fields_ = [("region", u32 * 1024)]


KVM_MAX_XCRS = 16


class kvm_xcr(ctypes.Structure):
    _fields_ = [("xcr", u32), ("reserved", u32), ("value", u64)]


class kvm_xcrs(ctypes.Structure):
    _fields_ = [("nr_xcrs", u32), ("flags", u32), ("xcrs", kvm_xcr * KVM_MAX_XCRS), ("padding", u64 * 16)]


# ---------------------------------------------------------------------- structures (linux/kvm.h)
class kvm_userspace_memory_region(ctypes.Structure):
    _fields_ = [("slot", u32), ("flags", u32), ("guest_phys_addr", u64), ("memory_size", u64),
                ("userspace_addr", u64)]


class kvm_guest_debug(ctypes.Structure):
    _fields_ = [("control", u32), ("pad", u32), ("arch", kvm_guest_debug_arch)]


class kvm_translation(ctypes.Structure):
    _fields_ = [("linear_address", u64), ("physical_address", u64), ("valid", u8), ("writeable", u8),
                ("usermode", u8), ("pad", u8 * 5)]


class _irq_level_union(ctypes.Union):
    _fields_ = [("irq", u32), ("status", ctypes.c_int32)]


class kvm_irq_level(ctypes.Structure):
    """KVM_IRQ_LINE's argument: the line (or, for KVM_IRQ_LINE_STATUS, the status) and its level."""
    _anonymous_ = ("u",)
    _fields_ = [("u", _irq_level_union), ("level", u32)]


# kvm_run's exit payload union: only the members guestdbg reads on x86.
class _run_hw(ctypes.Structure):
    _fields_ = [("hardware_exit_reason", u64)]


class _run_fail_entry(ctypes.Structure):
    _fields_ = [("hardware_entry_failure_reason", u64), ("cpu", u32)]


class _run_ex(ctypes.Structure):
    _fields_ = [("exception", u32), ("error_code", u32)]


KVM_EXIT_IO_IN, KVM_EXIT_IO_OUT = 0, 1


class _run_io(ctypes.Structure):
    _fields_ = [("direction", u8), ("size", u8), ("port", u16), ("count", u32), ("data_offset", u64)]


class _run_debug(ctypes.Structure):
    _fields_ = [("arch", kvm_debug_exit_arch)]


class _run_mmio(ctypes.Structure):
    _fields_ = [("phys_addr", u64), ("data", u8 * 8), ("len", u32), ("is_write", u8)]


class _run_internal(ctypes.Structure):
    _fields_ = [("suberror", u32), ("ndata", u32), ("data", u64 * 16)]


class _run_system_event(ctypes.Structure):
    _fields_ = [("type", u32), ("ndata", u32), ("data", u64 * 16)]  # data[0] aliases `flags`


class _run_exit_union(ctypes.Union):
    _fields_ = [("hw", _run_hw), ("fail_entry", _run_fail_entry), ("ex", _run_ex), ("io", _run_io),
                ("debug", _run_debug), ("mmio", _run_mmio), ("internal", _run_internal),
                ("system_event", _run_system_event), ("padding", ctypes.c_char * 256)]


SYNC_REGS_SIZE_BYTES = 2048


class kvm_run(ctypes.Structure):
    """The vCPU's shared page, overlaid on the mmap of the vCPU fd (its first bytes)."""
    _anonymous_ = ("u",)
    _fields_ = [
        ("request_interrupt_window", u8), ("immediate_exit", u8), ("padding1", u8 * 6),
        ("exit_reason", u32), ("ready_for_interrupt_injection", u8), ("if_flag", u8), ("flags", u16),
        ("cr8", u64), ("apic_base", u64),
        ("u", _run_exit_union),
        ("kvm_valid_regs", u64), ("kvm_dirty_regs", u64),
        ("s", ctypes.c_char * SYNC_REGS_SIZE_BYTES),
    ]


# ---------------------------------------------------------------------- ioctls
# System (/dev/kvm) ioctls
KVM_GET_API_VERSION = _IO(KVMIO, 0x00)
KVM_CREATE_VM = _IO(KVMIO, 0x01)
KVM_GET_MSR_INDEX_LIST = _IOWR(KVMIO, 0x02, kvm_msr_list)
KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03)
KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04)
KVM_GET_SUPPORTED_CPUID = _IOWR(KVMIO, 0x05, kvm_cpuid2)
# VM ioctls
KVM_CREATE_VCPU = _IO(KVMIO, 0x41)
KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, kvm_userspace_memory_region)
KVM_SET_TSS_ADDR = _IO(KVMIO, 0x47)
KVM_SET_IDENTITY_MAP_ADDR = _IOW(KVMIO, 0x48, u64)
KVM_IRQ_LINE = _IOW(KVMIO, 0x61, kvm_irq_level)
# vCPU ioctls
KVM_RUN = _IO(KVMIO, 0x80)
KVM_GET_REGS = _IOR(KVMIO, 0x81, kvm_regs)
KVM_SET_REGS = _IOW(KVMIO, 0x82, kvm_regs)
KVM_GET_SREGS = _IOR(KVMIO, 0x83, kvm_sregs)
KVM_SET_SREGS = _IOW(KVMIO, 0x84, kvm_sregs)
KVM_TRANSLATE = _IOWR(KVMIO, 0x85, kvm_translation)
KVM_GET_MSRS = _IOWR(KVMIO, 0x88, kvm_msrs)
KVM_SET_MSRS = _IOW(KVMIO, 0x89, kvm_msrs)
KVM_GET_FPU = _IOR(KVMIO, 0x8C, kvm_fpu)
KVM_SET_FPU = _IOW(KVMIO, 0x8D, kvm_fpu)
KVM_SET_CPUID2 = _IOW(KVMIO, 0x90, kvm_cpuid2)
KVM_SET_GUEST_DEBUG = _IOW(KVMIO, 0x9B, kvm_guest_debug)
KVM_GET_VCPU_EVENTS = _IOR(KVMIO, 0x9F, kvm_vcpu_events)
KVM_SET_VCPU_EVENTS = _IOW(KVMIO, 0xA0, kvm_vcpu_events)
KVM_GET_DEBUGREGS = _IOR(KVMIO, 0xA1, kvm_debugregs)
KVM_SET_DEBUGREGS = _IOW(KVMIO, 0xA2, kvm_debugregs)
KVM_GET_XSAVE = _IOR(KVMIO, 0xA4, kvm_xsave)
KVM_SET_XSAVE = _IOW(KVMIO, 0xA5, kvm_xsave)
KVM_GET_XCRS = _IOR(KVMIO, 0xA6, kvm_xcrs)
KVM_SET_XCRS = _IOW(KVMIO, 0xA7, kvm_xcrs)

IOCTLS = {name: value for name, value in globals().items() if name.startswith("KVM_") and name.isupper()
          and isinstance(value, int) and name not in ("KVM_NR_INTERRUPTS", "KVM_MAX_XCRS",
                                                      "KVM_CPUID_FLAG_SIGNIFCANT_INDEX",
                                                      "KVM_EXIT_IO_IN", "KVM_EXIT_IO_OUT")}

# ---------------------------------------------------------------------- capabilities (x86-relevant)
KVM_API_VERSION = 12
# The KVM_CAP_* numbers are in guestdbg.kvm, once for both back ends.

# ---------------------------------------------------------------------- MSRs carried in snapshots
MSR_IA32_SYSENTER_CS = 0x174
MSR_IA32_SYSENTER_ESP = 0x175
MSR_IA32_SYSENTER_EIP = 0x176
MSR_IA32_CR_PAT = 0x277
MSR_IA32_MISC_ENABLE = 0x1A0
MSR_IA32_TSC = 0x10
MSR_STAR = 0xC0000081
MSR_LSTAR = 0xC0000082
MSR_CSTAR = 0xC0000083
MSR_SYSCALL_MASK = 0xC0000084
MSR_FS_BASE = 0xC0000100
MSR_GS_BASE = 0xC0000101
MSR_KERNEL_GS_BASE = 0xC0000102
MSR_TSC_AUX = 0xC0000103


def msrs_buffer(indices: list[int]) -> tuple[ctypes.Array, kvm_msrs, ctypes.Array]:
    """A kvm_msrs with nmsrs entries after it: (raw buffer, header view, entries view)."""
    n = len(indices)
    buf = (ctypes.c_char * (ctypes.sizeof(kvm_msrs) + n * ctypes.sizeof(kvm_msr_entry)))()
    head = kvm_msrs.from_buffer(buf)
    head.nmsrs = n
    entries = (kvm_msr_entry * n).from_buffer(buf, ctypes.sizeof(kvm_msrs))
    for e, index in zip(entries, indices):
        e.index = index
    return buf, head, entries


def cpuid2_buffer(nent: int) -> tuple[ctypes.Array, kvm_cpuid2, ctypes.Array]:
    """A kvm_cpuid2 with room for nent entries: (raw buffer, header view, entries view)."""
    buf = (ctypes.c_char * (ctypes.sizeof(kvm_cpuid2) + nent * ctypes.sizeof(kvm_cpuid_entry2)))()
    head = kvm_cpuid2.from_buffer(buf)
    head.nent = nent
    entries = (kvm_cpuid_entry2 * nent).from_buffer(buf, ctypes.sizeof(kvm_cpuid2))
    return buf, head, entries
