"""Bounded fuzzing of the stub (protocol core + session + a real VM) in CI; the long,
coverage-guided run is bench/fuzz_stub.py. Rules: every input gets a NAK, an Exx, the empty
reply or a legitimate answer; nothing raises; a rejected packet leaves registers, guest RAM and
breakpoints unchanged."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


from bench.fuzz_stub import StubUnderTest  # noqa: E402

from guestdbg.gdb import rsp  # noqa: E402

HEX = st.text("0123456789abcdef", min_size=0, max_size=20).map(str.encode)
NUM = st.one_of(HEX, st.sampled_from([b"ffffffffffffffffff", b"40100000", b"0", b"-1", b"zz", b"100000000"]))

PACKET = st.one_of(
    st.tuples(st.sampled_from([b"m", b"M", b"X"]), NUM, st.just(b","), NUM, st.sampled_from([b"", b":", b":00", b":zz"]))
    .map(b"".join),
    st.tuples(st.sampled_from([b"Z", b"z"]), st.sampled_from(b"012345"), st.just(b","), NUM, st.just(b","), NUM)
    .map(lambda t: t[0] + bytes([t[1]]) + b"".join(t[2:])),
    st.tuples(st.sampled_from([b"p", b"P"]), NUM, st.sampled_from([b"", b"=", b"=1234", b"=zz"])).map(b"".join),
    st.tuples(st.just(b"G"), HEX).map(b"".join),
    st.sampled_from([b"?", b"g", b"s", b"vCont?", b"vCont;s", b"vCont;x", b"vCont;s:2", b"qC", b"qfThreadInfo",
                     b"qsThreadInfo", b"Hg1", b"T1", b"T2", b"qAttached", b"qXfer:features:read:target.xml:0,40",
                     b"qXfer:features:read:other.xml:0,40", b"qXfer:memory-map:read::ffff,10",
                     b"qSupported:swbreak+", b"QStartNoAckMode", b"qRcmd,7a7a", b"bc", b"bs", b"vFile:open:x",
                     b"qXfer:features:read:target.xml:zz,10"]),
    st.binary(max_size=40),
)


@pytest.fixture(scope="module")
def stub(guest_dir):
    return StubUnderTest(guest_dir / "bp_targets.elf")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(packets=st.lists(PACKET, min_size=1, max_size=6), framing=st.sampled_from(["good", "bad", "raw"]))
def test_stub_survives_and_rejections_change_nothing(stub, packets, framing):
    stub.new_connection()
    data = b""
    for p in packets:
        framed = rsp.frame(p)
        if framing == "bad":
            framed = framed[:-1] + (b"0" if framed[-1:] != b"0" else b"1")
        data += framed if framing != "raw" else p
    replies = stub.feed(data)  # raises AssertionError if a rejected packet changed the VM
    for packet, reply in stub.exchanges:
        assert _fits_grammar(packet, reply), (packet, reply)
    if framing == "bad":
        assert replies == [] and stub.exchanges == []  # none acted on ...
        assert stub.sent == b"-" * len(packets)  # ... and every frame NAKed, once
    if framing == "good":
        # every packet answered exactly once, up to a detach or kill, which ends the connection
        n = len(stub.exchanges)
        assert [p for p, _ in stub.exchanges] == packets[:n]
        assert n == len(packets) or stub.exchanges[-1][1] is None, (packets, stub.exchanges)


ERROR = re.compile(rb"E[0-9a-f]{2}|E\..*", re.S)
HEXS = re.compile(rb"([0-9a-f]{2})*")
STOP = re.compile(rb"[TS][0-9a-f]{2}.*|W[0-9a-f]{2}.*|X[0-9a-f]{2}.*", re.S)


def _fits_grammar(packet: bytes, reply: bytes) -> bool:
    """Is `reply` something the protocol allows as the answer to `packet` (gdb manual,
    "Packets")? An error (Exx or E.text) and the empty reply ("not supported") fit anything."""
    if reply is None:  # a detach or kill: the connection ends
        return packet[:1] in (b"D", b"k") or packet.startswith(b"vKill")
    if reply == b"" or ERROR.fullmatch(reply):
        return True
    head = packet[:1]
    if head in (b"m", b"g", b"p"):
        return bool(HEXS.fullmatch(reply))
    if head in (b"M", b"X", b"P", b"G", b"Z", b"z", b"H", b"T", b"Q"):  # Q: a general set packet
        return reply == b"OK"
    if head in (b"?", b"s", b"c", b"S", b"C") or packet.startswith(b"vCont;"):
        return bool(STOP.fullmatch(reply))
    if packet == b"vCont?":
        return reply.startswith(b"vCont;")
    if packet == b"qC":
        return bool(re.fullmatch(rb"QC[0-9a-f]+", reply))
    if packet == b"qfThreadInfo":
        return bool(re.fullmatch(rb"m[0-9a-f]+(,[0-9a-f]+)*", reply))
    if packet == b"qsThreadInfo":
        return reply == b"l"
    if packet in (b"qAttached", b"qqemu.PhyMemMode"):
        return reply in (b"0", b"1")
    if packet.startswith(b"qXfer:"):
        return reply[:1] in (b"l", b"m")
    if packet.startswith(b"qSupported"):
        return b"PacketSize=" in reply
    if packet.startswith(b"qRcmd,"):
        return reply == b"OK" or (reply[:1] == b"O" and bool(HEXS.fullmatch(reply[1:])))
    return False  # a packet the stub should not have answered with anything but "" or an error
