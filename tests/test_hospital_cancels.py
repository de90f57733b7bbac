"""Cancellations end to end, over real MLLP inside mutual TLS with the demo hospital's
certificate: an admission told to the GP (IMAP) and the circle (websocket), then its ADT^A11:
the event is cancelled, the GP gets "Annulation : …" answering the notice, the circle's item is
marked cancelled and followed by a cancellation item, members get an alert. A notice still
queued for another operator is withdrawn instead; a discharge cancelled by ZBE-4 CANCEL; a
cancellation naming nothing is recorded and audited."""
from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select, update

from store.schema import (audit, deliveries, hl7_messages, hospital_events, hospital_notice_history, hospital_notices,
                          mailboxes)
from tests.conftest import free_port
from tests.test_api import request, token_for
from tests.test_hospital_feed import GP, hospital, inbox_messages, msa, sample, wait_for
from tests.test_instant_ws import CIRCLE, COORDINATOR, NURSE, connect  # noqa: F401 - fixture

ADMISSION = "adt_a01_admission.hl7"
CANCEL = "adt_a11_cancel_admission.hl7"


def send(server, *messages: bytes) -> None:
    with hospital(server) as client:
        assert [msa(client.send(m))[1] for m in messages] == ["AA"] * len(messages)


def events(server) -> list[dict]:
    return server.rows(select(hospital_events).order_by(hospital_events.c.id))


async def test_a11_cancels_an_admission_already_told(server, connect):
    nurse = await connect(NURSE)
    await nurse.request(type="subscribe", circle=CIRCLE)
    await asyncio.to_thread(send, server, sample(ADMISSION))
    item = await nurse.expect(type="message", circle=CIRCLE, timeout=10, where=lambda f: f["kind"] == "event")
    await nurse.expect(type="alert", timeout=10, where=lambda f: f["alert"]["kind"] == "patient")

    await asyncio.to_thread(send, server, sample(CANCEL))
    cancel = await nurse.expect(type="message", circle=CIRCLE, timeout=10,
                                where=lambda f: f["kind"] == "event" and f["event"]["kind"] == "ANN")
    assert cancel["seq"] == item["seq"] + 1 and cancel["event"]["cancels"]["seq"] == item["seq"]
    assert cancel["text"] == "Annulation : Admission : TECHER Josette (MEDECINE POLYVALENTE)"
    alert = await nurse.expect(type="alert", timeout=10, where=lambda f: f["alert"]["title"].startswith("Annulation"))
    assert alert["alert"]["kind"] == "patient"

    admission, cancellation = await asyncio.to_thread(events, server)
    assert (admission["status"], admission["cancelled_by"], admission["movement_id"]) == (
        "cancelled", cancellation["id"], "MVT0002")
    assert (cancellation["kind"], cancellation["status"]) == ("ANN", "dispatched")
    notice, cancelled = await asyncio.to_thread(inbox_messages, server)
    assert cancelled["Subject"] == f"Annulation : {notice['Subject']}"
    assert cancelled["In-Reply-To"] == notice["Message-ID"] and cancelled["X-MSS-INS"] == "N"
    assert "annule l'événement" in cancelled.get_body().get_content()
    # the cancellation is a notice of its own, delivered, with receipts
    rows = await asyncio.to_thread(server.rows, select(hospital_notices).where(
        hospital_notices.c.event_id == cancellation["id"]))
    assert [(r["recipient"], r["role"], r["status"]) for r in rows] == [(GP, "gp", "delivered")]
    # history shows the admission cancelled
    history = await nurse.request(type="history", circle=CIRCLE)
    (stored,) = [m for m in history["messages"] if m["seq"] == item["seq"]]
    assert stored["event"]["cancelled"]["by"] == cancellation["id"]

    # a resend of the cancellation changes nothing
    await asyncio.to_thread(send, server, sample(CANCEL))
    await nurse.nothing(type="message", where=lambda f: f["kind"] == "event")
    assert len(await asyncio.to_thread(inbox_messages, server)) == 2


@pytest.fixture
def unreachable_gp(monkeypatch):
    """Mail for msante.test relayed to a loopback port nobody listens on: it stays queued."""
    monkeypatch.setenv("MSANTE_RELAY__ROUTES", f'{{"msante.test": "127.0.0.1:{free_port()}"}}')


def test_a_notice_still_queued_is_withdrawn(unreachable_gp, server):
    server.execute(update(mailboxes).where(mailboxes.c.address == GP).values(local=False))  # another operator's
    send(server, sample(ADMISSION))
    (notice,) = wait_for(server, select(hospital_notices).where(hospital_notices.c.role == "gp"))
    assert notice["status"] == "queued"
    send(server, sample(CANCEL))
    wait_for(server, select(hospital_events).where(hospital_events.c.status == "cancelled"))
    wait_for(server, select(hospital_notice_history).where(hospital_notice_history.c.status == "withdrawn"))
    (delivery,) = server.rows(select(deliveries).where(deliveries.c.envelope_id == notice["envelope_id"]))
    assert delivery["status"] == "withdrawn"
    assert not server.rows(select(deliveries).where(deliveries.c.status == "queued"))  # no cancellation to send
    (row,) = server.rows(select(audit.c.detail).where(audit.c.action == "hospital.cancel"))
    assert '"withdrawn": 1' in row["detail"] and '"told": 0' in row["detail"]


def test_zbe_cancel_cancels_a_discharge_and_nothing_to_cancel_is_audited(server):
    discharge = sample("adt_a03_discharge.hl7")
    a13 = sample(CANCEL, "CHSP-A13-0006", **{"ADT^A11^ADT_A09": "ADT^A13^ADT_A01", "MVT0002": "MVT0005"})
    send(server, discharge)
    wait_for(server, select(hospital_events).where(hospital_events.c.status == "dispatched"))
    send(server, a13, sample(CANCEL, "CHSP-A11-0099", MVT0002="MVT9999"))
    wait_for(server, select(hospital_events).where(hospital_events.c.kind == "ANN",
                                                   hospital_events.c.status == "dispatched"), 2)
    rows = events(server)
    assert [(r["kind"], r["status"], r["cancelled_by"]) for r in rows] == [
        ("SOR", "cancelled", rows[1]["id"]), ("ANN", "dispatched", None), ("ANN", "dispatched", None)]
    subjects = [m["Subject"] for m in inbox_messages(server)]
    assert len(subjects) == 2 and subjects[1] == f"Annulation : {subjects[0]}"
    outcomes = server.rows(select(audit.c.outcome).where(audit.c.action == "hospital.cancel").order_by(audit.c.id))
    assert sorted(r["outcome"] for r in outcomes) == ["failed", "ok"]  # dispatched side by side


def test_a_cancelled_ed_visit_is_no_ed_visit_in_the_indicators(server):
    send(server, sample("adt_a04_ed_visit.hl7"))
    wait_for(server, select(hospital_notices).where(hospital_notices.c.role == "gp"))
    send(server, sample(CANCEL, MVT0002="MVT0001"))
    wait_for(server, select(hospital_events).where(hospital_events.c.status == "cancelled"))
    status, _, found = request(server, "GET", "/api/indicators?from=2026-12&to=2026-12&structure=970002002",
                               token_for(server, COORDINATOR))
    assert status == 200
    (month,) = found["items"]
    assert month["events"] == {"ANN": 1, "URG": 1}  # received, both
    assert (month["ed_visits"], month["ed_gp_notified"], month["median_minutes_to_notice"]) == (0, 0, None)


async def test_a_cancellation_before_dispatch_tells_nobody(database_url):
    """The feed stored an admission and its A11 before the dispatcher ran (a busy moment, a
    restart): the admission is withdrawn, never told, whichever the dispatcher meets first."""
    from hospital.dispatch import Dispatcher, _Lookups
    from hospital.feed import Feed, Sender
    from mailserver.mailstore import MailStore
    from store import db
    from store.audit import AuditTrail
    from store.events import LocalBus
    from store.schema import alerts, circle_messages

    engine = db.create_engine(database_url)
    await db.upgrade(engine)
    bus, audit_trail = LocalBus(), AuditTrail(engine)
    store = MailStore(engine, bus, reporting_mta="msante.test")
    feed = Feed(engine, audit_trail, bus, store.writes, facility="msante.test")
    hospital_box = Sender("dpi.ch-saint-paul@msante.test", "970002002", "970002002")
    try:
        for message in (sample(ADMISSION), sample(CANCEL)):
            assert msa(await feed.receive(message.replace(b"\n", b"\r"), hospital_box, source="test"))[1] == "AA"
        dispatcher = Dispatcher(engine, store, audit_trail, bus, domains=("msante.test",))
        async with engine.connect() as conn:  # the rows as a pass reads them
            admission, cancellation = (await conn.execute(
                select(hospital_events, hl7_messages.c.sender).join(hl7_messages)
                .order_by(hospital_events.c.id))).all()
            lookups = _Lookups(engine)
            await dispatcher.dispatch(cancellation, lookups)  # the cancellation first
            await dispatcher.dispatch(admission, lookups)  # then the admission, as a pass that read it before would
        assert await dispatcher.run_once() == 0
        async with engine.connect() as conn:
            rows = (await conn.execute(select(hospital_events.c.status, hospital_events.c.cancelled_by)
                                       .order_by(hospital_events.c.id))).all()
            assert [tuple(r) for r in rows] == [("cancelled", cancellation.id), ("dispatched", None)]
            for table in (hospital_notices, alerts, circle_messages):
                assert (await conn.execute(select(table))).all() == []
            (detail,) = (await conn.execute(select(audit.c.detail).where(audit.c.action == "hospital.cancel"))).scalars()
            assert '"before": "dispatch"' in detail
    finally:
        await store.close()
        await engine.dispose()
