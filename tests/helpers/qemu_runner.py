"""Build the guests in ``guests/`` and run them under qemu-system-aarch64.

Used by tests/e2e/test_guests_qemu.py; also handy from a shell::

    python -m tests.helpers.qemu_runner /tmp/guests            # build
    python -m tests.helpers.qemu_runner /tmp/guests demo.elf   # build and run one guest
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GUESTS_SRC = REPO / "guests"
QEMU = "qemu-system-aarch64"
DEFAULT_CROSS = "aarch64-linux-gnu-"


class ToolchainMissing(RuntimeError):
    """The aarch64 cross toolchain (or make) is not installed."""


class GuestBuildError(RuntimeError):
    """`make -C guests` failed."""


class QemuTimeout(RuntimeError):
    """The guest did not exit within the timeout."""

    def __init__(self, msg: str, output: str):
        super().__init__(msg)
        self.output = output


def build_guests(out_dir, cross: str | None = None, jobs: int = 2) -> Path:
    """Run ``make -C guests O=out_dir``; return the output directory.

    Raises ToolchainMissing if make or ``<cross>gcc``/``objcopy`` is absent,
    GuestBuildError (with make's output) if the build fails.
    """
    cross = cross if cross is not None else os.environ.get("CROSS", DEFAULT_CROSS)
    missing = [t for t in ("make", cross + "gcc", cross + "objcopy") if shutil.which(t) is None]
    if missing:
        raise ToolchainMissing(
            "cannot build the aarch64 guests: not found on PATH: " + ", ".join(missing)
            + " (install gcc-aarch64-linux-gnu / binutils-aarch64-linux-gnu, or set CROSS=)"
        )
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["make", "-C", str(GUESTS_SRC), f"O={out}", f"CROSS={cross}", f"-j{jobs}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    if proc.returncode != 0:
        raise GuestBuildError(f"guest build failed (make exit {proc.returncode}):\n{proc.stdout}")
    return out


def qemu_missing_reason() -> str | None:
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed (apt install qemu-system-arm)"
    return None


def missing_tool(reason: str):
    """A tool the test set-up installs is missing: skip, saying why, or, with CI set (where
    scripts/setup.sh --test ran, so the set-up is broken), fail."""
    print(f"SKIP: {reason}", file=sys.stderr)
    try:
        import pytest
    except ImportError:  # used outside pytest
        return None
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI is set, and ./scripts/setup.sh --test should have installed it", pytrace=False)
    pytest.skip(reason)


_skip = missing_tool


def qemu_command(image, bios: bool = False, merge_semihosting: bool = True,
                 extra_args=()) -> list[str]:
    """The qemu command line.

    With merge_semihosting (default), semihosting console output goes to the
    same muxed stdio chardev as the PL011, so the two stay in order in stdout.
    Without it, this is exactly ``-nographic -monitor none -serial stdio
    -semihosting`` and semihosting output goes to QEMU's stderr.
    """
    cmd = [QEMU, "-M", "virt", "-cpu", "cortex-a57", "-nographic", "-monitor", "none"]
    if merge_semihosting:
        cmd += ["-chardev", "stdio,mux=on,id=con0", "-serial", "chardev:con0",
                "-semihosting-config", "enable=on,target=native,chardev=con0"]
    else:
        cmd += ["-serial", "stdio", "-semihosting"]
    cmd += ["-bios" if bios else "-kernel", str(image)]
    cmd += list(extra_args)
    return cmd


def run_under_qemu(elf, timeout: float = 20, bios: bool = False,
                   merge_semihosting: bool = True, extra_args=()):
    """Run a guest image under qemu-system-aarch64 -M virt.

    Returns (stdout, exit_status).  stdout has CRLF normalised to LF.
    If qemu is not installed: prints the reason and calls pytest.skip()
    (or returns None outside pytest).  Raises QemuTimeout if the guest does
    not exit in time.
    """
    reason = qemu_missing_reason()
    if reason:
        return _skip(reason)
    image = Path(elf)
    if not image.is_file():
        raise FileNotFoundError(image)
    cmd = qemu_command(image, bios=bios, merge_semihosting=merge_semihosting,
                       extra_args=extra_args)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        text = out.decode("utf-8", "replace")
        raise QemuTimeout(f"{image.name} did not exit within {timeout}s; output so far:\n{text}"
                          f"\nstderr:\n{err.decode('utf-8', 'replace')}", text)
    text = out.decode("utf-8", "replace").replace("\r\n", "\n")
    if err and merge_semihosting:
        # QEMU diagnostics (not guest output) end up here.
        sys.stderr.write(err.decode("utf-8", "replace"))
    return text, proc.returncode


def elf_symbols(elf) -> dict[str, int]:
    """Name -> address for every named symbol in the ELF (pyelftools)."""
    from elftools.elf.elffile import ELFFile

    syms: dict[str, int] = {}
    with open(elf, "rb") as f:
        ef = ELFFile(f)
        tab = ef.get_section_by_name(".symtab")
        for s in tab.iter_symbols():
            if s.name and s["st_info"]["type"] != "STT_FILE":
                syms.setdefault(s.name, s["st_value"])
    return syms


def elf_read(elf, addr: int, size: int) -> bytes:
    """Bytes of the loaded image at a virtual address (from PROGBITS sections)."""
    from elftools.elf.elffile import ELFFile

    with open(elf, "rb") as f:
        ef = ELFFile(f)
        for sec in ef.iter_sections():
            if sec["sh_type"] != "SHT_PROGBITS" or not sec["sh_flags"] & 2:  # SHF_ALLOC
                continue
            start = sec["sh_addr"]
            if start <= addr and addr + size <= start + sec["sh_size"]:
                return sec.data()[addr - start: addr - start + size]
    raise KeyError(f"no loaded bytes at {addr:#x}")


if __name__ == "__main__":
    out_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "build-guests")
    d = build_guests(out_dir)
    print(f"built guests in {d}")
    for name in sys.argv[2:]:
        res = run_under_qemu(d / name, bios=name.endswith(".bin"))
        if res is not None:
            print(res[0], end="")
            print(f"[exit status {res[1]}]")
