"""What this host's KVM really does for a debugger on the pc board (measured by pc_probe).

Each kind of x86 KVM host differs: VMX/SVM hosts deliver DR data watchpoints and int3 as clean
KVM_EXIT_DEBUG exits; `kvm_pvm` (no VMX/SVM in the CPU) emulates CPL0 code, never fires DR data
watchpoints, and ends int3 in 64-bit mode with KVM_EXIT_INTERNAL_ERROR. `HostDebugFacts` holds
the three answers (and what each exit looked like); `guestdbg.board.pc_probe.probe()` measures
them and `PcMachine.debug_facts` carries them to the debugger (debug/x86_arch.py), which
chooses its mechanisms from them (`mechanisms()`):

- software breakpoints (Z0): int3 when it exits cleanly; otherwise the DR execution slots,
  shared with hbreak and refused past the 4 registers (ENOSPC);
- hardware breakpoints (Z1): DR0-DR3 execution slots when they work;
- watchpoints (Z2/Z3/Z4): DR0-DR3 data slots when they fire, and past them (or always, when
  they do not) page traps: read-only memory slots for stores, no slot for loads, exact-range
  checked.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


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

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mechanisms"] = self.mechanisms()
        return d
