"""One KVM x86-64 vCPU: KVM_RUN and its exits, kick(), KVM_SET_GUEST_DEBUG, KVM_TRANSLATE.

- run() is KVM_RUN, called through ctypes so the GIL is released while the guest runs. Its
  exit is decoded from the shared kvm_run page (the mmap of the vCPU fd) into
  guestdbg.kvm.KvmRun (Linux field names). An IN or an MMIO read is completed by the VMM
  filling `run.io.data` / `run.mmio.data`; the next run() copies that back into kvm_run before
  re-entering, as KVM requires. Page-trap exits and code fetched from load-trapped pages are
  served inside run() (pagetrap.py).
- kick() (any thread): set kvm_run.immediate_exit, then send SIGUSR1 to the thread inside
  KVM_RUN. A no-op SIGUSR1 handler is installed so the signal only interrupts the ioctl
  (EINTR). immediate_exit covers the window where the signal lands just before KVM_RUN is
  entered; run() clears it after the resulting KVM_EXIT_INTR.
- Registers and the register list are regs.py's (`RegisterGroups`); watch traps are
  pagetrap.py's (`PageTraps`). X86Vcpu is all three: it satisfies `guestdbg.vmapi.X86Vcpu`.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING

from guestdbg import kvm
from guestdbg.backends.kvm_x86 import uapi as u
from guestdbg.backends.kvm_x86.ioctl import ioctl, libc
from guestdbg.backends.kvm_x86.pagetrap import PageTraps
from guestdbg.kvm import KvmRun

if TYPE_CHECKING:
    from guestdbg.backends.kvm_x86.vm import X86Vm

KICK_SIGNAL = signal.SIGUSR1

INTERNAL_SUBERRORS = {
    kvm.KVM_INTERNAL_ERROR_EMULATION: "KVM_INTERNAL_ERROR_EMULATION (KVM could not emulate an instruction)",
    kvm.KVM_INTERNAL_ERROR_SIMUL_EX: "KVM_INTERNAL_ERROR_SIMUL_EX (exception during exception delivery)",
    kvm.KVM_INTERNAL_ERROR_DELIVERY_EV: "KVM_INTERNAL_ERROR_DELIVERY_EV (event delivery failed)",
    kvm.KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON: "KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON",
}

_handler_lock = threading.Lock()


def _noop_handler(_signum: int, _frame: FrameType | None) -> None:
    pass


def install_kick_handler() -> bool:
    """Install the no-op SIGUSR1 handler that lets kick() interrupt KVM_RUN. Python only allows
    this from the main thread; returns whether a handler is in place."""
    with _handler_lock:
        current = signal.getsignal(KICK_SIGNAL)
        if current not in (signal.SIG_DFL, signal.SIG_IGN, None):
            return True
        if threading.current_thread() is not threading.main_thread():
            return False
        signal.signal(KICK_SIGNAL, _noop_handler)
        signal.siginterrupt(KICK_SIGNAL, True)
        return True


class X86Vcpu(PageTraps):
    """One KVM x86-64 vCPU: run(), kick(), registers, the register list, KVM_SET_GUEST_DEBUG."""

    def __init__(self, vm: X86Vm, vcpu_id: int = 0):
        self.vm = vm
        self.vcpu_id = vcpu_id
        self.fd = ioctl(vm.fd, u.KVM_CREATE_VCPU, vcpu_id, what="KVM_CREATE_VCPU")
        self._run_mmap = mmap.mmap(self.fd, vm.vcpu_mmap_size, flags=mmap.MAP_SHARED,
                                   prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self.kvm_run = u.kvm_run.from_buffer(self._run_mmap)
        nent, entries = vm.supported_cpuid()
        buf, _head, ents = u.cpuid2_buffer(nent)
        ctypes.memmove(ctypes.addressof(ents), entries, len(entries))
        ioctl(self.fd, u.KVM_SET_CPUID2, buf, what="KVM_SET_CPUID2")
        self.has_xsave = bool(vm.check_extension(kvm.KVM_CAP_XSAVE))
        self.has_xcrs = bool(vm.check_extension(kvm.KVM_CAP_XCRS))
        self.has_debugregs = bool(vm.check_extension(kvm.KVM_CAP_DEBUGREGS))
        self.has_vcpu_events = bool(vm.check_extension(kvm.KVM_CAP_VCPU_EVENTS))
        self.kick_handler_installed = install_kick_handler()
        self.guestdbg_control = 0
        self.guestdbg_arch = u.kvm_guest_debug_arch()
        self._run_lock = threading.Lock()
        self._running_thread: int | None = None
        self._pending_in: kvm.KvmRun | None = None  # an IN or MMIO read the VMM must complete
        self._snapshot_msrs = None
        self._init_page_traps()
        self._kick_pending = False  # kick() not yet answered by a KVM_EXIT_INTR from run()
        self.guestdbg_valid_mask = vm.check_extension(kvm.KVM_CAP_SET_GUEST_DEBUG2)

    def close(self) -> None:
        if self.fd >= 0:
            del self.kvm_run
            try:
                self._run_mmap.close()
            except BufferError:
                pass  # a ctypes view still exports it: unmapped when the last one goes
            os.close(self.fd)
            self.fd = -1

    # ------------------------------------------------------------------ run
    @property
    def immediate_exit(self) -> bool:
        return bool(self.kvm_run.immediate_exit)

    @immediate_exit.setter
    def immediate_exit(self, value: bool) -> None:
        self.kvm_run.immediate_exit = 1 if value else 0

    @property
    def stepping(self) -> bool:
        """Does an instruction that exited to the VMM have to be finished with finish_step()?
        (The debugger is single-stepping, or the vCPU is stepping code from a load-trapped page.)"""
        return bool(self.guestdbg_control & kvm.KVM_GUESTDBG_SINGLESTEP) or self._assist is not None

    def run(self) -> KvmRun:
        """KVM_RUN: run the guest until it needs the VMM, and say why (KVM_EXIT_INTR after a kick).
        Page-trap MMIO exits are served here (see PAGE TRAPS): misses never come back; so is
        code fetched from a load-trapped page (FETCH ASSIST)."""
        while True:
            run = self._run_once()
            out: KvmRun | None = run
            if self._assist is not None:
                out = self._assisted_exit(run)
            elif run.exit_reason == kvm.KVM_EXIT_INTERNAL_ERROR and self._trap_layout \
                    and self._assist_prepare():
                continue  # KVM could not fetch from a load-trapped page: step it (FETCH ASSIST)
            else:
                m = self._trapped(run)
                if m is not None:
                    out = self._page_trap(m)
            if out is not None:
                if out.exit_reason == kvm.KVM_EXIT_INTR:
                    self._kick_pending = False
                return out

    def _run_once(self) -> KvmRun:
        self._complete_pending_in()
        with self._run_lock:
            self._running_thread = threading.get_ident()
        try:
            ret = libc.ioctl(self.fd, u.KVM_RUN, None)
            err = ctypes.get_errno() if ret < 0 else 0
        finally:
            with self._run_lock:
                self._running_thread = None
        if ret < 0:
            if err in (errno.EINTR, errno.EAGAIN):
                self.kvm_run.immediate_exit = 0
                return KvmRun(kvm.KVM_EXIT_INTR)
            raise kvm.KvmError(err, f"KVM_RUN failed: {os.strerror(err)}")
        return self._decode_exit()

    def kick(self, timeout: float = 1.0) -> None:
        """Make run() return KVM_EXIT_INTR soon; callable from any thread. If no run() is in
        progress, the next one returns KVM_EXIT_INTR at once."""
        self._kick_pending = True  # survives finish_step()'s own use of immediate_exit
        self.kvm_run.immediate_exit = 1
        with self._run_lock:
            tid = self._running_thread
            if tid is not None and tid != threading.get_ident():
                signal.pthread_kill(tid, KICK_SIGNAL)

    def complete_pending_io(self) -> None:
        """Let KVM finish an instruction whose I/O or MMIO exit was just served, without running
        any further (KVM_RUN with immediate_exit = 1, per api.rst). Needed before reading
        registers for a snapshot or single-stepping past an `out`: until then RIP is still on
        the instruction and its effect is not complete."""
        self.kvm_run.immediate_exit = 1
        run = self.run()
        if run.exit_reason != kvm.KVM_EXIT_INTR:
            raise kvm.KvmError(errno.EIO, f"completing pending I/O gave {run} instead of KVM_EXIT_INTR")

    def access_in_flight(self) -> bool:
        """Is an IN or MMIO read waiting for the next run() to complete it (no snapshot now)?"""
        return self._pending_in is not None

    def _complete_pending_in(self) -> None:
        pending, self._pending_in = self._pending_in, None
        if pending is None:
            return
        r = self.kvm_run
        if pending.io is not None:
            n = pending.io.size * pending.io.count
            data = bytes(pending.io.data[:n]).ljust(n, b"\0")
            ctypes.memmove(ctypes.addressof(r) + r.io.data_offset, data, n)
        elif pending.mmio is not None:
            n = min(8, pending.mmio.len)
            ctypes.memmove(r.mmio.data, bytes(pending.mmio.data[:n]).ljust(n, b"\0"), n)

    def _decode_exit(self) -> KvmRun:
        r = self.kvm_run
        reason = r.exit_reason
        out = KvmRun(reason, flags=r.flags)
        if reason == kvm.KVM_EXIT_IO:
            io = r.io
            n = io.size * io.count
            data = bytearray(ctypes.string_at(ctypes.addressof(r) + io.data_offset, n))
            out.io = kvm.IoExit(io.direction, io.size, io.port, io.count, data)
            if io.direction == u.KVM_EXIT_IO_IN:
                self._pending_in = out
        elif reason == kvm.KVM_EXIT_MMIO:
            m = r.mmio
            out.mmio = kvm.MmioExit(m.phys_addr, m.len, bool(m.is_write), bytearray(bytes(m.data)))
            if not m.is_write:
                self._pending_in = out
        elif reason == kvm.KVM_EXIT_DEBUG:
            a = r.debug.arch
            out.debug = kvm.DebugExitX86(a.exception, a.pc, a.dr6, a.dr7)
        elif reason == kvm.KVM_EXIT_INTERNAL_ERROR:
            i = r.internal
            words = list(i.data[:min(i.ndata, 16)])
            what = INTERNAL_SUBERRORS.get(i.suberror, f"suberror {i.suberror}")
            out.internal = kvm.InternalErrorExit(i.suberror, f"KVM_EXIT_INTERNAL_ERROR: {what}", words)
        elif reason == kvm.KVM_EXIT_FAIL_ENTRY:
            f = r.fail_entry
            out.internal = kvm.InternalErrorExit(
                0, f"KVM_EXIT_FAIL_ENTRY: hardware_entry_failure_reason={f.hardware_entry_failure_reason:#x} "
                   f"on cpu {f.cpu}", [f.hardware_entry_failure_reason])
        elif reason == kvm.KVM_EXIT_SYSTEM_EVENT:
            e = r.system_event
            out.system_event = kvm.SystemEventExit(e.type, list(e.data[:min(e.ndata, 16)]), "KVM")
        return out

    # ------------------------------------------------------------------ KVM_SET_GUEST_DEBUG
    def set_guest_debug(self, control: int, arch: u.kvm_guest_debug_arch | None = None) -> None:
        """KVM_SET_GUEST_DEBUG: control is KVM_GUESTDBG_*, arch.debugreg = DR0-3, -, -, DR6, DR7.
        Control bits outside KVM_CAP_SET_GUEST_DEBUG2's mask are EINVAL (checked here too, so a
        host that does not check behaves the same)."""
        mask = self.guestdbg_valid_mask
        if mask and control & ~mask:
            raise kvm.einval(f"unsupported guest debug control bits {control & ~mask:#x} (valid: {mask:#x})")
        self._assist_end()
        self.guestdbg_arch = self._program_debug(control, arch)
        self.guestdbg_control = control

    def _program_debug(self, control: int, arch: u.kvm_guest_debug_arch | None) -> u.kvm_guest_debug_arch:
        """KVM_SET_GUEST_DEBUG as it is, without changing what the debugger asked for (the fetch
        assist adds its single step this way)."""
        dbg = u.kvm_guest_debug(control=control)
        if arch is not None:
            dbg.arch = arch
        ioctl(self.fd, u.KVM_SET_GUEST_DEBUG, dbg, what=f"KVM_SET_GUEST_DEBUG(control={control:#x})")
        return dbg.arch

    # ------------------------------------------------------------------ translation
    def kvm_translate(self, linear_address: int) -> tuple[int, bool] | None:
        """KVM_TRANSLATE: (physical address, writeable) of a linear address, or None if unmapped."""
        t = u.kvm_translation(linear_address=linear_address)
        ioctl(self.fd, u.KVM_TRANSLATE, t, what="KVM_TRANSLATE")
        return (t.physical_address, bool(t.writeable)) if t.valid else None

    def translate(self, va: int, access: str = "read") -> int:
        """Guest virtual to physical through the guest's page tables (KVM_TRANSLATE), as the
        manager asks it; EFAULT when unmapped, EACCES for a write to a read-only mapping."""
        got = self.kvm_translate(va)
        if got is None:
            raise kvm.KvmError(errno.EFAULT, f"{va:#x} is not mapped")
        if access == "write" and not got[1]:
            raise kvm.KvmError(errno.EACCES, f"{va:#x} is mapped read-only")
        return got[0]

    @property
    def pc(self) -> int:
        return self.get_regs().rip
