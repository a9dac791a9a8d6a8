"""PSCI SYSTEM_RESET on the virt board: a reboot by default (as QEMU), the end of the run with
no_reboot (QEMU's -no-reboot). A tiny guest in RAM counts its boots in RAM the reboot leaves
alone, checks the register its loader set (x0) and a word of its own image it then clobbers,
and resets until its third boot, which powers off."""

from __future__ import annotations

import struct
import subprocess
import sys

from guestdbg.arm import kvm_regs as kr
from guestdbg.backends.unicorn_arm64 import firmware as fw
from guestdbg.board.common import ExitStatus
from guestdbg.board.virt import RAM_BASE, VirtConfig, VirtMachine

IMAGE = RAM_BASE + 0x1000
FLAG = IMAGE + 0x200  # a word of the image: 7 as loaded
LOG = RAM_BASE + 0x10_0000  # boots, sum of FLAG seen, sum of x0 seen (outside the image)
BOOT_X0 = 0x1234
UART = 0x0900_0000
HVC0 = 0xD4000002


def mov64(rd: int, value: int) -> list[int]:
    return [(0xD2800000 if hw == 0 else 0xF2800000) | hw << 21 | ((value >> 16 * hw) & 0xFFFF) << 5 | rd
            for hw in range(4)]


def guest() -> bytes:
    code = mov64(3, LOG) + mov64(4, FLAG) + [
        0xB9400061,  # ldr w1, [x3]          boots
        0x11000421,  # add w1, w1, #1
        0xB9000061,  # str w1, [x3]
        0xB9400085,  # ldr w5, [x4]          the image's word
        0xB9400466,  # ldr w6, [x3, #4]
        0x0B0500C6,  # add w6, w6, w5
        0xB9000466,  # str w6, [x3, #4]
        0xB900009F,  # str wzr, [x4]         clobber it: only a reload brings 7 back
        0xF9400466,  # ldr x6, [x3, #8]
        0x8B0000C6,  # add x6, x6, x0
        0xF9000466,  # str x6, [x3, #8]
    ] + mov64(7, 0xDEAD) + [0xAA0703E0]  # mov x0, x7: x0 is not what the reboot starts with
    code += mov64(8, UART) + [0x1100C029, 0x39000109]  # add w9, w1, #'0'; strb w9, [x8]: the boot's number
    code += [0x71000C3F]  # cmp w1, #3
    off = mov64(0, fw.PSCI_0_2_FN_SYSTEM_OFF) + [HVC0]
    code += [0x5400000B | (len(off) + 1) << 5]  # b.lt reset
    code += off
    code += mov64(0, fw.PSCI_0_2_FN_SYSTEM_RESET) + [HVC0, 0x14000000]  # reset: hvc; b .
    image = bytearray(struct.pack(f"<{len(code)}I", *code))
    image += bytes(FLAG - IMAGE - len(image)) + struct.pack("<I", 7)
    return bytes(image)


def machine(**config) -> VirtMachine:
    m = VirtMachine(VirtConfig(**config), console=lambda b: None)
    m.load_image(IMAGE, guest())
    m.reset_cpu(IMAGE, (BOOT_X0,))
    return m


def log(m: VirtMachine) -> tuple[int, int, int]:
    return struct.unpack("<IIQ", m.vm.read_phys(LOG, 16))


def test_system_reset_reboots_by_default():
    m = machine()
    m.vcpu.set_one_reg(kr.ARM64_SYS_REG(3, 0, 12, 0, 0), 0x4000_0800)  # VBAR_EL1 as a guest would set it
    ended = m.run_until()
    assert ended == ExitStatus(0, "PSCI SYSTEM_OFF")  # the third boot powers off
    assert m.reboots == 2
    boots, flags, x0s = log(m)
    assert boots == 3
    assert flags == 3 * 7  # the image was loaded again at each reboot
    assert x0s == 3 * BOOT_X0  # and the vCPU started with the loader's registers
    assert m.vcpu.get_one_reg(kr.ARM64_SYS_REG(3, 0, 12, 0, 0)) == 0  # power-on VBAR_EL1


def test_no_reboot_ends_the_run_with_status_0():
    m = machine(no_reboot=True)
    ended = m.run_until()
    assert ended == ExitStatus(0, "PSCI SYSTEM_RESET")
    assert m.reboots == 0 and log(m)[0] == 1


def test_cli_reboots_unless_no_reboot(tmp_path):
    """`guestdbg run`: the guest prints each boot's number; the board reboots until the third
    boot powers off. With --no-reboot the first reset ends the run, status 0."""
    raw = tmp_path / "reset.bin"
    raw.write_bytes(guest())
    base = [sys.executable, "-m", "guestdbg.cli", "run", str(raw), "--load-addr", hex(IMAGE)]
    for extra, printed in (([], "123"), (["--no-reboot"], "1")):
        r = subprocess.run(base + extra, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert (r.returncode, r.stdout, r.stderr) == (0, printed, ""), extra


def test_pflash1_bad_file_is_a_one_line_error(tmp_path):
    short = tmp_path / "short.img"
    short.write_bytes(bytes(4096))
    for path, reason in ((tmp_path / "missing.img", "no such file or directory"),
                         (short, "4096 bytes; flash1 needs a file of exactly 64 MiB")):
        r = subprocess.run([sys.executable, "-m", "guestdbg.cli", "run", "--pflash1", str(path)],
                           capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert r.returncode == 2 and r.stdout == "", r
        assert r.stderr.count("\n") == 1 and f"--pflash1 {path}: {reason}" in r.stderr, r.stderr
