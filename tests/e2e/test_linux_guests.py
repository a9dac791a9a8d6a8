"""Debian's real guests, Linux and U-Boot, under guestdbg's emulated virt board and, side by
side, under QEMU (the reference).

The kernel (linux-image-6.1.0-NN-arm64), busybox-static and u-boot-qemu come from Debian, put in
place by scripts/setup.sh --test (tests/helpers/linux_guest.py finds them). Each test drives
the console through tests/helpers/console.py and is parametrised by the VMM that runs the
guest: ``guestdbg run --kernel K --initrd I --append A`` (and ``--rom`` for U-Boot), and
qemu-system-aarch64 -M virt with the same images.
"""

from __future__ import annotations

import re
import sys
import time

from pathlib import Path

import pytest

from tests.helpers.console import Console
from tests.helpers.linux_guest import (BANNER, PROMPT, LinuxGuest, qemu_linux_command,
                                       qemu_uboot_command, uboot_package_version)
from tests.helpers.qemu_runner import missing_tool, qemu_missing_reason

GUESTDBG = [sys.executable, "-m", "guestdbg.cli", "run"]


# --no-reboot wherever the QEMU command line has -no-reboot (panic=-1, U-Boot's reset).
def guestdbg_linux_command(guest: LinuxGuest, memory_mb: int = 512) -> list[str]:
    return GUESTDBG + ["--kernel", str(guest.kernel), "--initrd", str(guest.initrd), "--append", guest.append,
                       "--ram", f"{memory_mb}M", "--no-reboot"]


def guestdbg_uboot_command(uboot: Path) -> list[str]:
    return GUESTDBG + ["--rom", str(uboot), "--no-reboot"]


# name -> (command line for a LinuxGuest, command line for U-Boot as firmware)
VMMS = {
    "guestdbg": (guestdbg_linux_command, guestdbg_uboot_command),
    "qemu": (qemu_linux_command, qemu_uboot_command),
}
# QEMU needs about 1.5 s to the banner on this machine kind, guestdbg about 6.5 s; both more
# when the machine is busy.
BOOT_TIMEOUT = 90.0


@pytest.fixture(params=sorted(VMMS))
def vmm(request):
    if request.param == "qemu" and (reason := qemu_missing_reason()):
        missing_tool(reason)
    return VMMS[request.param]


@pytest.fixture
def shell(vmm, linux_guest):
    """A Linux guest booted to its busybox shell prompt; yields its Console."""
    linux_command, _ = vmm
    with Console(linux_command(linux_guest)) as con:
        con.expect(re.escape(BANNER), BOOT_TIMEOUT)
        booted = time.monotonic() - con.started
        print(f"boot to the initramfs banner: {booted:.2f} s wall ({con.argv[0]})")
        con.expect(re.escape(PROMPT), 10)
        yield con


def run(con: Console, command: str, answer: str, timeout: float = 10.0) -> re.Match[str]:
    """Type a command, wait for the answer (a regex), then for the next prompt."""
    con.send(command)
    m = con.expect(answer, timeout)
    con.expect(re.escape(PROMPT), timeout)
    return m


def test_linux_shell_answers(shell):
    # The command line echoed back says hello-$((6*7)); only the shell's answer says hello-42.
    run(shell, "echo hello-$((6*7))", r"\nhello-42\n")


def test_linux_sleep_takes_guest_time(shell):
    start = time.monotonic()
    m = run(shell, "a=$(cut -d' ' -f1 /proc/uptime); sleep 1; b=$(cut -d' ' -f1 /proc/uptime); "
                   "echo slept $a $b", r"\nslept ([0-9.]+) ([0-9.]+)\n")
    guest_s = float(m[2]) - float(m[1])
    print(f"sleep 1: {guest_s:.2f} s guest time (/proc/uptime), {time.monotonic() - start:.2f} s wall")
    assert 0.99 <= guest_s < 5.0  # /proc/uptime counts in 10 ms steps


def test_linux_poweroff_exit_status_zero(shell):
    shell.send("poweroff -f")
    shell.expect(r"reboot: Power down", 10)
    assert shell.wait(10) == 0  # PSCI SYSTEM_OFF ends the VMM with status 0


def test_uboot_prompt_version_poweroff(vmm, uboot_bin):
    _, uboot_command = vmm
    with Console(uboot_command(uboot_bin)) as con:
        con.expect(r"Hit any key to stop autoboot", BOOT_TIMEOUT)
        con.send("")  # stop the autoboot countdown
        con.expect(r"=> ", 10)
        con.send("version")
        m = con.expect(r"\nU-Boot (\S+) \(", 10)
        expected = uboot_package_version()
        if expected:
            assert m[1] == expected  # Debian's u-boot-qemu prints its package version
        else:
            assert re.match(r"20\d\d\.\d\d", m[1]), m[1]
        con.expect(r"=> ", 10)
        con.send("poweroff")
        assert con.wait(10) == 0


def uboot_prompt(con: Console) -> None:
    con.expect(r"Hit any key to stop autoboot", BOOT_TIMEOUT)
    con.send("")  # stop the autoboot countdown
    con.expect(r"=> ", 10)


def test_uboot_probes_the_cfi_flash_as_on_qemu(vmm, uboot_bin):
    """U-Boot's CFI driver finds flash0 and flash1 from the DTB, reads their query tables and
    IDs; `flinfo` prints what it learnt (size, sectors, command set, IDs, timeouts, buffer)."""
    _, uboot_command = vmm
    with Console(uboot_command(uboot_bin)) as con:
        banner = con.expect(r"\nFlash: (.*?)\r?\n", BOOT_TIMEOUT)
        assert banner[1] == "64 MiB"  # what QEMU's U-Boot prints: flash0, the bank holding U-Boot
        uboot_prompt(con)
        con.send("flinfo")
        m = con.expect(r"(?s)(Bank # 1:.*?)\n=> ", 120)
    # As QEMU's U-Boot prints it: U-Boot takes each bank for one x16 chip on a 16-bit port (32 MB
    # of 128 KiB sectors at the chip's addresses).
    bank = ("CFI conformant flash (16 x 16)  Size: 32 MB in 256 Sectors\n"
            "  Intel Extended command set, Manufacturer ID: 0x89, Device ID: 0x0018\n"
            "  Erase timeout: 16384 ms, write timeout: 3 ms\n"
            "  Buffer write timeout: 3 ms, buffer size: 2048 bytes\n")
    info = m[1].replace("\r\n", "\n")
    assert info.startswith("Bank # 1: " + bank), info
    assert "\nBank # 2: " + bank in info, info
    # U-Boot write-protects its own image's sectors in flash0, and its environment's in flash1.
    assert "  00000000   RO   00020000   RO" in info and "  000E0000   RO   00100000      " in info, info
    assert "  04000000   RO   04020000   RO   04040000      " in info and "  05FE0000" in info, info


def test_uboot_flash_write_survives_reset(uboot_bin, tmp_path):
    """U-Boot erases a flash1 sector and programs it (`cp` to flash: a buffered write); `reset`
    is PSCI SYSTEM_RESET, which reboots the board (no --no-reboot): U-Boot starts again and
    reads what it wrote. With --pflash1 the flash is a host file, which a second run reads;
    there --no-reboot makes the reset end the run with status 0."""
    pflash1 = tmp_path / "flash1.img"
    pflash1.write_bytes(bytes(64 << 20))
    with Console(GUESTDBG + ["--rom", str(uboot_bin), "--pflash1", str(pflash1)]) as con:
        uboot_prompt(con)
        con.send("mw.l 0x40200000 0x5eedf1a5 4")
        con.expect(r"=> ", 60)
        con.send("erase 0x5000000 +0x20000")
        con.expect(r"Erased 1 sectors", 300)  # each flash access in I/O mode exits: slow
        con.expect(r"=> ", 60)
        con.send("cp.l 0x40200000 0x5000000 4")
        con.expect(r"Copy to Flash\.\.\. *done", 300)
        con.expect(r"=> ", 60)
        con.send("reset")
        con.expect(r"resetting \.\.\.", 60)
        con.expect(r"\nU-Boot 20", BOOT_TIMEOUT)  # the board rebooted: U-Boot starts again
        uboot_prompt(con)
        con.send("md.l 0x5000000 5")
        con.expect(r"\n05000000: 5eedf1a5 5eedf1a5 5eedf1a5 5eedf1a5 .*\n05000010: ffffffff", 60)
        con.expect(r"=> ", 60)
        con.send("poweroff")
        assert con.wait(10) == 0
    data = pflash1.read_bytes()
    assert data[0x100_0000:0x100_0014] == bytes.fromhex("a5f1ed5e") * 4 + b"\xff" * 4
    with Console(GUESTDBG + ["--rom", str(uboot_bin), "--pflash1", str(pflash1), "--no-reboot"]) as con:
        uboot_prompt(con)
        con.send("md.l 0x5000000 1")
        con.expect(r"\n05000000: 5eedf1a5 ", 60)
        con.expect(r"=> ", 60)
        con.send("reset")
        assert con.wait(10) == 0  # --no-reboot: the reset ends the run, status 0


RESTORE_AND_TALK = r"""
import sys
from guestdbg import snapshot
out = bytearray()
m = snapshot.load(sys.argv[1], console=out.extend)
pending = bytearray(b"echo restored-$((6*7))\r")


def take(room):
    chunk = bytes(pending[:room])
    del pending[:room]
    return chunk


m.uart.rx_source = take
for _ in range(200):
    if b"\nrestored-42" in out:
        break
    m.uart.pump()
    m.run_until(icount_limit=m.vcpu.icount + 2_000_000)
sys.stdout.write(out.decode(errors="replace"))
"""


def test_linux_snapshot_restores_in_a_fresh_process(linux_guest, tmp_path):
    """A booted Linux (GIC, timers and UART state included) saved at its shell prompt, loaded
    by another process: the shell still answers."""
    import subprocess

    from guestdbg import snapshot
    from guestdbg.board import loader
    from guestdbg.board.common import ExitStatus
    from guestdbg.board.virt import VirtConfig, VirtMachine
    ram = 512 << 20
    out = bytearray()
    m = VirtMachine(VirtConfig(ram_size=ram), console=out.extend)
    loader.apply_linux(m, loader.plan_linux(ram, str(linux_guest.kernel), initrd=str(linux_guest.initrd),
                                            append=linux_guest.append))
    deadline = time.monotonic() + BOOT_TIMEOUT
    while PROMPT.encode() not in out:
        assert not isinstance(m.run_until(icount_limit=m.vcpu.icount + 5_000_000), ExitStatus), out[-500:]
        assert time.monotonic() < deadline, out[-500:]
    snapshot.save(m, tmp_path / "linux.snap")
    r = subprocess.run([sys.executable, "-c", RESTORE_AND_TALK, str(tmp_path / "linux.snap")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "\nrestored-42" in r.stdout, r.stdout[-500:]


def test_linux_smp4_boots_with_four_processors(linux_guest):
    """`--smp 4` (issue 11): Debian's kernel brings the three secondaries up with PSCI CPU_ON,
    and /proc/cpuinfo lists 4 processors."""
    with Console(guestdbg_linux_command(linux_guest) + ["--smp", "4"]) as con:
        con.expect(r"SMP: Total of 4 processors activated", 2 * BOOT_TIMEOUT)
        con.expect(re.escape(BANNER), BOOT_TIMEOUT)
        print(f"--smp 4: boot to the initramfs banner: {time.monotonic() - con.started:.2f} s wall")
        con.expect(re.escape(PROMPT), 10)
        run(con, "grep -c ^processor /proc/cpuinfo", r"\n4\n")
        run(con, "cat /sys/devices/system/cpu/online", r"\n0-3\n")
