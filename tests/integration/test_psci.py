"""PSCI as the virt board's firmware answers it (backends/unicorn_arm64/firmware.py), through a
tiny guest in RAM: x0 = function, x1 = argument, HVC #0 (or SMC #0), then spin; the result is
read back from x0 through the vCPU's ONE_REG interface. Consistent with the board's DTB,
which says "arm,psci-1.0" with method "hvc"."""

from __future__ import annotations

import struct

import pytest

from guestdbg import kvm
from guestdbg.arm import kvm_regs as kr
from guestdbg.backends.unicorn_arm64 import firmware as fw
from guestdbg.board import devicetree
from guestdbg.board.common import ExitStatus
from guestdbg.board.virt import RAM_BASE, VirtConfig, VirtMachine

HVC0, SMC0, B_SELF = 0xD4000002, 0xD4000003, 0x14000000


def mov64(rd: int, value: int) -> list[int]:
    """movz/movk x<rd>: four 16-bit pieces."""
    return [(0xD2800000 if hw == 0 else 0xF2800000) | hw << 21 | ((value >> 16 * hw) & 0xFFFF) << 5 | rd
            for hw in range(4)]


def call(fn: int, arg: int = 0, *, insn: int = HVC0, config: VirtConfig | None = None) -> int | ExitStatus:
    """The guest's x0 after the call (as a signed 64-bit value), or how the run ended."""
    m = VirtMachine(config or VirtConfig())
    words = mov64(0, fn) + mov64(1, arg) + [insn, B_SELF]
    m.vm.write_phys(RAM_BASE, b"".join(struct.pack("<I", w) for w in words))
    m.reset_cpu(RAM_BASE)
    ended = m.run_until(icount_limit=len(words) + 20)
    if isinstance(ended, ExitStatus):
        return ended
    assert ended.exit_reason == kvm.EXIT_ICOUNT_LIMIT
    assert m.vcpu.get_one_reg(kr.KVM_REG_ARM_CORE_PC) == RAM_BASE + 4 * (len(words) - 1)  # returned past HVC
    x0 = m.vcpu.get_one_reg(kr.KVM_REG_ARM_CORE_X(0))
    return x0 - (1 << 64) if x0 >> 63 else x0


@pytest.mark.parametrize("insn", [HVC0, SMC0], ids=["hvc", "smc"])
def test_version_is_1_0_as_the_dtb_says(insn):
    assert call(fw.PSCI_0_2_FN_PSCI_VERSION, insn=insn) == 0x0001_0000
    compat = devicetree.virt_fdt(128 << 20).get_property("compatible", "/psci").data
    assert compat[0] == "arm,psci-1.0"


def test_migrate_info_type_is_2_as_qemu():
    assert call(fw.PSCI_0_2_FN_MIGRATE_INFO_TYPE) == 2


@pytest.mark.parametrize("fn", [fw.PSCI_0_2_FN_CPU_SUSPEND, fw.PSCI_0_2_FN64_CPU_SUSPEND])
def test_cpu_suspend_returns_success(fn):
    assert call(fn, 0) == 0


@pytest.mark.parametrize("queried,expected", [
    (fw.PSCI_0_2_FN_PSCI_VERSION, 0),
    (fw.PSCI_0_2_FN_CPU_SUSPEND, 0),  # 0: the original power_state format
    (fw.PSCI_0_2_FN64_CPU_SUSPEND, 0),
    (fw.PSCI_0_2_FN_MIGRATE_INFO_TYPE, 0),
    (fw.PSCI_0_2_FN_SYSTEM_OFF, 0),
    (fw.PSCI_0_2_FN_SYSTEM_RESET, 0),
    (fw.PSCI_1_0_FN_PSCI_FEATURES, 0),
    (fw.PSCI_0_2_FN_CPU_ON, 0),  # the board's power control, even with one vCPU (as QEMU -smp 1)
    (fw.PSCI_0_2_FN64_CPU_ON, 0),
    (fw.PSCI_0_2_FN_CPU_OFF, 0),
    (fw.PSCI_0_2_FN_AFFINITY_INFO, 0),
    (fw.PSCI_0_2_FN64_AFFINITY_INFO, 0),
    (0x80000000, -1),  # SMCCC_VERSION
    (0x8400FFFF, -1),
])
def test_features(queried, expected):
    assert call(fw.PSCI_1_0_FN_PSCI_FEATURES, queried) == expected


@pytest.mark.parametrize("fn", [0x84000005, 0x8400000B, 0x80000000, 0xC400FFFF, 0x12345678])
def test_unknown_is_not_supported(fn):
    assert call(fn) == -1


def test_cpu_on_with_one_vcpu_is_invalid_params():
    assert call(fw.PSCI_0_2_FN64_CPU_ON, 1) == -2  # no CPU 1 (board/smp.py has the rest)
    assert call(fw.PSCI_0_2_FN64_CPU_ON, 0) == -4  # itself: ALREADY_ON


def test_affinity_info_with_one_vcpu():
    assert call(fw.PSCI_0_2_FN64_AFFINITY_INFO, 0) == 0  # ON
    assert call(fw.PSCI_0_2_FN64_AFFINITY_INFO, 1) == -2


def test_without_the_boards_power_control_cpu_on_is_refused():
    """The back end alone (no board callback): CPU_ON refused, the others NOT_SUPPORTED."""
    m = VirtMachine(VirtConfig())
    m.vcpu.power_control = None
    words = mov64(0, fw.PSCI_0_2_FN64_CPU_ON) + mov64(1, 0) + [HVC0] + mov64(0, fw.PSCI_1_0_FN_PSCI_FEATURES) + \
        mov64(1, fw.PSCI_0_2_FN_CPU_OFF) + [HVC0, B_SELF]
    m.vm.write_phys(RAM_BASE, b"".join(struct.pack("<I", w) for w in words))
    m.reset_cpu(RAM_BASE)
    m.run_until(icount_limit=len(words) + 5)
    assert m.vcpu.get_one_reg(kr.KVM_REG_ARM_CORE_X(0)) == (1 << 64) - 1  # FEATURES(CPU_OFF): -1


def test_system_off_ends_with_status_0():
    ended = call(fw.PSCI_0_2_FN_SYSTEM_OFF)
    assert ended == ExitStatus(0, "PSCI SYSTEM_OFF")


def test_system_reset_with_no_reboot_ends_the_run():
    """no_reboot (QEMU's -no-reboot): the run ends with status 0, reported as a reset.
    Without it the board reboots (test_reset.py)."""
    ended = call(fw.PSCI_0_2_FN_SYSTEM_RESET, config=VirtConfig(no_reboot=True))
    assert ended == ExitStatus(0, "PSCI SYSTEM_RESET")


@pytest.mark.parametrize("insn", [HVC0, SMC0], ids=["hvc", "smc"])
def test_the_call_retires_as_exactly_one_instruction(insn):
    """HVC arrives as an undefined instruction with PC on it, SMC as EXCP_SMC with PC past it:
    either way the call counts once, so the virtual clock is the same for both."""
    m = VirtMachine()
    words = mov64(0, fw.PSCI_0_2_FN_PSCI_VERSION) + [insn] + [B_SELF]
    m.vm.write_phys(RAM_BASE, b"".join(struct.pack("<I", w) for w in words))
    m.reset_cpu(RAM_BASE)
    ended = m.run_until(icount_limit=5)  # the 4 movz/movk, then the call
    assert ended.exit_reason == kvm.EXIT_ICOUNT_LIMIT
    assert m.vcpu.icount == 5
    assert m.vcpu.get_one_reg(kr.KVM_REG_ARM_CORE_PC) == RAM_BASE + 4 * 5
    assert m.vcpu.get_one_reg(kr.KVM_REG_ARM_CORE_X(0)) == 0x10000
