"""Events that cross processes through the store. What the `msante` command changes (a
delegation revoked, IMAP rights, a care circle's members) must reach the live sessions of a
running server at once, and the command shares nothing with that server but the database.

`StoreBus` is the EventBus such a process publishes on: each event becomes a `bus_events`
row, committed with a NOTIFY on PostgreSQL. Every server runs a `Relay` that tails the table
into its own bus, woken by the NOTIFY on PostgreSQL and polling every POLL_SECONDS on SQLite
(one indexed range read that finds nothing most of the time). Subscribers hear the command's
events as they hear their own server's; a bus that spans processes by itself (Redis, for
several nodes) replaces both ends without touching the publishers or the subscribers.

Events stay hints (store/events.py): what a relay misses while it is down, sessions opened
later read from the store, and the periodic rechecks (websocket memberships) remain the floor.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from sqlalchemy import delete, func, insert, or_, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from .db import committed, utc
from .events import EventBus, LocalBus, LocalSubscription, LocalTap
from .schema import bus_events

log = logging.getLogger("msante.events")

POLL_SECONDS = 0.2  # SQLite: the most a change made by another process waits before live sessions hear it
NOTIFIED_POLL_SECONDS = 5.0  # PostgreSQL: NOTIFY wakes the relay; polling only covers a lost listening connection
NOTIFY_CHANNEL = "msante_bus"
# Rows are read again this far behind the newest: on PostgreSQL ids are handed out at insert
# but become visible at commit, so an id may appear after a greater one was relayed.
OVERLAP = timedelta(seconds=10)
KEEP = timedelta(hours=1)  # relayed rows are deleted after this
PRUNE_SECONDS = 60.0


class StoreBus:
    """Publish through the store, for processes whose events others must hear (the CLI).
    Subscribers in this process hear the events too, as on a LocalBus."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._local = LocalBus()

    async def publish(self, channel: str, event: dict[str, Any]) -> None:
        async def work(conn) -> None:  # noqa: ANN001 - AsyncConnection
            await conn.execute(insert(bus_events), {"channel": channel, "event": json.dumps(event, default=str),
                                                    "created_at": datetime.now(timezone.utc)})
            if conn.dialect.name == "postgresql":  # delivered when (and only if) the row commits
                await conn.execute(text("SELECT pg_notify(:channel, '')"), {"channel": NOTIFY_CHANNEL})
        await committed(self._engine, work)
        await self._local.publish(channel, event)

    def subscribe(self, *channels: str) -> LocalSubscription:
        return self._local.subscribe(*channels)

    def tap(self, channel: str, listener: Callable[[str, dict[str, Any]], None]) -> LocalTap:
        return self._local.tap(channel, listener)

    def hears_all(self) -> bool:
        return False  # other processes' events reach it only through the store


class Relay:
    """Tails `bus_events` into this process's bus, from the moment `start` is called."""

    def __init__(self, engine: AsyncEngine, bus: EventBus) -> None:
        self._engine = engine
        self._bus = bus
        self._last = 0
        self._since = datetime.now(timezone.utc)
        self._seen: dict[int, datetime] = {}  # relayed ids still inside the overlap window

    async def start(self) -> None:
        """Take the table's current end as the start: older events concern sessions that no
        longer exist (or that read the store when they began)."""
        self._since = datetime.now(timezone.utc)
        async with self._engine.connect() as conn:
            self._last = (await conn.execute(select(func.max(bus_events.c.id)))).scalar() or 0

    async def run(self) -> None:
        """Relay until cancelled."""
        wake = asyncio.Event()
        async with contextlib.AsyncExitStack() as stack:
            try:
                notified = await self._listen(stack, wake)
            except Exception:  # no LISTEN: polling alone still carries every event
                log.exception("cannot LISTEN for events from other processes; polling every %.1f s", POLL_SECONDS)
                notified = False
            pruned = time.monotonic()
            while True:
                wake.clear()
                try:
                    await self.relay()
                    if time.monotonic() - pruned > PRUNE_SECONDS:
                        pruned = time.monotonic()
                        await self._prune()
                except Exception:  # a database hiccup must not end live rights changes for good
                    log.exception("relaying events from the store failed; retrying")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(wake.wait(), NOTIFIED_POLL_SECONDS if notified else POLL_SECONDS)

    async def relay(self) -> int:
        """Publish the rows committed since the last call; how many."""
        cutoff = max(self._since, datetime.now(timezone.utc) - OVERLAP)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(
                select(bus_events.c.id, bus_events.c.channel, bus_events.c.event, bus_events.c.created_at)
                .where(or_(bus_events.c.id > self._last, bus_events.c.created_at >= cutoff))
                .order_by(bus_events.c.id))).all()
        count = 0
        for row in rows:
            if row.id in self._seen:
                continue
            self._seen[row.id] = utc(row.created_at)
            self._last = max(self._last, row.id)
            await self._bus.publish(row.channel, json.loads(row.event))
            count += 1
        self._seen = {i: at for i, at in self._seen.items() if at >= cutoff}
        return count

    async def _listen(self, stack: contextlib.AsyncExitStack, wake: asyncio.Event) -> bool:
        """LISTEN on a connection held for the relay's life (PostgreSQL); False elsewhere."""
        if self._engine.dialect.name != "postgresql":
            return False
        conn = await stack.enter_async_context(self._engine.connect())
        driver = (await conn.get_raw_connection()).driver_connection

        def notified(*_args: Any) -> None:
            wake.set()
        await driver.add_listener(NOTIFY_CHANNEL, notified)
        stack.push_async_callback(driver.remove_listener, NOTIFY_CHANNEL, notified)
        return True

    async def _prune(self) -> None:
        await committed(self._engine, lambda conn: conn.execute(
            delete(bus_events).where(bus_events.c.created_at < datetime.now(timezone.utc) - KEEP)))
