"""STARTTLS on both event loops the server runs on: asyncio's (the other tests) and uvloop's,
which `msante serve` uses when installed, under aiosmtpd's own TLS layer. RFC 3207 over a raw
socket: what the client pipelined in clear after STARTTLS is dropped (§4.2), a command sent at
once after the handshake is answered, and no TLS starts inside TLS (§4)."""
from __future__ import annotations

import asyncio
import socket

import pytest

from tests.test_smtp import GP, connect, login, message


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_factory(request):
    """Skipped here, in the test's thread, when uvloop is missing: not in the server's thread."""
    if request.param == "asyncio":
        return asyncio.new_event_loop
    return pytest.importorskip("uvloop", reason="uvloop is msante[fast], not installed here").new_event_loop


def lines(sock, until: bytes) -> list[bytes]:
    """Reply lines up to the last one of a reply starting with `until` (code and space)."""
    got = b""
    while not any(line.startswith(until) for line in got.split(b"\r\n")):
        chunk = sock.recv(4096)
        assert chunk, f"connection closed; read {got!r}"
        got += chunk
    return got.split(b"\r\n")[:-1]


def test_cleartext_pipelined_after_starttls_is_dropped_and_the_first_tls_command_answered(server):
    host, port = server.listeners["submission"].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as plain:
        assert lines(plain, b"220 ")[0].startswith(b"220 ")
        plain.sendall(b"EHLO client.test\r\n")
        lines(plain, b"250 ")
        plain.sendall(b"STARTTLS\r\nMAIL FROM:<injected@attacker.test>\r\n")  # one segment
        assert lines(plain, b"220 ") == [b"220 Ready to start TLS"]  # no enhanced code on 220 (RFC 2034 §3)
        with server.client_tls().wrap_socket(plain, server_hostname="localhost") as tls:
            tls.sendall(b"EHLO client.test\r\nMAIL FROM:<x@msante.test>\r\n")
            ehlo = lines(tls, b"250 ")
            assert ehlo[0].startswith(b"250-") and b"250-STARTTLS" not in ehlo, ehlo
            assert any(line.startswith(b"250-AUTH") for line in ehlo), ehlo  # AUTH only once in TLS
            # the injected MAIL was never seen: this one is refused for want of AUTH, not as a second MAIL
            assert lines(tls, b"530 ")[0].startswith(b"530 "), "MAIL before AUTH"


def test_a_session_after_starttls_sends_mail(server):
    client = login(server)
    assert client.sendmail(GP, [GP], message(GP, [GP], "starttls")) == {}
    client.quit()


def test_starttls_inside_tls_is_refused_and_the_session_goes_on(server):
    """RFC 3207 §4: no TLS inside TLS (Postfix answers the same)."""
    client = connect(server)
    assert client.docmd("STARTTLS") == (554, b"5.5.1 Error: TLS already active")
    assert client.noop()[0] == 250
    client.quit()
