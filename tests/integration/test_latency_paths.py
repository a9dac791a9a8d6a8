"""The shortcuts of issue 13's latency work keep the answers exact: a lone step from a block whose
countdown hook is kept installed (also after the block's code changes), the stack pointers read
in one register batch, the thread list as qXfer:threads, and the replies kept for repeated `m`."""

from __future__ import annotations

import random

import pytest

from guestdbg.arm import kvm_regs as kr
from guestdbg.arm import registers
from guestdbg.backends.unicorn_arm64.one_reg import CURRENT_SP
from guestdbg.debug.manager import GuestDebugManager, StopKind, WatchKind
from guestdbg.gdb.session import GdbSession, Reply
from tests.helpers.support import Guest

NOP = bytes.fromhex("1f2003d5")
# guests/watch's wdata after its stores (the line it prints), as tests/integration/test_watchpoints.py has it.
WATCH_GUEST_LINE = ("0011222233333333444444444444444400000055555555555555550000000000"
                    "6666666666666666777777777777777799999999999999998888888888888888")
B_NEXT = (0x14000001).to_bytes(4, "little")  # b .+4: a block of one instruction


@pytest.fixture
def loop(guest_dir):
    g = Guest(guest_dir / "loop.elf")
    m = GuestDebugManager(g.machine)
    m.write_memory(g.sym["loop_iterations"], (1 << 62).to_bytes(8, "little"))
    return g, m


def test_lone_steps_off_a_breakpoint_are_one_instruction_each_also_after_the_block_changes(loop):
    g, m = loop
    body = g.sym["loop_body"]
    m.add_breakpoint(body)
    assert m.cont().pc == body
    original = m.read_memory(body, 8)
    for code in (None, None, original[:4] + NOP, B_NEXT + original[4:], None, original, None):
        # gdb's continue from a breakpoint: z0, one step, Z0, continue.
        m.remove_breakpoint(body)
        if code is not None:
            m.write_memory(body, code)
        before = m.vcpu.icount
        event = m.step()
        assert event.kind is StopKind.STEP and event.pc == body + 4
        assert m.vcpu.icount == before + 1
        m.add_breakpoint(body)
        event = m.cont()
        assert event.kind is StopKind.SWBREAK and event.pc == body
        assert m.vcpu.icount == before + 4  # one loop turn: add (or b, or nop), eor, subs, b.ne


def test_steps_in_a_row_after_lone_steps_count_one_each(loop):
    g, m = loop
    body = g.sym["loop_body"]
    m.add_breakpoint(body)
    m.cont()
    m.remove_breakpoint(body)
    m.step()  # a lone step (kept countdown hook), then steps in a row (the hook on everything)
    pcs = []
    for _ in range(9):
        before = m.vcpu.icount
        pcs.append(m.step().pc)
        assert m.vcpu.icount == before + 1
    assert pcs == [body + 8, body + 12, body, body + 4, body + 8, body + 12, body, body + 4, body + 8]


@pytest.mark.parametrize("pstate", [0x3C5, 0x3C4, 0x3C0])  # EL1h, EL1t, EL0t
def test_stack_pointers_in_one_batch_read_as_one_by_one(guest_dir, pstate):
    g = Guest(guest_dir / "loop.elf")
    v = g.vcpu
    v.set_one_reg(kr.KVM_REG_ARM_CORE_PSTATE, pstate)
    v.set_one_reg(kr.KVM_REG_ARM_CORE_SP, 0x1000)
    v.set_one_reg(kr.KVM_REG_ARM_CORE_SP_EL1, 0x2000)
    current = 0x2000 if pstate & 0xC and pstate & 1 else 0x1000
    assert v.get_one_reg(CURRENT_SP) == current
    ids = v.get_reg_list()
    rng = random.Random(13)
    for _ in range(20):
        sample = rng.sample(ids, 30) + [kr.KVM_REG_ARM_CORE_SP, CURRENT_SP, kr.KVM_REG_ARM_CORE_SP_EL1]
        rng.shuffle(sample)
        assert v.get_one_regs(sample) == [v.get_one_reg(i) for i in sample]
    assert CURRENT_SP not in ids
    values = registers.read_all(v)
    assert values[registers.REG_SP] == current
    v.set_one_reg(CURRENT_SP, 0x3000)  # writes the one `sp` names, as rule 3 says
    assert v.get_one_reg(kr.KVM_REG_ARM_CORE_SP_EL1 if current == 0x2000 else kr.KVM_REG_ARM_CORE_SP) == 0x3000
    assert v.get_one_reg(kr.KVM_REG_ARM_CORE_SP if current == 0x2000 else kr.KVM_REG_ARM_CORE_SP_EL1) \
        == (0x1000 if current == 0x2000 else 0x2000)


def payload(action) -> bytes:
    assert isinstance(action, Reply), action
    return action.payload


def test_thread_list_as_qxfer(loop):
    g, m = loop
    s = GdbSession(m)
    assert b"qXfer:threads:read+" in payload(s.handle(b"qSupported:swbreak+"))
    doc = payload(s.handle(b"qXfer:threads:read::0,fff"))
    assert doc == (b'l<?xml version="1.0"?>\n<threads>\n<thread id="1" core="0">CPU#0 [running]</thread>\n'
                   b'</threads>\n')
    part = payload(s.handle(b"qXfer:threads:read::0,10"))
    assert part == b"m" + doc[1:17]
    assert payload(s.handle(b"qXfer:threads:read:x:0,fff")).startswith(b"E")


def test_repeated_m_replies_follow_writes_and_resumes(loop):
    g, m = loop
    s = GdbSession(m)
    body = g.sym["loop_body"]
    packet = b"m%x,4" % body
    first = payload(s.handle(packet))
    assert payload(s.handle(packet)) == first == m.read_memory(body, 4).hex().encode()
    assert payload(s.handle(b"M%x,4:%s" % (body, NOP.hex().encode()))) == b"OK"
    assert payload(s.handle(packet)) == NOP.hex().encode()
    m.write_memory(body, bytes.fromhex(first.decode()))  # the Python API's write, not a packet
    assert payload(s.handle(packet)) == first
    action = s.handle(b"vCont;s:1")  # a resume drops them: the next read asks the manager again
    s.stopped(action.run(m))
    assert payload(s.handle(packet)) == first


def test_a_page_no_longer_watched_is_plain_memory_until_and_after_the_next_continue(guest_dir):
    """gdb takes a watchpoint out and puts it back around every step: the page it was on keeps
    its protection until a continue (no change of permissions and hooks each time). Meanwhile
    every kind of access there, stepped one instruction at a time, must do what it does
    unwatched: single and pair stores, unaligned, SIMD, and the loads of what they stored."""
    g = Guest(guest_dir / "watch.elf")
    m = GuestDebugManager(g.machine)
    wdata = g.sym["wdata"]
    m.add_watchpoint(wdata + 0x1C, 4, WatchKind.ACCESS)  # bytes no instruction of the guest touches
    assert m.step().kind is StopKind.STEP
    m.remove_watchpoint(wdata + 0x1C, 4, WatchKind.ACCESS)
    assert g.vcpu._stale_pages  # (what this test is about: the page is still trapped)
    while m.vcpu.pc != g.sym["acc_end"] + 4 * 6:  # past the loads' values stored into wload
        assert m.step().kind is StopKind.STEP
    assert g.vcpu._stale_pages
    line = bytes.fromhex(WATCH_GUEST_LINE)
    assert m.read_memory(wdata, 64) == line
    wload = m.read_memory(g.sym["wload"], 48)
    assert wload == line[1:2] + bytes(7) + line[8:16] + line[0x20:0x30] + line[0x30:0x40]
    event = m.cont()  # the continue prunes the protection; the guest runs to its end
    assert event.kind is StopKind.EXITED and event.exit_status == 0
    assert not g.vcpu._stale_pages
    assert ("wdata: " + WATCH_GUEST_LINE) in bytes(g.output).decode()
