"""Fuzz the GDB stub's protocol core and session with a real VM behind them.

    .venv/bin/python -m bench.fuzz_stub -runs=200000                # coverage-guided (atheris),
                                                                    # from seed packets unless a corpus dir is given
    .venv/bin/python -m bench.fuzz_stub --random 20000              # plain random, no atheris

Each input is a byte stream a client could send. It goes through `rsp.RspConnection` into
`GdbSession`; resume requests run on the vCPU at once (continue with a 20 ms budget). Checked
after every packet:
  * the reply is a NAK, an `Exx`, the empty reply, `OK`, or what that packet legitimately returns;
  * nothing raises out of the protocol core or the session;
  * a packet answered with `Exx` or the empty reply changed nothing: registers, guest RAM,
    breakpoints and watchpoints are as before.
tests/integration/test_fuzz_stub.py runs a bounded Hypothesis version of the same check in CI.
"""

from __future__ import annotations

import hashlib
import re
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

from guestdbg.board.virt import VirtMachine, VirtConfig  # noqa: E402
from guestdbg.debug.manager import GuestDebugManager  # noqa: E402
from guestdbg.gdb import rsp  # noqa: E402
from guestdbg.gdb.session import Detach, GdbSession, Kill, Reply, Resume  # noqa: E402

RAM = 4 << 20
ERROR = re.compile(rb"^E[0-9a-f]{2}$")


class StubUnderTest:
    """The stub without sockets: bytes in, replies out, resumes run synchronously."""

    def __init__(self, elf: Path):
        self.output = bytearray()
        self.machine = VirtMachine(VirtConfig(ram_size=RAM), console=self.output.extend)
        self.machine.load_elf(elf)
        self.manager = GuestDebugManager(self.machine)
        self.new_connection()

    def new_connection(self) -> None:
        self.conn = rsp.RspConnection(packet_size=rsp.PACKET_SIZE)
        self.session = GdbSession(self.manager)

    def state(self):
        vcpu = self.vcpu
        regs = tuple(vcpu.get_one_reg(r) for r in vcpu.get_reg_list())
        ram = hashlib.sha256(self.machine.vm.read_phys(0x4000_0000, RAM)).digest()
        debug = (tuple(sorted(self.manager._sw_va)), tuple(sorted(self.manager._hw_bp.items())),
                 tuple((w.addr, w.length, w.kind) for w in self.manager.watches))
        return regs, ram, debug

    @property
    def vcpu(self):
        return self.machine.vcpu

    def feed(self, data: bytes, *, check_state: bool = True) -> list[bytes]:
        """Feed client bytes; return the payloads sent back. Raises AssertionError on a broken rule.
        `exchanges` gets (packet, reply) for every packet acted on (a resume's reply is its stop
        reply), and `sent` every byte sent back (acks and NAKs included)."""
        replies = []
        self.exchanges: list[tuple[bytes, bytes]] = []
        self.conn.receive_data(data)
        while True:
            event = self.conn.next_event()
            if event is rsp.NEED_DATA or isinstance(event, rsp.Closed):
                break
            if not isinstance(event, rsp.Packet):
                continue
            before = self.state() if check_state else None
            action = self.session.handle(event.payload)
            if isinstance(action, Reply):
                replies.append(action.payload)
                self.exchanges.append((event.payload, action.payload))
                if ERROR.match(action.payload) or action.payload == b"":
                    if check_state and not event.payload.startswith(b"qRcmd"):
                        assert self.state() == before, f"rejected packet {event.payload[:60]!r} changed the VM"
            elif isinstance(action, Resume):
                self.conn.resumed()
                stop = self._resume(action.step)
                reply = self.session.stopped(stop)
                self.exchanges.append((event.payload, reply))
                self.conn.send_stop_reply(reply)
            elif isinstance(action, Detach):
                self.exchanges.append((event.payload, None))
                self.manager.detach()
                self.new_connection()
            elif isinstance(action, Kill):
                self.exchanges.append((event.payload, None))
                self.new_connection()
        self.sent = self.conn.data_to_send()
        return replies

    def _resume(self, step: bool):
        if step:
            return self.manager.step()
        timer = threading.Timer(0.02, self.manager.interrupt)
        timer.start()
        try:
            return self.manager.cont()
        finally:
            timer.cancel()


# Well-framed packets to start atheris from: random bytes alone rarely pass the checksum, so
# without these the fuzzer mostly exercises the framer's rejection path.
SEED_PAYLOADS = [b"?", b"g", b"m40100000,40", b"M40101000,2:abcd", b"X40101000,1:\x7d\x03", b"Z0,40100080,4",
                 b"z0,40100080,4", b"Z2,40101000,3", b"vCont;s:1", b"vCont?", b"p20", b"P0=0100000000000000",
                 b"qXfer:features:read:target.xml:0,100", b"qXfer:memory-map:read::0,100",
                 b"qSupported:swbreak+;hwbreak+", b"QStartNoAckMode", b"qRcmd,696e666f20736c6f7473"]


def seed_corpus(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for i, payload in enumerate(SEED_PAYLOADS):
        (directory / f"seed{i:02d}").write_bytes(rsp.frame(payload))
    return directory


def _guest() -> Path:
    from tests.helpers.qemu_runner import build_guests
    return build_guests(Path(tempfile.mkdtemp()) / "guests") / "bp_targets.elf"


def main() -> int:
    argv = sys.argv[1:]
    elf = _guest()
    stub = StubUnderTest(elf)
    if argv[:1] == ["--random"]:
        import random
        rng = random.Random(1)
        runs = int(argv[1]) if len(argv) > 1 else 10000
        alphabet = b"$#}*+-\x03?gGpPmMXcsCSZzvqQHTDk0123456789abcdef,:;="
        for i in range(runs):
            n = rng.randrange(1, 80)
            data = bytes(rng.choice(alphabet) if rng.random() < 0.9 else rng.randrange(256) for _ in range(n))
            if rng.random() < 0.5:  # a well-framed packet around random payload
                data = rsp.frame(data)
            stub.feed(data)
        print(f"fuzz_stub: {runs} random inputs, no rule broken")
        return 0
    import atheris

    def one_input(data: bytes) -> None:
        stub.new_connection()  # each input is one client's whole byte stream; the VM carries on
        if data:
            stub.feed(data)

    argv = list(sys.argv)
    if not any(not a.startswith("-") for a in argv[1:]):  # no corpus directory given: start from the seeds
        argv.append(str(seed_corpus(Path(tempfile.mkdtemp()) / "corpus")))
    atheris.instrument_all()  # coverage of everything loaded: guestdbg's protocol core and session
    atheris.Setup(argv, one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
