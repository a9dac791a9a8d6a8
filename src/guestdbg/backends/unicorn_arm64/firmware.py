"""Firmware services the hypervisor provides: PSCI over HVC/SMC and Arm semihosting (HLT #0xF000).

PSCI CPU_ON, CPU_OFF and AFFINITY_INFO are the board's: it installs a power-control callback
on each vCPU (`power_control`, as a VMM handles the PSCI calls KVM forwards to it), which
answers them; a successful CPU_OFF then ends the caller's run() with KVM_EXIT_HLT (the board
knows it is off and runs it no more until a CPU_ON). Without a callback CPU_ON is refused and
the others are NOT_SUPPORTED, as for a machine of one CPU with no power control.

A guest's power-off or exit is a KVM_EXIT_SYSTEM_EVENT carrying its exit status, and PSCI
SYSTEM_RESET one of type KVM_SYSTEM_EVENT_RESET, as KVM reports them: the board decides whether
a reset reboots or ends the run. All are reached from exception dispatch (exceptions.py):
Unicorn reports HVC, SMC and HLT as undefined instructions, and the VMM completes them for the
guest.
"""

from __future__ import annotations

from typing import Callable

from unicorn import arm64_const as uca

from guestdbg import kvm
from guestdbg.backends.unicorn_arm64.arch import PAGE_SIZE
from guestdbg.backends.unicorn_arm64.core import VcpuCore
from guestdbg.kvm import KvmRun

# PSCI (DEN0022) and SMCCC function ids and results.
PSCI_0_2_FN_PSCI_VERSION = 0x84000000
PSCI_0_2_FN_CPU_SUSPEND = 0x84000001
PSCI_0_2_FN64_CPU_SUSPEND = 0xC4000001
PSCI_0_2_FN_CPU_OFF = 0x84000002
PSCI_0_2_FN_CPU_ON = 0x84000003
PSCI_0_2_FN64_CPU_ON = 0xC4000003
PSCI_0_2_FN_AFFINITY_INFO = 0x84000004
PSCI_0_2_FN64_AFFINITY_INFO = 0xC4000004
PSCI_0_2_FN_MIGRATE_INFO_TYPE = 0x84000006
PSCI_0_2_FN_SYSTEM_OFF = 0x84000008
PSCI_0_2_FN_SYSTEM_RESET = 0x84000009
PSCI_1_0_FN_PSCI_FEATURES = 0x8400000A
# PSCI 1.0, as the board's DTB says ("arm,psci-1.0", "arm,psci-0.2").
PSCI_VERSION_1_0 = 0x00010000
PSCI_RET_SUCCESS = 0
PSCI_RET_NOT_SUPPORTED = -1
PSCI_RET_INVALID_PARAMS = -2
PSCI_RET_DENIED = -3
PSCI_RET_ALREADY_ON = -4
PSCI_RET_ON_PENDING = -5
# MIGRATE_INFO_TYPE: 2 = no Trusted OS, or one that needs no migration (QEMU's answer).
PSCI_TOS_NOT_PRESENT_MP = 2
# What PSCI_FEATURES reports as implemented (0: present, and for CPU_SUSPEND the original
# power_state format); POWER_CONTROL_FNS too when the board answers them.
PSCI_IMPLEMENTED = frozenset({PSCI_0_2_FN_PSCI_VERSION, PSCI_0_2_FN_CPU_SUSPEND, PSCI_0_2_FN64_CPU_SUSPEND,
                              PSCI_0_2_FN_MIGRATE_INFO_TYPE, PSCI_0_2_FN_SYSTEM_OFF, PSCI_0_2_FN_SYSTEM_RESET,
                              PSCI_1_0_FN_PSCI_FEATURES})
# The calls the board's power-control callback answers.
POWER_CONTROL_FNS = frozenset({PSCI_0_2_FN_CPU_ON, PSCI_0_2_FN64_CPU_ON, PSCI_0_2_FN_CPU_OFF,
                               PSCI_0_2_FN_AFFINITY_INFO, PSCI_0_2_FN64_AFFINITY_INFO})
# (calling vCPU id, function id, x1, x2, x3) -> the PSCI result for x0.
PowerControl = Callable[[int, int, int, int, int], int]

# Arm semihosting (IHI 0016) operations.
SYS_WRITEC = 0x03
SYS_WRITE0 = 0x04
SYS_EXIT = 0x18
SYS_EXIT_EXTENDED = 0x20
ADP_Stopped_ApplicationExit = 0x20026  # noqa: N816 (semihosting spec name)
SEMIHOSTING_HLT = 0xD4400000 | (0xF000 << 5)


# HVC #imm and SMC #imm (PSCI calls), as `insn & HVC_SMC_MASK in HVC_SMC`.
HVC_SMC_MASK = 0xFFE0001F
HVC_SMC = (0xD4000002, 0xD4000003)


class FirmwareCalls(VcpuCore):
    """PSCI and semihosting, done for the guest as a hypervisor would."""

    # The board's answer to CPU_ON/CPU_OFF/AFFINITY_INFO (see the module docstring).
    power_control: PowerControl | None = None

    def _semihosting(self, pc: int) -> KvmRun | None:
        """HLT #0xF000 at `pc`, done for the guest; it then returns past the HLT."""
        uc = self.uc
        self._retire()
        op = uc.reg_read(uca.UC_ARM64_REG_X0) & 0xFFFFFFFF
        arg = uc.reg_read(uca.UC_ARM64_REG_X1)
        result = 0
        if op == SYS_WRITEC:
            self.vm.console(self.read_virt(arg, 1))
        elif op == SYS_WRITE0:
            self.vm.console(self._read_c_string(arg))
        elif op in (SYS_EXIT, SYS_EXIT_EXTENDED):
            block = self.read_virt(arg, 16)
            reason = int.from_bytes(block[:8], "little")
            subcode = int.from_bytes(block[8:], "little")
            status = subcode & 0xFFFFFFFF if reason == ADP_Stopped_ApplicationExit else 1
            uc.reg_write(uca.UC_ARM64_REG_PC, pc + 4)
            return KvmRun(kvm.KVM_EXIT_SYSTEM_EVENT,
                          system_event=kvm.SystemEventExit(kvm.KVM_SYSTEM_EVENT_SHUTDOWN, [status],
                                                           f"semihosting {'SYS_EXIT' if op == SYS_EXIT else 'SYS_EXIT_EXTENDED'}"))
        else:
            result = (1 << 64) - 1  # -1: operation not supported
        uc.reg_write(uca.UC_ARM64_REG_X0, result)
        uc.reg_write(uca.UC_ARM64_REG_PC, pc + 4)
        return None

    def _read_c_string(self, va: int, limit: int = 1 << 20) -> bytes:
        out = bytearray()
        while len(out) < limit:
            chunk = self.read_virt(va, min(64, PAGE_SIZE - va % PAGE_SIZE))
            nul = chunk.find(0)
            if nul >= 0:
                return bytes(out + chunk[:nul])
            out += chunk
            va += len(chunk)
        return bytes(out)

    def _psci(self, pc: int, *, retired: bool = False) -> KvmRun | None:
        """A PSCI call (HVC or SMC at `pc`), done for the guest as a hypervisor would.
        `retired`: the instruction count already includes the call."""
        uc = self.uc
        fn = uc.reg_read(uca.UC_ARM64_REG_X0) & 0xFFFFFFFF
        uc.reg_write(uca.UC_ARM64_REG_PC, pc + 4)  # HVC/SMC return past the call
        if not retired:
            self._retire()
        if fn in (PSCI_0_2_FN_SYSTEM_OFF, PSCI_0_2_FN_SYSTEM_RESET):
            # Reported to the VMM, as KVM does; for a reset, the board reboots or ends the run.
            off = fn == PSCI_0_2_FN_SYSTEM_OFF
            event = kvm.SystemEventExit(kvm.KVM_SYSTEM_EVENT_SHUTDOWN if off else kvm.KVM_SYSTEM_EVENT_RESET, [0],
                                        "PSCI SYSTEM_OFF" if off else "PSCI SYSTEM_RESET")
            return KvmRun(kvm.KVM_EXIT_SYSTEM_EVENT, system_event=event)
        if fn == PSCI_0_2_FN_PSCI_VERSION:
            result = PSCI_VERSION_1_0
        elif fn == PSCI_1_0_FN_PSCI_FEATURES:
            queried = uc.reg_read(uca.UC_ARM64_REG_X1) & 0xFFFFFFFF
            implemented = queried in PSCI_IMPLEMENTED or (self.power_control is not None and queried in POWER_CONTROL_FNS)
            result = PSCI_RET_SUCCESS if implemented else PSCI_RET_NOT_SUPPORTED
        elif fn in POWER_CONTROL_FNS and self.power_control is not None:
            args = [uc.reg_read(r) for r in (uca.UC_ARM64_REG_X1, uca.UC_ARM64_REG_X2, uca.UC_ARM64_REG_X3)]
            result = self.power_control(self.vcpu_id, fn, *args)
            if fn == PSCI_0_2_FN_CPU_OFF and result == PSCI_RET_SUCCESS:
                return KvmRun(kvm.KVM_EXIT_HLT)  # off: the board runs it no more
        elif fn == PSCI_0_2_FN_MIGRATE_INFO_TYPE:
            result = PSCI_TOS_NOT_PRESENT_MP
        elif fn in (PSCI_0_2_FN_CPU_SUSPEND, PSCI_0_2_FN64_CPU_SUSPEND):
            # A standby state may return at once (any wake-up event ends it): as WFI, done.
            result = PSCI_RET_SUCCESS
        elif fn in (PSCI_0_2_FN_CPU_ON, PSCI_0_2_FN64_CPU_ON):
            result = PSCI_RET_INVALID_PARAMS  # no power control from the board: no other CPU
        else:
            result = PSCI_RET_NOT_SUPPORTED  # CPU_OFF, AFFINITY_INFO (SMP), SMCCC calls, anything else
        uc.reg_write(uca.UC_ARM64_REG_X0, result & ((1 << 64) - 1))
        return None
