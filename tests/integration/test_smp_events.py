"""Several vCPUs (issue 11): the exclusive monitor across vCPU switches, and WFE/SEV.

- A switch between vCPUs clears the local exclusive monitor of the vCPU switched in: a STXR
  whose LDXR came before another vCPU ran fails, even when the word holds the value loaded
  again (an ABA change Unicorn's value-comparing store-exclusive would not see).
- WFE ends a vCPU's turn and it waits, as if halted, until an event: an SEV from another vCPU,
  its exclusive monitor lost (another vCPU stored to the word it loaded exclusively), an IRQ or
  timer, or WFE_MAX_WAIT. A CPU waiting for a spinlock in WFE burns far fewer instructions
  than one spinning, and the interleaving stays deterministic.
"""

from __future__ import annotations

import pytest

from guestdbg.board import smp as smp_mod
from guestdbg.board.virt import VirtConfig, VirtMachine
from tests.helpers.mmu_guest import assemble
from tests.helpers.support import symbols

CPU_ON_1 = """
    ldr     x0, =0xC4000003         // CPU_ON(1, secondary, 0)
    mov     x1, #1
    adr     x2, secondary
    mov     x3, #0
    hvc     #0
"""
SYSTEM_OFF = """
    ldr     x0, =0x84000008
    hvc     #0
"""
CPU_OFF = """
    ldr     x0, =0x84000002
    hvc     #0
"""

# CPU 0 loads `word` exclusively, then spins (plain loads) until CPU 1 has changed it to 2
# and back to 1 and set `flag`: that takes CPU 0's turn to end. Its STXR must then fail
# (results[0] = 1); a fresh LDXR/STXR pair within one turn succeeds (results[1] = 0).
ABA_GUEST = rf"""
    .text
    .global _start, secondary
_start:
    mrs     x0, mpidr_el1
    and     x0, x0, #0xff
    cbnz    x0, secondary
    adr     x20, results
    adr     x10, word
    adr     x11, flag
{CPU_ON_1}
    ldxr    x1, [x10]
1:  ldr     x2, [x11]
    cbz     x2, 1b
    mov     x2, #3
    stxr    w3, x2, [x10]
    str     x3, [x20]
    ldxr    x1, [x10]
    stxr    w3, x2, [x10]
    str     x3, [x20, #8]
    ldr     x1, [x10]
    str     x1, [x20, #16]
{SYSTEM_OFF}
secondary:
    adr     x10, word
    adr     x11, flag
    mov     x1, #2
    str     x1, [x10]
    mov     x1, #1
    str     x1, [x10]
    str     x1, [x11]
{CPU_OFF}
    b       .
    .ltorg
    .data
    .balign 8
word:
    .quad   1
flag:
    .quad   0
results:
    .fill   3, 8, 0xff
"""


@pytest.fixture(scope="module")
def aba_elf(tmp_path_factory):
    return assemble(tmp_path_factory.mktemp("smp_aba"), "aba", ABA_GUEST)


def _results(m: VirtMachine, elf, n: int) -> list[int]:
    base = symbols(str(elf))["results"]
    return [int.from_bytes(m.vm.read_phys(base + 8 * i, 8), "little") for i in range(n)]


def test_stxr_fails_after_another_vcpu_ran_even_on_aba(aba_elf):
    m = VirtMachine(VirtConfig(smp=2), console=lambda d: None)
    m.load_elf(aba_elf)
    assert m.run_to_exit(timeout=30) == 0
    assert _results(m, aba_elf, 3) == [1, 0, 3]  # STXR failed; the next pair stored 3


def test_without_the_clear_unicorn_misses_the_aba(aba_elf, monkeypatch):
    """The control: Unicorn's own store-exclusive compares values, so it succeeds."""
    monkeypatch.setattr(type(VirtMachine(VirtConfig(smp=2)).vcpus[1]), "clear_exclusive_monitor",
                        lambda self: None)
    m = VirtMachine(VirtConfig(smp=2), console=lambda d: None)
    m.load_elf(aba_elf)
    assert m.run_to_exit(timeout=30) == 0
    assert _results(m, aba_elf, 3)[0] == 0


def test_exclusive_monitor_reads_and_clears(aba_elf):
    m = VirtMachine(VirtConfig(smp=2), console=lambda d: None)
    m.load_elf(aba_elf)
    v = m.vcpus[0]
    assert v.exclusive_monitor() is None
    sym = symbols(str(aba_elf))
    # run CPU 0 alone until it has loaded exclusively and spins on the flag
    m.run_until(only=0, icount_limit=30)
    assert v.exclusive_monitor() == (sym["word"], 1)
    v.clear_exclusive_monitor()
    assert v.exclusive_monitor() is None


# A Linux-style (v4.x arm64) ticket-less spinlock: SEVL; WFE; LDAXR; CBNZ back to the WFE.
# CPU 0 holds the lock for HOLD loop rounds (several turns) while CPU 1 waits for it, counting
# its rounds of the wait loop (results[0]); CPU 0 releases it with a plain STLR (the global
# monitor's event wakes CPU 1, no SEV), CPU 1 takes it, then waits for `go` in a WFE loop
# without a monitor that CPU 0's SEV ends (its rounds: results[1]). WAIT is "wfe" or "nop";
# HOLD, CPU 0's loop rounds (2 instructions each) with the lock held.
def spin_guest(wait: str, hold: int = 300_000) -> str:
    return rf"""
    .text
    .global _start, secondary, lock_wait
_start:
    mrs     x0, mpidr_el1
    and     x0, x0, #0xff
    cbnz    x0, secondary
    adr     x10, lock
    adr     x11, go
    adr     x12, taken
    mov     w1, #1
    str     w1, [x10]               // CPU 0 holds the lock
{CPU_ON_1}
    ldr     x5, ={hold}
1:  subs    x5, x5, #1
    b.ne    1b
    stlr    wzr, [x10]              // release (no SEV)
2:  ldr     x1, [x12]               // CPU 1 has the lock
    cbz     x1, 2b
    ldr     x5, =300000
3:  subs    x5, x5, #1
    b.ne    3b
    mov     x1, #1
    str     x1, [x11]
    dsb     ish
    sev
4:  ldr     x1, [x12]
    cmp     x1, #2
    b.ne    4b
{SYSTEM_OFF}
secondary:
    adr     x10, lock
    adr     x11, go
    adr     x12, taken
    adr     x20, results
    mov     x6, #0
    mov     w2, #1
    sevl
lock_wait:
5:  {wait}
    add     x6, x6, #1
6:  ldaxr   w1, [x10]
    cbnz    w1, 5b
    stxr    w1, w2, [x10]
    cbnz    w1, 6b
    str     x6, [x20]
    mov     x1, #1
    str     x1, [x12]
    mov     x6, #0
7:  {wait}
    add     x6, x6, #1
    ldr     x1, [x11]
    cbz     x1, 7b
    str     x6, [x20, #8]
    mov     x1, #2
    str     x1, [x12]
{CPU_OFF}
    b       .
    .ltorg
    .data
    .balign 8
lock:
    .quad   0
go:
    .quad   0
taken:
    .quad   0
results:
    .fill   2, 8, 0
"""


@pytest.fixture(scope="module")
def spin_elfs(tmp_path_factory):
    d = tmp_path_factory.mktemp("smp_wfe")
    return {w: assemble(d, f"spin_{w}", spin_guest(w)) for w in ("wfe", "nop")}


def _run_spin(elf) -> tuple[list[int], list[int], int, VirtMachine]:
    m = VirtMachine(VirtConfig(smp=2), console=lambda d: None)
    m.load_elf(elf)
    assert m.run_to_exit(timeout=60) == 0
    return _results(m, elf, 2), [v.icount for v in m.vcpus], m.machine_time, m


def test_wfe_waits_for_the_lock_release_and_for_sev(spin_elfs):
    rounds, icounts, _, m = _run_spin(spin_elfs["wfe"])
    spin_rounds, spin_icounts, _, _ = _run_spin(spin_elfs["nop"])
    # WFE: CPU 1 went round its wait loops a handful of times (the release's store to the
    # lock, then the SEV, woke it); spinning, it went round tens of thousands of times.
    assert rounds[0] <= 3 and rounds[1] <= 3, rounds
    assert spin_rounds[0] > 10_000 and spin_rounds[1] > 10_000, spin_rounds
    assert icounts[1] < 1000 < 100_000 < spin_icounts[1]
    assert m.vcpus[1].sev_count == 0 and m.vcpus[0].sev_count == 1


def test_wfe_interleaving_is_deterministic(spin_elfs):
    first = _run_spin(spin_elfs["wfe"])[:3]
    second = _run_spin(spin_elfs["wfe"])[:3]
    assert first == second


def test_wfe_without_an_event_waits_at_most_wfe_max_wait(tmp_path):
    """CPU 1 waits in WFE with no monitor and no SEV to come; CPU 0 is in WFI with its timer
    20 ms away: CPU 1's wait ends by WFE_MAX_WAIT each time (the clock skips there)."""
    elf = assemble(tmp_path, "wfe_alone", rf"""
    .text
    .global _start, secondary
_start:
    mrs     x0, mpidr_el1
    and     x0, x0, #0xff
    cbnz    x0, secondary
{CPU_ON_1}
    mrs     x3, cntvct_el0
    ldr     x4, =1250000            // 20 ms at 62.5 MHz
    add     x4, x3, x4
    msr     cntv_cval_el0, x4
    mov     x5, #1
    msr     cntv_ctl_el0, x5
1:  wfi
    mrs     x6, cntv_ctl_el0
    tbz     x6, #2, 1b
{SYSTEM_OFF}
secondary:
    adr     x20, results
2:  wfe
    ldr     x1, [x20]
    add     x1, x1, #1
    str     x1, [x20]
    b       2b
    .ltorg
    .data
    .balign 8
results:
    .quad   0
""")
    m = VirtMachine(VirtConfig(smp=2), console=lambda d: None)
    m.load_elf(elf)
    assert m.run_to_exit(timeout=30) == 0
    wakes = _results(m, elf, 1)[0]
    assert m.machine_time >= 20_000_000
    assert 20_000_000 // smp_mod.WFE_MAX_WAIT - 2 <= wakes <= 20_000_000 // smp_mod.WFE_MAX_WAIT + 2


def test_snapshot_taken_while_a_vcpu_waits_in_wfe(spin_elfs):
    from guestdbg import kvm, snapshot
    elf = spin_elfs["wfe"]
    m = VirtMachine(VirtConfig(smp=2), console=lambda d: None)
    m.load_elf(elf)
    assert isinstance(m.run_until(icount_limit=250_000), kvm.KvmRun)  # CPU 0 holds the lock
    assert m.cpu_state(1) == "running" and m.smp_state()["vcpus"][1]["wfe"] is not None
    data, state = snapshot.dumps(m), m.smp_state()
    assert m.run_to_exit(timeout=60) == 0
    after = (_results(m, elf, 2), [v.icount for v in m.vcpus], m.machine_time)

    m2 = VirtMachine(VirtConfig(smp=2), console=lambda d: None)
    snapshot.restore_into(m2, data)
    assert m2.smp_state() == state
    assert m2.run_to_exit(timeout=60) == 0
    assert (_results(m2, elf, 2), [v.icount for v in m2.vcpus], m2.machine_time) == after


def test_breakpoint_on_a_wfe_the_run_loop_hooks(tmp_path):
    """A breakpoint on a WFE whose event hook came first (the WFE ran before): the breakpoint
    still stops there. CPU 0 holds the lock ~3 ms, so CPU 1's wait ends by WFE_MAX_WAIT and it
    comes back to the WFE."""
    from guestdbg.debug.manager import GuestDebugManager, StopKind
    elf = assemble(tmp_path, "spin_long", spin_guest("wfe", hold=1_500_000))
    m = VirtMachine(VirtConfig(smp=2), console=lambda d: None)
    m.load_elf(elf)
    m.run_until(icount_limit=300_000)
    assert m.smp_state()["vcpus"][1]["wfe"] is not None  # CPU 1 waits at lock_wait
    mgr = GuestDebugManager(m)
    mgr.add_breakpoint(symbols(str(elf))["lock_wait"])
    e = mgr.cont()
    assert e.kind is StopKind.SWBREAK and e.vcpu_id == 1 and e.pc == symbols(str(elf))["lock_wait"]


def test_a_single_step_sets_and_consumes_the_event_register_as_a_run_does(guest_dir):
    """Stepping SEVL sets the event register and stepping the WFE after it consumes it, as
    running through them does; before, a step left them no-ops, so a breakpoint on a
    spinlock's SEVL (stepped over at every call) made each of its WFEs wait up to
    WFE_MAX_WAIT, and a replay of a recorded step disagreed with the step. A step never waits
    in WFE (a WFE may complete at any time)."""
    from guestdbg.debug.manager import GuestDebugManager, StopKind
    elf = guest_dir / "smp.elf"
    syms = symbols(str(elf))
    m = VirtMachine(VirtConfig(smp=2), console=lambda d: None)
    m.load_elf(elf)
    mgr = GuestDebugManager(m)
    sevl = syms["spin_lock"] + 4
    mgr.add_breakpoint(sevl)
    stops = []
    for _ in range(4):
        e = mgr.cont()
        assert e.kind is StopKind.SWBREAK and e.pc == sevl
        stops.append(m.machine_now)
        assert not m.vcpus[e.vcpu_id].event_register
    # CPU 0's calls in its counting loop follow each other closely: no WFE_MAX_WAIT between.
    assert stops[-1] - stops[-2] < smp_mod.WFE_MAX_WAIT // 10, stops
    mgr.remove_breakpoint(sevl)
    v = m.vcpus[e.vcpu_id]
    assert mgr.step(e.vcpu_id).kind is StopKind.STEP and v.pc == sevl + 4
    assert v.event_register  # SEVL
    assert mgr.step(e.vcpu_id).kind is StopKind.STEP and v.pc == sevl + 8
    assert not v.event_register  # the WFE consumed it and completed


def test_an_exact_stop_just_before_sevl_leaves_the_event_register_alone(guest_dir):
    """The event hook runs before its instruction, as the countdown that ends a slice exactly
    does: when the slice ends before the SEVL, the SEVL has not run and must not count (it
    did, so a replay stopping there, or a seek, saw an event register set too early)."""
    from guestdbg import kvm
    from guestdbg.debug.manager import GuestDebugManager, StopKind
    elf = guest_dir / "smp.elf"
    syms = symbols(str(elf))
    m = VirtMachine(VirtConfig(smp=2), console=lambda d: None)
    m.load_elf(elf)
    mgr = GuestDebugManager(m)
    mgr.add_breakpoint(syms["spin_lock"])
    e = mgr.cont()
    assert e.kind is StopKind.SWBREAK
    mgr.remove_breakpoint(syms["spin_lock"])
    v = m.vcpus[e.vcpu_id]
    run = m.run_until(only=e.vcpu_id, icount_limit=v.icount + 1)  # MOV only, inside the block
    assert isinstance(run, kvm.KvmRun) and run.exit_reason == kvm.EXIT_ICOUNT_LIMIT
    assert v.pc == syms["spin_lock"] + 4 and not v.event_register
    m.run_until(only=e.vcpu_id, icount_limit=v.icount + 1)  # now the SEVL
    assert v.pc == syms["spin_lock"] + 8 and v.event_register


def test_a_step_over_a_wfe_that_would_wait_leaves_the_vcpu_waiting(guest_dir):
    """A step over a WFE with the event register clear completes (PC past it) and the vCPU
    then waits for an event, as after a run through it: the next resume runs the others first.
    Recorded, the step and a replay through the WFE agree."""
    from guestdbg.debug.manager import GuestDebugManager, StopKind
    elf = guest_dir / "smp.elf"
    syms = symbols(str(elf))
    m = VirtMachine(VirtConfig(smp=2), console=lambda d: None)
    m.load_elf(elf)
    mgr = GuestDebugManager(m)
    wfe = syms["spin_lock_wait"]
    mgr.add_breakpoint(wfe)
    while True:  # a CPU at the WFE with its event register clear: the lock is held by the other
        e = mgr.cont()
        assert e.kind is StopKind.SWBREAK
        if not m.vcpus[e.vcpu_id].event_register:
            break
    mgr.remove_breakpoint(wfe)
    who = e.vcpu_id
    assert mgr.step(who).kind is StopKind.STEP and m.vcpus[who].pc == wfe + 4
    assert m.smp_state()["vcpus"][who]["wfe"] is not None  # waiting, as a run would be
