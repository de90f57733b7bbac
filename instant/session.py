"""One websocket connection's protocol state, without I/O: the websocket adapter asks it what
to do and tells it what happened, so every rule below is tested with a fake clock.

- Phases: nothing but `auth` is served until a token is accepted; the token's expiry then
  ends the connection (close 4001) unless a fresh `auth` arrives first. A fresh token must
  name the same person: one connection, one identity.
- Rate: a token bucket over every client frame, pings and pongs included; frames refused in
  a row (rate, malformed) past `refusals_before_close` end the connection (1008).
- Timers: `tick(now)` says whether to ping, to give up on a missing pong, to re-read
  memberships, or to close for a late authentication or an expired token; `next_wakeup`
  says when to call it again.
- Cursors: per followed circle, the highest sequence number delivered. Live messages may
  arrive twice (catch-up from the store overlapping the live stream) or with a hole (the bus
  dropped an event); the cursor tells which, so the client sees each seq once, in order.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from .frames import Auth, ClientFrame, Close, Typing
from .limits import Limits

if TYPE_CHECKING:
    from directory.authn import Principal


@dataclass(frozen=True)
class Refusal:
    """A frame not served: an `error` frame with `code`, and a close when `close` is set."""

    code: str
    message: str
    close: Close | None = None
    retry_after: float | None = None


@dataclass(frozen=True)
class Ping:
    payload: bytes


@dataclass(frozen=True)
class Shut:
    code: Close
    reason: str


class Recheck:
    """Time to re-read which followed circles this person still belongs to."""


RECHECK = Recheck()
Action = Ping | Shut | Recheck | None


class Verdict(Enum):
    NEXT = "next"  # the seq after the last delivered: send it
    SEEN = "seen"  # delivered already: drop it
    GAP = "gap"  # seqs are missing before it: fetch them from the store first


class Cursor:
    """How far one circle's messages have been delivered on this connection."""

    def __init__(self, delivered: int) -> None:
        self.delivered = delivered

    def verdict(self, seq: int) -> Verdict:
        if seq <= self.delivered:
            return Verdict.SEEN
        return Verdict.NEXT if seq == self.delivered + 1 else Verdict.GAP

    def advance(self, seq: int) -> None:
        self.delivered = max(self.delivered, seq)


class TokenBucket:
    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate, self._burst = rate, burst
        self._tokens, self._at = float(burst), now

    def take(self, now: float) -> float:
        """0 if a frame may pass now, else the seconds until one may."""
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self._rate


class Session:
    def __init__(self, limits: Limits, now: float) -> None:
        self.limits = limits
        self.principal: Principal | None = None
        self.expires_at: float | None = None  # the token's exp, in time.time() seconds
        self.presence = "online"
        self.cursors: dict[int, Cursor] = {}
        self._opened_at = now
        self._bucket = TokenBucket(limits.frames_per_second, limits.frame_burst, now)
        self._refusals = 0
        self._typing: dict[int, float] = {}
        self._next_ping = now + limits.ping_interval
        self._pong_due: float | None = None
        self._ping_payload = b""
        self._next_recheck = now + limits.membership_recheck

    @property
    def open(self) -> bool:
        return self.principal is not None

    def admit(self, frame: ClientFrame, now: float) -> Refusal | None:
        """Whether `frame` may be served now; called for every frame before any work."""
        wait = self._bucket.take(now)
        if wait:
            return self._refused(Refusal("rate_limited", f"too many frames: wait {wait:.1f} s", retry_after=wait))
        if not self.open and not isinstance(frame, Auth):
            return Refusal("unauthenticated", "the first frame must be auth", Close.UNAUTHORIZED)
        if isinstance(frame, Typing) and frame.circle not in self.cursors:
            return self._refused(Refusal("not_subscribed", f"subscribe to circle {frame.circle} first"))
        self._refusals = 0
        return None

    def control(self, now: float) -> Close | None:
        """A ping or pong from the client: each costs a parse and a ping a written pong, so they
        take from the same bucket as other frames. No error frame answers a control frame: a
        refused one only counts toward the close (1008)."""
        if self._bucket.take(now):
            return self._refused(Refusal("rate_limited", "")).close
        return None

    def malformed(self) -> Close | None:
        """A frame failed to parse: counts toward the refusals that end the connection."""
        return self._refused(Refusal("bad_frame", "")).close

    def _refused(self, refusal: Refusal) -> Refusal:
        self._refusals += 1
        if self._refusals >= self.limits.refusals_before_close:
            return Refusal(refusal.code, refusal.message, Close.POLICY, refusal.retry_after)
        return refusal

    def authenticated(self, principal: Principal, expires_at: float) -> Refusal | None:
        """A token was accepted; a connection keeps the identity it started with."""
        if self.principal is not None and principal.id != self.principal.id:
            return Refusal("identity_changed", "a connection keeps one identity: open another",
                           Close.UNAUTHORIZED)
        self.principal, self.expires_at = principal, expires_at
        return None

    def can_follow(self, circle: int) -> bool:
        return circle in self.cursors or len(self.cursors) < self.limits.max_subscriptions

    def follow(self, circle: int, delivered: int) -> Cursor:
        """Follow a circle from `delivered` (again: the cursor moves there)."""
        self.cursors[circle] = Cursor(delivered)
        return self.cursors[circle]

    def unfollow(self, circle: int) -> bool:
        self._typing.pop(circle, None)
        return self.cursors.pop(circle, None) is not None

    def may_announce_typing(self, circle: int, now: float) -> bool:
        if now - self._typing.get(circle, -self.limits.typing_interval) < self.limits.typing_interval:
            return False
        self._typing[circle] = now
        return True

    # --- timers -------------------------------------------------------------------------------

    def tick(self, now: float, wall: float) -> Action:
        """What the timers ask for at monotonic `now` (`wall` is time.time(), for the token)."""
        if not self.open:
            if now - self._opened_at >= self.limits.auth_timeout:
                return Shut(Close.UNAUTHORIZED, "no authentication in time")
            return None
        if self.expires_at is not None and wall >= self.expires_at:
            return Shut(Close.TOKEN_EXPIRED, "token expired: reconnect with a fresh one and resume")
        if self._pong_due is not None and now >= self._pong_due:
            return Shut(Close.INTERNAL, "keepalive ping timeout")
        if self._pong_due is None and now >= self._next_ping:
            self._ping_payload = os.urandom(4)
            self._pong_due = now + self.limits.ping_timeout
            return Ping(self._ping_payload)
        if now >= self._next_recheck:
            self._next_recheck = now + self.limits.membership_recheck
            return RECHECK if self.cursors else None
        return None

    def pong(self, payload: bytes, now: float) -> None:
        if self._pong_due is not None and payload == self._ping_payload:
            self._pong_due = None
            self._next_ping = now + self.limits.ping_interval

    def next_wakeup(self, now: float, wall: float) -> float:
        """Seconds until `tick` may have something to say."""
        if not self.open:
            return max(0.0, self._opened_at + self.limits.auth_timeout - now)
        deadlines = [self._pong_due if self._pong_due is not None else self._next_ping, self._next_recheck]
        if self.expires_at is not None:
            deadlines.append(now + self.expires_at - wall)
        return max(0.0, min(deadlines) - now)
