"""The guest `mmu` (guests/mmu): stage-1 MMU on, with faults raised by the vCPU's own table walk
entered into the guest, and the debugger's breakpoints and watchpoints working on virtual
addresses once translation is on.

The guest maps VA 0x8000_0000 to the physical page of `alias_target` (so one physical page has
two virtual addresses), leaves VA 0x8000_1000 unmapped (level-3 translation fault) and maps
VA 0x8000_2000 read-only to `ro_target` (level-3 permission fault on a store).
"""

from __future__ import annotations

from guestdbg import kvm
from guestdbg.board.common import ExitStatus
from tests.helpers.qemu_runner import run_under_qemu
from tests.helpers.support import HW_DEBUG, Guest, breakpoint, ec, watchpoint

ALIAS_VA = 0x8000_0000
UNMAPPED_VA = 0x8000_1000
RO_VA = 0x8000_2000
ALIAS_INITIAL = 0x5A5A5A5A5A5A5A5A  # alias_target[0] in the ELF's .data
ALIAS_STORED = 0x1111

EC_BREAKPOINT_LOWER = 0x30
EC_SOFTSTEP_LOWER = 0x32
EC_WATCHPOINT_LOWER = 0x34
HSR_WATCH_STORE = 0xD2000062  # EC 0x34, IL, WnR=1, DFSC 0x22 (debug event)
HSR_WATCH_LOAD = 0xD2000022   # the same with WnR=0
HSR_BREAKPOINT = 0xC2000022   # EC 0x30, IL, IFSC 0x22
STEP = kvm.KVM_GUESTDBG_SINGLESTEP
SCTLR_M = 1 << 0
MAX_EXITS = 50

MMU_OUTPUT = (
    "mmu: on\n"
    "alias: 0x0000000000001111\n"
    "ro: 0x0000000000002222\n"
    "exc EC=0x25 ESR=0x96000007 FAR=0x80001000\n"
    "load skipped, x0=0xdead\n"
    "exc EC=0x25 ESR=0x96000047 FAR=0x80001000\n"
    "exc EC=0x25 ESR=0x9600004f FAR=0x80002000\n"
    "ro after store: 0x0000000000002222\n"
    "exc EC=0x21 ESR=0x86000007 FAR=0x80001000\n"
    "branch returned\n"
    "mmu: faults=4\n"
    "mmu: done\n"
)


def _mmu(guest_dir) -> Guest:
    return Guest(guest_dir / "mmu.elf")


def _u64(g: Guest, addr: int) -> int:
    return int.from_bytes(g.read(addr, 8), "little")


def _step_then_finish(g: Guest, rearm=lambda: None) -> ExitStatus:
    """Single-step the instruction at PC with no slot armed, re-arm, and run to the end; any
    further debug exit fails the test."""
    pc = g.pc
    g.set_debug(HW_DEBUG | STEP)
    r = g.run()
    assert ec(r) == EC_SOFTSTEP_LOWER, f"single step from {pc:#x} did not give a step exit: {r}"
    assert g.pc != pc
    rearm()
    end = g.run()
    assert isinstance(end, ExitStatus), f"unexpected exit {end} at PC={g.pc:#x}"
    return end


# ---------------------------------------------------------------------------- output

def test_output_and_exit_status(guest_dir):
    g = _mmu(guest_dir)
    assert g.run_to_exit() == 0
    assert g.text == MMU_OUTPUT
    # The store through the alias reached the physical page of alias_target.
    assert _u64(g, g.sym["alias_target"]) == ALIAS_STORED
    assert _u64(g, g.sym["ro_target"]) == 0x2222


def test_same_output_as_qemu(guest_dir):
    qemu_out, qemu_status = run_under_qemu(guest_dir / "mmu.elf", timeout=60)
    assert qemu_out == MMU_OUTPUT and qemu_status == 0  # what guests/README.md documents
    g = _mmu(guest_dir)
    assert g.run_to_exit() == qemu_status
    assert g.text == qemu_out


def test_fault_syndromes_seen_from_a_breakpoint_in_the_handler(guest_dir):
    """At each entry of exception_handler the vCPU's ESR/FAR/ELR_EL1 are those of the fault."""
    g = _mmu(guest_dir)
    s = g.sym
    handler = s["exception_handler"]

    def arm():
        g.set_debug(bps=[breakpoint(handler)])

    seen = []
    arm()
    r = g.run()
    while not isinstance(r, ExitStatus):
        assert ec(r) == EC_BREAKPOINT_LOWER and g.pc == handler, f"unexpected exit {r} at {g.pc:#x}"
        seen.append((g.reg("ESR_EL1"), g.reg("FAR_EL1"), g.reg("ELR_EL1")))
        assert len(seen) < MAX_EXITS
        pc = g.pc
        g.set_debug(HW_DEBUG | STEP)
        assert ec(g.run()) == EC_SOFTSTEP_LOWER and g.pc != pc
        arm()
        r = g.run()
    assert r.status == 0 and g.text == MMU_OUTPUT
    assert [(hex(e), hex(f), hex(l)) for e, f, l in seen] == [
        # load, translation fault level 3
        (hex(0x96000007), hex(UNMAPPED_VA), hex(s["probe_load_insn"])),
        # store (WnR), translation fault level 3
        (hex(0x96000047), hex(UNMAPPED_VA), hex(s["probe_store_insn"])),
        # store (WnR), permission fault level 3
        (hex(0x9600004F), hex(RO_VA), hex(s["probe_store_insn"])),
        # instruction fetch, translation fault level 3: ELR is the unmapped target itself
        (hex(0x86000007), hex(UNMAPPED_VA), hex(UNMAPPED_VA)),
    ]


# ---------------------------------------------------------------------------- breakpoints

def test_hw_breakpoint_after_mmu_on(guest_dir):
    g = _mmu(guest_dir)
    s = g.sym
    g.set_debug(bps=[breakpoint(s["alias_store"])])
    r = g.run()
    assert ec(r) == EC_BREAKPOINT_LOWER and r.debug.hsr == HSR_BREAKPOINT
    assert g.pc == s["alias_store"]
    # Translation is on, through the guest's own tables.
    assert g.reg("SCTLR_EL1") & SCTLR_M
    assert g.reg("TTBR0_EL1") & 0xFFFF_FFFF_F000 == s["mmu_l1"]
    assert g.text == "mmu: on\n"
    assert (g.reg("X0"), g.reg("X1")) == (ALIAS_VA, ALIAS_STORED)
    assert _u64(g, s["alias_target"]) == ALIAS_INITIAL  # the store has not run
    end = _step_then_finish(g, lambda: g.set_debug(bps=[breakpoint(s["alias_store"])]))
    assert end.status == 0 and g.text == MMU_OUTPUT


# ---------------------------------------------------------------------------- watchpoints

def test_store_watchpoint_on_alias_va_fires_before_the_store(guest_dir):
    g = _mmu(guest_dir)
    s = g.sym
    wp = watchpoint(ALIAS_VA, 8, lsc=0b10)
    g.set_debug(wps=[wp])
    r = g.run()
    assert ec(r) == EC_WATCHPOINT_LOWER, f"expected a watchpoint exit, got {r}"
    assert r.debug.hsr == HSR_WATCH_STORE
    assert r.debug.far == ALIAS_VA
    assert g.pc == s["alias_store_insn"]
    assert g.reg("X1") == ALIAS_STORED
    # Before the access: the physical page behind the alias is unchanged.
    assert _u64(g, s["alias_target"]) == ALIAS_INITIAL
    assert g.text == "mmu: on\n"
    end = _step_then_finish(g, lambda: g.set_debug(wps=[wp]))
    assert _u64(g, s["alias_target"]) == ALIAS_STORED
    assert end.status == 0 and g.text == MMU_OUTPUT


def test_store_watchpoint_on_identity_va_ignores_the_alias_store(guest_dir):
    """Watchpoints compare virtual addresses: the store through VA 0x8000_0000 writes the same
    physical page, but does not hit a watchpoint on the identity VA of alias_target."""
    g = _mmu(guest_dir)
    g.set_debug(wps=[watchpoint(g.sym["alias_target"], 8, lsc=0b10)])
    end = g.run()
    assert isinstance(end, ExitStatus), f"unexpected exit {end} at PC={g.pc:#x}"
    assert end.status == 0 and g.text == MMU_OUTPUT
    assert _u64(g, g.sym["alias_target"]) == ALIAS_STORED


def test_access_watchpoint_on_identity_va_first_hits_the_identity_read(guest_dir):
    """With both VAs watched for loads and stores, the alias store hits only the alias slot, and
    the identity slot's first hit is the guest's read through the identity address, after the
    alias store has landed."""
    g = _mmu(guest_dir)
    s = g.sym
    ident = s["alias_target"]
    wps = [watchpoint(ident, 8, lsc=0b11), watchpoint(ALIAS_VA, 8, lsc=0b11)]
    g.set_debug(wps=wps)

    r = g.run()
    assert ec(r) == EC_WATCHPOINT_LOWER and r.debug.hsr == HSR_WATCH_STORE
    assert r.debug.far == ALIAS_VA and g.pc == s["alias_store_insn"]
    g.set_debug(HW_DEBUG | STEP)
    assert ec(g.run()) == EC_SOFTSTEP_LOWER
    g.set_debug(wps=wps)

    r = g.run()
    assert ec(r) == EC_WATCHPOINT_LOWER, f"expected the identity read to hit, got {r}"
    assert r.debug.hsr == HSR_WATCH_LOAD
    assert r.debug.far == ident
    assert s["main"] <= g.pc < s["main"] + 0x400, f"hit at {g.pc:#x}, not in main"
    assert _u64(g, ident) == ALIAS_STORED
    assert g.text == "mmu: on\nalias: "  # mmu.c prints the label, then reads alias_target[0]
    end = _step_then_finish(g, lambda: g.set_debug(wps=wps))
    assert end.status == 0 and g.text == MMU_OUTPUT
