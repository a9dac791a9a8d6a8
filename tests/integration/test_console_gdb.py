"""Console input while a debugger runs the guest (manager policy 14): a kick for the host's
services (`wake()`, the stdin reader's) runs the board's `on_intr` and the guest runs on; only
`interrupt()` stops it, and one that raced with another stop is discarded by the server so it
cannot stop the next continue."""

from __future__ import annotations

import signal
import socket
import threading
import time

import pytest

from guestdbg.debug.manager import GuestDebugManager, StopKind
from guestdbg.gdb.client import RspClient
from guestdbg.gdb.server import Endpoint, GdbServer
from tests.helpers.support import Guest


def _bp_targets(guest_dir):
    g = Guest(guest_dir / "bp_targets.elf")
    m = GuestDebugManager(g.machine)
    served: list[int] = []
    g.machine.on_intr = lambda: served.append(1)
    m.add_breakpoint(g.sym["bp_a"])
    return g, m, served


def test_wake_is_served_and_the_guest_runs_on_to_its_breakpoint(guest_dir):
    g, m, served = _bp_targets(guest_dir)
    m.wake()  # the vCPU is idle: the next run returns KVM_EXIT_INTR at once
    event = m.cont()
    assert event.kind is StopKind.SWBREAK and event.pc == g.sym["bp_a"], event
    assert served == [1]


def test_wake_during_a_step_is_not_a_stop_and_the_step_completes(guest_dir):
    g, m, served = _bp_targets(guest_dir)
    pc = g.machine.vcpu.pc
    m.wake()
    event = m.step()
    assert event.kind is StopKind.STEP and event.pc == pc + 4, event
    assert served == [1]


def test_interrupt_stops_at_once_and_is_used_up(guest_dir):
    g, m, served = _bp_targets(guest_dir)
    m.interrupt()
    event = m.cont()
    assert event.kind is StopKind.SIGNAL and event.signal == signal.SIGINT, event
    assert served == []
    assert m.cont().kind is StopKind.SWBREAK  # the next continue runs to the breakpoint


def test_a_discarded_interrupt_does_not_stop_the_next_continue(guest_dir):
    """A Ctrl-C that lost the race to a breakpoint stop leaves its kick behind; once the
    server discards it, that kick is only a wake-up."""
    g, m, served = _bp_targets(guest_dir)
    m.interrupt()
    m.discard_interrupt()
    event = m.cont()
    assert event.kind is StopKind.SWBREAK and event.pc == g.sym["bp_a"], event
    assert served == [1]


@pytest.mark.parametrize("wait", [True, False], ids=["wait", "attach_to_running"])
def test_server_wake_while_gdb_continues_sends_no_stop(guest_dir, tmp_path, wait):
    """The server runs a looping guest for a client's `vCont;c`; three wake()s (as the stdin
    reader's) are each served by the running vCPU, which only a running vCPU can do; then
    Ctrl-C gives the one stop reply, T02. Attaching to a running guest stops it with
    interrupt() (its free run ends on its own terms): that request must not outlive the attach."""
    g = Guest(guest_dir / "loop.elf")
    g.vm.write_phys(g.sym["loop_iterations"], (10**12).to_bytes(8, "little"))
    served: list[int] = []
    g.machine.on_intr = lambda: served.append(1)
    path = str(tmp_path / "gdb.sock")
    logs: list[str] = []
    server = GdbServer(g.machine, Endpoint("unix", path=path), wait=wait, log=logs.append)
    server.listen()
    status: list = []
    thread = threading.Thread(target=lambda: status.append(server.serve()), daemon=True)
    thread.start()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(path)
    c = RspClient(sock, timeout=30)
    try:
        assert c.start_no_ack()
        c.send(b"vCont;c")
        for n in range(1, 4):
            server.wake()
            deadline = time.monotonic() + 30  # a guard against a hang, not a speed check
            while len(served) < n and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(served) == n, (served, logs)
        sock.sendall(b"\x03")
        reply = c.receive()
        assert reply.startswith(b"T02"), reply
        assert c.request(b"qC") == b"QC1"  # the stop was the only reply: the next is qC's
        assert c.request(b"vKill;1") == b"OK"
    finally:
        sock.close()
        thread.join(30)
    assert status == [137], (status, logs)
