"""pytest plugin for the mutation run (setup.cfg [mutmut], ``-p tests.helpers.mutmut_guests``):
the guests are built once, into build/mutmut-guests of the tree mutmut runs in, and every
pytest session (mutmut starts one per mutant) gets that directory as ``guest_dir`` instead of
building all guests again into a fresh temporary directory (about a second per mutant).

make is incremental, so after the first session each build is a no-op. Outside the mutation
run nothing loads this plugin.
"""

from __future__ import annotations

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
