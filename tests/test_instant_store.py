"""The instant store on SQLite and PostgreSQL: sequence numbers, idempotency, read markers,
alerts. Concurrency is real: posts race on separate connections of one engine."""
from __future__ import annotations

import asyncio
from datetime import date, datetime, timezone

import pytest
from sqlalchemy import delete, insert

from instant.alertstore import AlertStore
from instant.hub import circle_channel
from instant.memberships import Memberships
from instant.patient import Patient
from instant.storage import CircleExists, SqlStore
from store import db
from store.events import LocalBus
from store.redis_bus import RedisBus
from store.schema import circle_members, professionals

A, B, C = "810001045367", "810002000015", "810002000023"
NOW = datetime(2026, 11, 23, 8, 0, tzinfo=timezone.utc)
PATIENT = Patient("248039741512358", "1.2.250.1.213.1.4.11", "TECHER", "JOSETTE", date(1948, 3, 12))


@pytest.fixture
async def engine(database_url):
    engine = db.create_engine(database_url)
    await db.upgrade(engine)
    async with engine.begin() as conn:
        await conn.execute(insert(professionals), [
            {"idnat": idnat, "rpps": idnat[1:], "family_name": family, "given_name": given, "practice_civility": civ,
             "updated_at": NOW} for idnat, family, given, civ in
            [(A, "DUPONT", "JEAN", "DR"), (B, "LEROY", "CLAIRE", "DR"), (C, "HOARAU", "SOPHIE", "")]])
    yield engine
    await engine.dispose()


@pytest.fixture
async def circle(engine) -> tuple[SqlStore, int]:
    store = SqlStore(engine)
    return store, await store.create_circle(PATIENT, A, [(B, ""), (C, "")], "cli", NOW)


async def test_circle_and_members(engine, circle):
    store, circle_id = circle
    assert (await store.circle(circle_id))["patient"]["ins_register"] == "INS-NIR-DEMO"
    assert [(m["name"], m["role"]) for m in await store.members(circle_id)] == [
        ("Dr Jean DUPONT", "coordinator"), ("Sophie HOARAU", "member"), ("Dr Claire LEROY", "member")]
    assert await store.membership(circle_id, A) == {"on_behalf_of": "", "coordinator": True}
    with pytest.raises(CircleExists):
        await store.create_circle(PATIENT, B, [], "cli", NOW)
    assert await store.remove_member(circle_id, C, NOW) and not await store.remove_member(circle_id, C, NOW)
    assert await store.membership(circle_id, C) is None
    assert await store.followed_still(C, [circle_id]) == {} and await store.followed_still(B, [circle_id, 99]) == {
        circle_id: ""}


async def test_concurrent_posts_take_consecutive_seqs(circle):
    store, circle_id = circle
    results = await asyncio.gather(*(store.append(circle_id, (A, B, C)[n % 3], f"c{n}", f"message {n}", NOW)
                                     for n in range(30)))
    assert sorted(message["seq"] for message, _ in results) == list(range(1, 31))
    assert not any(duplicate for _, duplicate in results)
    assert (await store.circle(circle_id))["last_seq"] == 30


async def test_a_retry_racing_the_original_is_stored_once(circle):
    store, circle_id = circle
    results = await asyncio.gather(*(store.append(circle_id, A, "same", "bonjour", NOW) for _ in range(8)))
    assert {message["seq"] for message, _ in results} == {1}
    assert sorted(duplicate for _, duplicate in results) == [False] + [True] * 7
    following, _ = await store.append(circle_id, A, "next", "suite", NOW)
    assert following["seq"] == 2  # the duplicates took no seq: no hole


async def test_pages_and_read_markers(circle):
    store, circle_id = circle
    for n in range(1, 8):
        await store.append(circle_id, A if n < 6 else B, f"c{n}", f"m{n}", NOW)
    page, more = await store.messages(circle_id, limit=3)
    assert ([m["seq"] for m in page], more) == ([5, 6, 7], True)
    page, more = await store.messages(circle_id, before=2, limit=3)
    assert ([m["seq"] for m in page], more) == ([1], False)
    page, more = await store.messages(circle_id, after=5, limit=3)
    assert ([m["seq"] for m in page], more) == ([6, 7], False)
    assert page[0]["author"] == {"id": B, "name": "Dr Claire LEROY"} and page[0]["at"].endswith("+00:00")

    assert await store.read_state(circle_id, A) == (0, 7, 2)  # own messages are never unread
    assert await store.mark_read(circle_id, A, 6, NOW) == (6, 1)
    assert await store.mark_read(circle_id, A, 2, NOW) == (6, 1)  # never backwards
    assert await store.mark_read(circle_id, A, 100, NOW) == (7, 0)  # never past the last message
    listed = await store.circles_of(C)
    assert [(c["id"], c["read"], c["unread"], c["role"]) for c in listed] == [(circle_id, 0, 7, "member")]


async def test_alerts_are_raised_once_and_acknowledged_once(engine):
    alerts = AlertStore(engine)
    first = await alerts.add("mailbox:urgences@msante.test", "mail", "Nouveau message", {"uid": 3}, NOW, key="mail:9")
    assert first["data"] == {"uid": 3} and first["acknowledged_by"] is None
    assert await alerts.add("mailbox:urgences@msante.test", "mail", "Nouveau message", {}, NOW, key="mail:9") is None
    other = await alerts.add(f"person:{A}", "circle", "Ajouté", {}, NOW)
    assert other is not None and await alerts.add(f"person:{A}", "circle", "Ajouté", {}, NOW) is not None  # no key
    assert [a["id"] for a in await alerts.pending(["mailbox:urgences@msante.test", f"person:{B}"])] == [first["id"]]

    acknowledged, changed, _ = await alerts.acknowledge(first["id"], B, NOW)
    assert changed and acknowledged["acknowledged_by"] == {"id": B, "name": "Dr Claire LEROY"}
    again, changed, _ = await alerts.acknowledge(first["id"], A, NOW)
    assert not changed and again["acknowledged_by"]["id"] == B  # who acknowledged first is kept
    assert await alerts.pending(["mailbox:urgences@msante.test"]) == []


async def test_keyed_alerts_stored_together_each_key_once(engine):
    """A burst of mail: its alerts in one transaction, a key raised before (or twice in the
    burst) stored once, the stored ones returned in order."""
    alerts = AlertStore(engine)
    box, other = "mailbox:urgences@msante.test", "mailbox:jean.dupont@msante.test"
    earlier = await alerts.add(box, "mail", "Nouveau message", {"uid": 1}, NOW, key="mail:1")
    stored = await alerts.add_keyed([(box, "mail", "Nouveau message", {"uid": 1}, "mail:1"),
                                     (box, "mail", "Nouveau message", {"uid": 2}, "mail:2"),
                                     (other, "mail", "Nouveau message", {"uid": 2}, "mail:2"),
                                     (box, "mail", "Nouveau message", {"uid": 2}, "mail:2"),
                                     (box, "mail", "Nouveau message", {"uid": 3}, "mail:3")], NOW)
    assert [(a["audience"], a["data"]["uid"]) for a in stored] == [(box, 2), (other, 2), (box, 3)]
    assert len({a["id"] for a in stored} | {earlier["id"]}) == 4
    assert [a["id"] for a in await alerts.pending([box])] == [earlier["id"], stored[0]["id"], stored[2]["id"]]
    assert await alerts.add_keyed([], NOW) == []


async def test_memberships_are_remembered_until_a_removal_is_heard(engine, circle):
    """instant/memberships.py: a membership read once is not read again (each post checked it
    in the store), until the circle's channel tells of the member's removal, or of lost events."""
    store, circle_id = circle
    bus = LocalBus()
    memberships = Memberships(store, bus)
    assert await memberships.of(circle_id, B) == {"on_behalf_of": "", "coordinator": False}
    assert await store.remove_member(circle_id, B, NOW)
    assert await memberships.of(circle_id, B) is not None  # remembered: nothing was announced
    await bus.publish(circle_channel(circle_id), {"type": "member.removed", "circle": circle_id, "idnat": B})
    assert await memberships.of(circle_id, B) is None
    assert await memberships.of(circle_id, C) is not None
    assert await store.remove_member(circle_id, C, NOW)
    bus.resync()  # events were lost on their way here: whatever they said is not known
    assert await memberships.of(circle_id, C) is None
    unsubscribed = RedisBus("redis://127.0.0.1:6379", bus)  # never started: hears no other process
    out_of_sync = Memberships(store, unsubscribed)
    assert await out_of_sync.of(circle_id, A) is not None
    async with engine.begin() as conn:
        await conn.execute(delete(circle_members).where(circle_members.c.idnat == A))
    assert await out_of_sync.of(circle_id, A) is None
    memberships.close()
    out_of_sync.close()
    await unsubscribed.close()
