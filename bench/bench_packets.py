#!/usr/bin/env python3
"""What each packet gdb sends around a stop costs the stub itself, in-process: no sockets, no
client, no other process, so the numbers hardly move on a busy machine (bench_rsp.py has the
wire, against QEMU).

    .venv/bin/python bench/bench_packets.py [--guest-dir D] [--rounds N]
    PYTHONPATH=/tmp/old/src .venv/bin/python bench/bench_packets.py   # another tree (a baseline)

Each packet goes through what the server does with it: the protocol core frames it in
(`RspConnection.receive_data`, `next_event`), the session answers it (`GdbSession.handle`; a
resume runs on the manager and its stop reply comes from `session.stopped`), and the reply is
framed out (`send_packet`/`send_stop_reply`, `data_to_send`). The sequence is bench_rsp's
latency cycle: gdb-multiarch's packets for a `stepi` and a `continue` to a breakpoint in
loop.elf's loop, the `g` and `p` of a client without expedited registers, the thread list.

Two measures per packet kind: the median µs over --rounds cycles, and the Python calls it
makes (sys.setprofile, calls into Python and C functions: deterministic; the median over the
cycle's packets of that kind, so for `m` 4 bytes a read served from what the stop already read).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import guestdbg
from guestdbg.board.common import elf_symbols
from guestdbg.board.virt import VirtConfig, VirtMachine
from guestdbg.debug.manager import GuestDebugManager
from guestdbg.gdb import rsp
from guestdbg.gdb.session import GdbSession, Reply, Resume

REPO = Path(__file__).resolve().parent.parent
NEVER_ENDS = 1 << 62


def cycle(sym: dict[str, int]) -> list[tuple[str, bytes]]:
    bp = sym["loop_body"]
    z, Z = b"z0,%x,4" % bp, b"Z0,%x,4" % bp
    m4, m4b = b"m%x,4" % bp, b"m%x,4" % (bp + 4)
    return [("z", z), ("step", b"vCont;s:1"), ("m4", m4b), ("m4", m4), ("m4", m4b),
            ("m64", b"m%x,40" % (bp & ~0x3F)), ("g", b"g"), ("p", b"p20"),
            ("qfThreadInfo", b"qfThreadInfo"), ("qsThreadInfo", b"qsThreadInfo"),
            ("Z", Z), ("cont", b"vCont;c"), ("m4", m4), ("m4", m4)]


class Stub:
    """The server's path for one packet, without the sockets."""

    def __init__(self, elf: Path, sym: dict[str, int]):
        machine = VirtMachine(VirtConfig())
        machine.load_elf(str(elf))
        self.manager = GuestDebugManager(machine)
        self.session = GdbSession(self.manager)
        self.conn = rsp.RspConnection(packet_size=rsp.PACKET_SIZE)
        self.packet(b"QStartNoAckMode")
        self.conn.start_no_ack()
        self.packet(b"M%x,8:%s" % (sym["loop_iterations"], NEVER_ENDS.to_bytes(8, "little").hex().encode()))
        self.packet(b"Z0,%x,4" % sym["loop_body"])
        self.packet(b"c")

    def packet(self, payload: bytes) -> bytes:
        return self.framed(rsp.frame(payload))

    def framed(self, data: bytes) -> bytes:
        conn = self.conn
        conn.receive_data(data)
        event = conn.next_event()
        assert isinstance(event, rsp.Packet), event
        assert conn.next_event() is rsp.NEED_DATA
        action = self.session.handle(event.payload)
        if isinstance(action, Reply):
            for reply in (action.payload, *action.then):
                conn.send_packet(reply)
        else:
            assert isinstance(action, Resume), action
            conn.resumed()
            conn.send_stop_reply(self.session.stopped(action.run(self.manager)))
        return conn.data_to_send()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--guest-dir", type=Path, help="built guests (default: make -C guests O=/tmp/gb)")
    ap.add_argument("--rounds", type=int, default=2000, help="latency cycles timed (default 2000)")
    args = ap.parse_args(argv)
    guest_dir = args.guest_dir
    if guest_dir is None:
        import subprocess
        guest_dir = Path("/tmp/gb")
        subprocess.run(["make", "-s", "-C", str(REPO / "guests"), f"O={guest_dir}", "-j2"], check=True,
                       stdout=subprocess.DEVNULL)
    elf = guest_dir / "loop.elf"
    sym = elf_symbols(elf)
    stub = Stub(elf, sym)
    packets = [(key, rsp.frame(p)) for key, p in cycle(sym)]  # as the client sends them
    for _ in range(50):  # warm up: translation caches, plans
        for _, p in packets:
            stub.framed(p)

    calls: dict[str, list[int]] = {}
    count = [0]

    def profiler(frame, event, arg):
        if event in ("call", "c_call"):
            count[0] += 1
    for key, p in packets:
        count[0] = 0
        sys.setprofile(profiler)
        stub.framed(p)
        sys.setprofile(None)
        calls.setdefault(key, []).append(count[0])

    times: dict[str, list[float]] = {}
    clock = time.perf_counter
    for _ in range(args.rounds):
        for key, p in packets:
            t0 = clock()
            stub.framed(p)
            times.setdefault(key, []).append((clock() - t0) * 1e6)

    print(f"guestdbg from {Path(guestdbg.__file__).parent}")
    print(f"{'packet':<16}{'median µs':>12}{'Python calls':>14}")
    for key in dict.fromkeys(k for k, _ in packets):
        print(f"{key:<16}{statistics.median(times[key]):>12.1f}{statistics.median(calls[key]):>14.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
