"""The hex of gdb's register packets (`g`, `G`, `p`, `P` and a `T` stop reply's expedited
registers) for one register catalogue: each register little-endian, in full, in gdb's
numbering order. `aarch64_regs` and `amd64_regs` each make one `RegisterHex` and export its
methods as their packet functions.
"""

from __future__ import annotations

import re
import struct
from typing import Protocol, Sequence

_HEX = re.compile(rb"[0-9a-fA-F]*")
# Little-endian chunks a register of a given width packs into (an x87 register is 80 bits).
_CHUNKS = {8: "B", 16: "H", 32: "I", 64: "Q", 80: "QH", 128: "QQ"}
_LOW64 = (1 << 64) - 1


class HexRegister(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def bitsize(self) -> int: ...
    @property
    def gdb_regnum(self) -> int: ...


class RegisterHex:
    def __init__(self, registers: Sequence[HexRegister], expedited: Sequence[int]):
        self.registers = tuple(registers)
        self.by_regnum = {r.gdb_regnum: r for r in self.registers}
        self.expedited = tuple(expedited)
        self.g_packet_hex_len = sum(r.bitsize // 4 for r in self.registers)
        # The whole `g` layout as one struct: packing ~90 registers one int.to_bytes at a time
        # was a third of a `g`. Registers wider than 64 bits are split into their chunks.
        self._split = [r.bitsize > 64 for r in self.registers]
        self._g_struct = struct.Struct("<" + "".join(_CHUNKS[r.bitsize] for r in self.registers))
        # A stop reply's "NN:hex;" for each expedited register, in register-number order: one
        # struct and one format for all of them (the reply is built at every stop).
        order = sorted(range(len(self.expedited)), key=lambda i: self.expedited[i])
        self._expedited_order = tuple(order)
        self._expedited_sizes = tuple(self.by_regnum[self.expedited[i]].bitsize // 8 for i in order)
        self._expedited_format = "".join(f"{self.expedited[i]:02x}:%s;" for i in order).encode("ascii")

    def encode_expedited_reply(self, values: Sequence[int]) -> bytes:
        """The expedited registers' part of a T stop reply ("NN:hex;" each, by register number),
        from their values in `expedited` order: the same text as encode_expedited's pieces."""
        return self._expedited_format % tuple(
            values[i].to_bytes(size, "little").hex().encode("ascii")
            for i, size in zip(self._expedited_order, self._expedited_sizes))

    def lookup(self, regnum: int) -> HexRegister:
        """KeyError for a register number the catalogue does not have."""
        try:
            return self.by_regnum[regnum]
        except KeyError:
            raise KeyError(f"no register number {regnum}") from None

    @staticmethod
    def _to_hex(r: HexRegister, value: int) -> bytes:
        return value.to_bytes(r.bitsize // 8, "little").hex().encode("ascii")

    @staticmethod
    def _from_hex(r: HexRegister, hexdata: bytes) -> int:
        """One register's hex (exact length), or ValueError."""
        if len(hexdata) != r.bitsize // 4:
            raise ValueError(f"{r.name}: expected {r.bitsize // 4} hex digits, got {len(hexdata)}")
        if not _HEX.fullmatch(hexdata):
            raise ValueError(f"{r.name}: not hex: {bytes(hexdata)!r}")
        return int.from_bytes(bytes.fromhex(hexdata.decode("ascii")), "little")

    def encode_g(self, values: Sequence[int]) -> bytes:
        """The `g` reply for every register's value (catalogue order, as `read_all` gives them)."""
        flat: list[int] = []
        for split, v in zip(self._split, values):
            if split:
                flat += (v & _LOW64, v >> 64)
            else:
                flat.append(v)
        return self._g_struct.pack(*flat).hex().encode("ascii")

    def decode_G(self, hexdata: bytes) -> list[int]:  # noqa: N802 (packet letter)
        """Every register's value from a `G` payload. ValueError for a bad length or bad hex."""
        hexdata = bytes(hexdata)
        if len(hexdata) != self.g_packet_hex_len:
            raise ValueError(f"G packet: expected {self.g_packet_hex_len} hex digits, got {len(hexdata)}")
        if not _HEX.fullmatch(hexdata):
            raise ValueError("G packet: not hex")
        values, pos = [], 0
        for r in self.registers:
            values.append(self._from_hex(r, hexdata[pos:pos + r.bitsize // 4]))
            pos += r.bitsize // 4
        return values

    def encode_register(self, regnum: int, value: int) -> bytes:
        """The `p` reply for one register's value. KeyError for an unknown number."""
        return self._to_hex(self.lookup(regnum), value)

    def decode_register(self, regnum: int, hexvalue: bytes) -> int:
        """The value a `P` packet carries. KeyError for an unknown number; ValueError for bad
        hex or a wrong length."""
        return self._from_hex(self.lookup(regnum), bytes(hexvalue))

    def encode_expedited(self, values: Sequence[int]) -> dict[int, bytes]:
        """{gdb regnum: hex} for a T stop reply, from the values of the expedited registers
        (in that order)."""
        return {n: self._to_hex(self.by_regnum[n], v) for n, v in zip(self.expedited, values)}
