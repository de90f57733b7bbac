"""An MLLP client over TLS: what `msante hl7 send` and the tests and benchmark use to play a
hospital. One connection, messages sent one at a time, each ACK read before the next (as
interface engines do). Framing is hospital/mllp.py's, shared with the listener.
"""
from __future__ import annotations

import socket
import ssl
from pathlib import Path

from . import mllp

READ_SIZE = 65536


class Hl7Client:
    def __init__(self, host: str, port: int, context: ssl.SSLContext, *, server_hostname: str | None = None,
                 timeout: float = 30.0) -> None:
        raw = socket.create_connection((host, port), timeout=timeout)
        self.sock = context.wrap_socket(raw, server_hostname=server_hostname or host)
        self._frames = mllp.FrameReader()
        self._acks: list[bytes] = []

    def send(self, message: bytes) -> bytes:
        """Send one message, return its ACK (the bytes inside the frame)."""
        self.sock.sendall(mllp.frame(to_segments(message)))
        while not self._acks:
            data = self.sock.recv(READ_SIZE)
            if not data:
                raise ConnectionError("the server closed the connection without an ACK")
            self._acks += self._frames.feed(data)
        return self._acks.pop(0)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Hl7Client":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def to_segments(message: bytes) -> bytes:
    """Files keep one segment a line, with LF or CRLF; HL7 separates segments with CR."""
    lines = message.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    return b"\r".join(line for line in lines if line.strip()) + b"\r"


def client_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(str(cert), str(key))
    return context


def ack_code(ack: bytes) -> str:
    """MSA-1 of an ACK, and its ERR text if any, for people reading the CLI's output."""
    code, text = "", ""
    for segment in ack.split(b"\r"):
        fields = segment.decode("latin-1").split("|")
        if fields[0] == "MSA" and len(fields) > 1:
            code = fields[1]
        elif fields[0] == "ERR" and len(fields) > 8:
            text = fields[8]
    return f"{code} {text}".strip()
