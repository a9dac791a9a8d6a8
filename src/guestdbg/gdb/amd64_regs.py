"""gdb's view of the x86-64 registers (the twin of aarch64_regs, same API): the target
description and the packet hex.

The registers themselves (names, numbers, sizes, where each lives in the vCPU's KVM state, how
to read and write them) are `guestdbg.x86.registers`, at integer level; the debug manager reads
and writes them. This module adds what gdb needs: each register's target-description type,
feature and group (`REGISTERS`, `target_xml`), and the hex of `g`/`G`/`p`/`P` and of the
registers expedited in a `T` stop reply (rbp, rsp, rip).

Numbering is gdb's amd64 layout (features org.gnu.gdb.i386.core, .sse, .segments, and
org.guestdbg.x86.sys for the system registers QEMU's gdbstub also offers). Values travel as
lowercase hex of the little-endian bytes, each register at its bit size; decoding validates
length and hex and raises ValueError (KeyError for an unknown register number) before anything
reaches the target.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from guestdbg.gdb.reghex import RegisterHex
from guestdbg.x86 import registers as x86_registers

FEATURE_CORE = "org.gnu.gdb.i386.core"
FEATURE_SSE = "org.gnu.gdb.i386.sse"
FEATURE_SEGMENTS = "org.gnu.gdb.i386.segments"
FEATURE_SYS = "org.guestdbg.x86.sys"  # gdb defines no feature for these: shown under their names
FEATURES = (FEATURE_CORE, FEATURE_SSE, FEATURE_SEGMENTS, FEATURE_SYS)
_FEATURE_OF_GROUP = {x86_registers.GROUP_CORE: FEATURE_CORE, x86_registers.GROUP_SSE: FEATURE_SSE,
                     x86_registers.GROUP_SEGMENTS: FEATURE_SEGMENTS, x86_registers.GROUP_SYS: FEATURE_SYS}


@dataclass(frozen=True)
class RegDef:
    """One register as gdb sees it: its target-description type, feature and register group."""

    name: str
    bitsize: int
    gdb_regnum: int
    type: str
    feature: str
    readonly: bool = False
    xml_group: str | None = None

    @property
    def hex_len(self) -> int:
        return self.bitsize // 4


_X87_CONTROL = ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")
# gdb types (gdb's i386/64bit-*.xml, QEMU's names for the system registers); "int64" otherwise.
_TYPES: dict[str, str] = {
    "rbp": "data_ptr", "rsp": "data_ptr", "rip": "code_ptr", "eflags": "i386_eflags",
    **{seg: "int32" for seg in ("cs", "ss", "ds", "es", "fs", "gs")},
    **{f"st{i}": "i387_ext" for i in range(8)},
    **{name: "int" for name in _X87_CONTROL + ("fs_base", "gs_base")},
    **{f"xmm{i}": "vec128" for i in range(16)},
    "mxcsr": "i386_mxcsr", "cr0": "i386_cr0", "cr3": "i386_cr3", "cr4": "i386_cr4", "efer": "i386_efer",
}
_XML_GROUPS = {**{n: "float" for n in _X87_CONTROL}, "mxcsr": "vector"}

REGISTERS: tuple[RegDef, ...] = tuple(
    RegDef(r.name, r.bitsize, r.gdb_regnum, _TYPES.get(r.name, "int64"), _FEATURE_OF_GROUP[r.group], r.readonly,
           _XML_GROUPS.get(r.name))
    for r in x86_registers.REGISTERS)
BY_REGNUM = {r.gdb_regnum: r for r in REGISTERS}
BY_NAME = {r.name: r for r in REGISTERS}
REG_RBP, REG_RSP, REG_RIP = x86_registers.REG_RBP, x86_registers.REG_RSP, x86_registers.REG_RIP
# gdbserver's amd64 port expedites rbp, rsp and rip: enough to unwind the stop frame.
EXPEDITED_REGNUMS = (REG_RBP, REG_RSP, REG_RIP)
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
# Target description (the feature contents gdb's i386/64bit-*.xml define)

_EFLAGS = (("CF", 0), ("", 1), ("PF", 2), ("AF", 4), ("ZF", 6), ("SF", 7), ("TF", 8), ("IF", 9),
           ("DF", 10), ("OF", 11), ("NT", 14), ("RF", 16), ("VM", 17), ("AC", 18), ("VIF", 19),
           ("VIP", 20), ("ID", 21))
# Control register and EFER bits (Intel SDM vol. 3, 2.5 and 2.2.1), as gdb shows flags.
_CR0 = (("PE", 0), ("MP", 1), ("EM", 2), ("TS", 3), ("ET", 4), ("NE", 5), ("WP", 16), ("AM", 18),
        ("NW", 29), ("CD", 30), ("PG", 31))
_CR4 = (("VME", 0), ("PVI", 1), ("TSD", 2), ("DE", 3), ("PSE", 4), ("PAE", 5), ("MCE", 6), ("PGE", 7),
        ("PCE", 8), ("OSFXSR", 9), ("OSXMMEXCPT", 10), ("UMIP", 11), ("LA57", 12), ("VMXE", 13),
        ("SMXE", 14), ("FSGSBASE", 16), ("PCIDE", 17), ("OSXSAVE", 18), ("SMEP", 20), ("SMAP", 21),
        ("PKE", 22), ("CET", 23), ("PKS", 24))
_EFER = (("SCE", 0), ("LME", 8), ("LMA", 10), ("NXE", 11), ("SVME", 12), ("LMSLE", 13), ("FFXSR", 14),
         ("TCE", 15))
_CR3 = (("PCID", 0, 11), ("PDBR", 12, 63))

_MXCSR = (("IE", 0), ("DE", 1), ("ZE", 2), ("OE", 3), ("UE", 4), ("PE", 5), ("DAZ", 6), ("IM", 7),
          ("DM", 8), ("ZM", 9), ("OM", 10), ("UM", 11), ("PM", 12), ("FZ", 15))
_VEC128 = (("v8_bfloat16", "v8bf16"), ("v8_half", "v8h"), ("v4_float", "v4f"), ("v2_double", "v2d"),
           ("v16_int8", "v16i8"), ("v8_int16", "v8i16"), ("v4_int32", "v4i32"), ("v2_int64", "v2i64"),
           ("uint128", "uint128"))
_VECTORS = (("v8bf16", "bfloat16", 8), ("v8h", "ieee_half", 8), ("v4f", "ieee_single", 4),
            ("v2d", "ieee_double", 2), ("v16i8", "int8", 16), ("v8i16", "int16", 8),
            ("v4i32", "int32", 4), ("v2i64", "int64", 2))

_XML_HEADER = '<?xml version="1.0"?>\n<!DOCTYPE target SYSTEM "gdb-target.dtd">\n'


def target_xml() -> str:
    target = ET.Element("target", version="1.0")
    ET.SubElement(target, "architecture").text = "i386:x86-64"
    for fname in FEATURES:
        feature = ET.SubElement(target, "feature", name=fname)
        if fname == FEATURE_CORE:
            flags = ET.SubElement(feature, "flags", id="i386_eflags", size="4")
            for name, bit in _EFLAGS:
                ET.SubElement(flags, "field", name=name, start=str(bit), end=str(bit))
        elif fname == FEATURE_SSE:
            for vid, etype, count in _VECTORS:
                ET.SubElement(feature, "vector", id=vid, type=etype, count=str(count))
            union = ET.SubElement(feature, "union", id="vec128")
            for name, type_ in _VEC128:
                ET.SubElement(union, "field", name=name, type=type_)
            flags = ET.SubElement(feature, "flags", id="i386_mxcsr", size="4")
            for name, bit in _MXCSR:
                ET.SubElement(flags, "field", name=name, start=str(bit), end=str(bit))
        elif fname == FEATURE_SYS:
            for fid, bits in (("i386_cr0", _CR0), ("i386_cr4", _CR4), ("i386_efer", _EFER)):
                flags = ET.SubElement(feature, "flags", id=fid, size="8")
                for name, bit in bits:
                    ET.SubElement(flags, "field", name=name, start=str(bit), end=str(bit))
            flags = ET.SubElement(feature, "flags", id="i386_cr3", size="8")
            for name, lo, hi in _CR3:
                ET.SubElement(flags, "field", name=name, start=str(lo), end=str(hi), type="uint64")
        for r in REGISTERS:
            if r.feature != fname:
                continue
            attrs = {"name": r.name, "bitsize": str(r.bitsize), "type": r.type, "regnum": str(r.gdb_regnum)}
            if r.xml_group:
                attrs["group"] = r.xml_group
            ET.SubElement(feature, "reg", attrs)
    ET.indent(target)
    return _XML_HEADER + ET.tostring(target, encoding="unicode") + "\n"
