"""What every board shares: how a guest's run ends, and how its images are read.

`RunToExit` is the VMM loop's "run the guest to its end", written once over the board
interface (`run_until`, `vcpu`, `_spins_forever`); `ExitStatus` is the guest's own end,
`GuestFault` an end it cannot recover from, `ImageError` an image that cannot be loaded.
`read_elf`, `elf_symbols` and `read_image` read guest images for any architecture.

The virt board (`board.virt`) and the pc board (`board.pc`) build on this module; it imports
only the uAPI layer below it.
"""

from __future__ import annotations

import select
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeAlias, overload

from guestdbg import kvm
from guestdbg.vmapi import Vcpu

if TYPE_CHECKING:
    from guestdbg.board.pc import PcMachine
    from guestdbg.board.virt import VirtMachine

# Either board: what the debug policy, snapshots and the stub are handed.
Board: TypeAlias = "VirtMachine | PcMachine"


class ImageError(ValueError):
    """A guest image (ELF, raw or ROM) that cannot be loaded, with the reason."""


class GuestFault(RuntimeError):
    """The guest stopped in a way it cannot recover from (reported as one line)."""


@dataclass
class ExitStatus:
    status: int
    how: str  # "semihosting SYS_EXIT", "PSCI SYSTEM_OFF", ...


def _never(run: kvm.KvmRun) -> bool:
    return False


class RunToExit:
    """The VMM loop's "run the guest to its end" for a board with run_until(), a vCPU with pc,
    kick() and immediate_exit, and `_spins_forever(pc)`: the guest's exit status, or GuestFault
    for a fault, a hang (spinning on a jump to itself that nothing can interrupt, checked every
    `hang_check` seconds), or a guest still running after `timeout` seconds."""

    PC_NAME = "PC"
    SELF_LOOP = "branch-to-self"

    arch_name: str  # the architecture profile a board's guest needs (guestdbg.debug.profile)
    vcpu: Vcpu  # the board's (first) vCPU
    # The host's services, run by run_to_exit() on the vCPU thread after each KVM_EXIT_INTR
    # (another thread's kick): the console input that arrived, a quit asked for from the
    # console. It may raise to end the run.
    on_intr: Callable[[], None] | None = None

    def run_until(self, stop: Callable[[kvm.KvmRun], bool] = _never) -> kvm.KvmRun | ExitStatus:
        """The board's VMM loop: serve exits until the guest ends or an exit `stop` accepts,
        or any DEBUG or INTR exit."""
        raise NotImplementedError

    def _spins_forever(self, pc: int) -> bool:
        """Is the instruction at `pc` a jump to itself (a hang once nothing can interrupt it)?"""
        raise NotImplementedError

    @overload
    def run_to_exit(self, *, timeout: float | None = None, hang_check: float | None = 1.0,
                    spent: float = 0.0, taken_over: None = None) -> int: ...

    @overload
    def run_to_exit(self, *, timeout: float | None = None, hang_check: float | None = 1.0,
                    spent: float = 0.0, taken_over: Callable[[], bool]) -> int | None: ...

    def run_to_exit(self, *, timeout: float | None = None, hang_check: float | None = 1.0,
                    spent: float = 0.0, taken_over: Callable[[], bool] | None = None) -> int | None:
        """`spent`: seconds the guest already ran, counted against `timeout` (the GDB server
        counts only time run with no debugger attached). `taken_over()`: true when a
        KVM_EXIT_INTR is another thread's stop (a debugger attaching); the run then ends with
        None, the vCPU stopped and no check made."""
        start = time.monotonic() - spent
        period = hang_check or timeout
        in_main = threading.current_thread() is threading.main_thread()
        ticker = _Ticker(self.vcpu, period) if period or in_main else None
        try:
            while True:
                result = self.run_until()
                if ticker is not None and ticker.interrupted:
                    raise KeyboardInterrupt
                if isinstance(result, ExitStatus):
                    return result.status
                pc = self.vcpu.pc
                where = f"{self.PC_NAME}={pc:#x}"
                if result.exit_reason != kvm.KVM_EXIT_INTR:
                    raise GuestFault(f"guest stopped unexpectedly: {result} at {where}")
                if taken_over is not None and taken_over():
                    return None
                if self.on_intr is not None:
                    self.on_intr()
                if hang_check and self._spins_forever(pc):
                    raise GuestFault(f"guest hung: {self.SELF_LOOP} at {where} with no interrupt to leave it")
                if timeout is not None and time.monotonic() - start >= timeout:
                    raise GuestFault(f"guest still running after {timeout:g} s ({where}); stopped by --timeout")
        finally:
            if ticker:
                ticker.stop()
                self.vcpu.immediate_exit = False  # a tick that landed after the run ended is not a stop


class _Ticker:
    """Kicks the vCPU every `period` seconds (None: never) so the VMM loop can look at what the
    guest does, and at once on Ctrl-C. In the main thread, Ctrl-C only sets `interrupted` (and
    wakes the ticker through set_wakeup_fd), and run_to_exit raises KeyboardInterrupt after the
    kicked run returns: Python may run a signal handler inside a device callback that Unicorn
    called, where an exception would be swallowed by ctypes and the Ctrl-C lost."""

    def __init__(self, vcpu: Vcpu, period: float | None):
        self._done = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self._old_wakeup_fd: int | None = None
        self._old_sigint: Any = None
        self.interrupted = False
        if threading.current_thread() is threading.main_thread():
            self._old_wakeup_fd = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
            self._old_sigint = signal.signal(signal.SIGINT, self._on_sigint)
        self._thread = threading.Thread(target=self._run, args=(vcpu, period), daemon=True)
        self._thread.start()

    def _on_sigint(self, signum: int, frame: object) -> None:
        self.interrupted = True

    def _run(self, vcpu: Vcpu, period: float | None) -> None:
        while True:
            woken, _, _ = select.select([self._wake_r], [], [], period)
            if self._done.is_set():
                return
            # The bytes are signal numbers: other signals (the x86 vCPU's own kick) are not Ctrl-C.
            if not woken or signal.SIGINT in self._wake_r.recv(256):
                vcpu.kick(timeout=period or 1.0)

    def stop(self) -> None:
        self._done.set()
        self._wake_w.send(b"\0")
        self._thread.join()
        if self._old_wakeup_fd is not None:
            signal.set_wakeup_fd(self._old_wakeup_fd)
            signal.signal(signal.SIGINT, self._old_sigint)
        self._wake_r.close()
        self._wake_w.close()


def read_elf(path: Path, machine_arch: str, wanted: str, hint: str = "") -> tuple[int, list[tuple[int, bytes, int]]]:
    """(entry, [(p_paddr, file bytes, p_memsz)]) of an ELF64 little-endian image for
    `machine_arch` (pyelftools' name, e.g. "AArch64", "x64"), or ImageError saying why not."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        with path.open("rb") as f:
            elf = ELFFile(f)
            if elf.get_machine_arch() != machine_arch or elf.elfclass != 64 or not elf.little_endian:
                raise ImageError(f"{path}: not {wanted} (machine {elf['e_machine']}, class {elf.elfclass}){hint}")
            segments = [(seg["p_paddr"], seg.data(), seg["p_memsz"]) for seg in elf.iter_segments()
                        if seg["p_type"] == "PT_LOAD" and seg["p_memsz"]]
            entry = elf["e_entry"]
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except ImageError:
        raise
    except (ELFError, ValueError) as e:
        raise ImageError(f"{path}: not a valid ELF file ({e})") from None
    if not segments:
        raise ImageError(f"{path}: ELF has no loadable segments")
    return entry, segments


def elf_symbols(path: str | Path) -> dict[str, int]:
    """Name -> value of every named symbol in an ELF's .symtab (for breaking at a function)."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    with open(path, "rb") as f:
        table = ELFFile(f).get_section_by_name(".symtab")
        if not isinstance(table, SymbolTableSection):
            return {}
        return {s.name: s["st_value"] for s in table.iter_symbols() if s.name}


def read_image(path: str | Path) -> bytes:
    """A raw image's bytes, or ImageError (missing, unreadable or empty)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except OSError as e:
        raise ImageError(f"{path}: cannot read ({e.strerror})") from None
    if not data:
        raise ImageError(f"{path}: image is empty")
    return data
