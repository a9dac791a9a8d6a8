"""Arm64Vm calls that need no guest."""

from __future__ import annotations

import errno

import pytest

from guestdbg import kvm
from guestdbg.backends.unicorn_arm64 import Arm64Vm


def test_irq_line_without_an_interrupt_controller_is_enxio():
    """KVM_IRQ_LINE before KVM_CREATE_IRQCHIP: KVM answers ENXIO, and so does the emulated VM."""
    vm = Arm64Vm()
    with pytest.raises(kvm.KvmError) as raised:
        vm.irq_line(33, 1)
    assert raised.value.errno == errno.ENXIO
    assert "KVM_CREATE_IRQCHIP" in str(raised.value)


def test_the_vm_and_vcpu_have_the_vmapi_shapes():
    from guestdbg import vmapi
    vm = Arm64Vm()
    assert isinstance(vm, vmapi.Vm)
    assert isinstance(vm.create_vcpu(), vmapi.Arm64Vcpu)
