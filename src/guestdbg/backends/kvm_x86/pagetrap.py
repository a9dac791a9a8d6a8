"""Watchpoints without debug registers: page traps, and the fetch assist for code on their pages.

PAGE TRAPS
----------
`X86Vcpu.set_watch_traps(traps)` takes the manager's WatchTraps (guest-virtual [start, end),
loads and/or stores). Their pages are translated (KVM_TRANSLATE) and `X86Vm.set_trap_pages`
(memory.py) re-lays the KVM memory slots under them, leaving `X86Vm.slots` unchanged:

- a page whose *stores* are trapped gets a KVM_MEM_READONLY slot of its own;
- a page whose *loads* are trapped gets no slot at all (a hole), so loads and stores exit.

Every access to such a page comes back as KVM_EXIT_MMIO, which run() serves before the board
sees it: a store is applied to RAM with write_phys (on x86 KVM reports a store to a read-only
slot *after* the instruction: RIP is past it and the data is not yet written), a load gets its
data from RAM. The access is then checked against the exact watched byte ranges:

- a miss goes on transparently (run() re-enters KVM_RUN);
- a hit completes the instruction (KVM_RUN with immediate_exit = 1) and comes back as a
  KVM_EXIT_DEBUG exit whose payload is a `PageTrapExit` (exception 1, `page_trap` naming the
  guest-virtual address, size and direction). Like x86 data breakpoints, page-trap hits are
  reported AFTER the access: RIP is past the instruction and the manager must not re-run it.

While single-stepping (KVM_GUESTDBG_SINGLESTEP), an instruction whose access exits to the VMM
(an I/O port, MMIO or a page trap) is completed with immediate_exit = 1 and reported as the
step (KVM_EXIT_DEBUG, exception 1, DR6.BS), as `finish_step()` does: on kvm_pvm hosts KVM
would otherwise run on past the instruction without a step exit.

FETCH ASSIST (code on a load-trapped page)
------------------------------------------
KVM cannot fetch an instruction from a page with no slot: KVM_RUN ends in
KVM_EXIT_INTERNAL_ERROR with RIP on that instruction (on kvm_pvm, which emulates CPL0 code,
always). A watch on data that shares a page with code (small guests put .bss right after .text)
would make the guest unrunnable, so run() takes over: when the instruction at RIP has bytes on
a load-trapped page, the vCPU

1. decodes it (`decode.decode(...).loads`: explicit operands, pop/ret/leave/iret/xlat) and
   translates its loads;
2. gives the page a slot again, read-only if stores to it are trapped (so its stores still
   exit and are checked as above), and single-steps the instruction (KVM_GUESTDBG_SINGLESTEP
   added to the debugger's own control, with the same debug registers);
3. after the step checks the decoded loads against the watched ranges: a hit is reported as a
   page-trap hit (after the access, as always); otherwise, while the next instruction is
   fetched from a load-trapped page too, it goes on stepping (the slots stay as they are),
   and once RIP leaves those pages the traps are laid out again and the guest runs freely.

An I/O or MMIO exit in the middle goes to the board as usual; `stepping` tells it to finish
the instruction with finish_step(), which carries on the assist. Anything else (a breakpoint,
a kick, a fault, a change of debug state or traps by the debugger) ends the assist first, so
the debugger never sees its layout. Code on such a page runs one instruction per KVM_RUN:
slower, never wrong. Instruction fetches themselves are never reported as loads.

Limits: a load trap on a page holding the guest's page tables would leave KVM's page walk
nothing to read (the guest triple-faults), so X86DebugArch refuses such a watch when it is
placed (`page_table_pages`); `decode` does not model every implicit read (enter's nested
frames, a bit test's offset past its operand).
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from guestdbg import kvm
from guestdbg.backends.kvm_x86 import decode
from guestdbg.backends.kvm_x86 import uapi as u
from guestdbg.backends.kvm_x86.ioctl import PAGE_SIZE
from guestdbg.backends.kvm_x86.memory import TRAP_NOSLOT, TRAP_READONLY
from guestdbg.backends.kvm_x86.regs import RegisterGroups
from guestdbg.kvm import KvmRun
from guestdbg.vmapi import WatchTrap

DR6_BS = 1 << 14
DR6_STEP = 0xFFFF0FF0 | DR6_BS  # what a single-step #DB leaves in DR6 (reserved bits read as 1)


@dataclass(frozen=True)
class PageTrapHit:
    """A page-trap watch hit: guest-virtual address and size of the access, its direction."""

    addr: int
    size: int
    is_write: bool
    pa: int


@dataclass
class PageTrapExit(kvm.DebugExitX86):
    """The KVM_EXIT_DEBUG payload run() returns for a page-trap hit (exception 1, DR6 0)."""

    page_trap: PageTrapHit | None = None


@dataclass(frozen=True)
class _PaTrap:
    pa_lo: int
    pa_hi: int
    va_lo: int
    loads: bool
    stores: bool
    code: bool


@dataclass
class _FetchAssist:
    """Instructions being stepped from load-trapped pages (see FETCH ASSIST)."""

    pages: set[int]                         # load-trapped pages given a slot for the fetch
    loads: list[tuple[int, int, int]]       # the stepped instruction's loads: (pa, size, va)
    tlb: dict[int, int | None]              # va page -> pa page, kept while the assist lasts


class PageTraps(RegisterGroups):
    """The page-trap half of X86Vcpu (see PAGE TRAPS and FETCH ASSIST above)."""

    kvm_run: u.kvm_run
    guestdbg_control: int
    guestdbg_arch: u.kvm_guest_debug_arch
    _kick_pending: bool
    _trap_specs: list[WatchTrap]
    _pa_traps: list[_PaTrap]
    _trap_layout: dict[int, str]  # the traps' pages, as set_trap_pages gets them
    _assist: _FetchAssist | None
    page_trap_exits: int  # MMIO exits served for page traps (hits and misses)
    fetch_assists: int    # instructions stepped from load-trapped pages (FETCH ASSIST)

    if TYPE_CHECKING:  # the vCPU core's, in vcpu.py
        def run(self) -> KvmRun: ...
        def _run_once(self) -> KvmRun: ...
        def _program_debug(self, control: int, arch: u.kvm_guest_debug_arch | None) -> u.kvm_guest_debug_arch: ...
        def kvm_translate(self, linear_address: int) -> tuple[int, bool] | None: ...
        @property
        def pc(self) -> int: ...

    def _init_page_traps(self) -> None:
        self._trap_specs = []
        self._pa_traps = []
        self._trap_layout = {}
        self._assist = None
        self.page_trap_exits = 0
        self.fetch_assists = 0

    def _trapped(self, out: KvmRun) -> kvm.MmioExit | None:
        """The MMIO access of `out` if it is one to a trapped page."""
        m = out.mmio
        if out.exit_reason == kvm.KVM_EXIT_MMIO and m is not None and self._pa_traps \
                and (m.phys_addr & ~(PAGE_SIZE - 1)) in self.vm.trap_pages:
            return m
        return None

    def _match(self, m: kvm.MmioExit) -> PageTrapHit | None:
        """The watched range an access to a trapped page hits, if any."""
        pa, size = m.phys_addr, m.len
        for t in self._pa_traps:
            if pa < t.pa_hi and t.pa_lo < pa + size and (t.stores if m.is_write else t.loads):
                lo = max(pa, t.pa_lo)
                return PageTrapHit(t.va_lo + (lo - t.pa_lo), size, bool(m.is_write), pa)
        return None

    def _page_trap(self, m: kvm.MmioExit) -> KvmRun | None:
        self._serve_trapped(m)
        hit = self._match(m)
        stepping = bool(self.guestdbg_control & kvm.KVM_GUESTDBG_SINGLESTEP)
        if hit is None and not stepping:
            return None  # a miss: re-enter; KVM completes the access
        done = self.finish_step()
        if hit is None:
            return done
        if done.exit_reason not in (kvm.KVM_EXIT_DEBUG, kvm.KVM_EXIT_INTR):
            raise kvm.KvmError(errno.EIO, f"completing a trapped access gave {done}")
        return KvmRun(kvm.KVM_EXIT_DEBUG, debug=PageTrapExit(1, self.pc, 0, 0, page_trap=hit))

    def finish_step(self) -> KvmRun:
        """After an exit the VMM has served (I/O, MMIO), let KVM finish that instruction and
        nothing more (KVM_RUN with immediate_exit = 1). Returns KVM_EXIT_DEBUG as a single-step
        exit (exception 1, DR6.BS) when that is all that happened, or KVM's own exit. During a
        fetch assist the finished instruction is the assist's step, which goes on as run()."""
        run = self._finish()
        if self._assist is not None:
            # KVM may say INTR (done, nothing more) or already report the step it had pending.
            done = self._assist_step_done(None) if run.exit_reason == kvm.KVM_EXIT_INTR \
                else self._assisted_exit(run)
            return done if done is not None else self.run()
        if run.exit_reason != kvm.KVM_EXIT_INTR:
            return run
        return KvmRun(kvm.KVM_EXIT_DEBUG, debug=kvm.DebugExitX86(1, self.pc, DR6_STEP, 0))

    def _finish(self) -> KvmRun:
        """KVM_RUN with immediate_exit = 1 until the served instruction is complete
        (KVM_EXIT_INTR), serving its further accesses to trapped pages; or KVM's other exit."""
        while True:
            self.kvm_run.immediate_exit = 1
            try:
                run = self._run_once()
            finally:
                self.kvm_run.immediate_exit = 1 if self._kick_pending else 0
            m = self._trapped(run)
            if m is not None:
                # The same instruction's next access to a trapped page (the store of a
                # read-modify-write, a second fragment): serve it and go on finishing.
                self._serve_trapped(m)
                continue
            return run

    # ------------------------------------------------------------------ fetch assist
    def _assist_prepare(self, regs: u.kvm_regs | None = None) -> bool:
        """If the instruction at RIP has bytes on a load-trapped page, give those pages a slot
        and set up its single step (FETCH ASSIST); False (nothing changed) otherwise."""
        noslot = {p for p, mode in self._trap_layout.items() if mode == TRAP_NOSLOT}
        if not noslot:
            return False
        regs = regs or self.get_regs()
        rip = regs.rip
        # Translations are kept while one assist lasts (an instruction that may change them
        # drops them): code on a trapped page runs one KVM_RUN per instruction, keep it cheap.
        tlb = self._assist.tlb if self._assist is not None else {}
        code, spans = b"", []  # spans: (va, pa, length) of the bytes read
        va = rip
        while len(code) < decode.MAX_INSN:
            n = min(decode.MAX_INSN - len(code), PAGE_SIZE - va % PAGE_SIZE)
            pa = self._translate_cached(tlb, va)
            if pa is None:
                break
            try:
                code += self.vm.read_phys(pa, n)
            except kvm.KvmError:
                break  # the rest is not RAM: decode what there is
            spans.append((va, pa, n))
            va += n
        insn = decode.decode(code, rip)
        size = insn.size if insn is not None else len(code)
        pages = set()
        for span_va, pa, n in spans:
            used = min(n, rip + size - span_va)
            if used > 0:
                pages |= {p for p in (pa & ~(PAGE_SIZE - 1), (pa + used - 1) & ~(PAGE_SIZE - 1)) if p in noslot}
        if not pages:
            return False
        if self._assist is not None:
            pages |= self._assist.pages
        loads = []
        if insn is not None and insn.reads:
            seg_bases = None
            if insn.segments:
                sregs = self.get_sregs()
                seg_bases = {"fs": sregs.fs.base, "gs": sregs.gs.base}
            for lva, lsize in insn.loads(regs, seg_bases):
                pos, end = lva, lva + lsize
                while pos < end:  # page by page: a load can straddle two mappings
                    n = min(end - pos, PAGE_SIZE - pos % PAGE_SIZE)
                    lpa = self._translate_cached(tlb, pos)
                    if lpa is not None and (lpa & ~(PAGE_SIZE - 1)) in pages:
                        loads.append((lpa, n, pos))
                    pos += n
        if insn is None or insn.tlb_change:
            tlb = {}
        if self._assist is None or not pages <= self._assist.pages:
            layout = dict(self._trap_layout)
            for p in pages:
                if any(t.stores and t.pa_lo < p + PAGE_SIZE and p < t.pa_hi for t in self._pa_traps):
                    layout[p] = TRAP_READONLY  # its stores still exit and are checked
                else:
                    del layout[p]
            self.vm.set_trap_pages(layout)
        if self._assist is None:
            self._program_debug(self.guestdbg_control | kvm.KVM_GUESTDBG_ENABLE | kvm.KVM_GUESTDBG_SINGLESTEP,
                                self.guestdbg_arch)
        self._assist = _FetchAssist(pages, loads, tlb)
        self.fetch_assists += 1
        return True

    def _translate_cached(self, tlb: dict[int, int | None], va: int) -> int | None:
        page = va & ~(PAGE_SIZE - 1)
        if page not in tlb:
            got = self.kvm_translate(page)
            tlb[page] = got[0] if got is not None else None
        pa = tlb[page]
        return None if pa is None else pa + va % PAGE_SIZE

    def _assisted_exit(self, out: KvmRun) -> KvmRun | None:
        """An exit while stepping an instruction fetched from a load-trapped page: the result to
        return, or None to run on."""
        reason = out.exit_reason
        d = out.debug
        if reason == kvm.KVM_EXIT_DEBUG and isinstance(d, kvm.DebugExitX86) and d.exception == 1 \
                and d.dr6 & DR6_BS and not d.dr6 & self._armed_drs():
            return self._assist_step_done(None)
        m = self._trapped(out)
        if m is not None:
            self._serve_trapped(m)
            hit = self._match(m)
            done = self._finish()
            if done.exit_reason == kvm.KVM_EXIT_INTR:
                return self._assist_step_done(hit)
            self._assist_end()
            return done
        if reason in (kvm.KVM_EXIT_IO, kvm.KVM_EXIT_MMIO):
            return out  # the board serves it, then finish_step() completes the step
        # A breakpoint, a kick, a fault: back to the debugger's layout, and report it as it is.
        self._assist_end()
        return out

    def _assist_step_done(self, hit: PageTrapHit | None) -> KvmRun | None:
        """The stepped instruction is complete: report a load it made from a watched range (or a
        store `hit`), or the debugger's own step; else step on or go back to running freely."""
        assist = self._assist
        assert assist is not None, "an assisted step ended with no fetch assist in progress"
        for pa, size, _va in assist.loads:
            load = self._match(kvm.MmioExit(pa, size, False, bytearray(size)))
            if load is not None:
                hit = PageTrapHit(load.addr, size, False, pa)  # an RMW is reported as its load
                break
        user_step = self.guestdbg_control & kvm.KVM_GUESTDBG_SINGLESTEP
        if hit is not None or user_step:
            self._assist_end()
            if hit is not None:
                return KvmRun(kvm.KVM_EXIT_DEBUG, debug=PageTrapExit(1, self.pc, 0, 0, page_trap=hit))
            return KvmRun(kvm.KVM_EXIT_DEBUG, debug=kvm.DebugExitX86(1, self.pc, DR6_STEP, 0))
        if not self._assist_prepare():
            self._assist_end()
        return None

    def _assist_end(self) -> None:
        """Lay the page traps out again and give KVM back the debugger's own guest-debug state."""
        if self._assist is None:
            return
        self._assist = None
        self.vm.set_trap_pages(self._trap_layout)
        self._program_debug(self.guestdbg_control, self.guestdbg_arch)

    def _armed_drs(self) -> int:
        """DR6 B0-B3 bits of the debugger's enabled debug registers."""
        dr7 = self.guestdbg_arch.debugreg[7]
        return sum(1 << n for n in range(4) if dr7 & (3 << (2 * n)))

    def _serve_trapped(self, m: kvm.MmioExit) -> None:
        self.page_trap_exits += 1
        if m.is_write:
            self.vm.write_phys(m.phys_addr, bytes(m.data[:m.len]))
        else:
            m.data[:m.len] = self.vm.read_phys(m.phys_addr, m.len)

    def set_watch_traps(self, traps: Iterable[WatchTrap]) -> None:
        """Replace the debugger's page traps (see PAGE TRAPS). Pages the guest has not mapped
        yet are skipped."""
        self._assist_end()  # the debugger is changing things: it sees its own layout
        traps = list(traps)
        if traps == self._trap_specs:
            return
        pa_traps, pages = [], {}
        for t in traps:
            va = t.start
            while va < t.end:
                page_end = (va | (PAGE_SIZE - 1)) + 1
                hi = min(t.end, page_end)
                got = self.kvm_translate(va)
                if got is not None:
                    pa = got[0]
                    pa_traps.append(_PaTrap(pa, pa + (hi - va), va, t.loads, t.stores, t.code))
                    page = pa & ~(PAGE_SIZE - 1)
                    if t.loads:
                        pages[page] = TRAP_NOSLOT
                    else:
                        pages.setdefault(page, TRAP_READONLY)
                va = hi
        self.vm.set_trap_pages(pages)
        self._trap_specs, self._pa_traps, self._trap_layout = traps, pa_traps, pages

    def page_table_pages(self, limit: int = 4096) -> set[int]:
        """Physical pages of the guest's current page tables (from CR3; 5 levels with
        CR4.LA57), the first `limit` found (a bound on the time spent, not on correctness for
        small guests). A load trap must not remove one: KVM's page walk reads them for every
        access, and the guest would triple-fault."""
        sregs = self.get_sregs()
        if not sregs.cr0 & (1 << 31):
            return set()
        levels = 5 if sregs.cr4 & (1 << 12) else 4
        addr_mask = 0x000F_FFFF_FFFF_F000
        tables: set[int] = set()
        todo = [(sregs.cr3 & addr_mask, levels)]
        while todo and len(tables) < limit:
            pa, level = todo.pop()
            if pa in tables:
                continue
            try:
                raw = self.vm.read_phys(pa, PAGE_SIZE)
            except kvm.KvmError:
                continue  # a table outside RAM: KVM's walk would fault there too
            tables.add(pa)
            if level == 1:
                continue
            # present entries, less large pages (PS in a PDPT or PD entry is a leaf)
            leaf_ps = 0x80 if level in (2, 3) else 0
            todo += [(e & addr_mask, level - 1) for e in memoryview(raw).cast("Q") if e & 1 and not e & leaf_ps]
        return tables
