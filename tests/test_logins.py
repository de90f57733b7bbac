"""The login throttle: attempts in flight count, so parallel guesses are spaced like sequential
ones; and wrong passwords never slow a token or certificate login. `Throttle` alone with a
clock of our own, then over real sockets against a running server."""
from __future__ import annotations

import base64
import json
import threading
import time

import pytest
from sqlalchemy import func, select

from mailserver.logins import Throttle
from store.schema import audit
from tests.imap_client import GP, RawImap, xoauth2, token
from tests.test_smtp import connect


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_parallel_attempts_are_spaced_like_sequential_ones():
    clock = Clock()
    throttle = Throttle(clock)
    waits = [throttle.reserve("address:a", "account:x") for _ in range(8)]  # all at once, none finished
    assert waits == [0, 0, 0, 0.5, 1.5, 3.5, 7.5, 15.5]
    for _ in waits:
        throttle.release("address:a", "account:x", failed=True)
    assert throttle.reserve("address:a", "account:x") is None  # would wait 31.5 s: refused unchecked
    for _ in waits:
        throttle.release("address:a", "account:x", failed=True)
    clock.now += 0.1
    assert throttle.reserve("address:b", "account:x") is None  # the account's queue is full, from anywhere
    assert throttle.reserve("address:c", "account:y") == 0  # another account, another address: untouched
    clock.now += 31.5
    assert throttle.reserve("address:b", "account:x") == pytest.approx(0.0)  # the queue has drained


def test_sequential_failures_wait_as_before():
    clock = Clock()
    throttle = Throttle(clock)
    waits = []
    for _ in range(6):
        wait = throttle.reserve("k")
        waits.append(wait)
        clock.now += wait + 0.01
        throttle.release("k", failed=True)
    assert waits == pytest.approx([0, 0, 0, 0.49, 0.99, 1.99], abs=0.011)
    clock.now += Throttle.FORGET
    assert throttle.reserve("k") == 0  # forgotten


def test_a_client_that_leaves_is_no_longer_in_flight():
    clock = Clock()
    throttle = Throttle(clock)
    for _ in range(10):
        throttle.reserve("k")
        throttle.release("k", failed=False)  # left before its check, or succeeded
    clock.now += 1
    assert throttle.reserve("k") == 0


def wrong_password(server, results: list, source: str = "127.0.0.1") -> None:
    try:
        client = RawImap(server, source=source)
        tag, lines = client.command(f"LOGIN {GP} wrong-password-{len(results)}")
        results.append(lines[-1])
        client.close()
    except (ConnectionError, OSError) as exc:
        results.append(exc)


def password_checks(server) -> int:
    return server.scalar(select(func.count()).select_from(audit).where(
        audit.c.action == "auth.password", audit.c.outcome == "failed"))


def test_parallel_wrong_passwords_get_no_more_checks(server):
    """20 parallel connections got 40 guesses in 19 s: the delay was read before any of their
    failures was recorded. Now the fourth waits 0.5 s, the fifth 1.5 s, and so on."""
    results: list = []
    threads = [threading.Thread(target=wrong_password, args=(server, results), daemon=True) for _ in range(20)]
    for thread in threads:
        thread.start()
    time.sleep(1.2)
    checked = password_checks(server)
    assert 3 <= checked <= 5, checked
    print(f"\n20 parallel wrong passwords: {checked} checked after 1.2 s")


def test_wrong_passwords_do_not_slow_the_owners_token_login(server):
    """After 30 wrong passwords sent for Dr Dupont from one address, his valid token login from
    another address waited 16 s (for 15 minutes)."""
    results: list = []
    threads = [threading.Thread(target=wrong_password, args=(server, results), daemon=True) for _ in range(30)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 3
    while password_checks(server) < 30 and time.monotonic() < deadline:
        time.sleep(0.1)
    bearer = token(server)
    for source in ("127.0.0.2", "127.0.0.1"):  # elsewhere, and even from the guessing address
        client = RawImap(server, source=source)
        started = time.monotonic()
        client.ok(f"AUTHENTICATE XOAUTH2 {xoauth2(GP, bearer)}")
        elapsed = time.monotonic() - started
        client.close()
        assert elapsed < 0.5, (source, elapsed)
    password = RawImap(server, source="127.0.0.3")  # a password for that account is slowed, wherever from
    tag, lines = password.command(f"LOGIN {GP} still-wrong")
    password.close()
    assert b" NO " in lines[-1]  # slowed, or refused unchecked while the queue is full ([UNAVAILABLE])


def test_hostile_user_names_are_refused_and_audited_escaped(server):
    """A user name with bidi controls went to the audit row as is, one with NUL to the store
    (PostgreSQL refuses NUL: an error, no row); bytes that are not UTF-8 left no row at all."""
    client = RawImap(server)
    tag, lines = client.command("LOGIN \x00 wrong-password", "jean\u202e@msante.test".encode())
    assert lines[-1].startswith(f"{tag} NO [AUTHENTICATIONFAILED]".encode()), lines
    tag, lines = client.command("LOGIN \x00 wrong-password", b"jean\xff@msante.test")
    assert lines[-1].startswith(f"{tag} BAD".encode()), lines
    tag, lines = client.command("AUTHENTICATE PLAIN " + base64.b64encode(b"\0jean\xff\0pw").decode())
    assert lines[-1].startswith(f"{tag} BAD".encode()), lines
    # NUL in a user name, with a password of the right shape (the store is asked) or a token
    tag, lines = client.command("LOGIN \x00 abcdefgh-abcdefghijklmnopqrst", b"jean\x00@msante.test")
    assert lines[-1].startswith(f"{tag} NO".encode()), lines
    tag, lines = client.command("AUTHENTICATE XOAUTH2 " + xoauth2("jean\x00@msante.test", token(server)))
    assert lines[-1].split()[1] in (b"NO", b"BAD"), lines  # the SASL reader may refuse it first
    client.ok("NOOP")
    client.close()
    smtp = connect(server)
    code, _ = smtp.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0jean\xfe\0pw").decode())
    assert code == 501
    smtp.close()
    rows = server.rows(select(audit).where(audit.c.outcome == "failed").order_by(audit.c.id))
    assert "jean\\u202e@msante.test" in [r["actor"] for r in rows if r["action"] == "auth.password"]
    assert '"user": "jean\\\\x00@msante.test"' in [r["detail"] for r in rows if r["action"] == "login.imap"][2]
    malformed = [(r["action"], json.loads(r["detail"])["mechanism"]) for r in rows if r["action"].startswith("login.")]
    assert malformed == [("login.imap", "LOGIN"), ("login.imap", "PLAIN"), ("login.imap", "LOGIN"),
                         ("login.imap", "XOAUTH2"), ("login.smtp", "PLAIN")], malformed
