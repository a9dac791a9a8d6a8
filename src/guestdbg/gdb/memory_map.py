"""gdb's view of guest memory: the `qXfer:memory-map:read` document.

The facts come from the debug manager as plain data (`debug.regions.PhysRegion`: RAM, ROM,
device windows); lldb's qMemoryRegionInfo answers are formatted from the same data in the
session.

With a memory map, gdb's default `breakpoint auto-hw on` turns a `break` in ROM or flash into a
hardware breakpoint instead of failing to write a BRK there, and gdb refuses memory accesses
outside the listed regions (`mem inaccessible-by-default`). gdb's map cannot say "device" or
"hole" and is read once per connection, before the guest's MMU is known, so it stays coarse
(see `regions_for`); lldb asks per address and gets the honest layout
(`GuestDebugManager.memory_region`).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Iterable

from guestdbg.debug.regions import PhysRegion

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


def regions_for(layout: Iterable[PhysRegion], *, open_gaps: bool = False) -> list[Region]:
    """Regions for the memory (RAM and ROM) of a physical layout (`manager.memory_layout()`);
    device windows are left out.

    gdb's addresses are virtual, and with the guest's MMU on they need not lie in any slot;
    with `open_gaps`, every address outside a ROM slot is listed as "ram", so gdb lets the stub
    answer for it (data or an error) instead of refusing it itself. ROM stays "rom", which is
    all gdb needs to choose hardware breakpoints there."""
    slots = sorted((r.start, r.end - r.start, r.kind) for r in layout if r.kind in ("ram", "rom"))
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
