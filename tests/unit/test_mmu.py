"""Tests for guestdbg.arm.mmu: stage-1 walks over hand-built VMSAv8-64 tables.

Descriptor indices and table addresses are written out literally (computed by hand from the
VA bit ranges of each granule) so the tests do not share index arithmetic with the code
under test.
"""

from __future__ import annotations

import re
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guestdbg.arm.mmu import Translation, TranslationFault, translate, translate_range

# ---------------------------------------------------------------- register fields
SCTLR_M = 1 << 0
SCTLR_WXN = 1 << 19
TCR_EPD0 = 1 << 7
TCR_EPD1 = 1 << 23
TCR_TBI0 = 1 << 37
TCR_HA = 1 << 39
TCR_HD = 1 << 40
TG0_4K, TG0_64K, TG0_16K = 0b00 << 14, 0b01 << 14, 0b10 << 14
TG1_16K, TG1_4K, TG1_64K = 0b01 << 30, 0b10 << 30, 0b11 << 30
IPS_32 = 0b000 << 32
IPS_48 = 0b101 << 32


def t0sz(n: int) -> int:
    return n


def t1sz(n: int) -> int:
    return n << 16


# ---------------------------------------------------------------- descriptors
AF = 1 << 10
PXN = 1 << 53
UXN = 1 << 54
DBM = 1 << 51
AP_RW_EL1 = 0b00 << 6
AP_RW_ALL = 0b01 << 6
AP_RO_EL1 = 0b10 << 6
AP_RO_ALL = 0b11 << 6


def table(pa: int) -> int:
    return pa | 0b11


def page(pa: int, attrs: int = AF) -> int:
    return pa | attrs | 0b11


def block(pa: int, attrs: int = AF) -> int:
    return pa | attrs | 0b01


class PhysMem:
    """Bytearray-backed guest physical memory starting at PA 0."""

    def __init__(self, size: int = 0x10_0000) -> None:
        self.data = bytearray(size)

    def write_u64(self, pa: int, value: int) -> None:
        assert pa % 8 == 0
        self.data[pa:pa + 8] = struct.pack("<Q", value)

    def read_u64(self, pa: int) -> int:
        if pa < 0 or pa + 8 > len(self.data):
            raise IndexError(f"PA {pa:#x} not backed")
        return struct.unpack_from("<Q", self.data, pa)[0]


def regs(mem: PhysMem, *, tcr: int, ttbr0: int = 0, ttbr1: int = 0, sctlr: int = SCTLR_M,
         **extra) -> dict:
    return dict(sctlr_el1=sctlr, tcr_el1=tcr, ttbr0_el1=ttbr0, ttbr1_el1=ttbr1,
                read_u64=mem.read_u64, **extra)


# ---------------------------------------------------------------- 4K granule, 48-bit VA
# VA[47:39] -> L0, [38:30] -> L1, [29:21] -> L2, [20:12] -> L3.
# Tables: L0 @0x1000, L1 @0x2000, L2 @0x3000, L3 @0x4000.
# VA_4K_PAGE has indices L0=1, L1=2, L2=3, L3=4; VA_2M_BLOCK has L0=1, L1=2, L2=5.
VA_4K_PAGE = 0x0000_0080_8060_4000
VA_2M_BLOCK = 0x0000_0080_80A0_0000
PA_4K_PAGE = 0x1234_5000
PA_4K_NEXT = 0x0777_7000  # mapped at VA_4K_PAGE + 0x1000 (L3 index 5)
PA_2M_BLOCK = 0x4020_0000
TCR_4K_48 = t0sz(16) | TG0_4K | IPS_48


def make_4k_48(page_attrs: int = AF) -> PhysMem:
    mem = PhysMem()
    mem.write_u64(0x1000 + 1 * 8, table(0x2000))
    mem.write_u64(0x2000 + 2 * 8, table(0x3000))
    mem.write_u64(0x3000 + 3 * 8, table(0x4000))
    mem.write_u64(0x3000 + 5 * 8, block(PA_2M_BLOCK))
    mem.write_u64(0x4000 + 4 * 8, page(PA_4K_PAGE, page_attrs))
    mem.write_u64(0x4000 + 5 * 8, page(PA_4K_NEXT))
    return mem


def tr_4k(va: int, mem: PhysMem | None = None, **kw) -> Translation:
    mem = mem if mem is not None else make_4k_48()
    return translate(va, **regs(mem, tcr=kw.pop("tcr", TCR_4K_48), ttbr0=0x1000,
                                sctlr=kw.pop("sctlr", SCTLR_M)), **kw)


def test_mmu_off_is_identity():
    mem = PhysMem()  # empty: no walk may happen
    t = translate(0x8000_1234, **regs(mem, tcr=0, sctlr=0), access="write", el=0)
    assert t.pa == 0x8000_1234
    assert t.va == 0x8000_1234
    assert all([t.readable_el1, t.writable_el1, t.readable_el0, t.writable_el0,
                t.executable_el1, t.executable_el0])
    assert translate(0x4000_0000, **regs(mem, tcr=0, sctlr=0), access="exec").pa == 0x4000_0000


def test_4k_48bit_page():
    t = tr_4k(VA_4K_PAGE + 0xABC)
    assert t.pa == PA_4K_PAGE + 0xABC
    assert t.page_size == 0x1000
    assert t.level == 3
    assert (t.readable_el1, t.writable_el1, t.readable_el0, t.writable_el0) == (
        True, True, False, False)
    assert t.executable_el1 and t.executable_el0


def test_4k_48bit_2m_block():
    t = tr_4k(VA_2M_BLOCK + 0x1_2345)
    assert t.pa == PA_2M_BLOCK + 0x1_2345
    assert t.page_size == 2 << 20
    assert t.level == 2


def test_ttbr_asid_and_cnp_bits_are_ignored():
    mem = make_4k_48()
    t = translate(VA_4K_PAGE, **regs(mem, tcr=TCR_4K_48, ttbr0=(0x55 << 48) | 0x1000 | 1))
    assert t.pa == PA_4K_PAGE


def test_4k_39bit_1g_block_starts_at_level1():
    # T0SZ=25: start level 1, VA[38:30] indexes the L1 table at 0x5000. Index 3 -> 1G block.
    mem = PhysMem()
    mem.write_u64(0x5000 + 3 * 8, block(0x1_4000_0000))
    t = translate(0xC123_4567, **regs(mem, tcr=t0sz(25) | TG0_4K | IPS_48, ttbr0=0x5000))
    assert t.pa == 0x1_4123_4567
    assert t.page_size == 1 << 30
    assert t.level == 1
    # VA bit 39 set is outside a 39-bit TTBR0 region
    with pytest.raises(TranslationFault) as ei:
        translate(0x80_0000_0000, **regs(mem, tcr=t0sz(25) | TG0_4K | IPS_48, ttbr0=0x5000))
    assert ei.value.kind == "translation" and ei.value.level == -1
    assert ei.value.fsc() == 0b000100


def test_64k_granule_page_and_512m_block():
    # 64K, T0SZ=16: L1 VA[47:42], L2 VA[41:29], L3 VA[28:16]. Tables @0x10000/0x20000/0x30000.
    mem = PhysMem()
    mem.write_u64(0x10000 + 1 * 8, table(0x20000))
    mem.write_u64(0x20000 + 2 * 8, table(0x30000))
    mem.write_u64(0x20000 + 4 * 8, block(0x6000_0000))
    mem.write_u64(0x30000 + 3 * 8, page(0x1234_0000))
    r = regs(mem, tcr=t0sz(16) | TG0_64K | IPS_48, ttbr0=0x10000)
    t = translate(0x0000_0400_4003_FEDC, **r)  # L1=1, L2=2, L3=3
    assert t.pa == 0x1234_FEDC
    assert t.page_size == 64 << 10
    assert t.level == 3
    t = translate(0x0000_0400_8765_4321, **r)  # L1=1, L2=4 (+0x0765_4321 in the block)
    assert t.pa == 0x6765_4321
    assert t.page_size == 512 << 20
    assert t.level == 2


def test_16k_granule_page_and_32m_block():
    # 16K, T0SZ=17 (47-bit): start level 1, L1 VA[46:36], L2 VA[35:25], L3 VA[24:14].
    mem = PhysMem()
    mem.write_u64(0x4000 + 5 * 8, table(0x8000))
    mem.write_u64(0x8000 + 6 * 8, table(0xC000))
    mem.write_u64(0x8000 + 8 * 8, block(0x2_0000_0000))
    mem.write_u64(0xC000 + 7 * 8, page(0xABC_C000))
    r = regs(mem, tcr=t0sz(17) | TG0_16K | IPS_48, ttbr0=0x4000)
    t = translate(0x0000_0050_0C01_C000 + 0x3FFF, **r)  # L1=5, L2=6, L3=7
    assert t.pa == 0xABC_C000 + 0x3FFF
    assert t.page_size == 16 << 10
    t = translate(0x0000_0050_1000_0000 + 0x1AB_CDEF, **r)  # L1=5, L2=8
    assert t.pa == 0x2_0000_0000 + 0x1AB_CDEF
    assert t.page_size == 32 << 20


def test_16k_48bit_uses_two_entry_level0():
    # 16K, T0SZ=16: level 0 resolves only VA[47]. VA bit 47 set -> L0 entry 1.
    mem = PhysMem()
    mem.write_u64(0x4000 + 1 * 8, table(0x8000))
    mem.write_u64(0x8000 + 0 * 8, table(0xC000))
    mem.write_u64(0xC000 + 0 * 8, block(0x4_0000_0000))
    t = translate(0x0000_8000_0000_1234,
                  **regs(mem, tcr=t0sz(16) | TG0_16K | IPS_48, ttbr0=0x4000))
    assert t.pa == 0x4_0000_1234
    assert t.page_size == 32 << 20


def test_ttbr1_high_addresses_use_tg1_encoding():
    # 4K via TG1=0b10 (which would be 16K in TG0), T1SZ=16. TTBR0 side is 64K and unused.
    # VA 0xFFFF_0000_4020_3000: L0=0, L1=1, L2=1, L3=3. Tables @0x10000.. 0x13000.
    mem = PhysMem()
    mem.write_u64(0x10000 + 0 * 8, table(0x11000))
    mem.write_u64(0x11000 + 1 * 8, table(0x12000))
    mem.write_u64(0x12000 + 1 * 8, table(0x13000))
    mem.write_u64(0x13000 + 3 * 8, page(0x9_8765_4000, AF | AP_RO_EL1 | UXN))
    tcr = t0sz(16) | TG0_64K | t1sz(16) | TG1_4K | IPS_48
    r = regs(mem, tcr=tcr, ttbr0=0xDEAD_0000, ttbr1=(0x42 << 48) | 0x10000)
    t = translate(0xFFFF_0000_4020_3ABC, **r)
    assert t.pa == 0x9_8765_4ABC
    assert t.page_size == 0x1000
    assert not t.writable_el1 and not t.readable_el0 and not t.executable_el0
    assert t.executable_el1
    # Neither all-zeros nor all-ones above bit 47: outside both ranges.
    with pytest.raises(TranslationFault) as ei:
        translate(0xFF00_0000_4020_3ABC, **r)
    assert (ei.value.kind, ei.value.level, ei.value.fsc()) == ("translation", -1, 0b000100)
    # EPD1 disables TTBR1 walks.
    with pytest.raises(TranslationFault) as ei:
        translate(0xFFFF_0000_4020_3ABC, **{**r, "tcr_el1": tcr | TCR_EPD1})
    assert (ei.value.kind, ei.value.level, ei.value.fsc()) == ("translation", 0, 0b000100)


def test_ttbr1_16k_tg1_encoding():
    # TG1=0b01 is 16K (it would be 64K in TG0). T1SZ=17: L1 VA[46:36] etc. VA index L1=0x7FF.
    mem = PhysMem()
    mem.write_u64(0x4000 + 0x7FF * 8, table(0x8000))
    mem.write_u64(0x8000 + 0 * 8, block(0x6_0200_0000))
    r = regs(mem, tcr=t1sz(17) | TG1_16K | IPS_48, ttbr1=0x4000)
    t = translate(0xFFFF_FFF0_0000_0010, **r)
    assert t.pa == 0x6_0200_0010
    assert t.page_size == 32 << 20


@pytest.mark.parametrize("va,level", [
    (0x0000_0100_0000_0000, 0),   # L0=2 invalid
    (0x0000_0081_C000_0000, 1),   # L0=1, L1=7 invalid
    (0x0000_0080_8120_0000, 2),   # L0=1, L1=2, L2=9 invalid
    (0x0000_0080_806A_0000, 3),   # L0=1, L1=2, L2=3, L3=0xA0 invalid
])
def test_translation_fault_at_each_level(va, level):
    with pytest.raises(TranslationFault) as ei:
        tr_4k(va)
    f = ei.value
    assert f.kind == "translation"
    assert f.level == level
    assert f.va == va
    assert f.fsc() == 0b000100 | level


def test_epd0_and_out_of_range():
    with pytest.raises(TranslationFault) as ei:
        tr_4k(VA_4K_PAGE, tcr=TCR_4K_48 | TCR_EPD0)
    assert (ei.value.kind, ei.value.level) == ("translation", 0)
    with pytest.raises(TranslationFault) as ei:
        tr_4k(0x0001_0000_0000_0000)
    assert (ei.value.kind, ei.value.level, ei.value.fsc()) == ("translation", -1, 0b000100)


def test_top_byte_ignore():
    tagged = (0x5A << 56) | VA_4K_PAGE | 0x10
    with pytest.raises(TranslationFault):
        tr_4k(tagged)
    assert tr_4k(tagged, tcr=TCR_4K_48 | TCR_TBI0).pa == PA_4K_PAGE + 0x10


def test_block_not_allowed_at_level0_or_level3():
    mem = make_4k_48()
    mem.write_u64(0x1000 + 3 * 8, block(0x0))  # L0 block: reserved with 4K
    with pytest.raises(TranslationFault) as ei:
        tr_4k(0x0000_0180_0000_0000, mem)
    assert (ei.value.kind, ei.value.level) == ("translation", 0)
    mem.write_u64(0x4000 + 6 * 8, block(0x5000))  # 0b01 at level 3 is invalid
    with pytest.raises(TranslationFault) as ei:
        tr_4k(VA_4K_PAGE + 0x2000, mem)
    assert (ei.value.kind, ei.value.level, ei.value.fsc()) == ("translation", 3, 0b000111)


def test_unreadable_descriptor_is_translation_fault():
    mem = make_4k_48()
    mem.write_u64(0x3000 + 7 * 8, table(0x7FFF_F000))  # beyond the fake memory
    with pytest.raises(TranslationFault) as ei:
        tr_4k(0x0000_0080_80E0_0000, mem)  # L2=7
    assert (ei.value.kind, ei.value.level) == ("translation", 3)
    assert isinstance(ei.value.__cause__, IndexError)


def test_address_size_fault_from_ips():
    mem = make_4k_48()
    mem.write_u64(0x4000 + 8 * 8, page(0x1_0000_0000))
    with pytest.raises(TranslationFault) as ei:
        tr_4k(VA_4K_PAGE + 0x4000, mem, tcr=t0sz(16) | TG0_4K | IPS_32)
    assert (ei.value.kind, ei.value.level, ei.value.fsc()) == ("address_size", 3, 0b000011)
    assert tr_4k(VA_4K_PAGE + 0x4000, mem).pa == 0x1_0000_0000


def test_access_flag_fault():
    mem = make_4k_48(page_attrs=0)
    with pytest.raises(TranslationFault) as ei:
        tr_4k(VA_4K_PAGE, mem)
    assert (ei.value.kind, ei.value.level, ei.value.fsc()) == ("access_flag", 3, 0b001011)
    # With hardware AF management the walk succeeds.
    assert tr_4k(VA_4K_PAGE, mem, tcr=TCR_4K_48 | TCR_HA).pa == PA_4K_PAGE
    # Block AF fault reports level 2.
    mem.write_u64(0x3000 + 5 * 8, block(PA_2M_BLOCK, 0))
    with pytest.raises(TranslationFault) as ei:
        tr_4k(VA_2M_BLOCK, mem)
    assert (ei.value.kind, ei.value.level, ei.value.fsc()) == ("access_flag", 2, 0b001010)


def test_write_to_read_only_is_permission_fault():
    mem = make_4k_48(page_attrs=AF | AP_RO_ALL)
    t = tr_4k(VA_4K_PAGE, mem, access="read", el=0)
    assert t.readable_el0 and not t.writable_el0 and not t.writable_el1
    for el in (0, 1):
        with pytest.raises(TranslationFault) as ei:
            tr_4k(VA_4K_PAGE, mem, access="write", el=el)
        assert (ei.value.kind, ei.value.level, ei.value.fsc()) == ("permission", 3, 0b001111)
        assert ei.value.access == "write"


def test_dbm_with_hardware_dirty_management_is_writable():
    mem = make_4k_48(page_attrs=AF | AP_RO_EL1 | DBM)
    with pytest.raises(TranslationFault):
        tr_4k(VA_4K_PAGE, mem, access="write")
    t = tr_4k(VA_4K_PAGE, mem, access="write", tcr=TCR_4K_48 | TCR_HA | TCR_HD)
    assert t.writable_el1


def test_el0_access_to_el1_only_is_permission_fault():
    mem = make_4k_48(page_attrs=AF | AP_RW_EL1)
    assert tr_4k(VA_4K_PAGE, mem, access="write", el=1).writable_el1
    for access in ("read", "write"):
        with pytest.raises(TranslationFault) as ei:
            tr_4k(VA_4K_PAGE, mem, access=access, el=0)
        assert ei.value.kind == "permission" and ei.value.level == 3
    # 2M block, EL1 read-only: EL0 read faults at level 2
    mem.write_u64(0x3000 + 5 * 8, block(PA_2M_BLOCK, AF | AP_RO_EL1))
    with pytest.raises(TranslationFault) as ei:
        tr_4k(VA_2M_BLOCK, mem, el=0)
    assert (ei.value.kind, ei.value.level, ei.value.fsc()) == ("permission", 2, 0b001110)


def test_pxn_and_uxn():
    mem = make_4k_48(page_attrs=AF | AP_RO_ALL | PXN)
    assert tr_4k(VA_4K_PAGE, mem, access="exec", el=0).pa == PA_4K_PAGE
    with pytest.raises(TranslationFault) as ei:
        tr_4k(VA_4K_PAGE, mem, access="exec", el=1)
    assert ei.value.kind == "permission" and ei.value.fsc() == 0b001111

    mem = make_4k_48(page_attrs=AF | AP_RO_ALL | UXN)
    assert tr_4k(VA_4K_PAGE, mem, access="exec", el=1).pa == PA_4K_PAGE
    with pytest.raises(TranslationFault) as ei:
        tr_4k(VA_4K_PAGE, mem, access="exec", el=0)
    assert ei.value.kind == "permission"


def test_execute_only_el0_and_implicit_pxn():
    # AP=00 without UXN: EL0 may execute though it may not read.
    mem = make_4k_48(page_attrs=AF | AP_RW_EL1)
    t = tr_4k(VA_4K_PAGE, mem, access="exec", el=0)
    assert t.executable_el0 and not t.readable_el0
    # EL0-writable memory is never executable at EL1.
    mem = make_4k_48(page_attrs=AF | AP_RW_ALL)
    t = tr_4k(VA_4K_PAGE, mem, access="exec", el=0)
    assert not t.executable_el1
    with pytest.raises(TranslationFault):
        tr_4k(VA_4K_PAGE, mem, access="exec", el=1)


def test_wxn_makes_writable_execute_never():
    mem = make_4k_48(page_attrs=AF | AP_RW_EL1)
    assert tr_4k(VA_4K_PAGE, mem, access="exec").executable_el1
    with pytest.raises(TranslationFault) as ei:
        tr_4k(VA_4K_PAGE, mem, access="exec", sctlr=SCTLR_M | SCTLR_WXN)
    assert ei.value.kind == "permission"


def test_translate_range_splits_at_page_boundary():
    mem = make_4k_48()
    r = regs(mem, tcr=TCR_4K_48, ttbr0=0x1000)
    pieces = translate_range(VA_4K_PAGE + 0xFF0, 0x20, **r)
    assert pieces == [
        (VA_4K_PAGE + 0xFF0, PA_4K_PAGE + 0xFF0, 0x10),
        (VA_4K_PAGE + 0x1000, PA_4K_NEXT, 0x10),
    ]
    assert translate_range(VA_4K_PAGE + 8, 0x10, **r) == [
        (VA_4K_PAGE + 8, PA_4K_PAGE + 8, 0x10)]
    assert translate_range(VA_4K_PAGE, 0, **r) == []
    # A whole 2M block is one piece.
    assert translate_range(VA_2M_BLOCK, 2 << 20, **r) == [(VA_2M_BLOCK, PA_2M_BLOCK, 2 << 20)]
    # Running into an unmapped page raises for that page.
    with pytest.raises(TranslationFault) as ei:
        translate_range(VA_4K_PAGE + 0x1FF0, 0x20, **r)
    assert ei.value.va == VA_4K_PAGE + 0x2000 and ei.value.level == 3


def test_translate_range_write_checks_permissions():
    mem = make_4k_48()
    mem.write_u64(0x4000 + 5 * 8, page(PA_4K_NEXT, AF | AP_RO_EL1))
    r = regs(mem, tcr=TCR_4K_48, ttbr0=0x1000)
    assert len(translate_range(VA_4K_PAGE + 0xFF0, 0x20, access="read", **r)) == 2
    with pytest.raises(TranslationFault) as ei:
        translate_range(VA_4K_PAGE + 0xFF0, 0x20, access="write", **r)
    assert ei.value.kind == "permission" and ei.value.va == VA_4K_PAGE + 0x1000


_MEM_4K = make_4k_48()


@given(offset=st.integers(min_value=0, max_value=0xFFF))
def test_random_offsets_in_4k_page(offset):
    assert tr_4k(VA_4K_PAGE + offset, _MEM_4K).pa == PA_4K_PAGE + offset


@given(offset=st.integers(min_value=0, max_value=(2 << 20) - 1))
def test_random_offsets_in_2m_block(offset):
    assert tr_4k(VA_2M_BLOCK + offset, _MEM_4K).pa == PA_2M_BLOCK + offset


@given(offset=st.integers(min_value=0, max_value=0x3FFF),
       size=st.integers(min_value=1, max_value=0x3000))
def test_random_ranges_cover_exactly(offset, size):
    mem = PhysMem()
    # 16K, T0SZ=28 (36-bit): start level 2, L2 VA[35:25] @0x8000, L3 VA[24:14] @0xC000.
    mem.write_u64(0x8000 + 0 * 8, table(0xC000))
    mem.write_u64(0xC000 + 0 * 8, page(0x10_0000))
    mem.write_u64(0xC000 + 1 * 8, page(0x3_0000))
    r = regs(mem, tcr=t0sz(28) | TG0_16K | IPS_48, ttbr0=0x8000)
    size = min(size, 0x8000 - offset)
    pieces = translate_range(offset, size, **r)
    assert sum(p[2] for p in pieces) == size
    assert pieces[0][0] == offset
    for va, pa, length in pieces:
        base = 0x10_0000 if va < 0x4000 else 0x3_0000
        assert pa == base + (va & 0x3FFF)
        assert (va & 0x3FFF) + length <= 0x4000


# ---------------------------------------------------------------- what a fault says
# (Found by mutation testing, issue 14: every fault path's kind, level, VA, access and reason.
# The message reaches the user: DebugManager turns it into the gdb error text.)

def fault(call) -> TranslationFault:
    with pytest.raises(TranslationFault) as ei:
        call()
    return ei.value


def check_fault(f: TranslationFault, kind: str, level: int, va: int, access: str,
                reason: str) -> None:
    assert (f.kind, f.level, f.va, f.access) == (kind, level, va, access)
    text = str(f)
    assert text.startswith(f"{kind} fault, level {level}, VA {va:#018x} ({access}): "), text
    assert re.search(reason, text), text


def test_fault_object():
    f = TranslationFault("translation", 1, 0x1000)
    assert f.access == "read"
    assert str(f) == "translation fault, level 1, VA 0x0000000000001000 (read)"
    f = TranslationFault("permission", 3, 0xFFFF_0000_0000_0008, "no", access="exec")
    assert str(f) == "permission fault, level 3, VA 0xffff000000000008 (exec): no"
    assert f.fsc() == 0b001111
    assert TranslationFault("address_size", -1, 0).fsc() == 0b000000  # reported as level 0
    with pytest.raises(ValueError, match=r"\bunknown fault kind 'bogus'"):
        TranslationFault("bogus", 0, 0)
    t = tr_4k(VA_4K_PAGE)
    with pytest.raises(ValueError, match=r"\bunknown access 'fetch'"):
        t.allows("fetch", 1)


def test_bad_arguments():
    mem = PhysMem()
    with pytest.raises(ValueError, match=r"\bVA -0x1 is not a 64-bit unsigned value\b"):
        translate(-1, **regs(mem, tcr=0, sctlr=0))
    with pytest.raises(ValueError, match=r"\bVA 0x10000000000000000 is not a 64-bit\b"):
        translate(1 << 64, **regs(mem, tcr=0, sctlr=0))
    with pytest.raises(ValueError, match=r"\baccess must be one of\b.*'fetch'"):
        translate(0, **regs(mem, tcr=0, sctlr=0), access="fetch")
    with pytest.raises(ValueError, match=r"\bel must be 0 or 1, not 2\b"):
        translate(0, **regs(mem, tcr=0, sctlr=0), el=2)


def test_mmu_off_address_size_fault_and_nominal_page():
    mem = PhysMem()
    f = fault(lambda: translate(1 << 48, **regs(mem, tcr=0, sctlr=0), access="write"))
    check_fault(f, "address_size", 0, 1 << 48, "write", r"\bMMU off and VA exceeds the PA size")
    assert f.fsc() == 0b000000
    t = translate(0xFFFF_FFFF_FFFF, **regs(mem, tcr=0, sctlr=0))
    assert (t.pa, t.page_size, t.level, t.descriptor) == (0xFFFF_FFFF_FFFF, 4096, -1, 0)
    # The top of the 64-bit space is a VA like any other (not a bad argument).
    assert fault(lambda: translate(2**64 - 1, **regs(mem, tcr=0, sctlr=0))).kind == "address_size"


def test_mmu_off_top_byte_ignore():
    mem = PhysMem()
    tagged = (0xA5 << 56) | 0x8000_1235  # a tag with bit 56 set, an odd address
    for tcr in (TCR_TBI0, TCR_TBI0 | TCR_TBID0):
        t = translate(tagged, **regs(mem, tcr=tcr, sctlr=0))
        assert (t.va, t.pa) == (tagged, 0x8000_1235)
    assert translate(tagged, **regs(mem, tcr=TCR_TBI0, sctlr=0), access="exec").pa == 0x8000_1235
    # Without TBI0, or for a fetch with TBID0, the tag is address: beyond the 48-bit PA size.
    check_fault(fault(lambda: translate(tagged, **regs(mem, tcr=0, sctlr=0))),
                "address_size", 0, tagged, "read", r"\bMMU off\b")
    check_fault(fault(lambda: translate(tagged, **regs(mem, tcr=TCR_TBI0 | TCR_TBID0, sctlr=0),
                                        access="exec")),
                "address_size", 0, tagged, "exec", r"\bMMU off\b")


def test_every_walk_fault_says_where_and_why():
    # VA outside both ranges, and EPD0.
    va = 0x0001_0000_0000_0000
    check_fault(fault(lambda: tr_4k(va, access="exec")), "translation", -1, va, "exec",
                r"\bVA outside the TTBR0 range \(T0SZ=16\)")
    check_fault(fault(lambda: tr_4k(VA_4K_PAGE, tcr=TCR_4K_48 | TCR_EPD0, access="write")),
                "translation", 0, VA_4K_PAGE, "write", r"\bwalks disabled by EPD0\b")
    # Invalid descriptor: L0 index 2 at 0x1000 + 2 * 8.
    va = 0x0000_0100_0000_0000
    check_fault(fault(lambda: tr_4k(va, access="write")), "translation", 0, va, "write",
                r"\binvalid descriptor 0x0 at PA 0x1010\b")
    # Unreadable descriptor: L2 index 7 points at a table beyond the fake memory.
    mem = make_4k_48()
    mem.write_u64(0x3000 + 7 * 8, table(0x7FFF_F000))
    va = 0x0000_0080_80E0_0000
    check_fault(fault(lambda: tr_4k(va, mem, access="exec")), "translation", 3, va, "exec",
                r"\bcannot read descriptor at PA 0x7ffff000: .*not backed")
    # A block at level 0 (4K granule).
    mem = make_4k_48()
    mem.write_u64(0x1000 + 3 * 8, block(0x0))
    va = 0x0000_0180_0000_0000
    check_fault(fault(lambda: tr_4k(va, mem, access="write")), "translation", 0, va, "write",
                r"\bblock descriptor 0x401 not permitted at level 0\b")
    # Access flag clear.
    check_fault(fault(lambda: tr_4k(VA_4K_PAGE, make_4k_48(page_attrs=0), access="write")),
                "access_flag", 3, VA_4K_PAGE, "write", r"\bAF clear in 0x12345003\b")
    # Permission.
    mem = make_4k_48(page_attrs=AF | AP_RO_ALL)
    check_fault(fault(lambda: tr_4k(VA_4K_PAGE, mem, access="write", el=0)),
                "permission", 3, VA_4K_PAGE, "write",
                r"\bwrite not permitted at EL0 by 0x123454c3\b")


def test_address_size_faults_say_where_and_why():
    # TTBR0 base at 4 GiB with a 32-bit PA size: before any lookup (level -1, reported as 0).
    mem = make_4k_48()
    f = fault(lambda: translate(VA_4K_PAGE, **regs(mem, tcr=t0sz(16) | TG0_4K | IPS_32,
                                                   ttbr0=0x1_0000_0000), access="write"))
    check_fault(f, "address_size", -1, VA_4K_PAGE, "write",
                r"\bTTBR0 base 0x100000000 beyond PA size\b")
    assert f.fsc() == 0b000000
    # A next-level table at 4 GiB, named by the level-0 descriptor.
    mem.write_u64(0x1000 + 1 * 8, table(0x1_0000_0000))
    f = fault(lambda: tr_4k(VA_4K_PAGE, mem, tcr=t0sz(16) | TG0_4K | IPS_32, access="exec"))
    check_fault(f, "address_size", 0, VA_4K_PAGE, "exec",
                r"\bnext-level table 0x100000000 beyond PA size\b")
    assert f.fsc() == 0b000000
    # An output address at 4 GiB.
    mem = make_4k_48()
    mem.write_u64(0x4000 + 8 * 8, page(0x1_0000_0000))
    va = VA_4K_PAGE + 0x4000
    check_fault(fault(lambda: tr_4k(va, mem, tcr=t0sz(16) | TG0_4K | IPS_32, access="write")),
                "address_size", 3, va, "write",
                r"\boutput address 0x100000000 beyond 32-bit PA size\b")


# ---------------------------------------------------------------- register fields, one by one

IPS_36 = 0b001 << 32
IPS_RESERVED = 0b111 << 32
TCR_TBI1 = 1 << 38
TCR_TBID0 = 1 << 51
TCR_TBID1 = 1 << 52

# TTBR1, 4K, T1SZ=16 (as test_ttbr1_high_addresses_use_tg1_encoding): VA 0xFFFF_0000_4020_3xxx
# has L0=0, L1=1, L2=1, L3=3; tables at 0x10000..0x13000. The top page of the address space,
# 0xFFFF_FFFF_FFFF_Fxxx, has all indices 511; tables at 0x30000..0x33000.
VA_HI = 0xFFFF_0000_4020_3ABC
PA_HI = 0x9_8765_4ABC
PA_TOP = 0x6_6666_6000


def make_ttbr1_4k() -> PhysMem:
    mem = PhysMem()
    mem.write_u64(0x10000 + 0 * 8, table(0x11000))
    mem.write_u64(0x11000 + 1 * 8, table(0x12000))
    mem.write_u64(0x12000 + 1 * 8, table(0x13000))
    mem.write_u64(0x13000 + 3 * 8, page(0x9_8765_4000))
    mem.write_u64(0x30000 + 511 * 8, table(0x31000))
    mem.write_u64(0x31000 + 511 * 8, table(0x32000))
    mem.write_u64(0x32000 + 511 * 8, table(0x33000))
    mem.write_u64(0x33000 + 511 * 8, page(PA_TOP))
    return mem


def tr_hi(va: int, *, tcr: int = 0, ttbr1: int = 0x10000, tg1: int = TG1_4K, **kw) -> Translation:
    return translate(va, **regs(make_ttbr1_4k(), tcr=t1sz(16) | tg1 | IPS_48 | tcr,
                                ttbr1=ttbr1), **kw)


def test_top_byte_ignore_high_half():
    tagged = (0xA5 << 56) | (VA_HI & ((1 << 56) - 1))  # 0xA5FF_0000_4020_3ABC
    assert tr_hi(tagged, tcr=TCR_TBI1).pa == PA_HI
    assert tr_hi(tagged, tcr=TCR_TBI1, access="exec").pa == PA_HI
    assert tr_hi(tagged, tcr=TCR_TBI1 | TCR_TBID1).pa == PA_HI  # TBID1: fetches only
    for tcr, access in [(0, "read"), (TCR_TBI0, "read"), (TCR_TBI1 | TCR_TBID1, "exec")]:
        check_fault(fault(lambda t=tcr, a=access: tr_hi(tagged, tcr=t, access=a)), "translation", -1,
                    tagged, access, r"\bTTBR1 range \(T1SZ=16\)")
    # Top byte 0x00 but VA[55] set: still a TTBR1 address under TBI1.
    assert tr_hi(0x00FF_0000_4020_3ABC, tcr=TCR_TBI1).pa == PA_HI
    assert fault(lambda: tr_hi(0x00FF_0000_4020_3ABC)).level == -1


def test_top_byte_ignore_low_half_fetches():
    tagged = (0xA5 << 56) | VA_4K_PAGE | 0x10
    assert tr_4k(tagged, tcr=TCR_4K_48 | TCR_TBI0).pa == PA_4K_PAGE + 0x10
    assert tr_4k(tagged, tcr=TCR_4K_48 | TCR_TBI0, access="exec").pa == PA_4K_PAGE + 0x10
    assert tr_4k(tagged, tcr=TCR_4K_48 | TCR_TBI0 | TCR_TBID0).pa == PA_4K_PAGE + 0x10
    check_fault(fault(lambda: tr_4k(tagged, tcr=TCR_4K_48 | TCR_TBI0 | TCR_TBID0, access="exec")),
                "translation", -1, tagged, "exec", r"\bTTBR0 range\b")
    assert fault(lambda: tr_4k(tagged, tcr=TCR_4K_48 | TCR_TBI1)).level == -1


def test_reserved_granule_encodings_walk_as_4k():
    # TG0 = 0b11 and TG1 = 0b00 are reserved; this model walks them as 4K.
    assert tr_4k(VA_4K_PAGE + 5, tcr=t0sz(16) | (0b11 << 14) | IPS_48).pa == PA_4K_PAGE + 5
    assert tr_hi(VA_HI, tg1=0b00 << 30).pa == PA_HI


def test_tnsz_is_clamped_to_the_smallest_region():
    # 4K, T0SZ=50 acts as 48: a 16-bit region, one level-3 table of 16 entries at 0x5000.
    mem = PhysMem()
    mem.write_u64(0x5000 + 0xF * 8, page(0x7_0000))
    for tsz in (48, 50, 63):
        r = regs(mem, tcr=t0sz(tsz) | TG0_4K | IPS_48, ttbr0=0x5000)
        t = translate(0xF123, **r)
        assert (t.pa, t.level) == (0x7_0123, 3)
        assert fault(lambda r=r: translate(0x1_0000, **r)).level == -1  # VA[16] out of range
    # 64K, T0SZ=48 acts as 47: a 17-bit region, one level-3 table of 2 entries at 0x10000.
    mem.write_u64(0x10000 + 1 * 8, page(0x30_0000))
    t = translate(0x1_2345, **regs(mem, tcr=t0sz(48) | TG0_64K | IPS_48, ttbr0=0x10000))
    assert (t.pa, t.page_size) == (0x30_2345, 64 << 10)
    # T0SZ below 16 acts as 16.
    assert tr_4k(VA_4K_PAGE, tcr=t0sz(10) | TG0_4K | IPS_48).pa == PA_4K_PAGE


def test_start_level_with_fewer_index_bits_in_ttbr1():
    # 4K, T1SZ=20: a 44-bit region, start level 0 indexed by VA[43:39] only (32 entries); the
    # VA's upper bits are ones, and must not reach the index. The later levels have all 9 bits.
    # L0=1, L1=2, L2=3, L3=0x104.
    mem = PhysMem()
    mem.write_u64(0x20000 + 1 * 8, table(0x21000))
    mem.write_u64(0x21000 + 2 * 8, table(0x22000))
    mem.write_u64(0x22000 + 3 * 8, table(0x23000))
    mem.write_u64(0x23000 + 0x104 * 8, page(0x5555_5000))
    t = translate(0xFFFF_F080_8070_4ABC, **regs(mem, tcr=t1sz(20) | TG1_4K | IPS_48,
                                               ttbr1=0x20000))
    assert (t.pa, t.level) == (0x5555_5ABC, 3)


def test_ttbr_bits_below_the_table_size_are_ignored():
    # 4K, 48-bit: a 4 KiB level-0 table, so TTBR0[11:1] are ignored as well as CnP.
    assert tr_4k(VA_4K_PAGE, tcr=TCR_4K_48).pa == translate(
        VA_4K_PAGE, **regs(make_4k_48(), tcr=TCR_4K_48, ttbr0=0x1FF8)).pa == PA_4K_PAGE
    # 16K, 48-bit: a 2-entry level-0 table still counts as 64 bytes: TTBR0[5:0] ignored.
    mem = PhysMem()
    mem.write_u64(0x4000 + 1 * 8, table(0x8000))
    mem.write_u64(0x8000 + 0 * 8, table(0xC000))
    mem.write_u64(0xC000 + 0 * 8, block(0x4_0000_0000))
    t = translate(0x0000_8000_0000_1234,
                  **regs(mem, tcr=t0sz(16) | TG0_16K | IPS_48, ttbr0=0x4000 | 0x38))
    assert t.pa == 0x4_0000_1234


def test_ips_sizes():
    mem = make_4k_48()
    mem.write_u64(0x4000 + 8 * 8, page(0x1_0000_0000))      # 4 GiB
    mem.write_u64(0x4000 + 9 * 8, page(0x10_0000_0000))     # 64 GiB
    mem.write_u64(0x4000 + 10 * 8, page(0xFFFF_0000_0000))  # just under 2**48
    va8, va9, va10 = (VA_4K_PAGE + n * 0x1000 for n in (4, 5, 6))
    tcr36 = t0sz(16) | TG0_4K | IPS_36
    assert tr_4k(va8, mem, tcr=tcr36).pa == 0x1_0000_0000
    assert fault(lambda: tr_4k(va9, mem, tcr=tcr36)).kind == "address_size"
    # The reserved IPS value 0b111 is taken as 48 bits.
    assert tr_4k(va10, mem, tcr=t0sz(16) | TG0_4K | IPS_RESERVED).pa == 0xFFFF_0000_0000


@pytest.mark.parametrize("ap, r1, w1, r0, w0", [
    # Arm ARM, "Data access permissions for stage 1 translations", AP[2:1]:
    (AP_RW_EL1, True, True, False, False),
    (AP_RW_ALL, True, True, True, True),
    (AP_RO_EL1, True, False, False, False),
    (AP_RO_ALL, True, False, True, False),
])
def test_ap_permission_table(ap, r1, w1, r0, w0):
    t = tr_4k(VA_4K_PAGE, make_4k_48(page_attrs=AF | ap))
    assert (t.readable_el1, t.writable_el1, t.readable_el0, t.writable_el0) == (r1, w1, r0, w0)
    for access, el, allowed in [("read", 1, r1), ("write", 1, w1), ("read", 0, r0),
                                ("write", 0, w0)]:
        if allowed:
            assert tr_4k(VA_4K_PAGE, make_4k_48(page_attrs=AF | ap), access=access, el=el)
        else:
            assert fault(lambda a=access, e=el: tr_4k(VA_4K_PAGE, make_4k_48(page_attrs=AF | ap),
                                                      access=a, el=e)).kind == "permission"


def test_dirty_bit_management_needs_ha_hd_and_dbm():
    ro_dbm = make_4k_48(page_attrs=AF | AP_RO_EL1 | DBM)
    # HD without HA does nothing (hardware dirty management needs both).
    assert fault(lambda: tr_4k(VA_4K_PAGE, ro_dbm, access="write",
                               tcr=TCR_4K_48 | TCR_HD)).kind == "permission"
    assert fault(lambda: tr_4k(VA_4K_PAGE, ro_dbm, access="write",
                               tcr=TCR_4K_48 | TCR_HA)).kind == "permission"
    # HA and HD but DBM clear: read-only stays read-only.
    ro = make_4k_48(page_attrs=AF | AP_RO_EL1)
    assert fault(lambda: tr_4k(VA_4K_PAGE, ro, access="write",
                               tcr=TCR_4K_48 | TCR_HA | TCR_HD)).kind == "permission"
    # DBM with AP = EL1 read-only is EL1 read/write, still nothing at EL0.
    t = tr_4k(VA_4K_PAGE, ro_dbm, tcr=TCR_4K_48 | TCR_HA | TCR_HD)
    assert (t.readable_el1, t.writable_el1, t.readable_el0, t.writable_el0) == (
        True, True, False, False)
    # DBM with AP = read-only at both: read/write at both.
    t = tr_4k(VA_4K_PAGE, make_4k_48(page_attrs=AF | AP_RO_ALL | DBM), access="write", el=0,
              tcr=TCR_4K_48 | TCR_HA | TCR_HD)
    assert (t.readable_el1, t.writable_el1, t.readable_el0, t.writable_el0) == (
        True, True, True, True)
    assert t.descriptor & (0b11 << 6) == AP_RO_ALL, "the descriptor is not written back"


def test_translation_reports_va_level_and_descriptor():
    t = tr_4k(VA_4K_PAGE + 0x123)
    assert (t.va, t.level, t.descriptor) == (VA_4K_PAGE + 0x123, 3, page(PA_4K_PAGE))
    t = tr_4k(VA_2M_BLOCK + 0x123)
    assert (t.va, t.level, t.descriptor) == (VA_2M_BLOCK + 0x123, 2, block(PA_2M_BLOCK))


def test_top_of_the_address_space():
    top = 2**64 - 1
    assert tr_hi(top, ttbr1=0x30000).pa == PA_TOP + 0xFFF  # a VA, not a bad argument
    r = regs(make_ttbr1_4k(), tcr=t1sz(16) | TG1_4K | IPS_48, ttbr1=0x30000)
    assert translate_range(2**64 - 16, 16, **r) == [(2**64 - 16, PA_TOP + 0xFF0, 16)]
    with pytest.raises(ValueError, match=r"\brange 0xfffffffffffffff0\+0x11 is outside the "
                                         r"64-bit address space\b"):
        translate_range(2**64 - 16, 17, **r)
    with pytest.raises(ValueError, match=r"\boutside the 64-bit address space\b"):
        translate_range(-1, 1, **r)
    with pytest.raises(ValueError, match=r"\bsize must not be negative\b"):
        translate_range(0x1000, -1, **r)
