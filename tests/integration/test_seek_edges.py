"""Seeks and replays at their edges, pinned for mutation testing of debug/manager.py: a host
kick (KVM_EXIT_INTR) in the middle of a seek's replay, a seek that ends where the guest ended,
the debugger's writes logged at the live end given again by a replay that reaches it, and the
translation of virtual address 0. Small guests assembled here; exact PCs, instruction counts
and register values."""

from __future__ import annotations


from guestdbg.debug.manager import StopKind
from tests.integration.test_replay_edges import LOOP_S
from tests.integration.test_reverse_step_edges import _load


def _loop_to_done(tmp_path):
    """The counting loop recorded up to its end (a breakpoint at `done`, then removed)."""
    m, mgr, sym = _load(tmp_path, "loop", LOOP_S)
    mgr.start_recording(interval=1_000_000)
    mgr.add_breakpoint(sym["done"])
    ev = mgr.cont()
    assert (ev.kind, ev.pc, m.vcpu.icount) == (StopKind.SWBREAK, sym["done"], 18006)
    mgr.remove_breakpoint(sym["done"])
    return m, mgr, sym


def _kick_before_run(m, mgr, which: int) -> list[int]:
    """Have the board's `which`-th run (counted from now) start with a host kick pending (as
    `wake()` from another thread, console input): that run returns KVM_EXIT_INTR at once."""
    runs = [0]
    run_until = m.run_until

    def kicked(*args, **kwargs):
        runs[0] += 1
        if runs[0] == which:
            mgr.wake()
        return run_until(*args, **kwargs)
    m.run_until = kicked
    return runs


# ---------------------------------------------------------------------------------------------
# a host kick in a seek's replay: served, and the replay runs on to the target

def test_a_host_kick_in_a_seeks_replay_is_served_and_the_seek_runs_on(tmp_path):
    """A seek far back (a restore, then a replay with checkpoints inserted on its way) whose
    first run is kicked: the KVM_EXIT_INTR is the host's (not a stop of the recorded run), so
    the seek serves it and lands exactly on its target all the same."""
    m, mgr, sym = _loop_to_done(tmp_path)
    served = []
    m.on_intr = lambda: served.append(m.vcpu.icount)
    runs = _kick_before_run(m, mgr, 1)
    ev = mgr.seek_to(9006)  # at `loop` after 3,000 iterations (6 + 3 * 3000)
    assert (ev.kind, ev.pc, m.vcpu.pc, m.vcpu.icount) == (StopKind.SIGNAL, sym["loop"], sym["loop"], 9006)
    assert (mgr.read_register("x0"), served) == (3000, [0])
    assert runs[0] >= 2


def test_a_host_kick_on_the_last_run_of_a_seek(tmp_path):
    """A short seek (one run), kicked: served, then the run again, to the target."""
    m, mgr, sym = _loop_to_done(tmp_path)
    assert mgr.seek_to(8).pc == sym["loop"] + 8
    served = []
    m.on_intr = lambda: served.append(m.vcpu.icount)
    runs = _kick_before_run(m, mgr, 1)
    ev = mgr.seek_to(12)  # from where the machine is: no restore, one run (kicked) and another
    assert (ev.pc, m.vcpu.icount, mgr.read_register("x0"), served, runs[0]) == (sym["loop"], 12, 2, [8], 2)


# ---------------------------------------------------------------------------------------------
# a seek to where the guest ended: the replay stops there as the recorded run did

END_S = r"""
    .text
    .global _start, hvc_at
_start:
    mov     x5, #1
    add     x5, x5, #1
    add     x5, x5, #1
    ldr     x0, =0x84000008            // PSCI SYSTEM_OFF
hvc_at:
    hvc     #0
    b       .
"""


def test_a_seek_to_the_guests_end_gives_the_debuggers_writes_logged_there(tmp_path):
    """The guest powered off at instruction 5; the debugger then wrote x5 (an input logged at
    5). A seek back and then to 5 replays the power-off (the run ends with the guest's exit
    status, as recorded, not at the count limit) and then gives the write again."""
    m, mgr, sym = _load(tmp_path, "end", END_S)
    mgr.start_recording(interval=1000)
    ev = mgr.cont()
    assert (ev.kind, ev.exit_status, m.vcpu.icount) == (StopKind.EXITED, 0, 5)
    mgr.write_register("x5", 0x99)
    assert mgr.seek_to(2).pc == sym["_start"] + 8
    assert mgr.read_register("x5") == 2
    ev = mgr.seek_to(5)
    assert (ev.pc, m.vcpu.pc, m.vcpu.icount) == (sym["hvc_at"] + 4, sym["hvc_at"] + 4, 5)
    assert mgr.read_register("x5") == 0x99


# ---------------------------------------------------------------------------------------------
# a replay that reaches the live end gives the debugger's writes logged there

def test_a_replay_reaching_the_live_end_gives_the_writes_logged_there(tmp_path):
    """Stopped at a breakpoint (the live end, instruction 3), the debugger writes x2 and x7 and
    moves PC on: inputs logged at 3. Back one instruction, then a continue: the replay stops at
    the live end and gives the inputs again, so the machine is as the debugger left it."""
    m, mgr, sym = _load(tmp_path, "loop", LOOP_S)
    mgr.start_recording(interval=1_000_000)
    mgr.add_breakpoint(sym["after"])
    ev = mgr.cont()
    assert (ev.kind, ev.pc, m.vcpu.icount) == (StopKind.SWBREAK, sym["after"], 3)
    mgr.remove_breakpoint(sym["after"])
    mgr.write_register("x2", 0x1234)
    mgr.write_register("x7", 0x77)
    mgr.set_pc(sym["after"] + 4)
    ev = mgr.reverse_step()
    assert (ev.pc, m.vcpu.icount, mgr.read_register("x2"), mgr.read_register("x7")) == (sym["store"], 2, 0, 0)
    ev = mgr.cont()
    assert (ev.kind, ev.history_edge, ev.pc, m.vcpu.pc, m.vcpu.icount) == (
        StopKind.SIGNAL, "end", sym["after"] + 4, sym["after"] + 4, 3)
    assert (mgr.read_register("x2"), mgr.read_register("x7")) == (0x1234, 0x77)
    mgr.step()  # live again: the second add, from the written x2
    assert (m.vcpu.pc, m.vcpu.icount, mgr.read_register("x2")) == (sym["after"] + 8, 4, 0x1235)



def test_a_step_onto_the_live_end_gives_the_writes_logged_there(tmp_path):
    """As above, but a step instead of the continue: the machine is as the debugger left it
    (the step's arrival at the live end skipped the writes logged there before)."""
    m, mgr, sym = _load(tmp_path, "loop", LOOP_S)
    mgr.start_recording(interval=1_000_000)
    mgr.add_breakpoint(sym["after"])
    assert (mgr.cont().pc, m.vcpu.icount) == (sym["after"], 3)
    mgr.remove_breakpoint(sym["after"])
    mgr.write_register("x2", 0x1234)
    mgr.set_pc(sym["after"] + 4)
    assert (mgr.reverse_step().pc, m.vcpu.icount) == (sym["store"], 2)
    ev = mgr.step()
    assert (ev.pc, m.vcpu.pc, m.vcpu.icount, mgr.read_register("x2")) == (
        sym["after"] + 4, sym["after"] + 4, 3, 0x1234)

# ---------------------------------------------------------------------------------------------
# virtual address 0 is an address like any other

def test_virtual_address_zero_translates(tmp_path):
    """With the MMU off, VA 0 is PA 0 (the flash): the debugger writes it (policy 9) and reads
    it back, virtually and physically alike."""
    _, mgr, _ = _load(tmp_path, "loop", LOOP_S)
    mgr.write_memory(0, b"\x12\x34\x56\x78")
    assert mgr.read_memory(0, 4) == b"\x12\x34\x56\x78"
    assert mgr.read_memory(0, 4, physical=True) == b"\x12\x34\x56\x78"
    assert mgr.vm.read_phys(0, 4) == b"\x12\x34\x56\x78"


# Mutants of these functions left standing as equivalent (mutmut 3.8 names):
# - _run_recorded__mutmut_9: its `return` after the first due_events is unreachable: applying
#   logged inputs (memory, PC, registers, console, clock offset) moves neither the instruction
#   count nor the live end, so the history is still replaying there.
# - _disarm__mutmut_1: replays run on the emulated vCPU only (start_recording refuses others),
#   where every use of the guest debug control tests SINGLESTEP, USE_SW_BP or USE_HW with
#   ENABLE: ENABLE alone is control 0.
# - _disarm__mutmut_5: set_guest_debug's `arch` defaults to None.
