"""The search of bench_reverse on QEMU's record/replay and on guestdbg, side by side (issue 12).

`python -m bench.bench_reverse_qemu [--rounds N] [--passes N] [--json FILE]`

The guest is bench_reverse's store-heavy one (`target` written once at the start, then `passes`
passes of stores over 64 MiB; 25 passes = 7.9x10^7 instructions), the same ELF for both:

- **QEMU**: recorded once, run to its end (PSCI SYSTEM_OFF), with `-icount shift=0,rr=record,
  rrfile=F,rrsnapshot=init -net none -drive file=rr.qcow2,if=none,id=rr,format=qcow2` (the snapshot
  `init`, taken at the start, is what a reverse command replays from; the empty qcow2 is written
  here, so qemu-img is not needed). Then each round replays it with `rr=replay` and `-gdb
  unix:SOCK -S`, under gdb-multiarch.
- **guestdbg**: `guestdbg run ELF --gdb unix:SOCK --record --wait` under gdb-multiarch.

Under gdb, the same script for both: `break` after the last pass (the instruction after the
outer loop's `b.ne`), `continue` (timed: the replay, or the recording run), `watch *(long *)
&target`, then `reverse-continue` (timed), back to the one write of `target`; where it stopped
(PC, x7, the value of `target`) is checked and reported. Rounds interleave the two; medians.

Also QEMU's record overhead on this guest: `-icount shift=0` to the guest's end with and without
`rr=record` (with its snapshot), interleaved, medians.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.bench_reverse import stores_elf  # noqa: E402
from tests.helpers.gdb_harness import GDB, QemuStub, Stub, run_gdb  # noqa: E402
from tests.helpers.qemu_runner import QEMU, qemu_command  # noqa: E402

GDB_TIMEOUT = 180.0

# One round under gdb (tests/helpers/gdb_harness.py's prelude: connect, check, pc, val, STOPS):
# forward to the end of the loop, watch `target`, reverse-continue.
GDB_BODY = r'''
connect()
gdb.execute("break *%(end)#x")
t = time.perf_counter()
gdb.execute("continue")
check("forward_s", time.perf_counter() - t)
gdb.execute("delete")
gdb.execute("watch *(long *)%(target)#x")
n = len(STOPS)
t = time.perf_counter()
gdb.execute("reverse-continue")
check("reverse_continue_s", time.perf_counter() - t)
check("stop", STOPS[n:])
check("pc", pc())
check("x7", val("$x7"))
check("value", val("*(long *)%(target)#x"))
'''


def make_qcow2(path: Path, size: int = 64 << 20) -> None:
    """An empty qcow2 (version 2, 64 KiB clusters: header, refcount table, refcount block,
    L1 table), as `qemu-img create -f qcow2 path 64M` makes; QEMU's snapshots go in it."""
    cb = 16
    cs = 1 << cb
    l1_size = -(-size // (cs * (cs // 8)))
    header = struct.pack(">4sIQIIQIIQQIIQ", b"QFI\xfb", 2, 0, 0, cb, size, 0, l1_size, 3 * cs, cs, 1, 0, 0)
    image = bytearray(4 * cs)
    image[:len(header)] = header
    struct.pack_into(">Q", image, cs, 2 * cs)            # the refcount table's one block: cluster 2
    for i in range(4):
        struct.pack_into(">H", image, 2 * cs + 2 * i, 1)  # clusters 0-3 are in use
    path.write_bytes(bytes(image))


def qemu_rr(elf: Path, work: Path, mode: str | None, extra=()) -> list[str]:
    """The QEMU command line for the guest: `-icount shift=0`, with rr=mode (record/replay,
    snapshot `init` in work/rr.qcow2) unless mode is None."""
    icount = "shift=0"
    args = ["-net", "none"]
    if mode is not None:
        icount += f",rr={mode},rrfile={work / 'rr.bin'},rrsnapshot=init"
        args += ["-drive", f"file={work / 'rr.qcow2'},if=none,id=rr,format=qcow2"]
    return qemu_command(elf, merge_semihosting=False, extra_args=["-icount", icount, *args, *extra])


def run_to_end(cmd: list[str], timeout: float = 120.0) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=timeout)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stdout.decode(errors='replace')}")
    return seconds


def record(elf: Path, work: Path) -> float:
    """Record the guest to its end (a fresh qcow2 for its snapshot); the wall time."""
    (work / "rr.bin").unlink(missing_ok=True)
    make_qcow2(work / "rr.qcow2")
    return run_to_end(qemu_rr(elf, work, "record"))


class QemuReplay(QemuStub):
    """QEMU replaying the recording (rr=replay, from its snapshot `init`) with its gdbstub on a
    Unix socket, held at the start (-S)."""

    def __init__(self, work: Path, elf: Path):
        super().__init__(work, elf, name="qemu")
        self.argv = qemu_rr(elf, work, "replay", ["-gdb", f"unix:{self.sock_path},server=on,wait=off", "-S"])


def gdb_round(stub: Stub, elf: Path, end: int, target: int, name: str) -> dict:
    """GDB_BODY against `stub`: what it recorded, "error" if it failed, and gdb's output."""
    run = run_gdb(stub, elf, GDB_BODY % {"end": end, "target": target}, timeout=GDB_TIMEOUT, name=f"gdb-{name}")
    result = dict(run.results)
    if "_error" in result:
        result["error"] = result["_error"]
    result["gdb_output"] = run.stdout[-1500:]
    return result


def qemu_round(elf: Path, work: Path, end: int, target: int) -> dict:
    with QemuReplay(work, elf) as stub:
        result = gdb_round(stub, elf, end, target, "qemu")
        result["qemu_log"] = (stub.stdout + stub.stderr)[-1500:]
    return result


def guestdbg_round(elf: Path, work: Path, end: int, target: int) -> dict:
    with Stub(work, elf, extra_args=("--record",), name="guestdbg") as stub:
        return gdb_round(stub, elf, end, target, "guestdbg")


def check(result: dict, store: int, size: int = 4) -> str | None:
    """Why the stop is not at the write of `target` (None if it is): the PC on the store, or
    an instruction either side of it (gdb steps back over a reported watchpoint hit, QEMU
    stops after the store), and `target`/x7 consistent with that side."""
    if "error" in result:
        return result["error"]
    pc = result["pc"]
    if pc not in (store - size, store, store + size):
        return f"stopped at pc {pc:#x}, not at the store {store:#x}"
    if pc > store and (result["value"], result["x7"]) != (0x77, 0x77):
        return f"after the store but target={result['value']:#x} x7={result['x7']:#x}"
    if pc <= store and result["value"] != 0:
        return f"before the store but target={result['value']:#x}"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--passes", type=int, default=25, help="passes over 64 MiB (3.1 M instructions each)")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    for tool in (QEMU, GDB):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed: nothing to compare", file=sys.stderr)
            return 2
    from guestdbg.board.common import elf_symbols
    work = Path(tempfile.mkdtemp(prefix="bench_rq_"))
    elf = stores_elf(work, args.passes)
    syms = elf_symbols(elf)
    target = syms["target"]
    store = syms["_start"] + 8        # str x7, [x6]
    end = syms["outer"] + 32          # after the last pass: ldr x0, =SYSTEM_OFF
    rows: dict[str, list] = {"qemu_plain_s": [], "qemu_record_s": [], "qemu_forward_s": [], "qemu_reverse_s": [],
                             "guestdbg_forward_s": [], "guestdbg_reverse_s": []}
    failures: dict[str, str] = {}
    stops: dict[str, dict] = {}
    for r in range(args.rounds):
        order = ("plain", "record") if r % 2 == 0 else ("record", "plain")
        for mode in order:
            try:
                seconds = record(elf, work) if mode == "record" else run_to_end(qemu_rr(elf, work, None))
            except Exception as e:  # noqa: BLE001 - reported, not fatal
                failures[f"qemu_{mode}"] = str(e)
                print(f"  round {r + 1}: qemu {mode}: FAILED: {e}", flush=True)
                continue
            rows[f"qemu_{mode}_s"].append(seconds)
            print(f"  round {r + 1}: qemu to the end, {mode:6}: {seconds:6.2f} s", flush=True)
        if not rows["qemu_record_s"]:  # the replays need a recording
            record(elf, work)
        for who in (("qemu", "guestdbg") if r % 2 == 0 else ("guestdbg", "qemu")):
            try:
                result = (qemu_round if who == "qemu" else guestdbg_round)(elf, work, end, target)
            except Exception as e:  # noqa: BLE001
                result = {"error": f"{type(e).__name__}: {e}"}
            why = check(result, store)
            if why is not None:
                failures[who] = why
                print(f"  round {r + 1}: {who}: FAILED: {why}\n{result.get('gdb_output', '')}\n"
                      f"{result.get('qemu_log', '')}", flush=True)
                continue
            rows[f"{who}_forward_s"].append(result["forward_s"])
            rows[f"{who}_reverse_s"].append(result["reverse_continue_s"])
            stops[who] = {"pc": hex(result["pc"]), "x7": hex(result["x7"]), "target": hex(result["value"]),
                          "stop_event": result["stop"]}
            print(f"  round {r + 1}: {who:8}: forward {result['forward_s']:6.2f} s, reverse-continue "
                  f"{result['reverse_continue_s']:6.2f} s, stopped at pc {result['pc']:#x} "
                  f"(target={result['value']:#x}) {result['stop']}", flush=True)

    def med(key: str) -> float | None:
        return statistics.median(rows[key]) if rows[key] else None

    def ratio(a: str, b: str) -> float | None:
        return med(a) / med(b) if rows[a] and rows[b] else None
    summary = {
        "passes": args.passes, "instructions": 5 + args.passes * (2 + 3 * (64 << 20) // 64 + 3),
        "rounds": args.rounds, "store_pc": hex(store), "end_pc": hex(end),
        "qemu_reverse_continue_s": med("qemu_reverse_s"), "guestdbg_reverse_continue_s": med("guestdbg_reverse_s"),
        "reverse_ratio_qemu_over_guestdbg": ratio("qemu_reverse_s", "guestdbg_reverse_s"),
        "qemu_forward_s": med("qemu_forward_s"), "guestdbg_forward_s": med("guestdbg_forward_s"),
        "qemu_plain_s": med("qemu_plain_s"), "qemu_record_s": med("qemu_record_s"),
        "qemu_record_ratio": ratio("qemu_record_s", "qemu_plain_s"),
        "stops": stops, "failures": failures,
    }

    def fmt(x: float | None, unit: str = " s") -> str:
        return "n/a" if x is None else f"{x:.2f}{unit}"
    print(f"\n{summary['instructions'] / 1e6:.0f} M instructions, medians of {args.rounds} rounds\n")
    print("| | QEMU 7.2 rr=replay | guestdbg --record | QEMU / guestdbg |")
    print("|---|---:|---:|---:|")
    print(f"| reverse-continue to the write | {fmt(med('qemu_reverse_s'))} | {fmt(med('guestdbg_reverse_s'))} | "
          f"{fmt(summary['reverse_ratio_qemu_over_guestdbg'], 'x')} |")
    print(f"| continue to the end (replay / record) | {fmt(med('qemu_forward_s'))} | {fmt(med('guestdbg_forward_s'))} | "
          f"{fmt(ratio('qemu_forward_s', 'guestdbg_forward_s'), 'x')} |")
    print(f"\nQEMU to the guest's end: -icount shift=0 {fmt(med('qemu_plain_s'))}, with rr=record "
          f"{fmt(med('qemu_record_s'))}: {fmt(summary['qemu_record_ratio'], 'x')}")
    for who, why in failures.items():
        print(f"FAILED {who}: {why}")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("stops",)}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps({**summary, "rows": rows}, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
