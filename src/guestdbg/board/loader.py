"""Loading Linux and firmware on the virt board, with QEMU's semantics (hw/arm/boot.c).

`--kernel Image` follows the arm64 boot protocol (Linux's Documentation/arch/arm64/booting.rst):
the 64-byte header has text_offset at 8, image_size at 16, flags at 24 and the magic "ARM\\x64"
at 0x38. As QEMU does, the Image goes at RAM base + text_offset, moved up by 2 MiB when
text_offset is below 4 KiB (QEMU keeps its boot stub there; a 2 MiB-aligned base is all the
protocol asks for); an Image with image_size 0 (before Linux 3.17) goes at RAM base + 0x80000.
A gzip-compressed Image is decompressed first (up to 256 MiB, QEMU's limit).

The initrd goes at RAM base + min(RAM/2, 128 MiB), or just after the kernel's image_size if
that is higher, page-aligned; the DTB after the initrd, aligned to 2 MiB. The vCPU starts at
the Image's first byte in EL1h with DAIF masked and the MMU off (the vCPU's reset state),
x0 = the DTB's address and x1-x3 = 0. (QEMU runs a few instructions of boot stub at RAM base
that set these registers; here they are set directly, so the first stop is the kernel's.)

For firmware (`--rom`/`--bios` with no IMAGE or kernel) the DTB goes at the start of RAM, where
QEMU puts it for -bios and U-Boot looks for it.

Everything is read and checked before the guest's memory is touched; each refusal is an
ImageError of one line.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from guestdbg.board import devicetree
from guestdbg.board.common import ImageError
from guestdbg.board.virt import RAM_BASE, VirtMachine

ARM64_MAGIC = b"ARM\x64"
ARM64_MAGIC_OFFSET = 0x38
ARM64_HEADER_SIZE = 64
ARM64_FLAG_BE = 1 << 0
KERNEL64_LOAD_ADDR = 0x0008_0000  # QEMU's offset for Images without image_size
BOOTLOADER_MAX_SIZE = 4 << 10  # QEMU's boot stub at RAM base
MAX_GUNZIP = 256 << 20  # QEMU's LOAD_IMAGE_MAX_GUNZIP_BYTES
PAGE = 4096
DTB_ALIGN = 2 << 20
GZIP_MAGIC = b"\x1f\x8b"


def _align_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


def read_file(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        reason = (e.strerror or str(e)).lower()
        raise ImageError(f"{what} {path}: {reason}") from None


@dataclass(frozen=True)
class Arm64Image:
    data: bytes  # decompressed
    text_offset: int
    image_size: int  # 0: not given (Linux before 3.17)
    flags: int
    compressed: bool


def read_arm64_image(path: str | Path) -> Arm64Image:
    data = read_file(path, "--kernel")
    compressed = data[:2] == GZIP_MAGIC
    if compressed:
        try:
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out = d.decompress(data, MAX_GUNZIP + 1)
        except zlib.error as e:
            raise ImageError(f"--kernel {path}: corrupt gzip data ({e})") from None
        if len(out) > MAX_GUNZIP:
            raise ImageError(f"--kernel {path}: decompresses to more than {MAX_GUNZIP >> 20} MiB")
        if not d.eof:
            raise ImageError(f"--kernel {path}: truncated gzip data")
        data = out
    if len(data) < ARM64_HEADER_SIZE or data[ARM64_MAGIC_OFFSET:ARM64_MAGIC_OFFSET + 4] != ARM64_MAGIC:
        raise ImageError(f"--kernel {path}: not an arm64 Linux Image (no \"ARM\\x64\" magic at offset 0x38"
                         f"{' after gunzip' if compressed else ''})")
    text_offset, image_size, flags = struct.unpack_from("<QQQ", data, 8)
    if image_size and flags & ARM64_FLAG_BE:
        raise ImageError(f"--kernel {path}: a big-endian Image (header flags bit 0); the vCPU is little-endian")
    return Arm64Image(data, text_offset, image_size, flags, compressed)


def kernel_load_offset(image: Arm64Image) -> int:
    """Where QEMU puts an Image, from RAM base."""
    if not image.image_size:
        return KERNEL64_LOAD_ADDR
    offset = image.text_offset
    return offset + (2 << 20) if offset < BOOTLOADER_MAX_SIZE else offset


@dataclass(frozen=True)
class LinuxBoot:
    """Where everything goes for a Linux boot; nothing is written until `apply`."""

    kernel: Arm64Image
    entry: int  # the Image's load address
    kernel_end: int  # entry + max(image_size, file size)
    initrd: bytes | None
    initrd_start: int
    dtb: bytes
    dtb_start: int

    @property
    def initrd_range(self) -> tuple[int, int] | None:
        return None if self.initrd is None else (self.initrd_start, self.initrd_start + len(self.initrd))


def _too_big(what: str, path, size: int, start: int, ram_end: int) -> ImageError:
    return ImageError(f"{what} {path}: {size:#x} bytes at {start:#x} do not fit in RAM "
                      f"({RAM_BASE:#x}-{ram_end - 1:#x})")


def dtb_for(ram_size: int, *, dtb_path: str | None, bootargs: str | None,
            initrd: tuple[int, int] | None, cpus: int = 1) -> bytes:
    """The generated DTB (for `cpus` vCPUs), or the user's (--dtb) with /memory and /chosen set
    as QEMU does."""
    if dtb_path is None:
        return devicetree.virt_dtb(ram_size, bootargs=bootargs, initrd=initrd, cpus=cpus)
    tree = devicetree.parse(read_file(dtb_path, "--dtb"), f"--dtb {dtb_path}")
    devicetree.set_memory(tree, ram_size)
    devicetree.set_chosen(tree, bootargs=bootargs, initrd=initrd)
    return devicetree.encode(tree)


def plan_linux(ram_size: int, kernel: str, *, initrd: str | None = None, append: str | None = None,
               dtb: str | None = None, cpus: int = 1) -> LinuxBoot:
    ram_end = RAM_BASE + ram_size
    image = read_arm64_image(kernel)
    entry = RAM_BASE + kernel_load_offset(image)
    kernel_end = entry + max(image.image_size, len(image.data))
    if kernel_end > ram_end:
        raise _too_big("--kernel", kernel, kernel_end - entry, entry, ram_end)
    initrd_start = _align_up(max(RAM_BASE + min(ram_size // 2, 128 << 20), kernel_end), PAGE)
    initrd_data = None
    if initrd is not None:
        initrd_data = read_file(initrd, "--initrd")
        if initrd_start + len(initrd_data) > ram_end:
            raise _too_big("--initrd", initrd, len(initrd_data), initrd_start, ram_end)
    rng = None if initrd_data is None else (initrd_start, initrd_start + len(initrd_data))
    blob = dtb_for(ram_size, dtb_path=dtb, bootargs=append, initrd=rng, cpus=cpus)
    dtb_start = _align_up(initrd_start + (len(initrd_data) if initrd_data is not None else 0), DTB_ALIGN)
    if dtb_start + len(blob) > ram_end:
        raise ImageError(f"no room for the {len(blob)}-byte DTB after the kernel and initrd "
                         f"(it would start at {dtb_start:#x}; RAM ends at {ram_end - 1:#x}): give more --ram")
    return LinuxBoot(image, entry, kernel_end, initrd_data, initrd_start, blob, dtb_start)


def apply_linux(machine: VirtMachine, boot: LinuxBoot) -> None:
    """Write the kernel, initrd and DTB; the vCPU at the Image's entry with x0 = DTB, x1-x3 = 0."""
    machine.load_image(boot.entry, boot.kernel.data)
    if boot.initrd is not None:
        machine.load_image(boot.initrd_start, boot.initrd)
    machine.load_image(boot.dtb_start, boot.dtb)
    machine.reset_cpu(boot.entry, (boot.dtb_start, 0, 0, 0))


def firmware_dtb(machine: VirtMachine, blob: bytes, ram_segments: tuple[tuple[int, int], ...] = ()) -> int:
    """The DTB at the start of RAM for firmware (QEMU's -bios); `ram_segments` are (start, end)
    ranges a ROM ELF also loads into RAM, which must not overlap it. Returns its address."""
    end = RAM_BASE + len(blob)
    if len(blob) > machine.config.ram_size:
        raise ImageError(f"the {len(blob)}-byte DTB does not fit in {machine.config.ram_size} bytes of RAM")
    for start, stop in ram_segments:
        if start < end and RAM_BASE < stop:
            raise ImageError(f"the ROM's segment at {start:#x}-{stop - 1:#x} overlaps the DTB at "
                             f"{RAM_BASE:#x}-{end - 1:#x} (firmware gets its DTB at the start of RAM)")
    machine.load_image(RAM_BASE, blob)
    return RAM_BASE

