"""Several vCPUs (issue 11): Linux boot with --smp 4 against --smp 1 and QEMU TCG -smp 4, and a
CPU-bound SMP guest's total MIPS across vCPUs against one vCPU. Ratios from the same run.

Run from the repository root (the boot part needs ./scripts/setup.sh --test's Debian kernel
and busybox; the MIPS part builds guests/ with the cross compiler):

    .venv/bin/python -m bench.bench_smp                  # 2 interleaved rounds
    .venv/bin/python -m bench.bench_smp --repeat 3 --json out.json
    .venv/bin/python -m bench.bench_smp --no-boot         # the MIPS part only, ~10 s

Boot rows (each a fresh process, timed from spawn to tests.helpers.linux_guest.BANNER on its
console, interleaved round by round; same kernel, initramfs, command line and 512 MiB):

  guestdbg-smp1   guestdbg run --kernel ... --smp 1
  guestdbg-smp4   guestdbg run --kernel ... --smp 4
  qemu-smp4       qemu-system-aarch64 -M virt -cpu cortex-a57 -smp 4 (TCG; multi-threaded TCG
                  is QEMU's default here, one host thread per vCPU)

MIPS rows (in-process, guests/smp with `smp_work` rounds of an LCG on every CPU): the total of
every vCPU's retired instructions (vcpu.icount, exact) over the wall time of run_to_exit(), for
--smp 1 and --smp 4. guestdbg runs every vCPU on one host thread (round-robin turns of
board/smp.py's QUANTUM instructions), so the ideal ratio is 1.0: what it measures is the
scheduler's overhead. The machine is shared and noisy: compare ratios from one run.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.helpers.console import Console  # noqa: E402
from tests.helpers.linux_guest import BANNER, QEMU, prepare_linux_guest, qemu_linux_command  # noqa: E402

MEMORY_MB = 512
BOOT_TIMEOUT = 300.0
WORK_ROUNDS = 10_000_000  # LCG rounds per CPU: ~4 instructions each (~40M per CPU)


def guestdbg_command(guest, smp: int) -> list[str]:
    return [sys.executable, "-m", "guestdbg.cli", "run", "--kernel", str(guest.kernel), "--initrd",
            str(guest.initrd), "--append", guest.append, "--ram", f"{MEMORY_MB}M", "--no-reboot",
            "--smp", str(smp)]


def boot(command: list[str]) -> float:
    with Console(command) as con:
        con.expect(re.escape(BANNER), BOOT_TIMEOUT)
        return time.monotonic() - con.started


def boot_rows(repeat: int, with_qemu: bool) -> dict[str, list[float]]:
    guest = prepare_linux_guest(Path(tempfile.mkdtemp(prefix="bench_smp_")))
    rows = {"guestdbg-smp1": guestdbg_command(guest, 1), "guestdbg-smp4": guestdbg_command(guest, 4)}
    if with_qemu and shutil.which(QEMU):
        rows["qemu-smp4"] = qemu_linux_command(guest, MEMORY_MB, extra_args=("-smp", "4"))
    times: dict[str, list[float]] = {name: [] for name in rows}
    names = list(rows)
    for r in range(repeat):
        for name in names[r % len(names):] + names[:r % len(names)]:
            seconds = boot(rows[name])
            times[name].append(seconds)
            print(f"  round {r + 1}: {name:<14} {seconds:6.2f} s to the banner", flush=True)
    return times


def mips(elf: Path, smp: int, rounds: int) -> dict:
    from guestdbg.board.virt import VirtConfig, VirtMachine
    from tests.helpers.support import symbols
    out = bytearray()
    machine = VirtMachine(VirtConfig(smp=smp), console=out.extend)
    machine.load_elf(elf)
    machine.vm.write_phys(symbols(str(elf))["smp_work"], rounds.to_bytes(8, "little"))
    start = time.perf_counter()
    status = machine.run_to_exit(timeout=600)
    seconds = time.perf_counter() - start
    if status != 0 or b"smp: done" not in out:
        raise SystemExit(f"smp guest failed under --smp {smp}: status {status}\n{out.decode(errors='replace')}")
    insns = sum(v.icount for v in machine.vcpus)
    return {"smp": smp, "instructions": insns, "seconds": seconds, "mips": insns / seconds / 1e6}


def mips_rows(repeat: int) -> dict[str, list[dict]]:
    from tests.helpers.qemu_runner import build_guests
    elf = build_guests(Path(tempfile.mkdtemp(prefix="bench_smp_guests_"))) / "smp.elf"
    rows: dict[str, list[dict]] = {"smp1": [], "smp4": []}
    for r in range(repeat):
        for smp in ((1, 4) if r % 2 == 0 else (4, 1)):
            row = mips(elf, smp, WORK_ROUNDS)
            rows[f"smp{smp}"].append(row)
            print(f"  round {r + 1}: --smp {smp}: {row['instructions']:>11,} instructions in "
                  f"{row['seconds']:5.2f} s = {row['mips']:6.1f} MIPS", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--no-boot", action="store_true", help="skip the Linux boots")
    parser.add_argument("--no-qemu", action="store_true", help="no QEMU row")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    report: dict = {}
    print("CPU-bound SMP guest (guests/smp, smp_work rounds on every CPU):")
    m = mips_rows(args.repeat)
    m1 = statistics.median(r["mips"] for r in m["smp1"])
    m4 = statistics.median(r["mips"] for r in m["smp4"])
    report["mips"] = {"rows": m, "smp1_mips": m1, "smp4_mips": m4, "ratio_smp4_over_smp1": m4 / m1}
    print(f"  median: --smp 1 {m1:.1f} MIPS, --smp 4 {m4:.1f} MIPS total: ratio {m4 / m1:.2f}")
    if not args.no_boot:
        print("Linux boot to the initramfs banner:")
        t = boot_rows(args.repeat, not args.no_qemu)
        med = {name: statistics.median(v) for name, v in t.items()}
        report["boot"] = {"seconds": t, "median": med}
        line = (f"  median: --smp 1 {med['guestdbg-smp1']:.2f} s, --smp 4 {med['guestdbg-smp4']:.2f} s "
                f"(smp4/smp1 {med['guestdbg-smp4'] / med['guestdbg-smp1']:.2f})")
        if "qemu-smp4" in med:
            line += f", QEMU -smp 4 {med['qemu-smp4']:.2f} s (guestdbg/QEMU at 4: " \
                    f"{med['guestdbg-smp4'] / med['qemu-smp4']:.2f})"
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
