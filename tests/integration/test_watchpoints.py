"""End-to-end hardware watchpoints through KVM_SET_GUEST_DEBUG (ENABLE|USE_HW) on the `watch` guest.

A watchpoint exit is EC 0x34 with PC on the accessing instruction and memory unchanged; a debugger
resumes by stepping over it with the watchpoint removed, then re-arms (as gdb does against KVM).
"""

from __future__ import annotations

import pytest

from guestdbg import kvm
from guestdbg.arm import debugregs as dr
from guestdbg.board.common import ExitStatus
from tests.helpers.support import HW_DEBUG, Guest, ec, reg_id, watchpoint

STEP = HW_DEBUG | kvm.KVM_GUESTDBG_SINGLESTEP
HSR_WATCH_STORE = 0xD2000062
HSR_WATCH_LOAD = 0xD2000022
HSR_SOFTSTEP = 0xCB000022
WDATA_LINE = ("wdata: 0011222233333333444444444444444400000055555555555555550000000000"
              "6666666666666666777777777777777799999999999999998888888888888888")
FINAL = bytes.fromhex(WDATA_LINE.split(": ")[1])
LOAD_LSC, STORE_LSC = 0b01, 0b10


@pytest.fixture
def watch(guest_dir):
    return Guest(guest_dir / "watch.elf")


def wdata(g: Guest) -> bytes:
    return g.read(g.sym["wdata"], 64)


def step_over(g: Guest, wps) -> None:
    """What a debugger does at a watchpoint stop: step once without it, then re-arm."""
    pc = g.pc
    g.set_debug(STEP)
    run = g.run()
    assert ec(run) == 0x32 and run.debug.hsr == HSR_SOFTSTEP
    assert g.pc == pc + 4
    g.set_debug(wps=wps)


def run_to_end(g: Guest, wps) -> tuple[ExitStatus, list[tuple[int, int]]]:
    """Continue to the guest's end, stepping over every watchpoint hit; returns the (pc, far) hits."""
    hits = []
    while True:
        run = g.run()
        if isinstance(run, ExitStatus):
            return run, hits
        assert ec(run) == 0x34, run
        hits.append((g.pc, run.debug.far))
        assert len(hits) < 200
        step_over(g, wps)


def assert_completed(g: Guest, end) -> None:
    assert isinstance(end, ExitStatus) and end.status == 0, end
    assert g.text.splitlines() == ["watch: start", WDATA_LINE, "watch: done"]
    assert wdata(g) == FINAL


# label, watched offset in wdata, watched size, access range (offset, size), is_store, register
ACCESSES = [
    ("acc_strb", 0x01, 1, (0x01, 1), True, None),
    ("acc_strh", 0x02, 2, (0x02, 2), True, None),
    ("acc_str_w", 0x04, 4, (0x04, 4), True, None),
    ("acc_str_x", 0x08, 8, (0x08, 8), True, None),
    # Only the bytes in the second doubleword (0x18..0x1a) of the crossing store are watched.
    ("acc_str_unaligned", 0x18, 3, (0x13, 8), True, None),
    # Only the second register's doubleword of the pair / the high half of Q.
    ("acc_stp", 0x28, 8, (0x20, 16), True, None),
    ("acc_str_q", 0x38, 8, (0x30, 16), True, None),
    ("acc_ldrb", 0x01, 1, (0x01, 1), False, ("x10", 0x11)),
    ("acc_ldr_x", 0x08, 8, (0x08, 8), False, ("x11", 0x4444444444444444)),
    ("acc_ldp", 0x28, 8, (0x20, 16), False, ("x13", 0x7777777777777777)),
    ("acc_ldr_q", 0x38, 8, (0x30, 16), False, ("v1", 0x88888888888888889999999999999999)),
]


@pytest.mark.parametrize("label,off,size,access,is_store,reg", ACCESSES, ids=[a[0] for a in ACCESSES])
def test_access_hits_before_the_access(watch, label, off, size, access, is_store, reg):
    g = watch
    w = g.sym["wdata"]
    wps = [watchpoint(w + off, size, lsc=STORE_LSC if is_store else LOAD_LSC)]
    g.set_debug(wps=wps)
    run = g.run()
    assert ec(run) == 0x34
    assert run.debug.hsr == (HSR_WATCH_STORE if is_store else HSR_WATCH_LOAD)
    assert g.pc == g.sym[label]
    a_off, a_size = access
    assert w + a_off <= run.debug.far < w + a_off + a_size
    lo, hi = a_off, a_off + a_size
    before = wdata(g)
    if is_store:
        assert before[lo:hi] == bytes(a_size), "the store happened before the watchpoint exit"
    else:
        assert before == FINAL  # every store already done, nothing loaded yet
        name, value = reg
        assert g.reg(name) != value, "the load happened before the watchpoint exit"
        g.vcpu.set_one_reg(reg_id(name), 0x5A5A)  # the step must load the real value over it

    step_over(g, wps)
    after = wdata(g)
    assert after[lo:hi] == FINAL[lo:hi]
    assert after[:lo] == before[:lo] and after[hi:] == before[hi:]
    if not is_store:
        assert g.reg(reg[0]) == reg[1]

    end, hits = run_to_end(g, wps)
    assert_completed(g, end)
    # A load watchpoint still armed fires again in the byte-by-byte hex dump, once per byte.
    assert len(hits) == (0 if is_store else size)
    assert all(pc > g.sym["acc_end"] for pc, _ in hits)
    assert sorted(far for _, far in hits) == list(range(w + off, w + off + len(hits)))


def test_bas_byte_next_to_a_store_does_not_hit(watch):
    g = watch
    w = g.sym["wdata"]
    wps = [watchpoint(w + 1, 1, lsc=STORE_LSC)]
    g.set_debug(wps=wps)
    end, hits = run_to_end(g, wps)
    assert [pc for pc, _ in hits] == [g.sym["acc_strb"]]  # not acc_strh at wdata+2
    assert_completed(g, end)


def test_bas_unwritten_byte_never_hits(watch):
    g = watch
    wps = [watchpoint(g.sym["wdata"], 1, lsc=STORE_LSC)]  # wdata+0: nothing stores there
    g.set_debug(wps=wps)
    end, hits = run_to_end(g, wps)
    assert hits == []
    assert_completed(g, end)


@pytest.mark.parametrize("base,bas,label,access", [
    (0x00, 0b1000_0001, "acc_str_w", (0x04, 4)),           # bytes 0 and 7: only str w touches 7
    (0x10, 0b1000_0001, "acc_str_unaligned", (0x13, 8)),   # byte 0x17 of the crossing store
    (0x18, 0b0100_0000, None, None),                       # 0x1e: between the stores, never written
])
def test_non_contiguous_bas(watch, base, bas, label, access):
    g = watch
    w = g.sym["wdata"]
    wps = [(w + base, dr.encode_dbgwcr(lsc=STORE_LSC, bas=bas))]
    g.set_debug(wps=wps)
    end, hits = run_to_end(g, wps)
    assert [pc for pc, _ in hits] == ([] if label is None else [g.sym[label]])
    for _, far in hits:  # FAR: an address of the access (Arm ARM), not necessarily the watched byte
        assert w + access[0] <= far < w + access[0] + access[1]
    assert_completed(g, end)


def test_load_only_ignores_stores(watch):
    g = watch
    w = g.sym["wdata"]
    wps = [watchpoint(w + 8, 8, lsc=LOAD_LSC)]
    g.set_debug(wps=wps)
    run = g.run()
    assert ec(run) == 0x34 and run.debug.hsr == HSR_WATCH_LOAD
    assert g.pc == g.sym["acc_ldr_x"]  # acc_str_x went by


def test_store_only_ignores_loads(watch):
    g = watch
    w = g.sym["wdata"]
    wps = [watchpoint(w + 8, 8, lsc=STORE_LSC)]
    g.set_debug(wps=wps)
    end, hits = run_to_end(g, wps)
    assert hits == [(g.sym["acc_str_x"], w + 8)]  # neither acc_ldr_x nor the dump's loads
    assert_completed(g, end)


def test_mask_region_hits_first_access(watch):
    g = watch
    w = g.sym["wdata"]
    assert w % 64 == 0
    wps = [(w, dr.encode_dbgwcr(lsc=0b11, bas=0xFF, mask=6))]
    g.set_debug(wps=wps)
    run = g.run()
    assert ec(run) == 0x34 and run.debug.hsr == HSR_WATCH_STORE
    assert g.pc == g.sym["acc_strb"] and run.debug.far == w + 1
    assert wdata(g) == bytes(64)
    # Every later access in the region hits too, in program order.
    step_over(g, wps)
    run = g.run()
    assert ec(run) == 0x34 and g.pc == g.sym["acc_strh"] and run.debug.far == w + 2


def test_mask_region_elsewhere_never_hits(watch):
    g = watch
    far = g.sym["far_page"]
    wps = [(far + 0x40, dr.encode_dbgwcr(lsc=0b11, bas=0xFF, mask=6)),
           (far, dr.encode_dbgwcr(lsc=0b11, bas=0xFF, mask=12))]
    g.set_debug(wps=wps)
    end, hits = run_to_end(g, wps)
    assert hits == []
    assert_completed(g, end)


def test_resume_with_watchpoint_armed_hits_again(watch):
    g = watch
    w = g.sym["wdata"]
    g.set_debug(wps=[watchpoint(w + 2, 2, lsc=STORE_LSC)])
    for _ in range(3):
        run = g.run()
        assert ec(run) == 0x34 and run.debug.hsr == HSR_WATCH_STORE
        assert g.pc == g.sym["acc_strh"] and run.debug.far == w + 2
        assert wdata(g)[2:4] == b"\0\0"


def test_armed_never_hit_watch_guest(watch):
    g = watch
    far = g.sym["far_page"]
    wps = [watchpoint(far, 8), watchpoint(far + 0x808, 4, lsc=LOAD_LSC),
           watchpoint(far + 0xFF8, 8, lsc=STORE_LSC), watchpoint(far + 0x101, 1)]
    g.set_debug(wps=wps)
    end, hits = run_to_end(g, wps)
    assert hits == []
    assert_completed(g, end)


def test_armed_never_hit_loop_guest(guest_dir):
    g = Guest(guest_dir / "loop.elf")
    n = 100_000
    g.vm.write_phys(g.sym["loop_iterations"], n.to_bytes(8, "little"))
    idle = g.sym["idle_page"]
    g.set_debug(wps=[watchpoint(idle, 8), watchpoint(idle + 0x400, 8, lsc=LOAD_LSC),
                     watchpoint(idle + 0x800, 2, lsc=STORE_LSC), watchpoint(idle + 0xFFC, 4)])
    end = g.run()
    assert isinstance(end, ExitStatus) and end.status == 0
    assert g.text == "loop: done\n"
    expected = 0
    for i in range(1, n + 1):
        expected ^= i
    assert int.from_bytes(g.read(g.sym["loop_result"], 8), "little") == expected


@pytest.mark.parametrize("pac,fires", [(0b10, False), (0b01, True), (0b11, True)])
def test_pac_el0_only_ignores_el1_accesses(watch, pac, fires):
    g = watch
    w = g.sym["wdata"]
    wps = [(w, dr.encode_dbgwcr(pac=pac, lsc=STORE_LSC, bas=0xFF))]
    g.set_debug(wps=wps)
    end, hits = run_to_end(g, wps)
    assert [pc for pc, _ in hits] == (
        [g.sym[x] for x in ("acc_strb", "acc_strh", "acc_str_w")] if fires else [])
    assert_completed(g, end)


def test_disabling_guest_debug_removes_watchpoints(watch):
    g = watch
    w = g.sym["wdata"]
    wps = [watchpoint(w, 8), watchpoint(w + 8, 8), (w, dr.encode_dbgwcr(mask=6))]
    g.set_debug(wps=wps)
    run = g.run()
    assert ec(run) == 0x34 and g.pc == g.sym["acc_strb"]
    g.set_debug(0, wps=wps)  # no ENABLE: the arch values are ignored, debug is off
    end = g.run()
    assert_completed(g, end)


def test_disabled_from_the_start(watch):
    g = watch
    w = g.sym["wdata"]
    g.set_debug(wps=[watchpoint(w + 1, 1)])
    g.set_debug(0)
    assert_completed(g, g.run())
