"""The GDB session: one packet in, one action out. Sans-IO like the protocol core below it.

`GdbSession.handle(payload)` maps a packet to the guest-debug manager and returns an action:
a `Reply` to send now, a `Resume` the server carries out on the vCPU thread (its stop comes
back through `stop_reply`), `Detach` or `Kill`. Errors a client can cause become `Exx`
replies (one function maps them); unknown packets get the empty reply, as the protocol asks.
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
    reply: bool  # vKill is answered, plain `k` is not


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

    # ------------------------------------------------------------------ dispatch
    def handle(self, payload: bytes):
        try:
            return self._dispatch(payload)
        except PacketError:
            return error_reply(errno.EINVAL)
        except DebugError as e:
            return error_reply(e.errno)
        except (ValueError, KeyError, IndexError):
            return error_reply(errno.EINVAL)
        except OSError as e:
            return error_reply(e.errno or errno.EIO)

    def _dispatch(self, p: bytes):
        if not p:
            return Reply(b"")
        head = p[:1]
        if p.startswith(b"qSupported"):
            return self._q_supported(p)
        if p == b"QStartNoAckMode":
            self.no_ack_requested = True
            return Reply(b"OK")
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
            kind = {2: WatchKind.WRITE, 3: WatchKind.READ, 4: WatchKind.ACCESS}[kind_type]
            m.add_watchpoint(addr, length, kind) if insert else m.remove_watchpoint(addr, length, kind)
        else:
            return Reply(b"")
        return Reply(b"OK")

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
        if event.kind is StopKind.SWBREAK and "swbreak+" in self.peer_features:
            parts.append(b"swbreak:;")
        elif event.kind is StopKind.HWBREAK and "hwbreak+" in self.peer_features:
            parts.append(b"hwbreak:;")
        elif event.kind is StopKind.WATCH:
            parts.append(b"%s:%x;" % (event.watch_kind.value.encode(), event.watch_addr))
        return b"".join(parts)

    def stopped(self, event: StopEvent) -> bytes:
        self.last_stop = event
        return self.stop_reply_payload(event)


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
    """`monitor ...` (qRcmd): help, info caps, info slots, snapshot save/load FILE."""

    HELP = ("monitor commands:\n"
            "  help                 this text\n"
            "  info caps            the vCPU's KVM capabilities\n"
            "  info slots           which breakpoint/watchpoint holds which slot, and which fell back\n"
            "  snapshot save FILE   save the VM (registers, memory, devices; no debugger state)\n"
            "  snapshot load FILE   restore the VM from FILE (same machine configuration)\n")

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
            return "\n".join(self.session.manager.slots_report()) + "\n"
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
                snapshot.restore_into(self.session.machine, data)
            except (OSError, snapshot.SnapshotError) as e:
                return f"error: snapshot load failed: {e}\n"
            return f"snapshot loaded from {path}\n"
        return f"unknown monitor command: {' '.join(words)!r} (try: monitor help)\n"


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
