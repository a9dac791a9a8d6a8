"""Shared fixtures: the guest programs, built once per session from guests/ with Debian's
aarch64 cross toolchain (scripts/setup.sh --test installs it)."""

from __future__ import annotations

import pytest

from tests.helpers.qemu_runner import build_guests


# The tier of a test is its directory: tests/unit (pure, no guest runs), tests/integration
# (guests run in-process, the CLI as a subprocess, real KVM) and tests/e2e (real gdb-multiarch,
# lldb or QEMU drive or shadow the stub). `pytest -m "not e2e"` runs the fast tiers.
_TIERS = ("unit", "integration", "e2e")

# Which host facility each test module needs (markers registered in pyproject.toml), and the
# modules that take more than a few seconds (`slow`).
_MODULE_NEEDS = {
    "test_gdb_e2e": ("gdb", "lldb", "slow"),
    "test_debugger_correctness": ("gdb", "qemu"),
    "test_stub_manners": ("gdb", "lldb", "qemu", "slow"),
    "test_server_manners": ("gdb", "lldb"),
    "test_gdb_phys_console": ("gdb",),
    "test_smp_gdb": ("gdb", "lldb"),
    "test_guests_qemu": ("qemu",),
    "test_linux_guests": ("qemu", "slow"),
    "test_linux_gdb": ("gdb", "qemu", "slow"),
    "test_qemu_compare": ("qemu",),
    "test_kvm_x86": ("kvm", "qemu"),
    "test_kvm_x86_gdb": ("kvm", "gdb", "slow"),
    "test_x86_manners": ("kvm", "qemu"),
    "test_gdb_target_xml": ("gdb",),
    "test_x86_debug_units": ("gdb", "kvm"),
    "test_soak": ("slow",),
    "test_fuzz_stub": ("slow",),
    "test_bench_runloop": ("slow",),
    "test_gdb_reverse": ("gdb",),
    "test_gdb_conditions": ("gdb",),
    "test_linux_reverse": ("slow",),
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = item.path.relative_to(config.rootpath).parts
        tier = parts[1] if len(parts) > 2 and parts[0] == "tests" else None
        if tier not in _TIERS:
            raise pytest.UsageError(f"{item.nodeid}: tests live under tests/unit, tests/integration or tests/e2e")
        item.add_marker(tier)
        for marker in _MODULE_NEEDS.get(item.module.__name__.rpartition(".")[2], ()):
            item.add_marker(marker)


@pytest.fixture
def qemu_x86():
    """qemu-system-x86_64, which the test set-up installs: skip without it, fail in CI."""
    import shutil
    from tests.helpers.qemu_runner import missing_tool
    if shutil.which("qemu-system-x86_64") is None:
        missing_tool("qemu-system-x86_64 is not installed (apt install qemu-system-x86)")


@pytest.fixture(scope="session")
def guest_dir(tmp_path_factory):
    return build_guests(tmp_path_factory.mktemp("guests"))


@pytest.fixture(scope="session")
def linux_guest(tmp_path_factory):
    """Debian's arm64 kernel and a busybox initramfs built from busybox-static
    (tests/helpers/linux_guest.py): skip without them (scripts/setup.sh --test downloads them),
    fail in CI."""
    from tests.helpers.linux_guest import GuestMissing, prepare_linux_guest
    from tests.helpers.qemu_runner import missing_tool
    try:
        return prepare_linux_guest(tmp_path_factory.mktemp("linux"))
    except GuestMissing as e:
        missing_tool(str(e))


@pytest.fixture(scope="session")
def uboot_bin():
    """U-Boot for the virt board from u-boot-qemu: skip without it, fail in CI."""
    from tests.helpers.linux_guest import GuestMissing, find_uboot
    from tests.helpers.qemu_runner import missing_tool
    try:
        return find_uboot()
    except GuestMissing as e:
        missing_tool(str(e))
