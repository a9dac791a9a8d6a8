#!/usr/bin/env bash
# Mutation testing (issue 14) with mutmut 3: arm/debugregs.py, arm/mmu.py, gdb/rsp.py, the
# load/store access decoder (arm/a64decode.py) against their fast unit tests (no guests, QEMU or
# gdb), and debug/manager.py against the fast in-process manager tests (tests/integration:
# guests on the emulated vCPU, built once per run by tests/helpers/mutmut_guests.py).
# Configuration: setup.cfg [mutmut]. Results: mutants/ (git-ignored); scores: bench/mutation.py.
#
#   scripts/mutation.sh            # fresh run, then the scores: ~2 hours on the shared 2-core
#                                  # machine (manager.py's 2,500 mutants; the other modules
#                                  # ~12 min), of which ~10 min before the first mutant (mypy,
#                                  # the stats and clean runs); bench/README.md "Mutation testing"
#   scripts/mutation.sh --sample 0.1 [--seed N]
#                                  # a random tenth of each module's mutants: each module's
#                                  # score with a 95% interval, in ~20 min here
#   scripts/mutation.sh --resume   # keep mutants/ and the cached results (not after test edits)
#   .venv/bin/mutmut show NAME     # the diff of one mutant; .venv/bin/mutmut browse: all
#   .venv/bin/python tests/helpers/mutmut_run.py run NAME...
#                                  # those mutants again (globs: 'guestdbg.debug.manager*');
#                                  # mutmut's own `mutmut run` works too, six minutes slower
#
# VENV=/path/to/venv picks another virtualenv (a git worktree shares the main tree's .venv);
# MUTATION_JOBS=1 runs one mutant at a time (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
resume=0
scores=(--survivors)
while (($#)); do
    case "$1" in
        --resume) resume=1 ;;
        --sample) [[ $# -ge 2 ]] || { echo "--sample needs a fraction, e.g. --sample 0.15" >&2; exit 2; }
                  export MUTATION_SAMPLE="$2"; scores+=(--sampled); shift ;;
        --seed) [[ $# -ge 2 ]] || { echo "--seed needs a number" >&2; exit 2; }
                export MUTATION_SEED="$2"; shift ;;
        *) echo "usage: scripts/mutation.sh [--resume] [--sample FRACTION [--seed N]]" >&2; exit 2 ;;
    esac
    shift
done
if [[ ! -x "$VENV/bin/mutmut" ]]; then
    "$VENV/bin/pip" install 'mutmut>=3.8,<3.9'
fi
if ((!resume)); then
    rm -rf mutants
fi
# The type check (setup.cfg) runs this virtualenv's mypy.
export VIRTUAL_ENV="$(cd "$VENV" && pwd)"
start=$(date +%s)
mkdir -p mutants
# mutmut, with its mapping of type errors to mutants done fast (tests/helpers/mutmut_run.py).
# It prints a progress line per mutant; keep the log, show its tail on failure.
"$VENV/bin/python" tests/helpers/mutmut_run.py run --max-children "${MUTATION_JOBS:-2}" > mutants/run.log 2>&1 || {
    tail -c 4000 mutants/run.log; exit 1; }
end=$(date +%s)
echo "mutmut run: $((end - start)) s"
"$VENV/bin/python" bench/mutation.py "${scores[@]}"
