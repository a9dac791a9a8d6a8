#!/usr/bin/env python3
"""Record a gdb ↔ stub conversation, and serve it back to gdb instantly: the floor of what any
stub can reach through gdb-multiarch (bench_gdb_steps.py --floor).

    python bench/gdb_replay.py serve LOG PORT     # the canned stub (one client, then exits)

`record(stub_port)` is a proxy: it listens on a port of its own, forwards one gdb connection
to the stub at stub_port and logs, for every unit gdb sends (a `$…#cc` packet, an ack `+`/`-`
or a Ctrl-C byte), the bytes the stub sent back before gdb's next unit (gdb waits for a reply
before it sends on, so nothing is misattributed). `serve` answers gdb from that log: the i-th
unit gets the i-th recorded reply, so a gdb running the same script gets the same
conversation with no stub work at all (a unit that differs from the log is answered with the
last reply recorded for the same unit, and counted in the exit status). The server is a plain
blocking loop: one recv, a list lookup and one send per packet.
"""

from __future__ import annotations

import json
import re
import select
import socket
import sys
import threading
from pathlib import Path

_UNIT = re.compile(rb"\$[^#]*#..|[+\-\x03]", re.S)


def split_units(buf: bytes) -> tuple[list[bytes], bytes]:
    """Whole units at the front of buf, and the incomplete rest."""
    units = []
    pos = 0
    while pos < len(buf):
        m = _UNIT.match(buf, pos)
        if m is None:
            if buf[pos:pos + 1] == b"$":
                break  # a packet not yet complete
            pos += 1  # stray byte: skip
            continue
        units.append(m.group())
        pos = m.end()
    return units, buf[pos:]


class Recorder:
    """A one-connection proxy in a thread: listen on .port, forward to the stub, log units."""

    def __init__(self, stub_port: int) -> None:
        self.stub_port = stub_port
        self.log: list[list[bytes]] = []  # [unit, reply bytes]
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        client, _ = self.listener.accept()
        try:
            self._forward(client)
        except OSError as e:  # hang up on gdb rather than leave it waiting for a reply
            print(f"gdb_replay: the proxy stopped: {e!r}", file=sys.stderr)
        finally:
            client.close()

    def _forward(self, client: socket.socket) -> None:
        stub = socket.create_connection(("127.0.0.1", self.stub_port))
        pending = b""
        with stub:
            while True:
                ready, _, _ = select.select([client, stub], [], [])
                if client in ready:
                    data = client.recv(65536)
                    if not data:
                        return
                    units, pending = split_units(pending + data)
                    self.log.extend([u, b""] for u in units)
                    stub.sendall(data)
                if stub in ready:
                    data = stub.recv(65536)
                    if not data:
                        return
                    if self.log:
                        self.log[-1][1] += data
                    client.sendall(data)

    def save(self, path: Path) -> None:
        self.thread.join(10)
        path.write_text(json.dumps([[u.decode("latin-1"), r.decode("latin-1")] for u, r in self.log]))


def serve(log_path: Path, port: int) -> int:
    log = [(u.encode("latin-1"), r.encode("latin-1")) for u, r in json.loads(log_path.read_text())]
    by_unit = {u: r for u, r in log}
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(1)
    conn, _ = listener.accept()
    listener.close()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    i = 0
    misses = 0
    first_miss = -1
    pending = b""
    n = len(log)
    with conn:
        while True:
            data = conn.recv(65536)
            if not data:
                break
            units, pending = split_units(pending + data)
            out = []
            for u in units:
                if i < n and log[i][0] == u:
                    out.append(log[i][1])
                    i += 1
                else:
                    if not misses:
                        first_miss = i
                    misses += 1
                    out.append(by_unit.get(u, b"$#00" if u.startswith(b"$") else b""))
            reply = b"".join(out)
            if reply:
                conn.sendall(reply)
    if misses:
        # (A '+' gdb sends for the last reply before it hangs up is one: the proxy had stopped.)
        print(f"gdb_replay: {misses} units not in the log's order, the first at unit {first_miss} of {n}",
              file=sys.stderr)
    return 1 if misses else 0


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "serve":
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(serve(Path(sys.argv[2]), int(sys.argv[3])))
