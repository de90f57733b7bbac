"""Alerts: raised by the server (new mail, circle changes; hospital events later), kept until
acknowledged, pushed to the live connections of everyone they concern.

A mailbox's alert concerns whoever may read the box, decided by directory.access (the rule
mail and IMAP use): an organisational box's alert is shared by its delegates, and the first
one to acknowledge it does so for all, with their name and the time kept on the alert.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select, union
from sqlalchemy.ext.asyncio import AsyncEngine

from directory.access import grant_for, usable_mailboxes
from directory.authn import Principal
from store.audit import AuditTrail
from store.events import EventBus
from store.schema import mailbox_delegates, mailboxes

from hospital import receipts

from . import alertstore
from .alertstore import AlertStore
from .errors import Forbidden
from .hub import person_channel


class Alerts:
    def __init__(self, engine: AsyncEngine, store: AlertStore, audit: AuditTrail, bus: EventBus) -> None:
        self._engine = engine
        self._store = store
        self._audit = audit
        self._bus = bus

    async def raise_for_people(self, idnats: list[str], kind: str, title: str, data: dict[str, Any],
                               key: str | None = None) -> None:
        for idnat in idnats:
            alert = await self._store.add(alertstore.person(idnat), kind, title, data, _now(), key)
            if alert is not None:
                await self._push(alert)

    async def raise_for_mailboxes(self, wanted: list[tuple[str, str, str, dict[str, Any], str]]) -> None:
        """Alerts for whoever may read these boxes (address, kind, title, data, key), stored in one
        statement (a key raised for its box before raises nothing), each box's readers read once."""
        raised = await self._store.add_keyed([(alertstore.mailbox(address), kind, title, data, key)
                                              for address, kind, title, data, key in wanted], _now())
        readers: dict[str, list[str]] = {}
        for alert in raised:
            if alert is not None:
                await self._push(alert, readers)

    async def pending_for(self, principal: Principal) -> list[dict]:
        async with self._engine.connect() as conn:
            boxes = await usable_mailboxes(conn, principal)
        return await self._store.pending([alertstore.person(principal.id),
                                          *(alertstore.mailbox(b.address) for b in boxes)])

    async def acknowledge(self, principal: Principal, alert_id: int, source: str) -> dict:
        alert = await self._store.get(alert_id)
        if alert is None or not await self._concerns(alert["audience"], principal):
            await self._audit.record(principal.actor, "alert.ack", target=str(alert_id), outcome="denied",
                                     source=source, reason="unknown alert" if alert is None else "not concerned")
            raise Forbidden(f"alert {alert_id} is not yours to acknowledge")
        alert, now_acknowledged, told = await self._store.acknowledge(alert_id, principal.id, _now())
        await receipts.announce(self._bus, told)
        await self._audit.record(principal.actor, "alert.ack", target=str(alert_id), source=source,
                                 kind=alert["kind"], already=not now_acknowledged)
        if now_acknowledged:
            await self._push(alert)
        return alert

    async def readers(self, address: str) -> list[str]:
        """Who may read the box now: its owner and delegates, each confirmed by the access rule."""
        candidates = union(
            select(mailboxes.c.owner_idnat.label("idnat")).where(
                mailboxes.c.address == address, mailboxes.c.owner_idnat.is_not(None)),
            select(mailbox_delegates.c.idnat).join(mailboxes, mailboxes.c.id == mailbox_delegates.c.mailbox_id)
            .where(mailboxes.c.address == address))
        async with self._engine.connect() as conn:
            people = [r.idnat for r in await conn.execute(candidates)]
            return sorted([idnat for idnat in people
                           if await grant_for(conn, Principal("person", idnat, "", "directory"), address)])

    async def _concerns(self, audience: str, principal: Principal) -> bool:
        kind, _, who = audience.partition(":")
        if kind == "person":
            return who == principal.id
        async with self._engine.connect() as conn:
            return await grant_for(conn, principal, who) is not None

    async def _push(self, alert: dict, readers: dict[str, list[str]] | None = None) -> None:
        """To the live connections of everyone the alert concerns (`readers`: the boxes' readers
        already read, kept for the next alerts)."""
        kind, _, who = alert["audience"].partition(":")
        people = [who]
        if kind != "person":
            readers = {} if readers is None else readers
            if who not in readers:
                readers[who] = await self.readers(who)
            people = readers[who]
        for idnat in people:
            await self._bus.publish(person_channel(idnat), {"type": "alert", "alert": alert})


def _now() -> datetime:
    return datetime.now(timezone.utc)
