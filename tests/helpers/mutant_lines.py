"""Which tests can kill a mutant: the tests that ran the statement it changes (the mutation
run's plugin, tests/helpers/mutmut_guests.py, uses this; nothing else does).

mutmut hands each mutant the tests that reached its *function* in its stats run, and a
surviving mutant runs them all: a survivor of ``GuestDebugManager._resume``, which 154 tests
reach, costs a minute. But a test that never ran the mutated statement in the unmutated code
cannot tell the mutant from the original: the two functions are the same code up to that
statement, so the test takes the same path and never gets there. So each mutant's tests can be
cut to those whose line coverage (recorded in the stats run, on the ``__mutmut_orig`` copy of
the function) includes a statement the mutant changes.

This relies on a test taking the same path each time. A test that reached the statement only in
some runs (a host-timing race) and not in the stats run would be left out: the mutant could then
survive where it would have been killed. The score can only come out lower, never higher.

Mutants that change the ``def`` line or the signature (a default value: any call may use it), or
a line that belongs to no statement of the body, keep all the tests of their function.
"""

from __future__ import annotations

import ast
import difflib
from collections.abc import Iterable, Mapping

ORIG = "__mutmut_orig"


def statement_starts(func: ast.FunctionDef | ast.AsyncFunctionDef) -> dict[int, int]:
    """line -> first line of the innermost statement of ``func``'s body that holds it.

    A compound statement's header (an ``if`` test, a ``for`` target) belongs to the compound
    statement: a tracer reports it as that statement's line."""
    starts: dict[int, int] = {}
    for node in ast.walk(func):
        if node is func or not isinstance(node, ast.stmt):
            continue
        end = node.end_lineno or node.lineno
        for line in range(node.lineno, end + 1):
            # Inner statements start at or after the outer ones that hold them.
            if starts.get(line, 0) <= node.lineno:
                starts[line] = node.lineno
    return starts


def changed_statements(orig_lines: list[str], orig_name: str, mutant_lines: list[str],
                       mutant_name: str, orig_first: int,
                       starts: Mapping[int, int], body_first: int) -> frozenset[int] | None:
    """The statements (their first lines, in the file that holds ``orig``) a mutant changes.

    ``orig_lines`` and ``mutant_lines`` are the two functions' source lines, from the ``def``
    line on; ``orig_first`` is the ``def`` line's number. None: the mutant changes the signature
    or something outside the body's statements, so any test that reaches the function might see
    it."""
    if not orig_lines or not mutant_lines:
        return None
    if mutant_lines[0].replace(mutant_name, orig_name, 1) != orig_lines[0]:
        return None
    changed: set[int] = set()
    if len(orig_lines) == len(mutant_lines):  # the usual case: the mutation kept the lines
        rows: list[int] = [row for row, (a, b) in enumerate(zip(orig_lines[1:], mutant_lines[1:]))
                               if a != b]
    else:
        matcher = difflib.SequenceMatcher(None, orig_lines[1:], mutant_lines[1:], autojunk=False)
        rows = []
        for tag, i1, i2, _j1, _j2 in matcher.get_opcodes():
            if tag != "equal":
                # An insertion between two lines: both neighbours, to be safe.
                rows += range(i1, i2) if i2 > i1 else range(max(i1 - 1, 0), i1 + 1)
    for row in rows:
        line = orig_first + 1 + row
        if line < body_first or line not in starts:
            return None
        changed.add(starts[line])
    return frozenset(changed) if changed else None


def mutants_statements(source: str, module: str) -> dict[str, frozenset[int] | None]:
    """mutant name (``module.function__mutmut_N``) -> the statements it changes, for every
    mutant in one mutated file (``source``); lines are the file's."""
    tree = ast.parse(source)
    lines = source.splitlines()
    funcs = [node for node in ast.walk(tree)
             if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and "__mutmut_" in node.name]
    origs = {f.name[: -len(ORIG)]: f for f in funcs if f.name.endswith(ORIG)}
    starts = {name: statement_starts(f) for name, f in origs.items()}
    result: dict[str, frozenset[int] | None] = {}
    for mutant in funcs:
        if mutant.name.endswith(ORIG):
            continue
        base = mutant.name.rsplit("__mutmut_", 1)[0]
        orig = origs.get(base)
        if orig is None or not orig.body:
            result[f"{module}.{mutant.name}"] = None
            continue
        result[f"{module}.{mutant.name}"] = changed_statements(
            lines[orig.lineno - 1: orig.end_lineno], orig.name,
            lines[mutant.lineno - 1: mutant.end_lineno], mutant.name,
            orig.lineno, starts[base], orig.body[0].lineno)
    return result


def orig_statement_starts(source: str) -> dict[int, int]:
    """``statement_starts`` for all the ``__mutmut_orig`` functions of a mutated file."""
    starts: dict[int, int] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.endswith(ORIG):
            starts.update(statement_starts(node))
    return starts


def covered_statements(starts: Mapping[int, int], lines_run: Iterable[int]) -> set[int]:
    """The statements (first lines) of the file's ``__mutmut_orig`` functions that a test ran,
    from the lines a tracer reported (any line of a statement may be reported); ``starts``
    from ``orig_statement_starts``."""
    return {starts[line] for line in lines_run if line in starts}


def tests_for_mutants(statements: Mapping[str, frozenset[int] | None],
                      covered: Mapping[str, Iterable[int]]) -> dict[str, frozenset[str]]:
    """mutant -> the tests (of those measured, ``covered``: test -> statements it ran, in the
    mutant's file) that ran a statement the mutant changes. Mutants left out (None) keep all
    their tests."""
    by_statement: dict[int, set[str]] = {}
    for test, stmts in covered.items():
        for stmt in stmts:
            by_statement.setdefault(stmt, set()).add(test)
    result: dict[str, frozenset[str]] = {}
    for mutant, stmts in statements.items():
        if stmts is None:
            continue
        tests: set[str] = set()
        for stmt in stmts:
            tests |= by_statement.get(stmt, set())
        result[mutant] = frozenset(tests)
    return result
