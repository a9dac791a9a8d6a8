"""Linux and firmware loading on the virt board (board/loader.py, `guestdbg run --kernel/--initrd/
--append/--dtb/--dumpdtb`, and the DTB at RAM base for --rom), with QEMU's semantics.

The kernel is a synthetic arm64 Image: a valid 64-byte header around a small program that
prints, on the PL011, x0 (the DTB's address), its own load address, CurrentEL, SCTLR_EL1.M,
DAIF, whether x1-x3 were non-zero, and the magic it finds at x0; then PSCI SYSTEM_OFF.
"""

from __future__ import annotations

import gzip
import re
import shutil
import struct
import subprocess

import pytest

from guestdbg.board import devicetree, loader
from guestdbg.board.common import ImageError
from guestdbg.board.virt import RAM_BASE, VirtConfig, VirtMachine
from tests.helpers.cli import assert_one_line, guestdbg
from tests.helpers.qemu_runner import missing_tool

AS, OBJCOPY = "aarch64-linux-gnu-as", "aarch64-linux-gnu-objcopy"

PROGRAM = r"""
    .text
start:
    orr x9, x1, x2
    orr x9, x9, x3
    mov x19, x0
    adr x20, start
    sub x20, x20, #64
    movz x21, #0x0900, lsl #16
    adr x0, s_x0
    bl puts
    mov x0, x19
    mov x1, #16
    bl hex
    adr x0, s_pc
    bl puts
    mov x0, x20
    mov x1, #16
    bl hex
    adr x0, s_el
    bl puts
    mrs x0, CurrentEL
    lsr x0, x0, #2
    mov x1, #1
    bl hex
    adr x0, s_m
    bl puts
    mrs x0, sctlr_el1
    and x0, x0, #1
    mov x1, #1
    bl hex
    adr x0, s_daif
    bl puts
    mrs x0, daif
    lsr x0, x0, #6
    mov x1, #1
    bl hex
    adr x0, s_r
    bl puts
    cmp x9, #0
    cset x0, ne
    mov x1, #1
    bl hex
    adr x0, s_magic
    bl puts
    ldr w0, [x19]
    rev w0, w0
    mov x1, #8
    bl hex
    mov w0, #10
    strb w0, [x21]
    movz w0, #0x0008
    movk w0, #0x8400, lsl #16
    hvc #0
    b .
puts:
    ldrb w2, [x0], #1
    cbz w2, 1f
    strb w2, [x21]
    b puts
1:  ret
hex:
    lsl x1, x1, #2
1:  subs x1, x1, #4
    b.lt 2f
    lsr x2, x0, x1
    and x2, x2, #0xf
    cmp x2, #10
    add x3, x2, #'0'
    add x4, x2, #('a' - 10)
    csel x3, x3, x4, lo
    strb w3, [x21]
    b 1b
2:  ret
s_x0:    .asciz "x0="
s_pc:    .asciz " pc="
s_el:    .asciz " el="
s_m:     .asciz " mmu="
s_daif:  .asciz " daif="
s_r:     .asciz " x1x3nz="
s_magic: .asciz " magic="
    .balign 8
"""

LINE = re.compile(r"x0=([0-9a-f]{16}) pc=([0-9a-f]{16}) el=(\d) mmu=(\d) daif=([0-9a-f]) x1x3nz=(\d) "
                  r"magic=([0-9a-f]{8})")


def arm64_header(code_len: int, *, text_offset: int = 0, image_size: int | None = None, flags: int = 0xA,
                 magic: bytes = b"ARM\x64") -> bytes:
    """booting.rst's header: code0 = b +64 (past the header), text_offset, image_size, flags, magic."""
    size = 64 + code_len if image_size is None else image_size
    return struct.pack("<IIQQQQQQ4sI", 0x14000010, 0, text_offset, size, flags, 0, 0, 0, magic, 0)


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> bytes:
    if shutil.which(AS) is None or shutil.which(OBJCOPY) is None:
        missing_tool(f"{AS}/{OBJCOPY} not installed (binutils-aarch64-linux-gnu)")
    d = tmp_path_factory.mktemp("image")
    (d / "p.S").write_text(PROGRAM)
    subprocess.run([AS, "-o", str(d / "p.o"), str(d / "p.S")], check=True)
    subprocess.run([OBJCOPY, "-O", "binary", str(d / "p.o"), str(d / "p.bin")], check=True)
    return (d / "p.bin").read_bytes()


def write_image(tmp_path, program: bytes, name: str = "Image", *, gz: bool = False, **header) -> str:
    data = arm64_header(len(program), **header) + program
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if gz else data)
    return str(path)


def run_line(*args):
    r = guestdbg("run", *args, "--timeout", "20")
    assert r.returncode == 0, r.stderr
    m = LINE.search(r.stdout)
    assert m, r.stdout
    x0, pc, el, mmu, daif, nz, magic = m.groups()
    return int(x0, 16), int(pc, 16), el, mmu, daif, nz, magic


def dtb_chosen(path) -> dict:
    tree = devicetree.parse(open(path, "rb").read())
    chosen = tree.get_node("/chosen")
    return {p.name: (list(p.data) if hasattr(p, "data") else True) for p in chosen.props}


def cells64(words: list[int]) -> int:
    return words[0] << 32 | words[1]


# ---------------------------------------------------------------------------- booting an Image
@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_kernel_entry_state_and_dtb_in_x0(tmp_path, program, gz):
    """text_offset 0 -> RAM base + 2 MiB (as QEMU); DTB at RAM + min(RAM/2, 128M) 2M-aligned;
    EL1, MMU off, DAIF all masked, x1-x3 zero, and the DTB's magic at x0."""
    image = write_image(tmp_path, program, gz=gz)
    x0, pc, el, mmu, daif, nz, magic = run_line("--kernel", image)
    assert pc == RAM_BASE + (2 << 20)
    assert x0 == RAM_BASE + (64 << 20)  # 128 MiB RAM: initrd_start = base + 64 MiB, DTB there
    assert (el, mmu, daif, nz, magic) == ("1", "0", "f", "0", "d00dfeed")


def test_kernel_text_offset_and_large_ram(tmp_path, program):
    image = write_image(tmp_path, program, text_offset=0x80000)
    x0, pc, *_ = run_line("--kernel", image, "--ram", "512M")
    assert pc == RAM_BASE + 0x80000
    assert x0 == RAM_BASE + (128 << 20)


def test_kernel_without_image_size_goes_at_0x80000(tmp_path, program):
    image = write_image(tmp_path, program, text_offset=0x1234000, image_size=0)
    _, pc, *_ = run_line("--kernel", image)
    assert pc == RAM_BASE + 0x80000


def test_big_image_size_pushes_initrd_and_dtb(tmp_path, program):
    """initrd_start = max(RAM + 64 MiB, kernel end) page-aligned; DTB after the initrd, 2 MiB-aligned."""
    image = write_image(tmp_path, program, image_size=(80 << 20) + 123)
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"I" * 5000)
    x0, pc, *_ = run_line("--kernel", image, "--initrd", initrd)
    start = (pc + (80 << 20) + 123 + 4095) & ~4095
    assert x0 == (start + 5000 + (2 << 20) - 1) & ~((2 << 20) - 1)
    dump = tmp_path / "d.dtb"
    assert guestdbg("run", "--kernel", image, "--initrd", initrd, "--dumpdtb", dump).returncode == 0
    chosen = dtb_chosen(dump)
    assert cells64(chosen["linux,initrd-start"]) == start
    assert cells64(chosen["linux,initrd-end"]) == start + 5000


def test_initrd_and_append_in_chosen_match_memory(tmp_path, program):
    """The /chosen range is where the initrd's bytes are, and bootargs is --append."""
    image = write_image(tmp_path, program, gz=True)
    initrd = tmp_path / "initrd.cpio"
    payload = bytes(range(256)) * 40 + b"end"
    initrd.write_bytes(payload)
    boot = loader.plan_linux(512 << 20, image, initrd=str(initrd), append="console=ttyAMA0 nokaslr")
    machine = VirtMachine(VirtConfig(ram_size=512 << 20))
    loader.apply_linux(machine, boot)
    tree = devicetree.parse(machine.vm.read_phys(boot.dtb_start, len(boot.dtb)))
    start = cells64(tree.get_property("linux,initrd-start", "/chosen").data)
    end = cells64(tree.get_property("linux,initrd-end", "/chosen").data)
    assert (start, end) == (RAM_BASE + (128 << 20), RAM_BASE + (128 << 20) + len(payload))
    assert machine.vm.read_phys(start, end - start) == payload
    assert tree.get_property("bootargs", "/chosen").value == "console=ttyAMA0 nokaslr"
    assert boot.dtb_start == (end + (2 << 20) - 1) & ~((2 << 20) - 1)
    # and the CLI passes the same DTB address in x0
    x0, *_ = run_line("--kernel", image, "--initrd", initrd, "--append", "console=ttyAMA0 nokaslr",
                      "--ram", "512M")
    assert x0 == boot.dtb_start


def test_user_dtb_replaces_generated(tmp_path, program):
    """--dtb: the user's tree, with /memory and /chosen set as QEMU does."""
    image = write_image(tmp_path, program)
    tree = devicetree.virt_fdt(64 << 20)
    tree.get_node("/").set_property("model", "my-board")
    user = tmp_path / "user.dtb"
    user.write_bytes(devicetree.encode(tree))
    dump = tmp_path / "out.dtb"
    r = guestdbg("run", "--kernel", image, "--dtb", user, "--append", "quiet", "--dumpdtb", dump)
    assert r.returncode == 0, r.stderr
    out = devicetree.parse(dump.read_bytes())
    assert out.get_property("model").value == "my-board"
    assert out.get_property("reg", "/memory@40000000").data == [0, RAM_BASE, 0, 128 << 20]
    assert out.get_property("bootargs", "/chosen").value == "quiet"
    x0, *_, magic = run_line("--kernel", image, "--dtb", user)
    assert magic == "d00dfeed"


def test_dumpdtb_without_kernel_writes_board_dtb(tmp_path):
    dump = tmp_path / "board.dtb"
    r = guestdbg("run", "--dumpdtb", dump, "--ram", "256M")
    assert (r.returncode, r.stdout) == (0, ""), r.stderr
    assert dump.read_bytes() == devicetree.virt_dtb(256 << 20)


def test_rom_gets_dtb_at_ram_base(tmp_path):
    """--rom (QEMU's -bios): the DTB at 0x40000000; the ROM reads its magic and prints it."""
    movz = lambda rd, imm, hw=0: 0xD2800000 | hw << 21 | imm << 5 | rd  # noqa: E731
    words = [
        movz(1, 0x0900, 1),          # x1 = UART
        movz(2, 0x4000, 1),          # x2 = RAM base
        0xB9400043,                  # ldr w3, [x2]
        0x5AC00863,                  # rev w3, w3
        # print the 4 bytes of w3 as characters? print '1' if w3 == 0xd00dfeed, else '0'
        movz(4, 0xFEED), 0xF2BA01A4,  # movz x4, #0xfeed ; movk x4, #0xd00d, lsl #16
        0x6B04007F,                  # cmp w3, w4
        0x1A9F17E0,                  # cset w0, eq
        0x1100C000,                  # add w0, w0, #'0'
        0x39000020,                  # strb w0, [x1]
        movz(0, 0x0008), 0xF2B08000,  # x0 = 0x84000008 (SYSTEM_OFF)
        0xD4000002,                  # hvc #0
    ]
    rom = tmp_path / "rom.bin"
    rom.write_bytes(b"".join(struct.pack("<I", w) for w in words))
    r = guestdbg("run", "--rom", rom, "--timeout", "20")
    assert (r.returncode, r.stdout) == (0, "1"), r.stderr
    r = guestdbg("run", "--bios", rom, "--timeout", "20")
    assert (r.returncode, r.stdout) == (0, "1"), r.stderr


# ---------------------------------------------------------------------------- errors: one line, status 2
def test_error_bad_magic(tmp_path, program):
    image = write_image(tmp_path, program, magic=b"ARM\x65")
    r = guestdbg("run", "--kernel", image)
    assert r.returncode == 2
    assert_one_line(r.stderr, 'not an arm64 Linux Image (no "ARM\\x64" magic at offset 0x38)')
    gz = write_image(tmp_path, program, "bad.gz", magic=b"XXXX", gz=True)
    r = guestdbg("run", "--kernel", gz)
    assert r.returncode == 2
    assert_one_line(r.stderr, "after gunzip")


def test_error_corrupt_gzip(tmp_path):
    path = tmp_path / "Image.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00garbage-not-deflate")
    r = guestdbg("run", "--kernel", path)
    assert r.returncode == 2
    assert_one_line(r.stderr, "gzip")


def test_error_missing_files(tmp_path, program):
    image = write_image(tmp_path, program)
    for args, needle in ((["--kernel", "/nonexistent/Image"], "--kernel /nonexistent/Image: no such file"),
                         (["--kernel", image, "--initrd", "/nonexistent/initrd"], "--initrd /nonexistent/initrd"),
                         (["--kernel", image, "--dtb", "/nonexistent/x.dtb"], "--dtb /nonexistent/x.dtb")):
        r = guestdbg("run", *args)
        assert r.returncode == 2, r.stderr
        assert_one_line(r.stderr, needle)


def test_error_too_large_for_ram(tmp_path, program):
    image = write_image(tmp_path, program, image_size=200 << 20)
    r = guestdbg("run", "--kernel", image)
    assert r.returncode == 2
    assert_one_line(r.stderr, "do not fit in RAM")
    small = write_image(tmp_path, program, "small")
    initrd = tmp_path / "big.initrd"
    initrd.write_bytes(bytes(5 << 20))
    r = guestdbg("run", "--kernel", small, "--initrd", initrd, "--ram", "8M")
    assert r.returncode == 2
    assert_one_line(r.stderr, "--initrd")
    r = guestdbg("run", "--kernel", small, "--initrd", initrd, "--ram", "12M")  # initrd fits, the DTB not
    assert r.returncode == 2
    assert_one_line(r.stderr, "no room for the")


def test_error_bad_dtb(tmp_path, program):
    image = write_image(tmp_path, program)
    good = devicetree.virt_dtb(128 << 20)
    cases = {"garbage": b"not a dtb at all" * 4,
             "truncated": good[: len(good) // 2],
             "bad-struct": good[:40] + b"\xff" * (len(good) - 40)}
    for name, data in cases.items():
        path = tmp_path / f"{name}.dtb"
        path.write_bytes(data)
        r = guestdbg("run", "--kernel", image, "--dtb", path)
        assert r.returncode == 2, (name, r.stderr)
        assert_one_line(r.stderr, f"--dtb {path}:")
        with pytest.raises(ImageError):
            devicetree.parse(data)


def test_error_overlap_rom_elf_segment_with_dtb(tmp_path):
    """A ROM ELF that also loads (zero-fills) RAM at 0x40000000 would overwrite the firmware DTB."""
    code = struct.pack("<I", 0x14000000)  # b .
    ehdr = struct.pack("<4sBBBBB7sHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0, bytes(7), 2, 183, 1,
                       0, 64, 0, 0, 64, 56, 2, 0, 0, 0)
    ph_rom = struct.pack("<IIQQQQQQ", 1, 5, 0x1000, 0, 0, len(code), len(code), 0x1000)
    ph_ram = struct.pack("<IIQQQQQQ", 1, 6, 0x1000, RAM_BASE, RAM_BASE, 0, 0x2000, 0x1000)
    elf = ehdr + ph_rom + ph_ram
    elf += bytes(0x1000 - len(elf)) + code
    path = tmp_path / "rom.elf"
    path.write_bytes(elf)
    r = guestdbg("run", "--rom", path)
    assert r.returncode == 2, r.stderr
    assert_one_line(r.stderr, "overlaps the DTB")


@pytest.mark.parametrize("args,needle", [
    (["--initrd", "x"], "--initrd needs --kernel"),
    (["--append", "x"], "--append needs --kernel"),
    (["--dtb", "x"], "--dtb needs --kernel"),
    (["--kernel", "k", "--rom", "r"], "fw_cfg"),
    (["--kernel", "k", "img"], "--kernel and IMAGE"),
])
def test_error_flag_combinations(args, needle):
    r = guestdbg("run", *args)
    assert r.returncode == 2
    assert_one_line(r.stderr, needle)


def test_error_unprintable_append(tmp_path, program):
    image = write_image(tmp_path, program)
    r = guestdbg("run", "--kernel", image, "--append", "a\x01b")
    assert r.returncode == 2
    assert_one_line(r.stderr, "printable ASCII")
