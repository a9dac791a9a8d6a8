"""Conditions and commands on breakpoints and watchpoints, evaluated where the guest stops, by
the manager, with no round trip to the debugger.

A breakpoint (or watchpoint) may carry:

- tests, OR-ed: the stop is reported if any is true, or if there are none. A test is a
  Python callable taking a `StopView` (the Python API's `add_breakpoint(va, condition=...)`) or
  a gdb agent expression (`AgentTest`: gdb's target-side conditions, `Z0,...;X len,bytes`);
- commands: run on every hit whose tests hold, and then the stop is not reported (gdb's dprintf
  with `set dprintf-style agent`: `;cmds:persist,X len,bytes`).

A test that fails (a Python exception, bad bytecode, an unreadable address) counts as true, so
the user sees the stop and can find out why; the failure is counted and kept (`last_error`). A
command that fails prints why through `ConditionTable.output` and the guest runs on, as the
dprintf it is.

Each point's record counts hits, evaluations, true results and errors. gdb removes its
breakpoints at every stop and inserts them again (with their conditions) on every resume, so a
record outlives its point's removal: inserted again with the same tests and commands, it goes
on counting (`monitor info slots` lists those not inserted now too).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable, Sequence, Union

from guestdbg.debug.agent_expr import AgentExpr

# (kind, address, length): ("break", va, 0) for Z0/Z1 alike; (watch kind's name, addr, length).
PointKey = tuple[str, int, int]
MAX_RETIRED = 256  # records of removed points kept for their counts
TEXT_WIDTH = 88    # a listing is wrapped at its "; " to lines this long ...
TEXT_LINES = 8     # ... and cut after this many


class StopView:
    """What a condition sees of the stopped vCPU: registers (gdb's names or numbers) and guest
    memory (virtual addresses, originals under breakpoints). Read-only: a condition cannot
    change the guest. The manager holds its lock while conditions run, so a condition must use
    this view, not the manager's own methods."""

    def __init__(self, pc: int, vcpu_id: int, read_register_at: Callable[[int], int],
                 read_memory: Callable[[int, int], bytes], register_number: Callable[[str], int],
                 output: Callable[[str], None]):
        self.pc = pc
        self.vcpu_id = vcpu_id
        self.read_register_at = read_register_at
        self.read_memory = read_memory
        self._number = register_number
        self.print = output

    def read_register(self, name: str) -> int:
        return self.read_register_at(self._number(name))

    def read_u64(self, addr: int) -> int:
        return int.from_bytes(self.read_memory(addr, 8), "little")

    def read_u32(self, addr: int) -> int:
        return int.from_bytes(self.read_memory(addr, 4), "little")


Test = Callable[[StopView], object]


@dataclass(frozen=True)
class AgentTest:
    """A gdb agent expression as a test (true when its value is not 0) or, `command`, as a
    command (its printf goes to the view's output; it need leave no value)."""

    expr: AgentExpr
    command: bool = False

    def __call__(self, view: StopView) -> bool:
        return self.expr.evaluate(view.read_register_at, view.read_memory, output=view.print,
                                  need_value=not self.command) != 0

    def __str__(self) -> str:
        return self.expr.disassemble()


@dataclass(frozen=True)
class StopConditions:
    """What `condition=` takes besides a bare callable: tests (OR-ed) and commands."""

    tests: tuple[Test, ...] = ()
    commands: tuple[Test, ...] = ()

    @classmethod
    def from_agent(cls, conditions: Sequence[AgentExpr], commands: Sequence[AgentExpr] = ()) -> StopConditions:
        return cls(tuple(AgentTest(c) for c in conditions), tuple(AgentTest(c, command=True) for c in commands))

    def __bool__(self) -> bool:
        return bool(self.tests or self.commands)


ConditionSpec = Union[StopConditions, Test]


def _describe(test: Test) -> str:
    if isinstance(test, AgentTest):
        return str(test)
    name = getattr(test, "__qualname__", None) or repr(test)
    return f"python {name}"


def _clip(text: str) -> str:
    return text if len(text) <= TEXT_WIDTH else text[:TEXT_WIDTH - 3] + "..."


def _wrapped(head: str, text: str) -> list[str]:
    """`head` + text, wrapped at its "; " separators (a bytecode listing)."""
    lines: list[str] = []
    line = head
    for i, part in enumerate(text.split("; ")):
        piece = part if i == 0 else "; " + part
        if len(line) + len(piece) > TEXT_WIDTH and line.strip() != head.strip():
            lines.append(line.rstrip() + (";" if piece.startswith(";") else ""))
            line = " " * len(head) + piece[2:]
        else:
            line += piece
    lines.append(line)
    if len(lines) > TEXT_LINES:
        lines = lines[:TEXT_LINES - 1] + [" " * len(head) + "..."]
    return lines


@dataclass
class PointConditions:
    """One point's tests and commands, and what they have done."""

    key: PointKey
    spec: StopConditions
    hits: int = 0          # the guest reached the point
    evaluations: int = 0   # the tests ran (one per hit, when there are tests)
    true: int = 0          # the tests held (or there were none): a stop, or the commands ran
    errors: int = 0        # tests or commands that failed (a failed test counts as true)
    commands_run: int = 0
    last_error: str = ""
    inserted: bool = True

    def should_stop(self, view: StopView, output: Callable[[str], None]) -> bool:
        """Evaluate at a hit: True to report the stop, False to run on."""
        self.hits += 1
        holds = not self.spec.tests
        if self.spec.tests:
            self.evaluations += 1
            for test in self.spec.tests:
                try:
                    if test(view):
                        holds = True
                        break
                except Exception as e:  # a condition's failure is the user's to see: stop
                    self.errors += 1
                    self.last_error = f"{_describe(test)}: {e}"
                    holds = True
                    break
        if not holds:
            return False
        self.true += 1
        if not self.spec.commands:
            return True
        self.commands_run += 1
        for command in self.spec.commands:
            try:
                command(view)
            except Exception as e:
                self.errors += 1
                self.last_error = f"{_describe(command)}: {e}"
                output(f"guestdbg: command at {view.pc:#x} failed: {e}\n")
                break
        return False

    def describe(self) -> list[str]:
        kind, addr, length = self.key
        where = f"{addr:#x}" if kind == "break" else f"{addr:#x}+{length}"
        state = "" if self.inserted else "  (not inserted now)"
        lines = [f"  {kind:<7} {where}  hits {self.hits}, evaluated {self.evaluations}, true {self.true}, "
                 f"errors {self.errors}" + (f", commands run {self.commands_run}" if self.spec.commands else "") + state]
        for i, test in enumerate(self.spec.tests):
            lines += _wrapped("    if " if i == 0 else "    or ", _describe(test))
        for command in self.spec.commands:
            lines += _wrapped("    do ", _describe(command))
        if self.last_error:
            lines.append(f"    last error: {_clip(self.last_error)}")
        return lines


def _to_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _spec(condition: ConditionSpec | None) -> StopConditions | None:
    if condition is None:
        return None
    if isinstance(condition, StopConditions):
        return condition or None
    if isinstance(condition, AgentExpr):
        return StopConditions.from_agent([condition])
    if not callable(condition):
        raise TypeError(f"a condition is a callable taking a StopView, or StopConditions; not {condition!r}")
    return StopConditions((condition,))


@dataclass
class ConditionTable:
    """The manager's conditions, by point. `output` takes dprintf's text (the GDB server sends
    it to gdb as console output; by default it goes to this process's stdout)."""

    active: dict[PointKey, PointConditions] = field(default_factory=dict)
    retired: dict[PointKey, PointConditions] = field(default_factory=dict)
    output: Callable[[str], None] = field(default=lambda text: _to_stdout(text))

    def __bool__(self) -> bool:
        return bool(self.active)

    def set(self, key: PointKey, condition: ConditionSpec | None) -> None:
        """The point `key` now has these tests and commands (None: none, it always stops).
        The same ones again keep their counts."""
        spec = _spec(condition)
        old = self.active.get(key)
        if old is not None and old.spec == spec:
            return
        self.remove(key)
        if spec is None:
            return
        record = self.retired.pop(key, None)
        if record is None or record.spec != spec:
            record = PointConditions(key, spec)
        record.inserted = True
        self.active[key] = record

    def remove(self, key: PointKey) -> None:
        record = self.active.pop(key, None)
        if record is not None:
            record.inserted = False
            self.retired.pop(key, None)
            self.retired[key] = record
            while len(self.retired) > MAX_RETIRED:
                del self.retired[next(iter(self.retired))]

    def clear(self) -> None:
        for key in list(self.active):
            self.remove(key)

    def get(self, key: PointKey) -> PointConditions | None:
        """The record of `key`, inserted or not."""
        return self.active.get(key) or self.retired.get(key)

    def should_stop(self, keys: Sequence[PointKey], view: StopView) -> bool:
        """Report this stop? True if any of the points it hit has no record (unconditional) or
        its record says so; every record is evaluated (and counted)."""
        stop = False
        for key in keys:
            record = self.active.get(key)
            if record is None or record.should_stop(view, self.output):
                stop = True
        return stop or not keys

    def report(self) -> list[str]:
        records = list(self.active.values()) + list(self.retired.values())
        if not records:
            return []
        lines = ["conditions and commands evaluated in the stub:"]
        for r in sorted(records, key=lambda r: (not r.inserted, r.key)):
            lines += r.describe()
        return lines
