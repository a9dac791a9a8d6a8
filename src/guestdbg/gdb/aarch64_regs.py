"""The AArch64 register catalogue the GDB stub serves, as data.

One table, `REGISTERS`, in gdb's register numbering, drives everything register-shaped:
the target description (`target_xml`), the `g`/`G` packets (`encode_g`/`decode_G`), the `p`/`P`
packets (`read_register`/`write_register`) and the registers expedited in a `T` stop reply.

Theory of operation
-------------------
1. Numbering follows gdb's own aarch64 layout: x0..x30 are 0..30, sp 31, pc 32, cpsr 33,
   v0..v31 34..65, fpsr 66, fpcr 67. The system registers of `org.guestdbg.aarch64.sysregs`
   follow from 68. gdb numbers its pseudo registers (q0, d0, s0, ...) after all of these.
2. Every register except `sp` maps to one KVM ONE_REG id and is read and written through
   `vcpu.get_one_reg` / `vcpu.set_one_reg`, so this module works unchanged on real KVM.
3. `sp` is the *current* stack pointer, which has no ONE_REG id of its own (`one_reg_id` is None).
   It reads and writes SP_EL1 (KVM_REG_ARM_CORE_SP_EL1) when PSTATE.SPSel is 1 and PSTATE.EL is
   1 or more (EL1h), and SP_EL0 (KVM_REG_ARM_CORE_SP) otherwise (EL0, EL1t). This vCPU has no EL2
   or EL3, so SP_EL1 is the only SP_ELx. `sp` therefore aliases either `sp_el0` or `sp_el1`.
4. `cpsr` is 32 bits wide, as gdb expects; it is the low half of the 64-bit ONE_REG PSTATE. A
   write keeps PSTATE's upper half.
5. Values travel as lowercase hex of the little-endian bytes, each register at its bit size.
6. Packet decoding validates everything (hex digits, exact lengths, known register numbers,
   values of read-only registers) before the first write, so a rejected packet changes nothing.
7. `decode_G` writes only registers whose value differs from the current one: `cpsr` first (it
   selects the stack pointer `sp` aliases), then the rest in catalogue order, then `sp` last. A G
   packet built from a `g` reply with one register edited changes exactly that register, and a
   read-only identification register may appear in a G packet as long as it is unchanged.
"""

from __future__ import annotations

import struct

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Protocol

from guestdbg.arm import kvm_regs as kr

FEATURE_CORE = "org.gnu.gdb.aarch64.core"
FEATURE_FPU = "org.gnu.gdb.aarch64.fpu"
FEATURE_SYSREGS = "org.guestdbg.aarch64.sysregs"

# PSTATE fields that select the stack pointer.
PSTATE_SPSEL = 1 << 0
PSTATE_EL_SHIFT = 2


class OneRegVcpu(Protocol):
    """What the catalogue needs from a vCPU: the KVM ONE_REG accessors."""

    def get_one_reg(self, reg_id: int) -> int: ...

    def set_one_reg(self, reg_id: int, value: int) -> None: ...


@dataclass(frozen=True)
class RegDef:
    """One register as gdb sees it.

    `one_reg_id` is None only for `sp`, whose storage depends on PSTATE (see `read_reg`).
    `type` is a gdb target-description type (predefined, or defined in `target_xml`).
    `readonly` marks identification registers the vCPU refuses to change.
    """

    name: str
    bitsize: int
    gdb_regnum: int
    one_reg_id: int | None
    type: str
    group: str | None
    feature: str
    readonly: bool = False

    @property
    def hex_len(self) -> int:
        """Number of hex digits this register takes in g/G/p/P packets."""
        return self.bitsize // 4


# (name, ONE_REG id, gdb type, read-only) of the system registers, in gdb order.
_SYSREGS: tuple[tuple[str, int, str, bool], ...] = (
    ("sctlr_el1", kr.sysreg_id("SCTLR_EL1"), "uint64", False),
    ("tcr_el1", kr.sysreg_id("TCR_EL1"), "uint64", False),
    ("ttbr0_el1", kr.sysreg_id("TTBR0_EL1"), "uint64", False),
    ("ttbr1_el1", kr.sysreg_id("TTBR1_EL1"), "uint64", False),
    ("mair_el1", kr.sysreg_id("MAIR_EL1"), "uint64", False),
    ("vbar_el1", kr.sysreg_id("VBAR_EL1"), "code_ptr", False),
    ("esr_el1", kr.sysreg_id("ESR_EL1"), "uint64", False),
    ("far_el1", kr.sysreg_id("FAR_EL1"), "data_ptr", False),
    ("elr_el1", kr.KVM_REG_ARM_CORE_ELR_EL1, "code_ptr", False),
    ("spsr_el1", kr.KVM_REG_ARM_CORE_SPSR(kr.KVM_SPSR_EL1), "uint64", False),
    ("sp_el0", kr.KVM_REG_ARM_CORE_SP, "data_ptr", False),
    ("sp_el1", kr.KVM_REG_ARM_CORE_SP_EL1, "data_ptr", False),
    ("contextidr_el1", kr.sysreg_id("CONTEXTIDR_EL1"), "uint64", False),
    ("tpidr_el0", kr.sysreg_id("TPIDR_EL0"), "uint64", False),
    ("tpidr_el1", kr.sysreg_id("TPIDR_EL1"), "uint64", False),
    ("cpacr_el1", kr.sysreg_id("CPACR_EL1"), "uint64", False),
    ("mdscr_el1", kr.sysreg_id("MDSCR_EL1"), "uint64", False),
    ("id_aa64dfr0_el1", kr.sysreg_id("ID_AA64DFR0_EL1"), "uint64", True),
    ("midr_el1", kr.sysreg_id("MIDR_EL1"), "uint64", True),
    ("mpidr_el1", kr.sysreg_id("MPIDR_EL1"), "uint64", True),
)


def _build_catalogue() -> tuple[RegDef, ...]:
    regs: list[RegDef] = []

    def add(name, bitsize, one_reg_id, type_, group, feature, readonly=False):
        regs.append(RegDef(name, bitsize, len(regs), one_reg_id, type_, group, feature, readonly))

    for n in range(31):
        add(f"x{n}", 64, kr.KVM_REG_ARM_CORE_X(n), "int", None, FEATURE_CORE)
    add("sp", 64, None, "data_ptr", None, FEATURE_CORE)
    add("pc", 64, kr.KVM_REG_ARM_CORE_PC, "code_ptr", None, FEATURE_CORE)
    add("cpsr", 32, kr.KVM_REG_ARM_CORE_PSTATE, "cpsr_flags", None, FEATURE_CORE)
    for n in range(32):
        add(f"v{n}", 128, kr.KVM_REG_ARM_CORE_V(n), "aarch64v", None, FEATURE_FPU)
    add("fpsr", 32, kr.KVM_REG_ARM_CORE_FPSR, "fpsr_flags", None, FEATURE_FPU)
    add("fpcr", 32, kr.KVM_REG_ARM_CORE_FPCR, "fpcr_flags", None, FEATURE_FPU)
    for name, reg_id, type_, readonly in _SYSREGS:
        add(name, 64, reg_id, type_, "system", FEATURE_SYSREGS, readonly)
    return tuple(regs)


REGISTERS: tuple[RegDef, ...] = _build_catalogue()
BY_REGNUM: dict[int, RegDef] = {r.gdb_regnum: r for r in REGISTERS}
BY_NAME: dict[str, RegDef] = {r.name: r for r in REGISTERS}
FEATURES: tuple[str, ...] = (FEATURE_CORE, FEATURE_FPU, FEATURE_SYSREGS)

REG_FP, REG_SP, REG_PC, REG_CPSR = 29, 31, 32, 33
# gdbserver's aarch64 port expedites the frame pointer, sp and pc: enough to unwind the stop frame.
EXPEDITED_REGNUMS: tuple[int, ...] = (REG_FP, REG_SP, REG_PC)

G_PACKET_HEX_LEN = sum(r.hex_len for r in REGISTERS)

# ---------------------------------------------------------------------------------------------
# Reading and writing one register


def _sp_one_reg_id(vcpu: OneRegVcpu) -> int:
    """ONE_REG id of the stack pointer `sp` currently names (rule 3)."""
    pstate = vcpu.get_one_reg(kr.KVM_REG_ARM_CORE_PSTATE)
    el = (pstate >> PSTATE_EL_SHIFT) & 3
    if el >= 1 and pstate & PSTATE_SPSEL:
        return kr.KVM_REG_ARM_CORE_SP_EL1
    return kr.KVM_REG_ARM_CORE_SP


def read_reg(vcpu: OneRegVcpu, regdef: RegDef) -> int:
    """The register's value as an unsigned integer of `regdef.bitsize` bits."""
    if regdef.one_reg_id is None:  # sp
        return vcpu.get_one_reg(_sp_one_reg_id(vcpu))
    value = vcpu.get_one_reg(regdef.one_reg_id)
    return value & ((1 << regdef.bitsize) - 1)


def write_reg(vcpu: OneRegVcpu, regdef: RegDef, value: int) -> None:
    """Write an unsigned value of `regdef.bitsize` bits (sp: to SP_EL1 or SP_EL0, per PSTATE)."""
    if not 0 <= value < 1 << regdef.bitsize:
        raise ValueError(f"{regdef.name}: value {value:#x} does not fit {regdef.bitsize} bits")
    if regdef.one_reg_id is None:  # sp
        vcpu.set_one_reg(_sp_one_reg_id(vcpu), value)
        return
    if regdef.bitsize < 8 * kr.reg_size_bytes(regdef.one_reg_id):  # cpsr: keep PSTATE[63:32]
        mask = (1 << regdef.bitsize) - 1
        value |= vcpu.get_one_reg(regdef.one_reg_id) & ~mask
    vcpu.set_one_reg(regdef.one_reg_id, value)


# ---------------------------------------------------------------------------------------------
# Packet payloads: g, G, p, P and the expedited registers of a T stop reply

_HEX = re.compile(rb"[0-9a-fA-F]*")


def _to_hex(regdef: RegDef, value: int) -> bytes:
    return value.to_bytes(regdef.bitsize // 8, "little").hex().encode("ascii")


def _from_hex(regdef: RegDef, hexdata: bytes) -> int:
    """Parse one register's hex (exact length), raising ValueError."""
    if len(hexdata) != regdef.hex_len:
        raise ValueError(f"{regdef.name}: expected {regdef.hex_len} hex digits, got {len(hexdata)}")
    if not _HEX.fullmatch(hexdata):
        raise ValueError(f"{regdef.name}: not hex: {bytes(hexdata)!r}")
    return int.from_bytes(bytes.fromhex(hexdata.decode("ascii")), "little")


def _check_writable(vcpu: OneRegVcpu, regdef: RegDef, value: int) -> None:
    if regdef.readonly and value != read_reg(vcpu, regdef):
        raise ValueError(f"{regdef.name} is read-only")


# The `g` layout as one struct (a 128-bit register is two little-endian u64 halves): packing
# ~90 registers one int.to_bytes at a time was a third of a `g`.
_G_FIELDS = [(r.bitsize, (1 << r.bitsize) - 1) for r in REGISTERS]
_G_STRUCT = struct.Struct("<" + "".join({32: "I", 64: "Q", 128: "QQ"}[r.bitsize] for r in REGISTERS))


def encode_g(vcpu: OneRegVcpu) -> bytes:
    """The `g` reply: every register in gdb order, hex of little-endian bytes."""
    ids = [r.one_reg_id if r.one_reg_id is not None else _sp_one_reg_id(vcpu) for r in REGISTERS]
    # An optional fast path (the emulated vCPU reads plain registers in one batch); the
    # result is the same as one get_one_reg per register.
    read_many = getattr(vcpu, "get_one_regs", None)
    values = read_many(ids) if read_many else [vcpu.get_one_reg(i) for i in ids]
    flat = []
    for (bits, mask), v in zip(_G_FIELDS, values):
        v &= mask
        if bits == 128:
            flat += (v & 0xFFFF_FFFF_FFFF_FFFF, v >> 64)
        else:
            flat.append(v)
    return _G_STRUCT.pack(*flat).hex().encode("ascii")


def decode_G(vcpu: OneRegVcpu, hexdata: bytes) -> None:  # noqa: N802 (packet letter)
    """Apply a `G` payload. Raises ValueError, writing nothing, on a bad length, bad hex or a
    change to a read-only register. Writes only changed registers (rule 7)."""
    hexdata = bytes(hexdata)
    if len(hexdata) != G_PACKET_HEX_LEN:
        raise ValueError(f"G packet: expected {G_PACKET_HEX_LEN} hex digits, got {len(hexdata)}")
    if not _HEX.fullmatch(hexdata):
        raise ValueError("G packet: not hex")
    new: dict[int, int] = {}
    pos = 0
    for r in REGISTERS:
        new[r.gdb_regnum] = _from_hex(r, hexdata[pos:pos + r.hex_len])
        pos += r.hex_len
    old = {r.gdb_regnum: read_reg(vcpu, r) for r in REGISTERS}
    for r in REGISTERS:
        if r.readonly and new[r.gdb_regnum] != old[r.gdb_regnum]:
            raise ValueError(f"G packet changes read-only register {r.name}")
    order = [REG_CPSR] + [n for n in BY_REGNUM if n not in (REG_CPSR, REG_SP)] + [REG_SP]
    for n in order:
        if new[n] != old[n]:
            write_reg(vcpu, BY_REGNUM[n], new[n])


def _lookup(regnum: int) -> RegDef:
    try:
        return BY_REGNUM[regnum]
    except KeyError:
        raise KeyError(f"no register number {regnum}") from None


def read_register(vcpu: OneRegVcpu, regnum: int) -> bytes:
    """The `p` reply for one register. KeyError for an unknown number."""
    r = _lookup(regnum)
    return _to_hex(r, read_reg(vcpu, r))


def write_register(vcpu: OneRegVcpu, regnum: int, hexvalue: bytes) -> None:
    """Apply a `P` packet. KeyError for an unknown number; ValueError for bad hex, a wrong length
    or a change to a read-only register. Nothing is written on error."""
    r = _lookup(regnum)
    value = _from_hex(r, bytes(hexvalue))
    _check_writable(vcpu, r, value)
    if r.readonly:
        return  # unchanged identification register: nothing to do
    write_reg(vcpu, r, value)


def set_pc(vcpu: OneRegVcpu, pc: int) -> None:
    """Resume address of `c ADDR` / `s ADDR`."""
    vcpu.set_one_reg(kr.KVM_REG_ARM_CORE_PC, pc)


def expedited(vcpu: OneRegVcpu) -> dict[int, bytes]:
    """Registers to send in a T stop reply, {gdb regnum: hex}: fp (x29), sp and pc."""
    regdefs = [_lookup(n) for n in EXPEDITED_REGNUMS]
    ids = [r.one_reg_id if r.one_reg_id is not None else _sp_one_reg_id(vcpu) for r in regdefs]
    read_many = getattr(vcpu, "get_one_regs", None)  # the same optional fast path as encode_g
    values = read_many(ids) if read_many else [vcpu.get_one_reg(i) for i in ids]
    return {r.gdb_regnum: _to_hex(r, v & ((1 << r.bitsize) - 1)) for r, v in zip(regdefs, values)}


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
            if r.group is not None:
                attrs["group"] = r.group
            ET.SubElement(feature, "reg", attrs)
    ET.indent(target)
    return _XML_HEADER + ET.tostring(target, encoding="unicode") + "\n"
