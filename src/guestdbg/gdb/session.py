"""The GDB session: one packet in, one action out. Sans-IO like the protocol core below it.

`GdbSession.handle(payload)` maps a packet to the guest-debug manager and returns an action:
a `Reply` to send now, a `Resume` the server carries out on the vCPU thread (its stop comes
back through `stop_reply`), `Detach` or `Kill`. Errors a client can cause become `Exx`
replies (one function maps them), with the reason as text for clients that take it (gdb's
`error-message+`, lldb's QEnableErrorStrings); unknown packets get the empty reply, as the
protocol asks.

The session remembers what its client inserted (Z packets), so that a stop at a breakpoint or
watchpoint a lost client left armed is reported as a plain SIGTRAP rather than as a breakpoint
hit, which gdb would silently resume from, and what was armed at the last resume, since gdb
removes its breakpoints at every stop (`monitor info slots`).
"""

from __future__ import annotations

import errno
import signal
from dataclasses import dataclass

from guestdbg import kvm
from guestdbg.debug.manager import DebugError, GuestDebugManager, StopEvent, StopKind, WatchKind
from guestdbg.gdb import aarch64_regs as regs
from guestdbg.gdb.memory_map import memory_map_xml, regions_for

PACKET_SIZE = 0x4000
THREAD_ID = 1
MAX_MEMORY_READ = (PACKET_SIZE - 8) // 2


@dataclass(frozen=True)
class Reply:
    payload: bytes
    then: tuple[bytes, ...] = ()  # further packets, e.g. the OK after a monitor's O output


@dataclass(frozen=True)
class Resume:
    step: bool


@dataclass(frozen=True)
class Detach:
    pass


@dataclass(frozen=True)
class Kill:
    reply: bool  # vKill is answered OK; plain `k` with the exit it causes (X09), which lldb waits for


def error_reply(err: int) -> Reply:
    return Reply(b"E%02x" % (err & 0xFF))


class PacketError(Exception):
    """A malformed packet: answered with E22 (EINVAL)."""


def _hex_int(text: bytes) -> int:
    # Plain hex digits only: int(x, 16) alone also takes "-4", "+4", "0x4", "4_0" and spaces,
    # which let negative addresses and lengths reach the manager.
    try:
        if not text or text.strip(b"0123456789abcdefABCDEF"):
            raise ValueError
        return int(text, 16)
    except ValueError:
        raise PacketError(f"bad hex number {text!r}") from None


def _hex_bytes(text: bytes) -> bytes:
    try:
        return bytes.fromhex(text.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise PacketError("bad hex data") from None


def _addr_len(text: bytes) -> tuple[int, int]:
    try:
        a, n = text.split(b",", 1)
    except ValueError:
        raise PacketError(f"expected ADDR,LENGTH, got {text!r}") from None
    addr, length = _hex_int(a), _hex_int(n)
    if addr >= 1 << 64 or length >= 1 << 32:
        raise PacketError("address or length out of range")
    return addr, length


class GdbSession:
    """State of one client connection: features it announced, last stop, monitor commands."""

    def __init__(self, manager: GuestDebugManager, *, monitor=None, registers=None):
        """`registers` is the register catalogue module (aarch64_regs API): guestdbg.gdb.
        aarch64_regs by default, guestdbg.gdb.amd64_regs for an x86-64 machine."""
        self.regs = registers or regs
        self.manager = manager
        self.machine = manager.machine
        self.vcpu = manager.vcpu
        self.peer_features: set[str] = set()
        self.no_ack_requested = False
        self.last_stop: StopEvent | None = None
        self.monitor = monitor or Monitor(self)
        self._target_xml = self.regs.target_xml().encode()
        self.error_strings = False          # lldb's QEnableErrorStrings: "Exx;HEXTEXT" replies
        self.inserted: set[tuple[int, int, int]] = set()  # (Z type, addr, kind) this client holds
        self.armed_at_resume: list[str] = []  # manager.slots_report() at the last continue
        self.last_error: str | None = None   # the last refusal, for clients that cannot show text

    # ------------------------------------------------------------------ dispatch
    def handle(self, payload: bytes):
        try:
            action = self._dispatch(payload)
        except PacketError as e:
            return self._error(errno.EINVAL, str(e), payload)
        except DebugError as e:
            return self._error(e.errno, str(e), payload)
        except (ValueError, KeyError, IndexError) as e:
            return self._error(errno.EINVAL, f"bad request ({e})", payload)
        except OSError as e:
            return self._error(e.errno or errno.EIO, e.strerror or str(e), payload)
        if isinstance(action, Resume) and not (action.step and self.armed_at_resume):
            # gdb steps over a breakpoint or watchpoint with just that one taken out: the last
            # continue says better what the user armed.
            self.armed_at_resume = self.manager.slots_report()
        return action

    def _error(self, err: int, text: str, packet: bytes) -> Reply:
        """Exx, with the text where the client understands it: gdb >= 15 announces
        `error-message+` (gdb 13 takes "E.text" as an error but never shows it, and misreads
        it as data after `m`), lldb sends QEnableErrorStrings."""
        if packet[:1] in b"ZzMXGP":  # requests the user made (gdb probes memory with m all the time)
            self.last_error = f"{packet[:24].decode('ascii', 'replace')}: {text}"
        clean = "".join(c if " " <= c <= "~" else " " for c in text)
        if "error-message+" in self.peer_features:
            return Reply(b"E." + clean.encode("ascii"))
        if self.error_strings:
            return Reply(b"E%02x;%s" % (err & 0xFF, clean.encode("ascii").hex().encode()))
        return error_reply(err)

    def _dispatch(self, p: bytes):
        if not p:
            return Reply(b"")
        head = p[:1]
        if p.startswith(b"qSupported"):
            return self._q_supported(p)
        if p == b"QStartNoAckMode":
            self.no_ack_requested = True
            return Reply(b"OK")
        if p == b"QEnableErrorStrings":
            self.error_strings = True
            return Reply(b"OK")
        if p.startswith(b"qMemoryRegionInfo:"):
            return self._memory_region_info(_hex_int(p[len(b"qMemoryRegionInfo:"):]))
        if p == b"?":
            return Reply(self.stop_reply_payload(self.last_stop))
        if p == b"g":
            return Reply(self.regs.encode_g(self.vcpu))
        if head == b"G":
            self.regs.decode_G(self.vcpu, p[1:])
            return Reply(b"OK")
        if head == b"p":
            return Reply(self.regs.read_register(self.vcpu, _hex_int(p[1:])))
        if head == b"P":
            num, _, value = p[1:].partition(b"=")
            self.regs.write_register(self.vcpu, _hex_int(num), value)
            return Reply(b"OK")
        if head == b"m":
            addr, length = _addr_len(p[1:])
            if length > MAX_MEMORY_READ:
                length = MAX_MEMORY_READ  # gdb asks again for the rest
            return Reply(self.manager.read_memory(addr, length).hex().encode())
        if head == b"M":
            spec, _, data = p[1:].partition(b":")
            addr, length = _addr_len(spec)
            raw = _hex_bytes(data)
            if len(raw) != length:
                raise PacketError("M length does not match its data")
            self.manager.write_memory(addr, raw)
            return Reply(b"OK")
        if head == b"X":
            spec, _, data = p[1:].partition(b":")
            addr, length = _addr_len(spec)
            if len(data) != length:
                raise PacketError("X length does not match its data")
            if length:
                self.manager.write_memory(addr, data)
            return Reply(b"OK")
        if head in (b"c", b"s", b"C", b"S"):
            return self._resume_legacy(p)
        if p.startswith(b"vCont"):
            return self._v_cont(p)
        if head in (b"Z", b"z"):
            return self._breakpoint_packet(p)
        if p.startswith(b"qXfer:features:read:"):
            annex, _, span = p[len(b"qXfer:features:read:"):].partition(b":")
            if annex != b"target.xml":
                return error_reply(errno.ENOENT)
            return self._xfer(self._target_xml, span)
        if p.startswith(b"qXfer:memory-map:read::"):
            return self._xfer(memory_map_xml(regions_for(self.machine.vm, open_gaps=True)).encode(),
                              p[len(b"qXfer:memory-map:read::"):])
        if p in (b"qfThreadInfo",):
            return Reply(b"m%x" % THREAD_ID)
        if p == b"qsThreadInfo":
            return Reply(b"l")
        if p == b"qC":
            return Reply(b"QC%x" % THREAD_ID)
        if head == b"H":
            return Reply(b"OK")
        if head == b"T":
            return Reply(b"OK" if _hex_int(p[1:]) in (THREAD_ID, 0) else b"E01")
        if p.startswith(b"qAttached"):
            return Reply(b"1")
        if head == b"D":
            return Detach()
        if p == b"k":
            return Kill(reply=False)
        if p.startswith(b"vKill"):
            return Kill(reply=True)
        if p.startswith(b"qRcmd,"):
            return self.monitor.run(_hex_bytes(p[len(b"qRcmd,"):]).decode("utf-8", "replace"))
        return Reply(b"")  # not supported: the empty reply

    # ------------------------------------------------------------------ features
    def _q_supported(self, p: bytes) -> Reply:
        _, _, features = p.partition(b":")
        self.peer_features = {f.decode("ascii", "replace") for f in features.split(b";") if f}
        ours = [f"PacketSize={PACKET_SIZE:x}", "qXfer:features:read+", "qXfer:memory-map:read+",
                "QStartNoAckMode+", "vContSupported+"]
        if "swbreak+" in self.peer_features:
            ours.append("swbreak+")
        if "hwbreak+" in self.peer_features:
            ours.append("hwbreak+")
        return Reply(";".join(ours).encode())

    def _memory_region_info(self, addr: int) -> Reply:
        """lldb's region query: RAM, ROM, device windows and holes, each with its extent. lldb
        walks these end to end to find address space no one uses, so every address gets an
        answer, and an unmapped one gets no permissions (as lldb-server answers)."""
        if addr >= 1 << 64:
            raise PacketError("address out of range")
        r = self.manager.memory_region(addr)
        out = b"start:%x;size:%x;" % (r.start, r.end - r.start)
        if r.permissions:
            out += b"permissions:%s;" % r.permissions.encode()
        if r.name:
            out += b"name:%s;" % r.name.encode().hex().encode()
        return Reply(out)

    @staticmethod
    def _xfer(document: bytes, span: bytes) -> Reply:
        offset, length = _addr_len(span)
        chunk = document[offset:offset + min(length, PACKET_SIZE - 8)]
        more = offset + len(chunk) < len(document)
        # No escaping here: rsp.send_packet escapes '#', '$', '}' and '*' when it frames the reply
        # (escaping here too would reach gdb as literal '}' bytes).
        return Reply((b"m" if more else b"l") + chunk)

    # ------------------------------------------------------------------ resuming
    def _resume_legacy(self, p: bytes):
        step = p[:1] in (b"s", b"S")
        arg = p[1:]
        if p[:1] in (b"C", b"S"):
            _, _, arg = arg.partition(b";")  # the signal is not delivered: guests have no signals
        self.manager.check_runnable()  # after the guest's exit: E03 (ESRCH), nothing runs
        if arg:
            self._set_pc(_hex_int(arg))
        return Resume(step=step)

    def _v_cont(self, p: bytes):
        if p == b"vCont?":
            return Reply(b"vCont;c;C;s;S")
        if not p.startswith(b"vCont;"):
            return Reply(b"")
        actions = p[len(b"vCont;"):].split(b";")
        for action in actions:
            verb, _, thread = action.partition(b":")
            if not verb or verb[:1] not in b"cCsS":
                raise PacketError(f"unsupported vCont action {action!r}")
            if thread and not _thread_matches(thread):
                continue
            self.manager.check_runnable()
            return Resume(step=verb[:1] in b"sS")
        raise PacketError("vCont names no action for our thread")

    def _set_pc(self, pc: int) -> None:
        self.regs.set_pc(self.vcpu, pc)

    # ------------------------------------------------------------------ breakpoints
    def _breakpoint_packet(self, p: bytes):
        insert = p[:1] == b"Z"
        fields = p[1:].split(b";")[0].split(b",")
        if len(fields) != 3:
            raise PacketError("expected TYPE,ADDR,KIND")
        kind_type, addr, length = _hex_int(fields[0]), _hex_int(fields[1]), _hex_int(fields[2])
        m = self.manager
        if kind_type == 0:
            m.add_breakpoint(addr) if insert else m.remove_breakpoint(addr)
        elif kind_type == 1:
            m.add_hw_breakpoint(addr) if insert else m.remove_hw_breakpoint(addr)
        elif kind_type in (2, 3, 4):
            kind = Z_WATCH_KINDS[kind_type]
            m.add_watchpoint(addr, length, kind) if insert else m.remove_watchpoint(addr, length, kind)
        else:
            return Reply(b"")
        key = (kind_type, addr, length if kind_type >= 2 else 0)
        self.inserted.add(key) if insert else self.inserted.discard(key)
        return Reply(b"OK")

    def owns(self, point) -> bool:
        """Did this client insert `point` (a manager.DebugPoint)? A Z0 in ROM is an hbreak there."""
        if point.kind in ("break", "hbreak"):
            return any(t in (0, 1) and a == point.addr for t, a, _ in self.inserted)
        return any(t >= 2 and (Z_WATCH_KINDS[t].value, a, n) == (point.kind, point.addr, point.length)
                   for t, a, n in self.inserted)

    def _left_by_another(self, event: StopEvent) -> bool:
        """Did the stop come from a breakpoint or watchpoint that this client did not insert
        (one a lost client left armed)? gdb takes a `swbreak`/`hwbreak`/watch stop it cannot
        explain for a stale event of its own and resumes silently; a plain SIGTRAP it shows."""
        if event.kind in (StopKind.SWBREAK, StopKind.HWBREAK):
            hits = [p for p in self.manager.debug_points()
                    if p.kind in ("break", "hbreak") and p.addr == event.pc]
        elif event.kind is StopKind.WATCH and event.watch_addr is not None:
            hits = [p for p in self.manager.debug_points()
                    if p.kind == event.watch_kind.value and p.addr <= event.watch_addr < p.addr + p.length]
        else:
            return False
        return bool(hits) and not any(self.owns(p) for p in hits)

    # ------------------------------------------------------------------ stop replies
    def stop_reply_payload(self, event: StopEvent | None) -> bytes:
        if event is None:
            return b"T%02xthread:%x;" % (signal.SIGTRAP, THREAD_ID)
        if event.kind is StopKind.EXITED:
            return b"W%02x" % (event.exit_status & 0xFF)
        sig = event.signal if event.kind is StopKind.SIGNAL else signal.SIGTRAP
        parts = [b"T%02x" % sig]
        for regnum, value in sorted(self.regs.expedited(self.vcpu).items()):
            parts.append(b"%02x:%s;" % (regnum, value))
        parts.append(b"thread:%x;" % THREAD_ID)
        if self._left_by_another(event):
            pass  # no reason: gdb reports "Program received signal SIGTRAP" (monitor breakpoints)
        elif event.kind is StopKind.SWBREAK and "swbreak+" in self.peer_features:
            parts.append(b"swbreak:;")
        elif event.kind is StopKind.HWBREAK and "hwbreak+" in self.peer_features:
            parts.append(b"hwbreak:;")
        elif event.kind is StopKind.WATCH:
            parts.append(b"%s:%x;" % (event.watch_kind.value.encode(), event.watch_addr))
        return b"".join(parts)

    def stopped(self, event: StopEvent) -> bytes:
        self.last_stop = event
        return self.stop_reply_payload(event)


Z_WATCH_KINDS = {2: WatchKind.WRITE, 3: WatchKind.READ, 4: WatchKind.ACCESS}


def _thread_matches(thread: bytes) -> bool:
    t = thread.split(b".")[-1]
    return t in (b"-1", b"0") or _hex_int(t.lstrip(b"p")) == THREAD_ID


def _escape_binary(data: bytes) -> bytes:
    out = bytearray()
    for b in data:
        if b in (0x23, 0x24, 0x7D, 0x2A):
            out += bytes((0x7D, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


class Monitor:
    """`monitor ...` (qRcmd): help, info caps, info slots, breakpoints [clear], reset,
    snapshot save/load FILE."""

    HELP = ("monitor commands:\n"
            "  help                 this text\n"
            "  info caps            the vCPU's KVM capabilities\n"
            "  info slots           which breakpoint/watchpoint holds which slot, and which fell back\n"
            "  breakpoints          every breakpoint/watchpoint armed in the VM, and whose it is\n"
            "  breakpoints clear    remove those this debugger did not insert (left by a lost client)\n"
            "  reset                reset the board to its state after loading (alias: system_reset)\n"
            "  snapshot save FILE   save the VM (registers, memory, devices; no debugger state)\n"
            "  snapshot load FILE   restore the VM from FILE (same machine configuration)\n")

    # gdb caches registers and frames across a monitor command; nothing a stub sends makes it
    # re-read them, so say how (README: "Debugging with GDB").
    STALE_REGISTERS = ("the debugger still shows the registers it had cached: in gdb, "
                       "`maintenance flush register-cache` re-reads them (lldb: after the next stop)\n")

    def __init__(self, session: GdbSession):
        self.session = session

    def run(self, command: str):
        words = command.split()
        try:
            text = self._run(words)
        except DebugError as e:
            text = f"error: {e}\n"
        return Reply(b"O" + text.encode().hex().encode(), then=(b"OK",)) if text else Reply(b"OK")

    def _run(self, words: list[str]) -> str:
        if not words or words == ["help"]:
            return self.HELP
        if words == ["info", "caps"]:
            vm = self.session.machine.vm
            return "".join(f"{name:<28} {num:>4}  {vm.check_extension(num):#x}\n"
                           for num, name in sorted(kvm.CAPABILITY_NAMES.items()))
        if words == ["info", "slots"]:
            return self._info_slots()
        if words == ["breakpoints"]:
            return self._breakpoints()
        if words == ["breakpoints", "clear"]:
            return self._breakpoints_clear()
        if words in (["reset"], ["system_reset"]):
            self.session.manager.reset()
            self.session.last_stop = None
            return ("board reset: memory, devices and registers as after loading; "
                    "breakpoints and watchpoints kept\n" + self.STALE_REGISTERS)
        if len(words) == 3 and words[:2] == ["snapshot", "save"]:
            from guestdbg import snapshot
            path = checked_snapshot_path(words[2], for_writing=True)
            try:
                with self.session.manager.breakpoints_lifted():  # no BRK patches in the file
                    snapshot.save(self.session.machine, path)
            except (OSError, snapshot.SnapshotError) as e:
                return f"error: snapshot save failed: {e}\n"
            return f"snapshot saved to {path}\n"
        if len(words) == 3 and words[:2] == ["snapshot", "load"]:
            from guestdbg import snapshot
            path = checked_snapshot_path(words[2], for_writing=False)
            try:
                data = path.read_bytes()
                manager = self.session.manager
                manager.remove_all()  # the snapshot has no debugger state; the client re-inserts its own
                self.session.inserted.clear()
                snapshot.restore_into(self.session.machine, data)
            except (OSError, snapshot.SnapshotError) as e:
                return f"error: snapshot load failed: {e}\n"
            return f"snapshot loaded from {path}\n" + self.STALE_REGISTERS
        return f"unknown monitor command: {' '.join(words)!r} (try: monitor help)\n"

    def _info_slots(self) -> str:
        session = self.session
        now = session.manager.slots_report()
        text = "\n".join(now) + "\n"
        if len(now) == 1:
            # gdb's default (breakpoint always-inserted off) takes everything out at each stop.
            text += ("(nothing is inserted now: gdb inserts breakpoints and watchpoints only while "
                     "the guest runs, unless `set breakpoint always-inserted on`)\n")
        if len(session.armed_at_resume) > 1 and session.armed_at_resume != now:
            text += "while the guest last continued:\n" + "\n".join(session.armed_at_resume) + "\n"
        return text + self._last_error()

    def _foreign(self) -> list:
        """Debug points held by the manager that this client did not insert."""
        return [p for p in self.session.manager.debug_points() if not self.session.owns(p)]

    def _breakpoints(self) -> str:
        points = self.session.manager.debug_points()
        if not points:
            return "no breakpoints or watchpoints are armed in the VM\n" + self._last_error()
        foreign = set(self._foreign())
        lines = [f"{len(points)} armed in the VM:"]
        lines += [f"  {p.describe()}  " + ("(not this debugger's: left by an earlier client; "
                                           "its stops show as SIGTRAP)" if p in foreign else "(this debugger's)")
                  for p in points]
        if foreign:
            lines.append(f"`monitor breakpoints clear` removes the {len(foreign)} not this debugger's")
        return "\n".join(lines) + "\n" + self._last_error()

    def _breakpoints_clear(self) -> str:
        foreign = self._foreign()
        for p in foreign:
            self.session.manager.remove_debug_point(p)
        return f"removed {len(foreign)} breakpoints/watchpoints this debugger did not insert\n"

    def _last_error(self) -> str:
        err = self.session.last_error
        return f"last refused request: {err}\n" if err else ""


def checked_snapshot_path(text: str, *, for_writing: bool):
    """A snapshot path from a monitor command: resolved, its directory must exist, and the
    target itself must not be a symlink."""
    from pathlib import Path
    raw = Path(text).expanduser()
    if raw.is_symlink():
        raise DebugError(errno.ELOOP, f"{text}: is a symbolic link; refusing to follow it")
    path = raw.resolve()
    if not path.parent.is_dir():
        raise DebugError(errno.ENOENT, f"{text}: directory {path.parent} does not exist")
    if not for_writing and not path.is_file():
        raise DebugError(errno.ENOENT, f"{text}: no such file")
    return path
