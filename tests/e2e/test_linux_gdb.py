"""Kernel debugging through real gdb-multiarch, as under QEMU TCG (issue 10): Debian's arm64
Linux under ``guestdbg run --kernel ... --gdb ... --wait`` and, side by side, under
``qemu-system-aarch64 -M virt -cpu cortex-a57 ... -gdb unix:PATH -S`` (QEMU's gdbstub, the
reference), the same gdb script driving each; the test compares the stops.

gdb gets no ELF (Debian ships no vmlinux; its System.map is a stub): the addresses come from
the guest's /proc/kallsyms, read once per session in a first boot
(tests.helpers.linux_guest.read_kallsyms; LINUX_APPEND has nokaslr, so they hold in every
boot). Each test boots the kernel once under each VMM, both at the same time (two cores).

- test_kernel_breakpoint_set_at_reset: `break *VA` of run_init_process while the vCPU is at
  its entry with the MMU off is accepted; `continue` stops there, pc == VA under both;
  `monitor info slots` shows guestdbg held it in a hardware breakpoint register ("VA not
  mapped yet"); `x/2i $pc`, `bt` and the link register (in kernel_init) agree with QEMU's.
- test_kernel_boot_goes_on_with_a_software_breakpoint: the same with
  start_kernel as well: gdb re-inserts both breakpoints when it resumes from start_kernel,
  guestdbg now makes them software breakpoints, and the boot must still reach run_init_process.
- test_kernel_stepi_does_not_enter_irq_handlers: stopped just after the idle loop's WFI (an
  interrupt is pending: it is what ended the WFI), stepi past the `msr daifclr` that unmasks
  IRQs: no step lands in the vector table (QEMU's default SSTEP_NOIRQ), and both VMMs step
  through the same PCs with the same PSTATE; then, at the next wake-up, stepped to just after
  the unmask, with `monitor sstep irq on` (QEMU: `maint packet Qqemu.sstep=0x1`) the next step
  enters VBAR_EL1 + 0x280 (IRQ, current EL with SP_ELx) under both.
- test_kernel_watchpoint_on_jiffies: a hardware write watchpoint on
  jiffies_64 (its address decoded from do_timer's adrp/ldr: kallsyms lists text only), set at
  run_init_process, hits twice under both, the stop reply's ``watch:`` naming it, each hit
  advancing it.
"""

from __future__ import annotations

import re
import threading
from dataclasses import replace

import pytest

from tests.helpers.gdb_harness import GdbRun, QemuLinuxStub, Stub, require_gdb, run_gdb
from tests.helpers.linux_guest import LinuxGuest, guestdbg_linux_command, qemu_linux_command, read_kallsyms
from tests.helpers.qemu_runner import missing_tool, qemu_missing_reason

SYMBOLS = ("_stext", "_etext", "vectors", "start_kernel", "kernel_init", "run_init_process",
           "cpu_do_idle", "do_timer")
IRQ_FROM_EL1H = 0x280      # VBAR_EL1 offset: IRQ taken from the current EL with SP_ELx
VECTORS_SIZE = 0x800
PSTATE_I = 0x80            # DAIF.I: IRQs masked
GDB_TIMEOUT = 150.0
STOP_WITHIN = 25           # seconds: boot from start_kernel to run_init_process takes ~6 s
TICK_WITHIN = 10           # seconds: the timer ticks every 4 ms (HZ=250)
MEMORY_MB = 512


@pytest.fixture(scope="session")
def ksyms(linux_guest: LinuxGuest) -> dict[str, int]:
    """The kernel's symbols from a first boot (QEMU's when installed: it is the faster)."""
    command = (guestdbg_linux_command(linux_guest, MEMORY_MB) if qemu_missing_reason()
               else qemu_linux_command(linux_guest, MEMORY_MB))
    return read_kallsyms(command, SYMBOLS)


def _guestdbg_stub(tmp_path, guest: LinuxGuest, *extra: str) -> Stub:
    args = guestdbg_linux_command(guest, MEMORY_MB)[4:]  # drop python -m guestdbg.cli run
    return Stub(tmp_path / "guestdbg", extra_args=[*args, *extra], name="guestdbg")


def side_by_side(tmp_path, guest: LinuxGuest, body: str, guestdbg_args=(), *,
                 assert_ok: bool = True) -> tuple[GdbRun, GdbRun | None]:
    """Run `body` (a gdb script; GUESTDBG is True under guestdbg, False under QEMU) against
    guestdbg and QEMU at the same time; QEMU's run is None when QEMU is not installed (the test
    then skips, or fails with CI set, once guestdbg's checks have passed: call `qemu_needed`)."""
    require_gdb()
    runs: dict[str, GdbRun | BaseException] = {}

    def one(name: str, stub: Stub) -> None:
        try:
            with stub:
                runs[name] = run_gdb(stub, None, f"GUESTDBG = {name == 'guestdbg'}\n" + body,
                                     timeout=GDB_TIMEOUT, name=f"gdb-{name}")
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            runs[name] = e

    threads = [threading.Thread(target=one, args=("guestdbg", _guestdbg_stub(tmp_path, guest, *guestdbg_args)))]
    if not qemu_missing_reason():
        threads.append(threading.Thread(target=one, args=("qemu", QemuLinuxStub(tmp_path / "qemu", guest,
                                                                                 memory_mb=MEMORY_MB))))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in runs.values():
        if isinstance(r, BaseException):
            raise r
    if assert_ok:
        for r in runs.values():
            r.assert_ok()
    return runs["guestdbg"], runs.get("qemu")


def qemu_needed(q: GdbRun | None) -> None:
    if q is None:
        missing_tool(qemu_missing_reason() or "QEMU did not run")


def frame0(bt: str) -> int:
    m = re.match(r"#0\s+(0x[0-9a-f]+)", bt)
    assert m, bt
    return int(m[1], 16)


# -- a: breakpoints at kernel VAs set before the MMU is on ---------------------------------------

def test_kernel_breakpoint_set_at_reset(linux_guest, ksyms, tmp_path):
    init = ksyms["run_init_process"]
    body = f"""
connect()
check("pc0", pc())
check("sctlr0", val("$sctlr_el1") if GUESTDBG else None)
check("b", try_ex("break *{init:#x}"))
check("cont", try_ex("continue"))
check("pc", pc())
check("stop", STOPS[-1])
check("xi", exs("x/2i $pc"))
check("bt", exs("bt 4"))
check("lr", val("$x30") & (1 << 64) - 1)
check("slots", exs("monitor info slots") if GUESTDBG else None)
"""
    g, q = side_by_side(tmp_path, linux_guest, body)
    assert g["sctlr0"] & 1 == 0, "the vCPU does not start with its MMU off"
    for run in filter(None, (g, q)):
        assert run["b"]["ok"] and f"Breakpoint 1 at {init:#x}" in run["b"]["out"], run["b"]
        assert run["cont"]["ok"] and f"Breakpoint 1, {init:#x} in ?? ()" in run["cont"]["out"], run["cont"]
        assert run["pc"] == init
        assert run["stop"]["type"] == "BreakpointEvent" and run["stop"]["breakpoints"] == [1]
        # ftrace has made the first of the two patchable-entry NOPs `mov x9, x30` by now
        assert run["xi"].startswith(f"=> {init:#x}:\tmov\tx9, x30\n"), run["xi"]
        assert frame0(run["bt"]) == init
        # called from kernel_init: the link register points just after its call
        assert ksyms["kernel_init"] < run["lr"] < ksyms["kernel_init"] + 0x1000, hex(run["lr"])
    # while the guest ran from reset the breakpoint, on a VA the stage-1 tables did not map
    # yet, was held by a hardware breakpoint register
    ran = g["slots"].split("while the guest last continued:")[-1]
    assert re.search(rf"break\s+{init:#x}\s+hw \(VA not mapped yet\): slot \d", ran), g["slots"]
    qemu_needed(q)
    assert (g["xi"], g["bt"], g["lr"]) == (q["xi"], q["bt"], q["lr"])


def test_kernel_boot_goes_on_with_a_software_breakpoint(linux_guest, ksyms, tmp_path):
    """gdb's default flow with two breakpoints set at reset: stop at start_kernel, continue to
    run_init_process. gdb re-inserts both at the resume, now with the MMU on: guestdbg makes
    them software breakpoints (BRK in RAM), which must not slow the guest."""
    start, init = ksyms["start_kernel"], ksyms["run_init_process"]
    body = f"""
connect()
ex("break *{start:#x}")
ex("break *{init:#x}")
check("cont1", try_ex("continue"))
check("cont2", try_ex_within({STOP_WITHIN}))
check("pc", pc())
check("slots", exs("monitor info slots"))
"""
    require_gdb()
    guest = replace(linux_guest, append=linux_guest.append + " earlycon=pl011,0x9000000")
    with _guestdbg_stub(tmp_path, guest) as stub:
        g = run_gdb(stub, None, body, timeout=GDB_TIMEOUT, name="gdb-guestdbg")
        console = stub.stdout
    assert "Internal error: Oops" not in console, console[console.find("Unable to handle"):][:2000]
    g.assert_ok()
    assert f"Breakpoint 1, {start:#x}" in g["cont1"]["out"]
    assert f"Breakpoint 2, {init:#x}" in g["cont2"]["out"], (g["cont2"], g["slots"])
    assert g["pc"] == init


# -- b: stepi in the kernel does not enter the IRQ vectors -------------------------------------

STEPS = 40


def test_kernel_stepi_does_not_enter_irq_handlers(linux_guest, ksyms, tmp_path):
    start, idle = ksyms["start_kernel"], ksyms["cpu_do_idle"]
    irq_vector = ksyms["vectors"] + IRQ_FROM_EL1H
    body = f"""
ex("set breakpoint always-inserted off")
connect()
ex("break *{start:#x}")
ex("continue")
ex("delete")
# cpu_do_idle: [paciasp;] dsb sy; wfi; ... : stop on the instruction after the WFI
dis = exs("x/8i {idle:#x}").splitlines()
wfi = [int(line.split()[-2].rstrip(":"), 16) for line in dis if line.endswith("wfi")]
check("wfi", wfi)
ex("hbreak *%#x" % (wfi[0] + 4))
check("cont", try_ex("continue"))
check("hit", pc())
check("vbar", val("$vbar_el1") if GUESTDBG else None)
pcs, cpsrs = [], []
for _ in range({STEPS}):
    exs("stepi")
    pcs.append(pc())
    cpsrs.append(val("$cpsr") & 0xffffffff)
check("pcs", pcs)
check("cpsrs", cpsrs)
# the next wake-up from the WFI: step to the unmask, then let steps take interrupts
check("cont2", try_ex("continue"))
check("hit2", pc())
unmask = []
while len(unmask) < 10 and (not unmask or val("$cpsr") & {PSTATE_I}):
    exs("stepi")
    unmask.append(pc())
check("unmask", unmask)
check("cpsr_unmasked", val("$cpsr") & 0xffffffff)
check("sstep_on", exs("monitor sstep irq on") if GUESTDBG else exs("maint packet Qqemu.sstep=0x1"))
irq_pcs = []
for _ in range(4):
    exs("stepi")
    irq_pcs.append(pc())
    if {ksyms["vectors"]:#x} <= irq_pcs[-1] < {ksyms["vectors"] + VECTORS_SIZE:#x}:
        break
check("irq_pcs", irq_pcs)
check("spsr", val("$spsr_el1") & 0xffffffff if GUESTDBG else None)
"""
    g, q = side_by_side(tmp_path, linux_guest, body)
    vectors = range(ksyms["vectors"], ksyms["vectors"] + VECTORS_SIZE)
    assert g["vbar"] == ksyms["vectors"]
    for run in filter(None, (g, q)):
        assert run["hit"] == run["wfi"][0] + 4, run.describe()
        # the steps ran past the unmask (msr daifclr) with the interrupt that ended the WFI
        # still pending, and never went to the vector table
        assert any(c & PSTATE_I == 0 for c in run["cpsrs"]), [hex(c) for c in run["cpsrs"]]
        assert not [hex(p) for p in run["pcs"] if p in vectors]
        # at the next wake-up, stepped to just after the unmask: a step that may take
        # interrupts takes the pending one at once
        assert run["hit2"] == run["hit"], run.describe()
        assert run["cpsr_unmasked"] & PSTATE_I == 0 and run["unmask"][-1] in run["pcs"]
        assert run["irq_pcs"] == [irq_vector], [hex(p) for p in run["irq_pcs"]]
    assert "sstep irq on" in g["sstep_on"]
    assert g["spsr"] & PSTATE_I == 0  # the IRQ came from the unmasked code
    qemu_needed(q)
    assert q["sstep_on"].strip().endswith('received: "OK"'), q["sstep_on"]
    assert g["pcs"] == q["pcs"], (list(map(hex, g["pcs"])), list(map(hex, q["pcs"])))
    assert g["cpsrs"] == q["cpsrs"]
    assert g["unmask"] == q["unmask"]


# -- c: a hardware watchpoint on jiffies ---------------------------------------------------------

def test_kernel_watchpoint_on_jiffies(linux_guest, ksyms, tmp_path):
    init, do_timer = ksyms["run_init_process"], ksyms["do_timer"]
    body = f"""
import re
connect()
ex("break *{init:#x}")
ex("continue")
ex("delete")
# do_timer: jiffies_64 += ticks, i.e. adrp xN, PAGE; ldr xM, [xN, #OFF]; add; str
dis = exs("x/12i {do_timer:#x}")
page = re.search(r"adrp\\s+(x\\d+), (0x[0-9a-f]+)", dis)
off = re.search(r"ldr\\s+x\\d+, \\[%s, #(\\d+)\\]" % page[1], dis)
jiffies = int(page[2], 16) + int(off[1])
check("jiffies", jiffies)
check("watch", try_ex("watch *(unsigned long *)%#x" % jiffies))
for n in (1, 2):
    before = val("*(unsigned long *)%#x" % jiffies)
    ex("set debug remote 1")
    check(f"cont{{n}}", try_ex_within({TICK_WITHIN}))
    ex("set debug remote 0")
    check(f"stop{{n}}", STOPS[-1])
    check(f"pc{{n}}", pc())
    check(f"delta{{n}}", val("*(unsigned long *)%#x" % jiffies) - before)
    if STOPS[-1]["type"] != "BreakpointEvent":
        break
check("slots", exs("monitor info slots") if GUESTDBG else None)
"""
    g, q = side_by_side(tmp_path, linux_guest, body, assert_ok=False)
    console = (tmp_path / "guestdbg" / "guestdbg.out").read_text(errors="replace")
    assert "Internal error: Oops" not in console, console[console.find("Unable to handle"):][:1500]
    for run in filter(None, (g, q)):
        run.assert_ok()
    for run in filter(None, (g, q)):
        jiffies = run["jiffies"]
        assert run["watch"]["ok"] and f"Hardware watchpoint 2: *(unsigned long *){jiffies:#x}" in run["watch"]["out"]
        for n in (1, 2):
            out = run[f"cont{n}"]
            assert out["ok"], out
            assert run[f"stop{n}"]["type"] == "BreakpointEvent" and run[f"stop{n}"]["breakpoints"] == [2]
            assert "Hardware watchpoint 2" in out["out"] and "New value" in out["out"], out
            # a stop reply names the watched address (the stop before the store; gdb then steps
            # the store with the watchpoint out, which stops again without watch:)
            reply = re.findall(r"Packet received: (T[0-9a-f]{2}[^\n]*)", out["out"])
            assert any(re.search(rf"watch:0*{jiffies:x};", r) for r in reply), reply
            assert run[f"delta{n}"] >= 1
            assert ksyms["_stext"] <= run[f"pc{n}"] < ksyms["_etext"]
    assert re.search(r"watch\S*\s+" + hex(g["jiffies"]), g["slots"].split("while the guest last continued:")[-1]), \
        g["slots"]
    qemu_needed(q)
    # the writer may differ (do_timer from a periodic tick, tick_do_update_jiffies64 from a
    # NO_HZ one: it depends on the guest's idea of time), the watched address may not
    assert g["jiffies"] == q["jiffies"]
