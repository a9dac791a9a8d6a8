#!/usr/bin/env python3
"""The emulated vCPU's run loop against a bare Unicorn CPU running the same ELF, in one run.

Run from the repository root:

    .venv/bin/python bench/bench_runloop.py [--repeat N] [--quick] [--json [FILE]]

For each guest (sysregs, loop, crunch, svcloop) every contender runs the guest from its entry point to
its semihosting exit, N times, with the order of the contenders rotated each round (this
machine is shared and noisy: compare ratios measured in the same run, never absolute numbers
across runs). The time is the wall time of the guest's run only: building the CPU, mapping
memory and loading the ELF are outside it (except for the `cli` row, which is a whole process).

Contenders:

    bare        a minimal Unicorn runner (below): the baseline, ratio 1.0
    count       the same with emu_start(..., count=2**62): Unicorn's own instruction counting
    clock       bare plus guestdbg's native block hook and MRS/MSR filter (RunControl, action
                table all zero, so nothing reaches Python): the cost of the virtual clock
    guestdbg    VirtMachine.run_to_exit(): the full vCPU, deterministic clock on
    cli         `guestdbg run ELF` in a subprocess, Python start-up included (informational)

Every run's exit status and console output are checked against the others, and the
instruction counts of `clock` and `guestdbg` (both exact) against each other. Exit status 0
even when a target is missed: this is a report. See bench/README.md.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from elftools.elf.elffile import ELFFile
from unicorn import UC_ARCH_ARM64, UC_HOOK_INTR, UC_MODE_ARM, UC_PROT_ALL, Uc, UcError
from unicorn import __version__ as unicorn_version
from unicorn import arm64_const as uca
from unicorn.unicorn_py3.unicorn import uclib

from guestdbg.board.common import elf_symbols
from guestdbg.board.virt import VirtMachine, VirtConfig

REPO = Path(__file__).resolve().parent.parent

RAM_BASE, RAM_SIZE = 0x4000_0000, 128 << 20
UART_BASE, UART_SIZE = 0x0900_0000, 0x1000
UARTDR, UARTFR, UARTFR_TXFE_RXFE = 0x000, 0x018, 0x90

SEMIHOSTING_HLT = 0xD45E0000  # hlt #0xf000
SYS_WRITEC, SYS_WRITE0, SYS_EXIT, SYS_EXIT_EXTENDED = 0x03, 0x04, 0x18, 0x20
ADP_STOPPED_APPLICATIONEXIT = 0x20026
EXCP_UDEF, EXCP_SWI = 1, 2  # QEMU's exception numbers, as UC_HOOK_INTR gets them
PSTATE_EL1H_DAIF = 0x3C5
SCR_EL3, HCR_EL2 = (3, 6, 1, 1, 0), (3, 4, 1, 1, 0)
SPSR_EL1, TPIDR_EL1 = (3, 0, 4, 0, 0), (3, 0, 13, 0, 4)
ESR_EC_SVC64, ESR_IL = 0x15 << 26, 1 << 25

CONTENDERS = ("bare", "count", "clock", "guestdbg", "cli")
CONTENDER_TITLES = {
    "bare": "bare Unicorn",
    "count": "bare Unicorn, emu_start(count=2**62)",
    "clock": "bare Unicorn + guestdbg block hook (RunControl)",
    "guestdbg": "guestdbg VirtMachine.run_to_exit()",
    "cli": "`guestdbg run ELF` (process, incl. start-up)",
}


@dataclass(frozen=True)
class GuestSpec:
    name: str
    variable: str  # the .data u64 holding the iteration count
    full: int | None  # iterations for a normal run (None: the value built into the ELF)
    quick: int  # iterations for --quick (and the smoke test)
    what: str


GUESTS = {
    "sysregs": GuestSpec("sysregs", "sysregs_iterations", None, 20_000,
                         "MRS/MSR of unmodelled system registers, 1 in 4 instructions"),
    "loop": GuestSpec("loop", "loop_iterations", 150_000_000, 200_000, "CPU-bound 4-instruction loop"),
    "crunch": GuestSpec("crunch", "crunch_rounds", None, 4,
                        "CPU-bound compiled C (CRC-32, insertion sort, hashing)"),
    "svcloop": GuestSpec("svcloop", "svc_iterations", 20_000, 2_000,
                         "EL0 <-> EL1 system calls (SVC, ERET)"),
}


# ---------------------------------------------------------------------------------- images
def build_guests(out: Path) -> Path:
    subprocess.run(["make", "-s", "-C", str(REPO / "guests"), f"O={out}", "-j2"], check=True,
                   stdout=subprocess.DEVNULL)
    return out


def patch_elf(src: Path, dst: Path, values: dict[str, int]) -> Path:
    """Copy an ELF, with the u64 variables named in `values` set in its loaded .data bytes,
    so every contender (the CLI too) runs the same image."""
    data = bytearray(src.read_bytes())
    syms = elf_symbols(src)
    with src.open("rb") as f:
        segments = [(s["p_vaddr"], s["p_offset"], s["p_filesz"]) for s in ELFFile(f).iter_segments()
                    if s["p_type"] == "PT_LOAD"]
    for name, value in values.items():
        addr = syms[name]
        for vaddr, offset, filesz in segments:
            if vaddr <= addr and addr + 8 <= vaddr + filesz:
                data[offset + addr - vaddr:offset + addr - vaddr + 8] = value.to_bytes(8, "little")
                break
        else:
            raise ValueError(f"{src.name}: {name} is not in a loaded file-backed segment")
    dst.write_bytes(bytes(data))
    return dst


def guest_image(guest_dir: Path, spec: GuestSpec, iterations: int | None, workdir: Path) -> Path:
    """The ELF to run: the built one, or a patched copy with `iterations`."""
    elf = Path(guest_dir) / f"{spec.name}.elf"
    if iterations is None:
        return elf
    return patch_elf(elf, Path(workdir) / f"{spec.name}-{iterations}.elf", {spec.variable: iterations})


def default_iterations(elf: Path, spec: GuestSpec) -> int:
    addr = elf_symbols(elf)[spec.variable]
    with elf.open("rb") as f:
        for seg in ELFFile(f).iter_segments():
            if seg["p_type"] == "PT_LOAD" and seg["p_vaddr"] <= addr < seg["p_vaddr"] + seg["p_filesz"]:
                off = addr - seg["p_vaddr"]
                return int.from_bytes(seg.data()[off:off + 8], "little")
    raise ValueError(f"{elf.name}: {spec.variable} not found")


def load_segments(elf: Path) -> tuple[int, list[tuple[int, bytes]]]:
    """(entry, [(paddr, bytes incl. the zero-filled tail)]) of the PT_LOAD segments."""
    with elf.open("rb") as f:
        e = ELFFile(f)
        segs = [(s["p_paddr"], s.data() + bytes(s["p_memsz"] - s["p_filesz"])) for s in e.iter_segments()
                if s["p_type"] == "PT_LOAD" and s["p_memsz"]]
        return e["e_entry"], segs


# ---------------------------------------------------------------------------------- runs
@dataclass
class RunResult:
    contender: str
    seconds: float
    status: int
    console: bytes
    icount: int | None = None  # exact retired instructions (clock, guestdbg), else None
    extra: dict = field(default_factory=dict)


class _CpReg(ctypes.Structure):
    """Unicorn's uc_arm64_cp_reg."""

    _fields_ = [("crn", ctypes.c_uint32), ("crm", ctypes.c_uint32), ("op0", ctypes.c_uint32),
                ("op1", ctypes.c_uint32), ("op2", ctypes.c_uint32), ("val", ctypes.c_uint64)]


class _RegBatch:
    """A fixed list of 64-bit registers (Unicorn ids, or (op0, op1, CRn, CRm, op2) system
    registers) read or written in one uc_reg_read_batch / uc_reg_write_batch call through
    buffers made once. The Python binding's reg_read/reg_write cost 2-3 us each, which made
    the baseline's SVC entry (15 of them) slower than guestdbg's whole exception path."""

    def __init__(self, uc: Uc, regs):
        self._uch = uc._uch
        self.n = len(regs)
        self.ids = (ctypes.c_int32 * self.n)(*(r if isinstance(r, int) else uca.UC_ARM64_REG_CP_REG for r in regs))
        self.slots = []
        for r in regs:
            if isinstance(r, int):
                self.slots.append(ctypes.c_uint64(0))
            else:
                op0, op1, crn, crm, op2 = r
                self.slots.append(_CpReg(crn=crn, crm=crm, op0=op0, op1=op1, op2=op2, val=0))
        self.ptrs = (ctypes.c_void_p * self.n)(*(ctypes.addressof(v) for v in self.slots))

    def read(self) -> list[int]:
        status = uclib.uc_reg_read_batch(self._uch, self.ids, self.ptrs, self.n)
        if status:
            raise UcError(status)
        return [v.value if isinstance(v, ctypes.c_uint64) else v.val for v in self.slots]

    def write(self, values) -> None:
        for slot, value in zip(self.slots, values):
            if isinstance(slot, ctypes.c_uint64):
                slot.value = value
            else:
                slot.val = value
        status = uclib.uc_reg_write_batch(self._uch, self.ids, self.ptrs, self.n)
        if status:
            raise UcError(status)


class BareRunner:
    """A minimal Unicorn host for one guest ELF: RAM, the PL011 transmit side, semihosting
    (WRITEC, WRITE0, EXIT, EXIT_EXTENDED) and exception entry for SVC from EL0/EL1.

    Deliberately simple: everything happens inside the UC_HOOK_INTR callback, which writes PC
    itself (Unicorn 2.1 then ends the translation loop and resumes at the new PC within the
    same emu_start). guestdbg does not do this (a PC written from a hook leaves a stale-PC
    hazard for a later stop and resume); here the only later stop is the guest's exit, so the
    hazard cannot bite, and it keeps the baseline as cheap as Unicorn allows.

    mode: "bare" (no count, no other hooks), "count" (emu_start count=2**62) or "clock"
    (guestdbg's RunControl on this Uc: native block hook and MRS/MSR filter, empty table)."""

    def __init__(self, elf: Path, mode: str = "bare"):
        if mode not in ("bare", "count", "clock"):
            raise ValueError(mode)
        self.mode = mode
        self.console = bytearray()
        self.status: int | None = None
        self.error: str | None = None
        self.unexpected_vmm_calls: list[str] = []
        uc = self.uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM, uca.UC_CPU_ARM64_A57)
        uc.mem_map(RAM_BASE, RAM_SIZE, UC_PROT_ALL)
        uc.mmio_map(UART_BASE, UART_SIZE, self._uart_read, None, self._uart_write, None)
        self.entry, segments = load_segments(elf)
        for paddr, data in segments:
            uc.mem_write(paddr, data)
        # As Arm64Vcpu.__init__: EL3 and EL2 in AArch64 and Non-secure, or ERET is illegal.
        uc.cpr_write(*SCR_EL3, (1 << 10) | 1)
        uc.cpr_write(*HCR_EL2, 1 << 31)
        uc.reg_write(uca.UC_ARM64_REG_PSTATE, PSTATE_EL1H_DAIF)
        uc.cpr_write(*TPIDR_EL1, uc.cpr_read(*TPIDR_EL1))  # Unicorn rebuilds its EL flags on a sysreg write
        uc.reg_write(uca.UC_ARM64_REG_PC, self.entry)
        # Exception entry and semihosting: one batched read, one batched write.
        self._entry_read = _RegBatch(uc, [uca.UC_ARM64_REG_PC, uca.UC_ARM64_REG_PSTATE, uca.UC_ARM64_REG_VBAR_EL1,
                                          uca.UC_ARM64_REG_SP, uca.UC_ARM64_REG_SP_EL0, uca.UC_ARM64_REG_SP_EL1,
                                          uca.UC_ARM64_REG_X0, uca.UC_ARM64_REG_X1, TPIDR_EL1])
        # Order matters: PSTATE before the TPIDR_EL1 write that makes Unicorn rebuild its EL
        # flags, the banked stack pointers after PSTATE, PC last.
        self._entry_write = _RegBatch(uc, [uca.UC_ARM64_REG_ESR_EL1, uca.UC_ARM64_REG_ELR_EL1, SPSR_EL1,
                                           uca.UC_ARM64_REG_PSTATE, TPIDR_EL1, uca.UC_ARM64_REG_SP_EL0,
                                           uca.UC_ARM64_REG_SP_EL1, uca.UC_ARM64_REG_SP, uca.UC_ARM64_REG_PC])
        self._hlt_return = _RegBatch(uc, [uca.UC_ARM64_REG_X0, uca.UC_ARM64_REG_PC])
        self._insn = ctypes.create_string_buffer(4)
        uc.hook_add(UC_HOOK_INTR, self._on_intr)
        self.runctl = None
        if mode == "clock":
            from guestdbg.backends.unicorn_arm64.runctl import RunControl
            self.runctl = RunControl(uc, self._vmm_mrs, self._vmm_msr)

    # The action table is all zero (ACTION_UNICORN): these must never be called.
    def _vmm_mrs(self, reg, cp):
        self.unexpected_vmm_calls.append(f"MRS {(cp.op0, cp.op1, cp.crn, cp.crm, cp.op2)}")
        raise AssertionError("RunControl sent an MRS to the VMM with an empty action table")

    def _vmm_msr(self, reg, cp):
        self.unexpected_vmm_calls.append(f"MSR {(cp.op0, cp.op1, cp.crn, cp.crm, cp.op2)}")
        raise AssertionError("RunControl sent an MSR to the VMM with an empty action table")

    def _uart_read(self, _uc, offset, _size, _ud):
        return UARTFR_TXFE_RXFE if offset == UARTFR else 0

    def _uart_write(self, _uc, offset, _size, value, _ud):
        if offset == UARTDR:
            self.console.append(value & 0xFF)

    def _read_insn(self, va: int) -> int:
        status = uclib.uc_mem_read(self.uc._uch, va, self._insn, 4)
        if status:
            raise UcError(status)
        return int.from_bytes(self._insn.raw, "little")

    def _on_intr(self, uc, intno, _ud):
        try:
            regs = self._entry_read.read()
            pc = regs[0]
            if intno == EXCP_UDEF and self._read_insn(pc) == SEMIHOSTING_HLT:
                self._semihosting(uc, pc, regs[6] & 0xFFFFFFFF, regs[7])
            elif intno == EXCP_SWI:  # PC is already past the SVC
                imm = (self._read_insn(pc - 4) >> 5) & 0xFFFF
                self._take_exception(regs, ESR_EC_SVC64 | ESR_IL | imm, pc)
            else:
                self._fail(f"unexpected exception {intno} at PC={pc:#x}")
        except Exception as e:  # noqa: BLE001 - a ctypes callback must not raise
            self._fail(f"{type(e).__name__}: {e}")

    def _fail(self, message: str) -> None:
        self.error = message
        self.uc.emu_stop()

    def _semihosting(self, uc, pc: int, op: int, arg: int) -> None:
        if op in (SYS_EXIT, SYS_EXIT_EXTENDED):
            block = bytes(uc.mem_read(arg, 16))
            reason, subcode = int.from_bytes(block[:8], "little"), int.from_bytes(block[8:], "little")
            self.status = subcode & 0xFFFFFFFF if reason == ADP_STOPPED_APPLICATIONEXIT else 1
            uc.emu_stop()
            return
        result = 0
        if op == SYS_WRITEC:
            self.console += uc.mem_read(arg, 1)
        elif op == SYS_WRITE0:
            while (chunk := bytes(uc.mem_read(arg, 64))).find(0) < 0:
                self.console += chunk
                arg += 64
            self.console += chunk[:chunk.find(0)]
        else:
            result = (1 << 64) - 1
        self._hlt_return.write([result, pc + 4])

    def _take_exception(self, regs: list[int], esr: int, preferred_return: int) -> None:
        """AArch64 exception entry to EL1h, as Arm64Vcpu._take_exception does it."""
        _pc, pstate, vbar, sp, sp_el0, sp_el1, _x0, _x1, tpidr_el1 = regs
        el = (pstate >> 2) & 3
        vector = vbar + (0x400 if el == 0 else (0x200 if pstate & 1 else 0))
        # PSTATE := EL1h with DAIF masked. Unicorn's PSTATE write does not swap the banked
        # stack pointers: put SP_EL0 and SP_EL1 where the new mode expects them.
        live_is_sp0 = el == 0 or not pstate & 1
        sp0, sp1 = (sp, sp_el1) if live_is_sp0 else (sp_el0, sp)
        self._entry_write.write([esr, preferred_return, pstate, PSTATE_EL1H_DAIF, tpidr_el1,
                                 sp0, sp1, sp1, vector])

    def run(self) -> RunResult:
        """Run to the guest's exit; only this is timed."""
        t0 = time.perf_counter()
        try:
            if self.mode == "count":
                self.uc.emu_start(self.entry, 0, count=2 ** 62)
            else:
                self.uc.emu_start(self.entry, 0)
        except UcError as e:
            pc = self.uc.reg_read(uca.UC_ARM64_REG_PC)
            raise RuntimeError(f"{self.mode}: emulation failed at PC={pc:#x}: {e}") from None
        seconds = time.perf_counter() - t0
        if self.error:
            raise RuntimeError(f"{self.mode}: {self.error}")
        if self.unexpected_vmm_calls:
            raise AssertionError(f"clock: RunControl called the VMM: {self.unexpected_vmm_calls[:5]}")
        if self.status is None:
            pc = self.uc.reg_read(uca.UC_ARM64_REG_PC)
            raise RuntimeError(f"{self.mode}: emu_start returned without the guest's exit (PC={pc:#x})")
        icount = self.runctl.state.icount if self.runctl else None
        return RunResult(self.mode, seconds, self.status, bytes(self.console), icount)


def run_bare(elf: Path, mode: str = "bare") -> RunResult:
    return BareRunner(elf, mode).run()


def run_guestdbg(elf: Path) -> RunResult:
    out = bytearray()
    m = VirtMachine(VirtConfig(), console=out.extend)
    m.load_elf(elf)
    t0 = time.perf_counter()
    status = m.run_to_exit()
    seconds = time.perf_counter() - t0
    return RunResult("guestdbg", seconds, status, bytes(out), m.vcpu.icount)


def cli_command(elf: Path) -> list[str]:
    exe = Path(sys.executable).parent / "guestdbg"
    if exe.exists():
        return [str(exe), "run", str(elf)]
    return [sys.executable, "-m", "guestdbg.cli", "run", str(elf)]


def run_cli(elf: Path) -> RunResult:
    cmd = cli_command(elf)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
    seconds = time.perf_counter() - t0
    return RunResult("cli", seconds, proc.returncode, proc.stdout, None,
                     {"stderr": proc.stderr.decode(errors="replace")[-2000:]})


def run_contender(contender: str, elf: Path) -> RunResult:
    """One measured run of `elf` by `contender` (see CONTENDERS)."""
    gc.collect()  # garbage of the previous run (a Uc with its RAM) is not this run's cost
    if contender in ("bare", "count", "clock"):
        return run_bare(elf, contender)
    if contender == "guestdbg":
        return run_guestdbg(elf)
    if contender == "cli":
        return run_cli(elf)
    raise ValueError(f"unknown contender {contender!r}")


def check_agreement(results: list[RunResult]) -> list[str]:
    """Problems with a set of runs of one image: non-zero exits, differing console output,
    differing exact instruction counts."""
    problems = []
    ref = results[0]
    for r in results:
        if r.status != 0:
            problems.append(f"{r.contender}: exit status {r.status} (console {r.console[-200:]!r}"
                            f"{', stderr ' + r.extra['stderr'][-300:] if r.extra.get('stderr') else ''})")
        if r.console != ref.console:
            problems.append(f"{r.contender}: console {r.console[-120:]!r} != {ref.contender}'s {ref.console[-120:]!r}")
    counts = {r.contender: r.icount for r in results if r.icount is not None}
    if len(set(counts.values())) > 1:
        problems.append(f"instruction counts differ: {counts}")
    return problems


# ---------------------------------------------------------------------------------- bench
def rotated(items: list[str], k: int) -> list[str]:
    k %= len(items)
    return items[k:] + items[:k]


def bench_guest(spec: GuestSpec, elf: Path, contenders: list[str], repeat: int, log,
                warmup_elf: Path | None = None) -> dict:
    """`repeat` rounds of every contender on `elf`, the order rotated each round. A contender
    that fails is reported in "problems" and left out of that round."""
    rounds: list[dict[str, float]] = []
    icounts: dict[str, int] = {}
    console = None
    problems: list[str] = []

    def note(problem: str) -> None:
        if problem not in problems:
            problems.append(problem)

    # Warm-up, not timed: first-use costs (imports, lazily built tables) are not the run loop's.
    for c in contenders:
        if c != "cli":
            try:
                run_contender(c, warmup_elf or elf)
            except Exception as e:  # noqa: BLE001 - reported, the bench goes on
                note(f"{c} (warm-up): {type(e).__name__}: {e}")
    for rnd in range(repeat):
        results, times = [], {}
        for c in rotated(contenders, rnd):
            try:
                r = run_contender(c, elf)
            except Exception as e:  # noqa: BLE001 - reported, the bench goes on
                note(f"{c}: {type(e).__name__}: {e}")
                continue
            results.append(r)
            times[c] = r.seconds
            if r.icount is not None:
                icounts[c] = r.icount
        rounds.append(times)
        for p in check_agreement(results) if results else []:
            note(p)
        if results:
            console = next((r.console for r in results if r.contender == "bare"), results[0].console)
        log(f"  round {rnd + 1}/{repeat}: " + ", ".join(f"{r.contender} {r.seconds:.3f}s" for r in results))
    insns = icounts.get("clock", icounts.get("guestdbg"))
    samples = {c: [t[c] for t in rounds if c in t] for c in contenders}
    med = {c: statistics.median(v) for c, v in samples.items() if v}
    rows = {}
    for c in contenders:
        if c not in med:
            continue
        paired = [t[c] / t["bare"] for t in rounds if c in t and "bare" in t]
        rows[c] = {
            "title": CONTENDER_TITLES[c],
            "samples": samples[c],
            "median_s": med[c],
            "min_s": min(samples[c]),
            "max_s": max(samples[c]),
            "ratio_to_bare": med[c] / med["bare"] if "bare" in med else None,
            "paired_ratio_to_bare": statistics.median(paired) if paired else None,
            # Exact counts: guestdbg's own (vcpu.icount); for the others, RunControl's (clock).
            "instructions": icounts.get("guestdbg") if c == "guestdbg" else insns,
            "mips": (insns / med[c] / 1e6) if insns else None,
        }
    return {"guest": spec.name, "what": spec.what, "elf": str(elf),
            "console": (console or b"").decode(errors="replace"), "instructions": insns, "rows": rows,
            "problems": problems}


def targets(results: dict[str, dict]) -> list[dict]:
    """The targets and the clock-cost lines, each {name, value, target, ok (None: information)}."""
    out = []

    def ratio(guest, a, b):
        rows = results.get(guest, {}).get("rows", {})
        if a in rows and b in rows:
            return rows[a]["median_s"] / rows[b]["median_s"]
        return None

    for guest, a, b, name, target, ok in (
            ("sysregs", "guestdbg", "bare", "sysregs: guestdbg / bare time", "<= 1.5", lambda v: v <= 1.5),
            ("loop", "bare", "guestdbg", "loop: guestdbg speed / bare speed (bare time / guestdbg time)", ">= 0.9",
             lambda v: v >= 0.9),
            ("crunch", "bare", "guestdbg", "crunch: guestdbg speed / bare speed (bare time / guestdbg time)",
             ">= 0.9", lambda v: v >= 0.9)):
        if guest in results:
            v = ratio(guest, a, b)
            out.append({"name": name, "value": v, "target": target, "ok": v is not None and ok(v)})
    for t in out:
        guest = t["name"].split(":")[0]
        t["guest_had_problems"] = bool(results[guest]["problems"])
    for guest in results:
        clock, count = ratio(guest, "clock", "bare"), ratio(guest, "count", "bare")
        if clock is not None:
            out.append({"name": f"{guest}: the clock's own cost, clock / bare time", "value": clock,
                        "target": None, "ok": None})
        if count is not None:
            out.append({"name": f"{guest}: Unicorn count= cost, count / bare time", "value": count,
                        "target": None, "ok": None})
    return out


def format_report(results: dict[str, dict], checks: list[dict], meta: dict) -> str:
    lines = [f"bench_runloop: {meta['date']}, Python {meta['python']}, Unicorn {meta['unicorn']}, "
             f"{meta['cpus']} CPUs, repeat {meta['repeat']}{', quick' if meta['quick'] else ''}", ""]
    for name, res in results.items():
        lines.append(f"== {name}: {res['what']}; {res['instructions']:,} instructions" if res["instructions"]
                     else f"== {name}: {res['what']}")
        lines.append(f"   console: {res['console'].strip()}")
        lines.append(f"   {'contender':<50} {'median s':>9} {'min s':>8} {'ratio':>7} {'(paired)':>9} "
                     f"{'instructions':>13} {'MIPS':>8}")
        for c, row in res["rows"].items():
            ins = f"{row['instructions']:,}" if row["instructions"] else "-"
            mips = f"{row['mips']:.1f}" if row["mips"] else "-"
            ratio = f"{row['ratio_to_bare']:.3f}" if row["ratio_to_bare"] is not None else "-"
            paired = f"({row['paired_ratio_to_bare']:.3f})" if row["paired_ratio_to_bare"] is not None else ""
            lines.append(f"   {row['title']:<50} {row['median_s']:>9.4f} {row['min_s']:>8.4f} {ratio:>7} "
                         f"{paired:>9} {ins:>13} {mips:>8}")
        for p in res["problems"]:
            lines.append(f"   PROBLEM: {p}")
        lines.append("")
    lines.append("Targets (ratios of medians, same run):")
    for t in checks:
        if t["ok"] is None:
            lines.append(f"   INFO  {t['name']}: {t['value']:.3f}")
        else:
            note = " -- its runs had PROBLEMS (above)" if t.get("guest_had_problems") else ""
            value = "not measured" if t["value"] is None else f"{t['value']:.3f}"
            lines.append(f"   {'PASS' if t['ok'] else 'FAIL'}  {t['name']}: {value} (target {t['target']}){note}")
    graded = [t for t in checks if t["ok"] is not None]
    missed = [t for t in graded if not t["ok"]]
    problems = sum(len(r["problems"]) for r in results.values())
    lines.append("")
    lines.append(f"Summary: {len(graded) - len(missed)}/{len(graded)} targets met"
                 + (f"; MISSED: {', '.join(t['name'].split(':')[0] for t in missed)}" if missed else "")
                 + (f"; {problems} PROBLEM(S) in the runs" if problems else "; all runs agreed"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5, help="measured rounds per guest (default 5)")
    ap.add_argument("--quick", action="store_true", help="small iteration counts: a smoke run")
    ap.add_argument("--json", nargs="?", const="-", metavar="FILE",
                    help="write machine-readable results to FILE (no FILE: to stdout, the report to stderr)")
    ap.add_argument("--guest-dir", type=Path, help="guests built with `make -C guests O=DIR` (default: build now)")
    ap.add_argument("--guests", default=",".join(GUESTS), help="comma-separated subset of " + ",".join(GUESTS))
    ap.add_argument("--no-cli", action="store_true", help="leave out the `guestdbg run` subprocess row")
    args = ap.parse_args(argv)

    report_out = sys.stderr if args.json == "-" else sys.stdout

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    contenders = [c for c in CONTENDERS if not (c == "cli" and args.no_cli)]
    names = [n.strip() for n in args.guests.split(",") if n.strip()]
    unknown = [n for n in names if n not in GUESTS]
    if unknown:
        ap.error(f"unknown guests: {', '.join(unknown)}")
    with tempfile.TemporaryDirectory(prefix="bench_runloop-") as tmp:
        tmp = Path(tmp)
        guest_dir = args.guest_dir or build_guests(tmp / "guests")
        results = {}
        for name in names:
            spec = GUESTS[name]
            iterations = spec.quick if args.quick else spec.full
            elf = guest_image(guest_dir, spec, iterations, tmp)
            warmup = guest_image(guest_dir, spec, spec.quick, tmp)
            log(f"{name}: {spec.variable} = {default_iterations(elf, spec):,} ({elf.name})")
            results[name] = bench_guest(spec, elf, contenders, args.repeat, log, warmup)
            results[name]["iterations"] = default_iterations(elf, spec)
    checks = targets(results)
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "python": platform.python_version(),
            "unicorn": unicorn_version, "cpus": os.cpu_count(), "repeat": args.repeat, "quick": args.quick,
            "host": platform.node()}
    print(format_report(results, checks, meta), file=report_out, flush=True)
    if args.json:
        doc = json.dumps({"meta": meta, "guests": results, "targets": checks}, indent=2)
        if args.json == "-":
            print(doc)
        else:
            Path(args.json).write_text(doc + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
