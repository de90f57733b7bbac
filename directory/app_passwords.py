"""Application passwords: what lets a mail client that cannot do OAuth log in with PLAIN/LOGIN.

A professional who signed in strongly (token or certificate) creates one per device, bound
to one mailbox they may use. The password is generated here (never chosen by a person), shown
once, and stored as a scrypt hash. Its first characters are a public selector, so a login
checks one hash, not every hash of the mailbox. A password outlives nothing it was bound to:
losing the delegation or the box makes it useless (checked again at each login).
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from store.audit import AuditTrail
from store.schema import app_passwords, mailboxes

from .access import grant_for
from .authn import Principal

ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"  # no 0/o, 1/l: read off a screen, typed on a phone
SELECTOR_CHARS = 8
SECRET_CHARS = 20  # 20 × 5 bits = 100 bits of entropy behind the selector
MAX_LABEL = 80
MAX_PER_PERSON_AND_BOX = 20
# scrypt at n=2^14, r=8 (16 MiB, ~50 ms here): the OWASP minimum; run in a thread, off the loop.
SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1, "maxmem": 64 * 1024 * 1024, "dklen": 32}


class AppPasswordError(Exception):
    """A request a person can correct."""


class AppPasswordDenied(AppPasswordError):
    """Not the caller's to ask: a mailbox they may not use, or a login that may not create
    passwords. Audited as denied."""


@dataclass(frozen=True)
class Created:
    label: str
    password: str  # shown once, never stored


def _hash(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, **SCRYPT)


def _normalise(password: str) -> str:
    return "".join(ch for ch in password.lower() if ch in ALPHABET)


def _format(raw: str) -> str:
    return "-".join(raw[i:i + 4] for i in range(0, len(raw), 4))


class AppPasswords:
    def __init__(self, engine: AsyncEngine, audit: AuditTrail) -> None:
        self._engine = engine
        self._audit = audit

    async def create(self, principal: Principal, address: str, label: str, *, source: str) -> Created:
        label = " ".join(label.split())
        if not label or len(label) > MAX_LABEL:
            raise AppPasswordError(f"the label must be 1 to {MAX_LABEL} characters")
        if principal.kind != "person" or principal.via == "password":
            raise AppPasswordDenied("application passwords are created after a token or card login")
        async with self._engine.begin() as conn:
            grant = await grant_for(conn, principal, address)
            if grant is None:
                await self._audit.record(principal.actor, "app_password.create", target=address, outcome="denied",
                                         source=source, label=label)
                raise AppPasswordDenied(f"{address} is not a mailbox you may use")
            mine = and_(app_passwords.c.mailbox_id == grant.mailbox_id, app_passwords.c.idnat == principal.id)
            labels = {r.label for r in await conn.execute(select(app_passwords.c.label).where(mine))}
            if label in labels:
                raise AppPasswordError(f"a password labelled {label!r} exists for {grant.address}: revoke it first")
            if len(labels) >= MAX_PER_PERSON_AND_BOX:
                raise AppPasswordError(f"at most {MAX_PER_PERSON_AND_BOX} passwords per person and mailbox")
            raw = "".join(secrets.choice(ALPHABET) for _ in range(SELECTOR_CHARS + SECRET_CHARS))
            salt = secrets.token_bytes(16)
            digest = await asyncio.to_thread(_hash, raw, salt)
            await conn.execute(insert(app_passwords), {
                "mailbox_id": grant.mailbox_id, "idnat": principal.id, "label": label,
                "selector": raw[:SELECTOR_CHARS], "salt": salt, "hash": digest,
                "created_at": datetime.now(timezone.utc)})
        await self._audit.record(principal.actor, "app_password.create", target=grant.address, source=source,
                                 label=label)
        return Created(label, _format(raw))

    async def list(self, principal: Principal, address: str | None = None) -> list[dict]:
        query = (select(mailboxes.c.address, app_passwords.c.label, app_passwords.c.created_at,
                        app_passwords.c.last_used_at)
                 .join(mailboxes, mailboxes.c.id == app_passwords.c.mailbox_id)
                 .where(app_passwords.c.idnat == principal.id)
                 .order_by(mailboxes.c.address, app_passwords.c.label))
        if address:
            query = query.where(mailboxes.c.address == address.strip().lower())
        async with self._engine.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(query)]

    async def revoke(self, principal: Principal, address: str, label: str, *, source: str) -> None:
        address = address.strip().lower()
        box = select(mailboxes.c.id).where(mailboxes.c.address == address).scalar_subquery()
        async with self._engine.begin() as conn:
            result = await conn.execute(delete(app_passwords).where(and_(
                app_passwords.c.mailbox_id == box, app_passwords.c.idnat == principal.id,
                app_passwords.c.label == label)))
        outcome = "ok" if result.rowcount else "failed"
        await self._audit.record(principal.actor, "app_password.revoke", target=address, outcome=outcome,
                                 source=source, label=label)
        if not result.rowcount:
            raise AppPasswordError(f"no password labelled {label!r} for {address}")

    async def check(self, address: str, password: str) -> tuple[str, str] | None:
        """(national identifier, label) if `password` is a live password of `address`, else None.
        The caller turns the identifier into a Principal and re-checks the grant."""
        raw = _normalise(password)
        if len(raw) != SELECTOR_CHARS + SECRET_CHARS:
            return None
        query = (select(app_passwords.c.id, app_passwords.c.idnat, app_passwords.c.label, app_passwords.c.salt,
                        app_passwords.c.hash)
                 .join(mailboxes, mailboxes.c.id == app_passwords.c.mailbox_id)
                 .where(app_passwords.c.selector == raw[:SELECTOR_CHARS],
                        mailboxes.c.address == address.strip().lower()))
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            await asyncio.to_thread(_hash, raw, b"\0" * 16)  # same time as a wrong password
            return None
        if not hmac.compare_digest(await asyncio.to_thread(_hash, raw, row.salt), row.hash):
            return None
        async with self._engine.begin() as conn:
            await conn.execute(update(app_passwords).where(app_passwords.c.id == row.id)
                               .values(last_used_at=datetime.now(timezone.utc)))
        return row.idnat, row.label
