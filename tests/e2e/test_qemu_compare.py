"""The same ELF under guestdbg and under qemu-system-aarch64 -M virt -cpu cortex-a57: the same
output, byte for byte, and the same exit status. Exception syndromes, guest-owned breakpoints
and watchpoints, EL0 and PSCI are all in what gets compared."""

from __future__ import annotations

import pytest

from tests.helpers.qemu_runner import run_under_qemu
from tests.helpers.support import Guest

GUESTS = ["demo", "hello", "poweroff", "exit_ext", "exceptions", "watch", "guest_debug",
          "el0_context", "mixer", "bp_targets", "loop", "mmu", "selfmod", "svcloop", "sysregs", "crunch"]


@pytest.mark.parametrize("name", GUESTS)
def test_same_output_as_qemu(guest_dir, name):
    elf = guest_dir / f"{name}.elf"
    qemu_out, qemu_status = run_under_qemu(elf, timeout=60)
    g = Guest(elf)
    status = g.run_to_exit()
    assert g.text == qemu_out
    assert status == qemu_status
