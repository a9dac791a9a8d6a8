"""No silent skips in CI: a tool the test set-up installs is a requirement there."""

from __future__ import annotations

import pytest
from _pytest.outcomes import Failed, Skipped

from tests.helpers.qemu_runner import missing_tool


def test_missing_tool_skips_outside_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(Skipped, match="frobnicator is not installed"):
        missing_tool("frobnicator is not installed")


def test_missing_tool_fails_in_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(Failed, match="frobnicator is not installed; CI is set"):
        missing_tool("frobnicator is not installed")
