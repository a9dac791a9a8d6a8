"""AArch64 and Unicorn constants the parts of the emulated vCPU share."""

from __future__ import annotations

from unicorn import arm64_const as uca
from unicorn.unicorn_py3.arch.arm64 import UcAArch64

from guestdbg.arm import kvm_regs as kr
from guestdbg.kvm import (
    KVM_GUESTDBG_ENABLE,
    KVM_GUESTDBG_SINGLESTEP,
    KVM_GUESTDBG_USE_HW,
    KVM_GUESTDBG_USE_SW_BP,
)

PAGE_SIZE = 4096
PAGE_MASK = ~(PAGE_SIZE - 1)

# The control bits arm64 KVM accepts (KVM_GUESTDBG_VALID_MASK); KVM_CAP_SET_GUEST_DEBUG2 reports it.
KVM_GUESTDBG_VALID_MASK = (
    KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP | KVM_GUESTDBG_USE_SW_BP | KVM_GUESTDBG_USE_HW
)

# QEMU's exception numbers, as Unicorn hands them to UC_HOOK_INTR.
EXCP_UDEF, EXCP_SWI, EXCP_PREFETCH_ABORT, EXCP_DATA_ABORT, EXCP_BKPT, EXCP_SMC = 1, 2, 3, 4, 7, 13

# PSTATE
PSTATE_EL_SHIFT = 2
PSTATE_SP = 1  # SPSel: 1 = SP_ELx
PSTATE_DAIF = 0xF << 6
PSTATE_MODE_EL1H = 0b0101

# System register keys (op0, op1, CRn, CRm, op2) the vCPU intercepts.
ID_AA64DFR0_EL1 = kr.SYSREG_ENCODINGS["ID_AA64DFR0_EL1"]
MDSCR_EL1 = kr.SYSREG_ENCODINGS["MDSCR_EL1"]
CONTEXTIDR_EL1 = kr.SYSREG_ENCODINGS["CONTEXTIDR_EL1"]
SPSR_EL1 = (3, 0, 4, 0, 0)
TPIDR_EL1 = kr.SYSREG_ENCODINGS["TPIDR_EL1"]
SCTLR_EL1 = kr.SYSREG_ENCODINGS["SCTLR_EL1"]
SCR_EL3, SCR_EL3_NS, SCR_EL3_RW = (3, 6, 1, 1, 0), 1 << 0, 1 << 10
HCR_EL2, HCR_EL2_RW = (3, 4, 1, 1, 0), 1 << 31
# What MPIDR_EL1 reads at EL1 while EL2 is implemented: each vCPU's own affinity lives here
# (every Unicorn engine is CPU 0 to itself). Bit 31 is RES1; Aff0 is the vCPU index, as QEMU.
VMPIDR_EL2, MPIDR_RES1 = (3, 4, 0, 0, 5), 1 << 31
TRANSLATION_REGS = {SCTLR_EL1, kr.SYSREG_ENCODINGS["TTBR0_EL1"], kr.SYSREG_ENCODINGS["TTBR1_EL1"],
                    kr.SYSREG_ENCODINGS["TCR_EL1"]}
DEBUG_REG_OP2 = {4: "bvr", 5: "bcr", 6: "wvr", 7: "wcr"}
CNTPCT_EL0, CNTVCT_EL0 = (3, 3, 14, 0, 1), (3, 3, 14, 0, 2)
# Unicorn's Cortex-A57 implements DBGB*n_EL1 for n < 6 and DBGW*n_EL1 for n < 4 (its
# ID_AA64DFR0_EL1 says so); for higher n it has no register and raises UNDEF itself.
UNICORN_BRPS, UNICORN_WRPS = 6, 4

# The system-register hook, the run-slice limit and the instruction count live in C
# (_runctl.c). Slices end at block boundaries unless a limit falls inside a block; then that
# block is run once more under a countdown. "No limit":
NO_LIMIT = (1 << 64) - 1

X_REGS = [getattr(uca, f"UC_ARM64_REG_X{n}") for n in range(31)]
V_REGS = [getattr(uca, f"UC_ARM64_REG_V{n}") for n in range(32)]
V_REGS_SET = frozenset(V_REGS)

# A Unicorn register id, or a system register's (op0, op1, CRn, CRm, op2).
RegKey = int | tuple[int, int, int, int, int]


def remove_cache(uc: UcAArch64, va: int, size: int) -> None:
    """Drop code translated from [va, va+size). Nothing was translated at an address whose
    range wraps past 2**64 (Unicorn rejects it), so there is nothing to drop there."""
    if va + size < 1 << 64:
        uc.ctl_remove_cache(va, va + size)
