"""A notification's receipts end to end: an ED visit over MLLP+TLS, the GP reading the notice
over IMAP (FETCH BODY[] sets \\Seen), a subscriber acknowledging the alert on a websocket, the
history over HTTPS (who may read it) and from the CLI."""
from __future__ import annotations

import asyncio
from datetime import datetime

from sqlalchemy import select

from store.schema import audit, hospital_notice_history
from tests.test_api import request, token_for
from tests.test_hospital_feed import GP, hospital, msa, sample, wait_for
from tests.test_hospital_subscriptions import INS, NURSE, PHARMACIST, subscribe
from tests.test_imap import imaplib_client


def history(server, idnat: str = NURSE) -> list[dict]:
    status, _, body = request(server, "GET", f"/api/notifications?patient={INS}", token_for(server, idnat))
    assert status == 200, body
    return body["events"]


def receipts_of(events: list[dict], recipient: str) -> list[str]:
    (notice,) = [n for e in events for n in e["notices"] if n["recipient"] == recipient]
    return [h["status"] for h in notice["history"]]


def test_gp_reading_the_notice_over_imap_is_a_receipt(server):
    with hospital(server) as client:
        assert msa(client.send(sample("adt_a04_ed_visit.hl7")))[1] == "AA"
    wait_for(server, select(hospital_notice_history), 1)
    assert receipts_of(history(server), GP) == ["queued", "delivered"]

    imap = imaplib_client(server)
    imap.select("INBOX")
    _, ids = imap.search(None, "ALL")
    imap.fetch(ids[0].split()[0], "(BODY[])")  # not PEEK: sets \Seen
    imap.store(ids[0].split()[0], "-FLAGS", "\\Seen")
    imap.store(ids[0].split()[0], "+FLAGS", "\\Seen")  # read once, however often flagged
    imap.logout()
    (event,) = history(server)
    assert event["kind"] == "URG" and event["occurred"].startswith("2026-12-06")
    (notice,) = [n for n in event["notices"] if n["recipient"] == GP]
    assert notice["role"] == "gp" and [h["status"] for h in notice["history"]] == ["queued", "delivered", "read"]
    times = [datetime.fromisoformat(h["at"]) for h in notice["history"]]
    assert times == sorted(times)


async def test_an_acknowledged_alert_is_read(server):
    from tests.test_instant_ws import Client

    assert subscribe(server, NURSE, kinds=["URG"], medium="alert")[0] == 201
    nurse = await Client.connect(server, NURSE)
    try:
        def send() -> bytes:
            with hospital(server) as client:
                return client.send(sample("adt_a04_ed_visit.hl7"))
        assert msa(await asyncio.to_thread(send))[1] == "AA"
        frame = await nurse.expect(type="alert", timeout=10, where=lambda f: f["alert"]["kind"] == "patient")
        assert receipts_of(await asyncio.to_thread(history, server), f"person:{NURSE}") == ["queued", "delivered"]
        await nurse.request(type="alert.ack", alert=frame["alert"]["id"])
    finally:
        await nurse.ws.close()
    assert receipts_of(await asyncio.to_thread(history, server), f"person:{NURSE}") == ["queued", "delivered", "read"]


def test_who_may_read_the_history(server, capsys):
    with hospital(server) as client:
        assert msa(client.send(sample("adt_a04_ed_visit.hl7")))[1] == "AA"
    wait_for(server, select(hospital_notice_history), 1)
    status, _, _ = request(server, "GET", f"/api/notifications?patient={INS}", token_for(server, PHARMACIST))
    assert status == 403  # not in the patient's circle
    denied = server.rows(select(audit.c.actor).where(audit.c.action == "notifications.read",
                                                     audit.c.outcome == "denied"))
    assert [r["actor"] for r in denied] == [PHARMACIST]
    status, _, _ = request(server, "GET", "/api/notifications?patient=nope", token_for(server, NURSE))
    assert status == 400
    assert request(server, "GET", f"/api/notifications?patient={INS}")[0] == 401
    assert receipts_of(history(server), GP) == ["queued", "delivered"]

    assert "/api/notifications" in request(server, "GET", "/api/openapi.json")[2]["paths"]

    assert server.cli("notification", "list", "--patient", INS) == 0
    out = capsys.readouterr().out
    assert "URG" in out and GP in out and "delivered" in out


def test_a_read_receipt_mailed_to_the_hospital_box_is_read(server):
    from tests.test_smtp import login

    with hospital(server) as client:
        assert msa(client.send(sample("adt_a04_ed_visit.hl7")))[1] == "AA"
    wait_for(server, select(hospital_notice_history), 1)
    imap = imaplib_client(server)
    imap.select("INBOX")
    _, data = imap.fetch(b"1", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")  # PEEK: stays unseen
    imap.logout()
    notice_id = data[0][1].decode().partition(":")[2].strip()
    assert notice_id.startswith("<") and "hospital-event." in notice_id

    def mdn(to: str) -> bytes:  # as the GP's mail client writes it (RFC 8098)
        return (f"From: {GP}\r\nTo: {to}\r\nSubject: Lu : Passage aux urgences\r\nMIME-Version: 1.0\r\n"
                f"Message-ID: <mdn.{to}@msante.test>\r\n"
                'Content-Type: multipart/report; report-type=disposition-notification; boundary="b"\r\n\r\n'
                "--b\r\nContent-Type: text/plain\r\n\r\nLu.\r\n--b\r\nContent-Type: message/disposition-notification"
                f"\r\n\r\nReporting-UA: client\r\nFinal-Recipient: rfc822; {GP}\r\nOriginal-Message-ID: {notice_id}"
                "\r\nDisposition: manual-action/MDN-sent-manually; displayed\r\n\r\n--b--\r\n").encode()
    smtp = login(server)
    smtp.sendmail(GP, ["sophie.hoarau@msante.test"], mdn("sophie.hoarau@msante.test"))  # not the box that sent it
    assert receipts_of(history(server), GP) == ["queued", "delivered"]
    smtp.sendmail(GP, ["dpi.ch-saint-paul@msante.test"], mdn("dpi.ch-saint-paul@msante.test"))
    smtp.quit()
    assert receipts_of(history(server), GP) == ["queued", "delivered", "read"]


async def test_an_event_not_yet_dispatched_says_so(database_url):
    """Between its ACK and its dispatch an event has no notice yet: the history says it is
    pending, so its card shows "envoi en cours", not "non prévenu"."""
    from hospital import receipts
    from store import db
    from store.schema import hl7_messages, hospital_events

    engine = db.create_engine(database_url)
    await db.upgrade(engine)
    now = datetime.now().astimezone()
    try:
        async with engine.begin() as conn:
            for n, status in enumerate(("pending", "dispatched")):
                message = (await conn.execute(hl7_messages.insert().returning(hl7_messages.c.id), {
                    "sender": "dpi@msante.test", "control_id": f"C{n}", "message_type": "ADT^A04", "ack_code": "AA",
                    "ack": "", "size": 1, "data": b"x", "received_at": now})).scalar_one()
                await conn.execute(hospital_events.insert(), {
                    "message_id": message, "organisation_id": "x", "kind": "URG", "trigger": "A04", "patient": "{}",
                    "patient_ins": INS, "occurred_at": now, "status": status, "created_at": now})
        async with engine.connect() as conn:
            events = await receipts.history(conn, INS)
        assert [(e["pending"], e["notices"]) for e in events] == [(False, []), (True, [])]  # newest first
    finally:
        await engine.dispose()
