"""The native run-loop hooks (_runctl.c) as seen from Python: a ctypes mirror of their
state, and their installation on a Unicorn instance.

`RunControl` owns one `struct runctl`. The vCPU thread reads and corrects it between
emu_start calls; any other thread may only call `request_stop()`, which sets one word that the
block hook polls (see "Threads" in the package docstring).
"""

from __future__ import annotations

import ctypes
import importlib.util
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from unicorn import UC_HOOK_BLOCK, UC_HOOK_CODE, UC_HOOK_EDGE_GENERATED, UC_HOOK_INSN, UcError
from unicorn import arm64_const as uca
from unicorn.unicorn_py3.unicorn import Uc, uclib

ACTION_UNICORN, ACTION_VMM, ACTION_VIRTUAL_COUNTER, ACTION_HOST_COUNTER = 0, 1, 2, 3
ACTION_IC_VA, ACTION_IC_ALL, ACTION_TLBI = 4, 5, 6  # SYS (op0 1), write table: IC IVAU, IC IALLU(IS), TLBI
# state.events: SEV/SEVL/WFE modelled in a run (a WFE may end it), or in a single step
EVENTS_ON, EVENTS_STEP = 1, 2
ACTION_XLATE = 7  # an MSR Unicorn executes that also lapses the hook's known-executable pages
ACTION_XLATE_TTBR1 = 8  # ... only if it moves TTBR1_EL1's table address
ACTION_XLATE_TTBR0 = 9  # TTBR0_EL1: Unicorn executes it; it ends the slice while a lower-half page is watched
EXEC_PAGES = 256
STOP_LIMIT, STOP_REQUEST, STOP_ICACHE, STOP_XLATE, STOP_WFE, STOP_SITES = 1, 2, 4, 8, 16, 32
SITES_NEW, SITES_TABLE = 32, 256  # WFE/SEV/SEVL sites: found and not yet hooked; the set of all found
IC_PAGES = 64
WATCH_LOW, WATCH_HIGH, WATCH_OVERFLOW = 1, 2, 4
WATCH_PAGES = 64
# (op0, op1, CRn, CRm, op2) of the instruction-cache maintenance instructions
IC_IALLUIS, IC_IALLU, IC_IVAU = (1, 0, 7, 1, 0), (1, 0, 7, 5, 0), (1, 3, 7, 5, 1)

# Virtual time: 1 instruction = 1 ns; the generic timer's counter ticks every 16 instructions
# (62.5 MHz, CNTFRQ_EL0 on QEMU's virt board). Keep in step with the C file.
NS_PER_INSN = 1
INSNS_PER_COUNTER_TICK = 16
COUNTER_FREQUENCY_HZ = 62_500_000


class CpReg(ctypes.Structure):
    """Unicorn's uc_arm64_cp_reg."""

    _fields_ = [("crn", ctypes.c_uint32), ("crm", ctypes.c_uint32), ("op0", ctypes.c_uint32),
                ("op1", ctypes.c_uint32), ("op2", ctypes.c_uint32), ("val", ctypes.c_uint64)]


# A UC_HOOK_CODE callback: (uc, address, size, user).
CODE_HOOK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_void_p)
SYSREG_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(CpReg),
                                   ctypes.c_void_p)


class _State(ctypes.Structure):
    """struct runctl."""

    _fields_ = [
        ("emu_stop", ctypes.c_void_p), ("reg_read", ctypes.c_void_p), ("reg_write", ctypes.c_void_p),
        ("vmm_read", ctypes.c_void_p), ("vmm_write", ctypes.c_void_p), ("vmm_user", ctypes.c_void_p),
        ("icount", ctypes.c_uint64), ("limit", ctypes.c_uint64),
        ("block_start", ctypes.c_uint64), ("block_insns", ctypes.c_uint64),
        ("split_pc", ctypes.c_uint64), ("split_insns", ctypes.c_uint64),
        ("countdown_end", ctypes.c_uint64), ("counter_offset", ctypes.c_uint64),
        ("in_block", ctypes.c_uint32), ("stop_reason", ctypes.c_uint32),
        ("stop_request", ctypes.c_uint32), ("split_armed", ctypes.c_uint32),
        ("ic_pending", ctypes.c_uint32), ("ic_all", ctypes.c_uint32),
        ("ic_count", ctypes.c_uint32), ("wfe_armed", ctypes.c_uint32), ("tlbi_count", ctypes.c_uint64),
        ("ctl", ctypes.c_void_p), ("exec_gen", ctypes.c_uint64), ("ic_inline", ctypes.c_uint64),
        ("ttbr1_baddr", ctypes.c_uint64),
        ("exec_page", ctypes.c_uint64 * EXEC_PAGES), ("exec_page_gen", ctypes.c_uint64 * EXEC_PAGES),
        ("ic_block", ctypes.c_uint64), ("ic_va", ctypes.c_uint64 * IC_PAGES),
        ("watch_flags", ctypes.c_uint32), ("watch_count", ctypes.c_uint32),
        ("watch_va", ctypes.c_uint64 * WATCH_PAGES), ("time_offset", ctypes.c_uint64),
        ("events", ctypes.c_uint32), ("local_event", ctypes.c_uint32), ("wfe_after", ctypes.c_uint64),
        ("sev_count", ctypes.c_uint64), ("wfe_count", ctypes.c_uint64), ("vmem_read", ctypes.c_void_p),
        ("site_new", ctypes.c_uint32), ("site_count", ctypes.c_uint32),
        ("site_va", ctypes.c_uint64 * SITES_NEW), ("site_table", ctypes.c_uint64 * SITES_TABLE),
        ("sysreg_action", (ctypes.c_uint8 * (1 << 16)) * 2),
    ]


def sysreg_key(op0: int, op1: int, crn: int, crm: int, op2: int) -> int:
    return ((op0 & 3) << 14) | ((op1 & 7) << 11) | ((crn & 15) << 7) | ((crm & 15) << 3) | (op2 & 7)


def _load_library() -> ctypes.CDLL:
    spec = importlib.util.find_spec("guestdbg.backends.unicorn_arm64._runctl")
    if spec is None or spec.origin is None:
        raise ImportError("guestdbg's native run-loop library is not built: "
                          "run ./scripts/setup.sh (pip install -e . compiles it with gcc)")
    lib = ctypes.CDLL(spec.origin)
    for name in ("runctl_sizeof", "runctl_offsetof_sysreg_action"):
        getattr(lib, name).restype = ctypes.c_uint64
    if lib.runctl_sizeof() != ctypes.sizeof(_State) or \
            lib.runctl_offsetof_sysreg_action() != _State.sysreg_action.offset:
        raise ImportError("guestdbg's native run-loop library does not match its Python mirror: rebuild it")
    return lib


_lib = _load_library()
_vmem_translate = uclib.uc_vmem_translate
_vmem_translate.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.POINTER(ctypes.c_uint64)]
_vmem_translate.restype = ctypes.c_int


def _fn_address(name: str) -> int:
    address = ctypes.cast(getattr(_lib, name), ctypes.c_void_p).value
    if address is None:
        raise ImportError(f"guestdbg's native run-loop library has no {name}")
    return address


class RunControl:
    """Instruction counting, slice limits, cross-thread stops and the system-register filter
    for one Unicorn instance."""

    def __init__(self, uc: Uc, on_mrs: Callable[[int, CpReg], int], on_msr: Callable[[int, CpReg], int]):
        self.uc = uc
        self.state = state = _State()
        state.countdown_end = (1 << 64) - 1  # no countdown running (runctl_event_hook looks)
        state.emu_stop = ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p).value
        state.reg_read = ctypes.cast(uclib.uc_reg_read, ctypes.c_void_p).value
        state.reg_write = ctypes.cast(uclib.uc_reg_write, ctypes.c_void_p).value
        state.ctl = ctypes.cast(uclib.uc_ctl, ctypes.c_void_p).value
        state.vmem_read = ctypes.cast(uclib.uc_vmem_read, ctypes.c_void_p).value
        # ctypes trampolines into Python; kept referenced for the life of the Uc.
        self._vmm_read = SYSREG_CALLBACK(lambda _uc, reg, cp, _u: on_mrs(reg, cp.contents))
        self._vmm_write = SYSREG_CALLBACK(lambda _uc, reg, cp, _u: on_msr(reg, cp.contents))
        state.vmm_read = ctypes.cast(self._vmm_read, ctypes.c_void_p).value
        state.vmm_write = ctypes.cast(self._vmm_write, ctypes.c_void_p).value
        state.limit = (1 << 64) - 1
        self._addr = ctypes.addressof(state)
        self._pa = ctypes.c_uint64()
        # Wakes a vCPU idle in WFI (wait_for_stop) when another thread calls request_stop().
        self._wakeup = threading.Event()
        self._alarm: _Alarm | None = None
        self._hook(UC_HOOK_BLOCK, "runctl_block_hook", 1, 0)
        self._hook(UC_HOOK_INSN, "runctl_mrs_hook", 1, 0, uca.UC_ARM64_INS_MRS)
        self._hook(UC_HOOK_INSN, "runctl_msr_hook", 1, 0, uca.UC_ARM64_INS_MSR)
        self._hook(UC_HOOK_INSN, "runctl_sys_hook", 1, 0, uca.UC_ARM64_INS_SYS)
        # TLBI (SYS, op0 1, CRn 8) only counts (for VcpuCore._sync_icache's cache); the IC
        # actions are set by VcpuCore.install_memory_hooks.
        for op1 in range(8):
            for crm in range(16):
                for op2 in range(8):
                    self.set_action((1, op1, 8, crm, op2), write=ACTION_TLBI)
        self.uc.ctl_flush_tb()  # code translated before the hooks existed would not call them

    def _hook(self, kind: int, fn: str, begin: int, end: int, *insn: int) -> int:
        handle = ctypes.c_size_t()
        status = uclib.uc_hook_add(self.uc._uch, ctypes.byref(handle), kind, ctypes.c_void_p(_fn_address(fn)),
                                   ctypes.c_void_p(self._addr), ctypes.c_uint64(begin), ctypes.c_uint64(end),
                                   *(ctypes.c_int(i) for i in insn))
        if status:
            raise UcError(status)
        return handle.value

    def add_countdown(self, start: int, insns: int, end: int) -> int:
        """A code hook over one block that stops before the instruction numbered `end`."""
        self.state.countdown_end = end
        return self._hook(UC_HOOK_CODE, "runctl_countdown_hook", start, start + 4 * insns - 1)

    def add_countdown_everywhere(self) -> int:
        """The countdown code hook on every instruction (while single-stepping). Code already
        translated does not call it: flush first. Set state.countdown_end before each run."""
        handle = self._hook(UC_HOOK_CODE, "runctl_countdown_hook", 1, 0)
        self.uc.ctl_flush_tb()
        return handle

    def watch_events(self) -> None:
        """Find WFE, SEV and SEVL as code is translated (the edge hook; see the C file), from
        now on: everything translated before is dropped, to be found."""
        self._hook(UC_HOOK_EDGE_GENERATED, "runctl_edge_hook", 1, 0)
        self.uc.ctl_flush_tb()

    def take_event_sites(self) -> list[int]:
        """The sites the edge hook found since the last call, each to get add_event_hook."""
        s = self.state
        sites = list(s.site_va[:s.site_new])
        s.site_new = 0
        return sites

    def add_event_hook(self, va: int) -> int:
        """The event hook on the one instruction at `va` (blocks translated from now on)."""
        return self._hook(UC_HOOK_CODE, "runctl_event_hook", va, va + 3)

    def add_python_code_hook(self, callback: Any, va: int) -> int:
        """A UC_HOOK_CODE on the one instruction at `va` calling `callback` (a CODE_HOOK the
        caller keeps referenced), without the unicorn module's per-call wrapper."""
        handle = ctypes.c_size_t()
        status = uclib.uc_hook_add(self.uc._uch, ctypes.byref(handle), UC_HOOK_CODE,
                                   ctypes.cast(callback, ctypes.c_void_p), None,
                                   ctypes.c_uint64(va), ctypes.c_uint64(va))
        if status:
            raise UcError(status)
        return handle.value

    def translate_exec(self, va: int) -> int | None:
        """The physical address the vCPU fetches `va` from now (Unicorn's own walk, no fault
        raised), or None if it cannot."""
        pa = self._pa
        if _vmem_translate(self.uc._uch, ctypes.c_uint64(va), 4, ctypes.byref(pa)):
            return None
        return pa.value

    def remove_hook(self, handle: int) -> None:
        status = uclib.uc_hook_del(self.uc._uch, ctypes.c_size_t(handle))
        if status:
            raise UcError(status)

    def set_action(self, key: tuple[int, int, int, int, int], *, read: int | None = None,
                   write: int | None = None) -> None:
        k = sysreg_key(*key)
        if read is not None:
            self.state.sysreg_action[0][k] = read
        if write is not None:
            self.state.sysreg_action[1][k] = write

    def note_executable(self, page: int) -> None:
        """`page` (kernel half) is executable at EL1 under the current translation: the SYS
        hook may drop its code itself on IC IVAU until a TLBI or translation-register write."""
        s = self.state
        slot = (page >> 12) % EXEC_PAGES
        s.exec_page[slot] = page
        s.exec_page_gen[slot] = s.exec_gen + 1

    def set_watched_pages(self, pages: set[int]) -> None:
        """The virtual pages watchpoints cover: translation-register writes and TLBIs that
        may move one of them end the slice with STOP_XLATE (see the C file)."""
        s = self.state
        flags = 0
        for va in pages:
            flags |= WATCH_HIGH if va >> 55 & 1 else WATCH_LOW
        listed = sorted(pages)[:WATCH_PAGES]
        for i, va in enumerate(listed):
            s.watch_va[i] = (va >> 12) & 0xFFF_FFFF_FFFF  # VA[55:12], as a TLBI by VA names it
        s.watch_count = len(listed)
        s.watch_flags = flags | (WATCH_OVERFLOW if len(pages) > WATCH_PAGES else 0)

    def icount_at(self, pc: int) -> int:
        """The instruction count before the instruction at `pc` of the block being run (from
        a code hook), as the C side computes it."""
        s = self.state
        if s.in_block and s.block_start <= pc < s.block_start + 4 * s.block_insns:
            return s.icount - s.block_insns + ((pc - s.block_start) >> 2)
        return s.icount

    def request_stop(self) -> None:
        """From any thread: end the running slice at the next block boundary (and wake the
        vCPU thread if it is idle in wait_for_stop)."""
        self.state.stop_request = 1
        self._wakeup.set()

    def wait_for_stop(self, timeout: float | None) -> bool:
        """On the vCPU thread, idle (WFI): sleep until request_stop() or `timeout` seconds.
        True if woken by a request. Never spins: the thread blocks on an Event."""
        self._wakeup.clear()
        if self.state.stop_request:
            return True
        return self._wakeup.wait(timeout)

    def stop_at(self, monotonic_ns: int | None) -> None:
        """Host-time deadline (`--clock host` timers): request_stop() once time.monotonic_ns()
        reaches `monotonic_ns`, from a helper thread started on first use. None cancels."""
        if self._alarm is None:
            if monotonic_ns is None:
                return
            self._alarm = _Alarm(self.request_stop)
        self._alarm.set(monotonic_ns)


class _Alarm:
    """One daemon thread that calls `fire` at a host-time deadline (the timers' kick timer)."""

    def __init__(self, fire: Callable[[], None]):
        # Weak: an idle alarm thread must not keep its vCPU (and its Unicorn) alive.
        self._fire = weakref.WeakMethod(fire)
        self._cond = threading.Condition()
        self._deadline: int | None = None
        threading.Thread(target=self._run, name="guestdbg-timer-alarm", daemon=True).start()

    def set(self, monotonic_ns: int | None) -> None:
        with self._cond:
            if monotonic_ns != self._deadline:
                self._deadline = monotonic_ns
                self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while True:
                if self._deadline is None:
                    self._cond.wait()
                    continue
                remaining = self._deadline - time.monotonic_ns()
                if remaining <= 0:
                    self._deadline = None
                    fire = self._fire()
                    if fire is None:
                        return
                    fire()
                else:
                    self._cond.wait(remaining / 1e9)
