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


async def test_a_chunk_of_events_is_stored_many_rows_a_statement(database_url, tmp_path, monkeypatch):
    """Eight admissions waiting: one pass tells the GP and the care circle of each, its mails,
    notices, alerts and timeline items written a table at a time (measured, one event at a
    time was 17 statements each, on the writer the feed's ACKs wait for). UIDs and circle seqs
    still follow one another, one per event."""
    from sqlalchemy import event, func, select
    from sqlalchemy.engine import Engine

    from store.schema import circle_messages, folder_messages, hospital_events, hospital_notices

    engine, bus, audit_trail, store = await _eight_admissions(tmp_path, monkeypatch, database_url, "CHUNK")
    statements: list[str] = []
    try:
        dispatcher = Dispatcher(engine, store, audit_trail, bus, domains=("msante.test",))
        def count(_conn, _cursor, statement, *_args) -> None:  # noqa: ANN001
            statements.append(statement)
        event.listen(Engine, "before_cursor_execute", count)  # every engine: the group commit has its own
        assert await dispatcher.run_once() == 8
        event.remove(Engine, "before_cursor_execute", count)
        async with engine.connect() as conn:
            assert (await conn.execute(select(func.count()).where(hospital_events.c.status == "dispatched"))).scalar() == 8
            notices = (await conn.execute(select(hospital_notices.c.status, hospital_notices.c.role))).all()
            assert [tuple(n) for n in notices] == [("delivered", "gp")] * 8
            uids = (await conn.execute(select(folder_messages.c.uid).order_by(folder_messages.c.id))).scalars().all()
            assert len(uids) == 8 and uids == list(range(uids[0], uids[0] + 8))
            seqs = (await conn.execute(select(circle_messages.c.seq).where(circle_messages.c.kind == "event")
                                       .order_by(circle_messages.c.id))).scalars().all()
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) and len(seqs) % 8 == 0
    finally:
        await store.close()
        await engine.dispose()
    assert len(statements) < 8 * 4, len(statements)


async def test_a_chunk_of_notices_raises_the_gps_mail_alerts_in_one_write(database_url, tmp_path, monkeypatch):
    """The eight notices a chunk delivers to the GP's box at once become eight `mail` alerts,
    inserted by one statement (one write each was as many turns of the writer the ACKs wait on)."""
    from sqlalchemy import event, func, select
    from sqlalchemy.engine import Engine

    from instant.alerts import Alerts
    from instant.alertstore import AlertStore
    from instant.mailalerts import MailAlerts
    from store.schema import alerts

    engine, bus, audit_trail, store = await _eight_admissions(tmp_path, monkeypatch, database_url, "ALERTS")
    inserts: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:  # noqa: ANN001
        if statement.startswith("INSERT INTO alerts") and "mail:" in str(_args[0]):
            inserts.append(statement)
    watcher = asyncio.create_task(MailAlerts(engine, bus, Alerts(
        engine, AlertStore(engine, store.writes), audit_trail, bus)).run())
    try:
        await asyncio.sleep(0.5)  # the watcher listens to every box
        event.listen(Engine, "before_cursor_execute", count)  # every engine: the group commit has its own
        assert await Dispatcher(engine, store, audit_trail, bus, domains=("msante.test",)).run_once() == 8
        for _ in range(100):
            async with engine.connect() as conn:
                raised = (await conn.execute(select(func.count()).where(alerts.c.kind == "mail"))).scalar()
            if raised == 8:
                break
            await asyncio.sleep(0.05)
        assert raised == 8
        assert len(inserts) == 1, inserts
    finally:
        event.remove(Engine, "before_cursor_execute", count)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await store.close()
        await engine.dispose()


async def _eight_admissions(tmp_path, monkeypatch, database_url, prefix: str):  # noqa: ANN001, ANN202
    """The demo's store with eight admissions acknowledged by the feed and not yet dispatched:
    (engine, bus, audit trail, mail store)."""
    from hospital.feed import Feed, Sender
    from tests.conftest import init_data_dir
    from tests.test_hospital_feed import msa, sample

    await asyncio.to_thread(init_data_dir, tmp_path / "var", monkeypatch, database_url=database_url)  # the demo
    engine = db.create_engine(database_url)
    bus, audit_trail = LocalBus(), AuditTrail(engine)
    store = MailStore(engine, bus, reporting_mta="msante.test")
    feed = Feed(engine, audit_trail, bus, store.writes, facility="msante.test")
    hospital_box = Sender("dpi.ch-saint-paul@msante.test", "970002002", "970002002")
    for n in range(8):
        message = sample("adt_a01_admission.hl7", f"{prefix}-{n}").replace(b"\n", b"\r")
        assert msa(await feed.receive(message, hospital_box, source="test"))[1] == "AA"
    return engine, bus, audit_trail, store
