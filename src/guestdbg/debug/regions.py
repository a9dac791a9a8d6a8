"""What guest-physical memory is, as plain data: RAM, ROM, device windows and the holes between
them (`PhysRegion`), for the debug manager's `memory_region`/`memory_layout` answers.

The GDB session formats these for its clients (`gdb/memory_map`'s memory-map document for gdb,
qMemoryRegionInfo for lldb); nothing here knows a protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


def physical_layout(vm: Any) -> list[PhysRegion]:
    """A VM's memory slots ("ram"/"rom") and device windows ("mmio", named after the device),
    sorted; the gaps between them are not listed (see `region_at`)."""
    regions = [PhysRegion(s.guest_phys_addr, s.guest_phys_addr + s.memory_size,
                          "rom" if s.readonly else "ram", "rom" if s.readonly else "ram")
               for s in vm.slots.values()]
    for dev in getattr(vm, "mmio_devices", ()):  # the x86 VM has no inline MMIO devices
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
