"""Build every guest in guests/ and check its documented behaviour under QEMU.

Skips (with a printed reason) only when qemu-system-aarch64 is missing; a
missing cross toolchain is an error.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from tests.helpers import qemu_runner  # noqa: E402
from tests.helpers.qemu_runner import build_guests, elf_read, elf_symbols, run_under_qemu  # noqa: E402


@pytest.fixture(scope="session")
def guests(tmp_path_factory) -> Path:
    return build_guests(tmp_path_factory.mktemp("guests"))


def run(guests: Path, name: str, **kw):
    out, status = run_under_qemu(guests / name, **kw)
    print(out)
    return out.splitlines(), status


def test_all_outputs_built(guests):
    names = ["demo", "hello", "poweroff", "exit_ext", "exceptions", "watch", "guest_debug",
             "el0_context", "rom_boot", "loop", "mixer", "bp_targets", "selfmod"]
    for n in names:
        assert (guests / f"{n}.elf").is_file(), n
    assert (guests / "rom_boot.bin").stat().st_size > 0


def test_build_is_reproducible_and_path_free(guests, tmp_path):
    other = build_guests(tmp_path / "deeper" / "dir")
    for elf in sorted(guests.glob("*.elf")) + [guests / "rom_boot.bin"]:
        a, b = elf.read_bytes(), (other / elf.name).read_bytes()
        assert a == b, f"{elf.name} differs between build dirs"
        for p in (str(guests), str(other), str(qemu_runner.REPO)):
            assert p.encode() not in a, f"{elf.name} contains build path {p}"


def test_demo(guests):
    lines, status = run(guests, "demo.elf")
    assert lines == [
        "guestdbg demo guest",
        "fib: 0 1 1 2 3 5 8 13 21 34 55 89",
        "crc32: 0x29058c73",
        "counter: 100",
        "demo: done",
    ]
    assert status == 0
    syms = elf_symbols(guests / "demo.elf")
    for s in ("main", "demo_counter", "demo_tick", "fib", "crc32"):
        assert s in syms


def test_hello(guests):
    lines, status = run(guests, "hello.elf")
    assert lines == ["hello: uart", "S", "hello: semihosting write0", "hello: exiting with 7"]
    assert status == 7


def test_poweroff(guests):
    lines, status = run(guests, "poweroff.elf")
    assert lines == ["poweroff: calling PSCI SYSTEM_OFF"]
    assert status == 0


def test_exit_ext(guests):
    lines, status = run(guests, "exit_ext.elf")
    assert lines == ["exit_ext: SYS_EXIT_EXTENDED 5"]
    assert status == 5


EXC_RE = re.compile(r"exc vec=(\d+) EC=0x([0-9a-f]{2}) ESR=0x([0-9a-f]{8}) ELR=0x([0-9a-f]{8}) "
                    r"FAR=(-|0x[0-9a-f]{8}) SPSR=0x([0-9a-f]{8})$")


def test_exceptions(guests):
    elf = guests / "exceptions.elf"
    lines, status = run(guests, "exceptions.elf")
    syms = elf_symbols(elf)
    assert status == 0
    assert lines[0] == "exceptions: start"
    exc = [EXC_RE.match(l) for l in lines[1:5]]
    assert all(exc), lines[1:5]
    # (ec, esr, elr, far)
    expected = [
        (0x15, 0x56000042, syms["exc_svc"] + 4, "-"),       # SVC: ELR past the insn
        (0x3C, 0xF2000007, syms["exc_brk"], "-"),
        (0x00, 0x02000000, syms["exc_udf"], "-"),
        (0x25, 0x96000010, syms["exc_dabt"], "0x7ff00000"),  # sync external abort, DFSC 0x10
    ]
    for m, (ec, esr, elr, far) in zip(exc, expected):
        assert int(m.group(1)) == 4                   # current EL, SP_ELx, synchronous
        assert int(m.group(2), 16) == ec
        assert int(m.group(3), 16) == esr
        assert int(m.group(4), 16) == elr
        assert m.group(5) == far
        assert int(m.group(6), 16) & 0x3FF == 0x3C5   # EL1h, DAIF masked
    unassigned = struct.unpack("<Q", elf_read(elf, syms["exc_unassigned_addr"], 8))[0]
    assert unassigned == 0x7FF00000
    assert lines[5:7] == ["dabt load skipped, x0=0x5a5a5a5a", "hvc x0=-1"]
    # A call to an unassigned address: an instruction abort (EC 0x21), synchronous external
    # abort (IFSC 0x10), ELR and FAR the address itself.
    m = EXC_RE.match(lines[7])
    assert m, lines[7]
    assert (int(m.group(2), 16), int(m.group(3), 16), int(m.group(4), 16), m.group(5)) == \
        (0x21, 0x86000010, 0x7FF00000, "0x7ff00000")
    assert lines[8:] == [
        "iabt returned",
        "exceptions: count=5",
        "exceptions: done",
    ]


WDATA_HEX = ("0011222233333333" "4444444444444444"
             "0000005555555555" "5555550000000000"
             "6666666666666666" "7777777777777777"
             "9999999999999999" "8888888888888888")


def test_watch(guests):
    lines, status = run(guests, "watch.elf")
    assert lines == ["watch: start", "wdata: " + WDATA_HEX, "watch: done"]
    assert status == 0
    syms = elf_symbols(guests / "watch.elf")
    order = ["acc_strb", "acc_strh", "acc_str_w", "acc_str_x", "acc_str_unaligned", "acc_stp",
             "acc_str_q", "acc_ldrb", "acc_ldr_x", "acc_ldp", "acc_ldr_q", "acc_end"]
    addrs = [syms[s] for s in order]
    assert addrs == [addrs[0] + 4 * i for i in range(len(order))]
    assert syms["wdata"] % 64 == 0
    assert syms["far_page"] % 4096 == 0
    assert syms["far_page"] // 4096 != syms["wdata"] // 4096


def test_guest_debug(guests):
    lines, status = run(guests, "guest_debug.elf")
    assert lines == [
        "dfr0=0x0000000010305106 brps=6 wrps=4 ctx_cmps=2",
        "bkpt: EC=0x31 ESR=0xc6000022 ELR=target_fn runs=0",
        "after bkpt: runs=1 hits=1",
        "watch: EC=0x35 ESR=0xd6000062 WnR=1 FAR-&gvar=0 ELR=store_gvar_insn gvar=0xabcd",
        "after watch: gvar=0x1234 hits=1",
        "dbgbvr1=0x0000deadbeef0000",
        "dbgbcr1=0x00000000000001e6",
        "dbgwvr1=0x0000123456789ab8",
        "dbgwcr1=0x00000000000001fe",
        "mdscr=0x000000000000a000",
        "gvar=0x1234",
        "guest_debug: done",
    ]
    assert status == 0
    syms = elf_symbols(guests / "guest_debug.elf")
    assert syms["gvar"] % 8 == 0
    for s in ("target_fn", "store_gvar", "store_gvar_insn"):
        assert s in syms


def test_el0_context(guests):
    lines, status = run(guests, "el0_context.elf")
    assert lines == [
        "phase el1 ctx=0x11 ok",
        "phase el0 ctx=0x11 ok",
        "phase el1 ctx=0x22 ok",
        "phase el0 ctx=0x22 ok",
        "el0_context: calls=4 svcs=2",
        "el0_context: done",
    ]
    assert status == 0
    syms = elf_symbols(guests / "el0_context.elf")
    for s in ("ctx_work", "el0_entry", "el0_svc", "el0_return", "run_at_el0", "ctx_work_calls"):
        assert s in syms


def test_rom_boot(guests):
    lines, status = run(guests, "rom_boot.bin", bios=True)
    # QEMU's pflash treats the store as an (unknown) flash command and stays in
    # read-array mode, so the word reads back unchanged.
    assert lines == ["rom_boot: start", "rom write ignored", "ram routine ran", "rom_boot: done"]
    assert status == 0
    syms = elf_symbols(guests / "rom_boot.elf")
    assert syms["_start"] == 0
    assert syms["rom_data"] < 0x0800_0000 and syms["ram_code"] == 0x4010_0000
    binary = (guests / "rom_boot.bin").read_bytes()
    assert binary[syms["rom_data"]:syms["rom_data"] + 4] == struct.pack("<I", 0x600DC0DE)


def test_loop(guests):
    elf = guests / "loop.elf"
    lines, status = run(guests, "loop.elf")
    assert lines == ["loop: done"]
    assert status == 0
    syms = elf_symbols(elf)
    assert syms["loop_end"] - syms["loop_body"] == 16          # 4 instructions
    assert syms["loop_body"] - syms["main"] == 20              # 5 instructions of setup
    assert struct.unpack("<Q", elf_read(elf, syms["loop_iterations"], 8))[0] == 20_000_000
    assert syms["idle_page"] % 4096 == 0


def test_mixer(guests):
    lines, status = run(guests, "mixer.elf", timeout=60)
    assert lines == [
        "mixer: start",
        "mixer: pass=50000 checksum=0x04dc8fa21803ebe6 acc=0x400308d48ef9e37c",
        "mixer: pass=100000 checksum=0x763fa5b564439ab7 acc=0x4004725a3f471735",
        "mixer: pass=150000 checksum=0x23383bce3aa44f41 acc=0x3ffc869978885231",
        "mixer: pass=200000 checksum=0xed424ab284b4dc1e acc=0x3ffbb003169ad514",
        "mixer: checksum=0xd2b9fab1922e090a",
    ]
    assert status == 0


def test_bp_targets(guests):
    lines, status = run(guests, "bp_targets.elf")
    assert lines == ["bp_targets: a=3 b=3 c=3 brk=1"]
    assert status == 0
    syms = elf_symbols(guests / "bp_targets.elf")
    for s in ("bp_a", "bp_b", "bp_c", "guest_brk"):
        assert s in syms


def test_selfmod(guests):
    elf = guests / "selfmod.elf"
    lines, status = run(guests, "selfmod.elf")
    assert lines == ["selfmod: start", "selfmod: first call returned 1",
                     "selfmod: second call returned 2", "selfmod: done"]
    assert status == 0
    syms = elf_symbols(elf)
    assert syms["code_slot"] % 64 == 0
    assert syms["patched_fn_end"] - syms["patched_fn"] == 8
    assert syms["patched_fn_v2_end"] - syms["patched_fn_v2"] == 12
    # the two versions start with different instructions, and the slot starts as udf #0
    assert elf_read(elf, syms["patched_fn"], 4) != elf_read(elf, syms["patched_fn_v2"], 4)
    assert elf_read(elf, syms["code_slot"], 64) == bytes(64)


def test_semihosting_unmerged_goes_to_stderr(guests):
    """The plain `-serial stdio -semihosting` command: stdout has only the UART."""
    out, status = run_under_qemu(guests / "hello.elf", merge_semihosting=False)
    assert out.splitlines() == ["hello: uart", "hello: exiting with 7"]
    assert status == 7
