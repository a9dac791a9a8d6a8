"""Arm64Vm calls that need no guest."""

from __future__ import annotations

import errno

import pytest

from guestdbg import kvm
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
