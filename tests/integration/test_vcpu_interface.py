"""The KVM-shaped vCPU interface: capabilities, ONE_REG, run() exits."""

from __future__ import annotations

import errno

import pytest

from guestdbg import kvm
from guestdbg.arm import kvm_regs as kr
from guestdbg.backends.unicorn_arm64 import Arm64Vm, DebugConfig
from guestdbg.board.virt import VirtMachine, VirtConfig, RAM_BASE
from tests.helpers.support import Guest

A64_NOP = bytes.fromhex("1f2003d5")


def a64(*words: int) -> bytes:
    return b"".join(w.to_bytes(4, "little") for w in words)


def movz(rd: int, imm16: int, shift: int = 0) -> int:
    return 0xD2800000 | (shift // 16) << 21 | imm16 << 5 | rd


LDR_W1_X0 = 0xB9400001  # ldr w1, [x0]
STR_W2_X0 = 0xB9000002  # str w2, [x0]
BR_X0 = 0xD61F0000      # br x0
B_SELF = 0x14000000     # b .


def machine_with_code(code: bytes, **config) -> VirtMachine:
    m = VirtMachine(VirtConfig(**config), console=lambda b: None)
    m.vm.write_phys(RAM_BASE, code)
    m.reset_cpu(RAM_BASE)
    return m


@pytest.mark.parametrize("counts", [(6, 4, 2), (2, 2, 1), (16, 16, 16), (16, 2, 7)])
def test_capabilities_report_configured_counts(counts):
    brps, wrps, ctx = counts
    vm = Arm64Vm(DebugConfig(brps, wrps, ctx))
    assert vm.check_extension(kvm.KVM_CAP_SET_GUEST_DEBUG) == 1
    assert vm.check_extension(kvm.KVM_CAP_SET_GUEST_DEBUG2) == (
        kvm.KVM_GUESTDBG_ENABLE | kvm.KVM_GUESTDBG_SINGLESTEP | kvm.KVM_GUESTDBG_USE_SW_BP | kvm.KVM_GUESTDBG_USE_HW)
    assert vm.check_extension(kvm.KVM_CAP_GUEST_DEBUG_HW_BPS) == brps
    assert vm.check_extension(kvm.KVM_CAP_GUEST_DEBUG_HW_WPS) == wrps
    assert vm.check_extension(kvm.KVM_CAP_ONE_REG) == 1
    for unknown in (0, 1, 24, 118, 121, 194, 196, 9999):
        assert vm.check_extension(unknown) == 0
    dfr0 = vm.create_vcpu().get_one_reg(kr.sysreg_id("ID_AA64DFR0_EL1"))
    assert (dfr0 >> 12) & 0xF == brps - 1 and (dfr0 >> 20) & 0xF == wrps - 1 and (dfr0 >> 28) & 0xF == ctx - 1


@pytest.mark.parametrize("bad", [(1, 4, 1), (17, 4, 2), (6, 1, 2), (6, 17, 2), (6, 4, 0), (6, 4, 7)])
def test_bad_counts_rejected(bad):
    with pytest.raises(ValueError):
        DebugConfig(*bad)


def test_documented_one_reg_ids():
    assert kr.KVM_REG_ARM_CORE_X(0) == 0x6030000000100000
    assert kr.KVM_REG_ARM_CORE_X(30) == 0x603000000010003C
    assert kr.KVM_REG_ARM_CORE_SP == 0x603000000010003E
    assert kr.KVM_REG_ARM_CORE_PC == 0x6030000000100040
    assert kr.KVM_REG_ARM_CORE_PSTATE == 0x6030000000100042
    assert kr.KVM_REG_ARM_CORE_SP_EL1 == 0x6030000000100044
    assert kr.KVM_REG_ARM_CORE_ELR_EL1 == 0x6030000000100046
    assert kr.KVM_REG_ARM_CORE_SPSR(0) == 0x6030000000100048
    assert kr.KVM_REG_ARM_CORE_V(0) == 0x6040000000100054
    assert kr.KVM_REG_ARM_CORE_FPSR == 0x60200000001000D4
    assert kr.KVM_REG_ARM_CORE_FPCR == 0x60200000001000D5
    assert kr.sysreg_id("MDSCR_EL1") == 0x6030000000138012
    assert kr.ARM64_SYS_REG(*kr.DBGBVRn_EL1(0)) == 0x6030000000138004
    assert kr.ARM64_SYS_REG(*kr.DBGWCRn_EL1(3)) == 0x6030000000138007 + (3 << 3)
    assert kr.sysreg_id("ID_AA64DFR0_EL1") == 0x603000000013C028
    assert kr.sysreg_id("SCTLR_EL1") == 0x603000000013C080
    assert kr.sysreg_id("TTBR0_EL1") == 0x603000000013C100
    assert kr.sysreg_id("TCR_EL1") == 0x603000000013C102
    assert kr.sysreg_id("ESR_EL1") == 0x603000000013C290
    assert kr.sysreg_id("FAR_EL1") == 0x603000000013C300
    assert kr.sysreg_id("CONTEXTIDR_EL1") == 0x603000000013C681


def test_reg_list_covers_guest_state_and_sizes():
    vcpu = VirtMachine(console=lambda b: None).vcpu
    ids = vcpu.get_reg_list()
    assert len(ids) == len(set(ids))
    for must in [kr.KVM_REG_ARM_CORE_X(n) for n in range(31)] + [kr.KVM_REG_ARM_CORE_V(n) for n in range(32)] + [
            kr.KVM_REG_ARM_CORE_SP, kr.KVM_REG_ARM_CORE_PC, kr.KVM_REG_ARM_CORE_PSTATE, kr.KVM_REG_ARM_CORE_SP_EL1,
            kr.KVM_REG_ARM_CORE_ELR_EL1, kr.KVM_REG_ARM_CORE_FPSR, kr.KVM_REG_ARM_CORE_FPCR,
            kr.sysreg_id("MDSCR_EL1"), kr.sysreg_id("VBAR_EL1"), kr.sysreg_id("SCTLR_EL1"),
            kr.sysreg_id("CONTEXTIDR_EL1"), kr.sysreg_id("ID_AA64DFR0_EL1")]:
        assert must in ids, hex(must)
    dbg = [i for i in ids if kr.is_sys_reg(i) and kr.sys_reg_encoding(i)[:3] == (2, 0, 0)
           and kr.sys_reg_encoding(i)[4] in (4, 5, 6, 7)]
    assert len(dbg) == 2 * 6 + 2 * 4  # BVR/BCR per BRP, WVR/WCR per WRP
    assert kr.reg_size_bytes(kr.KVM_REG_ARM_CORE_V(3)) == 16
    assert kr.reg_size_bytes(kr.KVM_REG_ARM_CORE_FPSR) == 4


# Bits the Cortex-A57 model implements where a register has RES0 fields (Arm ARM).
# The generic timers' ids: CTL's ISTATUS is computed and both CNT ids name the one counter
# (tests/integration/test_timers.py covers them).
TIMER_ONE_REGS = {kr.ARM64_SYS_REG(3, 3, 14, crm, op2) for crm, op2 in ((3, 1), (3, 2), (0, 2), (2, 1), (2, 2), (0, 1))}

IMPLEMENTED_BITS = {
    kr.sysreg_id("VBAR_EL1"): ~0x7FF & ((1 << 64) - 1),
    kr.sysreg_id("ESR_EL1"): 0xFFFFFFFF,
    kr.sysreg_id("CONTEXTIDR_EL1"): 0xFFFFFFFF,
    kr.KVM_REG_ARM_CORE_SPSR(0): 0xFFFFFFFF,
}


def test_one_reg_round_trip_and_errors():
    vcpu = VirtMachine(console=lambda b: None).vcpu
    values = {}
    for i, reg in enumerate(vcpu.get_reg_list()):
        if reg in (kr.KVM_REG_ARM_CORE_PSTATE, kr.sysreg_id("ID_AA64DFR0_EL1"), kr.sysreg_id("MIDR_EL1"),
                   kr.sysreg_id("MPIDR_EL1"), kr.sysreg_id("SCTLR_EL1"), kr.sysreg_id("CPACR_EL1"),
                   kr.sysreg_id("TCR_EL1"), kr.sysreg_id("PAR_EL1"), kr.sysreg_id("AMAIR_EL1")) \
                or reg in TIMER_ONE_REGS:
            continue  # registers with RES0/RES1 bits or read-only fields
        size = kr.reg_size_bytes(reg)
        value = (0x0123456789ABCDEF * (i + 1) + (i << 60)) % (1 << min(64, 8 * size))
        if size == 16:
            value |= (0xFEDCBA9876543210 + i) << 64
        value &= IMPLEMENTED_BITS.get(reg, (1 << 128) - 1)
        if reg == kr.KVM_REG_ARM_CORE_FPSR:
            value &= 0xF800009F  # FPSR's defined bits
        if reg == kr.KVM_REG_ARM_CORE_FPCR:
            value &= 0x07C80000  # AHP, DN, FZ, RMode, FZ16: what the Cortex-A57 model implements
        vcpu.set_one_reg(reg, value)
        values[reg] = value
    for reg, value in values.items():
        assert vcpu.get_one_reg(reg) == value, hex(reg)

    with pytest.raises(OSError) as e:
        vcpu.get_one_reg(0x6030000000139999)
    assert e.value.errno == errno.ENOENT
    with pytest.raises(OSError) as e:
        vcpu.set_one_reg(kr.ARM64_SYS_REG(*kr.DBGBCRn_EL1(6)), 1)  # only 6 BRPs: 0..5
    assert e.value.errno == errno.ENOENT
    with pytest.raises(OSError) as e:
        vcpu.set_one_reg(kr.KVM_REG_ARM_CORE_FPSR, 1 << 32)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:
        vcpu.set_one_reg(kr.sysreg_id("ID_AA64DFR0_EL1"), 0x10305107)
    assert e.value.errno == errno.EINVAL


def test_sp_banking_follows_pstate():
    vcpu = VirtMachine(console=lambda b: None).vcpu
    vcpu.set_one_reg(kr.KVM_REG_ARM_CORE_SP, 0x1000)      # SP_EL0
    vcpu.set_one_reg(kr.KVM_REG_ARM_CORE_SP_EL1, 0x2000)
    for pstate in (0x3C5, 0x3C4, 0x3C0, 0x3C5):           # EL1h, EL1t, EL0t, back
        vcpu.set_one_reg(kr.KVM_REG_ARM_CORE_PSTATE, pstate)
        assert vcpu.get_one_reg(kr.KVM_REG_ARM_CORE_SP) == 0x1000
        assert vcpu.get_one_reg(kr.KVM_REG_ARM_CORE_SP_EL1) == 0x2000
        assert vcpu.current_el() == (pstate >> 2) & 3


def test_unclaimed_mmio_read_exits_and_completes_with_vmm_data():
    code = a64(movz(0, 0x0A00, 16), LDR_W1_X0, B_SELF)  # x0 = 0x0A000000 (no device there)
    m = machine_with_code(code)
    run = m.vcpu.run()
    assert run.exit_reason == kvm.KVM_EXIT_MMIO
    assert (run.mmio.phys_addr, run.mmio.len, run.mmio.is_write) == (0x0A000000, 4, False)
    assert m.vcpu.pc == RAM_BASE + 4  # before the access
    run.mmio.data[:4] = (0xCAFEF00D).to_bytes(4, "little")
    m.vcpu.set_guest_debug(kvm.KVM_GUESTDBG_ENABLE | kvm.KVM_GUESTDBG_SINGLESTEP)
    run = m.vcpu.run()  # completes the load, then the step ends
    assert run.exit_reason == kvm.KVM_EXIT_DEBUG and run.debug.ec == 0x32
    assert m.vcpu.get_one_reg(kr.KVM_REG_ARM_CORE_X(1)) == 0xCAFEF00D
    assert m.vcpu.pc == RAM_BASE + 8


def test_unclaimed_mmio_write_exit_carries_data():
    code = a64(movz(0, 0x0A00, 16), movz(2, 0xBEEF), STR_W2_X0, B_SELF)
    m = machine_with_code(code)
    run = m.vcpu.run()
    assert run.exit_reason == kvm.KVM_EXIT_MMIO and run.mmio.is_write
    assert run.mmio.phys_addr == 0x0A000000 and bytes(run.mmio.data[:4]) == (0xBEEF).to_bytes(4, "little")


def test_ext_dabt_injection_enters_guest_vector():
    code = a64(movz(0, 0x0A00, 16), LDR_W1_X0, B_SELF)
    m = machine_with_code(code)
    m.vcpu.set_one_reg(kr.sysreg_id("VBAR_EL1"), RAM_BASE + 0x800)
    m.vm.write_phys(RAM_BASE + 0xA00, a64(B_SELF))  # current EL, SPx, synchronous
    run = m.vcpu.run()
    assert run.exit_reason == kvm.KVM_EXIT_MMIO
    m.vcpu.set_vcpu_events(ext_dabt_pending=True)
    m.vcpu.set_guest_debug(kvm.KVM_GUESTDBG_ENABLE | kvm.KVM_GUESTDBG_SINGLESTEP)
    m.vcpu.run()
    assert m.vcpu.pc == RAM_BASE + 0xA00
    assert m.vcpu.get_one_reg(kr.sysreg_id("ESR_EL1")) == 0x96000010  # as QEMU's TCG reports it
    assert m.vcpu.get_one_reg(kr.sysreg_id("FAR_EL1")) == 0x0A000000
    assert m.vcpu.get_one_reg(kr.KVM_REG_ARM_CORE_ELR_EL1) == RAM_BASE + 4
    assert m.vcpu.get_one_reg(kr.KVM_REG_ARM_CORE_SPSR(0)) & 0xF == 0b0101


def test_fetch_from_unmapped_memory_is_an_instruction_abort_for_the_guest():
    """As on QEMU's TCG: the guest takes an instruction abort (EC 0x21, IFSC 0x10, FAR = the
    address). This guest has no handler (VBAR_EL1 = 0, ROM zeros), so the vCPU reports it,
    stopped at the fetch address with the syndrome in ESR/FAR_EL1."""
    m = machine_with_code(a64(movz(0, 0x7000, 16), BR_X0))
    run = m.vcpu.run()
    assert run.exit_reason == kvm.KVM_EXIT_INTERNAL_ERROR
    assert "instruction abort" in run.internal.message and "PC=0x70000000" in run.internal.message
    assert m.vcpu.pc == 0x70000000
    assert m.vcpu.get_one_reg(kr.sysreg_id("ESR_EL1")) == 0x86000010
    assert m.vcpu.get_one_reg(kr.sysreg_id("FAR_EL1")) == 0x70000000


def test_unhandled_exception_is_reported_not_looped():
    m = machine_with_code(a64(0x00000000))  # UDF with VBAR_EL1 = 0: vector 0x200 in empty ROM is UDF too
    run = m.vcpu.run()
    assert run.exit_reason == kvm.KVM_EXIT_INTERNAL_ERROR
    msg = run.internal.message
    assert "unhandled EC 0x00 unknown reason (undefined instruction) at PC=0x40000000" in msg
    assert "no exception handler at VBAR_EL1+0x200 = 0x200" in msg


def test_kick_interrupts_a_running_guest():
    import threading
    m = machine_with_code(a64(B_SELF))
    threading.Timer(0.2, m.vcpu.kick).start()
    run = m.vcpu.run()
    assert run.exit_reason == kvm.KVM_EXIT_INTR
    assert m.vcpu.pc == RAM_BASE


def test_system_events(guest_dir):
    for name, status in (("hello", 7), ("poweroff", 0), ("exit_ext", 5)):
        g = Guest(guest_dir / f"{name}.elf")
        run = g.vcpu.run()
        while run.exit_reason != kvm.KVM_EXIT_SYSTEM_EVENT:
            assert run.exit_reason in (kvm.KVM_EXIT_MMIO,), run
            run = g.vcpu.run()
        assert run.system_event.type == kvm.KVM_SYSTEM_EVENT_SHUTDOWN
        assert run.system_event.data[0] == status


def test_unhandled_data_abort_leaves_the_vcpu_at_the_faulting_instruction():
    """A data abort the guest has no handler for (VBAR_EL1 = 0: its vector is ROM zeros) is
    reported with the vCPU back at the load that faulted, ESR/FAR_EL1 holding the abort, so a
    debugger shows (and backtraces from) the faulting instruction, not the empty vector."""
    ldr_x0_x1 = 0xF9400020
    m = machine_with_code(a64(movz(1, 0x7FF0, 16), ldr_x0_x1))
    run = m.vcpu.run()
    assert run.exit_reason == kvm.KVM_EXIT_MMIO and run.mmio.phys_addr == 0x7FF00000
    m.vcpu.set_vcpu_events(ext_dabt_pending=True)
    run = m.vcpu.run()
    assert run.exit_reason == kvm.KVM_EXIT_INTERNAL_ERROR
    assert f"PC={RAM_BASE + 4:#x}" in run.internal.message and "address 0x7ff00000" in run.internal.message
    assert m.vcpu.pc == RAM_BASE + 4
    assert m.vcpu.get_one_reg(kr.KVM_REG_ARM_CORE_PSTATE) & 0xF == 0b0101  # EL1h, as before the abort
    assert m.vcpu.get_one_reg(kr.sysreg_id("ESR_EL1")) == 0x96000010
    assert m.vcpu.get_one_reg(kr.sysreg_id("FAR_EL1")) == 0x7FF00000
