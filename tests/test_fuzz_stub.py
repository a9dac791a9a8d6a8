"""Bounded fuzzing of the stub (protocol core + session + a real VM) in CI; the long,
coverage-guided run is bench/fuzz_stub.py. Rules: every input gets a NAK, an Exx, the empty
reply or a legitimate answer; nothing raises; a rejected packet leaves registers, guest RAM and
breakpoints unchanged."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from fuzz_stub import StubUnderTest  # noqa: E402

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
    for r in replies:
        assert r == b"" or r == b"OK" or r[:1] in b"ElmTSWOQ0123456789abcdefP" or r.startswith(b"vCont"), r
    if framing == "bad":
        assert replies == []  # every packet NAKed, none acted on
