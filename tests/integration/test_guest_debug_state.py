"""The guest's own (self-hosted) debug registers next to the debugger's: who owns the hardware,
what ONE_REG and KVM_GET_REG_LIST expose, and ID_AA64DFR0_EL1. Guest: guest_debug."""

from __future__ import annotations

import errno

import pytest

from guestdbg import kvm
from guestdbg.arm import debugregs as dr
from guestdbg.arm import kvm_regs as kr
from guestdbg.board.common import ExitStatus
from guestdbg.board.virt import VirtConfig
from tests.helpers.support import HW_DEBUG, Guest, breakpoint, ec, reg_id

MDSCR_ID = 0x6030000000138012
DBGBVR0_ID = 0x6030000000138004
ID_AA64DFR0_ID = 0x603000000013C028


def dbg_id(kind: str, n: int) -> int:
    """ONE_REG id of DBG{B,W}{V,C}Rn_EL1, written out from the Arm encoding (2,0,0,n,op2)."""
    op2 = {"bvr": 4, "bcr": 5, "wvr": 6, "wcr": 7}[kind]
    return 0x6030000000138000 | (n << 3) | op2


def guest_output(dfr0: int, brps: int, wrps: int, ctx: int, *, guest_hits: bool) -> str:
    head = f"dfr0=0x{dfr0:016x} brps={brps} wrps={wrps} ctx_cmps={ctx}\n"
    if guest_hits:
        middle = ("bkpt: EC=0x31 ESR=0xc6000022 ELR=target_fn runs=0\n"
                  "after bkpt: runs=1 hits=1\n"
                  "watch: EC=0x35 ESR=0xd6000062 WnR=1 FAR-&gvar=0 ELR=store_gvar_insn gvar=0xabcd\n"
                  "after watch: gvar=0x1234 hits=1\n")
    else:  # the handler never runs: no report lines, and both counters stay 0
        middle = ("after bkpt: runs=1 hits=0\n"
                  "after watch: gvar=0x1234 hits=0\n")
    tail = ("dbgbvr1=0x0000deadbeef0000\n"
            "dbgbcr1=0x00000000000001e6\n"
            "dbgwvr1=0x0000123456789ab8\n"
            "dbgwcr1=0x00000000000001fe\n"
            "mdscr=0x000000000000a000\n"
            "gvar=0x1234\n"
            "guest_debug: done\n")
    return head + middle + tail


DEFAULT_OUTPUT = guest_output(0x10305106, 6, 4, 2, guest_hits=True)

# The debugger's distinctive values: addresses nothing in guest_debug ever executes or touches.
DBG_BVR = 0x4ABC_D5F4
DBG_WVR = 0x4BCD_E5F8
DBG_BCR = dr.encode_dbgbcr()
DBG_WCR = dr.encode_dbgwcr(lsc=0b10, bas=0x3C)


def _guest(guest_dir, config=None) -> Guest:
    return Guest(guest_dir / "guest_debug.elf", config)


def _debugger_arch() -> kr.kvm_guest_debug_arch:
    arch = kr.kvm_guest_debug_arch()
    for i in range(16):
        arch.dbg_bvr[i], arch.dbg_bcr[i] = DBG_BVR + 4 * i, DBG_BCR
        arch.dbg_wvr[i], arch.dbg_wcr[i] = DBG_WVR + 8 * i, DBG_WCR
    return arch


def _assert_no_debugger_values(g: Guest) -> None:
    ids = g.vcpu.get_reg_list()
    vcpu = g.vcpu
    debugger_values = {DBG_BVR + 4 * i for i in range(16)} | {DBG_WVR + 8 * i for i in range(16)}
    for rid in ids:
        value = vcpu.get_one_reg(rid)
        assert value not in debugger_values, f"ONE_REG {rid:#x} holds the debugger's {value:#x}"
    for kind, count in (("bvr", vcpu.brps), ("bcr", vcpu.brps), ("wvr", vcpu.wrps), ("wcr", vcpu.wrps)):
        for n in range(16):
            assert (dbg_id(kind, n) in ids) == (n < count), f"{kind}{n} listed={dbg_id(kind, n) in ids}"


def _check_enoent(fn, *args):
    with pytest.raises(OSError) as e:
        fn(*args)
    assert e.value.errno == errno.ENOENT


def _check_einval(fn, *args):
    with pytest.raises(OSError) as e:
        fn(*args)
    assert e.value.errno == errno.EINVAL


# ---------------------------------------------------------------------------- guest-owned hardware

def test_guest_breakpoint_and_watchpoint_without_debugger(guest_dir):
    g = _guest(guest_dir)
    assert g.run_to_exit() == 0
    assert g.text == DEFAULT_OUTPUT
    # Guest-owned registers are what ONE_REG shows, as the guest left them.
    s = g.sym
    assert g.vcpu.get_one_reg(dbg_id("bvr", 0)) == s["target_fn"]
    assert g.vcpu.get_one_reg(dbg_id("bcr", 0)) == 0  # cleared by its handler
    assert g.vcpu.get_one_reg(dbg_id("wvr", 0)) == s["gvar"]
    assert g.vcpu.get_one_reg(dbg_id("wcr", 0)) == 0
    assert g.vcpu.get_one_reg(dbg_id("bvr", 1)) == 0x0000DEADBEEF0000
    assert g.vcpu.get_one_reg(MDSCR_ID) == 0


def test_guest_debug_hits_while_debugger_has_only_sw_bp(guest_dir):
    # ENABLE|USE_SW_BP without USE_HW leaves the hardware to the guest.
    g = _guest(guest_dir)
    g.set_debug(kvm.KVM_GUESTDBG_ENABLE | kvm.KVM_GUESTDBG_USE_SW_BP)
    end = g.run()
    assert isinstance(end, ExitStatus) and end.status == 0, end
    assert g.text == DEFAULT_OUTPUT


def test_debugger_owning_hw_silences_guest_debug_and_hides_its_registers(guest_dir):
    g = _guest(guest_dir)
    g.vcpu.set_guest_debug(HW_DEBUG, _debugger_arch())
    end = g.run()
    assert isinstance(end, ExitStatus) and end.status == 0, f"unexpected stop: {end}"
    # The guest's readbacks are right, but its breakpoint and watchpoint never fired.
    assert g.text == guest_output(0x10305106, 6, 4, 2, guest_hits=False)
    s = g.sym
    v = g.vcpu
    # ONE_REG shows the guest's values: BCR0/WCR0 still armed (its handler never ran).
    assert v.get_one_reg(dbg_id("bvr", 0)) == s["target_fn"]
    assert v.get_one_reg(dbg_id("bcr", 0)) == 0x1E7
    assert v.get_one_reg(dbg_id("wvr", 0)) == s["gvar"]
    assert v.get_one_reg(dbg_id("wcr", 0)) == 0x1FF7
    assert v.get_one_reg(dbg_id("bvr", 1)) == 0x0000DEADBEEF0000
    assert v.get_one_reg(dbg_id("wvr", 1)) == 0x0000123456789AB8
    for n in range(2, 6):
        assert v.get_one_reg(dbg_id("bvr", n)) == 0 and v.get_one_reg(dbg_id("bcr", n)) == 0
    for n in range(2, 4):
        assert v.get_one_reg(dbg_id("wvr", n)) == 0 and v.get_one_reg(dbg_id("wcr", n)) == 0
    _assert_no_debugger_values(g)


def test_debugger_breakpoint_wins_over_guest_breakpoint_at_same_address(guest_dir):
    g = _guest(guest_dir)
    s = g.sym
    g.set_debug(bps=[breakpoint(s["target_fn"])])
    r = g.run()
    assert ec(r) == 0x30 and r.debug.hsr == 0xC2000022  # the debugger's exit, not the guest's EC 0x31
    assert g.pc == s["target_fn"]
    # Mid-run: the guest has programmed its own BCR0 = 0x1e7 at target_fn; ONE_REG shows that.
    assert g.vcpu.get_one_reg(dbg_id("bcr", 0)) == 0x1E7
    assert g.vcpu.get_one_reg(dbg_id("bvr", 0)) == s["target_fn"]
    assert g.vcpu.get_one_reg(MDSCR_ID) == 0xA000
    # Step over (keeping USE_HW, with no slots armed) and let the guest finish with the
    # debugger still owning the hardware.
    g.set_debug(HW_DEBUG | kvm.KVM_GUESTDBG_SINGLESTEP)
    assert ec(g.run()) == 0x32 and g.pc == s["target_fn"] + 4
    g.set_debug(bps=[breakpoint(s["target_fn"])])
    end = g.run()
    assert isinstance(end, ExitStatus) and end.status == 0, end
    assert g.text == guest_output(0x10305106, 6, 4, 2, guest_hits=False)


def test_step_without_use_hw_makes_guest_breakpoint_live(guest_dir):
    # Stepping with ENABLE|SINGLESTEP but not USE_HW hands the hardware back to the guest for
    # that step: its own breakpoint at target_fn fires first, and the step ends at its vector.
    g = _guest(guest_dir)
    s = g.sym
    g.set_debug(bps=[breakpoint(s["target_fn"])])
    assert ec(g.run()) == 0x30 and g.pc == s["target_fn"]
    g.set_debug(kvm.KVM_GUESTDBG_ENABLE | kvm.KVM_GUESTDBG_SINGLESTEP)
    r = g.run()
    assert ec(r) == 0x32
    assert g.pc == g.reg("VBAR_EL1") + 0x200  # current EL with SP_ELx, synchronous
    assert g.reg("ESR_EL1") == 0xC6000022
    assert g.reg("ELR_EL1") == s["target_fn"]
    g.set_debug(0)
    assert g.run_to_exit() == 0
    assert g.text == DEFAULT_OUTPUT


def test_guest_debug_resumes_after_debugger_releases_hw(guest_dir):
    # The debugger holds the hardware while the guest arms its breakpoint, then lets go before
    # target_fn: the guest's breakpoint (kept in its registers) must fire from then on.
    g = _guest(guest_dir)
    s = g.sym
    g.vcpu.set_guest_debug(HW_DEBUG, _debugger_arch())
    g.set_debug(bps=[breakpoint(s["target_fn"])])
    r = g.run()
    assert ec(r) == 0x30 and g.pc == s["target_fn"]
    g.set_debug(0)
    end = g.run()
    assert isinstance(end, ExitStatus) and end.status == 0, end
    assert g.text == DEFAULT_OUTPUT


def test_guest_registers_preserved_across_debugger_on_and_off(guest_dir):
    g = _guest(guest_dir)
    v = g.vcpu
    want = {MDSCR_ID: 0xA000}
    for n in range(v.brps):
        want[dbg_id("bvr", n)] = 0x0000_1234_5600_0000 + (n << 8)
        want[dbg_id("bcr", n)] = 0x1E4 | (n << 16)  # E=0, varied LBN
    for n in range(v.wrps):
        want[dbg_id("wvr", n)] = 0x0000_7700_0000_0000 + (n << 4)
        want[dbg_id("wcr", n)] = 0x1FE6 | (n << 24)
    for rid, value in want.items():
        v.set_one_reg(rid, value)
    got = {rid: v.get_one_reg(rid) for rid in want}
    assert got == want
    for _ in range(2):
        v.set_guest_debug(HW_DEBUG, _debugger_arch())
        assert {rid: v.get_one_reg(rid) for rid in want} == want  # while the debugger owns it
        v.set_guest_debug(0)
        assert {rid: v.get_one_reg(rid) for rid in want} == want
    # The debugger's own slots were really in force meanwhile (not just dropped).
    assert v.guestdbg_arch.dbg_bvr[0] == DBG_BVR


def test_reg_list_has_no_debugger_entries_while_debugging(guest_dir):
    g = _guest(guest_dir)
    before = g.vcpu.get_reg_list()
    g.vcpu.set_guest_debug(HW_DEBUG, _debugger_arch())
    after = g.vcpu.get_reg_list()
    assert sorted(after) == sorted(before)
    assert len(after) == len(set(after))
    _assert_no_debugger_values(g)


# ---------------------------------------------------------------------------- ONE_REG ids

def test_one_reg_ids(guest_dir):
    g = _guest(guest_dir)
    v = g.vcpu
    assert reg_id("MDSCR_EL1") == MDSCR_ID
    assert kr.ARM64_SYS_REG(*kr.DBGBVRn_EL1(0)) == DBGBVR0_ID
    assert reg_id("ID_AA64DFR0_EL1") == ID_AA64DFR0_ID
    ids = set(v.get_reg_list())
    assert {MDSCR_ID, DBGBVR0_ID, ID_AA64DFR0_ID} <= ids
    v.set_one_reg(MDSCR_ID, 0x8000)
    assert v.get_one_reg(MDSCR_ID) == 0x8000
    v.set_one_reg(DBGBVR0_ID, 0x40100000)
    assert v.get_one_reg(DBGBVR0_ID) == 0x40100000
    for n in range(16):
        for kind, count in (("bcr", 6), ("bvr", 6), ("wcr", 4), ("wvr", 4)):
            if n < count:
                assert v.get_one_reg(dbg_id(kind, n)) == (0x40100000 if (kind, n) == ("bvr", 0) else 0)
            else:
                _check_enoent(v.get_one_reg, dbg_id(kind, n))
                _check_enoent(v.set_one_reg, dbg_id(kind, n), 0)


@pytest.mark.parametrize("counts", [(16, 16, 16), (16, 2, 2), (2, 2, 1)])
def test_dbgbcr_ids_follow_brps(guest_dir, counts):
    brps, wrps, ctx = counts
    g = _guest(guest_dir, VirtConfig(brps=brps, wrps=wrps, ctx_cmps=ctx))
    v = g.vcpu
    ids = set(v.get_reg_list())
    for n in range(16):
        assert (dbg_id("bcr", n) in ids) == (n < brps)
        assert (dbg_id("wcr", n) in ids) == (n < wrps)
        if n >= brps:
            _check_enoent(v.get_one_reg, dbg_id("bcr", n))
        else:
            v.set_one_reg(dbg_id("bcr", n), 0x1E6)
            assert v.get_one_reg(dbg_id("bcr", n)) == 0x1E6


@pytest.mark.parametrize("counts,dfr0", [
    ((6, 4, 2), 0x10305106),
    ((16, 16, 16), 0xF0F0F106),
    ((2, 2, 1), 0x00101106),
    ((8, 3, 4), 0x30207106),
])
def test_id_aa64dfr0_follows_config_in_one_reg_and_guest(guest_dir, counts, dfr0):
    brps, wrps, ctx = counts
    g = _guest(guest_dir, VirtConfig(brps=brps, wrps=wrps, ctx_cmps=ctx))
    v = g.vcpu
    assert v.get_one_reg(ID_AA64DFR0_ID) == dfr0
    assert g.vm.check_extension(kvm.KVM_CAP_GUEST_DEBUG_HW_BPS) == brps
    assert g.vm.check_extension(kvm.KVM_CAP_GUEST_DEBUG_HW_WPS) == wrps
    v.set_one_reg(ID_AA64DFR0_ID, dfr0)  # writing the same value is allowed
    _check_einval(v.set_one_reg, ID_AA64DFR0_ID, dfr0 ^ 0x1000)
    _check_einval(v.set_one_reg, ID_AA64DFR0_ID, 0)
    assert v.get_one_reg(ID_AA64DFR0_ID) == dfr0
    assert g.run_to_exit() == 0
    assert g.text == guest_output(dfr0, brps, wrps, ctx, guest_hits=True)


def test_default_machine_dfr0(guest_dir):
    g = _guest(guest_dir, VirtConfig())
    assert g.vcpu.get_one_reg(ID_AA64DFR0_ID) == 0x10305106


def test_unknown_ids_and_oversized_values(guest_dir):
    v = _guest(guest_dir).vcpu
    for rid in (kr.ARM64_SYS_REG(3, 0, 15, 15, 7),  # not a register we have
                0x6030000000100001,  # core, half-way into X0
                0x60300000001000FE,  # core, past the end of struct kvm_regs
                0x6020000000138012,  # MDSCR_EL1's encoding with a U32 size
                0x4030000000138012,  # another architecture's prefix
                0):
        _check_enoent(v.get_one_reg, rid)
        _check_enoent(v.set_one_reg, rid, 0)
    _check_einval(v.set_one_reg, kr.KVM_REG_ARM_CORE_FPSR, 1 << 32)  # U32 register
    _check_einval(v.set_one_reg, MDSCR_ID, 1 << 64)
    _check_einval(v.set_one_reg, DBGBVR0_ID, -1)
    _check_einval(v.set_one_reg, kr.KVM_REG_ARM_CORE_V(0), 1 << 128)
    v.set_one_reg(kr.KVM_REG_ARM_CORE_FPSR, 0xFFFFFFFF & 0x0800009F)
    v.set_one_reg(kr.KVM_REG_ARM_CORE_V(0), (1 << 128) - 1)
    assert v.get_one_reg(kr.KVM_REG_ARM_CORE_V(0)) == (1 << 128) - 1
    # A failed write leaves the register alone.
    v.set_one_reg(MDSCR_ID, 0xA000)
    _check_einval(v.set_one_reg, MDSCR_ID, 1 << 64)
    assert v.get_one_reg(MDSCR_ID) == 0xA000
