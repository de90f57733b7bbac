"""New mail in a box becomes an alert for the people who may read it.

The mail store announces each delivery on the box's bus channel (`mailbox:<id>`) after its
commit. This task listens to the channels of every local personal and shared box, re-reading
that list every RESUBSCRIBE_SECONDS to pick up boxes created since. Events are hints: when the
bus reports an overflow, or the subscription is renewed, deliveries since the last event are
re-read from the store. Each alert is keyed by the delivered message, so hearing of one
delivery twice raises one alert. The sender and subject come from the message's stored facts
(message_facts, mailserver/bodies.py: decoded when the body was stored), never from its bytes:
an alert reads a few hundred octets of JSON, where parsing the first 16 KB of the body missed
the Subject of a message whose header was longer than that.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import datetime, timedelta, timezone

from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine

from mailserver.mailstore import mailbox_channel
from store.events import OVERFLOW, QUEUE_DEPTH, EventBus, Subscription
from store.schema import folder_messages, folders, mailboxes, message_facts

from .alerts import Alerts

log = logging.getLogger("msante.instant")

RESUBSCRIBE_SECONDS = 30.0  # how long a newly created box waits before its mail raises alerts
LOOKBACK = timedelta(seconds=10)  # re-read margin before the last event heard, for deliveries in flight
MAX_FIELD_CHARS = 200
BATCH = 200  # deliveries per read of their facts (the IN list) and per transaction of alerts


class MailAlerts:
    def __init__(self, engine: AsyncEngine, bus: EventBus, alerts: Alerts) -> None:
        self._engine = engine
        self._bus = bus
        self._alerts = alerts
        self._heard = datetime.now(timezone.utc)  # deliveries from here on raise alerts

    async def run(self) -> None:
        channels: set[str] = set()
        subscription: Subscription | None = None
        pump: asyncio.Task | None = None
        try:
            while True:
                wanted = await self._channels()
                if wanted != channels:
                    if subscription is not None and pump is not None:
                        pump.cancel()
                        await subscription.close()
                    subscription, channels = self._bus.subscribe(*sorted(wanted)), wanted
                    pump = asyncio.create_task(self._pump(subscription), name="mail alerts")
                    await self._catch_up()  # what came before this subscription, or sat unread in the last
                await asyncio.sleep(RESUBSCRIBE_SECONDS)
        finally:
            if pump is not None:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump
            if subscription is not None:
                await subscription.close()

    async def _channels(self) -> set[str]:
        query = select(mailboxes.c.id).where(mailboxes.c.local.is_(True), mailboxes.c.retired_at.is_(None),
                                             mailboxes.c.kind != "applicative")
        async with self._engine.connect() as conn:
            return {mailbox_channel(r.id) for r in await conn.execute(query)}

    async def _pump(self, subscription: Subscription) -> None:
        """Events are taken off the subscription as they come and handled in batches: the
        deliveries heard while one batch was handled raise their alerts together, with one read
        of their facts and one commit (alerts lagged behind a busy SMTP listener otherwise)."""
        heard: list[dict] = []
        more = asyncio.Event()
        taker = asyncio.create_task(self._take(subscription, heard, more), name="mail alerts: events")
        try:
            while not taker.done():
                await more.wait()
                more.clear()
                batch, heard[:] = heard[:], []
                try:
                    await self._handle(batch)
                except Exception:  # one bad message must not stop alerts for everyone else
                    log.exception("raising alerts for %d events failed", len(batch))
        finally:
            taker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await taker

    @staticmethod
    async def _take(subscription: Subscription, heard: list[dict], more: asyncio.Event) -> None:
        try:
            async for event in subscription:
                if len(heard) >= QUEUE_DEPTH:  # far behind: re-read the store instead
                    heard[:] = [OVERFLOW]
                heard.append(event)
                more.set()
        finally:
            more.set()

    async def _handle(self, events: list[dict]) -> None:
        if any(event.get("type") == "overflow" for event in events):
            await self._catch_up()
            return
        delivered = [(event["mailbox"], event["uid"]) for event in events
                     if event.get("type") == "new_mail" and event.get("folder") == "INBOX"]
        if delivered:
            self._heard = datetime.now(timezone.utc)
            await self._alert(delivered)

    async def _catch_up(self) -> None:
        since, self._heard = self._heard - LOOKBACK, datetime.now(timezone.utc)
        query = (select(mailboxes.c.address, folder_messages.c.uid)
                 .select_from(folder_messages.join(folders).join(mailboxes))
                 .where(folders.c.name == "INBOX", folder_messages.c.internaldate >= since,
                        mailboxes.c.local.is_(True), mailboxes.c.kind != "applicative")
                 .order_by(folder_messages.c.id))
        async with self._engine.connect() as conn:
            delivered = [(r.address, r.uid) for r in await conn.execute(query)]
        for start in range(0, len(delivered), BATCH):
            await self._alert(delivered[start:start + BATCH])

    async def _alert(self, delivered: list[tuple[str, int]]) -> None:
        """Alerts for messages in INBOXes, (box address, UID) each; expunged ones are skipped."""
        found: dict[tuple[str, int], tuple[int, str]] = {}
        async with self._engine.connect() as conn:
            for start in range(0, len(delivered), BATCH):
                query = (select(mailboxes.c.address, folder_messages.c.uid, folder_messages.c.id, message_facts.c.fields)
                         .select_from(folder_messages.join(folders).join(mailboxes)
                                      .join(message_facts, message_facts.c.body_id == folder_messages.c.body_id))
                         .where(folders.c.name == "INBOX",
                                tuple_(mailboxes.c.address, folder_messages.c.uid).in_(delivered[start:start + BATCH])))
                found.update(((r.address, r.uid), (r.id, r.fields)) for r in await conn.execute(query))
        wanted = []
        for address, uid in delivered:
            if (address, uid) not in found:  # expunged already
                continue
            folder_message_id, stored = found[address, uid]
            fields = json.loads(stored)["h"]  # decoded values, by lower-case field name
            sender = (fields.get("from") or [""])[0][:MAX_FIELD_CHARS]
            subject = (fields.get("subject") or [""])[0][:MAX_FIELD_CHARS]
            wanted.append((address, "mail", f"Nouveau message dans {address}",
                           {"mailbox": address, "uid": uid, "from": sender, "subject": subject},
                           f"mail:{folder_message_id}"))
        await self._alerts.raise_for_mailboxes(wanted)
