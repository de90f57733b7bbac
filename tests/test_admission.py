"""Connections per address and in all, on every listener, over real sockets: refused ones read
their protocol's answer, counted ones include those still in their TLS handshake, and a
place comes back when its connection ends."""
from __future__ import annotations

import socket
import time

import pytest

PER_ADDRESS = 3
TOTAL = 8


@pytest.fixture
def capped(monkeypatch):
    """Small caps for the server the test starts (list this fixture before `server`)."""
    monkeypatch.setenv("MSANTE_LIMITS__CONNECTIONS_PER_ADDRESS", str(PER_ADDRESS))
    monkeypatch.setenv("MSANTE_LIMITS__CONNECTIONS", str(TOTAL))


def connect(server, listener: str) -> socket.socket:
    host, port = server.listeners[listener].rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    if listener in ("imaps", "submissions", "https"):
        sock = server.client_tls().wrap_socket(sock, server_hostname="localhost")
    return sock


def first_line(sock: socket.socket) -> bytes:
    data = b""
    while b"\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


GREETING = {"imap": b"* OK", "imaps": b"* OK", "submission": b"220 ", "submissions": b"220 ", "smtp": b"220 "}
REFUSAL = {"imap": b"* BYE [UNAVAILABLE]", "imaps": b"* BYE [UNAVAILABLE]", "submission": b"421 4.7.0",
           "submissions": b"421 4.7.0", "smtp": b"421 4.7.0"}


@pytest.mark.parametrize("listener", sorted(GREETING))
def test_connections_per_address_get_the_protocols_refusal(capped, server, listener):
    held = [connect(server, listener) for _ in range(PER_ADDRESS)]
    try:
        for sock in held:
            assert first_line(sock).startswith(GREETING[listener])
        refused = connect(server, listener)
        assert first_line(refused).startswith(REFUSAL[listener])
        refused.close()
        held.pop().close()  # a place comes back when a connection ends
        deadline = time.monotonic() + 5
        while True:
            again = connect(server, listener)
            line = first_line(again)
            if line.startswith(GREETING[listener]) or time.monotonic() > deadline:
                break
            again.close()
            time.sleep(0.05)
        held.append(again)
        assert line.startswith(GREETING[listener]), line
    finally:
        for sock in held:
            sock.close()


def test_https_refusal_is_503(capped, server):
    held = []
    try:
        for _ in range(PER_ADDRESS):
            held.append(connect(server, "https"))
        refused = connect(server, "https")
        answer = refused.recv(4096)
        refused.close()
        assert answer.startswith(b"HTTP/1.1 503 "), answer
    finally:
        for sock in held:
            sock.close()


def test_connections_still_in_their_tls_handshake_are_counted(capped, server):
    """A client that opens TCP connections and never starts TLS held a descriptor each,
    uncounted (the slowloris that exhausted descriptors)."""
    host, port = server.listeners["imaps"].rsplit(":", 1)
    silent = [socket.create_connection((host, int(port)), timeout=10) for _ in range(PER_ADDRESS)]
    try:
        time.sleep(0.2)
        refused = connect(server, "imaps")
        assert first_line(refused).startswith(b"* BYE [UNAVAILABLE]")
        refused.close()
    finally:
        for sock in silent:
            sock.close()


def test_all_listeners_together_are_capped(capped, server):
    """TOTAL places for every listener together, whatever the address holds on each."""
    held = []
    try:
        for listener in ("imap", "submission", "smtp"):
            for _ in range(PER_ADDRESS):
                sock = connect(server, listener)
                held.append(sock)
                if len(held) <= TOTAL:
                    assert first_line(sock).startswith(GREETING[listener])
                else:
                    assert first_line(sock).startswith(REFUSAL[listener])
        assert len(held) > TOTAL
    finally:
        for sock in held:
            sock.close()
