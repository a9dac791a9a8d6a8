"""Debian's real guests for the tests: the arm64 Linux kernel, a busybox initramfs, U-Boot.

``scripts/setup.sh --test`` puts Debian's packages in a cache outside git,
``${XDG_CACHE_HOME:-~/.cache}/guestdbg/debian/``:

- ``linux-image-6.1.0-NN-arm64/boot/vmlinuz-*``: a raw (not compressed) arm64 Image;
- ``busybox-static/bin/busybox``: a static arm64 busybox;

and installs ``u-boot-qemu`` (``/usr/lib/u-boot/qemu_arm64/u-boot.bin``). This module finds
them, builds an initramfs (a newc cpio, written here) whose ``/init`` prints BANNER and runs a
shell on the console, and gives the QEMU command lines the tests run them with. A guestdbg
command line for the same guests takes the same ``--kernel``/``--initrd``/``--append`` values.

    python -m tests.helpers.linux_guest OUT_DIR     # write OUT_DIR/initramfs.cpio, print paths
"""

from __future__ import annotations

import gzip
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

UBOOT_BIN = Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin")
QEMU = "qemu-system-aarch64"

# The line /init prints once proc, sys and devtmpfs are mounted, just before the shell starts;
# boot time is measured to it. PROMPT is the shell's PS1, set by /init.
BANNER = "guestdbg-initramfs: init is up"
PROMPT = "guest# "
# cryptomgr.notests skips the crypto self-tests (about 60% of the instructions to /init);
# panic=-1 reboots at once on a panic, which -no-reboot turns into an exit.
LINUX_APPEND = "console=ttyAMA0 cryptomgr.notests nokaslr panic=-1"

INIT_SCRIPT = f"""#!/bin/sh
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "{BANNER}"
export HOME=/root PS1='{PROMPT}'
exec setsid cttyhack sh
"""


class GuestMissing(RuntimeError):
    """A Debian package the real-guest tests need is not where scripts/setup.sh --test puts it."""


def debian_cache_dir() -> Path:
    """Where scripts/setup.sh --test extracts Debian's arm64 packages."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "guestdbg" / "debian"


def _version_key(path: Path) -> list:
    parts = path.name.replace("-", ".").split(".")
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts]


def find_kernel(cache: Path | None = None) -> Path:
    """The newest ``boot/vmlinuz-*`` (a raw arm64 Image) in the cache; GuestMissing if none."""
    cache = cache or debian_cache_dir()
    found = sorted(cache.glob("linux-image-*/boot/vmlinuz-*"), key=_version_key)
    if not found:
        raise GuestMissing(f"Debian's arm64 kernel (linux-image-*-arm64) is not in {cache} "
                           "(./scripts/setup.sh --test downloads it)")
    return found[-1]


def find_busybox(cache: Path | None = None) -> Path:
    """The static arm64 busybox from busybox-static:arm64; GuestMissing if absent."""
    path = (cache or debian_cache_dir()) / "busybox-static" / "bin" / "busybox"
    if not path.is_file():
        raise GuestMissing(f"Debian's busybox-static:arm64 is not at {path} "
                           "(./scripts/setup.sh --test downloads it)")
    return path


def uboot_package_version() -> str | None:
    """The installed u-boot-qemu's version (U-Boot's `version` command prints it), or None."""
    import subprocess
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "u-boot-qemu"],
                             capture_output=True, text=True, check=False).stdout.strip()
    except FileNotFoundError:
        return None
    return out or None


def find_uboot() -> Path:
    """U-Boot for QEMU's arm64 virt board, from u-boot-qemu; GuestMissing if absent."""
    if not UBOOT_BIN.is_file():
        raise GuestMissing(f"{UBOOT_BIN} is missing (apt install u-boot-qemu; ./scripts/setup.sh --test does)")
    return UBOOT_BIN


# -- the initramfs ----------------------------------------------------------------------------

def newc_archive(entries) -> bytes:
    """A cpio archive in the "newc" format (the kernel's initramfs format).

    entries: (name, mode, data, rdev) tuples; mode includes the file type (stat.S_IFREG, ...),
    data is the file's bytes (a symlink's target; b"" for directories and devices), rdev is
    (major, minor) for device nodes. Owner root, mtime 0, one link each.
    """
    out = bytearray()

    def member(ino: int, name: str, mode: int, data: bytes, rdev=(0, 0)) -> None:
        raw_name = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 2 if stat.S_ISDIR(mode) else 1, 0, len(data), 0, 0,
                  rdev[0], rdev[1], len(raw_name), 0)
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields))
        out.extend(raw_name)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, mode, data, rdev) in enumerate(entries, start=1):
        member(ino, name, mode, data, rdev)
    member(0, "TRAILER!!!", 0, b"")
    return bytes(out)


def build_initramfs(busybox: Path, out: Path, *, banner: str = BANNER, compress: bool = False) -> Path:
    """Write a busybox initramfs to out (gzip-compressed if compress) and return out.

    Its /init mounts proc, sysfs and devtmpfs, installs busybox's applet links, prints banner
    and runs ``setsid cttyhack sh`` on the console, with PS1 = PROMPT. Uncompressed by default:
    decompressing costs the guest instructions, copying a 2 MB file costs nothing.
    """
    script = INIT_SCRIPT.replace(BANNER, banner).encode()
    d, f, lnk, chr_ = stat.S_IFDIR | 0o755, stat.S_IFREG, stat.S_IFLNK | 0o777, stat.S_IFCHR
    entries = [(name, d, b"", (0, 0)) for name in
               ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "root", "etc")]
    entries += [
        ("dev/console", chr_ | 0o600, b"", (5, 1)),
        ("bin/busybox", f | 0o755, Path(busybox).read_bytes(), (0, 0)),
        ("bin/sh", lnk, b"busybox", (0, 0)),
        ("init", f | 0o755, script, (0, 0)),
    ]
    data = newc_archive(entries)
    out = Path(out)
    out.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    return out


# -- the whole set ----------------------------------------------------------------------------

@dataclass(frozen=True)
class LinuxGuest:
    """Debian's kernel Image and an initramfs built from its busybox-static."""

    kernel: Path
    initrd: Path
    busybox: Path
    append: str = LINUX_APPEND

    @property
    def kernel_release(self) -> str:
        """e.g. 6.1.0-57-arm64 (from the Image's file name)."""
        return self.kernel.name.removeprefix("vmlinuz-")


def prepare_linux_guest(work_dir: Path, cache: Path | None = None) -> LinuxGuest:
    """Find the kernel and busybox, build work_dir/initramfs.cpio; GuestMissing if absent."""
    kernel, busybox = find_kernel(cache), find_busybox(cache)
    initrd = build_initramfs(busybox, Path(work_dir) / "initramfs.cpio")
    return LinuxGuest(kernel=kernel, initrd=initrd, busybox=busybox)


def qemu_linux_command(guest: LinuxGuest, memory_mb: int = 512, extra_args=()) -> list[str]:
    """QEMU's virt board booting the kernel and initramfs, the console on stdio."""
    return [QEMU, "-M", "virt", "-cpu", "cortex-a57", "-m", str(memory_mb), "-nographic",
            "-monitor", "none", "-serial", "stdio", "-no-reboot",
            "-kernel", str(guest.kernel), "-initrd", str(guest.initrd), "-append", guest.append,
            *extra_args]


def qemu_uboot_command(uboot: Path = UBOOT_BIN, extra_args=()) -> list[str]:
    """QEMU's virt board running U-Boot as its firmware (-bios), the console on stdio."""
    return [QEMU, "-M", "virt", "-cpu", "cortex-a57", "-nographic", "-monitor", "none",
            "-serial", "stdio", "-no-reboot", "-nic", "none", "-bios", str(uboot), *extra_args]


def guestdbg_linux_command(guest: LinuxGuest, memory_mb: int = 512, extra_args=()) -> list[str]:
    """``guestdbg run`` booting the same kernel, initramfs and command line (console on stdio),
    ending at a reset as QEMU's command line does with -no-reboot (panic=-1 resets at once)."""
    return [sys.executable, "-m", "guestdbg.cli", "run", "--kernel", str(guest.kernel), "--initrd",
            str(guest.initrd), "--append", guest.append, "--ram", f"{memory_mb}M", "--no-reboot", *extra_args]


def read_kallsyms(command: list[str], names, timeout: float = 180.0) -> dict[str, int]:
    """Boot once with `command` (a VMM with the guest's console on stdio, e.g.
    qemu_linux_command(guest)), wait for the shell's prompt, and read the named symbols' addresses
    from the guest's /proc/kallsyms (Debian's System.map is a stub; LINUX_APPEND has nokaslr, so
    they are the same in every boot of the same kernel). Debian's kernel lists text symbols only
    (no CONFIG_KALLSYMS_ALL: jiffies is not there). The first entry wins if a name repeats.
    Raises LookupError naming the symbols that are not there, and tests.helpers.console's
    ConsoleTimeout if the prompt does not come within `timeout` seconds (the grep: 60 s)."""
    import re
    from tests.helpers.console import Console
    names = list(names)
    with Console(command) as con:
        con.expect(re.escape(PROMPT), timeout)
        pattern = " ".join(f"-e ' {n}$'" for n in names)
        # the echoed command line says END-$((40+2)); only the shell's answer says END-42
        con.send(f"grep {pattern} /proc/kallsyms; echo END-$((40+2))")
        m = con.expect(r"((?:[0-9a-f]{16} \w \w+\n)*)END-42", 60)
    found: dict[str, int] = {}
    for line in m[1].splitlines():
        addr, _, name = line.split()
        found.setdefault(name, int(addr, 16))
    missing = set(names) - set(found)
    if missing:
        raise LookupError(f"not in the guest's /proc/kallsyms: {sorted(missing)}")
    return found


if __name__ == "__main__":
    out_dir = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    out_dir.mkdir(parents=True, exist_ok=True)
    g = prepare_linux_guest(out_dir)
    print(f"kernel  {g.kernel}\ninitrd  {g.initrd}\nbusybox {g.busybox}\nappend  {g.append}")
    print(" ".join(qemu_linux_command(g)))
