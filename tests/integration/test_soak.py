"""A short run of bench/soak.py: breakpoint cycles, step round trips and connections through
the real server; memory must not grow with the number of operations and the guest must finish
with the right result. The long run (100k/100k/1000) is `bench/soak.py`."""

from __future__ import annotations



from bench import soak


def test_short_soak(guest_dir):
    report = soak.soak(guest_dir, cycles=3000, steps=3000, connections=60, log=lambda *a: None)
    assert report["final_reply"] == "W00"
    assert report["guest_output"] == "loop: done\n"
    assert report["exit_status"] == 0
    # A leak grows with the operations: over the second half of each phase (1,500 breakpoint
    # cycles, 1,500 steps, 30 connections) the Python heap must not grow by more than noise.
    growth = report["traced_growth_second_half"]
    assert set(growth) == {"cycles", "steps", "connections"}
    assert all(v < 64 * 1024 for v in growth.values()), (growth, report["memory"])
