"""mutmut's type check (setup.cfg [mutmut] ``type_check_command``): mypy over the mutated tree,
as scripts/test.sh runs it over src/ before any test, passing on only the errors a mutation made.

mutmut counts a mutant whose function has a mypy error as caught by the type checker (🧙)
without running its tests: CI would fail on it, as on any type error. But a mutated file is no
ordinary module. Each function has a copy of the original (``__mutmut_orig``) and one copy per
mutant side by side, and mypy also reports errors that this layout makes:

* an attribute defined again in every copy of ``__init__`` (``no-redef``);
* mutmut's own ``# type: ignore`` comments that ignore nothing (``unused-ignore``);
* errors the original's copy has as well, at the same line of the function: a narrowing that
  mypy does in the real file but not in the copy.

Only an error that the original's copy does not have (same line relative to the ``def``, same
code and message) is passed on, so a mutant is caught only for an error of its own.

Run in mutmut's tree (``mutants/``) by mutmut; prints mypy's JSON lines (``mypy -O json``).
mypy takes some two minutes over the mutated tree, so its result is kept in
``mutmut-mypy.json`` with the mutated files' digests, and used again while they are the same.
"""

from __future__ import annotations

import ast
import bisect
import hashlib
import json
import subprocess
import sys
from pathlib import Path

LAYOUT_CODES = {"no-redef", "unused-ignore"}
CACHE = Path("mutmut-mypy.json")


def _functions(source: str) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [node for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and "__mutmut_" in node.name]


def mutation_errors(errors: list[dict], sources: dict[str, str]) -> list[dict]:
    """The errors (mypy's JSON objects) that a mutant's function has and its original's copy
    does not. ``sources``: file -> its text, for the files the errors name."""
    kept: list[dict] = []
    by_file: dict[str, list[dict]] = {}
    for error in errors:
        if error.get("severity") == "error" and error.get("code") not in LAYOUT_CODES:
            by_file.setdefault(error["file"], []).append(error)
    for path, file_errors in by_file.items():
        funcs = sorted(_functions(sources[path]), key=lambda f: f.lineno)
        starts = [f.lineno for f in funcs]

        def owner(line: int):
            # Mutated functions do not nest: the last one to start at or before the line.
            i = bisect.bisect_right(starts, line) - 1
            if i >= 0 and line <= (funcs[i].end_lineno or funcs[i].lineno):
                return funcs[i]
            return None

        def key(error: dict, func) -> tuple:
            return (func.name.rsplit("__mutmut_", 1)[0], error["line"] - func.lineno,
                    error.get("code"), error["message"].replace(func.name, "<f>"))

        placed = [(error, owner(error["line"])) for error in file_errors]
        original = {key(e, f) for e, f in placed if f is not None and f.name.endswith("__mutmut_orig")}
        kept += [e for e, f in placed
                 if f is not None and not f.name.endswith("__mutmut_orig") and key(e, f) not in original]
    return kept


def main() -> int:
    files = sorted(str(p) for p in Path("src").rglob("*.py") if "__mutmut_" in p.read_text())
    digests = {f: hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in files}
    try:
        cached = json.loads(CACHE.read_text())
        if cached["files"] == digests:
            print("\n".join(json.dumps(e) for e in cached["errors"]))
            return 0
    except (OSError, ValueError, KeyError):
        pass
    run = subprocess.run([sys.executable, "-m", "mypy", "-O", "json"], capture_output=True, text=True)
    try:
        errors = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
    except ValueError:
        print(run.stdout + run.stderr)  # mutmut stops, showing it: "did not return JSON"
        return 2
    sources = {path: Path(path).read_text() for path in {e["file"] for e in errors}}
    kept = mutation_errors(errors, sources)
    CACHE.write_text(json.dumps({"files": digests, "errors": kept}))
    print("\n".join(json.dumps(e) for e in kept))
    return 0


if __name__ == "__main__":
    sys.exit(main())
