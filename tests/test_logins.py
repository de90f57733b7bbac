"""The login throttle: attempts in flight count, so parallel guesses are spaced like sequential
ones; and wrong passwords never slow a token or certificate login. `Throttle` alone with a
clock of our own, then over real sockets against a running server."""
from __future__ import annotations

import asyncio
import base64
import json
import smtplib
import threading
import time

import pytest
from sqlalchemy import func, select

from mailserver.logins import Throttle, ThrottleBusy
from store.schema import audit
from tests.imap_client import GP, RawImap, xoauth2, token
from tests.test_imap import app_password
from tests.test_smtp import connect


class Fast(Throttle):
    """The real throttle at 1/25 of its delays (the same ratios), so a test sees it in a second."""
    BASE_DELAY = 0.02
    MAX_DELAY = 0.64


async def attempt(throttle: Throttle, keys: tuple[str, ...], *, fail: bool, log: list, check: float = 0.005) -> None:
    """One login: admitted (or refused), checked for `check` s, released; `log` gets
    (start, "checked") or (refusal time, "refused"), times from the first call."""
    try:
        await throttle.admit(*keys)
    except ThrottleBusy:
        log.append((time.monotonic(), "refused"))
        return
    log.append((time.monotonic(), "checked"))
    try:
        await asyncio.sleep(check)
    finally:
        throttle.release(*keys, failed=fail)


async def test_a_burst_of_correct_logins_is_not_delayed():
    """A hospital behind one NAT address: 30 logins at once, LIMIT checked at a time, each
    starting as soon as one ends (the reservations of the previous design made the fourth
    wait 0.5 s, the fifth 1.5 s, ... and refused the rest)."""
    throttle, log = Throttle(), []
    started = time.monotonic()
    await asyncio.gather(*(attempt(throttle, ("address:nat", f"account:{n}"), fail=False, log=log) for n in range(30)))
    elapsed = time.monotonic() - started
    assert [outcome for _, outcome in log] == ["checked"] * 30
    assert elapsed < 30 / Throttle.LIMIT * 0.005 + 0.1, elapsed  # queued behind the checks, nothing more
    assert sorted(t for t, _ in log)[Throttle.LIMIT] - started >= 0.005  # no more than LIMIT at once


async def test_parallel_failures_are_spaced_like_sequential_ones():
    """20 guesses at once: LIMIT checked at once, then one at a time, each waiting twice as long
    as the previous; those that would wait past MAX_DELAY are refused unchecked at once."""
    throttle, log = Fast(), []
    started = time.monotonic()
    keys = ("address:a", "account:x")
    guesses = asyncio.gather(*(attempt(throttle, keys, fail=True, log=log) for _ in range(20)))
    await asyncio.sleep(0.1)
    assert [outcome for _, outcome in log].count("refused") == 12  # 4 + 4 will be checked, 12 refused at once
    assert not await admitted(throttle, "address:b", "account:x")  # the account's queue is full, from anywhere
    assert await admitted(throttle, "address:c", "account:y")  # another account, another address: untouched
    await guesses
    checks = [t - started for t, outcome in log if outcome == "checked"]
    assert len(checks) == 8
    gaps = [b - a for a, b in zip(checks[3:], checks[4:])]  # after the 4 free ones: 1, 2, 4, 8 x 0.04 s
    steps = [0.04, 0.08, 0.16, 0.32]
    assert all(step <= gap < step + 0.1 for gap, step in zip(gaps, steps)), gaps  # late only if the machine is busy
    assert checks[-1] < 0.64 * 19 / 16  # the real throttle: 8 checks in 19 s


async def admitted(throttle: Throttle, *keys: str) -> bool:
    try:
        await asyncio.wait_for(throttle.admit(*keys), 0.01)
    except (ThrottleBusy, asyncio.TimeoutError):
        return False
    throttle.release(*keys, failed=False)
    return True


async def test_sequential_failures_then_a_success():
    throttle, log = Fast(), []
    for _ in range(6):
        await attempt(throttle, ("k",), fail=True, log=log, check=0)
    gaps = [b[0] - a[0] for a, b in zip(log, log[1:])]
    assert all(step <= gap < step + 0.05 for gap, step in zip(gaps, [0, 0, 0.02, 0.04, 0.08])), gaps
    # correct logins on that key wait for the last failure's step, then free the next at once
    log.clear()
    ready = time.monotonic() + 0.16
    await asyncio.gather(*(attempt(throttle, ("k",), fail=False, log=log) for _ in range(2)))
    assert [outcome for _, outcome in log] == ["checked"] * 2
    assert ready <= log[0][0] < ready + 0.05 and log[1][0] - log[0][0] < 0.05, log
    throttle.forgive("k")
    assert await admitted(throttle, "k")


async def test_close_refuses_the_attempts_waiting_at_once():
    """Shutdown: attempts waiting out a delay or for a place are refused now (they held the
    shutdown up to MAX_DELAY each, 50 s of the test suite's teardowns), those in check finish."""
    throttle, log = Throttle(), []  # the real delays: the waits would last seconds
    keys = ("address:a", "account:x")
    for _ in range(Throttle.FREE):
        await attempt(throttle, keys, fail=True, log=log, check=0)
    log.clear()
    guesses = asyncio.gather(*(attempt(throttle, keys, fail=True, log=log) for _ in range(3)))
    await asyncio.sleep(0.05)
    assert log == []  # the first waits out BASE_DELAY, the others for it
    started = time.monotonic()
    throttle.close()
    await guesses
    assert [outcome for _, outcome in log] == ["refused"] * 3 and time.monotonic() - started < 0.05
    assert not await admitted(throttle, "address:b", "account:y")  # and nothing new starts


async def test_failures_are_forgotten():
    class Forgetful(Fast):
        FORGET = 0.1
    throttle, log = Forgetful(), []
    for _ in range(5):
        await attempt(throttle, ("k",), fail=True, log=log, check=0)
    await asyncio.sleep(0.1)
    log.clear()
    await asyncio.gather(*(attempt(throttle, ("k",), fail=False, log=log) for _ in range(4)))
    assert log[-1][0] - log[0][0] < 0.005  # LIMIT at once again


async def test_the_queue_is_bounded_and_a_client_that_leaves_frees_its_place():
    class Short(Throttle):
        MAX_WAITING = 3
    throttle = Short()
    for _ in range(Short.LIMIT):
        await throttle.admit("k")  # in flight
    waiting = [asyncio.create_task(throttle.admit("k")) for _ in range(3)]
    await asyncio.sleep(0.01)
    assert not await admitted(throttle, "k")  # a fourth waiting: refused
    waiting[0].cancel()  # that client left
    await asyncio.sleep(0.01)
    late = asyncio.create_task(throttle.admit("k"))
    await asyncio.sleep(0.01)
    assert not late.done()  # waiting, not refused
    for _ in range(3):
        throttle.release("k", failed=False)  # three successes: three waiters start at once
    await asyncio.sleep(0)
    await asyncio.wait_for(asyncio.gather(*waiting[1:], late), 0.01)


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
    failures was recorded. Now 4 are checked at once, the fifth 1 s after they failed, then 2,
    4, 8 s later (8 checks in 19 s); the 12 that would wait past 16 s are refused at once."""
    results: list = []
    threads = [threading.Thread(target=wrong_password, args=(server, results), daemon=True) for _ in range(20)]
    for thread in threads:
        thread.start()
    time.sleep(1.2)
    checked = password_checks(server)
    refused = sum(isinstance(r, bytes) and b"[UNAVAILABLE]" in r for r in results)
    assert 4 <= checked <= 5 and refused == 12, (checked, results)
    print(f"\n20 parallel wrong passwords: {checked} checked after 1.2 s, {refused} refused unchecked")


def correct_login(server, password: str, protocol: str, results: list) -> None:
    started = time.monotonic()
    try:
        if protocol == "imap":
            client = RawImap(server)
            tag, lines = client.command(f"LOGIN {GP} {password}")
            ok = lines[-1].startswith(f"{tag} OK".encode())
            client.close()
        else:
            smtp = connect(server)
            ok = smtp.login(GP, password)[0] == 235
            smtp.close()
    except (ConnectionError, OSError, smtplib.SMTPException) as exc:
        ok = exc
    results.append((ok, time.monotonic() - started))


@pytest.mark.parametrize("protocol", ["imap", "smtp"])
def test_parallel_correct_logins_from_one_address_all_succeed(server, capsys, protocol):
    """imaptest's ten clients logging in again and again from 127.0.0.1 got 2,740 refusals, and
    a hospital behind one NAT address would too: a success must never wait for failures to come."""
    password = app_password(server, capsys)
    results: list = []
    threads = [threading.Thread(target=correct_login, args=(server, password, protocol, results), daemon=True)
               for _ in range(30)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    elapsed = time.monotonic() - started
    assert [ok for ok, _ in results] == [True] * 30, results
    print(f"\n30 parallel {protocol} logins from one address: all in {elapsed:.2f} s, "
          f"slowest {max(t for _, t in results):.2f} s")
    assert elapsed < 10, elapsed  # the reservations made the 30th wait past 16 s (refused)


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
