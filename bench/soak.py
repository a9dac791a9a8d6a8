"""Soak the GDB stub: many breakpoint insert/remove cycles, many step round trips, many
connections; memory must not grow and the guest must still compute the right thing.

    .venv/bin/python -m bench.soak                       # 100k cycles, 100k steps, 1000 connections
    .venv/bin/python -m bench.soak --cycles 2000 --steps 2000 --connections 50   # quick

The stub runs in this process (so its memory is measured: RSS and tracemalloc), on a unix
socket, with the `loop` guest; a raw RSP client drives it. tests/integration/test_soak.py runs a short one.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


from guestdbg.board.virt import VirtMachine  # noqa: E402
from guestdbg.board.common import elf_symbols as symbols  # noqa: E402
from guestdbg.gdb.client import RspClient  # noqa: E402
from guestdbg.gdb.server import Endpoint, GdbServer  # noqa: E402


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")




def soak(guest_dir: Path, *, cycles: int, steps: int, connections: int, log=print) -> dict:
    elf = guest_dir / "loop.elf"
    sym = symbols(elf)
    out = bytearray()
    machine = VirtMachine(console=out.extend)
    machine.load_elf(elf)
    sock_path = Path(tempfile.mkdtemp()) / "stub.sock"
    server = GdbServer(machine, Endpoint("unix", path=str(sock_path)), wait=True, log=lambda m: None)
    server.listen()
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("status", server.serve()), daemon=True)
    thread.start()
    c = RspClient.connect(str(sock_path))
    c.start_no_ack()
    assert c.request(b"?").startswith(b"T05")

    body = sym["loop_body"]
    # Step into the loop first, so steps stay inside it for the whole soak.
    assert c.request(b"Z1,%x,4" % body) == b"OK"
    assert c.request(b"vCont;c").startswith(b"T05")
    assert c.request(b"z1,%x,4" % body) == b"OK"

    tracemalloc.start()
    samples = {}

    def checkpoint(name):
        gc.collect()  # count what is alive, not cyclic garbage the collector has yet to free
        samples[name] = {"rss": rss_bytes(), "traced": tracemalloc.get_traced_memory()[0]}

    checkpoint("start")
    t0 = time.perf_counter()
    for i in range(cycles):
        assert c.request(b"Z0,%x,4" % (body + 8)) == b"OK"
        assert c.request(b"z0,%x,4" % (body + 8)) == b"OK"
        if i == cycles // 10:
            checkpoint("cycles_10pct")
        if i == cycles // 2:
            checkpoint("cycles_50pct")
    t_cycles = time.perf_counter() - t0
    checkpoint("after_cycles")
    t0 = time.perf_counter()
    for i in range(steps):
        reply = c.request(b"vCont;s:1")
        assert reply.startswith(b"T05"), reply
        if i == steps // 10:
            checkpoint("steps_10pct")
        if i == steps // 2:
            checkpoint("steps_50pct")
    t_steps = time.perf_counter() - t0
    checkpoint("after_steps")
    c.close()
    t0 = time.perf_counter()
    for i in range(connections):
        if i == connections // 2:
            checkpoint("connections_50pct")
        k = RspClient.connect(str(sock_path))
        assert k.request(b"qSupported:swbreak+;hwbreak+").startswith(b"PacketSize")
        assert k.request(b"?").startswith(b"T")
        k.close()
    t_conn = time.perf_counter() - t0
    checkpoint("after_connections")

    # The guest still computes the right thing.
    c = RspClient.connect(str(sock_path))
    reply = c.request(b"vCont;c")
    c.close()
    thread.join(timeout=60)
    tracemalloc.stop()
    report = {
        "cycles": cycles, "steps": steps, "connections": connections,
        "cycles_per_s": cycles / t_cycles if cycles else None,
        "steps_per_s": steps / t_steps if steps else None,
        "connections_per_s": connections / t_conn if connections else None,
        "final_reply": reply.decode(), "guest_output": out.decode(), "exit_status": result.get("status"),
        "memory": samples,
        "rss_growth_after_warmup": samples["after_connections"]["rss"] - samples["cycles_10pct"]["rss"]
        if cycles else None,
        "traced_growth_after_warmup": samples["after_connections"]["traced"] - samples["cycles_10pct"]["traced"]
        if cycles else None,
        # Unicorn's translation buffer (32 MiB) fills as steps translate code afresh, then is
        # flushed and reused: RSS rises to that bound, then stays flat.
        "rss_growth_second_half_of_steps": samples["after_steps"]["rss"] - samples["steps_50pct"]["rss"]
        if steps else None,
        # A leak grows with the number of operations: compare each phase's second half, when the
        # first half has warmed every cache up.
        "traced_growth_second_half": {
            phase: samples[end]["traced"] - samples[mid]["traced"]
            for phase, mid, end in (("cycles", "cycles_50pct", "after_cycles"), ("steps", "steps_50pct", "after_steps"),
                                    ("connections", "connections_50pct", "after_connections"))
            if mid in samples},
    }
    log(json.dumps({k: v for k, v in report.items() if k != "memory"}, indent=2))
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cycles", type=int, default=100_000)
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--guest-dir", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.guest_dir is None:
        from tests.helpers.qemu_runner import build_guests
        args.guest_dir = build_guests(Path(tempfile.mkdtemp()) / "guests")
    report = soak(args.guest_dir, cycles=args.cycles, steps=args.steps, connections=args.connections)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    ok = report["final_reply"] == "W00" and report["guest_output"] == "loop: done\n" and report["exit_status"] == 0
    print("soak:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
