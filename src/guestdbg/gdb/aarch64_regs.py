"""gdb's view of the AArch64 registers: the target description and the packet hex.

The registers themselves (names, numbers, sizes, ONE_REG ids, how to read and write them) are
`guestdbg.arm.registers`, at integer level; the debug manager reads and writes them. This
module adds only what gdb needs: each register's target-description type and feature
(`REGISTERS`, `target_xml`), and the hex of the `g`/`G`/`p`/`P` packets and of the registers
expedited in a `T` stop reply, from and to the ints the manager deals in.

Theory of operation
-------------------
1. Numbering is `arm.registers`' (gdb's own aarch64 layout): x0..x30 are 0..30, sp 31, pc 32,
   cpsr 33, v0..v31 34..65, fpsr 66, fpcr 67, then the system registers of
   `org.guestdbg.aarch64.sysregs` from 68. gdb numbers its pseudo registers (q0, d0, s0, ...)
   after all of these.
2. Values travel as lowercase hex of the little-endian bytes, each register at its bit size.
3. Decoding validates everything (hex digits, exact lengths, known register numbers) and
   raises ValueError (KeyError for an unknown register number) before anything reaches the
   target; the catalogue then checks values (read-only registers) before its first write.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from guestdbg.gdb.reghex import RegisterHex
from guestdbg.arm import registers as arm_registers

FEATURE_CORE = "org.gnu.gdb.aarch64.core"
FEATURE_FPU = "org.gnu.gdb.aarch64.fpu"
FEATURE_SYSREGS = "org.guestdbg.aarch64.sysregs"
FEATURES: tuple[str, ...] = (FEATURE_CORE, FEATURE_FPU, FEATURE_SYSREGS)
_FEATURE_OF_GROUP = {arm_registers.GROUP_CORE: FEATURE_CORE, arm_registers.GROUP_FPU: FEATURE_FPU,
                     arm_registers.GROUP_SYSTEM: FEATURE_SYSREGS}


@dataclass(frozen=True)
class RegDef:
    """One register as gdb sees it. `type` is a gdb target-description type (predefined, or
    defined in `target_xml`); `xml_group` the register group gdb lists it under, if any."""

    name: str
    bitsize: int
    gdb_regnum: int
    type: str
    xml_group: str | None
    feature: str
    readonly: bool = False

    @property
    def hex_len(self) -> int:
        """Number of hex digits this register takes in g/G/p/P packets."""
        return self.bitsize // 4


# gdb types of the registers that are not plain integers of their group's default type.
_TYPES = {"sp": "data_ptr", "pc": "code_ptr", "cpsr": "cpsr_flags", "fpsr": "fpsr_flags",
          "fpcr": "fpcr_flags", "vbar_el1": "code_ptr", "far_el1": "data_ptr", "elr_el1": "code_ptr",
          "sp_el0": "data_ptr", "sp_el1": "data_ptr"}
_DEFAULT_TYPE = {arm_registers.GROUP_CORE: "int", arm_registers.GROUP_FPU: "aarch64v",
                 arm_registers.GROUP_SYSTEM: "uint64"}

REGISTERS: tuple[RegDef, ...] = tuple(
    RegDef(r.name, r.bitsize, r.gdb_regnum, _TYPES.get(r.name, _DEFAULT_TYPE[r.group]),
           "system" if r.group == arm_registers.GROUP_SYSTEM else None, _FEATURE_OF_GROUP[r.group], r.readonly)
    for r in arm_registers.REGISTERS)
BY_REGNUM: dict[int, RegDef] = {r.gdb_regnum: r for r in REGISTERS}
BY_NAME: dict[str, RegDef] = {r.name: r for r in REGISTERS}

REG_FP, REG_SP, REG_PC, REG_CPSR = (arm_registers.REG_FP, arm_registers.REG_SP, arm_registers.REG_PC,
                                    arm_registers.REG_CPSR)
# gdbserver's aarch64 port expedites the frame pointer, sp and pc: enough to unwind the stop frame.
EXPEDITED_REGNUMS: tuple[int, ...] = (REG_FP, REG_SP, REG_PC)

# The packet hex (g, G, p, P, and the expedited registers of a T stop reply).
_HEXCODEC = RegisterHex(REGISTERS, EXPEDITED_REGNUMS)
G_PACKET_HEX_LEN = _HEXCODEC.g_packet_hex_len
encode_g = _HEXCODEC.encode_g
decode_G = _HEXCODEC.decode_G  # noqa: N816 (packet letter)
encode_register = _HEXCODEC.encode_register
decode_register = _HEXCODEC.decode_register
encode_expedited = _HEXCODEC.encode_expedited
encode_expedited_reply = _HEXCODEC.encode_expedited_reply


# ---------------------------------------------------------------------------------------------
# Target description

# Flag fields: (name, first bit, last bit). Single-bit fields become booleans in gdb.
_FLAGS: dict[str, tuple[tuple[str, int, int], ...]] = {
    "cpsr_flags": (
        ("SP", 0, 0), ("EL", 2, 3), ("nRW", 4, 4), ("F", 6, 6), ("I", 7, 7), ("A", 8, 8),
        ("D", 9, 9), ("BTYPE", 10, 11), ("SSBS", 12, 12), ("IL", 20, 20), ("SS", 21, 21),
        ("PAN", 22, 22), ("UAO", 23, 23), ("DIT", 24, 24), ("TCO", 25, 25),
        ("V", 28, 28), ("C", 29, 29), ("Z", 30, 30), ("N", 31, 31),
    ),
    "fpsr_flags": (
        ("IOC", 0, 0), ("DZC", 1, 1), ("OFC", 2, 2), ("UFC", 3, 3), ("IXC", 4, 4), ("IDC", 7, 7),
        ("QC", 27, 27), ("V", 28, 28), ("C", 29, 29), ("Z", 30, 30), ("N", 31, 31),
    ),
    "fpcr_flags": (
        ("IOE", 8, 8), ("DZE", 9, 9), ("OFE", 10, 10), ("UFE", 11, 11), ("IXE", 12, 12),
        ("IDE", 15, 15), ("Len", 16, 18), ("FZ16", 19, 19), ("Stride", 20, 21),
        ("RMode", 22, 23), ("FZ", 24, 24), ("DN", 25, 25), ("AHP", 26, 26),
    ),
}

# The views of a 128-bit SIMD&FP register, named as gdb's aarch64 fpu feature names them, so
# `p $v0.d.f`, `p $v0.s.u` and friends work as against gdbserver or QEMU.
# vector id -> (element type, count)
_VECTORS: dict[str, tuple[str, int]] = {
    "v2d": ("ieee_double", 2), "v2u": ("uint64", 2), "v2i": ("int64", 2),
    "v4f": ("ieee_single", 4), "v4u": ("uint32", 4), "v4i": ("int32", 4),
    "v8f": ("ieee_half", 8), "v8u": ("uint16", 8), "v8i": ("int16", 8),
    "v8bf16": ("bfloat16", 8),
    "v16u": ("uint8", 16), "v16i": ("int8", 16),
    "v1u": ("uint128", 1), "v1i": ("int128", 1),
}
# union id -> ((field, type), ...); the last one is the register type.
_UNIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "vnd": (("f", "v2d"), ("u", "v2u"), ("s", "v2i")),
    "vns": (("f", "v4f"), ("u", "v4u"), ("s", "v4i")),
    "vnh": (("bf", "v8bf16"), ("f", "v8f"), ("u", "v8u"), ("s", "v8i")),
    "vnb": (("u", "v16u"), ("s", "v16i")),
    "vnq": (("u", "v1u"), ("s", "v1i")),
    "aarch64v": (("d", "vnd"), ("s", "vns"), ("h", "vnh"), ("b", "vnb"), ("q", "vnq")),
}

# Types each feature defines before its registers.
_FEATURE_FLAGS = {FEATURE_CORE: ("cpsr_flags",), FEATURE_FPU: ("fpsr_flags", "fpcr_flags")}

_XML_HEADER = '<?xml version="1.0"?>\n<!DOCTYPE target SYSTEM "gdb-target.dtd">\n'


def _add_types(feature: ET.Element, name: str) -> None:
    if name == FEATURE_FPU:
        for vid, (etype, count) in _VECTORS.items():
            ET.SubElement(feature, "vector", id=vid, type=etype, count=str(count))
        for uid, fields in _UNIONS.items():
            union = ET.SubElement(feature, "union", id=uid)
            for fname, ftype in fields:
                ET.SubElement(union, "field", name=fname, type=ftype)
    for fid in _FEATURE_FLAGS.get(name, ()):
        flags = ET.SubElement(feature, "flags", id=fid, size="4")
        for fname, start, end in _FLAGS[fid]:
            ET.SubElement(flags, "field", name=fname, start=str(start), end=str(end))


def target_xml() -> str:
    """The complete `target.xml` document, every feature inline, every register numbered."""
    target = ET.Element("target", version="1.0")
    ET.SubElement(target, "architecture").text = "aarch64"
    for fname in FEATURES:
        feature = ET.SubElement(target, "feature", name=fname)
        _add_types(feature, fname)
        for r in REGISTERS:
            if r.feature != fname:
                continue
            attrs = {"name": r.name, "bitsize": str(r.bitsize), "type": r.type, "regnum": str(r.gdb_regnum)}
            if r.xml_group is not None:
                attrs["group"] = r.xml_group
            ET.SubElement(feature, "reg", attrs)
    ET.indent(target)
    return _XML_HEADER + ET.tostring(target, encoding="unicode") + "\n"
