"""Issue 15, manners: `guestdbg run` as a shell user meets it. Every case checks the exit status
and that no Python traceback reaches the terminal."""

from __future__ import annotations

import signal
import struct
import time
from importlib import metadata

import pytest

from tests.helpers.cli import (  # noqa: F401 (some are used only by a few tests)
    GUESTDBG, MOVZ_X1_UART, RAM, STRB_W0_X1, _image, assert_one_line, guestdbg, hang_image, movz_w0, popen,
    spin_image, yes_image,
)


# ---------------------------------------------------------------------------------------------


def test_version():
    r = guestdbg("--version")
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout == f"guestdbg {metadata.version('guestdbg')}\n" == "guestdbg 0.1.0\n"


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "-inf", "1e400", "soon"])
def test_timeout_must_be_a_positive_number_of_seconds(value):
    r = guestdbg("run", f"--timeout={value}")
    assert r.returncode == 2 and r.stdout == ""
    assert_one_line(r.stderr, f"argument --timeout: invalid timeout {value!r}")


@pytest.mark.parametrize("gdb", [[], ["--gdb", ":0"]], ids=["plain", "gdb-no-debugger"])
def test_timeout_ends_a_runaway_guest(tmp_path, gdb):
    r = guestdbg("run", spin_image(tmp_path), "--load-addr", RAM, "--timeout", "1.5", *gdb)
    assert r.returncode == 1, r.stderr
    line = assert_one_line(r.stderr, "guestdbg: guest fault: guest still running after 1.5 s (PC=0x400000",
                           after_log=bool(gdb))
    assert line.endswith("stopped by --timeout")
    assert r.stdout == "R\n"


@pytest.mark.parametrize("gdb", [[], ["--gdb", ":0"]], ids=["plain", "gdb-no-debugger"])
def test_branch_to_self_hang_is_reported(tmp_path, gdb):
    r = guestdbg("run", hang_image(tmp_path), "--load-addr", RAM, *gdb)
    assert r.returncode == 1, r.stderr
    line = assert_one_line(r.stderr, "guestdbg: guest fault: guest hung: branch-to-self at PC=0x40000004",
                           after_log=bool(gdb))
    assert line.endswith("with no interrupt to leave it")


def test_gdb_without_wait_says_the_guest_runs(tmp_path):
    r = guestdbg("run", hang_image(tmp_path), "--load-addr", RAM, "--gdb", ":0")
    first = r.stderr.splitlines()[0]
    assert first.startswith("guestdbg: guest running; a debugger may attach at tcp:127.0.0.1:"), r.stderr
    assert "waiting" not in r.stderr


@pytest.mark.parametrize("extra", [[], ["--gdb", ":0"], ["--gdb", ":0", "--wait"]],
                         ids=["plain", "gdb-free-running", "gdb-wait"])
def test_ctrl_c_exits_130_with_one_line(tmp_path, extra):
    proc = popen("run", spin_image(tmp_path), "--load-addr", RAM, *extra)
    try:
        if "--wait" in extra:  # held at its entry: wait for the stub to listen
            assert b"waiting for a GDB connection" in proc.stderr.readline()
        else:                  # wait until the guest runs
            assert proc.stdout.readline() == b"R\n"
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert_one_line(err.decode(), "guestdbg: interrupted", after_log=bool(extra))
    assert err.decode().strip().splitlines()[-1] == "guestdbg: interrupted"


@pytest.mark.parametrize("gdb", [[], ["--gdb", ":0"]], ids=["plain", "gdb-no-debugger"])
def test_closed_pipe_ends_quietly_with_141(tmp_path, gdb):
    """`guestdbg run | head -1`: the reader goes away; guestdbg ends as a tool killed by SIGPIPE."""
    proc = popen("run", yes_image(tmp_path), "--load-addr", RAM, *gdb)
    try:
        assert proc.stdout.readline() == b"A\n"
        proc.stdout.close()  # what head does after its first line
        err = proc.stderr.read().decode()
        status = proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert status == 141, err
    assert "Traceback" not in err and "Error" not in err and "Exception" not in err, err
    assert len(err.strip().splitlines()) == (1 if gdb else 0), err  # just the stub's log line


def test_x86_elf_without_arch_says_use_arch(tmp_path):
    # An ELF64 header for EM_X86_64 (62) is all it takes to be recognised.
    header = (b"\x7fELF\x02\x01\x01" + bytes(9)
              + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0x100000, 0, 0, 0, 64, 56, 0, 64, 0, 0))
    elf = tmp_path / "x86.elf"
    elf.write_bytes(header)
    for args in ([elf], ["--rom", elf]):
        r = guestdbg("run", *args)
        assert r.returncode == 2 and r.stdout == ""
        line = assert_one_line(r.stderr, "use --arch x86_64")
        assert "not a little-endian AArch64 ELF64 image (machine EM_X86_64" in line


def test_rom_elf_runs_like_the_raw_rom(guest_dir):
    runs = [guestdbg("run", "--rom", guest_dir / name) for name in ("rom_boot.elf", "rom_boot.bin")]
    for r in runs:
        assert r.returncode == 0 and r.stderr == "", r.stderr
    assert runs[0].stdout == runs[1].stdout
    assert runs[0].stdout.splitlines() == ["rom_boot: start", "rom write ignored", "ram routine ran",
                                           "rom_boot: done"]


def test_rom_refuses_an_elf_linked_outside_the_rom(guest_dir):
    r = guestdbg("run", "--rom", guest_dir / "hello.elf")
    assert r.returncode == 2 and r.stdout == ""
    line = assert_one_line(r.stderr, "--rom takes a raw image or a ROM-linked ELF")
    assert "segment at 0x40100000 is outside the ROM (0x0-0x7ffffff)" in line
