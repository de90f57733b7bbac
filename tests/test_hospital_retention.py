"""Raw HL7 messages past `[hl7] raw_retention_days`: cut to their MSH segment by `msante hl7
purge` (the same purge `serve` runs hourly), the rest untouched, and a late resend of a cut
message still gets its ACK byte for byte over real MLLP+TLS."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import select, update

from store.schema import audit, hl7_messages, hospital_events
from tests.test_hospital_feed import hospital, msa, sample, wait_for


def test_old_raw_messages_keep_only_their_msh(server, capsys):
    ed, admission = sample("adt_a04_ed_visit.hl7"), sample("adt_a01_admission.hl7")
    with hospital(server) as client:
        first = client.send(ed)
        assert msa(client.send(admission))[1] == "AA"
    wait_for(server, select(hospital_events).where(hospital_events.c.status == "dispatched"), 2)
    old = datetime.now(timezone.utc) - timedelta(days=91)
    server.execute(update(hl7_messages).where(hl7_messages.c.control_id == "CHSP-A04-0001").values(received_at=old))

    assert server.cli("hl7", "purge") == 0
    assert "1 raw messages older than 90 days" in capsys.readouterr().out
    cut, kept = server.rows(select(hl7_messages).order_by(hl7_messages.c.id))
    assert cut["data"] == ed.split(b"\n")[0] and cut["purged_at"] is not None and b"TECHER" not in cut["data"]
    assert kept["data"] == admission.replace(b"\n", b"\r") and kept["purged_at"] is None  # as framed
    with hospital(server) as client:
        assert client.send(ed) == first  # a late resend: the same ACK, nothing new
    assert len(server.rows(select(hospital_events))) == 2

    assert server.cli("hl7", "purge") == 0 and "0 raw messages" in capsys.readouterr().out  # once
    (row,) = server.rows(select(audit.c.actor_kind, audit.c.detail).where(audit.c.action == "hl7.purge"))
    assert row["actor_kind"] == "operator" and '"purged": 1' in row["detail"]


async def test_a_message_whose_event_waits_is_kept(database_url):
    """The dispatcher still needs it (a document's mail is built from it), however old."""
    from hospital import retention
    from store import db
    from store.audit import AuditTrail

    engine = db.create_engine(database_url)
    await db.upgrade(engine)
    old = datetime.now(timezone.utc) - timedelta(days=400)
    data = sample("mdm_t02_ed_report.hl7")
    try:
        async with engine.begin() as conn:
            for n, status in enumerate(("pending", "dispatched")):
                message = (await conn.execute(hl7_messages.insert().returning(hl7_messages.c.id), {
                    "sender": "dpi@msante.test", "control_id": f"C{n}", "message_type": "MDM^T02", "ack_code": "AA",
                    "ack": "", "size": len(data), "data": data, "received_at": old})).scalar_one()
                await conn.execute(hospital_events.insert(), {
                    "message_id": message, "organisation_id": "x", "kind": "DOC", "trigger": "T02", "patient": "{}",
                    "occurred_at": old, "status": status, "created_at": old})
        assert await retention.purge(engine, AuditTrail(engine), 30) == 1
        async with engine.connect() as conn:
            rows = (await conn.execute(select(hl7_messages.c.control_id, hl7_messages.c.data)
                                       .order_by(hl7_messages.c.id))).all()
        assert [(r.control_id, r.data == data) for r in rows] == [("C0", True), ("C1", False)]
    finally:
        await engine.dispose()
