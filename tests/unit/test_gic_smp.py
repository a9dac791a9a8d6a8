"""The GICv2 model with several CPU interfaces (issue 11): GICD_SGIR's three target filters on
four CPUs, one SGI pended by several sources at once (one acknowledge per source, as GICv2
keeps a pending bit per source CPU), SPIs routed by GICD_ITARGETSR to several CPUs (the first
to acknowledge takes it), and GICD_TYPER.CPUNumber."""

from __future__ import annotations

import pytest

from guestdbg.board import gic as g
from guestdbg.board.gic import DIST_SIZE, SPURIOUS, Gic
from tests.unit.test_gic import bit, eoi, iar, ready, setup_spi, word

C = DIST_SIZE


def enable_sgis(gic: Gic) -> None:
    for cpu in range(gic.num_cpus):
        gic.current_cpu = cpu
        gic.write(word(g.GICD_ISENABLER, 0), 4, 0xFFFF)
    gic.current_cpu = 0


def pending_on(gic: Gic) -> list[int]:
    return [cpu for cpu in range(gic.num_cpus) if gic.irq_pending(cpu)]


@pytest.mark.parametrize("n", range(1, 9))
def test_typer_cpu_number(n):
    assert (Gic(num_cpus=n).read(g.GICD_TYPER, 4) >> 5) & 7 == n - 1


@pytest.mark.parametrize("filt, targets, sender, expected", [
    (0, 0b1010, 0, [1, 3]),          # the target list
    (0, 0b1111_0000, 0, []),         # CPUs that do not exist: nobody
    (1, 0, 2, [0, 1, 3]),            # all but the sender (the list is ignored)
    (2, 0b0001, 3, [3]),             # the sender only
    (3, 0b1111, 0, []),              # reserved filter: nothing
])
def test_sgir_target_filters(filt, targets, sender, expected):
    gic = ready(num_cpus=4)
    enable_sgis(gic)
    gic.current_cpu = sender
    gic.write(g.GICD_SGIR, 4, (filt << 24) | (targets << 16) | 9)
    assert pending_on(gic) == expected
    for cpu in expected:
        gic.current_cpu = cpu
        assert iar(gic) == 9 | (sender << 10)
        eoi(gic, 9 | (sender << 10))
    assert pending_on(gic) == []


def test_one_sgi_from_several_sources_is_taken_once_per_source():
    gic = ready(num_cpus=4)
    enable_sgis(gic)
    for sender in (3, 1, 2):
        gic.current_cpu = sender
        gic.write(g.GICD_SGIR, 4, (0b0001 << 16) | 6)
    gic.current_cpu = 0
    taken = []
    while (value := iar(gic)) != SPURIOUS:
        taken.append(value >> 10)
        assert value & 0x3FF == 6
        eoi(gic, value)
    assert taken == [1, 2, 3]  # lowest source first


def test_sgi_enable_and_pending_are_per_cpu():
    gic = ready(num_cpus=2)
    gic.current_cpu = 1
    gic.write(word(g.GICD_ISENABLER, 0), 4, bit(4))
    gic.current_cpu = 0
    assert gic.read(word(g.GICD_ISENABLER, 0), 4) & 0xFFFF == 0
    gic.write(g.GICD_SGIR, 4, (0b11 << 16) | 4)  # to both; only CPU 1 has it enabled
    assert pending_on(gic) == [1]
    assert gic.read(word(g.GICD_ISPENDR, 0), 4) & bit(4)  # pending on CPU 0 too, just disabled


def test_spi_to_several_targets_goes_to_the_first_to_acknowledge():
    gic = ready(num_cpus=4)
    setup_spi(gic, 50)
    gic.write(g.GICD_ITARGETSR + 50, 1, 0b0110)
    gic.write(word(g.GICD_ISPENDR, 50), 4, bit(50))
    assert pending_on(gic) == [1, 2]
    gic.current_cpu = 2
    assert iar(gic) == 50
    assert pending_on(gic) == []  # active now: CPU 1 gets nothing
    gic.current_cpu = 1
    assert iar(gic) == SPURIOUS
    gic.current_cpu = 2
    eoi(gic, 50)
    gic.write(g.GICD_ITARGETSR + 50, 1, 0b1000)  # retarget, pend again: CPU 3 only
    gic.write(word(g.GICD_ISPENDR, 50), 4, bit(50))
    assert pending_on(gic) == [3]


def test_itargetsr_of_private_interrupts_reads_the_reading_cpus_bit():
    gic = Gic(num_cpus=4)
    for cpu in range(4):
        gic.current_cpu = cpu
        assert gic.read(g.GICD_ITARGETSR, 4) == (1 << cpu) * 0x01010101
        gic.write(g.GICD_ITARGETSR + 16, 1, 0xFF)  # read-only
        assert gic.read(g.GICD_ITARGETSR + 16, 1) == 1 << cpu


def test_ppi_levels_are_per_cpu():
    gic = ready(num_cpus=3)
    for cpu in range(3):
        gic.current_cpu = cpu
        gic.write(word(g.GICD_ISENABLER, 27), 4, bit(27))
    gic.set_level(27, True, cpu=2)
    assert pending_on(gic) == [2]
    gic.set_level(27, False, cpu=2)
    assert pending_on(gic) == []
