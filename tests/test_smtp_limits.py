"""What one SMTP session may cost the server, over real sockets: how long it may stay without
logging in however busy it keeps, and how many refusals (each one audited) it may earn."""
from __future__ import annotations

import socket
import ssl
import time

import pytest
from sqlalchemy import select

from store.schema import audit
from tests.test_smtp import GP, login

DEADLINE = 2
REFUSALS = 5


@pytest.fixture
def limited(monkeypatch):
    """Small limits for the server the test starts (list this fixture before `server`)."""
    monkeypatch.setenv("MSANTE_LIMITS__LOGIN_DEADLINE", str(DEADLINE))
    monkeypatch.setenv("MSANTE_LIMITS__SMTP_REFUSALS", str(REFUSALS))


def replies(sock: socket.socket, timeout: float) -> list[bytes]:
    """Every reply line until the server closes (or `timeout` passes)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data.splitlines()


@pytest.mark.parametrize("listener", ["submission", "submissions"])
def test_no_login_within_the_deadline_is_421(limited, server, listener):
    """A client that keeps talking (NOOP every half second) but never logs in held its
    connection as long as it liked."""
    host, port = server.listeners[listener].rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    if listener == "submissions":
        sock = server.client_tls().wrap_socket(sock, server_hostname="localhost")
    started = time.monotonic()
    lines = []
    try:
        while time.monotonic() - started < DEADLINE + 3:
            sock.sendall(b"NOOP\r\n")
            sock.settimeout(0.5)
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                continue
            if not chunk:
                break
            lines += chunk.splitlines()
            time.sleep(0.4)
    except (BrokenPipeError, ConnectionResetError, ssl.SSLEOFError):
        pass
    elapsed = time.monotonic() - started
    assert any(line.startswith(b"421 4.7.0") for line in lines), lines[-3:]
    assert DEADLINE - 0.5 < elapsed < DEADLINE + 2.5, elapsed
    sock.close()
    rows = server.rows(select(audit).where(audit.c.action == "smtp.disconnect"))
    assert rows and rows[-1]["actor"] == "-" and "deadline" in rows[-1]["detail"], rows


def test_a_logged_in_session_outlives_the_deadline(limited, server):
    client = login(server)
    time.sleep(DEADLINE + 1)
    assert client.noop()[0] == 250
    client.quit()


def test_refusals_per_session_are_capped(limited, server):
    """10,000 refused recipients in one session made 10,000 audit rows; now the session ends
    after REFUSALS of them, and the end is audited once."""
    client = login(server)
    client.mail(GP)
    client.send(b"".join(b"RCPT TO:<nobody%d@msante.test>\r\n" % i for i in range(REFUSALS + 20)))
    lines = replies(client.sock, 10)
    assert [line[:3] for line in lines] == [b"550"] * REFUSALS + [b"421"], lines
    client.close()
    refused = server.rows(select(audit).where(audit.c.action == "smtp.refuse"))
    assert len(refused) == REFUSALS
    closed = server.rows(select(audit).where(audit.c.action == "smtp.disconnect"))
    assert len(closed) == 1 and "too many refusals" in closed[0]["detail"]


def test_refusals_before_login_are_capped_too(limited, server):
    host, port = server.listeners["submission"].rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(b"EHLO x\r\n" + b"MAIL FROM:<a@b.c>\r\n" * 100)  # 530 each: STARTTLS first
    lines = [line for line in replies(sock, 10) if not line.startswith(b"2")]
    sock.close()
    assert [line[:3] for line in lines] == [b"530"] * REFUSALS + [b"421"], lines
