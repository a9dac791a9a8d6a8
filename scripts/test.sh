#!/usr/bin/env bash
# Set up everything the test suite needs, type-check src/ with mypy, then run all the tests.
# Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --test || exit 1
# Types first: the interfaces between the layers are typed Protocols (src/guestdbg/vmapi.py).
.venv/bin/python -m mypy || { echo "test.sh: mypy found type errors" >&2; exit 1; }
.venv/bin/python -m pytest "$@"
status=$?
if [[ $status -eq 5 ]]; then
    echo "test.sh: pytest collected no tests: that is a failure" >&2
    exit 1
fi
exit $status
