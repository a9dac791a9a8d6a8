"""pytest plugin for the mutation run (setup.cfg [mutmut], ``-p tests.helpers.mutmut_guests``).
Outside the mutation run nothing loads it. It changes no verdict, only what a mutant costs:

* The guests are built once, into build/mutmut-guests of the tree mutmut runs in, and every
  pytest session (mutmut starts one per mutant) gets that directory as ``guest_dir`` instead
  of building all guests again into a fresh temporary directory (about a second per mutant).
  make is incremental, so after the first session each build is a no-op.
* The tests run fastest first: the unit tests, then the others by their duration in mutmut's
  clean run (mutants/mutmut-stats.json). mutmut stops at a mutant's first failing test (-x),
  and hands its tests over in no particular order; the integration tests that also reach
  arm/debugregs.py or arm/mmu.py would otherwise often run before the unit test that kills.
* Only the unit tests count for the arm/ and gdb/ modules, as before debug/manager.py was
  added: an integration test that reaches one of their functions (a guest run decodes debug
  registers, walks page tables, a session frames packets) is not mapped to it in the clean
  run, so their mutants run only their unit tests (a surviving debugregs mutant would
  otherwise run some hundred integration tests, tens of seconds each).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.qemu_runner import REPO, build_guests

_built: Path | None = None


@pytest.hookimpl(tryfirst=True)
def pytest_fixture_setup(fixturedef, request):
    global _built
    if fixturedef.argname != "guest_dir":
        return None
    if _built is None:
        _built = build_guests(REPO / "build" / "mutmut-guests")
    # What pytest's own pytest_fixture_setup does with a fixture's value.
    fixturedef.cached_result = (_built, fixturedef.cache_key(request), None)
    return _built


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    try:
        durations = json.loads((REPO / "mutmut-stats.json").read_text())["duration_by_test"]
    except (OSError, ValueError, KeyError):
        durations = {}
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
