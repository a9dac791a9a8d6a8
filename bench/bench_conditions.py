#!/usr/bin/env python3
"""Conditional breakpoints and dprintf through real gdb-multiarch: guestdbg (conditions and
dprintf evaluated in the stub) side by side with QEMU's gdbstub (gdb evaluates them, one full
stop per hit), in one run, rounds interleaved.

Run from the repository root:

    .venv/bin/python -m bench.bench_conditions [--hits 1000] [--repeat 3] [--json out.json] [--before OTHER/src]

The guest is guests/condloop: bump(n) for n = 0 .. bump_calls-1. Each measurement is one fresh
stub and one gdb-multiarch (batch, Python script) that connects, sets bump_calls, and times
inside gdb:

- `break bump if $x0 == HITS`: `continue` until the stop (HITS false hits, then the true one);
- `dprintf bump,"n=%d\\n",$x0` over HITS calls, to a breakpoint after the loop: guestdbg with
  `set dprintf-style agent` (the stub prints through O packets), QEMU with gdb's default
  (`gdb`: gdb stops at every call, prints and resumes; QEMU offers no agent).

Each run checks what gdb saw: the stop's $x0, the printed lines. Medians of --repeat rounds
and the ratio QEMU time / guestdbg time, per round and of the medians.

`--before OTHER/src` runs a second guestdbg (another checkout's src/, e.g. the commit before a
change) as a third stub in the same interleaved rounds: before and after against the same QEMU.

A last row, in this process with no gdb: the manager's Python API with the same condition as
agent bytecode (`reg 0; ext 64; const16 N; equal; end`), and with no condition at all (N+1
plain breakpoint stops and resumes): what a false hit costs the stub itself.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GDB = "gdb-multiarch"

SCRIPT = r'''
import gdb, json, time
gdb.execute("set confirm off")
gdb.execute("set pagination off")
gdb.execute("target remote " + ENDPOINT)
gdb.execute("set var bump_calls = %d" % CALLS)
out = {}
if MODE == "break":
    gdb.execute("break bump if $x0 == %d" % HITS)
    t = time.perf_counter()
    gdb.execute("continue", to_string=True)
    out["seconds"] = time.perf_counter() - t
    out["x0"] = int(gdb.parse_and_eval("$x0"))
else:
    if AGENT:
        gdb.execute("set dprintf-style agent")
    gdb.execute('dprintf bump,"n=%d\\n",$x0')
    gdb.execute("break condloop.c:26")
    t = time.perf_counter()
    text = gdb.execute("continue", to_string=True)
    out["seconds"] = time.perf_counter() - t
    out["lines"] = sum(1 for ln in text.splitlines() if ln.startswith("n="))
try:
    gdb.execute("kill")
except gdb.error:
    pass
with open(RESULT, "w") as f:
    json.dump(out, f)
'''


def build_guests(out: Path) -> Path:
    subprocess.run(["make", "-s", "-C", str(REPO / "guests"), f"O={out}", "-j2"], check=True,
                   stdout=subprocess.DEVNULL)
    return out


BEFORE_SRC: Path | None = None  # --before: another guestdbg tree's src/, the stub kind "before"


class StubProcess:
    def __init__(self, kind: str, elf: Path, workdir: Path):
        self.kind, self.sock = kind, workdir / f"{kind}.sock"
        self.sock.unlink(missing_ok=True)
        env = None
        if kind == "before":
            assert BEFORE_SRC is not None
            env = dict(os.environ, PYTHONPATH=str(BEFORE_SRC))
        if kind in ("guestdbg", "before"):
            argv = [sys.executable, "-m", "guestdbg.cli", "run", str(elf), "--gdb", f"unix:{self.sock}", "--wait"]
        else:
            argv = ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a57", "-nographic", "-monitor", "none",
                    "-serial", "null", "-semihosting", "-kernel", str(elf),
                    "-gdb", f"unix:{self.sock},server=on,wait=off", "-S"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, cwd=REPO, start_new_session=True, env=env)
        deadline = time.monotonic() + 30
        while not self.sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{kind} did not start listening")
            time.sleep(0.02)
        if kind != "qemu":
            time.sleep(0.2)  # the socket exists just before listen()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


def measure(kind: str, mode: str, hits: int, elf: Path, workdir: Path) -> dict:
    stub = StubProcess(kind, elf, workdir)
    result = workdir / f"{kind}-{mode}.json"
    result.unlink(missing_ok=True)
    script = workdir / f"{kind}-{mode}.py"
    calls = hits + 1 if mode == "break" else hits
    script.write_text(f"ENDPOINT = {str(stub.sock)!r}\nMODE = {mode!r}\nHITS = {hits}\nCALLS = {calls}\n"
                      f"AGENT = {kind != 'qemu'}\nRESULT = {str(result)!r}\n" + SCRIPT)
    try:
        proc = subprocess.run([GDB, "-q", "-batch", "-nx", str(elf), "-x", str(script)], cwd=REPO,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=1800)
    finally:
        stub.kill()
    if not result.exists():
        raise RuntimeError(f"{kind} {mode}: gdb wrote no result:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    out = json.loads(result.read_text())
    if mode == "break":
        assert out["x0"] == hits, (kind, out)
    else:
        assert out["lines"] == hits, (kind, out)
    return out


def in_process(elf: Path, hits: int) -> dict[str, float]:
    """Seconds per hit through the manager alone: a false agent condition, and a plain stop +
    resume for comparison."""
    from guestdbg.board.common import elf_symbols
    from guestdbg.board.virt import VirtConfig, VirtMachine
    from guestdbg.debug.agent_expr import AgentExpr
    from guestdbg.debug.manager import GuestDebugManager, StopKind
    sym = elf_symbols(str(elf))
    code = bytes([0x26, 0, 0, 0x16, 64, 0x23]) + hits.to_bytes(2, "big") + bytes([0x13, 0x27])
    out = {}
    for name, condition in (("false condition", AgentExpr(code)), ("plain stop+resume", None)):
        m = VirtMachine(VirtConfig(), console=lambda data: None)
        m.load_elf(str(elf))
        m.vm.write_phys(sym["bump_calls"], (hits + 1).to_bytes(8, "little"))
        dbg = GuestDebugManager(m)
        dbg.add_breakpoint(sym["bump"], condition=condition)
        t = time.perf_counter()
        for _ in range(1 if condition else hits + 1):
            e = dbg.cont()
        out[name] = (time.perf_counter() - t) / hits
        assert e.kind is StopKind.SWBREAK and dbg.read_register("x0") == hits
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hits", type=int, default=1000, help="false hits before the true one (default 1000)")
    ap.add_argument("--dprintf-calls", type=int, default=None, help="calls printed by dprintf (default: --hits)")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--guest-dir", type=Path, help="guests built with make -C guests O=DIR")
    ap.add_argument("--no-qemu", action="store_true", help="guestdbg alone")
    ap.add_argument("--json", type=Path, help="write every sample and the medians here")
    ap.add_argument("--before", type=Path, metavar="SRC",
                    help="also run the guestdbg in this tree's src/ (stub kind 'before'), interleaved")
    args = ap.parse_args(argv)
    global BEFORE_SRC
    BEFORE_SRC = args.before.resolve() if args.before else None
    if shutil.which(GDB) is None:
        print(f"{GDB} is not installed", file=sys.stderr)
        return 2
    stubs = ["guestdbg"] + (["before"] if args.before else []) + \
        ([] if args.no_qemu or shutil.which("qemu-system-aarch64") is None else ["qemu"])
    inproc: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench_cond") as tmp:
        work = Path(tmp)
        guests = args.guest_dir or build_guests(work / "guests")
        elf = guests / "condloop.elf"
        modes = {"break": args.hits, "dprintf": args.dprintf_calls or args.hits}
        samples: dict[str, dict[str, list[float]]] = {m: {k: [] for k in stubs} for m in modes}
        for rnd in range(args.repeat):
            order = stubs[rnd % len(stubs):] + stubs[:rnd % len(stubs)]
            for mode, hits in modes.items():
                for kind in order:
                    s = measure(kind, mode, hits, elf, work)["seconds"]
                    samples[mode][kind].append(s)
                    print(f"round {rnd + 1} {mode:<7} {kind:<8} {s:8.3f} s", flush=True)
            inproc.append(in_process(elf, args.hits))
            print(f"round {rnd + 1} in-process µs/hit: " + ", ".join(f"{k} {v * 1e6:.0f}" for k, v in inproc[-1].items()),
                  flush=True)
    print()
    summary: dict[str, dict] = {}
    for mode, hits in modes.items():
        med = {k: statistics.median(v) for k, v in samples[mode].items()}
        row: dict = {"hits": hits, "median_seconds": med}
        line = f"{mode:<7} ({hits} hits): " + ", ".join(f"{k} {v:.3f} s ({hits / v:,.0f} hits/s)" for k, v in med.items())
        if "qemu" in med:
            per_round = [q / g for q, g in zip(samples[mode]["qemu"], samples[mode]["guestdbg"])]
            row["qemu_over_guestdbg"] = med["qemu"] / med["guestdbg"]
            row["per_round"] = per_round
            line += f"; QEMU/guestdbg time {row['qemu_over_guestdbg']:.1f}x (rounds: {', '.join(f'{r:.1f}' for r in per_round)})"
            if "before" in med:
                before_rounds = [q / g for q, g in zip(samples[mode]["qemu"], samples[mode]["before"])]
                row["qemu_over_before"] = med["qemu"] / med["before"]
                row["per_round_before"] = before_rounds
                line += (f"; QEMU/before {row['qemu_over_before']:.1f}x "
                         f"(rounds: {', '.join(f'{r:.1f}' for r in before_rounds)})")
        summary[mode] = row
        print(line)
    summary["in_process_us_per_hit"] = {k: statistics.median(r[k] for r in inproc) * 1e6 for k in inproc[0]}
    print("in-process (the manager, no gdb), µs per hit: "
          + ", ".join(f"{k} {v:.0f}" for k, v in summary["in_process_us_per_hit"].items()))
    if args.json:
        args.json.write_text(json.dumps({"date": datetime.datetime.now().isoformat(timespec="seconds"),
                                         "host": platform.node(), "samples": samples, "summary": summary},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
