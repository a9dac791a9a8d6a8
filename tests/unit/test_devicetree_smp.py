"""The generated DTB with several vCPUs (issue 11), as QEMU's virt with -smp N writes it: one
/cpus/cpu@N per vCPU (reg = MPIDR Aff0, enable-method "psci"), cpu-map's socket0/cluster0,
phandles numbered as QEMU numbers them, and the timer's PPIs wired to every CPU
(GIC_CPU_MASK_SIMPLE(N) in bits 8-15 of their flags). One vCPU: the tree is unchanged."""

from __future__ import annotations

import pytest

from guestdbg.board import devicetree as dt


def tree(n: int):
    return dt.parse(dt.virt_dtb(128 << 20, cpus=n))


@pytest.mark.parametrize("n", range(1, 9))
def test_cpus_nodes(n):
    t = tree(n)
    cpus = [node for node in t.get_node("/cpus").nodes if node.name.startswith("cpu@")]
    assert [c.name for c in cpus] == [f"cpu@{i:x}" for i in range(n)]
    for i, c in enumerate(cpus):
        assert c.get_property("reg").value == i
        assert c.get_property("enable-method").value == "psci"
        assert c.get_property("compatible").value == "arm,cortex-a57"
        assert c.get_property("phandle").value == 0x8000 + n - i  # QEMU: the last CPU first
    gic = t.get_node("/intc@8000000").get_property("phandle").value
    assert gic == 0x8001 + n == t.root.get_property("interrupt-parent").value
    flags = t.get_node("/timer").get_property("interrupts").data[2::3]
    assert flags == [(((1 << n) - 1) << 8) | 4] * 4


def test_cpu_map_with_several_cpus_only():
    assert not tree(1).exist_node("/cpus/cpu-map")
    t = tree(4)
    cores = t.get_node("/cpus/cpu-map/socket0/cluster0").nodes
    assert [c.name for c in cores] == ["core0", "core1", "core2", "core3"]
    assert [c.get_property("cpu").value for c in cores] == [0x8004, 0x8003, 0x8002, 0x8001]


def test_one_cpu_is_the_tree_it_always_was():
    assert dt.virt_dtb(128 << 20) == dt.virt_dtb(128 << 20, cpus=1)
    t = tree(1)
    assert t.get_node("/cpus/cpu@0").get_property("phandle").value == dt.PHANDLE_CPU0
    assert t.get_node("/intc@8000000").get_property("phandle").value == dt.PHANDLE_GIC


@pytest.mark.parametrize("n", [0, 9])
def test_cpu_count_is_checked(n):
    with pytest.raises(ValueError):
        dt.virt_dtb(128 << 20, cpus=n)


def test_matches_qemus_smp4_tree_where_installed(tmp_path):
    """QEMU -M virt -smp 4 dumps its tree: the same cpus node, cpu-map and timer flags."""
    import shutil
    import subprocess
    if shutil.which("qemu-system-aarch64") is None:
        pytest.skip("qemu-system-aarch64 is not installed")
    path = tmp_path / "q.dtb"
    subprocess.run(["qemu-system-aarch64", "-M", f"virt,dumpdtb={path}", "-cpu", "cortex-a57", "-smp", "4",
                    "-nographic"], capture_output=True, timeout=60, check=True)
    q, ours = dt.parse(path.read_bytes()), tree(4)
    for i in range(4):
        for prop in ("reg", "enable-method", "compatible", "device_type"):
            assert (q.get_property(prop, f"/cpus/cpu@{i}").value
                    == ours.get_property(prop, f"/cpus/cpu@{i}").value)
    assert q.get_property("interrupts", "/timer").data == ours.get_property("interrupts", "/timer").data
    q_cores = q.get_node("/cpus/cpu-map/socket0/cluster0").nodes
    assert [c.name for c in q_cores] == ["core0", "core1", "core2", "core3"]
