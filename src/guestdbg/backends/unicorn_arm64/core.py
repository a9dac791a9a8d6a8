"""The vCPU's shared layer: its state, register access and the engine (one emu_start).

Every other part of the vCPU (firmware.py, exceptions.py, debughw.py, mmio.py, one_reg.py) is a
class layered on `VcpuCore`, and vcpu.py stacks them into `Arm64Vcpu`. What they all use lives
here: the per-run scratch state hooks record into, PC/PSTATE/SP and batched register access,
guest-virtual reads, the exits a run can return, and `_execute`, which runs one bounded slice
and settles the instruction count.
"""

from __future__ import annotations

import ctypes
import functools
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from unicorn import (
    UC_CTL_IO_WRITE,
    UC_CTL_TLB_FLUSH,
    UC_HOOK_MEM_READ_PROT,
    UC_HOOK_MEM_UNMAPPED,
    UC_HOOK_MEM_WRITE_PROT,
    UcError,
)
from unicorn import arm64_const as uca
from unicorn.unicorn_py3.unicorn import uclib

from guestdbg import kvm
from guestdbg.arm import debugregs as dr
from guestdbg.arm import kvm_regs as kr
from guestdbg.arm import mmu
from guestdbg.arm.a64decode import decode_access
from guestdbg.backends.unicorn_arm64.arch import (
    NO_LIMIT,
    PAGE_MASK,
    PAGE_SIZE,
    PSTATE_EL_SHIFT,
    PSTATE_SP,
    SCTLR_EL1,
    TPIDR_EL1,
    V_REGS_SET,
    X_REGS,
    RegKey,
    remove_cache,
)
from guestdbg.backends.unicorn_arm64.runctl import (
    ACTION_IC_ALL,
    ACTION_IC_VA,
    EVENTS_ON,
    EVENTS_STEP,
    IC_IALLU,
    IC_IALLUIS,
    IC_IVAU,
    STOP_LIMIT,
    STOP_WFE,
    STOP_XLATE,
    RunControl,
)
from guestdbg.backends.unicorn_arm64.timers import MASK64, GenericTimers
from guestdbg.kvm import KvmRun

if TYPE_CHECKING:
    from guestdbg.backends.unicorn_arm64.vm import Arm64Vm, MmioDevice

_PSTATE_READ = (uca.UC_ARM64_REG_PSTATE,)
COUNTDOWN_HOOKS = 4  # bounded countdown hooks kept installed (VcpuCore._countdown)
_int_le = functools.partial(int.from_bytes, byteorder="little")
_SP_READS = (uca.UC_ARM64_REG_PSTATE, uca.UC_ARM64_REG_SP, uca.UC_ARM64_REG_SP_EL0, uca.UC_ARM64_REG_SP_EL1)
# WFI (A64 encoding); Unicorn ends emu_start right after one when no interrupt is pending.
WFI = 0xD503207F
# One counter tick is 16 instructions in the virtual clock and 16 ns of the host's clock.
COUNTER_TICK_SHIFT = 4
# The paced clock (set_counter_source): the counter catches up with the host's time when it
# lags by this much or more (1 ms), checked at least every PACE_PERIOD_NS of host time.
PACE_SLACK_TICKS = 62_500
PACE_PERIOD_NS = 1_000_000

_TRANSLATION_READS = (SCTLR_EL1, kr.SYSREG_ENCODINGS["TCR_EL1"], kr.SYSREG_ENCODINGS["TTBR0_EL1"],
                      kr.SYSREG_ENCODINGS["TTBR1_EL1"], uca.UC_ARM64_REG_PSTATE)


# The exclusive monitor. Unicorn (QEMU's TCG) keeps it as env->exclusive_addr/exclusive_val:
# LDXR records the address and the value loaded, STXR succeeds if the address matches and
# memory still holds that value (a compare-and-swap), and CLREX sets the address to -1. The API
# has no register for it, but uc_context_save/restore copy env, the whole CPU state, as it is;
# so the monitor's place in a context is found once, by running LDXR on a scratch engine and
# looking for the address and value it recorded (and checking that CLREX clears it and that a
# monitor cleared through a context makes STXR fail). None: not found (the monitor is then
# never cleared by the VMM; STXR keeps Unicorn's value comparison).
_LDXR_X0_X1, _STXR_W3_X2_X1, _CLREX, _NOP = 0xC85F7C20, 0xC8037C22, 0xD503305F, 0xD503201F
NO_EXCLUSIVE = (1 << 64) - 1  # exclusive_addr when the monitor is open


@functools.cache
def exclusive_monitor_offset() -> int | None:
    """The byte offset of exclusive_addr (exclusive_val follows) in a uc_context, or None."""
    from unicorn import UC_ARCH_ARM64, UC_MODE_ARM, Uc
    from unicorn.unicorn_py3.arch.types import uc_context
    try:
        uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
        base, addr, value = 0x10000, 0x18008, 0x5EC7_10AD_1DEA_C0DE
        uc.mem_map(base, 0x10000)
        uc.mem_write(base, struct.pack("<4I", _LDXR_X0_X1, _CLREX, _STXR_W3_X2_X1, _NOP))
        uc.mem_write(addr, value.to_bytes(8, "little"))
        uc.reg_write(uca.UC_ARM64_REG_X1, addr)
        uc.reg_write(uca.UC_ARM64_REG_X2, 0)
        uc.emu_start(base, base + 4)  # LDXR
        ctx = uc_context()
        if uclib.uc_context_alloc(uc._uch, ctypes.byref(ctx)):
            return None
        try:
            size = uclib.uc_context_size(uc._uch)
            uclib.uc_context_save(uc._uch, ctx)
            data = ctypes.string_at(ctx, size)
            hits = [o for o in range(0, size - 15, 8) if struct.unpack_from("<QQ", data, o) == (addr, value)]
            if len(hits) != 1:
                return None
            offset = hits[0]
            at = ctypes.c_uint64.from_address((ctypes.cast(ctx, ctypes.c_void_p).value or 0) + offset)
            at.value = NO_EXCLUSIVE  # cleared through a context: STXR must fail
            uclib.uc_context_restore(uc._uch, ctx)
            uc.reg_write(uca.UC_ARM64_REG_X3, 7)
            uc.emu_start(base + 8, base + 12)
            if uc.reg_read(uca.UC_ARM64_REG_X3) != 1:
                return None
            uc.emu_start(base, base + 8)  # LDXR, CLREX
            uclib.uc_context_save(uc._uch, ctx)
            if at.value != NO_EXCLUSIVE:
                return None
            return offset
        finally:
            uclib.uc_context_free(ctx)
    except UcError:
        return None


def _register_slots(keys: tuple[RegKey, ...]) -> tuple[ctypes.Array[ctypes.c_int], ctypes.Array[ctypes.c_uint64],
                                                        ctypes.Array[ctypes.c_void_p]]:
    """(ids, buffer, pointers) for uc_reg_read/write_batch over `keys` (Unicorn register ids,
    or (op0, op1, CRn, CRm, op2) system-register encodings). Every value gets a 48-byte slot:
    wide enough for a V register and for Unicorn's uc_arm64_cp_reg {u32 crn, crm, op0, op1,
    op2; u64 val} (val at byte 24), whose key fields are filled in here."""
    n = len(keys)
    ids = (ctypes.c_int * n)(*(k if isinstance(k, int) else uca.UC_ARM64_REG_CP_REG for k in keys))
    buf = (ctypes.c_uint64 * (6 * n))()
    base = ctypes.addressof(buf)
    ptrs = (ctypes.c_void_p * n)(*(base + 48 * i for i in range(n)))
    words = ctypes.cast(buf, ctypes.POINTER(ctypes.c_uint32))
    for i, k in enumerate(keys):
        if not isinstance(k, int):
            op0, op1, crn, crm, op2 = k
            for j, field_value in enumerate((crn, crm, op0, op1, op2)):
                words[12 * i + j] = field_value
    return ids, buf, ptrs


class VcpuCore:
    """State every part of the vCPU shares, register access, and one bounded emu_start."""

    # The native run-loop hooks; vcpu.py installs them once its MRS/MSR callbacks exist.
    _runctl: RunControl

    def __init__(self, vm: Arm64Vm, vcpu_id: int = 0):
        self.vm = vm
        self.uc = vm.new_engine()  # this vCPU's own engine, over the VM's shared memory
        self._uch = self.uc._uch
        self._pc_buf = ctypes.c_uint64()
        self._pc_ref = ctypes.byref(self._pc_buf)
        self.vcpu_id = vcpu_id
        cfg = vm.debug_config
        self.brps, self.wrps, self.ctx_cmps = cfg.brps, cfg.wrps, cfg.ctx_cmps
        self.guestdbg_control = 0
        # Set from another thread to make run() return KVM_EXIT_INTR (kvm_run.immediate_exit).
        self.immediate_exit = False
        self._clock_mode = "virtual"
        # The "paced" clock (set_counter_source): pace_live False during a replay, where the
        # counter moves only as the recorded run's on_clock_sync calls said.
        self.pace_live = True
        self.on_clock_sync: Callable[[int], None] | None = None  # hears each new counter_offset
        self._pace_base = 0  # host ticks + this = where the paced counter catches up to
        self._pace_alarm = 0  # the host time (ns) the catch-up alarm is set for
        self._batch_readers: dict[tuple[RegKey, ...], Callable[[], list[int]]] = {}
        self._batch_writers: dict[tuple[RegKey, ...], Callable[[tuple[int, ...]], None]] = {}

        # Per-run scratch state, set by hooks. Hooks never write PC and never enter exceptions:
        # they record what happened here and stop, and the run loop acts between emu_starts.
        self._exit: KvmRun | None = None
        self._guest_exception: tuple[int, int | None, int] | None = None  # (esr, far, preferred return)
        self._pending_exception: tuple[int, int] | None = None  # (QEMU exception number, PC)
        self._stopped_at: int | None = None  # where a hook ended the slice, if PC will not say
        self._hook_error: BaseException | None = None
        self._counting_down = False  # _execute is running under the countdown hook
        self._step_hook: int | None = None  # the countdown hook on every instruction, while stepping
        self._steps_in_a_row = 0
        # Bounded countdown hooks kept installed, by (block start, instructions), oldest first
        # (_execute: a lone step off a breakpoint enters the same block each time).
        self._countdowns: dict[tuple[int, int], tuple[int, int]] = {}  # -> (hook, instructions)
        self._pending_mmio: kvm.MmioExit | None = None
        self._pending_mmio_va = 0
        self._device_access: MmioDevice | None = None  # a watched device's access to do
        self._suppress_pc: int | None = None  # the instruction being completed already passed its checks
        self._multi_access_pc: int | None = None
        self._probe: list[tuple[bool, int, int, int, int]] | None = None  # (is_write, va, pa, size, value)
        # The EL1 generic timers (timers.py) and the output levels last reported to the VMM
        # (kvm_run.s.regs.device_irq_level; see _report_timer_levels).
        self.timers = GenericTimers()
        self.device_irq_level = 0
        # The memory hooks, kept off RAM (see install_memory_hooks), and the RAM they were set for.
        self._outside_ram_hooks: list[int] | None = None
        self._ram_ranges: tuple[tuple[int, int], ...] = ()
        self._hooked_slots_version = -1  # the vm.slots_version the hooks were laid out for
        # The guest waited in WFI with no timer deadline when run() last returned: only the
        # VMM (an interrupt, a kick) can wake it. For the VMM's hang detection.
        self.wfi_waiting = False
        # guestdbg extension for boards with several vCPUs: a WFI with nothing pending ends
        # run() with KVM_EXIT_HLT (PC past the WFI) instead of idling inside it, and so does a
        # WFE with the event register clear (PC past the WFE, wfe_exit set; not while stepping).
        self.halt_exits = False
        self._tlb_generation = 0  # vm.tlb_generation this engine's TLB is in step with
        self._rewritten_code: set[int] = set()  # physical code pages a hook stored to (debughw._store)
        self._turn_end: int | None = None  # run()'s turn_end, for _execute
        self._turn_ended = False  # the last _execute ended the turn at a block boundary
        # With halt_exits: a WFE ends run() with KVM_EXIT_HLT too, and wfe_exit says so (False
        # for a WFI). The edge and event hooks find WFE, SEV and SEVL (_runctl.c).
        self.wfe_exit = False
        self._watching_events = False  # the edge hook looks for WFE/SEV/SEVL (from halt_exits' first run)
        self._events_on = 0  # how the event hooks act (state.events)
        self._monitor_ctx: Any = None  # a uc_context for reaching the exclusive monitor
        self._monitor_at: ctypes.c_uint64 | None = None

    # ------------------------------------------------------------------ registers
    @property
    def pc(self) -> int:
        # Straight to the C API with a buffer made once: the run loop reads PC around every
        # slice, and the binding's reg_read costs several microseconds.
        uclib.uc_reg_read(self._uch, uca.UC_ARM64_REG_PC, self._pc_ref)
        return self._pc_buf.value

    def _pstate(self) -> int:
        return self._batch_reader(_PSTATE_READ)()[0]

    def current_el(self) -> int:
        return (self._pstate() >> PSTATE_EL_SHIFT) & 3

    @staticmethod
    def _uses_sp_el0(pstate: int) -> bool:
        return ((pstate >> PSTATE_EL_SHIFT) & 3) == 0 or not pstate & PSTATE_SP

    def _get_sp(self, el: int) -> int:
        """SP_EL0 or SP_EL1, wherever Unicorn keeps it (live in SP, or banked)."""
        pstate, sp, sp_el0, sp_el1 = self._batch_reader(_SP_READS)()
        if self._uses_sp_el0(pstate) == (el == 0):
            return sp
        return sp_el0 if el == 0 else sp_el1

    def _set_sp(self, el: int, value: int) -> None:
        uc, pstate = self.uc, self._pstate()
        uc.reg_write(uca.UC_ARM64_REG_SP_EL0 if el == 0 else uca.UC_ARM64_REG_SP_EL1, value)
        if self._uses_sp_el0(pstate) == (el == 0):
            uc.reg_write(uca.UC_ARM64_REG_SP, value)

    def _write_pstate(self, value: int) -> None:
        """Write PSTATE keeping SP_EL0/SP_EL1 where the new mode expects them."""
        sp0, sp1 = self._get_sp(0), self._get_sp(1)
        self.uc.reg_write(uca.UC_ARM64_REG_PSTATE, value & 0xFFFFFFFF)
        # Unicorn rebuilds its cached EL/translation flags only on a system-register write.
        self.uc.cpr_write(*TPIDR_EL1, self.uc.cpr_read(*TPIDR_EL1))
        self._set_sp(0, sp0)
        self._set_sp(1, sp1)

    def _read_gpr(self, name: str) -> int:
        """A general-purpose register by its assembler name (the access decoder's reader)."""
        if name in ("sp", "wsp"):
            return self.uc.reg_read(uca.UC_ARM64_REG_SP)
        if name in ("xzr", "wzr"):
            return 0
        value = self.uc.reg_read(X_REGS[int(name[1:])])
        return value & 0xFFFFFFFF if name[0] == "w" else value

    def _batch_reader(self, keys: tuple[RegKey, ...]) -> Callable[[], list[int]]:
        """A reader for these Unicorn registers (ids, or system-register encodings) in one
        uc_reg_read_batch call into buffers made once: the binding's own reg_read builds ctypes
        objects per register per call, which made a `g` packet cost ~90 binding calls."""
        reader = self._batch_readers.get(keys)
        if reader is None:
            n = len(keys)
            ids, buf, ptrs = _register_slots(keys)
            template = _register_slots(keys)[1]  # the keys, values zero: reset before each read
            # One struct unpack pulls every value out of the 48-byte slots (a Python loop over
            # ~80 registers cost more than the batch read itself): a system register's value is
            # at byte 24, a V register its 16 bytes (made an int per run of V registers, in C:
            # map(int.from_bytes)), anything else one u64.
            layout = "".join("24xQ16x" if not isinstance(k, int) else ("16s32x" if k in V_REGS_SET else "Q40x")
                             for k in keys)
            unpack = struct.Struct("<" + layout).unpack_from
            runs: list[tuple[int, int]] = []  # [start, end) of each run of V registers
            for i, k in enumerate(keys):
                if isinstance(k, int) and k in V_REGS_SET:
                    if runs and runs[-1][1] == i:
                        runs[-1] = (runs[-1][0], i + 1)
                    else:
                        runs.append((i, i + 1))
            size = ctypes.sizeof(buf)
            uch = self.uc._uch

            def read_batch() -> list[int]:
                ctypes.memmove(buf, template, size)
                status = uclib.uc_reg_read_batch(uch, ids, ptrs, n)
                if status:
                    raise UcError(status)
                out = list(unpack(buf))
                for a, b in runs:
                    out[a:b] = map(_int_le, out[a:b])
                return out

            reader = self._batch_readers[keys] = read_batch
        return reader

    def _batch_writer(self, keys: tuple[RegKey, ...]) -> Callable[[tuple[int, ...]], None]:
        """A writer for these Unicorn registers (ids, or system-register encodings) in one
        uc_reg_write_batch call (the binding's reg_write costs ~6 us a register)."""
        writer = self._batch_writers.get(keys)
        if writer is None:
            n = len(keys)
            ids, buf, ptrs = _register_slots(keys)
            slots = [6 * i if isinstance(k, int) else 6 * i + 3 for i, k in enumerate(keys)]
            uch = self.uc._uch

            def write_batch(values: tuple[int, ...]) -> None:
                for slot, value in zip(slots, values):
                    buf[slot] = value
                status = uclib.uc_reg_write_batch(uch, ids, ptrs, n)
                if status:
                    raise UcError(status)

            writer = self._batch_writers[keys] = write_batch
        return writer

    # ------------------------------------------------------------------ guest memory
    def translate(self, va: int, access: str = "read") -> int:
        """Guest virtual to physical, through the guest's stage-1 tables when its MMU is on."""
        regs = self._batch_reader(_TRANSLATION_READS)()
        if not regs[0] & 1:
            return va
        return self._walk(va, access, regs).pa

    def _walk(self, va: int, access: str, regs: list[int]) -> mmu.Translation:
        """The stage-1 walk of `va` with the MMU on, for `regs` = the _TRANSLATION_READS values
        (read once by callers that walk many addresses). Raises mmu.TranslationFault."""
        sctlr, tcr, ttbr0, ttbr1, pstate = regs
        return mmu.translate(
            va, sctlr_el1=sctlr, tcr_el1=tcr, ttbr0_el1=ttbr0, ttbr1_el1=ttbr1,
            read_u64=lambda pa: int.from_bytes(self.vm.read_phys(pa, 8), "little"),
            access=access, el=(pstate >> PSTATE_EL_SHIFT) & 3)

    def read_virt(self, va: int, size: int) -> bytes:
        out = bytearray()
        while size:
            chunk = min(size, PAGE_SIZE - (va % PAGE_SIZE))
            out += self.vm.read_phys(self.translate(va), chunk)
            va, size = va + chunk, size - chunk
        return bytes(out)

    def _insn_at(self, va: int) -> int:
        return int.from_bytes(self.read_virt(va, 4), "little")

    def _translate_page(self, va_page: int) -> int | None:
        try:
            return self.translate(va_page, "read") & PAGE_MASK
        except mmu.TranslationFault:  # unmapped for now: nothing to protect
            return None

    def _va_of_access(self, addr: int) -> int:
        """Unicorn's memory hooks get the physical address; watchpoints match virtual ones.
        With the MMU on, find the access's virtual address from the load/store at PC."""
        if not self.uc.cpr_read(*SCTLR_EL1) & 1:
            return addr
        decoded = decode_access(self._insn_at(self.pc), self.pc, self._read_gpr)
        if decoded is None:
            return addr
        va, size, _ = decoded
        for va_page in {va & PAGE_MASK, (va + size - 1) & PAGE_MASK}:
            if self._translate_page(va_page) == addr & PAGE_MASK:
                return va_page | (addr & (PAGE_SIZE - 1))
        return addr

    # ------------------------------------------------------------------ instruction count
    @property
    def icount(self) -> int:
        """Instructions this vCPU has retired (exact between run() calls): the virtual clock's
        source. An instruction that takes an exception, or a debug or MMIO exit before it
        completes, has not retired."""
        return self._runctl.state.icount

    @property
    def sev_count(self) -> int:
        """SEVs this vCPU has executed (the event hook counts them while halt_exits is set)."""
        return self._runctl.state.sev_count

    @sev_count.setter
    def sev_count(self, value: int) -> None:
        self._runctl.state.sev_count = value

    @property
    def event_register(self) -> bool:
        """The event register as SEVL set it (a WFE clears it); SEVs are the board's to count."""
        return bool(self._runctl.state.local_event)

    @event_register.setter
    def event_register(self, value: bool) -> None:
        self._runctl.state.local_event = int(value)

    def set_icount(self, value: int) -> None:
        """Restore the instruction count (snapshots)."""
        self._runctl.state.icount = value

    def _retire(self, count: int = 1) -> None:
        """The VMM completed an instruction on the guest's behalf (HVC, SMC, semihosting)."""
        self._runctl.state.icount += count

    # ------------------------------------------------------------------ the exclusive monitor
    def _monitor_slot(self) -> ctypes.c_uint64 | None:
        """exclusive_addr in this vCPU's saved context (exclusive_val is the next word), or
        None if the monitor cannot be reached (see exclusive_monitor_offset)."""
        if self._monitor_ctx is None:
            offset = exclusive_monitor_offset()
            if offset is None:
                return None
            from unicorn.unicorn_py3.arch.types import uc_context
            ctx = uc_context()
            if uclib.uc_context_alloc(self._uch, ctypes.byref(ctx)):
                return None
            self._monitor_ctx = ctx
            address = ctypes.cast(ctx, ctypes.c_void_p).value
            assert address is not None
            self._monitor_at = ctypes.c_uint64.from_address(address + offset)
        uclib.uc_context_save(self._uch, self._monitor_ctx)
        return self._monitor_at

    def exclusive_monitor(self) -> tuple[int, int] | None:
        """The local exclusive monitor: (virtual address, value loaded) of the last LDXR (for
        LDXP, the first word), or None when it is open (CLREX, a successful STXR, or cleared)."""
        slot = self._monitor_slot()
        if slot is None or slot.value == NO_EXCLUSIVE:
            return None
        nxt = ctypes.c_uint64.from_address(ctypes.addressof(slot) + 8)
        return slot.value, nxt.value

    def set_exclusive_monitor(self, monitor: tuple[int, int] | None) -> None:
        """Put the local exclusive monitor back as exclusive_monitor() read it (a checkpoint's
        restore: a STXR after it must succeed or fail as it did when the run was recorded)."""
        slot = self._monitor_slot()
        if slot is None:
            return
        slot.value = NO_EXCLUSIVE if monitor is None else monitor[0]
        if monitor is not None:
            ctypes.c_uint64.from_address(ctypes.addressof(slot) + 8).value = monitor[1]
        uclib.uc_context_restore(self._uch, self._monitor_ctx)

    def clear_exclusive_monitor(self) -> None:
        """CLREX on the guest's behalf, with no instruction run: its next store-exclusive fails
        unless it loads exclusively again (a board clears it when another vCPU has run since)."""
        slot = self._monitor_slot()
        if slot is None or slot.value == NO_EXCLUSIVE:
            return
        slot.value = NO_EXCLUSIVE
        uclib.uc_context_restore(self._uch, self._monitor_ctx)

    # ------------------------------------------------------------------ the generic timers
    # The counter (CNTVCT_EL0 == CNTPCT_EL0: CNTVOFF is 0) is the virtual time / 16 in the
    # virtual clock, or the host's CLOCK_MONOTONIC in 16 ns ticks with `--clock host`, plus
    # counter_offset: the ticks WFI skipped while idle, and the VMM's KVM_REG_ARM_TIMER_CNT
    # writes. The virtual time is icount + time_offset: 0 for a lone vCPU; with several, the
    # board sets it before each vCPU's slice so that all read one clock (the instructions of
    # every vCPU, as QEMU's -icount round-robin counts). The C hook answers the guest's counter
    # reads with the same formula.
    @property
    def counter_offset(self) -> int:
        return self._runctl.state.counter_offset

    @counter_offset.setter
    def counter_offset(self, value: int) -> None:
        self._runctl.state.counter_offset = value & MASK64

    @property
    def time_offset(self) -> int:
        return self._runctl.state.time_offset

    @time_offset.setter
    def time_offset(self, value: int) -> None:
        self._runctl.state.time_offset = value & MASK64

    def virtual_time(self, pc: int | None = None) -> int:
        """The machine's virtual time (instructions, 1 ns each) now, or at the instruction at
        `pc` (from an MRS/MSR hook)."""
        state = self._runctl.state
        return ((state.icount if pc is None else self._runctl.icount_at(pc)) + state.time_offset) & MASK64

    def counter(self, pc: int | None = None) -> int:
        """The counter now (between runs), or at the instruction at `pc` (from an MRS/MSR hook)."""
        if self._clock_mode == "host":
            ticks = time.monotonic_ns() >> COUNTER_TICK_SHIFT
        else:
            ticks = self.virtual_time(pc) >> COUNTER_TICK_SHIFT
        return (ticks + self._runctl.state.counter_offset) & MASK64

    def _host_counter(self, now_ns: int) -> int:
        """The paced clock: what the counter reads at host time `now_ns` if it kept up."""
        return (now_ns >> COUNTER_TICK_SHIFT) + self._pace_base

    def _set_paced_offset(self, offset: int) -> None:
        self.counter_offset = offset
        if self.on_clock_sync is not None:
            self.on_clock_sync(self.counter_offset)

    def _follow_host(self) -> None:
        """The paced clock at the start of a slice, where icount is exact. The counter is the
        virtual clock's (so timers fire, and reads return, at instruction counts a replay
        repeats), but where it has fallen PACE_SLACK_TICKS behind the host's time (the guest
        retires fewer than one instruction per ns, and host time passes while it is stopped),
        or host time has reached a timer's deadline, it jumps to the host's time, and
        on_clock_sync hears the new offset: the input a replay gives again. An alarm ends the
        slice in PACE_PERIOD_NS or where host time reaches the next timer deadline, whichever
        comes first, to look again."""
        now = time.monotonic_ns()
        count, host = self.counter(), self._host_counter(now)
        deadline = self.timers.next_deadline(count) if self.timers.armed else None
        # A timer host time has reached fires now, however little the counter lags: waiting
        # for the counter to get there by instructions would take up to PACE_SLACK_TICKS * 16.
        if host - count >= PACE_SLACK_TICKS or (deadline is not None and count < host and deadline <= host):
            self._set_paced_offset(self.counter_offset + host - count)
            count = host
            deadline = self.timers.next_deadline(count) if self.timers.armed else None
        alarm = self._pace_alarm if self._pace_alarm > now else now + PACE_PERIOD_NS
        if deadline is not None:  # the host time of the deadline, the same at every slice
            alarm = min(alarm, (deadline - self._pace_base) << COUNTER_TICK_SHIFT)
        if alarm != self._pace_alarm:  # (the alarm thread is woken only for a new time)
            self._pace_alarm = alarm
            self._runctl.stop_at(alarm)

    def next_timer_event(self) -> int | None:
        """The virtual time at which this vCPU's timers next raise their output (None: no
        enabled, unmasked timer). For a board that runs several vCPUs: a halted one (see
        halt_exits) is due to run again then."""
        count = self.counter()
        deadline = self.timers.next_deadline(count)
        if deadline is None:
            return None
        return ((self.virtual_time() >> COUNTER_TICK_SHIFT) + deadline - count) << COUNTER_TICK_SHIFT

    def set_counter(self, value: int) -> None:
        """KVM_REG_ARM_TIMER_CNT: make the counter read `value` now (moves counter_offset)."""
        self.counter_offset = self.counter_offset + value - self.counter()

    def _report_timer_levels(self, limit: int) -> int | None:
        """Before a slice: if the timers' output levels differ from what the VMM was last told,
        record the KVM_EXIT_INTR that tells it (None: run no slice). Otherwise the slice's
        limit, lowered to the instruction count at which the next enabled, unmasked timer
        fires (virtual clock), or a host-time alarm set for it (host clock)."""
        timers = self.timers
        if not timers.armed and not self.device_irq_level:
            return limit
        count = self.counter()
        level = timers.irq_level(count)
        if level != self.device_irq_level:
            self.device_irq_level = level
            self._exit = KvmRun(kvm.KVM_EXIT_INTR, device_irq_level=level)
            return None
        deadline = timers.next_deadline(count)
        if self._clock_mode == "host":
            self._runctl.stop_at(None if deadline is None
                                 else time.monotonic_ns() + ((deadline - count) << COUNTER_TICK_SHIFT))
        elif deadline is not None:
            due = ((self.virtual_time() >> COUNTER_TICK_SHIFT) + deadline - count) << COUNTER_TICK_SHIFT
            limit = min(limit, due - self.time_offset)
        return limit

    def _after_wfi(self) -> bool:
        """Did the slice end because of a WFI? Unicorn (QEMU's helper_wfi, EXCP_HLT) ends
        emu_start right after a WFI when no interrupt is pending, with nothing recorded; the
        only other unrecorded stops are MSR hooks, which leave PC after the MSR."""
        try:
            return self._insn_at(self.pc - 4) == WFI
        except (mmu.TranslationFault, kvm.KvmError):
            return False

    def _idle(self) -> None:
        """The guest waits in WFI and no interrupt is pending (Unicorn completes a WFI at
        once when HCR_EL2.VI is set). Virtual clock: the counter skips ahead to the next timer
        deadline (counter_offset grows; time stays monotonic and deterministic). Host clock:
        the thread sleeps until the deadline. No deadline: the thread sleeps until another
        thread asks for a stop (kick(), or the VMM raising the IRQ line), as KVM blocks a vCPU
        in WFI; `wfi_waiting` tells the VMM. Never a spin, and never a sleep while a stop is
        already asked for. The virtual clock's skip is made even then: whether a kick lands
        before or after this point must not change what the guest computes, or a replay
        (which has no kick there) would diverge. WFI has retired either way: PC is past it,
        and the run loop goes round (a timer's level change is then reported, a kick returns)."""
        count = self.counter()
        if self.timers.irq_level(count) != self.device_irq_level:
            return  # the next slice reports it
        if self.halt_exits and not self.guestdbg_control & kvm.KVM_GUESTDBG_SINGLESTEP:
            # Several vCPUs: the others may run meanwhile, so the board (which knows when each
            # is due: next_timer_event) decides, as a VMM with a userspace irqchip does on HLT.
            self._exit = KvmRun(kvm.KVM_EXIT_HLT)
            return
        if self._clock_mode == "paced" and not self.pace_live:
            return  # a replay: the recorded wait's outcome is in the log (a counter offset)
        deadline = self.timers.next_deadline(count)
        if deadline is None:
            if not self.guestdbg_control & kvm.KVM_GUESTDBG_SINGLESTEP and not self._runctl.state.stop_request:
                self.wfi_waiting = True
                self._runctl.wait_for_stop(None)
            return
        if self._clock_mode == "host":  # (wait_for_stop returns at once if a stop is asked for)
            self._runctl.wait_for_stop(((deadline - count) << COUNTER_TICK_SHIFT) / 1e9)
        elif self._clock_mode == "paced":
            # Sleep until host time reaches the deadline; then the counter reads the deadline
            # (logged: a kick may have ended the sleep first, and a replay does not sleep).
            self._pace_alarm = 0
            self._runctl.stop_at(None)  # the catch-up alarm must not cut the sleep short
            wait = (deadline - self._host_counter(time.monotonic_ns())) << COUNTER_TICK_SHIFT
            if wait <= 0 or not self._runctl.wait_for_stop(wait / 1e9):
                self._set_paced_offset(self.counter_offset + deadline - count)
        else:
            self.counter_offset += deadline - count

    # ------------------------------------------------------------------ memory hooks
    # Unicorn 2.1 keeps every store on its slow path (notdirty_write: a region lookup and a
    # code-page invalidation check per store) on any page a memory hook's range covers, and a
    # hook over the whole address space covers RAM. So the access-fault and unmapped hooks cover
    # only what is not writable RAM (ROM, MMIO, holes); the pages a watchpoint or trap protects
    # get their own bounded hooks (debughw.py). Stores to RAM then go at full speed, and code
    # written through another mapping than the one it was translated from is dropped when the
    # guest invalidates the instruction cache (_sync_icache), as the architecture requires.
    def _on_protected_access(self, uc: Any, access: int, pa: int, size: int, value: int, _user: object) -> bool:
        raise NotImplementedError  # debughw.py

    def _on_unmapped_access(self, uc: Any, access: int, pa: int, size: int, value: int, _user: object) -> bool:
        raise NotImplementedError  # mmio.py

    def install_memory_hooks(self) -> None:
        """Add UC_HOOK_MEM_READ_PROT|WRITE_PROT and UC_HOOK_MEM_UNMAPPED over everything but
        the writable memory slots (and again whenever the slots change), and start following
        the guest's instruction-cache maintenance."""
        self._outside_ram_hooks = []
        rc = self._runctl
        rc.set_action(IC_IVAU, write=ACTION_IC_VA)
        rc.set_action(IC_IALLU, write=ACTION_IC_ALL)
        rc.set_action(IC_IALLUIS, write=ACTION_IC_ALL)
        self._sync_memory_hooks()

    def _writable_ranges(self) -> tuple[tuple[int, int], ...]:
        return tuple(sorted((s.guest_phys_addr, s.guest_phys_addr + s.memory_size)
                            for s in self.vm.slots.values() if not s.readonly))

    def _in_ram(self, pa: int) -> bool:
        """Is `pa` in the writable RAM the memory hooks leave out? (Its protected pages need
        hooks of their own.)"""
        if self._outside_ram_hooks is None:
            return False
        return any(start <= pa < end for start, end in self._ram_ranges)

    def _sync_memory_hooks(self) -> None:
        hooks = self._outside_ram_hooks
        if hooks is None or self.vm.slots_version == self._hooked_slots_version:
            return  # once per slot change, not once per slice
        self._hooked_slots_version = self.vm.slots_version
        ram = self._writable_ranges()
        if ram == self._ram_ranges and hooks:
            return
        for handle in hooks:
            self.uc.hook_del(handle)
        hooks.clear()
        gaps, at = [], 0
        for start, end in ram:
            if start > at:
                gaps.append((at, start - 1))
            at = max(at, end)
        if at < 1 << 64:
            gaps.append((at, (1 << 64) - 1))
        for begin, end in gaps:
            hooks.append(self.uc.hook_add(UC_HOOK_MEM_READ_PROT | UC_HOOK_MEM_WRITE_PROT,
                                          self._on_protected_access, None, begin, end))
            hooks.append(self.uc.hook_add(UC_HOOK_MEM_UNMAPPED, self._on_unmapped_access, None, begin, end))
        changed = ram != self._ram_ranges
        self._ram_ranges = ram
        if changed:
            self._ram_changed()

    def _ram_changed(self) -> None:
        """The writable slots moved: protected pages' own hooks are redone (debughw.py)."""

    def _translation_changed(self) -> None:
        """A translation under a watched page may have changed (debughw.py re-places them)."""

    # ------------------------------------------------------------------ the engine
    def _execute(self, limit: int) -> UcError | None:
        """emu_start from PC until icount reaches `limit` or a hook stops; then settle icount.

        The block hook (C) ends a slice before a block that would cross the limit. If the limit
        falls inside that block, the block is translated afresh under a countdown code hook
        bounded to it, run once to exactly the limit, and translated afresh again so the
        instrumented copy does not linger.

        The generic timers come first: a change of their output levels is reported (an exit
        recorded, nothing run) and the limit is lowered to the next timer deadline. A slice
        that ends in WFI idles the vCPU (_idle)."""
        state = self._runctl.state
        state.stop_reason = 0
        self.wfe_exit = False
        # WFE ends the run only with several vCPUs, and never a single step; a step still sets
        # the event register (SEV, SEVL) and a WFE consumes it, as a run would.
        events = (0 if not self.halt_exits else
                  EVENTS_STEP if self.guestdbg_control & kvm.KVM_GUESTDBG_SINGLESTEP else EVENTS_ON)
        if events != self._events_on:
            self._set_events(events)
        if events == EVENTS_STEP:
            state.wfe_after = 0  # set by a WFE this step runs that would wait (stepped_into_wait)
        if self._outside_ram_hooks is not None:
            self._sync_memory_hooks()
        if self._suppress_pc is None:  # not completing one instruction (MMIO, a watched pair)
            if self._clock_mode == "paced" and self.pace_live:
                self._follow_host()
            timed = self._report_timer_levels(limit)
            if timed is None:
                return None
            limit = timed
        self.wfi_waiting = False
        if self._step_hook is not None:
            # Single-stepping: every translation calls the countdown already.
            state.limit = NO_LIMIT
            state.countdown_end = limit
            self._counting_down = True
            try:
                fault = self._emu(self.pc)
            finally:
                self._counting_down = False
                state.countdown_end = NO_LIMIT  # no countdown: see runctl_event_hook
            if state.stop_reason == 0 and fault is None and not self._stop_pending() and self._after_wfi():
                self._idle()
            return fault
        state.limit = limit
        self._turn_ended = False
        pc = self.pc
        if limit != state.icount + 1 or (pc, 2) not in self._countdowns:  # else see below
            fault = self._emu(pc)
            if state.stop_reason == 0 and fault is None and not self._stop_pending() and self._after_wfi():
                self._idle()
                return None
            if self._events_on and state.stop_reason == STOP_WFE and fault is None and not self._stop_pending():
                # A WFE with the event register clear ran (PC is past it): the board lets the other
                # vCPUs run until an event (board/smp.py).
                self.wfe_exit = True
                self._exit = KvmRun(kvm.KVM_EXIT_HLT)
                return None
            if (state.stop_reason != STOP_LIMIT or fault is not None or self._stop_pending()
                    or state.icount >= limit):
                return fault
            if self._turn_end is not None and limit >= self._turn_end:
                # The scheduler's turn (not a timer deadline, which stays exact): end at this block
                # boundary, short of the limit (Arm64Vcpu.run's turn_end).
                self._turn_ended = True
                return fault
            start = state.split_pc
            self._countdown(start, state.split_insns)
        else:
            # A single step from the start of a block whose first two instructions have the
            # countdown hook: enter it under the countdown at once. What the first emu_start
            # would have found out (the block crosses the limit) is known: the instruction
            # after the one stepped is hooked whatever the block is now (a longer block after
            # a code change too), and a one-instruction block ends at the block hook.
            start = pc
        state.countdown_end = limit
        state.split_pc = start
        state.split_armed = 1
        state.stop_reason = 0
        self._counting_down = True
        try:
            fault = self._emu(start)
        finally:
            self._counting_down = False
            state.countdown_end = NO_LIMIT  # no countdown: see runctl_event_hook
            state.split_armed = 0
        return fault

    def _countdown(self, start: int, insns: int) -> None:
        """Have the countdown code hook bounded to the block at `start` of `insns` instructions
        installed (and the block dropped, to be translated with it) unless it already is.

        The last COUNTDOWN_HOOKS of them stay installed with their blocks instrumented: the
        hook does nothing outside a countdown (countdown_end is NO_LIMIT then), and a lone
        step off a breakpoint (gdb's z0, step, Z0, continue) enters the same block each time,
        so it is not translated twice a step (once with the hook, once without). A hook
        covering at least two instructions is also found under (start, 2), which is all a
        single step from `start` needs (see _execute)."""
        key = (start, insns)
        entry = self._countdowns.pop(key, None)
        if entry is None:
            if len(self._countdowns) >= COUNTDOWN_HOOKS:
                self._drop_countdown(next(iter(self._countdowns)))
            entry = (self._runctl.add_countdown(start, insns, NO_LIMIT), insns)
            remove_cache(self.uc, start, 4 * insns)
        self._countdowns[key] = entry
        if insns >= 2:
            self._countdowns.pop((start, 2), None)
            self._countdowns[(start, 2)] = entry

    def _drop_countdown(self, key: tuple[int, int]) -> None:
        hook, insns = self._countdowns[key]
        for k in [k for k, (h, _) in self._countdowns.items() if h == hook]:
            del self._countdowns[k]
        self._runctl.remove_hook(hook)
        remove_cache(self.uc, key[0], 4 * insns)

    def stepped_into_wait(self) -> bool:
        """Did the single step just taken run a WFE with the event register clear (PC right
        after it)? A run would wait there; the board lets the stepped vCPU wait from here."""
        wfe_after = self._runctl.state.wfe_after
        return self._events_on == EVENTS_STEP and wfe_after != 0 and self.pc == wfe_after

    def _set_events(self, mode: int) -> None:
        """EVENTS_ON: WFE ends the run and SEV/SEVL count (halt_exits, not stepping);
        EVENTS_STEP: they count and a WFE clears the event register, but never waits (a
        single step); 0: they are no-ops (one vCPU)."""
        if mode and not self._watching_events:
            self._watching_events = True
            self._runctl.watch_events()
        self._events_on = mode
        self._runctl.state.events = mode
        self._runctl.state.wfe_armed = 0

    def _set_step_hook(self, stepping: bool) -> None:
        """From the second single step in a row, keep the countdown hook on every instruction:
        one emu_start a step, no retranslation. A free run drops it and its instrumented
        translations (as Unicorn does when count= is dropped). A lone step (a step-over of a
        breakpoint between continues) takes the bounded path instead: no flush at all."""
        if stepping and self._step_hook is None:
            self._step_hook = self._runctl.add_countdown_everywhere()
        elif not stepping and self._step_hook is not None:
            self._runctl.remove_hook(self._step_hook)
            self._step_hook = None
            self.uc.ctl_flush_tb()

    def _at_limit(self, address: int) -> bool:
        """Is the instruction at `address`, whose code hooks are running, past the slice's
        end? Then breakpoints there are for the next slice: the countdown hook (before or
        after this one) ends this slice."""
        return self._counting_down and self._runctl.icount_at(address) >= self._runctl.state.countdown_end

    def _stop_pending(self) -> bool:
        return (self._exit is not None or self._pending_exception is not None or self._device_access is not None
                or self._guest_exception is not None or self._multi_access_pc is not None)

    def _emu(self, pc: int) -> UcError | None:
        """One emu_start, never with count= (which instruments every instruction and, once
        dropped, flushes every translation); then correct icount for a block left part way."""
        self._stopped_at = None
        state = self._runctl.state
        tlbis = state.tlbi_count
        fault: UcError | None
        try:
            self.uc.emu_start(pc, 0)
            fault = None
        except UcError as e:
            fault = e
        self._settle_icount()
        if state.ic_pending:
            self._sync_icache()
        if self._watching_events and state.site_new:
            # New WFE/SEV/SEVL sites: hook each and drop its block, which has not run yet.
            for va in self._runctl.take_event_sites():
                self._runctl.add_event_hook(va)
                self._drop_code_at(va)
        if self._rewritten_code:
            self.drop_physical_code(self._rewritten_code)
            self._rewritten_code = set()
        if state.tlbi_count != tlbis and self.vm.shared:
            self.vm.tlb_generation += 1  # the other vCPUs flush their TLBs before they run again
            self._tlb_generation = self.vm.tlb_generation
        if state.stop_reason & STOP_XLATE:
            self._translation_changed()
        if self._hook_error is not None:
            error, self._hook_error = self._hook_error, None
            raise error
        return fault

    def _sync_icache(self) -> None:
        """The guest ran IC IVAU or IC IALLU(IS) (the C SYS hook recorded them and ended the
        slice before any block but the invalidating one): drop the translations of the code
        it changed. Unicorn notices stores to code only through the mapping the code was
        translated from (see install_memory_hooks), and Linux writes code through others
        (alternatives and static keys through the linear map or a fixmap, user pages through
        the linear map), so the architecture's rule is followed: changed code is seen once the
        guest invalidates the instruction cache. A page executable at the current EL is
        dropped by its virtual address; any other (the linear map is PXN) by its physical
        address, found through the guest's tables, with the MMU off for the call."""
        state = self._runctl.state
        count, everything = state.ic_count, state.ic_all
        state.ic_pending = state.ic_all = state.ic_count = 0
        shared = self.vm.shared
        if everything:
            self.uc.ctl_flush_tb()
            if shared:
                self.vm.invalidate_icache(self.vcpu_id, None)
            return
        regs = self._batch_reader(_TRANSLATION_READS)()
        sctlr, el = regs[0], (regs[4] >> PSTATE_EL_SHIFT) & 3
        if not sctlr & 1:
            for va in state.ic_va[:count]:
                remove_cache(self.uc, va, PAGE_SIZE)
            if shared:
                self.vm.invalidate_icache(self.vcpu_id, {va & PAGE_MASK for va in state.ic_va[:count]})
            return
        physical, everywhere = set(), set()
        for va in state.ic_va[:count]:
            try:
                t = self._walk(va, "read", regs)
            except (mmu.TranslationFault, kvm.KvmError):
                continue  # nothing mapped there: no code translated through it
            everywhere.add(t.pa & PAGE_MASK)
            if t.allows("exec", el):
                remove_cache(self.uc, va, PAGE_SIZE)
                if el == 1 and va >> 55 & 1 and not shared:
                    # The next IVAUs of it stay in C (not with several vCPUs: each IVAU must
                    # reach the others' engines too).
                    self._runctl.note_executable(va)
            else:
                physical.add(t.pa & PAGE_MASK)
        self.drop_physical_code(physical)
        if shared and everywhere:
            self.vm.invalidate_icache(self.vcpu_id, everywhere)

    def _drop_code_at(self, va: int) -> None:
        """Forget translations of the instruction at `va` (a breakpoint hook added or removed
        there). Unicorn's remove_cache walks `va` as an instruction fetch, and a walk that
        faults raises a prefetch abort in the guest, so: by `va` only when the MMU is off or
        `va` is executable at the current EL; by physical page when it is mapped but not
        executable; and when it is unmapped, every translation (code translated through it
        before it was unmapped cannot be found any other way)."""
        regs = self._batch_reader(_TRANSLATION_READS)()
        if not regs[0] & 1:
            remove_cache(self.uc, va, 4)
            return
        try:
            t = self._walk(va, "read", regs)
        except (mmu.TranslationFault, kvm.KvmError):
            self.uc.ctl_flush_tb()
            return
        if t.allows("exec", (regs[4] >> PSTATE_EL_SHIFT) & 3):
            remove_cache(self.uc, va, 4)
        else:
            self.drop_physical_code({t.pa & PAGE_MASK})

    def forget_executable_pages(self) -> None:
        """Lapse the C hook's known-executable pages: its IC IVAUs all come to Python again."""
        self._runctl.state.exec_gen += 1

    def drop_physical_code(self, pages: set[int]) -> None:
        """Drop this engine's translations of code in these physical pages, by physical
        address: with the MMU off for the call, as ctl_remove_cache translates its argument."""
        if not pages:
            return
        sctlr = self.uc.cpr_read(*SCTLR_EL1)
        self.uc.cpr_write(*SCTLR_EL1, sctlr & ~1)
        self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)  # no virtual entry may answer for a PA
        try:
            for pa in pages:
                remove_cache(self.uc, pa, PAGE_SIZE)
        finally:
            self.uc.cpr_write(*SCTLR_EL1, sctlr)
            self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)

    def forget_translations(self) -> None:
        """The registers and memory were set from outside (a snapshot or a checkpoint restored):
        nothing this engine cached about the guest's translation holds, whatever TLBI the guest
        would have needed. Writing TTBRn_EL1 through ONE_REG flushes no TLB (nor would the MSR
        without a TLBI), so a restore to other page tables would run on the old ones."""
        self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)
        self._runctl.state.exec_gen += 1
        if self._runctl.state.watch_flags:
            self._translation_changed()

    def apply_remote_maintenance(self) -> None:
        """Before a slice, with several vCPUs: what the others' TLBIs and IC invalidations
        (Inner Shareable on Linux: broadcast) mean for this engine. A TLBI elsewhere flushes
        this engine's TLB (and the C hook's known-executable pages; watched pages are placed
        again); code changed elsewhere is dropped here by physical page."""
        vm = self.vm
        if self._tlb_generation != vm.tlb_generation:
            self._tlb_generation = vm.tlb_generation
            self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)
            self._runctl.state.exec_gen += 1
            if self._runctl.state.watch_flags:
                self._translation_changed()
        everything, pages = vm.take_icache_invalidations(self.vcpu_id)
        if everything:
            self.uc.ctl_flush_tb()
        else:
            self.drop_physical_code(pages)

    def _settle_icount(self) -> None:
        """The block hook counted the last block whole when it was entered; if the slice ended
        inside it (a fault, an exception, a breakpoint, the countdown), count only the
        instructions before the one where it stopped."""
        state = self._runctl.state
        if not state.in_block:
            return
        state.in_block = 0
        start, insns = state.block_start, state.block_insns
        pc = self._stopped_at if self._stopped_at is not None else self.pc
        done = (pc - start) >> 2 if start <= pc <= start + 4 * insns else insns
        state.icount -= insns - done

    def _hook_failed(self, error: BaseException) -> int:
        """A ctypes callback must not raise: keep the error, stop, and raise it after emu_start."""
        self._hook_error = error
        self.uc.emu_stop()
        return 1

    # ------------------------------------------------------------------ exits
    def _softstep_exit(self) -> KvmRun:
        # ISV=1, EX=0: the stepped instruction was not a load/store-exclusive.
        return self._debug_exit(dr.esr_softstep(lower_el=True))

    def _debug_exit(self, esr: int, far: int = 0) -> KvmRun:
        return KvmRun(kvm.KVM_EXIT_DEBUG, flags=kvm.KVM_DEBUG_ARCH_HSR_HIGH_VALID,
                      debug=kvm.DebugExitArm64(hsr=esr & 0xFFFFFFFF, hsr_high=esr >> 32, far=far))

    def _internal_error(self, message: str, *data: int) -> KvmRun:
        return KvmRun(kvm.KVM_EXIT_INTERNAL_ERROR,
                      internal=kvm.InternalErrorExit(kvm.KVM_INTERNAL_ERROR_EMULATION, message, list(data)))

    def _stop(self, run: KvmRun) -> None:
        self._exit = run
        self.uc.emu_stop()

    def _mmio_exit(self, va: int, pa: int, size: int, is_write: bool, value: int, to_vmm: bool = True) -> None:
        """Record the access at PC as pending (the next run() completes it), and unless the VM
        serves it itself (a watched device), stop with KVM_EXIT_MMIO."""
        data = bytearray(8)
        if is_write:
            data[:size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        self._pending_mmio = kvm.MmioExit(phys_addr=pa, len=size, is_write=is_write, data=data)
        self._pending_mmio_va = va
        if to_vmm:
            self._stop(KvmRun(kvm.KVM_EXIT_MMIO, mmio=self._pending_mmio))
