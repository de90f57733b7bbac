"""A line-level IMAP client for tests that look at exact responses (untagged data, response
codes, ordering), where imaplib hides or refuses what we need to check. Real sockets, real TLS."""
from __future__ import annotations

import base64
import itertools
import re
import socket

from certs.tokens import DevIssuer

GP = "jean.dupont@msante.test"
GP_IDNAT = "810001045367"
URGENTIST = "claire.leroy@msante.test"  # delegate of the emergency department's box
URGENTIST_IDNAT = "810002000015"
URGENCES = "urgences.ch-saint-paul@msante.test"
NURSE = "sophie.hoarau@msante.test"
NURSE_IDNAT = "810002000023"

_LITERAL = re.compile(rb"\{(\d+)\}\r\n$")


def token(server, idnat: str = GP_IDNAT, **kwargs) -> str:
    return DevIssuer.load(server.data_dir, server.settings.public_url).issue_access_token(
        idnat=idnat, given_name="Test", family_name="Test", **kwargs)


def xoauth2(user: str, bearer: str) -> str:
    return base64.b64encode(f"user={user}\x01auth=Bearer {bearer}\x01\x01".encode()).decode()


class RawImap:
    def __init__(self, server, *, listener: str = "imaps", cert: tuple | None = None, timeout: float = 15,
                 source: str | None = None) -> None:
        host, port = server.listeners[listener].rsplit(":", 1)
        self.context = server.client_tls()
        if cert:
            self.context.load_cert_chain(*cert)
        sock = socket.create_connection((host, int(port)), timeout=timeout,
                                        source_address=(source, 0) if source else None)
        self.sock = self.context.wrap_socket(sock, server_hostname="localhost") if listener == "imaps" else sock
        self.buffer = b""
        self.tags = (f"t{n}" for n in itertools.count(1))
        self.greeting = self.line()

    def starttls(self) -> None:
        tag, lines = self.command("STARTTLS")
        assert lines[-1].startswith(f"{tag} OK".encode()), lines
        self.sock = self.context.wrap_socket(self.sock, server_hostname="localhost")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        """One response line, with any literal it announces folded in."""
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"server closed the connection; pending {self.buffer!r}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        line += b"\r\n"
        match = _LITERAL.search(line)
        if match:
            size = int(match[1])
            while len(self.buffer) < size:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed inside a literal")
                self.buffer += chunk
            line += self.buffer[:size]
            self.buffer = self.buffer[size:]
            return line + self.line()
        return line

    def command(self, text: str, *literals: bytes) -> tuple[str, list[bytes]]:
        """Send a tagged command (synchronising literals follow a "{N}" and a continuation) and
        return (tag, every line up to and including the tagged one)."""
        tag = next(self.tags)
        pieces = text.split("\x00")  # "\x00" marks where each literal goes
        self.send(f"{tag} {pieces[0]}".encode())
        lines: list[bytes] = []
        for literal, rest in zip(literals, pieces[1:]):
            self.send(b"{%d}\r\n" % len(literal))
            reply = self.line()
            if not reply.startswith(b"+"):
                return tag, [reply]
            self.send(literal + rest.encode())
        self.send(b"\r\n")
        while True:
            line = self.line()
            lines.append(line)
            if line.startswith(f"{tag} ".encode()):
                return tag, lines

    def ok(self, text: str, *literals: bytes) -> list[bytes]:
        tag, lines = self.command(text, *literals)
        assert lines[-1].startswith(f"{tag} OK".encode()), lines
        return lines[:-1]

    def login_token(self, server, address: str = GP, idnat: str = GP_IDNAT) -> None:
        self.ok(f"AUTHENTICATE XOAUTH2 {xoauth2(address, token(server, idnat))}")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def untagged(lines: list[bytes], kind: bytes) -> list[bytes]:
    """The untagged lines of one kind ("EXISTS", "FETCH", "LIST"...)."""
    return [ln for ln in lines if ln.startswith(b"* ") and kind in ln.split(b"(")[0].split()]
