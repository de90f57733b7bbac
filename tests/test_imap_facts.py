"""What the store learns of a message when it is stored (mailserver/bodies.py, message_facts) is
what mailserver/imap/message.py computes, and IMAP answers header items, header SEARCH and SORT
from it without reading the body."""
from __future__ import annotations

import json
from datetime import datetime, timezone

from alembic import command
from sqlalchemy import insert, select, text, update

from mailserver.bodies import facts_row
from mailserver.imap.message import Message
from store import db
from store.schema import bodies, folder_messages, message_facts

from .imap_client import GP, NURSE, RawImap, untagged
from .test_imap import deliver, multipart

RAW = (b"From: =?utf-8?q?Dr_Jean_Dupont?= <jean.dupont@msante.test>\r\n"
       b"To: Infirmiers: claire@msante.test, paul@msante.test;\r\n"
       b"Subject: =?utf-8?q?R=C3=A9sultats_de_biologie?=\r\n"
       b"Date: Tue, 1 Dec 2026 10:00:00 +0100\r\n"
       b"Message-ID: <facts-1@msante.test>\r\n"
       b"X-MSS-Patient: 1234567890123\r\n"
       b"\r\n"
       b"Kaliemie a 5,9.\r\n")


def _facts(server) -> dict[int, tuple[dict, bytes]]:
    """message_facts rows by body id, with the body they were learnt from."""
    rows = server.rows(select(message_facts, bodies.c.data).join(bodies, bodies.c.id == message_facts.c.body_id))
    return {r["body_id"]: ({c.name: r[c.name] for c in message_facts.columns}, bytes(r["data"])) for r in rows}


def test_facts_written_at_delivery_and_append_are_message_py_s(server):
    deliver(server, [NURSE], raw=RAW)
    client = RawImap(server)
    client.login_token(server)
    client.ok("APPEND INBOX \x00", multipart())
    client.close()
    client = RawImap(server)
    client.login_token(server)
    client.ok("SELECT INBOX")
    client.ok("COPY 1:* Drafts")
    client.close()
    assert server.scalar(select(bodies.c.id).where(~bodies.c.id.in_(select(message_facts.c.body_id)))) is None
    sizes = server.rows(select(folder_messages.c.size, bodies.c.size.label("body_size"))
                        .join(bodies, bodies.c.id == folder_messages.c.body_id))
    assert len(sizes) == 3 and all(r["size"] == r["body_size"] for r in sizes)  # delivery, APPEND, COPY
    learnt = _facts(server)
    assert len(learnt) == 2
    for body_id, (row, data) in learnt.items():
        assert {k: bytes(v) if isinstance(v, (bytes, memoryview)) else v for k, v in row.items()} \
            == facts_row(body_id, data)
    delivered = next(json.loads(row["fields"]) for row, data in learnt.values() if b"facts-1" in data)
    assert delivered["h"]["subject"] == ["Résultats de biologie"]
    assert delivered["h"]["x-mss-patient"] == ["1234567890123"]
    assert delivered["a"]["from"] == ["Dr Jean Dupont <jean.dupont@msante.test>"]
    assert delivered["m"] == {"from": "jean.dupont", "to": "Infirmiers"}
    assert delivered["s"] == "2026-12-01T10:00:00+01:00"
    assert next(row["search_subject"] for row, data in learnt.values() if b"facts-1" in data) == "résultats de biologie"


def test_header_items_search_and_sort_never_read_the_body(server):
    """With every body's content gone, FETCH ENVELOPE/BODYSTRUCTURE/header fields, header SEARCH
    and SORT answer as before: they read message_facts only."""
    deliver(server, [GP], raw=RAW)
    deliver(server, [GP], subject="Avis", body="needle\n")
    client = RawImap(server)
    client.login_token(server)
    client.ok("SELECT INBOX")
    items = "(ENVELOPE BODYSTRUCTURE BODY BODY.PEEK[HEADER.FIELDS (Subject X-MSS-Patient)] RFC822.HEADER)"
    before = untagged(client.ok(f"FETCH 1:* {items}"), b"FETCH")
    searches = ['SEARCH SUBJECT "sultats de"', 'SEARCH FROM "dr jean"', "SEARCH TO claire", "SEARCH TO infirmiers",
                "SEARCH HEADER X-MSS-Patient 1234", "SEARCH SENTON 1-Dec-2026", 'SEARCH HEADER Received ""',
                "SORT (SUBJECT) UTF-8 ALL", "SORT (REVERSE DATE FROM) UTF-8 ALL"]
    answers = [client.ok(s)[0].rstrip() for s in searches]
    assert answers[:6] == [b"* SEARCH 1"] * 6
    assert answers[6:] == [b"* SEARCH 1 2", b"* SORT 2 1", b"* SORT 2 1"]
    server.execute(update(bodies).values(data=b""))  # the bodies' content is gone
    assert untagged(client.ok(f"FETCH 1:* {items}"), b"FETCH") == before
    assert [client.ok(s)[0].rstrip() for s in searches] == answers
    assert b'BODY[] ""' in untagged(client.ok("FETCH 1 BODY.PEEK[]"), b"FETCH")[0]  # the content is gone
    assert client.ok('SEARCH BODY "needle"')[0].rstrip() == b"* SEARCH"  # body SEARCH reads the body
    client.close()


async def test_migration_learns_existing_bodies(database_url):
    engine = db.create_engine(database_url)
    try:
        def to(revision: str):
            def run(sync_conn) -> None:
                cfg = db.alembic_config(database_url)
                cfg.attributes["connection"] = sync_conn
                command.upgrade(cfg, revision)
            return run
        async with engine.begin() as conn:
            await conn.run_sync(to("0013"))
            body_id = (await conn.execute(insert(bodies).returning(bodies.c.id), {
                "size": len(RAW), "data": RAW, "created_at": datetime.now(timezone.utc)})).scalar_one()
        assert (await db.upgrade(engine))[:1] == ["0014"]
        async with engine.connect() as conn:
            row = (await conn.execute(select(message_facts))).one()._asdict()
        assert {k: bytes(v) if isinstance(v, (bytes, memoryview)) else v for k, v in row.items()} \
            == facts_row(body_id, RAW)
        assert bytes(row["envelope"]) == Message(RAW).envelope()
        async with engine.connect() as conn:  # the table is the one the code queries
            assert (await conn.execute(text("SELECT count(*) FROM message_facts"))).scalar() == 1
    finally:
        await engine.dispose()


def test_subjects_with_nul_or_8_bit_octets_are_delivered_and_searchable(server):
    """A Subject with a NUL was refused by PostgreSQL (no NUL in text): the delivery failed. One
    with raw 8-bit octets (no encoded word) is found too."""
    deliver(server, [GP], raw=b"From: jean.dupont@msante.test\r\nTo: jean.dupont@msante.test\r\n"
                              b"Subject: bilan a\x00b\r\n\r\nbody\r\n")
    deliver(server, [GP], raw=b"From: jean.dupont@msante.test\r\nTo: jean.dupont@msante.test\r\n"
                              b"Subject: R\xe9sultats bilan\r\n\r\nbody\r\n")
    client = RawImap(server)
    client.login_token(server)
    client.ok("SELECT INBOX")
    assert client.ok('SEARCH SUBJECT "bilan"')[0].rstrip() == b"* SEARCH 1 2"
    assert client.ok('SEARCH SUBJECT "sultats"')[0].rstrip() == b"* SEARCH 2"
    client.close()
