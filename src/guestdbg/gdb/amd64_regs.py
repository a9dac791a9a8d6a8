"""The x86-64 register catalogue the GDB stub serves (the twin of aarch64_regs, same API).

One table, `REGISTERS`, in gdb's amd64 numbering, drives the target description (`target_xml`),
`g`/`G` (`encode_g`/`decode_G`), `p`/`P` (`read_register`/`write_register`) and the registers
expedited in a `T` stop reply (`expedited`).

Theory of operation
-------------------
1. Numbering is gdb's amd64 layout (features org.gnu.gdb.i386.core, .sse, .segments):
   rax rbx rcx rdx rsi rdi rbp rsp (0-7) -- rbp BEFORE rsp, unlike struct kvm_regs, which has
   rsp before rbp --, r8-r15 (8-15), rip 16, eflags 17, cs ss ds es fs gs (18-23),
   st0-st7 (24-31, 80 bits), fctrl fstat ftag fiseg fioff foseg fooff fop (32-39),
   xmm0-xmm15 (40-55), mxcsr 56, fs_base 57, gs_base 58; then the system registers QEMU's
   gdbstub also offers, under the same names: k_gs_base 59, cr0 cr2 cr3 cr4 cr8 (60-64),
   efer 65 (feature org.guestdbg.x86.sys, after gdb's own so their numbers stay gdb's).
2. Each register is a (group, field) of the vCPU's KVM state: "regs" (KVM_GET/SET_REGS),
   "sregs" (segment selectors, fs/gs bases, control registers, EFER), "fpu" (KVM_GET/SET_FPU:
   x87, SSE), "msr" (KVM_GET/SET_MSRS: k_gs_base, MSR_KERNEL_GS_BASE). A read fetches each
   group once (`_State`); a write changes the group and sets it back once. KVM checks control
   register and EFER values (KVM_SET_SREGS): one it refuses is an error and changes nothing.
3. Segment selectors are read-only (a selector alone cannot reload a descriptor); writing the
   value they already hold is accepted, so a `G` built from a `g` reply works.
4. ftag is the full x87 tag word gdb expects, computed from KVM's abridged (FXSAVE) tag byte
   and the register contents; a write sets the abridged byte (tag 3 = empty, else valid).
5. Values travel as lowercase hex of the little-endian bytes, each register at its bit size.
   Packets are validated completely (length, hex, register numbers) before the first write.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

FEATURE_CORE = "org.gnu.gdb.i386.core"
FEATURE_SSE = "org.gnu.gdb.i386.sse"
FEATURE_SEGMENTS = "org.gnu.gdb.i386.segments"
FEATURE_SYS = "org.guestdbg.x86.sys"  # gdb defines no feature for these: shown under their names
FEATURES = (FEATURE_CORE, FEATURE_SSE, FEATURE_SEGMENTS, FEATURE_SYS)
MSR_KERNEL_GS_BASE = 0xC000_0102


@dataclass(frozen=True)
class RegDef:
    name: str
    bitsize: int
    gdb_regnum: int
    group: str      # "regs", "sregs", "fpu", "msr"
    field: str      # attribute (regs), segment name, "fs_base"/"gs_base" or a kvm_sregs
                    # field (sregs), fpu part, MSR number as text (msr)
    type: str
    feature: str
    readonly: bool = False
    xml_group: str | None = None

    @property
    def hex_len(self) -> int:
        return self.bitsize // 4


def _build() -> tuple[RegDef, ...]:
    regs: list[RegDef] = []

    def add(name, bits, group, fld, type_, feature, readonly=False, xml_group=None):
        regs.append(RegDef(name, bits, len(regs), group, fld, type_, feature, readonly, xml_group))

    for n in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi"):
        add(n, 64, "regs", n, "int64", FEATURE_CORE)
    add("rbp", 64, "regs", "rbp", "data_ptr", FEATURE_CORE)
    add("rsp", 64, "regs", "rsp", "data_ptr", FEATURE_CORE)
    for i in range(8, 16):
        add(f"r{i}", 64, "regs", f"r{i}", "int64", FEATURE_CORE)
    add("rip", 64, "regs", "rip", "code_ptr", FEATURE_CORE)
    add("eflags", 32, "regs", "rflags", "i386_eflags", FEATURE_CORE)
    for seg in ("cs", "ss", "ds", "es", "fs", "gs"):
        add(seg, 32, "sregs", seg, "int32", FEATURE_CORE, readonly=True)
    for i in range(8):
        add(f"st{i}", 80, "fpu", f"st{i}", "i387_ext", FEATURE_CORE)
    for n in ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop"):
        add(n, 32, "fpu", n, "int", FEATURE_CORE, xml_group="float")
    for i in range(16):
        add(f"xmm{i}", 128, "fpu", f"xmm{i}", "vec128", FEATURE_SSE)
    add("mxcsr", 32, "fpu", "mxcsr", "i386_mxcsr", FEATURE_SSE, xml_group="vector")
    add("fs_base", 64, "sregs", "fs_base", "int", FEATURE_SEGMENTS)
    add("gs_base", 64, "sregs", "gs_base", "int", FEATURE_SEGMENTS)
    add("k_gs_base", 64, "msr", str(MSR_KERNEL_GS_BASE), "int64", FEATURE_SYS)
    add("cr0", 64, "sregs", "cr0", "i386_cr0", FEATURE_SYS)
    add("cr2", 64, "sregs", "cr2", "int64", FEATURE_SYS)
    add("cr3", 64, "sregs", "cr3", "i386_cr3", FEATURE_SYS)
    add("cr4", 64, "sregs", "cr4", "i386_cr4", FEATURE_SYS)
    add("cr8", 64, "sregs", "cr8", "int64", FEATURE_SYS)
    add("efer", 64, "sregs", "efer", "i386_efer", FEATURE_SYS)
    return tuple(regs)


REGISTERS: tuple[RegDef, ...] = _build()
BY_REGNUM = {r.gdb_regnum: r for r in REGISTERS}
BY_NAME = {r.name: r for r in REGISTERS}
REG_RBP, REG_RSP, REG_RIP = BY_NAME["rbp"].gdb_regnum, BY_NAME["rsp"].gdb_regnum, BY_NAME["rip"].gdb_regnum
# gdbserver's amd64 port expedites rbp, rsp and rip: enough to unwind the stop frame.
EXPEDITED_REGNUMS = (REG_RBP, REG_RSP, REG_RIP)
G_PACKET_HEX_LEN = sum(r.hex_len for r in REGISTERS)

_HEX = re.compile(rb"[0-9a-fA-F]*")


# ---------------------------------------------------------------------------------------------
# The vCPU state, fetched per group

def _full_tag(fpu) -> int:
    """The 16-bit x87 tag word from the abridged FXSAVE tag byte (2 bits per physical register:
    0 valid, 1 zero, 2 special, 3 empty)."""
    top = (fpu.fsw >> 11) & 7
    tag = 0
    for phys in range(8):
        if not fpu.ftwx & (1 << phys):
            t = 3
        else:
            raw = bytes(fpu.fpr[(phys - top) % 8])[:10]
            mant = int.from_bytes(raw[:8], "little")
            exp = int.from_bytes(raw[8:10], "little") & 0x7FFF
            if exp == 0x7FFF or (exp == 0 and mant) or (exp and not mant >> 63):
                t = 2
            elif exp == 0 and mant == 0:
                t = 1
            else:
                t = 0
        tag |= t << (2 * phys)
    return tag


def _abridged_tag(full: int) -> int:
    return sum(1 << i for i in range(8) if (full >> (2 * i)) & 3 != 3)


class _State:
    """The vCPU's register groups, fetched on first use; `flush` writes back changed groups."""

    def __init__(self, vcpu):
        self.vcpu = vcpu
        self.groups: dict[str, object] = {}
        self.dirty: set[str] = set()

    def group(self, name: str):
        if name not in self.groups:
            self.groups[name] = {"regs": self.vcpu.get_regs, "sregs": self.vcpu.get_sregs,
                                 "fpu": self.vcpu.get_fpu, "msr": self._get_msrs}[name]()
        return self.groups[name]

    def _get_msrs(self) -> dict[int, int]:
        indices = sorted({int(r.field) for r in REGISTERS if r.group == "msr"})
        return dict(self.vcpu.get_msrs(indices))

    def read(self, r: RegDef) -> int:
        g = self.group(r.group)
        f = r.field
        if r.group == "regs":
            value = getattr(g, f)
        elif r.group == "sregs":
            value = _read_sreg(g, f)
        elif r.group == "msr":
            value = g[int(f)]
        else:
            value = _read_fpu(g, f)
        return value & ((1 << r.bitsize) - 1)

    def write(self, r: RegDef, value: int) -> None:
        g = self.group(r.group)
        f = r.field
        if r.group == "regs":
            if f == "rflags":
                value |= g.rflags & ~0xFFFFFFFF
            setattr(g, f, value)
        elif r.group == "sregs":
            if f in _SREGS_FIELDS:
                setattr(g, f, value)
            elif not f.endswith("_base"):
                if value != getattr(g, f).selector:
                    raise ValueError(f"{r.name} is read-only (a selector alone cannot reload its descriptor)")
                return
            else:
                getattr(g, f[:2]).base = value
        elif r.group == "msr":
            g[int(f)] = value
        else:
            _write_fpu(g, f, value)
        self.dirty.add(r.group)

    def flush(self) -> None:
        setters = {"regs": self.vcpu.set_regs, "sregs": self.vcpu.set_sregs, "fpu": self.vcpu.set_fpu,
                   "msr": self.vcpu.set_msrs}
        for name in ("sregs", "fpu", "regs", "msr"):
            if name in self.dirty:
                try:
                    setters[name](self.groups[name])
                except OSError as e:  # KVM refused the value (KVM_SET_SREGS checks CR0/CR4/EFER)
                    raise ValueError(f"KVM refused the new {name} ({e.strerror or e})") from None
        self.dirty.clear()


_SREGS_FIELDS = ("cr0", "cr2", "cr3", "cr4", "cr8", "efer")


def _read_sreg(sregs, f: str) -> int:
    if f in _SREGS_FIELDS:
        return getattr(sregs, f)
    return getattr(sregs, f[:2]).base if f.endswith("_base") else getattr(sregs, f).selector


_FPU_SCALARS = {"fctrl": "fcw", "fstat": "fsw", "fop": "last_opcode", "mxcsr": "mxcsr"}


def _read_fpu(fpu, f: str) -> int:
    if f.startswith("st"):
        return int.from_bytes(bytes(fpu.fpr[int(f[2:])])[:10], "little")
    if f.startswith("xmm"):
        return int.from_bytes(bytes(fpu.xmm[int(f[3:])]), "little")
    if f in _FPU_SCALARS:
        return getattr(fpu, _FPU_SCALARS[f])
    if f == "ftag":
        return _full_tag(fpu)
    if f == "fioff":
        return fpu.last_ip & 0xFFFFFFFF
    if f == "fooff":
        return fpu.last_dp & 0xFFFFFFFF
    return 0  # fiseg, foseg: not kept in 64-bit mode (FXSAVE64)


def _write_fpu(fpu, f: str, value: int) -> None:
    if f.startswith("st"):
        dst = fpu.fpr[int(f[2:])]
        for i, b in enumerate(value.to_bytes(10, "little")):
            dst[i] = b
    elif f.startswith("xmm"):
        dst = fpu.xmm[int(f[3:])]
        for i, b in enumerate(value.to_bytes(16, "little")):
            dst[i] = b
    elif f in _FPU_SCALARS:
        setattr(fpu, _FPU_SCALARS[f], value & (0xFFFF if f != "mxcsr" else 0xFFFFFFFF))
    elif f == "ftag":
        fpu.ftwx = _abridged_tag(value)
    elif f == "fioff":
        fpu.last_ip = (fpu.last_ip & ~0xFFFFFFFF) | value
    elif f == "fooff":
        fpu.last_dp = (fpu.last_dp & ~0xFFFFFFFF) | value
    # fiseg, foseg: ignored (no storage in 64-bit mode)


def read_reg(vcpu, r: RegDef) -> int:
    return _State(vcpu).read(r)


def write_reg(vcpu, r: RegDef, value: int) -> None:
    if not 0 <= value < 1 << r.bitsize:
        raise ValueError(f"{r.name}: value {value:#x} does not fit {r.bitsize} bits")
    st = _State(vcpu)
    st.write(r, value)
    st.flush()


def set_pc(vcpu, pc: int) -> None:
    regs = vcpu.get_regs()
    regs.rip = pc
    vcpu.set_regs(regs)


# ---------------------------------------------------------------------------------------------
# Packets

def _to_hex(r: RegDef, value: int) -> bytes:
    return value.to_bytes(r.bitsize // 8, "little").hex().encode("ascii")


def _from_hex(r: RegDef, hexdata: bytes) -> int:
    if len(hexdata) != r.hex_len:
        raise ValueError(f"{r.name}: expected {r.hex_len} hex digits, got {len(hexdata)}")
    if not _HEX.fullmatch(hexdata):
        raise ValueError(f"{r.name}: not hex")
    return int.from_bytes(bytes.fromhex(hexdata.decode("ascii")), "little")


def encode_g(vcpu) -> bytes:
    st = _State(vcpu)
    return b"".join(_to_hex(r, st.read(r)) for r in REGISTERS)


def decode_G(vcpu, hexdata: bytes) -> None:  # noqa: N802 (packet letter)
    """Apply a `G` payload; nothing is written on a bad length, bad hex or a selector change."""
    hexdata = bytes(hexdata)
    if len(hexdata) != G_PACKET_HEX_LEN:
        raise ValueError(f"G packet: expected {G_PACKET_HEX_LEN} hex digits, got {len(hexdata)}")
    if not _HEX.fullmatch(hexdata):
        raise ValueError("G packet: not hex")
    st = _State(vcpu)
    pos, new = 0, {}
    for r in REGISTERS:
        new[r.gdb_regnum] = _from_hex(r, hexdata[pos:pos + r.hex_len])
        pos += r.hex_len
    for r in REGISTERS:
        if r.readonly and new[r.gdb_regnum] != st.read(r):
            raise ValueError(f"G packet changes read-only register {r.name}")
    for r in REGISTERS:
        if new[r.gdb_regnum] != st.read(r):
            st.write(r, new[r.gdb_regnum])
    st.flush()


def _lookup(regnum: int) -> RegDef:
    try:
        return BY_REGNUM[regnum]
    except KeyError:
        raise KeyError(f"no register number {regnum}") from None


def read_register(vcpu, regnum: int) -> bytes:
    r = _lookup(regnum)
    return _to_hex(r, read_reg(vcpu, r))


def write_register(vcpu, regnum: int, hexvalue: bytes) -> None:
    r = _lookup(regnum)
    write_reg(vcpu, r, _from_hex(r, bytes(hexvalue)))


def expedited(vcpu) -> dict[int, bytes]:
    """rbp, rsp and rip for a T stop reply, from one KVM_GET_REGS."""
    regs = vcpu.get_regs()
    return {REG_RBP: _to_hex(BY_NAME["rbp"], regs.rbp), REG_RSP: _to_hex(BY_NAME["rsp"], regs.rsp),
            REG_RIP: _to_hex(BY_NAME["rip"], regs.rip)}


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
