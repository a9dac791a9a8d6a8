#!/usr/bin/env python3
"""Benchmark the emulated vCPU: free-running speed with debug hardware armed, and stop latency.

Run from the repository root:

    .venv/bin/python bench/bench_vcpu.py [--iterations N] [--repeat K] [--json out.json]

Everything is measured in one process, with the configurations interleaved round by round
(the order rotates each round), because this kind of machine is shared and noisy: compare the
ratios, not the absolute numbers. See bench/README.md for what each row means.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from elftools.elf.elffile import ELFFile
from unicorn import UC_ARCH_ARM64, UC_MODE_ARM, Uc
from unicorn import __version__ as unicorn_version
from unicorn import arm64_const as uca

from guestdbg import kvm
from guestdbg.board.common import elf_symbols
from guestdbg.arm import debugregs as dr
from guestdbg.arm import kvm_regs as kr
from guestdbg.board.common import ExitStatus
from guestdbg.board.virt import RAM_BASE, VirtMachine, VirtConfig

REPO = Path(__file__).resolve().parent.parent
HW_DEBUG = kvm.KVM_GUESTDBG_ENABLE | kvm.KVM_GUESTDBG_USE_HW
SINGLESTEP = kvm.KVM_GUESTDBG_ENABLE | kvm.KVM_GUESTDBG_SINGLESTEP
NEVER_ENDS = 1 << 62  # loop_iterations for the stop-latency guests: the loop outlives the test

# Code in loop.elf that the whole run (_start, main, the print, the exit) never executes.
UNUSED_FUNCTIONS = (
    "exc_common", "uart_put_hexn", "uart_put_hex", "uart_put_hex_nz", "uart_put_dec",
    "uart_put_sdec", "sys_writec", "sys_write0", "sys_exit_extended", "psci_call",
    "psci_system_off", "default_exception_report", "memset", "memcpy", "memmove", "memcmp",
)
# RAM that neither the loop guest nor its runtime touches, besides its own idle_page:
# 64 MiB into the 128 MiB RAM, far past the image, its stack and .bss.
SPARE_RAM = RAM_BASE + (64 << 20)


# ---------------------------------------------------------------------------------- guests
def build_guests(out: Path) -> Path:
    subprocess.run(["make", "-s", "-C", str(REPO / "guests"), f"O={out}", "-j2"], check=True,
                   stdout=subprocess.DEVNULL)
    return out




def elf_segments(elf: Path) -> list[tuple[int, bytes]]:
    with elf.open("rb") as f:
        return [(seg["p_paddr"], seg.data()) for seg in ELFFile(f).iter_segments()
                if seg["p_type"] == "PT_LOAD" and seg["p_filesz"]]


def xor_1_to_n(n: int) -> int:
    """x3 at loop_end: 1 ^ 2 ^ ... ^ n."""
    return (n, 1, n + 1, 0)[n % 4]


def loop_insns(n: int) -> int:
    return 5 + 4 * n


# ---------------------------------------------------------------------------------- debug setups
def debugger_slots(sym: dict[str, int]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """16 breakpoints and 16 watchpoints that the loop guest never hits (mixed kinds)."""
    idle = sym["idle_page"]
    bps = []
    for i, name in enumerate(UNUSED_FUNCTIONS[:12]):  # all on the loop's own 4 KiB code page
        bps.append((sym[name], dr.encode_dbgbcr(pmc=0b11 if i % 3 else 0b01)))
    for off in (0x0, 0x40, 0x800, 0xFFC):  # idle_page is data: never executed
        bps.append((idle + off, dr.encode_dbgbcr()))
    lsc_load, lsc_store, lsc_both = 0b01, 0b10, 0b11
    wps = [
        # BAS watchpoints on idle_page: sizes 1..8, loads, stores and both.
        (idle + 0x000, dr.encode_dbgwcr(lsc=lsc_store, bas=0xFF)),
        (idle + 0x008, dr.encode_dbgwcr(lsc=lsc_load, bas=0x01)),
        (idle + 0x010, dr.encode_dbgwcr(lsc=lsc_both, bas=0x0C)),
        (idle + 0x018, dr.encode_dbgwcr(lsc=lsc_store, bas=0xF0)),
        (idle + 0x100, dr.encode_dbgwcr(lsc=lsc_load, bas=0xFF)),
        (idle + 0x7F8, dr.encode_dbgwcr(lsc=lsc_both, bas=0x80)),
        # MASK watchpoints on idle_page: 8 bytes, 256 bytes, the whole page.
        (idle + 0x200, dr.encode_dbgwcr(lsc=lsc_store, bas=0xFF, mask=3)),
        (idle + 0x300, dr.encode_dbgwcr(lsc=lsc_load, bas=0xFF, mask=8)),
        (idle, dr.encode_dbgwcr(lsc=lsc_both, bas=0xFF, mask=12)),
        # Another untouched area: BAS and MASK (one page, two pages), all three kinds.
        (SPARE_RAM + 0x000, dr.encode_dbgwcr(lsc=lsc_store, bas=0xFF)),
        (SPARE_RAM + 0x020, dr.encode_dbgwcr(lsc=lsc_load, bas=0x0F)),
        (SPARE_RAM + 0x040, dr.encode_dbgwcr(lsc=lsc_both, bas=0xFF, mask=5)),
        (SPARE_RAM, dr.encode_dbgwcr(lsc=lsc_store, bas=0xFF, mask=12)),
        (SPARE_RAM + 0x1000, dr.encode_dbgwcr(lsc=lsc_load, bas=0xFF, mask=13)),
        (SPARE_RAM + 0x1800, dr.encode_dbgwcr(lsc=lsc_both, bas=0x3C)),
        (SPARE_RAM + 0x1FF8, dr.encode_dbgwcr(lsc=lsc_store, bas=0x01)),
    ]
    assert len(bps) == 16 and len(wps) == 16
    return bps, wps


def debug_arch(bps=(), wps=()) -> kr.kvm_guest_debug_arch:
    arch = kr.kvm_guest_debug_arch()
    for i, (bvr, bcr) in enumerate(bps):
        arch.dbg_bvr[i], arch.dbg_bcr[i] = bvr, bcr
    for i, (wvr, wcr) in enumerate(wps):
        arch.dbg_wvr[i], arch.dbg_wcr[i] = wvr, wcr
    return arch


# ---------------------------------------------------------------------------------- free running
class LoopMachine:
    """A guestdbg machine with the loop guest loaded; each trial reruns it from _start."""

    def __init__(self, elf: Path, sym: dict[str, int], config: VirtConfig | None = None):
        self.sym = sym
        self.machine = VirtMachine(config or VirtConfig(), console=lambda b: None)
        self.entry = self.machine.load_elf(elf)
        self.n = None

    def set_iterations(self, n: int) -> None:
        self.machine.vm.write_phys(self.sym["loop_iterations"], n.to_bytes(8, "little"))
        self.n = n

    def trial(self) -> float:
        """One run from entry to guest exit; returns guest MIPS (5 + 4N instructions)."""
        m = self.machine
        m.reset_cpu(self.entry)
        t0 = time.perf_counter()
        result = m.run_until()
        dt = time.perf_counter() - t0
        if not (isinstance(result, ExitStatus) and result.status == 0):
            raise RuntimeError(f"loop guest did not exit cleanly: {result} at PC={m.vcpu.pc:#x}")
        got = int.from_bytes(m.vm.read_phys(self.sym["loop_result"], 8), "little")
        if got != xor_1_to_n(self.n):
            raise RuntimeError(f"loop_result {got:#x} != {xor_1_to_n(self.n):#x}")
        return loop_insns(self.n) / dt / 1e6


class BareLoop:
    """The same image on a bare Unicorn (same CPU model, no guestdbg hooks): main..loop_end."""

    def __init__(self, elf: Path, sym: dict[str, int]):
        self.sym = sym
        self.uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM, uca.UC_CPU_ARM64_A57)
        self.uc.mem_map(RAM_BASE, 128 << 20)
        for addr, data in elf_segments(elf):
            self.uc.mem_write(addr, data)
        self.n = None

    def set_iterations(self, n: int) -> None:
        self.uc.mem_write(self.sym["loop_iterations"], n.to_bytes(8, "little"))
        self.n = n

    def trial(self) -> float:
        t0 = time.perf_counter()
        self.uc.emu_start(self.sym["main"], self.sym["loop_end"])  # no count: free-running
        dt = time.perf_counter() - t0
        if self.uc.reg_read(uca.UC_ARM64_REG_X3) != xor_1_to_n(self.n):
            raise RuntimeError("bare loop computed the wrong result")
        return loop_insns(self.n) / dt / 1e6


# ---------------------------------------------------------------------------------- stops
def rate(op, seconds: float) -> float:
    """Calls of op() per second, over about `seconds`."""
    n, t0 = 0, time.perf_counter()
    deadline = t0 + seconds
    while True:
        for _ in range(50):
            op()
        n += 50
        t = time.perf_counter()
        if t >= deadline:
            return n / (t - t0)


class BreakpointRoundTrip:
    """Hardware breakpoint at loop_body: hit, then the debugger's step-over, then re-arm."""

    def __init__(self, elf: Path, sym: dict[str, int]):
        self.machine = VirtMachine(VirtConfig(), console=lambda b: None)
        self.machine.load_elf(elf)
        self.machine.vm.write_phys(sym["loop_iterations"], NEVER_ENDS.to_bytes(8, "little"))
        self.vcpu = self.machine.vcpu
        self.bp = sym["loop_body"]
        self.armed = debug_arch(bps=[(self.bp, dr.encode_dbgbcr())])
        self.disarmed = debug_arch()
        self.vcpu.set_guest_debug(HW_DEBUG, self.armed)
        first = self.machine.run_until()  # runs _start and main up to the first hit
        self._check(first, dr.ESR_ELx_EC_BREAKPT_LOW)

    def _check(self, run, ec: int) -> None:
        if not (isinstance(run, kvm.KvmRun) and run.exit_reason == kvm.KVM_EXIT_DEBUG and run.debug.ec == ec
                and self.vcpu.pc == self.bp + (4 if ec == dr.ESR_ELx_EC_SOFTSTP_LOW else 0)):
            raise RuntimeError(f"unexpected stop {run} at PC={self.vcpu.pc:#x}")

    def round_trip(self) -> None:
        vcpu = self.vcpu
        # Stopped on the breakpoint: step over it without it, re-arm, run to the next hit.
        vcpu.set_guest_debug(HW_DEBUG | SINGLESTEP, self.disarmed)
        step = vcpu.run()
        vcpu.set_guest_debug(HW_DEBUG, self.armed)
        hit = vcpu.run()
        if hit.exit_reason != kvm.KVM_EXIT_DEBUG or step.exit_reason != kvm.KVM_EXIT_DEBUG:
            raise RuntimeError(f"unexpected exits {step} {hit}")

    def verify(self) -> None:
        vcpu = self.vcpu
        vcpu.set_guest_debug(HW_DEBUG | SINGLESTEP, self.disarmed)
        self._check(vcpu.run(), dr.ESR_ELx_EC_SOFTSTP_LOW)
        vcpu.set_guest_debug(HW_DEBUG, self.armed)
        self._check(vcpu.run(), dr.ESR_ELx_EC_BREAKPT_LOW)


class SingleStepper:
    def __init__(self, elf: Path, sym: dict[str, int]):
        self.machine = VirtMachine(VirtConfig(), console=lambda b: None)
        self.machine.load_elf(elf)
        self.machine.vm.write_phys(sym["loop_iterations"], NEVER_ENDS.to_bytes(8, "little"))
        self.vcpu = self.machine.vcpu
        self.vcpu.set_guest_debug(SINGLESTEP)
        self.lo, self.hi = sym["_start"], sym["loop_end"]

    def step(self) -> None:
        self.vcpu.run()

    def verify(self) -> None:
        before = self.vcpu.pc
        run = self.vcpu.run()
        if run.exit_reason != kvm.KVM_EXIT_DEBUG or run.debug.ec != dr.ESR_ELx_EC_SOFTSTP_LOW \
                or not self.lo <= self.vcpu.pc < self.hi or self.vcpu.pc == before:
            raise RuntimeError(f"unexpected step exit {run} at PC={self.vcpu.pc:#x}")


class BareStepper:
    """uc.emu_start(pc, 0, count=1) on a bare Unicorn, reading PC each time as a stepper must."""

    def __init__(self, elf: Path, sym: dict[str, int]):
        self.uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM, uca.UC_CPU_ARM64_A57)
        self.uc.mem_map(RAM_BASE, 128 << 20)
        for addr, data in elf_segments(elf):
            self.uc.mem_write(addr, data)
        self.uc.mem_write(sym["loop_iterations"], NEVER_ENDS.to_bytes(8, "little"))
        self.uc.reg_write(uca.UC_ARM64_REG_PC, sym["main"])

    def step(self) -> None:
        uc = self.uc
        uc.emu_start(uc.reg_read(uca.UC_ARM64_REG_PC), 0, count=1)


# ---------------------------------------------------------------------------------- reporting
def summary(samples: list[float]) -> dict:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "samples": [round(s, 3) for s in samples]}


def fmt(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:,.1f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=None,
                    help="loop_iterations for the MIPS runs (default: calibrated for ~--run-seconds)")
    ap.add_argument("--repeat", type=int, default=7, help="rounds of interleaved measurements (default 7)")
    ap.add_argument("--run-seconds", type=float, default=1.2,
                    help="target length of one free-running run when calibrating (default 1.2)")
    ap.add_argument("--step-seconds", type=float, default=0.5,
                    help="length of one stop-latency measurement (default 0.5)")
    ap.add_argument("--guest-dir", type=Path, help="built guests (default: build into a temp dir)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")

    tmp = None
    if args.guest_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="guestdbg-bench-")
        print(f"building guests into {tmp.name} ...", flush=True)
        guest_dir = build_guests(Path(tmp.name))
    else:
        guest_dir = args.guest_dir
    elf = guest_dir / "loop.elf"
    sym = elf_symbols(elf)
    started = time.perf_counter()

    # ---- 1/2: free-running MIPS, four configurations
    base = LoopMachine(elf, sym)
    dbg = LoopMachine(elf, sym, VirtConfig(brps=16, wrps=16))
    bps, wps = debugger_slots(sym)
    t0 = time.perf_counter()
    dbg.machine.vcpu.set_guest_debug(HW_DEBUG, debug_arch(bps, wps))
    arm_debugger_s = time.perf_counter() - t0
    guest = LoopMachine(elf, sym, VirtConfig(brps=16, wrps=16))
    vcpu = guest.machine.vcpu
    t0 = time.perf_counter()
    for i, (bvr, bcr) in enumerate(bps):
        vcpu.set_one_reg(kr.ARM64_SYS_REG(*kr.DBGBVRn_EL1(i)), bvr)
        vcpu.set_one_reg(kr.ARM64_SYS_REG(*kr.DBGBCRn_EL1(i)), bcr)
    for i, (wvr, wcr) in enumerate(wps):
        vcpu.set_one_reg(kr.ARM64_SYS_REG(*kr.DBGWVRn_EL1(i)), wvr)
        vcpu.set_one_reg(kr.ARM64_SYS_REG(*kr.DBGWCRn_EL1(i)), wcr)
    mdscr = dr.MDSCR_EL1.KDE.deposit(dr.MDSCR_EL1.MDE.deposit(0, 1), 1)
    vcpu.set_one_reg(kr.sysreg_id("MDSCR_EL1"), mdscr)
    vcpu._rearm()  # run() would do it on entry; done here so the arming cost is not in the timing
    arm_guest_s = time.perf_counter() - t0
    bare = BareLoop(elf, sym)
    configs = {"free": base, "debugger16": dbg, "guest16": guest, "bare": bare}

    for c in configs.values():  # warm up: translate the code once, and check the setups
        c.set_iterations(1000)
        c.trial()
    if args.iterations is None:
        base.set_iterations(2_000_000)
        slowest = min(base.trial() for _ in range(3))  # the host's slow mode bounds the run time
        n = max(1000, int(args.run_seconds * slowest * 1e6 / 4))
    else:
        n = args.iterations
    for c in configs.values():
        c.set_iterations(n)
    print(f"loop guest: N = {n:,} iterations = {loop_insns(n):,} instructions per run; "
          f"{args.repeat} interleaved rounds", flush=True)

    mips: dict[str, list[float]] = {k: [] for k in configs}
    order = list(configs)
    for r in range(args.repeat):
        rot = order[r % len(order):] + order[:r % len(order)]
        for k in rot:
            mips[k].append(configs[k].trial())
        print(f"  round {r + 1}: " + "  ".join(f"{k}={mips[k][-1]:.0f}" for k in order), flush=True)

    # ---- 3: stops through the Python interface
    rt = BreakpointRoundTrip(elf, sym)
    ss = SingleStepper(elf, sym)
    raw = BareStepper(elf, sym)
    stops: dict[str, list[float]] = {"bp_round_trip": [], "single_step": [], "raw_step": []}
    ops = {"bp_round_trip": rt.round_trip, "single_step": ss.step, "raw_step": raw.step}
    for r in range(args.repeat):
        names = list(ops)
        for k in names[r % 3:] + names[:r % 3]:
            stops[k].append(rate(ops[k], args.step_seconds))
        print(f"  round {r + 1}: " + "  ".join(f"{k}={stops[k][-1]:.0f}/s" for k in names), flush=True)
    rt.verify()
    ss.verify()

    # ---- report
    med = {k: statistics.median(v) for k, v in {**mips, **stops}.items()}

    def paired(num: str, den: str, table) -> float:
        return statistics.median(a / b for a, b in zip(table[num], table[den]))

    rows = [
        ("free-run MIPS, nothing armed (A)", "free", "MIPS", None),
        ("free-run MIPS, debugger 16 bp + 16 wp (B)", "debugger16", "MIPS", "free"),
        ("free-run MIPS, guest-owned 16 bp + 16 wp", "guest16", "MIPS", "free"),
        ("free-run MIPS, bare Unicorn (same code)", "bare", "MIPS", None),
        ("bp hit + step-over round trips/s", "bp_round_trip", "1/s", None),
        ("single steps/s (SINGLESTEP run())", "single_step", "1/s", "raw_step"),
        ("raw uc.emu_start(count=1) steps/s", "raw_step", "1/s", None),
    ]
    ratios = {
        "debugger16/free": med["debugger16"] / med["free"],
        "guest16/free": med["guest16"] / med["free"],
        "free/bare": med["free"] / med["bare"],
        "single_step/raw_step": med["single_step"] / med["raw_step"],
        "bp_round_trip/raw_step": med["bp_round_trip"] / med["raw_step"],
    }
    paired_ratios = {
        "debugger16/free": paired("debugger16", "free", mips),
        "guest16/free": paired("guest16", "free", mips),
        "free/bare": paired("free", "bare", mips),
        "single_step/raw_step": paired("single_step", "raw_step", stops),
    }
    best_ratios = {
        "debugger16/free": max(mips["debugger16"]) / max(mips["free"]),
        "guest16/free": max(mips["guest16"]) / max(mips["free"]),
        "free/bare": max(mips["free"]) / max(mips["bare"]),
    }
    print()
    print(f"{'metric':<44} {'median':>11} {'min':>11} {'max':>11}  ratio")
    for label, key, unit, vs in rows:
        v = {**mips, **stops}[key]
        ratio = ""
        if vs:
            ratio = f"{med[key] / med[vs]:.3f} vs {vs}"
        elif key == "bare":
            ratio = f"free/bare {ratios['free/bare']:.3f}"
        print(f"{label:<44} {fmt(med[key]):>11} {fmt(min(v)):>11} {fmt(max(v)):>11}  {ratio}")
    print(f"{'arming 16+16 via set_guest_debug (once), ms':<44} {arm_debugger_s * 1e3:>11.1f}")
    print(f"{'arming 16+16 via ONE_REG + MDSCR (once), ms':<44} {arm_guest_s * 1e3:>11.1f}")
    elapsed = time.perf_counter() - started
    print(f"\nkey ratios (ratio of medians; paired median in brackets): "
          f"B/A = {ratios['debugger16/free']:.3f} [{paired_ratios['debugger16/free']:.3f}]  "
          f"guest/A = {ratios['guest16/free']:.3f} [{paired_ratios['guest16/free']:.3f}]  "
          f"guestdbg/bare = {ratios['free/bare']:.3f} [{paired_ratios['free/bare']:.3f}]  "
          f"step/raw = {ratios['single_step/raw_step']:.3f}  "
          f"best-of: B/A = {best_ratios['debugger16/free']:.3f} guest/A = {best_ratios['guest16/free']:.3f} "
          f"guestdbg/bare = {best_ratios['free/bare']:.3f}  "
          f"round trips/s = {med['bp_round_trip']:,.0f}  ({elapsed:.0f} s)")

    if args.json:
        result = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
                     "unicorn": unicorn_version, "processor": _cpu_model()},
            "iterations": n, "instructions_per_run": loop_insns(n), "repeat": args.repeat,
            "step_seconds": args.step_seconds,
            "mips": {k: summary(v) for k, v in mips.items()},
            "stops_per_s": {k: summary(v) for k, v in stops.items()},
            "ratios": ratios, "paired_ratios": paired_ratios, "best_of_ratios": best_ratios,
            "arming_s": {"debugger16": arm_debugger_s, "guest16": arm_guest_s},
            "elapsed_s": elapsed,
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    if tmp is not None:
        tmp.cleanup()
    return 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
