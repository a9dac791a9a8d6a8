"""The virt board's device tree: what a Linux kernel or U-Boot is told the board has.

Built with the `fdt` package (a maintained, pure-Python FDT library), never by hand. The tree
describes exactly what `board.virt` models, with QEMU virt's node names, compatibles,
phandles and interrupt specifiers (`qemu-system-aarch64 -M virt,dumpdtb=F -cpu cortex-a57`),
so a guest that boots there finds the same devices here:

    /memory@40000000   RAM, its size from the VirtConfig
    /flash@0           cfi-flash, both 64 MiB banks (flash0, flash1), bank-width 4 (board/flash.py)
    /cpus/cpu@N        one per vCPU: arm,cortex-a57, reg = MPIDR Aff0, enable-method "psci";
                       with several, /cpus/cpu-map puts them in socket0/cluster0 as QEMU does
    /psci              arm,psci-1.0 + arm,psci-0.2, method "hvc" (firmware.py answers PSCI 1.0)
    /timer             arm,armv8-timer, the four PPIs (secure/non-secure phys, virt, hyp),
                       wired to every CPU (GIC_CPU_MASK_SIMPLE(N) in their flags)
    /intc@8000000      GICv2 distributor + CPU interfaces, no v2m frame (not modelled)
    /pl011@9000000     the UART, SPI 1, clocked by /apb-pclk (24 MHz fixed clock)
    /chosen            stdout-path, and bootargs / the initrd range when given

Left out, because the board does not model them (a listed device the board lacks makes Linux
or U-Boot probe it and abort): the PMU, pl031, pl061 + gpio-keys, fw-cfg, virtio-mmio, PCIe,
the platform bus and the GICv2m frame. /chosen has no rng-seed or kaslr-seed: the
guest's boot stays deterministic and its kernel addresses fixed for the debugger.
"""

from __future__ import annotations

import struct
from typing import Any

import fdt

from guestdbg.board.common import ImageError
from guestdbg.board.flash import VIRT_FLASH_BANK_WIDTH
from guestdbg.board.virt import FLASH0_BASE, FLASH1_BASE, FLASH_BANK_SIZE, GIC_BASE, RAM_BASE, UART_BASE, UART_SIZE

FDT_MAGIC = 0xD00DFEED
FDT_MAGIC_BYTES = struct.pack(">I", FDT_MAGIC)

# Phandles as QEMU's virt numbers them: the clock, then the CPUs from the last one down (its
# fdt_add_cpu_nodes goes backwards), then the GIC. One CPU: CPU0 0x8001, GIC 0x8002.
PHANDLE_CLK = 0x8000
PHANDLE_CPU0 = 0x8001
PHANDLE_GIC = 0x8002


def phandle_cpu(index: int, cpus: int) -> int:
    return PHANDLE_CLK + cpus - index


def phandle_gic(cpus: int) -> int:
    return PHANDLE_CLK + cpus + 1

# GIC interrupt specifier cells (Linux's arm,gic binding).
GIC_SPI, GIC_PPI = 0, 1
IRQ_TYPE_LEVEL_HIGH = 4
PPI_CPU_MASK_SHIFT = 8  # bits 8-15 of a PPI's flags: the CPUs it is wired to

GICD_SIZE = 0x10000
GICC_BASE = GIC_BASE + 0x10000
GICC_SIZE = 0x10000

# The architected timer's PPIs (QEMU's ARCH_TIMER_*_IRQ): secure phys, non-secure phys, virt, hyp.
TIMER_PPIS = (13, 14, 11, 10)
UART_SPI = 1
APB_PCLK_HZ = 24_000_000

UART_NODE = f"pl011@{UART_BASE:x}"
GIC_NODE = f"intc@{GIC_BASE:x}"


def _cells64(*values: int) -> list[int]:
    """Each value as two 32-bit cells (#address-cells = #size-cells = 2)."""
    out: list[int] = []
    for v in values:
        out += [(v >> 32) & 0xFFFFFFFF, v & 0xFFFFFFFF]
    return out


def _node(name: str, **props: Any) -> fdt.Node:
    node = fdt.Node(name)
    for key, value in props.items():
        name = key if key == "device_type" else key.replace("_", "-").replace("HASH", "#")
        _set(node, name, value)
    return node


def _set(node: fdt.Node, name: str, value: Any) -> None:
    """A property: True = empty, str = one string, tuple of str = a string list, int/list = cells."""
    if value is True:
        prop: Any = fdt.Property(name)
    elif isinstance(value, str):
        prop = fdt.PropStrings(name, value)
    elif isinstance(value, tuple):
        prop = fdt.PropStrings(name, *value)
    elif isinstance(value, int):
        prop = fdt.PropWords(name, value)
    else:
        prop = fdt.PropWords(name, *value)
    if node.exist_property(name):
        node.remove_property(name)
    node.append(prop)


def _check_cmdline(bootargs: str) -> None:
    if not bootargs.isascii() or not bootargs.isprintable():
        raise ImageError("--append: the kernel command line must be printable ASCII")


def set_chosen(tree: fdt.FDT, *, bootargs: str | None = None, initrd: tuple[int, int] | None = None) -> None:
    """/chosen's bootargs and linux,initrd-start/end (64-bit, as the root's #address-cells = 2),
    as QEMU's arm_load_dtb() sets them, in a generated or a user's tree."""
    chosen = tree.get_node("/chosen", create=True)
    if bootargs:
        _check_cmdline(bootargs)
        _set(chosen, "bootargs", bootargs)
    if initrd is not None:
        _set(chosen, "linux,initrd-start", _cells64(initrd[0]))
        _set(chosen, "linux,initrd-end", _cells64(initrd[1]))


def set_memory(tree: fdt.FDT, ram_size: int) -> None:
    """Replace every /memory node with the board's RAM, as QEMU's arm_load_dtb() does for -dtb."""
    for node in list(tree.root.nodes):
        if node.name == "memory" or node.name.startswith("memory@"):
            tree.root.remove_subnode(node.name)
    tree.root.append(_node(f"memory@{RAM_BASE:x}", device_type="memory", reg=_cells64(RAM_BASE, ram_size)))


def virt_fdt(ram_size: int, *, bootargs: str | None = None, initrd: tuple[int, int] | None = None,
             cpus: int = 1) -> fdt.FDT:
    """The virt board's device tree for `cpus` vCPUs (see the module docstring)."""
    if not 1 <= cpus <= 8:
        raise ValueError(f"the virt board's GICv2 serves 1-8 CPUs, not {cpus}")
    gic_phandle = phandle_gic(cpus)
    tree = fdt.FDT(entries=[])
    tree.header.version = 17
    tree.header.last_comp_version = 16
    root = tree.root
    for key, value in (("interrupt-parent", gic_phandle), ("model", "linux,dummy-virt"),
                       ("#size-cells", 2), ("#address-cells", 2), ("compatible", "linux,dummy-virt")):
        _set(root, key, value)
    root.append(_node("psci", method="hvc", compatible=("arm,psci-1.0", "arm,psci-0.2")))
    root.append(_node(f"memory@{RAM_BASE:x}", reg=_cells64(RAM_BASE, ram_size), device_type="memory"))
    root.append(_node(f"flash@{FLASH0_BASE:x}", bank_width=VIRT_FLASH_BANK_WIDTH, compatible="cfi-flash",
                      reg=_cells64(FLASH0_BASE, FLASH_BANK_SIZE, FLASH1_BASE, FLASH_BANK_SIZE)))
    root.append(_node(UART_NODE, clock_names=("uartclk", "apb_pclk"), clocks=[PHANDLE_CLK, PHANDLE_CLK],
                      interrupts=[GIC_SPI, UART_SPI, IRQ_TYPE_LEVEL_HIGH], reg=_cells64(UART_BASE, UART_SIZE),
                      compatible=("arm,pl011", "arm,primecell")))
    root.append(_node(GIC_NODE, phandle=gic_phandle,
                      reg=_cells64(GIC_BASE, GICD_SIZE, GICC_BASE, GICC_SIZE),
                      compatible="arm,cortex-a15-gic", ranges=True, HASHsize_cells=2, HASHaddress_cells=2,
                      interrupt_controller=True, HASHinterrupt_cells=3))
    cpus_node = _node("cpus", HASHsize_cells=0, HASHaddress_cells=1)
    if cpus > 1:
        cluster = fdt.Node("cluster0")
        for i in range(cpus):
            cluster.append(_node(f"core{i}", cpu=phandle_cpu(i, cpus)))
        socket = fdt.Node("socket0")
        socket.append(cluster)
        cpu_map = fdt.Node("cpu-map")
        cpu_map.append(socket)
        cpus_node.append(cpu_map)
    for i in range(cpus):
        cpus_node.append(_node(f"cpu@{i:x}", phandle=phandle_cpu(i, cpus), reg=i, enable_method="psci",
                               compatible="arm,cortex-a57", device_type="cpu"))
    root.append(cpus_node)
    ppi_flags = (((1 << cpus) - 1) << PPI_CPU_MASK_SHIFT) | IRQ_TYPE_LEVEL_HIGH  # GIC_CPU_MASK_SIMPLE(cpus)
    timer_irqs = [cell for ppi in TIMER_PPIS for cell in (GIC_PPI, ppi, ppi_flags)]
    root.append(_node("timer", interrupts=timer_irqs, always_on=True,
                      compatible=("arm,armv8-timer", "arm,armv7-timer")))
    root.append(_node("apb-pclk", phandle=PHANDLE_CLK, clock_output_names="clk24mhz",
                      clock_frequency=APB_PCLK_HZ, HASHclock_cells=0, compatible="fixed-clock"))
    root.append(_node("chosen", stdout_path=f"/{UART_NODE}"))
    set_chosen(tree, bootargs=bootargs, initrd=initrd)
    return tree


def virt_dtb(ram_size: int, *, bootargs: str | None = None, initrd: tuple[int, int] | None = None,
             cpus: int = 1) -> bytes:
    return encode(virt_fdt(ram_size, bootargs=bootargs, initrd=initrd, cpus=cpus))


def encode(tree: fdt.FDT) -> bytes:
    return tree.to_dtb(version=17)


def parse(data: bytes, what: str = "DTB") -> fdt.FDT:
    """Parse a flattened device tree, or raise ImageError naming `what` and the reason."""
    if len(data) < 40 or data[:4] != FDT_MAGIC_BYTES:
        raise ImageError(f"{what}: not a flattened device tree (no d00dfeed magic)")
    total, off_struct, off_strings = struct.unpack_from(">III", data, 4)
    if total > len(data) or off_struct >= total or off_strings > total:
        raise ImageError(f"{what}: malformed device tree (header says {total} bytes, offsets "
                         f"{off_struct:#x}/{off_strings:#x}; the file has {len(data)})")
    # fdt.FDT's constructor shares one default list for memory reservations, and parse_dtb
    # appends to it: give it back empty however parsing ends.
    shared: list = fdt.FDT.__init__.__defaults__[1]
    try:
        tree = fdt.parse_dtb(bytes(data[:total]))
        tree.entries = list(tree.entries)
    except Exception as e:  # the library raises Exception, AssertionError, struct.error, ...
        raise ImageError(f"{what}: malformed device tree ({e or type(e).__name__})") from None
    finally:
        shared.clear()
    if tree.root is None or tree.root.name != "/":
        raise ImageError(f"{what}: malformed device tree (no root node)")
    return tree
