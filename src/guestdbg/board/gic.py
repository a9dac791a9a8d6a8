"""A GICv2 interrupt controller (distributor and CPU interface), as QEMU's virt board's default
(`arm,cortex-a15-gic`): pure Python, no Unicorn, one MMIO window.

Layout of the window (offsets from its base; QEMU virt maps it at 0x0800_0000):

    0x0_0000  distributor (GICD_*), 64 KiB
    0x1_0000  CPU interface (GICC_*), 64 KiB; GICC_DIR at +0x1000

Model (GICv2 architecture specification, IHI 0048B; no Security Extensions, so every interrupt
is Group 0, GICD_IGROUPRn and GICC_ABPR/AIAR/AEOIR/AHPPIR/APRn read as zero, and a Group 0
interrupt is signalled as IRQ):

- 288 interrupt IDs as QEMU's virt (256 SPIs + 32 private), GICD_TYPER.ITLinesNumber = 8.
- SGIs (0-15) and PPIs (16-31) are banked per CPU: their enable, pending, active, priority and
  configuration, and SGIs' pending source CPUs, are kept per CPU index so that SMP fits. SPIs
  (32-287) are global and go to the CPUs their GICD_ITARGETSRn byte names.
- An interrupt is pending if its pending latch is set (an edge on an edge-triggered input,
  GICD_ISPENDRn, an SGI) or, when level-sensitive, while its input is high (`set_level`).
  Acknowledging (GICC_IAR) clears the latch and makes it active; a level input still high
  keeps it pending too (active and pending).
- The CPU interface signals an IRQ (`irq_pending(cpu)`) when both the distributor and the CPU
  interface are enabled and the highest-priority pending, enabled, inactive interrupt for the
  CPU has a priority below GICC_PMR and a group priority (per GICC_BPR) below the running
  priority. Acknowledging pushes its group priority; GICC_EOIR pops it (priority drop) and,
  unless GICC_CTLR.EOImode is set, deactivates the interrupt (else GICC_DIR does).
- Register widths: the byte-array registers (GICD_IPRIORITYRn, GICD_ITARGETSRn) take byte and
  word accesses; everything else takes aligned words only. Other sizes, reserved and
  unimplemented offsets read as zero and ignore writes (counted in `bad_accesses`).
- GICD_CPENDSGIRn/SPENDSGIRn read as zero and ignore writes (use GICD_SGIR).

`read`/`write` act for the CPU named by `current_cpu` (0 until SMP sets it per access).
`listener`, if set, is called after every change that can move an IRQ output (the board
drives the vCPUs' IRQ lines from it).
"""

from __future__ import annotations

from collections.abc import Callable

NUM_IRQS = 288  # QEMU virt: NUM_IRQS (256 SPIs) + GIC_INTERNAL (32)
GIC_INTERNAL = 32
NUM_SGIS = 16
SPURIOUS = 1023
DIST_SIZE = 0x1_0000
CPU_SIZE = 0x1_0000
WINDOW_SIZE = DIST_SIZE + CPU_SIZE
IDLE_PRIORITY = 0x100  # running priority with nothing active (GICC_RPR reads 0xFF)

# Distributor
GICD_CTLR, GICD_TYPER, GICD_IIDR = 0x000, 0x004, 0x008
GICD_IGROUPR, GICD_ISENABLER, GICD_ICENABLER = 0x080, 0x100, 0x180
GICD_ISPENDR, GICD_ICPENDR, GICD_ISACTIVER, GICD_ICACTIVER = 0x200, 0x280, 0x300, 0x380
GICD_IPRIORITYR, GICD_ITARGETSR, GICD_ICFGR = 0x400, 0x800, 0xC00
GICD_SGIR = 0xF00
GICD_IIDR_VALUE = 0x0000_043B  # implementer Arm
# GICD_PIDR4..7, PIDR0..3, CIDR0..3 at 0xFD0..0xFFC: a GICv2 (PIDR2.ArchRev = 2), as QEMU's.
GICD_ID_REGS = dict(zip(range(0xFD0, 0x1000, 4),
                        (0x04, 0x00, 0x00, 0x00, 0x90, 0xB4, 0x2B, 0x00, 0x0D, 0xF0, 0x05, 0xB1)))

# CPU interface (offsets within its own frame)
GICC_CTLR, GICC_PMR, GICC_BPR, GICC_IAR, GICC_EOIR = 0x00, 0x04, 0x08, 0x0C, 0x10
GICC_RPR, GICC_HPPIR, GICC_IIDR, GICC_DIR = 0x14, 0x18, 0xFC, 0x1000
GICC_IIDR_VALUE = 0x0002_043B  # architecture version 2, implementer Arm
GICC_CTLR_ENABLE = 1 << 0
GICC_CTLR_EOIMODE = 1 << 9
GICC_CTLR_MASK = 0x3FF  # EnableGrp0/1, AckCtl, FIQEn, CBPR, FIQ/IRQBypDisGrp0/1, EOImodeS/NS

_PER_CPU_BITMAPS = ("enable", "pend", "active", "level", "edge")


def _bits(value: int, lo: int, n: int) -> int:
    return (value >> lo) & ((1 << n) - 1)


class Gic:
    """GICv2 distributor and CPU interface(s) behind one MMIO window (see the module doc)."""

    def __init__(self, num_cpus: int = 1, num_irqs: int = NUM_IRQS,
                 listener: Callable[[], None] | None = None):
        if not 1 <= num_cpus <= 8:
            raise ValueError(f"a GICv2 serves 1-8 CPUs, not {num_cpus}")
        if num_irqs % 32 or not GIC_INTERNAL < num_irqs <= 1020:
            raise ValueError(f"number of interrupts must be a multiple of 32 in 64..1020, not {num_irqs}")
        self.num_cpus = num_cpus
        self.num_irqs = num_irqs
        self.listener = listener
        self.current_cpu = 0
        self.bad_accesses = 0
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        n = self.num_cpus
        self.dist_ctlr = 0
        # Bitmaps over interrupt IDs. Bits 0-31 live in the CPU's bank, 32+ in the global one.
        self.banked: list[dict[str, int]] = [
            {"enable": 0, "pend": 0, "active": 0, "level": 0, "edge": (1 << NUM_SGIS) - 1} for _ in range(n)]
        self.spi: dict[str, int] = {name: 0 for name in _PER_CPU_BITMAPS}
        self.banked_priority = [[0] * GIC_INTERNAL for _ in range(n)]
        self.spi_priority = [0] * self.num_irqs  # entries below 32 unused
        self.spi_target = [0] * self.num_irqs  # CPU masks; entries below 32 unused
        self.sgi_sources = [[0] * NUM_SGIS for _ in range(n)]  # [target cpu][sgi] = source CPU mask
        self.cpu_ctlr = [0] * n
        self.pmr = [0] * n
        self.bpr = [0] * n
        self.active_stack: list[list[tuple[int, int]]] = [[] for _ in range(n)]  # (intid, group priority)
        self.last_sgir = 0

    def state(self) -> dict:
        return {
            "num_cpus": self.num_cpus, "num_irqs": self.num_irqs, "dist_ctlr": self.dist_ctlr,
            "banked": [dict(b) for b in self.banked], "spi": dict(self.spi),
            "banked_priority": [list(p) for p in self.banked_priority],
            "spi_priority": list(self.spi_priority), "spi_target": list(self.spi_target),
            "sgi_sources": [list(s) for s in self.sgi_sources], "cpu_ctlr": list(self.cpu_ctlr),
            "pmr": list(self.pmr), "bpr": list(self.bpr),
            "active_stack": [[list(e) for e in stack] for stack in self.active_stack],
            "last_sgir": self.last_sgir,
        }

    def restore(self, state: dict) -> None:
        if state["num_cpus"] != self.num_cpus or state["num_irqs"] != self.num_irqs:
            raise ValueError(f"GIC state for {state['num_cpus']} CPUs/{state['num_irqs']} IRQs, "
                             f"this GIC has {self.num_cpus}/{self.num_irqs}")
        self.dist_ctlr = state["dist_ctlr"]
        self.banked = [{name: int(b[name]) for name in _PER_CPU_BITMAPS} for b in state["banked"]]
        self.spi = {name: int(state["spi"][name]) for name in _PER_CPU_BITMAPS}
        self.banked_priority = [list(p) for p in state["banked_priority"]]
        self.spi_priority = list(state["spi_priority"])
        self.spi_target = list(state["spi_target"])
        self.sgi_sources = [list(s) for s in state["sgi_sources"]]
        self.cpu_ctlr = list(state["cpu_ctlr"])
        self.pmr = list(state["pmr"])
        self.bpr = list(state["bpr"])
        self.active_stack = [[(int(i), int(p)) for i, p in stack] for stack in state["active_stack"]]
        self.last_sgir = state["last_sgir"]
        self._changed()

    def _changed(self) -> None:
        if self.listener is not None:
            self.listener()

    # ------------------------------------------------------------------ inputs
    def set_level(self, intid: int, level: bool | int, cpu: int = 0) -> None:
        """Drive an interrupt input: a PPI (16-31) of CPU `cpu`, or an SPI (32+). A rising edge
        latches an edge-triggered interrupt pending; a level-sensitive one is pending while high."""
        if not NUM_SGIS <= intid < self.num_irqs:
            raise ValueError(f"INTID {intid} is not a PPI or SPI (16..{self.num_irqs - 1})")
        if not 0 <= cpu < self.num_cpus:
            raise ValueError(f"no CPU {cpu}")
        bank = self.banked[cpu] if intid < GIC_INTERNAL else self.spi
        bit = 1 << intid
        was = bank["level"] & bit
        if level:
            bank["level"] |= bit
            if not was and bank["edge"] & bit:
                bank["pend"] |= bit
        else:
            bank["level"] &= ~bit
        if bool(was) != bool(level):
            self._changed()

    # ------------------------------------------------------------------ derived state
    def _bitmap(self, cpu: int, name: str) -> int:
        return self.banked[cpu][name] | self.spi[name]

    def _pending_bits(self, cpu: int) -> int:
        bank, spi = self.banked[cpu], self.spi
        return (bank["pend"] | (bank["level"] & ~bank["edge"])) | (spi["pend"] | (spi["level"] & ~spi["edge"]))

    def _priority(self, cpu: int, intid: int) -> int:
        return self.banked_priority[cpu][intid] if intid < GIC_INTERNAL else self.spi_priority[intid]

    def _group_priority(self, cpu: int, priority: int) -> int:
        return priority & (0xFF << (self.bpr[cpu] + 1)) & 0xFF

    def highest_pending(self, cpu: int) -> tuple[int, int] | None:
        """(priority, INTID) of the highest-priority pending, enabled, inactive interrupt
        forwarded to `cpu` (lowest INTID first among equals), or None. None while the
        distributor is disabled."""
        if not self.dist_ctlr & 1:
            return None
        cand = self._pending_bits(cpu) & self._bitmap(cpu, "enable") & ~self._bitmap(cpu, "active")
        spis = cand >> GIC_INTERNAL
        if spis:
            cand = (cand & ((1 << GIC_INTERNAL) - 1)) | self._spi_candidates(spis, cpu)
        best: tuple[int, int] | None = None
        while cand:
            low = cand & -cand
            intid = low.bit_length() - 1
            cand ^= low
            prio = self._priority(cpu, intid)
            if best is None or prio < best[0]:
                best = (prio, intid)
        return best

    def _spi_candidates(self, spis: int, cpu: int) -> int:
        mask, out = 1 << cpu, 0
        while spis:
            low = spis & -spis
            intid = low.bit_length() - 1 + GIC_INTERNAL
            spis ^= low
            if self.spi_target[intid] & mask:
                out |= 1 << intid
        return out

    def running_priority(self, cpu: int) -> int:
        stack = self.active_stack[cpu]
        return min(p for _, p in stack) if stack else IDLE_PRIORITY

    def _signallable(self, cpu: int) -> tuple[int, int] | None:
        if not self.cpu_ctlr[cpu] & GICC_CTLR_ENABLE:
            return None
        best = self.highest_pending(cpu)
        if best is None:
            return None
        prio, _ = best
        if prio >= self.pmr[cpu] or self._group_priority(cpu, prio) >= self.running_priority(cpu):
            return None
        return best

    def irq_pending(self, cpu: int) -> bool:
        """Does the CPU interface of `cpu` signal an IRQ?"""
        return self._signallable(cpu) is not None

    # ------------------------------------------------------------------ MMIO
    def read(self, offset: int, size: int) -> int:
        if offset < DIST_SIZE:
            return self._dist_read(self.current_cpu, offset, size)
        return self._cpu_read(self.current_cpu, offset - DIST_SIZE, size)

    def write(self, offset: int, size: int, value: int) -> None:
        value &= (1 << (8 * size)) - 1
        if offset < DIST_SIZE:
            self._dist_write(self.current_cpu, offset, size, value)
        else:
            self._cpu_write(self.current_cpu, offset - DIST_SIZE, size, value)
        self._changed()

    def _bad(self) -> int:
        self.bad_accesses += 1
        return 0

    # ---- distributor
    def _dist_read(self, cpu: int, offset: int, size: int) -> int:
        if GICD_IPRIORITYR <= offset < GICD_ICFGR and size in (1, 4) and offset % size == 0:
            return sum(self._byte_reg_read(cpu, offset + i) << (8 * i) for i in range(size))
        if size != 4 or offset % 4:
            return self._bad()
        if offset == GICD_CTLR:
            return self.dist_ctlr
        if offset == GICD_TYPER:
            return (self.num_irqs // 32 - 1) | ((self.num_cpus - 1) << 5)
        if offset == GICD_IIDR:
            return GICD_IIDR_VALUE
        if offset in GICD_ID_REGS:
            return GICD_ID_REGS[offset]
        reg = self._bitmap_reg(offset)
        if reg is not None:
            name, first = reg
            if name == "pend":
                bits = self._pending_bits(cpu)
            else:
                bits = self._bitmap(cpu, name)
            return _bits(bits, first, 32)
        if GICD_ICFGR <= offset < GICD_ICFGR + self.num_irqs // 4:
            first = (offset - GICD_ICFGR) * 4
            edge = _bits(self._bitmap(cpu, "edge"), first, 16)
            return sum(2 << (2 * i) for i in range(16) if edge >> i & 1)
        return 0  # GICD_IGROUPRn, GICD_SGIR (WO), CPENDSGIR/SPENDSGIR, reserved: RAZ

    def _bitmap_reg(self, offset: int) -> tuple[str, int] | None:
        """(bitmap, first INTID) of a set/clear-enable/pending/active register in range."""
        if not GICD_ISENABLER <= offset < GICD_IPRIORITYR:
            return None
        group, index = divmod(offset - GICD_ISENABLER, 0x80)
        first = index * 8
        if first >= self.num_irqs:
            return None
        return ("enable", "pend", "active")[group // 2], first

    def _dist_write(self, cpu: int, offset: int, size: int, value: int) -> None:
        if GICD_IPRIORITYR <= offset < GICD_ICFGR and size in (1, 4) and offset % size == 0:
            for i in range(size):
                self._byte_reg_write(cpu, offset + i, (value >> (8 * i)) & 0xFF)
            return
        if size != 4 or offset % 4:
            self._bad()
            return
        if offset == GICD_CTLR:
            self.dist_ctlr = value & 1
            return
        reg = self._bitmap_reg(offset)
        if reg is not None:
            name, first = reg
            is_set = (offset - GICD_ISENABLER) // 0x80 % 2 == 0
            if name == "pend" and first == 0:
                value &= ~((1 << NUM_SGIS) - 1)  # SGIs' pending bits: GICD_SGIR/SPENDSGIR only
            self._update_bits(cpu, name, first, value, is_set)
            return
        if GICD_ICFGR <= offset < GICD_ICFGR + self.num_irqs // 4:
            first = (offset - GICD_ICFGR) * 4
            if first == 0:
                return  # SGIs: always edge-triggered (RO)
            edge = sum(1 << i for i in range(16) if value >> (2 * i + 1) & 1)
            bank = self.banked[cpu] if first < GIC_INTERNAL else self.spi
            keep = ~(0xFFFF << first)
            bank["edge"] = (bank["edge"] & keep) | (edge << first)
            return
        if offset == GICD_SGIR:
            self._send_sgi(cpu, value)
            return
        # GICD_IGROUPRn, RO registers, CPENDSGIR/SPENDSGIR, reserved: WI

    def _update_bits(self, cpu: int, name: str, first: int, value: int, is_set: bool) -> None:
        bits = value << first
        bank = self.banked[cpu] if first < GIC_INTERNAL else self.spi
        if is_set:
            bank[name] |= bits
        else:
            bank[name] &= ~bits

    def _byte_reg_read(self, cpu: int, offset: int) -> int:
        if offset < GICD_ITARGETSR:
            intid = offset - GICD_IPRIORITYR
            if intid >= self.num_irqs:
                return 0
            return self._priority(cpu, intid)
        intid = offset - GICD_ITARGETSR
        if intid >= self.num_irqs:
            return 0
        if intid < GIC_INTERNAL:
            return 1 << cpu  # banked, RO: the reading CPU's own bit
        return self.spi_target[intid]

    def _byte_reg_write(self, cpu: int, offset: int, value: int) -> None:
        if offset < GICD_ITARGETSR:
            intid = offset - GICD_IPRIORITYR
            if intid >= self.num_irqs:
                return
            if intid < GIC_INTERNAL:
                self.banked_priority[cpu][intid] = value
            else:
                self.spi_priority[intid] = value
            return
        intid = offset - GICD_ITARGETSR
        if GIC_INTERNAL <= intid < self.num_irqs:
            self.spi_target[intid] = value & ((1 << self.num_cpus) - 1)

    def _send_sgi(self, cpu: int, value: int) -> None:
        """GICD_SGIR: TargetListFilter [25:24], CPUTargetList [23:16], SGIINTID [3:0]."""
        self.last_sgir = value
        sgi, filt, target_list = value & 0xF, _bits(value, 24, 2), _bits(value, 16, 8)
        if filt == 0:
            targets = target_list
        elif filt == 1:
            targets = ((1 << self.num_cpus) - 1) & ~(1 << cpu)
        elif filt == 2:
            targets = 1 << cpu
        else:
            return  # reserved
        for target in range(self.num_cpus):
            if targets >> target & 1:
                self.sgi_sources[target][sgi] |= 1 << cpu
                self.banked[target]["pend"] |= 1 << sgi

    # ---- CPU interface
    def _cpu_read(self, cpu: int, offset: int, size: int) -> int:
        if size != 4 or offset % 4:
            return self._bad()
        if offset == GICC_CTLR:
            return self.cpu_ctlr[cpu]
        if offset == GICC_PMR:
            return self.pmr[cpu]
        if offset == GICC_BPR:
            return self.bpr[cpu]
        if offset == GICC_IAR:
            value = self.acknowledge(cpu)
            self._changed()
            return value
        if offset == GICC_RPR:
            return self.running_priority(cpu) & 0xFF if self.active_stack[cpu] else 0xFF
        if offset == GICC_HPPIR:
            best = self.highest_pending(cpu)
            if best is None:
                return SPURIOUS
            return best[1] | (self._sgi_source(cpu, best[1]) << 10)
        if offset == GICC_IIDR:
            return GICC_IIDR_VALUE
        return 0  # GICC_EOIR/DIR (WO), ABPR, AIAR, AEOIR, AHPPIR, APRn, NSAPRn, reserved

    def _cpu_write(self, cpu: int, offset: int, size: int, value: int) -> None:
        if size != 4 or offset % 4:
            self._bad()
            return
        if offset == GICC_CTLR:
            self.cpu_ctlr[cpu] = value & GICC_CTLR_MASK
        elif offset == GICC_PMR:
            self.pmr[cpu] = value & 0xFF
        elif offset == GICC_BPR:
            self.bpr[cpu] = value & 7
        elif offset == GICC_EOIR:
            self.end_of_interrupt(cpu, value & 0x3FF)
        elif offset == GICC_DIR and self.cpu_ctlr[cpu] & GICC_CTLR_EOIMODE:
            self._deactivate(cpu, value & 0x3FF)

    def _sgi_source(self, cpu: int, intid: int) -> int:
        if intid >= NUM_SGIS:
            return 0
        sources = self.sgi_sources[cpu][intid]
        return (sources & -sources).bit_length() - 1 if sources else 0

    def acknowledge(self, cpu: int) -> int:
        """GICC_IAR: the signalled interrupt becomes active; its ID (with an SGI's source CPU
        in bits [12:10]), or 1023 if nothing is signalled."""
        best = self._signallable(cpu)
        if best is None:
            return SPURIOUS
        prio, intid = best
        bit = 1 << intid
        bank = self.banked[cpu] if intid < GIC_INTERNAL else self.spi
        source = 0
        if intid < NUM_SGIS:
            source = self._sgi_source(cpu, intid)
            self.sgi_sources[cpu][intid] &= ~(1 << source)
            if not self.sgi_sources[cpu][intid]:
                bank["pend"] &= ~bit
        else:
            bank["pend"] &= ~bit
        bank["active"] |= bit
        self.active_stack[cpu].append((intid, self._group_priority(cpu, prio)))
        return intid | (source << 10)

    def end_of_interrupt(self, cpu: int, intid: int) -> None:
        """GICC_EOIR: drop the running priority of `intid`, and deactivate it unless
        GICC_CTLR.EOImode splits that off to GICC_DIR."""
        if intid >= 1020:
            return
        stack = self.active_stack[cpu]
        for i in range(len(stack) - 1, -1, -1):
            if stack[i][0] == intid:
                del stack[i]
                break
        else:
            return  # not acknowledged: UNPREDICTABLE, ignored
        if not self.cpu_ctlr[cpu] & GICC_CTLR_EOIMODE:
            self._deactivate(cpu, intid)

    def _deactivate(self, cpu: int, intid: int) -> None:
        if intid >= self.num_irqs:
            return
        bank = self.banked[cpu] if intid < GIC_INTERNAL else self.spi
        bank["active"] &= ~(1 << intid)
