"""Several vCPUs on the virt board (issue 11): `VirtConfig(smp=N)` / `guestdbg run --smp N`.

- The bare-metal SMP guest (guests/smp) under N = 1, 2, 4 and 8 prints what it prints under
  qemu-system-aarch64 -smp N (compared where QEMU is installed; the -smp 4 text is also pinned
  from guests/README.md).
- The round-robin schedule is deterministic: two runs give the same instruction counts (every
  vCPU's, and the machine's clock) at every byte the guest prints.
- PSCI CPU_ON/CPU_OFF/AFFINITY_INFO answer as QEMU's arm-powerctl: error codes, ON_PENDING
  until the target's first turn, and the state a secondary starts in.
- Snapshots hold every vCPU and its power state; restoring one and running on gives the same
  output and counts as running on from where it was taken.
- The command line: --smp 0, 9 and x, and --smp 2 with --arch x86_64, are one-line refusals.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from guestdbg import kvm, snapshot
from guestdbg.arm import kvm_regs as kr
from guestdbg.backends.unicorn_arm64 import firmware as fw
from guestdbg.board import smp as smp_mod
from guestdbg.board.common import GuestFault
from guestdbg.board.virt import VirtConfig, VirtMachine
from tests.helpers.mmu_guest import assemble
from tests.helpers.qemu_runner import qemu_missing_reason, run_under_qemu
from tests.helpers.support import symbols

GUESTDBG = [sys.executable, "-m", "guestdbg.cli"]
README = Path(__file__).resolve().parents[2] / "guests" / "README.md"


def readme_output_smp4() -> str:
    text = README.read_text()
    section = text.split("### smp —", 1)[1].splitlines()
    start = next(i for i, line in enumerate(section) if line.startswith("    "))
    lines = []
    for line in section[start:]:
        if not line.startswith("    "):
            break
        lines.append(line[4:])
    return "\n".join(lines) + "\n"


def run_machine(elf, n: int, **config) -> tuple[str, int, VirtMachine]:
    out = bytearray()
    machine = VirtMachine(VirtConfig(smp=n, **config), console=out.extend)
    machine.load_elf(elf)
    status = machine.run_to_exit(timeout=120)
    return out.decode(), status, machine


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_smp_guest_output_is_qemus(guest_dir, n):
    out, status, machine = run_machine(guest_dir / "smp.elf", n)
    assert status == 0
    assert f"counter: {1000 * n} (ok)\n" in out and out.endswith("smp: done\n")
    assert [machine.cpu_state(i) for i in range(n)] == ["running"] + ["off"] * (n - 1)
    if n == 4:
        assert out == readme_output_smp4()
    if qemu_missing_reason() is None:
        qemu_out, qemu_status = run_under_qemu(guest_dir / "smp.elf", extra_args=("-smp", str(n)))
        assert (out, status) == (qemu_out, qemu_status)


def test_guestdbg_run_smp_4(guest_dir):
    r = subprocess.run(GUESTDBG + ["run", "--smp", "4", str(guest_dir / "smp.elf")], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == readme_output_smp4()


def _trace(elf, n: int) -> tuple[list[tuple], VirtMachine]:
    events: list[tuple] = []
    holder: list[VirtMachine] = []

    def console(data: bytes) -> None:
        m = holder[0]
        events.append((data, m.last_vcpu_id, m.machine_time, tuple(v.icount for v in m.vcpus)))

    machine = VirtMachine(VirtConfig(smp=n), console=console)
    holder.append(machine)
    machine.load_elf(elf)
    assert machine.run_to_exit(timeout=120) == 0
    return events, machine


def test_two_runs_interleave_identically(guest_dir):
    first, m1 = _trace(guest_dir / "smp.elf", 4)
    second, m2 = _trace(guest_dir / "smp.elf", 4)
    assert len(first) > 500
    assert first == second
    assert m1.machine_time == m2.machine_time == sum(v.icount for v in m1.vcpus)
    # Every vCPU printed (its own line) from its own turn.
    assert {vcpu for _, vcpu, _, _ in first} == {0, 1, 2, 3}


def test_quantum_bounds_a_turn(guest_dir):
    """While CPU 0 spins waiting for the others, it runs whole quanta: the turns alternate."""
    events, _ = _trace(guest_dir / "smp.elf", 2)
    cpu1 = [e for e in events if e[1] == 1]
    assert cpu1 and all(e[0] for e in cpu1)
    assert smp_mod.QUANTUM == VirtMachine.quantum == 100_000


# ----------------------------------------------------------------------------------- PSCI
def test_psci_power_control_answers_as_qemu():
    m = VirtMachine(VirtConfig(smp=3), console=lambda d: None)
    on, off, aff = fw.PSCI_0_2_FN64_CPU_ON, fw.PSCI_0_2_FN_CPU_OFF, fw.PSCI_0_2_FN64_AFFINITY_INFO
    entry = 0x4010_0000
    assert m.psci_power(0, aff, 1, 0, 0) == smp_mod.OFF == 1
    assert m.psci_power(0, on, 1, entry + 2, 0) == fw.PSCI_RET_INVALID_PARAMS  # misaligned entry
    assert m.psci_power(0, on, 3, entry, 0) == fw.PSCI_RET_INVALID_PARAMS  # no CPU 3
    assert m.psci_power(0, on, 0x8000_0001, entry, 0) == fw.PSCI_RET_INVALID_PARAMS  # not just Aff0
    assert m.psci_power(0, on, 0x100, entry, 0) == fw.PSCI_RET_INVALID_PARAMS  # Aff1 = 1: none
    assert m.psci_power(0, on, 0, entry, 0) == fw.PSCI_RET_ALREADY_ON
    assert m.psci_power(0, fw.PSCI_0_2_FN_CPU_ON, 1, entry, 0x1234) == fw.PSCI_RET_SUCCESS
    assert m.psci_power(0, aff, 1, 0, 0) == smp_mod.ON_PENDING == 2
    assert m.psci_power(0, on, 1, entry, 0) == fw.PSCI_RET_ON_PENDING
    assert m.psci_power(0, aff, 7, 0, 0) == fw.PSCI_RET_INVALID_PARAMS
    assert m.psci_power(0, aff, 7, 1, 0) == 0  # above level 0: always on
    assert m.cpu_state(1) == "running" and m.cpu_state(2) == "off"
    v = m.vcpus[1]
    assert v.get_one_reg(kr.KVM_REG_ARM_CORE_PC) == entry
    assert v.get_one_reg(kr.KVM_REG_ARM_CORE_X(0)) == 0x1234
    assert v.get_one_reg(kr.KVM_REG_ARM_CORE_PSTATE) == 0x3C5  # EL1h, DAIF masked
    sctlr = v.get_one_reg(kr.ARM64_SYS_REG(3, 0, 1, 0, 0))
    assert not sctlr & 1 and not sctlr & (1 << 2) and not sctlr & (1 << 12)  # MMU, caches off
    assert m.psci_power(1, off, 0, 0, 0) == fw.PSCI_RET_SUCCESS
    assert m.psci_power(0, aff, 1, 0, 0) == smp_mod.OFF


CPU_ON_GUEST = r"""
    .text
    .global _start, secondary, cpu_off_call, results
_start:
    mrs     x0, mpidr_el1
    and     x0, x0, #0xff
    cbnz    x0, secondary
    adr     x20, results
    ldr     x0, =0xC4000003         // CPU_ON(1, secondary, 0x77)
    mov     x1, #1
    adr     x2, secondary
    mov     x3, #0x77
    hvc     #0
    str     x0, [x20]
    ldr     x0, =0xC4000003         // again at once: ON_PENDING (it has not run yet)
    mov     x1, #1
    adr     x2, secondary
    mov     x3, #0x77
    hvc     #0
    str     x0, [x20, #8]
1:  ldr     x0, =0xC4000004         // AFFINITY_INFO(1) until OFF
    mov     x1, #1
    mov     x2, #0
    hvc     #0
    cmp     x0, #1
    b.ne    1b
    ldr     x0, =0x84000008         // SYSTEM_OFF
    hvc     #0
secondary:
    adr     x20, results
    str     x0, [x20, #16]          // context_id
    mrs     x1, CurrentEL
    str     x1, [x20, #24]
    mrs     x1, sctlr_el1
    str     x1, [x20, #32]
    ldr     x0, =0x84000002         // CPU_OFF
cpu_off_call:
    hvc     #0
    b       .                       // never: it is off
    .ltorg
    .data
    .balign 8
results:
    .fill   5, 8, 0
"""


@pytest.fixture(scope="module")
def cpu_on_elf(tmp_path_factory):
    return assemble(tmp_path_factory.mktemp("smp_cpu_on"), "cpu_on", CPU_ON_GUEST)


def test_cpu_on_then_cpu_off_in_a_guest(cpu_on_elf):
    m = VirtMachine(VirtConfig(smp=2), console=lambda d: None)
    m.load_elf(cpu_on_elf)
    assert m.run_to_exit(timeout=30) == 0
    sym = symbols(str(cpu_on_elf))
    words = [int.from_bytes(m.vm.read_phys(sym["results"] + 8 * i, 8), "little") for i in range(5)]
    assert words[0] == 0 and words[1] == (fw.PSCI_RET_ON_PENDING & (1 << 64) - 1)
    assert words[2] == 0x77 and words[3] == 1 << 2  # context_id in x0; EL1
    assert not words[4] & 1
    assert m.cpu_state(1) == "off"
    assert m.vcpus[1].pc == sym["cpu_off_call"] + 4


def test_every_cpu_off_is_a_hang_not_a_spin(tmp_path):
    elf = assemble(tmp_path, "alloff", """
    .text
    .global _start
_start:
    ldr     x0, =0x84000002
    hvc     #0
    b       .
    .ltorg
""")
    for n in (1, 2):
        m = VirtMachine(VirtConfig(smp=n), console=lambda d: None)
        m.load_elf(elf)
        with pytest.raises(GuestFault, match="every CPU off"):
            m.run_to_exit(timeout=20, hang_check=0.2)
        assert m.cpu_state(0) == "off"


def test_wfi_everywhere_skips_to_the_next_timer(tmp_path):
    """CPU 0 arms its virtual timer 1 ms ahead and waits in WFI (IRQs masked; the PPI wakes
    it through the GIC); the clock skips there instead of spinning."""
    elf = assemble(tmp_path, "timerwfi", r"""
    .text
    .global _start
_start:
    ldr     x1, =0x08000000
    mov     w2, #1
    str     w2, [x1]                // GICD_CTLR
    mov     w2, #(1 << 27)
    str     w2, [x1, #0x100]        // ISENABLER0: PPI 11 (INTID 27)
    ldr     x1, =0x08010000
    mov     w2, #0xf0
    str     w2, [x1, #4]            // GICC_PMR
    mov     w2, #1
    str     w2, [x1]                // GICC_CTLR
    mrs     x3, cntvct_el0
    ldr     x4, =62500              // 1 ms at 62.5 MHz
    add     x4, x3, x4
    msr     cntv_cval_el0, x4
    mov     x5, #1
    msr     cntv_ctl_el0, x5
1:  wfi
    mrs     x6, cntv_ctl_el0
    tbz     x6, #2, 1b              // ISTATUS
    ldr     x0, =0x84000008
    hvc     #0
    .ltorg
""")
    m = VirtMachine(VirtConfig(smp=2), console=lambda d: None)
    m.load_elf(elf)
    assert m.run_to_exit(timeout=20) == 0
    assert m.machine_time >= 1_000_000 > m.vcpus[0].icount


# ------------------------------------------------------------------------------- snapshots
def test_snapshot_holds_every_vcpu_and_restores_bit_identically(guest_dir):
    elf = guest_dir / "smp.elf"
    out = bytearray()
    m = VirtMachine(VirtConfig(smp=4), console=out.extend)
    m.load_elf(elf)
    assert isinstance(m.run_until(icount_limit=150_000), kvm.KvmRun)  # part way: CPUs counting
    assert [m.cpu_state(i) for i in range(4)].count("off") < 3
    data = snapshot.dumps(m)
    regs = [[v.get_one_reg(r) for r in v.get_reg_list()] for v in m.vcpus]
    state = m.smp_state()
    before = len(out)
    assert m.run_to_exit(timeout=60) == 0
    rest, counts = bytes(out[before:]), [v.icount for v in m.vcpus]

    out2 = bytearray()
    m2 = VirtMachine(VirtConfig(smp=4), console=out2.extend)
    snapshot.restore_into(m2, data)
    assert [[v.get_one_reg(r) for r in v.get_reg_list()] for v in m2.vcpus] == regs
    assert m2.smp_state() == state
    assert m2.run_to_exit(timeout=60) == 0
    assert bytes(out2) == rest and [v.icount for v in m2.vcpus] == counts

    with pytest.raises(snapshot.SnapshotError, match="different machine"):
        snapshot.restore_into(VirtMachine(VirtConfig(smp=2), console=lambda d: None), data)


def test_one_vcpu_snapshots_keep_their_format(guest_dir):
    m = VirtMachine(VirtConfig(), console=lambda d: None)
    m.load_elf(guest_dir / "hello.elf")
    data = snapshot.dumps(m)
    header = json.loads(data[56:56 + int.from_bytes(data[52:56], "little")])
    assert "vcpus" not in header and "smp" not in header["devices"]
    # A snapshot from before --smp (no "smp" in its config) still loads.
    del header["config"]["smp"]
    m2 = VirtMachine(VirtConfig(), console=lambda d: None)
    snapshot.restore_into(m2, _rewrap(data, header))
    assert m2.vcpu.pc == m.vcpu.pc


def _rewrap(data: bytes, header: dict) -> bytes:
    old_len = int.from_bytes(data[52:56], "little")
    new = json.dumps(header, sort_keys=True).encode()
    body = len(new).to_bytes(4, "little") + new + data[56 + old_len:]
    return data[:8] + data[8:12] + len(body).to_bytes(8, "little") + hashlib.sha256(body).digest() + body


# ---------------------------------------------------------------------------- command line
@pytest.mark.parametrize("args, needle", [
    (["--smp", "0"], "invalid vCPU count '0'"),
    (["--smp", "9"], "invalid vCPU count '9'"),
    (["--smp", "x"], "invalid vCPU count 'x'"),
    (["--smp", "2", "--arch", "x86_64", "x.elf"], "--smp greater than 1 is not supported with --arch x86_64"),
    (["--smp", "2", "--clock", "host"], "--clock host needs --smp 1"),
])
def test_bad_smp_flags_are_one_line(args, needle):
    r = subprocess.run(GUESTDBG + ["run", *args], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr, r.stderr


def test_config_validates_the_count():
    for bad in (0, 9, -1, True, "2"):
        with pytest.raises(ValueError):
            VirtConfig(smp=bad)  # type: ignore[arg-type]
    assert VirtConfig(smp=8).smp == 8
