"""The GDB remote serial protocol (RSP) connection, sans-IO: bytes in, events out, bytes out.

No sockets, threads or clocks live here. The caller feeds what it read with `receive_data()`,
pulls events with `next_event()` until `NEED_DATA`, queues replies with `send_packet()` /
`send_stop_reply()`, and writes whatever `data_to_send()` returns.

Theory of operation
-------------------

Framing (what the peer sends us):

 1. A packet on the wire is ``$`` body ``#`` cc, where cc is two hex digits (either case): the sum
    of the body bytes modulo 256.
 2. Outside a packet only four bytes mean anything: ``$`` starts a packet, ``+`` acknowledges our
    last packet, ``-`` asks for it again, and a raw 0x03 is an `Interrupt` (Ctrl-C). Every other
    byte outside a packet is line noise and is skipped silently.
 3. Inside a packet every byte up to ``#`` is body, including 0x03, ``+`` and ``-`` (binary
    ``X`` packets carry raw bytes). The one exception is ``$``: it can never be body, because
    senders escape it, so a ``$`` inside an unfinished packet (body or checksum) abandons that
    packet and starts a new one.
 4. Body decoding: ``}`` x means the byte x ^ 0x20; c ``*`` n means "repeat the byte before the
    ``*`` ord(n) - 29 more times" (run-length encoding). ``*`` repeats the last *decoded* byte,
    so it may follow an escape. A body that ends inside an escape or a run, starts with ``*``, or
    has a count byte outside ``' '..'~'``, is a bad packet.
 5. A packet whose payload (after decoding) is longer than ``packet_size`` is oversized. We stop
    buffering a body once it exceeds ``2 * packet_size`` raw bytes (every decoded byte costs at
    most two raw bytes, so such a body is oversized for sure) and skip to its ``#cc``. Memory
    held between calls is therefore at most ``2 * packet_size + 1`` bytes of body, plus at most
    two checksum digits, whatever the input.
 6. Every packet ends in exactly one event: `Packet` if it was well-formed, else `BadPacket`
    (bad checksum digits, checksum mismatch, bad escape or run, oversized, or abandoned by
    ``$``).
 7. Acks: in ack mode a `Packet` queues ``+`` and a `BadPacket` queues ``-``, at the moment the
    event is returned. In no-ack mode neither is queued; checksums are still checked (the peer
    still sends them) and failures still give `BadPacket`.
 8. A received ``-`` (ack mode only) re-queues the most recent packet we framed, byte for byte.
    A received ``+`` only confirms it. In no-ack mode received ``+`` and ``-`` are ignored (gdb
    acks the ``OK`` to QStartNoAckMode after we switched).
 9. ``receive_data(b"")`` is end of file: the events still buffered come out first, then
    `Closed`, forever. Feeding more bytes after EOF is a `LocalProtocolError`. A packet cut off
    by EOF is dropped without an event. Sending after EOF is allowed (the socket may be
    half-closed); the caller decides whether to write.
10. No byte stream raises: every framing problem has an answer (a NAK) and an event. A
    well-framed packet that makes no sense is the session's to answer (an error reply).

Sending (what we send the peer):

11. `send_packet()` escapes ``#``, ``$``, ``}`` and ``*`` as ``}`` (byte ^ 0x20). With
    ``RspConnection(rle=True)`` it then run-length encodes runs of four or more identical bytes
    that need no escape (a run of n+1 costs 3 bytes as c ``*`` chr(n+29)). Counts are 3..97,
    never giving a count byte that is ``#``, ``$``, ``+``, ``-``, ``*`` or ``}``. The encoding is
    never longer than escaping alone. It is off by default: on a local socket the bytes it
    saves cost more CPU than they save (QEMU does not use it either); received RLE is always
    decoded.

Connection state (what the session may send when):

12. The connection is `ConnectionState.IDLE` (target stopped) or `RUNNING` (target resumed).
    `_TRANSITIONS` below lists every legal (state, action) pair and the state it leads to;
    anything else raises `LocalProtocolError` and changes nothing (state, mode, output queue).
13. `resumed()` moves IDLE -> RUNNING. `send_stop_reply()` is legal only while RUNNING and moves
    back to IDLE. `send_packet()` is legal in both (console ``O`` packets arrive while running).
    `start_no_ack()` is legal only while IDLE, once the ``OK`` to QStartNoAckMode is queued;
    it is one-way and idempotent.
14. Received events never change the state: a packet or Ctrl-C may arrive in either state and
    the session decides what it means.

Remembered replies (an optimisation; the caller decides what may be remembered):

15. In no-ack mode, `remember_reply()` keeps the frame just queued as the answer to the request
    frame last framed whole (one plain ``$`` body ``#`` cc in one piece); `remember()` keeps a
    reply for a request the peer has yet to send, framed as it will frame it. `replay()` gives that
    answer back for bytes that are exactly such a request again, while nothing is buffered in
    either direction; the caller sends it as it is, and no event is made. `forget_replies()`
    drops them all. gdb repeats its small reads several times at every stop; answering a repeat
    costs a dictionary look-up instead of framing, dispatch and the reply's framing.
"""

from __future__ import annotations

import enum
import re
import zlib
from dataclasses import dataclass
from typing import Final, Union

__all__ = [
    "BadPacket",
    "Closed",
    "ConnectionState",
    "Event",
    "Interrupt",
    "LocalProtocolError",
    "NEED_DATA",
    "PACKET_SIZE",
    "Packet",
    "RspConnection",
    "checksum",
    "decode_payload",
    "encode_payload",
    "frame",
]


#: The largest packet payload the stub accepts, and the PacketSize it advertises in qSupported
#: (gdb then sends memory writes and asks for reads no larger).
PACKET_SIZE: Final = 0x4000


# --- errors -------------------------------------------------------------------------------------


class LocalProtocolError(Exception):
    """We (the caller) tried something illegal, e.g. a stop reply while IDLE."""


# --- events -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Packet:
    """A well-formed packet; escapes removed, run-length encoding expanded."""

    payload: bytes


@dataclass(frozen=True)
class Interrupt:
    """A raw 0x03 outside any packet (Ctrl-C)."""


@dataclass(frozen=True)
class BadPacket:
    """A packet we dropped (and NAKed, in ack mode). Informational."""

    reason: str


@dataclass(frozen=True)
class Closed:
    """The peer closed its side (EOF)."""


class _NeedData:
    _instance: _NeedData | None = None

    def __new__(cls) -> _NeedData:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"

    def __reduce__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()

Event = Union[Packet, Interrupt, BadPacket, Closed]


# --- states and transitions ---------------------------------------------------------------------


class ConnectionState(enum.Enum):
    IDLE = "idle"  # target stopped: gdb talks, we answer
    RUNNING = "running"  # target resumed: a stop reply is due


_IDLE, _RUNNING = ConnectionState.IDLE, ConnectionState.RUNNING

#: Every legal (state, action) -> next state. Anything missing is a LocalProtocolError.
_TRANSITIONS: Final[dict[tuple[ConnectionState, str], ConnectionState]] = {
    (_IDLE, "send_packet"): _IDLE,
    (_RUNNING, "send_packet"): _RUNNING,
    (_IDLE, "resumed"): _RUNNING,
    (_RUNNING, "send_stop_reply"): _IDLE,
    (_IDLE, "start_no_ack"): _IDLE,
}

ACTIONS: Final = ("send_packet", "send_stop_reply", "resumed", "start_no_ack")


class _Rx(enum.Enum):
    """Where the receive framer is."""

    OUTSIDE = enum.auto()  # between packets (rule 2)
    BODY = enum.auto()  # after '$', before '#' (rule 3)
    CHECKSUM = enum.auto()  # after '#', reading two digits


# --- encoding -----------------------------------------------------------------------------------

_ESCAPE: Final = 0x7D  # '}'
_RLE: Final = 0x2A  # '*'
_RLE_OFFSET: Final = 29
_RLE_MIN, _RLE_MAX = 3, 0x7E - _RLE_OFFSET  # count bytes ' '..'~'
#: Counts whose count byte would be '#', '$', '*', '+', '-' or '}'.
_RLE_FORBIDDEN: Final = frozenset(ord(c) - _RLE_OFFSET for c in "#$*+-}")

# In the "neighbour XOR" of a payload, 3+ zero bytes mark a run of 4+ identical bytes.
_ZERO_RUN_RE: Final = re.compile(rb"\x00{3,}")
# Body tokens: literal stretch | escape | run | a lone '}' or '*' at the end (error).
_TOKEN_RE: Final = re.compile(rb"([^}*]+)|\}(.)|\*(.)|(.)", re.DOTALL)

_OUTSIDE_RE: Final = re.compile(rb"[$+\-\x03]")
# The common case, framed in one match: a whole packet (after at most one '+', which only
# confirms our last packet in either mode) with nothing in its body that needs decoding.
_WHOLE_PACKET_RE: Final = re.compile(rb"\+?\$([^$#}*]*)#([0-9a-fA-F]{2})")
_BODY_END_RE: Final = re.compile(rb"[#$]")
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")


def checksum(data: bytes) -> int:
    """The RSP checksum: sum of the bytes modulo 256."""
    if len(data) < 64:
        return sum(data) & 0xFF
    # Large payloads (m, g, qXfer replies) are summed in C: Adler-32's low half is 1 + the sum
    # of the bytes modulo 65521, and for 256 bytes or fewer that sum (at most 65,280) never
    # wraps, so it is the plain sum.
    view = memoryview(data)
    total = 0
    for start in range(0, len(data), 256):
        total += (zlib.adler32(view[start:start + 256]) & 0xFFFF) - 1
    return total & 0xFF


def _escape(payload: bytes) -> bytes:
    # '}' first: the later replacements put '}' in, and must not be escaped again.
    payload = payload.replace(b"}", b"}]").replace(b"#", b"}\x03")
    return payload.replace(b"$", b"}\x04").replace(b"*", b"}\x0a")


def _runs(payload: bytes):
    """(start, end) of every maximal run of 4+ identical bytes that need no escape."""
    if len(payload) < 4:
        return
    # Byte i of the XOR of the payload with itself shifted by one is 0 iff byte i == byte i+1;
    # done on big integers so the scan runs in C rather than a Python loop.
    n = len(payload) - 1
    xor = int.from_bytes(payload[:-1], "little") ^ int.from_bytes(payload[1:], "little")
    diff = xor.to_bytes(n, "little")
    for m in _ZERO_RUN_RE.finditer(diff):
        if payload[m.start()] not in b"#$}*":
            yield m.start(), m.end() + 1


def _rle_count(remaining: int) -> int:
    """The largest allowed repeat count <= remaining (remaining >= 3)."""
    n = min(remaining, _RLE_MAX)
    while n in _RLE_FORBIDDEN:
        n -= 1
    return n


def _encode_run(run: bytes) -> bytes:
    c = run[:1]
    out = bytearray()
    left = len(run)
    while left:
        out += c
        left -= 1
        if left >= _RLE_MIN:
            n = _rle_count(left)
            out += bytes((_RLE, n + _RLE_OFFSET))
            left -= n
        else:
            out += c * left
            left = 0
    return bytes(out)


# Fast path for payloads with nothing to escape (hex replies: m, g, stop replies): the gaps
# between runs are copied as they are, and the encodings of short runs are cached.
_NEEDS_ESCAPE_RE: Final = re.compile(rb"[#$}*]")
_run_cache: dict[bytes, bytes] = {}


def _encode_plain(payload: bytes) -> bytes:
    parts = []
    pos = 0
    cache = _run_cache
    for start, end in _runs(payload):
        run = payload[start:end]
        enc = cache.get(run)
        if enc is None:
            enc = _encode_run(run)
            if end - start <= 256 and len(cache) < 4096:
                cache[run] = enc
        parts.append(payload[pos:start])
        parts.append(enc)
        pos = end
    parts.append(payload[pos:])
    return b"".join(parts)


def encode_payload(payload: bytes, *, rle: bool = True) -> bytes:
    """Escape (and, with ``rle``, run-length encode) a payload into a packet body (rule 11).

    Runs are found in the raw payload and only ever cover bytes that need no escape, so a
    ``*`` always follows a literal copy of the byte it repeats, never the second half of an
    escape; the bytes between runs are escaped on their own.
    """
    payload = bytes(payload)
    if not rle:
        return _escape(payload)
    if _NEEDS_ESCAPE_RE.search(payload) is None:
        return _encode_plain(payload)
    out = bytearray()
    pos = 0
    for start, end in _runs(payload):
        out += _escape(payload[pos:start])
        out += _encode_run(payload[start:end])
        pos = end
    out += _escape(payload[pos:])
    return bytes(out)


def frame(payload: bytes, *, rle: bool = True) -> bytes:
    """``$`` body ``#`` cc for a payload."""
    body = encode_payload(payload, rle=rle)
    return b"$%s#%02x" % (body, checksum(body))


def decode_payload(body: bytes, limit: int | None = None) -> bytes:
    """Undo escapes and run-length encoding (rule 4). Raises ValueError with the reason.

    With ``limit``, a payload longer than ``limit`` raises as soon as it is known, so a tiny
    body cannot expand into a huge buffer.
    """
    if _ESCAPE not in body and _RLE not in body:
        if limit is not None and len(body) > limit:
            raise ValueError(f"oversized packet (> {limit} bytes)")
        return bytes(body)
    out = bytearray()
    for m in _TOKEN_RE.finditer(body):
        literal, escaped, count, lone = m.groups()
        if literal is not None:
            out += literal
        elif escaped is not None:
            out.append(escaped[0] ^ 0x20)
        elif count is not None:
            if not out:
                raise ValueError("run-length '*' with nothing to repeat")
            if not 0x20 <= count[0] <= 0x7E:
                raise ValueError(f"bad run-length count byte 0x{count[0]:02x}")
            out += out[-1:] * (count[0] - _RLE_OFFSET)
        else:
            what = "escape '}'" if lone == b"}" else "run-length '*'"
            raise ValueError(f"packet ends inside an {what}")
        if limit is not None and len(out) > limit:
            raise ValueError(f"oversized packet (> {limit} bytes)")
    return bytes(out)


# --- the connection -----------------------------------------------------------------------------


class RspConnection:
    """One end of an RSP conversation, the stub's end. See the theory of operation above."""

    def __init__(self, *, packet_size: int = PACKET_SIZE, rle: bool = False) -> None:
        if packet_size < 1:
            raise ValueError("packet_size must be positive")
        self.rle = rle  # run-length encode what we send (rule 11)
        self.packet_size = packet_size  # the PacketSize we advertise in qSupported
        self.state = ConnectionState.IDLE
        self.no_ack = False
        self.closed = False  # EOF received (events may still be buffered)
        self._rx = bytearray()  # received, not yet framed
        self._pos = 0  # framed up to here in _rx
        self._rx_state = _Rx.OUTSIDE
        self._body = bytearray()
        self._oversized = False  # body passed 2 * packet_size: skipping to '#cc'
        self._digits = bytearray()
        self._out = bytearray()
        self._last_frame = b""  # for retransmission on '-'
        self._queued = b""  # the last frame queued (rule 15)
        self._request = b""  # the last request frame that came whole, no-ack mode (rule 15)
        self._replies: dict[bytes, bytes] = {}  # request frame -> reply frame (rule 15)

    # -- receiving --

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the peer; ``b""`` means EOF."""
        if self.closed:
            if data:
                raise LocalProtocolError("receive_data() after EOF")
            return
        if not data:
            self.closed = True
            return
        self._rx += data

    def next_event(self) -> Event | _NeedData:
        """The next event, or `NEED_DATA` when the buffered bytes are used up."""
        event = self._frame()
        if event is not None:
            return event
        # Everything buffered has been framed: drop it, so at most the partial packet is kept.
        del self._rx[:]
        self._pos = 0
        if self.closed:
            self._rx_state = _Rx.OUTSIDE  # rule 9: a truncated packet is dropped silently
            self._body.clear()
            self._digits.clear()
            return Closed()
        return NEED_DATA

    @property
    def buffered_bytes(self) -> int:
        """Bytes held between calls (unframed input plus the partial packet)."""
        return len(self._rx) - self._pos + len(self._body) + len(self._digits)

    def _frame(self) -> Event | None:
        rx = self._rx
        if self._rx_state is _Rx.OUTSIDE:
            # Fast path: a complete plain packet right here (rules 1-7 as the state machine below
            # applies them: no escape or run to undo, so the body is the payload).
            m = _WHOLE_PACKET_RE.match(rx, self._pos)
            if m is not None:
                body = m.group(1)
                if len(body) <= self.packet_size:
                    self._pos = m.end()
                    self._request = m.group() if self.no_ack else b""
                    got, want = int(m.group(2), 16), checksum(body)
                    if got != want:
                        return self._reject(f"checksum mismatch: sent {got:02x}, computed {want:02x}")
                    if not self.no_ack:
                        self._out += b"+"
                    return Packet(body)
        while self._pos < len(rx):
            if self._rx_state is _Rx.OUTSIDE:
                m = _OUTSIDE_RE.search(rx, self._pos)
                if m is None:
                    self._pos = len(rx)  # rule 2: noise
                    break
                self._pos = m.end()
                byte = m.group()
                if byte == b"$":
                    self._start_packet()
                elif byte == b"\x03":
                    return Interrupt()
                elif byte == b"-" and not self.no_ack:
                    self._out += self._last_frame  # rule 8
                # '+' (and '-' in no-ack mode): nothing to do
            elif self._rx_state is _Rx.BODY:
                m = _BODY_END_RE.search(rx, self._pos)
                end = len(rx) if m is None else m.start()
                if not self._oversized:
                    self._body += rx[self._pos : end]
                    if len(self._body) > 2 * self.packet_size:  # rule 5
                        self._oversized = True
                        self._body.clear()
                self._pos = end
                if m is None:
                    break
                self._pos += 1
                if m.group() == b"$":
                    return self._restart()
                self._rx_state = _Rx.CHECKSUM
            else:  # _Rx.CHECKSUM
                digit = rx[self._pos]
                self._pos += 1
                if digit == 0x24:  # '$'
                    return self._restart()
                self._digits.append(digit)
                if len(self._digits) == 2:
                    return self._finish()
        return None

    def _start_packet(self) -> None:
        self._rx_state = _Rx.BODY
        self._body.clear()
        self._digits.clear()
        self._oversized = False

    def _restart(self) -> BadPacket:
        self._start_packet()
        return self._reject("packet abandoned by '$'")

    def _finish(self) -> Packet | BadPacket:
        self._request = b""  # not a plain whole frame: nothing to remember it by (rule 15)
        body, digits, oversized = bytes(self._body), bytes(self._digits), self._oversized
        self._rx_state = _Rx.OUTSIDE
        self._body.clear()
        self._digits.clear()
        self._oversized = False
        if oversized:
            return self._reject(f"oversized packet (> {self.packet_size} bytes)")
        if not all(d in _HEX for d in digits):
            return self._reject(f"bad checksum digits {digits!r}")
        got, want = int(digits, 16), checksum(body)
        if got != want:
            return self._reject(f"checksum mismatch: sent {got:02x}, computed {want:02x}")
        try:
            payload = decode_payload(body, self.packet_size)
        except ValueError as e:
            return self._reject(str(e))
        if not self.no_ack:
            self._out += b"+"
        return Packet(payload)

    def _reject(self, reason: str) -> BadPacket:
        if not self.no_ack:
            self._out += b"-"
        return BadPacket(reason)

    # -- sending --

    def _transition(self, action: str) -> ConnectionState:
        try:
            return _TRANSITIONS[self.state, action]
        except KeyError:
            raise LocalProtocolError(f"{action} is illegal while {self.state.name}") from None

    def send_packet(self, payload: bytes) -> None:
        """Queue a packet (framed, escaped, run-length encoded)."""
        # Legal in every state (rule 13: `_TRANSITIONS` has it leave each state as it is).
        self._queue(payload)

    def send_stop_reply(self, payload: bytes) -> None:
        """Queue a stop reply; legal only while RUNNING, and moves to IDLE."""
        new = self._transition("send_stop_reply")
        self._queue(payload)
        self.state = new

    def resumed(self) -> None:
        """The session resumed the target: IDLE -> RUNNING."""
        self.state = self._transition("resumed")

    def start_no_ack(self) -> None:
        """Stop acking, and expecting acks (call after queuing the OK to QStartNoAckMode)."""
        self.state = self._transition("start_no_ack")
        self.no_ack = True
        self._last_frame = b""

    def _framed(self, payload: bytes) -> bytes:
        if not self.rle:
            # frame() without its checks and copies (bytes.replace returns a payload with nothing
            # to escape as it is: most replies, all hex).
            body = _escape(payload if type(payload) is bytes else bytes(payload))
            return b"$%s#%02x" % (body, checksum(body))
        return frame(payload, rle=self.rle)

    def _queue(self, payload: bytes) -> None:
        packet = self._framed(payload)
        self._out += packet
        self._queued = packet
        if not self.no_ack:
            self._last_frame = packet

    # -- remembered replies (rule 15) --

    #: At most this many are kept; a new one past it starts afresh (a memory dump reads on and on).
    MAX_REMEMBERED = 64

    def remember_reply(self) -> bytes:
        """The frame just queued answers the request last framed whole, whenever it comes
        again, until `forget_replies()`; returns that request's frame. Nothing (b"") in ack
        mode, or for a request that came in pieces, escaped or run-length encoded."""
        request, self._request = self._request, b""
        if request and self.no_ack:
            self._keep(request, self._queued)
            return request
        return b""

    def remember(self, request: bytes, reply: bytes) -> None:
        """Remember `reply` (a payload) for the request payload `request` before the peer
        sends it: as it would frame it (plain, escaped, no run-length encoding). No-ack mode."""
        if self.no_ack:
            body = _escape(request)
            self._keep(b"$%s#%02x" % (body, checksum(body)), self._framed(reply))

    def _keep(self, request: bytes, reply: bytes) -> None:
        if len(self._replies) >= self.MAX_REMEMBERED:
            self._replies.clear()
        self._replies[request] = reply

    def forget_replies(self) -> None:
        if self._replies:
            self._replies.clear()

    def replay(self, data: bytes) -> bytes | None:
        """The remembered reply frame when `data` is exactly a remembered request and nothing
        is buffered (received or to send); else None, and `data` is for `receive_data()`."""
        reply = self._replies.get(data)
        if reply is None or self._rx or self._out or self._rx_state is not _Rx.OUTSIDE or self.closed:
            return None
        return reply

    def data_to_send(self) -> bytes:
        """Bytes queued for the peer (acks, NAKs, packets, retransmissions); clears the queue."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def __repr__(self) -> str:
        mode = "no-ack" if self.no_ack else "ack"
        eof = ", EOF" if self.closed else ""
        return f"<RspConnection {self.state.name} {mode}{eof}>"
