"""The virt board's generated DTB (board/devicetree.py): parsed back with the `fdt` library and
dtc, each node and property against what the board models, and against QEMU's own virt DTB
(`qemu-system-aarch64 -M virt,dumpdtb=F -cpu cortex-a57`) for the nodes both have."""

from __future__ import annotations

import shutil
import subprocess

import fdt
import pytest

from guestdbg.board import devicetree
from guestdbg.board.common import ImageError
from tests.helpers.qemu_runner import QEMU, missing_tool, qemu_missing_reason

RAM = 512 << 20


def props(tree: fdt.FDT, path: str) -> dict:
    """name -> value: True (empty), a list of str or a list of u32 cells."""
    node = tree.get_node(path)
    out = {}
    for p in node.props:
        out[p.name] = list(p.data) if isinstance(p, (fdt.PropStrings, fdt.PropWords)) else True
    return out


@pytest.fixture(scope="module")
def tree() -> fdt.FDT:
    return devicetree.parse(devicetree.virt_dtb(RAM, bootargs="console=ttyAMA0 earlycon",
                                                initrd=(0x4800_0000, 0x4812_3456)))


EXPECTED = {
    "/": {"#address-cells": [2], "#size-cells": [2], "compatible": ["linux,dummy-virt"],
          "model": ["linux,dummy-virt"], "interrupt-parent": [0x8002]},
    "/memory@40000000": {"device_type": ["memory"], "reg": [0, 0x4000_0000, 0, RAM]},
    "/flash@0": {"compatible": ["cfi-flash"], "bank-width": [4],
                 "reg": [0, 0, 0, 0x0400_0000, 0, 0x0400_0000, 0, 0x0400_0000]},
    "/cpus": {"#address-cells": [1], "#size-cells": [0]},
    "/cpus/cpu@0": {"device_type": ["cpu"], "compatible": ["arm,cortex-a57"], "reg": [0],
                    "enable-method": ["psci"], "phandle": [0x8001]},
    "/psci": {"compatible": ["arm,psci-1.0", "arm,psci-0.2"], "method": ["hvc"]},
    "/timer": {"compatible": ["arm,armv8-timer", "arm,armv7-timer"], "always-on": True,
               "interrupts": [1, 13, 0x104, 1, 14, 0x104, 1, 11, 0x104, 1, 10, 0x104]},
    "/intc@8000000": {"compatible": ["arm,cortex-a15-gic"], "#interrupt-cells": [3],
                      "interrupt-controller": True, "phandle": [0x8002], "ranges": True,
                      "#address-cells": [2], "#size-cells": [2],
                      "reg": [0, 0x0800_0000, 0, 0x10000, 0, 0x0801_0000, 0, 0x10000]},
    "/pl011@9000000": {"compatible": ["arm,pl011", "arm,primecell"], "reg": [0, 0x0900_0000, 0, 0x1000],
                       "interrupts": [0, 1, 4], "clocks": [0x8000, 0x8000],
                       "clock-names": ["uartclk", "apb_pclk"]},
    "/apb-pclk": {"compatible": ["fixed-clock"], "#clock-cells": [0], "clock-frequency": [24_000_000],
                  "clock-output-names": ["clk24mhz"], "phandle": [0x8000]},
    "/chosen": {"stdout-path": ["/pl011@9000000"], "bootargs": ["console=ttyAMA0 earlycon"],
                "linux,initrd-start": [0, 0x4800_0000], "linux,initrd-end": [0, 0x4812_3456]},
}


@pytest.mark.parametrize("path", sorted(EXPECTED))
def test_node_properties(tree, path):
    assert props(tree, path) == EXPECTED[path]


def test_exactly_the_modelled_nodes(tree):
    """Nothing the board lacks: no v2m frame, pl031, fw-cfg,
    virtio-mmio, PCIe, PMU or gpio; no rng/kaslr seeds."""
    paths = sorted(path for path, _, _ in tree.walk())
    assert paths == sorted(["/", *(p for p in EXPECTED if p != "/")])
    assert tree.get_node("/intc@8000000").nodes == []


def test_chosen_without_kernel_has_only_stdout_path():
    t = devicetree.parse(devicetree.virt_dtb(128 << 20))
    assert props(t, "/chosen") == {"stdout-path": ["/pl011@9000000"]}
    assert props(t, "/memory@40000000")["reg"] == [0, 0x4000_0000, 0, 128 << 20]


def test_ram_above_4g_splits_cells():
    t = devicetree.parse(devicetree.virt_dtb(8 << 30))
    assert props(t, "/memory@40000000")["reg"] == [0, 0x4000_0000, 2, 0]


def test_header():
    blob = devicetree.virt_dtb(RAM)
    assert blob[:4] == bytes.fromhex("d00dfeed")
    assert int.from_bytes(blob[4:8], "big") == len(blob)
    assert int.from_bytes(blob[20:24], "big") == 17  # version
    assert int.from_bytes(blob[24:28], "big") == 16  # last compatible version


def test_dtc_reads_it(tmp_path):
    if shutil.which("dtc") is None:
        missing_tool("dtc is not installed (apt install device-tree-compiler)")
    path = tmp_path / "virt.dtb"
    path.write_bytes(devicetree.virt_dtb(RAM, bootargs="quiet"))
    r = subprocess.run(["dtc", "-I", "dtb", "-O", "dts", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr.lower(), r.stderr
    for needle in ('compatible = "arm,cortex-a15-gic";', 'enable-method = "psci";', 'bootargs = "quiet";',
                   'stdout-path = "/pl011@9000000";', "interrupt-controller;"):
        assert needle in r.stdout


@pytest.mark.parametrize("data", [b"", b"\xd0\x0d\xfe\xed", b"junk" * 20])
def test_parse_refuses_malformed(data):
    with pytest.raises(ImageError):
        devicetree.parse(data)


def test_parse_leaves_library_defaults_clean():
    """fdt.FDT shares one default list for memory reservations: parsing must not leak into it."""
    tree = devicetree.virt_fdt(RAM)
    tree.entries = [{"address": 0x4000_0000, "size": 0x1000}]
    parsed = devicetree.parse(devicetree.encode(tree))
    assert parsed.entries == [{"address": 0x4000_0000, "size": 0x1000}]
    assert fdt.FDT().entries == []


def test_unprintable_bootargs_refused():
    with pytest.raises(ImageError, match="printable"):
        devicetree.virt_dtb(RAM, bootargs="a\nb")


# ---------------------------------------------------------------------------- against QEMU
@pytest.fixture(scope="module")
def qemu_tree(tmp_path_factory) -> fdt.FDT:
    reason = qemu_missing_reason()
    if reason:
        missing_tool(reason)
    out = tmp_path_factory.mktemp("qemu") / "virt.dtb"
    r = subprocess.run([QEMU, "-M", f"virt,dumpdtb={out}", "-cpu", "cortex-a57", "-m", "512M", "-nographic"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and out.exists(), r.stderr
    return devicetree.parse(out.read_bytes())


# Where ours differs from QEMU's on purpose: cpu@0 gets enable-method "psci" (QEMU adds it
# only with -smp > 1); /psci has no PSCI 0.1 "arm,psci" compatible and function-id properties;
# /chosen has no rng-seed/kaslr-seed (deterministic boots, fixed kernel addresses); the GIC
# has no v2m child (not modelled).
DIFFERENCES = {
    "/cpus/cpu@0": {"enable-method"},
    "/psci": {"compatible", "cpu_suspend", "cpu_off", "cpu_on", "migrate"},
    "/chosen": {"rng-seed", "kaslr-seed"},
}


@pytest.mark.qemu
@pytest.mark.parametrize("path", sorted(EXPECTED))
def test_matches_qemu(tree, qemu_tree, path):
    ours, theirs = props(tree, path), props(qemu_tree, path)
    if path == "/chosen":  # QEMU's dump had no -append or -initrd
        ours = {k: v for k, v in ours.items() if k not in ("bootargs", "linux,initrd-start", "linux,initrd-end")}
    skip = DIFFERENCES.get(path, set())
    assert {k: v for k, v in ours.items() if k not in skip} == {k: v for k, v in theirs.items() if k not in skip}
    if path == "/psci":
        assert ours["compatible"] == theirs["compatible"][:2]


@pytest.mark.qemu
def test_qemu_has_more_nodes_we_do_not_model(tree, qemu_tree):
    ours = {p for p, _, _ in tree.walk()}
    theirs = {p for p, _, _ in qemu_tree.walk()}
    assert ours - theirs == set()
    extra = {p.split("/")[1].split("@")[0] for p in theirs - ours}
    assert extra == {"pcie", "pl031", "pl061", "fw-cfg", "virtio_mmio", "platform-bus", "pmu",
                     "gpio-keys", "intc", "cpus"}  # intc: its v2m@8020000 child; cpus: cpu-map
