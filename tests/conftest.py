"""Shared fixtures: the guest programs, built once per session from guests/ with Debian's
aarch64 cross toolchain (scripts/setup.sh --test installs it)."""

from __future__ import annotations

import pytest

from qemu_runner import build_guests


@pytest.fixture(scope="session")
def guest_dir(tmp_path_factory):
    return build_guests(tmp_path_factory.mktemp("guests"))
