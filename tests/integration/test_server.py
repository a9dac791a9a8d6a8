"""The GDB server over real sockets, driven by a small raw RSP client written here.

The server (GdbServer.serve) runs in a thread on a unix socket in tmp_path; the CLI's endpoint
checks run as a subprocess."""

from __future__ import annotations

import errno
import os
import random
import socket
import stat
import subprocess
import sys
import threading
import time
import traceback

import pytest

from guestdbg import kvm
from guestdbg.debug.arch import BRK0
from guestdbg.gdb import rsp
from guestdbg.gdb.client import RspClient
from guestdbg.gdb.server import Endpoint, GdbServer
from guestdbg.gdb.session import GdbSession
from tests.helpers.support import Guest

BP_TARGETS_OUTPUT = b"bp_targets: a=3 b=3 c=3 brk=1\n"
NOP_HEX = b"1f2003d5"


class Client(RspClient):
    """The package's raw RSP client on a unix socket, plus what these tests need: raw bytes,
    every packet including console output, and monitor output."""

    def __init__(self, path: str, timeout: float = 10.0):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(path)
        super().__init__(sock, timeout=timeout)

    recv = RspClient.receive          # the next packet, console O packets included
    cmd = RspClient.request           # send, and return the reply that is not console output

    def recv_reply(self) -> bytes:
        while (p := self.recv()).startswith(b"O") and p != b"OK":
            pass
        return p

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def start_no_ack(self) -> None:
        assert super().start_no_ack()

    def monitor(self, text: str) -> str:
        self.send(b"qRcmd," + text.encode().hex().encode())
        out = b""
        while True:
            p = self.recv()
            if p == b"OK":
                return out.decode()
            assert p.startswith(b"O"), p
            out += bytes.fromhex(p[1:].decode())

    def close(self) -> None:
        try:
            super().close()
        except OSError:
            pass


class Harness:
    def __init__(self, guest: Guest, path: str, wait: bool = True):
        self.guest = guest
        self.path = path
        self.logs: list[str] = []
        self.server = GdbServer(guest.machine, Endpoint("unix", path=path), wait=wait, log=self.logs.append)
        self.server.listen()
        self.status: list = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        self.clients: list[Client] = []

    def _serve(self):
        try:
            self.status.append(self.server.serve())
        except BaseException as e:  # the test checks that this never happens
            self.status.append(e)

    def client(self) -> Client:
        c = Client(self.path)
        self.clients.append(c)
        return c

    def wait_exit(self, timeout: float = 30.0):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"server still running; log: {self.logs}"
        assert len(self.status) == 1 and isinstance(self.status[0], int), self.status
        return self.status[0]

    def shutdown(self):
        for c in self.clients:
            c.close()
        if self.thread.is_alive():
            deadline = time.monotonic() + 10
            while self.thread.is_alive() and time.monotonic() < deadline:
                try:
                    c = Client(self.path, timeout=2)
                    c.send(b"vKill;1")
                    c.recv()
                except (OSError, ConnectionError):
                    time.sleep(0.05)
                    continue
                finally:
                    c.close()
            self.thread.join(5)


@pytest.fixture
def serve(tmp_path):
    harnesses = []

    def start(guest: Guest, wait: bool = True) -> Harness:
        h = Harness(guest, str(tmp_path / f"gdb{len(harnesses)}.sock"), wait)
        harnesses.append(h)
        return h

    yield start
    for h in harnesses:
        h.shutdown()
        assert not h.thread.is_alive()
        assert not any(isinstance(s, BaseException) for s in h.status), h.status


def _loop_guest(guest_dir, iterations: int = 10**12) -> Guest:
    g = Guest(guest_dir / "loop.elf")
    g.vm.write_phys(g.sym["loop_iterations"], iterations.to_bytes(8, "little"))
    return g


def _stop_pc(reply: bytes) -> int:
    for field in reply[3:].split(b";"):
        if field.startswith(b"20:"):
            return int.from_bytes(bytes.fromhex(field[3:].decode()), "little")
    raise AssertionError(f"no pc in {reply!r}")


# ---------------------------------------------------------------------------------------------


def test_unix_socket_is_mode_0600(guest_dir, serve):
    h = serve(Guest(guest_dir / "bp_targets.elf"))
    mode = os.stat(h.path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


def test_break_step_continue_to_exit(guest_dir, serve):
    g = Guest(guest_dir / "bp_targets.elf")
    h = serve(g)
    c = h.client()
    features = c.cmd(b"qSupported:multiprocess+;swbreak+;hwbreak+;xmlRegisters=i386")
    assert b"swbreak+" in features and b"PacketSize=" in features
    c.start_no_ack()
    assert c.cmd(b"?").startswith(b"T05")
    a = g.sym["bp_a"]
    original = g.read(a, 4)
    assert c.cmd(b"Z0,%x,4" % a) == b"OK"
    assert c.cmd(b"m%x,4" % a) == original.hex().encode()
    reply = c.cmd(b"vCont;c")
    assert reply.startswith(b"T05") and b"swbreak:;" in reply and b"thread:1;" in reply
    assert _stop_pc(reply) == a
    reply = c.cmd(b"vCont;s:1")
    assert reply.startswith(b"T05") and _stop_pc(reply) == a + 4
    assert b"swbreak" not in reply
    reply = c.cmd(b"c")
    assert _stop_pc(reply) == a  # the second iteration: the breakpoint survived the step
    assert c.cmd(b"z0,%x,4" % a) == b"OK"
    assert c.cmd(b"Z1,%x,4" % g.sym["bp_c"]) == b"OK"
    reply = c.cmd(b"c")
    assert b"hwbreak:;" in reply and _stop_pc(reply) == g.sym["bp_c"]
    assert c.cmd(b"z1,%x,4" % g.sym["bp_c"]) == b"OK"
    assert c.cmd(b"c") == b"W00"
    assert h.wait_exit() == 0
    assert bytes(g.output) == BP_TARGETS_OUTPUT


def test_ack_mode_works_too(guest_dir, serve):
    g = Guest(guest_dir / "bp_targets.elf")
    h = serve(g)
    c = h.client()
    assert c.cmd(b"qC") == b"QC1"
    # A NAK gets the last reply again.
    c.send_raw(b"-")
    assert c.recv() == b"QC1"
    # A bad checksum gets a NAK, and the connection stays usable. The client answers the NAK
    # as gdb does, by sending its last packet (qC) again, which the stub answers.
    c.send_raw(b"$qC#00")
    assert c.recv() == b"QC1"
    assert c.cmd(b"qAttached") == b"1"
    assert c.cmd(b"vKill;1") == b"OK"
    assert h.wait_exit() == 137  # killed by the debugger: its own status, not the guest's success


def test_ctrl_c_stops_a_running_guest(guest_dir, serve):
    """Ctrl-C stops the running guest in its loop, every time, and the stub stays usable.
    (How fast is a benchmark's business, not a test's.)"""
    g = _loop_guest(guest_dir)
    h = serve(g)
    c = h.client()
    c.start_no_ack()
    for _ in range(5):
        c.send(b"vCont;c")
        time.sleep(0.2)
        c.send_raw(b"\x03")
        reply = c.recv_reply()
        assert reply.startswith(b"T02") and b"thread:1;" in reply, reply
        assert g.sym["loop_body"] <= _stop_pc(reply) < g.sym["loop_end"]
    assert c.cmd(b"qC") == b"QC1"


def test_second_client_refused_first_stays_usable(guest_dir, serve):
    g = Guest(guest_dir / "bp_targets.elf")
    h = serve(g)
    first = h.client()
    first.start_no_ack()
    assert first.cmd(b"qC") == b"QC1"
    second = Client(h.path)
    packets = []
    try:
        while True:
            packets.append(second.recv())
    except (ConnectionError, OSError):
        pass
    second.close()
    assert packets and packets[-1].startswith(b"E")
    message = b"".join(bytes.fromhex(p[1:].decode()) for p in packets if p.startswith(b"O"))
    assert b"already attached" in message
    assert first.cmd(b"qC") == b"QC1"
    assert first.cmd(b"Z0,%x,4" % g.sym["bp_b"]) == b"OK"
    assert _stop_pc(first.cmd(b"c")) == g.sym["bp_b"]


def _lose_client_mid_continue(g: Guest, h: Harness, setup=()) -> Client:
    """A client sets breakpoints, continues, and vanishes; returns the next client."""
    c = h.client()
    c.start_no_ack()
    for packet in setup:
        assert c.cmd(packet) == b"OK"
    c.send(b"vCont;c")
    time.sleep(0.2)
    c.close()
    deadline = time.monotonic() + 5
    while True:
        try:
            c2 = h.client()
            c2.start_no_ack()
            return c2
        except (ConnectionError, OSError):  # refused while the old one is being dropped
            assert time.monotonic() < deadline, h.logs
            time.sleep(0.05)


def test_lost_client_mid_continue_leaves_vm_stopped(guest_dir, serve):
    g = _loop_guest(guest_dir)
    h = serve(g)
    c2 = _lose_client_mid_continue(g, h)
    assert any("lost" in line for line in h.logs), h.logs
    assert c2.cmd(b"?").startswith(b"T")
    regs1 = c2.cmd(b"g")
    time.sleep(0.1)
    assert c2.cmd(b"g") == regs1  # not running
    pc = int.from_bytes(bytes.fromhex(c2.cmd(b"p20").decode()), "little")
    assert g.sym["loop_body"] <= pc < g.sym["loop_end"]
    # Consistent and usable: a breakpoint the new client sets stops the guest.
    end = g.sym["loop_end"]
    assert c2.cmd(b"Z0,%x,4" % end) == b"OK"
    assert c2.cmd(b"P0=0100000000000000") == b"OK"  # the loop counter: one more iteration
    reply = c2.cmd(b"c")
    assert reply.startswith(b"T05") and _stop_pc(reply) == end, reply


def test_lost_client_breakpoints_survive_for_next_client(guest_dir, serve):
    """Issue 4: "The next client can attach and find every breakpoint the previous one left"."""
    g = _loop_guest(guest_dir)
    h = serve(g)
    end = g.sym["loop_end"]
    c2 = _lose_client_mid_continue(g, h, [b"Z0,%x,4" % end, b"Z1,%x,4" % (end + 4),
                                          b"Z2,%x,8" % g.sym["idle_page"]])
    slots = c2.monitor("info slots")
    assert f"break   {end:#x}" in slots, slots
    assert f"hbreak  {end + 4:#x}" in slots
    assert f"watch   {g.sym['idle_page']:#x}+8" in slots
    assert f"break   {end:#x}  software (decided in the run" in slots  # nothing patched (policy 18)
    assert g.vm.read_phys(end, 4) != BRK0
    assert c2.cmd(b"m%x,4" % end) == g.vm.read_phys(end, 4).hex().encode()
    assert c2.cmd(b"P0=0100000000000000") == b"OK"
    reply = c2.cmd(b"c")
    assert reply.startswith(b"T05") and _stop_pc(reply) == end, reply


def test_detach_lets_the_guest_run_to_its_end(guest_dir, serve):
    g = Guest(guest_dir / "bp_targets.elf")
    h = serve(g)
    c = h.client()
    c.start_no_ack()
    for s in ("bp_a", "bp_b"):
        assert c.cmd(b"Z0,%x,4" % g.sym[s]) == b"OK"
    assert c.cmd(b"Z1,%x,4" % g.sym["bp_c"]) == b"OK"
    assert _stop_pc(c.cmd(b"c")) == g.sym["bp_a"]
    assert c.cmd(b"D") == b"OK"
    assert h.wait_exit() == 0  # no stop on the remaining breakpoints: it ran to its end
    assert bytes(g.output) == BP_TARGETS_OUTPUT
    assert any("detached" in line for line in h.logs)


def test_exit_status_is_the_guests(guest_dir, serve):
    g = Guest(guest_dir / "hello.elf")
    h = serve(g)
    c = h.client()
    assert c.cmd(b"c") == b"W07"
    assert h.wait_exit() == 7


def test_attach_to_free_running_guest_stops_it(guest_dir, serve):
    g = _loop_guest(guest_dir)
    h = serve(g, wait=False)
    time.sleep(0.2)
    c = h.client()
    c.start_no_ack()
    regs1 = c.cmd(b"g")
    time.sleep(0.1)
    assert c.cmd(b"g") == regs1
    pc = int.from_bytes(bytes.fromhex(c.cmd(b"p20").decode()), "little")
    assert g.sym["main"] <= pc <= g.sym["loop_end"]


def test_garbage_from_the_client_never_crashes_the_server(guest_dir, serve):
    g = Guest(guest_dir / "bp_targets.elf")
    h = serve(g)
    rnd = random.Random(1234)
    valid = [b"qC", b"g", b"m40100000,10", b"Z0,40100000,4", b"z0,40100000,4", b"?", b"p20"]
    for round_ in range(30):
        c = h.client()
        chunks = []
        for _ in range(20):
            choice = rnd.randrange(6)
            if choice == 0:
                chunks.append(bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 64))))
            elif choice == 1:  # a real packet with a bad checksum
                chunks.append(rsp.frame(rnd.choice(valid))[:-2] + b"zz")
            elif choice == 2:  # truncated
                f = rsp.frame(rnd.choice(valid))
                chunks.append(f[:rnd.randrange(1, len(f))])
            elif choice == 3:  # oversized
                chunks.append(b"$" + b"M40100000,1:" + b"a" * 0x9000 + b"#00")
            elif choice == 4:  # well-framed nonsense (not a resume, detach or kill)
                body = bytes(rnd.randrange(32, 127) for _ in range(rnd.randrange(0, 40)))
                chunks.append(rsp.frame(b"" if body[:1] in b"DkcsCSv" else body))
            else:
                chunks.append(b"$" + bytes(rnd.randrange(256) for _ in range(8)))
        c.send_raw(b"".join(chunks))
        # Resynchronise: a '$' abandons any packet in progress; '#' ends a body still open.
        c.send_raw(b"#00")
        c.send(b"qC")
        for _ in range(100):
            if c.recv() == b"QC1":
                break
        else:
            raise AssertionError("no reply to qC after garbage")
        assert h.thread.is_alive(), h.status
        c.close()  # vanish without a word
        h.clients.remove(c)
    c = h.client()
    c.start_no_ack()
    assert c.cmd(b"qC") == b"QC1"
    assert c.cmd(b"m%x,4" % g.sym["bp_a"]) == g.read(g.sym["bp_a"], 4).hex().encode()


def _read_exactly(c: Client, n: int) -> bytes:
    """The next n raw bytes from the stub (acks included), past the client's own framing."""
    data = b""
    while len(data) < n:
        chunk = c.sock.recv(n - len(data))
        assert chunk, f"EOF after {data!r}"
        data += chunk
    return data


def test_no_ack_mode_starts_after_the_ok_the_session_asked_for(guest_dir, serve):
    """The session's reply says when no-ack mode starts (Reply.start_no_ack); from then on the
    stub neither acks nor NAKs, so a bad packet is dropped without a word."""
    h = serve(Guest(guest_dir / "bp_targets.elf"))
    c = h.client()
    c.send_raw(rsp.frame(b"qC"))
    assert _read_exactly(c, 1 + len(rsp.frame(b"QC1"))) == b"+" + rsp.frame(b"QC1")
    c.send_raw(b"+" + rsp.frame(b"QStartNoAckMode"))
    assert _read_exactly(c, 1 + len(rsp.frame(b"OK"))) == b"+" + rsp.frame(b"OK")  # still acked
    c.send_raw(b"+" + b"$qC#00" + rsp.frame(b"qC"))  # gdb acks the OK; a bad checksum; a good packet
    assert _read_exactly(c, len(rsp.frame(b"QC1"))) == rsp.frame(b"QC1")  # no '-', no '+'
    c.sock.settimeout(0.2)
    with pytest.raises(socket.timeout):
        c.sock.recv(1)


def test_a_bug_in_the_session_is_logged_with_its_traceback_and_answered(guest_dir, serve, monkeypatch):
    """The server's one last resort: a packet that runs into a bug gets an error reply, the
    traceback goes to the log (visible, not mapped to a plausible errno), and the server stays up."""
    handle = GdbSession.handle

    def buggy(self, payload):
        if payload == b"qBug":
            return {}["no such key"]  # a programming error deep in the session
        return handle(self, payload)

    monkeypatch.setattr(GdbSession, "handle", buggy)
    g = Guest(guest_dir / "bp_targets.elf")
    h = serve(g)
    c = h.client()
    c.start_no_ack()
    assert c.cmd(b"qBug") == b"E05"
    log = "\n".join(h.logs)
    assert "internal error handling packet b'qBug'" in log, h.logs
    assert "Traceback (most recent call last)" in log and "KeyError: 'no such key'" in log, h.logs
    assert c.cmd(b"qC") == b"QC1"
    assert c.cmd(b"Z0,%x,4" % g.sym["bp_b"]) == b"OK"
    assert _stop_pc(c.cmd(b"c")) == g.sym["bp_b"]


def test_a_host_error_while_running_is_a_stop_the_debugger_sees(guest_dir, serve, monkeypatch):
    """A KVM call the host refuses mid-run (KvmError) ends that run as a SIGSEGV stop, logged;
    the client and the server go on."""
    g = Guest(guest_dir / "bp_targets.elf")
    h = serve(g)

    def refused():
        raise kvm.KvmError(errno.EFAULT, "KVM_RUN refused by the host")

    monkeypatch.setattr(h.server.manager, "cont", refused)
    c = h.client()
    c.start_no_ack()
    assert c.cmd(b"c").startswith(b"T0b")
    assert any("the vCPU cannot run: EFAULT: KVM_RUN refused by the host" in line for line in h.logs), h.logs
    assert c.cmd(b"qC") == b"QC1"


def test_a_bug_on_the_vcpu_thread_ends_serve_with_it(guest_dir, tmp_path):
    """A programming error while the guest runs is not turned into a guest fault: serve()
    raises it, with the traceback of the vCPU thread where it happened."""
    g = Guest(guest_dir / "bp_targets.elf")
    h = Harness(g, str(tmp_path / "bug.sock"))

    def buggy():
        return {}["no such key"]

    h.server.manager.cont = buggy
    c = h.client()
    try:
        c.start_no_ack()
        c.send(b"c")
        h.thread.join(20)
        assert not h.thread.is_alive()
        assert len(h.status) == 1 and isinstance(h.status[0], KeyError), h.status
        assert any(frame.name == "buggy" for frame in traceback.extract_tb(h.status[0].__traceback__))
        with pytest.raises((ConnectionError, OSError)):
            c.recv()  # the connection ends with the server
    finally:
        h.shutdown()


# ---------------------------------------------------------------------------------------------
# the CLI's endpoint checks


def _cli(*args, timeout=20):
    return subprocess.run([sys.executable, "-m", "guestdbg.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("spec", ["tcp:0.0.0.0:0", "0.0.0.0:0", "tcp:[::]:0", "tcp:192.0.2.1:1234"])
def test_cli_refuses_non_loopback_without_flag(guest_dir, spec):
    r = _cli("run", str(guest_dir / "hello.elf"), "--gdb", spec)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "non-loopback" in lines[0] and "--gdb-allow-remote" in lines[0], r.stderr


def test_cli_unix_gdb_session_end_to_end(guest_dir, tmp_path):
    path = tmp_path / "cli.sock"
    proc = subprocess.Popen([sys.executable, "-m", "guestdbg.cli", "run", str(guest_dir / "hello.elf"),
                             "--wait", "--gdb", f"unix:{path}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not path.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.02)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        c = Client(str(path))
        c.start_no_ack()
        assert c.cmd(b"?").startswith(b"T05")
        assert c.cmd(b"c") == b"W07"
        c.close()
        assert proc.wait(20) == 7
        assert b"hello: exiting with 7" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_client_that_stops_reading_is_dropped_not_waited_for(guest_dir, serve):
    """Output to a client is buffered up to a bound: one that sends requests and never reads
    is dropped, and the server stays usable for the next client."""
    g = Guest(guest_dir / "bp_targets.elf")
    h = serve(g)
    hog = h.client()
    hog.start_no_ack()
    request = rsp.frame(b"m40100000,1ffc")  # a 16 KiB reply each
    deadline = time.monotonic() + 20
    dropped = False
    hog.sock.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            hog.sock.sendall(request * 16)
        except (BrokenPipeError, ConnectionResetError):
            dropped = True
            break
        except socket.timeout:
            pass  # our own send buffer is full: the server has stopped reading us, keep checking
        if any("stopped reading" in line for line in h.logs):
            dropped = True
            break
    assert dropped, h.logs
    hog.close()
    nxt = h.client()
    nxt.start_no_ack()
    assert nxt.cmd(b"Z0,%x,4" % g.sym["bp_b"]) == b"OK"
    assert _stop_pc(nxt.cmd(b"c")) == g.sym["bp_b"]


def _stopped_at_loop_body(guest_dir, serve):
    """The loop guest behind a no-ack client, stopped at its breakpoint on loop_body (still
    inserted): (guest, client, loop_body)."""
    g = _loop_guest(guest_dir)
    c = serve(g).client()
    c.start_no_ack()
    body = g.sym["loop_body"]
    assert c.cmd(b"Z0,%x,4" % body) == b"OK"
    assert _stop_pc(c.cmd(b"vCont;c")) == body
    return g, c, body


@pytest.fixture
def replayed(monkeypatch):
    """For each read of the client's socket while the guest is stopped: was it answered with a
    remembered reply (rsp rule 15)?"""
    seen: list[bool] = []
    replay = rsp.RspConnection.replay

    def counting(self, data):
        reply = replay(self, data)
        seen.append(reply is not None)
        return reply
    monkeypatch.setattr(rsp.RspConnection, "replay", counting)
    return seen


def test_repeated_reads_answer_alike_until_a_write_a_resume_or_another_mode(guest_dir, serve, replayed):
    """gdb repeats its small reads at every stop; the server answers a repeat with the reply it
    remembered (rsp rule 15). A remembered reply must never outlive what it says."""
    g, c, body = _stopped_at_loop_body(guest_dir, serve)
    original = g.read(body, 4)
    read = b"m%x,4" % body
    assert c.cmd(read) == c.cmd(read) == original.hex().encode()
    assert replayed[-1], replayed  # the repeat was a remembered reply
    pc = c.cmd(b"p20")
    assert c.cmd(b"p20") == pc and replayed[-1]
    # The debugger's write: the next read sees it.
    assert c.cmd(b"M%x,4:%s" % (body, NOP_HEX)) == b"OK"
    assert c.cmd(read) == NOP_HEX and c.cmd(read) == NOP_HEX
    # A write from outside the protocol (the Python API, another thread) while gdb is stopped.
    g.vm.write_phys(body, original)
    assert c.cmd(read) == original.hex().encode()
    # A resume: the same request after the step reads the new PC.
    assert c.cmd(b"z0,%x,4" % body) == b"OK"
    assert _stop_pc(c.cmd(b"vCont;s:1")) == body + 4
    assert c.cmd(b"p20") == (body + 4).to_bytes(8, "little").hex().encode() != pc
    # Physical addressing (QEMU's PhyMemMode): the same `m` bytes are read afresh.
    assert c.cmd(read) == original.hex().encode()
    assert c.cmd(b"Qqemu.PhyMemMode:1") == b"OK"
    replayed.clear()
    assert c.cmd(read) == original.hex().encode() and replayed == [False]


def test_reads_answered_ahead_at_a_stop_are_what_the_guest_has_there(guest_dir, serve, replayed):
    """At each stop the server answers ahead the reads the client made at its last stop of
    the same kind (the words around PC move with PC): a client stepping through the loop gets
    the instruction at each new PC, a breakpoint's z0/Z0 keep them, and a write made while
    the guest is stopped is in the next stop's."""
    g, c, body = _stopped_at_loop_body(guest_dir, serve)
    pc = body
    code = {a: g.read(a, 4).hex().encode() for a in range(body - 8, body + 24, 4)}
    far = g.sym["loop_iterations"]  # a word far from PC (a `display`ed variable)

    def reads_at_stop(pc):
        return [c.cmd(b"m%x,4" % pc), c.cmd(b"m%x,4" % (pc + 4)), c.cmd(b"m%x,8" % far)]
    reads_at_stop(pc)
    assert c.cmd(b"z0,%x,4" % body) == b"OK"
    for n in range(9):
        pc = _stop_pc(c.cmd(b"vCont;s:1"))
        replayed.clear()
        iterations = g.read(far, 8).hex().encode()
        assert reads_at_stop(pc) == [code[pc], code[pc + 4], iterations], n
        if n >= 2:  # answered ahead from the second step on (the first has no step before it)
            assert replayed == [True, True, True], n
    # A breakpoint stop: gdb takes its breakpoints out (z0) and then reads; they stay answered.
    assert c.cmd(b"Z0,%x,4" % body) == b"OK"
    for n in range(3):
        pc = _stop_pc(c.cmd(b"vCont;c"))
        assert pc == body
        replayed.clear()
        assert c.cmd(b"z0,%x,4" % body) == b"OK"
        assert reads_at_stop(pc)[:2] == [code[pc], code[pc + 4]]
        if n:
            assert replayed[1:3] == [True, True], n
        assert _stop_pc(c.cmd(b"vCont;s:1")) == body + 4
        assert c.cmd(b"Z0,%x,4" % body) == b"OK"
    # Written while stopped, from outside the protocol or by the debugger: answered ahead at
    # the next stop with what is there then, and read afresh after a write at the stop itself.
    for value, write in ((12345, lambda data: g.vm.write_phys(far, data)),
                         (54321, lambda data: c.cmd(b"M%x,8:%s" % (far, data.hex().encode())))):
        assert c.cmd(b"z0,%x,4" % body) == b"OK"
        reads_at_stop(_stop_pc(c.cmd(b"vCont;s:1")))
        write(value.to_bytes(8, "little"))
        pc = _stop_pc(c.cmd(b"vCont;s:1"))
        replayed.clear()
        assert reads_at_stop(pc) == [code[pc], code[pc + 4], value.to_bytes(8, "little").hex().encode()]
        assert replayed == [True, True, True]
        write((value + 1).to_bytes(8, "little"))
        assert c.cmd(b"m%x,8" % far) == (value + 1).to_bytes(8, "little").hex().encode()
        assert c.cmd(b"Z0,%x,4" % body) == b"OK"
        assert _stop_pc(c.cmd(b"vCont;c")) == body


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_remembered_and_ahead_replies_always_say_what_a_fresh_read_says(guest_dir, serve, seed):
    """Random sessions against the real server: reads (many repeated, around PC and of data),
    writes by packet and from outside, breakpoints in and out, steps and continues, thread and
    addressing-mode switches, garbage. Every read's reply must be what the guest holds at that
    moment, however the server came by it."""
    rng = random.Random(seed)
    g, c, body = _stopped_at_loop_body(guest_dir, serve)
    data = g.sym["loop_iterations"]
    inserted, pc = True, body
    for n in range(600):
        op = rng.random()
        if op < 0.45:  # a read, near PC or of data, of a few lengths: often the same again
            addr = rng.choice([pc, pc + 4, pc - 4, body & ~0x3F, data, data + 8])
            length = rng.choice([4, 4, 8, 64])
            assert c.cmd(b"m%x,%x" % (addr, length)) == g.read(addr, length).hex().encode(), (n, hex(addr))
        elif op < 0.55:
            assert c.cmd(b"p20") == g.pc.to_bytes(8, "little").hex().encode(), n
            assert c.cmd(b"p2") == g.reg("x2").to_bytes(8, "little").hex().encode(), n
        elif op < 0.62:  # the debugger's write, or one from outside (the Python API)
            value = rng.getrandbits(64).to_bytes(8, "little")
            read = b"m%x,8" % (data + 8)
            assert c.cmd(read) == g.read(data + 8, 8).hex().encode()  # (remembered, if not already)
            if rng.random() < 0.5:
                assert c.cmd(b"M%x,8:%s" % (data + 8, value.hex().encode())) == b"OK"
            else:
                g.vm.write_phys(data + 8, value)
            assert c.cmd(read) == value.hex().encode(), n
        elif op < 0.72:  # gdb's step off the breakpoint and back
            if inserted:
                assert c.cmd(b"z0,%x,4" % body) == b"OK"
            pc = _stop_pc(c.cmd(b"vCont;s:1"))
            inserted = rng.random() < 0.5
            if inserted:
                assert c.cmd(b"Z0,%x,4" % body) == b"OK"
        elif op < 0.78:
            if not inserted:
                assert c.cmd(b"Z0,%x,4" % body) == b"OK"
                inserted = True
            pc = _stop_pc(c.cmd(b"vCont;c"))
            assert pc == body
        elif op < 0.84:
            assert c.cmd(rng.choice([b"Hg1", b"Hg0", b"Qqemu.PhyMemMode:1", b"Qqemu.PhyMemMode:0"])) == b"OK"
        elif op < 0.92:
            assert c.cmd(b"qXfer:threads:read::0,1000").startswith(b"l<?xml")
        else:  # a packet that is answered with an error, and bytes that are no packet
            assert c.cmd(b"m%x,4" % (1 << 63)).startswith(b"E")
            c.send_raw(b"$m%x,4#00" % pc)  # a bad checksum: dropped in no-ack mode
