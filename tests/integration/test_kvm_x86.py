"""The pure-Python KVM x86-64 back end and the pc board, on this host's real /dev/kvm.

- uAPI: every ctypes structure's size and field offsets, and every ioctl number, against a C
  program compiled with the system gcc from the installed kernel headers.
- The pc board: guests from guests/x86 run with the right UART output and exit status; guest
  exceptions name their vector and RIP; the same ELF gives the same output under
  qemu-system-x86_64 (PVH boot), and the same isa-debug-exit value: guestdbg exits with the
  value v the guest wrote, QEMU with (v << 1) | 1 (see `qemu_value`).
- The vCPU: kick() interrupts a running guest; the register list round-trips, also into a
  fresh VM that then finishes the guest.
- The typed interface: X86Vm is a `guestdbg.vmapi.Vm` and X86Vcpu a `vmapi.X86Vcpu`, with the
  Protocols' own signatures; KVM_IRQ_LINE without an interrupt controller is ENXIO.

Everything that needs KVM is skipped, with the reason, only when /dev/kvm cannot be opened.
"""

from __future__ import annotations

import ctypes
import errno
import inspect
import shutil
import subprocess
import threading
import time
import typing
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from guestdbg import kvm, vmapi
from guestdbg.backends.kvm_x86 import regs as kvm_regs
from guestdbg.backends.kvm_x86 import uapi as u
from guestdbg.backends.kvm_x86 import vm as kvm_vm
from tests.helpers.support import kvm_unavailable_reason
from guestdbg.board.pc import GuestException, PcMachine
from guestdbg.board.common import ImageError

REPO = Path(__file__).resolve().parents[2]
X86_GUESTS = REPO / "guests" / "x86"


# ---------------------------------------------------------------------------- fixtures
_NO_KVM = kvm_unavailable_reason()
needs_kvm = pytest.mark.skipif(_NO_KVM is not None, reason=f"/dev/kvm cannot be used: {_NO_KVM}")
if _NO_KVM:
    print(f"test_kvm_x86: skipping the KVM tests: {_NO_KVM}")


@pytest.fixture(scope="session")
def x86_guests(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("x86_guests")
    proc = subprocess.run(["make", "-C", str(X86_GUESTS), f"O={out}", "-j2"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    assert proc.returncode == 0, f"make -C guests/x86 failed:\n{proc.stdout}"
    return out


def symbols(elf: Path) -> dict[str, int]:
    with elf.open("rb") as f:
        return {s.name: s["st_value"] for s in ELFFile(f).get_section_by_name(".symtab").iter_symbols() if s.name}


class Guest:
    def __init__(self, elf: Path):
        self.output = bytearray()
        self.machine = PcMachine(console=self.output.extend)
        self.machine.load_elf(elf)
        self.vm, self.vcpu = self.machine.vm, self.machine.vcpu
        self.sym = symbols(elf)

    @property
    def text(self) -> str:
        return self.output.decode()


# ---------------------------------------------------------------------------- uAPI vs headers
STRUCTS = [name for name in dir(u) if name.startswith("kvm_") and isinstance(getattr(u, name), type)
           and issubclass(getattr(u, name), ctypes.Structure)]


def _fields(ctype, prefix: str = ""):
    """(C member designator, offset) for every field, recursing into nested structures and
    unions; ctypes' anonymous members (kvm_run's union) are anonymous in C too."""
    anonymous = set(getattr(ctype, "_anonymous_", ()))
    for name, ftype, *_ in ctype._fields_:
        offset = getattr(ctype, name).offset
        path = prefix if name in anonymous else f"{prefix}{name}"
        if name not in anonymous:
            yield path, offset
        if isinstance(ftype, type) and issubclass(ftype, (ctypes.Structure, ctypes.Union)):
            for sub, sub_off in _fields(ftype, path if name in anonymous else path + "."):
                yield sub, offset + sub_off


KVM_H_CONSTANTS = {
    **u.IOCTLS,
    **{name: getattr(kvm, name) for name in dir(kvm) if name.startswith(("KVM_CAP_", "KVM_EXIT_", "KVM_GUESTDBG_",
                                                                         "KVM_SYSTEM_EVENT_", "KVM_MEM_",
                                                                         "KVM_INTERNAL_ERROR_"))
       and isinstance(getattr(kvm, name), int) and name != "KVM_GUESTDBG_USE_HW"},  # arm64-only name
    **{name: getattr(u, name) for name in dir(u) if name.startswith("KVM_CAP_")},
    "KVM_API_VERSION": u.KVM_API_VERSION, "KVMIO": u.KVMIO,
}


@pytest.fixture(scope="module")
def header_facts(tmp_path_factory) -> dict[str, int]:
    """Compile and run a C program that prints what <linux/kvm.h> says."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to check the uAPI against the kernel headers")
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/kvm.h>", "int main(void) {"]
    for s in STRUCTS:
        lines.append(f'  printf("sizeof {s} %zu\\n", sizeof(struct {s}));')
        for path, _ in _fields(getattr(u, s)):
            lines.append(f'  printf("offsetof {s}.{path} %zu\\n", offsetof(struct {s}, {path}));')
    for name in KVM_H_CONSTANTS:
        lines.append(f'  printf("const {name} %llu\\n", (unsigned long long)({name}));')
    lines += ["  return 0;", "}"]
    d = tmp_path_factory.mktemp("uapi")
    (d / "facts.c").write_text("\n".join(lines) + "\n")
    proc = subprocess.run(["gcc", "-o", str(d / "facts"), str(d / "facts.c")], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    out = subprocess.run([str(d / "facts")], capture_output=True, text=True, check=True).stdout
    return {f"{kind} {key}": int(value) for kind, key, value in (line.split() for line in out.splitlines())}


@pytest.mark.parametrize("struct", STRUCTS)
def test_struct_layout_matches_kernel_headers(header_facts, struct):
    ctype = getattr(u, struct)
    assert ctypes.sizeof(ctype) == header_facts[f"sizeof {struct}"]
    for path, offset in _fields(ctype):
        assert offset == header_facts[f"offsetof {struct}.{path}"], f"{struct}.{path}"


def test_ioctl_and_constant_numbers_match_kernel_headers(header_facts):
    wrong = {name: (hex(ours), hex(header_facts[f"const {name}"])) for name, ours in KVM_H_CONSTANTS.items()
             if ours != header_facts[f"const {name}"]}
    assert not wrong, f"ours vs <linux/kvm.h>: {wrong}"
    assert u.KVM_SET_GUEST_DEBUG == 0x4048AE9B and ctypes.sizeof(u.kvm_guest_debug) == 72  # REFERENCE.md §1


# ---------------------------------------------------------------------------- the pc board
@needs_kvm
def test_hello_prints_and_exits_with_status(x86_guests):
    g = Guest(x86_guests / "hello.elf")
    assert g.machine.run_to_exit() == 21  # the value written to isa-debug-exit (QEMU: (21 << 1) | 1)
    assert g.text == "hello: x86-64 guest on the 16550 UART\nhello: 6*7=42\nhello: exiting with 21\n"


@needs_kvm
@pytest.mark.parametrize("name, expected", [
    ("bp_targets", "bp_targets: a=3 b=3 c=3\n"),
    ("loop", "loop: done\n"),
])
def test_guests_run_to_their_end(x86_guests, name, expected):
    g = Guest(x86_guests / f"{name}.elf")
    assert g.machine.run_to_exit() == 0  # success: main returned 0 (not 1, guestdbg's fault status)
    assert g.text == expected


@needs_kvm
def test_watch_guest_stores(x86_guests):
    g = Guest(x86_guests / "watch.elf")
    assert g.machine.run_to_exit() == 0
    wdata = g.vm.read_phys(g.sym["wdata"], 64)
    assert wdata[1] == 0x11 and wdata[2:4] == b"\x22\x22" and wdata[8:16] == b"\x44" * 8
    assert wdata[0x13:0x1B] == b"\x55" * 8 and wdata[0x30:0x40] == b"\x99" * 8 + b"\x89" + b"\x88" * 7
    assert wdata.hex() in g.text


@needs_kvm
def test_ud_is_a_guest_exception_naming_vector_and_rip(x86_guests):
    g = Guest(x86_guests / "fault_ud.elf")
    with pytest.raises(GuestException) as info:
        g.machine.run_to_exit()
    e = info.value
    assert (e.vector, e.rip, e.error_code) == (6, g.sym["ud_insn"], None)
    assert f"#UD (invalid opcode, vector 6) at RIP={g.sym['ud_insn']:#x}" in str(e)
    assert g.text == "fault_ud: executing ud2\n"


@needs_kvm
def test_pf_is_a_guest_exception_with_cr2_and_error_code(x86_guests):
    g = Guest(x86_guests / "fault_pf.elf")
    with pytest.raises(GuestException) as info:
        g.machine.run_to_exit()
    e = info.value
    assert (e.vector, e.rip, e.cr2, e.error_code) == (14, g.sym["pf_insn"], g.sym["pf_address"], 0x2)
    assert f"#PF (page fault, vector 14) at RIP={g.sym['pf_insn']:#x}" in str(e)
    assert "CR2=0x4000000000 (not present, write)" in str(e)


@needs_kvm
def test_loader_refuses_other_architectures(tmp_path):
    demo = REPO / "src" / "guestdbg" / "data" / "demo.elf"  # an AArch64 ELF
    m = PcMachine(console=lambda b: None)
    with pytest.raises(ImageError, match="not an x86-64 ELF64 image .*EM_AARCH64"):
        m.load_elf(demo)
    (tmp_path / "junk").write_bytes(b"not an elf")
    with pytest.raises(ImageError, match="not a valid ELF"):
        m.load_elf(tmp_path / "junk")


@needs_kvm
def test_the_constructor_builds_one_vm_and_only_the_factory_probes(monkeypatch):
    """PcMachine() creates its own VM and nothing else (debug_facts None); create_pc_machine()
    probes the host first (three scratch VMs, once per process) and hands the machine the facts."""
    from guestdbg.board import pc, pc_probe
    made = []

    class CountingVm(kvm_vm.X86Vm):
        def __init__(self, *args, **kwargs):
            made.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(pc, "X86Vm", CountingVm)
    with PcMachine(console=lambda b: None) as m:
        assert m.debug_facts is None and len(made) == 1
    monkeypatch.setattr(pc_probe, "_cached", None)
    with pc_probe.create_pc_machine(console=lambda b: None) as m:
        assert len(made) == 1 + 3 + 1
        assert m.debug_facts is not None and m.debug_facts == pc_probe.probe()
    with pc_probe.create_pc_machine(console=lambda b: None) as m:
        assert len(made) == 1 + 3 + 1 + 1  # the facts are cached
        assert m.debug_facts == pc_probe.probe()


@needs_kvm
def test_a_directly_built_machine_gets_the_probed_facts_when_debugged():
    """The debugger never assumes what the host can do: a PcMachine built without the factory
    is probed when a GuestDebugManager takes it (on this host int3 cannot be used, so the
    software-breakpoint instruction must follow the probe, not a default)."""
    from guestdbg.board import pc_probe
    from guestdbg.debug.manager import GuestDebugManager
    with PcMachine(console=lambda b: None) as m:
        assert m.debug_facts is None
        manager = GuestDebugManager(m)
        facts = pc_probe.probe()
        assert m.debug_facts == facts
        assert (manager.arch.sw_break == b"\xcc") == facts.int3_exits_cleanly


# ---------------------------------------------------------------------------- side by side with QEMU
def _run_qemu(elf: Path, accel: str) -> tuple[str, int]:
    cmd = ["qemu-system-x86_64", "-accel", accel, "-M", "pc", "-m", "128M", "-nodefaults", "-display", "none",
           "-vga", "none", "-no-reboot", "-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
           "-kernel", str(elf)]
    proc = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    return proc.stdout.decode(), proc.returncode


def qemu_value(status: int) -> int:
    """The isa-debug-exit value behind QEMU's exit status (v << 1) | 1 (v < 128)."""
    assert status & 1, f"QEMU did not end through isa-debug-exit (status {status})"
    return status >> 1


@needs_kvm
@pytest.mark.usefixtures("qemu_x86")
@pytest.mark.parametrize("name, accel", [("hello", "kvm"), ("hello", "tcg"), ("bp_targets", "tcg"),
                                         ("watch", "tcg"), ("loop", "tcg")])
def test_same_output_and_status_as_qemu(x86_guests, name, accel):
    elf = x86_guests / f"{name}.elf"
    qemu_out, qemu_status = _run_qemu(elf, accel)
    g = Guest(elf)
    status = g.machine.run_to_exit()
    assert (g.text, status) == (qemu_out, qemu_value(qemu_status))


# ---------------------------------------------------------------------------- the vCPU
def _start_long_loop(x86_guests) -> Guest:
    g = Guest(x86_guests / "loop.elf")
    g.vm.write_phys(g.sym["loop_iterations"], (10**12).to_bytes(8, "little"))
    return g


@needs_kvm
def test_kick_interrupts_a_running_guest(x86_guests):
    g = _start_long_loop(x86_guests)
    results = []
    worker = threading.Thread(target=lambda: results.append((g.machine.run_until(), time.monotonic())))
    worker.start()
    time.sleep(0.3)
    assert worker.is_alive(), f"the loop guest ended early: {results}"
    kicked = time.monotonic()
    g.vcpu.kick()
    worker.join(30)  # a guard against a hang, not a speed check (bench_kvm_x86 measures)
    assert not worker.is_alive(), "kick() did not interrupt KVM_RUN"
    run, returned = results[0]
    assert run.exit_reason == kvm.KVM_EXIT_INTR
    assert returned >= kicked
    rip = g.vcpu.get_regs().rip
    assert g.sym["loop_body"] <= rip < g.sym["loop_end"]
    # It goes on from where it stopped.
    worker = threading.Thread(target=lambda: results.append((g.machine.run_until(), time.monotonic())))
    worker.start()
    time.sleep(0.05)
    g.vcpu.kick()
    worker.join(2)
    assert results[1][0].exit_reason == kvm.KVM_EXIT_INTR


@needs_kvm
def test_kick_before_run_makes_the_next_run_return_at_once(x86_guests):
    g = Guest(x86_guests / "hello.elf")
    g.vcpu.kick()
    assert g.vcpu.run().exit_reason == kvm.KVM_EXIT_INTR
    assert g.vcpu.get_regs().rip == g.machine.entry and not g.vcpu.immediate_exit
    assert g.machine.run_to_exit() == 21


def _interrupted_loop(x86_guests, iterations: int) -> Guest:
    g = Guest(x86_guests / "loop.elf")
    g.vm.write_phys(g.sym["loop_iterations"], iterations.to_bytes(8, "little"))
    timer = threading.Timer(0.05, g.vcpu.kick)
    timer.start()
    run = g.machine.run_until()
    timer.join()
    assert isinstance(run, kvm.KvmRun) and run.exit_reason == kvm.KVM_EXIT_INTR
    return g


@needs_kvm
def test_register_list_round_trip(x86_guests):
    g = _interrupted_loop(x86_guests, 10**9)
    ids = g.vcpu.get_reg_list()
    names = [kvm_regs.reg_name(r) for r in ids]
    assert names[:2] == ["sregs", "regs"] and names[-1] == "vcpu_events"
    assert all(kvm_regs.reg_group(r) for r in ids) and len(set(ids)) == len(ids)
    saved = g.vcpu.save_registers()
    assert [len(b) for _, b in saved] == [kvm_regs.reg_size_bytes(r) for r in ids]
    # Clobber the general registers, then restore everything: every group reads back the same.
    g.vcpu.set_regs(u.kvm_regs(rip=0x1234, rsp=0x5678, rflags=2, rax=1, rcx=2))
    g.vcpu.restore_registers(saved)
    again = dict(g.vcpu.save_registers())
    tsc = kvm_regs.reg_id(kvm_regs.GROUP_MSR, u.MSR_IA32_TSC)
    for rid, data in saved:
        if rid != tsc:  # the TSC keeps counting
            assert again[rid] == data, kvm_regs.reg_name(rid)
    with pytest.raises(kvm.KvmError):
        g.vcpu.get_reg_bytes(0x6030_0000_0010_0000)  # an arm64 core register id


@needs_kvm
def test_registers_and_memory_move_to_a_fresh_vm(x86_guests):
    """A migration: registers, RAM and devices into a new VM, which finishes the guest."""
    g = _interrupted_loop(x86_guests, 400_000)
    g.vcpu.complete_pending_io()
    rip_before = g.vcpu.get_regs().rip
    saved = g.vcpu.save_registers()
    ram = g.vm.read_phys(0, g.machine.config.ram_size)
    devices = g.machine.device_state()
    g.machine.close()

    out = bytearray()
    m2 = PcMachine(console=out.extend)
    m2.vm.write_phys(0, ram)
    m2.restore_device_state(devices)
    m2.vcpu.restore_registers(saved)
    assert m2.vcpu.get_regs().rip == rip_before
    assert m2.run_to_exit() == 0
    assert out == b"loop: done\n"
    expected = 0
    for i in range(1, 400_001):
        expected ^= i
    assert int.from_bytes(m2.vm.read_phys(symbols(x86_guests / "loop.elf")["loop_result"], 8), "little") == expected


@needs_kvm
def test_readonly_slot_turns_writes_into_mmio_exits(x86_guests):
    """What part B's page-trap watchpoints build on: re-registering a page of RAM as a
    KVM_MEM_READONLY slot makes the guest's stores to it exit, with the exact address."""
    g = Guest(x86_guests / "watch.elf")
    vm = g.vm
    page = g.sym["wdata"] & ~0xFFF
    size = g.machine.config.ram_size
    vm.set_user_memory_region(0, 0, page)
    vm.set_user_memory_region(1, page, 0x1000, kvm.KVM_MEM_READONLY)
    vm.set_user_memory_region(2, page + 0x1000, size - page - 0x1000)
    wdata = range(g.sym["wdata"], g.sym["wdata"] + 64)
    # Other stores to that page (start.S zeroing .bss) exit too; the board drops them, as for ROM.
    run = g.machine.run_until(lambda r: r.exit_reason == kvm.KVM_EXIT_MMIO and r.mmio.phys_addr in wdata)
    assert run.exit_reason == kvm.KVM_EXIT_MMIO and run.mmio.is_write
    assert (run.mmio.phys_addr, run.mmio.len, bytes(run.mmio.data[:1])) == (g.sym["wdata"] + 1, 1, b"\x11")
    # KVM exits for an MMIO write once the instruction has retired (RIP is past the store, as
    # after an x86 data breakpoint); the store is not in RAM: the VMM applies it or drops it.
    assert g.vcpu.get_regs().rip == g.sym["acc_strh"]
    assert g.vm.read_phys(g.sym["wdata"] + 1, 1) == b"\0"
    assert vm.slot_for(page).readonly


@needs_kvm
def test_capabilities_from_the_vm_fd():
    with kvm_vm.X86Vm() as vm:
        assert vm.check_extension(kvm.KVM_CAP_SET_GUEST_DEBUG) == 1
        assert vm.check_extension(kvm.KVM_CAP_SET_GUEST_DEBUG2) & (kvm.KVM_GUESTDBG_ENABLE | kvm.KVM_GUESTDBG_SINGLESTEP)
        assert vm.check_extension(kvm.KVM_CAP_IMMEDIATE_EXIT) == 1
        assert vm.check_extension(0xFFFF) == 0


# ---------------------------------------------------------------------------- the typed interface
def _protocol_members(proto: type) -> dict[str, object]:
    """Name -> declaration of every public member a Protocol declares, its bases' included
    (None for a data member, which only has an annotation)."""
    members: dict[str, object] = {}
    for base in reversed(proto.__mro__):
        if base in (object, typing.Protocol, typing.Generic) or not getattr(base, "_is_protocol", False):
            continue
        for name in vars(base).get("__annotations__", {}):
            members[name] = None
        for name, value in vars(base).items():
            if not name.startswith("_"):
                members[name] = value
    return members


def _assert_conforms(obj: object, proto: type) -> None:
    """isinstance() against the runtime-checkable Protocol (member names only), then each
    member's kind and, for methods, parameter names, kinds and defaults as the Protocol has them."""
    assert isinstance(obj, proto), f"{type(obj).__name__} is not a {proto.__name__}"
    members = _protocol_members(proto)
    assert members, proto
    for name, decl in members.items():
        impl = inspect.getattr_static(type(obj), name, None)
        if decl is None:
            assert hasattr(obj, name), f"{proto.__name__}.{name}"
        elif isinstance(decl, property):  # read-only: a property or a plain attribute satisfies it
            assert isinstance(impl, property) or (impl is None and hasattr(obj, name)), f"{proto.__name__}.{name}"
        else:
            assert callable(impl), f"{proto.__name__}.{name}"
            want = [(p.name, p.kind, p.default) for p in inspect.signature(decl).parameters.values()]
            got = [(p.name, p.kind, p.default) for p in inspect.signature(impl).parameters.values()]
            assert got == want, f"{type(obj).__name__}.{name}{inspect.signature(impl)} vs {proto.__name__}"


@needs_kvm
def test_vm_and_vcpu_conform_to_vmapi():
    with kvm_vm.X86Vm() as vm:
        vcpu = vm.create_vcpu()
        _assert_conforms(vm, vmapi.Vm)
        _assert_conforms(vcpu, vmapi.Vcpu)
        _assert_conforms(vcpu, vmapi.X86Vcpu)
        assert not isinstance(vcpu, vmapi.Arm64Vcpu)  # no icount: not the emulated arm64 vCPU


def test_the_conformance_check_sees_a_wrong_signature():
    class WrongIrqLine(kvm_vm.X86Vm):
        def __init__(self):  # no /dev/kvm needed: only the class and its data members are looked at
            self.slots = {}

        def irq_line(self, line, level):  # the Protocol says (irq, level)
            raise NotImplementedError

    with pytest.raises(AssertionError, match="irq_line"):
        _assert_conforms(WrongIrqLine(), vmapi.Vm)


@needs_kvm
def test_irq_line_without_an_interrupt_controller_is_enxio():
    """KVM_IRQ_LINE reaches KVM, which refuses it before KVM_CREATE_IRQCHIP (the pc board
    creates none); the error says so."""
    with kvm_vm.X86Vm() as vm:
        for irq, level in ((4, 1), (4, 0), (0, 1)):
            with pytest.raises(kvm.KvmError) as info:
                vm.irq_line(irq, level)
            assert info.value.errno == errno.ENXIO
            assert f"KVM_IRQ_LINE(irq {irq}, level {level})" in str(info.value)
            assert "no interrupt controller" in str(info.value)


# ---------------------------------------------------------------------------- CLI
@needs_kvm
def test_cli_runs_an_x86_guest_to_its_status(x86_guests, capsys):
    from guestdbg.cli import main
    assert main(["run", "--arch", "x86_64", str(x86_guests / "hello.elf")]) == 21
    assert "hello: exiting with 21" in capsys.readouterr().out
    assert main(["run", "--arch", "x86_64", str(x86_guests / "loop.elf")]) == 0  # success is 0, a fault 1
    assert "loop: done" in capsys.readouterr().out
    assert main(["run", "--arch", "x86_64", str(x86_guests / "fault_ud.elf")]) == 1
    assert "guest exception #UD (invalid opcode, vector 6) at RIP=" in capsys.readouterr().err
    assert main(["run", "--arch", "x86_64"]) == 2
    assert "needs an IMAGE" in capsys.readouterr().err


@needs_kvm
def test_cli_caps_x86_reads_the_vm_fd(capsys):
    import json

    from guestdbg.cli import main
    assert main(["caps", "--arch", "x86_64"]) == 0
    out = capsys.readouterr().out
    assert "KVM_CAP_SET_GUEST_DEBUG2" in out and "KVM_CAP_READONLY_MEM" in out
    with kvm_vm.X86Vm() as vm:
        if vm.check_extension(kvm.KVM_CAP_GUEST_DEBUG_HW_BPS) == 0:
            assert "4 shared debug registers" in out
    assert main(["caps", "--arch", "x86_64", "--json"]) == 0
    caps = {c["name"]: c["value"] for c in json.loads(capsys.readouterr().out)["capabilities"]}
    assert caps["KVM_CAP_SET_GUEST_DEBUG"] == 1
