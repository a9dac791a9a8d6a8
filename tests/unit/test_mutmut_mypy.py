"""tests/helpers/mutmut_mypy.py: the mutation run's type check passes on only the errors a
mutation made. A mistake there would count mutants as caught that CI's mypy would pass (a
score too high), so it is checked with mypy itself on a small file laid out as mutmut's."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.helpers.mutmut_mypy import mutation_errors

# As mutmut lays out a mutated class: the original's copy and each mutant's, side by side.
MUTATED = textwrap.dedent('''\
    from typing import Callable, Optional


    class Box:
        def __init__(self) -> None:
            self.size: int = 0

        def xǁBoxǁ__init____mutmut_orig(self) -> None:
            self.size: int = 0

        def xǁBoxǁ__init____mutmut_1(self) -> None:
            self.size: int = 1

        def xǁBoxǁ__init____mutmut_2(self) -> None:
            self.size: int = None

        def xǁBoxǁgrow__mutmut_orig(self, source: Optional[Callable[[], int]]) -> int:
            if source is None:
                return 0
            def pull() -> int:
                return source()
            value = pull()
            source = None
            return value

        def xǁBoxǁgrow__mutmut_1(self, source: Optional[Callable[[], int]]) -> int:
            if source is None:
                return 1
            def pull() -> int:
                return source()
            value = pull()
            source = None
            return value

        def xǁBoxǁgrow__mutmut_2(self, source: Optional[Callable[[], int]]) -> int:
            if source is None:
                return None
            def pull() -> int:
                return source()
            value = pull()
            source = None
            return value
    ''')


def _mypy(tmp_path) -> tuple[list[dict], dict[str, str]]:
    path = tmp_path / "mutated.py"
    path.write_text(MUTATED)
    run = subprocess.run([sys.executable, "-m", "mypy", "-O", "json", "--no-incremental",
                          "--config-file", "/dev/null", "--warn-unused-ignores", str(path)],
                         capture_output=True, text=True, cwd=tmp_path)
    errors = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
    return errors, {e["file"]: path.read_text() for e in errors}


def _owners(kept: list[dict]) -> set[str]:
    lines = MUTATED.splitlines()
    owners = set()
    for error in kept:
        for i in range(error["line"] - 1, -1, -1):
            if "def xǁ" in lines[i]:
                owners.add(lines[i].split("def ")[1].split("(")[0])
                break
    return owners


def test_only_errors_of_a_mutants_own_are_passed_on(tmp_path):
    errors, sources = _mypy(tmp_path)
    codes = {e.get("code") for e in errors}
    # What mypy reports: the attribute annotated again in each copy of __init__ (the layout's),
    # the narrowing it cannot do in the nested function (in the original's copy too), and the
    # two mutants' own errors.
    assert {"no-redef", "misc", "assignment", "return-value"} <= codes, errors
    kept = mutation_errors(errors, sources)
    assert _owners(kept) == {"xǁBoxǁ__init____mutmut_2", "xǁBoxǁgrow__mutmut_2"}, kept


def test_layout_errors_and_the_originals_errors_are_dropped():
    source = MUTATED
    lines = source.splitlines()
    orig = next(i for i, line in enumerate(lines) if "grow__mutmut_orig" in line) + 1
    mutant1 = next(i for i, line in enumerate(lines) if "grow__mutmut_1" in line) + 1
    mutant2 = next(i for i, line in enumerate(lines) if "grow__mutmut_2" in line) + 1

    def error(line, code, message, severity="error"):
        return {"file": "f.py", "line": line, "code": code, "message": message, "severity": severity}

    errors = [
        error(orig + 4, "misc", '"None" not callable'),  # the original's own
        error(mutant1 + 4, "misc", '"None" not callable'),  # the same, in a mutant: dropped
        error(mutant2 + 4, "misc", '"None" not callable'),
        error(mutant2 + 2, "return-value", "Incompatible return value"),  # the mutant's own
        error(mutant1 + 1, "no-redef", 'Attribute "size" already defined'),  # the layout's
        error(mutant1 + 2, "unused-ignore", 'Unused "type: ignore" comment'),
        error(mutant1 + 3, "misc", "a note", severity="note"),
        error(1, "import", "outside any function"),
    ]
    kept = mutation_errors(errors, {"f.py": source})
    assert kept == [errors[3]]
