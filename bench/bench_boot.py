"""Boot Debian's arm64 Linux to its initramfs banner: guestdbg against QEMU TCG, and guestdbg
with a breakpoint and a watchpoint armed (never hit) against the same boot unarmed.

Run from the repository root (needs ./scripts/setup.sh --test's Debian kernel and busybox):

    .venv/bin/python -m bench.bench_boot                       # 3 interleaved rounds, ~1-2.5 min
    .venv/bin/python -m bench.bench_boot --repeat 5 --json out.json
    .venv/bin/python -m bench.bench_boot --repeat 1 --no-qemu   # smoke run, ~45 s

Every row is one fresh process, timed from just before it is spawned to the moment its
console prints tests.helpers.linux_guest.BANNER (the first line /init prints). Same kernel,
initramfs and command line for everyone (tests.helpers.linux_guest.prepare_linux_guest),
512 MiB of RAM. Rows, interleaved round by round (the order rotates each round):

  qemu       qemu-system-aarch64 -M virt -cpu cortex-a57 -m 512 (TCG), console on stdio
  guestdbg   guestdbg run --kernel ... --ram 512M, console on stdio
  gdb        guestdbg run ... --gdb unix:PATH --wait; a raw RSP client attaches and sends `c`
  gdb-armed  the same, but before `c` the client inserts Z0 (software breakpoint) at the
             physical address of an instruction inside the kernel's `panic` (the vCPU starts
             with the MMU off: VA = PA; the BRK stays in RAM for the whole boot, so the
             kernel's VA of panic would hit it too) and Z2 (write watchpoint, 8 bytes) at a
             kernel VA in .rodata, and checks with `monitor info slots` that both are armed

Targets (issue 10): guestdbg ≤ 3× QEMU's time; gdb-armed ≤ gdb / 0.9 (≥ 0.9× the speed).
The addresses come from the guest's /proc/kallsyms (Debian's System.map is a stub), read in
one untimed discovery boot. One more untimed in-process boot (VirtMachine, the same loader)
counts the instructions to the banner (vcpu.icount, deterministic with the virtual clock).
Each row also reads the process's CPU time (utime + stime of all its threads, /proc/PID/stat)
at the banner: less disturbed by other jobs than wall time, though QEMU's includes its I/O
thread. The machine is shared and noisy: compare ratios from one run, not absolute times.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from guestdbg.gdb.client import RspClient
from tests.helpers.console import Console, ConsoleTimeout
from tests.helpers.linux_guest import (
    BANNER,
    QEMU,
    LinuxGuest,
    prepare_linux_guest,
    qemu_linux_command,
    read_kallsyms,
)

MEMORY_MB = 512
BOOT_TIMEOUT = 180.0
KIMAGE_VADDR = 0xffff_8000_0800_0000  # arm64, 48-bit VA, nokaslr: the Image's _text
PC_REGNUM = 32                        # gdb's aarch64 numbering: x0-x30, sp, pc
TARGET_VS_QEMU = 3.0
TARGET_ARMED_SPEED = 0.9


class BootFailed(RuntimeError):
    """A row's process failed before its banner (reported as a PROBLEM line; the run goes on)."""


def guestdbg_command(guest: LinuxGuest, *extra: str) -> list[str]:
    return [sys.executable, "-m", "guestdbg.cli", "run", "--kernel", str(guest.kernel), "--initrd",
            str(guest.initrd), "--append", guest.append, "--ram", f"{MEMORY_MB}M", *extra]


# -- discovery ---------------------------------------------------------------------------------

def kallsyms(command: list[str], names: list[str]) -> dict[str, int]:
    """Boot once (untimed) and read the named text symbols from the guest's /proc/kallsyms."""
    try:
        return read_kallsyms(command, names, timeout=BOOT_TIMEOUT)
    except LookupError as e:
        raise SystemExit(str(e)) from None


def kernel_entry(guest: LinuxGuest) -> int:
    from guestdbg.board import loader
    return loader.plan_linux(MEMORY_MB << 20, str(guest.kernel), initrd=str(guest.initrd),
                             append=guest.append).entry


def debug_points(guest: LinuxGuest, syms: dict[str, int]) -> tuple[int, int]:
    """(breakpoint PA, watchpoint VA). The breakpoint is 16 bytes into `panic` (its fifth
    instruction: past the two patchable-entry NOPs ftrace rewrites at boot), at its physical
    address; the watch is 8 bytes of a constant table 16 KiB into .rodata (_etext starts it)."""
    bp_pa = kernel_entry(guest) + (syms["panic"] + 16 - KIMAGE_VADDR)
    watch_va = syms["_etext"] + 0x4038
    return bp_pa, watch_va


# -- one boot ----------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads (/proc/PID/stat), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_banner(con: Console, result: dict) -> dict:
    """Wait for the banner; put the wall time since spawn and the process's CPU time in result."""
    con.expect(re.escape(BANNER), BOOT_TIMEOUT)
    result["seconds"] = time.monotonic() - con.started
    result["cpu_seconds"] = cpu_seconds(con.proc.pid)
    return result


def boot_plain(command: list[str]) -> dict:
    with Console(command) as con:
        return wait_banner(con, {})


def monitor(client: RspClient, command: str) -> str:
    client.send(b"qRcmd," + command.encode().hex().encode())
    out = []
    while True:
        reply = client.receive()
        if reply.startswith(b"O") and reply != b"OK":
            out.append(bytes.fromhex(reply[1:].decode()).decode())
            continue
        if reply != b"OK" and not out:
            out.append(bytes.fromhex(reply.decode()).decode())
        return "".join(out)


def boot_gdb(guest: LinuxGuest, sock_dir: Path, points: tuple[int, int] | None) -> dict:
    """guestdbg behind its stub on a unix socket: attach, arm (if points), `c`, time to banner."""
    path = sock_dir / f"gdb-{time.monotonic_ns()}.sock"
    with Console(guestdbg_command(guest, "--gdb", f"unix:{path}", "--wait")) as con:
        while not path.exists():
            if con.proc.poll() is not None or time.monotonic() - con.started > 60:
                raise BootFailed(f"the stub did not listen on {path}\n{con.describe()}")
            time.sleep(0.01)
        client = RspClient.connect(str(path), timeout=BOOT_TIMEOUT, retry_for=5)
        try:
            client.request(b"qSupported:swbreak+;hwbreak+")
            client.start_no_ack()
            pc = int.from_bytes(bytes.fromhex(client.request(b"p%x" % PC_REGNUM).decode()), "little")
            result: dict = {"entry_pc": pc}
            if points is not None:
                bp_pa, watch_va = points
                for packet in (b"Z0,%x,4" % bp_pa, b"Z2,%x,8" % watch_va):
                    reply = client.request(packet)
                    if reply != b"OK":
                        raise SystemExit(f"{packet!r} answered {reply!r}")
                report = monitor(client, "info slots")
                result["slots"] = report.strip().splitlines()
                if f"{bp_pa:#x}" not in report or f"{watch_va:#x}" not in report:
                    raise SystemExit(f"the breakpoint or watchpoint is not armed:\n{report}")
            client.send(b"c")
            wait_banner(con, result)
            # A hit would have stopped the guest before the banner; check no stop reply came.
            ready, _, _ = select.select([client.sock], [], [], 0)
            if ready:
                client.sock.settimeout(1.0)
                result["unexpected_reply"] = client.receive().decode(errors="replace")
        finally:
            client.close()
    return result


def count_instructions(guest: LinuxGuest) -> dict:
    """In-process boot (the CLI's loader), stopped just after the banner: vcpu.icount."""
    from guestdbg import kvm
    from guestdbg.board import loader
    from guestdbg.board.virt import VirtConfig, VirtMachine
    start = time.monotonic()
    out = bytearray()
    machine: VirtMachine | None = None

    def console(data: bytes) -> None:
        out.extend(data)
        if BANNER.encode() in out:
            machine.vcpu.kick()

    machine = VirtMachine(VirtConfig(ram_size=MEMORY_MB << 20), console=console)
    loader.apply_linux(machine, loader.plan_linux(MEMORY_MB << 20, str(guest.kernel), initrd=str(guest.initrd),
                                                  append=guest.append))
    while BANNER.encode() not in out:
        run = machine.run_until()
        if not isinstance(run, kvm.KvmRun) or run.exit_reason != kvm.KVM_EXIT_INTR:
            raise SystemExit(f"the in-process boot ended before the banner: {run!r}\n{out[-2000:].decode()}")
    seconds = time.monotonic() - start
    icount = machine.vcpu.icount
    return {"icount": icount, "seconds": seconds, "mips": icount / seconds / 1e6}


def git_state() -> dict:
    """The commit measured and the files that differed from it (the numbers are the tree's)."""
    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True, check=False).stdout.strip()
    return {"git_head": git("rev-parse", "HEAD"), "git_modified": git("status", "--short").splitlines()}


# -- the run -----------------------------------------------------------------------------------

def summarize(samples: dict[str, list[float]]) -> dict:
    return {name: {"median": statistics.median(v), "min": min(v), "max": max(v), "samples": v}
            for name, v in samples.items() if v}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--json", metavar="FILE", help="write samples, medians, ratios and targets here")
    ap.add_argument("--no-qemu", action="store_true", help="leave QEMU out (guestdbg rows only)")
    ap.add_argument("--qemu", default=QEMU, help=f"QEMU binary (default {QEMU})")
    args = ap.parse_args()

    use_qemu = not args.no_qemu
    if use_qemu and not shutil.which(args.qemu):
        print(f"{args.qemu} not found: QEMU rows skipped", file=sys.stderr)
        use_qemu = False
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench_boot-") as tmp:
        work = Path(tmp)
        guest = prepare_linux_guest(work)
        qemu_cmd = qemu_linux_command(guest, MEMORY_MB)
        qemu_cmd[0] = args.qemu
        t0 = time.monotonic()
        syms = kallsyms(qemu_cmd if use_qemu else guestdbg_command(guest), ["panic", "_etext"])
        points = debug_points(guest, syms)
        print(f"kernel {guest.kernel.name}; discovery boot {time.monotonic() - t0:.1f} s; "
              f"Z0 at pa {points[0]:#x} (panic+16 = {syms['panic'] + 16:#x}), "
              f"Z2 8 bytes at va {points[1]:#x} (_etext+0x4038)", flush=True)

        rows = {"guestdbg": lambda: boot_plain(guestdbg_command(guest)),
                "gdb": lambda: boot_gdb(guest, work, None),
                "gdb-armed": lambda: boot_gdb(guest, work, points)}
        if use_qemu:
            rows = {"qemu": lambda: boot_plain(qemu_cmd), **rows}
        names = list(rows)
        samples: dict[str, list[float]] = {n: [] for n in names}
        cpu: dict[str, list[float]] = {n: [] for n in names}
        details: dict[str, list[dict]] = {n: [] for n in names}
        for rnd in range(args.repeat):
            order = names[rnd % len(names):] + names[:rnd % len(names)]
            for name in order:
                try:
                    r = rows[name]()
                except (ConsoleTimeout, BootFailed, OSError) as e:
                    problems.append(f"round {rnd + 1} {name}: no banner: {str(e)[-1500:]}")
                    print(f"round {rnd + 1}/{args.repeat}  {name:<10} FAILED (see PROBLEM below)", flush=True)
                    continue
                samples[name].append(r["seconds"])
                cpu[name].append(r["cpu_seconds"])
                details[name].append(r)
                if "unexpected_reply" in r:
                    problems.append(f"round {rnd + 1} {name}: stop reply {r['unexpected_reply']!r}")
                print(f"round {rnd + 1}/{args.repeat}  {name:<10} {r['seconds']:7.2f} s  "
                      f"(CPU {r['cpu_seconds']:.2f} s)", flush=True)
        counted = count_instructions(guest)
        print(f"in-process boot to the banner: {counted['icount']:,} instructions, {counted['seconds']:.2f} s, "
              f"{counted['mips']:.1f} MIPS", flush=True)

    med = {n: statistics.median(v) for n, v in samples.items() if v}
    ratios: dict[str, float] = {}
    paired: dict[str, float] = {}

    def pair(a: str, b: str) -> float | None:
        k = min(len(samples[a]), len(samples[b]))
        return statistics.median(samples[a][i] / samples[b][i] for i in range(k)) if k else None

    if "qemu" in med and "guestdbg" in med:
        ratios["guestdbg/qemu"] = med["guestdbg"] / med["qemu"]
        paired["guestdbg/qemu"] = pair("guestdbg", "qemu")
    if "gdb" in med and "gdb-armed" in med:
        ratios["gdb-armed/gdb"] = med["gdb-armed"] / med["gdb"]
        paired["gdb-armed/gdb"] = pair("gdb-armed", "gdb")
    if "gdb" in med and "guestdbg" in med:
        ratios["gdb/guestdbg"] = med["gdb"] / med["guestdbg"]
        paired["gdb/guestdbg"] = pair("gdb", "guestdbg")
    cpu_med = {n: statistics.median(v) for n, v in cpu.items() if v}
    cpu_ratios = {k: cpu_med[a] / cpu_med[b] for k in ratios for a, b in [k.split("/")]}
    targets = {}
    if "guestdbg/qemu" in ratios:
        targets["guestdbg time / QEMU time <= 3"] = ratios["guestdbg/qemu"] <= TARGET_VS_QEMU
    if "gdb-armed/gdb" in ratios:
        targets["armed speed / unarmed speed >= 0.9"] = 1 / ratios["gdb-armed/gdb"] >= TARGET_ARMED_SPEED

    print(f"\nmedians over {args.repeat} round(s) (seconds from spawn to the banner):")
    for name in names:
        if name in med:
            v = samples[name]
            mips = counted["icount"] / med[name] / 1e6 if name != "qemu" else None
            print(f"  {name:<10} {med[name]:7.2f}  (min {min(v):.2f}, max {max(v):.2f}; CPU {cpu_med[name]:.2f})"
                  + (f"  {mips:.1f} MIPS incl. start-up" if mips else ""))
    for k, v in ratios.items():
        print(f"  {k:<14} {v:.3f}  (paired {paired[k]:.3f}; CPU time {cpu_ratios[k]:.3f})")
    if "gdb-armed/gdb" in ratios:
        print(f"  armed speed    {1 / ratios['gdb-armed/gdb']:.3f}x unarmed")
    for k, ok in targets.items():
        print(f"  target {k}: {'met' if ok else 'NOT met'}")
    if details.get("gdb-armed"):
        print("  monitor info slots (armed):\n    " + "\n    ".join(details["gdb-armed"][0]["slots"]))
    for p in problems:
        print(f"PROBLEM: {p}")

    if args.json:
        meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "repeat": args.repeat,
                "python": platform.python_version(), "cpus": os.cpu_count(), "loadavg": os.getloadavg(),
                "kernel": guest.kernel.name, "append": guest.append, "memory_mb": MEMORY_MB,
                "qemu": subprocess.run([args.qemu, "--version"], capture_output=True, text=True, check=False).stdout.split("\n")[0]
                if use_qemu else None,
                "breakpoint_pa": points[0], "watch_va": points[1], **git_state()}
        doc = {"meta": meta, "rows": summarize(samples), "cpu_rows": summarize(cpu), "cpu_ratios": cpu_ratios,
               "details": details, "instructions": counted,
               "ratios": ratios, "paired_ratios": paired, "targets": targets, "problems": problems}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
