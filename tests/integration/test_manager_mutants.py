"""GuestDebugManager behaviour pinned for mutation testing (issue 14, bench/README.md "Mutation
testing"): each test here kills mutants of debug/manager.py that the other fast tests let
survive. Exact values only (PCs, bytes, regions, messages), on the emulated vCPU; no timing."""

from __future__ import annotations

import errno
import signal

import pytest

from guestdbg import kvm
from guestdbg.arm import registers as arm_registers
from guestdbg.debug.arch import BRK0, Arm64DebugArch
from guestdbg.debug.manager import (DebugError, DebugPoint, GuestDebugManager, StopKind,
                                    WatchKind)
from guestdbg.board.virt import VirtConfig, VirtMachine
from guestdbg.debug.profile import ArchProfile
from guestdbg.debug.regions import PhysRegion
from tests.helpers.support import Guest, Without, kvm_unavailable_reason, movk_w0_16, movz_w0, reg_id, words

RAM = 0x4000_0000
RAM_END = 0x4800_0000  # the default 128 MiB


def _guest(guest_dir, name: str = "bp_targets") -> tuple[Guest, GuestDebugManager]:
    g = Guest(guest_dir / f"{name}.elf")
    m = GuestDebugManager(g.machine)
    m.in_run_breakpoints = False  # BRK patches (KVM's mechanism), whose bookkeeping these pin
    return g, m


# ---------------------------------------------------------------------------------------------
# memory_region / memory_layout: the pages around a VA through the guest's own tables

# Stage-1 tables written straight into RAM and switched on through ONE_REG (no guest code runs):
# 4 KiB granule, T0SZ = 25 (VA[38:0], level 1 first), TTBR1 walks disabled (EPD1).
L1, L2, L3 = 0x4100_0000, 0x4100_1000, 0x4100_2000
BLOCK = 0x705           # AF | inner shareable | AttrIndx 1 (normal) | block
PAGE = 0x707            # the same as a level-3 page
TABLE = 0x3
XN = 1 << 53 | 1 << 54  # PXN | UXN
AP_RO = 1 << 7          # AP[2]: read-only at EL1
TCR = 25 | 1 << 8 | 1 << 10 | 3 << 12 | 25 << 16 | 1 << 23 | 2 << 30 | 2 << 32
ALIAS = 0x8000_0000
# VA ALIAS + n * 4 KiB -> (pa, extra attributes), None = unmapped.
ALIAS_PAGES = [
    (0x4020_0000, XN),          # 0, 1: contiguous, same permissions: one region
    (0x4020_1000, XN),
    (0x4030_0000, XN),          # 2: same permissions, but not the next physical page
    (0x4030_1000, XN | AP_RO),  # 3: read-only
    (0x4030_2000, 0),           # 4: executable
    None,                       # 5: a one-page hole
    (0x0900_0000, XN),          # 6: the PL011
    None,                       # 7 onwards: unmapped
]


def _mmu_on(g: Guest) -> None:
    def q(pa: int, value: int) -> None:
        g.vm.write_phys(pa, value.to_bytes(8, "little"))
    q(L1 + 8 * 1, RAM | BLOCK)      # VA 1 GiB..2 GiB: RAM, identity, read/write/execute
    q(L1 + 8 * 2, L2 | TABLE)       # VA 2 GiB..: the pages above
    q(L2, L3 | TABLE)
    for n, page in enumerate(ALIAS_PAGES):
        if page is not None:
            q(L3 + 8 * n, page[0] | PAGE | page[1])
    v = g.vcpu
    v.set_one_reg(reg_id("TTBR0_EL1"), L1)
    v.set_one_reg(reg_id("TCR_EL1"), TCR)
    v.set_one_reg(reg_id("MAIR_EL1"), 0xFF00)
    v.set_one_reg(reg_id("SCTLR_EL1"), v.get_one_reg(reg_id("SCTLR_EL1")) | 1)


def test_memory_region_with_the_mmu_off_is_the_board_layout(guest_dir):
    g, m = _guest(guest_dir)
    layout = m.memory_layout()
    assert [(r.start, r.end, r.kind, r.name) for r in layout] == [
        (0, 0x400_0000, "rom", "rom"), (0x400_0000, 0x800_0000, "rom", "rom"),
        (0x800_0000, 0x802_0000, "mmio", "gic"), (0x900_0000, 0x900_1000, "mmio", "pl011"),
        (RAM, RAM_END, "ram", "ram")]
    assert m.memory_region(RAM + 0x1234) == layout[4]
    assert m.memory_region(0x900_0fff) == layout[3]
    assert m.memory_region(0x802_0000) == PhysRegion(0x802_0000, 0x900_0000, "hole")
    # The MMU off: a VA is a physical address, with physical=True or not.
    assert m.memory_region(ALIAS, physical=True) == m.memory_region(ALIAS)


def test_memory_region_follows_the_page_tables(guest_dir):
    g, m = _guest(guest_dir)
    _mmu_on(g)
    R = m.memory_region
    assert R(ALIAS + 0x123) == PhysRegion(ALIAS, ALIAS + 0x2000, "ram", "ram", "rw")
    assert R(ALIAS + 0x1fff) == PhysRegion(ALIAS + 0x1000, ALIAS + 0x2000, "ram", "ram", "rw")
    assert R(ALIAS + 0x2000) == PhysRegion(ALIAS + 0x2000, ALIAS + 0x3000, "ram", "ram", "rw")
    assert R(ALIAS + 0x3000) == PhysRegion(ALIAS + 0x3000, ALIAS + 0x4000, "ram", "ram", "r")
    assert R(ALIAS + 0x4000) == PhysRegion(ALIAS + 0x4000, ALIAS + 0x5000, "ram", "ram", "rwx")
    assert R(ALIAS + 0x5000) == PhysRegion(ALIAS + 0x5000, ALIAS + 0x6000, "hole")
    assert R(ALIAS + 0x6abc) == PhysRegion(ALIAS + 0x6000, ALIAS + 0x7000, "mmio", "pl011", "rw")
    # Unmapped or mapped alike, one answer covers at most 1 MiB.
    assert R(ALIAS + 0x7000) == PhysRegion(ALIAS + 0x7000, ALIAS + 0x10_7000, "hole")
    assert R(RAM) == PhysRegion(RAM, RAM + 0x10_0000, "ram", "ram", "rwx")
    # A region ends where the memory behind it changes kind (RAM's end, inside one block)...
    assert R(RAM_END - 0x1000) == PhysRegion(RAM_END - 0x1000, RAM_END, "ram", "ram", "rwx")
    # ... and past it the tables still allow everything, over no memory.
    assert R(RAM_END) == PhysRegion(RAM_END, RAM_END + 0x10_0000, "hole", "", "rwx")
    # Where a mapping starts, the hole before it ends.
    assert R(RAM - 0x1000) == PhysRegion(RAM - 0x1000, RAM, "hole")
    # The last page of the address space: the answer stops at 2**64.
    assert R(2**64 - 0x1000) == PhysRegion(2**64 - 0x1000, 2**64, "hole")
    # physical=True: the board's layout, whatever the tables say.
    assert R(ALIAS, physical=True) == PhysRegion(RAM_END, 2**64 - 1, "hole")
    assert R(0x900_0000, physical=True) == PhysRegion(0x900_0000, 0x900_1000, "mmio", "pl011")


# ---------------------------------------------------------------------------------------------
# debug points: listing, describing and removing each kind


def test_describe_names_kind_address_and_mechanism():
    assert DebugPoint("break", 0x4008_0010, 4, "software (BRK at pa 0x40080010)").describe() == \
        "break   0x40080010  software (BRK at pa 0x40080010)"
    assert DebugPoint("hbreak", 0x10, 4, "slot 1").describe() == "hbreak  0x10  slot 1"
    assert DebugPoint("watch", 0x4010_0000, 8, "hw:0").describe() == "watch   0x40100000+8  hw:0"
    assert DebugPoint("awatch", 0x20, 3, "page-trap").describe() == "awatch  0x20+3  page-trap"


def test_remove_debug_point_removes_exactly_that_point(guest_dir):
    g, m = _guest(guest_dir)
    a, b = g.sym["bp_a"], g.sym["bp_b"]
    count = g.sym["bp_a_count"]
    original = g.read(a, 4)
    m.add_breakpoint(a)
    m.add_hw_breakpoint(b)
    m.add_watchpoint(count, 4, WatchKind.WRITE)
    m.add_watchpoint(count, 4, WatchKind.READ)
    m.add_watchpoint(count + 4, 2, WatchKind.ACCESS)
    pts = m.debug_points()
    assert pts == [DebugPoint("hbreak", b, 4, "slot 0"),
                   DebugPoint("break", a, 4, f"software (BRK #0 at pa {a:#x})"),
                   DebugPoint("watch", count, 4, "hw:0"),
                   DebugPoint("rwatch", count, 4, "hw:1"),
                   DebugPoint("awatch", count + 4, 2, "hw:2")]
    m.remove_debug_point(pts[3])  # the rwatch, not the watch on the same bytes
    assert m.debug_points() == [pts[0], pts[1], pts[2], pts[4]]
    m.remove_debug_point(pts[1])  # the software breakpoint: its bytes come back
    assert g.read(a, 4) == original
    assert m.debug_points() == [pts[0], pts[2], pts[4]]
    m.remove_debug_point(pts[0])
    m.remove_debug_point(pts[4])
    assert m.debug_points() == [pts[2]]
    m.remove_debug_point(pts[2])
    assert m.debug_points() == []
    with pytest.raises(DebugError) as e:
        m.remove_debug_point(pts[0])
    assert e.value.errno == errno.ENOENT
    # Nothing is left armed: the guest runs to its end with no stop.
    assert m.cont().kind is StopKind.EXITED


# ---------------------------------------------------------------------------------------------
# registers and PC


def test_set_pc_moves_the_pc_and_refuses_no_address(guest_dir):
    g, m = _guest(guest_dir)
    entry = g.pc
    for bad in (-1, 2**64):
        with pytest.raises(DebugError) as e:
            m.set_pc(bad)
        assert e.value.errno == errno.EINVAL and str(e.value) == f"no address {bad:#x}"
    assert g.pc == entry
    m.set_pc(0)  # the first address there is
    assert g.pc == 0
    m.set_pc(2**64 - 4)  # and the last
    assert g.pc == 2**64 - 4
    m.set_pc(g.sym["bp_b"])
    assert g.pc == g.sym["bp_b"]


def test_write_all_registers_writes_every_value_or_none(guest_dir):
    g, m = _guest(guest_dir)
    values = m.read_registers()
    values[0], values[5] = 0x1234_5678_9ABC_DEF0, 55
    m.write_all_registers(values)
    assert (g.reg("x0"), g.reg("x5")) == (0x1234_5678_9ABC_DEF0, 55)
    assert m.read_registers() == values
    with pytest.raises(DebugError) as e:
        m.write_all_registers([7] + values[1:-1])  # one value short
    assert e.value.errno == errno.EINVAL
    assert str(e.value) == f"expected {len(values)} register values, got {len(values) - 1}"
    assert g.reg("x0") == 0x1234_5678_9ABC_DEF0  # nothing written
    bad = list(values)
    bad[0] = 1 << 64
    with pytest.raises(DebugError) as e:
        m.write_all_registers(bad)
    assert e.value.errno == errno.EINVAL and str(e.value) == "x0: value 0x10000000000000000 does not fit 64 bits"
    assert m.read_registers() == values


def test_check_extension_is_the_vms():
    mch = VirtMachine(VirtConfig(brps=3, wrps=5), console=lambda data: None)
    m = GuestDebugManager(mch)
    assert m.check_extension(kvm.KVM_CAP_GUEST_DEBUG_HW_BPS) == 3
    assert m.check_extension(kvm.KVM_CAP_GUEST_DEBUG_HW_WPS) == 5


# ---------------------------------------------------------------------------------------------
# interrupts


def test_a_discarded_interrupt_does_not_stop_the_next_resume(guest_dir):
    g, m = _guest(guest_dir)
    m.add_breakpoint(g.sym["bp_b"])
    m.interrupt()  # raced with a stop: the guest is stopped already
    m.discard_interrupt()
    e = m.cont()
    assert e.kind is StopKind.SWBREAK and e.pc == g.sym["bp_b"]
    # Not discarded, the same interrupt stops the next resume at once, where the guest is.
    m.interrupt()
    e = m.cont()
    assert e.kind is StopKind.SIGNAL and e.signal == signal.SIGINT and e.pc == g.sym["bp_b"]


# ---------------------------------------------------------------------------------------------
# reset


def test_reset_restores_the_machine_and_keeps_breakpoints(guest_dir):
    g, m = _guest(guest_dir)
    entry, a, b = g.pc, g.sym["bp_a"], g.sym["bp_b"]
    image = g.read(0x4010_0000, 0x2000)
    m.add_breakpoint(entry)
    m.add_breakpoint(a)
    e = m.cont()  # stopped at the entry already: this run meets the breakpoint there
    assert e.kind is StopKind.SWBREAK and e.pc == entry
    assert m.cont().pc == a
    m.write_memory(b, bytes.fromhex("1f2003d5"))  # nop, over bp_b's first instruction
    m.write_memory(a, bytes.fromhex("1f2003d5"))  # and under the breakpoint at bp_a
    m.reset()
    assert g.pc == entry
    # Memory as when the manager was created, the breakpoints patched over it again, their
    # originals the reset code's.
    assert m.read_memory(0x4010_0000, 0x2000) == image
    assert g.read(a, 4) == BRK0 and g.read(entry, 4) == BRK0
    assert g.read(b, 4) == image[b - 0x4010_0000:][:4]
    # Not stopped *at* anything: the breakpoint at the entry is hit first, as after power-on.
    e = m.cont()
    assert e.kind is StopKind.SWBREAK and e.pc == entry
    assert m.cont().pc == a
    m.remove_all()
    assert m.cont().kind is StopKind.EXITED
    assert g.text.endswith("bp_targets: a=3 b=3 c=3 brk=1\n")


# ---------------------------------------------------------------------------------------------
# memory through the guest's tables (the MMU on, as in the memory_region tests)


def test_reads_and_writes_go_page_by_page_through_the_tables(guest_dir):
    g, m = _guest(guest_dir)
    _mmu_on(g)
    # ALIAS + 0x1000 and + 0x2000 are adjacent virtual pages on distant physical ones.
    data = bytes(range(1, 33))
    m.write_memory(ALIAS + 0x2000 - 16, data)
    assert g.read(0x4020_1000 + 0xff0, 16) == data[:16]
    assert g.read(0x4030_0000, 16) == data[16:]
    assert m.read_memory(ALIAS + 0x2000 - 16, 32) == data
    # physical=True: the address is a physical one, not looked up in the tables (which map
    # nothing below 1 GiB: the flash at 0 has no virtual address).
    m.write_memory(0x4020_0008, b"\x5a" * 4, physical=True)
    assert m.read_memory(ALIAS + 8, 4) == b"\x5a" * 4
    assert m.read_memory(0x4020_0008, 4, physical=True) == b"\x5a" * 4
    m.write_memory(0x1000, b"flash", physical=True)  # the debugger writes ROM too
    assert m.read_memory(0x1000, 5, physical=True) == b"flash" == g.read(0x1000, 5)
    with pytest.raises(DebugError) as e:
        m.read_memory(0x1000, 5)
    assert e.value.errno == errno.EFAULT
    # All or nothing: a write running into the unmapped page, or onto the PL011 (no RAM or ROM
    # behind it), is refused before any byte is written.
    before = g.read(0x4030_2ff0, 16)
    with pytest.raises(DebugError) as e:
        m.write_memory(ALIAS + 0x5000 - 16, bytes(32))
    assert e.value.errno == errno.EFAULT
    assert g.read(0x4030_2ff0, 16) == before
    with pytest.raises(DebugError) as e:
        m.write_memory(ALIAS + 0x6000, b"A")
    assert e.value.errno == errno.EFAULT and str(e.value) == f"no RAM or ROM at {ALIAS + 0x6000:#x}"
    # A write that would run past the end of RAM.
    before = g.read(RAM_END - 2, 2)
    with pytest.raises(DebugError) as e:
        m.write_memory(RAM_END - 2, b"abcd", physical=True)
    assert e.value.errno == errno.EFAULT and str(e.value) == f"no RAM or ROM at {RAM_END:#x}"
    assert g.read(RAM_END - 2, 2) == before


# ---------------------------------------------------------------------------------------------
# hardware breakpoints in debug_points: ordered by slot; unmapped VAs listed as breaks


def test_debug_points_list_hardware_breakpoints_by_slot(guest_dir):
    g, m = _guest(guest_dir)
    _mmu_on(g)
    a, b, d = RAM + 0x30_0000, RAM + 0x20_0000, RAM + 0x10_0000
    hole = ALIAS + 0x5000  # unmapped: its Z0 takes a hardware slot
    m.add_hw_breakpoint(a)   # slot 0
    m.add_hw_breakpoint(b)   # slot 1
    m.add_hw_breakpoint(d)   # slot 2
    m.remove_hw_breakpoint(a)
    assert m.add_breakpoint(hole) == "hw"  # slot 0 again
    # Slot order (not the order of the VAs, nor of their arming).
    assert m.debug_points() == [DebugPoint("break", hole, 4, "hw (VA not mapped yet): slot 0"),
                                DebugPoint("hbreak", b, 4, "slot 1"),
                                DebugPoint("hbreak", d, 4, "slot 2")]
    assert m.slots_report() == [
        "hardware breakpoints: 3/6 used; hardware watchpoints: 0/4 used",
        f"  break   {hole:#x}  hw (VA not mapped yet): slot 0",
        f"  hbreak  {b:#x}  slot 1",
        f"  hbreak  {d:#x}  slot 2"]
    m.remove_debug_point(m.debug_points()[0])  # a "break" that is a hardware slot
    assert [p.addr for p in m.debug_points()] == [b, d]


# ---------------------------------------------------------------------------------------------
# watchpoints


def test_removing_a_watchpoint_forgets_its_condition(guest_dir):
    g, m = _guest(guest_dir)
    count = g.sym["bp_a_count"]
    m.add_breakpoint(g.sym["bp_a"])  # first run past _start, which zeroes .bss
    assert m.cont().pc == g.sym["bp_a"]
    m.remove_breakpoint(g.sym["bp_a"])
    m.add_watchpoint(count, 4, WatchKind.WRITE, condition=lambda view: False)  # never stops
    m.remove_watchpoint(count, 4, WatchKind.WRITE)
    assert not m.conditions  # its condition went with it
    with pytest.raises(DebugError) as e:
        m.remove_watchpoint(count, 4, WatchKind.WRITE)
    assert e.value.errno == errno.ENOENT and str(e.value) == f"no watch of 4 bytes at {count:#x}"
    m.add_watchpoint(count, 4, WatchKind.WRITE)  # no condition now: the first store stops
    e = m.cont()
    assert e.kind is StopKind.WATCH and e.watch_addr == count
    assert g.sym["bp_a"] < e.pc < g.sym["bp_b"]  # bp_a's store, stopped before it is done
    assert int.from_bytes(m.read_memory(count, 4), "little") == 0
    m.step()
    assert int.from_bytes(m.read_memory(count, 4), "little") == 1


# ---------------------------------------------------------------------------------------------
# vCPU state and step policy


def test_vcpu_state_without_the_boards_cpu_state(guest_dir):
    """A board without `cpu_state` (as the x86 pc board): the manager asks the vCPU whether it
    waits in WFI, and a vCPU with no `wfi_waiting` at all (x86's) is running."""
    g = Guest(guest_dir / "bp_targets.elf")
    m = GuestDebugManager(Without(g.machine, "cpu_state"))
    assert m.vcpu_state(0) == "running"
    g.vcpu.wfi_waiting = True
    assert m.vcpu_state(0) == "halted"
    m._vcpus = [Without(g.vcpu, "wfi_waiting")]
    assert m.vcpu_state(0) == "running"
    with pytest.raises(DebugError) as e:
        m.vcpu_state(1)
    assert e.value.errno == errno.ESRCH


def test_step_irq_mechanism_on_the_emulated_vcpu(guest_dir):
    g, m = _guest(guest_dir)
    assert m.can_block_step_irqs
    assert m.step_irq_mechanism() == \
        "the vCPU's singlestep_blocks_irq (IRQ input held, timer levels deferred)"
    assert m.step_irqs is False and g.vcpu.singlestep_blocks_irq is True  # the default: steps hold IRQs


# ---------------------------------------------------------------------------------------------
# the guest rewriting an instruction the debugger patched




MOV_X2_1, MOV_X2_7, MOV_X3_9 = 0xD2800022, 0xD28000E2, 0xD2800123
# At RAM: w0 = mov x2, #7; x1 = RAM + 0x10; str w0, [x1] (over the next instruction); then
# mov x2, #1 (rewritten: mov x2, #7); mov x3, #9; PSCI SYSTEM_OFF.
SELF_PATCH = words(movz_w0(MOV_X2_7), movk_w0_16(MOV_X2_7 >> 16),
                    0x10000041,                 # 0x08: adr x1, .+8
                    0xB9000020,                 # 0x0c: str w0, [x1]
                    MOV_X2_1,                   # 0x10
                    MOV_X3_9,                   # 0x14
                    movz_w0(8), movk_w0_16(0x8400), 0xD4000002)


def _self_patch(tmp_path, in_run: bool = False) -> tuple[VirtMachine, GuestDebugManager]:
    mch = VirtMachine(VirtConfig(), console=lambda data: None)
    image = tmp_path / "self_patch.bin"
    image.write_bytes(SELF_PATCH)
    mch.load_raw(image, RAM)
    m = GuestDebugManager(mch)
    m.in_run_breakpoints = in_run  # False: BRK patches, whose store traps these pin
    assert m.add_breakpoint(RAM + 0x10) == "sw" and m.add_breakpoint(RAM + 0x14) == "sw"
    return mch, m


@pytest.mark.parametrize("how", ["cont", "step"])
def test_a_guest_store_over_a_breakpoint_is_done_and_the_breakpoint_kept(tmp_path, how):
    mch, m = _self_patch(tmp_path)
    if how == "step":
        for pc in (0x4, 0x8, 0xC, 0x10):  # the fourth step is the store's
            e = m.step()
            assert (e.kind, e.pc) == (StopKind.STEP, RAM + pc)
    else:
        e = m.cont()  # the store is let through, then the new instruction's breakpoint hits
        assert (e.kind, e.pc) == (StopKind.SWBREAK, RAM + 0x10)
    # The guest's new code is under the breakpoint; both patches are in place.
    assert m.read_memory(RAM + 0x10, 8) == words(MOV_X2_7, MOV_X3_9)
    assert mch.vm.read_phys(RAM + 0x10, 8) == BRK0 + BRK0
    e = m.cont()
    assert (e.kind, e.pc) == (StopKind.SWBREAK, RAM + 0x14)
    m.remove_all()
    assert mch.vm.read_phys(RAM + 0x10, 8) == words(MOV_X2_7, MOV_X3_9)
    assert m.cont().kind is StopKind.EXITED
    assert [mch.vcpu.get_one_reg(reg_id(r)) for r in ("X2", "X3")] == [7, 9]


# ---------------------------------------------------------------------------------------------
# registers: errors, and the debugger's writes as recorded inputs


def test_register_reads_and_writes_refuse_what_does_not_exist(guest_dir):
    g, m = _guest(guest_dir)
    g.vcpu.set_one_reg(reg_id("X3"), 0x33)
    assert m.read_registers([3, 32]) == [0x33, g.pc]  # gdb's numbers: x3, pc
    assert m.read_registers([3], vcpu=0) == [0x33]
    assert m.read_registers(vcpu=0) == m.read_registers()
    n = len(m.read_registers())
    for call in (lambda: m.read_registers([3, n]), lambda: m.read_register_at(n),
                 lambda: m.write_register_at(n, 0)):
        with pytest.raises(DebugError) as e:
            call()
        assert e.value.errno == errno.ENOENT and str(e.value) == f"no register number {n}"
    for call in (lambda: m.read_registers(vcpu=1), lambda: m.read_registers([3], vcpu=1)):
        with pytest.raises(DebugError) as e:
            call()
        assert e.value.errno == errno.ESRCH
    with pytest.raises(DebugError) as e:
        m.write_register_at(3, 1 << 64)
    assert e.value.errno == errno.EINVAL and str(e.value) == "x3: value 0x10000000000000000 does not fit 64 bits"
    assert g.reg("x3") == 0x33
    with pytest.raises(DebugError) as e:
        m.read_register("x99")
    assert e.value.errno == errno.ENOENT and str(e.value) == "no register named 'x99'"


def test_register_and_pc_writes_are_replayed_and_refused_in_the_past(guest_dir):
    g, m = _guest(guest_dir)
    a = g.sym["bp_a"]
    assert (m.step_irqs, g.vcpu.singlestep_blocks_irq) == (False, True)
    m.start_recording()
    # Recording: steps take interrupts (and the vCPU is told so).
    assert (m.step_irqs, g.vcpu.singlestep_blocks_irq) == (True, False)
    m.add_breakpoint(a)
    assert m.cont().pc == a
    m.remove_breakpoint(a)
    t0 = g.vcpu.icount
    values = m.read_registers()
    values[9] = 0x99
    m.write_all_registers(values)
    m.set_pc(a + 4)  # skip bp_a's first instruction
    assert m.step().pc == a + 8
    after = m.read_registers()
    assert after[9] == 0x99
    m.seek_to(t0 - 1)
    assert (g.vcpu.icount, m.read_registers()[9]) == (t0 - 1, 0)
    # In the past: a PC write that changes nothing is no write; the others are refused.
    m.set_pc(g.pc)
    for call in (lambda: m.set_pc(a), lambda: m.write_all_registers(m.read_registers())):
        with pytest.raises(DebugError) as e:
            call()
        assert e.value.errno == errno.EROFS
        assert str(e.value) == (f"the machine is in its recorded past (instruction {t0 - 1} of "
                                f"{t0 + 1}): a write would change what was recorded; run forward "
                                "to the end of the history first, or stop recording")
    # Forward again: at t0 the logged writes are made again, the same way.
    assert m.step().pc == a
    assert m.read_registers()[9] == 0
    assert m.step().pc == a + 8
    assert m.read_registers() == after
    m.stop_recording()
    assert not m.recording and not m.can_reverse
    # The step policy from before the recording is back.
    assert (m.step_irqs, g.vcpu.singlestep_blocks_irq) == (False, True)
    m.stop_recording()  # not recording: nothing to do
    m.step_irqs = True
    m.start_recording()
    m.stop_recording()
    assert (m.step_irqs, g.vcpu.singlestep_blocks_irq) == (True, False)


# ---------------------------------------------------------------------------------------------
# x86-64 on KVM: breakpoints are one byte, and the step policy is KVM's


@pytest.mark.kvm
@pytest.mark.skipif(kvm_unavailable_reason() is not None, reason=f"/dev/kvm cannot be used: {kvm_unavailable_reason()}")
def test_x86_debug_points_and_step_policy():
    from guestdbg.board.pc_probe import create_pc_machine
    m = GuestDebugManager(create_pc_machine(console=lambda data: None))
    # A Z0 at a VA the board's page tables do not map takes a hardware slot, listed as a break.
    unmapped = 0x7FFF_0000_0000
    assert m.add_breakpoint(unmapped) == "hw"
    m.add_hw_breakpoint(0x40_2000)
    assert m.debug_points() == [DebugPoint("break", unmapped, 1, "hw (VA not mapped yet): slot 0"),
                                DebugPoint("hbreak", 0x40_2000, 1, "slot 1")]
    # KVM_GUESTDBG_BLOCKIRQ where the host has it (KVM_CAP_SET_GUEST_DEBUG2), else nothing.
    blockirq = bool(m.vm.check_extension(kvm.KVM_CAP_SET_GUEST_DEBUG2) & kvm.KVM_GUESTDBG_BLOCKIRQ)
    assert m.can_block_step_irqs is blockirq
    assert m.step_irq_mechanism() == ("KVM_GUESTDBG_BLOCKIRQ" if blockirq else
                                      "none: this vCPU cannot block interrupts while stepping")


# ---------------------------------------------------------------------------------------------
# detach


def test_after_a_detach_a_breakpoint_at_the_pc_is_met_again(guest_dir):
    g, m = _guest(guest_dir)
    a = g.sym["bp_a"]
    m.add_breakpoint(a)
    assert m.cont().pc == a
    m.detach()
    # The next debugger finds the vCPU at bp_a, not stopped *at* a breakpoint of its own: the
    # one it sets there is hit before bp_a runs (no step-over).
    m.add_breakpoint(a)
    e = m.cont()
    assert (e.kind, e.pc) == (StopKind.SWBREAK, a)
    assert int.from_bytes(m.read_memory(g.sym["bp_a_count"], 4), "little") == 0


def test_a_detach_while_recording_starts_the_history_again(guest_dir):
    g, m = _guest(guest_dir)
    m.start_recording()
    m.add_breakpoint(g.sym["bp_a"])
    m.cont()
    at = g.vcpu.icount
    assert m.record_status()["begin"] == 0
    m.detach()
    # What runs without the debugger is not recorded: the history starts where it detached.
    assert (m.record_status()["begin"], m.record_status()["end"]) == (at, at)


# ---------------------------------------------------------------------------------------------
# a store over a breakpoint, from an instruction with a hardware breakpoint or a watch


def test_a_store_over_a_breakpoint_from_a_hardware_breakpoint(tmp_path):
    """Resuming from a hardware breakpoint on the store steps the store with that breakpoint out
    of the way, including the step that lets the store over the patched instruction through."""
    mch, m = _self_patch(tmp_path)
    m.add_hw_breakpoint(RAM + 0xC)
    stops = [(e.kind, e.pc) for e in (m.cont(), m.cont(), m.cont())]
    assert stops == [(StopKind.HWBREAK, RAM + 0xC), (StopKind.SWBREAK, RAM + 0x10),
                     (StopKind.SWBREAK, RAM + 0x14)]
    assert m.read_memory(RAM + 0x10, 4) == words(MOV_X2_7)


@pytest.mark.parametrize("in_run", [False, True], ids=["brk", "in-run"])
def test_a_watched_store_over_a_breakpoint_is_reported_once(tmp_path, in_run):
    """A write watch on an instruction that has a software breakpoint, and the guest rewrites
    that instruction. Resuming from the watch stop steps the store with the watches out of the
    way; with BRK patches the store still met the breakpoint's own store trap, and _classify
    looked the address up in the watch list first: the same watch stop again, forever."""
    mch, m = _self_patch(tmp_path, in_run)
    m.add_watchpoint(RAM + 0x10, 4, WatchKind.WRITE)
    e = m.cont()
    assert (e.kind, e.pc, e.watch_addr) == (StopKind.WATCH, RAM + 0xC, RAM + 0x10)
    e = m.cont()
    assert (e.kind, e.pc) == (StopKind.SWBREAK, RAM + 0x10)


# ---------------------------------------------------------------------------------------------
# guest faults: the signal, where, and why


@pytest.mark.parametrize("code, pc, sig", [
    (bytes.fromhex("00feafd2" "00001fd6"), 0x7FF0_0000, signal.SIGSEGV),  # br to unmapped memory
    (bytes.fromhex("00000000"), RAM, signal.SIGILL),                      # udf #0
    (bytes.fromhex("010000d4"), RAM + 4, signal.SIGSEGV),                 # svc #0, no vectors
], ids=["prefetch-abort", "undefined", "svc"])
def test_an_unhandled_guest_exception_is_a_signal_stop_where_it_happened(tmp_path, code, pc, sig):
    mch = VirtMachine(VirtConfig(), console=lambda data: None)
    image = tmp_path / "fault.bin"
    image.write_bytes(code)
    mch.load_raw(image, RAM)
    e = GuestDebugManager(mch).cont()
    assert (e.kind, e.pc, e.signal) == (StopKind.SIGNAL, pc, sig)
    assert e.detail.startswith("unhandled EC ") and f"at PC={pc:#x}" in e.detail


@pytest.mark.kvm
@pytest.mark.skipif(kvm_unavailable_reason() is not None, reason=f"/dev/kvm cannot be used: {kvm_unavailable_reason()}")
def test_x86_guest_exceptions_take_the_boards_signal(tmp_path):
    """The pc board names the signal of a guest exception (#UD: SIGILL) in its exit."""
    import subprocess
    from pathlib import Path

    from guestdbg.board.pc_probe import create_pc_machine
    from tests.integration.test_x86_manners import symbols
    x86 = Path(__file__).resolve().parents[2] / "guests" / "x86"
    proc = subprocess.run(["make", "-C", str(x86), f"O={tmp_path}", "-j2", f"{tmp_path}/fault_ud.elf"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    elf = tmp_path / "fault_ud.elf"
    mch = create_pc_machine(console=lambda data: None)
    mch.load_elf(elf)
    m = GuestDebugManager(mch)
    e = m.cont()
    ud = symbols(elf)["ud_insn"]
    assert (e.kind, e.pc, e.signal) == (StopKind.SIGNAL, ud, signal.SIGILL)
    assert e.detail == f"guest exception #UD (invalid opcode, vector 6) at RIP={ud:#x}"
    # A snapshot of it restores on a vCPU that counts no instructions (no icount).
    m.snapshot(tmp_path / "ud.snap")
    m.restore(tmp_path / "ud.snap")
    assert m.vcpu_pc(0) == ud and not m.exited


def test_a_vcpu_that_cannot_keep_interrupts_out_of_a_step(guest_dir):
    g = Guest(guest_dir / "bp_targets.elf")
    vcpu = Without(g.vcpu, "singlestep_blocks_irq")  # and the VM has no KVM_GUESTDBG_BLOCKIRQ
    m = GuestDebugManager(Without(g.machine, "vcpus", vcpu=vcpu))
    assert not m.can_block_step_irqs
    assert m.step_irq_mechanism() == "none: this vCPU cannot block interrupts while stepping"
    with pytest.raises(DebugError) as e:
        m.step_irqs = False
    assert e.value.errno == errno.ENOTSUP
    m.step_irqs = True  # what it does anyway


# ---------------------------------------------------------------------------------------------
# refusals and their messages


MMIO_HOLE_STORE = bytes.fromhex("0140a1d2" "200000b9")  # movz x1, #0x0a00, lsl #16; str w0, [x1]


def test_no_reset_without_a_reset_point(tmp_path):
    """A manager created while the vCPU is inside an MMIO access (the VMM has not completed it
    yet) has no reset image: reset is refused and changes nothing."""
    mch = VirtMachine(VirtConfig(), console=lambda data: None)
    image = tmp_path / "mmio.bin"
    image.write_bytes(MMIO_HOLE_STORE)
    mch.load_raw(image, RAM)
    assert mch.vcpu.run().exit_reason == kvm.KVM_EXIT_MMIO
    m = GuestDebugManager(mch)
    with pytest.raises(DebugError) as e:
        m.reset()
    assert e.value.errno == errno.ENOTSUP
    assert str(e.value) == "no reset point: the vCPU was mid-access when the debugger started"
    assert mch.vcpu.pc == RAM + 4


def test_an_unmapped_breakpoint_with_no_free_slot_says_why(guest_dir):
    g, m = _guest(guest_dir)
    for i in range(m.hw_bp_slots):
        m.add_hw_breakpoint(RAM + 4 * i)
    with pytest.raises(DebugError) as e:
        m.add_breakpoint(0x5000_0000)  # no memory there, the MMU off: it may be mapped later
    assert e.value.errno == errno.ENOSPC
    assert str(e.value) == (
        "cannot break at 0x50000000: 0x50000000 is not mapped yet (no memory there with the "
        "guest's MMU off), so the breakpoint needs a hardware slot (it matches virtual "
        "addresses), and none is free: all 6 hardware breakpoints are in use; set it once the "
        "address is mapped, or free a slot")
    assert [p.addr for p in m.debug_points()] == [RAM + 4 * i for i in range(6)]


# ---------------------------------------------------------------------------------------------
# debugger writes over a breakpoint, and registers of another vCPU


def test_a_write_over_and_past_a_breakpoint(guest_dir):
    g, m = _guest(guest_dir)
    a = g.sym["bp_a"]
    m.add_breakpoint(a)
    data = bytes(range(0xA0, 0xA8))
    m.write_memory(a, data)  # the patched word and the next one
    assert g.read(a, 8) == BRK0 + data[4:]
    assert m.read_memory(a, 8) == data
    # The saved original is the patched word only: the next word, changed behind the
    # debugger's back (as by the guest), reads as it is.
    g.vm.write_phys(a + 4, b"\x11\x22\x33\x44")
    assert m.read_memory(a, 8) == data[:4] + b"\x11\x22\x33\x44"
    m.remove_breakpoint(a)
    assert g.read(a, 8) == data[:4] + b"\x11\x22\x33\x44"


def test_registers_of_another_vcpu(guest_dir):
    g = Guest(guest_dir / "bp_targets.elf", VirtConfig(smp=2))
    m = GuestDebugManager(g.machine)
    g.machine.vcpus[1].set_one_reg(reg_id("X3"), 0x1333)
    g.machine.vcpus[0].set_one_reg(reg_id("X3"), 0x1000)
    assert m.read_registers([3], vcpu=1) == [0x1333]
    assert m.read_registers(vcpu=1)[3] == 0x1333
    assert m.read_registers([3]) == [0x1000]  # the current vCPU's


# ---------------------------------------------------------------------------------------------
# watch ranges: what may be watched, and which watch a hit is reported for


def test_watch_ranges_up_to_the_limit_and_the_end_of_the_address_space(guest_dir):
    g, m = _guest(guest_dir)
    limit = m.arch.max_watch  # 2 GiB
    assert m.add_watchpoint(RAM, 1, WatchKind.READ).mechanism == "hw:0"
    assert m.add_watchpoint(2**64 - 8, 8, WatchKind.READ).mechanism == "hw:1"  # ends at 2**64
    for addr, length in ((RAM, limit + 1), (2**64 - 4, 8), (2**64 - 1, 2), (RAM, 0)):
        with pytest.raises(DebugError) as e:
            m.add_watchpoint(addr, length, WatchKind.READ)
        assert e.value.errno == errno.EINVAL and str(e.value) == f"cannot watch {length} bytes at {addr:#x}"
    assert len(m.watches) == 2


def test_a_watch_of_the_longest_length_is_taken(guest_dir):
    """Separate from the limits above, and last: the back end re-protects the 2 GiB's half a
    million pages at every change (seconds), which the limit checks need not wait for."""
    g, m = _guest(guest_dir)
    assert m.add_watchpoint(RAM, m.arch.max_watch, WatchKind.READ).mechanism == "hw:0,1"
    assert len(m.watches) == 1


def _after_first(g: Guest, m: GuestDebugManager, sym: str) -> None:
    m.add_breakpoint(g.sym[sym])
    assert m.cont().pc == g.sym[sym]
    m.remove_breakpoint(g.sym[sym])


def test_a_hit_is_reported_for_the_watch_holding_the_address(guest_dir):
    """Two watches on adjacent or overlapping bytes, the one armed first *not* holding the
    stored address: the stop names the one that does, at the store's address."""
    g, m = _guest(guest_dir)
    a_count, b_count = g.sym["bp_a_count"], g.sym["bp_b_count"]  # adjacent words
    _after_first(g, m, "bp_b")
    m.add_watchpoint(a_count, 4, WatchKind.WRITE)  # ends where bp_b_count starts
    m.add_watchpoint(b_count, 4, WatchKind.WRITE)
    e = m.cont()  # bp_b's store, then the next round's bp_a's
    assert (e.kind, e.watch_addr) == (StopKind.WATCH, b_count)
    e = m.cont()
    assert (e.kind, e.watch_addr) == (StopKind.WATCH, a_count)
    g, m = _guest(guest_dir)
    _after_first(g, m, "bp_a")
    m.add_watchpoint(a_count + 1, 1, WatchKind.WRITE)  # starts a byte past the store's address
    m.add_watchpoint(a_count, 4, WatchKind.WRITE)
    e = m.cont()
    assert (e.kind, e.watch_addr) == (StopKind.WATCH, a_count)


def test_a_store_is_reported_by_the_write_watch_not_a_read_watch_on_the_same_bytes(guest_dir):
    """A read watch armed first on the same bytes: the load stops at it, the store at the
    write watch (not the first watch holding the address)."""
    g, m = _guest(guest_dir)
    a_count = g.sym["bp_a_count"]
    _after_first(g, m, "bp_a")
    m.add_watchpoint(a_count, 4, WatchKind.READ)
    m.add_watchpoint(a_count, 4, WatchKind.WRITE)
    for _ in range(2):
        load, store = m.cont(), m.cont()
        assert (load.kind, load.watch_addr, load.watch_kind) == (StopKind.WATCH, a_count, WatchKind.READ)
        assert (store.kind, store.watch_addr, store.watch_kind) == (StopKind.WATCH, a_count, WatchKind.WRITE)
        assert store.pc == load.pc + 8


# ---------------------------------------------------------------------------------------------
# address limits and the rest of the errors (found by the run of 2026-12-02)


def test_hardware_breakpoints_take_every_address_and_no_other(guest_dir):
    g, m = _guest(guest_dir)
    m.add_hw_breakpoint(0)
    m.add_hw_breakpoint(2**64 - 4)
    for bad in (-1, 2**64):
        with pytest.raises(DebugError) as e:
            m.add_hw_breakpoint(bad)
        assert e.value.errno == errno.EINVAL and str(e.value) == f"no address {bad:#x}"
    assert [p.addr for p in m.debug_points()] == [0, 2**64 - 4]
    m.remove_hw_breakpoint(0)
    with pytest.raises(DebugError) as e:
        m.remove_hw_breakpoint(0)
    assert e.value.errno == errno.ENOENT and str(e.value) == "no hardware breakpoint at 0x0"
    with pytest.raises(DebugError) as e:
        m.remove_breakpoint(0)  # neither kind
    assert e.value.errno == errno.ENOENT and str(e.value) == "no breakpoint at 0x0"


def test_removing_a_hardware_breakpoint_forgets_its_condition_and_its_origin(guest_dir):
    g, m = _guest(guest_dir)
    m.add_hw_breakpoint(g.sym["bp_a"], condition=lambda view: False)
    m.remove_hw_breakpoint(g.sym["bp_a"])
    assert not m.conditions
    # A Z0 at an address with no memory (the MMU off) took a slot; removed, and set again as a
    # Z1, it is a plain hardware breakpoint.
    assert m.add_breakpoint(0x5000_0000) == "hw"
    m.remove_breakpoint(0x5000_0000)
    m.add_hw_breakpoint(0x5000_0000)
    assert m.debug_points() == [DebugPoint("hbreak", 0x5000_0000, 4, "slot 0")]


def test_physical_reads_at_the_ends_of_the_address_space(guest_dir):
    g, m = _guest(guest_dir)
    assert m.record_status() is None  # not recording
    assert m.read_memory(0, 4, physical=True) == g.read(0, 4)
    with pytest.raises(DebugError) as e:
        m.read_memory(2**64, 1, physical=True)
    assert e.value.errno == errno.EFAULT and str(e.value) == "no address 0x10000000000000000"
    with pytest.raises(DebugError) as e:
        m.read_memory(0x0A00_0000, 4, physical=True)  # between the devices: no memory
    assert e.value.errno == errno.EFAULT
    assert str(e.value) == "[Errno 14] EFAULT: guest physical address 0xa000000 is not RAM or ROM"


# ---------------------------------------------------------------------------------------------
# add_breakpoint: where a BRK fits, where a hardware slot serves, and what is refused


def test_a_breakpoint_in_rams_last_word_and_one_running_past_its_end(guest_dir):
    g, m = _guest(guest_dir)
    last = RAM_END - 4
    original = g.read(last, 4)
    assert m.add_breakpoint(last) == "sw"
    assert g.vm.read_phys(last, 4) == BRK0 and m.read_memory(last, 4) == original
    assert m.add_breakpoint(last) == "sw"  # again: the same patch
    assert m.debug_points() == [DebugPoint("break", last, 4, f"software (BRK #0 at pa {last:#x})")]
    m.remove_breakpoint(last)
    assert g.vm.read_phys(last, 4) == original and m.debug_points() == []
    for va in (RAM_END - 3, RAM_END - 1):
        with pytest.raises(DebugError) as e:
            m.add_breakpoint(va)
        assert e.value.errno == errno.EFAULT and str(e.value) == (
            f"no memory for a breakpoint instruction at {va:#x}: it would run past the end of RAM")
    assert m.debug_points() == [] and g.vm.read_phys(last, 4) == original


def test_breakpoints_outside_the_address_space_are_refused(guest_dir):
    g, m = _guest(guest_dir)
    for va in (2**64, -1):
        with pytest.raises(DebugError) as e:
            m.add_breakpoint(va)
        assert e.value.errno == errno.EFAULT and str(e.value) == f"no address {va:#x}"
    assert m.debug_points() == []


def test_breakpoints_with_the_mmu_on(guest_dir):
    """A VA the tables do not map gets a hardware slot (VA 0 and the hole among ALIAS_PAGES);
    a VA they map to no memory (past RAM's end, in the identity block) is refused; a mapped one
    is patched at its physical address."""
    g, m = _guest(guest_dir)
    _mmu_on(g)
    assert m.add_breakpoint(0) == "hw"
    assert m.add_breakpoint(ALIAS + 0x5000) == "hw"
    assert m.add_breakpoint(ALIAS + 0x4000) == "sw"  # -> 0x4030_2000
    with pytest.raises(DebugError) as e:
        m.add_breakpoint(RAM_END)
    assert e.value.errno == errno.EFAULT and str(e.value) == f"no memory at {RAM_END:#x}"
    assert m.debug_points() == [DebugPoint("break", 0, 4, "hw (VA not mapped yet): slot 0"),
                                DebugPoint("break", ALIAS + 0x5000, 4, "hw (VA not mapped yet): slot 1"),
                                DebugPoint("break", ALIAS + 0x4000, 4, "software (BRK #0 at pa 0x40302000)")]
    assert "break   0x0  hw (VA not mapped yet): slot 0" in "\n".join(m.slots_report())
    assert g.vm.read_phys(0x4030_2000, 4) == BRK0


def test_an_unmapped_breakpoint_with_the_mmu_on_and_no_free_slot_says_why(guest_dir):
    g, m = _guest(guest_dir)
    _mmu_on(g)
    for i in range(m.hw_bp_slots):
        m.add_hw_breakpoint(RAM + 4 * i)
    with pytest.raises(DebugError) as e:
        m.add_breakpoint(ALIAS + 0x5000)
    assert e.value.errno == errno.ENOSPC
    assert str(e.value).startswith(
        f"cannot break at {ALIAS + 0x5000:#x}: {ALIAS + 0x5000:#x} is not mapped by the guest's page "
        f"tables yet (cannot translate {ALIAS + 0x5000:#x}: ")
    assert str(e.value).endswith(
        "), so the breakpoint needs a hardware slot (it matches virtual addresses), and none is "
        "free: all 6 hardware breakpoints are in use; set it once the address is mapped, or free a slot")


def test_breakpoints_in_rom_take_hardware_slots(guest_dir):
    g, m = _guest(guest_dir)
    assert m.add_breakpoint(0x1000) == "hw"
    assert m.add_breakpoint(0x1000) == "hw"
    assert m.debug_points() == [DebugPoint("hbreak", 0x1000, 4, "slot 0")]


class _NoBrkArch(Arm64DebugArch):
    sw_break = None  # as x86 where int3 gives no clean exit: every Z0 takes a hardware slot


def test_without_a_software_breakpoint_instruction_breakpoints_take_hardware_slots(guest_dir):
    g = Guest(guest_dir / "bp_targets.elf")
    m = GuestDebugManager(g.machine, ArchProfile("aarch64", arm_registers, lambda machine: _NoBrkArch()))
    a, b = g.sym["bp_a"], g.sym["bp_b"]
    original = g.read(a, 4)
    assert m.sw_breakpoints is False
    assert m.add_breakpoint(a) == "hw"
    assert m.add_breakpoint(a) == "hw"  # again: the same slot
    assert m.add_breakpoint(b) == "hw"
    assert g.read(a, 4) == original
    # Listed as hbreaks of one byte (x86's convention: an instruction's first byte).
    assert m.debug_points() == [DebugPoint("hbreak", a, 1, "slot 0"), DebugPoint("hbreak", b, 1, "slot 1")]
    assert m.cont().pc == a
    m.remove_breakpoint(a)
    assert m.cont().pc == b
    assert m.debug_points() == [DebugPoint("hbreak", b, 1, "slot 1")]


# ---------------------------------------------------------------------------------------------
# several vCPUs


def test_a_step_with_the_others_running_runs_them_too(tmp_path):
    """gdb's `vCont;s:N;c`: the other vCPU runs while this one steps (here its round-robin
    slice, before the stepped vCPU's one instruction); `vCont;s:N` alone: it does not move."""
    from tests.helpers.mmu_guest import assemble
    from tests.integration.test_smp_debug import GUEST_S, make
    elf = assemble(tmp_path, "smpdbg", GUEST_S)
    for others_run in (True, False):
        m, board, sym = make(elf, 2)
        m.add_breakpoint(sym["after_call"])
        e = m.cont()
        m.remove_breakpoint(sym["after_call"])
        other = 1 - e.vcpu_id
        before = [v.icount for v in board.vcpus]
        s = m.step(e.vcpu_id, others_run=others_run)
        assert (s.kind, s.vcpu_id) == (StopKind.STEP, e.vcpu_id)
        assert board.vcpus[e.vcpu_id].icount == before[e.vcpu_id] + 1
        assert (board.vcpus[other].icount > before[other]) is others_run


def test_breakpoints_decided_in_the_run_are_listed_with_their_physical_address(guest_dir):
    """Policy 18 (the emulated vCPU's default): nothing patched, the point listed as decided in
    the run, at the physical address its VA had when it was set."""
    g = Guest(guest_dir / "bp_targets.elf")
    m = GuestDebugManager(g.machine)
    a = g.sym["bp_a"]
    original = g.read(a, 4)
    assert m.add_breakpoint(a) == "sw"
    assert m.add_breakpoint(a) == "sw"
    assert g.vm.read_phys(a, 4) == original
    assert m.debug_points() == [DebugPoint("break", a, 4, f"software (decided in the run, pa {a:#x})")]
    assert m.cont().pc == a
    m.remove_breakpoint(a)
    assert m.debug_points() == []
    assert m.cont().kind is StopKind.EXITED


# ---------------------------------------------------------------------------------------------
# reverse execution: a small copy of test_reverse.py's slowest reverse-continue tests


SMALL_STORES_S = r"""
    .text
    .global _start, outer, inner, last_read
_start:
    ldr     x6, =target
    mov     x7, #0x77
    str     x7, [x6]                   // the write the search looks for
    mov     x2, #3
    mov     x5, #0
outer:
    ldr     x3, =neighbour             // the page after target's
    add     x4, x3, #0x10000           // 64 KiB
inner:
    str     x5, [x3], #64
    cmp     x3, x4
    b.lo    inner
    add     x5, x5, #1
    subs    x2, x2, #1
    b.ne    outer
last_read:
    ldr     x8, [x6]                   // target read, at the end
    ldr     x0, =0x84000008            // PSCI SYSTEM_OFF
    hvc     #0
    b       .
    .bss
    .balign 4096
    .skip   4088
target: .skip 8                        // the last 8 bytes of its page
neighbour: .skip 0x10000
"""


def _recording_stores(tmp_path) -> tuple[VirtMachine, GuestDebugManager, dict[str, int]]:
    """SMALL_STORES_S loaded, recording from its first instruction (a checkpoint every 500)."""
    from tests.helpers.mmu_guest import assemble
    from guestdbg.board.common import elf_symbols
    elf = assemble(tmp_path, "stores", SMALL_STORES_S)
    m = VirtMachine(VirtConfig(), console=lambda b: None)
    m.load_elf(elf)
    mgr = GuestDebugManager(m)
    mgr.start_recording(interval=500)
    return m, mgr, elf_symbols(elf)


def _stores(tmp_path) -> tuple[VirtMachine, GuestDebugManager, dict[str, int]]:
    """_recording_stores, recorded to the guest's end."""
    m, mgr, sym = _recording_stores(tmp_path)
    assert mgr.cont().kind is StopKind.EXITED
    return m, mgr, sym


def test_reverse_continue_to_a_store_skips_intervals_no_store_touched_small(tmp_path):
    """test_reverse.py's test of the name (bench/bench_reverse.py's STORES_S), about 300
    times shorter (9,000 instructions, a checkpoint every 500), for the mutation run: with only
    write watches armed and the MMU off, reverse_cont replays no interval without a store to a
    watched page (the loop stores to the next page, every interval); with a breakpoint too, it
    replays them all, to the same answer. A watch on a page never stored to: every interval
    skipped, the stop is the history's start."""
    from tests.integration.test_reverse import check_reverse_cont_to_the_first_store
    m, mgr, sym = _stores(tmp_path)
    check_reverse_cont_to_the_first_store(m, mgr, sym["target"])
    mgr.remove_hw_breakpoint(0x40000000)
    mgr.remove_watchpoint(sym["target"], 8, WatchKind.WRITE)
    mgr.seek_to(mgr.record_status()["end"])
    mgr.add_watchpoint(sym["neighbour"] + 0x10000, 8, WatchKind.WRITE)  # past the loop's stores
    restored = mgr.record_status()["restored"]
    event = mgr.reverse_cont()
    assert (event.kind, event.pc, event.history_edge) == (StopKind.SIGNAL, sym["_start"], "begin")
    assert m.vcpu.icount == 0 and mgr.record_status()["restored"] - restored <= 1
    # A breakpoint on the first instruction: its hit at the history's start is the start.
    mgr.seek_to(mgr.record_status()["end"])
    mgr.add_breakpoint(sym["_start"])
    event = mgr.reverse_cont()
    assert (event.kind, event.pc, event.history_edge) == (StopKind.SIGNAL, sym["_start"], "begin")


@pytest.mark.parametrize("point", ["hbreak", "break", "break-patched", "rwatch", "awatch"])
def test_reverse_continue_with_more_than_write_watches_replays_every_interval(tmp_path, point):
    """A breakpoint at the start of each pass of the loop, or a read or access watch on the
    word only read at the end: the intervals without a store to a watched page must be
    replayed too, and the stop is there (the last hit), not at the write long before."""
    m, mgr, sym = _stores(tmp_path)
    target, outer = sym["target"], sym["outer"]
    mgr.add_watchpoint(target, 8, WatchKind.WRITE)
    if point == "hbreak":
        mgr.add_hw_breakpoint(outer)
    elif point.startswith("break"):
        mgr.in_run_breakpoints = point == "break"
        mgr.add_breakpoint(outer)
    else:
        mgr.add_watchpoint(target, 8, WatchKind.READ if point == "rwatch" else WatchKind.ACCESS)
    end = mgr.record_status()["end"]
    event = mgr.reverse_cont()
    if point.endswith("watch"):
        assert (event.kind, event.pc, event.watch_addr) == (StopKind.WATCH, sym["last_read"], target)
        assert m.vcpu.icount == end - 3
    else:
        assert (event.kind, event.pc) == (StopKind.HWBREAK if point == "hbreak" else StopKind.SWBREAK, outer)
        assert m.vcpu.icount == 5 + 2 * (2 + 3 * 1024 + 3)  # the third pass's start


def test_reverse_continue_to_a_watch_over_two_pages(tmp_path):
    """A watch on target's last byte and the next page's first: the loop's stores to that
    first byte are in every interval, so none is skipped; the stop is at the last of them."""
    m, mgr, sym = _stores(tmp_path)
    neighbour = sym["neighbour"]
    mgr.add_watchpoint(neighbour - 1, 2, WatchKind.WRITE)
    event = mgr.reverse_cont()
    assert (event.kind, event.pc, event.watch_addr) == (StopKind.WATCH, sym["inner"], neighbour)
    assert int.from_bytes(mgr.read_memory(neighbour, 8), "little") == 1  # the second pass's value: the third's store is to come


@pytest.mark.parametrize("in_run", [True, False])
def test_reverse_continue_honours_conditions_and_prints_nothing_again(tmp_path, in_run):
    """test_reverse.py's conditions test, on the small stores guest: a conditional breakpoint
    stops reverse_cont only where its condition held (the second pass), and what its
    condition prints (dprintf) is not printed in the replays; forward again, it is."""
    m, mgr, sym = _stores(tmp_path)
    printed: list[str] = []
    mgr.conditions.output = printed.append
    mgr.in_run_breakpoints = in_run
    outer = sym["outer"]

    def second_pass(view) -> bool:
        view.print(f"x5={view.read_register('x5')}\n")
        return view.read_register("x5") == 1

    mgr.add_breakpoint(outer, condition=second_pass)
    event = mgr.reverse_cont()
    assert (event.kind, event.pc, event.history_edge) == (StopKind.SWBREAK, outer, None)
    assert m.vcpu.icount == 5 + (2 + 3 * 1024 + 3) and mgr.read_register("x5") == 1
    assert printed == []
    event = mgr.cont()  # the third pass's start: false, printed, on to the end
    assert printed == ["x5=2\n"]
    assert event.kind is not StopKind.SWBREAK


def test_a_reset_while_recording_starts_a_history_that_knows_the_patches(tmp_path):
    """After a reset the new history must know the guest's bytes under a BRK patch: its first
    checkpoint, restored once the breakpoint is gone, holds the instruction, not the BRK."""
    m, mgr, sym = _stores(tmp_path)
    mgr.in_run_breakpoints = False
    mgr.add_breakpoint(sym["inner"])
    mgr.reset()
    assert (mgr.cont().kind, m.vcpu.pc) == (StopKind.SWBREAK, sym["inner"])
    mgr.remove_breakpoint(sym["inner"])
    end = mgr.cont()
    assert end.kind is StopKind.EXITED
    mgr.seek_to(0)
    assert m.vcpu.icount == 0
    assert mgr.cont().kind is StopKind.EXITED and m.vcpu.icount == mgr.record_status()["end"]


def test_seek_and_reverse_step_say_where_they_stop(tmp_path):
    m, mgr, sym = _stores(tmp_path)
    start, end = sym["_start"], mgr.record_status()["end"]
    e = mgr.seek_to(3)
    assert (e.kind, e.pc, e.detail, e.history_edge) == (StopKind.SIGNAL, start + 12, "at instruction 3", None)
    for t in (-1, end + 1):
        with pytest.raises(DebugError) as err:
            mgr.seek_to(t)
        assert err.value.errno == errno.EINVAL and str(err.value) == f"instruction {t} is outside the history (0..{end})"
    with pytest.raises(DebugError):
        mgr.reverse_step(1)  # no such vCPU
    for icount in (2, 1, 0):
        e = mgr.reverse_step(0)
        assert (e.kind, e.pc, e.history_edge, m.vcpu.icount) == (StopKind.STEP, start + 4 * icount, None, icount)
    e = mgr.reverse_step()
    assert (e.kind, e.pc, e.history_edge, m.vcpu.icount) == (StopKind.SIGNAL, start, "begin", 0)


@pytest.mark.parametrize("in_run", [True, False])
def test_a_condition_sees_the_pc_and_the_vcpu_it_stopped(guest_dir, in_run):
    """Decided in the run (policy 18) or at the stop, a condition's view names the breakpoint's
    PC and the vCPU; what it prints goes to the manager's output."""
    g = Guest(guest_dir / "bp_targets.elf")
    m = GuestDebugManager(g.machine)
    m.in_run_breakpoints = in_run
    printed: list[str] = []
    m.conditions.output = printed.append
    a = g.sym["bp_a"]
    seen = []

    def second_hit(view) -> bool:
        seen.append((view.pc, view.vcpu_id))
        view.print("hit\n")
        return len(seen) == 2

    m.add_breakpoint(a, condition=second_hit)
    assert m.cont().pc == a
    assert seen == [(a, 0), (a, 0)] and printed == ["hit\n", "hit\n"]


class _SharedSlotsArch(Arm64DebugArch):
    shared_slots = True  # as x86's DR0-DR3: breakpoints and watchpoints share one register file


def test_breakpoints_and_watchpoints_sharing_slots_never_take_the_same_one(guest_dir):
    """The slot accounting of an architecture whose breakpoints and watchpoints share their
    registers (x86), on the emulated vCPU: each new one takes the lowest slot neither kind
    holds; with none left, a watch is a page trap."""
    g = Guest(guest_dir / "bp_targets.elf")
    m = GuestDebugManager(g.machine, ArchProfile("aarch64", arm_registers, lambda machine: _SharedSlotsArch()))
    a, b, count = g.sym["bp_a"], g.sym["bp_b"], g.sym["bp_a_count"]
    m.add_hw_breakpoint(a)
    assert m.add_watchpoint(count, 4, WatchKind.WRITE).mechanism == "hw:1"
    assert m.add_watchpoint(count + 8, 4, WatchKind.WRITE).mechanism == "hw:2"
    m.add_hw_breakpoint(b)
    assert m.debug_points()[:2] == [DebugPoint("hbreak", a, 4, "slot 0"), DebugPoint("hbreak", b, 4, "slot 3")]
    assert m.add_watchpoint(count + 16, 4, WatchKind.WRITE).trapped


def test_reverse_continue_replays_a_register_write_made_at_the_live_end(tmp_path):
    """A debugger write at the live end is an input of the history: the replays of
    reverse_cont give it again where it was made. Here x6 (the store's address) is moved at
    instruction 2 to a word no other store touches, which a watch then finds there."""
    m, mgr, sym = _recording_stores(tmp_path)
    mgr.add_breakpoint(sym["_start"] + 8)  # the str
    assert mgr.cont().pc == sym["_start"] + 8 and m.vcpu.icount == 2
    mgr.remove_breakpoint(sym["_start"] + 8)
    moved = sym["neighbour"] + 8  # the loop stores to the first 8 of every 64 bytes
    mgr.write_register("x6", moved)
    assert mgr.cont().kind is StopKind.EXITED
    mgr.add_watchpoint(moved, 8, WatchKind.WRITE)
    event = mgr.reverse_cont()
    assert (event.kind, event.pc, event.watch_addr, m.vcpu.icount) == (StopKind.WATCH, sym["_start"] + 8, moved, 2)
    assert mgr.read_register("x6") == moved  # the seek to the hit gave the write again too
    mgr.seek_to(mgr.record_status()["end"])
    mgr.seek_to(3)  # and a seek from the end to past it
    assert mgr.read_register("x6") == moved and mgr.read_memory(moved, 8) == (0x77).to_bytes(8, "little")


def test_a_reset_while_recording_keeps_the_historys_settings(tmp_path):
    from tests.helpers.mmu_guest import assemble
    elf = assemble(tmp_path, "stores", SMALL_STORES_S)
    m = VirtMachine(VirtConfig(), console=lambda b: None)
    m.load_elf(elf)
    mgr = GuestDebugManager(m)
    mgr.start_recording(interval=700, mem_limit=600 << 20)
    mgr.reset()
    status = mgr.record_status()
    assert (status["interval"], status["limit"], status["end"]) == (700, 600 << 20, 0)


def test_reverse_continue_finds_the_one_true_hit_among_false_ones_in_an_interval(tmp_path):
    """A conditional breakpoint in the inner loop (hit every 3 instructions) that holds once:
    the replay of that interval steps over the false hits before it and finds it."""
    m, mgr, sym = _stores(tmp_path)
    inner, neighbour = sym["inner"], sym["neighbour"]
    mgr.add_breakpoint(inner, condition=lambda view: (view.read_register("x3"), view.read_register("x5"))
                       == (neighbour + 64 * 100, 2))
    event = mgr.reverse_cont()
    assert (event.kind, event.pc, event.history_edge) == (StopKind.SWBREAK, inner, None)
    assert m.vcpu.icount == 5 + 2 * (2 + 3 * 1024 + 3) + 2 + 3 * 100


def test_a_breakpoint_given_a_condition_is_decided_in_the_run_and_its_patch_lifted(guest_dir):
    """Policy 18 with plain breakpoints patched (in_run_breakpoints off): a condition moves the
    breakpoint into the run (its BRK lifted); a false one never stops the guest."""
    g, m = _guest(guest_dir)
    a = g.sym["bp_a"]
    original = g.read(a, 4)
    assert m.add_breakpoint(a) == "sw" and g.vm.read_phys(a, 4) == BRK0
    assert m.add_breakpoint(a, condition=lambda view: False) == "sw"
    assert g.vm.read_phys(a, 4) == original
    assert m.debug_points() == [DebugPoint("break", a, 4, f"software (decided in the run, pa {a:#x})")]
    assert m.cont().kind is StopKind.EXITED


def test_reverse_execution_without_a_history_is_refused(guest_dir):
    g, m = _guest(guest_dir)
    for reverse in (m.reverse_step, m.reverse_cont, lambda: m.seek_to(0)):
        with pytest.raises(DebugError) as e:
            reverse()
        assert e.value.errno == errno.ENOTSUP and str(e.value) == (
            "not recording: reverse execution needs `monitor record on` or `guestdbg run --record`")


def test_reverse_continue_finds_a_watch_hit_in_the_step_over_a_false_breakpoint(tmp_path):
    """A breakpoint whose condition is false on the store, and a watch on what it stores: the
    replay steps over the false hit, the step meets the watch, which is the stop."""
    m, mgr, sym = _stores(tmp_path)
    store, target = sym["_start"] + 8, sym["target"]
    mgr.add_breakpoint(store, condition=lambda view: False)
    mgr.add_watchpoint(target, 8, WatchKind.WRITE)
    event = mgr.reverse_cont()
    assert (event.kind, event.pc, event.watch_addr, m.vcpu.icount) == (StopKind.WATCH, store, target, 2)
    assert mgr.read_memory(target, 8) == bytes(8)


def test_a_guest_fault_while_recording_is_a_signal_stop_and_replays_to_the_same(tmp_path):
    mch = VirtMachine(VirtConfig(), console=lambda data: None)
    image = tmp_path / "fault.bin"
    image.write_bytes(bytes.fromhex("1f2003d5" "1f2003d5" "00000000"))  # nop, nop, udf #0
    mch.load_raw(image, RAM)
    m = GuestDebugManager(mch)
    m.start_recording(interval=1000)
    e = m.cont()
    assert (e.kind, e.pc, e.signal) == (StopKind.SIGNAL, RAM + 8, signal.SIGILL)
    assert m.reverse_step().pc == RAM + 4
    assert (m.cont().kind, mch.vcpu.pc) == (StopKind.SIGNAL, RAM + 8)


def test_what_cannot_be_recorded_says_why(guest_dir):
    """The host clock can be (paced while recording); too little --record-mem cannot: EINVAL,
    the reason, and the host clock left as it was."""
    m = VirtMachine(VirtConfig(), console=lambda b: None, clock_mode="host")
    mgr = GuestDebugManager(m)
    with pytest.raises(DebugError) as e:
        mgr.start_recording(mem_limit=1 << 20)
    assert e.value.errno == errno.EINVAL and str(e.value).startswith(
        "the history needs more than a copy of guest memory (")
    assert not mgr.recording and not m.clock.paced
    mgr.start_recording()
    assert mgr.recording and m.clock.paced
    mgr.stop_recording()
    assert not m.clock.paced


@pytest.mark.kvm
@pytest.mark.skipif(kvm_unavailable_reason() is not None, reason=f"/dev/kvm cannot be used: {kvm_unavailable_reason()}")
def test_x86_cannot_be_recorded():
    from guestdbg.board.pc_probe import create_pc_machine
    m = GuestDebugManager(create_pc_machine(console=lambda data: None))
    with pytest.raises(DebugError) as e:
        m.start_recording()
    assert e.value.errno == errno.ENOTSUP and str(e.value) == "reverse execution needs the emulated back end"
    assert not m.recording


def test_recording_started_over_a_brk_patch_knows_the_guests_bytes(guest_dir):
    """A breakpoint patched before the recording starts: its first checkpoint holds the
    instruction under the BRK, so once the breakpoint is gone the replay does not meet it."""
    g, m = _guest(guest_dir)
    a = g.sym["bp_a"]
    m.add_breakpoint(a)
    m.start_recording(interval=1000)
    assert m.cont().pc == a
    m.remove_breakpoint(a)
    assert m.cont().kind is StopKind.EXITED
    m.seek_to(0)
    assert m.cont().kind is StopKind.EXITED


def test_a_continue_of_one_vcpu_runs_it_alone(tmp_path):
    """gdb's `vCont;c:N` (scheduler-locking): only that vCPU runs to its next stop; `cont()`
    runs them all."""
    from tests.helpers.mmu_guest import assemble
    from tests.integration.test_smp_debug import GUEST_S, make
    elf = assemble(tmp_path, "smpdbg", GUEST_S)
    m, board, sym = make(elf, 2)
    m.add_breakpoint(sym["after_call"])
    e = m.cont()
    other = 1 - e.vcpu_id
    before = board.vcpus[other].icount
    e2 = m.cont(e.vcpu_id)
    assert (e2.kind, e2.vcpu_id, e2.pc) == (StopKind.SWBREAK, e.vcpu_id, sym["after_call"])
    assert board.vcpus[other].icount == before


def test_a_stores_stop_consults_the_write_watches_conditions_not_a_read_watchs(guest_dir):
    """A read watch whose condition holds and a write watch whose condition does not, on the
    same bytes: the loads stop, the stores run on."""
    g, m = _guest(guest_dir)
    a_count = g.sym["bp_a_count"]
    _after_first(g, m, "bp_a")
    m.add_watchpoint(a_count, 4, WatchKind.READ, condition=lambda view: True)
    m.add_watchpoint(a_count, 4, WatchKind.WRITE, condition=lambda view: False)
    first, second = m.cont(), m.cont()
    assert (first.kind, first.watch_kind) == (second.kind, second.watch_kind) == (StopKind.WATCH, WatchKind.READ)
    assert first.pc == second.pc


def test_the_guests_end_and_the_historys_end_are_reported_as_such(tmp_path):
    m, mgr, sym = _recording_stores(tmp_path)
    mgr.add_breakpoint(sym["outer"])
    assert mgr.cont().pc == sym["outer"]
    mgr.remove_breakpoint(sym["outer"])
    mgr.seek_to(2)
    e = mgr.cont()  # forward in the past: to the live end, a stop there
    assert (e.kind, e.pc, e.detail, e.history_edge) == (
        StopKind.SIGNAL, sym["outer"], "the end of the recorded history", "end")
    e = mgr.cont()
    assert (e.kind, e.pc, e.exit_status, e.detail) == (StopKind.EXITED, m.vcpu.pc, 0, "PSCI SYSTEM_OFF")
    assert e.pc is not None


def test_a_pc_moved_onto_a_breakpoint_meets_it(guest_dir):
    """Stopped at one breakpoint, the PC set to another: resuming stops there at once (the
    step-over is only for where the vCPU stopped)."""
    g, m = _guest(guest_dir)
    a, b = g.sym["bp_a"], g.sym["bp_b"]
    m.add_breakpoint(a)
    m.add_breakpoint(b)
    assert m.cont().pc == a
    icount = g.vcpu.icount
    m.set_pc(b)
    e = m.cont()
    assert (e.kind, e.pc, g.vcpu.icount) == (StopKind.SWBREAK, b, icount)


def test_a_step_at_another_va_of_a_patched_instruction_is_one_step(guest_dir):
    """A breakpoint at ALIAS + 0x4000 patches PA 0x4030_2000, which the identity map also
    shows at VA 0x4030_2000: a single step there executes the instruction (not the BRK) and
    stops after it, as on QEMU where a breakpoint on one VA does not fire at another."""
    g, m = _guest(guest_dir)
    _mmu_on(g)
    code = 0x4030_2000
    g.vm.write_phys(code, bytes.fromhex("1f2003d5" "1f2003d5" "00000000"))  # nop, nop, udf #0
    assert m.add_breakpoint(ALIAS + 0x4000) == "sw" and g.vm.read_phys(code, 4) == BRK0
    m.set_pc(code)
    e = m.step()
    assert (e.kind, e.pc) == (StopKind.STEP, code + 4)
    assert g.vm.read_phys(code, 4) == BRK0


# ---------------------------------------------------------------------------------------------
# the resume itself: what it refuses, and how it runs on (found by the run of 2026-12-02, third)

SYSTEM_OFF = words(movz_w0(8), movk_w0_16(0x8400), 0xD4000002)  # PSCI SYSTEM_OFF (hvc #0)


def _raw(tmp_path, code: bytes, name: str = "raw") -> tuple[VirtMachine, GuestDebugManager]:
    mch = VirtMachine(VirtConfig(), console=lambda data: None)
    image = tmp_path / f"{name}.bin"
    image.write_bytes(code)
    mch.load_raw(image, RAM)
    m = GuestDebugManager(mch)
    m.in_run_breakpoints = False
    return mch, m


def test_a_resume_after_the_guests_end_says_what_it_cannot_do(tmp_path):
    mch, m = _raw(tmp_path, SYSTEM_OFF)
    assert m.cont().kind is StopKind.EXITED
    for resume, what in ((m.step, "step"), (m.cont, "continue")):
        with pytest.raises(DebugError) as e:
            resume()
        assert e.value.errno == errno.ESRCH
        assert str(e.value) == (f"the guest has exited (status 0, PSCI SYSTEM_OFF): nothing to {what}; "
                                "restore a snapshot to run it again")
    with pytest.raises(DebugError, match="nothing to continue; "):
        m.check_runnable()  # the GDB session's check before a vCont


def test_a_vcpu_that_is_off_cannot_be_stepped_or_run_alone(tmp_path):
    from tests.helpers.mmu_guest import assemble
    from tests.integration.test_smp_debug import GUEST_S, make
    m, board, sym = make(assemble(tmp_path, "smpdbg", GUEST_S), 2)
    board.powered_off.add(1)
    for resume, what in ((lambda: m.step(1), "step"), (lambda: m.cont(1), "continue"),
                         (lambda: m.check_runnable(vcpu=1), "continue"),
                         (lambda: m.check_runnable("step", vcpu=1), "step")):
        with pytest.raises(DebugError) as e:
            resume()
        assert e.value.errno == errno.ESRCH
        assert str(e.value) == f"CPU#1 is off (not started, or PSCI CPU_OFF): nothing to {what}"
    with pytest.raises(DebugError) as e:
        m.check_runnable(vcpu=2)
    assert (e.value.errno, str(e.value)) == (errno.ESRCH, "no vCPU 2 (the machine has 2)")
    m.check_runnable(vcpu=0)
    m.check_runnable()
    assert board.vcpus[1].icount == 0
    m.add_breakpoint(sym["after_call"])
    m.select_vcpu(1)
    e = m.cont()  # every vCPU, the current one off: the others run
    assert (e.kind, e.vcpu_id, e.pc) == (StopKind.SWBREAK, 0, sym["after_call"])
    assert board.vcpus[1].icount == 0


# movz w0, #5; adr x1, RAM + 0x40; str w0, [x1]; nop; PSCI SYSTEM_OFF. The word at RAM + 0x40.
STORE_5 = words(movz_w0(5), 0x100001E1, 0xB9000020, 0xD503201F) + SYSTEM_OFF
STORED = RAM + 0x40


def test_a_step_onto_a_watched_store_whose_condition_is_false_stops_there(tmp_path):
    """The stop of the vCPU a step is for is the step's: a watch's false condition does not
    run it on past the store (a continue does)."""
    mch, m = _raw(tmp_path, STORE_5)
    m.add_watchpoint(STORED, 4, WatchKind.WRITE, condition=lambda view: False)
    assert [(e.kind, e.pc) for e in (m.step(), m.step())] == [(StopKind.STEP, RAM + 4), (StopKind.STEP, RAM + 8)]
    e = m.step()
    assert (e.kind, e.pc, e.watch_addr) == (StopKind.WATCH, RAM + 8, STORED)
    assert m.read_memory(STORED, 4) == bytes(4)  # before the access
    e = m.step()
    assert (e.kind, e.pc) == (StopKind.STEP, RAM + 0xC)
    assert m.read_memory(STORED, 4) == words(5)
    assert m.cont().kind is StopKind.EXITED


# adr x0, RAM + 0x800; msr vbar_el1, x0; brk #1 (the guest's own); nop. Its vector (EL1h,
# synchronous: VBAR + 0x200) powers off.
GUEST_BRK = words(0x10004000, 0xD518C000, 0xD4200020, 0xD503201F).ljust(0xA00, b"\0") + SYSTEM_OFF


def test_a_step_onto_the_guests_own_brk_stops_at_its_vector(tmp_path):
    """The guest's own breakpoint instruction is the guest's: a step takes it into the guest's
    exception vector and stops there, one instruction, as without a debugger."""
    mch, m = _raw(tmp_path, GUEST_BRK)
    m.add_breakpoint(RAM + 0xC)  # a breakpoint of the debugger's elsewhere: BRKs are trapped
    assert [m.step().pc for _ in range(2)] == [RAM + 4, RAM + 8]
    e = m.step()
    assert (e.kind, e.pc) == (StopKind.STEP, RAM + 0xA00)
    assert mch.vcpu.get_one_reg(reg_id("ESR_EL1")) >> 26 == 0x3C  # EC: BRK from AArch64
    assert mch.vcpu.get_one_reg(reg_id("ELR_EL1")) == RAM + 8
    assert m.cont().kind is StopKind.EXITED


@pytest.mark.parametrize("in_run", [False, True], ids=["brk", "in-run"])
def test_a_breakpoint_and_a_watch_on_one_store_stop_once_each(tmp_path, in_run):
    """A breakpoint on a store and a write watch on what it stores: the breakpoint first, then
    (the store stepped over with the breakpoint out of the way) the watch, before the access;
    then the store is done and the guest runs on."""
    mch, m = _raw(tmp_path, STORE_5)
    m.in_run_breakpoints = in_run
    m.add_breakpoint(RAM + 8)
    m.add_watchpoint(STORED, 4, WatchKind.WRITE)
    e = m.cont()
    assert (e.kind, e.pc) == (StopKind.SWBREAK, RAM + 8)
    e = m.cont()
    assert (e.kind, e.pc, e.watch_addr) == (StopKind.WATCH, RAM + 8, STORED)
    assert m.read_memory(STORED, 4) == bytes(4)
    e = m.cont()
    assert (e.kind, e.exit_status) == (StopKind.EXITED, 0)
    assert m.read_memory(STORED, 4) == words(5)


@pytest.mark.parametrize("in_run", [False, True], ids=["brk", "in-run"])
def test_a_breakpoint_and_a_hardware_breakpoint_on_one_instruction_stop_once(tmp_path, in_run):
    mch, m = _raw(tmp_path, STORE_5)
    m.in_run_breakpoints = in_run
    m.add_breakpoint(RAM + 4)
    m.add_hw_breakpoint(RAM + 4)
    e = m.cont()  # one stop there (whichever mechanism meets it first), then on to the end
    assert e.kind in (StopKind.SWBREAK, StopKind.HWBREAK) and e.pc == RAM + 4
    assert m.cont().kind is StopKind.EXITED


def test_after_an_interrupts_stop_a_wake_runs_on(guest_dir):
    """An interrupt() stops the guest once; a later wake() (the host's services: console input)
    is not another Ctrl-C: the run serves it and goes on to the breakpoint."""
    g, m = _guest(guest_dir)
    a, b = g.sym["bp_a"], g.sym["bp_b"]
    m.add_breakpoint(a)
    m.wake()  # before any interrupt(): a fresh manager runs on too
    e = m.cont()
    assert (e.kind, e.pc) == (StopKind.SWBREAK, a)
    m.interrupt()
    e = m.cont()
    assert (e.kind, e.signal, e.pc) == (StopKind.SIGNAL, signal.SIGINT, a)
    m.remove_breakpoint(a)
    m.add_breakpoint(b)
    m.wake()
    e = m.cont()
    assert (e.kind, e.pc) == (StopKind.SWBREAK, b)


# adr x1, RAM + 0x10; ldr w2, [x1]; nop; nop; (0x10:) nop; PSCI SYSTEM_OFF.
READS_ITS_CODE = words(0x10000081, 0xB9400022, 0xD503201F, 0xD503201F, 0xD503201F) + SYSTEM_OFF


def test_a_guest_reading_its_own_code_under_a_breakpoint_reads_the_brk(tmp_path):
    """As on KVM, where the debugger's BRK is in guest memory: only stores over a patched
    instruction are trapped, so a load of it reads the BRK (trapping loads too would make
    every load of the guest take Unicorn's slow path)."""
    mch, m = _raw(tmp_path, READS_ITS_CODE)
    m.add_breakpoint(RAM + 0x10)
    e = m.cont()
    assert (e.kind, e.pc) == (StopKind.SWBREAK, RAM + 0x10)
    assert mch.vcpu.get_one_reg(reg_id("X2")).to_bytes(4, "little") == BRK0
    assert m.read_memory(RAM + 0x10, 4) == words(0xD503201F)  # the debugger sees the nop


def test_a_store_over_a_breakpoint_through_another_va_of_its_page(tmp_path):
    """The MMU on (the tables of the memory_region tests): a breakpoint at VA 0x4030_2000
    (the identity map) and the guest rewriting that instruction through ALIAS + 0x4000, the
    same physical page: the store is done, the breakpoint stays, over the new instruction."""
    from types import SimpleNamespace
    code = 0x4030_2000
    mch, m = _raw(tmp_path, words(movz_w0(MOV_X2_7), movk_w0_16(MOV_X2_7 >> 16),
                                   0xD2B00001,   # movz x1, #0x8000, lsl #16
                                   0xF2880001,   # movk x1, #0x4000: x1 = ALIAS + 0x4000
                                   0xB9000020,   # str w0, [x1]
                                   0xD2A80603,   # movz x3, #0x4030, lsl #16
                                   0xF2840003,   # movk x3, #0x2000: x3 = 0x4030_2000
                                   0xD61F0060))  # br x3
    mch.vm.write_phys(code, words(MOV_X2_1) + SYSTEM_OFF)
    _mmu_on(SimpleNamespace(vm=mch.vm, vcpu=mch.vcpu))
    assert m.add_breakpoint(code) == "sw"
    e = m.cont()
    assert (e.kind, e.pc) == (StopKind.SWBREAK, code)
    assert m.read_memory(code, 4) == m.read_memory(ALIAS + 0x4000, 4) == words(MOV_X2_7)
    assert m.cont().kind is StopKind.EXITED
    assert mch.vcpu.get_one_reg(reg_id("X2")) == 7


@pytest.mark.parametrize("how", ["cont", "step"])
@pytest.mark.parametrize("in_run", [False, True], ids=["brk", "in-run"])
def test_a_breakpoint_on_the_guests_own_brk_stops_once_then_the_guest_takes_it(tmp_path, in_run, how):
    """A breakpoint on an instruction that is itself a BRK of the guest's: one stop there; the
    resume from it executes that instruction, the guest's BRK, which goes to the guest's
    vector (as a step from any breakpoint executes the instruction under it)."""
    mch, m = _raw(tmp_path, GUEST_BRK)
    m.in_run_breakpoints = in_run
    m.add_breakpoint(RAM + 8)
    e = m.cont()
    assert (e.kind, e.pc) == (StopKind.SWBREAK, RAM + 8)
    if how == "step":
        e = m.step()
        assert (e.kind, e.pc) == (StopKind.STEP, RAM + 0xA00)
    else:
        assert m.cont().kind is StopKind.EXITED
    assert mch.vcpu.get_one_reg(reg_id("ESR_EL1")) >> 26 == 0x3C
    assert mch.vcpu.get_one_reg(reg_id("ELR_EL1")) == RAM + 8


def test_a_hardware_breakpoint_at_another_va_of_a_patched_instruction_stops_once(guest_dir):
    """The set-up of the step test above, with a hardware breakpoint at VA 0x4030_2000 too:
    its stop, then the instruction runs (under the BRK another VA's breakpoint put there) and
    the guest goes on to the udf."""
    g, m = _guest(guest_dir)
    _mmu_on(g)
    code = 0x4030_2000
    g.vm.write_phys(code, bytes.fromhex("1f2003d5" "1f2003d5" "00000000"))  # nop, nop, udf #0
    assert m.add_breakpoint(ALIAS + 0x4000) == "sw"
    m.add_hw_breakpoint(code)
    m.set_pc(code)
    e = m.cont()
    assert (e.kind, e.pc) == (StopKind.HWBREAK, code)
    e = m.cont()
    assert (e.kind, e.pc, e.signal) == (StopKind.SIGNAL, code + 8, signal.SIGILL)


@pytest.mark.kvm
@pytest.mark.skipif(kvm_unavailable_reason() is not None, reason=f"/dev/kvm cannot be used: {kvm_unavailable_reason()}")
def test_x86_watch_stops_come_after_the_access_and_the_next_one_is_met(tmp_path):
    """On x86 a watch stop comes after the access (a trap): resuming from it must not step the
    next instruction with the watches out of the way. Two stores in a row into one watch: two
    stops, each after its store."""
    import subprocess
    from pathlib import Path

    from guestdbg.board.pc_probe import create_pc_machine
    from tests.integration.test_x86_manners import symbols
    x86 = Path(__file__).resolve().parents[2] / "guests" / "x86"
    proc = subprocess.run(["make", "-C", str(x86), f"O={tmp_path}", "-j2", f"{tmp_path}/watch.elf"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    elf = tmp_path / "watch.elf"
    s = symbols(elf)
    mch = create_pc_machine(console=lambda data: None)
    mch.load_elf(elf)
    m = GuestDebugManager(mch)
    m.add_watchpoint(s["wdata"] + 0x20, 16, WatchKind.WRITE)
    first, second = m.cont(), m.cont()
    assert [(e.kind, e.pc, e.watch_addr) for e in (first, second)] == [
        (StopKind.WATCH, s["acc_stp2"], s["wdata"] + 0x20), (StopKind.WATCH, s["acc_stp2"] + 4, s["wdata"] + 0x28)]
    # With a false condition: nothing to step over (the stores are done), the run goes on.
    mch = create_pc_machine(console=lambda data: None)
    mch.load_elf(elf)
    m = GuestDebugManager(mch)
    m.add_watchpoint(s["wdata"] + 0x20, 16, WatchKind.WRITE, condition=lambda view: False)
    e = m.cont()
    assert (e.kind, e.exit_status) == (StopKind.EXITED, 0)
    assert m.read_memory(s["wdata"] + 0x20, 16) == bytes([0x66] * 8 + [0x77] * 8)


def test_a_history_keeps_a_gib_by_default(tmp_path):
    """--record-mem's default: 1 GiB of history."""
    mch, m = _raw(tmp_path, SYSTEM_OFF)
    assert m.record_status() is None
    m.start_recording()
    assert m.record_status()["limit"] == 1 << 30
    m.stop_recording()
    m.start_recording(mem_limit=600 << 20)
    assert m.record_status()["limit"] == 600 << 20


# movz w0, #5; adr x1, RAM + 0x40; str w0, [x1]; str w0, [x1] again; PSCI SYSTEM_OFF.
STORE_5_TWICE = words(movz_w0(5), 0x100001E1, 0xB9000020, 0xB9000020) + SYSTEM_OFF


def test_a_pc_moved_from_a_watch_stop_onto_another_watched_access_meets_it(tmp_path):
    """Stopped at a watched store (before it), the PC moved onto the next store into the same
    watch: resuming runs from there with the watch armed, and stops at that store. (Only where
    the vCPU stopped is stepped over with the watches out of the way.)"""
    mch, m = _raw(tmp_path, STORE_5_TWICE)
    m.add_watchpoint(STORED, 4, WatchKind.WRITE)
    e = m.cont()
    assert (e.kind, e.pc) == (StopKind.WATCH, RAM + 8)
    m.set_pc(RAM + 0xC)
    e = m.cont()
    assert (e.kind, e.pc, e.watch_addr) == (StopKind.WATCH, RAM + 0xC, STORED)
    assert m.read_memory(STORED, 4) == bytes(4)


@pytest.mark.parametrize("hsr, far, detail", [
    (0x34 << 26 | 1 << 6, RAM + 0x80, f"unexpected watchpoint exit at {RAM + 0x80:#x}"),  # no watch, no patch there
    (0x00 << 26, 0, "unexpected debug exit EC 0x0"),
], ids=["watch", "other"])
def test_a_debug_exit_nothing_explains_is_a_signal_stop_saying_so(tmp_path, hsr, far, detail):
    """A KVM_EXIT_DEBUG that no breakpoint, watch or patch of the debugger's explains (a board
    whose vCPU reported one, made up here): a SIGTRAP stop where the vCPU is, naming the
    exit, not a hang or a crash of the debugger."""
    mch = VirtMachine(VirtConfig(), console=lambda data: None)
    image = tmp_path / "raw.bin"
    image.write_bytes(STORE_5)
    mch.load_raw(image, RAM)
    exits = [kvm.KvmRun(kvm.KVM_EXIT_DEBUG, debug=kvm.DebugExitArm64(hsr=hsr, far=far))]
    m = GuestDebugManager(Without(mch, run_until=lambda *a, **k: exits.pop() if exits else mch.run_until(*a, **k)))
    m.add_watchpoint(RAM + 0x200, 4, WatchKind.WRITE)  # a watch elsewhere
    e = m.cont()
    assert (e.kind, e.pc, e.signal, e.detail) == (StopKind.SIGNAL, RAM, signal.SIGTRAP, detail)
    assert m.cont().kind is StopKind.EXITED  # and the guest runs on from there


# movz x0, #0; 1: add x0, x0, #1; cmp x0, #2000; b.ne 1b; PSCI SYSTEM_OFF.
COUNT_2000 = words(0xD2800000, 0x91000400, 0xF11F401F, 0x54FFFFC1) + SYSTEM_OFF


def test_a_debugger_write_through_the_mmu_is_replayed_at_its_physical_address(tmp_path):
    """The MMU on, RAM's first 2 MiB mapped where they are and ALIAS at PA 0x4020_0000, which
    no VA equal to it maps: a write the debugger makes through ALIAS while recording is an
    input, replayed at that physical address whenever a seek passes it."""
    from types import SimpleNamespace
    mch, m = _raw(tmp_path, COUNT_2000)
    _mmu_on(SimpleNamespace(vm=mch.vm, vcpu=mch.vcpu))
    l2 = L3 + 0x1000  # VA 1 GiB..: only its first 2 MiB, as a block of RAM
    mch.vm.write_phys(l2, (RAM | BLOCK).to_bytes(8, "little"))
    mch.vm.write_phys(L1 + 8, (l2 | TABLE).to_bytes(8, "little"))
    m.start_recording(interval=500)
    m.add_breakpoint(RAM + 0xC)
    assert m.cont().pc == RAM + 0xC
    m.remove_breakpoint(RAM + 0xC)
    written_at = mch.vcpu.icount
    m.write_memory(ALIAS, b"\x11\x22\x33\x44")
    assert m.cont().kind is StopKind.EXITED
    m.seek_to(written_at - 1)
    assert m.read_memory(ALIAS, 4) == bytes(4)
    m.seek_to(written_at + 2)  # from the first checkpoint, replaying the write
    assert m.read_memory(ALIAS, 4) == b"\x11\x22\x33\x44" == mch.vm.read_phys(0x4020_0000, 4)


# mrs x1, cntvct_el0; nop; mrs x2, cntvct_el0; then COUNT_2000's loop and PSCI SYSTEM_OFF.
READ_COUNTER_TWICE = words(0xD53BE041, 0xD503201F, 0xD53BE042) + COUNT_2000


def test_the_host_clocks_jump_after_a_stop_is_replayed(tmp_path):
    """The host's clock, paced while recording: after a debugger stop of 20 ms the counter
    jumps to the host's time, a logged input; a replay through that point reads the same."""
    import time
    mch = VirtMachine(VirtConfig(), console=lambda data: None, clock_mode="host")
    image = tmp_path / "counter.bin"
    image.write_bytes(READ_COUNTER_TWICE)
    mch.load_raw(image, RAM)
    m = GuestDebugManager(mch)
    m.start_recording(interval=500)
    m.add_breakpoint(RAM + 4)
    assert m.cont().pc == RAM + 4
    at_stop = mch.clock.counter()
    m.remove_breakpoint(RAM + 4)
    time.sleep(0.02)
    assert m.cont().kind is StopKind.EXITED
    x1, x2 = m.read_register("x1"), m.read_register("x2")
    assert x2 - x1 >= 62_500_000 // 100  # at least 10 ms of ticks: the jump
    m.seek_to(3)  # from the first checkpoint: the two reads replayed
    assert (m.read_register("x1"), m.read_register("x2")) == (x1, x2)
    m.seek_to(1)  # where the recorded run stopped: as it first arrived, before the jump
    assert mch.clock.counter() == at_stop


# x1 = RAM + 0x200; x2 = the PL011; six times: a byte from its data register stored at x1++,
# then 300 loops of delay; PSCI SYSTEM_OFF.
READS_SIX_BYTES = words(0x10001001, 0xD2A12002, 0xD28000C3, 0xB9400040, 0x38001420, 0xD2802584,
                         0xF1000484, 0x54FFFFE1, 0xF1000463, 0x54FFFF41) + SYSTEM_OFF


def test_console_input_read_across_checkpoints_replays_the_same(tmp_path):
    """The guest reads console input, one byte at a time, across several checkpoints while
    recording; a replay from a checkpoint between the reads gives it the same bytes (the
    count of the console's pulls is part of each checkpoint)."""
    mch = VirtMachine(VirtConfig(), console=lambda data: None)
    image = tmp_path / "reads.bin"
    image.write_bytes(READS_SIX_BYTES)
    mch.load_raw(image, RAM)
    pending = bytearray(b"ABCDEFGHIJKLMNOP")

    def source(room: int) -> bytes:
        byte = bytes(pending[:1])
        del pending[:1]
        return byte
    mch.uart.rx_source = source
    m = GuestDebugManager(mch)
    m.start_recording(interval=500)
    assert m.cont().kind is StopKind.EXITED
    live = m.read_memory(RAM + 0x200, 6)
    assert live == b"ABCDEF"
    m.seek_to(700)  # after the first read, from the checkpoint at 500
    assert m.cont().kind is StopKind.EXITED  # forward through the recorded reads to the end
    assert m.read_memory(RAM + 0x200, 6) == live
