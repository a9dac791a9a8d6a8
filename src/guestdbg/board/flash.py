"""CFI parallel flash with the Intel/Sharp command set, as QEMU's pflash_cfi01 on its virt board.

A bank is `bank_width` bytes wide, made of `bank_width // device_width` chips side by side;
every status, ID and CFI query answer is one chip's, repeated in each chip's lane. Chip-level
addresses are the bank's divided by the bank width (CFI offset 0x10 is bank offset 0x40).

Like QEMU's ROM device under KVM, a bank has two modes. In read-array ("ROMD") mode it is a
KVM_MEM_READONLY memory slot: reads and instruction fetches run at full speed, and a write
comes out as KVM_EXIT_MMIO. A command write switches it to I/O mode: the slot is removed, so
every access exits and `mmio()` answers it (status, ID, CFI query). The contents are the
bank's own memory, which the slot maps (KVM's userspace_addr) and which stays while the slot is
away: no copies either way. After read-array (0xFF) the array is served from it by exits, and
the slot comes back once the guest goes on reading (ARRAY_READS_BEFORE_ROMD: a mode switch
remaps 64 MiB in every vCPU's engine), or at reset.

Commands (what U-Boot's drivers/mtd/cfi_flash.c and Linux's cfi_probe/cfi_cmdset_0001 use):
0xFF/0xF0/0x00 read array, 0x70 read status, 0x50 clear status, 0x90 read ID, 0x98 CFI query,
0x40/0x10 word program, 0x20 + 0xD0 block erase, 0xE8 + count + data + 0xD0 buffered write,
0x60 + 0x01/0xD0 block lock/unlock (accepted; blocks never lock). Operations finish at once:
the status register always reads ready (SR.7).
"""

from __future__ import annotations

import base64
import ctypes
import mmap
import zlib
from typing import Callable, Protocol

from guestdbg import kvm

# Status register bits (Intel StrataFlash SR)
SR_READY = 0x80  # SR.7: write state machine ready
SR_ERASE_ERROR = 0x20
SR_PROGRAM_ERROR = 0x10

# Commands
CMD_READ_ARRAY = 0xFF
CMD_AMD_RESET = 0xF0  # an AMD command set reset, which probes send to any chip
CMD_READ_STATUS = 0x70
CMD_CLEAR_STATUS = 0x50
CMD_READ_ID = 0x90
CMD_CFI_QUERY = 0x98
CMD_WORD_PROGRAM = 0x40
CMD_WORD_PROGRAM_ALT = 0x10
CMD_BLOCK_ERASE = 0x20
CMD_CONFIRM = 0xD0
CMD_BUFFERED_WRITE = 0xE8
CMD_LOCK_SETUP = 0x60
CMD_LOCK_BLOCK = 0x01
# Commands whose reads return the status register
STATUS_MODES = frozenset({CMD_WORD_PROGRAM, CMD_WORD_PROGRAM_ALT, CMD_BLOCK_ERASE, CMD_CLEAR_STATUS,
                          CMD_LOCK_SETUP, CMD_READ_STATUS, CMD_BUFFERED_WRITE})

# Commands that leave read-array mode
FIRST_CYCLE = frozenset({CMD_READ_STATUS, CMD_READ_ID, CMD_CFI_QUERY, CMD_WORD_PROGRAM, CMD_WORD_PROGRAM_ALT,
                         CMD_BLOCK_ERASE, CMD_BUFFERED_WRITE, CMD_LOCK_SETUP})

# QEMU virt's flash (hw/arm/virt.c): two banks of 64 MiB, 256 KiB sectors, 32 bits wide made of
# two x16 chips, Intel manufacturer 0x89 and device 0x18.
VIRT_FLASH_BANK_SIZE = 64 << 20
VIRT_FLASH_SECTOR_SIZE = 256 << 10
VIRT_FLASH_BANK_WIDTH = 4
VIRT_FLASH_DEVICE_WIDTH = 2
VIRT_FLASH_IDS = (0x89, 0x18)
WRITE_BUFFER_BITS = 11  # CFI 0x2A: 2 KiB write buffer per chip (a bank width above 1)
# Read-array mode is served through MMIO exits for this many reads before the memory slot comes
# back. QEMU's ROM device switches at once, but a slot change costs ~70 ms here (Unicorn unmaps
# and maps 64 MiB page by page, in every vCPU's engine) and U-Boot's probe alone does 512
# command/read-array pairs (a lock-status read per sector); guests that go on reading the array
# (U-Boot loading its environment) get the slot.
ARRAY_READS_BEFORE_ROMD = 256


def cfi_table(size: int, sector_size: int, bank_width: int, device_width: int) -> bytes:
    """One chip's CFI query table (JESD68 layout, Intel primary extended table at 0x31)."""
    chips = bank_width // device_width
    blocks = size // sector_size
    chip_sector = sector_size // chips
    t = bytearray(0x52)
    t[0x10:0x13] = b"QRY"
    t[0x13:0x15] = (0x0001).to_bytes(2, "little")  # primary command set: Intel/Sharp extended
    t[0x15:0x17] = (0x0031).to_bytes(2, "little")  # its extended table's address
    t[0x1B], t[0x1C] = 0x45, 0x55  # Vcc min/max 4.5 V/5.5 V; no Vpp pin
    t[0x1F] = 0x07  # typical word program 2^7 us
    t[0x20] = 0x07  # typical buffer write 2^7 us
    t[0x21] = 0x0A  # typical block erase 2^10 ms
    t[0x23] = t[0x24] = t[0x25] = 0x04  # maximum timeouts, 2^4 times typical; no chip erase
    t[0x27] = (chip_sector * blocks).bit_length() - 1  # chip size, 2^n bytes
    t[0x28] = 0x02  # x8/x16 asynchronous interface
    t[0x2A] = WRITE_BUFFER_BITS if bank_width > 1 else 8
    t[0x2C] = 0x01  # one erase block region, uniform
    t[0x2D:0x2F] = (blocks - 1).to_bytes(2, "little")
    t[0x2F:0x31] = (chip_sector >> 8).to_bytes(2, "little")
    t[0x31:0x36] = b"PRI10"  # extended table version 1.0
    t[0x3F] = 0x01  # one protection register field
    return bytes(t)


class FlashVm(Protocol):
    """What a bank needs of the VM: its memory slot and the slot's contents."""

    def set_user_memory_region(self, slot: int, guest_phys_addr: int, memory_size: int, flags: int = 0,
                               userspace_addr: int = 0) -> None: ...

    def read_phys(self, pa: int, size: int) -> bytes: ...

    def write_phys(self, pa: int, data: bytes) -> None: ...


class CfiFlash:
    """One pflash_cfi01 bank at `base`, in memory slot `slot` while in read-array mode."""

    def __init__(self, vm: FlashVm, slot: int, base: int, size: int = VIRT_FLASH_BANK_SIZE, *,
                 sector_size: int = VIRT_FLASH_SECTOR_SIZE, bank_width: int = VIRT_FLASH_BANK_WIDTH,
                 device_width: int = VIRT_FLASH_DEVICE_WIDTH, ids: tuple[int, int] = VIRT_FLASH_IDS):
        self.vm, self.slot, self.base, self.size = vm, slot, base, size
        self.sector_size, self.bank_width, self.device_width, self.ids = sector_size, bank_width, device_width, ids
        self.cfi = cfi_table(size, sector_size, bank_width, device_width)
        self._memory = mmap.mmap(-1, size)  # the contents, in either mode
        self._address = ctypes.addressof(ctypes.c_char.from_buffer(self._memory))
        self._romd = True
        # Told (offset, bytes) of what each program or erase changed, when it completes: a host
        # file behind the flash (QEMU's -drive if=pflash) is written through.
        self.on_change: Callable[[int, bytes], None] | None = None
        self._dirty: tuple[int, int] | None = None  # what the operation in progress changed
        self.vm.set_user_memory_region(slot, base, size, kvm.KVM_MEM_READONLY, userspace_addr=self._address)
        self.reset()

    def reset(self) -> None:
        """Power-on: read-array mode, status ready."""
        self.cmd = 0
        self.wcycle = 0
        self.status = SR_READY
        self.counter = 0
        self.array_reads = 0
        self._set_romd(True)

    @property
    def romd(self) -> bool:
        return self._romd

    def contains(self, pa: int) -> bool:
        return self.base <= pa < self.base + self.size

    # ------------------------------------------------------------------ contents
    def contents(self) -> bytes:
        return bytes(self._memory)

    def load(self, offset: int, data: bytes) -> None:
        """Put `data` in the flash at `offset` (a loader's or host file's write, not the guest's)."""
        if self._romd:
            self.vm.write_phys(self.base + offset, data)  # and every vCPU forgets code translated there
        else:
            self._memory[offset:offset + len(data)] = data

    def _set_romd(self, romd: bool) -> None:
        if romd == self.romd:
            return
        if romd:
            self.vm.set_user_memory_region(self.slot, self.base, self.size, kvm.KVM_MEM_READONLY,
                                           userspace_addr=self._address)
        else:
            self.vm.set_user_memory_region(self.slot, self.base, 0)
        self._romd = romd

    # ------------------------------------------------------------------ guest accesses
    def mmio(self, offset: int, size: int, is_write: bool, value: int) -> int:
        """A guest access at `offset` that exited (any access in I/O mode, a write in ROMD)."""
        if is_write:
            self.write(offset, size, value)
            return 0
        return self.read(offset, size)

    def _replicate(self, value: int, size: int) -> int:
        """One chip's answer in every chip's lane of a `size`-byte access."""
        lane = 8 * self.device_width
        value &= (1 << lane) - 1
        out = 0
        for shift in range(0, 8 * max(size, self.device_width), lane):
            out |= value << shift
        return out & ((1 << (8 * size)) - 1)

    def read(self, offset: int, size: int) -> int:
        if self.cmd in STATUS_MODES:
            return self._replicate(self.status, size)
        chip_offset = offset // self.bank_width
        if self.cmd == CMD_READ_ID:
            index = chip_offset & 0xFF
            return self._replicate(self.ids[index] if index < len(self.ids) else 0, size)
        if self.cmd == CMD_CFI_QUERY:
            return self._replicate(self.cfi[chip_offset] if chip_offset < len(self.cfi) else 0, size)
        value = int.from_bytes(self._memory[offset:offset + size], "little")
        if self._romd:
            return value
        self.array_reads += 1
        if self.array_reads >= ARRAY_READS_BEFORE_ROMD:
            self._set_romd(True)
        return value

    def _program(self, offset: int, size: int, value: int) -> None:
        self._fill(offset, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))

    def _fill(self, offset: int, data: bytes) -> None:
        assert not self._romd  # commands run in I/O mode
        self._memory[offset:offset + len(data)] = data
        end = offset + len(data)
        self._dirty = (offset, end) if self._dirty is None else (min(self._dirty[0], offset), max(self._dirty[1], end))

    def _done(self) -> None:
        """An operation completed: status ready, the next write is a command, changes written through."""
        self.status |= SR_READY
        self.wcycle = 0
        if self._dirty is not None and self.on_change is not None:
            start, end = self._dirty
            self.on_change(start, bytes(self._memory[start:end]))
        self._dirty = None

    def _read_array(self) -> None:
        self.cmd = 0
        self.wcycle = 0
        self.array_reads = 0  # the slot comes back once the guest reads on (see ARRAY_READS_BEFORE_ROMD)

    def write(self, offset: int, size: int, value: int) -> None:
        cmd = value & 0xFF
        if self.wcycle == 0:
            if cmd == CMD_CLEAR_STATUS:
                self.status = 0
            if cmd not in FIRST_CYCLE:  # read array, clear status, or unknown (as QEMU: read array)
                self._read_array()
                return
            self._set_romd(False)  # reads now return status, ID or query data
            self.cmd = cmd
            if cmd == CMD_BUFFERED_WRITE:
                self.status |= SR_READY  # XSR: a write buffer is free
            self.wcycle = 0 if cmd in (CMD_READ_STATUS, CMD_READ_ID) else 1  # those two are modes
            return
        if self.cmd in (CMD_WORD_PROGRAM, CMD_WORD_PROGRAM_ALT):
            self._program(offset, size, value)
            self._done()
        elif self.cmd == CMD_BLOCK_ERASE and cmd == CMD_CONFIRM:
            # The confirm cycle's address names the block.
            self._fill(offset & ~(self.sector_size - 1), b"\xff" * self.sector_size)
            self._done()
        elif self.cmd == CMD_LOCK_SETUP and cmd in (CMD_CONFIRM, CMD_LOCK_BLOCK):
            self._done()  # unlock or lock: accepted, blocks never lock
        elif self.cmd == CMD_CFI_QUERY:
            if cmd in (CMD_READ_ARRAY, CMD_AMD_RESET):
                self._read_array()
        elif self.cmd == CMD_BUFFERED_WRITE and self.wcycle == 1:
            # The word count less one, in one chip's lane.
            self.counter = value & ((1 << (8 * self.device_width)) - 1)
            self.wcycle = 2
        elif self.cmd == CMD_BUFFERED_WRITE and self.wcycle == 2:
            self._program(offset, size, value)
            self.status |= SR_READY
            if self.counter == 0:
                self.wcycle = 3
            else:
                self.counter -= 1
        elif self.cmd == CMD_BUFFERED_WRITE and self.wcycle == 3:
            if cmd == CMD_CONFIRM:
                self._done()
            else:
                self.status |= SR_PROGRAM_ERROR  # an unconfirmed buffer: "improper command sequence"
                self._read_array()
        else:
            self._read_array()

    # ------------------------------------------------------------------ snapshots
    def state(self) -> dict:
        out: dict[str, object] = {"cmd": self.cmd, "wcycle": self.wcycle, "status": self.status,
                                  "counter": self.counter, "romd": self.romd}
        if not self._romd:  # in read-array mode the memory slot (in the snapshot) holds the contents
            out["data"] = base64.b64encode(zlib.compress(bytes(self._memory), 1)).decode()
        return out

    def restore(self, state: dict) -> None:
        self.cmd, self.wcycle = int(state["cmd"]), int(state["wcycle"])
        self.status, self.counter = int(state["status"]), int(state["counter"])
        if state["romd"]:
            self._set_romd(True)
        else:
            self._set_romd(False)
            self._memory[:] = zlib.decompress(base64.b64decode(state["data"]))
