"""The GDB session: one packet in, one action out. Sans-IO like the protocol core below it.

`GdbSession.handle(payload)` maps a packet to the target and returns an action: a `Reply` to
send now, a `Resume` the server carries out on the vCPU thread (its stop comes back through
`stopped`), `Detach` or `Kill`.

The target is the guest-debug manager, and nothing else: every register, memory and run request
goes through it (under its lock), as ints and bytes; this module only parses packets and formats
replies. The architecture comes from the manager (`manager.profile`), and with it the register
packet codec (`aarch64_regs` or `amd64_regs`: target XML and the hex of g/G/p/P).

Dispatch is table-driven: `PACKETS` maps a packet's first byte to its handler; `q`, `Q` and `v`
packets go on by name (the text before the first `:`, `;` or `,`) through `NAMED_PACKETS`, and
`qXfer` objects through `XFER_OBJECTS`. A packet no table knows gets the empty reply, as the
protocol asks. `qSupported` is derived from what the target can do: `hwbreak+` only with
hardware breakpoint slots, `swbreak+` only with software breakpoints, `ReverseStep+` and
`ReverseContinue+` only for a target that runs backwards.

Errors: the session's own parse errors (`PacketError`, EINVAL) and the target's refusals
(`DebugError`, with its errno) become `Exx` replies (one function maps them), with the reason as
text for clients that take it (gdb's `error-message+`, lldb's QEnableErrorStrings). Nothing else
is caught: any other exception is a bug, and propagates (the server answers it as a last resort).

Extension points, there even where still empty:

- threads: one per vCPU, gdb thread id = vCPU id + 1 (QEMU's cpu_index + 1; Linux's
  scripts/gdb takes thread N for CPU N-1). `qfThreadInfo` lists them (and `qXfer:threads:read`,
  with their cores and the extra text), `qThreadExtraInfo` says "CPU#n [running]" (QEMU's
  wording), `T` is alive for each, `Hg` makes one current in the
  manager (registers, memory translation), `Hc` picks the thread plain `c`/`s` resume, and
  `vCont` takes per-thread actions: `vCont;s:N;c` steps vCPU N-1 with the others running,
  `vCont;s:N` (or `c:N`) runs it alone (gdb's scheduler-locking). All-stop: a stop reply names
  the thread that stopped, which becomes the current one (gdb assumes so: record_currthread).
- reverse execution: `bs`/`bc` go to `_reverse`, which answers the empty reply (unsupported)
  until the target can run backwards (`manager.can_reverse`); then it returns a reverse Resume.
- physical memory: QEMU's PhyMemMode (`Qqemu.PhyMemMode:0|1`, `qqemu.PhyMemMode`, or
  `monitor phys on|off`) makes m, M, X and qMemoryRegionInfo take guest-physical addresses for
  this client (`phys_memory`); Z packets stay virtual, as on QEMU.
- monitor commands: `gdb/monitor.py`'s `MONITOR_COMMANDS`, one `MonitorCommand` (words, arguments, help, handler)
  each; `monitor help` is built from the table.

Conditional breakpoints and dprintf (`ConditionalBreakpoints+`, `BreakpointCommands+`): a Z
packet's `;X len,bytecode` conditions and `;cmds:` commands are parsed here
(`debug.agent_expr.parse_point_options`) and handed to the manager with the breakpoint, which
evaluates them at each hit; dprintf's text reaches gdb as O packets the server sends.

Reads while stopped (issue 13's latency): gdb reads the same few words around PC several times
at every stop, so the session keeps what this stop's reads found (`m` as aligned 256-byte
blocks, registers per vCPU, the stop reply's expedited ones included) and drops it at every
packet that is not a pure read and at every stop; see "Read caches" below.

The session remembers what its client inserted (Z packets), so that a stop at a breakpoint or
watchpoint a lost client left armed is reported as a plain SIGTRAP rather than as a breakpoint
hit, which gdb would silently resume from, and what was armed at the last resume, since gdb
removes its breakpoints at every stop (`monitor info slots`).
"""

from __future__ import annotations

import errno
import re
import signal
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence, Union

from guestdbg.debug.agent_expr import OptionsError, parse_point_options
from guestdbg.debug.conditions import StopConditions
from guestdbg.debug.manager import DebugError, DebugPoint, GuestDebugManager, StopEvent, StopKind, WatchKind
from guestdbg.gdb import aarch64_regs, amd64_regs, rsp
from guestdbg.gdb.memory_map import memory_map_xml, regions_for
from guestdbg.gdb.monitor import Monitor

# The most memory one `m` answers (its hex, and the reply's framing, fit in PacketSize); gdb
# asks again for the rest.
MAX_MEMORY_READ = (rsp.PACKET_SIZE - 8) // 2
ANY_THREAD, ALL_THREADS = 0, -1


@dataclass(frozen=True)
class Reply:
    payload: bytes
    then: tuple[bytes, ...] = ()  # further packets, e.g. the OK after a monitor's O output
    # The acknowledgement of QStartNoAckMode: the server switches the connection to no-ack
    # mode once this reply has gone out with an ack.
    start_no_ack: bool = False
    # Hints for the server's remembered replies, not part of what the reply says (so not
    # compared). A pure read whose answer stays the same until the session forgets its reads
    # (see "Read caches" below): the connection may answer the same request again with it (rsp
    # rule 15).
    repeatable: bool = field(default=False, compare=False)
    # Changed nothing a read can see (memory reads show the originals under breakpoints): the
    # replies remembered for repeated reads stay good (a Z or z, which gdb sends at every stop).
    keeps_reads: bool = field(default=False, compare=False)


@dataclass(frozen=True)
class Resume:
    step: bool
    reverse: bool = False  # run backwards (only ever set when the target can_reverse)
    vcpu: int | None = None  # the vCPU to step, or the only one to run (None: the current one)
    alone: bool = False      # only `vcpu` runs (scheduler-locking); else every vCPU does

    def run(self, manager: GuestDebugManager) -> StopEvent:
        """Carry it out (on the server's vCPU thread, or inline for a bounded step)."""
        if self.reverse:
            return manager.reverse_step(self.vcpu) if self.step else manager.reverse_cont()
        if self.step:
            if self.vcpu is None and self.alone:
                return manager.step()
            return manager.step(self.vcpu, others_run=not self.alone)
        return manager.cont(self.vcpu) if self.alone else manager.cont()


@dataclass(frozen=True)
class Detach:
    pass


@dataclass(frozen=True)
class Kill:
    reply: bool  # vKill is answered OK; plain `k` with the exit it causes (X09), which lldb waits for


Action = Union[Reply, Resume, Detach, Kill]
EMPTY = Reply(b"")  # "not supported"
OK = Reply(b"OK")
OK_KEEPS_READS = Reply(b"OK", keeps_reads=True)


def error_reply(err: int) -> Reply:
    return Reply(b"E%02x" % (err & 0xFF))


class PacketError(Exception):
    """A malformed packet: answered with E22 (EINVAL)."""


class RegisterCodec(Protocol):
    """A register packet codec module (`aarch64_regs`, `amd64_regs`)."""

    @property
    def BY_REGNUM(self) -> Mapping[int, Any]: ...  # noqa: N802 (module constant)

    @property
    def EXPEDITED_REGNUMS(self) -> tuple[int, ...]: ...  # noqa: N802 (module constant)

    def target_xml(self) -> str: ...

    def encode_g(self, values: Sequence[int]) -> bytes: ...

    def decode_G(self, hexdata: bytes) -> list[int]: ...  # noqa: N802 (packet letter)

    def encode_register(self, regnum: int, value: int) -> bytes: ...

    def decode_register(self, regnum: int, hexvalue: bytes) -> int: ...

    def encode_expedited(self, values: Sequence[int]) -> dict[int, bytes]: ...

    def encode_expedited_reply(self, values: Sequence[int]) -> bytes: ...


# The packet codec of each architecture profile (debug.profile names them).
CODECS: dict[str, RegisterCodec] = {"aarch64": aarch64_regs, "x86_64": amd64_regs}


def _hex_int(text: bytes) -> int:
    # Plain hex digits only: int(x, 16) alone also takes "-4", "+4", "0x4", "4_0" and spaces,
    # which let negative addresses and lengths reach the manager.
    if not text or text.strip(b"0123456789abcdefABCDEF"):
        raise PacketError(f"bad hex number {text!r}")
    return int(text, 16)


def _hex_bytes(text: bytes) -> bytes:
    try:
        return bytes.fromhex(text.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise PacketError("bad hex data") from None


def _addr_len(text: bytes) -> tuple[int, int]:
    a, comma, n = text.partition(b",")
    if not comma:
        raise PacketError(f"expected ADDR,LENGTH, got {text!r}")
    addr, length = _hex_int(a), _hex_int(n)
    if addr >= 1 << 64 or length >= 1 << 32:
        raise PacketError("address or length out of range")
    return addr, length


def _thread_id(text: bytes) -> int:
    """A thread-id of a packet: ANY_THREAD (0), ALL_THREADS (-1) or a thread number; the
    multiprocess form pPID.TID names thread TID (there is one process)."""
    tid = text.split(b".")[-1] if text[:1] == b"p" else text
    if tid == b"-1":
        return ALL_THREADS
    return _hex_int(tid.lstrip(b"p"))


_NAME_END = re.compile(rb"[:;,]")


class GdbSession:
    """State of one client connection: features it announced, last stop, monitor commands."""

    def __init__(self, manager: GuestDebugManager, *, monitor: Monitor | None = None):
        """The register codec follows from manager.profile."""
        self.manager = manager  # the target: every request goes through it
        self.codec = CODECS[manager.profile.name]
        self.peer_features: set[str] = set()
        self.stop_reasons: set[str] = set()   # swbreak/hwbreak: announced by both sides
        self.last_stop: StopEvent | None = None
        self.monitor = monitor or Monitor(self)
        self._target_xml = self.codec.target_xml().encode()
        self.error_strings = False          # lldb's QEnableErrorStrings: "Exx;HEXTEXT" replies
        self.inserted: set[tuple[int, int, int]] = set()  # (Z type, addr, kind) this client holds
        self.armed_at_resume: list[str] = []  # manager.slots_report() at the last continue
        self.last_error: str | None = None   # the last refusal, for clients that cannot show text
        self.phys_memory = False  # QEMU's PhyMemMode: m/M/X addresses are guest-physical
        self.ignored_options: str | None = None  # the last Z options that did not parse
        # Threads: one per vCPU, numbered from 1 (0 and -1 mean "any" and "all" in the protocol).
        self.threads = [vcpu_id + 1 for vcpu_id in manager.vcpu_ids()]
        self._v_cont_plans: dict[tuple[bytes, int], tuple[Action, str, int | None]] = {}  # see _v_cont
        # The thread each operation is for (H): b"g" registers and memory, b"c" resuming.
        self.selected_thread = {b"g": manager.current_vcpu + 1, b"c": ANY_THREAD}
        # What this stop's reads found (see "Read caches" above `READ_ONLY_PACKETS`).
        self._regs: dict[int, dict[int, int]] = {}        # vCPU -> {register number: value}
        self._all_regs: dict[int, list[int]] = {}         # vCPU -> every register (a `g`)
        self._memory: dict[tuple[int, bool, int], bytes] = {}  # (vCPU, physical, block) -> bytes
        self._memory_writes: object = None                # the VM's host write count they are of
        self._memory_replies: dict[tuple[bytes, int, bool], Reply] = {}  # (m packet, vCPU, physical) -> its reply

    # ------------------------------------------------------------------ dispatch
    def handle(self, payload: bytes) -> Action:
        if not _read_only(payload):
            self.forget_reads()
        try:
            action = self._dispatch(payload)
        except PacketError as e:
            return self._error(errno.EINVAL, str(e), payload)
        except DebugError as e:
            return self._error(e.errno, str(e), payload)
        if isinstance(action, Resume) and not (action.step and self.armed_at_resume):
            # gdb steps over a breakpoint or watchpoint with just that one taken out: the last
            # continue says better what the user armed.
            self.armed_at_resume = self.manager.slots_report()
        return action

    def forget_reads(self) -> None:
        """Drop what earlier reads found: the machine may change (a resume, a write, a monitor
        command, anything but the packets of READ_ONLY_PACKETS)."""
        if self._regs or self._all_regs:
            self._regs = {}
            self._all_regs = {}
        if self._memory:
            self._memory = {}
            self._memory_replies = {}

    def _dispatch(self, p: bytes) -> Action:
        handler = PACKETS.get(p[:1])
        return handler(self, p) if handler is not None else EMPTY

    def _named(self, p: bytes) -> Action:
        """q, Q and v packets, by name."""
        handler = NAMED_PACKETS.get(_NAME_END.split(p, 1)[0])
        return handler(self, p) if handler is not None else EMPTY

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

    # ------------------------------------------------------------------ features
    def _q_supported(self, p: bytes) -> Reply:
        _, _, features = p.partition(b":")
        self.peer_features = {f.decode("ascii", "replace") for f in features.split(b";") if f}
        target = self.manager
        ours = [f"PacketSize={rsp.PACKET_SIZE:x}", "qXfer:features:read+", "qXfer:memory-map:read+",
                "qXfer:threads:read+", "QStartNoAckMode+", "vContSupported+",
                # Conditions and dprintf commands evaluated in the stub (agent expressions).
                "ConditionalBreakpoints+", "BreakpointCommands+"]
        # Stop reasons both sides know, for the kinds of breakpoint this target can have.
        self.stop_reasons = set()
        if "swbreak+" in self.peer_features and target.sw_breakpoints:
            self.stop_reasons.add("swbreak")
        if "hwbreak+" in self.peer_features and target.hw_bp_slots > 0:
            self.stop_reasons.add("hwbreak")
        ours += [f"{reason}+" for reason in ("swbreak", "hwbreak") if reason in self.stop_reasons]
        if target.can_record:  # recording may start later (monitor record on): bs/bc say if not
            ours += ["ReverseStep+", "ReverseContinue+"]
        return Reply(";".join(ours).encode())

    def _q_start_no_ack_mode(self, p: bytes) -> Reply:
        return Reply(b"OK", start_no_ack=True) if p == b"QStartNoAckMode" else EMPTY

    def _q_enable_error_strings(self, p: bytes) -> Reply:
        if p != b"QEnableErrorStrings":
            return EMPTY
        self.error_strings = True
        return OK

    def _q_phy_mem_mode(self, p: bytes) -> Reply:
        """qqemu.PhyMemMode: "1" while memory requests are physical, else "0" (as QEMU)."""
        return Reply(b"1" if self.phys_memory else b"0") if p == b"qqemu.PhyMemMode" else EMPTY

    def _set_phy_mem_mode(self, p: bytes) -> Reply:
        """Qqemu.PhyMemMode:0|1 (QEMU's `maintenance packet Qqemu.PhyMemMode:1`)."""
        value = p[len(b"Qqemu.PhyMemMode:"):] if p.startswith(b"Qqemu.PhyMemMode:") else b""
        if value not in (b"0", b"1"):
            raise PacketError("expected Qqemu.PhyMemMode:0 or :1")
        self.phys_memory = value == b"1"
        return OK

    def _q_attached(self, p: bytes) -> Reply:
        return Reply(b"1")  # attached to an existing process: detaching leaves it running

    # ------------------------------------------------------------------ documents (qXfer)
    def _q_xfer(self, p: bytes) -> Reply:
        """qXfer:OBJECT:read:ANNEX:OFFSET,LENGTH, for the objects of XFER_OBJECTS."""
        parts = p.split(b":", 4)
        document = XFER_OBJECTS.get(parts[1]) if len(parts) > 2 and parts[2] == b"read" else None
        if document is None:
            return EMPTY
        if len(parts) != 5:
            raise PacketError("expected qXfer:OBJECT:read:ANNEX:OFFSET,LENGTH")
        return self._xfer(document(self, parts[3]), parts[4])

    def _features_document(self, annex: bytes) -> bytes:
        if annex != b"target.xml":
            raise DebugError(errno.ENOENT, f"no target description {annex!r}")
        return self._target_xml

    def _memory_map_document(self, annex: bytes) -> bytes:
        if annex:
            raise DebugError(errno.ENOENT, f"no memory map {annex!r}")
        return memory_map_xml(regions_for(self.manager.memory_layout(), open_gaps=True)).encode()

    @staticmethod
    def _xfer(document: bytes, span: bytes) -> Reply:
        offset, length = _addr_len(span)
        chunk = document[offset:offset + min(length, rsp.PACKET_SIZE - 8)]
        more = offset + len(chunk) < len(document)
        # No escaping here: rsp.send_packet escapes '#', '$', '}' and '*' when it frames the reply
        # (escaping here too would reach gdb as literal '}' bytes).
        return Reply((b"m" if more else b"l") + chunk, repeatable=True)

    # ------------------------------------------------------------------ registers
    def _decode(self, decode: Callable[..., Any], *args: Any) -> Any:
        """A codec's decode, its ValueError (bad hex, wrong length) a malformed packet."""
        try:
            return decode(*args)
        except ValueError as e:
            raise PacketError(str(e)) from None

    def _regnum(self, text: bytes) -> int:
        n = _hex_int(text)
        if n not in self.codec.BY_REGNUM:
            raise PacketError(f"no register number {n}")
        return n

    def _read_all_registers(self, p: bytes) -> Reply:
        if p != b"g":
            return EMPTY
        vcpu = self.manager.current_vcpu
        values = self._all_regs.get(vcpu)
        if values is None:
            values = self._all_regs[vcpu] = self.manager.read_registers()
        return Reply(self.codec.encode_g(values), repeatable=True)

    def _registers(self, numbers: Sequence[int], vcpu: int) -> list[int]:
        """These registers of `vcpu`, read at most once per stop (see forget_reads)."""
        everything = self._all_regs.get(vcpu)
        if everything is not None:
            return [everything[n] for n in numbers]
        known = self._regs.setdefault(vcpu, {})
        try:
            return [known[n] for n in numbers]
        except KeyError:
            pass
        values = self.manager.read_registers(numbers, vcpu=vcpu)
        known.update(zip(numbers, values))
        return values

    def _write_all_registers(self, p: bytes) -> Reply:
        values = self._decode(self.codec.decode_G, p[1:])
        self.manager.write_all_registers(values)
        return OK

    def _read_register(self, p: bytes) -> Reply:
        n = _hex_int(p[1:])
        if n not in self.codec.BY_REGNUM:
            raise PacketError(f"no register number {n}")
        return Reply(self.codec.encode_register(n, self._registers((n,), self.manager.current_vcpu)[0]),
                     repeatable=True)

    def _write_register(self, p: bytes) -> Reply:
        num, _, value = p[1:].partition(b"=")
        n = self._regnum(num)
        self.manager.write_register_at(n, self._decode(self.codec.decode_register, n, value))
        return OK

    # ------------------------------------------------------------------ memory
    def _read_memory(self, p: bytes) -> Reply:
        writes = getattr(self.manager, "memory_generation", None)
        if writes != self._memory_writes:  # belt and braces: the debugger's writes bump it
            self._memory = {}
            self._memory_replies = {}
            self._memory_writes = writes
        vcpu = self.manager.current_vcpu
        # gdb sends the very same `m` packets two to four times a stop: their replies are kept
        # with the blocks they are slices of.
        reply = self._memory_replies.get((p, vcpu, self.phys_memory))
        if reply is not None:
            return reply
        addr, length = _addr_len(p[1:])
        length = min(length, MAX_MEMORY_READ)  # gdb asks again for the rest
        block = addr & -MEMORY_BLOCK
        if length > MEMORY_BLOCK or addr + length > block + MEMORY_BLOCK:
            return Reply(self.manager.read_memory(addr, length, physical=self.phys_memory).hex().encode())
        # The small reads gdb makes around PC (the same ones again and again at every stop):
        # the aligned block around them is read once per stop, and they are slices of it.
        key = (vcpu, self.phys_memory, block)
        data = self._memory.get(key)
        if data is None:
            try:
                data = self.manager.read_memory(block, MEMORY_BLOCK, physical=self.phys_memory)
            except DebugError:  # part of the block is not memory: just what was asked, uncached
                return Reply(self.manager.read_memory(addr, length, physical=self.phys_memory).hex().encode())
            self._memory[key] = data
        reply = Reply(data[addr - block:addr - block + length].hex().encode(), repeatable=True)
        self._memory_replies[(p, vcpu, self.phys_memory)] = reply
        return reply

    def _write_memory(self, p: bytes) -> Reply:
        spec, _, data = p[1:].partition(b":")
        addr, length = _addr_len(spec)
        raw = _hex_bytes(data)
        if len(raw) != length:
            raise PacketError("M length does not match its data")
        self.manager.write_memory(addr, raw, physical=self.phys_memory)
        return OK

    def _write_memory_binary(self, p: bytes) -> Reply:
        spec, _, data = p[1:].partition(b":")
        addr, length = _addr_len(spec)
        if len(data) != length:
            raise PacketError("X length does not match its data")
        if length:  # X with no data is gdb's probe for X support
            self.manager.write_memory(addr, data, physical=self.phys_memory)
        return OK

    def _memory_region_info(self, p: bytes) -> Reply:
        """lldb's region query: RAM, ROM, device windows and holes, each with its extent. lldb
        walks these end to end to find address space no one uses, so every address gets an
        answer, and an unmapped one gets no permissions (as lldb-server answers)."""
        if p[len(b"qMemoryRegionInfo"):][:1] != b":":
            raise PacketError("expected qMemoryRegionInfo:ADDR")
        addr = _hex_int(p[len(b"qMemoryRegionInfo:"):])
        if addr >= 1 << 64:
            raise PacketError("address out of range")
        r = self.manager.memory_region(addr, physical=self.phys_memory)
        out = b"start:%x;size:%x;" % (r.start, r.end - r.start)
        if r.permissions:
            out += b"permissions:%s;" % r.permissions.encode()
        if r.name:
            out += b"name:%s;" % r.name.encode().hex().encode()
        return Reply(out)

    # ------------------------------------------------------------------ threads
    def _known_thread(self, tid: int) -> bool:
        return tid in (ANY_THREAD, ALL_THREADS) or tid in self.threads

    def _thread_info_first(self, p: bytes) -> Reply:
        return Reply(b"m" + b",".join(b"%x" % t for t in self.threads), repeatable=True)

    def _thread_info_next(self, p: bytes) -> Reply:
        return Reply(b"l", repeatable=True)  # all of them came in the first answer

    def _current_thread(self, p: bytes) -> Reply:
        return Reply(b"QC%x" % (self.manager.current_vcpu + 1))

    def _select_thread(self, p: bytes) -> Reply:
        """Hg/Hc THREAD: the thread later register/memory (g) or resume (c) requests are for.
        Hg to a thread makes its vCPU the manager's current one; Hg0/Hg-1 (any) keep it."""
        op, tid = p[1:2], _thread_id(p[2:]) if len(p) > 2 else ANY_THREAD
        if op not in (b"g", b"c"):
            raise PacketError(f"unknown H operation {op!r}")
        if not self._known_thread(tid):
            raise DebugError(errno.ESRCH, f"no thread {tid:#x}")
        if op == b"g" and tid not in (ANY_THREAD, ALL_THREADS):
            self.manager.select_vcpu(tid - 1)
        self.selected_thread[op] = tid
        return OK

    def _thread_alive(self, p: bytes) -> Reply:
        tid = _thread_id(p[1:])
        if tid not in self.threads and tid != ANY_THREAD:
            raise DebugError(errno.ESRCH, f"no thread {tid:#x}")
        return OK

    def _thread_extra_info(self, p: bytes) -> Reply:
        """qThreadExtraInfo,ID: hex of "CPU#n [state]", as QEMU's gdbstub words it (its states
        padded to one width: "running", "halted ", and "off    " for a CPU not powered on)."""
        _, comma, text = p.partition(b",")
        if not comma:
            raise PacketError("expected qThreadExtraInfo,ID")
        tid = _thread_id(text)
        if tid not in self.threads:
            raise DebugError(errno.ESRCH, f"no thread {tid:#x}")
        return Reply(self._thread_extra_text(tid).encode().hex().encode())

    def _thread_extra_text(self, tid: int) -> str:
        return f"CPU#{tid - 1} [{self.manager.vcpu_state(tid - 1):<7}]"

    def _threads_document(self, annex: bytes) -> bytes:
        """qXfer:threads:read: every thread with its core and qThreadExtraInfo's text. gdb
        updates its thread list after every stop: one packet instead of qfThreadInfo and
        qsThreadInfo (and the extra text with it, not a qThreadExtraInfo per thread)."""
        if annex:
            raise DebugError(errno.ENOENT, f"no thread list {annex!r}")
        rows = "".join(f'<thread id="{t:x}" core="{t - 1:x}">{self._thread_extra_text(t)}</thread>\n'
                       for t in self.threads)
        return f'<?xml version="1.0"?>\n<threads>\n{rows}</threads>\n'.encode()

    # ------------------------------------------------------------------ resuming
    def _stop_status(self, p: bytes) -> Reply:
        return Reply(self.stop_reply_payload(self.last_stop)) if p == b"?" else EMPTY

    def _resume_legacy(self, p: bytes) -> Resume:
        step = p[:1] in (b"s", b"S")
        arg = p[1:]
        if p[:1] in (b"C", b"S"):
            _, _, arg = arg.partition(b";")  # the signal is not delivered: guests have no signals
        # Hc names the one thread to resume (gdb sends it for scheduler-locking); Hc0/Hc-1
        # resume them all, stepping the current one.
        hc = self.selected_thread[b"c"]
        vcpu, alone = (None, False) if hc in (ANY_THREAD, ALL_THREADS) else (hc - 1, True)
        # After the guest's exit: E03 (ESRCH), nothing runs; a CPU that is off cannot step.
        self.manager.check_runnable(vcpu=vcpu if step or alone else None)
        if arg:
            self.manager.set_pc(_hex_int(arg))
        return Resume(step=step, vcpu=vcpu, alone=alone)

    def _v_cont_query(self, p: bytes) -> Reply:
        return Reply(b"vCont;c;C;s;S;t") if p == b"vCont?" else EMPTY

    def _v_cont(self, p: bytes) -> Action:
        """vCont;ACTION[:THREAD]...: each thread takes the first action that names it (or names
        no thread). All-stop on one scheduler thread: one vCPU steps at most, and the others
        either all run (a `c` applies to them) or all stay stopped. What a packet means depends
        only on it, the threads (fixed) and the current vCPU: the plan is kept by those (gdb
        sends the same vCont for every step), the check that the guest can run is made each time."""
        if not p.startswith(b"vCont;"):
            return EMPTY
        key = (p, self.manager.current_vcpu)
        plan = self._v_cont_plans.get(key)
        if plan is None:
            plan = self._plan_v_cont(p)
            if len(self._v_cont_plans) < 64:
                self._v_cont_plans[key] = plan
        action, what, vcpu = plan
        if what:
            self.manager.check_runnable(what, vcpu=vcpu)
        return action

    def _plan_v_cont(self, p: bytes) -> tuple[Action, str, int | None]:
        """_v_cont's answer, and the check_runnable arguments it needs ("" for none)."""
        actions: list[tuple[bytes, int | None]] = []
        for action in p[len(b"vCont;"):].split(b";"):
            verb, _, thread = action.partition(b":")
            if not verb or verb[:1] not in b"cCsSt":
                raise PacketError(f"unsupported vCont action {action!r}")
            tid = _thread_id(thread) if thread else None
            if tid is not None and not self._known_thread(tid):
                raise DebugError(errno.ESRCH, f"no thread {tid:#x}")
            if tid == ANY_THREAD:
                tid = self.manager.current_vcpu + 1
            actions.append((verb[:1], None if tid == ALL_THREADS else tid))
        chosen: dict[int, bytes] = {}
        for t in self.threads:
            verbs = [v for v, tid in actions if tid is None or tid == t]
            if verbs and verbs[0] != b"t":  # `t` (stop): all-stop, it is stopped already
                chosen[t] = verbs[0]
        if not chosen:
            return OK, "", None
        steppers = [t for t, verb in chosen.items() if verb in b"sS"]
        current = self.manager.current_vcpu + 1
        if steppers:
            # Several (`vCont;s` for all): the current thread steps, the others wait.
            stepper = steppers[0] if len(steppers) == 1 else (current if current in steppers else steppers[0])
            alone = len(steppers) > 1 or len(chosen) == 1
            return Resume(step=True, vcpu=stepper - 1, alone=alone), "step", stepper - 1
        if len(chosen) == 1 and len(self.threads) > 1:
            (only,) = chosen
            return Resume(step=False, vcpu=only - 1, alone=True), "continue", only - 1
        # Every thread, or several but not all: the board runs all of them or one.
        return Resume(step=False), "continue", None

    def _reverse(self, p: bytes) -> Action:
        """`bs`/`bc`: reverse step and continue, offered in qSupported where the target can
        record (`manager.can_record`); an error saying how to start recording until it does."""
        if p not in (b"bs", b"bc") or not self.manager.can_record:
            return EMPTY
        if not self.manager.can_reverse:
            # E.errtext: gdb shows the text ("Remote failure reply: E.not recording...")
            return Reply(b"E.not recording: `monitor record on` (or guestdbg run --record) keeps the "
                         b"history that reverse execution needs")
        # bs steps back the Hc thread if gdb named one (it does before bs with several threads).
        hc = self.selected_thread[b"c"]
        vcpu = None if hc in (ANY_THREAD, ALL_THREADS) else hc - 1
        return Resume(step=p == b"bs", reverse=True, vcpu=vcpu)

    def _detach(self, p: bytes) -> Detach:
        return Detach()

    def _kill(self, p: bytes) -> Action:
        return Kill(reply=False) if p == b"k" else EMPTY

    def _v_kill(self, p: bytes) -> Kill:
        return Kill(reply=True)

    def _monitor(self, p: bytes) -> Reply:
        if p[len(b"qRcmd"):][:1] != b",":
            raise PacketError("expected qRcmd,HEX")
        text = self.monitor.run(_hex_bytes(p[len(b"qRcmd,"):]).decode("utf-8", "replace"))
        # Console output ("O" + hex), then the final OK, as gdbserver answers qRcmd.
        return Reply(b"O" + text.encode().hex().encode(), then=(b"OK",)) if text else OK

    # ------------------------------------------------------------------ breakpoints
    def _breakpoint_packet(self, p: bytes) -> Reply:
        """Z/z TYPE,ADDR,KIND; a Z's options (`;X len,bytecode` conditions, OR-ed, and
        `;cmds:persist,X len,bytecode` commands: ConditionalBreakpoints+, BreakpointCommands+)
        go to the manager, which evaluates them at each hit. A Z again at the same place
        replaces them (none: the point stops unconditionally again), as gdbserver does.
        Options that do not parse are ignored, as gdbserver skips them: the point stops at
        every hit, as a condition that cannot be evaluated does."""
        insert = p[:1] == b"Z"
        spec, _, options = p[1:].partition(b";")
        fields = spec.split(b",")
        if len(fields) != 3:
            raise PacketError("expected TYPE,ADDR,KIND")
        kind_type, addr, length = _hex_int(fields[0]), _hex_int(fields[1]), _hex_int(fields[2])
        # Only with options: a plain Z is the plain call (any target's add_* takes it).
        condition = self._point_conditions(options) if insert and options else None
        extra = {"condition": condition} if condition is not None else {}
        m = self.manager
        if kind_type == 0:
            m.add_breakpoint(addr, **extra) if insert else m.remove_breakpoint(addr)
        elif kind_type == 1:
            m.add_hw_breakpoint(addr, **extra) if insert else m.remove_hw_breakpoint(addr)
        elif kind_type in Z_WATCH_KINDS:
            kind = Z_WATCH_KINDS[kind_type]
            m.add_watchpoint(addr, length, kind, **extra) if insert else m.remove_watchpoint(addr, length, kind)
        else:
            return EMPTY
        key = (kind_type, addr, length if kind_type >= 2 else 0)
        self.inserted.add(key) if insert else self.inserted.discard(key)
        return OK_KEEPS_READS

    def _point_conditions(self, options: bytes) -> StopConditions | None:
        try:
            parsed = parse_point_options(options.decode("ascii"))
        except (OptionsError, UnicodeDecodeError) as e:
            self.ignored_options = f"{options[:40].decode('ascii', 'replace')}: {e}"
            return None
        return StopConditions.from_agent(parsed.conditions, parsed.commands) or None

    def owns(self, point: DebugPoint) -> bool:
        """Did this client insert `point`? A Z0 in ROM is an hbreak there."""
        if point.kind in ("break", "hbreak"):
            return any(t in (0, 1) and a == point.addr for t, a, _ in self.inserted)
        return any(t >= 2 and (Z_WATCH_KINDS[t].value, a, n) == (point.kind, point.addr, point.length)
                   for t, a, n in self.inserted)

    def _left_by_another(self, event: StopEvent) -> bool:
        """Did the stop come from a breakpoint or watchpoint that this client did not insert
        (one a lost client left armed)? gdb takes a `swbreak`/`hwbreak`/watch stop it cannot
        explain for a stale event of its own and resumes silently; a plain SIGTRAP it shows."""
        if event.kind in (StopKind.SWBREAK, StopKind.HWBREAK):
            if any(t in (0, 1) and a == event.pc for t, a, _ in self.inserted):
                return False  # this client's own breakpoint is there (the usual case)
            hits = [p for p in self.manager.debug_points()
                    if p.kind in ("break", "hbreak") and p.addr == event.pc]
        elif event.kind is StopKind.WATCH and event.watch_kind is not None and event.watch_addr is not None:
            kind, addr = event.watch_kind.value, event.watch_addr
            hits = [p for p in self.manager.debug_points()
                    if p.kind == kind and p.addr <= addr < p.addr + p.length]
        else:
            return False
        return bool(hits) and not any(self.owns(p) for p in hits)

    # ------------------------------------------------------------------ stop replies
    def stop_reply_payload(self, event: StopEvent | None) -> bytes:
        if event is None:
            return b"T%02xthread:%x;" % (signal.SIGTRAP, self.threads[0])
        if event.kind is StopKind.EXITED:
            return b"W%02x" % ((event.exit_status or 0) & 0xFF)
        sig = event.signal if event.kind is StopKind.SIGNAL else signal.SIGTRAP
        parts = [b"T%02x" % sig]
        values = self._registers(self.codec.EXPEDITED_REGNUMS, event.vcpu_id)
        parts.append(self.codec.encode_expedited_reply(values))
        # The thread and the CPU it stopped on (gdb records both from the stop reply; a
        # thread here is a vCPU, so the core is its id, as `info threads` shows it).
        parts.append(b"thread:%x;core:%x;" % (event.vcpu_id + 1, event.vcpu_id))
        if self._left_by_another(event):
            pass  # no reason: gdb reports "Program received signal SIGTRAP" (monitor breakpoints)
        elif event.kind is StopKind.SWBREAK and "swbreak" in self.stop_reasons:
            parts.append(b"swbreak:;")
        elif event.kind is StopKind.HWBREAK and "hwbreak" in self.stop_reasons:
            parts.append(b"hwbreak:;")
        elif event.kind is StopKind.WATCH and event.watch_kind is not None and event.watch_addr is not None:
            parts.append(b"%s:%x;" % (event.watch_kind.value.encode(), event.watch_addr))
        if event.history_edge is not None:  # gdb: "No more reverse-execution history."
            parts.append(b"replaylog:%s;" % event.history_edge.encode())
        return b"".join(parts)

    def stopped(self, event: StopEvent) -> bytes:
        """The stop reply for `event`; its thread becomes the current (Hg) thread, as gdb
        assumes after every stop reply."""
        self.forget_reads()  # the guest ran
        self.last_stop = event
        if event.kind is not StopKind.EXITED:
            self.selected_thread[b"g"] = event.vcpu_id + 1
        return self.stop_reply_payload(event)


Handler = Callable[[GdbSession, bytes], Action]

# Read caches. While the guest is stopped, gdb asks for the same things again and again: at
# every stop it reads the instruction at PC and its neighbours several times each (`m` of 4
# bytes), and a client without expedited registers sends `g` and `p`. The session keeps what
# such reads found until anything could change it: every packet that is not one of these pure
# reads (writes, resumes, Z/z, monitor commands, detach: everything else) drops it first, and
# so does every stop. Memory is also keyed on the manager's `memory_generation` (the VM's count
# of writes of guest memory from outside the guest: the debugger's, the Python API's), and by
# vCPU (its translation) and PhyMemMode. What a read returns does not depend on the session's
# caching: a block read that fails is retried as the exact read, uncached.
READ_ONLY_PACKETS = frozenset({b"g", b"p", b"m", b"?", b"H", b"T"})
READ_ONLY_NAMED = frozenset({b"qfThreadInfo", b"qsThreadInfo", b"qC", b"qXfer", b"qMemoryRegionInfo",
                             b"qThreadExtraInfo", b"qAttached", b"qqemu.PhyMemMode", b"vCont?"})
MEMORY_BLOCK = 256  # the aligned block a small `m` reads (never crosses a page)


# Reads answered ahead at a stop (the server's `_answer_ahead`): those the client made at its
# last stop, each `m` within NEAR_PC of that stop's PC also moved along with the PC.
NEAR_PC = 4096
MAX_AHEAD = 8  # reads of one stop followed (so at most twice as many answered ahead)


def reads_to_answer_ahead(asked: Iterable[bytes], last_pc: int, pc: int) -> list[bytes]:
    """The reads a client will likely make at a stop at `pc`, from those it made (`asked`,
    request payloads) at its last stop at `last_pc`. gdb reads the instruction words at and
    after PC and the start of the function (its prologue analysis) at every stop, a `display`ed
    variable, the thread list: the same requests, or the same ones relative to PC. Guessing
    wrong costs a read of memory the client read a stop ago; no read here can touch a device
    (m reads RAM and ROM only)."""
    out: dict[bytes, None] = {}
    for p in asked:
        out[p] = None
        if p[:1] == b"m" and pc != last_pc:
            try:
                addr, length = _addr_len(p[1:])
            except PacketError:
                continue
            if abs(addr - last_pc) <= NEAR_PC:
                out[b"m%x,%x" % ((addr - last_pc + pc) & (1 << 64) - 1, length)] = None
    return list(out)


def _read_only(p: bytes) -> bool:
    first = p[:1]
    if first in READ_ONLY_PACKETS:
        return True
    return first in b"qv" and first != b"" and _NAME_END.split(p, 1)[0] in READ_ONLY_NAMED


# The dispatch table: a packet's first byte -> its handler. q, Q and v packets are named.
PACKETS: dict[bytes, Handler] = {
    b"?": GdbSession._stop_status,
    b"g": GdbSession._read_all_registers,
    b"G": GdbSession._write_all_registers,
    b"p": GdbSession._read_register,
    b"P": GdbSession._write_register,
    b"m": GdbSession._read_memory,
    b"M": GdbSession._write_memory,
    b"X": GdbSession._write_memory_binary,
    b"c": GdbSession._resume_legacy,
    b"C": GdbSession._resume_legacy,
    b"s": GdbSession._resume_legacy,
    b"S": GdbSession._resume_legacy,
    b"b": GdbSession._reverse,
    b"Z": GdbSession._breakpoint_packet,
    b"z": GdbSession._breakpoint_packet,
    b"H": GdbSession._select_thread,
    b"T": GdbSession._thread_alive,
    b"D": GdbSession._detach,
    b"k": GdbSession._kill,
    b"q": GdbSession._named,
    b"Q": GdbSession._named,
    b"v": GdbSession._named,
}

# q, Q and v packets by name (up to the first ':', ';' or ',').
NAMED_PACKETS: dict[bytes, Handler] = {
    b"qSupported": GdbSession._q_supported,
    b"QStartNoAckMode": GdbSession._q_start_no_ack_mode,
    b"QEnableErrorStrings": GdbSession._q_enable_error_strings,
    b"qXfer": GdbSession._q_xfer,
    b"qMemoryRegionInfo": GdbSession._memory_region_info,
    b"qfThreadInfo": GdbSession._thread_info_first,
    b"qsThreadInfo": GdbSession._thread_info_next,
    b"qC": GdbSession._current_thread,
    b"qThreadExtraInfo": GdbSession._thread_extra_info,
    b"qAttached": GdbSession._q_attached,
    b"qqemu.PhyMemMode": GdbSession._q_phy_mem_mode,
    b"Qqemu.PhyMemMode": GdbSession._set_phy_mem_mode,
    b"qRcmd": GdbSession._monitor,
    b"vCont?": GdbSession._v_cont_query,
    b"vCont": GdbSession._v_cont,
    b"vKill": GdbSession._v_kill,
}

# qXfer objects we read: object -> (session, annex) -> the whole document.
XFER_OBJECTS: dict[bytes, Callable[[GdbSession, bytes], bytes]] = {
    b"features": GdbSession._features_document,
    b"memory-map": GdbSession._memory_map_document,
    b"threads": GdbSession._threads_document,
}

Z_WATCH_KINDS = {2: WatchKind.WRITE, 3: WatchKind.READ, 4: WatchKind.ACCESS}
