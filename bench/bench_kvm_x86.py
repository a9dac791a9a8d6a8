#!/usr/bin/env python3
"""guestdbg's x86-64 KVM stub against QEMU's gdbstub, through the wire, on the same ELFs.

Run from the repository root:

    .venv/bin/python bench/bench_kvm_x86.py [--seconds S] [--turns N] [--targets guestdbg,...] [--json out.json]

Targets (each a fresh process per measurement group, driven by guestdbg.gdb.client.RspClient):

- guestdbg: `python -m guestdbg.cli run --arch x86_64 ELF --gdb :PORT --wait`
- qemu-kvm: `qemu-system-x86_64 -accel kvm ... -kernel ELF -gdb tcp::PORT -S` (PVH boot)
- qemu-tcg: the same with `-accel tcg` (where KVM's DR data watchpoints never fire, as on
  kvm_pvm, QEMU+KVM has no working watchpoints: TCG is then the watchpoint reference)

Rows:

- stepi/s: `vCont;s` round trips inside the loop body (guests/x86 loop).
- breakpoint hits/s: an hbreak (Z1) on loop_body, hit over and over the way gdb drives it:
  z1, s, Z1, c per hit (QEMU re-hits forever on a plain c from a breakpoint).
- watch hits/s: a write watch (Z2) on wl_counter, stored once per turn of guests/x86 wloop:
  z2, s, Z2, c per hit for QEMU; guestdbg reports x86 watches after the access, so a plain c.
- guest speed: loop_body -> loop_end (4 instructions per turn) with no watchpoint, and with a
  write watch on idle_page (a page the loop never touches), in M instructions/s.
"""

from __future__ import annotations

import argparse
import datetime
import json
import socket
import subprocess
import sys
import time
from pathlib import Path


from guestdbg.gdb.client import RspClient
from guestdbg.board.common import elf_symbols as symbols

REPO = Path(__file__).resolve().parent.parent
GUESTS = REPO / "guests" / "x86"


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port




class Target:
    def __init__(self, kind: str, elf: Path):
        self.kind, self.elf = kind, elf
        port = free_port()
        if kind == "guestdbg":
            argv = [sys.executable, "-m", "guestdbg.cli", "run", "--arch", "x86_64", str(elf),
                    "--gdb", f":{port}", "--wait"]
        else:
            accel = "kvm" if kind == "qemu-kvm" else "tcg"
            argv = ["qemu-system-x86_64", "-accel", accel, "-M", "pc", "-m", "128M", "-nodefaults",
                    "-display", "none", "-vga", "none", "-no-reboot", "-serial", "null",
                    "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-kernel", str(elf),
                    "-gdb", f"tcp:127.0.0.1:{port}", "-S"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, cwd=REPO)
        self.c = RspClient.connect(("127.0.0.1", port), timeout=120, retry_for=20)
        self.c.request(b"qSupported:swbreak+;hwbreak+")
        self.c.request(b"qXfer:features:read:target.xml:0,ffff")  # QEMU wants it before p/P

    def close(self):
        try:
            self.c.close()
        finally:
            self.proc.kill()
            self.proc.wait()

    def cont(self) -> bytes:
        return self.c.request(b"vCont;c")

    def step(self) -> bytes:
        return self.c.request(b"vCont;s")

    def set_u64(self, addr: int, value: int):
        assert self.c.request(b"M%x,8:%s" % (addr, value.to_bytes(8, "little").hex().encode())) == b"OK"

    def run_to(self, addr: int):
        """hbreak at addr, continue, delete it."""
        assert self.c.request(b"Z1,%x,1" % addr) == b"OK", self.kind
        reply = self.cont()
        assert reply.startswith(b"T"), (self.kind, reply)
        self.c.request(b"z1,%x,1" % addr)

    def rip(self) -> int:
        g = self.c.request(b"g")
        return int.from_bytes(bytes.fromhex(g[256:272].decode()), "little")


def rate(fn, seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - t0)


def bench_rsp(kind: str, loop_elf: Path, seconds: float) -> dict:
    s = symbols(loop_elf)
    t = Target(kind, loop_elf)
    try:
        t.set_u64(s["loop_iterations"], 1 << 60)
        t.run_to(s["loop_body"])
        out = {"stepi_per_s": rate(t.step, seconds)}
        bp = s["loop_body"]

        def hit():
            t.c.request(b"z1,%x,1" % bp)
            t.step()
            assert t.c.request(b"Z1,%x,1" % bp) == b"OK"
            r = t.cont()
            assert r.startswith(b"T"), r
        t.c.request(b"Z1,%x,1" % bp)
        t.cont()
        out["break_hits_per_s"] = rate(hit, seconds)
        t.c.request(b"z1,%x,1" % bp)
        return out
    finally:
        t.close()


def bench_watch(kind: str, elf: Path, seconds: float) -> dict:
    s = symbols(elf)
    t = Target(kind, elf)
    try:
        t.set_u64(s["wl_iterations"], 1 << 60)
        t.run_to(s["wl_body"])
        addr = s["wl_counter"]
        assert t.c.request(b"Z2,%x,8" % addr) == b"OK"
        # One hit first, with a deadline: a watch that never fires (DR data watchpoints on
        # kvm_pvm) would otherwise run the loop forever.
        t.c.send(b"vCont;c")
        t.c.sock.settimeout(3.0)
        try:
            first = t.c.receive()
        except (socket.timeout, TimeoutError):
            t.c.interrupt()
            t.c.sock.settimeout(30)
            t.c.receive()
            return {"watch_hits_per_s": 0.0, "note": "the watchpoint never fired in 3 s"}
        t.c.sock.settimeout(30)
        assert b"watch" in first, first
        after_access = kind == "guestdbg"

        def hit():
            if not after_access:
                t.c.request(b"z2,%x,8" % addr)
                t.step()
                t.c.request(b"Z2,%x,8" % addr)
            r = t.cont()
            assert b"watch" in r, r
        return {"watch_hits_per_s": rate(hit, seconds)}
    finally:
        t.close()


def bench_speed(kind: str, loop_elf: Path, turns: int, watch_idle: bool) -> float:
    s = symbols(loop_elf)
    t = Target(kind, loop_elf)
    try:
        t.set_u64(s["loop_iterations"], turns)
        t.run_to(s["main"])
        if watch_idle:
            assert t.c.request(b"Z2,%x,8" % s["idle_page"]) == b"OK"
        assert t.c.request(b"Z1,%x,1" % s["loop_end"]) == b"OK"
        t0 = time.perf_counter()
        r = t.cont()
        dt = time.perf_counter() - t0
        assert r.startswith(b"T"), r
        return 4 * turns / dt / 1e6
    finally:
        t.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=2.0, help="length of each rate measurement")
    ap.add_argument("--turns", type=int, default=1_000_000, help="loop turns for the speed rows")
    ap.add_argument("--targets", default="guestdbg,qemu-kvm,qemu-tcg")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    subprocess.run(["make", "-C", str(GUESTS), "-j2"], check=True, stdout=subprocess.DEVNULL)
    loop_elf, wloop_elf = GUESTS / "build" / "loop.elf", GUESTS / "build" / "wloop.elf"
    results: dict[str, dict] = {}
    for kind in args.targets.split(","):
        r: dict = {}
        try:
            r.update(bench_rsp(kind, loop_elf, args.seconds))
            r.update(bench_watch(kind, wloop_elf, args.seconds))
            r["mips_no_watch"] = bench_speed(kind, loop_elf, args.turns, False)
            r["mips_idle_watch"] = bench_speed(kind, loop_elf, args.turns, True)
        except (OSError, AssertionError) as e:  # a target that fails (or its replies): report what was
            # measured and why the rest was not (socket errors, timeouts and a closed stub are OSErrors)
            r["error"] = f"{type(e).__name__}: {e}"
        results[kind] = r
        print(kind, json.dumps(r), flush=True)
    rows = [("stepi/s", "stepi_per_s"), ("breakpoint hits/s", "break_hits_per_s"),
            ("watch hits/s", "watch_hits_per_s"), ("guest MIPS, no watch", "mips_no_watch"),
            ("guest MIPS, watch on an idle page", "mips_idle_watch")]
    kinds = list(results)
    print(f"\n{'':36}" + "".join(f"{k:>14}" for k in kinds) + "".join(f"{'gdbg/' + k:>16}" for k in kinds[1:]))
    for label, key in rows:
        vals = [results[k].get(key) for k in kinds]
        line = f"{label:36}" + "".join(f"{v:14.2f}" if isinstance(v, float) else f"{'-':>14}" for v in vals)
        for v in vals[1:]:
            line += f"{vals[0] / v:16.2f}" if isinstance(v, float) and v and isinstance(vals[0], float) else f"{'-':>16}"
        print(line)
    for k in kinds:
        g = results[k]
        if g.get("mips_no_watch") and g.get("mips_idle_watch"):
            print(f"{k}: idle-page watch costs {g['mips_no_watch'] / g['mips_idle_watch']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"date": datetime.date.today().isoformat(), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
