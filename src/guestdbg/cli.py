"""The `guestdbg` command: run a guest, or print what the vCPU can do.

Exit status: the guest's own for `run`; 1 when the guest faults, hangs or outlives --timeout;
2 for bad flags or images; 130 on Ctrl-C; 137 when a debugger kills the guest; 141 when the
reader of the guest's output goes away (`guestdbg run | head`), as a shell reports SIGPIPE.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
from importlib import metadata, resources
from pathlib import Path

from guestdbg import kvm
from guestdbg.arm import debugregs as dr
from guestdbg.board.common import GuestFault, ImageError, read_elf
from guestdbg.board.virt import ROM_BASE, ROM_SIZE, VirtConfig, VirtMachine
from guestdbg.vmapi import Vm

EXIT_GUEST_FAULT = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
EM_X86_64 = 62


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line, status 2, like every other bad-input path
        self.exit(EXIT_USAGE, f"guestdbg: error: {message}\n")


def parse_size(text: str) -> int:
    """'128M', '1G', '65536', '0x10000' -> bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (use e.g. 128M, 1G or 0x8000000)") from None


def parse_timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r} (a number of seconds > 0, e.g. 10 or 0.5)")
    return value


def parse_smp(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        value = 0
    if not 1 <= value <= 8:
        raise argparse.ArgumentTypeError(f"invalid vCPU count {text!r} (1..8)")
    return value


def parse_addr(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid address {text!r}") from None
    if not 0 <= value < 1 << 64:
        raise argparse.ArgumentTypeError(f"address {text!r} out of range")
    return value


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ram", type=parse_size, default=128 << 20, metavar="SIZE", help="RAM size (default 128M)")
    p.add_argument("--brps", type=int, default=6, metavar="N", help="breakpoint registers, 2..16 (default 6)")
    p.add_argument("--wrps", type=int, default=4, metavar="N", help="watchpoint registers, 2..16 (default 4)")
    p.add_argument("--ctx-cmps", type=int, default=2, metavar="N",
                   help="context-aware breakpoints, 1..BRPs (default 2)")


def _add_arch_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", choices=("aarch64", "x86_64"), default="aarch64",
                   help="aarch64: the emulated virt board (default); x86_64: the pc board on Linux KVM "
                        "(/dev/kvm), for x86-64 ELF guests")


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog="guestdbg", description="Run and debug a virtual machine's guest.")
    parser.add_argument("--version", action="version", version=f"guestdbg {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_ArgumentParser)
    run = sub.add_parser("run", help="run a guest to its end and exit with its status")
    run.add_argument("image", nargs="?", help="AArch64 ELF, or a raw image with --load-addr "
                                               "(default: the built-in demo guest)")
    run.add_argument("--rom", "--bios", dest="rom", metavar="FILE",
                     help="ROM/flash at 0x0: a raw image, or an ELF linked into the ROM (0x0-0x7ffffff); boots "
                          "from it when no IMAGE is given, with the board's DTB at the start of RAM (as QEMU's -bios)")
    run.add_argument("--kernel", metavar="IMAGE", help="boot an arm64 Linux Image (raw or gzip) as QEMU's -kernel: "
                                                        "x0 = the DTB's address, EL1, MMU off")
    run.add_argument("--initrd", metavar="FILE", help="with --kernel: an initrd/initramfs, put after the kernel "
                                                       "and named in /chosen")
    run.add_argument("--append", metavar="CMDLINE", help="with --kernel: the kernel command line (/chosen/bootargs)")
    run.add_argument("--dtb", metavar="FILE", help="with --kernel or --rom: this device tree instead of the board's "
                                                    "(its /memory and /chosen are set as QEMU does)")
    run.add_argument("--dumpdtb", metavar="FILE", help="write the DTB the guest would get to FILE and exit 0 "
                                                        "(as QEMU's -machine dumpdtb=)")
    run.add_argument("--load-addr", type=parse_addr, metavar="ADDR", help="load a raw IMAGE here and start at it")
    run.add_argument("--no-reboot", action="store_true",
                     help="end the run (status 0) when the guest resets the board (PSCI SYSTEM_RESET), "
                          "as QEMU's -no-reboot; by default the board reboots")
    run.add_argument("--pflash1", metavar="FILE",
                     help="keep flash1 (0x4000000, U-Boot's environment) in FILE, a 64 MiB file the guest's "
                          "flash writes go to (as QEMU's -drive if=pflash,unit=1,format=raw,file=FILE)")
    run.add_argument("--smp", type=parse_smp, default=1, metavar="N",
                     help="vCPUs, 1..8 (default 1); the secondaries start off (PSCI CPU_ON), as QEMU's -smp")
    run.add_argument("--clock", choices=("virtual", "host"), default=None,
                     help="the guest's time: virtual (default: deterministic, 1 instruction = 1 ns, frozen "
                          "while stopped) or host (the host's monotonic clock)")
    run.add_argument("--timeout", type=parse_timeout, metavar="SECONDS",
                     help="end a guest still running after this long (exit status 1); with --gdb, only "
                          "time run with no debugger attached counts")
    run.add_argument("--gdb", metavar="ENDPOINT",
                     help="serve the GDB remote protocol on :PORT (127.0.0.1), tcp:HOST:PORT or unix:PATH")
    run.add_argument("--wait", action="store_true",
                     help="with --gdb: hold the vCPU at its entry until a debugger attaches and resumes it")
    run.add_argument("--gdb-allow-remote", action="store_true",
                     help="with --gdb: allow listening on a non-loopback address (prints a warning)")
    run.add_argument("--record", action="store_true",
                     help="with --gdb: keep the run's history from the start, for gdb's reverse-stepi, "
                          "reverse-continue, reverse-finish (with --clock host, the host's time is followed within "
                          "about 1 ms and logged, so that replays repeat it)")
    run.add_argument("--record-mem", type=parse_size, default=1 << 30, metavar="SIZE",
                     help="the most memory the history may use (default 1G); older checkpoints thin out")
    _add_arch_flag(run)
    _add_config_flags(run)
    caps = sub.add_parser("caps", help="print the vCPU's capabilities and the ID_AA64DFR0_EL1 a guest reads")
    _add_arch_flag(caps)
    _add_config_flags(caps)
    caps.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _version() -> str:
    try:
        return metadata.version("guestdbg")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def _config(args) -> VirtConfig:
    return VirtConfig(ram_size=args.ram, brps=args.brps, wrps=args.wrps, ctx_cmps=args.ctx_cmps,
                      no_reboot=getattr(args, "no_reboot", False), pflash1=getattr(args, "pflash1", None),
                      smp=getattr(args, "smp", 1))


def demo_image():
    return resources.files("guestdbg").joinpath("data/demo.elf")


def cmd_run_x86(args) -> int:
    """`run --arch x86_64 IMAGE`: an x86-64 ELF on the pc board (guestdbg.board.pc) under KVM."""
    from guestdbg.backends.kvm_x86.vm import KvmUnavailable
    from guestdbg.board.pc import PcConfig
    from guestdbg.board.pc_probe import create_pc_machine
    for flag, given in (("--rom", args.rom), ("--load-addr", args.load_addr is not None),
                        ("--clock", args.clock is not None), ("--pflash1", args.pflash1 is not None),
                        ("--smp greater than 1", args.smp > 1), ("--record", args.record)):
        if given:
            raise ImageError(f"{flag} is not supported with --arch x86_64 yet")
    if args.wait and not args.gdb:
        raise ImageError("--wait needs --gdb")
    if not args.image:
        raise ImageError("--arch x86_64 needs an IMAGE (an x86-64 ELF, e.g. guests/x86/build/hello.elf)")
    try:
        machine = create_pc_machine(PcConfig(ram_size=args.ram))
    except KvmUnavailable as e:
        raise ImageError(f"--arch x86_64 needs Linux KVM: {e}") from None
    with machine:
        machine.load_elf(args.image)
        if args.gdb:
            return _serve_gdb(machine, args)
        return machine.run_to_exit(timeout=args.timeout)


def _serve_gdb(machine, args) -> int:
    from guestdbg.debug.manager import DebugError
    from guestdbg.gdb.server import GdbServer, parse_endpoint
    server = GdbServer(machine, parse_endpoint(args.gdb, allow_remote=args.gdb_allow_remote), wait=args.wait,
                       timeout=args.timeout)
    server.manager.record_mem_limit = args.record_mem
    if args.record:
        try:
            server.manager.start_recording()
        except DebugError as e:
            raise ImageError(f"--record: {e}") from None
    try:
        server.listen()
    except OSError as e:
        raise ImageError(f"cannot listen on {args.gdb}: {e.strerror or e}") from None
    if isinstance(machine, VirtMachine):  # the PL011 takes console input (the PC's 16550 does not yet)
        return _run_with_console(machine, args.timeout, server)
    return server.serve()


def _check_boot_flags(args) -> None:
    """The Linux/firmware boot flags' combinations, as QEMU allows them."""
    for flag, given in (("--initrd", args.initrd), ("--append", args.append)):
        if given is not None and not args.kernel:
            raise ImageError(f"{flag} needs --kernel")
    if args.kernel:
        if args.image:
            raise ImageError("--kernel and IMAGE both give the guest to run: give one")
        if args.rom:
            raise ImageError("--kernel with --rom would hand the kernel to the firmware through fw_cfg, "
                             "which the board does not model: give one")
        if args.load_addr is not None:
            raise ImageError("--load-addr is for a raw IMAGE; --kernel loads where the Image header says")
    elif args.dtb and not (args.rom and not args.image):
        raise ImageError("--dtb needs --kernel, or --rom with no IMAGE (firmware boot)")


def cmd_run(args) -> int:
    if args.arch == "x86_64":
        for flag in ("kernel", "initrd", "append", "dtb", "dumpdtb"):
            if getattr(args, flag) is not None:
                raise ImageError(f"--{flag} is not supported with --arch x86_64")
        return cmd_run_x86(args)
    from guestdbg.board import loader
    _check_boot_flags(args)
    config = _config(args)
    linux = None
    if args.kernel:
        linux = loader.plan_linux(config.ram_size, args.kernel, initrd=args.initrd, append=args.append,
                                  dtb=args.dtb, cpus=config.smp)
    firmware = bool(args.rom) and not args.image
    if args.dumpdtb:
        if linux is not None:
            blob = linux.dtb
        else:
            blob = loader.dtb_for(config.ram_size, dtb_path=args.dtb if firmware else None, bootargs=None,
                                  initrd=None, cpus=config.smp)
        try:
            Path(args.dumpdtb).write_bytes(blob)
        except OSError as e:
            raise ImageError(f"--dumpdtb {args.dumpdtb}: {(e.strerror or str(e)).lower()}") from None
        return 0
    machine = VirtMachine(config, clock_mode=args.clock or "virtual")
    if linux is not None:
        loader.apply_linux(machine, linux)
    if args.rom:
        if _elf_machine(args.rom) is None:
            machine.load_rom(args.rom)
            ram_segments: tuple[tuple[int, int], ...] = ()
        else:
            _load_elf(machine, args.rom, rom=True)
            _, segments = read_elf(Path(args.rom), "AArch64", "a little-endian AArch64 ELF64 image")
            ram_segments = tuple((paddr, paddr + memsz) for paddr, _, memsz in segments if memsz)
        if firmware:
            blob = loader.dtb_for(config.ram_size, dtb_path=args.dtb, bootargs=None, initrd=None, cpus=config.smp)
            loader.firmware_dtb(machine, blob, ram_segments)
    if args.image:
        if _elf_machine(args.image) is not None:
            if args.load_addr is not None:
                raise ImageError(f"{args.image}: --load-addr is for raw images; an ELF loads at its own addresses")
            _load_elf(machine, args.image)
        elif args.load_addr is None:
            raise ImageError(f"{args.image}: not an ELF file; give --load-addr to load it as a raw image")
        else:
            machine.load_raw(args.image, args.load_addr)
    elif not args.rom and linux is None:
        with resources.as_file(demo_image()) as demo:
            machine.load_elf(demo)
    if args.gdb:
        return _serve_gdb(machine, args)
    if args.wait:
        raise ImageError("--wait needs --gdb")
    if args.record:
        raise ImageError("--record needs --gdb (the history is for a debugger to run backwards through)")
    return _run_with_console(machine, args.timeout)


def _run_with_console(machine: VirtMachine, timeout: float | None, server=None) -> int:
    """`guestdbg run`: the guest runs with the host's stdin as its console's input (see
    _StdinReader). Ctrl-A x on a terminal ends it with status 0, as QEMU's does. With --gdb the
    `server` runs the guest, and the reader wakes its vCPU through server.wake(), which the
    debugger never sees as a stop."""
    from guestdbg.board.console_input import ConsoleQuit
    reader = _StdinReader.open(server.wake if server is not None else machine.vcpu.kick)

    def run() -> int:
        return server.serve() if server is not None else machine.run_to_exit(timeout=timeout)

    if reader is None:
        return run()
    uart, console_input = machine.uart, reader.input

    def service() -> None:  # on the vCPU thread, after the reader's kick
        console_input.check_quit()
        uart.pump()

    uart.rx_source, machine.on_intr = console_input.take, service
    try:
        with reader:
            return run()
    except ConsoleQuit as e:
        print(f"\n{e}", file=sys.stderr, flush=True)
        return 0
    finally:
        uart.rx_source, machine.on_intr = None, None


class _StdinReader:
    """The host's stdin, read on a thread of its own into a ConsoleInput, which the UART takes
    from as the guest reads; the vCPU is kicked when bytes arrive so the VMM loop can deliver
    them (and raise the UART's interrupt) while the guest waits.

    A pipe or file is passed through as it is, read only as fast as the guest takes it; at its
    end the line stays idle and the guest runs on. A terminal goes into raw mode as QEMU's
    -nographic sets it (no echo, no line editing, no signals: Ctrl-C goes to the guest; output
    post-processing stays on, so the guest's "\\n" starts a new line) with Ctrl-A escapes
    (board.console_input.EscapeMux), and is restored on every way out: the with-block's end
    (normal exit or exception), atexit, and SIGTERM/SIGHUP (restored, then the signal's default
    action). A terminal whose foreground job is not ours is left alone and not read."""

    def __init__(self, fd: int, wake, tty: bool):
        import threading  # noqa: F401 (the annotation below)
        from guestdbg.board.console_input import ConsoleInput, EscapeMux
        self.fd, self.wake, self.tty = fd, wake, tty  # wake(): kicks the vCPU, from this thread
        self.input = ConsoleInput()
        self.mux = EscapeMux() if tty else None
        self._saved: list | None = None
        self._old_handlers: dict[int, object] = {}
        self._wake_r, self._wake_w = os.pipe()
        self._thread: threading.Thread | None = None

    @classmethod
    def open(cls, wake) -> _StdinReader | None:
        try:
            fd = sys.stdin.fileno()
            os.fstat(fd)
        except (AttributeError, ValueError, OSError):  # no stdin at all
            return None
        tty = os.isatty(fd)
        if tty:
            try:
                if os.tcgetpgrp(fd) != os.getpgrp():
                    return None  # a background job: reading or setting the terminal would stop us
            except OSError:
                return None
        return cls(fd, wake, tty)

    def __enter__(self) -> _StdinReader:
        import atexit
        import threading
        if self.tty:
            self._raw_mode()
            atexit.register(self.restore_terminal)
            for signum in (signal.SIGTERM, signal.SIGHUP):
                self._old_handlers[signum] = signal.signal(signum, self._on_signal)
        self._thread = threading.Thread(target=self._read_loop, name="guestdbg-stdin", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        import atexit
        self.input.close()
        os.write(self._wake_w, b"!")
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self.restore_terminal()
        if self.tty:
            atexit.unregister(self.restore_terminal)
            for signum, handler in self._old_handlers.items():
                signal.signal(signum, handler)  # type: ignore[arg-type]
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _raw_mode(self) -> None:
        import termios
        self._saved = termios.tcgetattr(self.fd)
        mode = termios.tcgetattr(self.fd)
        mode[0] &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP | termios.INLCR
                     | termios.IGNCR | termios.ICRNL | termios.IXON)
        mode[1] |= termios.OPOST
        mode[2] = (mode[2] & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
        mode[3] &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.IEXTEN | termios.ISIG)
        mode[6][termios.VMIN], mode[6][termios.VTIME] = 1, 0
        termios.tcsetattr(self.fd, termios.TCSAFLUSH, mode)

    def restore_terminal(self) -> None:
        import termios
        saved, self._saved = self._saved, None
        if saved is not None:
            try:
                termios.tcsetattr(self.fd, termios.TCSAFLUSH, saved)
            except termios.error:
                pass  # the terminal is gone

    def _on_signal(self, signum, frame) -> None:
        self.restore_terminal()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    def _read_loop(self) -> None:
        import select
        from guestdbg.board.console_input import ESCAPE_HELP
        while self.input.wait_for_room() and not self.input.closed:
            ready, _, _ = select.select([self.fd, self._wake_r], [], [])
            if self._wake_r in ready:
                return
            try:
                data = os.read(self.fd, 4096)
            except OSError:  # a terminal that went away
                data = b""
            if not data:
                self.input.eof = True  # the line stays idle; the guest runs on
                return
            if self.mux is not None:
                data, commands = self.mux.feed(data)
                for command in commands:
                    if command == "help":
                        try:
                            os.write(sys.stdout.fileno(), ESCAPE_HELP.encode())
                        except OSError:
                            pass
                    elif command == "quit":
                        self.input.quit_requested = True
            if data:
                self.input.push(data)
            self.wake()


def _elf_machine(path: str) -> int | None:
    """An ELF file's e_machine, or None for anything else (a raw image)."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError as e:
        raise ImageError(f"{path}: {e.strerror.lower()}") from None
    if head[:4] != b"\x7fELF" or len(head) < 20:
        return None
    return int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")


def _load_elf(machine: VirtMachine, path: str, *, rom: bool = False) -> None:
    """An AArch64 ELF at its own addresses. As a ROM, every segment with contents must lie in
    the ROM window (zero-filled ones, a ROM-linked ELF's .bss or stack, may be in RAM)."""
    try:
        if rom:  # checked before anything is loaded
            _, segments = read_elf(Path(path), "AArch64", "a little-endian AArch64 ELF64 image")
            for paddr, data, memsz in segments:
                if data and not (ROM_BASE <= paddr and paddr + memsz <= ROM_BASE + ROM_SIZE):
                    raise ImageError(f"{path}: segment at {paddr:#x} is outside the ROM "
                                     f"({ROM_BASE:#x}-{ROM_BASE + ROM_SIZE - 1:#x}); --rom takes a raw image "
                                     "or a ROM-linked ELF (give a RAM-linked ELF as IMAGE)")
        machine.load_elf(path)
    except ImageError as e:
        if _elf_machine(path) == EM_X86_64:
            raise ImageError(f"{e}; for an x86-64 guest, use --arch x86_64") from None
        raise


def _capabilities(vm: Vm, numbers: tuple[int, ...]) -> list[dict]:
    """KVM_CHECK_EXTENSION's answer for each capability, in numeric order."""
    return [{"name": kvm.CAPABILITY_NAMES[number], "number": number, "value": vm.check_extension(number)}
            for number in sorted(numbers)]


def caps_report(config: VirtConfig) -> dict:
    vm = VirtMachine(config).vm
    caps = _capabilities(vm, kvm.DEBUG_CAPABILITIES)
    dfr0 = dr.id_aa64dfr0_el1(config.brps, config.wrps, config.ctx_cmps)
    fields = {name: getattr(dr.ID_AA64DFR0, name).extract(dfr0)
              for name in ("DebugVer", "TraceVer", "PMUVer", "BRPs", "WRPs", "CTX_CMPs")}
    return {"capabilities": caps, "ID_AA64DFR0_EL1": {"value": dfr0, "fields": fields}}


def caps_report_x86() -> dict:
    """What this host's /dev/kvm offers an x86-64 VM, read from the VM fd."""
    from guestdbg.backends.kvm_x86.vm import X86Vm
    with X86Vm() as vm:
        caps = _capabilities(vm, kvm.X86_CAPABILITIES)
    from pathlib import Path
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    modules = sorted(m.name for m in Path("/sys/module").glob("kvm*")) if Path("/sys/module").is_dir() else []
    from guestdbg.board.pc_probe import probe
    return {"capabilities": caps, "host": {"vmx": "vmx" in flags, "svm": "svm" in flags, "kvm_modules": modules},
            "probe": probe().to_dict()}


def _print_caps_x86(report: dict) -> None:
    guestdbg_flags = {kvm.KVM_GUESTDBG_ENABLE: "ENABLE", kvm.KVM_GUESTDBG_SINGLESTEP: "SINGLESTEP",
                      kvm.KVM_GUESTDBG_USE_SW_BP: "USE_SW_BP", kvm.KVM_GUESTDBG_USE_HW_BP: "USE_HW_BP",
                      kvm.KVM_GUESTDBG_INJECT_DB: "INJECT_DB", kvm.KVM_GUESTDBG_INJECT_BP: "INJECT_BP",
                      kvm.KVM_GUESTDBG_BLOCKIRQ: "BLOCKIRQ"}
    for cap in report["capabilities"]:
        value, number = cap["value"], cap["number"]
        shown = str(value)
        if number == kvm.KVM_CAP_SET_GUEST_DEBUG2:
            shown = f"{value:#x} (" + "|".join(n for bit, n in guestdbg_flags.items() if value & bit) + ")"
        elif number in (kvm.KVM_CAP_GUEST_DEBUG_HW_BPS, kvm.KVM_CAP_GUEST_DEBUG_HW_WPS) and value == 0:
            shown = "0 => 4 shared debug registers (DR0-DR3, for breakpoints and watchpoints together)"
        print(f"{cap['name']:<28} {number:>4}  {shown}")
    host = report["host"]
    kind = "VMX" if host["vmx"] else "SVM" if host["svm"] else "no VMX/SVM in the CPU"
    print(f"\nhost: {kind}; KVM modules: {', '.join(host['kvm_modules']) or 'unknown'}")
    p = report["probe"]
    yes = {True: "yes", False: "NO"}
    print("\nprobed at VM creation (a scratch VM, long mode, CPL0):")
    print(f"  int3 gives a clean KVM_EXIT_DEBUG (#BP):  {yes[p['int3_exits_cleanly']]}  [{p['int3_exit']}]")
    print(f"  DR1 write watchpoint fires:               {yes[p['dr_write_watch_fires']]}  [{p['dr_watch_exit']}]")
    print(f"  DR0 execution breakpoint exits:           {yes[p['dr_exec_break_works']]}  [{p['dr_exec_exit']}]")
    print("\nmechanisms the debugger will use:")
    for kind_name, how in p["mechanisms"].items():
        print(f"  {kind_name:<28} {how}")


def cmd_caps(args) -> int:
    if args.arch == "x86_64":
        from guestdbg.backends.kvm_x86.vm import KvmUnavailable
        try:
            report = caps_report_x86()
        except KvmUnavailable as e:
            raise ImageError(f"--arch x86_64 needs Linux KVM: {e}") from None
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            _print_caps_x86(report)
        return 0
    report = caps_report(_config(args))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for cap in report["capabilities"]:
        value = cap["value"]
        shown = f"{value:#x}" if cap["number"] == kvm.KVM_CAP_SET_GUEST_DEBUG2 else str(value)
        print(f"{cap['name']:<28} {cap['number']:>4}  {shown}")
    d = report["ID_AA64DFR0_EL1"]
    print(f"\nID_AA64DFR0_EL1 = {d['value']:#010x} (each count field holds count - 1)")
    for name, raw in d["fields"].items():
        meaning = f"  -> {raw + 1} {name.lower()}" if name in ("BRPs", "WRPs", "CTX_CMPs") else ""
        print(f"  {name:<9} {raw:#x}{meaning}")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return {"run": cmd_run, "caps": cmd_caps}[args.command](args)
    except (ImageError, ValueError) as e:
        print(f"guestdbg: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except GuestFault as e:
        print(f"guestdbg: guest fault: {e}", file=sys.stderr)
        return EXIT_GUEST_FAULT
    except KeyboardInterrupt:
        print("guestdbg: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Whoever read the guest's output has gone (`guestdbg run | head -1`): end quietly, as
        # Unix tools do, and keep Python's flush of stdout at exit from failing once more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
