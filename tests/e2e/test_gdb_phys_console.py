"""The real gdb-multiarch against guestdbg's stub: physical memory mode (`monitor phys`,
QEMU's `maintenance packet Qqemu.PhyMemMode:1`) on an MMU guest whose virtual and physical
pages differ, and console input typed while gdb has the guest running (`guestdbg run --gdb`
with its stdin a pipe): the input arrives, gdb sees no stop for it, and Ctrl-C still stops."""

from __future__ import annotations

import os
import re
import shlex

import pytest

from tests.helpers.gdb_harness import Stub, require_gdb, run_gdb
from tests.helpers.mmu_guest import assemble
from tests.integration.test_phys_memory import MARK_A, MARK_B, SWAP_A, SWAP_B, SWAP_GUEST_S


@pytest.fixture(autouse=True)
def _need_gdb():
    require_gdb()


@pytest.fixture(scope="module")
def swap_guest(tmp_path_factory):
    return assemble(tmp_path_factory.mktemp("swap"), "swap", SWAP_GUEST_S)


def _words(x_output: str) -> list[int]:
    """The values of one line of gdb's `x/4wx`."""
    line = x_output.strip().splitlines()[-1]
    return [int(w, 16) for w in re.findall(r"\t(0x[0-9a-f]+)", line)]


def _halves(value: int) -> list[int]:
    return [value & 0xFFFF_FFFF, value >> 32]


def test_monitor_phys_x_reads_the_physical_page(swap_guest, tmp_path):
    with Stub(tmp_path, swap_guest) as stub:
        r = run_gdb(stub, swap_guest, """
            connect()
            ex("break *%%#x" %% sym("marked"))
            check("c", ex("continue"))
            check("virt", ex("x/4wx %(a)#x"))
            check("phys_default", ex("monitor phys"))
            check("on", ex("monitor phys on"))
            check("phys", ex("x/4wx %(a)#x"))
            check("phys_b", ex("x/4wx %(b)#x"))
            check("query", ex("maintenance packet qqemu.PhyMemMode"))
            check("bad", ex("monitor phys maybe"))
            check("still_phys", ex("x/4wx %(a)#x"))
            check("off", ex("monitor phys off"))
            check("virt_again", ex("x/4wx %(a)#x"))
            check("qemu_on", ex("maintenance packet Qqemu.PhyMemMode:1"))
            check("qemu_phys", ex("x/4wx %(a)#x"))
            check("qemu_off", ex("maintenance packet Qqemu.PhyMemMode:0"))
            check("qemu_virt", ex("x/4wx %(a)#x"))
            ex("delete")
            check("end", ex("continue"))
        """ % {"a": SWAP_A, "b": SWAP_B})
        status = stub.wait()
    r.assert_ok()
    assert "Breakpoint 1, " in r["c"], r["c"]
    a, b = _halves(MARK_A) + [0, 0], _halves(MARK_B) + [0, 0]
    assert _words(r["virt"]) == a, r["virt"]                 # through the page tables
    assert r["phys_default"].startswith("phys off"), r["phys_default"]
    assert r["on"].startswith("phys on"), r["on"]
    assert _words(r["phys"]) == b, r["phys"]                 # the physical page
    assert _words(r["phys_b"]) == a, r["phys_b"]
    assert 'received: "1"' in r["query"], r["query"]
    assert "error: monitor phys takes on or off, not 'maybe'" in r["bad"], r["bad"]
    assert _words(r["still_phys"]) == b, r["still_phys"]     # the bad command changed nothing
    assert r["off"].startswith("phys off"), r["off"]
    assert _words(r["virt_again"]) == a, r["virt_again"]
    assert 'received: "OK"' in r["qemu_on"] and 'received: "OK"' in r["qemu_off"]
    assert _words(r["qemu_phys"]) == b and _words(r["qemu_virt"]) == a
    assert "exited normally" in r["end"], r["end"]
    assert status == 0


PROMPT = "echo: type lines, q to quit\n> "


def test_console_input_while_gdb_runs_the_guest(guest_dir, tmp_path):
    """guests/echo under `guestdbg run --gdb` with its stdin a FIFO: while gdb's `continue`
    runs, a line is written to the FIFO, the guest echoes it, and gdb gets no stop until it
    sends Ctrl-C (SIGINT to gdb, as in its terminal); then "q" powers the guest off."""
    elf = guest_dir / "echo.elf"
    fifo = tmp_path / "stdin.fifo"
    os.mkfifo(fifo)
    # Held open for writing by the test too, so the stub never sees the end of its input.
    keep = os.open(fifo, os.O_RDWR)
    try:
        stub = Stub(tmp_path, elf)
        stub.argv = ["sh", "-c", f'exec "$0" "$@" < {shlex.quote(str(fifo))}', *stub.argv]
        with stub:
            r = run_gdb(stub, elf, """
                import signal, threading
                FIFO, OUT = %(fifo)r, %(out)r
                def output():
                    with open(OUT, "rb") as f:
                        return f.read().decode(errors="replace")
                def wait_for(text, limit=30.0):  # a guard against a hang, not a speed check
                    end = time.monotonic() + limit
                    while text not in output() and time.monotonic() < end:
                        time.sleep(0.05)
                    return text in output()
                seen, sent = {}, []
                def typist():
                    seen["prompt"] = wait_for(%(prompt)r)
                    with open(FIFO, "wb") as f:
                        f.write(b"hello gdb\\n")
                    seen["echo"] = wait_for("HELLO GDB\\n> ")
                    seen["stops_before_interrupt"] = len(STOPS) - before
                    sent.append(time.monotonic())
                    os.kill(os.getpid(), signal.SIGINT)   # what Ctrl-C in gdb's terminal does
                connect()
                before = len(STOPS)  # the stop gdb finds the target in when it connects
                threading.Thread(target=typist, daemon=True).start()
                check("c1", ex("continue"))
                check("sent_before_stop", bool(sent))
                check("seen", seen)
                check("stops", STOPS[before:])
                with open(FIFO, "wb") as f:
                    f.write(b"q\\n")
                check("end", ex("continue"))
            """ % {"fifo": str(fifo), "out": str(stub.stdout_path), "prompt": PROMPT})
            status = stub.wait()
    finally:
        os.close(keep)
    r.assert_ok()
    assert r["seen"] == {"prompt": True, "echo": True, "stops_before_interrupt": 0}, (r["seen"], stub.stderr)
    assert r["sent_before_stop"], r["c1"]
    assert "Program received signal SIGINT" in r["c1"], r["c1"]
    assert [s.get("signal") for s in r["stops"]] == ["SIGINT"], r["stops"]
    assert "exited normally" in r["end"], r["end"]
    assert status == 0
    assert stub.stdout == PROMPT + "HELLO GDB\n> bye\n"
