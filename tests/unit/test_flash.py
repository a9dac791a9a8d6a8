"""The CFI flash model (board/flash.py): the Intel command set state machine, the query table
U-Boot and Linux read, and the switch between the read-only memory slot and I/O mode."""

from __future__ import annotations

import pytest

from guestdbg import kvm
from guestdbg.backends.unicorn_arm64 import Arm64Vm
from guestdbg.board import flash as f
from guestdbg.board.flash import CfiFlash

BASE = 0x0400_0000
SLOT = 2
MIB = 1 << 20


@pytest.fixture(scope="module")
def vm():
    return Arm64Vm()


@pytest.fixture
def bank(vm):
    b = CfiFlash(vm, SLOT, BASE)
    yield b
    vm.set_user_memory_region(SLOT, BASE, 0)


def slot_mapped(vm) -> bool:
    s = vm.slots.get(SLOT)
    return s is not None and s.readonly and (s.guest_phys_addr, s.memory_size) == (BASE, 64 * MIB)


def w(bank: CfiFlash, offset: int, value: int, size: int = 4) -> None:
    bank.mmio(offset, size, True, value)


def r(bank: CfiFlash, offset: int, size: int = 4) -> int:
    return bank.mmio(offset, size, False, 0)


def query(bank: CfiFlash, chip_offset: int) -> int:
    """One chip's CFI byte, read as U-Boot does on a 32-bit bank (both x16 chips answer)."""
    value = r(bank, chip_offset * 4)
    assert value >> 16 == value & 0xFFFF  # the same answer in both chips' lanes
    return value & 0xFF


def test_starts_in_read_array_mode_on_a_readonly_slot(vm, bank):
    assert bank.romd and slot_mapped(vm)
    vm.write_phys(BASE + 0x100, b"\x11\x22\x33\x44")  # a loader's write
    assert r(bank, 0x100) == 0x44332211


def test_cfi_query_as_qemu_virt_answers(vm, bank):
    w(bank, 0x55 * 4, 0x00980098)
    assert not bank.romd and SLOT not in vm.slots  # I/O mode: every access exits
    assert bytes(query(bank, 0x10 + i) for i in range(3)) == b"QRY"
    assert query(bank, 0x13) == 0x01 and query(bank, 0x15) == 0x31  # Intel command set, PRI at 0x31
    assert query(bank, 0x27) == 25  # each x16 chip holds 32 MiB of the 64 MiB bank
    assert query(bank, 0x28) == 0x02 and query(bank, 0x2A) == 11  # x8/x16; 2 KiB write buffer
    assert query(bank, 0x2C) == 1  # one erase block region:
    assert query(bank, 0x2D) | query(bank, 0x2E) << 8 == 255  # 256 blocks
    assert (query(bank, 0x2F) | query(bank, 0x30) << 8) << 8 == 128 << 10  # of 128 KiB per chip
    assert bytes(query(bank, 0x31 + i) for i in range(5)) == b"PRI10"
    assert r(bank, 0x10 * 4, 2) == ord("Q")  # a narrower read: one chip's lane
    w(bank, 0, 0xFF)
    assert bank.cmd == 0


def test_read_id_and_status(bank):
    w(bank, 0, 0x00900090)
    assert r(bank, 0) == 0x00890089 and r(bank, 4) == 0x00180018
    assert r(bank, 8) == 0  # block lock status: unlocked
    w(bank, 0, 0x00700070)
    assert r(bank, 0) == 0x00800080  # SR.7 ready, in both chips
    w(bank, 0, 0x50)  # clear status, back to read array
    assert bank.status == 0 and bank.cmd == 0


def test_erase_then_word_program(vm, bank):
    vm.write_phys(BASE + 0x40000, b"\x00" * 8)
    w(bank, 0x40004, 0x20)
    assert r(bank, 0x40004) == 0x00800080  # reads return status while the command runs
    w(bank, 0x40004, 0xD0)  # confirm: the block at the confirm's address
    assert r(bank, 0x40000) == 0x00800080
    w(bank, 0x40000, 0x40)
    w(bank, 0x40000, 0xCAFEF00D)
    assert r(bank, 0x40000) & 0x80
    w(bank, 0x40000, 0xFF)
    assert bank.contents()[0x40000:0x40008] == bytes.fromhex("0df0feca ffffffff")
    assert bank.contents()[0x3FFFF:0x40000] == b"\x00"  # the block before is untouched
    assert bank.contents()[0x7FFFF] == 0xFF and bank.contents()[0x80000] == 0  # 256 KiB erased


def test_buffered_write_as_u_boot_does(bank):
    w(bank, 0x80000, 0x20)
    w(bank, 0x80000, 0xD0)
    w(bank, 0x80000, 0x50, 2)
    w(bank, 0x80000, 0xE8, 2)
    assert r(bank, 0x80000, 2) & 0x80  # XSR: a buffer is free
    words = [0x1111, 0x2222, 0x3333, 0x4444]
    w(bank, 0x80000, len(words) - 1, 2)  # the word count less one
    for i, word in enumerate(words):
        w(bank, 0x80000 + 2 * i, word, 2)
    assert bank.wcycle == 3
    w(bank, 0x80000, 0xD0, 2)
    assert r(bank, 0x80000, 2) == 0x80
    w(bank, 0x80000, 0xFF, 2)
    assert bank.contents()[0x80000:0x8000A] == bytes.fromhex("1111 2222 3333 4444 ffff")


def test_unconfirmed_buffer_is_a_program_error(bank):
    w(bank, 0, 0xE8)
    w(bank, 0, 0)
    w(bank, 0, 0x12345678)
    w(bank, 0, 0x70)  # not 0xD0
    assert bank.status & f.SR_PROGRAM_ERROR and bank.cmd == 0


def test_lock_and_unlock_are_accepted(bank):
    for second in (0x01, 0xD0):
        w(bank, 0x40000, 0x60)
        w(bank, 0x40000, second)
        assert r(bank, 0x40000) & 0x80 and bank.wcycle == 0
    w(bank, 0, 0xFF)


def test_slot_comes_back_after_the_guest_reads_the_array(vm, bank):
    w(bank, 0, 0x90)
    w(bank, 0, 0xFF)
    assert SLOT not in vm.slots  # array reads are served through MMIO for a while
    for _ in range(f.ARRAY_READS_BEFORE_ROMD - 1):
        r(bank, 0)
    assert SLOT not in vm.slots
    r(bank, 0)
    assert bank.romd and slot_mapped(vm)


def test_contents_survive_the_round_trip_and_reset(vm, bank):
    vm.write_phys(BASE + 60 * MIB, b"keep me")
    w(bank, 0, 0x20)
    w(bank, 0, 0xD0)
    bank.reset()  # power-on: read-array mode, the slot back
    assert slot_mapped(vm) and bank.status == f.SR_READY
    assert vm.read_phys(BASE, 4) == b"\xff" * 4
    assert vm.read_phys(BASE + 60 * MIB, 7) == b"keep me"


def test_readonly_slot_write_is_a_command(vm, bank):
    """In read-array mode the guest's writes reach the model (the slot is KVM_MEM_READONLY)."""
    assert vm.slots[SLOT].flags == kvm.KVM_MEM_READONLY
    w(bank, 0, 0x98)
    assert bank.cmd == 0x98 and not bank.romd


def test_state_round_trip_in_io_mode(vm, bank):
    w(bank, 0, 0x40)
    w(bank, 0x10, 0x5A5A5A5A)
    w(bank, 0, 0x70)
    state = bank.state()
    bank.reset()
    w(bank, 0x10, 0x20)
    w(bank, 0x10, 0xD0)
    bank.restore(state)
    assert bank.cmd == 0x70 and not bank.romd
    assert bank.contents()[0x10:0x14] == b"\x5a" * 4


def test_completed_operations_are_written_through(bank):
    seen: list[tuple[int, bytes]] = []
    bank.on_change = lambda offset, data: seen.append((offset, data))
    w(bank, 0x104, 0x40)
    assert seen == []
    w(bank, 0x104, 0x01020304)
    assert seen == [(0x104, b"\x04\x03\x02\x01")]
    w(bank, 0x40000, 0x20)
    w(bank, 0x40000, 0xD0)
    assert seen[1] == (0x40000, b"\xff" * (256 << 10))
