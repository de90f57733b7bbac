"""From a credential to a directory entry: the one path every listener uses to know who is there.

A token or a certificate only proves an identifier; the directory decides whether that
identifier may act here (an active professional, an applicative mailbox this operator
hosts). Every attempt, good or bad, goes to the audit trail with its reason.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from certs.pki import CertificateError, identity_from_certificate, verify_chain
from certs.revocation import Revocations
from certs.tls import refused_certificate
from certs.tokens import TokenError, TokenVerifier
from store.audit import ANONYMOUS, Actor, AuditTrail
from store.schema import mailboxes, professionals


async def audit_handshake_refusal(audit: AuditTrail, error: BaseException, *, source: str, protocol: str) -> None:
    """A TLS handshake that failed on the client's certificate (a CPS from an untrusted CA, an
    expired one) is a certificate login refused before SASL, audited as one: the listeners call
    this when a handshake fails. Other failures (a scanner's garbage, a reset) are not logins
    and leave no row."""
    reason = refused_certificate(error)
    if reason is not None:
        await audit.record(ANONYMOUS, "auth.certificate", outcome="failed", source=source, protocol=protocol,
                           reason=reason, step="tls")


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a professional (by national identifier) or an application."""

    kind: str  # "person" or "application"
    id: str  # national identifier (person) or applicative mailbox address (application)
    display: str
    via: str  # "token", "certificate", "password"
    expires_at: datetime | None = None
    admin: bool = False

    @property
    def actor(self) -> Actor:
        return Actor(self.id, self.kind)


class AuthError(Exception):
    """Refused: `code` is for machines and logs, the message for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Authenticator:
    def __init__(self, engine: AsyncEngine, verifier: TokenVerifier, audit: AuditTrail,
                 ca_certs: list[x509.Certificate], admins: tuple[str, ...] = (),
                 revocations: Revocations | None = None) -> None:
        self._engine = engine
        self._verifier = verifier
        self._audit = audit
        self._ca_certs = ca_certs
        self._revocations = revocations
        self._admins = frozenset(admins)

    async def by_token(self, token: str, *, source: str, protocol: str) -> Principal:
        try:  # in a thread: an issuer configured by jwks_url may fetch its keys (bounded, rare)
            verified = await asyncio.to_thread(self._verifier.verify, token)
        except TokenError as exc:
            await self._audit.record(ANONYMOUS, "auth.token", outcome="failed", source=source,
                                     protocol=protocol, reason=exc.code)
            raise AuthError(exc.code, f"token refused: {exc}") from None
        principal = await self._person(verified.idnat, via="token", expires_at=verified.expires_at)
        await self._finish("auth.token", principal, verified.idnat, source, protocol)
        assert principal is not None
        return principal

    async def by_certificate(self, cert: x509.Certificate, *, source: str, protocol: str) -> Principal:
        try:
            verify_chain(cert, self._ca_certs, revocations=self._revocations)
            identity = identity_from_certificate(cert)
        except CertificateError as exc:
            await self._audit.record(ANONYMOUS, "auth.certificate", outcome="failed", source=source,
                                     protocol=protocol, reason=str(exc), subject=cert.subject.rfc4514_string())
            raise AuthError("bad_certificate", f"certificate refused: {exc}") from None
        principal: Principal | None = None
        claimed = identity.idnat or identity.mailbox or identity.subject
        if identity.kind == "person" and identity.idnat:
            principal = await self._person(identity.idnat, via="certificate")
        elif identity.kind == "application" and identity.mailbox:
            principal = await self._application(identity.mailbox)
        await self._finish("auth.certificate", principal, claimed, source, protocol)
        assert principal is not None
        return principal

    async def by_password(self, check, address: str, password: str, *, source: str,
                          protocol: str) -> Principal:
        """An application password (see app_passwords.py): `check(address, password)` gives the
        national identifier it was created for, which must still be an active professional."""
        found = await check(address, password)
        if found is None:
            await self._audit.record(Actor(address[:320], "anonymous"), "auth.password", outcome="failed",
                                     source=source, protocol=protocol, reason="bad password")
            raise AuthError("bad_password", "wrong mailbox address or application password")
        idnat, label = found
        principal = await self._person(idnat, via="password")
        await self._finish("auth.password", principal, idnat, source, protocol, label=label)
        assert principal is not None
        return principal

    async def _finish(self, action: str, principal: Principal | None, claimed: str, source: str,
                      protocol: str, **detail: str) -> None:
        if principal is None:
            await self._audit.record(Actor(claimed, "anonymous"), action, outcome="denied", source=source,
                                     protocol=protocol, reason="not in the directory", **detail)
            raise AuthError("unknown_identity", f"{claimed} is not an active entry of this directory")
        await self._audit.record(principal.actor, action, source=source, protocol=protocol, **detail)

    async def _person(self, idnat: str, *, via: str, expires_at: datetime | None = None) -> Principal | None:
        query = select(professionals.c.given_name, professionals.c.family_name).where(
            and_(professionals.c.idnat == idnat, professionals.c.retired_at.is_(None)))
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        return Principal("person", idnat, f"{row.given_name} {row.family_name}".strip(), via, expires_at,
                         admin=idnat in self._admins)

    async def _application(self, address: str) -> Principal | None:
        query = select(mailboxes.c.address, mailboxes.c.description).where(and_(
            mailboxes.c.address == address.lower(), mailboxes.c.kind == "applicative",
            mailboxes.c.local.is_(True), mailboxes.c.retired_at.is_(None)))
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        return Principal("application", row.address, row.description or row.address, "certificate")
