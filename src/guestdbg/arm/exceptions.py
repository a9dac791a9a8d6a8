"""Entering an AArch64 exception at EL1 through ONE_REG, as a VMM re-injects one.

KVM leaves it "up to userspace to re-inject the correct exception" when a debug exit was not
the debugger's (a guest's own BRK while USE_SW_BP is on). arm64 KVM has no ioctl for that, so
the VMM does what AArch64.TakeException does, on the registers: ESR_EL1, FAR_EL1, ELR_EL1,
SPSR_EL1, then PSTATE (EL1h, DAIF masked) and PC = VBAR_EL1 + the vector offset.
"""

from __future__ import annotations

from guestdbg.arm import kvm_regs as kr

PSTATE_EL1H_DAIF = 0x3C5


def vector_offset(pstate: int) -> int:
    """Synchronous-exception vector offset for an exception taken to EL1 from `pstate`."""
    el = (pstate >> 2) & 3
    if el == 0:
        return 0x400  # lower EL, AArch64
    return 0x200 if pstate & 1 else 0x000  # current EL with SP_ELx / with SP_EL0


def inject_sync_exception(vcpu, esr: int, *, preferred_return: int, far: int | None = None) -> int:
    """Enter the guest's EL1 synchronous vector; returns the new PC."""
    pstate = vcpu.get_one_reg(kr.KVM_REG_ARM_CORE_PSTATE)
    vector = vcpu.get_one_reg(kr.sysreg_id("VBAR_EL1")) + vector_offset(pstate)
    vcpu.set_one_reg(kr.sysreg_id("ESR_EL1"), esr)
    if far is not None:
        vcpu.set_one_reg(kr.sysreg_id("FAR_EL1"), far)
    vcpu.set_one_reg(kr.KVM_REG_ARM_CORE_ELR_EL1, preferred_return)
    vcpu.set_one_reg(kr.KVM_REG_ARM_CORE_SPSR(kr.KVM_SPSR_EL1), pstate & 0xFFFFFFFF)
    vcpu.set_one_reg(kr.KVM_REG_ARM_CORE_PSTATE, PSTATE_EL1H_DAIF)
    vcpu.set_one_reg(kr.KVM_REG_ARM_CORE_PC, vector)
    return vector
