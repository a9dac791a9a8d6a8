"""The GICv2 model (board/gic.py) against the GICv2 architecture specification (IHI 0048B):
acknowledge and EOI, priority masking, the running priority and preemption, enable/pending/
active, banked registers, level and edge inputs, reserved offsets and bad access sizes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guestdbg.board import gic as g
from guestdbg.board.gic import DIST_SIZE, Gic

C = DIST_SIZE  # the CPU interface's offset in the window


def word(reg: int, intid: int) -> int:
    return reg + 4 * (intid // 32)


def bit(intid: int) -> int:
    return 1 << (intid % 32)


def ready(num_cpus: int = 1, pmr: int = 0xF0) -> Gic:
    """Distributor and CPU interface(s) enabled, PMR open below `pmr`."""
    gic = Gic(num_cpus=num_cpus)
    gic.write(g.GICD_CTLR, 4, 1)
    for cpu in range(num_cpus):
        gic.current_cpu = cpu
        gic.write(C + g.GICC_CTLR, 4, 1)
        gic.write(C + g.GICC_PMR, 4, pmr)
    gic.current_cpu = 0
    return gic


def setup_spi(gic: Gic, intid: int, prio: int = 0xA0, edge: bool = False, enable: bool = True) -> None:
    gic.write(g.GICD_IPRIORITYR + intid, 1, prio)
    gic.write(g.GICD_ITARGETSR + intid, 1, 1)
    cfg = g.GICD_ICFGR + 4 * (intid // 16)
    shift = 2 * (intid % 16) + 1
    gic.write(cfg, 4, (gic.read(cfg, 4) & ~(1 << shift)) | (int(edge) << shift))
    if enable:
        gic.write(word(g.GICD_ISENABLER, intid), 4, bit(intid))


def iar(gic: Gic) -> int:
    return gic.read(C + g.GICC_IAR, 4)


def eoi(gic: Gic, value: int) -> None:
    gic.write(C + g.GICC_EOIR, 4, value)


# ---------------------------------------------------------------------------- identification
def test_typer_iidr_and_reset_state_are_qemu_virt_like():
    gic = Gic()
    assert gic.read(g.GICD_TYPER, 4) == 0x8  # 288 IRQs: ITLinesNumber 8, one CPU, no security
    assert Gic(num_cpus=4).read(g.GICD_TYPER, 4) == 0x8 | (3 << 5)
    assert gic.read(g.GICD_IIDR, 4) & 0xFFF == 0x43B
    assert gic.read(C + g.GICC_IIDR, 4) == 0x0002_043B
    assert gic.read(0xFE8, 4) >> 4 & 0xF == 2  # GICD_PIDR2.ArchRev: GICv2
    assert gic.read(g.GICD_CTLR, 4) == 0 and gic.read(C + g.GICC_CTLR, 4) == 0
    assert gic.read(C + g.GICC_RPR, 4) == 0xFF  # idle
    assert gic.read(C + g.GICC_HPPIR, 4) == 1023 and iar(gic) == 1023


def test_constructor_checks():
    with pytest.raises(ValueError):
        Gic(num_cpus=9)
    with pytest.raises(ValueError):
        Gic(num_irqs=100)


# ---------------------------------------------------------------------------- acknowledge, EOI
def test_acknowledge_then_eoi_of_a_software_pended_spi():
    gic = ready()
    setup_spi(gic, 40)
    assert not gic.irq_pending(0)
    gic.write(word(g.GICD_ISPENDR, 40), 4, bit(40))
    assert gic.read(word(g.GICD_ISPENDR, 40), 4) == bit(40)
    assert gic.irq_pending(0)
    assert gic.read(C + g.GICC_HPPIR, 4) == 40
    assert iar(gic) == 40
    # active, no longer pending, running priority is its priority, nothing signalled
    assert gic.read(word(g.GICD_ISACTIVER, 40), 4) == bit(40)
    assert gic.read(word(g.GICD_ICPENDR, 40), 4) == 0
    assert gic.read(C + g.GICC_RPR, 4) == 0xA0
    assert not gic.irq_pending(0) and iar(gic) == 1023
    eoi(gic, 40)
    assert gic.read(word(g.GICD_ISACTIVER, 40), 4) == 0
    assert gic.read(C + g.GICC_RPR, 4) == 0xFF


def test_highest_priority_wins_and_ties_go_to_the_lowest_id():
    gic = ready()
    for intid, prio in ((50, 0x80), (41, 0x40), (45, 0x40)):
        setup_spi(gic, intid, prio)
        gic.write(word(g.GICD_ISPENDR, intid), 4, bit(intid))
    assert [iar(gic) for _ in range(1)] == [41]
    eoi(gic, 41)
    assert iar(gic) == 45
    eoi(gic, 45)
    assert iar(gic) == 50


def test_priority_mask_and_running_priority_gate_signalling():
    gic = ready(pmr=0x80)
    setup_spi(gic, 40, prio=0x80)  # not below PMR: masked
    gic.write(word(g.GICD_ISPENDR, 40), 4, bit(40))
    assert not gic.irq_pending(0) and iar(gic) == 1023
    assert gic.read(C + g.GICC_HPPIR, 4) == 40  # HPPIR is not masked by PMR
    gic.write(C + g.GICC_PMR, 4, 0x81)
    assert gic.irq_pending(0) and iar(gic) == 40
    # Running at 0x80: an equal priority does not preempt, a higher one does.
    setup_spi(gic, 41, prio=0x80)
    gic.write(word(g.GICD_ISPENDR, 41), 4, bit(41))
    assert not gic.irq_pending(0)
    setup_spi(gic, 42, prio=0x40)
    gic.write(word(g.GICD_ISPENDR, 42), 4, bit(42))
    assert iar(gic) == 42  # preempts
    assert gic.read(C + g.GICC_RPR, 4) == 0x40
    eoi(gic, 42)
    assert gic.read(C + g.GICC_RPR, 4) == 0x80  # back to the preempted one
    assert not gic.irq_pending(0)  # 41 still waits for 40
    eoi(gic, 40)
    assert iar(gic) == 41


def test_binary_point_groups_priorities_for_preemption():
    gic = ready()
    gic.write(C + g.GICC_BPR, 4, 3)  # group priority = bits [7:4]
    assert gic.read(C + g.GICC_BPR, 4) == 3
    setup_spi(gic, 40, prio=0x48)
    setup_spi(gic, 41, prio=0x40)
    gic.write(word(g.GICD_ISPENDR, 40), 4, bit(40))
    assert iar(gic) == 40
    assert gic.read(C + g.GICC_RPR, 4) == 0x40
    gic.write(word(g.GICD_ISPENDR, 41), 4, bit(41))
    assert not gic.irq_pending(0)  # same group priority 0x40: no preemption


def test_disabled_distributor_or_cpu_interface_signals_nothing():
    gic = ready()
    setup_spi(gic, 40)
    gic.write(word(g.GICD_ISPENDR, 40), 4, bit(40))
    gic.write(C + g.GICC_CTLR, 4, 0)
    assert not gic.irq_pending(0) and iar(gic) == 1023
    gic.write(C + g.GICC_CTLR, 4, 1)
    gic.write(g.GICD_CTLR, 4, 0)
    assert not gic.irq_pending(0) and gic.read(C + g.GICC_HPPIR, 4) == 1023
    gic.write(g.GICD_CTLR, 4, 1)
    assert gic.irq_pending(0)


def test_enable_set_clear_and_disabled_pending_interrupts_wait():
    gic = ready()
    setup_spi(gic, 40, enable=False)
    gic.write(word(g.GICD_ISPENDR, 40), 4, bit(40))
    assert not gic.irq_pending(0)
    gic.write(word(g.GICD_ISENABLER, 40), 4, bit(40))
    assert gic.read(word(g.GICD_ICENABLER, 40), 4) == bit(40)
    assert gic.irq_pending(0)
    gic.write(word(g.GICD_ICENABLER, 40), 4, bit(40))
    assert gic.read(word(g.GICD_ISENABLER, 40), 4) == 0 and not gic.irq_pending(0)
    gic.write(word(g.GICD_ICPENDR, 40), 4, bit(40))
    gic.write(word(g.GICD_ISENABLER, 40), 4, bit(40))
    assert not gic.irq_pending(0)


def test_active_interrupts_are_not_signalled_and_icactiver_clears():
    gic = ready()
    setup_spi(gic, 40)
    gic.write(word(g.GICD_ISACTIVER, 40), 4, bit(40))
    gic.write(word(g.GICD_ISPENDR, 40), 4, bit(40))
    assert not gic.irq_pending(0)  # active and pending
    gic.write(word(g.GICD_ICACTIVER, 40), 4, bit(40))
    assert iar(gic) == 40


def test_eoimode_splits_priority_drop_from_deactivation():
    gic = ready()
    gic.write(C + g.GICC_CTLR, 4, 1 | g.GICC_CTLR_EOIMODE)
    setup_spi(gic, 40)
    gic.write(word(g.GICD_ISPENDR, 40), 4, bit(40))
    assert iar(gic) == 40
    eoi(gic, 40)
    assert gic.read(C + g.GICC_RPR, 4) == 0xFF
    assert gic.read(word(g.GICD_ISACTIVER, 40), 4) == bit(40)
    gic.write(C + g.GICC_DIR, 4, 40)
    assert gic.read(word(g.GICD_ISACTIVER, 40), 4) == 0


def test_eoi_of_spurious_or_unacknowledged_ids_is_ignored():
    gic = ready()
    setup_spi(gic, 40)
    gic.write(word(g.GICD_ISPENDR, 40), 4, bit(40))
    assert iar(gic) == 40
    eoi(gic, 1023)
    eoi(gic, 41)
    assert gic.read(word(g.GICD_ISACTIVER, 40), 4) == bit(40)
    assert gic.read(C + g.GICC_RPR, 4) == 0xA0


# ---------------------------------------------------------------------------- inputs
def test_level_input_stays_pending_while_high_even_after_icpendr():
    gic = ready()
    setup_spi(gic, 48)
    gic.set_level(48, 1)
    assert gic.irq_pending(0)
    gic.write(word(g.GICD_ICPENDR, 48), 4, bit(48))
    assert gic.irq_pending(0)  # the line still holds it
    assert iar(gic) == 48
    # active and pending while the line is high; after EOI it is signalled again
    assert gic.read(word(g.GICD_ISPENDR, 48), 4) == bit(48)
    eoi(gic, 48)
    assert gic.irq_pending(0)
    gic.set_level(48, 0)
    assert not gic.irq_pending(0)


def test_edge_input_latches_one_rising_edge():
    gic = ready()
    setup_spi(gic, 49, edge=True)
    assert gic.read(g.GICD_ICFGR + 4 * 3, 4) == 2 << 2  # INTID 49: field 1 of ICFGR3
    gic.set_level(49, 1)
    gic.set_level(49, 0)
    assert gic.irq_pending(0)
    assert iar(gic) == 49
    eoi(gic, 49)
    assert not gic.irq_pending(0)  # one edge, one interrupt
    gic.set_level(49, 1)
    assert iar(gic) == 49
    gic.set_level(49, 1)  # no new edge while high
    eoi(gic, 49)
    assert not gic.irq_pending(0)


def test_set_level_checks_its_arguments():
    gic = Gic()
    for intid in (0, 15, 288):
        with pytest.raises(ValueError):
            gic.set_level(intid, 1)
    with pytest.raises(ValueError):
        gic.set_level(20, 1, cpu=1)


def test_listener_runs_after_changes():
    calls = []
    gic = Gic(listener=lambda: calls.append(1))
    gic.set_level(40, 1)
    gic.set_level(40, 1)  # no change, no call
    gic.write(g.GICD_CTLR, 4, 1)
    gic.read(C + g.GICC_IAR, 4)
    gic.read(g.GICD_CTLR, 4)  # a plain read changes nothing
    assert len(calls) == 3


# ---------------------------------------------------------------------------- banked registers
def test_sgi_ppi_state_is_banked_per_cpu():
    gic = ready(num_cpus=2)
    gic.current_cpu = 1
    gic.write(g.GICD_IPRIORITYR + 27, 1, 0x30)
    gic.write(word(g.GICD_ISENABLER, 27), 4, bit(27))
    assert gic.read(word(g.GICD_ISENABLER, 27), 4) == bit(27)
    assert gic.read(g.GICD_ITARGETSR + 27, 1) == 2  # the reading CPU's own bit
    gic.current_cpu = 0
    assert gic.read(word(g.GICD_ISENABLER, 27), 4) == 0
    assert gic.read(g.GICD_IPRIORITYR + 27, 1) == 0
    assert gic.read(g.GICD_ITARGETSR + 27, 1) == 1
    gic.write(g.GICD_ITARGETSR + 27, 1, 0xFF)  # RO
    assert gic.read(g.GICD_ITARGETSR + 27, 1) == 1
    gic.set_level(27, 1, cpu=1)
    assert gic.irq_pending(1) and not gic.irq_pending(0)
    gic.current_cpu = 1
    assert iar(gic) == 27


def test_spi_targets_route_to_cpus():
    gic = ready(num_cpus=2)
    setup_spi(gic, 40)
    gic.write(g.GICD_ITARGETSR + 40, 1, 0x2)
    gic.write(g.GICD_ITARGETSR + 41, 1, 0xFF)
    assert gic.read(g.GICD_ITARGETSR + 41, 1) == 0x3  # only CPUs that exist
    gic.write(word(g.GICD_ISPENDR, 40), 4, bit(40))
    assert gic.irq_pending(1) and not gic.irq_pending(0)


def test_sgir_pends_sgis_with_their_source_cpu():
    gic = ready(num_cpus=2)
    gic.current_cpu = 1
    gic.write(word(g.GICD_ISENABLER, 0), 4, 0xFFFF)
    gic.write(g.GICD_IPRIORITYR + 5, 1, 0x80)  # SGI 3 (priority 0) may preempt it
    gic.current_cpu = 0
    gic.write(g.GICD_SGIR, 4, (0 << 24) | (0b10 << 16) | 5)  # to CPU 1's list
    assert gic.last_sgir == (0b10 << 16) | 5
    assert gic.irq_pending(1)
    gic.current_cpu = 1
    assert iar(gic) == 5 | (0 << 10)
    gic.write(g.GICD_SGIR, 4, (2 << 24) | 3)  # to itself
    assert iar(gic) == 3 | (1 << 10)  # source CPU 1 in bits [12:10]
    eoi(gic, 3 | (1 << 10))
    eoi(gic, 5)
    assert gic.read(C + g.GICC_RPR, 4) == 0xFF


def test_sgi_config_is_read_only_edge_and_sgi_pending_bits_ignore_ispendr():
    gic = Gic()
    assert gic.read(g.GICD_ICFGR, 4) == 0xAAAA_AAAA
    gic.write(g.GICD_ICFGR, 4, 0)
    assert gic.read(g.GICD_ICFGR, 4) == 0xAAAA_AAAA
    gic.write(g.GICD_ISPENDR, 4, 0xFFFF)
    assert gic.read(g.GICD_ISPENDR, 4) == 0


# ---------------------------------------------------------------------------- access rules
def test_byte_and_word_access_to_priority_and_targets():
    gic = Gic()
    gic.write(g.GICD_IPRIORITYR + 40, 4, 0x44332211)
    assert [gic.read(g.GICD_IPRIORITYR + 40 + i, 1) for i in range(4)] == [0x11, 0x22, 0x33, 0x44]
    gic.write(g.GICD_IPRIORITYR + 42, 1, 0xEE)
    assert gic.read(g.GICD_IPRIORITYR + 40, 4) == 0x44EE2211


@pytest.mark.parametrize("offset,size", [
    (g.GICD_CTLR, 2), (g.GICD_CTLR, 1), (g.GICD_ISENABLER + 4, 8), (g.GICD_IPRIORITYR + 41, 4),
    (g.GICD_IPRIORITYR + 40, 2), (C + g.GICC_PMR, 1), (C + g.GICC_IAR, 2), (g.GICD_CTLR + 2, 4)])
def test_bad_sizes_and_alignment_read_zero_and_ignore_writes(offset, size):
    gic = ready()
    setup_spi(gic, 40)
    gic.write(word(g.GICD_ISPENDR, 40), 4, bit(40))
    before = json.dumps(gic.state())
    assert gic.read(offset, size) == 0
    gic.write(offset, size, (1 << (8 * size)) - 1)
    assert json.dumps(gic.state()) == before
    assert gic.bad_accesses == 2


@pytest.mark.parametrize("offset", [0x00C, 0x040, 0x080, 0x0FC, 0xE00, 0xF04, 0xF10, 0xF20,
                                    g.GICD_ISENABLER + 4 * 9, g.GICD_IPRIORITYR + 288, g.GICD_ITARGETSR + 300,
                                    g.GICD_ICFGR + 4 * 18, 0x8000, C + 0x1C, C + 0x20, C + 0xD0, C + 0x800])
def test_reserved_and_unimplemented_offsets_read_as_zero(offset):
    gic = ready()
    gic.write(offset, 4, 0xFFFF_FFFF)
    assert gic.read(offset, 4) == 0
    assert gic.bad_accesses == 0


# ---------------------------------------------------------------------------- state
def test_state_round_trips_through_json():
    gic = ready()
    setup_spi(gic, 40, prio=0x20)
    setup_spi(gic, 49, edge=True)
    gic.set_level(48, 1)
    gic.write(word(g.GICD_ISPENDR, 40), 4, bit(40))
    gic.write(word(g.GICD_ISPENDR, 49), 4, bit(49))
    assert iar(gic) == 40
    other = Gic()
    other.restore(json.loads(json.dumps(gic.state())))
    assert other.state() == gic.state()
    assert other.read(C + g.GICC_RPR, 4) == 0x20
    eoi(other, 40)
    assert iar(other) == 49
    with pytest.raises(ValueError):
        Gic(num_cpus=2).restore(gic.state())


ops = st.lists(st.one_of(
    st.tuples(st.just("level"), st.integers(32, 40), st.booleans()),
    st.tuples(st.just("pend"), st.integers(32, 40), st.booleans()),
    st.tuples(st.just("enable"), st.integers(32, 40), st.booleans()),
    st.tuples(st.just("prio"), st.integers(32, 40), st.integers(0, 255)),
    st.tuples(st.just("pmr"), st.just(0), st.integers(0, 255)),
    st.tuples(st.just("ack"), st.just(0), st.just(0)),
    st.tuples(st.just("eoi"), st.just(0), st.just(0)),
), max_size=40)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_invariants_under_random_operations(sequence):
    """IAR returns an ID exactly when the output is signalled; the acknowledged interrupt is
    active and its priority below PMR and the running priority; EOI in reverse order of
    acknowledgement always returns the running priority to idle."""
    gic = ready()
    for intid in range(32, 41):
        setup_spi(gic, intid, edge=intid % 2 == 1, enable=False)
    acked: list[int] = []
    for op, intid, arg in sequence:
        if op == "level":
            gic.set_level(intid, arg)
        elif op == "pend":
            gic.write(word(g.GICD_ISPENDR if arg else g.GICD_ICPENDR, intid), 4, bit(intid))
        elif op == "enable":
            gic.write(word(g.GICD_ISENABLER if arg else g.GICD_ICENABLER, intid), 4, bit(intid))
        elif op == "prio":
            gic.write(g.GICD_IPRIORITYR + intid, 1, arg)
        elif op == "pmr":
            gic.write(C + g.GICC_PMR, 4, arg)
        elif op == "ack":
            signalled = gic.irq_pending(0)
            rpr_before = gic.running_priority(0)
            got = iar(gic)
            assert (got != 1023) == signalled
            if got != 1023:
                assert gic.read(word(g.GICD_ISACTIVER, got), 4) & bit(got)
                prio = gic.read(g.GICD_IPRIORITYR + got, 1)
                assert prio < gic.read(C + g.GICC_PMR, 4)
                assert prio & 0xFE < rpr_before
                acked.append(got)
        elif op == "eoi" and acked:
            eoi(gic, acked.pop())
        assert json.loads(json.dumps(gic.state())) == gic.state()
    while acked:
        eoi(gic, acked.pop())
    assert gic.read(C + g.GICC_RPR, 4) == 0xFF
    assert gic.read(g.GICD_ISACTIVER + 4, 4) == 0
