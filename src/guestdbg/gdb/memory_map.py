"""What guest memory is: the `qXfer:memory-map:read` document for gdb, and the physical layout
(RAM, ROM, device windows, holes) that `qMemoryRegionInfo` describes for lldb.

With a memory map, gdb's default `breakpoint auto-hw on` turns a `break` in ROM or flash into a
hardware breakpoint instead of failing to write a BRK there, and gdb refuses memory accesses
outside the listed regions (`mem inaccessible-by-default`). gdb's map cannot say "device" or
"hole" and is read once per connection, before the guest's MMU is known, so it stays coarse
(see `regions_for`); lldb asks per address and gets the honest layout (`physical_layout`).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Iterable

KINDS = ("ram", "rom", "flash")
# QEMU's pflash on the virt board erases in 256 KiB sectors.
FLASH_BLOCKSIZE = 0x40000

_XML_HEADER = (
    '<?xml version="1.0"?>\n'
    '<!DOCTYPE memory-map PUBLIC "+//IDN gnu.org//DTD GDB Memory Map V1.0//EN"'
    ' "http://sourceware.org/gdb/gdb-memory-map.dtd">\n'
)

Region = tuple[int, int, str]


def memory_map_xml(regions: Iterable[Region]) -> str:
    """The `<memory-map>` document for (start, length, kind) regions, sorted by address.

    Raises ValueError for an unknown kind, an empty or negative region, or overlapping regions.
    """
    ordered = sorted(regions)
    root = ET.Element("memory-map")
    end_of_previous = 0
    for start, length, kind in ordered:
        if kind not in KINDS:
            raise ValueError(f"memory region kind must be one of {KINDS}, got {kind!r}")
        if start < 0 or length <= 0:
            raise ValueError(f"bad memory region start={start:#x} length={length:#x}")
        if start < end_of_previous:
            raise ValueError(f"memory region at {start:#x} overlaps the one before it")
        end_of_previous = start + length
        mem = ET.SubElement(root, "memory", type=kind, start=hex(start), length=hex(length))
        if kind == "flash":
            ET.SubElement(mem, "property", name="blocksize").text = hex(FLASH_BLOCKSIZE)
    ET.indent(root)
    return _XML_HEADER + ET.tostring(root, encoding="unicode") + "\n"


def regions_for(vm, *, open_gaps: bool = False) -> list[Region]:
    """Regions for a VM's memory slots (`vm.slots`: MemorySlot): read-only slots are "rom".

    gdb's addresses are virtual, and with the guest's MMU on they need not lie in any slot;
    with `open_gaps`, every address outside a ROM slot is listed as "ram", so gdb lets the stub
    answer for it (data or an error) instead of refusing it itself. ROM stays "rom", which is
    all gdb needs to choose hardware breakpoints there."""
    slots = sorted((s.guest_phys_addr, s.memory_size, "rom" if s.readonly else "ram") for s in vm.slots.values())
    if not open_gaps:
        return slots
    regions: list[Region] = []
    pos, top = 0, (1 << 64) - 1  # gdb cannot express a region ending exactly at 2**64
    for start, length, kind in slots:
        if kind == "rom":
            if start > pos:
                regions.append((pos, start - pos, "ram"))
            regions.append((start, length, "rom"))
            pos = start + length
    if pos < top:
        regions.append((pos, top - pos, "ram"))
    return regions


# ---------------------------------------------------------------------------------------------
# The physical layout, holes included (qMemoryRegionInfo)

ADDRESS_END = 1 << 64
# lldb's region ends are 64-bit: a region reaching 2**64 would end at 0 and send lldb's search
# for free address space round in circles, so the top hole stops one short, as lldb-server's.
LAST_ADDRESS = ADDRESS_END - 1

# Permissions each kind gives the guest (the debugger may also write ROM).
PERMISSIONS = {"ram": "rwx", "rom": "rx", "mmio": "rw", "hole": ""}


@dataclass(frozen=True)
class PhysRegion:
    start: int
    end: int        # exclusive
    kind: str       # "ram", "rom", "mmio" or "hole"
    name: str = ""
    allowed: str | None = None  # narrower permissions (the guest's page tables), if any

    @property
    def permissions(self) -> str:
        own = PERMISSIONS[self.kind]
        return own if self.allowed is None else "".join(c for c in own if c in self.allowed)


def physical_layout(vm) -> list[PhysRegion]:
    """Memory slots ("ram"/"rom") and device windows ("mmio", named after the device), sorted;
    the gaps between them are not listed (see `region_at`)."""
    regions = [PhysRegion(s.guest_phys_addr, s.guest_phys_addr + s.memory_size,
                          "rom" if s.readonly else "ram", "rom" if s.readonly else "ram")
               for s in vm.slots.values()]
    for dev in getattr(vm, "mmio_devices", ()):
        name = getattr(dev.device, "name", type(dev.device).__name__.lower())
        regions.append(PhysRegion(dev.base, dev.base + dev.size, "mmio", name))
    return sorted(regions, key=lambda r: r.start)


def region_at(layout: list[PhysRegion], addr: int) -> PhysRegion:
    """The region holding `addr`: one of `layout`, or the hole between two of them."""
    start = 0
    for r in layout:
        if r.start <= addr < r.end:
            return r
        if r.end <= addr:
            start = max(start, r.end)
        elif r.start > addr:
            return PhysRegion(start, r.start, "hole")
    return PhysRegion(start, max(LAST_ADDRESS, addr + 1), "hole")
