"""The GDB session layer (GdbSession.handle: one packet in, one action out).

The packet-to-manager mapping is tested against a fake vCPU and a fake manager; memory-fault
semantics, monitor snapshots and the fuzzing properties against a real VirtMachine."""

from __future__ import annotations

import errno
import hashlib
import re
import signal
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from guestdbg import kvm
from guestdbg.arm import kvm_regs as kr
from guestdbg.arm import registers as areg
from guestdbg.board.virt import VirtConfig
from guestdbg.debug.arch import BRK0
from guestdbg.debug.manager import DebugError, GuestDebugManager, StopEvent, StopKind, WatchKind
from guestdbg.debug.profile import AARCH64
from guestdbg.debug.regions import physical_layout
from guestdbg.gdb import aarch64_regs as regs
from guestdbg.gdb import rsp
from guestdbg.gdb.rsp import PACKET_SIZE
from guestdbg.gdb.session import Detach, GdbSession, Kill, Reply, Resume
from tests.helpers.support import Guest

# An error: Exx, or E.errtext (gdb shows the text; the session sends it for bs/bc before
# `monitor record on`, where it says how to start recording).
ERR = re.compile(rb"E[0-9a-f]{2}|E\.[ -~]+")


# ---------------------------------------------------------------------------------------------
# Fakes: just what the session uses of a vCPU, a VM and the manager


class FakeVcpu:
    def __init__(self):
        self.regs: dict[int, int] = {}
        for r in areg.REGISTERS:
            if r.one_reg_id is not None:
                self.regs[r.one_reg_id] = 0
        self.regs[kr.KVM_REG_ARM_CORE_SP] = 0
        self.regs[kr.KVM_REG_ARM_CORE_SP_EL1] = 0
        self.regs[kr.KVM_REG_ARM_CORE_PSTATE] = 0x3C5  # EL1h
        self.regs[kr.KVM_REG_ARM_CORE_PC] = 0x1000
        for i, reg_id in enumerate(sorted(self.regs)):
            if self.regs[reg_id] == 0:
                self.regs[reg_id] = 0x1111 * (i + 1)

    def get_one_reg(self, reg_id):
        return self.regs[reg_id]

    def set_one_reg(self, reg_id, value):
        if reg_id not in self.regs:
            raise kvm.KvmError(errno.ENOENT, "no such register")
        self.regs[reg_id] = value

    def get_reg_list(self):
        return list(self.regs)

    @property
    def pc(self):
        return self.regs[kr.KVM_REG_ARM_CORE_PC]


@dataclass
class FakeSlot:
    guest_phys_addr: int
    memory_size: int
    readonly: bool


class FakeVm:
    def __init__(self):
        self.slots = {0: FakeSlot(0, 0x1000, True), 1: FakeSlot(0x1000, 0x2000, False)}

    def check_extension(self, cap):
        return {kvm.KVM_CAP_GUEST_DEBUG_HW_BPS: 2, kvm.KVM_CAP_GUEST_DEBUG_HW_WPS: 3}.get(cap, 1)


@dataclass
class FakeMachine:
    vm: FakeVm = field(default_factory=FakeVm)


class FakeManager:
    """The target interface the session uses. Records breakpoint calls; memory is
    0x1000..0x3000, all-or-nothing like the real one; registers are the AArch64 catalogue's
    over a fake vCPU, refusals DebugErrors like the real one's."""

    profile = AARCH64
    sw_breakpoints = True
    hw_bp_slots = 2
    can_reverse = False  # recording now
    can_record = False   # could record

    def __init__(self, n_vcpus=1):
        self.machine = FakeMachine()
        self.vcpus = [FakeVcpu() for _ in range(n_vcpus)]
        for i, v in enumerate(self.vcpus):
            v.regs[kr.KVM_REG_ARM_CORE_PC] += 0x100 * i  # each vCPU somewhere else
        self.current_vcpu = 0
        self.states = ["running"] * n_vcpus
        self.mem = bytearray(range(256)) * 32
        self.calls: list[tuple] = []

    @property
    def vcpu(self):
        return self.vcpus[self.current_vcpu]

    def vcpu_ids(self):
        return list(range(len(self.vcpus)))

    def select_vcpu(self, vcpu_id):
        if not 0 <= vcpu_id < len(self.vcpus):
            raise DebugError(errno.ESRCH, "no such vCPU")
        self.current_vcpu = vcpu_id

    def vcpu_state(self, vcpu_id):
        return self.states[vcpu_id]

    def check_extension(self, cap):
        return self.machine.vm.check_extension(cap)

    def check_runnable(self, what="continue", vcpu=None):
        if vcpu is not None and self.states[vcpu] == "off":
            raise DebugError(errno.ESRCH, "off")  # the fake guest never exits

    def read_registers(self, numbers=None, *, vcpu=None):
        v = self.vcpus[self.current_vcpu if vcpu is None else vcpu]
        return areg.read_all(v) if numbers is None else areg.read(v, numbers)

    def read_register_at(self, number):
        return areg.read_one(self.vcpu, number)

    def write_register_at(self, number, value):
        try:
            areg.write(self.vcpu, number, value)
        except areg.RegisterError as e:
            raise DebugError(errno.EINVAL, str(e)) from None

    def write_all_registers(self, values):
        try:
            areg.write_all(self.vcpu, values)
        except areg.RegisterError as e:
            raise DebugError(errno.EINVAL, str(e)) from None

    def set_pc(self, pc):
        areg.set_pc(self.vcpu, pc)

    def memory_layout(self):
        return physical_layout(self.machine.vm)

    def _check(self, addr, n):
        if not (0x1000 <= addr and addr + n <= 0x3000):
            raise DebugError(errno.EFAULT, "unmapped")

    def read_memory(self, addr, n, *, physical=False):
        self._check(addr, n)
        return bytes(self.mem[addr - 0x1000:addr - 0x1000 + n])

    def write_memory(self, addr, data, *, physical=False):
        self._check(addr, len(data))
        self.mem[addr - 0x1000:addr - 0x1000 + len(data)] = data

    def _record(name):
        def f(self, *args):
            if args[0] == 0xDEAD:
                raise DebugError(errno.ENOSPC, "full")
            self.calls.append((name, *args))
        return f

    add_breakpoint = _record("add_breakpoint")
    remove_breakpoint = _record("remove_breakpoint")
    add_hw_breakpoint = _record("add_hw_breakpoint")
    remove_hw_breakpoint = _record("remove_hw_breakpoint")
    add_watchpoint = _record("add_watchpoint")
    remove_watchpoint = _record("remove_watchpoint")

    def breakpoints_lifted(self):
        import contextlib
        return contextlib.nullcontext()

    def slots_report(self):
        return ["hardware breakpoints: 0/2 used; hardware watchpoints: 0/3 used"]

    def remove_all(self):
        self.calls.append(("remove_all",))

    def debug_points(self):
        return []  # the fake holds nothing of its own: every stop is the client's


@pytest.fixture
def fake():
    m = FakeManager()
    return GdbSession(m), m


def payload(action) -> bytes:
    assert isinstance(action, Reply), action
    return action.payload


# ---------------------------------------------------------------------------------------------
# features and general packets (fake)


def test_qsupported_contents(fake):
    s, _ = fake
    p = payload(s.handle(b"qSupported:multiprocess+;xmlRegisters=i386;qRelocInsn+"))
    features = p.split(b";")
    assert b"PacketSize=%x" % PACKET_SIZE in features
    for f in (b"qXfer:features:read+", b"qXfer:memory-map:read+", b"QStartNoAckMode+",
              b"vContSupported+"):
        assert f in features
    assert b"swbreak+" not in features and b"hwbreak+" not in features


@pytest.mark.parametrize("offered", [[b"swbreak+"], [b"hwbreak+"], [b"swbreak+", b"hwbreak+"]])
def test_qsupported_swbreak_hwbreak_only_when_offered(fake, offered):
    s, _ = fake
    p = payload(s.handle(b"qSupported:multiprocess+;" + b";".join(offered)))
    for f in (b"swbreak+", b"hwbreak+"):
        assert (f in p.split(b";")) == (f in offered)


def test_qsupported_follows_the_target(fake):
    """hwbreak+ only with hardware breakpoint slots, swbreak+ only with software breakpoints
    (an x86 host without them has neither), reverse execution only for a target that offers it;
    a stop reason not agreed is not sent."""
    s, m = fake
    m.hw_bp_slots, m.sw_breakpoints = 0, False
    features = payload(s.handle(b"qSupported:swbreak+;hwbreak+")).split(b";")
    assert b"hwbreak+" not in features and b"swbreak+" not in features
    assert not any(f.startswith(b"Reverse") for f in features)
    assert b"PacketSize=%x" % PACKET_SIZE in features and b"QStartNoAckMode+" in features
    assert b"hwbreak:" not in s.stopped(StopEvent(StopKind.HWBREAK, 0x1000))
    m.hw_bp_slots = 4
    assert b"hwbreak+" in payload(s.handle(b"qSupported:swbreak+;hwbreak+")).split(b";")
    m.can_record = True  # offered as soon as the target could record, so `monitor record on` works later
    features = payload(s.handle(b"qSupported:swbreak+;hwbreak+")).split(b";")
    assert b"ReverseStep+" in features and b"ReverseContinue+" in features
    calls = list(m.calls)
    assert payload(s.handle(b"bs")).startswith(b"E.not recording")  # an error gdb shows, nothing done
    assert m.calls == calls
    m.can_reverse = True
    assert s.handle(b"bs") == Resume(step=True, reverse=True)
    assert s.handle(b"bc") == Resume(step=False, reverse=True)


def test_no_ack_mode_and_unknown_packets(fake):
    s, _ = fake
    assert s.handle(b"QStartNoAckMode") == Reply(b"OK", start_no_ack=True)  # the server switches on this
    assert s.handle(b"QStartNoAckMode:1") == Reply(b"")
    assert not s.handle(b"QEnableErrorStrings").start_no_ack
    for p in (b"qFooBar", b"vMustReplyEmpty", b"!", b"bc", b"bs", b"QNonStop:1", b"vFile:open:x",
              b"qTStatus", b"qOffsets", b"jThreadsInfo", b"Z5,1000,4"):
        assert payload(s.handle(p)) == b"", p


def test_question_mark_before_any_stop(fake):
    s, _ = fake
    assert payload(s.handle(b"?")) == b"T05thread:1;"


def test_g_and_G_round_trip(fake):
    s, m = fake
    g = payload(s.handle(b"g"))
    assert len(g) == regs.G_PACKET_HEX_LEN and re.fullmatch(rb"[0-9a-f]+", g)
    assert g[:16] == m.vcpu.regs[kr.KVM_REG_ARM_CORE_X(0)].to_bytes(8, "little").hex().encode()
    new = b"efbeadde00000000" + g[16:]
    assert payload(s.handle(b"G" + new)) == b"OK"
    assert m.vcpu.regs[kr.KVM_REG_ARM_CORE_X(0)] == 0xDEADBEEF
    assert payload(s.handle(b"g")) == new


@pytest.mark.parametrize("bad", [b"G", b"G00", b"Gzz", None])
def test_G_bad_is_error_and_changes_nothing(fake, bad):
    s, m = fake
    g = payload(s.handle(b"g"))
    if bad is None:
        bad = b"G" + g[:-2] + b"zz"
    before = dict(m.vcpu.regs)
    assert ERR.fullmatch(payload(s.handle(bad)))
    assert m.vcpu.regs == before


def test_p_and_P(fake):
    s, m = fake
    pc = regs.REG_PC
    assert payload(s.handle(b"p%x" % pc)) == (0x1000).to_bytes(8, "little").hex().encode()
    assert payload(s.handle(b"P%x=0020000000000000" % pc)) == b"OK"
    assert m.vcpu.pc == 0x2000
    v0 = regs.BY_NAME["v0"]
    assert len(payload(s.handle(b"p%x" % v0.gdb_regnum))) == 32
    before = dict(m.vcpu.regs)
    n = len(regs.REGISTERS)
    for bad in (b"p%x" % n, b"pffffffff", b"p", b"pxyz", b"P%x=0000000000000000" % n,
                b"P%x=00" % pc, b"P%x=zz00000000000000" % pc, b"P%x" % pc, b"P=00"):
        assert ERR.fullmatch(payload(s.handle(bad))), bad
    assert m.vcpu.regs == before


def test_P_read_only_register_refused(fake):
    s, m = fake
    midr = regs.BY_NAME["midr_el1"]
    before = dict(m.vcpu.regs)
    assert ERR.fullmatch(payload(s.handle(b"P%x=0100000000000000" % midr.gdb_regnum)))
    assert m.vcpu.regs == before


def test_m_M_X_on_the_fake(fake):
    s, m = fake
    assert payload(s.handle(b"m1000,4")) == b"00010203"
    assert payload(s.handle(b"M1002,2:aabb")) == b"OK"
    assert m.mem[:4] == b"\x00\x01\xaa\xbb"
    data = bytes([0x23, 0x24, 0x7D, 0x2A, 0x00, 0x03, 0xFF])
    # X carries binary; the protocol core has already removed escapes, so the payload is raw.
    assert payload(s.handle(b"X1010,%x:" % len(data) + data)) == b"OK"
    assert bytes(m.mem[0x10:0x17]) == data
    assert payload(s.handle(b"X1010,0:")) == b"OK"  # gdb's probe for X support


def test_X_from_the_wire_with_escaped_bytes(fake):
    s, m = fake
    data = bytes([0x7D, 0x23, 0x24, 0x2A, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41])
    conn = rsp.RspConnection()
    body = b"X1020,%x:" % len(data) + bytes(
        x for b in data for x in ((0x7D, b ^ 0x20) if b in (0x23, 0x24, 0x7D, 0x2A) else (b,)))
    conn.receive_data(b"$" + body + b"#%02x" % rsp.checksum(body))
    event = conn.next_event()
    assert isinstance(event, rsp.Packet)
    assert payload(s.handle(event.payload)) == b"OK"
    assert bytes(m.mem[0x20:0x20 + len(data)]) == data


@pytest.mark.parametrize("bad", [
    b"M1000,4:aabb",          # fewer bytes than the length
    b"M1000,1:aabb",          # more
    b"M1000,2:zzzz",          # not hex
    b"M1000,2:aab",           # odd digits
    b"M1000,2",               # no data
    b"M1000:aabb",            # no length
    b"X1000,4:ab",            # X shorter than its length
    b"m1000",                 # no length
    b"mzz,4",
    b"m1000,-4",
    b"m%x,4" % (1 << 64),     # address out of range
    b"m1000,%x" % (1 << 40),  # length out of range
    b"M%x,1:00" % (1 << 64),
])
def test_malformed_memory_packets_are_errors_and_change_nothing(fake, bad):
    s, m = fake
    before = bytes(m.mem)
    assert ERR.fullmatch(payload(s.handle(bad))), payload(s.handle(bad))
    assert bytes(m.mem) == before


def test_M_wrong_length_is_einval(fake):
    s, _ = fake
    assert payload(s.handle(b"M1000,4:aabb")) == b"E%02x" % errno.EINVAL


@pytest.mark.parametrize("packet,call", [
    (b"Z0,1004,4", ("add_breakpoint", 0x1004)),
    (b"z0,1004,4", ("remove_breakpoint", 0x1004)),
    (b"Z1,1008,4", ("add_hw_breakpoint", 0x1008)),
    (b"z1,1008,4", ("remove_hw_breakpoint", 0x1008)),
    (b"Z2,2003,3", ("add_watchpoint", 0x2003, 3, WatchKind.WRITE)),
    (b"z2,2003,3", ("remove_watchpoint", 0x2003, 3, WatchKind.WRITE)),
    (b"Z3,2000,40", ("add_watchpoint", 0x2000, 0x40, WatchKind.READ)),
    (b"z3,2000,40", ("remove_watchpoint", 0x2000, 0x40, WatchKind.READ)),
    (b"Z4,2001,1", ("add_watchpoint", 0x2001, 1, WatchKind.ACCESS)),
    (b"z4,2001,1", ("remove_watchpoint", 0x2001, 1, WatchKind.ACCESS)),
    (b"Z0,1004,4;X1,0", ("add_breakpoint", 0x1004)),  # conditions are ignored, not an error
])
def test_Z_z_packets_map_to_the_manager(fake, packet, call):
    s, m = fake
    assert payload(s.handle(packet)) == b"OK"
    assert m.calls == [call]


@pytest.mark.parametrize("packet", [b"Z0,dead,4", b"Z1,dead,4", b"Z2,dead,4"])
def test_Z_manager_error_becomes_Exx(fake, packet):
    s, m = fake
    assert payload(s.handle(packet)) == b"E%02x" % errno.ENOSPC
    assert m.calls == []


@pytest.mark.parametrize("packet", [b"Z0", b"Z0,1000", b"Z0,zz,4", b"Zx,1000,4", b"z0,1000,4,5"])
def test_Z_malformed(fake, packet):
    s, m = fake
    assert ERR.fullmatch(payload(s.handle(packet)))
    assert m.calls == []


def test_vcont_query_and_actions(fake):
    s, m = fake
    assert payload(s.handle(b"vCont?")) == b"vCont;c;C;s;S;t"
    assert s.handle(b"vCont;c") == Resume(step=False)
    assert s.handle(b"vCont;s:1") == Resume(step=True, vcpu=0, alone=True)
    assert s.handle(b"vCont;s:p1.1;c") == Resume(step=True, vcpu=0, alone=True)  # no other thread to run
    assert s.handle(b"vCont;C05:1") == Resume(step=False)
    assert s.handle(b"vCont;S05") == Resume(step=True, vcpu=0, alone=True)
    assert s.handle(b"vCont;c:-1") == Resume(step=False)
    assert payload(s.handle(b"vCont;t")) == b"OK"  # all-stop: stopped already
    for bad in (b"vCont;x", b"vCont;", b"vCont;s:2", b"vCont;s:2;c"):  # no thread 2
        assert ERR.fullmatch(payload(s.handle(bad))), bad
    assert m.vcpu.pc == 0x1000


def test_legacy_resume_with_address(fake):
    s, m = fake
    assert s.handle(b"c") == Resume(step=False)
    assert s.handle(b"s") == Resume(step=True)
    assert s.handle(b"s1100") == Resume(step=True)
    assert m.vcpu.pc == 0x1100
    assert s.handle(b"C05;1200") == Resume(step=False)
    assert m.vcpu.pc == 0x1200
    assert ERR.fullmatch(payload(s.handle(b"czz")))
    assert m.vcpu.pc == 0x1200


def _xfer_all(s: GdbSession, prefix: bytes, chunk: int) -> bytes:
    doc, offset = b"", 0
    for _ in range(10_000):
        p = payload(s.handle(prefix + b"%x,%x" % (offset, chunk)))
        assert p[:1] in (b"m", b"l"), p[:40]
        assert len(p) - 1 <= chunk
        doc += p[1:]
        offset += len(p) - 1
        if p[:1] == b"l":
            return doc
        assert len(p) > 1, "an 'm' reply must carry data"
    raise AssertionError("qXfer never ended")


@pytest.mark.parametrize("chunk", [0x10, 0x3FF, 0x1000, 0x10000])
def test_qxfer_target_xml_chunks(fake, chunk):
    s, _ = fake
    doc = _xfer_all(s, b"qXfer:features:read:target.xml:", chunk)
    assert doc == regs.target_xml().encode()
    assert payload(s.handle(b"qXfer:features:read:target.xml:%x,10" % len(doc))) == b"l"
    assert ERR.fullmatch(payload(s.handle(b"qXfer:features:read:other.xml:0,10")))
    assert ERR.fullmatch(payload(s.handle(b"qXfer:features:read:target.xml:zz,10")))


def test_qxfer_data_is_not_escaped_twice(fake):
    """The protocol core escapes when framing; the session must hand it the raw document."""
    s, _ = fake
    s._target_xml = b"<a>}#$*</a>"
    p = payload(s.handle(b"qXfer:features:read:target.xml:0,100"))
    assert p == b"l<a>}#$*</a>"
    conn = rsp.RspConnection()
    conn.send_packet(p)
    wire = conn.data_to_send()
    assert rsp.decode_payload(wire[1:-3]) == p


def test_qxfer_memory_map(fake):
    s, _ = fake
    doc = _xfer_all(s, b"qXfer:memory-map:read::", 0x40).decode()
    assert '<memory type="rom" start="0x0" length="0x1000"' in doc
    # Past the ROM, every address is "ram": gdb's addresses are virtual, so it must ask the
    # stub rather than refuse addresses outside the physical slots.
    assert '<memory type="ram" start="0x1000" length="0xffffffffffffefff"' in doc


def test_thread_packets(fake):
    s, _ = fake
    assert payload(s.handle(b"qfThreadInfo")) == b"m1"
    assert payload(s.handle(b"qsThreadInfo")) == b"l"
    assert payload(s.handle(b"qC")) == b"QC1"
    for p in (b"Hg0", b"Hg1", b"Hc-1", b"Hc0", b"Hgp1.1"):
        assert payload(s.handle(p)) == b"OK", p
    assert payload(s.handle(b"T1")) == b"OK"
    assert ERR.fullmatch(payload(s.handle(b"T2")))
    assert ERR.fullmatch(payload(s.handle(b"Tzz")))
    assert payload(s.handle(b"qAttached")) == b"1"
    assert payload(s.handle(b"qAttached:1")) == b"1"


def test_smp_thread_packets():
    """Four vCPUs: one thread each (vCPU id + 1), Hg/Hc checked, QEMU's qThreadExtraInfo."""
    m = FakeManager(n_vcpus=4)
    s = GdbSession(m)
    assert payload(s.handle(b"qfThreadInfo")) == b"m1,2,3,4"
    assert payload(s.handle(b"qsThreadInfo")) == b"l"
    m.states[1] = "halted"
    assert bytes.fromhex(payload(s.handle(b"qThreadExtraInfo,1")).decode()) == b"CPU#0 [running]"
    assert bytes.fromhex(payload(s.handle(b"qThreadExtraInfo,2")).decode()) == b"CPU#1 [halted ]"
    for bad in (b"qThreadExtraInfo,5", b"qThreadExtraInfo,0", b"qThreadExtraInfo", b"T5", b"T0x",
                b"Hg5", b"Hc5", b"Hx1", b"Hgzz"):
        assert ERR.fullmatch(payload(s.handle(bad))), bad
    assert m.current_vcpu == 0 and payload(s.handle(b"qC")) == b"QC1"
    assert payload(s.handle(b"Hg3")) == b"OK" and m.current_vcpu == 2
    assert payload(s.handle(b"g")) == regs.encode_g(areg.read_all(m.vcpus[2]))
    assert payload(s.handle(b"Hg7")) != b"OK" and m.current_vcpu == 2  # nothing changes
    for any_thread in (b"Hg0", b"Hg-1"):
        assert payload(s.handle(any_thread)) == b"OK" and m.current_vcpu == 2
    assert payload(s.handle(b"Hgp1.4")) == b"OK" and m.current_vcpu == 3
    assert payload(s.handle(b"T4")) == b"OK"


def test_smp_vcont_actions():
    m = FakeManager(n_vcpus=4)
    s = GdbSession(m)
    assert s.handle(b"vCont;s:3;c") == Resume(step=True, vcpu=2, alone=False)
    assert s.handle(b"vCont;s:p1.3;c:-1") == Resume(step=True, vcpu=2, alone=False)
    assert s.handle(b"vCont;s:3") == Resume(step=True, vcpu=2, alone=True)
    assert s.handle(b"vCont;c:2") == Resume(step=False, vcpu=1, alone=True)
    assert s.handle(b"vCont;c:2;t") == Resume(step=False, vcpu=1, alone=True)
    assert s.handle(b"vCont;c") == Resume(step=False)
    assert s.handle(b"vCont;C05") == Resume(step=False)
    # `s` for every thread: the current one steps, the others wait.
    m.current_vcpu = 1
    assert s.handle(b"vCont;s") == Resume(step=True, vcpu=1, alone=True)
    assert payload(s.handle(b"vCont;t")) == b"OK"
    m.states[3] = "off"
    for bad in (b"vCont;s:5", b"vCont;c:9;c", b"vCont;s:4", b"vCont;c:4"):
        assert ERR.fullmatch(payload(s.handle(bad))), bad
    # Plain c/s act on the Hc thread: one thread alone, or (Hc0/Hc-1) all of them.
    assert payload(s.handle(b"Hc2")) == b"OK"
    assert s.handle(b"s") == Resume(step=True, vcpu=1, alone=True)
    assert s.handle(b"c") == Resume(step=False, vcpu=1, alone=True)
    assert payload(s.handle(b"Hc0")) == b"OK"
    assert s.handle(b"s") == Resume(step=True) and s.handle(b"c") == Resume(step=False)


def test_smp_stop_reply_names_the_thread_and_makes_it_current():
    m = FakeManager(n_vcpus=3)
    s = GdbSession(m)
    p = s.stopped(StopEvent(StopKind.SIGNAL, m.vcpus[2].pc, signal=signal.SIGINT, vcpu_id=2))
    assert p.startswith(b"T02") and b"thread:3;" in p
    # The expedited registers are that vCPU's, whichever one is current.
    for n, hexval in regs.encode_expedited(areg.read(m.vcpus[2], regs.EXPEDITED_REGNUMS)).items():
        assert b"%02x:%s;" % (n, hexval) in p
    assert s.selected_thread[b"g"] == 3
    assert payload(s.handle(b"?")) == p


def test_session_ending_packets(fake):
    s, _ = fake
    assert isinstance(s.handle(b"D"), Detach)
    assert isinstance(s.handle(b"D;1"), Detach)
    assert s.handle(b"k") == Kill(reply=False)
    assert s.handle(b"vKill;1") == Kill(reply=True)


# ---------------------------------------------------------------------------------------------
# stop replies (fake)


def _expedited_ok(p: bytes, vcpu) -> None:
    assert b"thread:1;" in p
    for n, hexval in regs.encode_expedited(areg.read(vcpu, regs.EXPEDITED_REGNUMS)).items():
        assert b"%02x:%s;" % (n, hexval) in p


@pytest.mark.parametrize("offered", [True, False])
def test_stop_reply_breakpoints(fake, offered):
    s, m = fake
    if offered:
        s.handle(b"qSupported:swbreak+;hwbreak+")
    p = s.stopped(StopEvent(StopKind.SWBREAK, 0x1000))
    assert p.startswith(b"T05")
    _expedited_ok(p, m.vcpu)
    assert (b"swbreak:;" in p) == offered
    p = s.stopped(StopEvent(StopKind.HWBREAK, 0x1000))
    assert p.startswith(b"T05") and (b"hwbreak:;" in p) == offered
    assert b"swbreak" not in p
    assert payload(s.handle(b"?")) == p  # '?' repeats the last stop


@pytest.mark.parametrize("kind", list(WatchKind))
def test_stop_reply_watch(fake, kind):
    s, m = fake
    p = s.stopped(StopEvent(StopKind.WATCH, 0x1000, watch_kind=kind, watch_addr=0x2003))
    assert p.startswith(b"T05")
    _expedited_ok(p, m.vcpu)
    assert re.search(rb"(^|;)%s:2003;" % kind.value.encode(), p[3:]), p
    others = {"watch", "rwatch", "awatch"} - {kind.value}
    for o in others:
        assert not re.search(rb"(^|;)%s:" % o.encode(), p[3:])


@pytest.mark.parametrize("sig,prefix", [(signal.SIGINT, b"T02"), (signal.SIGSEGV, b"T0b"),
                                        (signal.SIGILL, b"T04")])
def test_stop_reply_signals(fake, sig, prefix):
    s, m = fake
    p = s.stopped(StopEvent(StopKind.SIGNAL, 0x1000, signal=sig))
    assert p.startswith(prefix)
    _expedited_ok(p, m.vcpu)


def test_stop_reply_step_and_exit(fake):
    s, _ = fake
    assert s.stopped(StopEvent(StopKind.STEP, 0x1004)).startswith(b"T05")
    assert s.stopped(StopEvent(StopKind.EXITED, 0, exit_status=7)) == b"W07"
    assert s.stopped(StopEvent(StopKind.EXITED, 0, exit_status=0)) == b"W00"
    assert payload(s.handle(b"?")) == b"W00"


def test_monitor_on_the_fake(fake):
    s, m = fake
    r = s.handle(b"qRcmd," + b"help".hex().encode())
    assert isinstance(r, Reply) and r.payload.startswith(b"O") and r.then == (b"OK",)
    text = bytes.fromhex(r.payload[1:].decode()).decode()
    for cmd in ("info caps", "info slots", "snapshot save", "snapshot load"):
        assert cmd in text
    r = s.handle(b"qRcmd," + b"info slots".hex().encode())
    assert b"0/2 used" in bytes.fromhex(r.payload[1:].decode())
    r = s.handle(b"qRcmd," + b"info caps".hex().encode())
    caps = bytes.fromhex(r.payload[1:].decode()).decode()
    assert re.search(r"KVM_CAP_GUEST_DEBUG_HW_BPS\s+\d+\s+0x2\b", caps)
    assert re.search(r"KVM_CAP_GUEST_DEBUG_HW_WPS\s+\d+\s+0x3\b", caps)
    r = s.handle(b"qRcmd," + b"frobnicate".hex().encode())
    assert b"unknown monitor command" in bytes.fromhex(r.payload[1:].decode())
    assert ERR.fullmatch(payload(s.handle(b"qRcmd,zz")))


# ---------------------------------------------------------------------------------------------
# Real machine


@pytest.fixture
def real(guest_dir):
    g = Guest(guest_dir / "bp_targets.elf")
    m = GuestDebugManager(g.machine)
    return g, m, GdbSession(m)


RAM_END = 0x4000_0000 + (128 << 20)


def test_real_m_reads_and_unmapped_is_error_never_partial(real):
    g, m, s = real
    a = g.sym["bp_a"]
    assert payload(s.handle(b"m%x,10" % a)) == g.read(a, 16).hex().encode()
    for addr, n in ((0x7FF0_0000, 4), (RAM_END - 4, 8), (0x0900_0000, 4), (0x0800_0000, 4),
                    (0x3FFF_FFFC, 8), ((1 << 64) - 4, 4), ((1 << 64) - 4, 8)):
        p = payload(s.handle(b"m%x,%x" % (addr, n)))
        assert ERR.fullmatch(p), (hex(addr), p)
    assert payload(s.handle(b"m%x,4" % (RAM_END - 4))) == g.read(RAM_END - 4, 4).hex().encode()


def test_real_m_large_is_capped_not_refused(real):
    g, m, s = real
    p = payload(s.handle(b"m40100000,100000"))
    assert 0 < len(p) <= PACKET_SIZE and len(p) % 2 == 0
    assert bytes.fromhex(p.decode()) == g.read(0x4010_0000, len(p) // 2)


def test_real_m_shows_original_under_breakpoint(real):
    g, m, s = real
    m.in_run_breakpoints = False  # a BRK patch (policy 18 patches nothing)
    a = g.sym["bp_a"]
    orig = g.read(a, 8)
    assert payload(s.handle(b"Z0,%x,4" % a)) == b"OK"
    assert g.read(a, 4) == BRK0
    assert payload(s.handle(b"m%x,8" % a)) == orig.hex().encode()
    assert payload(s.handle(b"M%x,4:1f2003d5" % a)) == b"OK"
    assert g.read(a, 4) == BRK0
    assert payload(s.handle(b"z0,%x,4" % a)) == b"OK"
    assert g.read(a, 4) == bytes.fromhex("1f2003d5")
    assert ERR.fullmatch(payload(s.handle(b"z0,%x,4" % a)))


@pytest.mark.parametrize("packet", [
    b"M%x,8:1122334455667788" % (RAM_END - 4),   # straddles the end of RAM
    b"X%x,8:abcdefgh" % (RAM_END - 4),
    b"M%x,4:11223344" % 0x0900_0000,             # MMIO (UART)
    b"X%x,4:abcd" % 0x7FF0_0000,                 # unassigned
    b"M%x,2000:" % (RAM_END - 0x1000) + b"ab" * 0x2000,  # a page in, a page out
])
def test_real_writes_to_unmapped_or_mmio_change_nothing(real, packet):  # ROM: test_stub_manners
    g, m, s = real
    before = (g.read(RAM_END - 0x2000, 0x2000), g.read(0, 0x1000))
    out = bytearray(g.output)
    p = payload(s.handle(packet))
    assert ERR.fullmatch(p), p
    assert (g.read(RAM_END - 0x2000, 0x2000), g.read(0, 0x1000)) == before
    assert g.output == out  # nothing reached the UART


def test_real_breakpoint_past_the_end_of_ram_is_efault(real):
    """A BRK that would straddle the end of RAM is refused (EFAULT), nothing patched (found by
    the fuzz test once back-end errors stopped being turned into error replies wholesale)."""
    g, m, s = real
    m.in_run_breakpoints = False  # a BRK patch (policy 18 patches nothing)
    before = g.read(RAM_END - 4, 4)
    assert payload(s.handle(b"Z0,%x,4" % (RAM_END - 3))) == b"E%02x" % errno.EFAULT
    assert g.read(RAM_END - 4, 4) == before and m.debug_points() == []


def test_real_breakpoints_and_slots(real):
    g, m, s = real
    s.handle(b"qSupported:swbreak+;hwbreak+")
    assert payload(s.handle(b"Z1,%x,4" % g.sym["bp_b"])) == b"OK"
    for i in range(1, m.hw_bp_slots):
        assert payload(s.handle(b"Z1,%x,4" % (0x4000_0000 + 4 * i))) == b"OK"
    slots = m.slots_report()
    assert payload(s.handle(b"Z1,%x,4" % g.sym["bp_c"])) == b"E%02x" % errno.ENOSPC
    assert m.slots_report() == slots
    r = s.handle(b"qRcmd," + b"info slots".hex().encode())
    text = bytes.fromhex(r.payload[1:].decode()).decode()
    assert f"hbreak  {g.sym['bp_b']:#x}  slot 0" in text
    for i in range(1, m.hw_bp_slots):
        assert payload(s.handle(b"z1,%x,4" % (0x4000_0000 + 4 * i))) == b"OK"
    assert payload(s.handle(b"Z2,%x,3" % (g.sym["bp_c_count"] + 6))) == b"OK"  # straddles
    text = bytes.fromhex(s.handle(b"qRcmd," + b"info slots".hex().encode()).payload[1:].decode()).decode()
    assert f"watch   {g.sym['bp_c_count'] + 6:#x}+3  hw:0,1" in text
    assert payload(s.handle(b"z2,%x,3" % (g.sym["bp_c_count"] + 6))) == b"OK"  # (.bss zeroing)
    assert isinstance(s.handle(b"vCont;c"), Resume)
    e = m.cont()
    assert e.kind is StopKind.HWBREAK and e.pc == g.sym["bp_b"]
    p = s.stopped(e)
    assert p.startswith(b"T05") and b"hwbreak:;" in p
    assert b"20:%s;" % g.sym["bp_b"].to_bytes(8, "little").hex().encode() in p


def _snapshot_cmd(s, words: str) -> str:
    r = s.handle(b"qRcmd," + words.encode().hex().encode())
    assert isinstance(r, Reply)
    if r.payload == b"OK":
        return ""
    assert r.payload.startswith(b"O") and r.then == (b"OK",), r
    return bytes.fromhex(r.payload[1:].decode()).decode()


def test_monitor_snapshot_save_and_load(real, tmp_path):
    """The monitor's snapshots are the manager's: the file never holds a breakpoint patch, and
    the debugger's breakpoints and watchpoints stay armed across a load (as across a reset)."""
    g, m, s = real
    a = g.sym["bp_a"]
    original = g.read(a, 4)
    assert payload(s.handle(b"Z0,%x,4" % a)) == b"OK"
    e = m.cont()
    assert e.pc == a
    path = tmp_path / "vm.snap"
    text = _snapshot_cmd(s, f"snapshot save {path}")
    assert "saved" in text and path.is_file()
    regs_before = payload(s.handle(b"g"))
    mem_before = g.read(0x4010_0000, 0x2000)
    assert payload(s.handle(b"P0=efbeadde00000000")) == b"OK"
    assert payload(s.handle(b"M40100000,4:00000000")) == b"OK"
    text = _snapshot_cmd(s, f"snapshot load {path}")
    assert "loaded" in text and "breakpoints and watchpoints kept" in text
    assert payload(s.handle(b"g")) == regs_before
    # The breakpoint stays armed over the restored code (BRK in guest memory, the original
    # shown to the debugger); the M before the load is undone.
    assert g.read(0x4010_0000, 0x2000) == mem_before
    assert g.read(a, 4) == (original if m.in_run_breakpoints else BRK0) and m.read_memory(a, 4) == original
    assert [p.addr for p in m.debug_points()] == [a] and s.owns(m.debug_points()[0])
    # The file holds no debugger state: the BRK was never saved into its memory.
    from guestdbg import snapshot
    assert snapshot.load(path, console=lambda b: None).vm.read_phys(a, 4) == original
    # Stopped where the snapshot was taken: resuming steps over the breakpoint, whose next hit
    # is bp_a's next call.
    e = m.cont()
    assert e.kind is StopKind.SWBREAK and e.pc == a


def test_monitor_snapshot_bad_paths_refused(real, tmp_path):
    g, m, s = real
    missing_dir = tmp_path / "nope" / "vm.snap"
    text = _snapshot_cmd(s, f"snapshot save {missing_dir}")
    assert text.startswith("error:") and "does not exist" in text
    assert not missing_dir.parent.exists()
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    link = tmp_path / "link.snap"
    link.symlink_to(victim)
    text = _snapshot_cmd(s, f"snapshot save {link}")
    assert text.startswith("error:") and "symbolic link" in text
    assert victim.read_bytes() == b"precious" and link.is_symlink()
    text = _snapshot_cmd(s, f"snapshot load {link}")
    assert text.startswith("error:")
    text = _snapshot_cmd(s, f"snapshot load {tmp_path / 'absent.snap'}")
    assert text.startswith("error:")
    (tmp_path / "garbage.snap").write_bytes(b"not a snapshot")
    regs_before = payload(s.handle(b"g"))
    text = _snapshot_cmd(s, f"snapshot load {tmp_path / 'garbage.snap'}")
    assert text.startswith("error:")
    assert payload(s.handle(b"g")) == regs_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.snap", "link.snap", "victim"]


# ---------------------------------------------------------------------------------------------
# Fuzzing: any packet -> a reply, never an exception; a rejected packet changes nothing

FUZZ_RAM = 2 << 20
FUZZ_RAM_END = 0x4000_0000 + FUZZ_RAM
BASES = [0, 0x100, 0x0900_0000, 0x4000_0000, 0x4010_0000, FUZZ_RAM_END - 0x1000,
         FUZZ_RAM_END - 8, FUZZ_RAM_END, 0x7FF0_0000, (1 << 64) - 8, 1 << 64, 1 << 70]
REAL_PACKETS = [
    b"g", b"?", b"p20", b"P0=0100000000000000", b"m40100000,10", b"M40100000,4:1f2003d5",
    b"X40100000,4:\x1f\x20\x03\xd5", b"Z0,40100010,4", b"z0,40100010,4", b"Z1,40100020,4",
    b"z1,40100020,4", b"Z2,40101000,8", b"z2,40101000,8", b"Z3,40101003,3", b"Z4,40101000,40",
    b"vCont?", b"vCont;s:1", b"vCont;c", b"qSupported:swbreak+;hwbreak+",
    b"qXfer:features:read:target.xml:0,fff", b"qXfer:memory-map:read::0,fff", b"qfThreadInfo",
    b"qsThreadInfo", b"qC", b"Hg0", b"T1", b"qAttached", b"qRcmd,696e666f20736c6f7473",
    b"qRcmd,68656c70", b"QStartNoAckMode", b"c", b"s", b"C05", b"vMustReplyEmpty",
]
MUTATING = set(b"GPMXZzcsCSvQq")


@st.composite
def packets(draw):
    which = draw(st.integers(0, 5))
    if which == 0:
        return draw(st.binary(max_size=80))
    if which == 1:  # a real packet, truncated and/or with garbage
        p = draw(st.sampled_from(REAL_PACKETS))
        p = p[:draw(st.integers(0, len(p)))] if draw(st.booleans()) else p
        return p + draw(st.binary(max_size=8))
    if which == 2:  # a real packet with some bytes replaced
        p = bytearray(draw(st.sampled_from(REAL_PACKETS)))
        for _ in range(draw(st.integers(1, 3))):
            if p:
                p[draw(st.integers(0, len(p) - 1))] = draw(st.sampled_from(b"g-+x,:;=\x00\xff zZ0f"))
        return bytes(p)
    addr = draw(st.sampled_from(BASES)) + draw(st.integers(-16, 16))
    length = draw(st.one_of(st.integers(0, 32), st.sampled_from([0x1000, 0x2000, 1 << 31, (1 << 32) - 1,
                                                                1 << 32, 1 << 64]),
                            st.integers(0, 1 << 70)))
    addr_hex = (b"%x" % addr) if addr >= 0 else (b"-%x" % -addr)
    if which == 3:
        letter = draw(st.sampled_from([b"m", b"M", b"X"]))
        data = draw(st.binary(max_size=40))
        if letter == b"M":
            data = data.hex().encode() if draw(st.booleans()) else data
        return letter + addr_hex + b",%x" % length + (b":" + data if letter != b"m" else b"")
    if which == 4:
        n = draw(st.one_of(st.integers(0, 200), st.integers(0, 1 << 70)))
        value = draw(st.one_of(st.binary(max_size=40).map(lambda b: b.hex().encode()),
                               st.binary(max_size=20)))
        return draw(st.sampled_from([b"p%x" % n, b"P%x=" % n + value, b"P%x" % n]))
    kind = draw(st.integers(0, 6))
    return b"%s%d,%s,%x" % (draw(st.sampled_from([b"Z", b"z"])), kind, addr_hex, length)


def _vm_state(g: Guest, m: GuestDebugManager):
    vcpu = g.machine.vcpu
    ram = hashlib.blake2b(g.read(0x4000_0000, FUZZ_RAM)).hexdigest()
    rom = hashlib.blake2b(g.read(0, 0x2000)).hexdigest()
    return ({r: vcpu.get_one_reg(r) for r in vcpu.get_reg_list()}, ram, rom, m.slots_report(),
            bytes(g.output))


@pytest.fixture(scope="module")
def fuzz_target(guest_dir):
    g = Guest(guest_dir / "bp_targets.elf", VirtConfig(ram_size=FUZZ_RAM))
    m = GuestDebugManager(g.machine)
    m.add_breakpoint(g.sym["bp_a"])
    m.add_watchpoint(g.sym["bp_b_count"], 4, WatchKind.WRITE)
    return g, m


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(p=packets())
@example(p=b"bc")  # not recording: E.errtext, which the search found only now and then
@example(p=b"bs")
def test_fuzz_session_never_raises_and_rejections_change_nothing(fuzz_target, p):
    g, m = fuzz_target
    s = GdbSession(m)
    before = _vm_state(g, m)
    action = s.handle(p)
    assert isinstance(action, (Reply, Resume, Detach, Kill)), action
    if not p:
        assert action == Reply(b"")
    if not isinstance(action, Reply):
        assert p[:1] in (b"c", b"s", b"C", b"S", b"v", b"D", b"k"), (p, action)
        if p[:1] in (b"D", b"k", b"v") or len(p) == 1:
            assert _vm_state(g, m) == before
        return
    reply = action.payload
    assert isinstance(reply, bytes)
    rejected = reply == b"" or ERR.fullmatch(reply) is not None
    if reply[:1] == b"E":
        assert ERR.fullmatch(reply), reply  # errors are exactly Exx or E.text
    if rejected or p[0] not in MUTATING:
        assert _vm_state(g, m) == before, (p, reply)
    if p[:1] == b"m" and not rejected:
        assert re.fullmatch(rb"([0-9a-f]{2})+", reply)
    if p[:1] == b"p" and not rejected:
        assert re.fullmatch(rb"([0-9a-f]{2})+", reply)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(p=st.binary(max_size=200))
def test_fuzz_fake_session_never_raises(p):
    s = GdbSession(FakeManager())
    action = s.handle(p)
    assert isinstance(action, (Reply, Resume, Detach, Kill))


def test_resume_after_the_guest_exited_is_refused(guest_dir):
    """After W there is nothing to run: c, s and vCont get E03 (ESRCH) and nothing changes."""
    from guestdbg.board.virt import VirtMachine
    from guestdbg.debug.manager import GuestDebugManager
    m = VirtMachine(console=lambda b: None)
    m.load_elf(guest_dir / "hello.elf")
    manager = GuestDebugManager(m)
    session = GdbSession(manager)
    assert manager.cont().kind is StopKind.EXITED
    pc = m.vcpu.pc
    for packet in (b"c", b"s", b"vCont;c", b"vCont;s:1", b"C05"):
        assert session.handle(packet).payload == b"E03", packet
    assert m.vcpu.pc == pc


# ---------------------------------------------------------------------------------------------
# Read caches: reads while stopped are served from what this stop read already, never stale


def test_read_caches_follow_every_write_resume_and_monitor_command(real):
    g, m, s = real
    a = g.sym["bp_a"]
    orig = g.read(a, 8)
    m4 = b"m%x,4" % a
    assert payload(s.handle(m4)) == orig[:4].hex().encode()
    assert payload(s.handle(b"m%x,8" % a)) == orig.hex().encode()  # from the same block
    # Writes through the session: M, X, then the new bytes
    assert payload(s.handle(b"M%x,4:1f2003d5" % a)) == b"OK"
    assert payload(s.handle(m4)) == b"1f2003d5"
    assert payload(s.handle(b"X%x,1:\x11" % a)) == b"OK"
    assert payload(s.handle(m4)) == b"112003d5"
    # A write that bypasses the session (the Python API): the VM's write count drops the block.
    m.write_memory(a, bytes.fromhex("22334455"))
    assert payload(s.handle(m4)) == b"22334455"
    # monitor reset restores the loaded image: the next read shows it again.
    assert not ERR.fullmatch(payload(s.handle(b"qRcmd," + b"reset".hex().encode())))
    assert payload(s.handle(m4)) == orig[:4].hex().encode()
    # Registers: g, then P, then g and p see the write.
    g0 = payload(s.handle(b"g"))
    assert payload(s.handle(b"p0")) == g0[:16]
    assert payload(s.handle(b"P0=efbeadde00000000")) == b"OK"
    assert payload(s.handle(b"p0")) == b"efbeadde00000000"
    assert payload(s.handle(b"g"))[:16] == b"efbeadde00000000"
    assert payload(s.handle(b"G" + g0)) == b"OK"
    assert payload(s.handle(b"g")) == g0
    # A step: the stop reply and later reads are of the new state.
    pc0 = int.from_bytes(bytes.fromhex(payload(s.handle(b"p20")).decode()), "little")
    action = s.handle(b"vCont;s:1")
    assert isinstance(action, Resume)
    stop = s.stopped(action.run(m))
    pc1 = m.vcpu.pc
    assert pc1 != pc0
    assert b"20:%s;" % pc1.to_bytes(8, "little").hex().encode() in stop
    assert payload(s.handle(b"p20")) == pc1.to_bytes(8, "little").hex().encode()
    assert payload(s.handle(b"g")) == regs.encode_g(m.read_registers())
    assert b"thread:1;core:0;" in stop


def test_read_caches_are_per_vcpu():
    m = FakeManager(n_vcpus=3)
    s = GdbSession(m)
    g1 = payload(s.handle(b"g"))
    assert payload(s.handle(b"Hg2")) == b"OK"
    g2 = payload(s.handle(b"g"))
    assert g2 != g1 and g2 == regs.encode_g(areg.read_all(m.vcpus[1]))
    assert payload(s.handle(b"p20")) == regs.encode_register(32, m.vcpus[1].pc)
    assert payload(s.handle(b"Hg1")) == b"OK"
    assert payload(s.handle(b"g")) == g1
    assert payload(s.handle(b"p20")) == regs.encode_register(32, m.vcpus[0].pc)


def test_small_m_reads_of_a_block_that_is_partly_not_memory_still_work():
    """A small read whose 256-byte block runs off mapped memory is read as asked."""
    m = FakeManager()
    s = GdbSession(m)
    m.read_memory = _only_exact(m.read_memory)  # any block read beyond the request fails
    assert payload(s.handle(b"m1010,4")) == bytes(m.mem[0x10:0x14]).hex().encode()
    assert ERR.fullmatch(payload(s.handle(b"m3000,4")))


def _only_exact(read):
    def only_small(addr, n, *, physical=False):
        if n > 8:
            raise DebugError(errno.EFAULT, "not all of it")
        return read(addr, n, physical=physical)
    return only_small


def test_reads_to_answer_ahead_follow_pc_and_keep_the_rest():
    from guestdbg.gdb.session import NEAR_PC, reads_to_answer_ahead
    asked = [b"m40100090,4", b"m40100040,40", b"m40200000,8", b"qXfer:threads:read::0,1000", b"g", b"mzz,4"]
    ahead = reads_to_answer_ahead(asked, 0x40100090, 0x40100094)
    # Near PC: as asked (the function's start stays) and moved with PC (the words at PC).
    assert ahead[:3] == [b"m40100090,4", b"m40100094,4", b"m40100040,40"]
    assert b"m40100044,40" in ahead
    # Far from PC (a displayed variable), and everything else: as asked.
    assert b"m40200000,8" in ahead and b"m40200004,8" not in ahead
    assert b"qXfer:threads:read::0,1000" in ahead and b"g" in ahead and b"mzz,4" in ahead
    assert reads_to_answer_ahead(asked, 0x1000, 0x1000) == asked  # the same PC: nothing moves
    edge = b"m%x,4" % (0x40100090 + NEAR_PC + 1)
    assert reads_to_answer_ahead([edge], 0x40100090, 0x40100094) == [edge]
    # Moved across the end of the address space: wrapped, as the client's own arithmetic.
    assert reads_to_answer_ahead([b"mfffffffffffffffc,4"], 0xFFFFFFFFFFFFFFF0, 0x10) == [
        b"mfffffffffffffffc,4", b"m1c,4"]
