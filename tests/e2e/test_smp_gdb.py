"""End to end with several vCPUs (issue 11): the real gdb-multiarch and lldb see one thread per
vCPU, a breakpoint in code every vCPU runs reports each one's thread, `thread 2` + `stepi`
steps CPU 1, and watchpoints fire on the writer.

The stub is the real GdbServer over TCP (so that lldb can connect too): in this process over
the 2-vCPU SmpBoard of tests/integration/test_smp_debug.py (the board contract the manager
codes against), and `guestdbg run --smp 2` once the CLI has it.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from guestdbg.gdb.server import Endpoint, GdbServer
from tests.helpers.gdb_harness import REPO, Stub, lldb_missing_reason, require_gdb, run_gdb, run_lldb
from tests.helpers.mmu_guest import assemble
from tests.helpers.support import symbols
from tests.integration.test_smp_debug import GUEST_S, ROUNDS, SmpBoard


@pytest.fixture(autouse=True)
def _need_gdb():
    require_gdb()


@pytest.fixture(scope="module")
def smp_elf(tmp_path_factory):
    return assemble(tmp_path_factory.mktemp("smpe2e"), "smp", GUEST_S)


class InProcessStub:
    """What the gdb harness needs of a stub (workdir, gdb_endpoint, port, stderr), served by a
    GdbServer on a thread of this process."""

    def __init__(self, workdir: Path, elf: Path, n: int = 2):
        self.workdir = workdir
        self.logs: list[str] = []
        board = SmpBoard(n)
        board.start_all(board.load_elf(elf))
        self.board = board
        self.server = GdbServer(board, Endpoint("tcp", host="127.0.0.1", port=0), wait=True,
                                log=self.logs.append)
        self.server.listen()
        assert isinstance(self.server.address, tuple)
        self.port = self.server.address[1]
        self.status: list[object] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            self.status.append(self.server.serve())
        except BaseException as e:  # shown by the test that waits for it
            self.status.append(e)

    @property
    def gdb_endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def stderr(self) -> str:
        return "\n".join(self.logs)

    def wait(self, timeout: float = 30.0) -> object:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the stub is still serving; log:\n{self.stderr}"
        return self.status[0]


def _cli_has_smp() -> bool:
    out = subprocess.run([sys.executable, "-m", "guestdbg.cli", "run", "--help"], cwd=REPO,
                         capture_output=True, text=True).stdout
    return "--smp" in out


@pytest.fixture(params=["in-process", "cli"])
def stub(request, smp_elf, tmp_path):
    if request.param == "in-process":
        yield InProcessStub(tmp_path, smp_elf)
        return
    if not _cli_has_smp():
        pytest.skip("guestdbg run has no --smp yet")
    with Stub(tmp_path, smp_elf, tcp=True, extra_args=["--smp", "2"]) as s:
        yield s


def test_gdb_threads_breakpoints_stepping_and_watchpoints(smp_elf, stub):
    sym = symbols(str(smp_elf))
    run = run_gdb(stub, smp_elf, f"""
        connect()
        check("info_threads", exs("info threads"))
        check("nthreads", len(gdb.selected_inferior().threads()))
        ex("break *{sym['shared']:#x}")
        seen = []
        for _ in range({2 * ROUNDS}):
            ex("continue")
            seen.append((gdb.selected_thread().num, pc(), val("$x0")))
            if len(set(t for t, _, _ in seen)) == 2 and len(seen) >= 4:
                break
        check("seen", seen)
        ex("delete")
        # thread 2 + stepi, scheduler-locking on: CPU 1 steps, CPU 0 stays.
        ex("set scheduler-locking on")
        ex("thread 1")
        pc0 = pc()
        ex("thread 2")
        pc1 = pc()
        ex("stepi")
        check("step", [gdb.selected_thread().num, pc1, pc()])
        ex("thread 1")
        check("pc0_after", [pc0, pc()])
        # ... and off (vCont;s:2;c): the step is still CPU 1's.
        ex("set scheduler-locking off")
        ex("thread 2")
        pc1 = pc()
        ex("stepi")
        check("step_others_run", [gdb.selected_thread().num, pc1, pc()])
        # A watchpoint on CPU 1's counter fires on thread 2, whoever is selected.
        ex("thread 1")
        ex("watch *(long *){sym['counters'] + 8:#x}")
        ex("continue")
        check("watch_thread", [gdb.selected_thread().num, val("$x0")])
        ex("delete")
        check("extra", exs("info threads"))
        check("version", exs("monitor info version"))
        if {isinstance(stub, Stub)}:
            # Every CPU parks in WFI and the board runs on: Ctrl-C stops them all.
            try_ex_within(3)
            check("ctrl_c", [STOPS[-1].get("signal"), len(gdb.selected_inferior().threads())])
        ex("kill")
    """)
    run.assert_ok()
    r = run.results
    assert r["nthreads"] == 2, r["info_threads"]
    assert "Thread 1" in r["info_threads"] and "Thread 2" in r["info_threads"], r["info_threads"]
    seen = r["seen"]
    assert {t for t, _, _ in seen} == {1, 2}, seen
    assert all(pc == sym["shared"] and x0 == t - 1 for t, pc, x0 in seen), seen
    thread, before, after = r["step"]
    assert thread == 2 and after != before, r["step"]
    assert r["pc0_after"][0] == r["pc0_after"][1], r["pc0_after"]
    thread, before, after = r["step_others_run"]
    assert thread == 2 and after != before, r["step_others_run"]
    assert r["watch_thread"] == [2, 1], r["watch_thread"]
    assert "CPU#0 [" in r["extra"] and "CPU#1 [" in r["extra"], r["extra"]
    assert "guestdbg" in r["version"]
    if isinstance(stub, Stub):
        assert r["ctrl_c"] == ["SIGINT", 2], r["ctrl_c"]
    stub.wait()


def test_lldb_thread_list_and_breakpoint_thread(smp_elf, stub):
    reason = lldb_missing_reason()
    if reason:
        pytest.skip(reason)
    sym = symbols(str(smp_elf))
    res = run_lldb(stub, smp_elf, [
        "thread list",
        f"breakpoint set --address {sym['cpu1_only']:#x}",
        "continue",
        "thread list",
        "register read x0",
        "process kill",
    ])
    out = res.stdout
    # Two threads before and at the breakpoint, which only CPU 1 (thread 2) reaches.
    assert len(re.findall(r"thread #\d+: tid = 0x0*1\b", out)) >= 1, out
    assert re.search(r"\* thread #2: tid = 0x0*2.*stop reason = breakpoint 1", out), out
    assert re.search(r"x0 = 0x0+1\b", out), out
    assert len(re.findall(r"thread #2: tid", out)) >= 2, out
    stub.wait()
    print(out, file=sys.stderr)


def test_gdb_four_cpus_each_thread_hits_and_thread_3_steps(smp_elf, tmp_path):
    """`guestdbg run --smp 4`: `info threads` lists 4, a breakpoint every CPU passes once (its
    first instruction after the PSCI bring-up) reports threads 1-4, and `thread 3` + `stepi`
    (scheduler-locking on) steps CPU 2 alone, at its stop there (CPUs 0 and 1 have parked in
    WFI by then: each runs its rounds in one turn of the board's round-robin)."""
    if not _cli_has_smp():
        pytest.skip("guestdbg run has no --smp yet")
    sym = symbols(str(smp_elf))
    with Stub(tmp_path, smp_elf, tcp=True, extra_args=["--smp", "4"]) as stub:
        run = run_gdb(stub, smp_elf, f"""
            connect()
            check("nthreads", len(gdb.selected_inferior().threads()))
            ex("break *{sym['go']:#x}")
            hits = []
            for _ in range(3):
                ex("continue")
                hits.append([gdb.selected_thread().num, pc(), val("$x0")])
            ex("set scheduler-locking on")
            pcs = {{}}
            for t in (1, 2, 3, 4):
                ex("thread %d" % t)
                pcs[t] = pc()
            ex("thread 3")
            ex("stepi")
            after = {{}}
            for t in (1, 2, 3, 4):
                ex("thread %d" % t)
                after[t] = pc()
            check("pcs", [pcs, after])
            ex("set scheduler-locking off")
            ex("continue")
            hits.append([gdb.selected_thread().num, pc(), val("$x0")])
            check("hits", hits)
            check("info_threads", exs("info threads"))
            ex("kill")
        """)
        stub.wait()
    run.assert_ok()
    r = run.results
    assert r["nthreads"] == 4, r
    assert sorted(t for t, _, _ in r["hits"]) == [1, 2, 3, 4], r["hits"]
    assert all(pc == sym["go"] and x0 == t - 1 for t, pc, x0 in r["hits"]), r["hits"]
    before, after = ({int(k): v for k, v in d.items()} for d in r["pcs"])
    assert after[3] != before[3] and all(after[t] == before[t] for t in (1, 2, 4)), r["pcs"]
    assert all(f"CPU#{i} [" in r["info_threads"] for i in range(4)), r["info_threads"]
