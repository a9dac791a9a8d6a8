"""The x86-64 register catalogue at integer level (the twin of `arm.registers`, same API).

One table, `REGISTERS`, in gdb's amd64 numbering (a register's position is its number), says
which registers a debugger sees and where each lives in the vCPU's KVM state. The debug manager
reads and writes them here as Python ints; `gdb/amd64_regs` builds gdb's target description
and packet hex on the same table.

Theory of operation
-------------------
1. Numbering is gdb's amd64 layout: rax rbx rcx rdx rsi rdi rbp rsp (0-7) -- rbp BEFORE rsp,
   unlike struct kvm_regs, which has rsp before rbp --, r8-r15 (8-15), rip 16, eflags 17,
   cs ss ds es fs gs (18-23), st0-st7 (24-31, 80 bits), fctrl fstat ftag fiseg fioff foseg
   fooff fop (32-39), xmm0-xmm15 (40-55), mxcsr 56, fs_base 57, gs_base 58; then the system
   registers QEMU's gdbstub also offers, under the same names: k_gs_base 59, cr0 cr2 cr3 cr4
   cr8 (60-64), efer 65 (group "sys", after gdb's own so their numbers stay gdb's).
2. Each register is a (storage, field) of the vCPU's KVM state: "regs" (KVM_GET/SET_REGS),
   "sregs" (segment selectors, fs/gs bases, control registers, EFER), "fpu" (KVM_GET/SET_FPU:
   x87, SSE), "msr" (KVM_GET/SET_MSRS: k_gs_base, MSR_KERNEL_GS_BASE). A read fetches each
   storage group once (`_State`); a write changes the group and sets it back once. KVM checks
   control register and EFER values (KVM_SET_SREGS): one it refuses is a RegisterError and
   changes nothing.
3. Segment selectors are read-only (a selector alone cannot reload a descriptor); writing the
   value they already hold is accepted, so a full set read with `read_all` can be written back.
4. ftag is the full x87 tag word gdb expects, computed from KVM's abridged (FXSAVE) tag byte
   and the register contents; a write sets the abridged byte (tag 3 = empty, else valid).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

GROUP_CORE, GROUP_SSE, GROUP_SEGMENTS, GROUP_SYS = "core", "sse", "segments", "sys"
MSR_KERNEL_GS_BASE = 0xC000_0102


class RegisterError(ValueError):
    """A register write the vCPU cannot take: a value out of range, a change to a segment
    selector, or a value KVM refused. Nothing was written."""


@dataclass(frozen=True)
class Register:
    """One register. `storage` is its KVM state group ("regs", "sregs", "fpu", "msr") and
    `field` where in it: an attribute (regs), a segment name, "fs_base"/"gs_base" or a
    kvm_sregs field (sregs), an fpu part, an MSR number as text (msr). `group` is the
    register's feature group: "core", "sse", "segments" or "sys"."""

    name: str
    bitsize: int
    gdb_regnum: int
    storage: str
    field: str
    group: str
    readonly: bool = False


def _build() -> tuple[Register, ...]:
    regs: list[Register] = []

    def add(name: str, bits: int, storage: str, fld: str, group: str, readonly: bool = False) -> None:
        regs.append(Register(name, bits, len(regs), storage, fld, group, readonly))

    for n in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp"):
        add(n, 64, "regs", n, GROUP_CORE)
    for i in range(8, 16):
        add(f"r{i}", 64, "regs", f"r{i}", GROUP_CORE)
    add("rip", 64, "regs", "rip", GROUP_CORE)
    add("eflags", 32, "regs", "rflags", GROUP_CORE)
    for seg in ("cs", "ss", "ds", "es", "fs", "gs"):
        add(seg, 32, "sregs", seg, GROUP_CORE, readonly=True)
    for i in range(8):
        add(f"st{i}", 80, "fpu", f"st{i}", GROUP_CORE)
    for n in ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop"):
        add(n, 32, "fpu", n, GROUP_CORE)
    for i in range(16):
        add(f"xmm{i}", 128, "fpu", f"xmm{i}", GROUP_SSE)
    add("mxcsr", 32, "fpu", "mxcsr", GROUP_SSE)
    add("fs_base", 64, "sregs", "fs_base", GROUP_SEGMENTS)
    add("gs_base", 64, "sregs", "gs_base", GROUP_SEGMENTS)
    add("k_gs_base", 64, "msr", str(MSR_KERNEL_GS_BASE), GROUP_SYS)
    for cr in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer"):
        add(cr, 64, "sregs", cr, GROUP_SYS)
    return tuple(regs)


REGISTERS: tuple[Register, ...] = _build()
BY_REGNUM: dict[int, Register] = {r.gdb_regnum: r for r in REGISTERS}
BY_NAME: dict[str, Register] = {r.name: r for r in REGISTERS}
REG_RBP, REG_RSP, REG_RIP = BY_NAME["rbp"].gdb_regnum, BY_NAME["rsp"].gdb_regnum, BY_NAME["rip"].gdb_regnum
_MSR_INDICES = sorted({int(r.field) for r in REGISTERS if r.storage == "msr"})


def lookup(regnum: int) -> Register:
    """The register numbered `regnum`; KeyError for a number the catalogue does not have."""
    try:
        return BY_REGNUM[regnum]
    except KeyError:
        raise KeyError(f"no register number {regnum}") from None


# ---------------------------------------------------------------------------------------------
# The vCPU state, fetched per storage group

def _full_tag(fpu: Any) -> int:
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


_SREGS_FIELDS = ("cr0", "cr2", "cr3", "cr4", "cr8", "efer")
_FPU_SCALARS = {"fctrl": "fcw", "fstat": "fsw", "fop": "last_opcode", "mxcsr": "mxcsr"}


class _State:
    """The vCPU's register groups, fetched on first use; `flush` writes back changed groups."""

    def __init__(self, vcpu: Any):
        self.vcpu = vcpu
        self.groups: dict[str, Any] = {}
        self.dirty: set[str] = set()

    def group(self, name: str) -> Any:
        if name not in self.groups:
            getters: dict[str, Callable[[], Any]] = {
                "regs": self.vcpu.get_regs, "sregs": self.vcpu.get_sregs, "fpu": self.vcpu.get_fpu,
                "msr": lambda: dict(self.vcpu.get_msrs(_MSR_INDICES))}
            self.groups[name] = getters[name]()
        return self.groups[name]

    def read(self, r: Register) -> int:
        g = self.group(r.storage)
        f = r.field
        if r.storage == "regs":
            value = getattr(g, f)
        elif r.storage == "sregs":
            value = _read_sreg(g, f)
        elif r.storage == "msr":
            value = g[int(f)]
        else:
            value = _read_fpu(g, f)
        return value & ((1 << r.bitsize) - 1)

    def write(self, r: Register, value: int) -> None:
        g = self.group(r.storage)
        f = r.field
        if r.storage == "regs":
            if f == "rflags":
                value |= g.rflags & ~0xFFFFFFFF
            setattr(g, f, value)
        elif r.storage == "sregs":
            if f in _SREGS_FIELDS:
                setattr(g, f, value)
            elif not f.endswith("_base"):
                if value != getattr(g, f).selector:
                    raise RegisterError(f"{r.name} is read-only (a selector alone cannot reload its descriptor)")
                return
            else:
                getattr(g, f[:2]).base = value
        elif r.storage == "msr":
            g[int(f)] = value
        else:
            _write_fpu(g, f, value)
        self.dirty.add(r.storage)

    def flush(self) -> None:
        setters = {"regs": self.vcpu.set_regs, "sregs": self.vcpu.set_sregs, "fpu": self.vcpu.set_fpu,
                   "msr": self.vcpu.set_msrs}
        for name in ("sregs", "fpu", "regs", "msr"):
            if name in self.dirty:
                try:
                    setters[name](self.groups[name])
                except OSError as e:  # KVM refused the value (KVM_SET_SREGS checks CR0/CR4/EFER)
                    raise RegisterError(f"KVM refused the new {name} ({e.strerror or e})") from None
        self.dirty.clear()


def _read_sreg(sregs: Any, f: str) -> int:
    if f in _SREGS_FIELDS:
        return getattr(sregs, f)
    return getattr(sregs, f[:2]).base if f.endswith("_base") else getattr(sregs, f).selector


def _read_fpu(fpu: Any, f: str) -> int:
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


def _write_fpu(fpu: Any, f: str, value: int) -> None:
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


# ---------------------------------------------------------------------------------------------
# Reading and writing

def read_all(vcpu: Any) -> list[int]:
    """Every register's value, in catalogue order: one fetch per storage group."""
    st = _State(vcpu)
    return [st.read(r) for r in REGISTERS]


def read_one(vcpu: Any, regnum: int) -> int:
    """One register's value (its storage group fetched). KeyError for an unknown number."""
    return _State(vcpu).read(lookup(regnum))


def read(vcpu: Any, regnums: Sequence[int]) -> list[int]:
    """The values of these registers, in the order given (each storage group fetched once).
    KeyError for an unknown number."""
    regs = [lookup(n) for n in regnums]
    st = _State(vcpu)
    return [st.read(r) for r in regs]


def _check(r: Register, value: int) -> None:
    if not 0 <= value < 1 << r.bitsize:
        raise RegisterError(f"{r.name}: value {value:#x} does not fit {r.bitsize} bits")


def write(vcpu: Any, regnum: int, value: int) -> None:
    """Write one register (its storage group read and set back once). KeyError for an unknown
    number; RegisterError for a value that does not fit, a selector change or a value KVM
    refuses."""
    r = lookup(regnum)
    _check(r, value)
    st = _State(vcpu)
    st.write(r, value)
    st.flush()


def write_all(vcpu: Any, values: Sequence[int]) -> None:
    """Write every register (one value per register, catalogue order): only those that change,
    each storage group set back once. RegisterError, writing nothing, for a wrong count, a
    value that does not fit or a selector change."""
    if len(values) != len(REGISTERS):
        raise RegisterError(f"expected {len(REGISTERS)} register values, got {len(values)}")
    for r, value in zip(REGISTERS, values):
        _check(r, value)
    st = _State(vcpu)
    for r in REGISTERS:
        if r.readonly and values[r.gdb_regnum] != st.read(r):
            raise RegisterError(f"a write of every register changes read-only register {r.name}")
    for r in REGISTERS:
        if values[r.gdb_regnum] != st.read(r):
            st.write(r, values[r.gdb_regnum])
    st.flush()


def set_pc(vcpu: Any, pc: int) -> None:
    """Where the vCPU resumes (`c ADDR`, `s ADDR`)."""
    regs = vcpu.get_regs()
    regs.rip = pc
    vcpu.set_regs(regs)


def translation_enabled(vcpu: Any) -> bool:
    """Are the guest's addresses virtual? Always, in long mode (the pc board's guests)."""
    return True
