"""New mail in a box becomes an alert for the people who may read it.

The mail store announces each delivery on the box's bus channel (`mailbox:<id>`) after its
commit. This task listens to the channels of every local personal and shared box, re-reading
that list every RESUBSCRIBE_SECONDS to pick up boxes created since. Events are hints: when the
bus reports an overflow, or the subscription is renewed, deliveries since the last event are
re-read from the store. Each alert is keyed by the delivered message, so hearing of one
delivery twice raises one alert.
"""
from __future__ import annotations

import asyncio
import contextlib
import email.policy
import logging
from datetime import datetime, timedelta, timezone
from email.parser import BytesHeaderParser

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from mailserver.mailstore import mailbox_channel
from store.events import EventBus, Subscription
from store.schema import bodies, folder_messages, folders, mailboxes

from .alerts import Alerts

log = logging.getLogger("msante.instant")

RESUBSCRIBE_SECONDS = 30.0  # how long a newly created box waits before its mail raises alerts
HEAD_BYTES = 16 * 1024  # enough for the header of any sane message; the body is never read
LOOKBACK = timedelta(seconds=10)  # re-read margin before the last event heard, for deliveries in flight
MAX_FIELD_CHARS = 200
BATCH = 100  # deliveries whose headers one query reads


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
        """Hear deliveries while the alerts of those heard before are raised: each round raises
        every delivery heard meanwhile at once (one read of their headers, one write), as the
        hospital dispatch delivers a chunk of notices to a GP's box at once."""
        heard: list[tuple[str, int]] = []
        woken = asyncio.Event()

        async def listen() -> None:
            async for event in subscription:
                if event.get("type") == "new_mail" and event.get("folder") == "INBOX":
                    self._heard = datetime.now(timezone.utc)
                    heard.append((event["mailbox"], event["uid"]))
                    woken.set()
                elif event.get("type") == "overflow":
                    heard.append(("", 0))  # a catch-up, in its turn
                    woken.set()
        listener = asyncio.create_task(listen())
        try:
            while True:
                await woken.wait()
                woken.clear()
                taken = heard[:]
                heard.clear()
                try:
                    if ("", 0) in taken:
                        await self._catch_up()
                    await self._alert_many([t for t in taken if t != ("", 0)])
                except Exception:  # one bad message must not stop alerts for everyone else
                    log.exception("raising alerts for %d deliveries failed", len(taken))
        finally:
            listener.cancel()

    async def _catch_up(self) -> None:
        since, self._heard = self._heard - LOOKBACK, datetime.now(timezone.utc)
        query = (select(mailboxes.c.address, folder_messages.c.uid)
                 .select_from(folder_messages.join(folders).join(mailboxes))
                 .where(folders.c.name == "INBOX", folder_messages.c.internaldate >= since,
                        mailboxes.c.local.is_(True), mailboxes.c.kind != "applicative")
                 .order_by(folder_messages.c.id))
        async with self._engine.connect() as conn:
            delivered = [(r.address, r.uid) for r in await conn.execute(query)]
        await self._alert_many(delivered)

    async def _alert_many(self, delivered: list[tuple[str, int]]) -> None:
        for start in range(0, len(delivered), BATCH):
            chunk = delivered[start:start + BATCH]
            query = (select(mailboxes.c.address, folder_messages.c.uid, folder_messages.c.id,
                            func.substr(bodies.c.data, 1, HEAD_BYTES).label("head"))
                     .select_from(folder_messages.join(folders).join(mailboxes)
                                  .join(bodies, bodies.c.id == folder_messages.c.body_id))
                     .where(folders.c.name == "INBOX", or_(*(and_(mailboxes.c.address == address,
                                                                  folder_messages.c.uid == uid)
                                                             for address, uid in chunk))))
            async with self._engine.connect() as conn:
                found = {(r.address, r.uid): r for r in await conn.execute(query)}
            wanted = []
            for address, uid in chunk:
                row = found.get((address, uid))
                if row is None:  # expunged already
                    continue
                header = BytesHeaderParser(policy=email.policy.default).parsebytes(bytes(row.head))
                sender = str(header.get("from", ""))[:MAX_FIELD_CHARS]
                subject = str(header.get("subject", ""))[:MAX_FIELD_CHARS]
                wanted.append((address, "mail", f"Nouveau message dans {address}",
                               {"mailbox": address, "uid": uid, "from": sender, "subject": subject}, f"mail:{row.id}"))
            await self._alerts.raise_for_mailboxes(wanted)
