"""The one place with sockets and threads: the GDB server around a machine.

Two threads. The main thread owns the listening socket and the client connection and runs a
selector loop: bytes in go to the sans-IO protocol core (`rsp.RspConnection`), packets to the
session (`session.GdbSession`), bytes out back to the socket. The vCPU thread runs the guest:
it takes resume requests from a queue and posts stop events back, waking the selector through
a socketpair. Ctrl-C, a lost client and a new client all stop a running guest with
`manager.interrupt()` (KVM_RUN's immediate_exit + a kick).

Repeated reads: while the guest is stopped, gdb sends the same small reads several times (the
words around PC, the thread list). A reply the session marks `repeatable` is remembered by the
connection (rsp rule 15) and a byte-identical request is answered with it straight from the
socket read. After each stop reply the server also answers ahead the reads the client made at
its last stop of the same kind (`_answer_ahead`). Any other packet but a Z or z, a resume, a
stop, or a write to guest memory from anywhere (`manager.memory_generation`) drops them.

Console input: a third thread, the CLI's stdin reader, pushes bytes for the UART and calls
`wake()`. That kick is not a stop: the manager serves the board's `on_intr` (the UART takes the
input) and runs on, so gdb sees a stop reply only for what it asked (Ctrl-C, a step)
or what the guest hit. An interrupt() that raced with another stop is discarded once the vCPU
has reported, so it cannot stop the next continue.

Session lifetime: a lost connection leaves the VM stopped, breakpoints and all, for the next
client; a detach removes all debugger state and lets the guest run free; a second client while
one is attached is refused with a message. The guest ending ends the server with its status,
a debugger's kill with EXIT_KILLED. With no debugger attached (before the first one without
`wait`, after a detach) the guest runs as under `guestdbg run`: a fault, a branch-to-self hang
or `timeout` (counting only those stretches) ends serve() with the GuestFault.

Errors: what a client can cause is the session's to answer; the no-ack switch comes on its
reply (`Reply.start_no_ack`), and every send goes through the connection's state machine, so a
stop reply the protocol does not allow raises LocalProtocolError instead of going out. While
the guest runs, what the guest or the host can cause (GuestFault, a KVM call refused) becomes
a stop the debugger sees. A bug is never turned into either: on the vCPU thread it ends serve()
with the original exception; the one last resort, around the session's handling of a packet,
logs the traceback and answers an error, so one bad packet cannot take the guest down.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import queue
import selectors
import signal
import socket
import stat
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, cast

from guestdbg.board.common import Board, GuestFault
from guestdbg.debug.manager import DebugError, GuestDebugManager, StopEvent, StopKind
from guestdbg.gdb import rsp
from guestdbg.gdb.session import MAX_AHEAD, Detach, GdbSession, Kill, Reply, Resume, error_reply, reads_to_answer_ahead

MAX_OUTPUT_BUFFER = 1 << 20  # a client that stops reading is dropped past this
MAX_QUEUED_PACKETS = 64
EXIT_KILLED = 128 + signal.SIGKILL  # serve()'s status after a kill: what a shell shows for SIGKILL
REFUSAL = "guestdbg: another debugger is already attached; disconnect it first"
REFUSAL_GRACE = 1.0  # seconds a refused client has to send its first packet, and then to hang up


class EndpointError(ValueError):
    pass


@dataclass(frozen=True)
class Endpoint:
    kind: str  # "tcp" or "unix"
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.kind == "unix" else f"tcp:{self.host}:{self.port}"


def parse_endpoint(spec: str, *, allow_remote: bool = False) -> Endpoint:
    """`:PORT` (127.0.0.1), `tcp:HOST:PORT` or `unix:PATH`. A non-loopback HOST needs allow_remote."""
    if spec.startswith("unix:"):
        path = spec[len("unix:"):]
        if not path:
            raise EndpointError("unix: needs a path")
        return Endpoint("unix", path=path)
    rest = spec[len("tcp:"):] if spec.startswith("tcp:") else spec
    host, sep, port_text = rest.rpartition(":")
    if not sep:
        raise EndpointError(f"bad --gdb endpoint {spec!r} (use :PORT, tcp:HOST:PORT or unix:PATH)")
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise EndpointError(f"bad port in {spec!r}") from None
    if not 0 <= port <= 65535:
        raise EndpointError(f"port {port} out of range")
    if not _is_loopback(host) and not allow_remote:
        raise EndpointError(f"refusing to listen on non-loopback address {host!r}: a debug stub can "
                            "rewrite the guest; pass --gdb-allow-remote if you really mean it")
    return Endpoint("tcp", host=host, port=port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class _Client:
    """The attached debugger: its socket, the protocol state of its connection, its session,
    the bytes it has still to read and the packets it sent while the guest ran."""

    sock: socket.socket
    conn: rsp.RspConnection
    session: GdbSession
    outbuf: bytearray = field(default_factory=bytearray)
    pending: list[bytes] = field(default_factory=list)
    events: int = selectors.EVENT_READ  # what the selector waits for on sock now
    # The guest memory's write count when the connection's remembered replies were made (rsp
    # rule 15: they answer repeated pure reads while the guest stays stopped).
    replies_generation: object = None
    # The request frames of the repeatable reads the client made at this stop, and for each
    # kind of stop those of the last one and its PC: what the next such stop answers ahead
    # (_answer_ahead). By kind: after a breakpoint gdb reads around PC, after the step off it
    # it reads nothing and re-inserts the breakpoint.
    asked: set[bytes] = field(default_factory=set)
    stop_kind: StopKind | None = None
    stop_pc: int = 0
    asked_at: dict[StopKind, tuple[set[bytes], int]] = field(default_factory=dict)


@dataclass
class _Refused:
    conn: rsp.RspConnection
    deadline: float  # for its first packet; once answered, for it to hang up
    answered: bool = False


class GdbServer:
    def __init__(self, machine: Board, endpoint: Endpoint, *, wait: bool = False,
                 timeout: float | None = None, log: Callable[[str], None] | None = None):
        self.machine = machine
        self.endpoint = endpoint
        self.wait = wait
        self.timeout = timeout  # seconds the guest may run with no debugger attached
        self.log = log or (lambda msg: print(f"guestdbg: {msg}", file=sys.stderr, flush=True))
        self.manager = GuestDebugManager(machine)
        # dprintf's agent printf runs on the vCPU thread: its text reaches gdb as O packets.
        self.manager.conditions.output = lambda text: self._post(("output", text))
        self._requests: queue.Queue[Resume | str | None] = queue.Queue()  # a Resume, or "free"
        self._events: queue.Queue[tuple[str, object]] = queue.Queue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self._client: _Client | None = None
        self._vcpu_busy = False          # a resume or free run is in progress on the vCPU thread
        self._free_running = False       # running without a debugger
        self._free_seconds = 0.0         # time run without a debugger so far, against timeout
        self._taking_over = threading.Event()  # set before the kick that ends a free run
        self._exit_status: int | None = None
        self._error: BaseException | None = None  # what ends serve() with an exception
        self._refused: dict[socket.socket, _Refused] = {}  # second clients, being turned away
        self._vcpu_thread = threading.Thread(target=self._vcpu_loop, name="guestdbg-vcpu", daemon=True)
        self.address: str | tuple[str, int] | None = None  # the socket path, or (host, port)
        self._where = str(endpoint)

    # ------------------------------------------------------------------ setup
    def listen(self) -> None:
        ep = self.endpoint
        if ep.kind == "unix":
            path = Path(ep.path)
            if path.is_symlink() or (path.exists() and not stat.S_ISSOCK(path.stat().st_mode)):
                raise EndpointError(f"{path} exists and is not a socket; refusing to replace it")
            path.unlink(missing_ok=True)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old = os.umask(0o177)  # created 0600: only this user may attach
            try:
                sock.bind(str(path))
            finally:
                os.umask(old)
            self.address = str(path)
        else:
            family = socket.AF_INET6 if ":" in ep.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((ep.host, ep.port))
            host, port = sock.getsockname()[:2]
            self.address = (host, port)
            self._where = f"tcp:{host}:{port}"
            if not _is_loopback(ep.host):
                self.log(f"WARNING: GDB stub listening on non-loopback {ep.host}:{port}; "
                         "anyone who can reach it can read and rewrite the guest")
        sock.listen(4)
        sock.setblocking(False)
        self._listener = sock
        self._sel.register(sock, selectors.EVENT_READ, "accept")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")

    def serve(self) -> int:
        """Run until the guest ends (its exit status) or a client kills it (EXIT_KILLED). Raises
        the GuestFault that ends a guest running with no debugger attached, BrokenPipeError
        when the guest's console has no reader any more, and whatever bug stopped the vCPU
        thread (with its traceback)."""
        if self._listener is None:
            self.listen()
        self.log(f"waiting for a GDB connection on {self._where}" if self.wait
                 else f"guest running; a debugger may attach at {self._where}")
        self._vcpu_thread.start()
        if not self.wait:
            self._start_free_run()
        try:
            while self._exit_status is None and self._error is None:
                for key, mask in self._sel.select(timeout=0.5):
                    if key.data == "client":
                        if mask & selectors.EVENT_READ:
                            self._client_readable()
                        if mask & selectors.EVENT_WRITE:
                            self._flush()
                    elif key.data == "wake":
                        self._wake_r.recv(4096)
                        self._drain_events()
                    elif key.data == "accept":
                        self._accept()
                    elif key.data == "refused":
                        self._refused_readable(cast(socket.socket, key.fileobj))
                self._expire_refused()
        finally:
            self._shutdown()
        if self._error is not None:
            raise self._error
        assert self._exit_status is not None  # the loop ends with one or the other
        return self._exit_status

    def wake(self) -> None:
        """From any thread: the host has work for the vCPU thread (console input). The guest
        runs on; no debugger sees a stop."""
        self.manager.wake()

    # ------------------------------------------------------------------ vCPU thread
    def _vcpu_loop(self) -> None:
        while True:
            what = self._requests.get()
            if what is None:
                return
            try:
                outcome = self._perform(what)
            except BaseException as e:  # a bug: serve() raises it, traceback and all, not this thread
                outcome = ("fatal", e)
            self._post(outcome)

    def _perform(self, what: Resume | str) -> tuple[str, object]:
        """Run "free" or a client's Resume (a step or continue) and say how it ended, as
        ("free"|"stop"|"fault"|"fatal", payload). A step of one vCPU alone runs on the selector
        thread (one instruction needs no interrupting), the rest on the vCPU thread. What the
        guest or the host can cause is reported here; a bug propagates."""
        try:
            if what == "free":
                return ("free", self._free_run())
            assert isinstance(what, Resume)
            return ("stop", what.run(self.manager))
        except GuestFault as e:
            return ("fault", e)
        except BrokenPipeError as e:  # the guest's console is gone (`| head`): the end, as for the CLI
            return ("fatal", e)
        except (OSError, DebugError) as e:
            # The host refused a KVM call (KvmError), or the guest took away what the debugger's
            # state needs (a page a breakpoint is on): the guest cannot go on from here.
            reason = e.strerror if isinstance(e, OSError) and e.strerror else e
            return ("fault", GuestFault(f"the vCPU cannot run: {reason}"))

    def _free_run(self) -> int | None:
        """The guest's exit status, or None when a debugger takes over (GuestFault for a fault,
        a hang or the timeout, as `guestdbg run` without --gdb)."""
        start = time.monotonic()
        try:
            return self.machine.run_to_exit(timeout=self.timeout, spent=self._free_seconds,
                                            taken_over=self._taking_over.is_set)
        finally:
            self._free_seconds += time.monotonic() - start

    def _post(self, item: tuple[str, object]) -> None:
        self._events.put(item)
        try:
            self._wake_w.send(b"!")
        except OSError:
            pass

    def _start_free_run(self) -> None:
        self._taking_over.clear()
        self._vcpu_busy = self._free_running = True
        self._requests.put("free")

    def _stop_vcpu(self) -> None:
        """Stop whatever the vCPU thread runs and wait for it to report."""
        self._taking_over.set()
        while self._vcpu_busy:
            self.manager.interrupt()
            try:
                item = self._events.get(timeout=1.0)
            except queue.Empty:
                continue
            self._handle_event(item, deliver=False)

    # ------------------------------------------------------------------ events from the vCPU
    def _drain_events(self) -> None:
        while True:
            try:
                item = self._events.get_nowait()
            except queue.Empty:
                return
            self._handle_event(item, deliver=True)

    def _handle_event(self, item: tuple[str, object], *, deliver: bool) -> None:
        kind, payload = item
        if kind == "output":  # console output while the guest runs, ahead of its stop reply
            client = self._client
            if client is not None and deliver and client.conn.state is rsp.ConnectionState.RUNNING:
                text = str(payload).encode()
                for i in range(0, len(text), 1024):  # each O packet well inside PacketSize
                    client.conn.send_packet(b"O" + text[i:i + 1024].hex().encode())
                self._flush()
            else:
                self.log(f"output with no debugger waiting: {str(payload)!r}")
            return
        free = self._free_running
        self._vcpu_busy = False
        self.manager.discard_interrupt()  # a Ctrl-C that lost the race to this stop is moot
        self._free_running = False
        if kind == "fatal" or (free and kind == "fault"):
            self._error = cast(BaseException, payload)  # no debugger to show it to: serve() raises it
            return
        if kind == "free":
            if payload is not None:
                self.log(f"guest exited with status {payload}")
                self._exit_status = cast(int, payload)
            return  # a debugger took over: stay stopped
        if kind == "fault":
            self.log(f"guest fault: {payload}")
            # On the vCPU that ran last (the manager makes it current at every exit).
            event = StopEvent(StopKind.SIGNAL, self.manager.vcpu.pc, signal=11, detail=str(payload),
                              vcpu_id=self.manager.current_vcpu)
        else:
            event = cast(StopEvent, payload)
        client = self._client
        if client is not None and deliver:
            # The client resumed the guest (the connection is RUNNING): this is the stop reply
            # it waits for. Anything else is a bug in the server, and LocalProtocolError says so.
            client.conn.forget_replies()  # (none are kept while it runs: a resume forgets them)
            client.conn.send_stop_reply(client.session.stopped(event))
            self._flush()
            self._answer_ahead(client, event)
            self._process_pending()
        elif client is not None:
            client.session.forget_reads()
            client.session.last_stop = event
        if event.kind is StopKind.EXITED:
            self._exit_status = event.exit_status
            self.log(f"guest exited with status {event.exit_status}")

    def _answer_ahead(self, client: _Client, event: StopEvent) -> None:
        """With the stop reply on its way, answer ahead the reads the client will likely make
        now (session.reads_to_answer_ahead): gdb then finds them remembered (rsp rule 15). It
        is busy with the stop reply meanwhile."""
        if client.stop_kind is not None:
            client.asked_at[client.stop_kind] = (client.asked, client.stop_pc)
        client.asked, client.stop_kind, client.stop_pc = set(), event.kind, event.pc
        asked, last_pc = client.asked_at.get(event.kind, ((), 0))
        if not asked or not client.conn.no_ack or event.kind is StopKind.EXITED:
            return
        requests = []
        for frame in asked:  # (plain frames: what the connection remembers replies by)
            body = frame[frame.index(b"$") + 1:-3]
            requests.append(body)
        client.replies_generation = self.manager.memory_generation
        session = client.session
        for request in reads_to_answer_ahead(requests, last_pc, event.pc):
            try:
                action = session.handle(request)
            except Exception:  # a bug: as _handle_packet, never the server's end
                self.log(f"internal error answering {request[:64]!r} ahead:\n" + traceback.format_exc().rstrip())
                return
            if isinstance(action, Reply) and action.repeatable and not action.then:
                client.conn.remember(request, action.payload)

    # ------------------------------------------------------------------ client
    def _accept(self) -> None:
        assert self._listener is not None
        try:
            sock, _ = self._listener.accept()
        except BlockingIOError:
            return
        if self._client is not None and self._client_gone(self._client):
            self._client_lost()  # its EOF is waiting behind this accept: handle it first
        sock.setblocking(False)
        if self._client is not None:
            self._refused[sock] = _Refused(rsp.RspConnection(), time.monotonic() + REFUSAL_GRACE)
            self._sel.register(sock, selectors.EVENT_READ, "refused")
            self.log("refused a second debugger connection")
            return
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._client = _Client(sock, rsp.RspConnection(packet_size=rsp.PACKET_SIZE),
                               GdbSession(self.manager))
        self._sel.register(sock, selectors.EVENT_READ, "client")
        self._stop_vcpu()  # a debugger attaching to a running guest stops it
        # A previous client that vanished (rather than detached) left its breakpoints and
        # watchpoints armed; they stay, and `monitor info slots` lists them.
        left = self.manager.slots_report()[1:]
        self.log("debugger attached" + (f"; {len(left)} breakpoints/watchpoints from the previous "
                                        "client remain (monitor info slots)" if left else ""))

    @staticmethod
    def _client_gone(client: _Client) -> bool:
        try:
            return client.sock.recv(1, socket.MSG_PEEK) == b""
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True

    def _client_readable(self) -> None:
        client = self._client
        if client is None:
            return
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        conn = client.conn
        if not self._vcpu_busy:
            # A read gdb repeats (it reads the words around PC several times a stop), or one
            # answered ahead: the remembered reply, unless guest memory was written since.
            reply = conn.replay(data)
            if reply is not None and client.replies_generation == self.manager.memory_generation:
                self._send(client, reply)
                if len(client.asked) < MAX_AHEAD:
                    client.asked.add(data)
                return
        conn.receive_data(data)
        while self._client is client:
            event = conn.next_event()
            if event is rsp.NEED_DATA:
                break
            if isinstance(event, rsp.Packet):
                if self._vcpu_busy:
                    if len(client.pending) < MAX_QUEUED_PACKETS:
                        client.pending.append(event.payload)
                    continue
                self._handle_packet(client, event.payload)
            elif isinstance(event, rsp.Closed):
                self._client_lost()
                return
            elif isinstance(event, rsp.Interrupt):
                if self._vcpu_busy:
                    self.manager.interrupt()
        self._flush()

    def _process_pending(self) -> None:
        client = self._client
        while client is not None and client.pending and not self._vcpu_busy and self._client is client:
            self._handle_packet(client, client.pending.pop(0))
        self._flush()

    def _handle_packet(self, client: _Client, payload: bytes) -> None:
        try:
            action = client.session.handle(payload)
        except Exception:
            # The server's one last resort: a bug a packet runs into must not take the guest and
            # the server down with it. It is logged whole (stderr by default), and the packet
            # gets an error reply; errors a client can cause are the session's to answer.
            self.log(f"internal error handling packet {payload[:64]!r}, answered E{errno.EIO:02x}:\n"
                     + traceback.format_exc().rstrip())
            action = error_reply(errno.EIO)
        conn = client.conn
        if isinstance(action, Reply):
            for reply in (action.payload, *action.then):
                conn.send_packet(reply)
            if action.start_no_ack:
                conn.start_no_ack()
            if action.repeatable and not action.then:
                generation = self.manager.memory_generation
                if generation != client.replies_generation:
                    conn.forget_replies()
                    client.replies_generation = generation
                request = conn.remember_reply()
                if request and len(client.asked) < MAX_AHEAD:
                    client.asked.add(request)
            elif not action.keeps_reads:
                conn.forget_replies()  # it may have changed what the remembered replies say
            return
        conn.forget_replies()
        if isinstance(action, Resume):
            conn.resumed()
            if action.step and self._bounded(action):
                # One instruction is bounded: step here rather than hand it to the vCPU thread
                # and back (two thread switches and a socketpair wake-up, most of a step's cost).
                self._handle_event(self._perform(action), deliver=True)
                return
            self._vcpu_busy = True
            self._requests.put(action)
        elif isinstance(action, Detach):
            conn.send_packet(b"OK")
            self._flush()
            self.manager.detach()
            self.log("debugger detached; the guest runs on")
            self._drop_client()
            self._start_free_run()
        elif isinstance(action, Kill):
            # vKill expects OK; `k` the exit it caused: lldb waits for one (gdb reads none)
            conn.send_packet(b"OK" if action.reply else b"X%02x" % signal.SIGKILL)
            self._flush()
            self.log("killed by the debugger")
            self._exit_status = EXIT_KILLED
            self._drop_client()

    def _bounded(self, action: Resume) -> bool:
        """Does this step end after one instruction whatever the guest does? Not with other
        vCPUs running (one may run on, or stop first), nor for a vCPU halted in WFI, which
        steps once something wakes it: those go to the vCPU thread, where Ctrl-C reaches them."""
        m = self.manager
        if len(m.vcpu_ids()) == 1:
            return True
        vcpu = m.current_vcpu if action.vcpu is None else action.vcpu
        return action.alone and m.vcpu_state(vcpu) == "running"

    def _flush(self) -> None:
        client = self._client
        if client is not None:
            self._send(client, client.conn.data_to_send())

    def _send(self, client: _Client, data: bytes) -> None:
        """Send `data` (framed) to the client, after anything still waiting for it; what the
        socket cannot take now waits in the client's outbuf (the selector says when)."""
        outbuf = client.outbuf
        if not outbuf:
            if not data:
                return  # nothing to send, and nothing was waiting: the event mask is READ already
            # The usual case, one reply: straight to the socket, no copy through outbuf.
            try:
                sent = client.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._client_lost()
                return
            if sent == len(data):
                return
            data = data[sent:]
        outbuf += data
        while outbuf:
            try:
                sent = client.sock.send(outbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._client_lost()
                return
            del outbuf[:sent]
        if len(outbuf) > MAX_OUTPUT_BUFFER:
            self.log("debugger stopped reading; dropping it")
            self._client_lost()
            return
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if outbuf else 0)
        if want != client.events:  # an epoll_ctl only on a change
            self._sel.modify(client.sock, want, "client")
            client.events = want

    def _client_lost(self) -> None:
        """The connection went away: stop the guest and keep every breakpoint for the next client."""
        self.log("debugger connection lost; the guest stays stopped")
        self._drop_client()
        self._stop_vcpu()

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                self._sel.unregister(client.sock)
            except (KeyError, ValueError):
                pass
            client.sock.close()

    # ------------------------------------------------------------------ refused clients
    # A second client gets its refusal as the error reply to its first packet, where gdb shows
    # it ("Remote failure reply: E.guestdbg: another debugger ..."); one that says nothing gets
    # console output and E10. Then EOF, and the socket is closed once the client hangs up:
    # closing with its packets unread would reset the connection and hide the message.
    def _refused_readable(self, sock: socket.socket) -> None:
        refused = self._refused[sock]
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close_refused(sock)
        elif not refused.answered:
            refused.conn.receive_data(data)
            while (event := refused.conn.next_event()) is not rsp.NEED_DATA:
                if isinstance(event, rsp.Packet) and event.payload == b"QStartNoAckMode":
                    # lldb's first packet. lldb 14 hangs on any reply to it followed by EOF;
                    # unanswered, it says "Connection shut down by remote side while waiting
                    # for reply to initial handshake packet".
                    self._close_refused(sock)
                    return
                if isinstance(event, rsp.Packet):
                    self._refuse(sock, b"E." + REFUSAL.encode())
                    return

    def _refuse(self, sock: socket.socket, *packets: bytes) -> None:
        refused = self._refused[sock]
        for packet in packets:
            refused.conn.send_packet(packet)
        try:
            sock.send(refused.conn.data_to_send())
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close_refused(sock)
            return
        refused.answered = True
        refused.deadline = time.monotonic() + REFUSAL_GRACE

    def _expire_refused(self) -> None:
        if not self._refused:
            return
        now = time.monotonic()
        for sock, refused in list(self._refused.items()):
            if now < refused.deadline:
                continue
            if refused.answered:
                self._close_refused(sock)
            else:
                self._refuse(sock, b"O" + (REFUSAL + "\n").encode().hex().encode(), b"E10")

    def _close_refused(self, sock: socket.socket) -> None:
        del self._refused[sock]
        self._sel.unregister(sock)
        sock.close()

    def _shutdown(self) -> None:
        for sock in list(self._refused):
            self._close_refused(sock)
        self._drop_client()
        if self._vcpu_busy:
            self._stop_vcpu()
        self._requests.put(None)
        if self._listener is not None:
            self._sel.unregister(self._listener)
            self._listener.close()
            if self.endpoint.kind == "unix":
                Path(self.endpoint.path).unlink(missing_ok=True)
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()
