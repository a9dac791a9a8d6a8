"""The ONE_REG interface: KVM_GET/SET_ONE_REG, KVM_GET_REG_LIST, and a batched read for `g`.

Every id maps to an `_OneReg`: a getter, a setter (None for read-only identification
registers) and, for registers Unicorn holds as they are, the key that lets get_one_regs read
many of them in one uc_reg_read_batch call.
"""

from __future__ import annotations

import ctypes
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from unicorn import UcError
from unicorn import arm64_const as uca
from unicorn.unicorn_py3.unicorn import uclib

from guestdbg import kvm
from guestdbg.arm import kvm_regs as kr
from guestdbg.backends.unicorn_arm64.arch import SPSR_EL1, V_REGS, V_REGS_SET, VMPIDR_EL2, X_REGS, RegKey
from guestdbg.backends.unicorn_arm64.mmio import MmioAccess
from guestdbg.backends.unicorn_arm64.timers import (
    CNTKCTL_EL1,
    CTL_ENABLE,
    CTL_IMASK,
    PTIMER,
    VTIMER,
    GenericTimer,
)

if TYPE_CHECKING:
    from guestdbg.backends.unicorn_arm64.vm import Arm64Vm


@dataclass
class _OneReg:
    get: Callable[[], int]
    set: Callable[[int], None] | None
    uc_reg: int | None = None  # a plain Unicorn register: readable in a batch
    cp_enc: tuple[int, int, int, int, int] | None = None  # a system register Unicorn holds: batchable too

    @property
    def batch_key(self) -> RegKey | None:
        return self.uc_reg if self.uc_reg is not None else self.cp_enc


# get_one_regs' plan for one list of ids: (batch reader, the getters of the rest, the pick of
# the values in the order asked from batch + rest + (SP_EL0, SP_EL1, current SP), or None when
# batch + rest are already in that order; and where the batch's PSTATE, SP, SP_EL0, SP_EL1 end,
# or 0)
_Plan = tuple[Callable[[], list[int]], list[Callable[[], int]], Callable[[list[int]], Sequence[int]] | None, int]

# Not a KVM id (never in get_reg_list): the stack pointer `sp` names now, SP_EL1 at EL1 with
# SPSel set, else SP_EL0 (arm/registers.py's rule 3), i.e. Unicorn's live SP. A `g` or a stop
# reply reads it in the same batch as the rest instead of reading PSTATE first.
CURRENT_SP = kr.KVM_REG_ARM64 | kr.KVM_REG_SIZE_U64 | kr.KVM_REG_ARM_CORE | 0xFFFF
_SP_IDS = {kr.KVM_REG_ARM_CORE_SP: 0, kr.KVM_REG_ARM_CORE_SP_EL1: 1, CURRENT_SP: 2}
_SP_READS = (uca.UC_ARM64_REG_PSTATE, uca.UC_ARM64_REG_SP, uca.UC_ARM64_REG_SP_EL0, uca.UC_ARM64_REG_SP_EL1)


class OneRegTable(MmioAccess):
    """KVM_GET_ONE_REG, KVM_SET_ONE_REG and KVM_GET_REG_LIST."""

    current_sp_id = CURRENT_SP  # what arm/registers.py reads and writes `sp` through

    def __init__(self, vm: Arm64Vm, vcpu_id: int = 0):
        super().__init__(vm, vcpu_id)
        self._spsr_other = [0] * 4  # SPSR_abt/und/irq/fiq: AArch32 state, carried for migration only
        self._one_regs_cache: dict[int, _OneReg] | None = None
        self._batch_plans: dict[tuple[int, ...], _Plan] = {}

    def get_one_reg(self, reg_id: int) -> int:
        """KVM_GET_ONE_REG. Unknown ids are ENOENT."""
        return self._one_reg(reg_id).get()

    def set_one_reg(self, reg_id: int, value: int) -> None:
        """KVM_SET_ONE_REG. Unknown ids are ENOENT; values that do not fit, or writes to
        read-only identification registers that change them, are EINVAL."""
        reg = self._one_reg(reg_id)
        size = kr.reg_size_bytes(reg_id)
        if not 0 <= value < 1 << (8 * size):
            raise kvm.einval(f"value {value:#x} does not fit register {reg_id:#x} ({size} bytes)")
        if reg.set is None:
            if value != reg.get():
                raise kvm.einval(f"register {reg_id:#x} is read-only")
            return
        reg.set(value)

    def get_one_regs(self, reg_ids: list[int]) -> list[int]:
        """Several KVM_GET_ONE_REGs at once (what a `g` packet needs): plain registers, PSTATE
        and the stack pointers are read in one Unicorn batch call instead of one binding call
        each; CURRENT_SP (not a KVM id) is the stack pointer PSTATE selects."""
        key = tuple(reg_ids)
        plan = self._batch_plans.get(key)
        if plan is None:
            plan = self._batch_plans[key] = self._plan(reg_ids)
        reader, others, pick, stacks = plan
        values = reader()
        if others:
            values.extend(get() for get in others)
        if pick is None:
            return values
        if stacks:
            pstate, sp, sp_el0, sp_el1 = values[stacks - 4:stacks]
        else:
            return list(pick(values))
        if self._uses_sp_el0(pstate):  # as _get_sp: the live SP is SP_EL0, SP_EL1 is banked
            values += (sp, sp_el1, sp)
        else:
            values += (sp_el0, sp, sp)
        return list(pick(values))

    def _plan(self, reg_ids: list[int]) -> _Plan:
        """get_one_regs' plan: one batch over every batchable register (plus PSTATE and the
        three stack pointers if a stack pointer is asked), the getters of the rest, and the
        permutation that puts the values in the order asked (an itemgetter: no Python loop)."""
        keys: list[RegKey] = []
        others: list[Callable[[], int]] = []
        where: list[tuple[str, int]] = []  # per id: ("b", batch index), ("o", getter index), ("s", 0-2)
        for r in reg_ids:
            if r in _SP_IDS:
                where.append(("s", _SP_IDS[r]))
                continue
            reg = self._one_reg(r)
            k = reg.batch_key
            if k is not None:
                where.append(("b", len(keys)))
                keys.append(k)
            else:
                where.append(("o", len(others)))
                others.append(reg.get)
        stacks = any(w == "s" for w, _ in where)
        if stacks:
            keys += _SP_READS
        offsets = {"b": 0, "o": len(keys), "s": len(keys) + len(others)}
        order = [offsets[w] + i for w, i in where]
        reader = self._batch_reader(tuple(keys)) if keys else list
        at = len(keys) if stacks else 0  # the batch's end: PSTATE and the stack pointers before it
        if not stacks and order == list(range(len(order))):
            return reader, others, None, 0
        if len(order) == 1:
            only = order[0]
            return reader, others, lambda values: (values[only],), at
        return reader, others, operator.itemgetter(*order), at

    def _current_sp_el(self) -> int:
        return 0 if self._uses_sp_el0(self._pstate()) else 1

    def get_reg_list(self) -> list[int]:
        """KVM_GET_REG_LIST: every register migration must carry (never the debugger's)."""
        return list(self._one_regs)

    def _one_reg(self, reg_id: int) -> _OneReg:
        try:
            return self._one_regs[reg_id]
        except KeyError:
            if reg_id == CURRENT_SP:
                return _OneReg(lambda: self._get_sp(self._current_sp_el()),
                               lambda v: self._set_sp(self._current_sp_el(), v))
            raise kvm.enoent(f"no register with ONE_REG id {reg_id:#x}") from None

    @property
    def _one_regs(self) -> dict[int, _OneReg]:
        regs = self._one_regs_cache
        if regs is None:
            regs = self._one_regs_cache = self._build_one_regs()
        return regs

    def _build_one_regs(self) -> dict[int, _OneReg]:
        uc = self.uc
        regs: dict[int, _OneReg] = {}

        uch, reg_read = uc._uch, uclib.uc_reg_read

        def plain(uc_reg: int) -> _OneReg:
            if uc_reg in V_REGS_SET:
                return _OneReg(lambda: uc.reg_read(uc_reg), lambda v: uc.reg_write(uc_reg, v), uc_reg)
            # A 64-bit register: one uc_reg_read into a buffer made once (the binding's
            # reg_read picks a ctypes class and builds one per call: ~5 us against ~1 us; a
            # condition in the stub reads its registers through this).
            buf = ctypes.c_uint64()
            ref = ctypes.byref(buf)

            def get() -> int:
                status = reg_read(uch, uc_reg, ref)
                if status:
                    raise UcError(status)
                return buf.value

            return _OneReg(get, lambda v: uc.reg_write(uc_reg, v), uc_reg)

        def cp(enc: tuple[int, int, int, int, int]) -> _OneReg:
            return _OneReg(lambda: uc.cpr_read(*enc), lambda v: uc.cpr_write(*enc, v), cp_enc=enc)

        def cp_with(enc: tuple[int, int, int, int, int], write: Callable[[int], None] | None) -> _OneReg:
            return _OneReg(lambda: uc.cpr_read(*enc), write, cp_enc=enc)

        def spsr(n: int) -> _OneReg:
            return _OneReg(lambda: self._spsr_other[n - 1], lambda v: self._spsr_other.__setitem__(n - 1, v))

        g = self.guest_debug_regs

        def debug_reg(kind: str, n: int) -> _OneReg:
            return _OneReg(lambda: getattr(g, kind)[n], lambda v: self._write_guest_debug_reg(kind, n, v))

        for n in range(31):
            regs[kr.KVM_REG_ARM_CORE_X(n)] = plain(X_REGS[n])
        regs[kr.KVM_REG_ARM_CORE_SP] = _OneReg(lambda: self._get_sp(0), lambda v: self._set_sp(0, v))
        regs[kr.KVM_REG_ARM_CORE_PC] = plain(uca.UC_ARM64_REG_PC)
        regs[kr.KVM_REG_ARM_CORE_PSTATE] = _OneReg(self._pstate, self._write_pstate, uca.UC_ARM64_REG_PSTATE)
        regs[kr.KVM_REG_ARM_CORE_SP_EL1] = _OneReg(lambda: self._get_sp(1), lambda v: self._set_sp(1, v))
        regs[kr.KVM_REG_ARM_CORE_ELR_EL1] = plain(uca.UC_ARM64_REG_ELR_EL1)
        regs[kr.KVM_REG_ARM_CORE_SPSR(kr.KVM_SPSR_EL1)] = cp(SPSR_EL1)
        for n in range(1, 5):
            regs[kr.KVM_REG_ARM_CORE_SPSR(n)] = spsr(n)
        for n in range(32):
            regs[kr.KVM_REG_ARM_CORE_V(n)] = plain(V_REGS[n])
        regs[kr.KVM_REG_ARM_CORE_FPSR] = plain(uca.UC_ARM64_REG_FPSR)
        regs[kr.KVM_REG_ARM_CORE_FPCR] = plain(uca.UC_ARM64_REG_FPCR)

        for name, enc in kr.SYSREG_ENCODINGS.items():
            reg_id = kr.ARM64_SYS_REG(*enc)
            if name == "ID_AA64DFR0_EL1":
                regs[reg_id] = _OneReg(lambda: self.id_aa64dfr0, None)
            elif name == "MIDR_EL1":
                regs[reg_id] = cp_with(enc, None)
            elif name == "MPIDR_EL1":  # settable, as on KVM (userspace chooses the topology)
                regs[reg_id] = _OneReg(lambda: uc.cpr_read(*VMPIDR_EL2), lambda v: uc.cpr_write(*VMPIDR_EL2, v),
                                       cp_enc=enc)
            elif name == "MDSCR_EL1":
                regs[reg_id] = _OneReg(lambda: self.guest_debug_regs.mdscr,
                                       lambda v: self._write_guest_debug_reg("mdscr", 0, v))
            elif name == "CONTEXTIDR_EL1":
                regs[reg_id] = cp_with(enc, self._set_contextidr)
            else:
                regs[reg_id] = cp(enc)
        for kind, count, enc_of in (("bvr", self.brps, kr.DBGBVRn_EL1), ("bcr", self.brps, kr.DBGBCRn_EL1),
                                    ("wvr", self.wrps, kr.DBGWVRn_EL1), ("wcr", self.wrps, kr.DBGWCRn_EL1)):
            for n in range(count):
                regs[kr.ARM64_SYS_REG(*enc_of(n))] = debug_reg(kind, n)

        # The generic timers, under KVM's ids (arch/arm64/include/uapi/asm/kvm.h). The virtual
        # timer's CNT and CVAL ids carry each other's encodings (KVM's historic swap), and both
        # CNT ids name the one counter here (CNTVOFF is 0). A CTL write ignores ISTATUS, as KVM.
        for n, ctl_id, cnt_id, cval_id in (
                (VTIMER, kr.ARM64_SYS_REG(3, 3, 14, 3, 1), kr.ARM64_SYS_REG(3, 3, 14, 3, 2),
                 kr.ARM64_SYS_REG(3, 3, 14, 0, 2)),
                (PTIMER, kr.ARM64_SYS_REG(3, 3, 14, 2, 1), kr.ARM64_SYS_REG(3, 3, 14, 0, 1),
                 kr.ARM64_SYS_REG(3, 3, 14, 2, 2))):
            timer = self.timers.timers[n]

            def get_ctl(t: GenericTimer = timer) -> int:
                return t.read_ctl(self.counter())

            def set_ctl(v: int, t: GenericTimer = timer) -> None:
                t.ctl = v & (CTL_ENABLE | CTL_IMASK)

            def get_cval(t: GenericTimer = timer) -> int:
                return t.cval

            def set_cval(v: int, t: GenericTimer = timer) -> None:
                t.cval = v

            regs[ctl_id] = _OneReg(get_ctl, set_ctl)
            regs[cnt_id] = _OneReg(self.counter, self.set_counter)
            regs[cval_id] = _OneReg(get_cval, set_cval)
        regs.setdefault(kr.ARM64_SYS_REG(*CNTKCTL_EL1), cp(CNTKCTL_EL1))
        return regs
