"""pytest plugin for the mutation run (setup.cfg [mutmut], ``-p tests.helpers.mutmut_guests``).
Outside the mutation run nothing loads it. It changes no verdict, only what a mutant costs:

* The guests are built once, into build/mutmut-guests of the tree mutmut runs in, and every
  pytest session (mutmut starts one per mutant) gets that directory as ``guest_dir`` instead
  of building all guests again into a fresh temporary directory. The build runs in the
  sessions that test no mutant (mutmut's stats and clean runs, and the fork server's
  collection, whose forks run the mutants): a mutant's session inherits the result and does
  not run make at all (make's no-op check alone took 2.4 s per mutant on the loaded machine).
* The tests run fastest first: the unit tests, then the others by their duration in mutmut's
  clean run (mutants/mutmut-stats.json). mutmut stops at a mutant's first failing test (-x),
  and hands its tests over in no particular order; the integration tests that also reach
  arm/debugregs.py or arm/mmu.py would otherwise often run before the unit test that kills.
* Only the unit tests count for the arm/ and gdb/ modules, as before debug/manager.py was
  added: an integration test that reaches one of their functions (a guest run decodes debug
  registers, walks page tables, a session frames packets) is not mapped to it in the clean
  run, so their mutants run only their unit tests (a surviving debugregs mutant would
  otherwise run some hundred integration tests, tens of seconds each).
* Each test of a mutant's session has its own time limit: 5 x (its clean-run duration + 1 s)
  of CPU time, or three times that of wall time (the machine is shared). A test over it ends
  the session with exit code 36, mutmut's "timeout", as mutmut's own limit would. mutmut's
  limit is per session, (the sum of the clean durations of the mutant's tests + 1 s) x 5 of
  wall time: a mutant that makes a resume loop for ever in the first of 90 tests used to run
  for minutes before it was stopped; now it is stopped after its first test's few seconds.
  A mutant that only makes one test five times slower is stopped too (mutmut's own limit
  could let it pass); it counts as killed by a timeout, as a hang does.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.qemu_runner import REPO, build_guests

_built: Path | None = None


def _guests() -> Path:
    global _built
    if _built is None:
        _built = build_guests(REPO / "build" / "mutmut-guests")
    return _built


def _mutant_session() -> bool:
    return "__mutmut_" in os.environ.get("MUTANT_UNDER_TEST", "")


@pytest.hookimpl(tryfirst=True)
def pytest_fixture_setup(fixturedef, request):
    if fixturedef.argname != "guest_dir":
        return None
    _guests()
    # What pytest's own pytest_fixture_setup does with a fixture's value.
    fixturedef.cached_result = (_built, fixturedef.cache_key(request), None)
    return _built


_durations: dict[str, float] = {}


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    try:
        durations = json.loads((REPO / "mutmut-stats.json").read_text())["duration_by_test"]
    except (OSError, ValueError, KeyError):
        durations = {}
    _durations.update(durations)
    if not _mutant_session():
        _guests()  # in the fork server's collection: the mutants' sessions, its forks, inherit it
    items.sort(key=lambda item: (not item.nodeid.startswith("tests/unit/"), durations.get(item.nodeid, 0.0)))


MANAGER = "guestdbg.debug.manager."


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item, nextitem):
    # Before mutmut's own teardown hook maps the functions the test reached to it.
    if item.nodeid.startswith("tests/unit/"):
        return
    try:
        from mutmut.state import state
    except ImportError:
        return
    reached = state()._stats
    for name in [n for n in reached if not n.startswith(MANAGER)]:
        reached.discard(name)


# The per-test time limit (see the docstring): (CPU deadline, wall deadline, test) or None.
TIMEOUT_MULTIPLIER = 5
TIMEOUT_CONSTANT = 1.0
WALL_FACTOR = 3
TIMEOUT_EXIT = 36  # mutmut's "timeout" (mutmut/stats.py)
_deadline: tuple[float, float, str] | None = None
_watchdog: threading.Thread | None = None


def _watch() -> None:
    while True:
        time.sleep(0.1)
        d = _deadline
        if d is not None and (time.process_time() > d[0] or time.monotonic() > d[1]):
            os.write(2, f"\nmutmut_guests: {d[2]} is over its time limit: timeout\n".encode())
            os._exit(TIMEOUT_EXIT)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    global _deadline, _watchdog
    # Only in a mutant's session (not the clean or the stats run), and only for a test the clean
    # run timed.
    if not _mutant_session() or item.nodeid not in _durations:
        return
    budget = TIMEOUT_MULTIPLIER * (_durations[item.nodeid] + TIMEOUT_CONSTANT)
    _deadline = (time.process_time() + budget, time.monotonic() + WALL_FACTOR * budget, item.nodeid)
    if _watchdog is None:  # started in the mutant's own process (mutmut forks one per mutant)
        _watchdog = threading.Thread(target=_watch, name="mutmut-guests-watchdog", daemon=True)
        _watchdog.start()


@pytest.hookimpl(trylast=True)
def pytest_runtest_logfinish(nodeid, location):
    global _deadline
    _deadline = None
