"""tests/helpers/mutant_lines.py: which tests can kill a mutant (the mutation run's test
selection). A mistake there makes mutants survive that a test would kill, or hides a test
from a mutant, so it is checked on a small mutated file laid out as mutmut lays out its own,
and against coverage.py's own tracing of it."""

from __future__ import annotations

import ast
import textwrap
import types

import coverage

from tests.helpers import mutant_lines

# A mutated file as mutmut writes it: the original's copy (__mutmut_orig) and one function per
# mutant, each the original with one change.
ORIGINAL = textwrap.dedent('''\
    def x_pick__mutmut_orig(a, b=2):
        """Docstring."""
        if a > b:
            total = (a
                     + b)
            return total
        for i in range(b + 1):
            if i == a:
                return -i
        return 0
    ''')
CHANGES = {  # mutant number: (the original's text, the mutant's)
    1: ("b=2", "b=3"),
    2: ("a > b", "a >= b"),
    3: ("+ b)", "- b)"),
    4: ("(a\n                 + b)", "None"),  # two lines made one
    5: ("-i", "+i"),
    6: ("return 0", "return 1"),
}
MUTATED = ORIGINAL + "".join(
    "\n" + ORIGINAL.replace("__mutmut_orig", f"__mutmut_{n}").replace(old, new)
    for n, (old, new) in CHANGES.items())
assert all(old in ORIGINAL for old, _ in CHANGES.values())

# The first lines of the statements of x_pick__mutmut_orig, as numbered in MUTATED.
IF_GT, TOTAL, RETURN_TOTAL, FOR, IF_EQ, RETURN_I, RETURN_0 = 3, 4, 6, 7, 8, 9, 10


def test_statement_starts_give_every_line_its_innermost_statement():
    func = ast.parse(MUTATED).body[0]
    starts = mutant_lines.statement_starts(func)
    assert starts[5] == TOTAL  # the second line of a two-line assignment
    assert starts[IF_GT] == IF_GT and starts[FOR] == FOR and starts[IF_EQ] == IF_EQ
    assert starts[RETURN_I] == RETURN_I
    assert 1 not in starts  # the def line is no statement of the body
    assert starts[2] == 2  # the docstring is a statement


def test_each_mutant_maps_to_the_statement_it_changes():
    got = mutant_lines.mutants_statements(MUTATED, "pkg.mod")
    assert got == {
        "pkg.mod.x_pick__mutmut_1": None,  # a default value: any call may use it
        "pkg.mod.x_pick__mutmut_2": frozenset({IF_GT}),
        "pkg.mod.x_pick__mutmut_3": frozenset({TOTAL}),  # the assignment's second line
        "pkg.mod.x_pick__mutmut_4": frozenset({TOTAL}),  # two lines made one
        "pkg.mod.x_pick__mutmut_5": frozenset({RETURN_I}),
        "pkg.mod.x_pick__mutmut_6": frozenset({RETURN_0}),
    }


def test_a_mutant_without_its_original_or_changing_no_line_keeps_all_its_tests():
    alone = "def x_f__mutmut_1(a):\n    return a\n"
    assert mutant_lines.mutants_statements(alone, "m") == {"m.x_f__mutmut_1": None}
    same = "def x_f__mutmut_orig(a):\n    return a\n\ndef x_f__mutmut_1(a):\n    return a\n"
    assert mutant_lines.mutants_statements(same, "m") == {"m.x_f__mutmut_1": None}


def _traced_statements(calls) -> set[int]:
    """The statements of x_pick__mutmut_orig that coverage.py saw run for ``calls``."""
    module = types.ModuleType("mutated_for_test")
    code = compile(MUTATED, "/virtual/mutated_for_test.py", "exec")
    cov = coverage.Coverage(data_file=None, config_file=False)
    cov.start()
    try:
        exec(code, module.__dict__)
        for args in calls:
            module.x_pick__mutmut_orig(*args)
    finally:
        cov.stop()
    lines = cov.get_data().lines("/virtual/mutated_for_test.py") or []
    return mutant_lines.covered_statements(mutant_lines.orig_statement_starts(MUTATED), lines)


def test_covered_statements_from_coverage_py_and_the_tests_they_select():
    # Three "tests": a > b; the loop that finds a; the loop that does not.
    covered = {
        "t_gt": _traced_statements([(5, 2)]),
        "t_found": _traced_statements([(1, 2)]),
        "t_loop": _traced_statements([(-1, 2)]),
    }
    assert {TOTAL, RETURN_TOTAL} <= covered["t_gt"] and FOR not in covered["t_gt"]
    assert RETURN_0 in covered["t_loop"] and RETURN_I not in covered["t_loop"]
    statements = mutant_lines.mutants_statements(MUTATED, "pkg.mod")
    tests = mutant_lines.tests_for_mutants(statements, covered)
    assert "pkg.mod.x_pick__mutmut_1" not in tests  # all its tests
    assert tests["pkg.mod.x_pick__mutmut_2"] == {"t_gt", "t_found", "t_loop"}
    assert tests["pkg.mod.x_pick__mutmut_3"] == {"t_gt"}
    assert tests["pkg.mod.x_pick__mutmut_6"] == {"t_loop"}
    assert tests["pkg.mod.x_pick__mutmut_5"] == {"t_found"}


def test_the_selection_is_sound_on_the_example_every_mutant_a_test_can_kill_keeps_that_test():
    """Run each mutant against each 'test' (a call and its original result): whenever a call
    tells a mutant from the original, that call is among the mutant's selected tests."""
    namespace: dict = {}
    exec(compile(MUTATED, "<mutated>", "exec"), namespace)
    calls = {f"t{a}_{b}": (a, b) for a in range(-2, 5) for b in range(4)}
    covered = {name: _traced_statements([args]) for name, args in calls.items()}
    tests = mutant_lines.tests_for_mutants(mutant_lines.mutants_statements(MUTATED, "m"), covered)
    orig = namespace["x_pick__mutmut_orig"]
    killed_somewhere = 0
    for n in range(2, 7):
        mutant = namespace[f"x_pick__mutmut_{n}"]
        for name, args in calls.items():
            if mutant(*args) != orig(*args):
                killed_somewhere += 1
                assert name in tests[f"m.x_pick__mutmut_{n}"], (n, name)
    assert killed_somewhere > 10
