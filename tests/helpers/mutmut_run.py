"""``mutmut`` for scripts/mutation.sh, with one step made fast: finding the mutant each type
error belongs to.

mutmut 3.8 runs the type check (setup.cfg ``type_check_command``) and then finds, for every
file with an error, the line span of each mutant's function with libcst's position metadata.
Over the 73,000-line mutated debug/manager.py that takes some six minutes of a run, even
``mutmut run NAME`` for a single mutant. Python's own ``ast`` gives the same spans in a few
seconds. The mutants, their verdicts and the type check itself are mutmut's, unchanged.

With ``MUTATION_SAMPLE`` set (a fraction, 0 < f <= 1) it runs a random sample of each mutated
file's mutants instead of all of them (``MUTATION_SEED`` picks the sample, 0 by default): a
score with a confidence interval (bench/mutation.py) in a fraction of the whole run's hours.
The mutants left out keep no verdict, as in a stopped run.

Usage: ``python tests/helpers/mutmut_run.py run [mutmut's options and mutant names]``, as a
script: ``python -m tests.helpers.mutmut_run`` would import this tree's ``tests`` package into
mutmut's process, and the pytest sessions mutmut starts in ``mutants/`` would then take the
plugin (tests/helpers/mutmut_guests.py) from here instead of from mutants/, with this tree's
paths (no clean-run durations, no line coverage of the mutated files).
"""

from __future__ import annotations

import ast
import bisect
import os
import random
import sys
from collections.abc import Iterable
from pathlib import Path

import mutmut.__main__ as mutmut_main
from mutmut.configuration import config
from mutmut.mutation.file_mutation import (
    FailedTypeCheckMutant,
    MutatedMethodLocation,
    group_by_path,
)
from mutmut.type_checking import TypeCheckingError, run_type_checker
from mutmut.utils.file_utils import change_cwd
from mutmut.utils.format_utils import get_mutant_name, is_mutated_method_name


def mutated_functions(path: Path, source: str) -> list[MutatedMethodLocation]:
    """Each mutant's function (and the original's copy) in a mutated file, with its lines."""
    return [MutatedMethodLocation(file=path, function_name=node.name,
                                  line_number_start=node.lineno,  # as libcst: from the def, not its decorators
                                  line_number_end=node.end_lineno or node.lineno)
            for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and is_mutated_method_name(node.name)]


def caught_mutants(errors: Iterable[TypeCheckingError]) -> dict[str, FailedTypeCheckMutant]:
    """mutant name -> its type error, as mutmut's filter_mutants_with_type_checker maps them
    (run in mutmut's tree, ``mutants/``)."""
    caught: dict[str, FailedTypeCheckMutant] = {}
    for path, errors_of_file in group_by_path(list(errors)).items():
        functions = sorted(mutated_functions(path, path.read_text(encoding="utf-8")),
                           key=lambda f: f.line_number_start)
        if not functions:
            continue
        starts = [f.line_number_start for f in functions]
        for error in errors_of_file:
            # Mutated functions do not nest: the last one to start at or before the line.
            i = bisect.bisect_right(starts, error.line_number) - 1
            owner = functions[i] if i >= 0 and error.line_number <= functions[i].line_number_end else None
            if owner is None:
                # As mutmut: an error outside every mutant is no mutant's doing; stop the run.
                raise RuntimeError(f"type error outside every mutant: {error.file_path}:{error.line_number} "
                                   f"({error.error_description})")
            name = get_mutant_name(path.relative_to(Path(".").absolute()), owner.function_name)
            caught[name] = FailedTypeCheckMutant(method_location=owner, name=name, error=error)
    return caught


def filter_mutants_with_type_checker() -> dict[str, FailedTypeCheckMutant]:
    with change_cwd(Path("mutants")):
        return caught_mutants(run_type_checker(config().type_check_command))


def sample(names_by_file: dict[str, list[str]], fraction: float, seed: int) -> set[str]:
    """A simple random sample of each file's mutants, the same fraction of each (rounded, at
    least one), the same for the same seed and mutants."""
    if not 0 < fraction <= 1:
        raise ValueError(f"MUTATION_SAMPLE must be a fraction in (0, 1], not {fraction}")
    picked: set[str] = set()
    for path in sorted(names_by_file):
        names = sorted(names_by_file[path])
        if names:
            rng = random.Random(f"{seed}:{path}")
            picked.update(rng.sample(names, max(1, round(fraction * len(names)))))
    return picked


def _sampling(collect, fraction: float, seed: int):
    def collect_sample(*, mutant_names):
        mutants, by_path = collect(mutant_names=mutant_names)
        names_by_file: dict[str, list[str]] = {}
        for data, name, _ in mutants:
            names_by_file.setdefault(str(data.path), []).append(name)
        picked = sample(names_by_file, fraction, seed)
        print(f"    MUTATION_SAMPLE={fraction} MUTATION_SEED={seed}: {len(picked)} of {len(mutants)} mutants")
        return [m for m in mutants if m[1] in picked], by_path
    return collect_sample


def main() -> None:
    if "tests" in sys.modules:
        raise SystemExit(f"run {__file__} as a script, not with -m (see its docstring)")
    mutmut_main.filter_mutants_with_type_checker = filter_mutants_with_type_checker
    if os.environ.get("MUTATION_SAMPLE"):
        try:
            fraction = float(os.environ["MUTATION_SAMPLE"])
            seed = int(os.environ.get("MUTATION_SEED", "0"))
            if not 0 < fraction <= 1:
                raise ValueError
        except ValueError:
            raise SystemExit(f"MUTATION_SAMPLE={os.environ['MUTATION_SAMPLE']!r} MUTATION_SEED="
                             f"{os.environ.get('MUTATION_SEED', '0')!r}: the sample is a fraction in (0, 1], "
                             "the seed a whole number")
        mutmut_main.collect_source_file_mutation_data = _sampling(
            mutmut_main.collect_source_file_mutation_data, fraction, seed)
    mutmut_main.cli()


if __name__ == "__main__":
    main()
