"""The console while recording, at its edges, pinned for mutation testing of
GuestDebugManager._wrap_console: the UART's input source asked for no more than the FIFO's
room (live pulls, a host kick's, after recording stopped), a host kick in the past giving
nothing, the output side wrapped once however many runs, and boards whose UART lacks a side.

One small guest: six reads of UARTDR with nothing waited for (an empty FIFO reads 0) into
`buf`, a 1200-iteration loop, one byte ("!") out, PSCI SYSTEM_OFF. The PL011 comes out of
reset with its FIFO off (room for one byte), so a source asked for more than the room loses
what the FIFO cannot take; the input is a ConsoleInput, as `guestdbg run` wires stdin, whose
take(n) hands over (and forgets) up to n bytes. A host kick is the manager's wake() before a
run: that run's first exit is the kick, deterministically (no timers)."""

from __future__ import annotations

import pytest

from guestdbg.board.common import elf_symbols
from guestdbg.board.virt import VirtConfig, VirtMachine
from guestdbg.debug.manager import GuestDebugManager, StopKind
from tests.helpers.mmu_guest import assemble
from tests.helpers.support import Without, typed_console

READS_THEN_WRITES_S = r"""
    .text
    .global _start, read, spin, buf
_start:
    ldr     x1, =0x09000000     // the PL011
    ldr     x2, =buf
    mov     x3, #6
read:
    ldr     w0, [x1]            // UARTDR: the next byte of input, 0 when none
    strb    w0, [x2], #1
    subs    x3, x3, #1
    b.ne    read
    mov     x3, #1200
spin:
    subs    x3, x3, #1
    b.ne    spin
    mov     w0, #0x21           // "!"
    str     w0, [x1]
    ldr     w0, =0x84000008     // PSCI SYSTEM_OFF
    hvc     #0
    .balign 8
buf:
    .quad   0
"""


class _Guest:
    def __init__(self, tmp_path, *, machine=None):
        elf = assemble(tmp_path, "reads_then_writes", READS_THEN_WRITES_S)
        self.out: list[bytes] = []
        self.m = VirtMachine(VirtConfig(ram_size=16 << 20), console=self.out.append)
        self.m.load_elf(elf)
        self.sym = elf_symbols(elf)
        self.typed = typed_console(self.m)
        self.mgr = GuestDebugManager(self.m if machine is None else machine(self.m))

    def buf(self) -> bytes:
        return self.mgr.read_memory(self.sym["buf"], 6)

    def shown(self) -> bytes:
        return b"".join(self.out)


def _exits(mgr) -> None:
    e = mgr.cont()
    assert (e.kind, e.exit_status, e.history_edge) == (StopKind.EXITED, 0, None), e


# ---------------------------------------------------------------------------------------------
# the source is asked for the FIFO's room, no more


def test_the_guests_pulls_while_recording_take_only_the_fifos_room(tmp_path):
    """Six bytes wait; the guest's reads pull them one at a time (the FIFO is off): it reads
    all six, none lost, and a replay from the start gives it the same six from the log,
    taking nothing more from the host and showing its output once."""
    g = _Guest(tmp_path)
    g.typed.push(b"ABCDEF")
    g.mgr.start_recording(interval=5000)
    _exits(g.mgr)
    assert (g.buf(), g.typed.pending, g.shown()) == (b"ABCDEF", 0, b"!")
    g.typed.push(b"uvw")  # arrives while the machine is back in its past
    g.mgr.seek_to(g.mgr.record_status()["begin"])
    assert (g.m.vcpu.icount, g.buf()) == (0, bytes(6))
    _exits(g.mgr)
    assert (g.buf(), g.typed.pending, g.shown()) == (b"ABCDEF", 3, b"!")


def test_a_host_kick_while_recording_pulls_only_the_fifos_room(tmp_path):
    """A kick before the run: the board's on_intr (the UART's pump) pulls input while the
    guest has not read yet, one byte (the FIFO's room), logged; the guest's reads pull the
    rest: it reads all six. A replay from the start gives it the same."""
    g = _Guest(tmp_path)
    g.typed.push(b"ABCDEF")
    g.mgr.start_recording(interval=5000)
    g.mgr.wake()
    _exits(g.mgr)
    assert (g.buf(), g.typed.pending, g.shown()) == (b"ABCDEF", 0, b"!")
    g.mgr.seek_to(g.mgr.record_status()["begin"])
    _exits(g.mgr)
    assert (g.buf(), g.typed.pending, g.shown()) == (b"ABCDEF", 0, b"!")


def test_after_recording_stops_the_guests_pulls_take_only_the_fifos_room(tmp_path):
    """Recording one step (the console is wrapped) and stopping: the wrapped source, with no
    history, passes the guest's pulls through as they are: all six bytes read."""
    g = _Guest(tmp_path)
    g.typed.push(b"ABCDEF")
    g.mgr.start_recording(interval=5000)
    g.mgr.step()
    g.mgr.stop_recording()
    _exits(g.mgr)
    assert (g.buf(), g.typed.pending, g.shown()) == (b"ABCDEF", 0, b"!")


def test_a_host_kick_without_recording_pulls_only_the_fifos_room(tmp_path):
    """Never recording: a kick's pull goes through the console's wrapper all the same (one
    byte), and the guest reads all six."""
    g = _Guest(tmp_path)
    g.typed.push(b"ABCDEF")
    g.mgr.wake()
    _exits(g.mgr)
    assert (g.buf(), g.typed.pending, g.shown()) == (b"ABCDEF", 0, b"!")


# ---------------------------------------------------------------------------------------------
# a host kick in the past


def test_a_host_kick_while_replaying_gives_the_guest_nothing(tmp_path):
    """Back at the start of the history with new input waiting, a kick is served while
    replaying: it takes nothing from the host (live input waits for the live end) and puts
    nothing in the FIFO, so the guest reads just what it read when recorded."""
    g = _Guest(tmp_path)
    g.typed.push(b"ABCDEF")
    g.mgr.start_recording(interval=5000)
    _exits(g.mgr)
    g.typed.push(b"uvw")
    g.mgr.seek_to(g.mgr.record_status()["begin"])
    g.mgr.wake()
    _exits(g.mgr)
    assert (g.buf(), g.typed.pending, g.shown()) == (b"ABCDEF", 3, b"!")


# ---------------------------------------------------------------------------------------------
# the output side: wrapped once


def test_the_console_is_wrapped_once_however_many_runs_record(tmp_path):
    """1100 recorded steps (a run each, each wrapping the console if it is not already) and
    on to the end: the guest's byte is shown once (a wrapper per run would nest 1100 deep)."""
    g = _Guest(tmp_path)
    g.typed.push(b"ABCDEF")
    g.mgr.start_recording(interval=5000)
    for _ in range(1100):
        assert g.mgr.step().kind is StopKind.STEP
    assert g.shown() == b""
    _exits(g.mgr)
    assert (g.buf(), g.shown()) == (b"ABCDEF", b"!")


# ---------------------------------------------------------------------------------------------
# boards whose UART lacks a side


@pytest.mark.parametrize("machine", [
    pytest.param(lambda m: Without(m, "uart"), id="no-uart"),
    pytest.param(lambda m: Without(m, uart=Without(m.uart, "rx_source")), id="uart-without-input"),
])
def test_recording_a_board_whose_uart_lacks_a_side_runs(tmp_path, machine):
    """A board with no UART, or with a UART with no input side (the PC board's 16550):
    nothing to wrap; a kick and a recorded run to the guest's end work, and a replay too."""
    g = _Guest(tmp_path, machine=machine)
    g.typed.push(b"ABCDEF")
    g.mgr.start_recording(interval=5000)
    g.mgr.wake()
    _exits(g.mgr)
    assert g.shown() == b"!"
    g.mgr.seek_to(g.mgr.record_status()["begin"])
    _exits(g.mgr)
    assert g.m.vcpu.icount == g.mgr.record_status()["end"]
