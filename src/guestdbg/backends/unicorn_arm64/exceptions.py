"""Exception entry: what the vCPU does with the exceptions Unicorn reports.

Unicorn reports exceptions to UC_HOOK_INTR and does not enter the vector. The hook only records
the exception and stops; between emu_starts the run loop dispatches it here: a debug exit, a
firmware call done for the guest (firmware.py), or AArch64.TakeException to EL1 with the
syndrome the guest would see, built here for Unicorn's own translation faults, which carry
none (the load/store at PC is decoded and the guest's tables walked).
"""

from __future__ import annotations

from typing import Any

from unicorn import arm64_const as uca

from guestdbg.arm import debugregs as dr
from guestdbg.arm import mmu
from guestdbg.arm.a64decode import decode_access
from guestdbg.backends.unicorn_arm64.arch import (
    EXCP_BKPT,
    EXCP_DATA_ABORT,
    EXCP_PREFETCH_ABORT,
    EXCP_SMC,
    EXCP_SWI,
    EXCP_UDEF,
    PAGE_MASK,
    PSTATE_DAIF,
    PSTATE_EL_SHIFT,
    PSTATE_MODE_EL1H,
    PSTATE_SP,
    SPSR_EL1,
)
from guestdbg.backends.unicorn_arm64.firmware import (
    HVC_SMC,
    HVC_SMC_MASK,
    SEMIHOSTING_HLT,
    FirmwareCalls,
)
from guestdbg.kvm import KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_USE_SW_BP, KvmRun

_EXCEPTION_READS = (uca.UC_ARM64_REG_PSTATE, uca.UC_ARM64_REG_SP, uca.UC_ARM64_REG_SP_EL0, uca.UC_ARM64_REG_SP_EL1,
                    uca.UC_ARM64_REG_VBAR_EL1)
_EXCEPTION_WRITES = (uca.UC_ARM64_REG_ESR_EL1, uca.UC_ARM64_REG_ELR_EL1,
                     uca.UC_ARM64_REG_PSTATE, uca.UC_ARM64_REG_SP_EL0, uca.UC_ARM64_REG_SP_EL1, uca.UC_ARM64_REG_SP,
                     SPSR_EL1, uca.UC_ARM64_REG_PC)


# The FSC reported for a prefetch abort at an address that translates fine now.
FSC_TRANSLATION_L0 = 0x04


class FatalGuestState(Exception):
    """The guest is in a state it cannot leave (e.g. an exception at its own vector)."""

    def __init__(self, message: str, esr: int = 0):
        super().__init__(message)
        self.esr = esr


class ExceptionEntry(FirmwareCalls):
    """UC_HOOK_INTR, exception dispatch, and AArch64.TakeException to EL1."""

    def _on_exception(self, uc: Any, intno: int, _user: object) -> None:
        # Only record it: writing PC from a hook leaves Unicorn's skip_sync_pc_on_exit set for
        # the rest of the emu_start, and a later stop would then resume from a stale PC
        # (shared/REFERENCE.md §6). Exception entry happens in _dispatch_exception, between
        # emu_starts.
        pc = self.pc
        self._pending_exception = (intno, pc)
        self._stopped_at = pc
        uc.emu_stop()

    def _take_pending_exception(self) -> tuple[bool, KvmRun | None]:
        """Act on the exception a hook recorded: (was there one, the exit it gives if any)."""
        if self._pending_exception is None:
            return False, None
        intno, pc = self._pending_exception
        self._pending_exception = None
        return True, self._dispatch_exception(intno, pc)

    def _dispatch_exception(self, intno: int, pc: int) -> KvmRun | None:
        """An exception Unicorn reported at `pc`: a debug exit, a firmware call done for the
        guest, or entry to the guest's vector."""
        if intno == EXCP_SWI:  # PC is already past the SVC
            imm = (self._insn_at(pc - 4) >> 5) & 0xFFFF
            self._take_exception(dr.esr_svc64(imm), far=None, preferred_return=pc)
        elif intno == EXCP_BKPT:
            imm = (self._insn_at(pc) >> 5) & 0xFFFF
            if self.guestdbg_control & KVM_GUESTDBG_ENABLE and self.guestdbg_control & KVM_GUESTDBG_USE_SW_BP:
                return self._debug_exit(dr.esr_brk64(imm))
            self._take_exception(dr.esr_brk64(imm), far=None, preferred_return=pc)
        elif intno == EXCP_UDEF:
            return self._on_undefined(pc)
        elif intno == EXCP_PREFETCH_ABORT:
            el = self.current_el()
            fsc = self._fault_status(pc, "exec")
            if fsc is None:
                fsc = FSC_TRANSLATION_L0
            self._take_exception(dr.esr_instruction_abort(el == 0, fsc), far=pc, preferred_return=pc)
        elif intno == EXCP_DATA_ABORT:
            self._enter_data_abort(pc)
        elif intno == EXCP_SMC and self._insn_at(pc - 4) & HVC_SMC_MASK in HVC_SMC:
            # SMC at EL1 with no EL3: QEMU's translator raises EXCP_SMC with PC already past it
            # (the instruction has retired, as an SVC has); PSCI over SMC, as firmware would.
            return self._psci(pc - 4, retired=True)
        else:
            return self._internal_error(f"unexpected exception {intno} at PC={pc:#x}", pc)
        return None

    def _on_undefined(self, pc: int) -> KvmRun | None:
        insn = self._insn_at(pc)
        if insn == SEMIHOSTING_HLT:
            return self._semihosting(pc)
        if insn & HVC_SMC_MASK in HVC_SMC:  # HVC #imm, SMC #imm
            return self._psci(pc)
        self._take_exception(dr.esr_unknown(), far=None, preferred_return=pc)
        return None

    def _enter_data_abort(self, pc: int) -> None:
        """A fault in Unicorn's own stage-1 walk. Unicorn does not say which address faulted,
        so decode the load/store at PC to find it, and walk the tables to classify the fault."""
        decoded = decode_access(self._insn_at(pc), pc, self._read_gpr)
        if decoded is None:
            raise FatalGuestState(f"data abort at PC={pc:#x} by an instruction guestdbg cannot decode")
        va, size, is_write = decoded
        access = "write" if is_write else "read"
        far, fsc = va, None
        for probe in (va, (va + size - 1) & PAGE_MASK if size > 1 else va):
            fsc = self._fault_status(probe, access)
            if fsc is not None:
                far = max(probe, va)
                break
        el = self.current_el()
        self._take_exception(dr.esr_data_abort(el == 0, is_write, fsc if fsc is not None else 0x07),
                             far=far, preferred_return=pc)

    def _fault_status(self, va: int, access: str) -> int | None:
        """The FSC a stage-1 walk gives for `va` (None when it translates fine)."""
        try:
            self.translate(va, access)
        except mmu.TranslationFault as fault:
            return fault.fsc()
        return None

    def _take_exception(self, esr: int, *, far: int | None, preferred_return: int) -> None:
        """AArch64.TakeException to EL1: syndrome, return state, mode, vector. Guests take
        these all the time (system calls), so the registers go in one batch each way."""
        uc = self.uc
        pstate, sp, sp_el0, sp_el1, vbar = self._batch_reader(_EXCEPTION_READS)()
        el = (pstate >> PSTATE_EL_SHIFT) & 3
        offset = 0x400 if el == 0 else (0x200 if pstate & PSTATE_SP else 0x000)
        vector = vbar + offset
        if preferred_return == vector:
            # The vector itself faulted: the exception entered just before (still in ESR/ELR/
            # FAR_EL1) is the one the guest could not handle. Name it.
            first_esr = uc.reg_read(uca.UC_ARM64_REG_ESR_EL1)
            first_pc = uc.reg_read(uca.UC_ARM64_REG_ELR_EL1)
            ec = dr.esr_ec(first_esr)
            is_abort = ec in (dr.ESR_ELx_EC_DABT_LOW, dr.ESR_ELx_EC_DABT_CUR, dr.ESR_ELx_EC_IABT_LOW,
                              dr.ESR_ELx_EC_IABT_CUR, dr.ESR_ELx_EC_WATCHPT_LOW, dr.ESR_ELx_EC_WATCHPT_CUR)
            where = f", address {uc.reg_read(uca.UC_ARM64_REG_FAR_EL1):#x}" if is_abort else ""
            # Leave the vCPU where the guest went wrong, not at the empty vector: back to the
            # state before that first entry, with its ESR/FAR_EL1 (and ELR/SPSR_EL1) kept for
            # the debugger to read, so a backtrace starts at the faulting instruction.
            self._write_pstate(uc.cpr_read(*SPSR_EL1))
            uc.reg_write(uca.UC_ARM64_REG_PC, first_pc)
            raise FatalGuestState(
                f"unhandled {dr.describe_esr(first_esr)} at PC={first_pc:#x}{where} "
                f"(ESR {first_esr:#010x}; no exception handler at VBAR_EL1+{offset:#x} = {vector:#x})",
                first_esr)
        # SP is the live stack pointer of the current mode; the banked copy of that mode is
        # stale until Unicorn next switches. EL1h runs on SP_EL1.
        if self._uses_sp_el0(pstate):
            sp_el0 = sp
        else:
            sp_el1 = sp
        # The SPSR_EL1 write goes last but one: a system-register write is what makes Unicorn
        # rebuild its cached EL and translation flags for the new PSTATE.
        values = (esr, preferred_return, PSTATE_DAIF | PSTATE_MODE_EL1H, sp_el0, sp_el1, sp_el1, pstate, vector)
        if far is None:
            self._batch_writer(_EXCEPTION_WRITES)(values)
        else:
            self._batch_writer((uca.UC_ARM64_REG_FAR_EL1,) + _EXCEPTION_WRITES)((far,) + values)
