"""Single steps that stay in the code (the manager's policy 12, QEMU's SSTEP_NOIRQ|SSTEP_NOTIMER):
with an interrupt pending and IRQs unmasked, a step executes the next instruction of the
program, never the IRQ vector; the timers' level changes wait for the next continue; a continue
takes the pending interrupt; `monitor sstep irq on` lets steps take it."""

from __future__ import annotations

from guestdbg import kvm
from guestdbg.board.common import ExitStatus, elf_symbols
from guestdbg.board.virt import VirtConfig, VirtMachine
from guestdbg.debug.manager import GuestDebugManager, StopKind
from guestdbg.gdb.session import GdbSession
from tests.helpers.gdb_harness import Stub, require_gdb, run_gdb
from tests.integration.test_gic import EDGE_IRQ, IrqGuest

IRQ_FROM_EL1H = 0x280  # VBAR_EL1 offset: IRQ, current EL with SP_ELx
STEPS = 60


def _monitor(session: GdbSession, command: str) -> str:
    reply = session.handle(b"qRcmd," + command.encode().hex().encode())
    return bytes.fromhex(reply.payload[1:].decode()).decode()


def _spinning_with_edge_pending(guest_dir, pend: bool = True) -> tuple[IrqGuest, GuestDebugManager, int]:
    """The irq guest spinning with IRQs unmasked in irq_spin_until, SPI 49 pending at the GIC
    (the vCPU's IRQ input high): the next free-running instruction would take it."""
    g = IrqGuest(guest_dir / "irq.elf", vmm_lines=True)
    g.run_to("waiting for level 48")
    g.m.gic.set_level(48, 1)
    g.run_to("spinning for edge 49")
    g.m.gic.set_level(48, 0)
    g.run_for(3000)
    assert g.sym["irq_spin_loop"] <= g.m.vcpu.pc < g.sym["irq_spin_end"]
    m = GuestDebugManager(g.m)
    if pend:
        _pend_edge(g)
    return g, m, m.read_register("vbar_el1") + IRQ_FROM_EL1H


def _pend_edge(g: IrqGuest) -> None:
    g.m.gic.set_level(EDGE_IRQ, 1)
    g.m.gic.set_level(EDGE_IRQ, 0)
    assert g.m.gic.irq_pending(0)


def test_steps_do_not_take_a_pending_irq_and_continue_does(guest_dir):
    g, m, vector = _spinning_with_edge_pending(guest_dir)
    assert m.step_irqs is False and m.can_block_step_irqs
    seen = set()
    for _ in range(STEPS):
        event = m.step()
        assert event.kind is StopKind.STEP
        assert event.pc != vector
        assert g.sym["irq_spin_loop"] <= event.pc <= g.sym["irq_spin_end"], hex(event.pc)
        seen.add(event.pc)
    assert len(seen) == 3  # ldr, cmp, b.lo: the program's own instructions
    assert g.u32("irq_count") == 2
    assert g.m.gic.irq_pending(0)  # still pending: the level is kept, only not applied
    assert not g.m.vcpu.irq_line_level
    # continue takes it at once: the first instruction run is the vector's.
    m.add_breakpoint(vector)
    event = m.cont()
    assert event.kind is StopKind.SWBREAK and event.pc == vector
    m.remove_breakpoint(vector)
    assert g.sym["irq_spin_loop"] <= m.read_register("elr_el1") <= g.sym["irq_spin_end"]
    event = m.cont()
    assert event.kind is StopKind.EXITED and event.exit_status == 0, g.text
    assert g.text.splitlines()[-1] == "irq: count=3 spurious=0 active-after-eoi=0 rpr=0xff"


def test_monitor_sstep_irq_on_lets_the_next_step_take_it(guest_dir):
    g, m, vector = _spinning_with_edge_pending(guest_dir)
    s = GdbSession(m)
    assert "sstep irq off" in _monitor(s, "sstep")
    for _ in range(5):
        assert m.step().pc != vector
    text = _monitor(s, "sstep irq on")
    assert "sstep irq on" in text and m.step_irqs is True
    event = m.step()
    assert event.kind is StopKind.STEP and event.pc == vector
    assert "sstep irq on" in _monitor(s, "sstep")
    assert "error" in _monitor(s, "sstep irq maybe")
    assert "sstep irq off" in _monitor(s, "sstep irq off") and m.step_irqs is False
    assert "sstep irq" in _monitor(s, "help")
    event = m.cont()
    assert event.kind is StopKind.EXITED and event.exit_status == 0, g.text


def test_step_over_a_breakpoint_with_an_irq_pending_runs_the_instruction(guest_dir):
    """Resuming from a breakpoint steps its instruction with IRQs held, then takes the IRQ."""
    g, m, vector = _spinning_with_edge_pending(guest_dir, pend=False)
    cmp_insn = g.sym["irq_spin_loop"] + 4
    m.add_breakpoint(cmp_insn)
    event = m.cont()
    assert event.kind is StopKind.SWBREAK and event.pc == cmp_insn
    _pend_edge(g)
    m.add_breakpoint(vector)
    event = m.cont()
    assert event.kind is StopKind.SWBREAK and event.pc == vector
    assert m.read_register("elr_el1") == cmp_insn + 4  # the breakpoint's instruction ran first


def test_timer_levels_wait_for_the_next_continue(guest_dir):
    """Stepping across the virtual timer's deadline neither reports its level (the GIC's PPI
    stays low) nor ends a step; the continue reports it at once."""
    elf = guest_dir / "timer.elf"
    sym = elf_symbols(elf)
    out = bytearray()
    machine = VirtMachine(VirtConfig(), console=out.extend)
    machine.load_elf(elf)
    m = GuestDebugManager(machine)
    m.add_breakpoint(sym["timer_fire_spin"])
    assert m.cont().pc == sym["timer_fire_spin"]
    m.remove_breakpoint(sym["timer_fire_spin"])
    cval = int.from_bytes(machine.vm.read_phys(sym["timer_fire_cval"], 8), "little")
    start = machine.vcpu.icount
    while machine.vcpu.counter() < cval + 20:  # well past the deadline, one step at a time
        event = m.step()
        assert event.kind is StopKind.STEP and sym["timer_fire_spin"] <= event.pc < sym["timer_fire_mask"]
    assert machine.vcpu.icount - start > 1000
    assert machine.vcpu.device_irq_level == 0 and not machine.gic.irq_pending(0)
    # With steps allowed interrupts, the next step reports the level (and still runs one insn).
    m.step_irqs = True
    before = machine.vcpu.icount
    m.step()
    assert machine.vcpu.icount == before + 1
    assert machine.vcpu.device_irq_level == kvm.KVM_ARM_DEV_EL1_VTIMER
    m.step_irqs = False
    result = m.cont()
    assert result.kind is StopKind.EXITED and result.exit_status == 0, out.decode()
    assert "FAILED" not in out.decode()


def test_blocking_is_the_managers_choice_not_the_vcpus_default(guest_dir):
    """Without a manager (or with its policy off) a raw KVM_GUESTDBG_SINGLESTEP run takes the IRQ,
    as before: the vCPU attribute only holds IRQs when set."""
    g, m, vector = _spinning_with_edge_pending(guest_dir)
    assert g.m.vcpu.singlestep_blocks_irq is True
    m.step_irqs = True
    assert g.m.vcpu.singlestep_blocks_irq is False
    g.m.vcpu.set_guest_debug(kvm.KVM_GUESTDBG_ENABLE | kvm.KVM_GUESTDBG_SINGLESTEP)
    run = g.m.run_until()
    assert not isinstance(run, ExitStatus) and run.exit_reason == kvm.KVM_EXIT_DEBUG
    assert g.m.vcpu.pc == vector


def test_gdb_stepi_stays_in_the_code_and_continue_takes_the_irq(guest_dir, tmp_path):
    """Through gdb-multiarch: SPI 40, pended by the guest while masked, is pending when
    irq_unmask_window unmasks. stepi goes on through the window; continue takes it; with
    `monitor sstep irq on` the stepi over the unmask lands at the vector."""
    require_gdb()
    elf = guest_dir / "irq.elf"
    syms = elf_symbols(elf)
    vector = syms["vectors"] + IRQ_FROM_EL1H
    results = []
    for irq_on in (False, True):
        with Stub(tmp_path / f"stub{int(irq_on)}", elf) as stub:
            r = run_gdb(stub, elf, """
                connect()
                ex("break irq_unmask_window")
                ex("continue")
                ex("delete")
                check("at", pc())
                if %r:
                    check("sstep", ex("monitor sstep irq on"))
                ex("stepi")
                check("after_unmask", pc())
                ex("stepi")
                check("next", pc())
                if not %r:
                    ex("break *%#x")
                    ex("continue")
                    check("cont", pc())
                    check("elr", val("(unsigned long)$elr_el1"))
                ex("kill")
            """ % (irq_on, irq_on, vector))
        r.assert_ok()
        results.append(r)
    off, on = results
    assert off["at"] == syms["irq_unmask_window"]
    assert off["after_unmask"] == syms["irq_after_unmask"]
    assert off["next"] == syms["irq_after_unmask"] + 4  # the nop ran; no IRQ taken
    assert off["cont"] == vector and off["elr"] == syms["irq_after_unmask"] + 4
    assert "sstep irq on" in on["sstep"]
    # The IRQ is deliverable as soon as the MSR retires: the step over it ends at the vector
    # (no vector instruction run), with ELR_EL1 at the instruction after the MSR.
    assert on["after_unmask"] == vector
