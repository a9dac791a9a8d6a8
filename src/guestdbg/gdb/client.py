"""A minimal GDB remote-protocol client: for scripts, soak tests and benchmarks.

Blocking sockets, one request at a time, framing by the same sans-IO core the stub uses.
"""

from __future__ import annotations

import socket
import time

from guestdbg.gdb import rsp


class RspClient:
    def __init__(self, sock: socket.socket, *, timeout: float = 10.0):
        self.sock = sock
        self.sock.settimeout(timeout)
        self.conn = rsp.RspConnection(packet_size=1 << 20)

    @classmethod
    def connect(cls, address: str | tuple[str, int], *, timeout: float = 10.0, retry_for: float = 5.0) -> RspClient:
        """`address` is a unix socket path or a (host, port) pair. Retries while the stub starts."""
        deadline = time.monotonic() + retry_for
        while True:
            family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.connect(address)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        if family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock, timeout=timeout)

    def close(self) -> None:
        self.sock.close()

    def send(self, payload: bytes) -> None:
        self.conn.send_packet(payload)
        self.sock.sendall(self.conn.data_to_send())

    def interrupt(self) -> None:
        self.sock.sendall(b"\x03")

    def receive(self) -> bytes:
        """The next packet's payload (console `O` packets included)."""
        while True:
            event = self.conn.next_event()
            self._send_acks()
            if isinstance(event, rsp.Packet):
                return event.payload
            if isinstance(event, rsp.Closed):
                raise ConnectionError("the stub closed the connection")
            if event is rsp.NEED_DATA:
                self.conn.receive_data(self.sock.recv(1 << 16))

    def _send_acks(self) -> None:
        pending = self.conn.data_to_send()
        if pending:
            try:
                self.sock.sendall(pending)
            except OSError:
                pass  # the stub may close right after its last packet (W, X)

    def request(self, payload: bytes) -> bytes:
        """Send a packet and return its reply, skipping console output packets."""
        self.send(payload)
        while True:
            reply = self.receive()
            if not (reply.startswith(b"O") and reply != b"OK"):
                return reply

    def start_no_ack(self) -> bool:
        if self.request(b"QStartNoAckMode") == b"OK":
            self.conn.start_no_ack()
            return True
        return False
