"""A hospital event in its patient's care circle, end to end: an ED visit sent over real MLLP
inside mutual TLS with the demo hospital's certificate enters the demo circle's timeline as an
item with the circle's next seq, live on a member's websocket, in the history after a
reconnect, covered by read markers, quotable; a non-member sees nothing of it."""
from __future__ import annotations

import asyncio

from sqlalchemy import select

from store.schema import circle_messages
from tests.test_hospital_feed import hospital, msa, sample
from tests.test_instant_ws import CIRCLE, COORDINATOR, NURSE, PHARMACIST, connect, post  # noqa: F401 - fixture

HOSPITAL = "CENTRE HOSPITALIER SAINT-PAUL DEMO"
ED_TEXT = f"Passage aux urgences — {HOSPITAL} (URGENCES ADULTES), 06/12 08:12"


async def deliver(server, *messages: bytes) -> None:
    def run() -> list[bytes]:
        with hospital(server) as client:
            return [client.send(message) for message in messages]
    assert [msa(ack)[1] for ack in await asyncio.to_thread(run)] == ["AA"] * len(messages)


async def test_an_ed_visit_enters_the_circle_timeline(server, connect):
    nurse, outsider = await connect(NURSE), await connect(PHARMACIST)
    await nurse.request(type="subscribe", circle=CIRCLE)
    assert (await outsider.request(type="subscribe", circle=CIRCLE))["code"] == "forbidden"
    first = await post(nurse, "Mme Techer se plaint de douleurs thoraciques.")

    await deliver(server, sample("adt_a04_ed_visit.hl7"))
    item = await nurse.expect(type="message", circle=CIRCLE, timeout=10, where=lambda f: f["kind"] == "event")
    assert item["seq"] == first["seq"] + 1  # the circle's next seq, as a message would have
    assert item["text"] == ED_TEXT and item["client_id"].startswith("hospital-event:")
    assert item["author"] == {"id": "dpi.ch-saint-paul@msante.test", "name": HOSPITAL}
    event = item["event"]
    assert (event["kind"], event["unit"], event["hospital"], event["document"]) == (
        "URG", "URGENCES ADULTES", HOSPITAL, None)
    assert event["occurred"].startswith("2026-12-06T08:12")
    await outsider.nothing(type="message")
    await outsider.nothing(type="alert", where=lambda f: f["alert"]["kind"] == "patient")

    # a resend stores nothing twice: one item in the timeline
    await deliver(server, sample("adt_a04_ed_visit.hl7"))
    await asyncio.sleep(0.3)  # a second dispatch would have run by now
    rows = await asyncio.to_thread(server.rows, select(circle_messages.c.seq).where(circle_messages.c.kind == "event"))
    assert [r["seq"] for r in rows] == [item["seq"]]

    # unread for every member, the author of the first message included; the marker covers it
    gp_view = await connect(COORDINATOR)
    circle = next(c for c in gp_view.welcome["circles"] if c["id"] == CIRCLE)
    assert circle["unread"] == 2 and circle["last_message"]["author"]["name"] == HOSPITAL
    read = await nurse.request(type="read", circle=CIRCLE, seq=item["seq"])
    assert (read["seq"], read["unread"]) == (item["seq"], 0)

    # after a reconnect, `subscribe` with `after` resumes with it, as with a message
    await nurse.ws.close()
    back = await connect(NURSE)
    await back.request(type="subscribe", circle=CIRCLE, after=first["seq"])
    again = await back.expect(type="message", circle=CIRCLE)
    assert {k: again[k] for k in ("seq", "kind", "text", "event", "author")} == {
        k: item[k] for k in ("seq", "kind", "text", "event", "author")}
    history = await back.request(type="history", circle=CIRCLE)
    assert [(m["seq"], m["kind"]) for m in history["messages"]] == [(first["seq"], "text"), (item["seq"], "event")]

    # a member can answer it; the quote names the hospital
    answer = await back.request(type="post", circle=CIRCLE, client_id="re-urg", text="Je passe la voir ce soir.",
                                reply_to=item["seq"])
    quoted = (await back.expect(type="message", circle=CIRCLE, client_id="re-urg"))["reply_to"]
    assert answer["type"] == "ack" and quoted["author"]["name"] == HOSPITAL and quoted["text"] == ED_TEXT


async def test_a_document_item_names_the_document(server, connect):
    coordinator = await connect(COORDINATOR)
    await coordinator.request(type="subscribe", circle=CIRCLE)
    await deliver(server, sample("mdm_t02_ed_report.hl7"))
    item = await coordinator.expect(type="message", circle=CIRCLE, timeout=10, where=lambda f: f["kind"] == "event")
    document = item["event"]["document"]
    assert item["event"]["kind"] == "DOC" and document["type_code"] == "15507-7"
    assert document["media_type"] == "application/pdf" and document["size"] > 0
    assert item["text"].startswith(f"Nouveau document : {document['type_label'] or '15507-7'} — {HOSPITAL}")


async def test_the_circle_hears_each_receipt_of_its_events(server, connect):
    """A `notice` frame names the event whose notices changed: once dispatched, then when the GP
    reads the mail over IMAP (FETCH BODY[] sets \\Seen); an outsider hears none."""
    from tests.test_imap import imaplib_client

    nurse, outsider = await connect(NURSE), await connect(PHARMACIST)
    await nurse.request(type="subscribe", circle=CIRCLE)
    await deliver(server, sample("adt_a04_ed_visit.hl7"))
    item = await nurse.expect(type="message", circle=CIRCLE, timeout=10, where=lambda f: f["kind"] == "event")
    dispatched = await nurse.expect(type="notice", circle=CIRCLE, timeout=10)
    assert (dispatched["event"], dispatched["status"]) == (item["event"]["id"], "dispatched")

    def gp_reads() -> None:
        imap = imaplib_client(server)
        imap.select("INBOX")
        imap.fetch(b"1", "(BODY[])")
        imap.logout()
    await asyncio.to_thread(gp_reads)
    read = await nurse.expect(type="notice", circle=CIRCLE, timeout=10)
    assert (read["event"], read["status"]) == (item["event"]["id"], "read")
    await outsider.nothing(type="notice")
