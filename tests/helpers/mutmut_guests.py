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
  Ahead of all of them run the tests that killed another mutant of the same function
  (mutmut-kills.tsv: each mutant's failing test, appended by its session): mutants of one
  function mostly die by the same few tests, and a killed mutant costs only the tests up to
  its first failure. Only the order changes, not which tests a mutant has.
* Only the unit tests count for the arm/ and gdb/ modules, as before debug/manager.py was
  added: an integration test that reaches one of their functions (a guest run decodes debug
  registers, walks page tables, a session frames packets) is not mapped to it in the clean
  run, so their mutants run only their unit tests (a surviving debugregs mutant would
  otherwise run some hundred integration tests, tens of seconds each).
* Each mutant runs only the tests that ran a statement it changes (tests/helpers/mutant_lines.py
  says why that changes no verdict): the stats session records each test's line coverage of the
  mutated files (coverage.py, one context per test) into mutmut-lines.json; the fork server's
  collection turns it into each mutant's tests; the mutant's session deselects the others (none
  left: pytest's exit code 5, mutmut's "no tests", not a kill). A survivor of a function every
  test reaches used to run them all (154 tests, a minute); most mutants are on lines few reach.
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

import hashlib
import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import mutant_lines
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
        if config.option.collectonly:
            _load_mutant_tests()  # the same: computed once, in the fork server
        killers: frozenset[str] = frozenset()
    else:
        _deselect_tests_that_miss_the_mutant(config, items)
        killers = _killers_of_siblings(os.environ["MUTANT_UNDER_TEST"])
    items.sort(key=lambda item: (item.nodeid not in killers, not item.nodeid.startswith("tests/unit/"),
                                 durations.get(item.nodeid, 0.0)))


# --- The tests that killed mutants of the same function run first ---

KILLS_FILE = REPO / "mutmut-kills.tsv"  # a line per killed mutant: its name, its failing test


def _function_of(mutant: str) -> str:
    return mutant.rsplit("__mutmut_", 1)[0]


def _killers_of_siblings(mutant: str) -> frozenset[str]:
    try:
        lines = KILLS_FILE.read_text().splitlines()
    except OSError:
        return frozenset()
    function = _function_of(mutant)
    return frozenset(test for name, _, test in (line.partition("\t") for line in lines)
                     if test and _function_of(name) == function)


def pytest_runtest_logreport(report):
    if report.failed and _mutant_session():
        # One short write in append mode: the two workers' lines do not interleave.
        fd = os.open(KILLS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{os.environ['MUTANT_UNDER_TEST']}\t{report.nodeid}\n".encode())
        finally:
            os.close(fd)


# --- Line coverage: each mutant's tests are those that ran a statement it changes ---

LINES_FILE = REPO / "mutmut-lines.json"
_coverage = None  # coverage.Coverage in the stats session
_mutant_tests: dict[str, frozenset[str]] | None = None  # mutant -> its tests (absent: all)
_measured: frozenset[str] = frozenset()  # the tests whose coverage the stats session recorded


def _mutated_files() -> list[str]:
    """The mutated files, relative to the tree mutmut runs in (setup.cfg's only_mutate)."""
    from mutmut.configuration import config

    return sorted({str(p.relative_to(REPO)) for pattern in config().only_mutate
                   for p in REPO.glob(pattern) if p.suffix == ".py"})


def _digest(rel: str) -> str:
    return hashlib.sha256((REPO / rel).read_bytes()).hexdigest()


def pytest_sessionstart(session):
    global _coverage
    if os.environ.get("MUTANT_UNDER_TEST") != "stats":
        return
    import coverage

    _coverage = coverage.Coverage(data_file=None, config_file=False,
                                  include=[str(REPO / rel) for rel in _mutated_files()])
    _coverage.start()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if _coverage is not None:
        _coverage.switch_context(item.nodeid)
    yield
    if _coverage is not None:
        _coverage.switch_context("")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    if _coverage is None:
        return
    _coverage.stop()
    data = _coverage.get_data()
    files = {rel: _digest(rel) for rel in _mutated_files()}
    try:
        old = json.loads(LINES_FILE.read_text())
    except (OSError, ValueError):
        old = {}
    # mutmut runs the stats again only for new tests: keep the others' lines if the files are
    # the same.
    tests: dict[str, dict[str, list[int]]] = old.get("tests", {}) if old.get("files") == files else {}
    measured = {item.nodeid for item in session.items}
    for nodeid in measured:
        tests[nodeid] = {}
    for rel in files:
        path = str(REPO / rel)
        starts = mutant_lines.orig_statement_starts((REPO / rel).read_text())
        lines_by_test: dict[str, list[int]] = {}
        for line, contexts in data.contexts_by_lineno(path).items():
            for context in contexts:
                if context in measured:
                    lines_by_test.setdefault(context, []).append(line)
        for nodeid, lines in lines_by_test.items():
            tests[nodeid][rel] = sorted(mutant_lines.covered_statements(starts, lines))
    LINES_FILE.write_text(json.dumps({"files": files, "tests": tests}))


def _load_mutant_tests() -> None:
    global _mutant_tests, _measured
    if _mutant_tests is not None:
        return
    _mutant_tests = {}
    try:
        recorded = json.loads(LINES_FILE.read_text())
        files = {rel: _digest(rel) for rel in _mutated_files()}
    except (OSError, ValueError, ImportError):
        return
    if recorded.get("files") != files:
        print(f"mutmut_guests: {LINES_FILE} is missing or stale: each mutant runs all its tests",
              file=sys.stderr)
        return
    tests = recorded["tests"]
    for rel in files:
        module = rel.removeprefix("src/").removesuffix(".py").replace("/", ".")
        statements = mutant_lines.mutants_statements((REPO / rel).read_text(), module)
        covered = {nodeid: by_file.get(rel, ()) for nodeid, by_file in tests.items()}
        _mutant_tests.update(mutant_lines.tests_for_mutants(statements, covered))
    _measured = frozenset(tests)


def _deselect_tests_that_miss_the_mutant(config, items) -> None:
    _load_mutant_tests()  # a no-op after the fork server's collection
    assert _mutant_tests is not None
    allowed = _mutant_tests.get(os.environ.get("MUTANT_UNDER_TEST", ""))
    if allowed is None:
        return
    kept = [item for item in items if item.nodeid in allowed or item.nodeid not in _measured]
    if len(kept) < len(items):
        kept_ids = {id(item) for item in kept}
        config.hook.pytest_deselected(items=[item for item in items if id(item) not in kept_ids])
        items[:] = kept


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
