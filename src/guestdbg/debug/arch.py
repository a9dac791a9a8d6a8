"""What the guest-debug manager needs to know about an architecture, and nothing else.

The manager's policy (which mechanism, reference counts, step-over, re-arming, page traps) is
the same on every architecture; these small classes say how to encode it: the software
breakpoint instruction, how a watch range becomes hardware slots, how the debugger's registers
are laid out for KVM_SET_GUEST_DEBUG, what a KVM_EXIT_DEBUG meant, and how an exception that
was not the debugger's goes back to the guest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from guestdbg import kvm
from guestdbg.arm import debugregs as dr
from guestdbg.arm import exceptions as arm_exc
from guestdbg.arm import kvm_regs as kr


@dataclass(frozen=True)
class RawStop:
    """A debug exit, decoded: kind is "step", "swbreak", "hwbreak", "watch" or "other"."""

    kind: str
    addr: int = 0          # watch: an address of the access
    is_write: bool = False  # watch
    detail: str = ""
    # watch: the access has already happened (x86 data breakpoints and x86 page traps are
    # traps, after the instruction); the manager must not step the access again.
    completed: bool = False


class DebugArch(Protocol):
    """One architecture's encodings for the manager's policy (Arm64DebugArch, X86DebugArch)."""

    @property
    def name(self) -> str: ...

    # The instruction a software breakpoint patches in; None: the host cannot take one cleanly,
    # and software breakpoints (Z0) use the hardware breakpoint slots instead (ENOSPC past them).
    @property
    def sw_break(self) -> bytes | None: ...

    @property
    def sw_break_name(self) -> str: ...  # how `monitor info slots` names it ("BRK #0", "int3")

    @property
    def max_watch(self) -> int: ...  # the longest range one watch may cover

    # True when breakpoints and watchpoints share one register file (x86 DR0-DR3).
    @property
    def shared_slots(self) -> bool: ...

    def slot_counts(self, vm: Any) -> tuple[int, int]:
        """(breakpoint slots, watchpoint slots), from the VM's capabilities
        (KVM_CAP_GUEST_DEBUG_HW_BPS/WPS; x86 reports 0 there for "the 4 debug registers")."""
        ...

    def plan_watch(self, addr: int, length: int, lsc_kind: str) -> list[tuple[int, int]]:
        """Hardware slot values covering exactly [addr, addr+length), one per slot."""
        ...

    def debug_arch(self, breakpoints: dict[int, int], watch_slots: dict[int, tuple[int, int]]) -> Any:
        """The kvm_guest_debug_arch for these breakpoints (va -> slot) and watch slot values."""
        ...

    def classify(self, run: kvm.KvmRun) -> RawStop:
        """What a KVM_EXIT_DEBUG meant."""
        ...

    def reinject(self, vcpu: Any, run: kvm.KvmRun, pc: int) -> None:
        """Deliver a software-breakpoint exception that was not the debugger's to the guest."""
        ...

    def slots_full_message(self, bp_slots: int) -> str:
        """What a breakpoint refused for want of slots (ENOSPC) says, naming the hardware."""
        ...


BRK0 = (0xD4200000).to_bytes(4, "little")  # A64 `BRK #0`: the manager's software breakpoint


class Arm64DebugArch:
    """AArch64: BRK #0, DBGBCR/DBGWCR slots (BAS and MASK), ESR exception classes."""

    name = "aarch64"
    sw_break = BRK0
    sw_break_name = "BRK #0"
    shared_slots = False

    def slot_counts(self, vm) -> tuple[int, int]:
        return (vm.check_extension(kvm.KVM_CAP_GUEST_DEBUG_HW_BPS),
                vm.check_extension(kvm.KVM_CAP_GUEST_DEBUG_HW_WPS))
    max_watch = 1 << 31  # MASK covers up to 2 GiB

    def slots_full_message(self, bp_slots: int) -> str:
        return f"all {bp_slots} hardware breakpoints are in use"

    def plan_watch(self, addr: int, length: int, lsc_kind: str) -> list[tuple[int, int]]:
        lsc = {"write": 0b10, "read": 0b01, "access": 0b11}[lsc_kind]
        return [(wvr, dr.encode_dbgwcr(lsc=lsc, bas=bas, mask=mask))
                for wvr, bas, mask in plan_watch_pieces(addr, length)]

    def debug_arch(self, breakpoints: dict[int, int], watch_slots: dict[int, tuple[int, int]]):
        arch = kr.kvm_guest_debug_arch()
        for va, slot in breakpoints.items():
            arch.dbg_bvr[slot], arch.dbg_bcr[slot] = va, dr.encode_dbgbcr()
        for slot, (wvr, wcr) in watch_slots.items():
            arch.dbg_wvr[slot], arch.dbg_wcr[slot] = wvr, wcr
        return arch

    def classify(self, run: kvm.KvmRun) -> RawStop:
        d = run.debug
        assert isinstance(d, kvm.DebugExitArm64), d
        ec = d.ec
        if ec == dr.ESR_ELx_EC_SOFTSTP_LOW:
            return RawStop("step")
        if ec == dr.ESR_ELx_EC_BREAKPT_LOW:
            return RawStop("hwbreak")
        if ec == dr.ESR_ELx_EC_BRK64:
            # Ours only if it is at one of the manager's patches (those are BRK #0).
            return RawStop("swbreak", detail=f"BRK #{d.hsr & 0xFFFF:#x}")
        if ec == dr.ESR_ELx_EC_WATCHPT_LOW:
            return RawStop("watch", d.far, bool(d.hsr & (1 << 6)))
        return RawStop("other", detail=f"debug exit EC {ec:#x}")

    def reinject(self, vcpu: Any, run: kvm.KvmRun, pc: int) -> None:
        d = run.debug
        assert isinstance(d, kvm.DebugExitArm64), d
        arm_exc.inject_sync_exception(vcpu, dr.esr_brk64(d.hsr & 0xFFFF), preferred_return=pc)

    def at_exception_vector(self, vcpu: Any, pc: int) -> bool:
        """Is `pc` one of the 16 entries of VBAR_EL1's table (where taking an exception leaves
        the vCPU before it retires anything there)?"""
        offset = pc - vcpu.get_one_reg(_VBAR_EL1)
        return 0 <= offset < 0x800 and offset % 0x80 == 0

    def never_takes_an_exception(self, insn: int) -> bool:
        """Can executing `insn` (its fetch aside) not enter an exception? Data processing and
        branches (not exception generation, not system instructions: bits [31:24] 0xD4,
        0xD5); loads and stores may fault, SIMD&FP may trap, the rest is undefined.
        A64 main encoding table, op0 = bits [28:25]."""
        op0 = (insn >> 25) & 0xF
        if op0 in (0b1000, 0b1001, 0b0101, 0b1101):  # data processing: immediate, register
            return True
        return op0 in (0b1010, 0b1011) and insn >> 24 & 0xFF not in (0xD4, 0xD5)


_VBAR_EL1 = kr.ARM64_SYS_REG(*kr.SYSREG_ENCODINGS["VBAR_EL1"])


def plan_watch_pieces(addr: int, length: int) -> list[tuple[int, int, int]]:
    """Cover exactly [addr, addr+length) with AArch64 watchpoint pieces: (wvr, bas, mask).

    A range inside one doubleword is one BAS piece; an aligned power of two of 8 bytes or more
    is one MASK piece; anything else is a BAS head, aligned MASK/BAS blocks, and a BAS tail.
    Nothing is widened or truncated."""
    if length <= 0:
        raise ValueError("watch length must be positive")
    limit = Arm64DebugArch.max_watch
    pieces: list[tuple[int, int, int]] = []
    pos, end = addr, addr + length
    while pos < end:
        dw = pos & ~7
        if pos != dw or end - pos < 8:
            stop = min(end, dw + 8)
            bas = ((1 << (stop - pos)) - 1) << (pos - dw)
            pieces.append((dw, bas, 0))
            pos = stop
            continue
        size = 8
        while size < limit and pos % (size * 2) == 0 and pos + size * 2 <= end:
            size *= 2
        pieces.append((pos, 0xFF, 0 if size == 8 else size.bit_length() - 1))
        pos += size
    return pieces
