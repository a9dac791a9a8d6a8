#!/usr/bin/env bash
# Mutation testing (issue 14) with mutmut 3: arm/debugregs.py, arm/mmu.py, gdb/rsp.py and the
# load/store access decoder (arm/a64decode.py),
# against their fast unit tests only (no guests, QEMU or gdb). Configuration: setup.cfg
# [mutmut]. Results: mutants/ (git-ignored); scores: bench/mutation.py.
#
#   scripts/mutation.sh            # fresh run (~10 min on the 2-core machine), then the scores
#   scripts/mutation.sh --resume   # keep mutants/ and the cached results (not after test edits)
#   .venv/bin/mutmut show NAME     # the diff of one mutant; .venv/bin/mutmut browse: all
#
# debug/manager.py is not covered yet (issue 14 lists it too).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -x .venv/bin/mutmut ]]; then
    .venv/bin/pip install 'mutmut>=3.8,<3.9'
fi
if [[ "${1:-}" != "--resume" ]]; then
    rm -rf mutants
fi
start=$(date +%s)
mkdir -p mutants
# mutmut prints a progress line per mutant; keep the log, show its tail on failure.
.venv/bin/mutmut run --max-children "${MUTATION_JOBS:-2}" > mutants/run.log 2>&1 || {
    tail -c 4000 mutants/run.log; exit 1; }
end=$(date +%s)
echo "mutmut run: $((end - start)) s"
.venv/bin/python bench/mutation.py --survivors
