"""Drive guestdbg's GDB stub with the real gdb-multiarch (and lldb), QEMU-test-harness style.

One scenario = one stub process + one (or more) debugger processes:

* `Stub` starts ``python -m guestdbg.cli run IMAGE --gdb ENDPOINT --wait`` with its stdout
  (the guest's console) and stderr (the stub's log) going to files, waits until it listens,
  and always kills it (by its pid) on exit. A TCP stub listens on port 0 and the real port is
  read back from its log line, so tests never race for a port.
* `run_gdb` runs ``gdb-multiarch -q -batch -nx ELF -x script.py``. The script is a fixed
  prelude plus the scenario's body, which uses gdb's Python API and records each check with
  ``check(name, value)``. The results (plus every stop and exit event gdb saw, and any
  exception the body raised) come back as JSON through a file.

Prelude helpers available to a body:

* ``ex(cmd)``: run a command; what it printed (stop reports included) replaces the returned
  placeholder in the results (output is bracketed by markers on gdb's stdout);
* ``exs(cmd)``: ``gdb.execute(cmd, to_string=True)``, for use inside the script;
* ``try_ex(cmd)``: ``ex`` returning ``{"ok": bool, "out"|"error": str}`` instead of raising;
* ``try_ex_within(seconds, cmd="continue")``: ``try_ex`` of a resuming command, interrupting
  the target if it has not stopped within ``seconds``;
* ``val(expr)``: ``int(gdb.parse_and_eval(expr))``; ``sym(name)``: the address of a symbol;
* ``pc()``: the selected frame's PC; ``connect()``: ``target remote`` to the stub;
* ``check(name, value)``: record a JSON-serialisable value under ``name``;
* ``STOPS`` / ``EXITS``: stop and exit events so far (dicts; also returned).

Every subprocess has a timeout; on a timeout the process is killed and the test fails with
what it printed so far.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.qemu_runner import missing_tool

GDB = "gdb-multiarch"
LLDB = "lldb"
REPO = Path(__file__).resolve().parents[2]

PRELUDE = r'''
import gdb, json, os, sys, time, traceback

RESULTS = {}
STOPS = []
EXITS = []
RESULTS_PATH = @RESULTS_PATH@
ENDPOINT = @ENDPOINT@


def _on_stop(event):
    d = {"type": type(event).__name__}
    if isinstance(event, gdb.SignalEvent):
        d["signal"] = event.stop_signal
    if isinstance(event, gdb.BreakpointEvent):
        d["breakpoints"] = [b.number for b in event.breakpoints]
    try:
        d["pc"] = int(gdb.selected_frame().pc())
    except Exception:
        pass
    STOPS.append(d)


def _on_exit(event):
    EXITS.append({"exit_code": getattr(event, "exit_code", None)})


gdb.events.stop.connect(_on_stop)
gdb.events.exited.connect(_on_exit)


_SEGMENTS = [0]


def ex(cmd):
    """Run a gdb command; returns a placeholder that the pytest side replaces by everything
    the command printed, including what gdb prints when the target stops (to_string does not
    capture that): the output is bracketed by markers on gdb's stdout."""
    _SEGMENTS[0] += 1
    n = _SEGMENTS[0]
    sys.stdout.write("\n@@<%d>@@\n" % n)
    sys.stdout.flush()
    try:
        gdb.execute(cmd)
    finally:
        sys.stdout.write("\n@@</%d>@@\n" % n)
        sys.stdout.flush()
    return "@@SEGMENT:%d@@" % n


def exs(cmd):
    """Run a gdb command and return its output as a string, inside the script (not for
    commands that resume the target: the stop report is not part of it)."""
    return gdb.execute(cmd, to_string=True)


def try_ex(cmd):
    try:
        return {"ok": True, "out": ex(cmd)}
    except gdb.error as e:
        return {"ok": False, "error": str(e), "out": "@@SEGMENT:%d@@" % _SEGMENTS[0]}


def val(expr):
    return int(gdb.parse_and_eval(expr))


def try_ex_within(seconds, cmd="continue"):
    """try_ex(cmd) for a command that resumes the target, interrupting it (SIGINT) if it has
    not stopped after `seconds`: a run that should stop soon fails fast instead of timing out."""
    import threading
    done = threading.Event()

    def watchdog():
        if not done.wait(seconds):
            gdb.post_event(lambda: done.is_set() or gdb.execute("interrupt"))
    threading.Thread(target=watchdog, daemon=True).start()
    try:
        return try_ex(cmd)
    finally:
        done.set()


def sym(name):
    return int(gdb.parse_and_eval("(unsigned long)&%s" % name))


def pc():
    return int(gdb.selected_frame().pc())


def check(name, value):
    RESULTS[name] = value


def connect():
    return ex("target remote " + ENDPOINT)


def _save():
    RESULTS["_stops"] = STOPS
    RESULTS["_exits"] = EXITS
    tmp = RESULTS_PATH + ".tmp"
    with open(tmp, "w") as f:
        json.dump(RESULTS, f, indent=1, default=repr)
    os.replace(tmp, RESULTS_PATH)


for _setting in ("confirm off", "pagination off", "width 0", "height 0"):
    gdb.execute("set " + _setting)

try:
@BODY@
except BaseException:
    RESULTS["_error"] = traceback.format_exc()
finally:
    _save()
'''


def gdb_missing_reason() -> str | None:
    if shutil.which(GDB) is None:
        return f"{GDB} is not installed (apt install gdb-multiarch)"
    return None


def require_gdb() -> None:
    reason = gdb_missing_reason()
    if reason:
        missing_tool(reason)


class Stub:
    """``guestdbg run ... --gdb ENDPOINT --wait`` as a subprocess; a context manager."""

    def __init__(self, workdir: Path, image: Path | None = None, *, rom: Path | None = None,
                 tcp: bool = False, wait: bool = True, extra_args=(), name: str = "stub"):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tcp = tcp
        self.sock_path = self.workdir / f"{name}.sock"
        if len(str(self.sock_path)) > 100:  # sun_path holds 108 bytes
            self.sock_path = Path(tempfile.mkdtemp(prefix="gdbsock")) / f"{name}.sock"
        self.stdout_path = self.workdir / f"{name}.out"
        self.stderr_path = self.workdir / f"{name}.err"
        endpoint = ":0" if tcp else f"unix:{self.sock_path}"
        self.argv = [sys.executable, "-m", "guestdbg.cli", "run"]
        if image is not None:
            self.argv.append(str(image))
        if rom is not None:
            self.argv += ["--rom", str(rom)]
        self.argv += ["--gdb", endpoint, *extra_args]
        if wait:
            self.argv.append("--wait")
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None

    # -- lifetime
    def __enter__(self) -> Stub:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.kill()

    def start(self, timeout: float = 20.0) -> None:
        out = open(self.stdout_path, "wb")
        err = open(self.stderr_path, "wb")
        try:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         cwd=REPO, start_new_session=True)
        finally:
            out.close()
            err.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._listening():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.argv[0]} exited early with {self.proc.returncode}:\n{self.stderr}")
            time.sleep(0.02)
        self.kill()
        raise AssertionError(f"{self.argv[0]} did not start listening within {timeout}s:\n{self.stderr}")

    def _listening(self) -> bool:
        log = self.stderr
        # "waiting for a GDB connection on ..." (--wait) or "... a debugger may attach at ..."
        if "waiting for a GDB connection" not in log and "a debugger may attach at" not in log:
            return False
        if self.tcp:
            m = re.search(r"tcp:127\.0\.0\.1:(\d+)", log)
            assert m, f"no port in the stub's log: {log!r}"
            self.port = int(m.group(1))
            return True
        return self.sock_path.exists()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: only its processes
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)

    def wait(self, timeout: float = 20.0) -> int:
        """The stub's exit status; fails the test if it is still running after `timeout`."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"stub still running after {timeout}s; log:\n{self.stderr}"
                                 f"\nguest output:\n{self.stdout}") from None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- what it printed
    @property
    def stdout(self) -> str:
        return self.stdout_path.read_bytes().decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_bytes().decode("utf-8", "replace")

    @property
    def gdb_endpoint(self) -> str:
        """What `target remote` takes."""
        return f"127.0.0.1:{self.port}" if self.tcp else str(self.sock_path)


class QemuStub(Stub):
    """``qemu-system-aarch64 -M virt -cpu cortex-a57 ... -gdb unix:PATH -S``: the peer the
    correctness tests compare guestdbg's answers with (same interface as Stub)."""

    def __init__(self, workdir: Path, image: Path, *, name: str = "qemu"):
        from tests.helpers.qemu_runner import qemu_command, qemu_missing_reason
        reason = qemu_missing_reason()
        if reason:
            missing_tool(reason)
        super().__init__(workdir, image, name=name)
        self.argv = qemu_command(image, extra_args=["-gdb", f"unix:{self.sock_path},server=on,wait=off", "-S"])

    def _listening(self) -> bool:
        return self.sock_path.exists()  # QEMU logs nothing; its socket appears when it listens


@dataclass
class GdbRun:
    results: dict
    stdout: str
    stderr: str
    returncode: int | None
    script: Path
    stops: list = field(default_factory=list)
    exits: list = field(default_factory=list)

    def __getitem__(self, key):
        if key not in self.results:
            raise AssertionError(f"gdb script did not record {key!r}; {self.describe()}")
        return self.results[key]

    def get(self, key, default=None):
        return self.results.get(key, default)

    def describe(self) -> str:
        return (f"error: {self.results.get('_error')}\nresults: {json.dumps(self.results, indent=1)[:4000]}"
                f"\ngdb output:\n{self.stdout[-6000:]}")

    def assert_ok(self) -> None:
        assert "_error" not in self.results, self.describe()


def run_gdb(stub: Stub, elf: Path | None, body: str, *, timeout: float = 60.0, name: str = "gdb",
            gdb_args=()) -> GdbRun:
    """Run gdb-multiarch in batch mode on `elf` with a script made of the prelude and `body`
    (Python source for gdb's interpreter; `ENDPOINT` is the stub's address). elf=None: no file,
    gdb learns the architecture from the stub's target description (e.g. a Linux Image)."""
    require_gdb()
    workdir = stub.workdir
    results_path = workdir / f"{name}.json"
    results_path.unlink(missing_ok=True)
    script = workdir / f"{name}.py"
    script.write_text(PRELUDE.replace("@RESULTS_PATH@", repr(str(results_path)))
                      .replace("@ENDPOINT@", repr(stub.gdb_endpoint))
                      .replace("@BODY@", textwrap.indent(textwrap.dedent(body).strip("\n"), "    ")))
    argv = [GDB, "-q", "-batch", "-nx", *gdb_args, *([str(elf)] if elf is not None else []), "-x", str(script)]
    # stderr goes into the same pipe, so warnings and errors land inside their command's markers
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            cwd=REPO, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        partial = results_path.read_text() if results_path.exists() else "(no results)"
        raise AssertionError(f"gdb did not finish within {timeout}s\nstdout:\n{out.decode(errors='replace')}"
                             f"\nresults: {partial}"
                             f"\nstub log:\n{stub.stderr}") from None
    stdout = out.decode(errors="replace")
    results = json.loads(results_path.read_text()) if results_path.exists() else {
        "_error": "the script wrote no results (gdb died?)"}
    results = _resolve_segments(results, _segments(stdout))
    return GdbRun(results, stdout, "", proc.returncode,
                  script, results.get("_stops", []), results.get("_exits", []))


def _segments(stdout: str) -> dict[int, str]:
    segs = {}
    for m in re.finditer(r"\n@@<(\d+)>@@\n(.*?)\n@@</\1>@@\n", stdout, re.DOTALL):
        segs[int(m.group(1))] = m.group(2)
    return segs


def _resolve_segments(obj, segs: dict[int, str]):
    if isinstance(obj, str):
        return re.sub(r"@@SEGMENT:(\d+)@@", lambda m: segs.get(int(m.group(1)), "<output lost>"), obj)
    if isinstance(obj, list):
        return [_resolve_segments(v, segs) for v in obj]
    if isinstance(obj, dict):
        return {k: _resolve_segments(v, segs) for k, v in obj.items()}
    return obj


def lldb_missing_reason() -> str | None:
    if shutil.which(LLDB) is None:
        return f"{LLDB} is not installed (apt install lldb)"
    return None


def run_lldb(stub: Stub, elf: Path, commands: list[str], *, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """lldb --batch with `-o` commands; the first one connects to the (TCP) stub."""
    argv = [LLDB, "--batch", "--no-lldbinit", "-o", f"gdb-remote 127.0.0.1:{stub.port}"]
    for c in commands:
        argv += ["-o", c]
    argv.append(str(elf))
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=REPO, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"lldb did not finish within {timeout}s\nstdout:\n{out.decode(errors='replace')}"
                             f"\nstderr:\n{err.decode(errors='replace')}") from None
    return subprocess.CompletedProcess(argv, proc.returncode, out.decode(errors="replace"),
                                       err.decode(errors="replace"))


class QemuLinuxStub(QemuStub):
    """QemuStub booting a Linux Image and initramfs (``-kernel/-initrd/-append``, as
    tests.helpers.linux_guest.qemu_linux_command), held at reset by ``-S``; the guest's console
    goes to the stdout file."""

    def __init__(self, workdir: Path, guest, *, name: str = "qemu", memory_mb: int = 512):
        from tests.helpers.linux_guest import qemu_linux_command
        super().__init__(workdir, guest.kernel, name=name)
        self.argv = qemu_linux_command(guest, memory_mb, extra_args=[
            "-gdb", f"unix:{self.sock_path},server=on,wait=off", "-S"])


class QemuBiosStub(QemuStub):
    """QemuStub booting a raw image from the flash at 0 (``-bios IMAGE``), as guestdbg's --rom."""

    def __init__(self, workdir: Path, image: Path, *, name: str = "qemu"):
        from tests.helpers.qemu_runner import qemu_command
        super().__init__(workdir, image, name=name)
        self.argv = qemu_command(image, bios=True,
                                 extra_args=["-gdb", f"unix:{self.sock_path},server=on,wait=off", "-S"])


def run_lldb_on(stub: Stub, elf: Path, commands: list[str], *, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """run_lldb for any stub, TCP or unix socket (QemuStub listens on a unix socket)."""
    if stub.tcp:
        return run_lldb(stub, elf, commands, timeout=timeout)
    argv = [LLDB, "--batch", "--no-lldbinit",
            "-o", f"process connect --plugin gdb-remote unix-connect://{stub.sock_path}"]
    for c in commands:
        argv += ["-o", c]
    argv.append(str(elf))
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, cwd=REPO,
                              timeout=timeout, start_new_session=True)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"lldb did not finish within {timeout}s\nstdout:\n{e.stdout!r}") from None
    return subprocess.CompletedProcess(argv, proc.returncode, proc.stdout.decode(errors="replace"),
                                       proc.stderr.decode(errors="replace"))
