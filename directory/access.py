"""Which mailboxes an authenticated caller may act on, and in what capacity.

The national model: a professional acts on their own nominative boxes and on the
organisational boxes they are delegated to; an application acts on the applicative box its
certificate names. Mail and IMAP both ask here, so the rule is written once.
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, bindparam, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from store.db import OneRead
from store.schema import mailbox_delegates, mailboxes

from .authn import Principal


@dataclass(frozen=True)
class MailboxGrant:
    mailbox_id: int
    address: str
    kind: str
    role: str  # "owner", "delegate" or "application"


# Built once, with bound parameters: SMTP asks at every MAIL FROM, and building a statement (and
# its cache key) cost more CPU than running it on SQLite (issue 13).
_ACTIVE = and_(mailboxes.c.local.is_(True), mailboxes.c.retired_at.is_(None))
_APPLICATION = select(mailboxes.c.id, mailboxes.c.address, mailboxes.c.kind).where(
    _ACTIVE, mailboxes.c.address == bindparam("principal"), mailboxes.c.kind == "applicative")
_DELEGATED = select(mailbox_delegates.c.mailbox_id).where(mailbox_delegates.c.idnat == bindparam("principal"))
_PERSON = select(mailboxes.c.id, mailboxes.c.address, mailboxes.c.kind, mailboxes.c.owner_idnat).where(
    _ACTIVE, or_(and_(mailboxes.c.owner_idnat == bindparam("principal"),
                      mailboxes.c.kind.in_(("nominative", "cabinet"))),
                 and_(mailboxes.c.id.in_(_DELEGATED), mailboxes.c.kind == "organisational")))
_AT = mailboxes.c.address == bindparam("address")
_EVERY = (_APPLICATION, _PERSON.order_by(mailboxes.c.address))  # (application's, person's)
_THE_ONE = (OneRead(_APPLICATION.where(_AT)), OneRead(_PERSON.where(_AT)))  # every MAIL FROM asks


async def usable_mailboxes(conn: AsyncConnection, principal: Principal) -> list[MailboxGrant]:
    return await _grants(conn, principal, None)


async def grant_for(conn: AsyncConnection, principal: Principal, address: str) -> MailboxGrant | None:
    grants = await _grants(conn, principal, address.strip().lower())
    return grants[0] if grants else None


async def _grants(conn: AsyncConnection, principal: Principal, address: str | None) -> list[MailboxGrant]:
    """The boxes `principal` may use, or the one at `address` if it may."""
    if address is None:
        application, person = _EVERY
        params = {"principal": principal.id}
        rows = await conn.execute(application if principal.kind == "application" else person, params)
    else:
        application, person = _THE_ONE
        params = {"principal": principal.id, "address": address}
        rows = await (application if principal.kind == "application" else person).rows(conn, params)
    if principal.kind == "application":
        return [MailboxGrant(r.id, r.address, r.kind, "application") for r in rows]
    return [MailboxGrant(r.id, r.address, r.kind, "owner" if r.owner_idnat == principal.id else "delegate")
            for r in rows]
