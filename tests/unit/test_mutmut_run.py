"""tests/helpers/mutmut_run.py: the mutation run's fast mapping of type errors to mutants must
give what mutmut's own (libcst) mapping gives. A wrong owner would count a mutant as caught by
the type check that nothing caught: a score too high."""

from __future__ import annotations

from pathlib import Path

import mutmut.mutation.file_mutation as file_mutation
import pytest
from mutmut.type_checking import TypeCheckingError

from tests.helpers.mutmut_run import caught_mutants, mutated_functions
from tests.unit.test_mutmut_mypy import MUTATED

# A module-level function too (mutmut's x_ names), with a decorator and a nested function.
MODULE_FUNCTIONS = MUTATED + '''

def x_scale__mutmut_orig(n: int) -> int:
    def twice(k: int) -> int:
        return 2 * k
    return twice(n)


@staticmethod
def x_scale__mutmut_1(n: int) -> int:
    def twice(k: int) -> int:
        return 3 * k
    return twice(n)
'''


class _Config:
    type_check_command = ["mypy"]


@pytest.fixture
def mutated_tree(tmp_path, monkeypatch):
    source = tmp_path / "mutants" / "src" / "pkg" / "box.py"
    source.parent.mkdir(parents=True)
    source.write_text(MODULE_FUNCTIONS, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return source


def _mutmuts_own(errors, monkeypatch):
    monkeypatch.setattr(file_mutation, "run_type_checker", lambda command: errors)
    monkeypatch.setattr(file_mutation, "config", lambda: _Config())
    return file_mutation.filter_mutants_with_type_checker()


def _owners(result):
    return {k: (v.method_location.function_name, v.error.line_number) for k, v in result.items()}


def test_every_line_maps_to_the_mutant_mutmut_maps_it_to(mutated_tree, monkeypatch):
    # An error on each line of the file, one at a time: the same owner as mutmut's, or the same
    # refusal (a line outside every mutant).
    mapped = 0
    for line in range(1, len(MODULE_FUNCTIONS.splitlines()) + 1):
        errors = [TypeCheckingError(file_path=mutated_tree.absolute(), line_number=line,
                                    error_description=f"error at {line}")]
        try:
            theirs = _owners(_mutmuts_own(errors, monkeypatch))
        except Exception:
            theirs = None
        monkeypatch.chdir(mutated_tree.parents[2])
        try:
            ours = _owners(caught_mutants(errors))
        except RuntimeError:
            ours = None
        monkeypatch.chdir(mutated_tree.parents[3])
        assert ours == theirs, line
        mapped += ours is not None
    spans = mutated_functions(mutated_tree, MODULE_FUNCTIONS)
    assert {f.function_name for f in spans} >= {"xǁBoxǁgrow__mutmut_2", "x_scale__mutmut_1"}
    assert mapped >= 35


def test_the_names_are_mutmuts_mutant_names(mutated_tree, monkeypatch):
    lines = MODULE_FUNCTIONS.splitlines()
    line = next(i for i, text in enumerate(lines, 1) if "return 3 * k" in text)
    monkeypatch.chdir(mutated_tree.parents[2])
    ours = caught_mutants([TypeCheckingError(file_path=mutated_tree.absolute(), line_number=line,
                                             error_description="e")])
    assert list(ours) == ["pkg.box.x_scale__mutmut_1"]


def test_an_error_outside_every_mutant_stops_the_run_as_mutmut_does(mutated_tree, monkeypatch):
    monkeypatch.chdir(mutated_tree.parents[2])
    with pytest.raises(RuntimeError, match="outside every mutant"):
        caught_mutants([TypeCheckingError(file_path=Path(mutated_tree).absolute(), line_number=1,
                                          error_description="e")])


def test_a_sample_takes_the_same_fraction_of_each_file_and_the_seed_picks_it():
    from tests.helpers.mutmut_run import sample

    names = {"a.py": [f"a.m{i}" for i in range(1000)], "b.py": [f"b.m{i}" for i in range(40)],
             "c.py": ["c.m0"], "d.py": []}
    picked = sample(names, 0.2, seed=0)
    assert len([n for n in picked if n.startswith("a.")]) == 200
    assert len([n for n in picked if n.startswith("b.")]) == 8
    assert picked >= {"c.m0"}  # at least one of each file
    assert picked <= {n for file in names.values() for n in file}
    assert sample({k: list(reversed(v)) for k, v in names.items()}, 0.2, seed=0) == picked
    other = sample(names, 0.2, seed=1)
    assert other != picked and len(other) == len(picked)
    assert sample(names, 1.0, seed=5) == {n for file in names.values() for n in file}
    # Over many seeds every mutant is picked about as often as the fraction says.
    counts = {n: 0 for n in names["b.py"]}
    for seed in range(500):
        for n in sample({"b.py": names["b.py"]}, 0.2, seed):
            counts[n] += 1
    assert 60 < min(counts.values()) and max(counts.values()) < 140
    with pytest.raises(ValueError):
        sample(names, 0.0, seed=0)


def test_the_scores_interval_is_wilsons():
    from bench.mutation import wilson

    low, high = wilson(95, 100)
    assert (round(low, 4), round(high, 4)) == (0.8882, 0.9785)  # the textbook values
    assert wilson(0, 0) == (0.0, 1.0)
    low, high = wilson(50, 50)
    assert high == 1.0 and round(low, 4) == round(50 / (50 + 1.96 ** 2), 4)
