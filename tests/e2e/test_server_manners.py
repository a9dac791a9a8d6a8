"""Issue 15, manners of `guestdbg run --gdb`: how the process ends once no debugger is attached,
what a kill leaves as exit status, and how a second client is refused; with a raw RSP client,
gdb-multiarch and lldb. Every case checks the exit status and that no traceback appears."""

from __future__ import annotations

import threading
import time

import pytest

from tests.helpers.gdb_harness import Stub, lldb_missing_reason, run_gdb, run_lldb
from tests.helpers.qemu_runner import missing_tool
from guestdbg.board.common import GuestFault
from guestdbg.board.virt import VirtMachine
from guestdbg.gdb.client import RspClient
from guestdbg.gdb.server import EXIT_KILLED, Endpoint, GdbServer
from tests.helpers.cli import RAM, _image, guestdbg, hang_image, spin_image

HELLO_OUT = "hello: uart\nS\nhello: semihosting write0\nhello: exiting with 7\n"


def jump_to_unmapped_image(tmp_path):
    return _image(tmp_path, "jump.bin", 0xD2AE0000, 0xD61F0000)  # movz x0, #0x7000, lsl #16; br x0


def attach(stub: Stub) -> RspClient:
    c = RspClient.connect(str(stub.sock_path))
    assert c.start_no_ack()
    assert c.request(b"?").startswith(b"T05")
    return c


def detach(c: RspClient) -> None:
    assert c.request(b"D") == b"OK"
    c.close()


def assert_ends_with(stub: Stub, status: int, last_line: str) -> None:
    assert stub.wait() == status, stub.stderr
    assert "Traceback" not in stub.stderr, stub.stderr
    assert stub.stderr.strip().splitlines()[-1] == last_line, stub.stderr


# ---------------------------------------------------------------------------------------------
# once no debugger is attached, the guest ends the process as without --gdb


def test_fault_after_detach_ends_with_the_faults_line_and_status_1(tmp_path):
    image = jump_to_unmapped_image(tmp_path)
    plain = guestdbg("run", image, "--load-addr", RAM)
    assert plain.returncode == 1
    with Stub(tmp_path, image, extra_args=["--load-addr", RAM]) as stub:
        detach(attach(stub))
        assert_ends_with(stub, 1, plain.stderr.strip())


def test_hang_after_detach_ends_with_status_1(tmp_path):
    with Stub(tmp_path, hang_image(tmp_path), extra_args=["--load-addr", RAM]) as stub:
        detach(attach(stub))
        assert_ends_with(stub, 1, "guestdbg: guest fault: guest hung: branch-to-self at PC=0x40000004 "
                                  "with no interrupt to leave it")


def test_exit_after_detach_is_the_guests_status(guest_dir, tmp_path):
    with Stub(tmp_path, guest_dir / "hello.elf") as stub:
        detach(attach(stub))
        assert_ends_with(stub, 7, "guestdbg: guest exited with status 7")
        assert stub.stdout == HELLO_OUT


def test_timeout_counts_only_time_run_with_no_debugger(tmp_path):
    with Stub(tmp_path, spin_image(tmp_path), extra_args=["--load-addr", RAM, "--timeout", "1.5"]) as stub:
        c = attach(stub)
        time.sleep(2.0)               # held by the debugger: not counted
        detached = time.monotonic()
        detach(c)
        time.sleep(0.8)
        assert stub.running(), stub.stderr
        assert stub.wait() == 1, stub.stderr
        assert time.monotonic() - detached >= 1.5
        last = stub.stderr.strip().splitlines()[-1]
        assert_ends_with(stub, 1, last)
        assert last.startswith("guestdbg: guest fault: guest still running after 1.5 s (PC=0x400000")
        assert last.endswith("stopped by --timeout")


def test_serve_raises_the_fault_of_a_guest_running_free(tmp_path):
    """The API the CLI uses: serve() ends with the GuestFault, which the CLI prints as one line."""
    m = VirtMachine(console=lambda b: None)
    m.load_raw(jump_to_unmapped_image(tmp_path), int(RAM, 16))
    logs: list[str] = []
    server = GdbServer(m, Endpoint("unix", path=str(tmp_path / "s.sock")), wait=False, log=logs.append)
    outcome: list = []
    thread = threading.Thread(target=lambda: outcome.append(_catch(server.serve)), daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), logs
    assert isinstance(outcome[0], GuestFault) and "instruction abort" in str(outcome[0]), outcome
    assert logs[0].startswith("guest running; a debugger may attach at unix:"), logs


def _catch(fn):
    try:
        return fn()
    except BaseException as e:
        return e


# ---------------------------------------------------------------------------------------------
# kill: its own status, and the `k` reply lldb waits for


@pytest.mark.parametrize("packet,reply", [(b"k", b"X09"), (b"vKill;1", b"OK")])
def test_kill_exits_137_and_answers(guest_dir, tmp_path, packet, reply):
    with Stub(tmp_path, guest_dir / "hello.elf") as stub:
        c = attach(stub)
        assert c.request(packet) == reply
        c.close()
        assert_ends_with(stub, EXIT_KILLED, "guestdbg: killed by the debugger")
    assert EXIT_KILLED == 137


def test_gdb_kill_exits_137(guest_dir, tmp_path):
    elf = guest_dir / "hello.elf"
    with Stub(tmp_path, elf) as stub:
        r = run_gdb(stub, elf, """
            connect()
            check("kill", ex("kill"))
        """)
        r.assert_ok()
        assert "[Inferior 1 (Remote target) killed]" in r["kill"]
        assert_ends_with(stub, 137, "guestdbg: killed by the debugger")
    assert stub.stdout == ""


def test_lldb_kill_is_answered(guest_dir, tmp_path):
    reason = lldb_missing_reason()
    if reason:
        missing_tool(reason)
    elf = guest_dir / "hello.elf"
    with Stub(tmp_path, elf, tcp=True) as stub:
        r = run_lldb(stub, elf, ["kill"])
        assert_ends_with(stub, 137, "guestdbg: killed by the debugger")
    assert "failed to send the k packet" not in r.stdout + r.stderr, r.stdout
    assert "Process 1 exited with status = 9" in r.stdout, r.stdout


# ---------------------------------------------------------------------------------------------
# a second client is refused where the debugger shows it


def test_second_gdb_is_shown_the_refusal(guest_dir, tmp_path):
    elf = guest_dir / "bp_targets.elf"
    with Stub(tmp_path, elf, tcp=True) as stub:
        first = RspClient.connect(("127.0.0.1", stub.port))
        assert first.start_no_ack()
        r = run_gdb(stub, elf, """
            check("connect", try_ex("target remote " + ENDPOINT))
        """)
        r.assert_ok()
        assert not r["connect"]["ok"]
        assert ("warning: Remote failure reply: E.guestdbg: another debugger is already attached; "
                "disconnect it first") in r["connect"]["out"], r["connect"]
        # closed after the reply has been read, not reset under it
        assert "Connection reset" not in r.stdout and r["connect"]["error"] == "Remote connection closed"
        assert first.request(b"qC") == b"QC1"  # the first client is undisturbed
        assert first.request(b"vKill;1") == b"OK"
        assert_ends_with(stub, 137, "guestdbg: killed by the debugger")
        assert "refused a second debugger connection" in stub.stderr


def test_second_lldb_fails_at_once_instead_of_hanging(guest_dir, tmp_path):
    reason = lldb_missing_reason()
    if reason:
        missing_tool(reason)
    elf = guest_dir / "hello.elf"
    with Stub(tmp_path, elf, tcp=True) as stub:
        first = RspClient.connect(("127.0.0.1", stub.port))
        assert first.start_no_ack()
        r = run_lldb(stub, elf, ["register read pc"], timeout=15)  # a hang fails here
        assert "Connection shut down by remote side" in r.stderr, (r.stdout, r.stderr)
        assert first.request(b"qC") == b"QC1"
