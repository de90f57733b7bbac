"""The per-connection state machine, driven directly with a fake clock."""
from __future__ import annotations

from dataclasses import replace

from directory.authn import Principal
from instant.frames import Auth, Close, History, Subscribe, Typing
from instant.limits import DEFAULT
from instant.session import RECHECK, Cursor, Ping, Session, Shut, TokenBucket, Verdict

GP = Principal("person", "810001045367", "Jean Dupont", "token")
WALL = 1_800_000_000.0  # time.time() at the start of each test


def opened(limits=DEFAULT, now: float = 0.0, expires_in: float = 300.0) -> Session:  # noqa: ANN001
    session = Session(limits, now)
    assert session.authenticated(GP, WALL + expires_in) is None
    return session


def test_nothing_but_auth_before_authentication():
    session = Session(DEFAULT, 0.0)
    refusal = session.admit(Subscribe(1, None), 0.0)
    assert (refusal.code, refusal.close) == ("unauthenticated", Close.UNAUTHORIZED)
    assert session.admit(Auth("t"), 0.0) is None


def test_authentication_deadline():
    session = Session(DEFAULT, 100.0)
    assert session.tick(105.0, WALL) is None
    assert session.next_wakeup(105.0, WALL) == DEFAULT.auth_timeout - 5
    assert session.tick(110.0, WALL) == Shut(Close.UNAUTHORIZED, "no authentication in time")


def test_token_expiry_and_refresh():
    session = opened(expires_in=60)
    assert session.tick(1.0, WALL + 30) is None
    assert session.next_wakeup(1.0, WALL + 30) == 19.0  # the next ping comes first
    assert session.tick(21.0, WALL + 50) == Ping(session._ping_payload)
    session.pong(session._ping_payload, 21.1)
    assert session.tick(30.0, WALL + 60).code == Close.TOKEN_EXPIRED
    refreshed = opened(expires_in=60)
    assert refreshed.authenticated(GP, WALL + 600) is None  # a fresh token, same person
    assert refreshed.tick(1.0, WALL + 60) is None


def test_one_identity_per_connection():
    session = opened()
    other = Principal("person", "810002000015", "Claire Leroy", "token")
    refusal = session.authenticated(other, WALL + 300)
    assert (refusal.code, refusal.close) == ("identity_changed", Close.UNAUTHORIZED)
    assert session.principal == GP


def test_keepalive():
    session = opened()
    ping = session.tick(DEFAULT.ping_interval, WALL)
    assert isinstance(ping, Ping) and len(ping.payload) == 4
    assert session.tick(DEFAULT.ping_interval + 1, WALL) is None  # one ping in flight at a time
    session.pong(b"????", DEFAULT.ping_interval + 2)  # not ours: ignored
    assert session.tick(DEFAULT.ping_interval + DEFAULT.ping_timeout, WALL).code == Close.INTERNAL
    answered = opened()
    ping = answered.tick(DEFAULT.ping_interval, WALL)
    answered.pong(ping.payload, DEFAULT.ping_interval + 0.5)
    assert answered.tick(DEFAULT.ping_interval + DEFAULT.ping_timeout, WALL) is None
    assert answered.next_wakeup(DEFAULT.ping_interval + 1, WALL) == DEFAULT.ping_interval - 0.5


def test_membership_recheck_only_when_following():
    limits = replace(DEFAULT, membership_recheck=5.0, ping_interval=100.0)
    session = opened(limits)
    assert session.tick(5.0, WALL) is None
    session.follow(1, 0)
    assert session.tick(10.0, WALL) is RECHECK
    assert session.tick(11.0, WALL) is None


def test_rate_limit_and_refusals_close():
    limits = replace(DEFAULT, frames_per_second=1.0, frame_burst=3, refusals_before_close=3)
    session = opened(limits)
    assert [session.admit(History(1, None, None, 5), 0.0) for _ in range(3)] == [None] * 3
    first = session.admit(History(1, None, None, 5), 0.0)
    assert (first.code, first.close, first.retry_after) == ("rate_limited", None, 1.0)
    assert session.admit(History(1, None, None, 5), 1.0) is None  # a token came back after a second
    assert session.admit(History(1, None, None, 5), 1.0).close is None
    assert session.malformed() is None
    assert session.admit(History(1, None, None, 5), 1.0).close == Close.POLICY  # three refusals in a row


def test_token_bucket_refills_up_to_its_burst():
    bucket = TokenBucket(2.0, 4, now=0.0)
    assert [bucket.take(0.0) for _ in range(5)] == [0, 0, 0, 0, 0.5]
    assert bucket.take(100.0) == 0 and [bucket.take(100.0) for _ in range(4)][-1] == 0.5


def test_typing_needs_a_subscription_and_is_throttled():
    session = opened()
    assert session.admit(Typing(1), 0.0).code == "not_subscribed"
    session.follow(1, 0)
    assert session.admit(Typing(1), 0.1) is None
    assert session.may_announce_typing(1, 0.1) and not session.may_announce_typing(1, 1.0)
    assert session.may_announce_typing(1, 0.1 + DEFAULT.typing_interval)


def test_subscriptions_are_bounded():
    session = opened(replace(DEFAULT, max_subscriptions=2))
    session.follow(1, 0)
    session.follow(2, 0)
    assert not session.can_follow(3) and session.can_follow(2)
    assert session.follow(2, 5).delivered == 5  # following again moves the cursor
    assert session.unfollow(1) and not session.unfollow(1)
    assert session.can_follow(3)


def test_cursor_delivers_each_seq_once_in_order():
    cursor = Cursor(3)
    assert [cursor.verdict(seq) for seq in (2, 3, 4, 6)] == [Verdict.SEEN, Verdict.SEEN, Verdict.NEXT, Verdict.GAP]
    cursor.advance(4)
    cursor.advance(2)  # never backwards
    assert cursor.delivered == 4 and cursor.verdict(5) is Verdict.NEXT
