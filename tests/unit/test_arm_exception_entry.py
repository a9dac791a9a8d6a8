"""Arm64DebugArch's exception-entry facts that a reverse step relies on (debug/manager.py
_reverse_step_one): which instructions can never enter an exception, and where the vectors are.
The encodings are checked against capstone's disassembly, so the table below cannot drift."""

from __future__ import annotations

import capstone
import pytest

from guestdbg.arm import kvm_regs as kr
from guestdbg.debug.arch import Arm64DebugArch

_cs = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)

CASES = [  # (encoding, capstone mnemonic, can it never enter an exception?)
    (0x91000400, "add", True),
    (0xD2800000, "mov", True),      # movz: data processing (immediate), top byte 0xD2
    (0x8B020020, "add", True),      # register form
    (0x14000000, "b", True),
    (0x54000040, "b.eq", True),
    (0xB4000040, "cbz", True),
    (0xD65F03C0, "ret", True),
    (0xD63F0020, "blr", True),
    (0xF9400020, "ldr", False),     # loads and stores may fault
    (0xF9000020, "str", False),
    (0xA9BF7BFD, "stp", False),
    (0xD4000001, "svc", False),     # exception generation
    (0xD4200000, "brk", False),
    (0xD53BE040, "mrs", False),     # system instructions may trap
    (0xD503207F, "wfi", False),
    (0x1E622820, "fadd", False),    # SIMD&FP may trap (CPACR_EL1.FPEN)
    (0x00000000, None, False),      # udf #0 / unallocated
]


@pytest.mark.parametrize("insn, mnemonic, never", CASES)
def test_which_instructions_never_enter_an_exception(insn, mnemonic, never):
    decoded = list(_cs.disasm(insn.to_bytes(4, "little"), 0))
    if mnemonic is not None:
        assert decoded and decoded[0].mnemonic == mnemonic
    assert Arm64DebugArch().never_takes_an_exception(insn) is never


class _Vcpu:
    def __init__(self, vbar: int):
        self.vbar = vbar

    def get_one_reg(self, reg_id: int) -> int:
        assert reg_id == kr.ARM64_SYS_REG(*kr.SYSREG_ENCODINGS["VBAR_EL1"])
        return self.vbar


def test_the_sixteen_vector_entries_and_nothing_else():
    arch, vcpu = Arm64DebugArch(), _Vcpu(0xFFFF_8000_0801_0800)
    entries = [pc for pc in range(vcpu.vbar - 0x100, vcpu.vbar + 0x900, 4) if arch.at_exception_vector(vcpu, pc)]
    assert entries == [vcpu.vbar + 0x80 * i for i in range(16)]
