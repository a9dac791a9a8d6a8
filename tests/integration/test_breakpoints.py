"""End-to-end tests of the debugger's breakpoints (KVM_SET_GUEST_DEBUG with ENABLE|USE_HW and
ENABLE|USE_SW_BP) on the emulated vCPU, driven through the guests bp_targets and el0_context."""

from __future__ import annotations

import errno

import pytest

from guestdbg import kvm
from guestdbg.arm import debugregs as dr
from guestdbg.board.common import ExitStatus
from guestdbg.board.virt import VirtConfig
from tests.helpers.support import HW_DEBUG, Guest, breakpoint, ec

EC_BREAKPOINT_LOWER = 0x30
EC_BRK64 = 0x3C
SW_DEBUG = kvm.KVM_GUESTDBG_ENABLE | kvm.KVM_GUESTDBG_USE_SW_BP
STEP = kvm.KVM_GUESTDBG_SINGLESTEP
BP_TARGETS_OUTPUT = "bp_targets: a=3 b=3 c=3 brk=1\n"
EL0_CONTEXT_OUTPUT = (
    "phase el1 ctx=0x11 ok\n"
    "phase el0 ctx=0x11 ok\n"
    "phase el1 ctx=0x22 ok\n"
    "phase el0 ctx=0x22 ok\n"
    "el0_context: calls=4 svcs=2\n"
    "el0_context: done\n"
)
BRK0 = bytes.fromhex("000020d4")  # BRK #0
MAX_EXITS = 200  # far more than any of these runs needs; stops a runaway re-hit loop


def _bp_targets(guest_dir, config=None) -> Guest:
    return Guest(guest_dir / "bp_targets.elf", config)


def _el0_context(guest_dir, config=None) -> Guest:
    return Guest(guest_dir / "el0_context.elf", config)


def _u32(g: Guest, sym: str) -> int:
    return int.from_bytes(g.read(g.sym[sym], 4), "little")


def _u64(g: Guest, sym: str) -> int:
    return int.from_bytes(g.read(g.sym[sym], 8), "little")


def _current_el(g: Guest) -> int:
    return (g.reg("PSTATE") >> 2) & 3


def _step_over(g: Guest, rearm) -> kvm.KvmRun | ExitStatus:
    """Disarm, single-step exactly one instruction, re-arm (via `rearm()`), and continue."""
    pc = g.pc
    g.set_debug(HW_DEBUG | STEP)  # keep the hardware, with no slot armed
    r = g.run()
    assert ec(r) == 0x32, f"single step from {pc:#x} did not give a software-step exit: {r}"
    assert g.pc != pc
    rearm()
    return g.run()


def _collect_hits(g: Guest, arm, on_hit=None) -> tuple[list[int], ExitStatus]:
    """Arm, run to the guest's end stepping over every hit; return the hit PCs and the end."""
    arm()
    r = g.run()
    hits = []
    while not isinstance(r, ExitStatus):
        assert ec(r) == EC_BREAKPOINT_LOWER, f"unexpected exit {r} at PC={g.pc:#x}"
        hits.append(g.pc)
        if on_hit:
            on_hit(g)
        assert len(hits) < MAX_EXITS, "breakpoint keeps firing"
        r = _step_over(g, arm)
    return hits, r


# ---------------------------------------------------------------------------- address breakpoints

def test_unlinked_address_breakpoint_stops_before_the_instruction(guest_dir):
    g = _bp_targets(guest_dir)
    bp_b = g.sym["bp_b"]
    g.set_debug(bps=[breakpoint(bp_b)])
    r = g.run()
    assert ec(r) == EC_BREAKPOINT_LOWER
    assert r.debug.hsr == 0xC2000022  # EC 0x30, IL, IFSC 0x22 (debug event)
    assert r.debug.hsr_high == 0
    assert g.pc == bp_b
    assert _u32(g, "bp_a_count") == 1
    assert _u32(g, "bp_b_count") == 0  # bp_b has not run yet
    # The breakpoint's instruction (adrp x0, ...) has not been executed either.
    x0_before = g.reg("X0")
    # Resuming without change re-hits at the same PC, as hardware does.
    for _ in range(3):
        r = g.run()
        assert ec(r) == EC_BREAKPOINT_LOWER and r.debug.hsr == 0xC2000022
        assert g.pc == bp_b
        assert g.reg("X0") == x0_before
    assert _u32(g, "bp_b_count") == 0


def test_step_over_counts_every_call_and_guest_output_unchanged(guest_dir):
    g = _bp_targets(guest_dir)
    bp_b = g.sym["bp_b"]
    counts = []
    hits, end = _collect_hits(g, lambda: g.set_debug(bps=[breakpoint(bp_b)]),
                              on_hit=lambda g: counts.append(_u32(g, "bp_b_count")))
    assert hits == [bp_b] * 3
    assert counts == [0, 1, 2]
    assert end.status == 0
    assert g.text == BP_TARGETS_OUTPUT


def test_breakpoint_armed_after_code_was_translated(guest_dir):
    g = _bp_targets(guest_dir)
    s = g.sym
    # First stop at bp_a's second call; by then bp_c has been translated and run once.
    g.set_debug(bps=[breakpoint(s["bp_a"])])
    r = g.run()
    assert ec(r) == EC_BREAKPOINT_LOWER and g.pc == s["bp_a"]
    r = _step_over(g, lambda: g.set_debug(bps=[breakpoint(s["bp_a"])]))
    assert ec(r) == EC_BREAKPOINT_LOWER and g.pc == s["bp_a"]
    assert _u32(g, "bp_a_count") == 1
    assert _u32(g, "bp_c_count") == 1  # bp_c's code has already been executed
    # Now re-point the breakpoint at bp_c only.
    seen = []
    hits, end = _collect_hits(g, lambda: g.set_debug(bps=[breakpoint(s["bp_c"])]),
                              on_hit=lambda g: seen.append(_u32(g, "bp_c_count")))
    assert hits == [s["bp_c"]] * 2
    assert seen == [1, 2]
    assert end.status == 0 and g.text == BP_TARGETS_OUTPUT


def test_single_step_interacts_with_armed_breakpoints(guest_dir):
    g = _bp_targets(guest_dir)
    bp_b = g.sym["bp_b"]
    g.set_debug(bps=[breakpoint(bp_b)])
    assert ec(g.run()) == EC_BREAKPOINT_LOWER and g.pc == bp_b
    # Stepping without disarming: the breakpoint is checked first and fires again, no progress.
    g.set_debug(HW_DEBUG | STEP, bps=[breakpoint(bp_b)])
    r = g.run()
    assert ec(r) == EC_BREAKPOINT_LOWER and g.pc == bp_b
    # A step that lands on an armed breakpoint ends as a step; the next run hits the breakpoint.
    g.set_debug(HW_DEBUG | STEP, bps=[breakpoint(bp_b + 4)])
    r = g.run()
    assert ec(r) == 0x32 and r.debug.hsr == 0xCB000022 and g.pc == bp_b + 4
    r = g.run()
    assert ec(r) == EC_BREAKPOINT_LOWER and g.pc == bp_b + 4


def test_breakpoint_disarmed_after_hit_does_not_fire_again(guest_dir):
    g = _bp_targets(guest_dir)
    g.set_debug(bps=[breakpoint(g.sym["bp_b"])])
    assert ec(g.run()) == EC_BREAKPOINT_LOWER
    g.set_debug(kvm.KVM_GUESTDBG_ENABLE | kvm.KVM_GUESTDBG_USE_HW)  # all slots zero
    end = g.run()
    assert isinstance(end, ExitStatus) and end.status == 0
    assert g.text == BP_TARGETS_OUTPUT


# ---------------------------------------------------------------------------- slot counts

def _sixteen_executed_addresses(g: Guest) -> list[int]:
    # bp_a is 5 instructions, bp_b and bp_c 6 each (see bp_targets.c); all run 3 times.
    s = g.sym
    addrs = [s["bp_a"] + 4 * i for i in range(5)] + [s["bp_b"] + 4 * i for i in range(6)] \
        + [s["bp_c"] + 4 * i for i in range(5)]
    assert len(set(addrs)) == 16
    return addrs


def test_all_sixteen_breakpoint_slots(guest_dir):
    g = _bp_targets(guest_dir, VirtConfig(brps=16, wrps=16, ctx_cmps=2))
    assert g.vm.check_extension(kvm.KVM_CAP_GUEST_DEBUG_HW_BPS) == 16
    addrs = _sixteen_executed_addresses(g)
    bps = [breakpoint(a) for a in addrs]
    hits, end = _collect_hits(g, lambda: g.set_debug(bps=bps))
    # Every slot fired, at each of the 3 calls, in program order.
    assert hits == addrs * 3
    assert end.status == 0 and g.text == BP_TARGETS_OUTPUT


@pytest.mark.parametrize("slot", [0, 7, 15])
def test_single_high_slot_works_with_sixteen_brps(guest_dir, slot):
    g = _bp_targets(guest_dir, VirtConfig(brps=16, wrps=16, ctx_cmps=2))
    bps = [(0, 0)] * slot + [breakpoint(g.sym["bp_b"])]
    g.set_debug(bps=bps)
    r = g.run()
    assert ec(r) == EC_BREAKPOINT_LOWER and g.pc == g.sym["bp_b"]


def test_slots_beyond_brps_are_ignored(guest_dir):
    cfg = VirtConfig(brps=2, wrps=2, ctx_cmps=1)
    bcr = dr.encode_dbgbcr()
    assert dr.decode_breakpoint(2, bcr, 0x40100000, brps=2, ctx_cmps=1) is None
    assert dr.decode_breakpoint(1, bcr, 0x40100000, brps=2, ctx_cmps=1) is not None

    g = _bp_targets(guest_dir, cfg)
    assert g.vm.check_extension(kvm.KVM_CAP_GUEST_DEBUG_HW_BPS) == 2
    assert g.vm.check_extension(kvm.KVM_CAP_GUEST_DEBUG_HW_WPS) == 2
    s = g.sym
    # Slots 2..15 are armed but do not exist on this vCPU: they never fire.
    g.set_debug(bps=[(0, 0), (0, 0)] + [breakpoint(s[n]) for n in ("bp_a", "bp_b", "bp_c")] * 4
                + [breakpoint(s["bp_a"]), breakpoint(s["bp_b"])])
    end = g.run()
    assert isinstance(end, ExitStatus) and end.status == 0, f"a slot >= brps fired: {end}"
    assert g.text == BP_TARGETS_OUTPUT

    # Control: slot 1 (the last real one) does fire on the same machine configuration.
    g2 = _bp_targets(guest_dir, cfg)
    g2.set_debug(bps=[(0, 0), breakpoint(s["bp_c"])])
    assert ec(g2.run()) == EC_BREAKPOINT_LOWER and g2.pc == s["bp_c"]


# ---------------------------------------------------------------------------- privilege (PMC)

@pytest.mark.parametrize("pmc,want_el", [(0b10, 0), (0b01, 1)])
def test_pmc_filters_by_exception_level(guest_dir, pmc, want_el):
    g = _el0_context(guest_dir)
    ctx_work = g.sym["ctx_work"]
    seen = []
    hits, end = _collect_hits(
        g, lambda: g.set_debug(bps=[breakpoint(ctx_work, pmc=pmc)]),
        on_hit=lambda g: seen.append((_current_el(g), g.reg("CONTEXTIDR_EL1"), _u64(g, "ctx_work_calls"))))
    assert hits == [ctx_work] * 2
    # EL0 phases are calls 2 and 4 (0-based 1, 3); EL1 phases are calls 1 and 3.
    first = 1 if want_el == 0 else 0
    assert seen == [(want_el, 0x11, first), (want_el, 0x22, first + 2)]
    assert end.status == 0 and g.text == EL0_CONTEXT_OUTPUT


def test_pmc_both_levels_hits_all_four_calls(guest_dir):
    g = _el0_context(guest_dir)
    els = []
    hits, end = _collect_hits(g, lambda: g.set_debug(bps=[breakpoint(g.sym["ctx_work"], pmc=0b11)]),
                              on_hit=lambda g: els.append(_current_el(g)))
    assert els == [1, 0, 1, 0]
    assert end.status == 0 and g.text == EL0_CONTEXT_OUTPUT


# ---------------------------------------------------------------------------- context-ID

def _is_msr_contextidr(insn: int) -> bool:
    # MSR CONTEXTIDR_EL1, Xt: op0=3 op1=0 CRn=13 CRm=0 op2=1
    return insn & 0xFFFFFFE0 == 0xD518D020


def test_unlinked_context_breakpoint_in_context_aware_slot(guest_dir):
    g = _el0_context(guest_dir)
    slot = g.vcpu.brps - 1  # context-aware: the top ctx_cmps slots
    bps = [(0, 0)] * slot + [(0x22, dr.encode_dbgbcr(bt=dr.BT_UNLINKED_CONTEXT))]
    g.set_debug(bps=bps)
    r = g.run()
    assert ec(r) == EC_BREAKPOINT_LOWER and r.debug.hsr == 0xC2000022
    assert g.reg("CONTEXTIDR_EL1") == 0x22
    # The first instruction executed with CONTEXTIDR_EL1 == 0x22 is the one after the MSR.
    prev = int.from_bytes(g.read(g.pc - 4, 4), "little")
    assert _is_msr_contextidr(prev), f"stopped at {g.pc:#x}, after {prev:#010x}, not after MSR CONTEXTIDR_EL1"
    assert _u64(g, "ctx_work_calls") == 2  # both 0x11 phases done, no 0x22 phase yet
    assert g.text == "phase el1 ctx=0x11 ok\nphase el0 ctx=0x11 ok\n"
    # It matches every instruction while the context matches: resuming re-hits.
    pc = g.pc
    assert ec(g.run()) == EC_BREAKPOINT_LOWER and g.pc == pc
    # Stepping over it: the next instruction matches as well.
    r = _step_over(g, lambda: g.set_debug(bps=bps))
    assert ec(r) == EC_BREAKPOINT_LOWER and g.pc == pc + 4
    # Disarmed, the guest finishes normally.
    g.set_debug(0)
    end = g.run()
    assert isinstance(end, ExitStatus) and end.status == 0 and g.text == EL0_CONTEXT_OUTPUT


def test_unlinked_context_breakpoint_el0_only(guest_dir):
    # Context 0x22 is set at EL1 long before EL0 runs with it: the event waits for the first
    # EL0 instruction with CONTEXTIDR_EL1 == 0x22, el0_entry in the second round.
    g = _el0_context(guest_dir)
    slot = g.vcpu.brps - 2
    g.set_debug(bps=[(0, 0)] * slot + [(0x22, dr.encode_dbgbcr(bt=dr.BT_UNLINKED_CONTEXT, pmc=0b10))])
    r = g.run()
    assert ec(r) == EC_BREAKPOINT_LOWER
    assert g.pc == g.sym["el0_entry"]
    assert _current_el(g) == 0 and g.reg("CONTEXTIDR_EL1") == 0x22
    assert _u64(g, "ctx_work_calls") == 3


def test_unlinked_context_breakpoint_in_ordinary_slot_never_fires(guest_dir):
    g = _el0_context(guest_dir)
    assert not dr.context_aware(0, brps=g.vcpu.brps, ctx_cmps=g.vcpu.ctx_cmps)
    g.set_debug(bps=[(0x22, dr.encode_dbgbcr(bt=dr.BT_UNLINKED_CONTEXT))])
    end = g.run()
    assert isinstance(end, ExitStatus) and end.status == 0, f"slot 0 context breakpoint fired: {end}"
    assert g.text == EL0_CONTEXT_OUTPUT


def test_linked_address_and_context_breakpoint(guest_dir):
    g = _el0_context(guest_dir)
    ctx_slot = g.vcpu.brps - 1
    bps = [breakpoint(g.sym["ctx_work"], bt=dr.BT_LINKED_ADDRESS, lbn=ctx_slot)] \
        + [(0, 0)] * (ctx_slot - 1) + [(0x22, dr.encode_dbgbcr(bt=dr.BT_LINKED_CONTEXT))]
    seen = []
    hits, end = _collect_hits(g, lambda: g.set_debug(bps=bps),
                              on_hit=lambda g: seen.append((g.reg("CONTEXTIDR_EL1"), _current_el(g))))
    assert hits == [g.sym["ctx_work"]] * 2
    assert seen == [(0x22, 1), (0x22, 0)]
    assert end.status == 0 and g.text == EL0_CONTEXT_OUTPUT


def test_linked_address_breakpoint_to_other_context_id(guest_dir):
    g = _el0_context(guest_dir)
    ctx_slot = g.vcpu.brps - 2  # the other context-aware slot
    bps = [breakpoint(g.sym["ctx_work"], bt=dr.BT_LINKED_ADDRESS, lbn=ctx_slot)] \
        + [(0, 0)] * (ctx_slot - 1) + [(0x11, dr.encode_dbgbcr(bt=dr.BT_LINKED_CONTEXT))]
    seen = []
    hits, end = _collect_hits(g, lambda: g.set_debug(bps=bps),
                              on_hit=lambda g: seen.append(g.reg("CONTEXTIDR_EL1")))
    assert seen == [0x11, 0x11]
    assert end.status == 0 and g.text == EL0_CONTEXT_OUTPUT


def test_linked_context_breakpoint_alone_never_fires(guest_dir):
    g = _el0_context(guest_dir)
    slot = g.vcpu.brps - 1
    g.set_debug(bps=[(0, 0)] * slot + [(0x22, dr.encode_dbgbcr(bt=dr.BT_LINKED_CONTEXT))])
    end = g.run()
    assert isinstance(end, ExitStatus) and end.status == 0, f"lone linked context fired: {end}"
    assert g.text == EL0_CONTEXT_OUTPUT


# ---------------------------------------------------------------------------- software breakpoints

def test_use_sw_bp_reports_guest_brk(guest_dir):
    g = _bp_targets(guest_dir)
    g.set_debug(SW_DEBUG)
    r = g.run()
    assert ec(r) == EC_BRK64
    assert r.debug.hsr == 0xF2000123
    assert g.pc == g.sym["guest_brk"]
    assert _u32(g, "brk_count") == 0  # the guest's handler did not see it
    # Passing it on: with debug off, the BRK re-executes and the guest's own handler takes it.
    g.set_debug(0)
    end = g.run()
    assert isinstance(end, ExitStatus) and end.status == 0
    assert g.text == BP_TARGETS_OUTPUT


def test_without_use_sw_bp_guest_handles_its_brk(guest_dir):
    g = _bp_targets(guest_dir)
    g.set_debug(HW_DEBUG)  # debugging on, but BRKs are not the debugger's
    end = g.run()
    assert isinstance(end, ExitStatus) and end.status == 0, f"unexpected stop: {end}"
    assert g.text == BP_TARGETS_OUTPUT


def test_debugger_patched_brk0(guest_dir):
    g = _bp_targets(guest_dir)
    s = g.sym
    bp_c = s["bp_c"]
    original = g.read(bp_c, 4)
    assert original != BRK0
    g.vm.write_phys(bp_c, BRK0)
    g.set_debug(SW_DEBUG)
    r = g.run()
    hits = 0
    while True:
        assert ec(r) == EC_BRK64, f"unexpected {r}"
        if g.pc == s["guest_brk"]:
            assert r.debug.hsr == 0xF2000123
            break
        assert g.pc == bp_c and r.debug.hsr == 0xF2000000
        assert _u32(g, "bp_c_count") == hits
        hits += 1
        assert hits <= 3
        # Step over: restore, step one instruction, re-patch (bp_c is translated by now).
        g.vm.write_phys(bp_c, original)
        g.set_debug(SW_DEBUG | STEP)
        r = g.run()
        assert ec(r) == 0x32 and g.pc == bp_c + 4
        g.vm.write_phys(bp_c, BRK0)
        g.set_debug(SW_DEBUG)
        r = g.run()
    assert hits == 3
    g.vm.write_phys(bp_c, original)
    g.set_debug(0)  # hand the guest's own BRK back to it
    end = g.run()
    assert isinstance(end, ExitStatus) and end.status == 0
    assert g.text == BP_TARGETS_OUTPUT


# ---------------------------------------------------------------------------- control validation

@pytest.mark.parametrize("bad", [kvm.KVM_GUESTDBG_INJECT_DB, kvm.KVM_GUESTDBG_INJECT_BP,
                                 kvm.KVM_GUESTDBG_BLOCKIRQ, 0x4, 1 << 31])
def test_invalid_control_bits_are_einval_and_keep_previous_state(guest_dir, bad):
    g = _bp_targets(guest_dir)
    s = g.sym
    g.set_debug(bps=[breakpoint(s["bp_b"])])
    with pytest.raises(OSError) as e:
        g.set_debug(HW_DEBUG | bad, bps=[breakpoint(s["bp_a"])])
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:
        g.set_debug(bad)  # not even "off" is taken with a bad bit in it
    assert e.value.errno == errno.EINVAL
    assert g.vcpu.guestdbg_control == HW_DEBUG
    r = g.run()
    assert ec(r) == EC_BREAKPOINT_LOWER
    assert g.pc == s["bp_b"]  # the old breakpoint, not the rejected one at bp_a
    assert _u32(g, "bp_a_count") == 1


def test_guest_debug2_reports_valid_mask(guest_dir):
    g = _bp_targets(guest_dir)
    assert g.vm.check_extension(kvm.KVM_CAP_SET_GUEST_DEBUG2) == (
        kvm.KVM_GUESTDBG_ENABLE | kvm.KVM_GUESTDBG_SINGLESTEP | kvm.KVM_GUESTDBG_USE_SW_BP
        | kvm.KVM_GUESTDBG_USE_HW)
    assert g.vm.check_extension(kvm.KVM_CAP_SET_GUEST_DEBUG) == 1
