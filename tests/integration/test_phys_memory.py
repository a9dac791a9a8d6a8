"""Physical memory mode (QEMU's PhyMemMode: `Qqemu.PhyMemMode:0|1`, `qqemu.PhyMemMode`, and
`monitor phys on|off`): m, M, X and qMemoryRegionInfo take guest-physical addresses while it is
on; breakpoints stay virtual.

The guest is assembled here: it turns its MMU on with RAM identity-mapped in 2 MiB blocks except
two that are swapped (VA SWAP_A maps PA SWAP_B and the other way round), then stores MARK_A
through VA SWAP_A and MARK_B through VA SWAP_B, so each physical page holds the other's mark.
"""

from __future__ import annotations

import pytest

from guestdbg.board.common import elf_symbols
from guestdbg.debug.manager import DebugError, GuestDebugManager, StopKind
from guestdbg.gdb.session import GdbSession, Reply
from tests.helpers.mmu_guest import MMU_ASM_HEADER, RAM, assemble
from tests.helpers.support import Guest

SWAP_A, SWAP_B = RAM + 0x20_0000, RAM + 0x40_0000
MARK_A, MARK_B = 0xAAAA_0001_AAAA_0002, 0xBBBB_0003_BBBB_0004

SWAP_GUEST_S = MMU_ASM_HEADER + r"""
    .text
    .global _start, marked
_start:
    enable_mmu l1, l1
    ldr     x1, =RAM + 0x200000
    ldr     x2, =0xAAAA0001AAAA0002
    str     x2, [x1]
    ldr     x1, =RAM + 0x400000
    ldr     x2, =0xBBBB0003BBBB0004
    str     x2, [x1]
marked:
    ldr     x0, =0x84000008   // PSCI SYSTEM_OFF
    hvc     #0
    b       .

    .data
    .balign 4096
l1:
    .quad   0x00000000 | BLOCK_DEVICE
    .quad   l2 + 3            // table descriptor for the RAM gigabyte
    .fill   510, 8, 0
    .balign 4096
l2:
    .quad   RAM + 0x000000 | BLOCK_NORMAL
    .quad   RAM + 0x400000 | BLOCK_NORMAL   // VA RAM+2M -> PA RAM+4M
    .quad   RAM + 0x200000 | BLOCK_NORMAL   // VA RAM+4M -> PA RAM+2M
    .set    n, 3
    .rept   509
    .quad   RAM + n * 0x200000 | BLOCK_NORMAL
    .set    n, n + 1
    .endr
"""


@pytest.fixture(scope="module")
def swap_guest(tmp_path_factory):
    return assemble(tmp_path_factory.mktemp("swap"), "swap", SWAP_GUEST_S)


@pytest.fixture
def marked(swap_guest):
    """A session stopped at `marked`: the MMU on, both marks stored."""
    g = Guest(swap_guest)
    m = GuestDebugManager(g.machine)
    at = elf_symbols(str(swap_guest))["marked"]
    m.add_breakpoint(at)
    event = m.cont()
    assert event.kind is StopKind.SWBREAK and event.pc == at, event
    return g, m, GdbSession(m)


def _u64(session: GdbSession, addr: int) -> int:
    reply = session.handle(b"m%x,8" % addr)
    assert isinstance(reply, Reply) and len(reply.payload) == 16, reply
    return int.from_bytes(bytes.fromhex(reply.payload.decode()), "little")


def _monitor(session: GdbSession, command: str) -> str:
    reply = session.handle(b"qRcmd," + command.encode().hex().encode())
    assert isinstance(reply, Reply)
    if reply.payload == b"OK":
        return ""
    assert reply.payload[:1] == b"O" and reply.then == (b"OK",), reply
    return bytes.fromhex(reply.payload[1:].decode()).decode()


def test_the_guest_swapped_its_pages(marked):
    g, m, s = marked
    assert int.from_bytes(g.vm.read_phys(SWAP_A, 8), "little") == MARK_B
    assert int.from_bytes(g.vm.read_phys(SWAP_B, 8), "little") == MARK_A


def test_qemu_packets_switch_m_between_virtual_and_physical(marked):
    g, m, s = marked
    assert s.handle(b"qqemu.PhyMemMode") == Reply(b"0")
    assert _u64(s, SWAP_A) == MARK_A                 # through the page tables
    assert s.handle(b"Qqemu.PhyMemMode:1") == Reply(b"OK")
    assert s.handle(b"qqemu.PhyMemMode") == Reply(b"1")
    assert _u64(s, SWAP_A) == MARK_B                 # the physical page
    assert _u64(s, SWAP_B) == MARK_A
    assert s.handle(b"Qqemu.PhyMemMode:0") == Reply(b"OK")
    assert _u64(s, SWAP_A) == MARK_A


@pytest.mark.parametrize("bad", [b"Qqemu.PhyMemMode", b"Qqemu.PhyMemMode:", b"Qqemu.PhyMemMode:2",
                                 b"Qqemu.PhyMemMode:on", b"Qqemu.PhyMemMode:1;"])
def test_bad_set_packet_is_einval_and_changes_nothing(marked, bad):
    g, m, s = marked
    s.handle(b"Qqemu.PhyMemMode:1")
    assert s.handle(bad) == Reply(b"E16")
    assert s.phys_memory and s.handle(b"qqemu.PhyMemMode") == Reply(b"1")


def test_monitor_phys_on_off_and_status(marked):
    g, m, s = marked
    assert _monitor(s, "phys").startswith("phys off")
    assert _monitor(s, "phys on").startswith("phys on")
    assert _monitor(s, "phys").startswith("phys on")
    assert _u64(s, SWAP_A) == MARK_B
    assert s.handle(b"qqemu.PhyMemMode") == Reply(b"1")  # one mode, two ways to set it
    assert _monitor(s, "phys OFF").startswith("phys off")
    assert _u64(s, SWAP_A) == MARK_A


def test_monitor_phys_bad_word_changes_nothing(marked):
    g, m, s = marked
    _monitor(s, "phys on")
    out = _monitor(s, "phys maybe")
    assert out == "error: monitor phys takes on or off, not 'maybe'\n"
    assert s.phys_memory and _u64(s, SWAP_A) == MARK_B
    assert "unknown monitor command" in _monitor(s, "phys on off")
    assert s.phys_memory


def test_physical_writes_M_and_X_reach_the_physical_page(marked):
    g, m, s = marked
    s.handle(b"Qqemu.PhyMemMode:1")
    assert s.handle(b"M%x,4:11223344" % SWAP_A) == Reply(b"OK")
    assert s.handle(b"X%x,2:\x55\x66" % (SWAP_B + 4)) == Reply(b"OK")
    assert g.vm.read_phys(SWAP_A, 4) == bytes.fromhex("11223344")
    assert g.vm.read_phys(SWAP_B + 4, 2) == b"\x55\x66"
    s.handle(b"Qqemu.PhyMemMode:0")
    assert _u64(s, SWAP_B) == int.from_bytes(bytes.fromhex("11223344") + MARK_B.to_bytes(8, "little")[4:],
                                             "little")  # VA SWAP_B is PA SWAP_A


def test_physical_reads_show_originals_under_breakpoints(marked, swap_guest):
    g, m, s = marked
    at = elf_symbols(str(swap_guest))["_start"]
    original = g.vm.read_phys(at, 4)
    m.in_run_breakpoints = False  # a BRK patch (policy 18 patches nothing)
    s.handle(b"Z0,%x,4" % at)
    assert g.vm.read_phys(at, 4) != original         # patched
    s.handle(b"Qqemu.PhyMemMode:1")
    assert s.handle(b"m%x,4" % at) == Reply(original.hex().encode())


def test_physical_errors_outside_ram_and_rom(marked):
    g, m, s = marked
    s.handle(b"Qqemu.PhyMemMode:1")
    assert s.handle(b"m%x,8" % (RAM + (128 << 20))) == Reply(b"E0e")  # EFAULT, past RAM
    with pytest.raises(DebugError):
        m.read_memory(1 << 64, 1, physical=True)


def test_physical_region_info_is_the_board_layout(marked):
    g, m, s = marked
    s.handle(b"Qqemu.PhyMemMode:1")
    r = s.handle(b"qMemoryRegionInfo:%x" % SWAP_A)
    assert isinstance(r, Reply) and r.payload.startswith(b"start:%x;" % RAM), r


def test_new_session_starts_virtual(marked):
    g, m, s = marked
    s.handle(b"Qqemu.PhyMemMode:1")
    assert _u64(GdbSession(m), SWAP_A) == MARK_A


# ---------------------------------------------------------------------------------------------
# x86 on KVM: the same memory path (vm.read_phys/write_phys), no translation


def test_x86_physical_mode_reads_and_writes_guest_physical_memory(tmp_path_factory):
    from tests.integration.test_kvm_x86 import _NO_KVM, x86_guests
    from tests.integration.test_kvm_x86 import Guest as X86Guest
    if _NO_KVM is not None:
        pytest.skip(f"/dev/kvm cannot be used: {_NO_KVM}")
    g = X86Guest(x86_guests.__wrapped__(tmp_path_factory) / "hello.elf")
    with g.machine:
        m = GuestDebugManager(g.machine)
        s = GdbSession(m)
        at = g.sym["main"]
        assert s.handle(b"Qqemu.PhyMemMode:1") == Reply(b"OK")
        assert s.handle(b"m%x,8" % at) == Reply(g.vm.read_phys(at, 8).hex().encode())
        assert s.handle(b"M%x,2:cafe" % (at + 0x10)) == Reply(b"OK")
        assert g.vm.read_phys(at + 0x10, 2) == b"\xca\xfe"
        assert _monitor(s, "phys").startswith("phys on")
