"""An emulated AArch64 VM and vCPU on Unicorn, behind the KVM guest-debug interface.

Theory of operation
-------------------
This package plays the part Linux KVM plays for QEMU: `Arm64Vm` is the VM file descriptor
(capabilities, memory slots, in-kernel devices) and `Arm64Vcpu` the vCPU one (run, ONE_REG,
KVM_SET_GUEST_DEBUG, KVM_SET_VCPU_EVENTS). Unicorn executes the guest; this package adds what
Unicorn leaves out:

1. Exception entry (exceptions.py). Unicorn reports exceptions to UC_HOOK_INTR and does not
   enter the vector. The hook only records the exception and stops; between emu_starts the run
   loop sets ESR/ELR/SPSR/FAR_EL1, PSTATE and PC, as the Arm ARM's AArch64.TakeException does
   (and as QEMU's TCG does, so both boards print the same values). PSCI and semihosting are
   served there too. No hook writes PC and lets emulation go on: Unicorn 2.1.4 then keeps
   skip_sync_pc_on_exit set for the rest of the emu_start, and any later stop resumes from a
   stale PC, re-running a stretch of the guest (shared/REFERENCE.md §6; tests/integration/
   test_runloop.py reproduces it).
2. The Arm debug architecture (debughw.py). Two register sets exist: the guest's own
   (DBGB/WCRn_EL1, MDSCR_EL1, reached by MRS/MSR, which we intercept, and by ONE_REG) and the
   debugger's (kvm_guest_debug_arch, with no ONE_REG id). Exactly one set is live: the
   debugger's while KVM_GUESTDBG_ENABLE|USE_HW is set, the guest's otherwise. Hits of the live
   set become either a KVM_EXIT_DEBUG (debugger) or an exception entered into the guest (guest).
3. Zero cost when not hit (debughw.py). An address breakpoint is a UC_HOOK_CODE bounded to its
   one address; a watchpoint removes read or write permission from just the pages it covers, so
   accesses to other pages run at full speed (a load watchpoint also puts a no-op
   UC_HOOK_MEM_READ on its pages: Unicorn checks read permission only on its slow path, which a
   cached TLB entry skips; while one exists, every load in the guest calls into the hook
   machinery, 1.8x on a Linux boot, so load watchpoints are the one kind that costs when not
   hit). Both are set up between emu_start calls only: hooks deleted inside a long emu_start
   keep costing until it returns.
4. Before-the-access watchpoints (debughw.py). A store to a write-protected page faults
   precisely in Unicorn (PC on the store, base register not written back, memory unchanged), so
   a hit is reported with the access not done. Accesses that miss are done by hand and the
   instruction goes on. Instructions that make several accesses (pairs, 128-bit SIMD) are first
   run once with their stores dropped, to learn every address they touch; then the state is
   rolled back or the stores are applied, so no half-done pair is ever visible.
5. MMIO (mmio.py). Devices the VMM registered are called inline (unicorn mmio_map). Any other
   access outside RAM/ROM stops the vCPU with KVM_EXIT_MMIO before the access; the next run()
   completes it with the data the VMM put in kvm_run.mmio.data, or enters a synchronous
   external abort if the VMM asked for one with set_vcpu_events(ext_dabt_pending=True). Writes
   to a KVM_MEM_READONLY slot (ROM) exit the same way and are then dropped.
6. Firmware services the hypervisor provides (firmware.py): PSCI over HVC/SMC and Arm
   semihosting (HLT #0xF000). A guest's power-off or exit is a KVM_EXIT_SYSTEM_EVENT carrying
   its exit status.
7. Page traps (a guestdbg extension, `set_watch_traps`, debughw.py): the debugger's exact-range
   watches past its hardware slots, and its guard on software-breakpoint words, ride on the same
   page protection as point 4 and always exit to the debugger.
8. The guest's MMU (core.py, exceptions.py). Unicorn's memory hooks see physical addresses while
   watchpoints match virtual ones, so with SCTLR_EL1.M set the load/store at PC is decoded
   (guestdbg.arm.a64decode) to recover the virtual address; protections are recomputed when
   SCTLR/TTBR/TCR are written. Unicorn's own translation faults carry no syndrome either: the
   same decoding plus a walk of the guest's tables (guestdbg.arm.mmu) gives the data/instruction
   abort ESR and FAR the guest sees.
9. The run loop and the instruction count (vcpu.py, core.py, and _runctl.c, in C because it
   runs for every translation block and every MRS/MSR; runctl.py is its ctypes mirror). A block
   hook counts the instructions of every block entered; the slice ends at a block boundary when
   another thread asked for a stop or when the next block would pass the instruction limit the
   VMM set. A limit inside a block is reached by running that block once more under a countdown
   code hook bounded to it (while single-stepping the countdown hook is on every instruction
   instead). When a slice ends inside a block (an exception, a fault, a breakpoint, the
   countdown), _settle_icount takes back the instructions not reached. So `icount` is exact
   between runs, and CNTVCT_EL0/CNTPCT_EL0, answered in C from it (1 tick per 16
   instructions), are deterministic. Unicorn's own emu_start(count=) is never used: it
   instruments every instruction (1.5-7x slower) and flushes every translation when dropped.
10. The system-register filter (debughw.py). Every MRS/MSR reaches the C hook first; a table
   says which ones go to Python (the guest's debug registers, ID_AA64DFR0_EL1, and, only while
   something is armed that depends on them, writes to CONTEXTIDR_EL1 and the translation
   registers). Everything else (SP_EL0, TPIDR_*, DAIF, CTR_EL0, ...) Unicorn executes itself.
11. The EL1 generic timers and WFI (timers.py, core.py). Unicorn compiles QEMU's timer logic
   out, so CNT{V,P}_{CTL,CVAL,TVAL}_EL0 go to Python through the filter (ACTION_VMM) and are
   vCPU state, as in KVM (ONE_REG: KVM_REG_ARM_TIMER_CTL/CNT/CVAL, KVM_REG_ARM_PTIMER_*). The
   counter is icount / 16 (or the host's CLOCK_MONOTONIC / 16 ns with `--clock host`) plus
   a counter offset, answered in C for CNTVCT/CNTPCT. Before each slice the run loop compares
   the timers' output levels (ENABLE && ISTATUS && !IMASK) with those last reported: a change
   is a KVM_EXIT_INTR whose `device_irq_level` holds the new KVM_ARM_DEV_EL1_VTIMER/PTIMER bits
   (KVM_CAP_ARM_USER_IRQ: the VMM drives its interrupt controller's PPIs from them, and reads
   `vcpu.device_irq_level` for the bits last reported; other exits carry None). Otherwise the
   slice's instruction limit is lowered to the next deadline (icount = ticks * 16), or a
   host-time alarm thread calls request_stop() at it; a timer MSR ends its slice. WFI (which
   ends Unicorn's emu_start when no interrupt is pending) idles the vCPU: the deterministic
   clock skips the counter offset ahead to the next deadline, the host clock sleeps until it
   (waking at once on kick()), and with no deadline the thread sleeps until kick() or an IRQ
   line raised from another thread, with `wfi_waiting` set for the VMM's hang check. WFE is a
   no-op (Unicorn's YIELD), as QEMU TCG without an event model.
12. Stores to RAM stay on Unicorn's fast path (core.py install_memory_hooks): the access-fault
   and unmapped-access hooks cover everything but writable RAM (pages protected for watches or
   traps get hooks bounded to them), because in Unicorn 2.1.4 a memory hook over a page sends
   every store there down the slow path (half of a Linux boot's time). The cost: Unicorn then
   notices rewritten code only through the address it was translated from, and Linux patches
   its text through other mappings. So the guest's own cache maintenance, which the
   architecture requires before new code runs, drops stale translations: a C hook on SYS
   records IC IVAU pages and IC IALLU(IS), the slice ends before the next block, and the pages
   are invalidated by VA (executable at EL1) or by PA. Pages already known executable are
   remembered in C (cleared by TLBIs and translation-register writes), so most of a boot's
   ~44k invalidations cost no stop. tests/integration/test_code_aliases.py pins it.
13. Several vCPUs (vm.py, core.py): one Unicorn engine each over the VM's host memory; TLBIs
   and IC invalidations are carried to the other engines before they run again (with more
   than one vCPU the C hook's inline IC path is off, so every invalidation reaches Python);
   one virtual clock through `time_offset`; WFI ends run() with KVM_EXIT_HLT under
   `halt_exits`, for the board's scheduler. tests/integration/test_smp_engines.py pins it.

Files
-----
vm.py          Arm64Vm: capabilities, memory slots, devices, read_phys/write_phys, create_vcpu
vcpu.py        Arm64Vcpu: construction and reset, run() and its slices, kick, the clock source
core.py        VcpuCore: the state every part shares, registers, guest-virtual access, icount,
               one bounded emu_start (_execute), the exits a run returns
firmware.py    FirmwareCalls: PSCI and semihosting
exceptions.py  ExceptionEntry: UC_HOOK_INTR, dispatch, TakeException, fault syndromes
debughw.py     DebugHardware: KVM_SET_GUEST_DEBUG, the guest's debug registers, breakpoint and
               watchpoint hooks, page protections and traps, the MRS/MSR filter
mmio.py        MmioAccess: MMIO exits and their completion, watched devices, set_vcpu_events
one_reg.py     OneRegTable: KVM_GET/SET_ONE_REG, get_one_regs, KVM_GET_REG_LIST
runctl.py      RunControl: the native hooks (_runctl.c) installed on a Unicorn instance
timers.py      GenericTimers: the EL1 virtual and physical timers' registers and levels
arch.py        constants the parts share

Each vCPU part is a class on the one listed before it (VcpuCore, FirmwareCalls,
ExceptionEntry, DebugHardware, MmioAccess, OneRegTable), and Arm64Vcpu is the last: each file
type-checks on its own, and Unicorn's hooks call the methods directly, with no delegation.

Threads
-------
Everything here runs on the one thread that calls run() (the vCPU thread), with two
exceptions, both from any thread: kick() (KVM_RUN's immediate_exit plus a signal) and reading
public attributes. kick() sets `immediate_exit` and the C hook's stop word (waking a vCPU
idle in WFI), nothing else; the `--clock host` timers' alarm thread sets only the stop word; the
block hook then calls uc_emu_stop() on the vCPU thread at the next block boundary, where PC is
exact. No other thread ever calls into Unicorn, so an emu_stop() can never land in the middle
of a hook or just before an emu_start (where Unicorn would lose it), and the run loop's state
is never shared. Unicorn calls our hooks on the vCPU thread, inside emu_start; they touch only
the vCPU's own state and may call emu_stop() and reg_write() (never of PC, except right
before ending the emu_start) on the same thread.

Architectural choices where the Arm ARM leaves room are listed in guestdbg.arm.debugregs;
the ones made here: a write to CONTEXTIDR_EL1 takes effect for breakpoints at the next
instruction (no ISB needed); WFI retires, then the vCPU idles (point 11).
"""

from guestdbg.backends.unicorn_arm64.arch import (
    KVM_GUESTDBG_VALID_MASK,
    PSTATE_DAIF,
    PSTATE_MODE_EL1H,
)
from guestdbg.backends.unicorn_arm64.debughw import GuestDebugRegs
from guestdbg.backends.unicorn_arm64.runctl import (
    COUNTER_FREQUENCY_HZ,
    INSNS_PER_COUNTER_TICK,
    NS_PER_INSN,
)
from guestdbg.backends.unicorn_arm64.vcpu import Arm64Vcpu
from guestdbg.backends.unicorn_arm64.vm import (
    Arm64Vm,
    DebugConfig,
    KvmErrorExists,
    MemorySlot,
    MmioDevice,
)

__all__ = [
    "COUNTER_FREQUENCY_HZ", "INSNS_PER_COUNTER_TICK", "KVM_GUESTDBG_VALID_MASK", "NS_PER_INSN", "PSTATE_DAIF",
    "PSTATE_MODE_EL1H", "Arm64Vcpu", "Arm64Vm", "DebugConfig", "GuestDebugRegs", "KvmErrorExists", "MemorySlot",
    "MmioDevice",
]
