"""MMIO: accesses outside RAM and ROM, and their completion.

Devices the VMM registered are served inline (Unicorn's mmio_map; see Arm64Vm.map_device). Any
other access outside RAM/ROM stops the vCPU with KVM_EXIT_MMIO before the access; the next
run() completes it with the data the VMM put in kvm_run.mmio.data, or enters a synchronous
external abort if the VMM asked for one with set_vcpu_events(ext_dabt_pending=True). Writes to
a KVM_MEM_READONLY slot (ROM) exit the same way (debughw.py catches them) and are then dropped.
A device a watchpoint covers is taken off the inline path: its accesses fault here, are checked
against the watchpoints, and are then done by hand.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from unicorn import UC_MEM_FETCH_UNMAPPED, UC_MEM_WRITE_UNMAPPED

from guestdbg.arm import debugregs as dr
from guestdbg.backends.unicorn_arm64.arch import PAGE_MASK, PAGE_SIZE
from guestdbg.backends.unicorn_arm64.debughw import DebugHardware
from guestdbg.kvm import KVM_GUESTDBG_SINGLESTEP, KvmRun

if TYPE_CHECKING:
    from guestdbg.backends.unicorn_arm64.vm import Arm64Vm


class MmioAccess(DebugHardware):
    """UC_HOOK_MEM_UNMAPPED, MMIO exits and their completion, KVM_SET_VCPU_EVENTS."""

    def __init__(self, vm: Arm64Vm, vcpu_id: int = 0):
        super().__init__(vm, vcpu_id)
        self._ext_dabt_pending = False

    # KVM_SET_VCPU_EVENTS (arm64): the only event modelled is an external data abort, which a
    # VMM injects for an MMIO access it cannot handle.
    def set_vcpu_events(self, *, ext_dabt_pending: bool = False) -> None:
        self._ext_dabt_pending = ext_dabt_pending

    def access_in_flight(self) -> bool:
        """Is an MMIO access waiting for the next run() to complete it (no snapshot now)?"""
        return self._pending_mmio is not None

    def _on_unmapped_access(self, uc: Any, access: int, pa: int, size: int, value: int, _user: object) -> bool:
        if access == UC_MEM_FETCH_UNMAPPED:
            # Nothing is there to execute: a synchronous external abort on the fetch, taken by
            # the guest as QEMU's TCG does (an instruction abort, FSC 0x10, FAR = the address).
            # A guest with no handler then faults at its vector, which run() reports.
            pc = self.pc
            el = self.current_el()
            self._guest_exception = (dr.esr_instruction_abort(el == 0, dr.DFSC_EXTERNAL_ABORT), pc, pc)
            self._stopped_at = pc
            return False
        pc = self.pc
        if pc == self._suppress_pc and self._pending_mmio is not None:
            return False
        va, is_write = self._va_of_access(pa), access == UC_MEM_WRITE_UNMAPPED
        dev = self.vm.device_at(pa)
        if dev is not None:  # a device taken off the inline path because a watchpoint covers it
            owner = self._watch_hit(is_write, va, size) if pc != self._suppress_pc else None
            if owner is not None:
                self._debug_event(lambda lower: dr.esr_watchpoint(lower, wnr=is_write), far=va, at_pc=pc,
                                  owner=owner)
                return False
            self._mmio_exit(va, pa, size, is_write, value, to_vmm=False)
            self._device_access = dev
            return False
        self._mmio_exit(va, pa, size, is_write, value)
        return False

    def _device_access_done(self) -> KvmRun | None:
        """Do the access to a watched device that faulted (no watchpoint hit), then complete
        its instruction as for an MMIO exit the VMM served."""
        dev, self._device_access = self._device_access, None
        mmio = self._pending_mmio
        assert dev is not None and mmio is not None  # _on_unmapped_access recorded both
        offset = mmio.phys_addr - dev.base
        if mmio.is_write:
            dev.device.write(offset, mmio.len, int.from_bytes(mmio.data[:mmio.len], "little"))
        else:
            mmio.data[:mmio.len] = dev.device.read(offset, mmio.len).to_bytes(mmio.len, "little")
        return self._finish_pending_mmio()

    def _finish_pending_mmio(self) -> KvmRun | None:
        """Complete (or abort, if the VMM asked) the access that caused the last MMIO exit."""
        mmio, va = self._pending_mmio, self._pending_mmio_va
        assert mmio is not None  # called only while an access is pending
        pc = self.pc
        if self._ext_dabt_pending:
            self._pending_mmio = None
            self._ext_dabt_pending = False
            el = self.current_el()
            esr = dr.esr_data_abort(el == 0, mmio.is_write, dr.DFSC_EXTERNAL_ABORT)
            self._take_exception(esr, far=va, preferred_return=pc)
            return None
        slot = self.vm.slot_for(mmio.phys_addr)
        self._suppress_pc = pc
        mapped = None
        if slot is None:  # map a stand-in device for one instruction
            first = mmio.phys_addr & PAGE_MASK
            last = (mmio.phys_addr + mmio.len - 1) & PAGE_MASK
            mapped = (first, last + PAGE_SIZE - first)
            value = int.from_bytes(mmio.data[:mmio.len], "little")
            phys_addr = mmio.phys_addr

            def read(_uc: Any, offset: int, size: int, _ud: object) -> int:
                shift = 8 * (first + offset - phys_addr)
                return (value >> shift) & ((1 << (8 * size)) - 1) if shift >= 0 else 0

            self.uc.mmio_map(first, mapped[1], read, None, lambda *a: None, None)
        stepping = bool(self.guestdbg_control & KVM_GUESTDBG_SINGLESTEP)
        try:
            self._exit = None
            self._guest_exception = None
            fault = self._execute(self.icount + 1)
        finally:
            self._suppress_pc = None
            self._pending_mmio = None
            if mapped:
                self.uc.mem_unmap(*mapped)
        if self._exit is not None:
            return self._exit
        taken, result = self._take_pending_exception()
        if taken:
            return result or (self._softstep_exit() if stepping else None)
        if fault is not None:
            return self._internal_error(f"completing MMIO access at PC={pc:#x} failed: {fault}")
        return self._softstep_exit() if stepping else None
