"""What one IMAP client may make the server do, over real sockets: how deep a SEARCH nests,
how long a mailbox name is, how much a client holds before login, how long it may stay
without logging in, how many refusals one session earns, how many connections one address
and everyone together hold."""
from __future__ import annotations

import ssl
import time

import pytest
from sqlalchemy import select

from certs import pki
from store.schema import audit
from tests.imap_client import RawImap


def test_search_nesting_is_refused_with_bad_not_a_recursion_error(server):
    """`SEARCH NOT NOT … ALL` 2,000 deep hit Python's recursion limit (the session answered
    nothing sensible); the depth is now counted and capped."""
    client = RawImap(server)
    client.login_token(server)
    client.ok("SELECT INBOX")
    for key in ("NOT " * 2000 + "ALL", "OR ALL " * 2000 + "ALL", "NOT " * 70 + "ALL"):
        tag, lines = client.command(f"SEARCH {key}")
        assert lines[-1].startswith(f"{tag} BAD".encode()) and b"nest" in lines[-1], lines[-1][:200]
    client.ok("SEARCH " + "NOT " * 30 + "ALL")  # moderate nesting still works
    client.ok("NOOP")  # and the session goes on
    client.close()


@pytest.mark.parametrize("name", ["a" * 256, "/".join(["b" * 200] * 6), "x" * 60_000])
def test_mailbox_names_are_bounded(server, name):
    """60,000-character folder names were created; now 255 per level and 1,024 in all."""
    client = RawImap(server)
    client.login_token(server)
    tag, lines = client.command("CREATE \x00", name.encode())
    assert lines[-1].startswith(f"{tag} NO [LIMIT]".encode()), lines[-1][:200]
    listed = client.ok('LIST "" "*"')
    assert not any(name[:100].encode() in line for line in listed)
    client.ok("CREATE " + "/".join(["c" * 255] * 4))  # at the limits: accepted
    client.close()


DEADLINE = 2
REFUSALS = 6


@pytest.fixture
def limited(monkeypatch):
    """Small limits for the server the test starts (list this fixture before `server`)."""
    monkeypatch.setenv("MSANTE_LIMITS__LOGIN_DEADLINE", str(DEADLINE))
    monkeypatch.setenv("MSANTE_LIMITS__IMAP_REFUSALS", str(REFUSALS))


def until_closed(client: RawImap) -> list[bytes]:
    lines = []
    try:
        while True:
            lines.append(client.line())
    except (ConnectionError, OSError):
        return lines


@pytest.mark.parametrize("listener", ["imap", "imaps"])
def test_no_login_within_the_deadline_gets_bye(limited, server, listener):
    """A client that keeps the session busy (a NOOP every half second) without ever logging in
    held its connection for as long as it liked."""
    client = RawImap(server, listener=listener)
    started = time.monotonic()
    lines = []
    try:
        while time.monotonic() - started < DEADLINE + 3:
            client.send(b"n NOOP\r\n")
            lines.append(client.line())
            time.sleep(0.5)
    except (ConnectionError, OSError):
        pass
    elapsed = time.monotonic() - started
    assert any(line.startswith(b"* BYE") and b"login" in line for line in lines), lines[-3:]
    assert DEADLINE - 0.5 < elapsed < DEADLINE + 2.5, elapsed
    client.close()
    rows = server.rows(select(audit).where(audit.c.action == "imap.disconnect"))
    assert rows and rows[-1]["actor"] == "-" and "deadline" in rows[-1]["detail"], rows


def test_a_silent_client_inside_authenticate_gets_bye_at_the_deadline(limited, server):
    client = RawImap(server)
    client.send(b"a AUTHENTICATE PLAIN\r\n")
    assert client.line().startswith(b"+")
    started = time.monotonic()
    lines = until_closed(client)
    assert time.monotonic() - started < DEADLINE + 1
    assert any(line.startswith(b"* BYE") for line in lines), lines


def test_a_logged_in_session_outlives_the_deadline(limited, server):
    client = RawImap(server)
    client.login_token(server)
    time.sleep(DEADLINE + 1)
    client.ok("NOOP")
    client.close()


@pytest.mark.parametrize("logged_in", [False, True])
def test_refusals_per_session_are_capped(limited, server, logged_in):
    """10,000 refused commands in one session made as many audit rows (each refused SELECT of
    a box one may not use is audited); now REFUSALS of them end the session, audited once."""
    client = RawImap(server)
    if logged_in:
        client.login_token(server)
    command = b"SELECT Shared/nobody@msante.test/INBOX" if logged_in else b"FOO"
    client.send(b"".join(b"x%d %s\r\n" % (i, command) for i in range(REFUSALS + 50)))
    lines = until_closed(client)
    client.close()
    assert [line.split()[1] for line in lines] == [b"NO" if logged_in else b"BAD"] * REFUSALS + [b"BYE"], lines
    closed = server.rows(select(audit).where(audit.c.action == "imap.disconnect"))
    assert len(closed) == 1 and "too many refusals" in closed[0]["detail"]
    if logged_in:
        refused = server.rows(select(audit).where(audit.c.action == "imap.select", audit.c.outcome == "denied"))
        assert len(refused) == REFUSALS


@pytest.mark.parametrize("listener", ["imap", "imaps"])
def test_untrusted_cps_certificate_is_audited(server, tmp_path, listener):
    """A CPS certificate of a CA we do not trust fails the TLS handshake: that login attempt
    left no row."""
    rogue = pki.create_ca(tmp_path / "rogue")
    pki.issue_cps(rogue, idnat="810001045367", given_name="Jean", family_name="Dupont", out_dir=tmp_path,
                  stem="rogue")
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        client = RawImap(server, listener=listener, cert=(tmp_path / "rogue.crt", tmp_path / "rogue.key"))
        if listener == "imap":
            client.starttls()
        client.ok("NOOP")
    deadline = time.monotonic() + 5
    while not (rows := server.rows(select(audit).where(audit.c.action == "auth.certificate"))):
        assert time.monotonic() < deadline, "no audit row"
        time.sleep(0.1)
    assert rows[-1]["outcome"] == "failed" and rows[-1]["source"] == "127.0.0.1"
    assert "certificate" in rows[-1]["detail"] and listener in rows[-1]["detail"]
