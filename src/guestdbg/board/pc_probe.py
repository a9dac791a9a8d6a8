"""Measure what this host's KVM does for a debugger, and build pc machines that know it.

`create_pc_machine()` is how guestdbg makes an x86-64 machine for a debugger (the CLI's `run`,
snapshot loading, the tests): it runs `probe()` (once per process; the answer is cached), then
constructs the PcMachine with `debug_facts` set. PcMachine's own constructor never probes:
it only builds its VM, so the probe's scratch machines are plain X86Machines and nothing
recurses. `guestdbg caps --arch x86_64` reports `probe()` directly.

The probe builds a small pc-board machine (long mode, CPL0, the same tables as the real one)
for each of three tiny programs (see pc_facts.HostDebugFacts for what the answers choose):

1. int3 with KVM_GUESTDBG_USE_SW_BP: is the exit KVM_EXIT_DEBUG, exception 3, at the 0xCC?
2. a 4-byte store to a scratch page with DR1 armed as a write watchpoint (DR7 G1, RW1=01,
   LEN1=11): is the exit KVM_EXIT_DEBUG, exception 1, with DR6.B1?
3. DR0 as an execution breakpoint on the second instruction: KVM_EXIT_DEBUG with DR6.B0 there?

A host that refuses a step outright (an ioctl error) answers "no" with the error as the exit,
never crashes the caller; without a usable /dev/kvm, probe() raises KvmUnavailable.
"""

from __future__ import annotations

import threading

from guestdbg import kvm
from guestdbg.backends.kvm_x86 import uapi as u
from guestdbg.board.pc import PcConfig, PcMachine
from guestdbg.board.pc_facts import HostDebugFacts
from guestdbg.vmapi import Console

CODE = 0x100000
SCRATCH = 0x200000
DR6_B0, DR6_B1, DR6_BS = 1, 2, 1 << 14

_lock = threading.Lock()
_cached: HostDebugFacts | None = None


def create_pc_machine(config: PcConfig | None = None, console: Console | None = None) -> PcMachine:
    """An PcMachine on the pc board with this host's probed debug facts (`debug_facts`).
    Raises KvmUnavailable without a usable /dev/kvm."""
    facts = probe()
    return PcMachine(config if config is not None else PcConfig(), console, debug_facts=facts)


def probe(*, refresh: bool = False) -> HostDebugFacts:
    """The host's facts (cached for the process). Raises KvmUnavailable without /dev/kvm."""
    global _cached
    with _lock:
        if _cached is None or refresh:
            _cached = HostDebugFacts(*_probe_int3(), *_probe_dr_watch(), *_probe_dr_exec())
        return _cached


def _scratch_machine(code: bytes) -> PcMachine:
    m = PcMachine(PcConfig(ram_size=4 << 20), console=lambda _b: None)
    m.vm.write_phys(CODE, code)
    m.reset_cpu(CODE)
    return m


# out %al, $0xf4 (isa-debug-exit) ends each program if nothing stopped it first. Each program
# runs to its first exit (DEBUG, INTERNAL_ERROR, SHUTDOWN or that OUT): the VMM serves none.
_OUT_EXIT = b"\xe6\xf4"


def _probe_int3() -> tuple[bool, str]:
    m = _scratch_machine(b"\x90\xcc" + _OUT_EXIT + b"\xf4")  # nop; int3; out; hlt
    try:
        m.vcpu.set_guest_debug(kvm.KVM_GUESTDBG_ENABLE | kvm.KVM_GUESTDBG_USE_SW_BP, u.kvm_guest_debug_arch())
        run = m.vcpu.run()
        d = run.debug
        ok = (run.exit_reason == kvm.KVM_EXIT_DEBUG and isinstance(d, kvm.DebugExitX86) and d.exception == 3
              and m.vcpu.pc == CODE + 1)
        return ok, f"{run} at RIP={m.vcpu.pc:#x} (int3 at {CODE + 1:#x})"
    except OSError as e:  # a host that refuses outright (KvmError): report, never crash the caller
        return False, f"error: {e}"
    finally:
        m.close()


def _probe_dr_watch() -> tuple[bool, str]:
    # mov dword [SCRATCH], eax (absolute moffs32 via a SIB form); out; hlt
    store = b"\x89\x04\x25" + SCRATCH.to_bytes(4, "little")
    m = _scratch_machine(store + _OUT_EXIT + b"\xf4")
    try:
        arch = u.kvm_guest_debug_arch()
        arch.debugreg[1] = SCRATCH
        arch.debugreg[7] = (1 << 3) | (0b01 << 20) | (0b11 << 22)  # G1, RW1=write, LEN1=4
        m.vcpu.set_guest_debug(kvm.KVM_GUESTDBG_ENABLE | kvm.KVM_GUESTDBG_USE_HW_BP, arch)
        run = m.vcpu.run()
        d = run.debug
        ok = (run.exit_reason == kvm.KVM_EXIT_DEBUG and isinstance(d, kvm.DebugExitX86) and d.exception == 1
              and bool(d.dr6 & DR6_B1))
        return ok, str(run)
    except OSError as e:
        return False, f"error: {e}"
    finally:
        m.close()


def _probe_dr_exec() -> tuple[bool, str]:
    m = _scratch_machine(b"\x90\x90" + _OUT_EXIT + b"\xf4")
    try:
        arch = u.kvm_guest_debug_arch()
        arch.debugreg[0] = CODE + 1
        arch.debugreg[7] = 1 << 1  # G0, RW0=exec, LEN0=1
        m.vcpu.set_guest_debug(kvm.KVM_GUESTDBG_ENABLE | kvm.KVM_GUESTDBG_USE_HW_BP, arch)
        run = m.vcpu.run()
        d = run.debug
        ok = (run.exit_reason == kvm.KVM_EXIT_DEBUG and isinstance(d, kvm.DebugExitX86) and d.exception == 1
              and bool(d.dr6 & DR6_B0) and m.vcpu.pc == CODE + 1)
        return ok, f"{run} at RIP={m.vcpu.pc:#x}"
    except OSError as e:
        return False, f"error: {e}"
    finally:
        m.close()
