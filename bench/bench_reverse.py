"""Reverse execution's costs (issue 12): what recording costs a run, and how long going back takes.

`python -m bench.bench_reverse [--repeat N] [--no-qemu] [--json FILE]`

Rows, each measured in-process through the debug manager (the path `guestdbg run --gdb
--record` takes), recording off and on interleaved in the same run:

- **linux**: Debian's arm64 kernel and the busybox initramfs (512 MiB RAM) from reset to the
  initramfs banner; the ratio recording-on / recording-off of the wall time, and what the
  history holds then (checkpoints, memory, time spent taking them).
- **crunch**: guests/crunch (CPU-bound, little memory written) to its exit.
- **smp4**: guests/smp with `--smp 4` and 50 million rounds of its CPU-bound work per CPU (spinlocks
  in WFE, SGIs, the schedule's turns: what several vCPUs add to recording) to its exit.
- **linux_smp2**: the Linux row with `--smp 2`.
- **linux_host**, **crunch_host**: the Linux and crunch rows on `--clock host`, which recording
  paces and logs (board/clock.py): against the host clock without recording.
- **stores**: a store-heavy guest (assembled here): 25 passes of 64-bit stores, one every 64
  bytes, over 64 MiB (every page written in every pass, 100 M instructions); also the memory the
  history holds per 10^8 instructions of it.
- **search**: the store-heavy guest with `target` written once at the start, then 10^8
  instructions later `watch target` and `reverse_cont` (the last write, 10^8 back), and
  `reverse_step` latency at 10 random points of that history (after a `seek_to` there).
- **going back** (after the recorded Linux boot): the first reverse step from the live end,
  then 20 more (median), and seeks to the middle and the start of the history.
- **qemu** (peer): QEMU's own record mode on the same boot (`-icount shift=0,rr=record`) against
  QEMU with `-icount shift=0` and no recording: its recording overhead, for comparison. (QEMU
  reverse-steps only in a second, replaying process: bench_reverse_qemu.py times its
  reverse-continue on the search's guest side by side with guestdbg's.)
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.helpers.console import Console  # noqa: E402
from tests.helpers.linux_guest import BANNER, QEMU, prepare_linux_guest, qemu_linux_command  # noqa: E402

MEMORY_MB = 512
BOOT_TIMEOUT = 300.0


def linux_machine(guest, out: bytearray, smp: int = 1, clock_mode: str = "virtual"):
    from guestdbg.board import loader
    from guestdbg.board.virt import VirtConfig, VirtMachine
    machine = VirtMachine(VirtConfig(ram_size=MEMORY_MB << 20, smp=smp), console=out.extend, clock_mode=clock_mode)
    loader.apply_linux(machine, loader.plan_linux(MEMORY_MB << 20, str(guest.kernel), initrd=str(guest.initrd),
                                                  append=guest.append, cpus=smp))
    return machine


def boot_to_banner(guest, record: bool, smp: int = 1, clock_mode: str = "virtual"):
    """(seconds, manager) for one boot to the banner through the debug manager."""
    from guestdbg.debug.manager import GuestDebugManager
    out = bytearray()
    machine = linux_machine(guest, out, smp, clock_mode)
    manager = GuestDebugManager(machine)
    if record:
        manager.start_recording()
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.02):
            if BANNER.encode() in out:
                manager.interrupt()
                return
    watcher = threading.Thread(target=watch, daemon=True)
    start = time.perf_counter()
    watcher.start()
    event = manager.cont()
    seconds = time.perf_counter() - start
    done.set()
    if BANNER.encode() not in out:
        raise SystemExit(f"no banner: {event}\n{out[-2000:].decode(errors='replace')}")
    return seconds, manager


SMP_WORK = 50_000_000


def run_guest(elf: Path, record: bool, smp: int = 1, clock_mode: str = "virtual") -> tuple[float, dict | None]:
    """(seconds, the history's status or None) of a bare-metal guest run to its exit through
    the debug manager, recording or not. With `smp`, guests/smp's work set to SMP_WORK."""
    from guestdbg.board.virt import VirtConfig, VirtMachine
    from guestdbg.debug.manager import GuestDebugManager, StopKind
    from tests.helpers.support import symbols
    machine = VirtMachine(VirtConfig(smp=smp), console=lambda b: None, clock_mode=clock_mode)
    machine.load_elf(elf)
    manager = GuestDebugManager(machine)
    if smp > 1:
        manager.write_memory(symbols(str(elf))["smp_work"], SMP_WORK.to_bytes(8, "little"))
    if record:
        manager.start_recording()
    start = time.perf_counter()
    event = manager.cont()
    seconds = time.perf_counter() - start
    assert event.kind is StopKind.EXITED, event
    return seconds, manager.record_status()


STORES_S = r"""
    .text
    .global _start
_start:
    ldr     x6, =target
    mov     x7, #0x77
    str     x7, [x6]                   // the write the search looks for
    ldr     x2, ={passes}
    mov     x5, #0
outer:
    ldr     x3, =0x40200000
    ldr     x4, =0x44200000            // 64 MiB
inner:
    str     x5, [x3], #64
    cmp     x3, x4
    b.lo    inner
    add     x5, x5, #1
    subs    x2, x2, #1
    b.ne    outer
    ldr     x0, =0x84000008            // PSCI SYSTEM_OFF
    hvc     #0
    b       .
    .data
    .balign 8
target: .quad 0
"""


def stores_elf(work: Path, passes: int) -> Path:
    from tests.helpers.mmu_guest import assemble
    return assemble(work, f"stores{passes}", STORES_S.format(passes=passes))


def search(elf: Path) -> dict:
    """reverse_cont to the one write of `target`, 10^8 instructions back; then reverse_step at
    10 random points of the history."""
    import random
    from guestdbg.board.common import elf_symbols
    from guestdbg.board.virt import VirtConfig, VirtMachine
    from guestdbg.debug.manager import GuestDebugManager, StopKind, WatchKind
    machine = VirtMachine(VirtConfig(), console=lambda b: None)
    machine.load_elf(elf)
    manager = GuestDebugManager(machine)
    manager.start_recording()
    event = manager.cont()
    assert event.kind is StopKind.EXITED, event
    end = machine.vcpu.icount
    manager.add_watchpoint(elf_symbols(elf)["target"], 8, WatchKind.WRITE)
    start = time.perf_counter()
    event = manager.reverse_cont()
    seconds = time.perf_counter() - start
    assert event.kind is StopKind.WATCH and machine.vcpu.icount < 10, (event, machine.vcpu.icount)
    manager.remove_watchpoint(elf_symbols(elf)["target"], 8, WatchKind.WRITE)
    rng = random.Random(5)
    steps = []
    for _ in range(10):
        manager.seek_to(rng.randrange(1000, end))
        t0 = time.perf_counter()
        manager.reverse_step()
        steps.append(time.perf_counter() - t0)
    return {"history_instructions": end, "reverse_cont_to_write_s": seconds,
            "reverse_step_anywhere_median_s": statistics.median(steps), "reverse_step_anywhere_max_s": max(steps),
            "checkpoints": manager.record_status()["checkpoints"]}


def going_back(manager) -> dict:
    h = manager.record_status()
    out: dict = {}
    start = time.perf_counter()
    manager.reverse_step()
    out["first_reverse_step_s"] = time.perf_counter() - start
    steps = []
    for _ in range(20):
        start = time.perf_counter()
        manager.reverse_step()
        steps.append(time.perf_counter() - start)
    out["reverse_step_median_s"] = statistics.median(steps)
    for name, target in (("seek_middle_s", (h["begin"] + h["end"]) // 2), ("seek_start_s", h["begin"])):
        start = time.perf_counter()
        manager.seek_to(target)
        out[name] = time.perf_counter() - start
    return out


def qemu_boot(guest, extra: tuple[str, ...]) -> float:
    with Console(qemu_linux_command(guest, MEMORY_MB, extra_args=extra)) as con:
        con.expect(re.escape(BANNER), BOOT_TIMEOUT)
        return time.monotonic() - con.started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--no-qemu", action="store_true")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--only", default="linux,crunch,stores,smp4,linux_smp2,linux_host,crunch_host,qemu,search",
                        help="comma-separated rows to run (default: all)")
    args = parser.parse_args()
    only = set(args.only.split(","))
    from tests.helpers.qemu_runner import build_guests
    work = Path(tempfile.mkdtemp(prefix="bench_reverse_"))
    guest = prepare_linux_guest(work)
    built = build_guests(work / "guests")
    crunch, smp_elf = built / "crunch.elf", built / "smp.elf"
    stores = stores_elf(work, 25)
    rows: dict[str, list] = {"linux_off": [], "linux_on": [], "crunch_off": [], "crunch_on": [],
                             "stores_off": [], "stores_on": [], "qemu_plain": [], "qemu_record": [],
                             "smp4_off": [], "smp4_on": [], "linux_smp2_off": [], "linux_smp2_on": [],
                             "linux_host_off": [], "linux_host_on": [], "crunch_host_off": [], "crunch_host_on": []}
    host_history: dict = {}
    smp_history: dict = {}
    stores_history: dict = {}
    history: dict = {}
    back: dict = {}
    for r in range(args.repeat):
        for record in ((False, True) if r % 2 == 0 else (True, False)) if "linux" in only else ():
            seconds, manager = boot_to_banner(guest, record)
            rows["linux_on" if record else "linux_off"].append(seconds)
            print(f"  round {r + 1}: linux, recording {'on ' if record else 'off'}: {seconds:6.2f} s", flush=True)
            if record and not history:
                history = manager.record_status()
                back = going_back(manager)
            del manager
        for record in ((False, True) if r % 2 == 0 else (True, False)) if "linux_smp2" in only else ():
            seconds, _ = boot_to_banner(guest, record, smp=2)
            rows["linux_smp2_on" if record else "linux_smp2_off"].append(seconds)
            print(f"  round {r + 1}: linux --smp 2, recording {'on ' if record else 'off'}: {seconds:6.2f} s",
                  flush=True)
        # --clock host: recording paces the clock and logs its catch-ups (board/clock.py).
        for record in ((False, True) if r % 2 == 0 else (True, False)) if "linux_host" in only else ():
            seconds, manager = boot_to_banner(guest, record, clock_mode="host")
            rows["linux_host_on" if record else "linux_host_off"].append(seconds)
            if record:
                host_history = manager.record_status()
            print(f"  round {r + 1}: linux --clock host, recording {'on ' if record else 'off'}: {seconds:6.2f} s",
                  flush=True)
            del manager
        for record in ((False, True) if r % 2 == 0 else (True, False)) if "crunch_host" in only else ():
            seconds, _ = run_guest(crunch, record, clock_mode="host")
            rows["crunch_host_on" if record else "crunch_host_off"].append(seconds)
            print(f"  round {r + 1}: crunch --clock host, recording {'on ' if record else 'off'}: {seconds:6.2f} s",
                  flush=True)
        for record in ((False, True) if r % 2 == 0 else (True, False)) if "smp4" in only else ():
            seconds, status = run_guest(smp_elf, record, smp=4)
            rows["smp4_on" if record else "smp4_off"].append(seconds)
            if status is not None:
                smp_history = status
            print(f"  round {r + 1}: smp --smp 4, recording {'on ' if record else 'off'}: {seconds:6.2f} s",
                  flush=True)
        for record in ((False, True) if r % 2 == 0 else (True, False)) if "crunch" in only else ():
            seconds, _ = run_guest(crunch, record)
            rows["crunch_on" if record else "crunch_off"].append(seconds)
            print(f"  round {r + 1}: crunch, recording {'on ' if record else 'off'}: {seconds:6.2f} s", flush=True)
        for record in ((False, True) if r % 2 == 0 else (True, False)) if "stores" in only else ():
            seconds, status = run_guest(stores, record)
            rows["stores_on" if record else "stores_off"].append(seconds)
            if status is not None:
                stores_history = status
            print(f"  round {r + 1}: stores, recording {'on ' if record else 'off'}: {seconds:6.2f} s", flush=True)
        if not args.no_qemu and "qemu" in only and shutil.which(QEMU):
            rrfile = work / "qemu.rr"
            for name, extra in (("qemu_plain", ("-icount", "shift=0")),
                                ("qemu_record", ("-icount", f"shift=0,rr=record,rrfile={rrfile}"))):
                try:
                    seconds = qemu_boot(guest, extra)
                except Exception as e:  # noqa: BLE001 - a peer that cannot run is reported, not fatal
                    print(f"  {name}: failed: {e}", flush=True)
                    continue
                rows[name].append(seconds)
                print(f"  round {r + 1}: {name}: {seconds:6.2f} s", flush=True)

    def ratio(on: str, off: str) -> float | None:
        return statistics.median(rows[on]) / statistics.median(rows[off]) if rows[on] and rows[off] else None
    found = search(stores) if "search" in only else {}
    print(f"  search: {found}", flush=True)
    result = {
        "linux_record_ratio": ratio("linux_on", "linux_off"),
        "crunch_record_ratio": ratio("crunch_on", "crunch_off"),
        "stores_record_ratio": ratio("stores_on", "stores_off"),
        "smp4_record_ratio": ratio("smp4_on", "smp4_off"),
        "smp4_history": {k: smp_history.get(k) for k in ("end", "checkpoints", "memory", "take_seconds", "interval")},
        "linux_smp2_record_ratio": ratio("linux_smp2_on", "linux_smp2_off"),
        "linux_host_record_ratio": ratio("linux_host_on", "linux_host_off"),
        "linux_host_history": {k: host_history.get(k) for k in ("end", "checkpoints", "events", "memory")},
        "crunch_host_record_ratio": ratio("crunch_host_on", "crunch_host_off"),
        "stores_history": {k: stores_history.get(k) for k in ("end", "checkpoints", "memory", "take_seconds",
                                                              "interval", "thinned", "dropped_start", "begin")},
        "search": found,
        "qemu_record_ratio": ratio("qemu_record", "qemu_plain"),
        "history": {k: history.get(k) for k in ("end", "checkpoints", "memory", "take_seconds", "interval")},
        "going_back": back,
        "rows": rows,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
