"""The sans-IO RSP connection: framing, acks, run-length encoding, bounded memory and the
IDLE/RUNNING state table. Connections are wired back to back; readers are fed whole, split at
arbitrary points, one byte at a time and with trailing garbage."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from guestdbg.gdb import rsp
from guestdbg.gdb.rsp import (
    NEED_DATA,
    BadPacket,
    Closed,
    ConnectionState,
    Interrupt,
    LocalProtocolError,
    Packet,
    RspConnection,
)

IDLE, RUNNING = ConnectionState.IDLE, ConnectionState.RUNNING


# --- helpers, written from the GDB manual independently of the module under test ----------------


def ref_checksum(body: bytes) -> bytes:
    return b"%02x" % (sum(body) % 256)


def ref_frame(body: bytes) -> bytes:
    return b"$" + body + b"#" + ref_checksum(body)


def ref_decode(body: bytes) -> bytes:
    """The manual's body decoding, one byte at a time: '}' x is x^0x20; c '*' n repeats the
    previous byte ord(n)-29 more times."""
    out = bytearray()
    i = 0
    while i < len(body):
        b = body[i]
        if b == 0x7D:
            out.append(body[i + 1] ^ 0x20)
            i += 2
        elif b == 0x2A:
            out += bytes([out[-1]]) * (body[i + 1] - 29)
            i += 2
        else:
            out.append(b)
            i += 1
    return bytes(out)


def split_frame(wire: bytes) -> tuple[bytes, bytes]:
    m = re.fullmatch(rb"\$(.*)#([0-9a-f]{2})", wire, re.DOTALL)
    assert m, wire
    return m.group(1), m.group(2)


def drain(conn: RspConnection) -> list:
    events = []
    while True:
        ev = conn.next_event()
        if ev is NEED_DATA:
            return events
        events.append(ev)
        if isinstance(ev, Closed):
            return events


def feed(chunks, *, no_ack=False, packet_size=rsp.PACKET_SIZE, sent_before=b"stub-reply"):
    """Feed chunks to a fresh connection (which has sent one packet, so '-' has something to
    retransmit); return (events, bytes it queued after that)."""
    conn = RspConnection(packet_size=packet_size)
    conn.send_packet(sent_before)
    if no_ack:
        conn.start_no_ack()
    conn.data_to_send()
    events = []
    for chunk in chunks:
        if not chunk:
            continue  # b"" would mean EOF
        conn.receive_data(chunk)
        events += drain(conn)
    return events, conn.data_to_send()


def pair(no_ack: bool) -> tuple[RspConnection, RspConnection]:
    a, b = RspConnection(), RspConnection()
    if no_ack:
        a.start_no_ack()
        b.start_no_ack()
    return a, b


# --- strategies ---------------------------------------------------------------------------------

SPECIAL = b"#$}*+-\x03 0a"
runs = st.lists(
    st.tuples(st.sampled_from(list(SPECIAL)) | st.integers(0, 255), st.integers(1, 300)),
    max_size=8,
).map(lambda rs: b"".join(bytes([b]) * n for b, n in rs))
payloads = st.one_of(
    st.binary(max_size=600),
    runs,
    st.lists(st.binary(max_size=40) | runs, max_size=4).map(b"".join),
)


@st.composite
def wire_items(draw):
    kinds = ["packet", "badsum", "interrupt", "ack", "nak", "noise", "restart"]
    kind = draw(st.sampled_from(kinds))
    if kind == "packet":
        return rsp.frame(draw(payloads))
    if kind == "badsum":
        body = rsp.encode_payload(draw(st.binary(max_size=30)))
        return b"$" + body + b"#" + b"%02x" % ((sum(body) + draw(st.integers(1, 255))) % 256)
    if kind == "interrupt":
        return b"\x03"
    if kind == "ack":
        return b"+"
    if kind == "nak":
        return b"-"
    if kind == "restart":
        return b"$" + draw(st.binary(max_size=10).filter(lambda b: b"#" not in b and b"$" not in b))
    return draw(st.binary(max_size=20).filter(lambda b: not set(b) & set(b"$+-\x03")))


TOKENS = [b"$", b"#", b"+", b"-", b"\x03", b"}", b"*", b"0", b"a", b"0*", b"~", b"x" * 50]
token_soup = st.lists(st.sampled_from(TOKENS), max_size=80).map(b"".join)
streams = st.one_of(
    st.lists(wire_items(), max_size=12).map(b"".join),
    st.binary(max_size=300),
    token_soup,
)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


# --- framing and round trips --------------------------------------------------------------------


def test_known_frames():
    conn = RspConnection()
    conn.send_packet(b"OK")
    conn.send_packet(b"")
    conn.send_packet(b"a#b$c}d*e")
    assert conn.data_to_send() == b"$OK#9a" + b"$#00" + ref_frame(b"a}\x03b}\x04c}]d}\x0ae")
    assert conn.data_to_send() == b""


def test_need_data_sentinel():
    assert repr(NEED_DATA) == "NEED_DATA"
    assert RspConnection().next_event() is NEED_DATA


@pytest.mark.parametrize("no_ack", [False, True])
@given(payload=payloads)
def test_any_payload_survives_back_to_back(no_ack, payload):
    a, b = pair(no_ack)
    a.send_packet(payload)
    wire = a.data_to_send()
    body, cc = split_frame(wire)
    assert cc == ref_checksum(body)
    assert not set(body) & set(b"#$"), "framing bytes must never appear in a body"
    assert ref_decode(body) == payload
    b.receive_data(wire)
    assert drain(b) == [Packet(payload)]
    assert b.data_to_send() == (b"" if no_ack else b"+")
    assert a.data_to_send() == b""


def test_checksum_accepts_either_case():
    body = b"m1000,4:\xff"
    upper = b"$" + body + b"#" + ref_checksum(body).upper()
    events, out = feed([upper, ref_frame(body)])
    assert events == [Packet(body)] * 2 and out == b"++"


def test_packet_bodies_may_hold_interrupt_and_ack_bytes():
    payload = b"X1000,5:\x03+-\x03\x00"
    events, out = feed([ref_frame(payload)])
    assert events == [Packet(payload)] and out == b"+"


def test_escaped_dollar_and_hash_in_binary_payload():
    payload = bytes(range(256)) * 2
    events, _ = feed([rsp.frame(payload, rle=False)])
    assert events == [Packet(payload)]


# --- splitting ----------------------------------------------------------------------------------


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(stream=streams, cuts=st.lists(st.integers(0, 10_000), max_size=20), no_ack=st.booleans())
def test_events_do_not_depend_on_split_points(stream, cuts, no_ack):
    whole = feed([stream], no_ack=no_ack)
    assert feed(chunked(stream, cuts), no_ack=no_ack) == whole
    assert feed([bytes([b]) for b in stream], no_ack=no_ack) == whole


@given(stream=streams, garbage=st.binary(max_size=100), no_ack=st.booleans())
def test_trailing_garbage_only_appends(stream, garbage, no_ack):
    events, out = feed([stream], no_ack=no_ack)
    events2, out2 = feed([stream + garbage], no_ack=no_ack)
    assert events2[: len(events)] == events
    assert out2.startswith(out)


@given(garbage=st.binary(max_size=100).filter(lambda b: not set(b) & set(b"$+-\x03")))
def test_noise_outside_packets_is_ignored(garbage):
    events, out = feed([garbage + b"\x03" + garbage + ref_frame(b"g") + garbage])
    assert events == [Interrupt(), Packet(b"g")]
    assert out == b"+"


def test_structured_stream_events():
    stream = b"+" + ref_frame(b"qSupported") + b"\x03junk" + b"$abc#00" + ref_frame(b"c") + b"+"
    events, out = feed([stream])
    assert events == [Packet(b"qSupported"), Interrupt(), BadPacket(events[2].reason), Packet(b"c")]
    assert "checksum" in events[2].reason
    assert out == b"+-+"


# --- acks, NAKs, retransmission and no-ack mode -------------------------------------------------


def test_bad_checksum_is_naked_and_reported():
    conn = RspConnection()
    conn.receive_data(b"$g#00")
    ev = conn.next_event()
    assert isinstance(ev, BadPacket) and "checksum" in ev.reason
    assert conn.data_to_send() == b"-"
    assert conn.next_event() is NEED_DATA


@pytest.mark.parametrize("digits", [b"zz", b"g0", b"0 ", b"\x03\x03"])
def test_non_hex_checksum_is_naked(digits):
    events, out = feed([b"$g#" + digits, ref_frame(b"g")])
    assert [type(e) for e in events] == [BadPacket, Packet]
    assert out == b"-+"


def test_peer_nak_retransmits_exactly_the_last_packet():
    conn = RspConnection()
    conn.send_packet(b"first")
    conn.send_packet(b"T05thread:p1.1;")
    sent = conn.data_to_send()
    conn.receive_data(b"-")
    assert drain(conn) == []
    assert conn.data_to_send() == ref_frame(b"T05thread:p1.1;")
    conn.receive_data(b"+")
    assert drain(conn) == [] and conn.data_to_send() == b""
    conn.receive_data(b"--")
    drain(conn)
    assert conn.data_to_send() == ref_frame(b"T05thread:p1.1;") * 2
    assert sent.endswith(ref_frame(b"T05thread:p1.1;"))


def test_nak_before_anything_was_sent_is_harmless():
    conn = RspConnection()
    conn.receive_data(b"-+-")
    assert drain(conn) == [] and conn.data_to_send() == b""


def test_no_ack_mode_acks_nothing():
    conn = RspConnection()
    conn.receive_data(ref_frame(b"QStartNoAckMode"))
    assert drain(conn) == [Packet(b"QStartNoAckMode")]
    conn.send_packet(b"OK")
    conn.start_no_ack()
    assert conn.no_ack
    assert conn.data_to_send() == b"+" + ref_frame(b"OK")
    conn.receive_data(b"+" + ref_frame(b"g") + b"$g#00" + b"-" + b"$abc" + ref_frame(b"m0,4"))
    events = drain(conn)
    assert [type(e) for e in events] == [Packet, BadPacket, BadPacket, Packet]
    conn.send_packet(b"00")
    assert conn.data_to_send() == ref_frame(b"00"), "no acks, NAKs or retransmissions"
    conn.receive_data(b"-")
    drain(conn)
    assert conn.data_to_send() == b""


def test_dollar_restarts_an_unfinished_packet():
    events, out = feed([b"$m100", b"0,4$" + ref_frame(b"g")[1:]])
    assert [type(e) for e in events] == [BadPacket, Packet] and events[1] == Packet(b"g")
    assert out == b"-+"
    events, out = feed([b"$abc#1$", ref_frame(b"g")[1:]])
    assert [type(e) for e in events] == [BadPacket, Packet]
    assert out == b"-+"


def test_eof_delivers_buffered_events_then_closed():
    conn = RspConnection()
    conn.receive_data(ref_frame(b"D") + b"\x03" + b"$trunc")
    conn.receive_data(b"")
    assert conn.closed
    assert conn.next_event() == Packet(b"D")
    assert conn.next_event() == Interrupt()
    assert conn.next_event() == Closed()
    assert conn.next_event() == Closed()
    conn.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"x")
    conn.send_packet(b"OK")  # half-closed sockets can still be written
    assert conn.data_to_send() == b"+" + ref_frame(b"OK")


# --- run-length encoding ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, payload",
    [
        (b"0* ", b"0000"),  # the manual's example: ' ' is 32 - 29 = 3 more
        (b'0*"00', b"0" * 8),  # the manual's example of dodging '#' (6) and '$' (7)
        (b"a*~", b"a" * 98),
        (b"x}]*!", b"x" + b"}" * 5),  # '*' repeats the decoded byte of an escape
        (b"ab*!c", b"a" + b"b" * 5 + b"c"),
    ],
)
def test_rle_known_examples_decode(body, payload):
    events, out = feed([ref_frame(body)])
    assert events == [Packet(payload)] and out == b"+"


@pytest.mark.parametrize("body", [b"*!", b"a*", b"a}", b"a*\x1f", b"a*\x7f"])
def test_bad_rle_or_escape_is_naked(body):
    events, out = feed([ref_frame(body), ref_frame(b"ok")])
    assert [type(e) for e in events] == [BadPacket, Packet]
    assert out == b"-+"


@pytest.mark.parametrize("n", range(1, 200))
def test_rle_runs_of_every_length(n):
    for c in b"0 ~\x00\xff":
        payload = b"<" + bytes([c]) * n + b">"
        body = rsp.encode_payload(payload)
        assert ref_decode(body) == payload
        assert len(body) <= len(rsp.encode_payload(payload, rle=False))
        if n >= 4:
            assert len(body) < len(payload), "runs of four or more must be encoded"


@given(payload=payloads)
def test_rle_encoder_is_correct_and_never_longer(payload):
    body = rsp.encode_payload(payload)
    plain = rsp.encode_payload(payload, rle=False)
    assert ref_decode(body) == payload
    assert ref_decode(plain) == payload
    assert len(body) <= len(plain)
    # Every raw '*' is a run: its count byte is printable and not a framing or ack byte, and
    # what it repeats is a literal byte, not the second half of an escape.
    for i, b in enumerate(body):
        if b == 0x2A:
            count = body[i + 1]
            assert 0x20 <= count <= 0x7E
            assert count not in b"#$+-"
            assert body[i - 1] not in b"}*" and (i < 2 or body[i - 2] != 0x7D)


def test_decode_limit_stops_expansion_early():
    with pytest.raises(ValueError, match="oversized"):
        rsp.decode_payload(b"a*~" * 1000, limit=100)
    assert rsp.decode_payload(b"a*~", limit=98) == b"a" * 98


# --- oversized packets and bounded memory -------------------------------------------------------

PS = 64


def test_payload_of_exactly_packet_size_is_accepted_even_fully_escaped():
    for payload in (b"a" * PS, b"#" * PS, b"}" * PS):
        events, out = feed([rsp.frame(payload)], packet_size=PS)
        assert events == [Packet(payload)] and out == b"+"


@pytest.mark.parametrize(
    "payload", [b"a" * (PS + 1), b"#" * (PS + 1), b"}" * (PS + 1), bytes(range(256)) * 40]
)
@pytest.mark.parametrize("rle", [False, True])
def test_oversized_packets_are_naked_and_connection_recovers(payload, rle):
    wire = rsp.frame(payload, rle=rle) + ref_frame(b"g")
    for chunks in ([wire], [wire[i : i + 7] for i in range(0, len(wire), 7)]):
        events, out = feed(chunks, packet_size=PS)
        assert [type(e) for e in events] == [BadPacket, Packet], events
        assert "oversized" in events[0].reason
        assert events[1] == Packet(b"g") and out == b"-+"


def test_endless_packet_keeps_memory_bounded():
    conn = RspConnection(packet_size=PS)
    conn.receive_data(b"$")
    for _ in range(1000):
        conn.receive_data(b"x" * 97)
        assert conn.next_event() is NEED_DATA
        assert conn.buffered_bytes <= 2 * PS + 16
    conn.receive_data(b"#00" + ref_frame(b"g"))
    assert [type(e) for e in drain(conn)] == [BadPacket, Packet]


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    chunks=st.lists(
        st.one_of(st.binary(max_size=200), token_soup),
        max_size=30,
    ),
    eof=st.booleans(),
    no_ack=st.booleans(),
)
def test_garbage_never_raises_and_memory_stays_bounded(chunks, eof, no_ack):
    conn = RspConnection(packet_size=PS)
    if no_ack:
        conn.start_no_ack()
    for chunk in [c for c in chunks if c] + ([b""] if eof else []):
        conn.receive_data(chunk)
        for ev in drain(conn):
            assert isinstance(ev, (Packet, Interrupt, BadPacket, Closed))
            if isinstance(ev, Packet):
                assert len(ev.payload) <= PS
        assert conn.buffered_bytes <= 2 * PS + 16
    out = conn.data_to_send()
    assert not set(out) - set(b"+-") and (not no_ack or out == b"")


# --- the state table ----------------------------------------------------------------------------

# The spec, written out independently of rsp._TRANSITIONS: every legal (state, action).
LEGAL = {
    (IDLE, "send_packet"): IDLE,
    (RUNNING, "send_packet"): RUNNING,
    (IDLE, "resumed"): RUNNING,
    (RUNNING, "send_stop_reply"): IDLE,
    (IDLE, "start_no_ack"): IDLE,
}
RECEIVED = {
    "recv_packet": ref_frame(b"vCont;c"),
    "recv_bad_packet": b"$vCont;c#00",
    "recv_interrupt": b"\x03",
    "recv_ack": b"+",
    "recv_nak": b"-",
    "recv_noise": b"noise",
    "recv_partial": b"$m10",
    "recv_eof": b"",
}


def test_stop_reply_needs_running():
    conn = RspConnection()
    with pytest.raises(LocalProtocolError):
        conn.send_stop_reply(b"S05")
    assert conn.state is IDLE and conn.data_to_send() == b""
    conn.resumed()
    assert conn.state is RUNNING
    conn.send_packet(b"O6869")  # console output while running
    conn.send_stop_reply(b"T05thread:p1.1;")
    assert conn.state is IDLE
    assert conn.data_to_send() == ref_frame(b"O6869") + ref_frame(b"T05thread:p1.1;")
    with pytest.raises(LocalProtocolError):
        conn.send_stop_reply(b"S05")


def test_table_matches_spec():
    assert rsp._TRANSITIONS == LEGAL
    assert set(rsp.ACTIONS) == {a for _, a in LEGAL}


def do(conn: RspConnection, action: str) -> None:
    if action in rsp.ACTIONS:
        method = getattr(conn, action)
        method(b"S05") if action.startswith("send") else method()
    else:
        conn.receive_data(RECEIVED[action])
        drain(conn)


def snapshot(conn: RspConnection):
    return (conn.state, conn.no_ack, conn.closed)


def check_step(conn: RspConnection, action: str) -> None:
    before = snapshot(conn)
    conn.data_to_send()
    expected = LEGAL.get((conn.state, action), "illegal") if action in rsp.ACTIONS else conn.state
    if action == "recv_eof" or (conn.closed and action.startswith("recv")):
        expected = conn.state if action == "recv_eof" else "illegal"
    if expected == "illegal":
        with pytest.raises(LocalProtocolError):
            do(conn, action)
        assert snapshot(conn) == before, "a refused action must change nothing"
        assert conn.data_to_send() == b""
        return
    do(conn, action)
    assert conn.state is expected
    if action == "start_no_ack":
        assert conn.no_ack
    if action == "recv_eof":
        assert conn.closed
    assert conn.no_ack == (before[1] or action == "start_no_ack")


ALL_INPUTS = [*rsp.ACTIONS, *RECEIVED]


@pytest.mark.parametrize(
    "state, no_ack, closed, action",
    list(itertools.product([IDLE, RUNNING], [False, True], [False, True], ALL_INPUTS)),
)
def test_every_state_times_every_input(state, no_ack, closed, action):
    conn = RspConnection()
    if no_ack:
        conn.start_no_ack()
    if state is RUNNING:
        conn.resumed()
    if closed:
        conn.receive_data(b"")
        drain(conn)
    assert snapshot(conn) == (state, no_ack, closed)
    check_step(conn, action)


@given(st.lists(st.sampled_from(ALL_INPUTS), max_size=40))
def test_any_sequence_of_inputs_follows_the_table(actions):
    conn = RspConnection()
    for action in actions:
        check_step(conn, action)


# --- wrong checksums: the property from issue 14 ------------------------------------------------

# A body as a peer could send it: escaped and run-length encoded, or raw bytes (anything but
# the framing bytes '$' and '#', which can never be body).
bodies = st.one_of(
    payloads.map(rsp.encode_payload),
    st.binary(max_size=300).map(lambda b: b.replace(b"$", b"").replace(b"#", b"")),
)
# How the sent checksum differs from the right one: any non-zero XOR, with every single-bit
# error drawn often (a check that ignored one bit, e.g. bit 7, would accept those).
checksum_errors = st.one_of(st.sampled_from([1 << k for k in range(8)]), st.integers(1, 255))


@settings(max_examples=300)
@given(body=bodies, error=checksum_errors, upper=st.booleans(), no_ack=st.booleans())
@example(body=b"g", error=0x80, upper=False, no_ack=False)
@example(body=b"g", error=0x80, upper=True, no_ack=True)
@example(body=b"\xff" * 100, error=0x80, upper=False, no_ack=False)  # the >= 64-byte sum path
def test_any_wrong_checksum_is_naked_in_ack_mode_and_dropped_in_no_ack_mode(body, error, upper,
                                                                            no_ack):
    wrong = b"%02x" % ((sum(body) % 256) ^ error)
    frame_ = b"$" + body + b"#" + (wrong.upper() if upper else wrong)
    events, out = feed([frame_ + ref_frame(b"g")], no_ack=no_ack)
    assert [type(e) for e in events] == [BadPacket, Packet], events
    assert "checksum mismatch" in events[0].reason
    assert events[1] == Packet(b"g"), "the connection recovers at the next frame"
    assert out == (b"" if no_ack else b"-+")
    # the same frame, one byte at a time: same verdict
    assert feed([bytes([b]) for b in frame_ + ref_frame(b"g")], no_ack=no_ack) == (events, out)


@pytest.mark.parametrize("no_ack", [False, True])
@pytest.mark.parametrize("bit", range(8))
def test_every_single_bit_checksum_error_is_caught(bit, no_ack):
    for body in (b"", b"g", b"m1000,40", b"x" * 70, bytes(range(0x30, 0x7B))):
        right = sum(body) % 256
        events, out = feed([b"$" + body + b"#%02x" % (right ^ (1 << bit))], no_ack=no_ack)
        assert [type(e) for e in events] == [BadPacket] and out == (b"" if no_ack else b"-")
        events, out = feed([b"$" + body + b"#%02x" % right], no_ack=no_ack)
        assert events == [Packet(rsp.decode_payload(body))] and out == (b"" if no_ack else b"+")


# --- found by mutation testing (issue 14) -------------------------------------------------------


@pytest.fixture(autouse=True)
def _cold_run_cache():
    """Every test starts with rsp's run-encoding cache empty, so it exercises the encoder, not
    answers an earlier test left in the cache (mutmut learns which tests reach which function
    from one run of the whole file)."""
    rsp._run_cache.clear()


def test_need_data_survives_pickling_as_the_singleton():
    import pickle

    assert pickle.loads(pickle.dumps(NEED_DATA)) is NEED_DATA


def test_repr_shows_state_mode_and_eof():
    conn = RspConnection()
    assert repr(conn) == "<RspConnection IDLE ack>"
    conn.resumed()
    assert repr(conn) == "<RspConnection RUNNING ack>"
    conn = RspConnection()
    conn.start_no_ack()
    conn.receive_data(b"")
    assert repr(conn) == "<RspConnection IDLE no-ack, EOF>"


@pytest.mark.parametrize("n, body", [
    (4, b"0* "),     # the manual's example: ' ' is 3 more
    (7, b'0*"0'),    # 6 more would be '#' (forbidden): 5 more ('"'), then one literal
    (8, b'0*"00'),   # the manual's example of dodging '#' and '$'
    (15, b"0*)00"),  # 14 ('+') and 13 ('*') are forbidden: 12 more (')')
    (17, b"0*,0"),   # 16 ('-') is forbidden: 15 more (',')
    (98, b"0*~"),    # the longest run one count byte can say
    (99, b"0*~0"),
    (102, b"0*~0* "),
])
def test_rle_picks_the_largest_allowed_count(n, body):
    assert rsp.encode_payload(b"0" * n) == body
    assert rsp.frame(b"0" * n) == ref_frame(body)  # frame() encodes runs by default


def test_rle_runs_of_any_byte_that_needs_no_escape():
    for c in sorted(set(range(256)) - set(b"#$}*")):
        assert rsp.encode_payload(bytes([c]) * 4) == bytes([c]) + b"* ", hex(c)
    for c in b"#$}*":  # escaped bytes are never run-length encoded
        assert rsp.encode_payload(bytes([c]) * 4) == rsp.encode_payload(bytes([c]) * 4, rle=False)


@pytest.mark.parametrize("payload", [b"aaa\x00", b"aaaa\x00", b"xaaa\x00", b"\x00\x00\x00a",
                                     b"aaa", b"aaaa", b"\x00" * 4, b"ab\x00\x00\x00"])
def test_rle_short_payloads_round_trip(payload):
    for body in (rsp.encode_payload(payload), rsp._encode_plain(payload)):
        assert ref_decode(body) == payload, body


def test_run_cache_stays_bounded():
    rsp._run_cache.clear()
    for c in range(1, 40):
        for n in range(4, 300):
            rsp.encode_payload(b"<" + bytes([c]) * n + b">")
    assert len(rsp._run_cache) <= 4096
    assert max(map(len, rsp._run_cache)) <= 256


def test_frame_rle_flag_and_connection_default():
    assert rsp.frame(b"0000", rle=False) == ref_frame(b"0000")
    conn = RspConnection()  # RLE is off by default (rule 11)
    conn.send_packet(b"0000")
    assert conn.data_to_send() == ref_frame(b"0000")
    conn = RspConnection(rle=True)
    conn.send_packet(b"0000")
    assert conn.data_to_send() == ref_frame(b"0* ")
    conn.resumed()
    conn.send_stop_reply(b"T05" + b"0" * 8)
    assert conn.data_to_send() == ref_frame(b'T050*"00')


def test_default_packet_size_and_the_smallest_one():
    assert rsp.PACKET_SIZE == 0x4000  # 16 KiB: what the stub advertises (qSupported PacketSize)
    conn = RspConnection()  # PACKET_SIZE by default
    conn.receive_data(ref_frame(b"a" * 0x4000) + ref_frame(b"a" * 0x4001))
    assert [type(e) for e in drain(conn)] == [Packet, BadPacket]
    assert conn.data_to_send() == b"+-"
    events, out = feed([ref_frame(b"g"), ref_frame(b"gg")], packet_size=1)
    assert [type(e) for e in events] == [Packet, BadPacket] and out == b"+-"
    with pytest.raises(ValueError, match=r"\bpacket_size must be positive\b"):
        RspConnection(packet_size=0)


def test_decode_limit_is_inclusive():
    assert rsp.decode_payload(b"abc", limit=3) == b"abc"
    assert rsp.decode_payload(b"a*!", limit=5) == b"a" * 5
    with pytest.raises(ValueError, match=r"\boversized packet \(> 2 bytes\)"):
        rsp.decode_payload(b"abc", limit=2)


@pytest.mark.parametrize("body, reason", [
    (b"*!", r"\brun-length '\*' with nothing to repeat\b"),
    (b"a*\x1f", r"\bbad run-length count byte 0x1f\b"),
    (b"a}", r"\bpacket ends inside an escape '\}'"),
    (b"a*", r"\bpacket ends inside an run-length '\*'"),
])
def test_bad_packet_reasons(body, reason):
    with pytest.raises(ValueError, match=reason):
        rsp.decode_payload(body)
    events, _ = feed([ref_frame(body)])
    assert re.search(reason, events[0].reason)


def test_framing_failure_reasons():
    events, _ = feed([b"$m10$" + ref_frame(b"g")[1:]])
    assert re.search(r"\bpacket abandoned by '\$'", events[0].reason)
    events, _ = feed([b"$g#zz"])
    assert re.search(r"\bbad checksum digits b'zz'", events[0].reason)
    events, _ = feed([b"$g#00"])
    assert re.search(r"\bchecksum mismatch: sent 00, computed 67\b", events[0].reason)


def test_local_errors_say_what_was_refused():
    conn = RspConnection()
    with pytest.raises(LocalProtocolError, match=r"\bsend_stop_reply is illegal while IDLE\b"):
        conn.send_stop_reply(b"S05")
    conn.receive_data(b"")
    with pytest.raises(LocalProtocolError, match=r"\breceive_data\(\) after EOF\b"):
        conn.receive_data(b"x")


def test_body_memory_bound_is_exact_when_fed_byte_by_byte():
    # Rule 5: at most 2 * packet_size + 1 bytes of body are held, whatever the chunking.
    conn = RspConnection(packet_size=PS)
    conn.receive_data(b"$")
    peak = 0
    for _ in range(4 * PS):
        conn.receive_data(b"x")
        assert conn.next_event() is NEED_DATA
        peak = max(peak, conn.buffered_bytes)
    assert 2 * PS <= peak <= 2 * PS + 1
    conn.receive_data(b"#00")
    assert "oversized" in conn.next_event().reason


# --- remembered replies (rule 15) ---------------------------------------------------------------


def _answered(conn: RspConnection, data: bytes, reply: bytes, *, remember: bool = True) -> None:
    """Feed `data` (one request), answer it with `reply`, and remember the answer."""
    conn.receive_data(data)
    assert isinstance(conn.next_event(), Packet)
    assert conn.next_event() is NEED_DATA
    conn.send_packet(reply)
    if remember:
        conn.remember_reply()
    conn.data_to_send()


def test_a_remembered_reply_answers_the_same_request_byte_for_byte():
    conn = RspConnection()
    conn.start_no_ack()
    _answered(conn, b"$m1000,4#8e", b"1f2003d5")
    _answered(conn, b"$qfThreadInfo#bb", b"m1")
    assert conn.replay(b"$m1000,4#8e") == b"$1f2003d5#" + b"%02x" % rsp.checksum(b"1f2003d5")
    assert conn.replay(b"$qfThreadInfo#bb") == rsp.frame(b"m1", rle=False)
    # Not another request, nor the same one with other bytes around it or in another case.
    for other in (b"$m1000,8#92", b"$m1000,4#8E", b"$m1000,4#8e$qfThreadInfo#bb", b"+$m1000,4#8e", b"$m1000,4#8"):
        assert conn.replay(other) is None
    conn.forget_replies()
    assert conn.replay(b"$m1000,4#8e") is None


def test_no_reply_is_remembered_in_ack_mode_or_for_a_request_that_was_decoded():
    conn = RspConnection()
    _answered(conn, b"$m1000,4#8e", b"00")  # ack mode: a repeat may be a retransmission
    assert conn.replay(b"$m1000,4#8e") is None
    conn.start_no_ack()
    escaped = rsp.frame(b"X1000,1:#")  # '#' escaped: the state machine decoded it
    conn.receive_data(escaped)
    assert isinstance(conn.next_event(), Packet)
    assert conn.next_event() is NEED_DATA
    conn.send_packet(b"OK")
    assert conn.remember_reply() == b""
    conn.data_to_send()
    assert conn.replay(escaped) is None and conn.replay(b"") is None
    conn.receive_data(b"$m1000,")  # in two pieces: no whole frame to remember it by
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"4#8e")
    assert isinstance(conn.next_event(), Packet)
    assert conn.next_event() is NEED_DATA
    conn.send_packet(b"00")
    assert conn.remember_reply() == b""  # (nothing remembered, and no request to follow)
    conn.data_to_send()
    assert conn.replay(b"$m1000,4#8e") is None
    assert conn.replay(b"") is None  # (EOF is never a request)


def test_nothing_is_replayed_past_buffered_bytes_either_way():
    conn = RspConnection()
    conn.start_no_ack()
    _answered(conn, b"$m1000,4#8e", b"1f2003d5")
    conn.receive_data(b"$m20")  # a partial request waits: the repeat must come after it
    assert conn.next_event() is NEED_DATA
    assert conn.replay(b"$m1000,4#8e") is None
    conn.receive_data(b"00,4#%02x" % rsp.checksum(b"m2000,4"))
    assert isinstance(conn.next_event(), Packet)
    assert conn.next_event() is NEED_DATA
    conn.send_packet(b"OK")  # queued, not yet sent: the replay would overtake it
    assert conn.replay(b"$m1000,4#8e") is None
    conn.data_to_send()
    assert conn.replay(b"$m1000,4#8e") is not None


def test_remembered_replies_are_bounded():
    conn = RspConnection()
    conn.start_no_ack()
    for n in range(RspConnection.MAX_REMEMBERED + 1):
        _answered(conn, rsp.frame(b"m%x,4" % n), b"%08x" % n)
    assert len(conn._replies) <= RspConnection.MAX_REMEMBERED
    last = RspConnection.MAX_REMEMBERED
    assert conn.replay(rsp.frame(b"m%x,4" % last)) == rsp.frame(b"%08x" % last, rle=False)


def test_a_reply_remembered_ahead_answers_the_request_as_the_peer_frames_it():
    conn = RspConnection()
    conn.remember(b"m1000,4", b"1f2003d5")  # ack mode: nothing
    assert conn.replay(b"$m1000,4#8e") is None
    conn.start_no_ack()
    conn.remember(b"m1000,4", b"1f2003d5")
    conn.remember(b"X1000,1:#", b"OK")  # a request with a byte the peer escapes
    assert conn.replay(b"$m1000,4#8e") == rsp.frame(b"1f2003d5", rle=False)
    assert conn.replay(rsp.frame(b"X1000,1:#", rle=False)) == rsp.frame(b"OK", rle=False)
    assert conn.replay(b"$X1000,1:##a6") is None  # unescaped: not what a peer sends
    # Bytes received and not yet framed come first: nothing overtakes them.
    conn.receive_data(b"$m1000,4#8e")
    assert conn.replay(b"$m1000,4#8e") is None
