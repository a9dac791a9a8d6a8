"""Summarise a mutmut 3 run (scripts/mutation.sh): the score per module, and the survivors.

Reads mutants/**/*.meta (mutmut's own result files) from the repository root. The access
decoder is the whole of arm/a64decode.py; debug/manager.py is mutated whole too.

    .venv/bin/python bench/mutation.py [--survivors]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = {
    "arm/debugregs.py": ("src/guestdbg/arm/debugregs.py", None),
    "arm/mmu.py": ("src/guestdbg/arm/mmu.py", None),
    "gdb/rsp.py": ("src/guestdbg/gdb/rsp.py", None),
    "access decoder": ("src/guestdbg/arm/a64decode.py", None),
    "debug/manager.py": ("src/guestdbg/debug/manager.py", None),
}
# mutmut's exit codes (mutmut/stats.py): 1 and 3 are kills, SIGXCPU/36/255 timeouts (a mutant
# that hangs the tests is detected, so it counts as killed), 0 survived, 5/33 no test reached it.
KILLED = {1, 3}
# 37: caught by the type check (setup.cfg type_check_command: mypy, as CI runs it before the
# tests), with an error of the mutant's own (tests/helpers/mutmut_mypy.py); its tests not run.
TYPE_CHECKED = {37}
TIMEOUT = {36, -24, 24, 152, 255}
SURVIVED = {0}
NO_TESTS = {5, 33}
# No result yet: the run was stopped (or is still going) before it reached these mutants.
NOT_RUN = {None}


def load(meta: Path, prefixes) -> dict[str, int | None]:
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    if prefixes:
        codes = {k: v for k, v in codes.items() if k.rsplit(".", 1)[-1].startswith(prefixes)}
    return codes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--survivors", action="store_true", help="list surviving mutants")
    ap.add_argument("--min-score", type=float, default=90.0)
    args = ap.parse_args()
    ok = True
    rows = []
    survivors = []
    for name, (path, prefixes) in MODULES.items():
        meta = ROOT / "mutants" / (path + ".meta")
        if not meta.exists():
            print(f"{name}: no results ({meta} missing); run scripts/mutation.sh", file=sys.stderr)
            ok = False
            continue
        codes = load(meta, prefixes)
        killed = sum(c in KILLED for c in codes.values())
        timeout = sum(c in TIMEOUT for c in codes.values())
        typed = sum(c in TYPE_CHECKED for c in codes.values())
        survived = [k for k, c in codes.items() if c in SURVIVED]
        no_tests = [k for k, c in codes.items() if c in NO_TESTS]
        not_run = [k for k, c in codes.items() if c in NOT_RUN]
        other = [k for k, c in codes.items()
                 if c not in KILLED | TIMEOUT | TYPE_CHECKED | SURVIVED | NO_TESTS | NOT_RUN]
        total = len(codes)
        caught = killed + timeout + typed
        score = 100.0 * caught / total if total else 0.0
        run = total - len(not_run)
        score_run = 100.0 * caught / run if run else 0.0
        ok &= score >= args.min_score and not other and not not_run
        rows.append((name, caught, total, score, score_run, killed, timeout, typed, len(survived),
                     len(no_tests), len(not_run), len(other)))
        survivors += survived + no_tests + other
    # "of those run": the score over the mutants with a result (a stopped or partial run).
    print("| module | killed / total | score | of those run | killed by a failing test "
          "| by a timeout | by mypy | survived | no test reached | not run | other |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, k, t, s, sr, kf, kt, ky, sv, nt, nr, ot in rows:
        print(f"| {name} | {k} / {t} | {s:.1f}% | {sr:.1f}% | {kf} | {kt} | {ky} | {sv} | {nt} | {nr} | {ot} |")
    if args.survivors:
        print()
        for key in survivors:
            print(key)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
