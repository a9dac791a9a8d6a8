"""AArch64 self-hosted debug registers: decoding and matching.

A pure model (no Unicorn) of DBGBCR/DBGBVR, DBGWCR/DBGWVR, ID_AA64DFR0_EL1 and MDSCR_EL1, plus
builders for the exception syndromes (ESR) the vCPU back end reports. The back end decodes the
register pairs once, when they are written, and asks ``breakpoint_matches`` /
``watchpoint_matches`` on each candidate instruction or access.

The PE modelled here is the one the back end emulates: AArch64 only, EL0 and EL1 only (no EL2, no
EL3), always in Non-secure state (as QEMU's ``virt`` board without ``secure=on``, and as every
KVM guest), with 49-bit virtual addresses (no FEAT_LVA).

Constrained-unpredictable choices
---------------------------------

Where the Arm ARM leaves a choice (CONSTRAINED UNPREDICTABLE, or a reserved encoding), this module
makes the one listed here. Each rule is also noted where the code applies it.

Breakpoints (``decode_breakpoint`` / ``breakpoint_matches``):

1. **BAS = 0b0000 on an address breakpoint** (BT 0b0000/0b0001): behaves as disabled
   (``decode_breakpoint`` returns None). This is what Cortex-A35/A53 do.
2. **Other non-0b1111 BAS on an address breakpoint** (0b0011/0b1100 are T32 half-word selects,
   the rest are reserved): the breakpoint matches the whole 4-byte A64 instruction at
   DBGBVR, as if BAS were 0b1111. A64 instructions are word sized and word aligned, so there is
   no half-word to select.
3. **Reserved BT values** (address mismatch 0b0100/0b0101, VMID kinds 0b1000+ which need EL2, and
   all other unallocated values): disabled.
4. **A context kind (BT 0b0010/0b0011) in a slot that is not context-aware** (context-aware slots
   are the highest ``ctx_cmps`` numbers, ``index >= brps - ctx_cmps``): disabled. A slot number
   at or above ``brps`` does not exist and also decodes as disabled.
5. **PMC/HMC/SSC combinations**, for both breakpoints (PMC) and watchpoints (PAC):

   - PMC = 0b00 with HMC = 0, SSC = 0b00 is reserved: disabled.
   - Every other PMC = 0b00 combination matches only at EL2 or EL3, which do not exist: it never
     fires, so it also decodes as disabled.
   - HMC = 1 with PMC = 0b10 (EL2 and EL0 but not EL1) is reserved: disabled.
   - SSC = 0b10 selects Secure state only; the PE is always Non-secure, so it never fires:
     disabled. SSC = 0b11 is only defined for combinations involving EL2/EL3 or later security
     states: disabled.
   - Otherwise SSC = 0b00 (both states) and 0b01 (Non-secure) match, HMC only adds EL2/EL3 (which
     do not exist), and PMC[0] enables EL1, PMC[1] enables EL0.

6. **A Linked Context breakpoint's own PMC/HMC/SSC** are not consulted: it is a context
   comparator, and the linking address breakpoint or watchpoint's own filter decides the
   Exception level. (Its ``el0``/``el1`` attributes are decoded but informational only, and a
   reserved combination there does not disable it.)
7. **A linked breakpoint or watchpoint whose LBN does not name an enabled Linked Context
   breakpoint in a context-aware slot** (out of range, disabled, another BT, or the slot was
   rejected by rule 4): it never fires. The architecture allows it to behave as disabled or to
   link to an UNKNOWN context breakpoint; "disabled" is the only choice a debugger can reason
   about.
8. **A Linked Context breakpoint on its own** never generates an event (architectural, listed
   here for completeness).

Watchpoints (``decode_watchpoint`` / ``Watchpoint``):

9. **LSC = 0b00** (reserved): disabled.
10. **MASK = 0b00001 or 0b00010** (reserved): disabled.
11. **MASK = 3..31 with low DBGWVR bits set**: the low MASK bits are ignored, so the watched region
    is the aligned 2**MASK-byte block containing DBGWVR.
12. **MASK = 3..31 with BAS not all ones**: BAS is ignored and treated as 0b11111111; the whole
    region is watched.
13. **MASK = 0 with DBGWVR bit 2 set**: only BAS[3:0] applies, to the word at DBGWVR & ~3;
    BAS[7:4] is ignored whatever it holds.
14. **MASK = 0 with BAS = 0** (after rule 13): watches nothing, so disabled.
15. **Non-contiguous BAS**: exactly the selected bytes are watched (one range per run of ones),
    never the bytes in the gaps.
16. **Access matching is exact**: a watchpoint fires only when some byte of the access is a
    watched byte, for every access size and alignment, including accesses that cross a
    doubleword or page (no rounding of the access to an aligned block, unlike the latitude the
    architecture gives for some large or unaligned accesses).
17. **An access that wraps past 2**64** is treated as the two pieces [addr, 2**64) and
    [0, end - 2**64); ``first_hit`` reports the first watched byte in access order.

Addresses: DBGBVR and DBGWVR hold VA[48:2]; bits [63:49] are a sign extension that this model
does not trust, so the address is re-sign-extended from bit 48 and bits [1:0] are cleared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

MASK64 = (1 << 64) - 1
_VA_TOP_BIT = 48  # 49-bit VAs: DBGBVR/DBGWVR bit 48 is the sign bit (no FEAT_LVA)


@dataclass(frozen=True)
class Field:
    """A bit field ``reg[shift + width - 1 : shift]``."""

    shift: int
    width: int

    @property
    def mask(self) -> int:
        """The field's bits in place."""
        return ((1 << self.width) - 1) << self.shift

    def extract(self, reg: int) -> int:
        return (reg >> self.shift) & ((1 << self.width) - 1)

    def deposit(self, reg: int, value: int) -> int:
        """``reg`` with this field replaced by ``value`` (which must fit)."""
        if not 0 <= value < (1 << self.width):
            raise ValueError(f"value {value:#x} does not fit a {self.width}-bit field")
        return (reg & ~self.mask) | (value << self.shift)


class DBGBCR:
    """DBGBCR<n>_EL1, breakpoint control."""

    E = Field(0, 1)  # enable
    PMC = Field(1, 2)  # privilege mode control: bit 0 EL1, bit 1 EL0
    BAS = Field(5, 4)  # byte address select (0b1111 for A64)
    HMC = Field(13, 1)  # higher mode control (EL2/EL3)
    SSC = Field(14, 2)  # security state control
    LBN = Field(16, 4)  # linked breakpoint number
    BT = Field(20, 4)  # breakpoint type


class DBGWCR:
    """DBGWCR<n>_EL1, watchpoint control."""

    E = Field(0, 1)
    PAC = Field(1, 2)  # privilege of access control: bit 0 EL1, bit 1 EL0
    LSC = Field(3, 2)  # load/store control: 0b01 load, 0b10 store, 0b11 both
    BAS = Field(5, 8)  # one bit per byte of the doubleword at DBGWVR
    HMC = Field(13, 1)
    SSC = Field(14, 2)
    LBN = Field(16, 4)
    WT = Field(20, 1)  # watchpoint type: 1 = linked to a context breakpoint
    MASK = Field(24, 5)  # address mask: ignore this many low address bits


class ID_AA64DFR0:  # noqa: N801 (Arm name)
    """ID_AA64DFR0_EL1, debug feature register 0. The counts hold "number minus 1"."""

    DebugVer = Field(0, 4)
    TraceVer = Field(4, 4)
    PMUVer = Field(8, 4)
    BRPs = Field(12, 4)
    WRPs = Field(20, 4)
    CTX_CMPs = Field(28, 4)


class MDSCR_EL1:  # noqa: N801 (Arm name)
    """MDSCR_EL1, monitor debug system control."""

    SS = Field(0, 1)  # software step enable
    KDE = Field(13, 1)  # local (kernel) debug enable: debug exceptions at the EL they target
    MDE = Field(15, 1)  # monitor debug enable: breakpoints and watchpoints


PSTATE_SS = 1 << 21  # software step
PSTATE_D = 1 << 9  # debug exception mask

# Cortex-A57-like value: DebugVer 6 (Armv8.0 debug), PMUVer 1, 6 BRPs, 4 WRPs, 2 CTX_CMPs.
_ID_AA64DFR0_BASE = 0x10305106


def id_aa64dfr0_el1(brps: int, wrps: int, ctx_cmps: int) -> int:
    """ID_AA64DFR0_EL1 advertising ``brps`` breakpoints, ``wrps`` watchpoints and ``ctx_cmps``
    context-aware breakpoints (Armv8.0 requires at least 2, 2 and 1; ctx_cmps <= brps)."""
    if not 2 <= brps <= 16:
        raise ValueError(f"brps must be 2..16, not {brps}")
    if not 2 <= wrps <= 16:
        raise ValueError(f"wrps must be 2..16, not {wrps}")
    if not 1 <= ctx_cmps <= brps:
        raise ValueError(f"ctx_cmps must be 1..brps ({brps}), not {ctx_cmps}")
    value = ID_AA64DFR0.BRPs.deposit(_ID_AA64DFR0_BASE, brps - 1)
    value = ID_AA64DFR0.WRPs.deposit(value, wrps - 1)
    return ID_AA64DFR0.CTX_CMPs.deposit(value, ctx_cmps - 1)


def id_aa64dfr0_counts(value: int) -> tuple[int, int, int]:
    """(brps, wrps, ctx_cmps) advertised by an ID_AA64DFR0_EL1 value."""
    return (
        ID_AA64DFR0.BRPs.extract(value) + 1,
        ID_AA64DFR0.WRPs.extract(value) + 1,
        ID_AA64DFR0.CTX_CMPs.extract(value) + 1,
    )


def encode_dbgbcr(*, enabled: bool = True, pmc: int = 0b11, bas: int = 0xF, bt: int = 0,
                  lbn: int = 0, hmc: int = 0, ssc: int = 0) -> int:
    """A DBGBCR value. The defaults give QEMU's gdbstub breakpoint, 0x1E7."""
    reg = DBGBCR.E.deposit(0, int(enabled))
    reg = DBGBCR.PMC.deposit(reg, pmc)
    reg = DBGBCR.BAS.deposit(reg, bas)
    reg = DBGBCR.HMC.deposit(reg, hmc)
    reg = DBGBCR.SSC.deposit(reg, ssc)
    reg = DBGBCR.LBN.deposit(reg, lbn)
    return DBGBCR.BT.deposit(reg, bt)


def encode_dbgwcr(*, enabled: bool = True, pac: int = 0b11, lsc: int = 0b11, bas: int = 0xFF,
                  mask: int = 0, wt: int = 0, lbn: int = 0, hmc: int = 0, ssc: int = 0) -> int:
    """A DBGWCR value. The defaults watch loads and stores of 8 bytes at EL1 and EL0."""
    reg = DBGWCR.E.deposit(0, int(enabled))
    reg = DBGWCR.PAC.deposit(reg, pac)
    reg = DBGWCR.LSC.deposit(reg, lsc)
    reg = DBGWCR.BAS.deposit(reg, bas)
    reg = DBGWCR.HMC.deposit(reg, hmc)
    reg = DBGWCR.SSC.deposit(reg, ssc)
    reg = DBGWCR.LBN.deposit(reg, lbn)
    reg = DBGWCR.WT.deposit(reg, wt)
    return DBGWCR.MASK.deposit(reg, mask)


def sign_extend_va(value: int) -> int:
    """A DBGBVR/DBGWVR address: bits [48:0] sign-extended from bit 48 to 64 bits."""
    value &= (1 << (_VA_TOP_BIT + 1)) - 1
    if value >> _VA_TOP_BIT:
        value |= MASK64 & ~((1 << (_VA_TOP_BIT + 1)) - 1)
    return value


def _privilege(pmc: int, hmc: int, ssc: int) -> tuple[bool, bool] | None:
    """(el0, el1) for a PMC/PAC, HMC, SSC combination, or None if it can never fire here.

    See rule 5 of "Constrained-unpredictable choices" in the module docstring.
    """
    if pmc == 0b00:
        return None  # reserved (HMC=0, SSC=0) or EL2/EL3 only
    if hmc and pmc == 0b10:
        return None  # reserved: EL2 and EL0 without EL1
    if ssc in (0b10, 0b11):
        return None  # Secure only (we are Non-secure), or defined only with EL2/EL3
    return bool(pmc & 0b10), bool(pmc & 0b01)


def _el_allowed(el0: bool, el1: bool, el: int) -> bool:
    return (el == 0 and el0) or (el == 1 and el1)


# --------------------------------------------------------------------------------------------
# Breakpoints

BT_UNLINKED_ADDRESS = 0b0000
BT_LINKED_ADDRESS = 0b0001
BT_UNLINKED_CONTEXT = 0b0010
BT_LINKED_CONTEXT = 0b0011

_ADDRESS_KINDS = (BT_UNLINKED_ADDRESS, BT_LINKED_ADDRESS)
_CONTEXT_KINDS = (BT_UNLINKED_CONTEXT, BT_LINKED_CONTEXT)


@dataclass(frozen=True)
class Breakpoint:
    """A decoded, enabled breakpoint register pair."""

    index: int
    bt: int  # one of the BT_* values
    address: int  # VA for address kinds (sign-extended from bit 48, bits [1:0] clear), else 0
    context_id: int  # DBGBVR[31:0] for context kinds, else 0
    lbn: int  # linked breakpoint number for BT_LINKED_ADDRESS, else 0
    el0: bool
    el1: bool


def context_aware(index: int, *, brps: int, ctx_cmps: int) -> bool:
    """Whether breakpoint slot ``index`` can compare contexts (the top ``ctx_cmps`` slots)."""
    return brps - ctx_cmps <= index < brps


def decode_breakpoint(index: int, bcr: int, bvr: int, *, brps: int, ctx_cmps: int
                      ) -> Breakpoint | None:
    """Decode breakpoint slot ``index``, or None when it can never fire (disabled, reserved, or
    one of the constrained-unpredictable cases of rules 1-6 in the module docstring)."""
    if not DBGBCR.E.extract(bcr) or not 0 <= index < brps:
        return None
    bt = DBGBCR.BT.extract(bcr)
    lbn = DBGBCR.LBN.extract(bcr)
    pmc, hmc, ssc = DBGBCR.PMC.extract(bcr), DBGBCR.HMC.extract(bcr), DBGBCR.SSC.extract(bcr)
    if bt in _ADDRESS_KINDS:
        if DBGBCR.BAS.extract(bcr) == 0:
            return None  # rule 1; any other BAS matches the whole A64 instruction (rule 2)
        priv = _privilege(pmc, hmc, ssc)
        if priv is None:
            return None
        return Breakpoint(index=index, bt=bt, address=sign_extend_va(bvr) & ~3, context_id=0,
                          lbn=lbn if bt == BT_LINKED_ADDRESS else 0, el0=priv[0], el1=priv[1])
    if bt in _CONTEXT_KINDS:
        if not context_aware(index, brps=brps, ctx_cmps=ctx_cmps):
            return None  # rule 4
        if bt == BT_LINKED_CONTEXT:
            # Rule 6: the filter is informational only and never disables a linked context.
            el0, el1 = bool(pmc & 0b10), bool(pmc & 0b01)
        else:
            priv = _privilege(pmc, hmc, ssc)
            if priv is None:
                return None
            el0, el1 = priv
        return Breakpoint(index=index, bt=bt, address=0, context_id=bvr & 0xFFFFFFFF, lbn=0,
                          el0=el0, el1=el1)
    return None  # rule 3: mismatch, VMID and unallocated kinds


def _linked_context_matches(table: Sequence[Breakpoint | None], lbn: int, contextidr: int
                            ) -> bool:
    """Whether ``table[lbn]`` is a Linked Context breakpoint matching CONTEXTIDR_EL1 (rule 7).

    Decoding already refuses context kinds in slots that are not context-aware.
    """
    if not 0 <= lbn < len(table):
        return False
    ctx = table[lbn]
    return (ctx is not None and ctx.bt == BT_LINKED_CONTEXT
            and ctx.context_id == contextidr & 0xFFFFFFFF)


def breakpoint_matches(bp_table: Sequence[Breakpoint | None], bp: Breakpoint, *, pc: int, el: int,
                       contextidr: int) -> bool:
    """Whether ``bp`` generates a breakpoint event for the A64 instruction at ``pc``, executed at
    ``el`` with CONTEXTIDR_EL1 = ``contextidr``. ``bp_table[n]`` is the decoded slot n."""
    if bp.bt == BT_LINKED_CONTEXT:
        return False  # only ever the target of a link (rule 8)
    if not _el_allowed(bp.el0, bp.el1, el):
        return False
    if bp.bt == BT_UNLINKED_CONTEXT:
        return bp.context_id == contextidr & 0xFFFFFFFF
    # A64 instructions are 4 bytes, word aligned: compare the word the PC is in.
    if (pc & MASK64 & ~3) != bp.address:
        return False
    if bp.bt == BT_LINKED_ADDRESS:
        return _linked_context_matches(bp_table, bp.lbn, contextidr)
    return bp.bt == BT_UNLINKED_ADDRESS


# --------------------------------------------------------------------------------------------
# Watchpoints

def _access_pieces(addr: int, size: int) -> list[tuple[int, int]]:
    """The half-open byte ranges of an access, in access order, split where it wraps (rule 17)."""
    addr &= MASK64
    if size <= 0:
        return []
    size = min(size, 1 << 64)
    end = addr + size
    if end <= 1 << 64:
        return [(addr, end)]
    return [(addr, 1 << 64), (0, end - (1 << 64))]


@dataclass(frozen=True)
class Watchpoint:
    """A decoded, enabled watchpoint register pair."""

    index: int
    ranges: tuple[tuple[int, int], ...]  # sorted, merged, half-open [start, end) watched VAs
    loads: bool
    stores: bool
    el0: bool
    el1: bool
    linked: bool
    lbn: int  # linked breakpoint number when ``linked``, else 0

    def overlaps(self, addr: int, size: int) -> bool:
        """Whether any byte of the access [addr, addr + size) is watched."""
        return self.first_hit(addr, size) is not None

    def first_hit(self, addr: int, size: int) -> int | None:
        """The first watched byte of the access (the lowest one unless it wraps), or None."""
        for lo, hi in _access_pieces(addr, size):
            for start, end in self.ranges:  # sorted, so the first overlap is the lowest
                if start < hi and lo < end:
                    return max(start, lo)
        return None

    def pages(self, page_size: int = 4096) -> list[int]:
        """Base addresses of the pages holding watched bytes, ascending."""
        if page_size <= 0 or page_size & (page_size - 1):
            raise ValueError("page_size must be a power of two")
        out: list[int] = []
        for start, end in self.ranges:
            first = start & ~(page_size - 1)
            if out and out[-1] >= first:  # two ranges on one page
                first = out[-1] + page_size
            out.extend(range(first, end, page_size))
        return out


def _bas_ranges(base: int, bas: int, nbytes: int) -> list[tuple[int, int]]:
    """One [start, end) range per run of set bits in ``bas`` (byte i is base + i), rule 15."""
    ranges: list[tuple[int, int]] = []
    i = 0
    while i < nbytes:
        if bas >> i & 1:
            j = i
            while j < nbytes and bas >> j & 1:
                j += 1
            ranges.append((base + i, base + j))
            i = j
        else:
            i += 1
    return ranges


def decode_watchpoint(index: int, wcr: int, wvr: int) -> Watchpoint | None:
    """Decode watchpoint slot ``index``, or None when it can never fire (disabled, reserved, or
    rules 9-14 of the module docstring)."""
    if not DBGWCR.E.extract(wcr):
        return None
    lsc = DBGWCR.LSC.extract(wcr)
    if lsc == 0b00:
        return None  # rule 9
    priv = _privilege(DBGWCR.PAC.extract(wcr), DBGWCR.HMC.extract(wcr), DBGWCR.SSC.extract(wcr))
    if priv is None:
        return None
    address = sign_extend_va(wvr) & ~3  # DBGWVR[1:0] are RES0
    mask = DBGWCR.MASK.extract(wcr)
    bas = DBGWCR.BAS.extract(wcr)
    if mask in (1, 2):
        return None  # rule 10
    if mask:
        base = address & ~((1 << mask) - 1)  # rule 11; BAS ignored (rule 12)
        ranges = [(base, base + (1 << mask))]
    elif address & 4:
        ranges = _bas_ranges(address, bas & 0xF, 4)  # rule 13: word at DBGWVR & ~3
    else:
        ranges = _bas_ranges(address, bas, 8)  # doubleword at DBGWVR & ~7
    if not ranges:
        return None  # rule 14
    linked = bool(DBGWCR.WT.extract(wcr))
    return Watchpoint(index=index, ranges=tuple(ranges), loads=bool(lsc & 0b01),
                      stores=bool(lsc & 0b10), el0=priv[0], el1=priv[1], linked=linked,
                      lbn=DBGWCR.LBN.extract(wcr) if linked else 0)


def watchpoint_matches(wp_table_bps: Sequence[Breakpoint | None], wp: Watchpoint, *, addr: int,
                       size: int, is_write: bool, el: int, contextidr: int) -> bool:
    """Whether ``wp`` generates a watchpoint event for a data access. ``wp_table_bps`` is the
    decoded *breakpoint* table, which a linked watchpoint's LBN indexes."""
    if not (wp.stores if is_write else wp.loads):
        return False
    if not _el_allowed(wp.el0, wp.el1, el):
        return False
    if not wp.overlaps(addr, size):
        return False
    if wp.linked:
        return _linked_context_matches(wp_table_bps, wp.lbn, contextidr)  # rule 7
    return True


# --------------------------------------------------------------------------------------------
# Exception syndromes (ESR_ELx), with Linux's names

ESR_ELx_EC_SHIFT = 26
ESR_ELx_EC_MASK = 0x3F << ESR_ELx_EC_SHIFT
ESR_ELx_IL = 1 << 25
ESR_ELx_ISS_MASK = ESR_ELx_IL - 1

ESR_ELx_EC_UNKNOWN = 0x00
ESR_ELx_EC_SVC64 = 0x15
ESR_ELx_EC_HVC64 = 0x16
ESR_ELx_EC_SMC64 = 0x17
ESR_ELx_EC_IABT_LOW = 0x20
ESR_ELx_EC_IABT_CUR = 0x21
ESR_ELx_EC_PC_ALIGN = 0x22
ESR_ELx_EC_DABT_LOW = 0x24
ESR_ELx_EC_DABT_CUR = 0x25
ESR_ELx_EC_SP_ALIGN = 0x26
ESR_ELx_EC_SERROR = 0x2F
ESR_ELx_EC_BREAKPT_LOW = 0x30
ESR_ELx_EC_BREAKPT_CUR = 0x31
ESR_ELx_EC_SOFTSTP_LOW = 0x32
ESR_ELx_EC_SOFTSTP_CUR = 0x33
ESR_ELx_EC_WATCHPT_LOW = 0x34
ESR_ELx_EC_WATCHPT_CUR = 0x35
ESR_ELx_EC_BKPT32 = 0x38
ESR_ELx_EC_BRK64 = 0x3C

DFSC_DEBUG = 0x22  # "debug exception" fault status, used by breakpoint/step/watchpoint ISS
DFSC_EXTERNAL_ABORT = 0x10

# ISS bits shared by the data abort, watchpoint and software step syndromes
_ISS_ISV = 1 << 24
_ISS_SAS_SHIFT = 22
_ISS_SSE = 1 << 21
_ISS_SRT_SHIFT = 16
_ISS_SF = 1 << 15
_ISS_WNR = 1 << 6  # also EX for software step
_ISS_FSC_MASK = 0x3F


def esr(ec: int, iss: int = 0, il: bool = True) -> int:
    """An ESR value: EC[31:26], IL[25] (32-bit instruction), ISS[24:0]."""
    if not 0 <= ec <= 0x3F:
        raise ValueError(f"EC {ec:#x} out of range")
    if not 0 <= iss <= ESR_ELx_ISS_MASK:
        raise ValueError(f"ISS {iss:#x} out of range")
    return (ec << ESR_ELx_EC_SHIFT) | (ESR_ELx_IL if il else 0) | iss


def esr_ec(esr_value: int) -> int:
    return (esr_value >> ESR_ELx_EC_SHIFT) & 0x3F


def esr_brk64(imm16: int) -> int:
    """BRK #imm16 (A64)."""
    return esr(ESR_ELx_EC_BRK64, imm16 & 0xFFFF)


def esr_svc64(imm16: int) -> int:
    """SVC #imm16 (A64)."""
    return esr(ESR_ELx_EC_SVC64, imm16 & 0xFFFF)


def esr_breakpoint(lower_el: bool) -> int:
    """Hardware breakpoint: ISS is IFSC = debug exception."""
    return esr(ESR_ELx_EC_BREAKPT_LOW if lower_el else ESR_ELx_EC_BREAKPT_CUR, DFSC_DEBUG)


def esr_softstep(lower_el: bool, ex: bool = False, isv: bool = True) -> int:
    """Software step. ISV=1 says EX is valid: set when an instruction was actually stepped
    (EX=1 if it was a load-exclusive); ISV=0 when the step exception was taken without stepping
    one (e.g. exception return into the active-pending state), in which case EX is RES0."""
    iss = DFSC_DEBUG | (_ISS_ISV if isv else 0) | (_ISS_WNR if isv and ex else 0)
    return esr(ESR_ELx_EC_SOFTSTP_LOW if lower_el else ESR_ELx_EC_SOFTSTP_CUR, iss)


def esr_watchpoint(lower_el: bool, wnr: bool) -> int:
    """Watchpoint: WnR (1 = the access was a write), DFSC = debug exception."""
    iss = DFSC_DEBUG | (_ISS_WNR if wnr else 0)
    return esr(ESR_ELx_EC_WATCHPT_LOW if lower_el else ESR_ELx_EC_WATCHPT_CUR, iss)


def esr_data_abort(lower_el: bool, wnr: bool, dfsc: int, *, isv: bool = False, sas: int = 0,
                   sse: bool = False, srt: int = 0, sf: bool = False) -> int:
    """Data abort. SAS/SSE/SRT/SF describe the access and are only meaningful with ISV=1, so
    they are left zero when ISV=0 (the ISS is then RES0 there)."""
    iss = (dfsc & _ISS_FSC_MASK) | (_ISS_WNR if wnr else 0)
    if isv:
        iss |= (_ISS_ISV | (sas & 3) << _ISS_SAS_SHIFT | (_ISS_SSE if sse else 0)
                | (srt & 0x1F) << _ISS_SRT_SHIFT | (_ISS_SF if sf else 0))
    return esr(ESR_ELx_EC_DABT_LOW if lower_el else ESR_ELx_EC_DABT_CUR, iss)


def esr_instruction_abort(lower_el: bool, ifsc: int) -> int:
    return esr(ESR_ELx_EC_IABT_LOW if lower_el else ESR_ELx_EC_IABT_CUR, ifsc & _ISS_FSC_MASK)


def esr_unknown() -> int:
    """Unknown reason (e.g. an undefined instruction): EC 0, IL=1, ISS 0."""
    return esr(ESR_ELx_EC_UNKNOWN)


_EC_NAMES = {
    ESR_ELx_EC_UNKNOWN: "unknown reason (undefined instruction)",
    ESR_ELx_EC_SVC64: "SVC64",
    ESR_ELx_EC_HVC64: "HVC64",
    ESR_ELx_EC_SMC64: "SMC64",
    ESR_ELx_EC_IABT_LOW: "instruction abort (lower EL)",
    ESR_ELx_EC_IABT_CUR: "instruction abort (current EL)",
    ESR_ELx_EC_PC_ALIGN: "PC alignment fault",
    ESR_ELx_EC_DABT_LOW: "data abort (lower EL)",
    ESR_ELx_EC_DABT_CUR: "data abort (current EL)",
    ESR_ELx_EC_SP_ALIGN: "SP alignment fault",
    ESR_ELx_EC_SERROR: "SError",
    ESR_ELx_EC_BREAKPT_LOW: "breakpoint (lower EL)",
    ESR_ELx_EC_BREAKPT_CUR: "breakpoint (current EL)",
    ESR_ELx_EC_SOFTSTP_LOW: "software step (lower EL)",
    ESR_ELx_EC_SOFTSTP_CUR: "software step (current EL)",
    ESR_ELx_EC_WATCHPT_LOW: "watchpoint (lower EL)",
    ESR_ELx_EC_WATCHPT_CUR: "watchpoint (current EL)",
    ESR_ELx_EC_BKPT32: "BKPT32",
    ESR_ELx_EC_BRK64: "BRK64",
}


def describe_esr(esr_value: int) -> str:
    """Short human text, e.g. "EC 0x34 watchpoint (lower EL), WnR=1"."""
    ec = esr_ec(esr_value)
    iss = esr_value & ESR_ELx_ISS_MASK
    text = f"EC 0x{ec:02X} {_EC_NAMES.get(ec, 'unrecognised class')}"
    if ec in (ESR_ELx_EC_SVC64, ESR_ELx_EC_HVC64, ESR_ELx_EC_SMC64, ESR_ELx_EC_BRK64):
        text += f" #0x{iss & 0xFFFF:X}"
    elif ec in (ESR_ELx_EC_WATCHPT_LOW, ESR_ELx_EC_WATCHPT_CUR):
        text += f", WnR={int(bool(iss & _ISS_WNR))}"
    elif ec in (ESR_ELx_EC_SOFTSTP_LOW, ESR_ELx_EC_SOFTSTP_CUR):
        text += f", ISV={int(bool(iss & _ISS_ISV))}"
        if iss & _ISS_ISV:
            text += f", EX={int(bool(iss & _ISS_WNR))}"
    elif ec in (ESR_ELx_EC_DABT_LOW, ESR_ELx_EC_DABT_CUR):
        text += f", WnR={int(bool(iss & _ISS_WNR))}, DFSC=0x{iss & _ISS_FSC_MASK:02X}"
        if iss & _ISS_ISV:
            text += (f", SAS={(iss >> _ISS_SAS_SHIFT) & 3}, SRT={(iss >> _ISS_SRT_SHIFT) & 0x1F}"
                     f", SF={int(bool(iss & _ISS_SF))}")
    elif ec in (ESR_ELx_EC_IABT_LOW, ESR_ELx_EC_IABT_CUR):
        text += f", IFSC=0x{iss & _ISS_FSC_MASK:02X}"
    if not esr_value & ESR_ELx_IL:
        text += ", IL=0"
    return text
