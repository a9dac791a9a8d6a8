"""Running the `guestdbg` CLI as a subprocess, and tiny raw AArch64 images for it (loaded at
RAM with --load-addr 0x40000000): shared by the CLI and server manners tests."""

from __future__ import annotations

import signal
import struct
import subprocess
import sys

GUESTDBG = [sys.executable, "-m", "guestdbg.cli"]
RAM = "0x40000000"

# Raw AArch64 images loaded at RAM (--load-addr 0x40000000).
MOVZ_X1_UART = 0xD2A12001                      # movz x1, #0x0900, lsl #16  (the PL011 at 0x09000000)
STRB_W0_X1 = 0x39000020                        # strb w0, [x1]


def movz_w0(value: int) -> int:
    return 0x52800000 | value << 5


def _image(tmp_path, name: str, *words: int):
    path = tmp_path / name
    path.write_bytes(b"".join(struct.pack("<I", w) for w in words))
    return path


def spin_image(tmp_path):
    """Prints "R" and runs forever, never on a branch-to-self: add x2, x2, #1; b .-4."""
    return _image(tmp_path, "spin.bin", MOVZ_X1_UART, movz_w0(ord("R")), STRB_W0_X1, movz_w0(ord("\n")),
                  STRB_W0_X1, 0x91000442, 0x17FFFFFF)


def hang_image(tmp_path):
    return _image(tmp_path, "hang.bin", 0xD503201F, 0x14000000)  # nop; b .


def yes_image(tmp_path):
    """Prints "A" lines forever, like yes(1)."""
    return _image(tmp_path, "yes.bin", MOVZ_X1_UART, movz_w0(ord("A")), STRB_W0_X1, movz_w0(ord("\n")),
                  STRB_W0_X1, 0x17FFFFFC)


def guestdbg(*args, timeout=60):
    return subprocess.run(GUESTDBG + [str(a) for a in args], capture_output=True, text=True, timeout=timeout)


def popen(*args, **kw):
    # A shell's background job may ignore SIGINT, and a child inherits that: give it Ctrl-C back.
    return subprocess.Popen(GUESTDBG + [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kw)


def assert_one_line(stderr: str, needle: str, *, after_log: bool = False) -> str:
    """No traceback; the last line of stderr names the error (with --gdb the stub's log comes first)."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    if not after_log:
        assert len(lines) == 1, stderr
    assert needle in lines[-1], stderr
    return lines[-1]
