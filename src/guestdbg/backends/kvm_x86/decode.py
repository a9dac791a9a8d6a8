"""What one x86-64 instruction loads from memory, decoded with capstone (64-bit mode).

The page-trap watchpoints (vm.py, PAGE TRAPS) see a load as an MMIO exit because the watched
page has no memory slot. KVM cannot fetch instructions from such a page, so the vCPU steps
instructions that live there with the slot put back (FETCH ASSIST in vm.py) and must find their
loads itself: `Insn.loads(regs)` gives the guest-virtual (address, size) of every read the
instruction makes, explicit operands and the implicit ones (pop, ret, leave, iret, xlat), as a
superset where capstone is vague (fxrstor/xrstor get their largest size).

`decode()` keeps what capstone said per instruction bytes and address: code on a trapped page
is stepped one instruction at a time, and loops repeat the same few instructions.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_INSN = 15
MASK64 = (1 << 64) - 1

# Memory operands that are addresses only, not data reads (capstone marks some of them "read").
_NO_ACCESS = ("lea", "nop", "prefetch", "clflush", "clwb", "clzero", "invlpg", "cldemote", "bnd")
# Operand sizes capstone gives as 8 for whole-area restores: the most they can read.
_AREA_SIZES = {"fxrstor": 512, "fxrstor64": 512, "frstor": 108, "fldenv": 28, "xrstor": 4096,
               "xrstor64": 4096, "xrstors": 4096, "xrstors64": 4096}
# Implicit stack reads: mnemonic -> (base register, bytes).
_STACK_READS = {"pop": ("rsp", 8), "popfq": ("rsp", 8), "popf": ("rsp", 8), "ret": ("rsp", 8),
                "retf": ("rsp", 16), "retfq": ("rsp", 16), "iretq": ("rsp", 40), "iret": ("rsp", 40),
                "iretd": ("rsp", 40), "leave": ("rbp", 8)}
# Instructions after which a cached translation may be stale.
_TLB_CHANGES = ("invlpg", "invpcid", "wrmsr")

_REG64 = {n: (n, MASK64) for n in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "rip")
          + tuple(f"r{i}" for i in range(8, 16))}
_REG32 = {n32: (n64, 0xFFFF_FFFF) for n32, n64 in
          {"eax": "rax", "ebx": "rbx", "ecx": "rcx", "edx": "rdx", "esi": "rsi", "edi": "rdi", "ebp": "rbp",
           "esp": "rsp", "eip": "rip", **{f"r{i}d": f"r{i}" for i in range(8, 16)}}.items()}
_REGS = {**_REG64, **_REG32}

_cs = None
_cache: dict[tuple[bytes, int], Insn | None] = {}
_CACHE_MAX = 4096


def _capstone():
    global _cs
    if _cs is None:
        import capstone
        _cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        _cs.detail = True
    return _cs


@dataclass(frozen=True)
class _Mem:
    """A memory read: offset = base + index * scale + disp (masked to the address size), plus
    the fs/gs base of a segment override."""

    base: tuple[str, int] | None   # (kvm_regs field, mask); None for no base
    index: tuple[str, int] | None
    scale: int
    disp: int                      # rip-relative: already the absolute target
    addr_mask: int
    segment: str | None            # "fs" / "gs"
    size: int


@dataclass(frozen=True)
class Insn:
    address: int
    size: int
    mnemonic: str
    reads: tuple[_Mem, ...]
    tlb_change: bool    # may change translations (a cached one must be dropped after it)

    @property
    def segments(self) -> bool:
        return any(m.segment for m in self.reads)

    def loads(self, regs, seg_bases: dict[str, int] | None = None) -> list[tuple[int, int]]:
        """(guest-virtual address, size) of each read, with `regs` a kvm_regs as the
        instruction starts; `seg_bases` the fs/gs bases when `segments`."""
        out = []
        for m in self.reads:
            off = m.disp
            if m.base is not None:
                off += getattr(regs, m.base[0]) & m.base[1]
            if m.index is not None:
                off += (getattr(regs, m.index[0]) & m.index[1]) * m.scale
            off &= m.addr_mask
            seg = (seg_bases or {}).get(m.segment, 0) if m.segment else 0
            out.append(((seg + off) & MASK64, m.size))
        return out


def decode(code: bytes, address: int) -> Insn | None:
    """Decode the instruction at the start of `code` (guest bytes at `address`); None if
    capstone cannot."""
    key = (bytes(code[:MAX_INSN]), address)
    if key in _cache:
        return _cache[key]
    insn = _decode(*key)
    if len(_cache) >= _CACHE_MAX:
        _cache.clear()
    _cache[key] = insn
    return insn


def _decode(code: bytes, address: int) -> Insn | None:
    from capstone import CS_AC_READ
    from capstone import x86 as cx
    ci = next(_capstone().disasm(code, address, 1), None)
    if ci is None:
        return None
    mnem = ci.mnemonic
    addr_mask = 0xFFFF_FFFF if ci.addr_size == 4 else MASK64
    reads = []
    if not mnem.startswith(_NO_ACCESS):
        for op in ci.operands:
            if op.type != cx.X86_OP_MEM or not (op.access & CS_AC_READ or mnem.startswith("outs")):
                continue
            m = op.mem
            disp, base = m.disp, None
            if m.base == cx.X86_REG_RIP:
                disp += address + ci.size  # rip-relative: from the next instruction
            elif m.base:
                base = _REGS.get(ci.reg_name(m.base))
            index = _REGS.get(ci.reg_name(m.index)) if m.index else None  # riz: no index
            segment = ci.reg_name(m.segment) if m.segment else None
            reads.append(_Mem(base, index, m.scale, disp, addr_mask, segment if segment in ("fs", "gs") else None,
                              _AREA_SIZES.get(mnem, op.size or 8)))
    stack = _STACK_READS.get(mnem)
    if stack is not None:
        reads.append(_Mem(_REGS[stack[0]], None, 1, 0, MASK64, None, stack[1]))
    elif mnem == "xlatb":
        reads.append(_Mem(_REGS["rbx"], ("rax", 0xFF), 1, 0, MASK64, None, 1))
    tlb = mnem.startswith(_TLB_CHANGES) or (mnem == "mov" and "cr" in ci.op_str)
    return Insn(address, ci.size, mnem, tuple(reads), tlb)
