"""tests/helpers/mutmut_guests.py: the mutation run puts the tests that killed another mutant of
the same function first. The order must come from that function's kills only."""

from __future__ import annotations

import types

from tests.helpers import mutmut_guests

F = "guestdbg.debug.manager.xǁGuestDebugManagerǁ_resume__mutmut_"
G = "guestdbg.debug.manager.xǁGuestDebugManagerǁ_resume_all__mutmut_"


def _report(nodeid: str, failed: bool) -> types.SimpleNamespace:
    return types.SimpleNamespace(nodeid=nodeid, failed=failed)


def test_a_mutants_failing_tests_are_recorded_and_put_first_for_its_siblings_only(tmp_path, monkeypatch):
    monkeypatch.setattr(mutmut_guests, "KILLS_FILE", tmp_path / "kills.tsv")
    assert mutmut_guests._killers_of_siblings(F + "1") == frozenset()  # no file yet
    for mutant, test, failed in [(F + "1", "t::a", True), (F + "1", "t::b", False),
                                 (G + "1", "t::c", True), (F + "2", "t::d", True)]:
        monkeypatch.setenv("MUTANT_UNDER_TEST", mutant)
        mutmut_guests.pytest_runtest_logreport(_report(test, failed))
    # Not in a mutant's session (the clean and stats runs): nothing is recorded.
    monkeypatch.setenv("MUTANT_UNDER_TEST", "")
    mutmut_guests.pytest_runtest_logreport(_report("t::e", True))
    assert mutmut_guests._killers_of_siblings(F + "3") == {"t::a", "t::d"}
    assert mutmut_guests._killers_of_siblings(G + "7") == {"t::c"}
    assert mutmut_guests._killers_of_siblings(F.replace("_resume", "_apply") + "1") == frozenset()
