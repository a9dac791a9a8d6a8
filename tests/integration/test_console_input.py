"""Console input: `guestdbg run` feeds its stdin to the PL011 (guests/echo: prints a prompt,
echoes each line uppercased, powers off on "q"), from a pipe and from a terminal."""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import subprocess
import termios
import time

import pytest

from tests.helpers.cli import GUESTDBG

PROMPT = "echo: type lines, q to quit\n> "


def run_echo(guest_dir, data: bytes, *extra, timeout=60):
    return subprocess.run(GUESTDBG + ["run", str(guest_dir / "echo.elf"), *map(str, extra)], input=data,
                          capture_output=True, timeout=timeout)


def test_pipe_lines_are_echoed_and_q_powers_off(guest_dir):
    r = run_echo(guest_dir, b"hello world\nq\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == PROMPT + "HELLO WORLD\n> bye\n"
    assert r.stderr == b""


def test_pipe_backpressure_more_than_the_fifo_at_once(guest_dir):
    # 3 lines of 60 bytes and the quit, all written before the guest reads any: the FIFO holds
    # 16, the rest waits on the host side and nothing is lost.
    lines = [bytes((0x61 + (i + j) % 26) for j in range(60)) for i in range(3)]
    r = run_echo(guest_dir, b"\n".join(lines) + b"\nq\n")
    assert r.returncode == 0, r.stderr
    expected = PROMPT + "".join(line.decode().upper() + "\n> " for line in lines) + "bye\n"
    assert r.stdout.decode() == expected


def test_pipe_eof_leaves_the_line_idle(guest_dir):
    r = run_echo(guest_dir, b"abc\n", "--timeout", "1")
    assert r.stdout.decode() == PROMPT + "ABC\n> "
    assert r.returncode == 1 and b"still running after 1 s" in r.stderr  # the guest was not killed by EOF


def test_no_stdin_at_all(guest_dir):
    r = subprocess.run(GUESTDBG + ["run", str(guest_dir / "echo.elf"), "--timeout", "1"], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=60)
    assert r.returncode == 1 and r.stdout.decode() == PROMPT


def _read_until(fd: int, needle: bytes, timeout: float = 30.0) -> bytes:
    got = b""
    end = time.monotonic() + timeout
    while needle not in got:
        left = end - time.monotonic()
        assert left > 0, f"no {needle!r} in {got!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the other side closed
                chunk = b""
            assert chunk, f"EOF before {needle!r} in {got!r}"
            got += chunk
    return got


@contextlib.contextmanager
def _on_a_terminal(guest_dir):
    """guests/echo under `guestdbg run` with a pty as its controlling terminal: yields (master,
    slave, the terminal's attributes before, the process); kills it and closes all on the way out."""
    master, slave = os.openpty()

    def become_foreground():  # a session of its own with the pty as its controlling terminal
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    before = termios.tcgetattr(slave)
    proc = subprocess.Popen(GUESTDBG + ["run", str(guest_dir / "echo.elf"), "--timeout", "60"], stdin=slave,
                            stdout=slave, stderr=subprocess.PIPE, preexec_fn=become_foreground)
    try:
        yield master, slave, before, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
        os.close(master)
        os.close(slave)


def test_terminal_raw_mode_escapes_and_restore(guest_dir):
    with _on_a_terminal(guest_dir) as (master, slave, before, proc):
        _read_until(master, b"> ")
        raw = termios.tcgetattr(slave)
        assert not raw[3] & (termios.ECHO | termios.ICANON | termios.ISIG)  # raw, Ctrl-C goes to the guest
        assert raw[1] & termios.OPOST  # the guest's \n still starts a line
        os.write(master, b"abc\x01\x01\r")  # Ctrl-A Ctrl-A: one literal Ctrl-A; CR ends the line (no ICRNL)
        assert b"ABC\x01\r\n> " in _read_until(master, b"\r\n> ")
        os.write(master, b"\x01h")
        assert b"C-a x    exit guestdbg" in _read_until(master, b"C-a C-a")
        os.write(master, b"\x01x")
        assert proc.wait(timeout=30) == 0
        assert b"guestdbg: terminated (C-a x)" in proc.stderr.read()
        assert termios.tcgetattr(slave) == before


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, -signal.SIGTERM), (signal.SIGHUP, -signal.SIGHUP),
                                             (signal.SIGINT, 130)])
def test_terminal_restored_on_signals(guest_dir, signum, status):
    with _on_a_terminal(guest_dir) as (master, slave, before, proc):
        _read_until(master, b"> ")
        assert termios.tcgetattr(slave) != before
        proc.send_signal(signum)
        assert proc.wait(timeout=30) == status
        assert termios.tcgetattr(slave) == before

