"""Shared fixtures: the guest programs, built once per session from guests/ with Debian's
aarch64 cross toolchain (scripts/setup.sh --test installs it)."""

from __future__ import annotations

import pytest

from qemu_runner import build_guests


# Which host facility each test module needs (see the markers in pyproject.toml).
_MODULE_NEEDS = {
    "test_gdb_e2e": ("needs_gdb", "needs_lldb"),
    "test_debugger_correctness": ("needs_gdb", "needs_qemu"),
    "test_stub_manners": ("needs_gdb", "needs_lldb", "needs_qemu"),
    "test_guests_qemu": ("needs_qemu",),
    "test_qemu_compare": ("needs_qemu",),
    "test_kvm_x86": ("needs_kvm", "needs_qemu"),
    "test_kvm_x86_gdb": ("needs_kvm", "needs_gdb"),
    "test_x86_manners": ("needs_kvm",),
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        for marker in _MODULE_NEEDS.get(item.module.__name__.rpartition(".")[2], ()):
            item.add_marker(marker)


@pytest.fixture
def qemu_x86():
    """qemu-system-x86_64, which the test set-up installs: skip without it, fail in CI."""
    import shutil
    from qemu_runner import missing_tool
    if shutil.which("qemu-system-x86_64") is None:
        missing_tool("qemu-system-x86_64 is not installed (apt install qemu-system-x86)")


@pytest.fixture(scope="session")
def guest_dir(tmp_path_factory):
    return build_guests(tmp_path_factory.mktemp("guests"))
