"""The architecture profile: everything above the board that depends on which architecture a
machine is, chosen once per machine (`profile_for`) and passed down.

A profile names the architecture ("aarch64" or "x86_64"), makes the machine's `DebugArch`
(the breakpoint instruction, slot encodings and exit decoding the manager's policy needs), and
holds the register catalogue at integer level (`arm.registers` or `x86.registers`: names, bit
sizes, gdb numbers, read-only flags, and reads and writes of a vCPU's registers as ints).

The debug manager takes the profile of its machine, `snapshot` names the board kind from it,
and the GDB session gets it from its manager (`manager.profile`) and picks its packet codec by
`profile.name`. Nothing else decides the architecture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence

from guestdbg.arm import registers as arm_registers
from guestdbg.debug.arch import Arm64DebugArch, DebugArch
from guestdbg.x86 import registers as x86_registers


class RegisterInfo(Protocol):
    """What every catalogue says about a register."""

    @property
    def name(self) -> str: ...

    @property
    def bitsize(self) -> int: ...

    @property
    def gdb_regnum(self) -> int: ...  # also its position in the catalogue

    @property
    def group(self) -> str: ...

    @property
    def readonly(self) -> bool: ...


class RegisterCatalogue(Protocol):
    """A register catalogue module (`arm.registers`, `x86.registers`). Registers are named by
    their number (gdb's numbering, their position in REGISTERS); values are unsigned ints of
    the register's bit size. Reads and writes raise KeyError for an unknown number and
    `RegisterError` for a write the vCPU cannot take (nothing is written then)."""

    @property
    def REGISTERS(self) -> Sequence[RegisterInfo]: ...  # noqa: N802 (module constant)

    @property
    def BY_NAME(self) -> Mapping[str, RegisterInfo]: ...  # noqa: N802 (module constant)

    @property
    def RegisterError(self) -> type[Exception]: ...  # noqa: N802 (module class)

    def read_all(self, vcpu: Any) -> list[int]: ...

    def read_one(self, vcpu: Any, regnum: int) -> int: ...

    def read(self, vcpu: Any, regnums: Sequence[int]) -> list[int]: ...

    def write(self, vcpu: Any, regnum: int, value: int) -> None: ...

    def write_all(self, vcpu: Any, values: Sequence[int]) -> None: ...

    def set_pc(self, vcpu: Any, pc: int) -> None: ...

    def translation_enabled(self, vcpu: Any) -> bool: ...


class HasArchName(Protocol):
    """What the profile needs of a machine: which architecture it is (a class attribute of
    each board)."""

    arch_name: str


@dataclass(frozen=True)
class ArchProfile:
    name: str                                # "aarch64" or "x86_64"
    registers: RegisterCatalogue             # the integer-level register catalogue
    _make_debug_arch: Callable[[Any], DebugArch]

    def debug_arch(self, machine: Any) -> DebugArch:
        """A new DebugArch for this machine (it keeps per-VM state: one per manager)."""
        return self._make_debug_arch(machine)


def _x86_debug_arch(machine: Any) -> DebugArch:
    from guestdbg.board import pc_probe
    from guestdbg.debug.x86_arch import X86DebugArch
    # The host's probed debug facts, which the pc board's factory
    # (guestdbg.board.pc_probe.create_pc_machine) sets on the machine; a PcMachine built
    # directly gets them here, so the strategy never assumes what the host can do.
    if machine.debug_facts is None:
        machine.debug_facts = pc_probe.probe()
    return X86DebugArch(machine.debug_facts)


AARCH64 = ArchProfile("aarch64", arm_registers, lambda machine: Arm64DebugArch())
X86_64 = ArchProfile("x86_64", x86_registers, _x86_debug_arch)
PROFILES: dict[str, ArchProfile] = {p.name: p for p in (AARCH64, X86_64)}


def profile_for(machine: HasArchName) -> ArchProfile:
    """The profile of a machine, by its board's `arch_name`."""
    try:
        return PROFILES[machine.arch_name]
    except KeyError:
        raise ValueError(f"no architecture profile for {machine.arch_name!r}") from None
