"""Logging in, for SMTP and IMAP alike: SASL credentials in, (person or application, mailbox) out.

Tokens and certificates go through the directory's one authentication path; application
passwords through `directory.app_passwords`. Then the mailbox named at login (XOAUTH2
`user=`, OAUTHBEARER `a=`, PLAIN/LOGIN user name, EXTERNAL authzid), if any, must be one the
caller may use. Password guesses are spaced per client address and per account, correct logins
only queue behind the checks in progress, and an attacker on one address slows no one
elsewhere (`Throttle`);
with several nodes the failures are also counted in Redis, across all of them (`SharedFailures`).
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from cryptography import x509
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncEngine

from directory.access import MailboxGrant, grant_for
from directory.app_passwords import AppPasswords
from directory.authn import Authenticator, AuthError, Principal
from store.audit import ANONYMOUS, Actor, AuditTrail
from web.metrics import LOGINS, mechanism_label

from .sasl import BearerCredentials, Credentials, ExternalCredentials, PasswordCredentials

log = logging.getLogger("msante.logins")


class LoginFailed(Exception):
    def __init__(self, code: str, message: str, *, temporary: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.temporary = temporary  # our side failed (e.g. keys unreachable): 454, not 535


@dataclass(frozen=True)
class Login:
    principal: Principal
    mailbox: MailboxGrant | None  # the box named at login, if one was


class ThrottleBusy(Exception):
    """Too many attempts already wait on a key: refused unchecked ("try again in a moment")."""


class Throttle:
    """Spaces password guesses without delaying anyone who knows theirs.

    Per key (an address, an account), at most LIMIT attempts are checked at once while the key
    has no recent failure, one fewer for each (LIMIT checks before the first delay, however the
    guesses arrive), and one at a time once it has FREE or more, each starting no sooner than
    BASE_DELAY, doubling with each further failure up to MAX_DELAY, after the last failure;
    failures are forgotten FORGET seconds after the last one. An attempt
    that cannot start waits, woken as soon as an attempt on its keys ends: a success frees its
    place at once, so a burst of correct logins from one address (a hospital behind one NAT
    address, a mail client opening ten connections) only queues behind the checks in progress.
    Counting the attempts in flight is what spaces guesses sent in parallel like sequential
    ones (20 parallel connections got 40 guesses in 19 s when the delay was read before any
    failure was recorded; a reservation of a delay per attempt in flight then slowed correct
    logins as if they were all going to fail). The queue is bounded: an attempt refused with
    ThrottleBusy when MAX_WAITING already wait on one of its keys, or when, with the waiters
    ahead of it all failing, it would wait more than MAX_DELAY. Bounded memory (the oldest idle
    keys dropped)."""

    FREE = 3
    LIMIT = 4
    BASE_DELAY = 0.5
    MAX_DELAY = 16.0
    FORGET = 900.0
    MAX_WAITING = 100
    MAX_KEYS = 100_000

    def __init__(self) -> None:
        self._keys: OrderedDict[str, _Key] = OrderedDict()
        self.closed = False

    @classmethod
    def step(cls, failures: int) -> float:
        """The wait after the last of `failures` recent failures before the next attempt."""
        return 0.0 if failures < cls.FREE else min(cls.BASE_DELAY * 2 ** (failures - cls.FREE), cls.MAX_DELAY)

    async def admit(self, *keys: str) -> None:
        """Wait until an attempt on `keys` may be checked, then count it in flight until
        `release`. Raises ThrottleBusy, counting nowhere, when the queue is full. A caller
        cancelled while waiting leaves the queue."""
        entries = [self._entry(key) for key in keys]
        ticket = _Ticket()
        for entry in entries:
            entry.queue.append(ticket)
        try:
            while True:
                if self.closed:
                    raise ThrottleBusy()
                now = time.monotonic()
                for entry in entries:
                    entry.forget_old(now, self.FORGET)
                    if self._predicted(entry, ticket, now) > self.MAX_DELAY or \
                            entry.queue.index(ticket) >= self.MAX_WAITING:
                        raise ThrottleBusy()
                full = [e for e in entries if e.in_flight >= self._capacity(e.failures)]
                if full:
                    ticket.woken = asyncio.get_running_loop().create_future()
                    await ticket.woken
                    continue
                start = max(e.last + self.step(e.failures) for e in entries)
                if start > now:  # woken early by `close`, or by an attempt ending: looks again
                    ticket.woken = asyncio.get_running_loop().create_future()
                    timer = asyncio.get_running_loop().call_later(start - now, _wake, ticket)
                    try:
                        await ticket.woken
                    finally:
                        timer.cancel()
                    continue
                for entry in entries:
                    entry.in_flight += 1
                return
        finally:
            for entry in entries:
                entry.queue.remove(ticket)

    def release(self, *keys: str, failed: bool) -> None:
        """The attempt is over: failed, or not (succeeded, or the client left during its check).
        Wakes the attempts waiting on its keys."""
        now = time.monotonic()
        for key in keys:
            entry = self._keys.get(key)
            if entry is None:  # dropped to bound memory
                continue
            entry.in_flight = max(0, entry.in_flight - 1)
            if failed:
                entry.forget_old(now, self.FORGET)
                entry.failures += 1
                entry.last = now
            for ticket in entry.queue:
                _wake(ticket)

    def close(self) -> None:
        """Server shutdown: every attempt waiting (for a place or out its delay, up to MAX_DELAY)
        is refused now, as ThrottleBusy, so the session can answer and end rather than hold the
        shutdown; attempts already being checked finish."""
        self.closed = True
        for entry in self._keys.values():
            for ticket in entry.queue:
                _wake(ticket)

    def forgive(self, key: str) -> None:
        """A success on an account clears its failures (not an address's: many share one)."""
        entry = self._keys.get(key)
        if entry is not None:
            entry.failures = 0

    def _capacity(self, failures: int) -> int:
        """Attempts checked at once: LIMIT on a clean key, fewer for each failure, so however
        the guesses arrive no more than LIMIT are checked before the first delay; then one."""
        return max(self.LIMIT - failures, 1) if failures < self.FREE else 1

    def _predicted(self, entry: "_Key", ticket: "_Ticket", now: float) -> float:
        """How long `ticket` waits on `entry` if every attempt in flight or ahead of it fails;
        0 on a key with fewer than FREE failures, where attempts are not expected to fail."""
        if entry.failures < self.FREE:
            return 0.0
        ahead = entry.in_flight + entry.queue.index(ticket)
        return max(0.0, entry.last + self.step(entry.failures) - now) + sum(
            self.step(n) for n in range(entry.failures + 1, entry.failures + ahead + 1))

    def _entry(self, key: str) -> "_Key":
        entry = self._keys.pop(key, None) or _Key()
        self._keys[key] = entry  # most recently used last
        while len(self._keys) > self.MAX_KEYS:
            oldest = next(iter(self._keys.values()))
            if oldest.in_flight or oldest.queue:  # in use: kept (their number is bounded by connections)
                break
            self._keys.popitem(last=False)
        return entry


@dataclass(eq=False)  # each ticket is itself: found in queues by identity
class _Ticket:
    woken: asyncio.Future | None = None  # set when an attempt on one of its keys ends


def _wake(ticket: _Ticket) -> None:
    if ticket.woken is not None and not ticket.woken.done():
        ticket.woken.set_result(None)


@dataclass(eq=False)
class _Key:
    failures: int = 0
    last: float = 0.0  # time of the last failure
    in_flight: int = 0
    queue: list[_Ticket] = field(default_factory=list)  # attempts waiting, first come first

    def forget_old(self, now: float, forget: float) -> None:
        if self.failures and now - self.last >= forget:
            self.failures = 0


class SharedFailures:
    """Failures counted across processes and nodes ([bus] url), in Redis keys that expire FORGET
    seconds after the last failure, so a brute force spread over the nodes behind a load balancer
    is slowed as if it hit one. Each process's Throttle still spaces and counts its own attempts
    (in flight included); this adds the wait that every node's failures together call for. Keys
    are hashes: Redis holds no address or account name. Redis is no single point of failure:
    while it does not answer within TIMEOUT, each process goes by its own counts; counts Redis
    loses (a restart) only shorten delays already running."""

    PREFIX = "msante:throttle:"
    TIMEOUT = 0.5  # s a login waits for Redis before going by this process's counts alone

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._down = False  # logged once per outage: an attack during one would flood the log

    def _reached(self, exc: BaseException | None = None) -> None:
        if exc is not None and not self._down:
            log.warning("login throttle: Redis unavailable (%s): counting this process's failures only",
                        exc or type(exc).__name__)
        elif exc is None and self._down:
            log.info("login throttle: Redis answers again: counting every node's failures")
        self._down = exc is not None

    def _key(self, key: str) -> str:
        return self.PREFIX + hashlib.sha256(key.encode()).hexdigest()[:32]

    async def wait(self, *keys: str) -> float:
        """The wait that the failures counted on any of `keys`, by every node, call for."""
        try:
            counts = await asyncio.wait_for(self._redis.mget([self._key(k) for k in keys]), self.TIMEOUT)
            self._reached()
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self._reached(exc)
            return 0.0
        return Throttle.step(max((int(c) for c in counts if c is not None), default=0))

    async def failed(self, *keys: str) -> None:
        async def count() -> None:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.incr(self._key(key))
                    pipe.expire(self._key(key), int(Throttle.FORGET))
                await pipe.execute()
        try:
            await asyncio.wait_for(count(), self.TIMEOUT)
            self._reached()
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self._reached(exc)

    async def forgive(self, key: str) -> None:
        try:
            await asyncio.wait_for(self._redis.delete(self._key(key)), self.TIMEOUT)
            self._reached()
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self._reached(exc)  # the account's failures expire FORGET seconds after the last one


class Logins:
    def __init__(self, engine: AsyncEngine, authenticator: Authenticator, passwords: AppPasswords,
                 audit: AuditTrail, throttle: Throttle | None = None, shared: SharedFailures | None = None) -> None:
        self._engine = engine
        self._authenticator = authenticator
        self._passwords = passwords
        self._audit = audit
        self.throttle = throttle or Throttle()
        self.shared = shared  # other nodes' failures, with several

    async def login(self, credentials: Credentials, *, peer_certificate: bytes | None, source: str,
                    protocol: str) -> Login:
        outcome = "failed"
        try:
            login = await self._login(credentials, peer_certificate, source, protocol)
            outcome = "success"
            return login
        except LoginFailed as exc:
            outcome = (exc.code if exc.code in ("throttled", "malformed")
                       else "unavailable" if exc.temporary else "failed")
            raise
        finally:  # a client gone while waiting counts as failed: it did not get in
            LOGINS.labels(protocol=protocol, mechanism=mechanism_label(credentials.mechanism), outcome=outcome).inc()

    async def _login(self, credentials: Credentials, peer_certificate: bytes | None, source: str,
                     protocol: str) -> Login:
        account = _account(credentials)
        if _CONTROL.search(account):  # no address has any; PostgreSQL refuses NUL in a query
            await self._audit_malformed(credentials.mechanism, "control characters in the user name",
                                        source=source, protocol=protocol, user=account)
            raise LoginFailed("malformed", "the user name holds control characters")
        keys = _throttle_keys(credentials, source, account)
        try:
            await self.throttle.admit(*keys)
        except ThrottleBusy:
            await self._audit.record(Actor(account[:320] or "-", "anonymous"), f"login.{protocol}", outcome="denied",
                                     source=source, reason="too many attempts waiting after failures")
            raise LoginFailed("throttled", "too many attempts, try again in a moment", temporary=True) from None
        failed = False
        try:
            wait = await self.shared.wait(*keys) if self.shared is not None else 0.0
            if wait:  # other nodes' failures: waited holding its place in this node's Throttle
                await asyncio.sleep(wait)
            principal = await self._authenticate(credentials, peer_certificate, source, protocol)
            requested = account if "@" in account else ""
            grant = None
            if requested:
                async with self._engine.connect() as conn:
                    grant = await grant_for(conn, principal, requested)
                if grant is None:
                    await self._audit.record(principal.actor, f"login.{protocol}", target=requested, outcome="denied",
                                             source=source, reason="not a mailbox of this identity")
                    raise LoginFailed("not_allowed", f"{principal.display} may not use {requested}")
        except AuthError as exc:
            failed = exc.code != "keys_unavailable"
            raise LoginFailed(exc.code, str(exc), temporary=not failed) from None
        except LoginFailed:
            failed = True
            raise
        finally:  # also when the client left while waiting (cancelled): no longer in flight
            self.throttle.release(*keys, failed=failed)
            if failed and self.shared is not None:
                await self.shared.failed(*keys)
        if isinstance(credentials, PasswordCredentials) and account:
            self.throttle.forgive(f"password:account:{account}")
            if self.shared is not None:
                await self.shared.forgive(f"password:account:{account}")
        return Login(principal, grant)

    async def malformed(self, mechanism: str, reason: str, *, source: str, protocol: str, **detail: str) -> None:
        """A login attempt too malformed to check (not base64, not UTF-8, a broken SASL
        exchange): refused by the protocol's error, counted and audited here like any failed login."""
        LOGINS.labels(protocol=protocol, mechanism=mechanism_label(mechanism), outcome="malformed").inc()
        await self._audit_malformed(mechanism, reason, source=source, protocol=protocol, **detail)

    async def _audit_malformed(self, mechanism: str, reason: str, *, source: str, protocol: str,
                               **detail: str) -> None:
        await self._audit.record(ANONYMOUS, f"login.{protocol}", outcome="failed", source=source,
                                 mechanism=mechanism[:20], reason=reason, **detail)

    async def _authenticate(self, credentials: Credentials, peer_certificate: bytes | None, source: str,
                            protocol: str) -> Principal:
        if isinstance(credentials, BearerCredentials):
            return await self._authenticator.by_token(credentials.token, source=source, protocol=protocol)
        if isinstance(credentials, ExternalCredentials):
            if peer_certificate is None:
                raise AuthError("no_certificate", "EXTERNAL needs a TLS client certificate")
            cert = x509.load_der_x509_certificate(peer_certificate)
            return await self._authenticator.by_certificate(cert, source=source, protocol=protocol)
        assert isinstance(credentials, PasswordCredentials)
        if credentials.authzid and credentials.authzid.lower() != credentials.username.lower():
            raise AuthError("bad_authzid", "acting as another identity is not supported with passwords")
        return await self._authenticator.by_password(self._passwords.check, credentials.username,
                                                     credentials.password, source=source, protocol=protocol)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _throttle_keys(credentials: Credentials, source: str, account: str) -> tuple[str, ...]:
    """Passwords can be guessed: their failures count per address and per account. Tokens and
    certificates cannot (signatures): their failures count per address only, apart, so wrong
    passwords sent for someone never slow that person's token or certificate login."""
    if isinstance(credentials, PasswordCredentials):
        return (f"password:address:{source}",) + ((f"password:account:{account}",) if account else ())
    return (f"credential:address:{source}",)


def _account(credentials: Credentials) -> str:
    if isinstance(credentials, BearerCredentials):
        return (credentials.user or "").strip().lower()
    if isinstance(credentials, PasswordCredentials):
        return credentials.username.strip().lower()
    return (credentials.authzid or "").strip().lower()
