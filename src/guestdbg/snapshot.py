"""VM snapshots: the register list's values, guest memory and device state, in one file.

Migration goes through KVM_GET_REG_LIST/ONE_REG only, so the debugger's state (breakpoints,
watchpoints, single-step) is never in a snapshot: a debugger re-applies its own after loading.

File layout (all integers little-endian):

    magic    8 bytes   b"GDBGSNAP"
    version  u32       FORMAT_VERSION
    length   u64       length of body
    sha256   32 bytes  of body
    body:
      header_len u32, header (JSON: machine config, device state, register ids, memory layout)
      registers  each value in its ONE_REG size, in header["registers"] order (vCPU 0), then
                 for a machine with several vCPUs each other vCPU's, in header["vcpus"][i - 1]
                 order (their icount, counter offset and power state are in the board's
                 device state, "smp")
      memory     per memory slot: zlib stream of its non-zero 4 KiB pages, listed in the header

Loading checks magic, version, length, checksum, machine config and every register id before
it touches the VM, so a bad file changes nothing.

Boards: the header's "board" names the machine kind ("aarch64": the virt board's
VirtConfig and ONE_REG ids; "x86_64": the pc board's PcConfig and the x86 KVM back end's
register list, whose group ids guestdbg.backends.kvm_x86.vm defines). A file without it is
an aarch64 snapshot.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import zlib
from pathlib import Path

from guestdbg.arm import kvm_regs as kr
from guestdbg import vmapi
from guestdbg.board.common import Board
from guestdbg.board.virt import VirtConfig, VirtMachine
from guestdbg.debug.profile import profile_for

MAGIC = b"GDBGSNAP"
FORMAT_VERSION = 1
_PREAMBLE = struct.Struct("<8sIQ32s")
PAGE = 4096
_ZERO_PAGE = bytes(PAGE)
_CHUNK = 64 << 10  # under malloc's mmap threshold: bigger buffers are fresh pages each time, 3x slower
_ZERO_CHUNK = bytes(_CHUNK)


class SnapshotError(ValueError):
    """A snapshot that cannot be written or loaded, with the reason."""


def _board(machine: Board) -> str:
    """The machine's board kind: its architecture profile's name."""
    return profile_for(machine).name


def _board_kind(board: str):
    """(config class, reg_size_bytes, machine class) of a board name."""
    if board == "x86_64":
        from guestdbg.backends.kvm_x86 import vm as x86vm
        from guestdbg.board.pc import PcConfig
        from guestdbg.board.pc_probe import create_pc_machine
        return PcConfig, x86vm.reg_size_bytes, create_pc_machine
    if board == "aarch64":
        return VirtConfig, kr.reg_size_bytes, VirtMachine
    raise SnapshotError(f"snapshot of an unknown board {board!r}")


def dumps(machine: Board, *, compress: bool = True) -> bytes:
    """The machine as snapshot bytes. `compress=False` stores the memory pages as they are
    (still a valid zlib stream): for a snapshot kept in memory, such as the debugger's reset
    point taken at every start, where compressing the loaded kernel cost most of a second."""
    vcpus = _vcpus(machine)
    if any(v.access_in_flight() for v in vcpus):
        raise SnapshotError("the vCPU is in the middle of an MMIO or I/O access; run it on first")
    board = _board(machine)
    reg_size = _board_kind(board)[1]
    reg_lists = [v.get_reg_list() for v in vcpus]
    regs = b"".join(v.get_one_reg(r).to_bytes(reg_size(r), "little") for v, ids in zip(vcpus, reg_lists) for r in ids)
    reg_ids = reg_lists[0]
    memory_meta, memory_blobs = [], []
    slots: list[vmapi.MemorySlot] = sorted(machine.vm.slots.values(), key=lambda s: s.slot)
    for slot in slots:
        pages, content = _nonzero_pages(machine.vm, slot.guest_phys_addr, slot.memory_size)
        blob = zlib.compress(b"".join(content), 1 if compress else 0)
        memory_meta.append({"slot": slot.slot, "guest_phys_addr": slot.guest_phys_addr,
                            "memory_size": slot.memory_size, "flags": slot.flags,
                            "pages": _ranges(pages), "length": len(blob)})
        memory_blobs.append(blob)
    header_dict: dict[str, object] = {
        "config": machine.config.to_dict(),
        "devices": machine.device_state(),
        "registers": reg_ids,
        "memory": memory_meta,
    }
    if len(vcpus) > 1:
        header_dict["vcpus"] = reg_lists[1:]
    if board != "aarch64":
        header_dict["board"] = board
    header = json.dumps(header_dict, sort_keys=True).encode()
    body = struct.pack("<I", len(header)) + header + regs + b"".join(memory_blobs)
    return _PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(body), hashlib.sha256(body).digest()) + body


def _vcpus(machine: Board) -> list:
    """Every vCPU of the machine, vCPU 0 first (a board without `vcpus` has its one `vcpu`)."""
    return list(getattr(machine, "vcpus", None) or [machine.vcpu])


def _nonzero_pages(vm, base: int, size: int) -> tuple[list[int], list[bytes]]:
    """(page indexes, their bytes) of the non-zero pages of [base, base+size). Read in chunks
    that are skipped whole when zero: one 128 MiB read costs several times more (the manager
    takes one of these at every start, for `reset`). Chunks the VM knows are still untouched
    (`written_ranges`: before any vCPU ran, only what the host wrote) are not even read: the
    first read of a fresh anonymous mapping costs a page fault per page."""
    pages, content = [], []
    written = getattr(vm, "written_ranges", lambda: None)()
    for off in range(0, size, _CHUNK):
        n = min(_CHUNK, size - off)
        if written is not None and not any(lo < base + off + n and base + off < hi for lo, hi in written):
            continue
        data = vm.read_phys(base + off, n)
        if data == _ZERO_CHUNK[:n]:
            continue
        for p in range(0, n, PAGE):
            page = data[p:p + PAGE]
            if page != _ZERO_PAGE:
                pages.append((off + p) // PAGE)
                content.append(page)
    return pages, content


def save(machine: Board, path: str | os.PathLike) -> None:
    """Write atomically: a temporary file in the same directory, fsync, then rename."""
    path = Path(path)
    data = dumps(machine)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Parsed:
    def __init__(self, config: VirtConfig, devices: dict, registers: list[tuple[int, int]],
                 memory: list[tuple[dict, dict[int, bytes]]], board: str = "aarch64",
                 more_vcpus: list[list[tuple[int, int]]] | None = None):
        self.config, self.devices, self.registers, self.memory = config, devices, registers, memory
        self.board = board
        self.more_vcpus = more_vcpus or []  # the registers of vCPUs 1, 2, ...


def _parse(data: bytes) -> _Parsed:
    if len(data) < _PREAMBLE.size:
        raise SnapshotError(f"truncated snapshot: {len(data)} bytes")
    magic, version, length, digest = _PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise SnapshotError("not a guestdbg snapshot (bad magic)")
    if version != FORMAT_VERSION:
        raise SnapshotError(f"snapshot format version {version}, this guestdbg reads {FORMAT_VERSION}")
    body = data[_PREAMBLE.size:]
    if len(body) != length:
        raise SnapshotError(f"truncated snapshot: body has {len(body)} of {length} bytes")
    if hashlib.sha256(body).digest() != digest:
        raise SnapshotError("snapshot checksum mismatch: the file is corrupt")
    try:
        (hlen,) = struct.unpack_from("<I", body)
        header = json.loads(body[4:4 + hlen])
        board = header.get("board", "aarch64")
        config_class, reg_size, _ = _board_kind(board)
        config = config_class(**header["config"])
        offset = 4 + hlen
        per_vcpu: list[list[tuple[int, int]]] = []
        for ids in [header["registers"]] + list(header.get("vcpus", [])):
            registers = []
            for reg_id in ids:
                size = reg_size(reg_id)
                registers.append((reg_id, int.from_bytes(body[offset:offset + size], "little")))
                offset += size
            per_vcpu.append(registers)
        registers = per_vcpu[0]
        memory = []
        for meta in header["memory"]:
            raw = zlib.decompress(body[offset:offset + meta["length"]])
            offset += meta["length"]
            pages = [p for start, count in meta["pages"] for p in range(start, start + count)]
            if len(raw) != len(pages) * PAGE:
                raise SnapshotError("memory pages do not match their index")
            memory.append((meta, {p: raw[i * PAGE:(i + 1) * PAGE] for i, p in enumerate(pages)}))
        if offset != len(body):
            raise SnapshotError("trailing data after the memory image")
    except SnapshotError:
        raise
    except (KeyError, TypeError, ValueError, struct.error, zlib.error) as e:
        raise SnapshotError(f"malformed snapshot: {e}") from None
    return _Parsed(config, header["devices"], registers, memory, board, per_vcpu[1:])


def restore_into(machine: Board, data: bytes) -> None:
    """Restore a snapshot into a machine of the same configuration, or change nothing."""
    snap = _parse(data)
    if snap.board != _board(machine):
        raise SnapshotError(f"snapshot is of a {snap.board} machine, this one is {_board(machine)}")
    if snap.config != machine.config:
        raise SnapshotError(f"snapshot is of a different machine: {snap.config} vs {machine.config}")
    vcpus = _vcpus(machine)
    saved = [snap.registers] + snap.more_vcpus
    if len(saved) != len(vcpus):
        raise SnapshotError(f"snapshot has {len(saved)} vCPUs, this machine {len(vcpus)}")
    for vcpu, registers in zip(vcpus, saved):
        known = set(vcpu.get_reg_list())
        unknown = [r for r, _ in registers if r not in known]
        if unknown:
            raise SnapshotError(f"snapshot has registers this vCPU lacks: {', '.join(hex(r) for r in unknown[:4])}")
    for meta, _ in snap.memory:
        slot = machine.vm.slots.get(meta["slot"])
        if slot is None or (slot.guest_phys_addr, slot.memory_size) != (meta["guest_phys_addr"], meta["memory_size"]):
            raise SnapshotError(f"snapshot memory slot {meta['slot']} does not match this machine")
    # Everything checked: apply.
    for meta, pages in snap.memory:
        base, size = meta["guest_phys_addr"], meta["memory_size"]
        per_chunk = _CHUNK // PAGE
        # In chunks, writing only those that differ: Unicorn's writes cost ~5x its reads.
        for off in range(0, size, _CHUNK):
            n = min(_CHUNK, size - off)
            first = off // PAGE
            chunk = bytearray(n)
            for p in range(first, first + per_chunk):
                content = pages.get(p)
                if content is not None:
                    chunk[(p - first) * PAGE:(p - first + 1) * PAGE] = content
            if machine.vm.read_phys(base + off, n) != chunk:
                machine.vm.write_phys(base + off, bytes(chunk))
    for vcpu, registers in zip(vcpus, saved):
        for reg_id, value in registers:
            vcpu.set_one_reg(reg_id, value)
        getattr(vcpu, "forget_translations", lambda: None)()  # its TLB held the old page tables
    machine.restore_device_state(snap.devices)


def load(path: str | os.PathLike, console=None) -> Board:
    """A new machine, built from the snapshot's own configuration and restored from it."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise SnapshotError(f"{path}: no such file") from None
    parsed = _parse(data)
    machine = _board_kind(parsed.board)[2](parsed.config, console=console)
    restore_into(machine, data)
    return machine


def _ranges(pages: list[int]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for p in pages:
        if out and out[-1][0] + out[-1][1] == p:
            out[-1][1] += 1
        else:
            out.append([p, 1])
    return [(start, count) for start, count in out]
