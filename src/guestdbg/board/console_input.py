"""The host side of the console's input, without threads or I/O of its own.

`ConsoleInput` is the buffer between whoever reads the host's input (the CLI's stdin reader
thread) and the UART on the vCPU thread: `push()` from any thread, `take(n)` on the vCPU thread
(it is the PL011's `rx_source`). It holds at most `limit` bytes: `wait_for_room()` blocks the
reader until the guest has taken some, so a large pipe is read only as fast as the guest reads.
`quit_requested` is set when the user asked to end the run (Ctrl-A x); the VMM loop sees it
after the kick that follows and raises `ConsoleQuit`.

`EscapeMux` is the terminal's escape handling, as QEMU's `-nographic` console multiplexer does
it with Ctrl-A: Ctrl-A x quits, Ctrl-A h (or ?) prints the help, Ctrl-A Ctrl-A sends one Ctrl-A
to the guest; any other key after Ctrl-A is dropped. Everything else goes to the guest as it is
(Ctrl-C included: the terminal is raw, as on QEMU, so it reaches the guest instead of killing
guestdbg).
"""

from __future__ import annotations

import threading

CTRL_A = 0x01

ESCAPE_HELP = ("\r\nC-a h    print this help\r\n"
               "C-a x    exit guestdbg\r\n"
               "C-a C-a  sends C-a\r\n")
TERMINATED = "guestdbg: terminated (C-a x)"


class ConsoleQuit(Exception):
    """The user ended the run from the console (Ctrl-A x)."""


class ConsoleInput:
    """A bounded, thread-safe byte buffer (see the module docstring)."""

    def __init__(self, limit: int = 64 << 10):
        self.limit = limit
        self._buf = bytearray()
        self._cond = threading.Condition()
        self.eof = False
        self.quit_requested = False
        self.closed = False

    def push(self, data: bytes) -> None:
        with self._cond:
            self._buf += data

    def take(self, n: int) -> bytes:
        """Up to `n` bytes, oldest first (b"" when none wait)."""
        with self._cond:
            if not self._buf:
                return b""
            data = bytes(self._buf[:n])
            del self._buf[:n]
            self._cond.notify_all()
            return data

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._buf)

    def wait_for_room(self, timeout: float | None = None) -> bool:
        """Block until fewer than `limit` bytes wait (or close()); false on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self.closed or len(self._buf) < self.limit, timeout)

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def check_quit(self) -> None:
        """On the vCPU thread: raise ConsoleQuit if the user asked to quit."""
        if self.quit_requested:
            raise ConsoleQuit(TERMINATED)


class EscapeMux:
    """Ctrl-A escapes on a terminal's input (see the module docstring)."""

    def __init__(self) -> None:
        self._escape = False

    def feed(self, data: bytes) -> tuple[bytes, list[str]]:
        """(bytes for the guest, commands in order: "quit", "help")."""
        out = bytearray()
        commands: list[str] = []
        for byte in data:
            if self._escape:
                self._escape = False
                if byte == CTRL_A:
                    out.append(CTRL_A)
                elif byte in b"xX":
                    commands.append("quit")
                    break  # nothing after the quit reaches the guest
                elif byte in b"hH?":
                    commands.append("help")
            elif byte == CTRL_A:
                self._escape = True
            else:
                out.append(byte)
        return bytes(out), commands
