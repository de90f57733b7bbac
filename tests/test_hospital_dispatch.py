"""The dispatcher's loop: woken by the feed, otherwise polling at its pace, never spinning."""
from __future__ import annotations

import asyncio

from hospital.dispatch import Dispatcher
from hospital.feed import CHANNEL, PENDING
from mailserver.mailstore import MailStore
from store import db
from store.audit import AuditTrail
from store.events import LocalBus


async def test_idle_dispatcher_sleeps_and_a_wake_up_runs_a_pass(database_url):
    engine = db.create_engine(database_url)
    await db.upgrade(engine)
    bus = LocalBus()
    store = MailStore(engine, bus, reporting_mta="msante.test")
    dispatcher = Dispatcher(engine, store, AuditTrail(engine), bus, domains=("msante.test",), poll_seconds=0.2)
    passes = 0
    run_once = dispatcher.run_once

    async def counted() -> int:
        nonlocal passes
        passes += 1
        return await run_once()
    dispatcher.run_once = counted  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    try:
        await asyncio.sleep(1.0)  # idle: one pass at start, then one per poll (a spinning loop makes hundreds)
        assert 3 <= passes <= 8, passes
        before = passes
        await bus.publish(CHANNEL, PENDING)
        await asyncio.sleep(0.05)
        assert passes == before + 1
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await store.close()
        await engine.dispose()
