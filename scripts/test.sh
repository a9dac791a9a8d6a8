#!/usr/bin/env bash
# Set up everything the test suite needs, then run all of it. Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --test || exit 1
.venv/bin/python -m pytest "$@"
status=$?
if [[ $status -eq 5 ]]; then
    echo "test.sh: pytest collected no tests: that is a failure" >&2
    exit 1
fi
exit $status
