"""arm64 KVM ONE_REG ids and struct kvm_guest_debug_arch.

Id layout (arch/arm64/include/uapi/asm/kvm.h): KVM_REG_ARM64 | size | class | index.
Core registers are indexed by their offset in struct kvm_regs divided by 4; system registers by
their op0/op1/CRn/CRm/op2 encoding.
"""

from __future__ import annotations

import ctypes

from guestdbg.kvm import KVM_ARM_MAX_DBG_REGS

KVM_REG_ARM64 = 0x6000000000000000
KVM_REG_SIZE_SHIFT = 52
KVM_REG_SIZE_MASK = 0x00F0000000000000
KVM_REG_SIZE_U32 = 0x0020000000000000
KVM_REG_SIZE_U64 = 0x0030000000000000
KVM_REG_SIZE_U128 = 0x0040000000000000
KVM_REG_ARM_COPROC_SHIFT = 16
KVM_REG_ARM_CORE = 0x0010 << KVM_REG_ARM_COPROC_SHIFT
KVM_REG_ARM64_SYSREG = 0x0013 << KVM_REG_ARM_COPROC_SHIFT


def reg_size_bytes(reg_id: int) -> int:
    """Size in bytes of the register an id names (KVM_REG_SIZE)."""
    return 1 << ((reg_id & KVM_REG_SIZE_MASK) >> KVM_REG_SIZE_SHIFT)


def core_reg(offset_words: int, size: int = KVM_REG_SIZE_U64) -> int:
    return KVM_REG_ARM64 | size | KVM_REG_ARM_CORE | offset_words


def ARM64_SYS_REG(op0: int, op1: int, crn: int, crm: int, op2: int) -> int:  # noqa: N802 (Linux name)
    return (
        KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM64_SYSREG
        | (op0 << 14) | (op1 << 11) | (crn << 7) | (crm << 3) | op2
    )


def sys_reg_encoding(reg_id: int) -> tuple[int, int, int, int, int]:
    """(op0, op1, CRn, CRm, op2) of a system register id."""
    return ((reg_id >> 14) & 3, (reg_id >> 11) & 7, (reg_id >> 7) & 15, (reg_id >> 3) & 15, reg_id & 7)


def is_sys_reg(reg_id: int) -> bool:
    return reg_id & (0xFFFF << KVM_REG_ARM_COPROC_SHIFT) == KVM_REG_ARM64_SYSREG


# struct kvm_regs: struct user_pt_regs regs { u64 regs[31]; u64 sp; u64 pc; u64 pstate; };
# u64 sp_el1; u64 elr_el1; u64 spsr[5]; (pad) struct user_fpsimd_state fp_regs { __uint128_t vregs[32];
# u32 fpsr; u32 fpcr; }. Offsets below are in 32-bit words.
def KVM_REG_ARM_CORE_X(n: int) -> int:  # noqa: N802
    return core_reg(2 * n)


KVM_REG_ARM_CORE_SP = core_reg(0x3E)  # SP_EL0
KVM_REG_ARM_CORE_PC = core_reg(0x40)
KVM_REG_ARM_CORE_PSTATE = core_reg(0x42)
KVM_REG_ARM_CORE_SP_EL1 = core_reg(0x44)
KVM_REG_ARM_CORE_ELR_EL1 = core_reg(0x46)
KVM_SPSR_EL1, KVM_SPSR_ABT, KVM_SPSR_UND, KVM_SPSR_IRQ, KVM_SPSR_FIQ = range(5)


def KVM_REG_ARM_CORE_SPSR(n: int) -> int:  # noqa: N802
    return core_reg(0x48 + 2 * n)


def KVM_REG_ARM_CORE_V(n: int) -> int:  # noqa: N802
    return core_reg(0x54 + 4 * n, KVM_REG_SIZE_U128)


KVM_REG_ARM_CORE_FPSR = core_reg(0xD4, KVM_REG_SIZE_U32)
KVM_REG_ARM_CORE_FPCR = core_reg(0xD5, KVM_REG_SIZE_U32)

# System registers a bare-metal EL1 guest uses, by their Arm names: (op0, op1, CRn, CRm, op2).
SYSREG_ENCODINGS: dict[str, tuple[int, int, int, int, int]] = {
    "MIDR_EL1": (3, 0, 0, 0, 0),
    "MPIDR_EL1": (3, 0, 0, 0, 5),
    "ID_AA64DFR0_EL1": (3, 0, 0, 5, 0),
    "SCTLR_EL1": (3, 0, 1, 0, 0),
    "CPACR_EL1": (3, 0, 1, 0, 2),
    "TTBR0_EL1": (3, 0, 2, 0, 0),
    "TTBR1_EL1": (3, 0, 2, 0, 1),
    "TCR_EL1": (3, 0, 2, 0, 2),
    "ESR_EL1": (3, 0, 5, 2, 0),
    "FAR_EL1": (3, 0, 6, 0, 0),
    "PAR_EL1": (3, 0, 7, 4, 0),
    "MAIR_EL1": (3, 0, 10, 2, 0),
    "AMAIR_EL1": (3, 0, 10, 3, 0),
    "VBAR_EL1": (3, 0, 12, 0, 0),
    "CONTEXTIDR_EL1": (3, 0, 13, 0, 1),
    "TPIDR_EL1": (3, 0, 13, 0, 4),
    "TPIDR_EL0": (3, 3, 13, 0, 2),
    "TPIDRRO_EL0": (3, 3, 13, 0, 3),
    "MDSCR_EL1": (2, 0, 0, 2, 2),
}


def DBGBVRn_EL1(n: int) -> tuple[int, int, int, int, int]:  # noqa: N802
    return (2, 0, 0, n, 4)


def DBGBCRn_EL1(n: int) -> tuple[int, int, int, int, int]:  # noqa: N802
    return (2, 0, 0, n, 5)


def DBGWVRn_EL1(n: int) -> tuple[int, int, int, int, int]:  # noqa: N802
    return (2, 0, 0, n, 6)


def DBGWCRn_EL1(n: int) -> tuple[int, int, int, int, int]:  # noqa: N802
    return (2, 0, 0, n, 7)


def sysreg_id(name: str) -> int:
    return ARM64_SYS_REG(*SYSREG_ENCODINGS[name])


class kvm_guest_debug_arch(ctypes.Structure):  # noqa: N801 (Linux name)
    """arm64 struct kvm_guest_debug_arch: the debugger's breakpoint and watchpoint registers."""

    _fields_ = [
        ("dbg_bcr", ctypes.c_uint64 * KVM_ARM_MAX_DBG_REGS),
        ("dbg_bvr", ctypes.c_uint64 * KVM_ARM_MAX_DBG_REGS),
        ("dbg_wcr", ctypes.c_uint64 * KVM_ARM_MAX_DBG_REGS),
        ("dbg_wvr", ctypes.c_uint64 * KVM_ARM_MAX_DBG_REGS),
    ]


class kvm_guest_debug(ctypes.Structure):  # noqa: N801 (Linux name)
    _fields_ = [
        ("control", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("arch", kvm_guest_debug_arch),
    ]


assert ctypes.sizeof(kvm_guest_debug) == 520  # KVM_SET_GUEST_DEBUG is _IOW(0xAE, 0x9b, 520 bytes)
