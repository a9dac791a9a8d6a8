"""Snapshots through the register list: bit-identical continuation, no debugger state, and bad
files refused without touching the VM."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap

import pytest

from guestdbg import kvm, snapshot
from guestdbg.arm import kvm_regs as kr
from guestdbg.board.virt import VirtMachine, VirtConfig, RAM_BASE
from guestdbg.snapshot import SnapshotError
from tests.helpers.support import HW_DEBUG, Guest, breakpoint

DISTINCTIVE_BVR = 0x0000_7EAD_BEEF_0000


def all_regs(vcpu) -> dict[int, int]:
    return {r: vcpu.get_one_reg(r) for r in vcpu.get_reg_list()}


def ram_digest(machine) -> str:
    return hashlib.sha256(machine.vm.read_phys(RAM_BASE, machine.config.ram_size)).hexdigest()


def stop_mid_run(g: Guest, hits: int = 2) -> None:
    """Stop the mixer guest at the `hits`-th call of uart_put_dec (it prints the pass counts)."""
    bp = [breakpoint(g.sym["uart_put_dec"])]
    for _ in range(hits):
        g.set_debug(bps=bp)
        run = g.run()
        assert isinstance(run, kvm.KvmRun) and run.debug.ec == 0x30
        g.set_debug(HW_DEBUG | kvm.KVM_GUESTDBG_SINGLESTEP)  # step off, as a debugger does
        assert g.run().debug.ec == 0x32
    g.set_debug(0)


RESTORE_AND_FINISH = textwrap.dedent("""
    import json, sys
    from guestdbg import snapshot
    out = bytearray()
    m = snapshot.load(sys.argv[1], console=out.extend)
    assert m.vcpu.guestdbg_control == 0
    status = m.run_to_exit()
    regs = {str(r): m.vcpu.get_one_reg(r) for r in m.vcpu.get_reg_list()}
    print(json.dumps({"status": status, "output": out.decode(), "regs": regs}))
""")


def test_restore_in_fresh_process_continues_bit_identically(guest_dir, tmp_path):
    reference = Guest(guest_dir / "mixer.elf")
    assert reference.run_to_exit() == 0
    want_regs = all_regs(reference.vcpu)

    g = Guest(guest_dir / "mixer.elf")
    stop_mid_run(g)
    before = g.text
    assert "pass=50000" in before and "mixer: checksum" not in before
    # The debugger's state must not travel: arm something distinctive before saving.
    g.set_debug(bps=[(DISTINCTIVE_BVR, breakpoint(0)[1])])
    path = tmp_path / "mixer.snap"
    snapshot.save(g.machine, path)

    proc = subprocess.run([sys.executable, "-c", RESTORE_AND_FINISH, str(path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["status"] == 0
    assert before + result["output"] == reference.text
    assert {int(k): v for k, v in result["regs"].items()} == want_regs


def test_snapshot_holds_no_debugger_state(guest_dir):
    g = Guest(guest_dir / "bp_targets.elf")
    g.set_debug(bps=[(DISTINCTIVE_BVR, breakpoint(0)[1])], wps=[(DISTINCTIVE_BVR, 0x1FF)])
    data = snapshot.dumps(g.machine)
    parsed = snapshot._parse(data)
    assert all(value != DISTINCTIVE_BVR for _, value in parsed.registers)
    assert len(parsed.registers) == len(g.vcpu.get_reg_list())
    restored = VirtMachine(console=lambda b: None)
    snapshot.restore_into(restored, data)
    assert restored.vcpu.guestdbg_control == 0
    assert list(restored.vcpu.guestdbg_arch.dbg_bvr) == [0] * 16


def test_guest_owned_debug_registers_travel(guest_dir):
    g = Guest(guest_dir / "bp_targets.elf")
    bvr1 = kr.ARM64_SYS_REG(*kr.DBGBVRn_EL1(1))
    g.vcpu.set_one_reg(bvr1, 0x4010_0040)
    g.vcpu.set_one_reg(kr.sysreg_id("MDSCR_EL1"), 0x8000)
    restored = VirtMachine(console=lambda b: None)
    snapshot.restore_into(restored, snapshot.dumps(g.machine))
    assert restored.vcpu.get_one_reg(bvr1) == 0x4010_0040
    assert restored.vcpu.get_one_reg(kr.sysreg_id("MDSCR_EL1")) == 0x8000


@pytest.fixture()
def saved(guest_dir):
    g = Guest(guest_dir / "mixer.elf")
    stop_mid_run(g, hits=1)
    return snapshot.dumps(g.machine)


def corrupt(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 0x40
    return bytes(b)


@pytest.mark.parametrize("mangle,needle", [
    (lambda d: d[:len(d) // 2], "truncated"),
    (lambda d: d[:10], "truncated"),
    (lambda d: b"XXXXXXXX" + d[8:], "bad magic"),
    (lambda d: d[:8] + (99).to_bytes(4, "little") + d[12:], "version 99"),
    (lambda d: corrupt(d, len(d) - 100), "checksum"),
    (lambda d: corrupt(d, 60), "checksum"),
    (lambda d: b"", "truncated"),
])
def test_bad_snapshots_refused_and_vm_untouched(guest_dir, saved, mangle, needle):
    target = Guest(guest_dir / "hello.elf")
    regs, ram = all_regs(target.vcpu), ram_digest(target.machine)
    with pytest.raises(SnapshotError, match=needle):
        snapshot.restore_into(target.machine, mangle(saved))
    assert all_regs(target.vcpu) == regs and ram_digest(target.machine) == ram
    assert target.run_to_exit() == 7  # and the VM still works


def test_mismatched_machine_refused_and_untouched(guest_dir, saved):
    target = Guest(guest_dir / "hello.elf", VirtConfig(brps=8))
    regs, ram = all_regs(target.vcpu), ram_digest(target.machine)
    with pytest.raises(SnapshotError, match="different machine"):
        snapshot.restore_into(target.machine, saved)
    assert all_regs(target.vcpu) == regs and ram_digest(target.machine) == ram


def test_save_is_atomic(guest_dir, tmp_path, saved, monkeypatch):
    path = tmp_path / "s.snap"
    path.write_bytes(saved)
    g = Guest(guest_dir / "hello.elf")

    def boom(*a):
        raise OSError("disk full")

    monkeypatch.setattr(snapshot.os, "fsync", boom)
    with pytest.raises(OSError):
        snapshot.save(g.machine, path)
    assert path.read_bytes() == saved
    assert [p.name for p in tmp_path.iterdir()] == ["s.snap"]  # no temporary left behind


def test_load_missing_file(tmp_path):
    with pytest.raises(SnapshotError, match="no such file"):
        snapshot.load(tmp_path / "nope.snap")


def test_uncompressed_snapshot_of_a_loaded_but_unrun_machine_restores(guest_dir):
    """The debugger's reset point: dumps(compress=False) right after loading, before the guest
    ran, reads only what the loader wrote, and restores to the same output as a fresh run."""
    out = bytearray()
    m = VirtMachine(VirtConfig(), console=out.extend)
    m.load_elf(guest_dir / "hello.elf")
    image = snapshot.dumps(m, compress=False)
    status = m.run_to_exit(timeout=30)
    first = bytes(out)
    out.clear()
    m.vm.write_phys(0x4000_0000 + (8 << 20), b"dirt")  # memory the image says is zero
    snapshot.restore_into(m, image)
    assert m.vm.read_phys(0x4000_0000 + (8 << 20), 4) == bytes(4)
    assert m.run_to_exit(timeout=30) == status
    assert bytes(out) == first and first
