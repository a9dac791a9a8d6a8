"""The AArch64 register catalogue at integer level: which registers a debugger sees, and how
each one is read and written on a KVM-shaped vCPU (ONE_REG).

One table, `REGISTERS`, in gdb's register numbering (the position of a register in the table
is its number), is the single source of register facts for the layers above: the debug
manager reads and writes registers through this module as Python ints, and `gdb/aarch64_regs`
turns the same table into gdb's target description and packet hex.

Theory of operation
-------------------
1. Numbering follows gdb's own aarch64 layout: x0..x30 are 0..30, sp 31, pc 32, cpsr 33,
   v0..v31 34..65, fpsr 66, fpcr 67. The system registers (group "system") follow from 68.
2. Every register except `sp` maps to one KVM ONE_REG id and is read and written through
   `vcpu.get_one_reg` / `vcpu.set_one_reg`, so this module works unchanged on real KVM.
   Several registers are read in one `vcpu.get_one_regs(ids)` where the vCPU offers that
   batch call (the emulated vCPU does: a whole `g` is one Unicorn batch read).
3. `sp` is the *current* stack pointer, which has no ONE_REG id of its own (`one_reg_id` is
   None). It is SP_EL1 (KVM_REG_ARM_CORE_SP_EL1) when PSTATE.SPSel is 1 and PSTATE.EL is 1 or
   more (EL1h), and SP_EL0 (KVM_REG_ARM_CORE_SP) otherwise (EL0, EL1t). This vCPU has no EL2 or
   EL3, so SP_EL1 is the only SP_ELx. `sp` therefore aliases either `sp_el0` or `sp_el1`.
4. `cpsr` is 32 bits wide, as gdb expects; it is the low half of the 64-bit ONE_REG PSTATE. A
   write keeps PSTATE's upper half.
5. `readonly` registers (identification registers) accept a write of the value they hold and
   refuse any other (`RegisterError`), before anything is written.
6. `write_all` writes only registers whose value differs from the current one: `cpsr` first (it
   selects the stack pointer `sp` aliases), then the rest in catalogue order, then `sp` last. A
   full set read with `read_all` with one value edited changes exactly that register.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from guestdbg.arm import kvm_regs as kr

GROUP_CORE, GROUP_FPU, GROUP_SYSTEM = "core", "fpu", "system"

# PSTATE fields that select the stack pointer.
PSTATE_SPSEL = 1 << 0
PSTATE_EL_SHIFT = 2
SCTLR_M = 1 << 0  # SCTLR_EL1.M: stage-1 translation on


class RegisterError(ValueError):
    """A register write the vCPU cannot take: a value out of range, or a change to a read-only
    register. Nothing was written."""


class OneRegVcpu(Protocol):
    """What the catalogue needs from a vCPU: the KVM ONE_REG accessors (and, optionally, a
    batch `get_one_regs(ids) -> values`)."""

    def get_one_reg(self, reg_id: int) -> int: ...

    def set_one_reg(self, reg_id: int, value: int) -> None: ...


@dataclass(frozen=True)
class Register:
    """One register. `gdb_regnum` is its number (its position in REGISTERS); `one_reg_id` is
    None only for `sp`, whose storage depends on PSTATE; `group` is "core", "fpu" or "system"."""

    name: str
    bitsize: int
    gdb_regnum: int
    one_reg_id: int | None
    group: str
    readonly: bool = False


# (name, ONE_REG id, read-only) of the system registers, in gdb order.
_SYSREGS: tuple[tuple[str, int, bool], ...] = (
    ("sctlr_el1", kr.sysreg_id("SCTLR_EL1"), False),
    ("tcr_el1", kr.sysreg_id("TCR_EL1"), False),
    ("ttbr0_el1", kr.sysreg_id("TTBR0_EL1"), False),
    ("ttbr1_el1", kr.sysreg_id("TTBR1_EL1"), False),
    ("mair_el1", kr.sysreg_id("MAIR_EL1"), False),
    ("vbar_el1", kr.sysreg_id("VBAR_EL1"), False),
    ("esr_el1", kr.sysreg_id("ESR_EL1"), False),
    ("far_el1", kr.sysreg_id("FAR_EL1"), False),
    ("elr_el1", kr.KVM_REG_ARM_CORE_ELR_EL1, False),
    ("spsr_el1", kr.KVM_REG_ARM_CORE_SPSR(kr.KVM_SPSR_EL1), False),
    ("sp_el0", kr.KVM_REG_ARM_CORE_SP, False),
    ("sp_el1", kr.KVM_REG_ARM_CORE_SP_EL1, False),
    ("contextidr_el1", kr.sysreg_id("CONTEXTIDR_EL1"), False),
    ("tpidr_el0", kr.sysreg_id("TPIDR_EL0"), False),
    ("tpidr_el1", kr.sysreg_id("TPIDR_EL1"), False),
    ("cpacr_el1", kr.sysreg_id("CPACR_EL1"), False),
    ("mdscr_el1", kr.sysreg_id("MDSCR_EL1"), False),
    ("id_aa64dfr0_el1", kr.sysreg_id("ID_AA64DFR0_EL1"), True),
    ("midr_el1", kr.sysreg_id("MIDR_EL1"), True),
    ("mpidr_el1", kr.sysreg_id("MPIDR_EL1"), True),
)


def _build_catalogue() -> tuple[Register, ...]:
    regs: list[Register] = []

    def add(name: str, bitsize: int, one_reg_id: int | None, group: str, readonly: bool = False) -> None:
        regs.append(Register(name, bitsize, len(regs), one_reg_id, group, readonly))

    for n in range(31):
        add(f"x{n}", 64, kr.KVM_REG_ARM_CORE_X(n), GROUP_CORE)
    add("sp", 64, None, GROUP_CORE)
    add("pc", 64, kr.KVM_REG_ARM_CORE_PC, GROUP_CORE)
    add("cpsr", 32, kr.KVM_REG_ARM_CORE_PSTATE, GROUP_CORE)
    for n in range(32):
        add(f"v{n}", 128, kr.KVM_REG_ARM_CORE_V(n), GROUP_FPU)
    add("fpsr", 32, kr.KVM_REG_ARM_CORE_FPSR, GROUP_FPU)
    add("fpcr", 32, kr.KVM_REG_ARM_CORE_FPCR, GROUP_FPU)
    for name, reg_id, readonly in _SYSREGS:
        add(name, 64, reg_id, GROUP_SYSTEM, readonly)
    return tuple(regs)


REGISTERS: tuple[Register, ...] = _build_catalogue()
BY_REGNUM: dict[int, Register] = {r.gdb_regnum: r for r in REGISTERS}
BY_NAME: dict[str, Register] = {r.name: r for r in REGISTERS}

REG_FP, REG_SP, REG_PC, REG_CPSR = 29, 31, 32, 33
assert (REGISTERS[REG_FP].name, REGISTERS[REG_SP].name, REGISTERS[REG_PC].name,
        REGISTERS[REG_CPSR].name) == ("x29", "sp", "pc", "cpsr")

# Registers whose ONE_REG is wider than the register (cpsr: the low half of PSTATE): (number, mask).
_NARROW: tuple[tuple[int, int], ...] = tuple(
    (r.gdb_regnum, (1 << r.bitsize) - 1) for r in REGISTERS
    if r.one_reg_id is not None and r.bitsize < 8 * kr.reg_size_bytes(r.one_reg_id))
_ALL_IDS: list[int] = [r.one_reg_id if r.one_reg_id is not None else 0 for r in REGISTERS]

# write_all's order (rule 6): cpsr first, sp last.
_WRITE_ORDER: tuple[int, ...] = (REG_CPSR,) + tuple(
    r.gdb_regnum for r in REGISTERS if r.gdb_regnum not in (REG_CPSR, REG_SP)) + (REG_SP,)


def lookup(regnum: int) -> Register:
    """The register numbered `regnum`; KeyError for a number the catalogue does not have."""
    try:
        return BY_REGNUM[regnum]
    except KeyError:
        raise KeyError(f"no register number {regnum}") from None


def _sp_one_reg_id(vcpu: OneRegVcpu) -> int:
    """ONE_REG id of the stack pointer `sp` currently names (rule 3). A vCPU may name it with an
    id of its own (`current_sp_id`: the emulated one, which then reads it with the rest of a
    batch instead of reading PSTATE first)."""
    current = getattr(vcpu, "current_sp_id", None)
    if current is not None:
        return current
    pstate = vcpu.get_one_reg(kr.KVM_REG_ARM_CORE_PSTATE)
    if (pstate >> PSTATE_EL_SHIFT) & 3 >= 1 and pstate & PSTATE_SPSEL:
        return kr.KVM_REG_ARM_CORE_SP_EL1
    return kr.KVM_REG_ARM_CORE_SP


def _get_many(vcpu: OneRegVcpu, ids: list[int]) -> list[int]:
    # The optional fast path (the emulated vCPU reads plain registers in one batch); the result
    # is the same as one get_one_reg per register.
    read_many = getattr(vcpu, "get_one_regs", None)
    return read_many(ids) if read_many is not None else [vcpu.get_one_reg(i) for i in ids]


# ---------------------------------------------------------------------------------------------
# Reading


def read_all(vcpu: OneRegVcpu) -> list[int]:
    """Every register's value, in catalogue order (what a `g` packet carries)."""
    ids = _ALL_IDS.copy()
    ids[REG_SP] = _sp_one_reg_id(vcpu)
    values = _get_many(vcpu, ids)
    for n, mask in _NARROW:
        values[n] &= mask
    return values


# read()'s plans, by the register numbers asked for (a `p` or a stop reply's few registers, on
# every stop): (ONE_REG ids, where sp goes in them, each register's mask).
_Plan = tuple[list[int], tuple[int, ...], tuple[int, ...]]
_PLANS: dict[tuple[int, ...], _Plan] = {}


def _plan(regnums: tuple[int, ...]) -> _Plan:
    plan = _PLANS.get(regnums)
    if plan is None:
        regs = [lookup(n) for n in regnums]
        plan = ([r.one_reg_id if r.one_reg_id is not None else 0 for r in regs],
                tuple(i for i, r in enumerate(regs) if r.one_reg_id is None),
                tuple((1 << r.bitsize) - 1 for r in regs))
        if len(_PLANS) < 1024:
            _PLANS[regnums] = plan
    return plan


# read_one()'s (ONE_REG id, mask) by register number; id 0 for sp.
_ONE: dict[int, tuple[int, int]] = {
    r.gdb_regnum: (r.one_reg_id or 0, (1 << r.bitsize) - 1) for r in REGISTERS}


def read_one(vcpu: OneRegVcpu, regnum: int) -> int:
    """One register's value (a `p`). KeyError for an unknown number."""
    try:
        reg_id, mask = _ONE[regnum]
    except KeyError:
        raise KeyError(f"no register number {regnum}") from None
    return vcpu.get_one_reg(reg_id or _sp_one_reg_id(vcpu)) & mask


def read(vcpu: OneRegVcpu, regnums: Sequence[int]) -> list[int]:
    """The values of these registers, in the order given. KeyError for an unknown number."""
    ids, sp_at, masks = _plan(tuple(regnums))
    if sp_at:
        ids = ids.copy()
        sp_id = _sp_one_reg_id(vcpu)
        for i in sp_at:
            ids[i] = sp_id
    values = [vcpu.get_one_reg(ids[0])] if len(ids) == 1 else _get_many(vcpu, ids)
    return [v & mask for v, mask in zip(values, masks)]


def translation_enabled(vcpu: OneRegVcpu) -> bool:
    """Is the guest's stage-1 MMU on (SCTLR_EL1.M), so that its addresses are virtual?"""
    return bool(vcpu.get_one_reg(kr.sysreg_id("SCTLR_EL1")) & SCTLR_M)


# ---------------------------------------------------------------------------------------------
# Writing


def _check(vcpu: OneRegVcpu, r: Register, value: int) -> None:
    if not 0 <= value < 1 << r.bitsize:
        raise RegisterError(f"{r.name}: value {value:#x} does not fit {r.bitsize} bits")


def _store(vcpu: OneRegVcpu, r: Register, value: int) -> None:
    """Write an in-range value (sp: to SP_EL1 or SP_EL0, per PSTATE; cpsr: keeping PSTATE[63:32])."""
    if r.one_reg_id is None:  # sp
        vcpu.set_one_reg(_sp_one_reg_id(vcpu), value)
        return
    if r.bitsize < 8 * kr.reg_size_bytes(r.one_reg_id):
        mask = (1 << r.bitsize) - 1
        value |= vcpu.get_one_reg(r.one_reg_id) & ~mask
    vcpu.set_one_reg(r.one_reg_id, value)


def write(vcpu: OneRegVcpu, regnum: int, value: int) -> None:
    """Write one register (rule 5 for read-only ones). KeyError for an unknown number,
    RegisterError for a value that does not fit or a change to a read-only register."""
    r = lookup(regnum)
    _check(vcpu, r, value)
    if r.readonly:
        if value != read(vcpu, [regnum])[0]:
            raise RegisterError(f"{r.name} is read-only")
        return  # unchanged identification register: nothing to do
    _store(vcpu, r, value)


def write_all(vcpu: OneRegVcpu, values: Sequence[int]) -> None:
    """Write every register (one value per register, catalogue order), only those that change
    (rule 6). RegisterError, writing nothing, for a wrong count, a value that does not fit or
    a change to a read-only register."""
    if len(values) != len(REGISTERS):
        raise RegisterError(f"expected {len(REGISTERS)} register values, got {len(values)}")
    for r, value in zip(REGISTERS, values):
        _check(vcpu, r, value)
    old = read_all(vcpu)
    for r in REGISTERS:
        if r.readonly and values[r.gdb_regnum] != old[r.gdb_regnum]:
            raise RegisterError(f"a write of every register changes read-only register {r.name}")
    for n in _WRITE_ORDER:
        if values[n] != old[n]:
            _store(vcpu, REGISTERS[n], values[n])


def set_pc(vcpu: OneRegVcpu, pc: int) -> None:
    """Where the vCPU resumes (`c ADDR`, `s ADDR`)."""
    vcpu.set_one_reg(kr.KVM_REG_ARM_CORE_PC, pc)
