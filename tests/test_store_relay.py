"""Events crossing processes through the store: a StoreBus on one engine (the CLI's), a Relay on
another (a server's) feeding that server's LocalBus."""
from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime, timezone

import pytest
from sqlalchemy import insert

from store import db
from store.events import LocalBus
from store.relay import NOTIFIED_POLL_SECONDS, Relay, StoreBus
from store.schema import bus_events


@pytest.fixture
async def engines(database_url):
    server, command = db.create_engine(database_url), db.create_engine(database_url)
    await db.upgrade(server)
    yield server, command
    await command.dispose()
    await server.dispose()


async def test_an_event_published_by_another_engine_reaches_the_local_bus(engines, database_url):
    server, command = engines
    bus = LocalBus()
    subscription = bus.subscribe("circle:1")
    await StoreBus(command).publish("circle:1", {"type": "member.removed", "idnat": "before"})  # before start
    relay = Relay(server, bus)
    await relay.start()
    running = asyncio.create_task(relay.run())
    try:
        await asyncio.sleep(0.3)  # the relay is waiting (on PostgreSQL, for a NOTIFY)
        started = time.monotonic()
        await StoreBus(command).publish("circle:1", {"type": "member.removed", "idnat": "810002000023"})
        event = await asyncio.wait_for(anext(aiter(subscription)), 5)
        elapsed = time.monotonic() - started
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    assert event == {"type": "member.removed", "idnat": "810002000023", "channel": "circle:1"}
    assert subscription.queue.empty()  # what was published before the relay started is not replayed
    print(f"\nStoreBus.publish -> relayed on the other engine's bus: {elapsed * 1000:.0f} ms")
    # On PostgreSQL the relay polls only every 5 s: a faster delivery is the NOTIFY's.
    assert elapsed < (1.0 if database_url.startswith("postgresql") else NOTIFIED_POLL_SECONDS)


async def test_a_row_committed_after_a_greater_id_is_relayed_once(engines):
    """On PostgreSQL an id is taken at insert and seen at commit: a smaller id can show up
    after a greater one was relayed, and must still be relayed, once."""
    server, command = engines
    bus = LocalBus()
    subscription = bus.subscribe("rights")
    relay = Relay(server, bus)
    await relay.start()

    async def row(row_id: int) -> None:
        async with command.begin() as conn:
            await conn.execute(insert(bus_events), {"id": row_id, "channel": "rights", "event": f'{{"n": {row_id}}}',
                                                    "created_at": datetime.now(timezone.utc)})
    await row(50)
    assert await relay.relay() == 1
    await row(40)
    assert await relay.relay() == 1
    assert await relay.relay() == 0
    assert [subscription.queue.get_nowait()["n"] for _ in range(subscription.queue.qsize())] == [50, 40]
