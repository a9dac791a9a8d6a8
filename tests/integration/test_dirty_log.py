"""KVM_MEM_LOG_DIRTY_PAGES / KVM_GET_DIRTY_LOG on the emulated VM (backends/unicorn_arm64/
_dirtylog.c): the pages the guest's stores and the host's writes touched since the last call,
one bit per page; reads dirty nothing; turning logging on and off keeps the memory."""

from __future__ import annotations

import errno

import pytest

from guestdbg import kvm
from guestdbg.board.virt import RAM_BASE, SLOT_RAM, VirtConfig, VirtMachine
from tests.helpers.mmu_guest import assemble

PAGE = 4096
# Stores to three pages of RAM (one of them twice, one store across a page boundary), loads
# from two others, then a branch to itself.
GUEST = rf"""
    .text
    .global _start
_start:
    ldr     x1, =0x{RAM_BASE + 0x200000:x}
    mov     x2, #0x55
    str     x2, [x1]                 // page 0x200
    str     x2, [x1, #8]             // page 0x200 again
    ldr     x3, [x1, #0x1000]        // a load: page 0x201 stays clean
    ldr     x4, =0x{RAM_BASE + 0x203ffc:x}
    str     x2, [x4]                 // 8 bytes across pages 0x203 and 0x204
    ldr     x5, [x1, #0x5000]        // a load
1:  b       1b
"""


def dirty_pages(log: bytes) -> set[int]:
    return {i * 8 + b for i, byte in enumerate(log) for b in range(8) if byte >> b & 1}


@pytest.fixture
def machine(tmp_path):
    elf = assemble(tmp_path, "dirty", GUEST)
    m = VirtMachine(VirtConfig(), console=lambda b: None)
    m.load_elf(elf)
    return m


def log_on(m: VirtMachine, on: bool = True) -> None:
    slot = m.vm.slots[SLOT_RAM]
    flags = kvm.KVM_MEM_LOG_DIRTY_PAGES if on else 0
    m.vm.set_user_memory_region(SLOT_RAM, slot.guest_phys_addr, slot.memory_size, flags)


def test_the_guest_stores_and_host_writes_since_the_last_call(machine):
    m = machine
    code = m.vm.read_phys(0x40080000, 64)
    log_on(m)
    assert m.vm.read_phys(0x40080000, 64) == code  # the flags change kept the memory
    assert dirty_pages(m.vm.get_dirty_log(SLOT_RAM)) == set()
    run = m.run_until(icount_limit=11)
    assert isinstance(run, kvm.KvmRun) and run.exit_reason == kvm.EXIT_ICOUNT_LIMIT
    assert dirty_pages(m.vm.get_dirty_log(SLOT_RAM)) == {0x200, 0x203, 0x204}
    assert m.vm.read_phys(RAM_BASE + 0x200000, 8) == (0x55).to_bytes(8, "little")
    assert dirty_pages(m.vm.get_dirty_log(SLOT_RAM)) == set()  # each call starts a new log
    m.vm.write_phys(RAM_BASE + 0x7000, b"x" * (PAGE + 1))  # the host's writes count too
    m.vm.write_phys_pages([(RAM_BASE + 0x30000, b"y" * PAGE)])
    assert dirty_pages(m.vm.get_dirty_log(SLOT_RAM)) == {7, 8, 0x30}
    assert m.vm.read_phys(RAM_BASE + 0x7000, PAGE + 1) == b"x" * (PAGE + 1)


def test_logging_off_and_errors(machine):
    m = machine
    with pytest.raises(kvm.KvmError) as e:
        m.vm.get_dirty_log(SLOT_RAM)  # not logging: ENOENT, as KVM answers
    assert e.value.errno == errno.ENOENT
    log_on(m)
    log_on(m, False)
    with pytest.raises(kvm.KvmError):
        m.vm.get_dirty_log(SLOT_RAM)
    m.run_until(icount_limit=11)  # stores work with the log off again
    assert m.vm.read_phys(RAM_BASE + 0x200008, 8) == (0x55).to_bytes(8, "little")
    with pytest.raises(kvm.KvmError):
        m.vm.get_dirty_log(0)  # flash0: a read-only slot
    with pytest.raises(kvm.KvmError):
        slot = m.vm.slots[0]
        m.vm.set_user_memory_region(0, slot.guest_phys_addr, slot.memory_size,
                                    slot.flags | kvm.KVM_MEM_LOG_DIRTY_PAGES, userspace_addr=slot.userspace_addr)


def test_many_machines_come_and_go(tmp_path):
    """Logging ends with the memory: machines dropped while logging free their entries (more
    machines than the log has entries for), and a new mapping at a reused address logs afresh."""
    import gc
    for _ in range(40):
        m = VirtMachine(VirtConfig(ram_size=1 << 20), console=lambda b: None)
        log_on(m)
        m.vm.write_phys(RAM_BASE, b"z")
        assert dirty_pages(m.vm.get_dirty_log(SLOT_RAM)) == {0}
        del m
        gc.collect()
