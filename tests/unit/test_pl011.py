"""The PL011 model (board.pl011) and the console input pieces (board.console_input), without a vCPU."""

from __future__ import annotations

import json
import threading

import pytest

from guestdbg.board import pl011 as p
from guestdbg.board.console_input import CTRL_A, ConsoleInput, ConsoleQuit, EscapeMux
from guestdbg.board.pl011 import Pl011


class Uart:
    def __init__(self, **kw):
        self.out = bytearray()
        self.levels: list[bool] = []
        self.dev = Pl011(self.out.extend, on_irq_change=self.levels.append, **kw)

    def r(self, off: int) -> int:
        return self.dev.read(off, 4)

    def w(self, off: int, value: int) -> None:
        self.dev.write(off, 4, value)

    def fifo_on(self) -> None:
        self.w(p.UARTLCR_H, 0x70)


def test_reset_values_as_the_trm():
    u = Uart()
    assert u.r(p.UARTFR) == p.FR_TXFE | p.FR_RXFE == 0x90
    assert u.r(p.UARTCR) == 0x300
    assert u.r(p.UARTIFLS) == 0x12
    for off in (p.UARTIMSC, p.UARTRIS, p.UARTMIS, p.UARTLCR_H, p.UARTIBRD, p.UARTFBRD, p.UARTDMACR, p.UARTRSR):
        assert u.r(off) == 0, hex(off)
    assert not u.dev.irq_level() and u.levels == []


def test_id_registers():
    u = Uart()
    assert [u.r(0xFE0 + 4 * i) for i in range(8)] == [0x11, 0x10, 0x14, 0x00, 0x0D, 0xF0, 0x05, 0xB1]
    u.w(0xFE0, 0xFF)
    assert u.r(0xFE0) == 0x11


def test_transmit_goes_out_at_once_and_never_fills():
    u = Uart()
    for ch in b"hi\n":
        u.w(p.UARTDR, ch | 0x500)  # only the low 8 bits are data
        fr = u.r(p.UARTFR)
        assert fr & p.FR_TXFE and not fr & (p.FR_TXFF | p.FR_BUSY)
    assert bytes(u.out) == b"hi\n"


def test_control_registers_keep_their_bits():
    u = Uart()
    for off, value, expect in ((p.UARTIBRD, 0x12345, 0x2345), (p.UARTFBRD, 0xFF, 0x3F), (p.UARTLCR_H, 0x1FF, 0xFF),
                               (p.UARTCR, 0x10301, 0x0301), (p.UARTIFLS, 0xFF, 0x3F), (p.UARTIMSC, 0xFFFF, 0x7FF),
                               (p.UARTDMACR, 0xF, 0x7), (p.UARTILPR, 0x1FF, 0xFF)):
        u.w(off, value)
        assert u.r(off) == expect, hex(off)
    u.w(p.UARTFR, 0)
    u.w(p.UARTRIS, 0x7FF)
    assert u.r(p.UARTFR) == 0x90 and u.r(p.UARTRIS) == 0
    assert u.r(0x100) == 0  # reserved: RAZ/WI
    u.w(0x100, 5)
    assert u.r(0x100) == 0


def test_holding_register_without_fifo():
    u = Uart()
    assert u.dev.feed(b"abc") == 1
    assert u.r(p.UARTFR) == p.FR_TXFE | p.FR_RXFF
    assert u.r(p.UARTDR) == ord("a")
    assert u.r(p.UARTFR) & p.FR_RXFE
    assert u.r(p.UARTDR) == 0  # empty: reads zero


def test_fifo_depth_flags_and_backpressure():
    u = Uart()
    u.fifo_on()
    data = bytes(range(0x41, 0x41 + 20))
    assert u.dev.feed(data) == 16
    assert u.dev.feed(data[16:]) == 0
    fr = u.r(p.UARTFR)
    assert fr & p.FR_RXFF and not fr & p.FR_RXFE
    got = u.r(p.UARTDR)
    assert got == 0x41  # error bits 8-11 zero
    assert not u.r(p.UARTFR) & p.FR_RXFF
    assert u.dev.feed(data[16:]) == 1
    rest = [u.r(p.UARTDR) for _ in range(16)]
    assert bytes(rest) == data[1:17]
    assert u.r(p.UARTFR) & p.FR_RXFE and u.r(p.UARTRSR) == 0


def test_rx_source_is_pulled_as_the_guest_reads():
    source = bytearray(b"x" * 40)

    def take(n: int) -> bytes:
        chunk = bytes(source[:n])
        del source[:n]
        return chunk

    u = Uart(rx_source=take)
    u.fifo_on()
    assert not u.r(p.UARTFR) & p.FR_RXFE  # FR pulled 16
    assert len(source) == 24
    got = bytearray()
    while not u.r(p.UARTFR) & p.FR_RXFE:
        got.append(u.r(p.UARTDR))
    assert bytes(got) == b"x" * 40 and not source


@pytest.mark.parametrize("ifls, trigger", [(0 << 3, 2), (1 << 3, 4), (2 << 3, 8), (3 << 3, 12), (4 << 3, 14)])
def test_rx_interrupt_at_the_trigger_level(ifls, trigger):
    u = Uart()
    u.fifo_on()
    u.w(p.UARTIFLS, ifls)
    u.w(p.UARTIMSC, p.INT_RX)
    u.dev.feed(b"a" * (trigger - 1))
    assert not u.r(p.UARTRIS) & p.INT_RX and not u.dev.irq_level()
    u.dev.feed(b"a")
    assert u.r(p.UARTRIS) & p.INT_RX and u.r(p.UARTMIS) == p.INT_RX and u.dev.irq_level()
    assert u.levels == [True]
    u.r(p.UARTDR)  # below the trigger level again
    assert not u.r(p.UARTRIS) & p.INT_RX and u.levels == [True, False]


def test_receive_timeout_is_immediate_and_clears_when_empty_or_by_icr():
    u = Uart()
    u.fifo_on()
    u.w(p.UARTIMSC, p.INT_RT)
    u.dev.feed(b"ab")  # below the 1/2 trigger: only the timeout interrupt
    assert u.r(p.UARTMIS) == p.INT_RT and u.levels == [True]
    u.r(p.UARTDR)
    assert u.dev.irq_level()
    u.r(p.UARTDR)
    assert not u.dev.irq_level() and u.levels == [True, False]
    u.dev.feed(b"c")
    u.w(p.UARTICR, p.INT_RT)
    assert not u.dev.irq_level() and u.levels == [True, False, True, False]
    assert u.r(p.UARTFR) & p.FR_RXFE == 0  # the data is still there


def test_tx_interrupt_after_a_write_and_masks():
    u = Uart()
    assert not u.r(p.UARTRIS) & p.INT_TX  # clear after reset, as on hardware
    u.w(p.UARTDR, ord("x"))
    assert u.r(p.UARTRIS) == p.INT_TX and u.r(p.UARTMIS) == 0 and u.levels == []
    u.w(p.UARTIMSC, p.INT_TX)
    assert u.r(p.UARTMIS) == p.INT_TX and u.levels == [True]
    u.w(p.UARTIMSC, 0)
    assert u.levels == [True, False]
    u.w(p.UARTIMSC, p.INT_TX)
    u.w(p.UARTICR, 0x7FF)
    assert u.r(p.UARTRIS) == 0 and u.levels == [True, False, True, False]
    u.w(p.UARTICR, 0x7FF)  # no change, no call
    assert u.levels == [True, False, True, False]


def test_ecr_write_clears_rsr():
    u = Uart()
    u.dev.rsr = 0xF
    u.w(p.UARTRSR, 0)
    assert u.r(p.UARTRSR) == 0


def test_state_round_trip_is_json():
    u = Uart()
    u.fifo_on()
    u.w(p.UARTIMSC, p.INT_RX | p.INT_RT)
    u.w(p.UARTIBRD, 13)
    u.dev.feed(b"hello")
    state = json.loads(json.dumps(u.dev.state()))
    v = Uart()
    v.dev.restore(state)
    assert v.levels == [True]  # the restored line level is announced
    assert v.dev.state() == u.dev.state()
    assert bytes(v.r(p.UARTDR) for _ in range(5)) == b"hello"
    assert v.r(p.UARTIBRD) == 13


def test_restores_the_old_transmit_only_state():
    v = Uart()
    v.dev.restore({"regs": {"48": 0x301, "36": 13, "2048": 7}})  # CR, IBRD and a stray offset
    assert v.r(p.UARTCR) == 0x301 and v.r(p.UARTIBRD) == 13 and v.r(p.UARTIFLS) == 0x12
    assert v.r(p.UARTFR) == 0x90 and v.levels == []


def test_escape_mux_like_qemu():
    mux = EscapeMux()
    assert mux.feed(b"ab\x03") == (b"ab\x03", [])
    assert mux.feed(bytes([CTRL_A])) == (b"", [])
    assert mux.feed(bytes([CTRL_A]) + b"c") == (bytes([CTRL_A]) + b"c", [])
    assert mux.feed(b"\x01h\x01?") == (b"", ["help", "help"])
    assert mux.feed(b"\x01zq") == (b"q", [])  # unknown escapes are dropped
    assert mux.feed(b"a\x01xb") == (b"a", ["quit"])


def test_console_input_is_bounded_and_thread_safe():
    inp = ConsoleInput(limit=8)
    inp.push(b"0123456789")
    assert inp.pending == 10 and not inp.wait_for_room(timeout=0.01)
    woke = threading.Event()
    t = threading.Thread(target=lambda: inp.wait_for_room() and woke.set())
    t.start()
    assert inp.take(4) == b"0123"
    t.join(timeout=5)
    assert woke.is_set()
    assert inp.take(100) == b"456789" and inp.take(1) == b""
    inp.check_quit()
    inp.quit_requested = True
    with pytest.raises(ConsoleQuit):
        inp.check_quit()
