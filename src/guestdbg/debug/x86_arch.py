"""x86-64 for the guest-debug manager: int3 or DR execution slots, DR0-DR3 / page-trap watches.

The mechanisms follow what the host's KVM really does (`guestdbg.board.pc_facts`, measured by
`guestdbg.board.pc_probe` and carried by the machine as `debug_facts`):

- `sw_break` is int3 (b"\\xcc") when int3 gives a clean KVM_EXIT_DEBUG (exception 3). Otherwise
  it is None, which tells the manager to put software breakpoints (Z0) in the DR execution
  slots like hbreak; past the 4 debug registers it refuses with ENOSPC (documented, no
  single-step scanning); `slots_full_message()` is the text that refusal should carry.
- The four debug registers are *shared* between breakpoints and watchpoints (`shared_slots`):
  KVM_CAP_GUEST_DEBUG_HW_BPS/WPS read 0 on x86, meaning DR0-DR3. `slot_counts()` gives the
  manager 4 breakpoint slots, and 4 watchpoint slots only where DR data watchpoints fire
  (0 otherwise, so every watch takes the page-trap path).
- `plan_watch` splits a range into naturally aligned 1/2/4/8-byte DR pieces (exact: nothing
  widened). Where every watch is a page trap, it refuses (ENOTSUP) a load watch on the guest's
  page tables: the trap would take the page away from KVM's page walk. It runs before the
  manager records the watch, so a refusal changes nothing.
- `debug_arch` fills kvm_guest_debug_arch.debugreg[8]: DR0-DR3, DR6 = 0, DR7 with Gn, RW and
  LEN (REFERENCE.md section 4). It keeps its own copy of DR7 and of what each slot holds: KVM
  reports dr7 = 0 in debug exits on some hosts.
- `classify`: exception 1 with DR6.BS (bit 14) is a step; DR6.B0-B3 is an execution
  breakpoint or a data watchpoint, by the slot's kind in our copy; exception 3 is a software
  breakpoint; a page-trap exit from the vCPU (`PageTrapExit`) is a watch hit.
- x86 data watchpoints are traps: they are reported *after* the access (as the page traps
  are too), so RawStop.completed is True and the manager does not step the access again.
- `reinject` delivers the guest's own int3 to it (KVM_SET_VCPU_EVENTS, exception 3 with RIP
  past the 0xCC), as it would have been without a debugger.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

from guestdbg import kvm
from guestdbg.debug.arch import RawStop

if TYPE_CHECKING:
    from guestdbg.backends.kvm_x86 import uapi as u
    from guestdbg.backends.kvm_x86.vcpu import X86Vcpu
    from guestdbg.board.pc_facts import HostDebugFacts

NUM_DRS = 4
DR6_BS = 1 << 14
DR7_GE = 1 << 9
RW_EXEC, RW_WRITE, RW_ACCESS = 0b00, 0b01, 0b11
LEN_BITS = {1: 0b00, 2: 0b01, 4: 0b11, 8: 0b10}


def dr7_slot(n: int, rw: int, length: int) -> int:
    """The DR7 bits enabling slot n (Gn) with its RW and LEN fields."""
    return (1 << (2 * n + 1)) | (rw << (16 + 4 * n)) | (LEN_BITS[length] << (18 + 4 * n))


def plan_dr_pieces(addr: int, length: int) -> list[tuple[int, int]]:
    """Cover exactly [addr, addr+length) with naturally aligned 1/2/4/8-byte pieces: (addr, len)."""
    if length <= 0:
        raise ValueError("watch length must be positive")
    pieces: list[tuple[int, int]] = []
    pos, end = addr, addr + length
    while pos < end:
        size = 8
        while size > 1 and (pos % size or pos + size > end):
            size //= 2
        pieces.append((pos, size))
        pos += size
    return pieces


class X86DebugArch:
    name = "x86_64"
    shared_slots = True
    max_watch = 1 << 31  # a range past the DRs goes to page traps, which have no fixed limit

    def __init__(self, facts: HostDebugFacts | None = None) -> None:
        self.facts = facts
        int3_ok = facts is None or facts.int3_exits_cleanly
        self.sw_break: bytes | None = b"\xcc" if int3_ok else None
        self.sw_break_name = "int3"
        self.dr_watch = facts is None or facts.dr_write_watch_fires
        self.dr_exec = facts is None or facts.dr_exec_break_works
        self.dr7 = 0
        self.slot_kind: dict[int, tuple[str, int, int]] = {}  # slot -> ("exec"|rw kind, addr, len)
        self.vm: Any = None  # set by slot_counts(), which the manager calls first

    def slots_full_message(self, bp_slots: int = NUM_DRS) -> str:
        """What a refused breakpoint (ENOSPC) should say: the cause is the debug registers, not
        the memory gdb names ("Cannot access memory at address ...") when its Z0 fails."""
        shared = "" if self.sw_break else "; on this host int3 cannot be used, so break and hbreak both take one"
        watches = " or a watchpoint" if self.dr_watch else ""
        return (f"all {bp_slots} x86 debug registers (DR0-DR3) are in use{shared}: "
                f"delete a breakpoint{watches} first")

    def slot_counts(self, vm: Any) -> tuple[int, int]:
        """(breakpoint slots, watchpoint slots): KVM's counts when it gives them, else DR0-DR3."""
        self.vm = vm  # plan_watch checks page traps against this VM's vCPU
        bps = vm.check_extension(kvm.KVM_CAP_GUEST_DEBUG_HW_BPS) or NUM_DRS
        wps = vm.check_extension(kvm.KVM_CAP_GUEST_DEBUG_HW_WPS) or NUM_DRS
        return (bps if self.dr_exec else 0), (wps if self.dr_watch else 0)

    def plan_watch(self, addr: int, length: int, lsc_kind: str) -> list[tuple[int, int]]:
        if lsc_kind != "write" and not self.dr_watch:
            self._refuse_page_table_loads(addr, length)
        rw = {"write": RW_WRITE, "read": RW_ACCESS, "access": RW_ACCESS}[lsc_kind]
        # x86 has no read-only data breakpoint: rwatch uses RW=11 and classify() reports it
        # as a read only when the slot's watch is a read watch (the manager matches kinds).
        return [(a, (rw << 8) | n) for a, n in plan_dr_pieces(addr, length)]

    def _refuse_page_table_loads(self, addr: int, length: int) -> None:
        """Every watch here is a page trap, and a load trap takes the page's memory slot away:
        on the guest's page tables that leaves KVM's page walk nothing to read (the guest
        triple-faults), so such a watch is refused before the manager records it."""
        vcpus = getattr(self.vm, "vcpus", None)
        if not vcpus or not hasattr(vcpus[0], "page_table_pages"):
            return
        from guestdbg.debug.manager import DebugError
        vcpu = vcpus[0]
        tables = vcpu.page_table_pages()
        va = addr - addr % 4096
        while va < addr + length:
            got = vcpu.kvm_translate(va)
            if got is not None and (got[0] & ~0xFFF) in tables:
                raise DebugError(errno.ENOTSUP, f"cannot watch loads at {max(va, addr):#x}: page {got[0] & ~0xFFF:#x} "
                                                "holds the guest's page tables, and a load watch here takes the "
                                                "page away from KVM's page walk (`watch`, for stores, works)")
            va += 4096

    def debug_arch(self, breakpoints: dict[int, int],
                   watch_slots: dict[int, tuple[int, int]]) -> u.kvm_guest_debug_arch:
        from guestdbg.backends.kvm_x86 import uapi
        arch = uapi.kvm_guest_debug_arch()
        dr7 = 0
        kinds: dict[int, tuple[str, int, int]] = {}
        for va, slot in breakpoints.items():
            arch.debugreg[slot] = va
            dr7 |= dr7_slot(slot, RW_EXEC, 1)
            kinds[slot] = ("exec", va, 1)
        for slot, (addr, spec) in watch_slots.items():
            rw, length = spec >> 8, spec & 0xFF
            arch.debugreg[slot] = addr
            dr7 |= dr7_slot(slot, rw, length)
            kinds[slot] = ("write" if rw == RW_WRITE else "access", addr, length)
        if dr7:
            dr7 |= DR7_GE
        arch.debugreg[6] = 0
        arch.debugreg[7] = dr7
        self.dr7, self.slot_kind = dr7, kinds
        return arch

    def classify(self, run: kvm.KvmRun) -> RawStop:
        d = run.debug
        if not isinstance(d, kvm.DebugExitX86):
            raise TypeError(f"not an x86 KVM_EXIT_DEBUG: {run}")
        trap = getattr(d, "page_trap", None)  # a PageTrapExit (backends/kvm_x86/pagetrap.py)
        if trap is not None:
            return RawStop("watch", trap.addr, trap.is_write, detail="page trap", completed=True)
        if d.exception == 3:
            return RawStop("swbreak", detail="int3")
        if d.exception == 1:
            for slot in range(NUM_DRS):
                if d.dr6 & (1 << slot) and slot in self.slot_kind:
                    kind, addr, _length = self.slot_kind[slot]
                    if kind == "exec":
                        return RawStop("hwbreak")
                    return RawStop("watch", addr, kind == "write", detail=f"DR{slot}", completed=True)
            if d.dr6 & DR6_BS:
                return RawStop("step")
            return RawStop("other", detail=f"#DB with DR6={d.dr6:#x}")
        return RawStop("other", detail=f"debug exit, exception {d.exception}")

    def reinject(self, vcpu: X86Vcpu, run: kvm.KvmRun, pc: int) -> None:
        """The guest's own int3 goes to the guest: #BP with RIP past the 0xCC (a trap)."""
        regs = vcpu.get_regs()
        regs.rip = pc + 1
        vcpu.set_regs(regs)
        events = vcpu.get_vcpu_events()
        events.exception.injected = 1
        events.exception.nr = 3
        events.exception.has_error_code = 0
        vcpu.set_vcpu_events(events)
