"""The A64 load/store decoder: which memory access the instruction at PC makes.

The emulated vCPU needs this where Unicorn gives only part of the picture: its memory hooks see
physical addresses while watchpoints match virtual ones, and its own translation faults carry
no faulting address. Decoding the load/store at PC gives the access's virtual address, size
and direction; `is_multi_access` says whether Unicorn splits it into several accesses.

Pure: no Unicorn here. The caller passes the instruction word, its address, and a register
reader taking capstone's register names ("x3", "w3", "sp", "wsp", "xzr", "wzr"); Wn may return
the low 32 bits of Xn or all of Xn (the decoder extends W index registers itself).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

MASK64 = (1 << 64) - 1

# Bytes per register of each class, by the first letter of capstone's register name.
_REG_CLASS_BYTES = {"w": 4, "x": 8, "b": 1, "h": 2, "s": 4, "d": 8, "q": 16}
DC_ZVA_BLOCK = 64  # DCZID_EL0.BS = 4 on the Cortex-A57 (and QEMU's virt CPUs): 64-byte blocks

# AdvSIMD load/store multiple structures (LD1-LD4/ST1-ST4): registers transferred, by opcode.
_MULTIPLE_STRUCTURE_REGS = {0b0000: 4, 0b0010: 4, 0b0100: 3, 0b0110: 3, 0b0111: 1, 0b1000: 2, 0b1010: 2}

ReadGpr = Callable[[str], int]

_capstone: Any = None  # one capstone handle, made at first use (importing capstone is slow)


def decode_access(insn: int, pc: int, read_gpr: ReadGpr) -> tuple[int, int, bool] | None:
    """(virtual address, size, is_write) of the load/store `insn` at `pc`, or None if it is
    not one. The size is every byte the instruction touches (both registers of a pair, every
    register of a SIMD structure transfer)."""
    global _capstone
    import capstone
    from capstone import arm64 as cs64
    if _capstone is None:
        _capstone = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
        _capstone.detail = True
    decoded = list(_capstone.disasm(insn.to_bytes(4, "little"), pc))
    if not decoded:
        return None
    i = decoded[0]
    mems = [op for op in i.operands if op.type == cs64.ARM64_OP_MEM]
    if not mems:
        return _decode_other_access(i, read_gpr)
    mem = mems[0].mem
    addr = read_gpr(i.reg_name(mem.base)) + mem.disp  # post-index forms carry disp 0 here
    if mem.index:
        index = read_gpr(i.reg_name(mem.index))
        ext = mems[0].ext
        if ext in (cs64.ARM64_EXT_UXTW,):
            index &= 0xFFFFFFFF
        elif ext in (cs64.ARM64_EXT_SXTW,):
            index = (index & 0xFFFFFFFF) - ((index & 0x80000000) << 1)
        addr += index << mems[0].shift.value
    m = i.mnemonic
    regs = [i.reg_name(op.reg) for op in i.operands if op.type == cs64.ARM64_OP_REG]
    if m.startswith(("stxr", "stlxr", "stxp", "stlxp")):
        regs = regs[1:]  # the first register is the status result, not data
    pair = m.startswith(("ldp", "stp", "ldnp", "stnp", "ldxp", "ldaxp", "stxp", "stlxp", "casp"))
    # AdvSIMD structure loads/stores (both classes) are sized from the encoding.
    structure = simd_structure_size(insn) if insn & 0xBE000000 == 0x0C000000 else None
    # The access size: the mnemonic's b/h/sw suffix, else the data register's width.
    if structure is not None:
        size = structure
    else:
        if m.endswith("b"):
            element = 1
        elif m.endswith("h"):
            element = 2
        elif m.endswith("sw"):
            element = 4
        else:
            element = _REG_CLASS_BYTES.get(regs[0][0], 8) if regs else 8
        size = element * (2 if pair else 1)
    atomic_rmw = m.startswith("ld") and m[2:5] in ("add", "clr", "eor", "set", "sma", "smi", "uma", "umi")
    is_write = m.startswith(("st", "swp", "cas")) or atomic_rmw
    return addr & MASK64, size, is_write


def simd_structure_size(insn: int) -> int | None:
    """Bytes an AdvSIMD load/store structure instruction (LD1-LD4, ST1-ST4, LD1R-LD4R, all
    addressing forms) transfers, or None if `insn` is not one. capstone names only the first
    register of the list and a lane size, so this reads the encoding."""
    if insn & 0xBF000000 == 0x0C000000:  # multiple structures: whole registers
        regs = _MULTIPLE_STRUCTURE_REGS.get((insn >> 12) & 0xF)
        if regs is None:
            return None
        return regs * (16 if insn & (1 << 30) else 8)
    if insn & 0xBF000000 == 0x0D000000:  # single structure: one element per register
        opcode, size_field = (insn >> 13) & 7, (insn >> 10) & 3
        selem = (((opcode & 1) << 1) | ((insn >> 21) & 1)) + 1
        scale = opcode >> 1
        if scale == 3:  # LDnR: one element each, of the size the size field says
            scale = size_field
        elif scale == 2 and size_field & 1:  # .d lanes (size 0b01 with S 0)
            scale = 3
        return selem << scale
    return None


def _decode_other_access(i: Any, read_gpr: ReadGpr) -> tuple[int, int, bool] | None:
    """The accesses capstone gives no memory operand: a PC-relative literal load (its target
    is an immediate) and DC ZVA (it zeroes the aligned block holding Xt)."""
    from capstone import arm64 as cs64
    ops = i.operands
    if i.mnemonic in ("ldr", "ldrsw") and len(ops) == 2 and ops[1].type == cs64.ARM64_OP_IMM:
        size = 4 if i.mnemonic == "ldrsw" else _REG_CLASS_BYTES.get(i.reg_name(ops[0].reg)[0], 8)
        return ops[1].imm & MASK64, size, False
    if i.mnemonic == "dc" and i.op_str.startswith("zva,"):
        xt = read_gpr(i.reg_name(ops[-1].reg))
        return xt & ~(DC_ZVA_BLOCK - 1) & MASK64, DC_ZVA_BLOCK, True
    return None


def is_multi_access(insn: int) -> bool:
    """Does this A64 load/store make more than one memory access in Unicorn (pairs, 128-bit)?"""
    if insn & 0x3A000000 == 0x28000000:  # load/store pair (all addressing forms)
        return True
    if insn & 0x3B000000 == 0x39000000 or insn & 0x3B200000 == 0x38000000 or insn & 0x3B200C00 == 0x38200800:
        # load/store register (unsigned imm / unscaled, pre/post-index / register offset)
        v, size, opc = (insn >> 26) & 1, insn >> 30, (insn >> 22) & 3
        return bool(v and size == 0 and opc & 2)  # 128-bit Q register
    if insn & 0xBF000000 == 0x0C000000 or insn & 0xBF000000 == 0x0D000000:
        return True  # SIMD load/store multiple or single structures
    if insn & 0xFFA00000 == 0xC8200000:
        return True  # LDXP/LDAXP/STXP/STLXP of X registers: two 8-byte accesses
    if insn & 0xFF000000 == 0x9C000000:
        return True  # LDR Qt (literal): two 8-byte accesses
    if insn & 0xFFFFFFE0 == 0xD50B7420:
        return True  # DC ZVA: its block, one byte at a time
    return False
