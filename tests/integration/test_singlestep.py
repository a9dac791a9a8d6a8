"""End-to-end KVM_GUESTDBG_SINGLESTEP: one instruction per KVM_RUN, reported as EC 0x32."""

from __future__ import annotations


import capstone
import pytest

from guestdbg import kvm
from guestdbg.board.common import ExitStatus
from tests.helpers.support import HW_DEBUG, Guest, breakpoint, ec, reg_id, watchpoint

STEP = HW_DEBUG | kvm.KVM_GUESTDBG_SINGLESTEP
HSR_SOFTSTEP = 0xCB000022  # EC 0x32, IL, ISV=1, EX=0, IFSC 0x22
HSR_WATCH_STORE = 0xD2000062
EL1H_DAIF = 0x3C5
WDATA_LINE = ("wdata: 0011222233333333444444444444444400000055555555555555550000000000"
              "6666666666666666777777777777777799999999999999998888888888888888")
WATCH_OUTPUT = ["watch: start", WDATA_LINE, "watch: done"]

_cs = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
CONTROL_FLOW = {"b", "bl", "br", "blr", "ret", "cbz", "cbnz", "tbz", "tbnz", "eret",
                "svc", "hvc", "smc", "brk", "hlt", "udf"}


def insn_at(g: Guest, pc: int):
    insns = list(_cs.disasm(g.vcpu.read_virt(pc, 4), pc))
    return insns[0] if insns else None


def step(g: Guest) -> int:
    run = g.run()
    assert ec(run) == 0x32, run
    assert run.debug.hsr == HSR_SOFTSTEP
    return g.pc


def stop_at(g: Guest, addr: int) -> None:
    g.set_debug(bps=[breakpoint(addr)])
    run = g.run()
    assert ec(run) == 0x30 and g.pc == addr


def test_straight_line_one_instruction_per_run(guest_dir):
    g = Guest(guest_dir / "watch.elf")
    s = g.sym
    start = s["acc_strb"] - 11 * 4  # `mov w1, #0x11`, right after `ldr x19, =wdata`
    stop_at(g, start)
    g.set_debug(STEP)
    pc = start
    count = 0
    while pc != s["acc_end"]:
        insn = insn_at(g, pc)
        assert insn.mnemonic not in CONTROL_FLOW and not insn.mnemonic.startswith("b.")
        new = step(g)
        assert new == pc + 4, f"{insn.mnemonic} {insn.op_str} at {pc:#x} stepped to {new:#x}"
        pc, count = new, count + 1
    assert count == 11 + 11  # 11 set-up instructions, 11 labelled accesses
    assert g.read(s["wdata"], 2) == b"\x00\x11"  # the stores really ran, one step each
    assert g.reg("x11") == 0x4444444444444444
    g.set_debug(0)
    end = g.run()
    assert isinstance(end, ExitStatus) and end.status == 0
    assert g.text.splitlines() == WATCH_OUTPUT


@pytest.mark.parametrize("label,esr,elr_off", [
    ("exc_svc", 0x56000042, 4),   # SVC: preferred return is past the SVC
    ("exc_brk", 0xF2000007, 0),   # BRK #7, USE_SW_BP off: the guest's own exception
    ("exc_udf", 0x02000000, 0),   # UDF: unknown reason
])
def test_step_into_exception_vector(guest_dir, label, esr, elr_off):
    g = Guest(guest_dir / "exceptions.elf")
    addr = g.sym[label]
    stop_at(g, addr)
    g.set_debug(STEP)
    vbar = g.reg("VBAR_EL1")
    assert vbar == g.sym["vectors"]
    assert step(g) == vbar + 0x200  # current EL with SP_ELx, synchronous
    assert g.reg("ESR_EL1") == esr
    assert g.reg("ELR_EL1") == addr + elr_off
    assert g.reg("SPSR_EL1") & 0x3FF == EL1H_DAIF
    assert g.reg("PSTATE") & 0x3FF == EL1H_DAIF
    # The next step is the vector's first instruction, nothing more.
    assert step(g) == vbar + 0x204
    g.set_debug(0)
    end = g.run()
    assert isinstance(end, ExitStatus) and end.status == 0
    lines = g.text.splitlines()
    assert lines[0] == "exceptions: start" and lines[-2:] == ["exceptions: count=5", "exceptions: done"]
    assert f"exc vec=4 EC=0x{esr >> 26:02x} ESR=0x{esr:08x} ELR=0x{addr + elr_off:08x} FAR=- " \
           "SPSR=0x600003c5" in lines


@pytest.mark.parametrize("label,off,size", [("acc_str_x", 8, 8), ("acc_stp", 0x28, 8), ("acc_str_q", 0x30, 1)])
def test_step_onto_watched_store_reports_the_watchpoint(guest_dir, label, off, size):
    g = Guest(guest_dir / "watch.elf")
    s, w = g.sym, g.sym["wdata"]
    stop_at(g, s[label])
    wps = [watchpoint(w + off, size, lsc=0b10)]
    g.set_debug(STEP, wps=wps)
    before = g.read(w, 64)
    run = g.run()
    assert ec(run) == 0x34 and run.debug.hsr == HSR_WATCH_STORE
    assert g.pc == s[label]
    assert g.read(w, 64) == before
    g.set_debug(STEP)
    assert step(g) == s[label] + 4
    assert g.read(w, 64) != before


def test_step_across_branches(guest_dir):
    g = Guest(guest_dir / "loop.elf")
    s = g.sym
    g.vm.write_phys(s["loop_iterations"], (3).to_bytes(8, "little"))
    bne = s["loop_body"] + 12
    assert insn_at(g, bne).mnemonic == "b.ne"
    stop_at(g, bne)
    g.set_debug(STEP)
    assert step(g) == s["loop_body"]  # taken backward branch: one instruction
    pcs = [step(g) for _ in range(4)]
    assert pcs == [s["loop_body"] + 4, s["loop_body"] + 8, bne, s["loop_body"]]
    for _ in range(4):
        step(g)
    assert g.pc == s["loop_end"]  # not taken on the last iteration
    # bl and ret: follow into the callee and back, one instruction at a time.
    pc = g.pc
    while insn_at(g, pc).mnemonic != "bl":
        pc = step(g)
        assert pc < s["loop_end"] + 64
    insn = insn_at(g, pc)
    target = int(insn.op_str.lstrip("#"), 16)
    assert step(g) == target
    assert g.reg("x30") == pc + 4


def test_step_branch_to_self(guest_dir):
    g = Guest(guest_dir / "hello.elf")
    spot = g.sym["main"]
    stop_at(g, spot)
    # No guest has a `b .`: write one at the far end of the stack (never reached by this guest's
    # shallow calls) and jump there, as a debugger's "set $pc" would.
    park = g.sym["__stack_bottom"]
    g.vm.write_phys(park, (0x14000000).to_bytes(4, "little"))  # b .
    g.vcpu.set_one_reg(reg_id("PC"), park)
    g.set_debug(STEP)
    for _ in range(3):
        assert step(g) == park


def test_thousand_steps_then_free_run(guest_dir):
    g = Guest(guest_dir / "watch.elf")
    g.set_debug(STEP)
    pc = g.pc
    for _ in range(1000):
        insn = insn_at(g, pc)
        new = step(g)
        m = insn.mnemonic
        if m in ("b", "bl"):
            assert new == int(insn.op_str.lstrip("#"), 16)
        elif m.startswith("b.") or m in ("cbz", "cbnz", "tbz", "tbnz"):
            assert new in (pc + 4, int(insn.op_str.split("#")[-1], 16))
        elif m not in CONTROL_FLOW:
            assert new == pc + 4, f"{m} {insn.op_str} at {pc:#x} stepped to {new:#x}"
        pc = new
    g.set_debug(0)
    end = g.run()
    assert isinstance(end, ExitStatus) and end.status == 0
    assert g.text.splitlines() == WATCH_OUTPUT


def test_many_steps_leave_no_hook_behind(guest_dir):
    """2,000 steps, then a free run: the per-step instrumentation (the countdown hook on every
    instruction, which makes a step one emu_start) is gone, so the free run is not slowed by
    it, and the guest's result is right. (The free-run speed itself is bench_vcpu's business.)"""
    elf = guest_dir / "loop.elf"
    g = Guest(elf)
    g.vm.write_phys(g.sym["loop_iterations"], (100_000).to_bytes(8, "little"))
    hooks_before = len(g.vcpu.uc._callbacks)
    g.set_debug(STEP)
    start = g.vcpu.icount
    for _ in range(2000):
        step(g)
    assert g.vcpu.icount == start + 2000
    assert g.sym["loop_body"] <= g.pc <= g.sym["loop_body"] + 12  # the steps reached the hot loop
    assert g.vcpu._step_hook is not None  # stepping in a row: the countdown is on every instruction
    g.set_debug(0)
    end = g.run()
    assert isinstance(end, ExitStatus) and end.status == 0 and g.text == "loop: done\n"
    assert g.vcpu._step_hook is None
    assert len(g.vcpu.uc._callbacks) == hooks_before
