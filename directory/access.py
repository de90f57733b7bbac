"""Which mailboxes an authenticated caller may act on, and in what capacity.

The national model: a professional acts on their own nominative boxes and on the
organisational boxes they are delegated to; an application acts on the applicative box its
certificate names. Mail and IMAP both ask here, so the rule is written once.
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from store.schema import mailbox_delegates, mailboxes

from .authn import Principal


@dataclass(frozen=True)
class MailboxGrant:
    mailbox_id: int
    address: str
    kind: str
    role: str  # "owner", "delegate" or "application"


async def usable_mailboxes(conn: AsyncConnection, principal: Principal) -> list[MailboxGrant]:
    active = and_(mailboxes.c.local.is_(True), mailboxes.c.retired_at.is_(None))
    if principal.kind == "application":
        query = select(mailboxes.c.id, mailboxes.c.address, mailboxes.c.kind).where(
            active, mailboxes.c.address == principal.id, mailboxes.c.kind == "applicative")
        return [MailboxGrant(r.id, r.address, r.kind, "application") for r in await conn.execute(query)]
    delegated = select(mailbox_delegates.c.mailbox_id).where(mailbox_delegates.c.idnat == principal.id)
    query = select(mailboxes.c.id, mailboxes.c.address, mailboxes.c.kind, mailboxes.c.owner_idnat).where(
        active, or_(and_(mailboxes.c.owner_idnat == principal.id, mailboxes.c.kind.in_(("nominative", "cabinet"))),
                    and_(mailboxes.c.id.in_(delegated), mailboxes.c.kind == "organisational"))
    ).order_by(mailboxes.c.address)
    return [MailboxGrant(r.id, r.address, r.kind, "owner" if r.owner_idnat == principal.id else "delegate")
            for r in await conn.execute(query)]


async def grant_for(conn: AsyncConnection, principal: Principal, address: str) -> MailboxGrant | None:
    address = address.strip().lower()
    for grant in await usable_mailboxes(conn, principal):
        if grant.address == address:
            return grant
    return None
