"""Mailbox administration: create this operator's boxes and manage who acts on shared ones.

Rules from the national model: an address and its kind never change; a nominative box has
one owner (a professional); organisational and applicative boxes belong to a structure; an
organisational box is opened by the professionals delegated to it. Every change is audited,
and a delegation's change is announced on the bus (RIGHTS) once committed: live IMAP sessions
and websockets of the delegate apply it at once (from the CLI, through store/relay.py).
"""
from __future__ import annotations

import re
from datetime import datetime, timezone

from sqlalchemy import and_, delete, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from store.audit import Actor, AuditTrail
from store.events import RIGHTS, EventBus, rights_event
from store.schema import mailbox_delegates, mailboxes, organisations, professionals

KINDS = ("nominative", "organisational", "applicative", "cabinet")
# Dot-atom local parts (RFC 5322 §3.4.1), UTF-8 allowed (RFC 6531); RFC 5321 §4.5.3.1 lengths
# (64 octets of local part, 254 in all) counted in UTF-8 octets.
LOCAL_PART = re.compile(r"^[^\s@\"(),:;<>\[\]\\.]+(\.[^\s@\"(),:;<>\[\]\\.]+)*$")
DOMAIN = re.compile(r"^[a-z0-9-]+(\.[a-z0-9-]+)+$")


class MailboxError(Exception):
    """A request a person can correct; the message says how."""


def normalise_address(address: str) -> str:
    """Lower case, domain in A-label form; refuses what cannot be a mailbox address."""
    address = address.strip().lower()
    local, _, domain = address.rpartition("@")
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        domain = ""
    if not LOCAL_PART.match(local) or not DOMAIN.match(domain) or len(local.encode()) > 64:
        raise MailboxError(f"{address!r} is not a valid mailbox address")
    address = f"{local}@{domain}"
    if len(address.encode()) > 254:
        raise MailboxError(f"{address!r} is longer than 254 octets")
    return address


class MailboxAdmin:
    def __init__(self, engine: AsyncEngine, audit: AuditTrail, local_domains: tuple[str, ...],
                 bus: EventBus) -> None:
        self._engine = engine
        self._audit = audit
        self._domains = local_domains
        self._bus = bus

    async def add(self, address: str, *, kind: str, actor: Actor, owner: str | None = None,
                  organisation: str | None = None, description: str = "", service: str = "",
                  published: bool = True) -> dict:
        """Create a local mailbox. `owner` is an RPPS or national identifier, `organisation` a
        FINESS or structure identifier."""
        address = normalise_address(address)
        if kind not in KINDS:
            raise MailboxError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
        if address.rpartition("@")[2] not in self._domains:
            raise MailboxError(f"{address}: the domain is not one this operator hosts ({', '.join(self._domains)})")
        if kind == "nominative" and (not owner or organisation):
            raise MailboxError("a nominative mailbox needs --owner RPPS (and no --org)")
        if kind in ("organisational", "applicative") and (not organisation or owner):
            raise MailboxError(f"an {kind} mailbox needs --org FINESS (and no --owner)")
        now = datetime.now(timezone.utc)
        async with self._engine.begin() as conn:
            owner_id = await _professional_id(conn, owner) if owner else None
            org_id = await _organisation_id(conn, organisation) if organisation else None
            existing = (await conn.execute(select(mailboxes.c.id).where(mailboxes.c.address == address))).first()
            if existing:
                raise MailboxError(f"{address} already exists (addresses are never reused)")
            row = {"address": address, "kind": kind, "owner_idnat": owner_id, "organisation_id": org_id,
                   "description": description, "service": service, "published": published, "local": True,
                   "created_at": now, "updated_at": now, "digest": "", "source_stamp": ""}
            await conn.execute(insert(mailboxes), row)
        await self._audit.record(actor, "mailbox.add", target=address, source="cli", kind=kind,
                                 owner=owner_id, organisation=org_id)
        return row

    async def grant(self, address: str, person: str, *, actor: Actor) -> None:
        address = normalise_address(address)
        async with self._engine.begin() as conn:
            box = await _shared_box(conn, address)
            idnat = await _professional_id(conn, person)
            present = (await conn.execute(select(mailbox_delegates.c.idnat).where(and_(
                mailbox_delegates.c.mailbox_id == box, mailbox_delegates.c.idnat == idnat)))).first()
            if not present:
                await conn.execute(insert(mailbox_delegates), {
                    "mailbox_id": box, "idnat": idnat, "granted_at": datetime.now(timezone.utc),
                    "granted_by": actor.id})
        await self._audit.record(actor, "mailbox.grant", target=address, source="cli", delegate=idnat,
                                 already=bool(present))
        if not present:
            await self._bus.publish(RIGHTS, rights_event("delegation.granted", box, idnat))

    async def revoke(self, address: str, person: str, *, actor: Actor) -> None:
        address = normalise_address(address)
        async with self._engine.begin() as conn:
            box = await _shared_box(conn, address)
            idnat = await _professional_id(conn, person)
            result = await conn.execute(delete(mailbox_delegates).where(and_(
                mailbox_delegates.c.mailbox_id == box, mailbox_delegates.c.idnat == idnat)))
        if result.rowcount == 0:
            raise MailboxError(f"{idnat} was not a delegate of {address}")
        await self._audit.record(actor, "mailbox.revoke", target=address, source="cli", delegate=idnat)
        await self._bus.publish(RIGHTS, rights_event("delegation.revoked", box, idnat))

    async def list(self, *, local_only: bool = True) -> list[dict]:
        query = select(mailboxes.c.id, mailboxes.c.address, mailboxes.c.kind, mailboxes.c.owner_idnat,
                       mailboxes.c.organisation_id, mailboxes.c.published, mailboxes.c.description,
                       mailboxes.c.retired_at).order_by(mailboxes.c.address)
        if local_only:
            query = query.where(mailboxes.c.local.is_(True))
        async with self._engine.connect() as conn:
            boxes = [dict(r._mapping) for r in await conn.execute(query)]
            delegates: dict[int, list[str]] = {}
            for r in await conn.execute(select(mailbox_delegates.c.mailbox_id, mailbox_delegates.c.idnat)):
                delegates.setdefault(r.mailbox_id, []).append(r.idnat)
        for box in boxes:
            box["delegates"] = sorted(delegates.get(box.pop("id"), []))
            box["retired"] = box.pop("retired_at") is not None
        return boxes


async def _professional_id(conn, person: str) -> str:  # noqa: ANN001 - AsyncConnection
    """Accept an RPPS (11 digits) or a national identifier; the professional must be active."""
    person = person.strip()
    column = professionals.c.rpps if len(person) == 11 else professionals.c.idnat
    row = (await conn.execute(select(professionals.c.idnat).where(and_(
        column == person, professionals.c.retired_at.is_(None))))).first()
    if row is None:
        raise MailboxError(f"no active professional with identifier {person} in the directory")
    return row.idnat


async def _organisation_id(conn, org: str) -> str:  # noqa: ANN001
    org = org.strip().upper()
    row = (await conn.execute(select(organisations.c.id).where(and_(
        (organisations.c.finess == org) | (organisations.c.id == org),
        organisations.c.retired_at.is_(None))))).first()
    if row is None:
        raise MailboxError(f"no active organisation with FINESS or identifier {org} in the directory")
    return row.id


async def _shared_box(conn, address: str) -> int:  # noqa: ANN001
    row = (await conn.execute(select(mailboxes.c.id, mailboxes.c.kind).where(and_(
        mailboxes.c.address == address, mailboxes.c.local.is_(True), mailboxes.c.retired_at.is_(None))))).first()
    if row is None:
        raise MailboxError(f"no active local mailbox {address}")
    if row.kind != "organisational":
        raise MailboxError(f"{address} is {row.kind}: only organisational mailboxes have delegates")
    return row.id
