"""The Arm debug architecture on the emulated vCPU: breakpoints, watchpoints, page traps.

Two register sets exist: the guest's own (DBGB/WCRn_EL1, MDSCR_EL1: `GuestDebugRegs`, reached by
MRS/MSR, which the system-register filter here intercepts, and by ONE_REG) and the debugger's
(KVM_SET_GUEST_DEBUG's kvm_guest_debug_arch). Exactly one set is live, and `_rearm` turns it
into Unicorn hooks and page protections: a breakpoint is a UC_HOOK_CODE bounded to its one
address, a watchpoint takes read or write permission from just the pages it covers. Hits
become a KVM_EXIT_DEBUG (the debugger's) or an exception entered into the guest (the guest's).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from unicorn import (
    UC_HOOK_CODE,
    UC_HOOK_MEM_READ,
    UC_HOOK_MEM_READ_PROT,
    UC_HOOK_MEM_WRITE_PROT,
    UC_MEM_WRITE_PROT,
    UC_PROT_ALL,
    UC_PROT_EXEC,
    UC_PROT_READ,
    UC_PROT_WRITE,
)
from unicorn import arm64_const as uca

from guestdbg import kvm
from guestdbg.arm import debugregs as dr
from guestdbg.arm import kvm_regs as kr
from guestdbg.arm.a64decode import is_multi_access
from guestdbg.backends.unicorn_arm64.arch import (
    CNTPCT_EL0,
    CNTVCT_EL0,
    CONTEXTIDR_EL1,
    DEBUG_REG_OP2,
    ID_AA64DFR0_EL1,
    KVM_GUESTDBG_VALID_MASK,
    MDSCR_EL1,
    PAGE_SIZE,
    TRANSLATION_REGS,
    UNICORN_BRPS,
    UNICORN_WRPS,
)
from guestdbg.backends.unicorn_arm64.exceptions import ExceptionEntry
from guestdbg.backends.unicorn_arm64.runctl import (
    ACTION_HOST_COUNTER,
    ACTION_UNICORN,
    ACTION_VIRTUAL_COUNTER,
    ACTION_VMM,
    ACTION_XLATE,
    ACTION_XLATE_TTBR0,
    ACTION_XLATE_TTBR1,
    CODE_HOOK as _CODE_HOOK,
    CpReg,
)
from guestdbg.backends.unicorn_arm64.timers import TIMER_REGS
from guestdbg.kvm import KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_USE_HW, KVM_GUESTDBG_USE_SW_BP, KvmRun
from guestdbg.vmapi import WatchTrap

# Writes of the translation registers, all executed by Unicorn; the C hook notes what they may
# change: TTBR0_EL1 never maps the kernel half, and TTBR1_EL1's ASID field changes nothing it
# knows (see VcpuCore._sync_icache). Any of them may move a watched page (STOP_XLATE).
_XLATE_ACTIONS = {kr.SYSREG_ENCODINGS["TTBR0_EL1"]: ACTION_XLATE_TTBR0,
                  kr.SYSREG_ENCODINGS["TTBR1_EL1"]: ACTION_XLATE_TTBR1}

if TYPE_CHECKING:
    from guestdbg.backends.unicorn_arm64.vm import Arm64Vm, MemorySlot


@dataclass
class GuestDebugRegs:
    """The guest's own debug registers (what MRS/MSR and ONE_REG see)."""

    bcr: list[int] = field(default_factory=lambda: [0] * 16)
    bvr: list[int] = field(default_factory=lambda: [0] * 16)
    wcr: list[int] = field(default_factory=lambda: [0] * 16)
    wvr: list[int] = field(default_factory=lambda: [0] * 16)
    mdscr: int = 0


def _slot_perms(slot: MemorySlot) -> int:
    return UC_PROT_READ | UC_PROT_EXEC if slot.readonly else UC_PROT_ALL


def _runs(pages: dict[int, int]) -> Iterator[tuple[int, int, int]]:
    """(base, size, perms) for each run of contiguous pages with equal permissions."""
    run: list[int] | None = None
    for page in sorted(pages):
        perms = pages[page]
        if run and run[0] + run[1] == page and run[2] == perms:
            run[1] += PAGE_SIZE
            continue
        if run:
            yield run[0], run[1], run[2]
        run = [page, PAGE_SIZE, perms]
    if run:
        yield run[0], run[1], run[2]


def _ignore_access(_uc: Any, _access: int, _va: int, _size: int, _value: int, _user: object) -> None:
    """UC_HOOK_MEM_READ callback that only exists to keep loads on Unicorn's checked path."""


class DebugHardware(ExceptionEntry):
    """KVM_SET_GUEST_DEBUG, the guest's debug registers, and the hooks and page protections
    that make whichever set is live fire."""

    def __init__(self, vm: Arm64Vm, vcpu_id: int = 0):
        super().__init__(vm, vcpu_id)
        self.id_aa64dfr0 = dr.id_aa64dfr0_el1(self.brps, self.wrps, self.ctx_cmps)
        self.guest_debug_regs = GuestDebugRegs()
        self.guestdbg_arch = kr.kvm_guest_debug_arch()
        # Decoded live debug state, rebuilt by _rearm().
        self._owner: str | None = None  # whose set is live: "debugger", "guest" or None
        self._bp_table: list[dr.Breakpoint | None] = []
        self._wp_table: list[dr.Watchpoint | None] = []
        self._bp_hooks: dict[int, int] = {}
        self._context_bps: list[dr.Breakpoint] = []
        self._context_hook: int | None = None
        self._protected: dict[int, int] = {}  # page -> perms we set (only pages differing from the slot's)
        self._stale_pages = False  # some of them are no longer watched (kept until a prune: _reprotect)
        self._decoded: dict[object, tuple[list, list]] = {}  # the debugger's registers, decoded (_rearm)
        self._sysreg_filter_key: object = None  # what _update_sysreg_filter last set the actions for
        self._traps: list[dr.Watchpoint] = []  # the debugger's page traps (WatchTrap)
        self._trap_specs: list[WatchTrap] = []
        self._armed_key: tuple[bool, bytes | None] | None = None  # _live_key() at the last _rearm
        self._read_hooks: dict[tuple[int, int], int] = {}  # (pa, size) run -> no-op UC_HOOK_MEM_READ forcing the checked path
        self._prot_hooks: dict[tuple[int, int], int] = {}  # (pa, size) run in RAM -> its access-fault hook
        self._rearm_pending = False
        self._reprotect_pending = False  # a translation under a watched page may have changed
        self._code_trap_words: list[tuple[int, int, int]] = []  # (pa, va, length) of the debugger's code traps
        # The debugger's filtered software breakpoints (set_break_filters): va -> (pa, hook).
        self._filters: dict[int, tuple[int, int]] = {}
        self._filter_points: dict[int, int] = {}  # va -> pa of _filters: what the last call set
        # Removed ones whose hooks stay until a set_break_filters with `prune` (see there).
        self._idle_filters: dict[int, int] = {}  # va -> hook
        self._filter_decide: Callable[[int], bool] | None = None
        self._filter_skip: tuple[int, int] | None = None
        self._filter_callback = _CODE_HOOK(self._on_filtered_break)  # kept referenced for the Uc's life

    # ------------------------------------------------------------------ KVM_SET_GUEST_DEBUG
    def set_guest_debug(self, control: int, arch: kr.kvm_guest_debug_arch | None = None) -> None:
        """KVM_SET_GUEST_DEBUG. Unknown control bits are EINVAL; without ENABLE, debug is off."""
        if control & ~KVM_GUESTDBG_VALID_MASK:
            raise kvm.einval(f"unsupported guest debug control bits {control & ~KVM_GUESTDBG_VALID_MASK:#x}")
        if control & KVM_GUESTDBG_ENABLE:
            self.guestdbg_control = control
            if control & KVM_GUESTDBG_USE_HW:
                arch = arch or kr.kvm_guest_debug_arch()
                ctypes.memmove(ctypes.addressof(self.guestdbg_arch), ctypes.addressof(arch), ctypes.sizeof(arch))
        else:
            self.guestdbg_control = 0
        # Stepping toggles SINGLESTEP on every stop: rebuild hooks and protections only when
        # the live breakpoint/watchpoint set itself changed.
        if self._live_key() != self._armed_key:
            self._rearm()

    def _live_key(self) -> tuple[bool, bytes | None]:
        owns = self.debugger_owns_hw
        return owns, bytes(self.guestdbg_arch) if owns else None

    def set_watch_traps(self, traps: list[WatchTrap]) -> None:
        """Replace the debugger's page traps (see WatchTrap). Not a KVM ioctl: on KVM the same
        effect comes from read-only memory slots."""
        traps = list(traps)
        if traps == self._trap_specs:
            return
        self._trap_specs = traps
        # Code traps (over software breakpoints) trap stores only. Trapping loads too would
        # let a guest that reads its own code (Linux's ftrace checks each instruction before
        # it patches it) be shown the original, but any UC_HOOK_MEM_READ, even bounded to one
        # page, makes every load in the guest take Unicorn's slow path (1.8x on a Linux boot).
        self._traps = [dr.Watchpoint(index=-1 - i, ranges=((t.start, t.end),), loads=t.loads, stores=t.stores,
                                     el0=True, el1=True, linked=False, lbn=0) for i, t in enumerate(traps)]
        self._reprotect()

    def set_break_filters(self, points: dict[int, int], decide: Callable[[int], bool] | None,
                          skip: tuple[int, int] | None = None, prune: bool = False) -> None:
        """guestdbg extension: software breakpoints decided in the run, with no instruction
        patched. `points` maps each virtual address to the physical address it had when the
        breakpoint was set; before the instruction at such an address runs, while the debugger
        has KVM_GUESTDBG_USE_SW_BP on and the address still translates to that physical
        address, `decide(va)` is called in the run (the vCPU's hook, under whatever the caller
        holds): True stops the run before the instruction with the exit a BRK #0 there would
        give, False lets the instruction run as if nothing were there. `skip`: an address
        (address, instruction count): no filter fires there while the instruction count is
        that (resuming from the breakpoint stopped at, which needs no step: nothing is patched).

        Each point is a UC_HOOK_CODE bounded to its one instruction, so nothing else pays for
        it; adding or removing one drops only that instruction's translations. A point removed
        keeps its hook, idle (it returns at once), until a call with `prune`: gdb removes every
        breakpoint at each stop and inserts it again before it resumes (z0, the step over it,
        Z0), and a hook taken out and put back costs the instruction's translation twice."""
        self._filter_decide = decide
        self._filter_skip = skip
        if prune and self._stale_pages:
            self._reprotect(prune=True)
        if points == self._filter_points and not (prune and self._idle_filters):
            return
        for va in [va for va in self._filters if va not in points]:
            self._idle_filters[va] = self._filters.pop(va)[1]
        for va, pa in points.items():
            old = self._filters.get(va)
            if old is not None:
                self._filters[va] = (pa, old[1])
                continue
            hook = self._idle_filters.pop(va, None)
            if hook is not None:  # still in the translations: nothing to drop
                self._filters[va] = (pa, hook)
                continue
            self._filters[va] = (pa, self._runctl.add_python_code_hook(self._filter_callback, va))
            self._drop_code_at(va)  # code translated before the hook existed would not call it
        self._filter_points = dict(points)
        if prune:
            for va, hook in self._idle_filters.items():
                self._runctl.remove_hook(hook)
                self._drop_code_at(va)
            self._idle_filters.clear()

    def _on_filtered_break(self, _uc: Any, address: int, _size: int, _user: Any) -> None:
        try:
            point = self._filters.get(address)
            control = self.guestdbg_control
            skip = self._filter_skip
            if (point is None or address == self._suppress_pc
                    or (skip is not None and address == skip[0] and self._runctl.icount_at(address) == skip[1])
                    or not control & KVM_GUESTDBG_ENABLE or not control & KVM_GUESTDBG_USE_SW_BP
                    or self._at_limit(address) or self._stop_pending()):
                return
            # Breakpoints are the physical instruction's (a BRK patch would be): at the same
            # virtual address in another address space there is none.
            if self._runctl.translate_exec(address) != point[0]:
                return
            decide = self._filter_decide
            if decide is not None and decide(address):
                self._stopped_at = address
                self._stop(self._debug_exit(dr.esr_brk64(0)))
        except BaseException as e:  # noqa: BLE001 - a ctypes callback must not raise: run() re-raises it
            self._hook_failed(e)

    @property
    def debugger_owns_hw(self) -> bool:
        c = self.guestdbg_control
        return bool(c & KVM_GUESTDBG_ENABLE and c & KVM_GUESTDBG_USE_HW)

    # ------------------------------------------------------------------ the guest's registers
    def _set_contextidr(self, value: int) -> None:
        self.uc.cpr_write(*CONTEXTIDR_EL1, value)

    def _contextidr(self) -> int:
        return self.uc.cpr_read(*CONTEXTIDR_EL1) & 0xFFFFFFFF

    def _write_guest_debug_reg(self, kind: str, n: int, value: int) -> None:
        g = self.guest_debug_regs
        if kind == "mdscr":
            g.mdscr = value
        else:
            getattr(g, kind)[n] = value
        if not self.debugger_owns_hw:
            self._rearm_pending = True

    # ------------------------------------------------------------------ arming
    def _live_debug_regs(self) -> tuple[str, list[int], list[int], list[int], list[int]] | None:
        if self.debugger_owns_hw:
            a = self.guestdbg_arch
            return "debugger", list(a.dbg_bcr), list(a.dbg_bvr), list(a.dbg_wcr), list(a.dbg_wvr)
        g = self.guest_debug_regs
        if dr.MDSCR_EL1.MDE.extract(g.mdscr):
            return "guest", g.bcr, g.bvr, g.wcr, g.wvr
        return None

    def _rearm(self) -> None:
        """Rebuild hooks and page protections from whichever debug register set is live."""
        self._rearm_pending = False
        self._armed_key = self._live_key()
        live = self._live_debug_regs()
        self._owner = live[0] if live else None
        if live:
            _, bcr, bvr, wcr, wvr = live
            # The debugger's registers alternate between a few states (gdb takes a watchpoint
            # out and puts it back around each step): their decoding is kept by register image.
            tables = self._decoded.get(self._armed_key) if live[0] == "debugger" else None
            if tables is None:
                tables = ([dr.decode_breakpoint(i, bcr[i], bvr[i], brps=self.brps, ctx_cmps=self.ctx_cmps)
                           for i in range(self.brps)],
                          [dr.decode_watchpoint(i, wcr[i], wvr[i]) for i in range(self.wrps)])
                if live[0] == "debugger":
                    if len(self._decoded) >= 8:
                        self._decoded.clear()
                    self._decoded[self._armed_key] = tables
            self._bp_table, self._wp_table = list(tables[0]), list(tables[1])
        else:
            self._bp_table, self._wp_table = [], []
        address_kinds = (dr.BT_UNLINKED_ADDRESS, dr.BT_LINKED_ADDRESS)
        wanted = {bp.address for bp in self._bp_table if bp and bp.bt in address_kinds}
        for addr in set(self._bp_hooks) - wanted:
            self.uc.hook_del(self._bp_hooks.pop(addr))
            self._drop_code_at(addr)
        for addr in wanted - set(self._bp_hooks):
            self._bp_hooks[addr] = self.uc.hook_add(UC_HOOK_CODE, self._on_breakpoint_address, None, addr, addr)
            # Code translated before the hook existed would never call it.
            self._drop_code_at(addr)
        self._context_bps = [bp for bp in self._bp_table if bp and bp.bt == dr.BT_UNLINKED_CONTEXT]
        self._reprotect()

    def _reprotect(self, prune: bool = False) -> None:
        """Take read/write permission away from the pages live watchpoints cover, and take the
        devices they cover off Unicorn's inline path. Done again whenever the guest may have
        moved a watched page (_translation_changed). A RAM page no longer watched keeps its
        protection (its accesses trap, find no watchpoint and go ahead) until a call with
        `prune` (set_break_filters'): gdb takes a watchpoint out and puts it back around every
        step, and each change of a page's protection and its hooks costs more than the trap."""
        self._reprotect_pending = False
        want: dict[int, int] = {}
        watched_devices: set[int] = set()
        watched_vas: set[int] = set()
        # The physical words under the code traps (a BRK never crosses a page).
        self._code_trap_words = [(page | trap.start % PAGE_SIZE, trap.start, trap.end - trap.start)
                                 for trap in self._trap_specs if trap.code
                                 if (page := self._translate_page(trap.start & ~(PAGE_SIZE - 1))) is not None]
        for wp in self._wp_table + self._traps:
            if wp is None:
                continue
            for va_page in wp.pages(PAGE_SIZE):
                watched_vas.add(va_page)
                pa_page = self._translate_page(va_page)
                if pa_page is None:
                    continue
                watched_devices.update(id(dev) for dev in self.vm.mmio_devices
                                       if dev.base < pa_page + PAGE_SIZE and pa_page < dev.base + dev.size)
                slot = self.vm.slot_for(pa_page)
                if slot is None:
                    continue
                perms = want.get(pa_page, _slot_perms(slot))
                if wp.loads:
                    perms &= ~UC_PROT_READ
                if wp.stores:
                    perms &= ~UC_PROT_WRITE
                want[pa_page] = perms
        for dev in self.vm.mmio_devices:
            self.vm.map_device(dev, id(dev) not in watched_devices)
        stale = {page: perms for page, perms in self._protected.items() if page not in want} if not prune else {}
        want.update(stale)
        self._stale_pages = bool(stale)
        changes = {page: _slot_perms(slot) for page in set(self._protected) - set(want)
                   if (slot := self.vm.slot_for(page)) is not None}
        changes.update({page: perms for page, perms in want.items() if self._protected.get(page) != perms})
        for base, size, perms in _runs(changes):
            self.uc.mem_protect(base, size, perms)
        self._protected = want
        # Unicorn checks a page's read permission only on its slow path: once any access (an
        # allowed read, a store, a fetch) has filled the TLB entry, loads there run unchecked. A
        # bounded UC_HOOK_MEM_READ on the page keeps every load on the checked path. Unicorn
        # checks hook bounds against the physical address, so bound them by physical pages.
        read_runs = {(base, size) for base, size, perms in _runs(want) if not perms & UC_PROT_READ}
        for run in set(self._read_hooks) - read_runs:
            self.uc.hook_del(self._read_hooks.pop(run))
        added = read_runs - set(self._read_hooks)
        for base, size in added:
            self._read_hooks[(base, size)] = self.uc.hook_add(
                UC_HOOK_MEM_READ, _ignore_access, None, base, base + size - 1)
        if added:
            self.uc.ctl_flush_tb()  # code translated before a hook exists would not call it
        # The access-fault hook leaves RAM out (VcpuCore.install_memory_hooks): protected RAM
        # pages get one bounded to them. (Unicorn consults it from its TLB-fill path: no flush.)
        prot_runs = {(base, size) for base, size, _ in _runs({page: perms for page, perms in want.items()
                                                              if self._in_ram(page)})}
        self._runctl.set_watched_pages(watched_vas)
        for run in set(self._prot_hooks) - prot_runs:
            self.uc.hook_del(self._prot_hooks.pop(run))
        for base, size in prot_runs - set(self._prot_hooks):
            self._prot_hooks[(base, size)] = self.uc.hook_add(
                UC_HOOK_MEM_READ_PROT | UC_HOOK_MEM_WRITE_PROT, self._on_protected_access, None, base, base + size - 1)
        self._update_sysreg_filter()

    def _translation_changed(self) -> None:
        """The C hooks ended the slice at a translation-register write or TLBI that may move a
        watched page (STOP_XLATE): place the watchpoints afresh before the guest goes on."""
        self._reprotect_pending = True

    def _ram_changed(self) -> None:
        for handle in self._prot_hooks.values():
            self.uc.hook_del(handle)
        self._prot_hooks.clear()
        self._protected = {}  # the slots were mapped afresh, with their own permissions
        self._rearm()

    # ------------------------------------------------------------------ debug events
    def _debug_events_enabled(self, el: int) -> bool:
        """May a guest-owned breakpoint or watchpoint generate an exception right now?"""
        if self._owner == "debugger":
            return True  # routed to the hypervisor: the guest's masks do not apply
        mdscr = self.guest_debug_regs.mdscr
        if not dr.MDSCR_EL1.MDE.extract(mdscr):
            return False
        if el == 0:
            return True
        return bool(dr.MDSCR_EL1.KDE.extract(mdscr)) and not self._pstate() & dr.PSTATE_D

    def _debug_event(self, esr_for_lower_el: Callable[[bool], int], *, far: int | None, at_pc: int,
                     owner: str | None = None) -> None:
        """A live breakpoint or watchpoint fired before the instruction at `at_pc` completed."""
        el = self.current_el()
        if (owner or self._owner) == "debugger":
            self._stop(self._debug_exit(esr_for_lower_el(True), far or 0))
        else:
            self._guest_exception = (esr_for_lower_el(el == 0), far, at_pc)
            self.uc.emu_stop()

    # ------------------------------------------------------------------ breakpoints
    def _on_breakpoint_address(self, uc: Any, address: int, size: int, _user: object) -> None:
        if address == self._suppress_pc or self._at_limit(address):
            return
        el = self.current_el()
        if not self._debug_events_enabled(el):
            return
        ctx = self._contextidr() if any(bp and bp.bt == dr.BT_LINKED_ADDRESS for bp in self._bp_table) else 0
        for bp in self._bp_table:
            if bp and bp.bt in (dr.BT_UNLINKED_ADDRESS, dr.BT_LINKED_ADDRESS) and \
                    dr.breakpoint_matches(self._bp_table, bp, pc=address, el=el, contextidr=ctx):
                self._debug_event(dr.esr_breakpoint, far=None, at_pc=address)
                return

    def _check_context_breakpoints(self) -> KvmRun | None:
        """Unlinked context-ID breakpoints match every instruction while CONTEXTIDR_EL1 matches."""
        if not self._context_bps:
            self._set_context_hook(False)
            return None
        ctx, el, pc = self._contextidr(), self.current_el(), self.pc
        live = [bp for bp in self._context_bps if bp.context_id == ctx]
        if any(dr.breakpoint_matches(self._bp_table, bp, pc=pc, el=el, contextidr=ctx) for bp in live) \
                and self._debug_events_enabled(el):
            if self._owner == "debugger":
                return self._debug_exit(dr.esr_breakpoint(True))
            self._take_exception(dr.esr_breakpoint(el == 0), far=None, preferred_return=pc)
            return None
        # Matching context but the wrong EL for now: watch every instruction until that changes.
        self._set_context_hook(bool(live))
        return None

    def _set_context_hook(self, on: bool) -> None:
        if on and self._context_hook is None:
            self._context_hook = self.uc.hook_add(UC_HOOK_CODE, self._on_context_step, None, 1, 0)
            self.uc.ctl_flush_tb()
        elif not on and self._context_hook is not None:
            self.uc.hook_del(self._context_hook)
            self._context_hook = None
            self.uc.ctl_flush_tb()

    def _on_context_step(self, uc: Any, address: int, size: int, _user: object) -> None:
        if self._at_limit(address):
            return
        ctx, el = self._contextidr(), self.current_el()
        if any(dr.breakpoint_matches(self._bp_table, bp, pc=address, el=el, contextidr=ctx)
               for bp in self._context_bps):
            uc.emu_stop()  # run() re-checks before this instruction and takes the event

    # ------------------------------------------------------------------ watchpoints
    def _watch_hit(self, is_write: bool, va: int, size: int) -> str | None:
        """Who an access hits: "debugger" (a page trap, or its hardware watchpoints), "guest"
        (the guest's own watchpoints), or None. Honours LSC, PAC and links."""
        for trap in self._traps:
            if (trap.stores if is_write else trap.loads) and trap.overlaps(va, size):
                return "debugger"
        if not self._wp_table:
            return None
        el = self.current_el()
        if not self._debug_events_enabled(el):
            return None
        ctx = self._contextidr()
        for wp in self._wp_table:
            if wp and dr.watchpoint_matches(self._bp_table, wp, addr=va, size=size, is_write=is_write,
                                            el=el, contextidr=ctx):
                return self._owner
        return None

    def _hit(self, is_write: bool, va: int, pa: int, size: int) -> tuple[str | None, int]:
        """(_watch_hit's owner, the address to report). A store over one of the debugger's
        software breakpoints through another virtual address (Linux patches its text through
        the fixmap or the linear map) is the debugger's too, reported at the breakpoint's own
        address, so that the manager keeps its breakpoint over the new code."""
        owner = self._watch_hit(is_write, va, size)
        if owner is not None or not is_write:
            return owner, va
        for trap_pa, trap_va, length in self._code_trap_words:
            if trap_pa < pa + size and pa < trap_pa + length:
                return "debugger", trap_va + max(0, pa - trap_pa)
        return None, va

    def _on_protected_access(self, uc: Any, access: int, pa: int, size: int, value: int, _user: object) -> bool:
        is_write = access == UC_MEM_WRITE_PROT
        va = self._va_of_access(pa)
        if self._probe is not None:  # learning a multi-access instruction's accesses
            self._probe.append((is_write, va, pa, size, value))
            return True  # reads go ahead; stores to a protected page are dropped by Unicorn
        pc = self.pc
        slot = self.vm.slot_for(pa)
        if pc != self._suppress_pc:
            if is_multi_access(self._insn_at(pc)):
                self._multi_access_pc = pc
                return False
            owner, far = self._hit(is_write, va, pa, size)
            if owner is not None:
                self._debug_event(lambda lower: dr.esr_watchpoint(lower, wnr=is_write), far=far, at_pc=pc,
                                  owner=owner)
                return False
        if is_write and slot is not None and slot.readonly:
            if pc == self._suppress_pc:
                return True  # completing a ROM write the VMM has seen: drop it
            self._mmio_exit(va, pa, size, True, value)
            return False
        if is_write:
            self._store(va, pa, size, value)
        return True

    def _store(self, va: int, pa: int, size: int, value: int) -> None:
        """Do a store Unicorn was not allowed to do, as the guest would have. Over one of the
        debugger's software breakpoints (a code trap) the guest is rewriting code: the slice
        ends at the next block and the page's translations are dropped by physical address
        (_emu). Never
        by `va`: remove_cache walks its argument as an instruction fetch, and a data address
        (the fixmap Linux patches text through is PXN) made Unicorn raise a prefetch abort in
        the guest."""
        self.uc.mem_write(pa, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))
        page = pa & ~(PAGE_SIZE - 1)
        if any(trap_pa & ~(PAGE_SIZE - 1) == page for trap_pa, _, _ in self._code_trap_words):
            self._rewritten_code.add(page)
            # End the slice at the next block: emu_stop() from a memory hook makes Unicorn
            # run the store again.
            self._runctl.state.stop_request = 1

    def _run_multi_access_instruction(self) -> KvmRun | None:
        """Run a pair/SIMD access on a watched page once with its stores held back, then either
        roll back (a watchpoint hit: nothing happened) or apply the stores (no hit)."""
        pc = self._multi_access_pc
        assert pc is not None  # the run loop calls this only when a hook set it
        self._multi_access_pc = None
        saved, saved_icount = self.uc.context_save(), self.icount
        self._probe = []
        self._suppress_pc = pc
        try:
            fault = self._execute(saved_icount + 1)
        finally:
            accesses, self._probe, self._suppress_pc = self._probe, None, None
        for is_write, va, pa, size, _ in accesses:
            owner, hit_at = self._hit(is_write, va, pa, size)
            if owner is not None:
                self.uc.context_restore(saved)
                self.set_icount(saved_icount)
                self._pending_exception = None
                self._exit = None
                self._debug_event(lambda lower: dr.esr_watchpoint(lower, wnr=is_write), far=hit_at, at_pc=pc,
                                  owner=owner)
                if self._exit is not None:
                    return self._exit
                assert self._guest_exception is not None  # _debug_event recorded one or the other
                esr, far, ret = self._guest_exception
                self._take_exception(esr, far=far, preferred_return=ret)
                return None
        for is_write, va, pa, size, value in accesses:
            if is_write:
                slot = self.vm.slot_for(pa)
                if slot is not None and not slot.readonly:
                    self._store(va, pa, size, value)
        if self._exit is not None:
            return self._exit
        taken, result = self._take_pending_exception()
        if taken:
            return result
        if fault is not None:
            return self._internal_error(f"emulation failed at PC={pc:#x}: {fault}")
        return None

    # ------------------------------------------------------------------ system registers
    # Every MRS/MSR goes to the C hook first; only registers this table sends to the VMM reach
    # Python. The table changes with the debug state, and takes effect at once (it is read at
    # run time, not baked into translations).
    def _init_sysreg_filter(self) -> None:
        """The registers that always go to the VMM: the guest's own debug registers."""
        rc = self._runctl
        for crm in range(16):
            for op2 in DEBUG_REG_OP2:
                rc.set_action((2, 0, 0, crm, op2), read=ACTION_VMM, write=ACTION_VMM)
        rc.set_action(MDSCR_EL1, read=ACTION_VMM, write=ACTION_VMM)
        rc.set_action(ID_AA64DFR0_EL1, read=ACTION_VMM)
        # The generic timers' CTL/CVAL/TVAL (timers.py): a few accesses per timer tick.
        for key in TIMER_REGS:
            rc.set_action(key, read=ACTION_VMM, write=ACTION_VMM)
        self._sysreg_filter_key = None
        self._update_sysreg_filter()

    def _update_sysreg_filter(self) -> None:
        """The registers that go to the VMM depending on the clock and the armed debug state
        (set again only when those change: every re-arm asks)."""
        wanted = (self._clock_mode, bool(self._context_bps))
        if wanted == self._sysreg_filter_key:
            return
        self._sysreg_filter_key = wanted
        rc = self._runctl
        counter = ACTION_HOST_COUNTER if self._clock_mode == "host" else ACTION_VIRTUAL_COUNTER
        rc.set_action(CNTVCT_EL0, read=counter)
        rc.set_action(CNTPCT_EL0, read=counter)
        # A CONTEXTIDR_EL1 write can start an unlinked context-ID breakpoint's match, which is
        # checked between slices; linked ones read it when their address matches. Linux writes
        # it at every context switch (PID_IN_CONTEXTIDR): only end the slice when it matters.
        rc.set_action(CONTEXTIDR_EL1, write=ACTION_VMM if self._context_bps else ACTION_UNICORN)
        for key in TRANSLATION_REGS:
            rc.set_action(key, write=_XLATE_ACTIONS.get(key, ACTION_XLATE))

    def _on_mrs(self, reg: int, cp: CpReg) -> int:
        """A read of a register the VMM models. Returns 1 when it supplied the value."""
        try:
            key = (cp.op0, cp.op1, cp.crn, cp.crm, cp.op2)
            if key in TIMER_REGS:
                if reg != uca.UC_ARM64_REG_XZR:
                    self.uc.reg_write(reg, self.timers.read(key, self.counter(self.pc)))
                return 1
            if key[:3] == (2, 0, 0) and cp.op2 in DEBUG_REG_OP2:
                kind = DEBUG_REG_OP2[cp.op2]
                return self._debug_reg_access(reg, kind, cp.crm, None)
            if key == MDSCR_EL1:
                self.uc.reg_write(reg, self.guest_debug_regs.mdscr)
                return 1
            if key == ID_AA64DFR0_EL1:
                self.uc.reg_write(reg, self.id_aa64dfr0)
                return 1
            return 0
        except BaseException as e:  # noqa: BLE001 - a ctypes callback must not raise: run() re-raises it
            return self._hook_failed(e)

    def _on_msr(self, reg: int, cp: CpReg) -> int:
        """A write to a register the VMM models or watches. Returns 1 when it consumed it."""
        try:
            key = (cp.op0, cp.op1, cp.crn, cp.crm, cp.op2)
            if key in TIMER_REGS:
                self.timers.write(key, cp.val, self.counter(self.pc))
                # The slice's limit was set for the old deadline, and the level may have
                # changed: end the slice after this MSR (it ends its block) to re-evaluate.
                self.uc.emu_stop()
                return 1
            if key[:3] == (2, 0, 0) and cp.op2 in DEBUG_REG_OP2:
                return self._debug_reg_access(reg, DEBUG_REG_OP2[cp.op2], cp.crm, cp.val)
            if key == MDSCR_EL1:
                self._write_guest_debug_reg("mdscr", 0, cp.val)
                if self._rearm_pending:
                    self.uc.emu_stop()  # an MSR ends its block: the slice ends right after it
                return 1
            if key == CONTEXTIDR_EL1:
                self.uc.emu_stop()  # let the write happen, then re-check context-ID breakpoints
            return 0
        except BaseException as e:  # noqa: BLE001 - a ctypes callback must not raise: run() re-raises it
            return self._hook_failed(e)

    def _debug_reg_access(self, reg: int, kind: str, n: int, value: int | None) -> int:
        """MRS (value None) or MSR of the guest's DBG{B,W}{V,C}Rn_EL1."""
        implemented = self.brps if kind[0] == "b" else self.wrps
        in_unicorn = n < (UNICORN_BRPS if kind[0] == "b" else UNICORN_WRPS)
        if n >= implemented:
            if not in_unicorn:
                return 0  # Unicorn has no such register either: it raises UNDEF, precisely
            # Unicorn has it and would read or write it: UNDEF by hand. An MSR ends its block,
            # so this is exact; after an MRS the rest of its block runs first (a documented
            # imprecision, reachable only with fewer slots than Unicorn's 6/4).
            pc = self.pc
            self._guest_exception = (dr.esr_unknown(), None, pc)
            self._stopped_at = pc
            self.uc.emu_stop()
            return 1
        if value is None:
            if reg != uca.UC_ARM64_REG_XZR:
                self.uc.reg_write(reg, getattr(self.guest_debug_regs, kind)[n])
        else:
            self._write_guest_debug_reg(kind, n, value)
            if self._rearm_pending:
                self.uc.emu_stop()
        if not in_unicorn:
            # Skipping an instruction Unicorn translated as UNDEF falls off the end of its
            # block, and Unicorn would resume at the block's start: resume past it instead.
            # (A PC write from a hook must end the emu_start: see _on_exception.)
            self.uc.reg_write(uca.UC_ARM64_REG_PC, self.pc + 4)
            self.uc.emu_stop()
        return 1
