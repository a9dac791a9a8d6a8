#!/usr/bin/env python3
"""Benchmark the GDB remote stub through the wire, side by side with QEMU's gdbstub (and udbserver).

Run from the repository root:

    .venv/bin/python bench/bench_rsp.py [--repeat K] [--seconds S] [--json out.json]

A raw RSP client (sockets and a minimal framer; guestdbg.gdb.rsp only decodes the replies)
drives `python -m guestdbg.cli run loop.elf --gdb :0 --wait`, `qemu-system-aarch64 -M virt
-cpu cortex-a57 -semihosting -kernel loop.elf -gdb tcp:127.0.0.1:PORT -S`, and, when a Python
with the `udbserver` package is given (--udbserver-python), a small Unicorn host around it.
All of them run the same ELF. The stubs are measured in one run with their rounds interleaved
(the order rotates each round), because this kind of machine is shared and noisy: compare the
ratios, not the absolute numbers. See bench/README.md for what each row means.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


from guestdbg.gdb import rsp
from guestdbg.board.common import elf_symbols

REPO = Path(__file__).resolve().parent.parent
NEVER_ENDS = 1 << 62  # loop_iterations for the long-lived servers: the loop outlives the test
MEM_BASE = 0x4010_0000  # the image: code and data, no long runs of equal bytes at the start
MEM_WINDOW = 64 << 10  # reads cycle through this much memory from MEM_BASE
# Code in loop.elf that the whole run never executes: homes for never-hit breakpoints.
UNUSED_FUNCTIONS = (
    "exc_common", "uart_put_hexn", "uart_put_hex", "uart_put_hex_nz", "uart_put_dec",
    "uart_put_sdec", "sys_writec", "sys_write0", "sys_exit_extended", "psci_call",
    "psci_system_off", "default_exception_report", "memset", "memcpy", "memmove", "memcmp",
)
HW_BPS = 6  # guestdbg's default --brps
SW_BPS = 6

UDB_HOST = r'''
import sys
from elftools.elf.elffile import ELFFile
from unicorn import UC_ARCH_ARM64, UC_MODE_ARM, UC_HOOK_INTR, Uc
from udbserver import udbserver

elf, port = sys.argv[1], int(sys.argv[2])
uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
uc.mem_map(0x40000000, 128 << 20)   # virt RAM
uc.mem_map(0x09000000, 0x1000)      # PL011 as plain RAM: FR reads 0, so TX is never full
with open(elf, "rb") as f:
    e = ELFFile(f)
    for seg in e.iter_segments():
        if seg["p_type"] == "PT_LOAD" and seg["p_filesz"]:
            uc.mem_write(seg["p_paddr"], seg.data())
    entry = e["e_entry"]
uc.hook_add(UC_HOOK_INTR, lambda uc, intno, data: uc.emu_stop())  # semihosting HLT: the end
udbserver(uc, port, entry)  # arms a hook: the server starts when emulation reaches entry
print("ready", flush=True)
uc.emu_start(entry, 0)
'''


# ---------------------------------------------------------------------------------- guest
def build_guests(out: Path) -> Path:
    subprocess.run(["make", "-s", "-C", str(REPO / "guests"), f"O={out}", "-j2"], check=True,
                   stdout=subprocess.DEVNULL)
    return out




def loop_insns(n: int) -> int:
    return 5 + 4 * n


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------- the client
class RspError(RuntimeError):
    pass


class RspClient:
    """A minimal, synchronous RSP client: one request, one reply.

    In ack mode, the `+` for a reply is sent together with the next request (one write per
    request, as QEMU and guestdbg do not wait for acks); QStartNoAckMode is used when offered.
    """

    def __init__(self, port: int, *, timeout: float = 20.0, connect_for: float = 15.0):
        deadline = time.monotonic() + connect_for
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.ack = True
        self._ack_due = b""
        self.features = b""

    def handshake(self) -> bool:
        """qSupported, then QStartNoAckMode if offered. Returns whether no-ack mode is on."""
        self.features = self.request(b"qSupported:multiprocess+;swbreak+;hwbreak+;vContSupported+")
        if b"QStartNoAckMode+" in self.features.split(b";"):
            if self.request(b"QStartNoAckMode") == b"OK":
                self.ack = False
                self._ack_due = b""
        return not self.ack

    def send(self, payload: bytes) -> None:
        self.sock.sendall(self._ack_due + b"$%s#%02x" % (payload, sum(payload) & 0xFF))
        self._ack_due = b""

    def recv(self) -> bytes:
        buf = self.buf
        while True:
            start = buf.find(b"$")
            if start >= 0:
                end = buf.find(b"#", start)
                if end >= 0 and len(buf) >= end + 3:
                    body = bytes(buf[start + 1:end])
                    if int(buf[end + 1:end + 3], 16) != sum(body) & 0xFF:
                        raise RspError(f"bad checksum on {body[:40]!r}")
                    del buf[:end + 3]
                    if self.ack:
                        self._ack_due = b"+"
                    return rsp.decode_payload(body)
            elif buf:
                buf.clear()  # acks and noise before a packet
            data = self.sock.recv(1 << 16)
            if not data:
                raise RspError("connection closed")
            buf += data

    def request(self, payload: bytes) -> bytes:
        self.send(payload)
        return self.recv()

    def resume(self, payload: bytes) -> bytes:
        """`c`/`s`: the stop reply, skipping console output packets."""
        self.send(payload)
        while True:
            reply = self.recv()
            if reply[:1] == b"O" and reply != b"OK":
                continue
            return reply

    def ok(self, payload: bytes) -> None:
        reply = self.request(payload)
        if reply != b"OK":
            raise RspError(f"{payload!r} -> {reply!r}")

    def close(self) -> None:
        try:
            if self._ack_due:
                self.sock.sendall(self._ack_due)
        except OSError:
            pass
        self.sock.close()


def write_u64(c: RspClient, addr: int, value: int) -> None:
    c.ok(b"M%x,8:%s" % (addr, value.to_bytes(8, "little").hex().encode()))


def expect_stop(reply: bytes, what: str) -> None:
    if reply[:1] not in (b"T", b"S"):
        raise RspError(f"{what}: expected a stop reply, got {reply[:60]!r}")


# ---------------------------------------------------------------------------------- targets
class Target:
    """One stub process with the loop guest loaded and stopped at its entry."""

    name = "?"

    def __init__(self, elf: Path):
        self.elf = elf
        self.proc: subprocess.Popen | None = None
        self.client: RspClient | None = None

    def start(self) -> RspClient:
        raise NotImplementedError

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None


class GuestdbgTarget(Target):
    name = "guestdbg"
    src: Path | None = None  # another tree's src/ to run instead (a baseline)

    def start(self) -> RspClient:
        env = None
        if self.src is not None:
            env = {**os.environ, "PYTHONPATH": str(self.src)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "guestdbg.cli", "run", str(self.elf), "--gdb", ":0", "--wait"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        for line in self.proc.stderr:  # "guestdbg: waiting for a GDB connection on tcp:127.0.0.1:PORT"
            text = line.decode(errors="replace")
            if "waiting for a GDB connection on tcp:" in text:
                port = int(text.rsplit(":", 1)[1])
                break
        else:
            raise RuntimeError(f"guestdbg did not start (exit {self.proc.wait()})")
        # Keep draining stderr so the server never blocks on a full pipe.
        import threading
        threading.Thread(target=lambda p=self.proc: [None for _ in p.stderr], daemon=True).start()
        self.client = RspClient(port)
        return self.client


class BaselineTarget(GuestdbgTarget):
    """guestdbg from another source tree (--baseline-src): before/after in the same run."""

    name = "baseline"


class QemuTarget(Target):
    name = "qemu"
    binary = "qemu-system-aarch64"

    def start(self) -> RspClient:
        port = free_port()
        self.proc = subprocess.Popen(
            [self.binary, "-M", "virt", "-cpu", "cortex-a57", "-nographic", "-monitor", "none",
             "-serial", "null", "-semihosting", "-kernel", str(self.elf),
             "-gdb", f"tcp:127.0.0.1:{port}", "-S"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client = RspClient(port)
        return self.client


class UdbTarget(Target):
    name = "udbserver"
    python = ""

    def start(self) -> RspClient:
        port = free_port()
        host = Path(tempfile.gettempdir()) / "guestdbg_bench_udb_host.py"
        host.write_text(UDB_HOST)
        self.proc = subprocess.Popen([self.python, str(host), str(self.elf), str(port)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        if self.proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("udbserver host did not start")
        self.client = RspClient(port)
        return self.client


# ---------------------------------------------------------------------------------- protocol rows
class Session:
    """A long-lived stub: the guest is parked inside its endless loop for the protocol rows."""

    def __init__(self, target: Target, sym: dict[str, int]):
        self.target = target
        self.sym = sym
        c = self.c = target.start()
        self.no_ack = c.handshake()
        c.request(b"?")
        write_u64(c, sym["loop_iterations"], NEVER_ENDS)
        bp = sym["loop_body"]
        c.ok(b"Z0,%x,4" % bp)
        expect_stop(c.resume(b"c"), "run to loop_body")
        c.ok(b"z0,%x,4" % bp)
        self.mem_chunk = self._probe_mem_chunk()
        # The thread id as the stub spells it (QEMU "p01.01" with multiprocess+, guestdbg "1").
        self.thread_id = c.request(b"qfThreadInfo")[1:].split(b",")[0]
        self.cpu_us: dict[str, list[float]] = {}  # method name -> stub CPU µs per operation

    def _probe_mem_chunk(self) -> int:
        """The largest `m` length the stub answers in full (tries 16 KiB down)."""
        size = 0x4000
        while size >= 64:
            reply = self.c.request(b"m%x,%x" % (MEM_BASE, size))
            if reply[:1] != b"E" and reply:
                return min(size, len(reply) // 2)
            size //= 2
        raise RspError("m does not work")

    def close(self) -> None:
        self.target.stop()

    # -- one metric each: returns (operations, seconds) --
    def timed(self, op, seconds: float) -> float:
        n = 0
        cpu0 = stub_cpu_seconds(self.target.proc)
        t0 = time.perf_counter()
        deadline = t0 + seconds
        while True:
            op()
            n += 1
            if n & 7 == 0 and time.perf_counter() >= deadline:
                break
        rate = n / (time.perf_counter() - t0)
        cpu1 = stub_cpu_seconds(self.target.proc)
        if cpu0 is not None and cpu1 is not None:
            # What the stub process itself spends per operation: the client's own cost (the same
            # Python client for every stub) is not in it.
            self.cpu_us.setdefault(sys._getframe(1).f_code.co_name, []).append((cpu1 - cpu0) / n * 1e6)
        return rate

    def empty(self, seconds: float) -> float:
        c = self.c

        def op():
            c.send(b"qC")
            c.recv()
        return self.timed(op, seconds)

    def regs_g(self, seconds: float) -> float:
        c = self.c

        def op():
            c.send(b"g")
            c.recv()
        return self.timed(op, seconds)

    def step(self, seconds: float) -> float:
        c = self.c

        def op():
            reply = c.resume(b"s")
            if reply[:1] not in (b"T", b"S"):
                raise RspError(f"s -> {reply[:60]!r}")
        return self.timed(op, seconds)

    def bp_round_trip(self, seconds: float) -> float:
        """Z0 at loop_body, then (z0, s, Z0, c) as a real client steps off a breakpoint."""
        c = self.c
        z = b"z0,%x,4" % self.sym["loop_body"]
        Z = b"Z0,%x,4" % self.sym["loop_body"]
        c.ok(Z)
        expect_stop(c.resume(b"c"), "first hit")

        def op():
            c.send(z)
            c.recv()
            c.resume(b"s")
            c.send(Z)
            c.recv()
            reply = c.resume(b"c")
            if reply[:1] not in (b"T", b"S"):
                raise RspError(f"c -> {reply[:60]!r}")
        try:
            return self.timed(op, seconds)
        finally:
            c.ok(z)

    def interrupt(self, seconds: float) -> float:
        """`c` into the endless loop, then Ctrl-C (0x03) at once: the stop reply's round trip
        (what tests used to time; speed belongs here, against QEMU in the same run)."""
        c = self.c

        def op():
            c.send(b"c")
            c.sock.sendall(b"\x03")
            while True:
                reply = c.recv()
                if reply[:1] != b"O" or reply == b"OK":
                    break
            if reply[:1] not in (b"T", b"S"):
                raise RspError(f"Ctrl-C -> {reply[:60]!r}")
        return self.timed(op, seconds)

    def mem_reader(self, chunk: int):
        c = self.c
        state = {"addr": MEM_BASE}

        def op():
            addr = state["addr"]
            c.send(b"m%x,%x" % (addr, chunk))
            reply = c.recv()
            if len(reply) != 2 * chunk:
                raise RspError(f"m{addr:x},{chunk:x} -> {len(reply)} hex digits: {reply[:20]!r}")
            addr += chunk
            state["addr"] = MEM_BASE if addr + chunk > MEM_BASE + MEM_WINDOW else addr
        return op

    def mem_2048(self, seconds: float) -> float:
        return self.timed(self.mem_reader(2048), seconds) * 2048 / 1e6

    def mem_max(self, seconds: float) -> float:
        return self.timed(self.mem_reader(self.mem_chunk), seconds) * self.mem_chunk / 1e6


    # -- per-packet latency: what gdb sends around each stop, every packet timed on its own --
    def latency_cycle(self, seconds: float, samples: dict[str, list[float]]) -> None:
        """Repeat, for `seconds`, the packets real gdb-multiarch 13 sends for a `stepi` and a
        `continue` to a breakpoint (traced with `set debug remote 1`, the same against both
        stubs): the step and the continue (vCont, up to the stop reply), Z0/z0 around them, the
        small `m` reads around PC (gdb repeats the same ones), its 64-byte prologue read, the
        thread list, and the `g` and `p` a client without expedited registers needs. Each
        packet's round trip goes into samples[key], in µs."""
        c = self.c
        bp = self.sym["loop_body"]
        tid = self.thread_id
        z, Z = b"z0,%x,4" % bp, b"Z0,%x,4" % bp
        m4 = b"m%x,4" % bp
        m4b = b"m%x,4" % (bp + 4)
        m64 = b"m%x,40" % (bp & ~0x3F)
        step = b"vCont;s:%s" % tid
        cont = b"vCont;c"
        clock = time.perf_counter
        c.ok(Z)
        expect_stop(c.resume(b"c"), "first hit")

        def timed(key: str, payload: bytes, stop: bool = False) -> bytes:
            t0 = clock()
            reply = c.resume(payload) if stop else c.request(payload)
            samples.setdefault(key, []).append((clock() - t0) * 1e6)
            return reply

        deadline = clock() + seconds
        try:
            while clock() < deadline:
                timed("z", z)
                expect_stop(timed("step", step, stop=True), "vCont;s")
                timed("m4", m4b)
                timed("m4", m4)
                timed("m4", m4b)
                timed("m64", m64)
                timed("g", b"g")
                timed("p", b"p20")
                timed("qfThreadInfo", b"qfThreadInfo")
                timed("qsThreadInfo", b"qsThreadInfo")
                timed("Z", Z)
                expect_stop(timed("cont", cont, stop=True), "vCont;c")
                timed("m4", m4)
                timed("m4", m4)
        finally:
            c.ok(z)


# Per-packet latency rows (Session.latency_cycle keys): key, label.
LATENCY_ROWS = [
    ("m4", "`m` 4 bytes (around PC)"),
    ("m64", "`m` 64 bytes"),
    ("g", "`g`"),
    ("p", "`p` (pc)"),
    ("qfThreadInfo", "`qfThreadInfo`"),
    ("qsThreadInfo", "`qsThreadInfo`"),
    ("Z", "`Z0`"),
    ("z", "`z0`"),
    ("step", "`vCont;s` + stop reply"),
    ("cont", "`vCont;c` + stop reply (bp 3 insns on)"),
]


PROTOCOL_ROWS = [
    # key, label, method, unit
    ("empty", "empty packet (qC) round trips/s", "empty", "/s"),
    ("g", "`g` round trips/s", "regs_g", "/s"),
    ("step", "`s` round trips/s (s + stop reply)", "step", "/s"),
    ("bp", "bp hit round trips/s (z0, s, Z0, c)", "bp_round_trip", "/s"),
    ("ctrlc", "Ctrl-C round trips/s (c, 0x03, stop reply)", "interrupt", "/s"),
    ("m2048", "`m` 2048 B, MB/s", "mem_2048", "MB/s"),
    ("mmax", "`m` largest accepted, MB/s", "mem_max", "MB/s"),
]


# ---------------------------------------------------------------------------------- free running
def mips_trial(target: Target, sym: dict[str, int], n: int, breakpoints: list[bytes]) -> float:
    """A fresh stub: patch N, arm `breakpoints` (Z packets), time `c` to the W reply."""
    try:
        c = target.start()
        c.handshake()
        c.request(b"?")
        write_u64(c, sym["loop_iterations"], n)
        for z in breakpoints:
            c.ok(z)
        t0 = time.perf_counter()
        reply = c.resume(b"c")
        dt = time.perf_counter() - t0
        if not reply.startswith(b"W00"):
            raise RspError(f"{target.name}: c -> {reply[:60]!r}, expected W00")
        return loop_insns(n) / dt / 1e6
    finally:
        target.stop()


def guestdbg_breakpoints(sym: dict[str, int]) -> list[bytes]:
    hw = [b"Z1,%x,4" % sym[f] for f in UNUSED_FUNCTIONS[:HW_BPS]]
    sw = [b"Z0,%x,4" % sym[f] for f in UNUSED_FUNCTIONS[HW_BPS:HW_BPS + SW_BPS]]
    return hw + sw


def one_breakpoint(sym: dict[str, int]) -> list[bytes]:
    return [b"Z0,%x,4" % sym[UNUSED_FUNCTIONS[-1]]]


# ---------------------------------------------------------------------------------- report
def stub_cpu_seconds(proc) -> float | None:
    """User + system CPU seconds of a stub process and its threads (Linux /proc)."""
    if proc is None:
        return None
    try:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summary(samples: list[float]) -> dict:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "samples": samples}


def fmt(v: float) -> str:
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--seconds", type=float, default=0.4, help="length of one protocol measurement (default 0.4)")
    ap.add_argument("--run-seconds", type=float, default=1.0,
                    help="target length of one free-running run; N is calibrated per stub (default 1.0)")
    ap.add_argument("--mips-repeat", type=int, default=3, help="free-running rounds (default 3)")
    ap.add_argument("--no-mips", action="store_true", help="skip the free-running rows")
    ap.add_argument("--guest-dir", type=Path, help="built guests (default: build into a temp dir)")
    ap.add_argument("--qemu", default="qemu-system-aarch64", help="QEMU binary (skipped if not found)")
    ap.add_argument("--udbserver-python", metavar="PYTHON",
                    help="a Python with `udbserver`, `unicorn` and `pyelftools` installed; adds udbserver rows")
    ap.add_argument("--baseline-src", type=Path, metavar="DIR",
                    help="also run guestdbg from DIR (another tree's src/, e.g. from `git archive`) "
                         "as the contender `baseline`")
    ap.add_argument("--latency-seconds", type=float, default=1.0,
                    help="length of one per-packet latency round (default 1.0; 0 skips them)")
    ap.add_argument("--latency-only", action="store_true",
                    help="only the per-packet latency rows (no throughput or free-run rows)")
    ap.add_argument("--json", type=Path, help="write every sample, medians and ratios here")
    args = ap.parse_args(argv)

    started = time.monotonic()
    tmp = None
    if args.guest_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_rsp_")
        guest_dir = build_guests(Path(tmp.name))
    else:
        guest_dir = args.guest_dir
    elf = guest_dir / "loop.elf"
    sym = elf_symbols(elf)

    kinds: list[type[Target]] = [GuestdbgTarget]
    if args.baseline_src:
        BaselineTarget.src = args.baseline_src.resolve()
        kinds.append(BaselineTarget)
    QemuTarget.binary = args.qemu
    if shutil.which(args.qemu):
        kinds.append(QemuTarget)
    else:
        print(f"note: {args.qemu} not found; QEMU rows skipped", file=sys.stderr)
    if args.udbserver_python:
        UdbTarget.python = args.udbserver_python
        kinds.append(UdbTarget)
    names = [k.name for k in kinds]

    # ---- protocol rows: one long-lived server per stub
    sessions: dict[str, Session] = {}
    info: dict[str, dict] = {}
    for kind in kinds:
        s = Session(kind(elf), sym)
        sessions[kind.name] = s
        info[kind.name] = {"no_ack": s.no_ack, "m_max": s.mem_chunk,
                           "features": s.c.features.decode(errors="replace")}
    proto: dict[str, dict[str, list[float]]] = {k: {n: [] for n in names} for k, *_ in PROTOCOL_ROWS}
    failed: dict[str, str] = {}
    # latency[name][key]: per round, the median µs of that packet in the round
    latency: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    rows_wanted = [] if args.latency_only else PROTOCOL_ROWS
    if args.latency_only:
        args.no_mips = True
    try:
        for rnd in range(args.repeat):
            order = names[rnd % len(names):] + names[:rnd % len(names)]
            if args.latency_seconds > 0:
                # Contenders interleaved in slices of a tenth of a round each, so that a burst of
                # load on the shared machine hits both.
                for _ in range(10):
                    for name in order:
                        if (name, "latency") in failed:
                            continue
                        samples: dict[str, list[float]] = {}
                        try:
                            sessions[name].latency_cycle(args.latency_seconds / 10, samples)
                        except (RspError, OSError) as e:
                            failed[(name, "latency")] = f"{type(e).__name__}: {e}"
                            print(f"note: {name} latency: {e}", file=sys.stderr)
                        for key, v in samples.items():
                            latency[name].setdefault(key, []).extend(v)
            for key, _, method, _ in rows_wanted:
                for name in order:
                    if (name, key) in failed:
                        continue
                    try:
                        proto[key][name].append(getattr(sessions[name], method)(args.seconds))
                    except (RspError, OSError) as e:
                        failed[(name, key)] = f"{type(e).__name__}: {e}"
                        print(f"note: {name} {key}: {e}", file=sys.stderr)
    finally:
        cpu_per_op = {name: {m: statistics.median(v) for m, v in s.cpu_us.items()} for name, s in sessions.items()}
        for s in sessions.values():
            s.close()

    # ---- free running with breakpoints armed, one fresh server per run
    mips: dict[str, list[float]] = {}
    mips_n: dict[str, int] = {}
    mips_bps: dict[str, list[str]] = {}
    if not args.no_mips:
        plans = {}
        for kind in kinds:
            bps = guestdbg_breakpoints(sym) if issubclass(kind, GuestdbgTarget) else one_breakpoint(sym)
            probe_n = 25_000_000 if issubclass(kind, GuestdbgTarget) else 2_500_000
            try:
                speed = mips_trial(kind(elf), sym, probe_n, bps)  # also warms up the caches
            except (RspError, OSError, RuntimeError) as e:
                print(f"note: {kind.name} free-run: {e}", file=sys.stderr)
                failed[(kind.name, "mips")] = str(e)
                continue
            n = max(1000, int(speed * 1e6 * args.run_seconds / 4))
            plans[kind.name] = (kind, n, bps)
            mips[kind.name], mips_n[kind.name] = [], n
            mips_bps[kind.name] = [b.decode() for b in bps]
        pnames = list(plans)
        for rnd in range(args.mips_repeat):
            for name in pnames[rnd % max(1, len(pnames)):] + pnames[:rnd % max(1, len(pnames))]:
                kind, n, bps = plans[name]
                mips[name].append(mips_trial(kind(elf), sym, n, bps))

    # ---- report
    rows = []
    for key, label, _, unit in rows_wanted:
        rows.append((key, label, {n: proto[key][n] for n in names if proto[key][n]}))
    if mips:
        label = (f"free-run MIPS, guestdbg {HW_BPS} hw + {SW_BPS} sw bp armed; "
                 "others 1 Z0 armed (never hit)")
        rows.append(("mips", label, mips))
    results = {}
    head = f"{'metric':<44}" + "".join(f"{n:>14}" for n in names)
    if "qemu" in names:
        head += f"{'guestdbg/qemu':>15}{'(paired)':>10}"
    print()
    print(head)
    print("-" * len(head))
    for key, label, data in rows:
        entry = {n: summary(v) for n, v in data.items()}
        line = f"{label[:43]:<44}" + "".join(
            f"{fmt(entry[n]['median']) if n in entry else 'n/a':>14}" for n in names)
        if "guestdbg" in entry and "qemu" in entry:
            g, q = data["guestdbg"], data["qemu"]
            ratio = entry["guestdbg"]["median"] / entry["qemu"]["median"]
            paired = statistics.median(a / b for a, b in zip(g, q))
            entry["ratio_guestdbg_qemu"] = ratio
            entry["ratio_paired"] = paired
            line += f"{ratio:>15.2f}{paired:>10.2f}"
        if "guestdbg" in entry and "udbserver" in entry:
            entry["ratio_guestdbg_udbserver"] = entry["guestdbg"]["median"] / entry["udbserver"]["median"]
        print(line)
        results[key] = {"label": label, **entry}
    if any(latency.values()):
        print()
        head = f"{'per packet, median µs (client included)':<44}" + "".join(f"{n:>14}" for n in names)
        if "qemu" in names:
            head += f"{'guestdbg/qemu':>15}" + (f"{'baseline/qemu':>15}" if "baseline" in names else "")
        print(head)
        print("-" * len(head))
        lat_results = {}
        for key, label in LATENCY_ROWS:
            meds = {n: statistics.median(latency[n][key]) for n in names if latency[n].get(key)}
            line = f"{label[:43]:<44}" + "".join(f"{meds[n]:>14.1f}" if n in meds else f"{'n/a':>14}"
                                                   for n in names)
            entry: dict = {n: {"median_us": v, "count": len(latency[n][key]),
                               "p10_us": statistics.quantiles(latency[n][key], n=10)[0],
                               "p90_us": statistics.quantiles(latency[n][key], n=10)[-1]}
                           for n, v in meds.items()}
            if "guestdbg" in meds and "qemu" in meds:
                entry["ratio_guestdbg_qemu"] = meds["guestdbg"] / meds["qemu"]
                line += f"{entry['ratio_guestdbg_qemu']:>15.2f}"
                if "baseline" in meds:
                    entry["ratio_baseline_qemu"] = meds["baseline"] / meds["qemu"]
                    line += f"{entry['ratio_baseline_qemu']:>15.2f}"
            print(line)
            lat_results[key] = {"label": label, **entry}
        results["latency"] = lat_results
    print()
    methods = [(method, label) for _, label, method, _ in rows_wanted]
    print("stub CPU per operation, µs (median; the client's own time excluded)")
    for method, label in methods:
        cells = [cpu_per_op.get(n, {}).get(method) for n in names]
        line = f"  {label[:42]:<42}" + "".join(f"{c:>14.1f}" if c is not None else f"{'n/a':>14}" for c in cells)
        if cells[0] is not None and "qemu" in names and cpu_per_op.get("qemu", {}).get(method):
            line += f"{cells[0] / cpu_per_op['qemu'][method]:>15.2f}"
        print(line)
    results["stub_cpu_us_per_op"] = cpu_per_op
    print()
    for name in names:
        i = info[name]
        print(f"{name}: no-ack mode {'on' if i['no_ack'] else 'off (not offered)'}, largest m = {i['m_max']} bytes"
              + (f", N = {mips_n[name]:,}" if name in mips_n else ""))
    if "qemu" in names:
        targets = [("step", 3.0, "steps/s >= 3x QEMU"), ("m2048", 1.0, "m 2048 B >= QEMU"),
                   ("mmax", 1.0, "m largest >= QEMU"), ("mips", 1.0, "MIPS with bps armed > QEMU with 1 bp")]
        for key, want, text in targets:
            r = results.get(key, {}).get("ratio_guestdbg_qemu")
            if r is not None:
                print(f"target {text}: guestdbg/qemu = {r:.2f} -> {'met' if r >= want else 'NOT met'}")
    for (name, key), why in failed.items():
        print(f"skipped {name} {key}: {why}")
    elapsed = time.monotonic() - started
    print(f"\n{args.repeat} protocol rounds of {args.seconds}s, {args.mips_repeat} free-run rounds, {elapsed:.0f} s")

    if args.json:
        out = {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "host": {"python": platform.python_version(), "machine": platform.machine(),
                     "cpus": os.cpu_count()},
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "stubs": info, "mips_iterations": mips_n, "mips_breakpoints": mips_bps,
            "results": results, "skipped": {f"{n} {k}": v for (n, k), v in failed.items()},
            "seconds": elapsed,
        }
        args.json.write_text(json.dumps(out, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
