"""What this host's KVM really does for a debugger, measured once per process on a scratch VM.

Each kind of x86 KVM host differs: VMX/SVM hosts deliver DR data watchpoints and int3 as clean
KVM_EXIT_DEBUG exits; `kvm_pvm` (no VMX/SVM in the CPU) emulates CPL0 code, never fires DR data
watchpoints, and ends int3 in 64-bit mode with KVM_EXIT_INTERNAL_ERROR. So guestdbg asks rather
than assumes: `probe()` builds a small pc-board VM (long mode, CPL0, the same tables as the real
machine) and runs three tiny programs on it:

1. int3 with KVM_GUESTDBG_USE_SW_BP: is the exit KVM_EXIT_DEBUG, exception 3, at the 0xCC?
2. a 4-byte store to a scratch page with DR1 armed as a write watchpoint (DR7 G1, RW1=01,
   LEN1=11): is the exit KVM_EXIT_DEBUG, exception 1, with DR6.B1?
3. DR0 as an execution breakpoint on the second instruction: KVM_EXIT_DEBUG with DR6.B0 there?

The answers choose the mechanisms (`HostDebugFacts.mechanisms`):

- software breakpoints (Z0): int3 when (1) holds; otherwise the DR execution slots, shared
  with hbreak and refused past the 4 registers (ENOSPC);
- hardware breakpoints (Z1): DR0-DR3 execution slots when (3) holds;
- watchpoints (Z2/Z3/Z4): DR0-DR3 data slots when (2) holds, and past them (or always, when it
  does not) page traps: read-only memory slots for stores, no slot for loads, exact-range checked.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

from guestdbg import kvm

CODE = 0x100000
SCRATCH = 0x200000
DR6_B0, DR6_B1, DR6_BS = 1, 2, 1 << 14


@dataclass(frozen=True)
class HostDebugFacts:
    int3_exits_cleanly: bool
    int3_exit: str
    dr_write_watch_fires: bool
    dr_watch_exit: str
    dr_exec_break_works: bool
    dr_exec_exit: str

    @property
    def sw_break_mechanism(self) -> str:
        return "int3 (0xCC, KVM_GUESTDBG_USE_SW_BP)" if self.int3_exits_cleanly else \
            "DR0-DR3 execution slots (shared with hbreak; ENOSPC past 4)"

    @property
    def hw_break_mechanism(self) -> str:
        return "DR0-DR3 execution slots" if self.dr_exec_break_works else "unavailable"

    @property
    def watch_mechanism(self) -> str:
        if self.dr_write_watch_fires:
            return "DR0-DR3 data slots (after the access); page traps past them"
        return "page traps: read-only memory slots (stores) / no slot (loads), exact range, after the access"

    def mechanisms(self) -> dict[str, str]:
        return {"break (Z0)": self.sw_break_mechanism, "hbreak (Z1)": self.hw_break_mechanism,
                "watch/rwatch/awatch (Z2-Z4)": self.watch_mechanism}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mechanisms"] = self.mechanisms()
        return d


_lock = threading.Lock()
_cached: HostDebugFacts | None = None


def probe(*, refresh: bool = False) -> HostDebugFacts:
    """The host's facts (cached for the process). Raises KvmUnavailable without /dev/kvm."""
    global _cached
    with _lock:
        if _cached is None or refresh:
            _cached = HostDebugFacts(*_probe_int3(), *_probe_dr_watch(), *_probe_dr_exec())
        return _cached


def _scratch_machine(code: bytes):
    from guestdbg.board.pc import PcConfig, X86Machine
    m = X86Machine(PcConfig(ram_size=4 << 20), console=lambda _b: None, probe_debug=False)
    m.vm.write_phys(CODE, code)
    m.reset_cpu(CODE)
    return m


def _describe(run) -> str:
    return str(run)


def _run_one(m):
    """Run to the first exit the probe cares about: DEBUG, INTERNAL_ERROR, SHUTDOWN or the
    isa-debug-exit OUT (I/O exits are not served: the programs below do none before it)."""
    run = m.vcpu.run()
    return run


# out %al, $0xf4 (isa-debug-exit) ends each program if nothing stopped it first.
_OUT_EXIT = b"\xe6\xf4"


def _probe_int3() -> tuple[bool, str]:
    from guestdbg.backends.kvm_x86 import uapi as u
    m = _scratch_machine(b"\x90\xcc" + _OUT_EXIT + b"\xf4")  # nop; int3; out; hlt
    try:
        m.vcpu.set_guest_debug(kvm.KVM_GUESTDBG_ENABLE | kvm.KVM_GUESTDBG_USE_SW_BP, u.kvm_guest_debug_arch())
        run = _run_one(m)
        ok = (run.exit_reason == kvm.KVM_EXIT_DEBUG and run.debug.exception == 3
              and m.vcpu.pc == CODE + 1)
        return ok, f"{_describe(run)} at RIP={m.vcpu.pc:#x} (int3 at {CODE + 1:#x})"
    except Exception as e:  # a host that refuses outright: report, never crash the caller
        return False, f"error: {e}"
    finally:
        m.close()


def _probe_dr_watch() -> tuple[bool, str]:
    from guestdbg.backends.kvm_x86 import uapi as u
    # mov dword [SCRATCH], eax (absolute moffs32 via a SIB form); out; hlt
    store = b"\x89\x04\x25" + SCRATCH.to_bytes(4, "little")
    m = _scratch_machine(store + _OUT_EXIT + b"\xf4")
    try:
        arch = u.kvm_guest_debug_arch()
        arch.debugreg[1] = SCRATCH
        arch.debugreg[7] = (1 << 3) | (0b01 << 20) | (0b11 << 22)  # G1, RW1=write, LEN1=4
        m.vcpu.set_guest_debug(kvm.KVM_GUESTDBG_ENABLE | kvm.KVM_GUESTDBG_USE_HW_BP, arch)
        run = _run_one(m)
        ok = run.exit_reason == kvm.KVM_EXIT_DEBUG and run.debug.exception == 1 and bool(run.debug.dr6 & DR6_B1)
        return ok, _describe(run)
    except Exception as e:
        return False, f"error: {e}"
    finally:
        m.close()


def _probe_dr_exec() -> tuple[bool, str]:
    from guestdbg.backends.kvm_x86 import uapi as u
    m = _scratch_machine(b"\x90\x90" + _OUT_EXIT + b"\xf4")
    try:
        arch = u.kvm_guest_debug_arch()
        arch.debugreg[0] = CODE + 1
        arch.debugreg[7] = 1 << 1  # G0, RW0=exec, LEN0=1
        m.vcpu.set_guest_debug(kvm.KVM_GUESTDBG_ENABLE | kvm.KVM_GUESTDBG_USE_HW_BP, arch)
        run = _run_one(m)
        ok = (run.exit_reason == kvm.KVM_EXIT_DEBUG and run.debug.exception == 1
              and bool(run.debug.dr6 & DR6_B0) and m.vcpu.pc == CODE + 1)
        return ok, f"{_describe(run)} at RIP={m.vcpu.pc:#x}"
    except Exception as e:
        return False, f"error: {e}"
    finally:
        m.close()
