"""Logging in, for SMTP and IMAP alike: SASL credentials in, (person or application, mailbox) out.

Tokens and certificates go through the directory's one authentication path; application
passwords through `directory.app_passwords`. Then the mailbox named at login (XOAUTH2
`user=`, OAUTHBEARER `a=`, PLAIN/LOGIN user name, EXTERNAL authzid), if any, must be one the
caller may use. Failures are slowed down per client address and per account, each session
waiting on its own, so an attacker on one address does not slow anyone else down; with several
nodes the failures are counted in Redis, across all of them.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
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
from store.audit import AuditTrail

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
    Counts this process's failures only: several processes share RedisThrottle."""

    FREE = 3
    BASE_DELAY = 0.5
    MAX_DELAY = 16.0
    FORGET = 900.0
    MAX_KEYS = 100_000

    def __init__(self, clock=time.monotonic) -> None:  # noqa: ANN001
        self._clock = clock
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()

    @classmethod
    def delay_after(cls, failures: int) -> float:
        return 0.0 if failures < cls.FREE else min(cls.BASE_DELAY * 2 ** (failures - cls.FREE), cls.MAX_DELAY)

    async def delay(self, *keys: str) -> float:
        return self.delay_after(self.failures(*keys))

    def failures(self, *keys: str) -> int:
        """The most failures counted against any of `keys`."""
        now = self._clock()
        worst = 0
        for key in keys:
            count, last = self._failures.get(key, (0, 0.0))
            if count and now - last < self.FORGET:
                worst = max(worst, count)
        return worst

    async def failed(self, *keys: str) -> None:
        now = self._clock()
        for key in keys:
            count, last = self._failures.pop(key, (0, 0.0))
            self._failures[key] = (count + 1 if now - last < self.FORGET else 1, now)
        while len(self._failures) > self.MAX_KEYS:
            self._failures.popitem(last=False)

    async def succeeded(self, account: str) -> None:
        self._failures.pop(f"account:{account}", None)


class RedisThrottle:
    """The throttle of several processes or nodes ([bus] url): failures counted in Redis keys
    that expire FORGET seconds after the last failure, so a brute force spread over the nodes
    behind a load balancer is slowed as if it hit one. Keys are hashes: Redis holds no address
    or account name. Redis is no single point of failure: each process also counts its own
    failures (a Throttle), the floor of the delay, and alone while Redis does not answer within
    TIMEOUT; counts Redis loses (a restart) only shorten delays already running."""

    PREFIX = "msante:throttle:"
    TIMEOUT = 0.5  # s a login waits for Redis before going by this process's counts alone

    def __init__(self, redis: aioredis.Redis, clock=time.monotonic) -> None:  # noqa: ANN001
        self._redis = redis
        self.local = Throttle(clock)
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

    async def delay(self, *keys: str) -> float:
        shared = 0
        try:
            counts = await asyncio.wait_for(self._redis.mget([self._key(k) for k in keys]), self.TIMEOUT)
            shared = max(int(c) for c in counts if c is not None) if any(counts) else 0
            self._reached()
        except (RedisError, OSError, asyncio.TimeoutError, ValueError) as exc:
            self._reached(exc)
        return Throttle.delay_after(max(shared, self.local.failures(*keys)))

    async def failed(self, *keys: str) -> None:
        await self.local.failed(*keys)

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

    async def succeeded(self, account: str) -> None:
        await self.local.succeeded(account)
        try:
            await asyncio.wait_for(self._redis.delete(self._key(f"account:{account}")), self.TIMEOUT)
            self._reached()
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self._reached(exc)  # the account's failures expire FORGET seconds after the last one


class Logins:
    def __init__(self, engine: AsyncEngine, authenticator: Authenticator, passwords: AppPasswords,
                 audit: AuditTrail, throttle: Throttle | RedisThrottle | None = None) -> None:
        self._engine = engine
        self._authenticator = authenticator
        self._passwords = passwords
        self._audit = audit
        self.throttle = throttle or Throttle()

    async def login(self, credentials: Credentials, *, peer_certificate: bytes | None, source: str,
                    protocol: str) -> Login:
        account = _account(credentials)
        keys = (f"address:{source}", f"account:{account}") if account else (f"address:{source}",)
        wait = await self.throttle.delay(*keys)
        if wait:
            await asyncio.sleep(wait)
        try:
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
            await self.throttle.failed(*keys)
            raise LoginFailed(exc.code, str(exc), temporary=exc.code == "keys_unavailable") from None
        except LoginFailed:
            await self.throttle.failed(*keys)
            raise
        await self.throttle.succeeded(account)
        return Login(principal, grant)

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


def _account(credentials: Credentials) -> str:
    if isinstance(credentials, BearerCredentials):
        return (credentials.user or "").strip().lower()
    if isinstance(credentials, PasswordCredentials):
        return credentials.username.strip().lower()
    return (credentials.authzid or "").strip().lower()
