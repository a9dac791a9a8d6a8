"""`monitor ...` commands (gdb's qRcmd packet): one table, `MONITOR_COMMANDS`, of
`MonitorCommand`s (words, arguments, help, handler). A new command is one entry and one method
on `Monitor`; handlers return the text to show and reach the target only through the manager.

Snapshots go through the manager's `snapshot`/`restore`: the saved image never holds the
debugger's breakpoint instructions, and the debugger's breakpoints and watchpoints stay armed
over a loaded one (as over `monitor reset`).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from guestdbg import kvm
from guestdbg.debug.manager import DebugError, DebugPoint
from guestdbg.snapshot import SnapshotError

if TYPE_CHECKING:
    from guestdbg.gdb.session import GdbSession


@dataclass(frozen=True)
class MonitorCommand:
    """`monitor WORDS ARGS...`: `run(monitor, args)` returns the text to show."""

    words: tuple[str, ...]
    args: tuple[str, ...]  # one word each, named for the help
    help: str
    run: Callable[[Monitor, list[str]], str]
    aliases: tuple[tuple[str, ...], ...] = ()

    @property
    def usage(self) -> str:
        return " ".join(self.words + self.args)

    def match(self, words: list[str]) -> list[str] | None:
        """The arguments, if `words` is this command."""
        for name in (self.words, *self.aliases):
            if tuple(words[:len(name)]) == name and len(words) == len(name) + len(self.args):
                return words[len(name):]
        return None


class Monitor:
    """`monitor ...` (qRcmd), by MONITOR_COMMANDS."""

    # gdb caches registers and frames across a monitor command; nothing a stub sends makes it
    # re-read them, so say how (README: "Debugging with GDB").
    STALE_REGISTERS = ("the debugger still shows the registers it had cached: in gdb, "
                       "`maintenance flush register-cache` re-reads them (lldb: after the next stop)\n")

    def __init__(self, session: GdbSession):
        self.session = session
        self.manager = session.manager

    def run(self, command: str) -> str:
        """The text to show for `monitor COMMAND` (a refused request's reason included)."""
        try:
            return self._run(command.split())
        except DebugError as e:
            return f"error: {e}\n"

    def _run(self, words: list[str]) -> str:
        if not words:
            return self.help([])
        for command in MONITOR_COMMANDS:
            args = command.match(words)
            if args is not None:
                return command.run(self, args)
        return f"unknown monitor command: {' '.join(words)!r} (try: monitor help)\n"

    # ------------------------------------------------------------------ the commands
    def help(self, args: list[str]) -> str:
        return "monitor commands:\n" + "".join(f"  {c.usage:<20} {c.help}\n" for c in MONITOR_COMMANDS)

    def info_caps(self, args: list[str]) -> str:
        return "".join(f"{kvm.CAPABILITY_NAMES[num]:<28} {num:>4}  {self.manager.check_extension(num):#x}\n"
                       for num in sorted(kvm.DEBUG_CAPABILITIES))

    def info_version(self, args: list[str]) -> str:
        # QEMU's monitor answers its version here; Linux's scripts/gdb (utils.get_gdbserver_type)
        # takes any non-empty answer for a QEMU gdbstub, and then counts on thread N = CPU N-1.
        from importlib.metadata import PackageNotFoundError, version
        try:
            ours = version("guestdbg")
        except PackageNotFoundError:  # run from a source tree
            ours = "unknown"
        return f"guestdbg {ours} (a QEMU-like gdbstub: thread N is CPU N-1)\n"

    def info_cpus(self, args: list[str]) -> str:
        """As QEMU's `info cpus`: one line a vCPU, `*` on the current one (gdb's thread N is
        CPU #N-1)."""
        m = self.manager
        return "".join(f"{'*' if i == m.current_vcpu else ' '} CPU #{i}: pc={m.vcpu_pc(i):#x} ({m.vcpu_state(i)}) "
                       f"thread {i + 1}\n" for i in m.vcpu_ids())

    def info_slots(self, args: list[str]) -> str:
        session = self.session
        now = self.manager.slots_report()
        text = "\n".join(now) + "\n"
        if len(now) == 1:
            # gdb's default (breakpoint always-inserted off) takes everything out at each stop.
            text += ("(nothing is inserted now: gdb inserts breakpoints and watchpoints only while "
                     "the guest runs, unless `set breakpoint always-inserted on`)\n")
        if len(session.armed_at_resume) > 1 and session.armed_at_resume != now:
            text += "while the guest last continued:\n" + "\n".join(session.armed_at_resume) + "\n"
        # Each conditional breakpoint's tests (gdb's bytecode, listed) and what they did: gdb
        # takes its breakpoints out at every stop, so those not inserted now are listed too.
        conditions = getattr(self.manager, "conditions", None)
        report = conditions.report() if conditions is not None else []
        if report:
            text += "\n".join(report) + "\n"
        ignored = getattr(session, "ignored_options", None)
        if ignored:
            text += f"last breakpoint conditions ignored (they do not parse; the breakpoint always stops): {ignored}\n"
        return text + self._last_error()

    def _foreign(self) -> list[DebugPoint]:
        """Debug points held by the manager that this client did not insert."""
        return [p for p in self.manager.debug_points() if not self.session.owns(p)]

    def breakpoints(self, args: list[str]) -> str:
        points = self.manager.debug_points()
        if not points:
            return "no breakpoints or watchpoints are armed in the VM\n" + self._last_error()
        foreign = set(self._foreign())
        lines = [f"{len(points)} armed in the VM:"]
        lines += [f"  {p.describe()}  " + ("(not this debugger's: left by an earlier client; "
                                           "its stops show as SIGTRAP)" if p in foreign else "(this debugger's)")
                  for p in points]
        if foreign:
            lines.append(f"`monitor breakpoints clear` removes the {len(foreign)} not this debugger's")
        return "\n".join(lines) + "\n" + self._last_error()

    def breakpoints_clear(self, args: list[str]) -> str:
        foreign = self._foreign()
        for p in foreign:
            self.manager.remove_debug_point(p)
        return f"removed {len(foreign)} breakpoints/watchpoints this debugger did not insert\n"

    def reset(self, args: list[str]) -> str:
        self.manager.reset()
        self.session.last_stop = None
        return ("board reset: memory, devices and registers as after loading; "
                "breakpoints and watchpoints kept\n" + self.STALE_REGISTERS)

    def snapshot_save(self, args: list[str]) -> str:
        """manager.snapshot: the image never holds the debugger's breakpoint patches."""
        path = checked_snapshot_path(args[0], for_writing=True)
        try:
            self.manager.snapshot(path)
        except (OSError, SnapshotError) as e:
            return f"error: snapshot save failed: {e}\n"
        return f"snapshot saved to {path}\n"

    def snapshot_load(self, args: list[str]) -> str:
        """manager.restore: the debugger's breakpoints and watchpoints stay armed over the
        restored memory (this client's as well as any a lost client left), as after a reset."""
        path = checked_snapshot_path(args[0], for_writing=False)
        try:
            self.manager.restore(path)
        except (OSError, SnapshotError) as e:
            return f"error: snapshot load failed: {e}\n"
        self.session.last_stop = None  # stopped where the snapshot was taken, no event to repeat
        return (f"snapshot loaded from {path}; breakpoints and watchpoints kept\n"
                + self.STALE_REGISTERS)

    def sstep(self, args: list[str]) -> str:
        m = self.manager
        if m.step_irqs:
            state = "on: single steps take pending interrupts and let timers fire"
        else:
            state = "off: single steps take no interrupt and no timer fires (as QEMU's default)"
        return f"sstep irq {state}\nmeans: {m.step_irq_mechanism()}\n"

    def sstep_irq(self, args: list[str]) -> str:
        word = args[0].lower()
        if word not in ("on", "off"):
            return f"error: monitor sstep irq takes on or off, not {args[0]!r}\n"
        self.manager.step_irqs = word == "on"
        return self.sstep([])

    def phys(self, args: list[str]) -> str:
        if self.session.phys_memory:
            return ("phys on: memory reads and writes take guest-physical addresses "
                    "(breakpoints and watchpoints stay virtual)\n")
        return "phys off: memory reads and writes go through the guest's translation (default)\n"

    def phys_set(self, args: list[str]) -> str:
        word = args[0].lower()
        if word not in ("on", "off"):
            return f"error: monitor phys takes on or off, not {args[0]!r}\n"
        self.session.phys_memory = word == "on"
        return self.phys([])

    def record(self, args: list[str]) -> str:
        """`monitor record status`: what the history holds and costs."""
        status = self.manager.record_status()
        if status is None:
            can = self.manager.can_record
            return ("record off" + ("" if can else " (this target cannot record: it needs the emulated "
                                    "back end, one vCPU and the virtual clock)") + "\n")
        mib = 1 << 20
        where = ("at its live end" if status["now"] >= status["end"]
                 else f"replaying it at instruction {status['now']}")
        return (f"record on: history from instruction {status['begin']} to {status['end']}, {where}\n"
                f"checkpoints: {status['checkpoints']} (taken {status['taken']}, inserted {status['inserted']}, "
                f"thinned {status['thinned']}, history start moved {status['dropped_start']} times), "
                f"one every {status['interval']} instructions at the live end\n"
                f"memory: {status['memory'] / mib:.1f} MiB of {status['limit'] / mib:.0f} MiB "
                f"(a copy of guest memory, and the pages each checkpoint changed)\n"
                f"logged inputs: {status['inputs']} (console input, the debugger's writes)\n"
                f"time in checkpoints: {status['take_seconds']:.2f} s taken, "
                f"{status['restore_seconds']:.2f} s restoring ({status['restored']} restores)\n")

    def record_goto(self, args: list[str]) -> str:
        """`monitor record goto N`: the machine as at instruction N of the history."""
        try:
            icount = int(args[0], 0)
        except ValueError:
            return f"error: monitor record goto takes an instruction count, not {args[0]!r}\n"
        event = self.manager.seek_to(icount)
        self.session.last_stop = event
        return f"at instruction {icount}, PC {event.pc:#x}\n" + self.STALE_REGISTERS

    def record_set(self, args: list[str]) -> str:
        word = args[0].lower()
        if word == "on":
            self.manager.start_recording()
        elif word == "off":
            self.manager.stop_recording()
        elif word != "status":
            return f"error: monitor record takes on, off or status, not {args[0]!r}\n"
        return self.record([])

    def _last_error(self) -> str:
        err = self.session.last_error
        return f"last refused request: {err}\n" if err else ""


MONITOR_COMMANDS: tuple[MonitorCommand, ...] = (
    MonitorCommand(("help",), (), "this text", Monitor.help),
    MonitorCommand(("info", "caps"), (), "the vCPU's KVM capabilities", Monitor.info_caps),
    MonitorCommand(("info", "cpus"), (), "each vCPU: its PC and state, * on the current one (QEMU's info cpus)",
                   Monitor.info_cpus),
    MonitorCommand(("info", "version"), (), "the stub's version (as QEMU's, for Linux's scripts/gdb)",
                   Monitor.info_version),
    MonitorCommand(("info", "slots"), (), "which breakpoint/watchpoint holds which slot, and which fell back; "
                   "conditions with their hit and evaluation counts",
                   Monitor.info_slots),
    MonitorCommand(("breakpoints",), (), "every breakpoint/watchpoint armed in the VM, and whose it is",
                   Monitor.breakpoints),
    MonitorCommand(("breakpoints", "clear"), (),
                   "remove those this debugger did not insert (left by a lost client)", Monitor.breakpoints_clear),
    MonitorCommand(("sstep",), (), "whether single steps take interrupts and let timers fire", Monitor.sstep),
    MonitorCommand(("sstep", "irq"), ("on|off",),
                   "on: steps may enter interrupt handlers; off (default): a pending IRQ waits for continue",
                   Monitor.sstep_irq),
    MonitorCommand(("phys",), (), "whether memory reads and writes use physical addresses", Monitor.phys),
    MonitorCommand(("phys",), ("on|off",),
                   "on: gdb's memory accesses take guest-physical addresses (QEMU's PhyMemMode); off (default)",
                   Monitor.phys_set),
    MonitorCommand(("record",), (), "whether the run's history is kept for reverse execution", Monitor.record),
    MonitorCommand(("record",), ("on|off|status",),
                   "on: keep the history from now (gdb's reverse-stepi, reverse-continue...); off: forget it",
                   Monitor.record_set),
    MonitorCommand(("record", "goto"), ("N",), "go to instruction N of the history (see record status)",
                   Monitor.record_goto),
    MonitorCommand(("reset",), (), "reset the board to its state after loading (alias: system_reset)",
                   Monitor.reset, aliases=(("system_reset",),)),
    MonitorCommand(("snapshot", "save"), ("FILE",), "save the VM (registers, memory, devices; no debugger state)",
                   Monitor.snapshot_save),
    MonitorCommand(("snapshot", "load"), ("FILE",),
                   "restore the VM from FILE (same machine configuration; breakpoints kept)", Monitor.snapshot_load),
)


def checked_snapshot_path(text: str, *, for_writing: bool) -> Path:
    """A snapshot path from a monitor command: resolved, its directory must exist, and the
    target itself must not be a symlink."""
    try:
        raw = Path(text).expanduser()
        link = raw.is_symlink()
        path = raw.resolve()
    except (OSError, ValueError, RuntimeError) as e:  # a NUL byte, an unknown ~user, a loop...
        raise DebugError(errno.EINVAL, f"{text!r}: not a usable path ({e})") from None
    if link:
        raise DebugError(errno.ELOOP, f"{text}: is a symbolic link; refusing to follow it")
    if not path.parent.is_dir():
        raise DebugError(errno.ENOENT, f"{text}: directory {path.parent} does not exist")
    if not for_writing and not path.is_file():
        raise DebugError(errno.ENOENT, f"{text}: no such file")
    return path
