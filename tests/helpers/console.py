"""Drive a guest's serial console through a pipe or a pty: spawn, expect(regex), send(line).

Written for any program that puts a guest's console on its stdio, so the same test can drive
``qemu-system-aarch64 -nographic`` today and ``guestdbg run --kernel ...`` later::

    with Console(["qemu-system-aarch64", "-M", "virt", ...]) as con:
        con.expect(r"=> ")
        con.send("version")
        m = con.expect(r"U-Boot (\\S+)")
        con.send("poweroff")
        assert con.wait(10) == 0

The console's output is decoded as UTF-8 (errors replaced) with carriage returns dropped, so
patterns match plain ``\\n`` line ends. ``expect`` matches from just after the previous match,
so output is consumed in order; ``output`` keeps all of it for failure messages.
"""

from __future__ import annotations

import codecs
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import Self


class ConsoleTimeout(AssertionError):
    """expect() did not see its pattern in time, or the process ended before it appeared."""


class Console:
    """A process whose stdin and stdout are a guest's console.

    pty=False (default): stdin and stdout are pipes (the program sees no terminal; QEMU and
    guestdbg then pass bytes straight through). pty=True: both are the slave side of a new
    pseudo-terminal, as when a user runs the program in a terminal. stderr is always a separate
    pipe, kept in ``stderr``. The process gets its own session, so close() can kill all of it.
    """

    def __init__(self, argv: Sequence[str], *, pty: bool = False, env: dict[str, str] | None = None,
                 cwd: str | os.PathLike | None = None):
        self.argv = [str(a) for a in argv]
        self._buf = ""
        self._pos = 0
        self._eof = False
        self._cond = threading.Condition()
        self._stderr = bytearray()
        self.started = time.monotonic()
        if pty:
            master, slave = os.openpty()
            try:
                self.proc = subprocess.Popen(self.argv, stdin=slave, stdout=slave, stderr=subprocess.PIPE,
                                             env=env, cwd=cwd, start_new_session=True)
            finally:
                os.close(slave)
            self._in_fd, self._out_fd = master, master
        else:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, env=env, cwd=cwd, start_new_session=True)
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self._in_fd, self._out_fd = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        self._pty = pty
        self._readers = [threading.Thread(target=self._read_console, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for t in self._readers:
            t.start()

    # -- reading ------------------------------------------------------------------------------

    def _read_console(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while True:
            try:
                chunk = os.read(self._out_fd, 65536)
            except OSError:  # EIO on a pty once the process has closed its side
                chunk = b""
            text = decoder.decode(chunk, final=not chunk).replace("\r", "")
            with self._cond:
                self._buf += text
                if not chunk:
                    self._eof = True
                self._cond.notify_all()
            if not chunk:
                return

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        while chunk := os.read(fd, 65536):
            self._stderr += chunk

    @property
    def output(self) -> str:
        """Everything the console has printed so far."""
        with self._cond:
            return self._buf

    @property
    def stderr(self) -> str:
        return self._stderr.decode("utf-8", "replace")

    def expect(self, pattern: str | re.Pattern[str], timeout: float = 10.0) -> re.Match[str]:
        """Wait for the regex in the output after the previous match; return its match.

        Raises ConsoleTimeout (with the output's tail and the process's state) if it does not
        appear within timeout seconds or the console closes first.
        """
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                m = rx.search(self._buf, self._pos)
                if m:
                    self._pos = m.end()
                    return m
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    break
                self._cond.wait(min(left, 0.5))
        why = "the console closed" if self._eof else f"{timeout:g} s passed"
        raise ConsoleTimeout(f"{why} before {rx.pattern!r} appeared\n{self.describe()}")

    def describe(self, tail: int = 3000) -> str:
        """The process's state and the output's tail, for failure messages."""
        rc = self.proc.poll()
        state = "running" if rc is None else f"exited with status {rc}"
        text = self.output
        return (f"command: {' '.join(self.argv)}\nprocess {state}; console output (last {tail} chars):\n"
                f"{text[-tail:]}\n--- stderr:\n{self.stderr[-tail:]}")

    # -- writing ------------------------------------------------------------------------------

    def send(self, line: str = "", eol: str = "\r") -> None:
        """Type a line: its text, then eol (a terminal's Enter is a carriage return)."""
        self.write((line + eol).encode())

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._in_fd, view)
            view = view[n:]

    # -- ending -------------------------------------------------------------------------------

    def wait(self, timeout: float = 10.0) -> int:
        """Wait for the process to exit; return its status (ConsoleTimeout if it does not)."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise ConsoleTimeout(f"the process did not exit within {timeout:g} s\n{self.describe()}") from None
        for t in self._readers:
            t.join(2)
        return rc

    def close(self) -> None:
        """Kill the process (and its session) if it is still running; release the console."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        for t in self._readers:
            t.join(2)
        if self._pty:
            try:
                os.close(self._in_fd)
            except OSError:
                pass
        else:
            for f in (self.proc.stdin, self.proc.stdout):
                if f is not None:
                    try:
                        f.close()
                    except OSError:
                        pass
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
