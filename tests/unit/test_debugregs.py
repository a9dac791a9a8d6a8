"""Tests of guestdbg.arm.debugregs: register fields, breakpoint/watchpoint matching, ESR values."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guestdbg.arm import debugregs as d
from guestdbg.arm.debugregs import (
    BT_LINKED_ADDRESS,
    BT_LINKED_CONTEXT,
    BT_UNLINKED_ADDRESS,
    BT_UNLINKED_CONTEXT,
    DBGBCR,
    DBGWCR,
    ID_AA64DFR0,
    MDSCR_EL1,
    Breakpoint,
    Field,
    breakpoint_matches,
    decode_breakpoint,
    decode_watchpoint,
    encode_dbgbcr,
    encode_dbgwcr,
    id_aa64dfr0_el1,
    watchpoint_matches,
)

M64 = 2**64


# ---------------------------------------------------------------------------------------------
# Field helper and register layouts

def test_field_extract_deposit_mask():
    f = Field(5, 4)
    assert f.mask == 0x1E0
    assert f.extract(0x1E7) == 0xF
    assert f.deposit(0x1E7, 0x3) == 0x067
    assert f.deposit(0, 0) == 0
    with pytest.raises(ValueError):
        f.deposit(0, 0x10)
    with pytest.raises(ValueError):
        f.deposit(0, -1)


@given(shift=st.integers(0, 60), width=st.integers(1, 4), reg=st.integers(0, M64 - 1),
       data=st.data())
def test_field_roundtrip_preserves_other_bits(shift, width, reg, data):
    f = Field(shift, width)
    value = data.draw(st.integers(0, (1 << width) - 1))
    new = f.deposit(reg, value)
    assert f.extract(new) == value
    assert new & ~f.mask == reg & ~f.mask


def test_field_positions_match_arm_arm():
    # DBGBCR: E[0] PMC[2:1] BAS[8:5] HMC[13] SSC[15:14] LBN[19:16] BT[23:20]
    assert [DBGBCR.E.mask, DBGBCR.PMC.mask, DBGBCR.BAS.mask, DBGBCR.HMC.mask, DBGBCR.SSC.mask,
            DBGBCR.LBN.mask, DBGBCR.BT.mask] == [
        0x1, 0x6, 0x1E0, 0x2000, 0xC000, 0xF0000, 0xF00000]
    # DBGWCR: E[0] PAC[2:1] LSC[4:3] BAS[12:5] HMC[13] SSC[15:14] LBN[19:16] WT[20] MASK[28:24]
    assert [DBGWCR.E.mask, DBGWCR.PAC.mask, DBGWCR.LSC.mask, DBGWCR.BAS.mask, DBGWCR.HMC.mask,
            DBGWCR.SSC.mask, DBGWCR.LBN.mask, DBGWCR.WT.mask, DBGWCR.MASK.mask] == [
        0x1, 0x6, 0x18, 0x1FE0, 0x2000, 0xC000, 0xF0000, 0x100000, 0x1F000000]
    assert ID_AA64DFR0.BRPs.mask == 0xF000
    assert ID_AA64DFR0.WRPs.mask == 0xF00000
    assert ID_AA64DFR0.CTX_CMPs.mask == 0xF0000000
    assert (MDSCR_EL1.SS.mask, MDSCR_EL1.KDE.mask, MDSCR_EL1.MDE.mask) == (1, 0x2000, 0x8000)
    assert d.PSTATE_SS == 0x200000
    assert d.PSTATE_D == 0x200


def test_qemu_breakpoint_encoding_0x1e7():
    bcr = 0x1E7
    assert DBGBCR.E.extract(bcr) == 1
    assert DBGBCR.PMC.extract(bcr) == 0b11  # EL1 and EL0
    assert DBGBCR.BAS.extract(bcr) == 0xF
    assert DBGBCR.BT.extract(bcr) == BT_UNLINKED_ADDRESS
    assert DBGBCR.HMC.extract(bcr) == DBGBCR.SSC.extract(bcr) == DBGBCR.LBN.extract(bcr) == 0
    assert encode_dbgbcr() == 0x1E7
    bp = decode_breakpoint(0, bcr, 0x40001000, brps=6, ctx_cmps=2)
    assert bp == Breakpoint(index=0, bt=BT_UNLINKED_ADDRESS, address=0x40001000, context_id=0,
                            lbn=0, el0=True, el1=True)


def test_encode_dbgwcr_fields():
    assert encode_dbgwcr() == 0x1FFF  # E, PAC=3, LSC=3, BAS=0xFF
    wcr = encode_dbgwcr(pac=0b01, lsc=0b10, bas=0x0F, mask=12, wt=1, lbn=5)
    assert DBGWCR.PAC.extract(wcr) == 1
    assert DBGWCR.LSC.extract(wcr) == 2
    assert DBGWCR.BAS.extract(wcr) == 0x0F
    assert DBGWCR.MASK.extract(wcr) == 12
    assert DBGWCR.WT.extract(wcr) == 1
    assert DBGWCR.LBN.extract(wcr) == 5
    assert encode_dbgwcr(enabled=False) & 1 == 0


def test_id_aa64dfr0():
    assert id_aa64dfr0_el1(6, 4, 2) == 0x10305106
    assert id_aa64dfr0_el1(16, 16, 16) == 0xF0F0F106
    assert id_aa64dfr0_el1(2, 2, 1) == 0x00101106
    v = id_aa64dfr0_el1(6, 4, 2)
    assert ID_AA64DFR0.DebugVer.extract(v) == 6
    assert ID_AA64DFR0.PMUVer.extract(v) == 1
    assert d.id_aa64dfr0_counts(id_aa64dfr0_el1(16, 16, 16)) == (16, 16, 16)
    assert d.id_aa64dfr0_counts(id_aa64dfr0_el1(2, 2, 1)) == (2, 2, 1)
    for bad in [(1, 2, 1), (17, 2, 1), (2, 1, 1), (2, 17, 1), (2, 2, 0), (2, 2, 3)]:
        with pytest.raises(ValueError):
            id_aa64dfr0_el1(*bad)


# ---------------------------------------------------------------------------------------------
# Breakpoints

BRPS, CTX = 6, 2  # slots 4 and 5 are context-aware


def bp_table(*pairs_by_slot):
    """Decode {slot: (bcr, bvr)} into a BRPS-long table."""
    regs = dict(pairs_by_slot[0]) if pairs_by_slot else {}
    return [decode_breakpoint(i, *regs.get(i, (0, 0)), brps=BRPS, ctx_cmps=CTX)
            for i in range(BRPS)]


def test_breakpoint_address_match():
    bp = decode_breakpoint(1, encode_dbgbcr(), 0x40000080, brps=BRPS, ctx_cmps=CTX)
    table = [None, bp]
    assert breakpoint_matches(table, bp, pc=0x40000080, el=1, contextidr=0)
    assert breakpoint_matches(table, bp, pc=0x40000080, el=0, contextidr=123)
    assert not breakpoint_matches(table, bp, pc=0x40000084, el=1, contextidr=0)
    assert not breakpoint_matches(table, bp, pc=0x4000007C, el=1, contextidr=0)
    assert not breakpoint_matches(table, bp, pc=0x40000080, el=2, contextidr=0)


def test_breakpoint_address_sign_extension_and_low_bits():
    # Bit 48 set: the upper bits become ones whatever DBGBVR[63:49] held.
    bp = decode_breakpoint(0, encode_dbgbcr(), 0x0001_FFFF_FFFF_F000, brps=BRPS, ctx_cmps=CTX)
    assert bp.address == 0xFFFF_FFFF_FFFF_F000
    # Garbage above bit 48 with bit 48 clear, and bits [1:0] set: both ignored.
    bp = decode_breakpoint(0, encode_dbgbcr(), 0xABCC_0000_4000_1003, brps=BRPS, ctx_cmps=CTX)
    assert bp.address == 0x4000_1000


@pytest.mark.parametrize("pmc, el0, el1", [(0b01, False, True), (0b10, True, False),
                                           (0b11, True, True)])
def test_breakpoint_el_filter_by_pmc(pmc, el0, el1):
    bp = decode_breakpoint(0, encode_dbgbcr(pmc=pmc), 0x1000, brps=BRPS, ctx_cmps=CTX)
    assert (bp.el0, bp.el1) == (el0, el1)
    assert breakpoint_matches([bp], bp, pc=0x1000, el=0, contextidr=0) is el0
    assert breakpoint_matches([bp], bp, pc=0x1000, el=1, contextidr=0) is el1
    assert not breakpoint_matches([bp], bp, pc=0x1000, el=2, contextidr=0)
    assert not breakpoint_matches([bp], bp, pc=0x1000, el=3, contextidr=0)


@pytest.mark.parametrize("hmc, ssc, pmc, expected", [
    (0, 0b00, 0b00, None),            # reserved
    (0, 0b00, 0b01, (False, True)),
    (0, 0b00, 0b10, (True, False)),
    (0, 0b01, 0b11, (True, True)),    # Non-secure only: we are Non-secure
    (0, 0b10, 0b11, None),            # Secure only: never fires here
    (0, 0b11, 0b11, None),
    (1, 0b00, 0b00, None),            # EL2/EL3 only
    (1, 0b01, 0b00, None),            # Non-secure EL2 only
    (1, 0b00, 0b01, (False, True)),   # EL3, EL2, EL1: only EL1 exists
    (1, 0b00, 0b11, (True, True)),    # all ELs
    (1, 0b01, 0b11, (True, True)),
    (1, 0b00, 0b10, None),            # reserved (EL2 + EL0 without EL1)
])
def test_privilege_combinations(hmc, ssc, pmc, expected):
    bp = decode_breakpoint(0, encode_dbgbcr(pmc=pmc, hmc=hmc, ssc=ssc), 0x1000,
                           brps=BRPS, ctx_cmps=CTX)
    wp = decode_watchpoint(0, encode_dbgwcr(pac=pmc, hmc=hmc, ssc=ssc), 0x1000)
    if expected is None:
        assert bp is None and wp is None
    else:
        assert (bp.el0, bp.el1) == expected
        assert (wp.el0, wp.el1) == expected


def test_breakpoint_disabled_and_bas():
    assert decode_breakpoint(0, encode_dbgbcr(enabled=False), 0x1000, brps=BRPS,
                             ctx_cmps=CTX) is None
    assert decode_breakpoint(0, encode_dbgbcr(bas=0), 0x1000, brps=BRPS, ctx_cmps=CTX) is None
    assert decode_breakpoint(0, encode_dbgbcr(bas=0, bt=BT_LINKED_ADDRESS), 0x1000, brps=BRPS,
                             ctx_cmps=CTX) is None
    # Non-0b1111 BAS (a T32 half-word select) still matches the whole A64 instruction.
    bp = decode_breakpoint(0, encode_dbgbcr(bas=0b1100), 0x1000, brps=BRPS, ctx_cmps=CTX)
    assert breakpoint_matches([bp], bp, pc=0x1000, el=1, contextidr=0)
    # Context breakpoints ignore BAS.
    assert decode_breakpoint(5, encode_dbgbcr(bas=0, bt=BT_UNLINKED_CONTEXT), 7, brps=BRPS,
                             ctx_cmps=CTX) is not None


@pytest.mark.parametrize("bt", [0b0100, 0b0101, 0b0110, 0b0111, 0b1000, 0b1001, 0b1010, 0b1011,
                                0b1100, 0b1111])
def test_reserved_breakpoint_types(bt):
    assert decode_breakpoint(5, encode_dbgbcr(bt=bt), 0x1000, brps=BRPS, ctx_cmps=CTX) is None


def test_breakpoint_slot_out_of_range():
    assert decode_breakpoint(BRPS, encode_dbgbcr(), 0x1000, brps=BRPS, ctx_cmps=CTX) is None


@pytest.mark.parametrize("bt", [BT_UNLINKED_CONTEXT, BT_LINKED_CONTEXT])
def test_context_breakpoint_only_in_top_slots(bt):
    got = [decode_breakpoint(i, encode_dbgbcr(bt=bt), 0x1234, brps=BRPS, ctx_cmps=CTX)
           for i in range(BRPS)]
    assert [g is not None for g in got] == [False, False, False, False, True, True]
    assert got[4].context_id == 0x1234 and got[4].bt == bt
    # Extremes: 16 slots all context-aware, or only the last of 2.
    assert decode_breakpoint(0, encode_dbgbcr(bt=bt), 1, brps=16, ctx_cmps=16) is not None
    assert decode_breakpoint(0, encode_dbgbcr(bt=bt), 1, brps=2, ctx_cmps=1) is None
    assert decode_breakpoint(1, encode_dbgbcr(bt=bt), 1, brps=2, ctx_cmps=1) is not None


def test_unlinked_context_matches_every_instruction():
    bp = decode_breakpoint(4, encode_dbgbcr(bt=BT_UNLINKED_CONTEXT, pmc=0b10),
                           0xFFFF_FFFF_0000_0042, brps=BRPS, ctx_cmps=CTX)
    assert bp.context_id == 0x42
    table = [None] * 4 + [bp]
    for pc in (0, 0x1000, 0xFFFF_FFFF_FFFF_FFFC):
        assert breakpoint_matches(table, bp, pc=pc, el=0, contextidr=0x42)
    assert breakpoint_matches(table, bp, pc=0, el=0, contextidr=0x1_0000_0042)  # [31:0] only
    assert not breakpoint_matches(table, bp, pc=0, el=0, contextidr=0x43)
    assert not breakpoint_matches(table, bp, pc=0, el=1, contextidr=0x42)  # PMC: EL0 only


def test_linked_address_and_context():
    table = bp_table({
        0: (encode_dbgbcr(bt=BT_LINKED_ADDRESS, lbn=5), 0x2000),
        1: (encode_dbgbcr(bt=BT_LINKED_ADDRESS, lbn=4), 0x2000),   # -> unlinked context
        2: (encode_dbgbcr(bt=BT_LINKED_ADDRESS, lbn=3), 0x2000),   # -> address breakpoint
        3: (encode_dbgbcr(), 0x3000),
        4: (encode_dbgbcr(bt=BT_UNLINKED_CONTEXT), 0x77),
        5: (encode_dbgbcr(bt=BT_LINKED_CONTEXT, pmc=0b00), 0x77),  # PMC of a link target ignored
    })
    linked = table[0]
    assert linked.bt == BT_LINKED_ADDRESS and linked.lbn == 5
    assert table[5] is not None and table[5].bt == BT_LINKED_CONTEXT
    assert breakpoint_matches(table, linked, pc=0x2000, el=1, contextidr=0x77)
    assert not breakpoint_matches(table, linked, pc=0x2000, el=1, contextidr=0x78)
    assert not breakpoint_matches(table, linked, pc=0x2004, el=1, contextidr=0x77)
    # LBN naming something other than a linked context breakpoint never fires.
    assert not breakpoint_matches(table, table[1], pc=0x2000, el=1, contextidr=0x77)
    assert not breakpoint_matches(table, table[2], pc=0x2000, el=1, contextidr=0x77)
    # The linked context breakpoint alone never fires, whatever the PC and context.
    for pc in (0x2000, 0x3000, 0):
        for el in (0, 1):
            assert not breakpoint_matches(table, table[5], pc=pc, el=el, contextidr=0x77)


def test_linked_address_invalid_lbn():
    link = (encode_dbgbcr(bt=BT_LINKED_ADDRESS, lbn=15), 0x2000)
    table = bp_table({0: link, 5: (encode_dbgbcr(bt=BT_LINKED_CONTEXT), 0x77)})
    assert not breakpoint_matches(table, table[0], pc=0x2000, el=1, contextidr=0x77)  # out of range
    # LBN naming a disabled slot.
    table = bp_table({0: (encode_dbgbcr(bt=BT_LINKED_ADDRESS, lbn=4), 0x2000),
                      4: (encode_dbgbcr(bt=BT_LINKED_CONTEXT, enabled=False), 0x77)})
    assert table[4] is None
    assert not breakpoint_matches(table, table[0], pc=0x2000, el=1, contextidr=0x77)
    # LBN naming a slot that is not context-aware (decoded as None).
    table = bp_table({0: (encode_dbgbcr(bt=BT_LINKED_ADDRESS, lbn=1), 0x2000),
                      1: (encode_dbgbcr(bt=BT_LINKED_CONTEXT), 0x77)})
    assert table[1] is None
    assert not breakpoint_matches(table, table[0], pc=0x2000, el=1, contextidr=0x77)


@given(bcr=st.integers(0, 2**32 - 1), bvr=st.integers(0, M64 - 1), index=st.integers(0, 15),
       brps=st.integers(2, 16), data=st.data())
def test_decode_breakpoint_total(bcr, bvr, index, brps, data):
    ctx_cmps = data.draw(st.integers(1, brps))
    bp = decode_breakpoint(index, bcr, bvr, brps=brps, ctx_cmps=ctx_cmps)
    if bp is None:
        return
    assert DBGBCR.E.extract(bcr) == 1 and index < brps
    assert bp.bt in (0, 1, 2, 3)
    if bp.bt in (BT_UNLINKED_CONTEXT, BT_LINKED_CONTEXT):
        assert index >= brps - ctx_cmps
        assert bp.context_id == bvr & 0xFFFFFFFF
    else:
        assert bp.address % 4 == 0 and bp.address < M64
        assert breakpoint_matches([bp], bp, pc=bp.address, el=1, contextidr=0) is (
            bp.el1 and bp.bt == BT_UNLINKED_ADDRESS)


# ---------------------------------------------------------------------------------------------
# Watchpoints: worked examples

def test_watchpoint_bas_examples():
    wp = decode_watchpoint(3, encode_dbgwcr(lsc=0b10, bas=0xF0), 0x1000)
    assert wp.ranges == ((0x1004, 0x1008),)
    assert (wp.loads, wp.stores, wp.index, wp.linked) == (False, True, 3, False)
    # Non-contiguous BAS: one range per run, gaps not watched.
    wp = decode_watchpoint(0, encode_dbgwcr(bas=0b10100111), 0x1000)
    assert wp.ranges == ((0x1000, 0x1003), (0x1005, 0x1006), (0x1007, 0x1008))
    assert not wp.overlaps(0x1003, 2)
    assert wp.first_hit(0x1002, 8) == 0x1002
    assert wp.first_hit(0x1003, 4) == 0x1005
    # DBGWVR bit 2: BAS[3:0] for the word at DBGWVR & ~3; BAS[7:4] ignored.
    wp = decode_watchpoint(0, encode_dbgwcr(bas=0xFF), 0x1004)
    assert wp.ranges == ((0x1004, 0x1008),)
    assert decode_watchpoint(0, encode_dbgwcr(bas=0xF0), 0x1004) is None
    wp = decode_watchpoint(0, encode_dbgwcr(bas=0b0110), 0x1007)  # bits [1:0] RES0
    assert wp.ranges == ((0x1005, 0x1007),)


def test_watchpoint_full_doubleword_no_qemu_miscompare():
    # BAS=0xFF must watch all 8 bytes exactly (QEMU's clo32-based check gets this wrong).
    wp = decode_watchpoint(0, encode_dbgwcr(), 0x4000_0010)
    assert wp.ranges == ((0x4000_0010, 0x4000_0018),)
    assert wp.overlaps(0x4000_0017, 1)
    assert not wp.overlaps(0x4000_0018, 1)
    assert not wp.overlaps(0x4000_000F, 1)
    assert wp.overlaps(0x4000_000C, 8)   # crosses into the doubleword from below
    assert wp.first_hit(0x4000_000C, 8) == 0x4000_0010


def test_watchpoint_disabled_and_reserved():
    assert decode_watchpoint(0, encode_dbgwcr(enabled=False), 0x1000) is None
    assert decode_watchpoint(0, encode_dbgwcr(lsc=0b00), 0x1000) is None
    assert decode_watchpoint(0, encode_dbgwcr(bas=0), 0x1000) is None
    assert decode_watchpoint(0, encode_dbgwcr(mask=1), 0x1000) is None
    assert decode_watchpoint(0, encode_dbgwcr(mask=2), 0x1000) is None
    assert decode_watchpoint(0, encode_dbgwcr(pac=0), 0x1000) is None


def test_watchpoint_mask_examples():
    # Low bits ignored; BAS ignored (even zero).
    wp = decode_watchpoint(0, encode_dbgwcr(mask=3, bas=0), 0x1005)
    assert wp.ranges == ((0x1000, 0x1008),)
    wp = decode_watchpoint(0, encode_dbgwcr(mask=12, bas=0x0F), 0x4000_1ABC)
    assert wp.ranges == ((0x4000_1000, 0x4000_2000),)
    assert wp.pages() == [0x4000_1000]
    assert wp.pages(16384) == [0x4000_0000]


def test_watchpoint_2gib_region_boundaries():
    wp = decode_watchpoint(0, encode_dbgwcr(mask=31), 0x8000_1234)
    base, end = 0x8000_0000, 0x1_0000_0000
    assert wp.ranges == ((base, end),)
    assert not wp.overlaps(base - 1, 1)
    assert wp.overlaps(base - 1, 2)
    assert wp.first_hit(base - 1, 2) == base
    assert wp.overlaps(base, 1)
    assert wp.overlaps(end - 1, 1)
    assert not wp.overlaps(end, 32)
    assert wp.overlaps(end - 8, 16)
    assert not wp.overlaps(base - 32, 32)
    pages = wp.pages()
    assert len(pages) == (1 << 31) // 4096
    assert pages[0] == base and pages[-1] == end - 4096
    assert wp.pages(1 << 30) == [0x8000_0000, 0xC000_0000]


def test_watchpoint_top_of_address_space_and_wrap():
    # 0x1_FFFF_FFFF_FFF8 sign-extends to 0xFFFF_FFFF_FFFF_FFF8.
    wp = decode_watchpoint(0, encode_dbgwcr(bas=0x80), 0x1_FFFF_FFFF_FFF8)
    assert wp.ranges == ((M64 - 1, M64),)
    assert wp.pages() == [M64 - 4096]
    assert wp.overlaps(M64 - 4, 8)               # wraps to 0..3
    assert wp.first_hit(M64 - 4, 8) == M64 - 1
    low = decode_watchpoint(0, encode_dbgwcr(bas=0x01), 0)
    assert low.first_hit(M64 - 4, 8) == 0
    assert not low.overlaps(M64 - 4, 4)
    assert not wp.overlaps(0, 0)


def test_watchpoint_matches_filters():
    wp = decode_watchpoint(0, encode_dbgwcr(lsc=0b01, pac=0b01), 0x1000)  # loads at EL1
    kw = dict(addr=0x1000, size=4, contextidr=0)
    assert watchpoint_matches([], wp, is_write=False, el=1, **kw)
    assert not watchpoint_matches([], wp, is_write=True, el=1, **kw)
    assert not watchpoint_matches([], wp, is_write=False, el=0, **kw)
    assert not watchpoint_matches([], wp, is_write=False, el=1, addr=0x1008, size=4,
                                  contextidr=0)
    wp = decode_watchpoint(0, encode_dbgwcr(lsc=0b10, pac=0b10), 0x1000)  # stores at EL0
    assert watchpoint_matches([], wp, is_write=True, el=0, **kw)
    assert not watchpoint_matches([], wp, is_write=False, el=0, **kw)
    assert not watchpoint_matches([], wp, is_write=True, el=1, **kw)


def test_linked_watchpoint():
    table = bp_table({4: (encode_dbgbcr(bt=BT_LINKED_CONTEXT), 0x99),
                      5: (encode_dbgbcr(bt=BT_UNLINKED_CONTEXT), 0x99)})
    wp = decode_watchpoint(0, encode_dbgwcr(wt=1, lbn=4), 0x1000)
    assert wp.linked and wp.lbn == 4
    kw = dict(addr=0x1000, size=1, is_write=True, el=1)
    assert watchpoint_matches(table, wp, contextidr=0x99, **kw)
    assert not watchpoint_matches(table, wp, contextidr=0x98, **kw)
    for lbn in (5, 0, 15):  # unlinked context, empty slot, out of range
        bad = decode_watchpoint(0, encode_dbgwcr(wt=1, lbn=lbn), 0x1000)
        assert not watchpoint_matches(table, bad, contextidr=0x99, **kw)
    # WT=0: LBN is ignored.
    unlinked = decode_watchpoint(0, encode_dbgwcr(wt=0, lbn=15), 0x1000)
    assert not unlinked.linked and unlinked.lbn == 0
    assert watchpoint_matches(table, unlinked, contextidr=0, **kw)


# ---------------------------------------------------------------------------------------------
# Watchpoints: property tests against a byte-set reference model

def ref_sign_extend(wvr):
    v = wvr % (1 << 49)
    return (v - (1 << 49)) % M64 if v >> 48 else v


def ref_watched(wcr, wvr):
    """Watched byte addresses, by the most obvious loop."""
    va = ref_sign_extend(wvr)
    mask = (wcr >> 24) & 0x1F
    bas = (wcr >> 5) & 0xFF
    out = set()
    if mask >= 3:
        base = va - va % (1 << mask)
        for i in range(1 << mask):
            out.add(base + i)
    elif va & 4:
        word = va - va % 4
        for i in range(4):
            if bas & (1 << i):
                out.add(word + i)
    else:
        dword = va - va % 8
        for i in range(8):
            if bas & (1 << i):
                out.add(dword + i)
    return out


def access_bytes(addr, size):
    return [(addr + i) % M64 for i in range(size)]


EDGE_BASES = [0, 0x1000 - 8, 0x4000_0FF8, 0xFFFF_FFFF_FFF0, 0x1_0000_0000_0000,
              0x1_FFFF_FFFF_FFF8, 0x1_FFFF_FFFF_F000]
wvr_st = st.builds(
    lambda low, high: (high << 49) | low,  # DBGWVR[63:49] garbage must be ignored
    st.one_of(st.integers(0, 2**49 - 1),
              st.builds(lambda b, o: (b + o) % (1 << 49), st.sampled_from(EDGE_BASES),
                        st.integers(0, 0x1FFF))),
    st.one_of(st.just(0), st.just(2**15 - 1), st.integers(0, 2**15 - 1)),
)
size_st = st.sampled_from([1, 2, 4, 8, 16, 32])


def check_against_model(wcr, wvr, offsets_and_sizes):
    wp = decode_watchpoint(0, wcr, wvr)
    watched = ref_watched(wcr, wvr)
    if not watched:
        assert wp is None
        return
    assert wp is not None
    got = set()
    for start, end in wp.ranges:
        assert end - start <= 1 << 12
        got.update(range(start, end))
    assert got == watched
    assert list(wp.ranges) == sorted(wp.ranges)
    for a, b in zip(wp.ranges, wp.ranges[1:]):
        assert a[1] < b[0]  # merged: no touching or overlapping ranges
    assert wp.pages() == sorted({b - b % 4096 for b in watched})
    for addr, size in offsets_and_sizes:
        addr %= M64
        hits = [b for b in access_bytes(addr, size) if b in watched]
        assert wp.overlaps(addr, size) == bool(hits), (hex(addr), size)
        assert wp.first_hit(addr, size) == (hits[0] if hits else None), (hex(addr), size)


@settings(max_examples=400, deadline=None)
@given(wvr=wvr_st, bas=st.integers(0, 0xFF), bit2=st.booleans(),
       accesses=st.lists(st.tuples(st.integers(-40, 40), size_st), min_size=1, max_size=20))
def test_watch_bas_matches_reference(wvr, bas, bit2, accesses):
    wvr = (wvr & ~4) | (4 if bit2 else 0)
    wcr = encode_dbgwcr(bas=bas)
    va = ref_sign_extend(wvr)
    check_against_model(wcr, wvr, [(va + off, size) for off, size in accesses])


@settings(max_examples=200, deadline=None)
@given(wvr=wvr_st, mask=st.integers(3, 12), bas=st.integers(0, 0xFF),
       accesses=st.lists(st.tuples(st.floats(-0.1, 1.1), st.integers(-40, 40), size_st),
                         min_size=1, max_size=20))
def test_watch_mask_matches_reference(wvr, mask, bas, accesses):
    wcr = encode_dbgwcr(bas=bas, mask=mask)
    base = ref_sign_extend(wvr) & ~((1 << mask) - 1)
    span = 1 << mask
    check_against_model(wcr, wvr, [(base + int(frac * span) + off, size)
                                   for frac, off, size in accesses])


@settings(max_examples=300, deadline=None)
@given(wvr=wvr_st, bas=st.integers(1, 0xFF), lsc=st.integers(1, 3), pac=st.integers(1, 3),
       addr_off=st.integers(-40, 40), size=size_st, is_write=st.booleans(), el=st.integers(0, 3))
def test_watchpoint_matches_reference(wvr, bas, lsc, pac, addr_off, size, is_write, el):
    wcr = encode_dbgwcr(bas=bas, lsc=lsc, pac=pac)
    wp = decode_watchpoint(0, wcr, wvr)
    watched = ref_watched(wcr, wvr)
    if not watched:
        assert wp is None
        return
    addr = (ref_sign_extend(wvr) + addr_off) % M64
    kind_ok = bool(lsc & 2) if is_write else bool(lsc & 1)
    el_ok = (el == 1 and bool(pac & 1)) or (el == 0 and bool(pac & 2))
    overlap = any(b in watched for b in access_bytes(addr, size))
    assert watchpoint_matches([], wp, addr=addr, size=size, is_write=is_write, el=el,
                              contextidr=0) == (kind_ok and el_ok and overlap)


# ---------------------------------------------------------------------------------------------
# Exception syndromes

def test_esr_values():
    assert d.esr_brk64(0) == 0xF2000000
    assert d.esr_brk64(0x7) == 0xF2000007
    assert d.esr_brk64(0xF000) == 0xF200F000
    assert d.esr_svc64(0) == 0x56000000
    assert d.esr_svc64(0x1234) == 0x56001234
    assert d.esr_breakpoint(True) == 0xC2000022
    assert d.esr_breakpoint(False) == 0xC6000022
    assert d.esr_softstep(True, isv=False) == 0xCA000022   # no instruction stepped
    assert d.esr_softstep(True) == 0xCB000022              # stepped, not a load-exclusive
    assert d.esr_softstep(True, ex=True) == 0xCB000062     # stepped a load-exclusive
    assert d.esr_softstep(False) == 0xCF000022
    assert d.esr_softstep(True, ex=True, isv=False) == 0xCA000022  # EX is RES0 without ISV
    assert d.esr_watchpoint(True, True) == 0xD2000062
    assert d.esr_watchpoint(True, False) == 0xD2000022
    assert d.esr_watchpoint(False, True) == 0xD6000062
    assert d.esr_unknown() == 0x02000000
    assert d.esr_data_abort(True, True, d.DFSC_EXTERNAL_ABORT) == 0x92000050
    assert d.esr_data_abort(False, False, 0x07) == 0x96000007
    assert d.esr_data_abort(True, True, 0x10, isv=True, sas=2, srt=3, sf=True) == 0x93838050
    assert d.esr_data_abort(True, False, 0x10, isv=True, sas=0, sse=True, srt=31) == 0x933F0010
    assert d.esr_instruction_abort(True, 0x0F) == 0x8200000F
    assert d.esr_instruction_abort(False, 0x10) == 0x86000010
    assert d.esr(0x3C, 0, il=False) == 0xF0000000
    assert d.esr_ec(0xD2000062) == d.ESR_ELx_EC_WATCHPT_LOW
    with pytest.raises(ValueError):
        d.esr(0x40)
    with pytest.raises(ValueError):
        d.esr(0, 1 << 25)


def test_esr_ec_constants():
    assert (d.ESR_ELx_EC_SHIFT, d.ESR_ELx_IL) == (26, 1 << 25)
    assert (d.ESR_ELx_EC_BREAKPT_LOW, d.ESR_ELx_EC_SOFTSTP_LOW, d.ESR_ELx_EC_WATCHPT_LOW,
            d.ESR_ELx_EC_BKPT32, d.ESR_ELx_EC_BRK64) == (0x30, 0x32, 0x34, 0x38, 0x3C)
    assert (d.DFSC_DEBUG, d.DFSC_EXTERNAL_ABORT) == (0x22, 0x10)


def test_describe_esr():
    assert d.describe_esr(0xD2000062) == "EC 0x34 watchpoint (lower EL), WnR=1"
    assert d.describe_esr(0xF2000007) == "EC 0x3C BRK64 #0x7"
    assert d.describe_esr(0xCB000062) == "EC 0x32 software step (lower EL), ISV=1, EX=1"
    assert d.describe_esr(0xCA000022) == "EC 0x32 software step (lower EL), ISV=0"
    assert d.describe_esr(0x92000050) == "EC 0x24 data abort (lower EL), WnR=1, DFSC=0x10"
    assert d.describe_esr(0x02000000) == "EC 0x00 unknown reason (undefined instruction)"
    assert "unrecognised" in d.describe_esr(0x3F << 26)


# ---------------------------------------------------------------------------------------------
# Found by mutation testing (issue 14): edges of each rule, and what errors say

def test_errors_name_the_bad_value():
    with pytest.raises(ValueError, match=r"\bvalue 0x10 does not fit a 4-bit field\b"):
        Field(5, 4).deposit(0, 0x10)
    for args, what in [((17, 2, 1), r"\bbrps must be 2\.\.16, not 17\b"),
                       ((2, 17, 1), r"\bwrps must be 2\.\.16, not 17\b"),
                       ((2, 2, 3), r"\bctx_cmps must be 1\.\.brps \(2\), not 3\b")]:
        with pytest.raises(ValueError, match=what):
            id_aa64dfr0_el1(*args)
    with pytest.raises(ValueError, match=r"\bEC 0x40 out of range\b"):
        d.esr(0x40)
    with pytest.raises(ValueError, match=r"\bISS 0x2000000 out of range\b"):
        d.esr(0, 1 << 25)


def test_esr_field_limits():
    assert d.esr(0x3F) == 0xFE000000
    assert d.esr(0, 0x1FFFFFF) == 0x03FFFFFF
    assert d.esr(0x3F, 0x1FFFFFF, il=False) == 0xFDFFFFFF
    # ISV=1 with every access field left at its default: SAS=0 (byte), SSE=0, SRT=0, SF=0.
    assert d.esr_data_abort(True, False, 0x10, isv=True) == 0x93000010


def test_sign_extend_va_keeps_the_low_bits():
    assert d.sign_extend_va(1) == 1
    assert d.sign_extend_va(0x1_0000_0000_0000) == 0xFFFF_0000_0000_0000
    assert d.sign_extend_va(0x1_0000_0000_0001) == 0xFFFF_0000_0000_0001
    assert d.sign_extend_va(0xFFFE_FFFF_FFFF_FFFF) == 0x0000_FFFF_FFFF_FFFF


def test_context_aware_slots():
    assert [d.context_aware(i, brps=6, ctx_cmps=2) for i in range(8)] == [
        False, False, False, False, True, True, False, False]


@pytest.mark.parametrize("bt", [BT_UNLINKED_CONTEXT, BT_LINKED_CONTEXT])
def test_context_breakpoint_decodes_every_field(bt):
    bcr = encode_dbgbcr(bt=bt, lbn=3, pmc=0b01, bas=0)
    assert decode_breakpoint(5, bcr, 0xFFFF_FFFF_8765_4321, brps=BRPS, ctx_cmps=CTX) == Breakpoint(
        index=5, bt=bt, address=0, context_id=0x8765_4321, lbn=0, el0=False, el1=True)


def test_linked_context_filter_is_decoded_but_never_disables():
    for pmc, el0, el1 in [(0b00, False, False), (0b01, False, True), (0b10, True, False),
                          (0b11, True, True)]:
        for hmc, ssc in [(0, 0), (1, 0b10), (0, 0b11)]:  # reserved / never-firing elsewhere
            bp = decode_breakpoint(4, encode_dbgbcr(bt=BT_LINKED_CONTEXT, pmc=pmc, hmc=hmc,
                                                    ssc=ssc), 7, brps=BRPS, ctx_cmps=CTX)
            assert (bp.el0, bp.el1) == (el0, el1)


def test_unlinked_context_uses_the_full_privilege_rules():
    # Rule 5 applies to an unlinked context breakpoint as to an address one.
    assert decode_breakpoint(4, encode_dbgbcr(bt=BT_UNLINKED_CONTEXT, pmc=0b10, hmc=1), 7,
                             brps=BRPS, ctx_cmps=CTX) is None
    assert decode_breakpoint(4, encode_dbgbcr(bt=BT_UNLINKED_CONTEXT, ssc=0b10), 7,
                             brps=BRPS, ctx_cmps=CTX) is None


def test_unlinked_address_breakpoint_drops_lbn():
    bp = decode_breakpoint(0, encode_dbgbcr(lbn=5), 0x1000, brps=BRPS, ctx_cmps=CTX)
    assert bp.lbn == 0


def test_link_to_slot_zero_and_to_the_slot_past_the_end():
    # All slots context-aware: slot 0 may be the Linked Context breakpoint.
    table = [decode_breakpoint(0, encode_dbgbcr(bt=BT_LINKED_CONTEXT), 0x77, brps=2, ctx_cmps=2),
             decode_breakpoint(1, encode_dbgbcr(bt=BT_LINKED_ADDRESS, lbn=0), 0x2000, brps=2,
                               ctx_cmps=2)]
    assert breakpoint_matches(table, table[1], pc=0x2000, el=1, contextidr=0x77)
    # LBN == the number of slots names nothing.
    table = bp_table({0: (encode_dbgbcr(bt=BT_LINKED_ADDRESS, lbn=BRPS), 0x2000)})
    assert not breakpoint_matches(table, table[0], pc=0x2000, el=1, contextidr=0)
    wp = decode_watchpoint(0, encode_dbgwcr(wt=1, lbn=BRPS), 0x1000)
    assert not watchpoint_matches(table, wp, addr=0x1000, size=1, is_write=True, el=1,
                                  contextidr=0)


def test_zero_sized_access_watches_nothing():
    wp = decode_watchpoint(0, encode_dbgwcr(), 0x1000)
    for addr in (0x1000, 0x1004, 0x1007):
        assert not wp.overlaps(addr, 0)
        assert wp.first_hit(addr, 0) is None


def test_pages_page_size_must_be_a_power_of_two():
    wp = decode_watchpoint(0, encode_dbgwcr(bas=0b0110), 0x1000)  # bytes 0x1001, 0x1002
    assert wp.pages(1) == [0x1001, 0x1002]
    assert wp.pages(2) == [0x1000, 0x1002]
    for bad in (0, -4096, 3, 4095, 6):
        with pytest.raises(ValueError, match=r"\bpage_size must be a power of two\b"):
            wp.pages(bad)


def test_describe_esr_every_field():
    assert d.describe_esr(0xD2000022) == "EC 0x34 watchpoint (lower EL), WnR=0"
    assert d.describe_esr(0xCB000022) == "EC 0x32 software step (lower EL), ISV=1, EX=0"
    assert d.describe_esr(0x96000007) == "EC 0x25 data abort (current EL), WnR=0, DFSC=0x07"
    assert d.describe_esr(0x93838050) == (
        "EC 0x24 data abort (lower EL), WnR=1, DFSC=0x10, SAS=2, SRT=3, SF=1")
    assert d.describe_esr(0x933F0010) == (
        "EC 0x24 data abort (lower EL), WnR=0, DFSC=0x10, SAS=0, SRT=31, SF=0")
    assert d.describe_esr(0x8200000F) == "EC 0x20 instruction abort (lower EL), IFSC=0x0F"
    assert d.describe_esr(0x86000010) == "EC 0x21 instruction abort (current EL), IFSC=0x10"
    assert d.describe_esr(0xF0000005) == "EC 0x3C BRK64 #0x5, IL=0"
    assert d.describe_esr(0x3F << 26) == "EC 0x3F unrecognised class, IL=0"
    assert d.describe_esr(0xFE000000) == "EC 0x3F unrecognised class"
