"""gdb register packet hex (gdb/reghex.py) for both catalogues: `g` is every register's `p`
hex in catalogue order, `G` and `P` invert them, and bad input is refused."""

from __future__ import annotations

import random

import pytest

from guestdbg.gdb import aarch64_regs, amd64_regs

CODECS = [pytest.param(aarch64_regs, id="aarch64"), pytest.param(amd64_regs, id="amd64")]


def _values(codec, seed: int) -> list[int]:
    rng = random.Random(seed)
    edge = lambda bits: rng.choice([0, 1, (1 << bits) - 1, 1 << (bits - 1), rng.getrandbits(bits)])  # noqa: E731
    return [edge(r.bitsize) for r in codec.REGISTERS]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("seed", range(20))
def test_g_is_every_p_in_order_and_G_inverts_it(codec, seed):
    values = _values(codec, seed)
    g = codec.encode_g(values)
    assert g == b"".join(codec.encode_register(r.gdb_regnum, v) for r, v in zip(codec.REGISTERS, values))
    assert len(g) == codec.G_PACKET_HEX_LEN
    assert codec.decode_G(g) == values
    for r, v in zip(codec.REGISTERS, values):
        assert codec.decode_register(r.gdb_regnum, codec.encode_register(r.gdb_regnum, v)) == v


@pytest.mark.parametrize("codec", CODECS)
def test_register_hex_is_little_endian_and_full_width(codec):
    for r in codec.REGISTERS:
        assert codec.encode_register(r.gdb_regnum, 0x0102) == b"0201" + b"00" * (r.bitsize // 8 - 2)


@pytest.mark.parametrize("codec", CODECS)
def test_bad_packets_are_refused(codec):
    g = codec.encode_g([0] * len(codec.REGISTERS))
    with pytest.raises(ValueError, match="expected"):
        codec.decode_G(g[:-2])
    with pytest.raises(ValueError, match="not hex"):
        codec.decode_G(b"zz" + g[2:])
    first = codec.REGISTERS[0]
    with pytest.raises(ValueError, match="expected"):
        codec.decode_register(first.gdb_regnum, b"00")
    with pytest.raises(KeyError):
        codec.encode_register(len(codec.REGISTERS) + 1000, 0)


@pytest.mark.parametrize("codec", CODECS)
def test_expedited_registers_are_those_of_the_stop_reply(codec):
    values = [0x1122, 0x3344, 0x5566][: len(codec.EXPEDITED_REGNUMS)]
    out = codec.encode_expedited(values)
    assert list(out) == list(codec.EXPEDITED_REGNUMS)
    for n, v in zip(codec.EXPEDITED_REGNUMS, values):
        assert out[n] == codec.encode_register(n, v)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("seed", range(10))
def test_expedited_reply_is_the_expedited_registers_in_number_order(codec, seed):
    all_values = _values(codec, seed)
    values = [all_values[n] for n in codec.EXPEDITED_REGNUMS]
    pieces = codec.encode_expedited(values)
    assert codec.encode_expedited_reply(values) == b"".join(
        b"%02x:%s;" % (n, pieces[n]) for n in sorted(pieces))
