"""The virt board and the `guestdbg` command, run as a user would run them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from guestdbg import kvm
from guestdbg.board.common import ImageError
from guestdbg.board.virt import VirtMachine, VirtConfig
from guestdbg.cli import caps_report
from tests.helpers.support import Guest, symbols

GUESTDBG = [sys.executable, "-m", "guestdbg.cli"]


def guestdbg(*args, timeout=120):
    return subprocess.run(GUESTDBG + [str(a) for a in args], capture_output=True, text=True, timeout=timeout)


def test_demo_runs_with_no_arguments():
    r = guestdbg("run")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "guestdbg demo guest",
        "fib: 0 1 1 2 3 5 8 13 21 34 55 89",
        "crc32: 0x29058c73",
        "counter: 100",
        "demo: done",
    ]


def test_prebuilt_demo_matches_the_sources(guest_dir):
    from guestdbg.cli import demo_image
    assert demo_image().read_bytes() == (guest_dir / "demo.elf").read_bytes(), \
        "src/guestdbg/data/demo.elf is stale: run make -C guests demo-install"


@pytest.mark.parametrize("name,status,lines", [
    ("hello", 7, ["hello: uart", "S", "hello: semihosting write0", "hello: exiting with 7"]),
    ("poweroff", 0, ["poweroff: calling PSCI SYSTEM_OFF"]),
    ("exit_ext", 5, ["exit_ext: SYS_EXIT_EXTENDED 5"]),
])
def test_guest_exit_status_is_the_commands(guest_dir, name, status, lines):
    r = guestdbg("run", guest_dir / f"{name}.elf")
    assert r.returncode == status, r.stderr
    assert r.stdout.splitlines() == lines


def test_rom_boot_and_rom_is_read_only(guest_dir):
    r = guestdbg("run", "--rom", guest_dir / "rom_boot.bin")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["rom_boot: start", "rom write ignored", "ram routine ran", "rom_boot: done"]


def test_rom_write_leaves_rom_unchanged_at_the_vcpu_level(guest_dir):
    out = bytearray()
    m = VirtMachine(console=out.extend)
    m.load_rom(guest_dir / "rom_boot.bin")
    sym = symbols(str(guest_dir / "rom_boot.elf"))
    before = m.vm.read_phys(sym["rom_data"], 4)
    assert m.run_to_exit() == 0
    assert m.vm.read_phys(sym["rom_data"], 4) == before


def test_raw_image_with_load_addr(guest_dir, tmp_path):
    # The loop guest's ELF flattened to a raw image at its link address.
    elf = guest_dir / "loop.elf"
    raw = tmp_path / "loop.bin"
    subprocess.run(["aarch64-linux-gnu-objcopy", "-O", "binary", str(elf), str(raw)], check=True)
    sym = symbols(str(elf))
    # Patch the iteration count so the run is short.
    data = bytearray(raw.read_bytes())
    off = sym["loop_iterations"] - 0x40100000
    data[off:off + 8] = (1000).to_bytes(8, "little")
    raw.write_bytes(data)
    r = guestdbg("run", raw, "--load-addr", "0x40100000")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "loop: done"


@pytest.mark.parametrize("args,needle", [
    (["--brps", "17"], "brps must be 2..16"),
    (["--brps", "1"], "brps must be 2..16"),
    (["--wrps", "0"], "wrps must be 2..16"),
    (["--ctx-cmps", "7"], "ctx_cmps must be 1..brps"),
    (["--ram", "12abc"], "invalid size"),
    (["--ram", "1K"], "RAM size"),
    (["/nonexistent/x.elf"], "no such file"),
    (["--rom", "/nonexistent/rom.bin"], "no such file"),
    (["--load-addr", "zz", "x"], "invalid address"),
])
def test_bad_flags_one_line_error_status_2(args, needle):
    r = guestdbg("run", *args)
    assert r.returncode == 2
    assert r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr, r.stderr


def test_bad_images(tmp_path):
    x86 = "/bin/true"
    r = guestdbg("run", x86)
    assert r.returncode == 2 and "not a little-endian AArch64 ELF64" in r.stderr
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 16)
    r = guestdbg("run", junk)
    assert r.returncode == 2 and "--load-addr" in r.stderr
    r = guestdbg("run", junk, "--load-addr", "0x20000000")
    assert r.returncode == 2 and "outside RAM" in r.stderr
    trunc = tmp_path / "trunc.elf"
    trunc.write_bytes(b"\x7fELF\x02\x01\x01" + b"\x00" * 9)
    r = guestdbg("run", trunc)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    with pytest.raises(ImageError):
        VirtMachine(console=lambda b: None).load_elf(trunc)


def test_ram_size_is_honoured(guest_dir):
    # 16 MiB still holds the guest; the board's RAM slot follows the flag.
    m = VirtMachine(VirtConfig(ram_size=16 << 20), console=lambda b: None)
    assert m.vm.slots[1].memory_size == 16 << 20
    m.load_elf(guest_dir / "hello.elf")
    assert m.run_to_exit() == 7


def test_guest_fault_exits_nonzero_with_one_line(tmp_path):
    # A raw image that jumps to an unmapped address.
    code = (0xD2AE0000).to_bytes(4, "little") + (0xD61F0000).to_bytes(4, "little")  # movz x0,#0x7000,lsl16; br x0
    img = tmp_path / "jump.bin"
    img.write_bytes(code)
    r = guestdbg("run", img, "--load-addr", "0x40000000")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "guestdbg: guest fault: unhandled EC 0x21 instruction abort (current EL), IFSC=0x10 at PC=0x70000000, "
        "address 0x70000000 (ESR 0x86000010; no exception handler at VBAR_EL1+0x200 = 0x200)"]


def test_caps_text_and_json():
    r = guestdbg("caps")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    for name, number, value in (("KVM_CAP_SET_GUEST_DEBUG", 23, "1"), ("KVM_CAP_ONE_REG", 70, "1"),
                                ("KVM_CAP_GUEST_DEBUG_HW_BPS", 119, "6"), ("KVM_CAP_GUEST_DEBUG_HW_WPS", 120, "4"),
                                ("KVM_CAP_SET_GUEST_DEBUG2", 195, "0x30003")):
        assert any(line.split() == [name, str(number), value] for line in lines), (name, r.stdout)
    assert "ID_AA64DFR0_EL1 = 0x10305106" in r.stdout
    r = guestdbg("caps", "--brps", "16", "--wrps", "2", "--ctx-cmps", "5", "--json")
    report = json.loads(r.stdout)
    caps = {c["name"]: c["value"] for c in report["capabilities"]}
    assert caps["KVM_CAP_GUEST_DEBUG_HW_BPS"] == 16 and caps["KVM_CAP_GUEST_DEBUG_HW_WPS"] == 2
    fields = report["ID_AA64DFR0_EL1"]["fields"]
    assert (fields["BRPs"], fields["WRPs"], fields["CTX_CMPs"]) == (15, 1, 4)
    r = guestdbg("caps", "--ctx-cmps", "9")
    assert r.returncode == 2 and "ctx_cmps" in r.stderr


def test_caps_lists_the_debug_capabilities_from_the_one_table():
    """`caps` shows exactly kvm.DEBUG_CAPABILITIES, in numeric order, named by kvm.CAPABILITY_NAMES
    (the one number -> name table), whose names are those of the constants."""
    assert all(getattr(kvm, name) == number for number, name in kvm.CAPABILITY_NAMES.items())
    assert {n for n in dir(kvm) if n.startswith("KVM_CAP_")} == set(kvm.CAPABILITY_NAMES.values())
    assert set(kvm.DEBUG_CAPABILITIES) <= set(kvm.X86_CAPABILITIES) <= set(kvm.CAPABILITY_NAMES)
    report = caps_report(VirtConfig())
    assert [(c["name"], c["number"]) for c in report["capabilities"]] == [
        (kvm.CAPABILITY_NAMES[n], n) for n in sorted(kvm.DEBUG_CAPABILITIES)]


def test_guest_reads_configured_counts(guest_dir):
    for brps, wrps, ctx in ((6, 4, 2), (16, 16, 16), (2, 2, 1)):
        r = guestdbg("run", guest_dir / "guest_debug.elf", "--brps", brps, "--wrps", wrps, "--ctx-cmps", ctx)
        assert r.returncode == 0, r.stderr
        assert f"brps={brps} wrps={wrps} ctx_cmps={ctx}" in r.stdout.splitlines()[0]


def test_uart_and_semihosting_share_the_console_in_order(guest_dir):
    g = Guest(guest_dir / "hello.elf")
    assert g.run_to_exit() == 7
    assert g.text == "hello: uart\nS\nhello: semihosting write0\nhello: exiting with 7\n"


def test_branch_to_self_hang_is_reported(tmp_path):
    img = tmp_path / "hang.bin"
    img.write_bytes((0xD503201F).to_bytes(4, "little") + (0x14000000).to_bytes(4, "little"))  # nop; b .
    r = guestdbg("run", img, "--load-addr", "0x40000000", timeout=30)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "guestdbg: guest fault: guest hung: branch-to-self at PC=0x40000004 with no interrupt to leave it"]


def test_runaway_loop_stopped_by_timeout(tmp_path):
    img = tmp_path / "spin.bin"
    # add x0, x0, #1; b .-4 : never ends, never a branch-to-self
    img.write_bytes((0x91000400).to_bytes(4, "little") + (0x17FFFFFF).to_bytes(4, "little"))
    r = guestdbg("run", img, "--load-addr", "0x40000000", "--timeout", "1.5", timeout=30)
    assert r.returncode == 1
    line, = r.stderr.strip().splitlines()
    assert line.startswith("guestdbg: guest fault: guest still running after 1.5 s (PC=0x4000000")
    assert line.endswith("stopped by --timeout")
