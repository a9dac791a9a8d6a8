"""A smoke run of bench/bench_runloop.py at its --quick sizes: every contender (bare Unicorn,
Unicorn with count=, bare Unicorn with guestdbg's RunControl, guestdbg's VirtMachine, the CLI)
runs each guest to exit status 0 with the same console output, and the two exact instruction
counts (RunControl's on the bare Unicorn, guestdbg's vcpu.icount) agree. No timing asserts."""

from __future__ import annotations

import json

import pytest


from bench import bench_runloop

EXPECTED_CONSOLE = {
    "sysregs": b"sysregs: 20000 iterations, checksum 0x346a1a5e1b114e1b\n",
    "loop": b"loop: done\n",
    "crunch": b"crunch: 4 rounds, checksum 0x30e34253302a006e\n",
    "svcloop": None,  # its checksum belongs to svcloop's own tests; here it only has to agree
}


@pytest.mark.parametrize("name", ["sysregs", "loop", "crunch", "svcloop"])
def test_contenders_agree(guest_dir, tmp_path, name):
    spec = bench_runloop.GUESTS[name]
    elf = bench_runloop.guest_image(guest_dir, spec, spec.quick, tmp_path)
    assert bench_runloop.default_iterations(elf, spec) == spec.quick
    results = {c: bench_runloop.run_contender(c, elf) for c in bench_runloop.CONTENDERS}

    for c, r in results.items():
        assert r.status == 0, (c, r.console, r.extra)
        assert r.console == results["bare"].console, (c, r.console, results["bare"].console)
    if EXPECTED_CONSOLE[name] is not None:
        assert results["bare"].console == EXPECTED_CONSOLE[name]
    else:
        assert results["bare"].console.startswith(f"svcloop: {spec.quick} round trips, checksum ".encode())

    clock, vcpu = results["clock"].icount, results["guestdbg"].icount
    assert clock is not None and clock == vcpu
    if name == "loop":
        assert clock > 4 * spec.quick  # the loop alone is 4 instructions per iteration
    if name == "sysregs":
        assert clock > 36 * spec.quick
    assert bench_runloop.check_agreement(list(results.values())) == []


def test_sysregs_count_is_linear(guest_dir, tmp_path):
    """36 instructions per iteration (the guest's own documentation), counted exactly by both."""
    spec = bench_runloop.GUESTS["sysregs"]
    counts = {}
    for n in (1, 7):  # one-digit counts: the rest of the run is the same length
        elf = bench_runloop.guest_image(guest_dir, spec, n, tmp_path)
        clock = bench_runloop.run_contender("clock", elf)
        vcpu = bench_runloop.run_contender("guestdbg", elf)
        assert clock.status == vcpu.status == 0 and clock.console == vcpu.console
        assert clock.icount == vcpu.icount
        counts[n] = vcpu.icount
    assert counts[7] - counts[1] == 6 * 36


def test_main_quick_json(guest_dir, tmp_path, capsys):
    out = tmp_path / "runloop.json"
    assert bench_runloop.main(["--quick", "--repeat", "1", "--guest-dir", str(guest_dir), "--guests", "loop",
                               "--no-cli", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    loop = doc["guests"]["loop"]
    assert set(loop["rows"]) == {"bare", "count", "clock", "guestdbg"}
    assert loop["problems"] == []
    assert loop["rows"]["bare"]["ratio_to_bare"] == 1.0
    assert any(t["name"].startswith("loop:") and t["ok"] in (True, False) for t in doc["targets"])
    report = capsys.readouterr().out
    assert "loop: guestdbg speed / bare speed" in report and ("PASS" in report or "FAIL" in report)
