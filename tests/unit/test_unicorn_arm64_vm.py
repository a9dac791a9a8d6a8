"""Arm64Vm calls that need no guest."""

from __future__ import annotations

import errno

import pytest

from guestdbg import kvm
from guestdbg.arm import kvm_regs
from guestdbg.backends.unicorn_arm64 import Arm64Vm


def _irq(irq_type: int, vcpu_index: int, num: int) -> int:
    return (irq_type << kvm.KVM_ARM_IRQ_TYPE_SHIFT) | (vcpu_index << kvm.KVM_ARM_IRQ_VCPU_SHIFT) | num


def test_irq_line_spi_and_ppi_need_an_in_kernel_irqchip_enxio():
    """KVM_IRQ_LINE of an SPI or PPI before KVM_CREATE_IRQCHIP: KVM answers ENXIO, and so does
    the emulated VM (it has no in-kernel irqchip; a userspace GIC drives the CPU lines)."""
    vm = Arm64Vm()
    vm.create_vcpu()
    for irq in (_irq(kvm.KVM_ARM_IRQ_TYPE_SPI, 0, 33), _irq(kvm.KVM_ARM_IRQ_TYPE_PPI, 0, 27)):
        with pytest.raises(kvm.KvmError) as raised:
            vm.irq_line(irq, 1)
        assert raised.value.errno == errno.ENXIO
        assert "KVM_CREATE_IRQCHIP" in str(raised.value)


def test_irq_line_type_cpu_drives_the_vcpu_irq_input():
    vm = Arm64Vm()
    vcpu = vm.create_vcpu()
    irq = _irq(kvm.KVM_ARM_IRQ_TYPE_CPU, 0, kvm.KVM_ARM_IRQ_CPU_IRQ)
    assert irq == 0
    vm.irq_line(irq, 1)
    assert vcpu._irq_level and not vcpu.irq_line_level  # applied by the vCPU thread at its next slice
    vcpu._apply_irq_line()
    hcr = vcpu.uc.cpr_read(3, 4, 1, 1, 0)
    assert hcr & (1 << 31) and hcr & (1 << 4) and hcr & (1 << 7)  # RW, IMO, VI
    vm.irq_line(irq, 0)
    vcpu._apply_irq_line()
    hcr = vcpu.uc.cpr_read(3, 4, 1, 1, 0)
    assert hcr & (1 << 31) and not hcr & (1 << 7)


def test_irq_line_bad_vcpu_or_input():
    vm = Arm64Vm()
    with pytest.raises(kvm.KvmError) as raised:  # no vCPU yet
        vm.irq_line(0, 1)
    assert raised.value.errno == errno.EINVAL
    vm.create_vcpu()
    with pytest.raises(kvm.KvmError) as raised:
        vm.irq_line(_irq(kvm.KVM_ARM_IRQ_TYPE_CPU, 1, kvm.KVM_ARM_IRQ_CPU_IRQ), 1)
    assert raised.value.errno == errno.EINVAL
    with pytest.raises(kvm.KvmError) as raised:
        vm.irq_line(_irq(kvm.KVM_ARM_IRQ_TYPE_CPU, 0, 2), 1)
    assert raised.value.errno == errno.EINVAL
    with pytest.raises(kvm.KvmError) as raised:
        vm.irq_line(_irq(kvm.KVM_ARM_IRQ_TYPE_CPU, 0, kvm.KVM_ARM_IRQ_CPU_FIQ), 1)
    assert raised.value.errno == errno.ENXIO


def test_the_vm_and_vcpu_have_the_vmapi_shapes():
    from guestdbg import vmapi
    vm = Arm64Vm()
    assert isinstance(vm, vmapi.Vm)
    assert isinstance(vm.create_vcpu(), vmapi.Arm64Vcpu)


def test_overlapping_memory_region_is_eexist_and_loses_nothing():
    """KVM_SET_USER_MEMORY_REGION that would overlap another slot fails with EEXIST and leaves
    both slots as they were, the moved one included (and its contents)."""
    vm = Arm64Vm()
    vm.set_user_memory_region(0, 0x4000_0000, 0x10000)
    vm.set_user_memory_region(1, 0x5000_0000, 0x10000)
    vm.write_phys(0x5000_0000, b"kept")
    with pytest.raises(kvm.KvmError) as raised:
        vm.set_user_memory_region(1, 0x4000_8000, 0x10000)  # move slot 1 onto slot 0
    assert raised.value.errno == errno.EEXIST
    assert sorted((s.slot, s.guest_phys_addr, s.memory_size) for s in vm.slots.values()) == [
        (0, 0x4000_0000, 0x10000), (1, 0x5000_0000, 0x10000)]
    assert vm.read_phys(0x5000_0000, 4) == b"kept"
    # Moving a slot over its own old range is no overlap.
    vm.set_user_memory_region(1, 0x5000_8000, 0x10000)
    assert vm.slots[1].guest_phys_addr == 0x5000_8000


# -- several vCPUs: one Unicorn engine each, over the VM's one copy of guest memory ----------

MRS_X0_MPIDR = 0xD53800A0
STR_X1_X2 = 0xF9000041      # str x1, [x2]
LDR_X3_X2 = 0xF9400043      # ldr x3, [x2]
MOV_X0_1, MOV_X0_2 = 0xD2800020, 0xD2800040
NOP = 0xD503201F


def _code(*words: int) -> bytes:
    return b"".join(w.to_bytes(4, "little") for w in words)


def _vm_with_ram(n_vcpus: int) -> tuple[Arm64Vm, list]:
    vm = Arm64Vm()
    vm.set_user_memory_region(0, 0x4000_0000, 0x10000)
    return vm, [vm.create_vcpu(i) for i in range(n_vcpus)]


def _run_at(vcpu, pc: int, insns: int) -> None:
    from unicorn import arm64_const as uca
    vcpu.uc.reg_write(uca.UC_ARM64_REG_PC, pc)
    assert vcpu.run(icount_limit=vcpu.icount + insns).exit_reason == kvm.EXIT_ICOUNT_LIMIT


def test_vcpus_have_their_own_mpidr_aff0():
    from unicorn import arm64_const as uca
    vm, vcpus = _vm_with_ram(3)
    vm.write_phys(0x4000_0000, _code(MRS_X0_MPIDR, NOP))
    for i, vcpu in enumerate(vcpus):
        _run_at(vcpu, 0x4000_0000, 1)
        assert vcpu.uc.reg_read(uca.UC_ARM64_REG_X0) == 0x8000_0000 | i
        assert vcpu.get_one_reg(kvm_regs.sysreg_id("MPIDR_EL1")) == 0x8000_0000 | i
    vcpus[2].set_one_reg(kvm_regs.sysreg_id("MPIDR_EL1"), 0x8000_0107)  # settable, as on KVM
    _run_at(vcpus[2], 0x4000_0000, 1)
    assert vcpus[2].uc.reg_read(uca.UC_ARM64_REG_X0) == 0x8000_0107


def test_vcpus_share_guest_memory_without_copies():
    from unicorn import arm64_const as uca
    vm, (a, b) = _vm_with_ram(2)
    vm.write_phys(0x4000_0000, _code(STR_X1_X2, NOP, LDR_X3_X2, NOP))
    a.uc.reg_write(uca.UC_ARM64_REG_X1, 0x1122_3344_5566_7788)
    a.uc.reg_write(uca.UC_ARM64_REG_X2, 0x4000_8000)
    b.uc.reg_write(uca.UC_ARM64_REG_X2, 0x4000_8000)
    _run_at(a, 0x4000_0000, 1)      # vCPU 0 stores ...
    _run_at(b, 0x4000_0008, 1)      # ... vCPU 1 loads it
    assert b.uc.reg_read(uca.UC_ARM64_REG_X3) == 0x1122_3344_5566_7788
    assert vm.read_phys(0x4000_8000, 8) == (0x1122_3344_5566_7788).to_bytes(8, "little")


def test_write_phys_is_seen_by_every_vcpus_translated_code():
    """The debugger patches code through write_phys: no vCPU may keep running its old
    translation (here: `mov x0, #1` replaced by `mov x0, #2` after both ran it)."""
    from unicorn import arm64_const as uca
    vm, vcpus = _vm_with_ram(2)
    vm.write_phys(0x4000_0000, _code(MOV_X0_1, NOP))
    for vcpu in vcpus:
        _run_at(vcpu, 0x4000_0000, 1)
        assert vcpu.uc.reg_read(uca.UC_ARM64_REG_X0) == 1
    vm.write_phys(0x4000_0000, _code(MOV_X0_2))
    for vcpu in vcpus:
        _run_at(vcpu, 0x4000_0000, 1)
        assert vcpu.uc.reg_read(uca.UC_ARM64_REG_X0) == 2


def test_rom_slot_drops_guest_stores_on_every_vcpu():
    from unicorn import arm64_const as uca
    vm = Arm64Vm()
    vm.set_user_memory_region(0, 0x0, 0x10000, kvm.KVM_MEM_READONLY)
    vm.set_user_memory_region(1, 0x4000_0000, 0x10000)
    vcpus = [vm.create_vcpu(i) for i in range(2)]
    vm.write_phys(0x100, b"\xaa" * 8)
    vm.write_phys(0x4000_0000, _code(STR_X1_X2, NOP))
    for vcpu in vcpus:
        vcpu.uc.reg_write(uca.UC_ARM64_REG_X1, 0x55)
        vcpu.uc.reg_write(uca.UC_ARM64_REG_X2, 0x100)
        vcpu.uc.reg_write(uca.UC_ARM64_REG_PC, 0x4000_0000)
        run = vcpu.run()
        assert run.exit_reason == kvm.KVM_EXIT_MMIO and run.mmio.is_write and run.mmio.phys_addr == 0x100
        _run_at(vcpu, vcpu.pc, 1)  # completes the exit; the store is dropped
    assert vm.read_phys(0x100, 8) == b"\xaa" * 8


def test_read_and_write_phys_span_adjacent_slots():
    vm = Arm64Vm()
    vm.set_user_memory_region(0, 0x4000_0000, 0x1000)
    vm.set_user_memory_region(1, 0x4000_1000, 0x1000)
    vm.write_phys(0x4000_0ffc, b"abcdefgh")
    assert vm.read_phys(0x4000_0ffc, 8) == b"abcdefgh"
    with pytest.raises(kvm.KvmError) as raised:
        vm.read_phys(0x4000_1ffc, 8)  # runs off the end of RAM: no partial read
    assert raised.value.errno == errno.EFAULT


def test_create_vcpu_ids():
    vm = Arm64Vm()
    vm.create_vcpu(0)
    with pytest.raises(kvm.KvmError) as raised:
        vm.create_vcpu(0)
    assert raised.value.errno == errno.EEXIST
    with pytest.raises(kvm.KvmError) as raised:
        vm.create_vcpu(8)
    assert raised.value.errno == errno.EINVAL
    vm.create_vcpu(7)
    assert sorted(vm.vcpus) == [0, 7]


def test_written_ranges_until_a_vcpu_runs():
    """Before any vCPU ran, guest memory is zero except where the host wrote (snapshots skip
    the rest unread); afterwards the VM cannot tell."""
    vm, (vcpu,) = _vm_with_ram(1)
    assert vm.written_ranges() == []
    vm.write_phys(0x4000_0000, _code(NOP, NOP))
    assert vm.written_ranges() == [(0x4000_0000, 0x4000_0008)]
    _run_at(vcpu, 0x4000_0000, 1)
    assert vm.written_ranges() is None


def test_userspace_addr_memory_is_the_callers_and_outlives_its_slot():
    """KVM_SET_USER_MEMORY_REGION with the VMM's own memory: the guest and read_phys see it,
    deleting the slot leaves it (a flash bank leaving read-array mode), mapping it again
    brings the same bytes back, with no copy."""
    import ctypes
    import mmap
    memory = mmap.mmap(-1, 0x10000)
    address = ctypes.addressof(ctypes.c_char.from_buffer(memory))
    memory[0x100:0x104] = b"host"
    vm = Arm64Vm()
    vm.set_user_memory_region(0, 0x4000_0000, 0x10000, userspace_addr=address)
    assert vm.read_phys(0x4000_0100, 4) == b"host"
    vm.write_phys(0x4000_0200, b"vm")
    assert memory[0x200:0x202] == b"vm"
    vm.set_user_memory_region(0, 0x4000_0000, 0)
    assert memory[0x100:0x104] == b"host"
    memory[0x300:0x302] = b"ok"
    vm.set_user_memory_region(0, 0x4000_0000, 0x10000, userspace_addr=address)
    assert vm.read_phys(0x4000_0300, 2) == b"ok"
    with pytest.raises(kvm.KvmError) as raised:
        vm.set_user_memory_region(1, 0x5000_0000, 0x1000, userspace_addr=address + 8)
    assert raised.value.errno == errno.EINVAL
