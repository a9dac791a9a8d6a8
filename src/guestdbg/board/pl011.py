"""The Arm PrimeCell UART (PL011), as the virt board's console: transmit, receive, interrupts.

Registers (offsets from the TRM, DDI 0183): DR, RSR/ECR, FR, ILPR, IBRD, FBRD, LCR_H, CR, IFLS,
IMSC, RIS, MIS, ICR, DMACR, and the PrimeCell identification registers at 0xFE0-0xFFC (Linux's
AMBA bus reads them to match the driver).

Transmit: a byte written to DR goes to the console at once, so the transmit FIFO is always
empty: FR.TXFE is set, FR.TXFF and FR.BUSY never are.

Receive: the host side offers bytes with `feed(data)`, which takes only as many as fit (16
with LCR_H.FEN set, one holding register without), so the caller keeps the rest: that is the
backpressure a real line has with flow control. Or it gives a `rx_source(room) -> bytes`, which
the UART pulls from itself whenever the guest reads DR or FR and the FIFO has room, so a
polling guest sees input as fast as it takes it. A DR read pops the oldest byte; its error bits
(8-11: framing, parity, break, overrun) are always zero, since nothing on the host side can
produce those errors, and RSR reads zero.

Interrupts (RIS bits as in the TRM): RX (bit 4) is set when the receive FIFO fills to its
trigger level (IFLS.RXIFLSEL: 1/8 .. 7/8 of 16; 1 with the FIFO off) and cleared once reads take
it below that level or by ICR. RT (bit 6), the receive timeout, would on hardware fire after 32
bit periods without new data; there is no line timing here, so it is set as soon as a byte
arrives and stays set until the FIFO is empty or ICR clears it. A guest that enables RXIM and
RTIM, as Linux's driver does, thus gets its interrupt for the first byte, as on QEMU (which
raises RX at once, whatever the trigger level). TX (bit 5) is set after every DR write (the
byte left at once, so the FIFO just went below its trigger level) and cleared by ICR, as QEMU
does; it is clear after reset, as on hardware, where only a transition sets it. Writing RIS,
MIS or FR has no effect. The modem status interrupts and the error interrupts never fire.

The output line is `irq_level()`, any(RIS & IMSC); `on_irq_change(level)` is called whenever it
changes, after the register access or the input that changed it.

Not modelled (as on QEMU 7.2, which guests are written against): CR.UARTEN/TXE/RXE do not gate
the data flow, loopback (CR.LBE) does not loop, DMA requests never fire. Unlike QEMU, turning
LCR_H.FEN on or off does not empty the receive FIFO: input that the host delivered before the
guest set up its UART is kept, not lost (with FEN off and several bytes held, FR.RXFF stays set
until reads bring them down to one).

Threads: every method runs on the vCPU thread (the MMIO handlers run there mid-instruction);
input from other threads goes through a thread-safe buffer that `rx_source` reads
(board.console_input.ConsoleInput).
"""

from __future__ import annotations

from collections import deque
from typing import Callable

from guestdbg.vmapi import Console

UARTDR, UARTRSR, UARTFR, UARTILPR = 0x000, 0x004, 0x018, 0x020
UARTIBRD, UARTFBRD, UARTLCR_H, UARTCR = 0x024, 0x028, 0x02C, 0x030
UARTIFLS, UARTIMSC, UARTRIS, UARTMIS, UARTICR, UARTDMACR = 0x034, 0x038, 0x03C, 0x040, 0x044, 0x048

FR_BUSY, FR_RXFE, FR_TXFF, FR_RXFF, FR_TXFE = 1 << 3, 1 << 4, 1 << 5, 1 << 6, 1 << 7
LCR_H_FEN = 1 << 4
CR_UARTEN, CR_LBE, CR_TXE, CR_RXE = 1 << 0, 1 << 7, 1 << 8, 1 << 9

INT_RX, INT_TX, INT_RT = 1 << 4, 1 << 5, 1 << 6
INT_ALL = 0x7FF  # RIMIM .. OEIM, bits 0-10

FIFO_DEPTH = 16

# The control registers: offset -> (writable bits, reset value).
CONTROL_REGS: dict[int, tuple[int, int]] = {
    UARTILPR: (0xFF, 0),
    UARTIBRD: (0xFFFF, 0),
    UARTFBRD: (0x3F, 0),
    UARTLCR_H: (0xFF, 0),
    UARTCR: (0xFFFF, CR_TXE | CR_RXE),
    UARTIFLS: (0x3F, 0x12),  # both trigger levels at 1/2
    UARTIMSC: (INT_ALL, 0),
    UARTDMACR: (0x7, 0),
}

# UARTPeriphID0-3 and UARTPCellID0-3, as the TRM gives them.
ID_REGS = {0xFE0: 0x11, 0xFE4: 0x10, 0xFE8: 0x14, 0xFEC: 0x00,
           0xFF0: 0x0D, 0xFF4: 0xF0, 0xFF8: 0x05, 0xFFC: 0xB1}

# IFLS.RXIFLSEL (bits 5:3) -> the receive trigger level in a 16-entry FIFO.
RX_TRIGGER = {0: 2, 1: 4, 2: 8, 3: 12, 4: 14}


class Pl011:
    """A PL011 whose transmit side writes to `console` (see the module docstring)."""

    def __init__(self, console: Console, *, on_irq_change: Callable[[bool], None] | None = None,
                 rx_source: Callable[[int], bytes] | None = None):
        self.console = console
        self.on_irq_change = on_irq_change
        self.rx_source = rx_source
        self.reset()

    def reset(self) -> None:
        self.regs: dict[int, int] = {off: reset for off, (_, reset) in CONTROL_REGS.items()}
        self.rx: deque[int] = deque()
        self.ris = 0
        self.rsr = 0
        self._level = False

    # ------------------------------------------------------------------ the host side
    @property
    def fifo_depth(self) -> int:
        return FIFO_DEPTH if self.regs[UARTLCR_H] & LCR_H_FEN else 1

    @property
    def rx_room(self) -> int:
        return max(0, self.fifo_depth - len(self.rx))

    @property
    def rx_trigger(self) -> int:
        if not self.regs[UARTLCR_H] & LCR_H_FEN:
            return 1
        return RX_TRIGGER.get((self.regs[UARTIFLS] >> 3) & 7, 8)

    def feed(self, data: bytes) -> int:
        """Receive as many of `data`'s bytes as the FIFO has room for; returns how many it took
        (the caller keeps the rest and offers them again later)."""
        taken = min(len(data), self.rx_room)
        if taken:
            self.rx.extend(data[:taken])
            self.ris |= INT_RT
            if len(self.rx) >= self.rx_trigger:
                self.ris |= INT_RX
            self._update()
        return taken

    def pump(self) -> int:
        """Pull from `rx_source` while the FIFO has room; the number of bytes received."""
        if self.rx_source is None or not self.rx_room:
            return 0
        data = self.rx_source(self.rx_room)
        return self.feed(data) if data else 0

    def irq_level(self) -> bool:
        """The UART's combined interrupt output (UARTINTR)."""
        return bool(self.ris & self.regs[UARTIMSC])

    # ------------------------------------------------------------------ the guest side
    def read(self, offset: int, size: int) -> int:
        if offset == UARTDR:
            return self._read_dr()
        if offset == UARTFR:
            self.pump()
            flags = FR_TXFE
            if not self.rx:
                flags |= FR_RXFE
            if len(self.rx) >= self.fifo_depth:
                flags |= FR_RXFF
            return flags
        if offset == UARTRSR:
            return self.rsr
        if offset == UARTRIS:
            return self.ris
        if offset == UARTMIS:
            return self.ris & self.regs[UARTIMSC]
        if offset in CONTROL_REGS:
            return self.regs[offset]
        return ID_REGS.get(offset, 0)  # ICR is write-only; reserved offsets read as zero

    def _read_dr(self) -> int:
        self.pump()
        if not self.rx:
            return 0
        value = self.rx.popleft()
        if len(self.rx) < self.rx_trigger:
            self.ris &= ~INT_RX
        if not self.rx:
            self.ris &= ~INT_RT
        self.pump()  # room was made: the host side may have more
        self._update()
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == UARTDR:
            self.console(bytes([value & 0xFF]))
            self.ris |= INT_TX
        elif offset == UARTRSR:  # UARTECR: any write clears the error flags
            self.rsr = 0
        elif offset == UARTICR:
            self.ris &= ~value
        elif offset in CONTROL_REGS:
            mask = CONTROL_REGS[offset][0]
            self.regs[offset] = value & mask
        else:
            return  # FR, RIS, MIS, the ID registers and reserved offsets ignore writes
        self._update()

    def _update(self) -> None:
        level = self.irq_level()
        if level != self._level:
            self._level = level
            if self.on_irq_change is not None:
                self.on_irq_change(level)

    # ------------------------------------------------------------------ snapshots
    def state(self) -> dict:
        return {"regs": {str(k): v for k, v in self.regs.items()}, "rx": list(self.rx),
                "ris": self.ris, "rsr": self.rsr}

    def restore(self, state: dict) -> None:
        """Also takes the state of the transmit-only model before it (only "regs", holding
        whatever offsets the guest had written): its control registers are kept, the rest
        starts as after reset."""
        regs = {int(k): v for k, v in state.get("regs", {}).items()}
        self.regs = {off: regs.get(off, reset) & mask for off, (mask, reset) in CONTROL_REGS.items()}
        self.rx = deque(b & 0xFF for b in state.get("rx", []))
        self.ris = state.get("ris", 0) & INT_ALL
        self.rsr = state.get("rsr", 0)
        self._update()
