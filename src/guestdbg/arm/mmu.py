"""AArch64 stage-1 (EL1&0 regime) address translation done in software.

arm64 KVM has no ``KVM_TRANSLATE``, so the debugger walks the guest's VMSAv8-64 translation
tables itself.  This module is pure: it takes register values plus a callable that reads a
little-endian 64-bit word of guest *physical* memory, and never touches the vCPU.

Supported (Arm ARM, "The AArch64 Virtual Memory System Architecture"):

* ``SCTLR_EL1.M == 0``: flat mapping, PA = VA, every access allowed (an address-size fault is
  raised if the VA does not fit in 48 bits once the top byte has been dropped under TBI).
* TTBR0/TTBR1 selection by VA bit 55, range check against T0SZ/T1SZ, ``TCR_EL1.EPD0/EPD1``.
* Top Byte Ignore: ``TCR_EL1.TBI0/TBI1``, and ``TBID0/TBID1`` for instruction fetches.
* 4K, 16K and 64K granules (note the different TG0 and TG1 encodings), starting level derived
  from TnSZ and the granule.  TnSZ values below 16 are treated as 16 (no 52-bit VAs) and values
  above 48 (47 for 64K) as 48 (47) -- the FEAT_TTST limits.
* Block descriptors where VMSAv8-64 without FEAT_LPA/LPA2 permits them: 4K level 1 (1G) and
  level 2 (2M); 16K level 2 (32M); 64K level 2 (512M).  A block descriptor anywhere else, and
  ``0b01`` at level 3, are translation faults.
* Output addresses from descriptor bits [47:n]; an output or table address at or above the PA
  size from ``TCR_EL1.IPS`` (capped at 48 bits) is an address-size fault.  Bits [1:0] of the
  TTBR (CnP) and the ASID are ignored; base-address bits below the start-level table's size
  are treated as zero.
* Access flag: AF == 0 is an access-flag fault, unless ``TCR_EL1.HA`` is set (hardware AF
  update; the walk then behaves as if AF were 1 but does **not** write the descriptor back).
  With ``HA`` and ``HD`` both set, a DBM == 1 read-only descriptor counts as writable (hardware
  dirty-state management), again without writing anything back.
* Permissions from AP[2:1], PXN and UXN, with the architectural extras: a location writable at
  EL0 is never executable at EL1, and ``SCTLR_EL1.WXN`` makes writable locations
  execute-never.  Instruction fetch does not need read permission (execute-only at EL0).

Not supported / deliberately ignored:

* Hierarchical permissions in table descriptors (APTable, UXNTable, PXNTable; ``TCR_EL1.HPD0/1``)
  -- they are ignored as if HPDn were 1.  NSTable is ignored too.
* PSTATE.PAN / ``SCTLR_EL1.SPAN`` / EPAN, FEAT_PAN3, permission indirection (S1PIE), overlays.
* 52-bit VAs or PAs (FEAT_LVA, FEAT_LPA, FEAT_LPA2, ``TCR_EL1.DS``) and level -1 lookups.
* The contiguous hint, memory attributes/shareability, TLBs, stage 2 and the EL2/EL3 regimes.

A failing ``read_u64`` (any exception) while fetching a descriptor is reported as a
*translation* fault at the level whose descriptor could not be read; the original exception is
chained as ``__cause__``.  Real hardware would report a synchronous external abort on the
translation table walk (FSC 0b0101nn); the debugger only needs "not mapped".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "TranslationFault",
    "Translation",
    "translate",
    "translate_range",
]

_MASK64 = (1 << 64) - 1
_OA_BITS = 48  # largest supported output address size (no FEAT_LPA)

# SCTLR_EL1
_SCTLR_M = 1 << 0
_SCTLR_WXN = 1 << 19

# TCR_EL1
_TCR_EPD0 = 1 << 7
_TCR_EPD1 = 1 << 23
_TCR_TBI0 = 1 << 37
_TCR_TBI1 = 1 << 38
_TCR_HA = 1 << 39
_TCR_HD = 1 << 40
_TCR_TBID0 = 1 << 51
_TCR_TBID1 = 1 << 52

_TG0_SHIFT = {0b00: 12, 0b01: 16, 0b10: 14}  # 0b11 reserved
_TG1_SHIFT = {0b01: 14, 0b10: 12, 0b11: 16}  # 0b00 reserved
_IPS_BITS = {0b000: 32, 0b001: 36, 0b010: 40, 0b011: 42, 0b100: 44, 0b101: 48, 0b110: 52}

# Levels at which a block descriptor is permitted, per granule shift (no 52-bit support).
_BLOCK_LEVELS = {12: (1, 2), 14: (2,), 16: (2,)}

# Descriptor fields
_DESC_AF = 1 << 10
_DESC_DBM = 1 << 51
_DESC_PXN = 1 << 53
_DESC_UXN = 1 << 54

_FSC_BASE = {"address_size": 0b000000, "translation": 0b000100, "access_flag": 0b001000,
             "permission": 0b001100}

_ACCESSES = ("read", "write", "exec")


class TranslationFault(Exception):
    """A stage-1 translation failed.

    ``kind`` is one of ``"translation"``, ``"access_flag"``, ``"permission"`` or
    ``"address_size"``.  ``level`` is the lookup level (0..3) at which the fault was detected,
    or -1 when the VA was rejected before any lookup (outside the TnSZ range of both TTBRs, or
    an out-of-range TTBR base address).  Architecturally those are reported as level 0, which is
    what :meth:`fsc` encodes.
    """

    def __init__(self, kind: str, level: int, va: int, message: str | None = None, *,
                 access: str = "read") -> None:
        if kind not in _FSC_BASE:
            raise ValueError(f"unknown fault kind {kind!r}")
        self.kind = kind
        self.level = level
        self.va = va
        self.access = access
        detail = f": {message}" if message else ""
        super().__init__(f"{kind} fault, level {level}, VA {va:#018x} ({access}){detail}")

    def fsc(self) -> int:
        """The ESR_ELx.{DFSC,IFSC} fault status code for this fault."""
        return _FSC_BASE[self.kind] | max(self.level, 0)


@dataclass(frozen=True)
class Translation:
    """Result of a successful translation.

    ``page_size`` is the size of the page or block that maps ``va`` (a nominal 4K when the MMU
    is off).  ``level`` is the lookup level of the final descriptor (-1 when the MMU is off)
    and ``descriptor`` its raw value (0 when the MMU is off).
    """

    va: int
    pa: int
    page_size: int
    readable_el1: bool
    writable_el1: bool
    readable_el0: bool
    writable_el0: bool
    executable_el1: bool
    executable_el0: bool
    level: int = -1
    descriptor: int = 0

    def allows(self, access: str, el: int) -> bool:
        """Whether ``access`` ("read", "write" or "exec") is permitted at ``el`` (0 or 1)."""
        if access == "read":
            return self.readable_el0 if el == 0 else self.readable_el1
        if access == "write":
            return self.writable_el0 if el == 0 else self.writable_el1
        if access == "exec":
            return self.executable_el0 if el == 0 else self.executable_el1
        raise ValueError(f"unknown access {access!r}")


def _check_args(va: int, access: str, el: int) -> None:
    if not 0 <= va <= _MASK64:
        raise ValueError(f"VA {va:#x} is not a 64-bit unsigned value")
    if access not in _ACCESSES:
        raise ValueError(f"access must be one of {_ACCESSES}, not {access!r}")
    if el not in (0, 1):
        raise ValueError(f"el must be 0 or 1, not {el!r}")


def _tbi_applies(va: int, tcr: int, access: str) -> bool:
    if (va >> 55) & 1:
        return bool(tcr & _TCR_TBI1) and not (access == "exec" and tcr & _TCR_TBID1)
    return bool(tcr & _TCR_TBI0) and not (access == "exec" and tcr & _TCR_TBID0)


def translate(va: int, *, sctlr_el1: int, tcr_el1: int, ttbr0_el1: int, ttbr1_el1: int,
              read_u64: Callable[[int], int], access: str = "read", el: int = 1) -> Translation:
    """Translate an EL1&0 stage-1 virtual address, checking ``access`` at exception level ``el``.

    Raises :class:`TranslationFault` when the walk faults or the access is not permitted.
    """
    _check_args(va, access, el)
    tcr = tcr_el1
    tbi = _tbi_applies(va, tcr, access)
    hi = (va >> 55) & 1

    if not sctlr_el1 & _SCTLR_M:
        addr = va & ((1 << 56) - 1) if tbi else va
        if addr >> _OA_BITS:
            raise TranslationFault("address_size", 0, va, "MMU off and VA exceeds the PA size",
                                   access=access)
        return Translation(va=va, pa=addr, page_size=1 << 12, readable_el1=True,
                           writable_el1=True, readable_el0=True, writable_el0=True,
                           executable_el1=True, executable_el0=True)

    # ---- select the translation table base and its controls
    if hi:
        tsz = (tcr >> 16) & 0x3F
        granule = _TG1_SHIFT.get((tcr >> 30) & 0b11, 12)
        epd = tcr & _TCR_EPD1
        ttbr = ttbr1_el1
        which = "TTBR1"
    else:
        tsz = tcr & 0x3F
        granule = _TG0_SHIFT.get((tcr >> 14) & 0b11, 12)
        epd = tcr & _TCR_EPD0
        ttbr = ttbr0_el1
        which = "TTBR0"
    tsz = max(16, min(tsz, 47 if granule == 16 else 48))
    ia_bits = 64 - tsz

    # VA range check: bits [top:ia_bits] must all equal bit 55.
    top = 55 if tbi else 63
    upper = (va >> ia_bits) & ((1 << (top + 1 - ia_bits)) - 1)
    expect = ((1 << (top + 1 - ia_bits)) - 1) if hi else 0
    if upper != expect:
        raise TranslationFault("translation", -1, va,
                               f"VA outside the {which} range (T{hi}SZ={tsz})", access=access)
    if epd:
        raise TranslationFault("translation", 0, va, f"walks disabled by EPD{hi}", access=access)

    ips = _IPS_BITS.get((tcr >> 32) & 0b111, _OA_BITS)
    pa_bits = min(ips, _OA_BITS)
    oa_mask = (1 << _OA_BITS) - 1

    stride = granule - 3
    levels = -(-(ia_bits - granule) // stride)  # ceil
    level = 4 - levels
    # bits resolved by the start level
    start_shift = granule + (3 - level) * stride
    start_bits = ia_bits - start_shift
    table_size = max(1 << (start_bits + 3), 64)

    table = ttbr & oa_mask & ~(table_size - 1)
    if table >> pa_bits:
        raise TranslationFault("address_size", -1, va, f"{which} base {table:#x} beyond PA size",
                               access=access)

    while True:
        shift = granule + (3 - level) * stride
        nbits = start_bits if shift == start_shift else stride
        index = (va >> shift) & ((1 << nbits) - 1)
        desc_pa = table + index * 8
        try:
            desc = read_u64(desc_pa) & _MASK64
        except Exception as exc:  # unmapped PA in the caller's memory model
            raise TranslationFault("translation", level, va,
                                   f"cannot read descriptor at PA {desc_pa:#x}: {exc}",
                                   access=access) from exc

        kind = desc & 0b11
        if not kind & 1:
            raise TranslationFault("translation", level, va,
                                   f"invalid descriptor {desc:#x} at PA {desc_pa:#x}",
                                   access=access)
        if kind == 0b11 and level < 3:  # table descriptor
            table = desc & oa_mask & ~((1 << granule) - 1)
            if table >> pa_bits:
                raise TranslationFault("address_size", level, va,
                                       f"next-level table {table:#x} beyond PA size",
                                       access=access)
            level += 1
            continue
        if kind == 0b01 and level not in _BLOCK_LEVELS[granule]:
            raise TranslationFault("translation", level, va,
                                   f"block descriptor {desc:#x} not permitted at level {level}",
                                   access=access)
        break  # page (level 3, 0b11) or permitted block (0b01)

    page_size = 1 << shift
    out = desc & oa_mask & ~(page_size - 1)
    if out >> pa_bits:
        raise TranslationFault("address_size", level, va,
                               f"output address {out:#x} beyond {pa_bits}-bit PA size",
                               access=access)
    hw_af = bool(tcr & _TCR_HA)
    if not desc & _DESC_AF and not hw_af:
        raise TranslationFault("access_flag", level, va, f"AF clear in {desc:#x}", access=access)

    ap = (desc >> 6) & 0b11
    if ap & 0b10 and desc & _DESC_DBM and hw_af and tcr & _TCR_HD:
        ap &= 0b01  # writable-clean: hardware would clear AP[2] on the first write
    readable_el1 = True
    writable_el1 = not ap & 0b10
    readable_el0 = bool(ap & 0b01)
    writable_el0 = ap == 0b01
    wxn = bool(sctlr_el1 & _SCTLR_WXN)
    executable_el0 = not desc & _DESC_UXN and not (wxn and writable_el0)
    executable_el1 = not desc & _DESC_PXN and not writable_el0 and not (wxn and writable_el1)

    result = Translation(va=va, pa=out | (va & (page_size - 1)), page_size=page_size,
                         readable_el1=readable_el1, writable_el1=writable_el1,
                         readable_el0=readable_el0, writable_el0=writable_el0,
                         executable_el1=executable_el1, executable_el0=executable_el0,
                         level=level, descriptor=desc)
    if not result.allows(access, el):
        raise TranslationFault("permission", level, va,
                               f"{access} not permitted at EL{el} by {desc:#x}", access=access)
    return result


def translate_range(va: int, size: int, **kwargs) -> list[tuple[int, int, int]]:
    """Translate ``[va, va + size)`` into ``[(va, pa, length), ...]`` pieces.

    Pieces are split at the boundaries of the pages/blocks that map them (physically contiguous
    neighbours are *not* merged).  ``kwargs`` are those of :func:`translate`; the first page that
    faults raises :class:`TranslationFault` for that page's address.
    """
    if size < 0:
        raise ValueError("size must not be negative")
    if va < 0 or va + size > _MASK64 + 1:
        raise ValueError(f"range {va:#x}+{size:#x} is outside the 64-bit address space")
    pieces: list[tuple[int, int, int]] = []
    cur, end = va, va + size
    while cur < end:
        t = translate(cur, **kwargs)
        length = min(end - cur, t.page_size - (cur & (t.page_size - 1)))
        pieces.append((cur, t.pa, length))
        cur += length
    return pieces
