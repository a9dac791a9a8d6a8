#!/usr/bin/env python3
"""What a user feels: `stepi` and `continue` to a breakpoint through real gdb-multiarch, against
guestdbg's stub and QEMU's gdbstub on the same ELF, rounds interleaved.

    .venv/bin/python bench/bench_gdb_steps.py [--rounds 3] [--steps 300] [--conts 100]
        [--watches K] [--guest-dir D] [--baseline-src DIR] [--floor]

Each round starts a fresh stub per contender (`guestdbg run loop.elf --gdb :PORT --wait`;
`qemu-system-aarch64 -M virt -cpu cortex-a57 ... -gdb tcp::PORT -S`; with --baseline-src,
guestdbg from another tree as `baseline`), and gdb-multiarch in batch mode: it runs to
`loop_body` with loop_iterations patched to 2^62, then times `stepi` --steps times
(gdb.execute in a loop) and, with `break loop_body`, `continue` --conts times (one loop turn
each). Medians of the rounds; ratios are guestdbg / QEMU of the rates, and the median of the
per-round ratios ("paired"). Also the stub's CPU time per stepi and per continue (its
/proc/PID/stat, read by the gdb script around each loop: 10 ms ticks, so give it enough steps)
and gdb's own (time.process_time in gdb): on a busy machine the rates swing between rounds,
the CPU times much less.

--watches K adds a third loop per stub (not the floors): guests/condloop with bump_calls set
to 2^62, `watch bump_last`, then `continue` K times (each stops at the next store of bump(n);
the script checks bump_last moved by exactly K): watch hits/s, and the CPU rows per hit.

--floor adds two contenders that do no stub work at all: `floor` answers gdb with the replies
guestdbg gave to the same script (recorded once before the rounds through a proxy,
bench/gdb_replay.py), `floor-qemu` with QEMU's. They measure gdb-multiarch itself (plus one
recv and one send per packet): no stub can make gdb step or continue faster than its floor.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# What both gdb scripts start with: the stub's CPU clock, and the connection.
PRELUDE = r'''
import os
import time
import gdb

def stub_cpu():
    # The stub process's user + system CPU time, seconds (/proc/PID/stat fields 14 and 15).
    with open("/proc/%(pid)d/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

gdb.execute("set confirm off")
gdb.execute("set pagination off")
gdb.execute("target remote :%(port)d")
'''

GDB_SCRIPT = PRELUDE + r'''
gdb.execute("set *(unsigned long long *)&loop_iterations = 0x4000000000000000")
gdb.execute("break loop_body")
gdb.execute("continue", to_string=True)
gdb.execute("delete")
t0, c0, g0 = time.perf_counter(), stub_cpu(), time.process_time()
for _ in range(%(steps)d):
    gdb.execute("stepi", to_string=True)
t1, c1, g1 = time.perf_counter(), stub_cpu(), time.process_time()
gdb.execute("break loop_body")
t2, c2, g2 = time.perf_counter(), stub_cpu(), time.process_time()
for _ in range(%(conts)d):
    gdb.execute("continue", to_string=True)
t3, c3, g3 = time.perf_counter(), stub_cpu(), time.process_time()
n, k = %(steps)d, %(conts)d
print("RESULT %%f %%f %%f %%f %%f %%f" %% (n / (t1 - t0), k / (t3 - t2), (c1 - c0) / n * 1e6, (c3 - c2) / k * 1e6,
                                     (g1 - g0) / n * 1e6, (g3 - g2) / k * 1e6), flush=True)
gdb.execute("kill")
'''

# --watches: a write watchpoint hit again and again, in guests/condloop (bump(n) stores bump_last).
WATCH_SCRIPT = PRELUDE + r'''
gdb.execute("set var bump_calls = 0x4000000000000000")
gdb.execute("watch bump_last")
gdb.execute("continue", to_string=True)
first = int(gdb.parse_and_eval("bump_last"))
t0, c0, g0 = time.perf_counter(), stub_cpu(), time.process_time()
for _ in range(%(watches)d):
    gdb.execute("continue", to_string=True)
t1, c1, g1 = time.perf_counter(), stub_cpu(), time.process_time()
# Each continue stopped at the watchpoint, at the next store.
assert int(gdb.parse_and_eval("bump_last")) == first + %(watches)d, int(gdb.parse_and_eval("bump_last"))
n = %(watches)d
print("RESULT %%f %%f %%f" %% (n / (t1 - t0), (c1 - c0) / n * 1e6, (g1 - g0) / n * 1e6), flush=True)
gdb.execute("kill")
'''
WATCH_METRICS = ("watch hits/s", "stub CPU us/watch hit", "gdb CPU us/watch hit")

# What one run measures, in RESULT's order: rates (higher is better), then CPU µs per operation.
METRICS = ("stepi/s", "break+continue/s", "stub CPU us/stepi", "stub CPU us/continue",
           "gdb CPU us/stepi", "gdb CPU us/continue")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_stub(name: str, elf: Path, port: int, baseline: Path | None,
               logs: dict[str, Path] | None = None) -> subprocess.Popen:
    if logs and name in logs:
        cmd = [sys.executable, str(Path(__file__).resolve().parent / "gdb_replay.py"), "serve",
               str(logs[name]), str(port)]
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    if name == "qemu":
        cmd = ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a57", "-nographic", "-monitor", "none",
               "-serial", "null", "-semihosting", "-kernel", str(elf), "-gdb", f"tcp:127.0.0.1:{port}", "-S"]
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {**os.environ, "PYTHONPATH": str(baseline)} if name == "baseline" and baseline else None
    cmd = [sys.executable, "-m", "guestdbg.cli", "run", str(elf), "--gdb", f":{port}", "--wait"]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)


def wait_port(port: int, seconds: float = 20.0) -> None:
    """Until something listens on the port (/proc/net/tcp; a probe connection would be taken
    for the debugger by both stubs)."""
    want = f":{port:04X}"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(want) and fields[3] == "0A":  # local address, LISTEN
                return
        time.sleep(0.05)
    raise RuntimeError(f"no stub on port {port}")


def one_run(name: str, elf: Path, steps: int, conts: int, baseline: Path | None,
            logs: dict[str, Path] | None = None, record: Path | None = None,
            timeout: float = 300, watches: int = 0) -> tuple[float, ...]:
    """One contender's stepi and continue loops (or, with `watches`, its watch loop on
    condloop.elf: `elf` is then that guest): the RESULT values."""
    port = free_port()
    stub = start_stub(name, elf, port, baseline, logs)
    recorder = None
    try:
        wait_port(port)
        if record is not None:
            import gdb_replay
            recorder = gdb_replay.Recorder(port)
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
            if watches:
                f.write(WATCH_SCRIPT % {"port": port, "watches": watches, "pid": stub.pid})
            else:
                f.write(GDB_SCRIPT % {"port": recorder.port if recorder else port, "steps": steps, "conts": conts,
                                      "pid": stub.pid})
        out = subprocess.run(["gdb-multiarch", "-q", "-batch", "-nx", str(elf), "-x", f.name],
                             capture_output=True, text=True, timeout=timeout)
        os.unlink(f.name)
        for line in out.stdout.splitlines():
            if line.startswith("RESULT "):
                if recorder is not None and record is not None:
                    recorder.save(record)
                return tuple(float(x) for x in line.split()[1:])
        raise RuntimeError(f"{name}: gdb gave no result:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    finally:
        if stub.poll() is None:
            stub.terminate()
            try:
                stub.wait(5)
            except subprocess.TimeoutExpired:
                stub.kill()
                stub.wait()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--conts", type=int, default=100)
    ap.add_argument("--watches", type=int, default=0,
                    help="also time this many write-watchpoint hits (continue to `watch bump_last` in condloop)")
    ap.add_argument("--guest-dir", type=Path, help="built guests (default: build into a temp dir)")
    ap.add_argument("--baseline-src", type=Path, help="also run guestdbg from DIR (another tree's src/)")
    ap.add_argument("--floor", action="store_true",
                    help="also run canned replays of guestdbg's and QEMU's conversations (gdb's own speed)")
    args = ap.parse_args(argv)
    for tool in ("gdb-multiarch", "qemu-system-aarch64"):
        if shutil.which(tool) is None:
            print(f"{tool} not found", file=sys.stderr)
            return 1
    guest_dir = args.guest_dir
    tmp = None
    if guest_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_gdb_steps_")
        guest_dir = Path(tmp.name)
        subprocess.run(["make", "-s", "-C", str(REPO / "guests"), f"O={guest_dir}", "-j2"], check=True,
                       stdout=subprocess.DEVNULL)
    elf = guest_dir / "loop.elf"
    names = ["guestdbg", "qemu"] + (["baseline"] if args.baseline_src else [])
    baseline = args.baseline_src.resolve() if args.baseline_src else None
    logs: dict[str, Path] = {}
    if args.floor:
        logdir = tempfile.mkdtemp(prefix="bench_gdb_floor_")
        for floor, source in (("floor", "guestdbg"), ("floor-qemu", "qemu")):
            try:
                one_run(source, elf, args.steps, args.conts, baseline, record=Path(logdir) / f"{source}.json",
                        timeout=90)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                # Recording QEMU's conversation (ack mode) stalled at times at 1,000 steps and
                # more on 2026-12-02 (gdb stopped sending after some 70 steps; not understood).
                print(f"{floor}: recording {source}'s conversation failed ({type(e).__name__}); "
                      f"no {floor} column", file=sys.stderr)
                continue
            logs[floor] = Path(logdir) / f"{source}.json"
        names += list(logs)
    results: dict[str, list[tuple[float, ...]]] = {n: [] for n in names}
    stubs = [n for n in names if n not in logs]  # (no canned replay of the watch loop)
    watch_results: dict[str, list[tuple[float, ...]]] = {n: [] for n in stubs}
    for rnd in range(args.rounds):
        for name in names[rnd % len(names):] + names[:rnd % len(names)]:
            results[name].append(one_run(name, elf, args.steps, args.conts, baseline, logs))
            print(f"round {rnd + 1} {name}: " + ", ".join(f"{m} {v:.0f}" for m, v in zip(METRICS, results[name][-1])),
                  file=sys.stderr)
            if args.watches and name in stubs:
                watch_results[name].append(one_run(name, guest_dir / "condloop.elf", 0, 0, baseline,
                                                   watches=args.watches))
                print(f"round {rnd + 1} {name}: " + ", ".join(
                    f"{m} {v:.0f}" for m, v in zip(WATCH_METRICS, watch_results[name][-1])), file=sys.stderr)
    others = [n for n in names if n not in ("guestdbg", "qemu")]
    print(f"\n{'':<22}" + "".join(f"{n:>12}" for n in names) + f"{'guestdbg/qemu':>17}"
          + "".join(f"{n + '/qemu':>17}" for n in others))
    for i, label in enumerate(METRICS):
        med = {n: statistics.median(r[i] for r in results[n]) for n in names}
        line = f"{label:<22}" + "".join(f"{med[n]:>12.0f}" for n in names) + f"{med['guestdbg'] / med['qemu']:>17.2f}"
        line += "".join(f"{med[n] / med['qemu']:>17.2f}" for n in others)
        print(line)
        # The same ratios per round (both measured minutes apart at most), their median: less
        # moved by a busy machine's swings between rounds.
        paired = {n: statistics.median(results[n][r][i] / results["qemu"][r][i] for r in range(args.rounds))
                  for n in names if n != "qemu"}
        print(f"{'  paired per round':<22}" + " " * 12 * len(names)
              + "".join(f"{paired[n]:>17.2f}" for n in ["guestdbg"] + others))
    if args.watches:
        print(f"\n{'':<22}" + "".join(f"{n:>12}" for n in stubs) + f"{'guestdbg/qemu':>17}"
              + "".join(f"{n + '/qemu':>17}" for n in stubs if n not in ("guestdbg", "qemu")))
        for i, label in enumerate(WATCH_METRICS):
            med = {n: statistics.median(r[i] for r in watch_results[n]) for n in stubs}
            paired = {n: statistics.median(watch_results[n][r][i] / watch_results["qemu"][r][i]
                                           for r in range(args.rounds)) for n in stubs}
            print(f"{label:<22}" + "".join(f"{med[n]:>12.0f}" for n in stubs)
                  + "".join(f"{med[n] / med['qemu']:>17.2f}" for n in stubs if n != "qemu"))
            print(f"{'  paired per round':<22}" + " " * 12 * len(stubs)
                  + "".join(f"{paired[n]:>17.2f}" for n in stubs if n != "qemu"))
    print(f"\nmedians of {args.rounds} rounds; {args.steps} stepi and {args.conts} continue each"
          + (f"; {args.watches} watch hits" if args.watches else ""))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
