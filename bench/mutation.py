"""Summarise a mutmut 3 run (scripts/mutation.sh): the score per module, and the survivors.

Reads mutants/**/*.meta (mutmut's own result files) from the repository root. The access
decoder is the whole of arm/a64decode.py; debug/manager.py is mutated whole too.

    .venv/bin/python bench/mutation.py [--survivors] [--sampled]

After a sampled run (scripts/mutation.sh --sample F) each module's score over all its mutants is
estimated from the sample: "95% interval" is the Wilson score interval of the caught fraction
of the mutants run (conservative: it ignores that the sample is a sizeable part of a finite
whole).
"""

from __future__ import annotations

import argparse
import json
import math
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


def wilson(caught: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95% for z=1.96) of a proportion caught/n, as fractions."""
    if n == 0:
        return 0.0, 1.0
    p = caught / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--survivors", action="store_true", help="list surviving mutants")
    ap.add_argument("--min-score", type=float, default=90.0)
    ap.add_argument("--sampled", action="store_true",
                    help="a sampled run: pass if each module's score over the mutants run (the "
                         "estimate; the interval says how far off it may be) is --min-score or more")
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
        low, high = wilson(caught, run)
        if args.sampled:
            ok &= score_run >= args.min_score and not other
        else:
            ok &= score >= args.min_score and not other and not not_run
        # An interval only for a sampled run: a stopped run leaves out the costliest, no sample.
        interval = f"{100 * low:.1f}-{100 * high:.1f}%" if args.sampled and not_run else "-"
        rows.append((name, caught, total, score, score_run, interval, killed, timeout, typed, len(survived),
                     len(no_tests), len(not_run), len(other)))
        survivors += survived + no_tests + other
    # "of those run": the score over the mutants with a result (a stopped or partial run).
    print("| module | killed / total | score | of those run | 95% interval | killed by a failing test "
          "| by a timeout | by mypy | survived | no test reached | not run | other |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, k, t, s, sr, iv, kf, kt, ky, sv, nt, nr, ot in rows:
        print(f"| {name} | {k} / {t} | {s:.1f}% | {sr:.1f}% | {iv} | {kf} | {kt} | {ky} | {sv} | {nt} | {nr} | {ot} |")
    if args.survivors:
        print()
        for key in survivors:
            print(key)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
