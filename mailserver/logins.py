"""Logging in, for SMTP and IMAP alike: SASL credentials in, (person or application, mailbox) out.

Tokens and certificates go through the directory's one authentication path; application
passwords through `directory.app_passwords`. Then the mailbox named at login (XOAUTH2
`user=`, OAUTHBEARER `a=`, PLAIN/LOGIN user name, EXTERNAL authzid), if any, must be one the
caller may use. Failures are slowed down per client address and per account, each session
waiting on its own, so an attacker on one address does not slow anyone else down (`Throttle`);
with several nodes the failures are also counted in Redis, across all of them (`SharedFailures`).
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass

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


class Throttle:
    """Delay after repeated failures: 0 s for the first FREE, then doubling up to MAX_DELAY,
    forgotten after FORGET seconds without failure. Bounded memory (oldest keys dropped).

    Attempts still being checked count as failures to come: the delay is decided when an
    attempt starts, and each attempt reserves its start time on every key it uses, so the
    attempts on one key are spaced whether they come one after another or all at once (20
    parallel connections got 40 guesses in 19 s when the delay was read before any failure
    was recorded)."""

    FREE = 3
    BASE_DELAY = 0.5
    MAX_DELAY = 16.0
    FORGET = 900.0
    MAX_KEYS = 100_000

    def __init__(self, clock=time.monotonic) -> None:  # noqa: ANN001
        self._clock = clock
        self._keys: OrderedDict[str, _Attempts] = OrderedDict()

    @classmethod
    def step(cls, count: int) -> float:
        """The wait before an attempt that follows `count` failed (or unfinished) ones."""
        return 0.0 if count < cls.FREE else min(cls.BASE_DELAY * 2 ** (count - cls.FREE), cls.MAX_DELAY)

    def reserve(self, *keys: str) -> float | None:
        """Seconds this attempt waits before its check, counting on `keys` until `release`; or
        None, counting nowhere, when it would wait more than MAX_DELAY: the caller refuses it
        unchecked ("try later"), so a queue of parallel attempts never grows past MAX_DELAY."""
        now = self._clock()
        entries = [self._entry(key, now) for key in keys]
        start = max([now] + [e.next_at for e in entries if e.failures + e.in_flight >= self.FREE])
        if start - now > self.MAX_DELAY:
            return None
        for entry in entries:
            entry.next_at = start + self.step(entry.failures + entry.in_flight + 1)
            entry.in_flight += 1
        return start - now

    def release(self, *keys: str, failed: bool) -> None:
        """The attempt is over: failed, or not (succeeded, or the client left before its check)."""
        now = self._clock()
        for key in keys:
            entry = self._keys.get(key)
            if entry is None:  # dropped to bound memory
                continue
            entry.in_flight = max(0, entry.in_flight - 1)
            if failed:
                entry.failures += 1
                entry.last = now
                entry.next_at = max(entry.next_at, now + self.step(entry.failures))

    def forgive(self, key: str) -> None:
        """A success on an account clears its failures (not an address's: many share one)."""
        entry = self._keys.get(key)
        if entry is not None:
            entry.failures = 0

    def _entry(self, key: str, now: float) -> "_Attempts":
        entry = self._keys.pop(key, None) or _Attempts()
        if entry.failures and not entry.in_flight and now - entry.last >= self.FORGET:
            entry.failures = 0
        self._keys[key] = entry  # most recently used last
        while len(self._keys) > self.MAX_KEYS:
            self._keys.popitem(last=False)
        return entry


@dataclass
class _Attempts:
    failures: int = 0
    last: float = 0.0  # time of the last failure
    in_flight: int = 0
    next_at: float = 0.0  # earliest start of the next attempt


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
        wait = self.throttle.reserve(*keys)
        if wait is None:
            await self._audit.record(Actor(account[:320] or "-", "anonymous"), f"login.{protocol}", outcome="denied",
                                     source=source, reason="too many attempts in flight or failed")
            raise LoginFailed("throttled", "too many attempts, try again in a moment", temporary=True)
        failed = False
        try:
            if self.shared is not None:
                wait = max(wait, await self.shared.wait(*keys))
            if wait:
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
