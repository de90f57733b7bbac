"""The IMAP folder store on SQLite and PostgreSQL: real databases, real concurrency (appends and
flag changes racing on separate connections of one engine)."""
from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest
from alembic import command
from sqlalchemy import event, func, insert, inspect, select, text

from mailserver.imap.folders import FolderExists, Folders, NoSuchFolder, OverQuota
from mailserver.mailstore import _deliver, mailbox_channel
from store import db
from store.events import LocalBus
from store.schema import bodies, deliveries, envelopes, folder_messages, folder_vanished, folders, mailboxes

NOW = datetime(2026, 11, 23, 8, 0, tzinfo=timezone.utc)
QUOTA = 10_000


@pytest.fixture
async def engine(database_url):
    engine = db.create_engine(database_url)
    await db.upgrade(engine)
    async with engine.begin() as conn:
        await conn.execute(insert(mailboxes), [
            {"id": n, "address": f"box{n}@test.mssante.fr", "kind": "organisational", "created_at": NOW,
             "updated_at": NOW, "local": True} for n in (1, 2)])
    yield engine
    await engine.dispose()


@pytest.fixture
def bus():
    return LocalBus()


@pytest.fixture
def store(engine, bus):
    return Folders(engine, bus, quota_bytes=QUOTA)


async def folder_id(store: Folders, name: str, box: int = 1) -> int:
    await store.list(box)
    return (await store.get(box, name)).id


async def count(engine, table, *where) -> int:
    async with engine.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(table).where(*where))).scalar_one()


async def upgrade_to(conn, database_url: str, revision: str) -> None:
    """The schema as migration `revision` left it, to test the migrations after it on rows."""
    def upgrade(sync_conn):
        cfg = db.alembic_config(database_url)
        cfg.attributes["connection"] = sync_conn
        command.upgrade(cfg, revision)
    await conn.run_sync(upgrade)


async def test_upgrade_from_0003_keeps_rows_and_frees_body_column(database_url):
    """The SQLite rebuild of `envelopes` must survive the deliveries pointing at it."""
    engine = db.create_engine(database_url)
    try:
        async with engine.begin() as conn:
            await upgrade_to(conn, database_url, "0003")
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO bodies (id, size, data, created_at) VALUES (7, 1, :d, :t)"),
                               {"d": b"x", "t": NOW})
            await conn.execute(text(
                "INSERT INTO envelopes (id, body_id, message_id, sender, actor, actor_kind, source, received_at, ret,"
                " envid, size) VALUES (3, 7, '', 'a@b.fr', '-', 'anonymous', '', :t, '', '', 1)"), {"t": NOW})
            await conn.execute(text(
                "INSERT INTO deliveries (envelope_id, recipient, orcpt, notify, status, attempts, last_error,"
                " delay_reported, updated_at) VALUES (3, 'c@d.fr', '', '', 'queued', 0, '', :f, :t)"),
                {"f": False, "t": NOW})
        await db.upgrade(engine)
        async with engine.connect() as conn:
            columns = await conn.run_sync(lambda c: {col["name"]: col for col in inspect(c).get_columns("envelopes")})
            assert columns["body_id"]["nullable"]
            assert (await conn.execute(select(envelopes.c.body_id))).scalar_one() == 7
            assert (await conn.execute(select(func.count()).select_from(deliveries))).scalar_one() == 1
            if engine.dialect.name == "sqlite":  # foreign keys back on for the pooled connection
                assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE envelopes SET body_id = NULL"))
    finally:
        await engine.dispose()


async def test_upgrade_to_0019_counts_each_folders_messages(database_url):
    engine = db.create_engine(database_url)
    try:
        async with engine.begin() as conn:
            await upgrade_to(conn, database_url, "0018")
            await conn.execute(insert(mailboxes), {"id": 1, "address": "a@test.mssante.fr", "kind": "organisational",
                                                   "created_at": NOW, "updated_at": NOW, "local": True})
            await conn.execute(text("INSERT INTO folders (id, mailbox_id, name, special_use, uidvalidity, uidnext,"
                                    " highestmodseq, created_at, first_recent_uid, keywords)"
                                    " VALUES (:id, 1, :name, '', 1, 9, 9, :t, 1, '')"),
                               [{"id": 1, "name": "INBOX", "t": NOW}, {"id": 2, "name": "Empty", "t": NOW}])
            await conn.execute(text("INSERT INTO bodies (id, size, data, created_at) VALUES (7, 1, :d, :t)"),
                               {"d": b"x", "t": NOW})
            await conn.execute(text("INSERT INTO folder_messages (folder_id, uid, body_id, flags, internaldate,"
                                    " modseq, size) VALUES (1, :uid, 7, '', :t, 1, :size)"),
                               [{"uid": 1, "size": 300, "t": NOW}, {"uid": 2, "size": 45, "t": NOW}])
        await db.upgrade(engine)
        async with engine.connect() as conn:
            assert (await conn.execute(select(folders.c.id, folders.c.messages, folders.c.octets)
                                       .order_by(folders.c.id))).all() == [(1, 2, 345), (2, 0, 0)]
    finally:
        await engine.dispose()


async def test_list_get_create_delete(store):
    names = [f.name for f in await store.list(1)]
    assert names[0] == "INBOX" and set(names) == {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"}
    assert (await store.get(1, "inbox")).name == "INBOX"
    with pytest.raises(NoSuchFolder):
        await store.get(1, "Nope")
    with pytest.raises(FolderExists):
        await store.create(1, "Inbox")
    created = await store.create(1, "Projets/2026")
    assert created == await store.get(1, "Projets/2026")
    with pytest.raises(FolderExists):
        await store.create(1, "Projets/2026")
    with pytest.raises(ValueError):
        await store.delete(1, "inbox")
    await store.delete(1, "Projets/2026")
    with pytest.raises(NoSuchFolder):
        await store.delete(1, "Projets/2026")
    assert "Projets/2026" not in {f.name for f in await store.list(1)}
    assert [f.name for f in await store.list(2)][0] == "INBOX"  # another box, its own folders


async def test_recreated_folder_gets_a_greater_uidvalidity(store):
    """Within one second too: the clock alone would hand the same value out again."""
    seen = []
    for _ in range(3):
        folder = await store.create(1, "Dossier")
        seen.append((await store.state(folder.id)).uidvalidity)
        await store.delete(1, "Dossier")
    sent = await folder_id(store, "Sent")
    before = (await store.state(sent)).uidvalidity
    await store.delete(1, "Sent")  # a default folder comes back at once, empty, with a new UIDVALIDITY
    again = await store.get(1, "Sent")
    assert again.special_use == "\\Sent" and again.id != sent
    seen.append((await store.state(again.id)).uidvalidity)
    assert seen[:3] == sorted(set(seen[:3])) and seen[3] > before
    folder = await store.create(1, "Other")
    await store.rename(1, "Other", "Dossier")
    assert (await store.state(folder.id)).uidvalidity > max(seen)


async def test_rename_with_children_and_conflicts(store):
    parent = await store.create(1, "a")
    child = await store.create(1, "a/a")
    other = await store.create(1, "ab")
    await store.rename(1, "a", "a/a")  # deepest first: no clash with itself
    assert {f.name for f in await store.list(1)} >= {"a/a", "a/a/a", "ab"}
    assert (await store.get(1, "a/a")).id == parent.id and (await store.get(1, "a/a/a")).id == child.id
    assert (await store.get(1, "ab")).id == other.id  # "a" + "b" is not under "a"
    with pytest.raises(FolderExists):
        await store.rename(1, "ab", "a/a")
    with pytest.raises(FolderExists):
        await store.rename(1, "ab", "inbox")
    with pytest.raises(NoSuchFolder):
        await store.rename(1, "zz", "yy")
    assert (await store.get(1, "ab")).id == other.id  # the failed renames changed nothing


async def test_rename_inbox_moves_its_messages(store, engine):
    inbox = await folder_id(store, "INBOX")
    child = await store.create(1, "INBOX/sub")
    for n in range(3):
        await store.append(inbox, f"Subject: {n}\r\n\r\nbody\r\n".encode(), {"\\Seen"} if n else set(), NOW)
    before = await store.state(inbox)
    await store.rename(1, "INBOX", "Old mail")
    moved = await store.get(1, "Old mail")
    assert [(m.uid, m.flags) for m in await store.messages(moved.id)] == [
        (1, frozenset()), (2, {"\\Seen"}), (3, {"\\Seen"})]
    assert await store.messages(inbox) == []
    after = await store.state(inbox)
    assert after.uidnext == before.uidnext and after.highestmodseq > before.highestmodseq
    assert (await store.changes(inbox, before.highestmodseq)).vanished == [1, 2, 3]
    assert (await store.get(1, "INBOX/sub")).id == child.id
    assert (await store.bodies(moved.id, [2]))[2].startswith(b"Subject: 1")


async def test_append_messages_bodies_recent(store):
    inbox = await folder_id(store, "INBOX")
    state = await store.state(inbox)
    uidvalidity, uid = await store.append(inbox, b"Subject: a\r\n\r\nx\r\n", {"\\seen", "$Label", "\\Recent"}, NOW)
    assert (uidvalidity, uid) == (state.uidvalidity, 1)
    await store.append(inbox, b"Subject: b\r\n\r\nyy\r\n", set(), NOW)
    messages = await store.messages(inbox)
    assert [(m.uid, m.flags, m.size, m.internaldate) for m in messages] == [
        (1, {"\\Seen", "$Label"}, 17, NOW), (2, frozenset(), 18, NOW)]
    assert messages[1].modseq > messages[0].modseq > state.highestmodseq
    assert await store.bodies(inbox, [2, 1, 99]) == {1: b"Subject: a\r\n\r\nx\r\n", 2: b"Subject: b\r\n\r\nyy\r\n"}
    assert await store.claim_recent(inbox, 2) == 1  # the first session saw one message: \Recent for it
    assert await store.claim_recent(inbox, 3) == 2  # the next one sees both, the second as \Recent
    assert await store.claim_recent(inbox, 3) == 3  # the next one has none
    await store.append(inbox, b"z", set(), NOW)
    assert await store.claim_recent(inbox, 4) == 3
    with pytest.raises(NoSuchFolder):
        await store.append(999, b"z", set(), NOW)


async def test_append_all_is_one_transaction(store):
    """MULTIAPPEND: consecutive UIDs and one MODSEQ; over the quota together, none is kept."""
    inbox = await folder_id(store, "INBOX")
    state = await store.state(inbox)
    uidvalidity, uids = await store.append_all(inbox, [(b"Subject: a\r\n\r\nx\r\n", {"\\Seen"}, NOW),
                                                       (b"Subject: b\r\n\r\ny\r\n", {"$Work"}, NOW)])
    assert (uidvalidity, uids) == (state.uidvalidity, [1, 2])
    messages = await store.messages(inbox)
    assert [(m.uid, m.flags) for m in messages] == [(1, {"\\Seen"}), (2, {"$Work"})]
    assert messages[0].modseq == messages[1].modseq == state.highestmodseq + 1
    with pytest.raises(OverQuota):
        await store.append_all(inbox, [(b"m" * 4000, set(), NOW)] * 3)
    assert [m.uid for m in await store.messages(inbox)] == [1, 2]
    assert (await store.append(inbox, b"z", set(), NOW))[1] == 3  # the refused ones took no UID


async def test_store_flags_modseq_and_unchangedsince(store):
    inbox = await folder_id(store, "INBOX")
    for _ in range(4):
        await store.append(inbox, b"m", set(), NOW)
    start = (await store.state(inbox)).highestmodseq
    changed, refused = await store.store_flags(inbox, [1, 2, 3, 77], "+", {"\\flagged", "\\Recent"})
    assert [(m.uid, m.flags, m.modseq) for m in changed] == [(u, {"\\Flagged"}, start + 1) for u in (1, 2, 3)]
    assert refused == []
    assert (await store.state(inbox)).highestmodseq == start + 1
    assert await store.store_flags(inbox, [1, 2], "+", {"\\Flagged"}) == ([], [])  # no change, no new MODSEQ
    assert (await store.state(inbox)).highestmodseq == start + 1
    changed, _ = await store.store_flags(inbox, [2], "=", {"\\Seen", "work"})
    assert changed[0].flags == {"\\Seen", "work"} and changed[0].modseq == start + 2
    changed, _ = await store.store_flags(inbox, [1, 2], "-", {"\\Flagged"})
    assert [(m.uid, m.flags) for m in changed] == [(1, frozenset())]  # 2 had no \Flagged any more
    # UNCHANGEDSINCE (RFC 7162 §3.1.3): 1 changed at start+3 > start+1; 3 and 4 did not.
    changed, refused = await store.store_flags(inbox, [1, 3, 4], "+", {"\\Deleted"}, unchanged_since=start + 1)
    assert [m.uid for m in changed] == [3, 4] and refused == [1]
    assert await store.store_flags(inbox, [1], "+", {"x"}, unchanged_since=0) == ([], [1])
    result = await store.changes(inbox, start + 2)
    assert [(m.uid, m.modseq) for m in result.changed] == [(1, start + 3), (3, start + 4), (4, start + 4)]
    assert result.state.highestmodseq == start + 4 and result.vanished == []
    assert await store.expunge(inbox) == [3, 4]
    result = await store.changes(inbox, start + 4)
    assert result.changed == [] and result.vanished == [3, 4]
    assert [m.uid for m in (await store.changes(inbox, 0)).changed] == [1, 2]
    assert (await store.changes(inbox, result.state.highestmodseq)) == (result.__class__(result.state, [], []))
    with pytest.raises(ValueError):
        await store.store_flags(inbox, [1], "*", {"x"})


async def test_copy_move_expunge_free_bodies(store, engine):
    inbox, archive, trash = [await folder_id(store, n) for n in ("INBOX", "Archive", "Trash")]
    for n in range(3):
        await store.append(inbox, f"message {n}".encode(), {"\\Seen"} if n == 0 else set(), NOW)
    assert await count(engine, bodies) == 3
    uidvalidity, pairs = await store.copy(inbox, [1, 2, 42], archive)
    assert uidvalidity == (await store.state(archive)).uidvalidity and pairs == [(1, 1), (2, 2)]
    assert [(m.uid, m.flags, m.internaldate) for m in await store.messages(archive)] == [
        (1, {"\\Seen"}, NOW), (2, frozenset(), NOW)]
    assert await count(engine, bodies) == 3  # the same bodies
    assert await store.copy(inbox, [42], archive) == (uidvalidity, [])

    await store.store_flags(inbox, [1, 2, 3], "+", {"\\Deleted"})
    assert await store.expunge(inbox, [1, 3]) == [1, 3]  # UID EXPUNGE: only these
    assert [m.uid for m in await store.messages(inbox)] == [2]
    assert await count(engine, bodies) == 2  # 1 is still in Archive; 3 was nowhere else
    assert await store.expunge(inbox, [1, 3]) == []

    _uidvalidity, pairs = await store.move(archive, [1, 2], trash)
    assert pairs == [(1, 1), (2, 2)] and await store.messages(archive) == []
    assert (await store.changes(archive, 0)).vanished == [1, 2]
    assert await count(engine, bodies) == 2  # a move frees nothing
    await store.store_flags(trash, [1, 2], "+", {"\\Deleted"})
    assert await store.expunge(trash) == [1, 2]
    assert await count(engine, bodies) == 1  # body 2 stays: INBOX uid 2 still has it
    assert await store.expunge(inbox) == [2]
    assert await count(engine, bodies) == 0 and await count(engine, folder_messages) == 0
    assert await count(engine, folder_vanished) == 7


async def test_expunge_keeps_a_body_a_queued_delivery_needs(store, engine):
    """One SMTP transaction delivered locally and queued for a remote recipient: expunging the
    local copy must leave the body for the relay; once nothing needs it, it goes, and the
    envelope stays without it."""
    await store.list(1)
    async with engine.begin() as conn:
        body_ids = []
        for n in range(2):
            body_id = (await conn.execute(insert(bodies).returning(bodies.c.id),
                                          {"size": 5, "data": b"hello", "created_at": NOW})).scalar_one()
            envelope_id = (await conn.execute(insert(envelopes).returning(envelopes.c.id), {
                "body_id": body_id, "sender": "s@test.mssante.fr", "actor": "-", "actor_kind": "anonymous",
                "source": "", "received_at": NOW, "size": 5})).scalar_one()
            fm_id, _uid, _event = await _deliver(conn, 1, "INBOX", body_id, 5, NOW)
            await conn.execute(insert(deliveries), [
                {"envelope_id": envelope_id, "recipient": "box1@test.mssante.fr", "status": "delivered",
                 "folder_message_id": fm_id, "updated_at": NOW},
                {"envelope_id": envelope_id, "recipient": "far@elsewhere.fr", "status": "queued" if n else "relayed",
                 "folder_message_id": None, "updated_at": NOW}])
            body_ids.append(body_id)
    inbox = await folder_id(store, "INBOX")
    await store.store_flags(inbox, [1, 2], "+", {"\\Deleted"})
    assert await store.expunge(inbox) == [1, 2]
    async with engine.connect() as conn:
        assert set((await conn.execute(select(bodies.c.id))).scalars()) == {body_ids[1]}  # still queued
        assert sorted((await conn.execute(select(envelopes.c.body_id))).scalars(), key=str) == sorted(
            [None, body_ids[1]], key=str)
        assert set((await conn.execute(select(deliveries.c.folder_message_id))).scalars()) == {None}


async def test_delete_frees_bodies_and_vanished(store, engine):
    folder = await store.create(1, "Gone")
    for _ in range(3):
        await store.append(folder.id, b"abc", set(), NOW)
    await store.store_flags(folder.id, [1], "+", {"\\Deleted"})
    await store.expunge(folder.id)
    await store.delete(1, "Gone")
    assert await count(engine, bodies) == 0 and await count(engine, folder_vanished) == 0
    with pytest.raises(NoSuchFolder):
        await store.state(folder.id)


async def test_concurrent_appends_and_flag_changes(store):
    inbox = await folder_id(store, "INBOX")
    results = await asyncio.gather(*(store.append(inbox, f"m{n}".encode(), set(), NOW) for n in range(30)))
    assert sorted(uid for _, uid in results) == list(range(1, 31))
    state = await store.state(inbox)
    assert state.uidnext == 31
    # each message gets its own flag from its own writer: none may be lost
    await asyncio.gather(*(store.store_flags(inbox, [uid], "+", {f"k{uid}"}) for uid in range(1, 31)),
                         *(store.store_flags(inbox, range(1, 31), "+", {"\\Seen"}) for _ in range(3)))
    messages = await store.messages(inbox)
    assert all(m.flags == {"\\Seen", f"k{m.uid}"} for m in messages)
    # 30 single-flag writes and one \Seen write that changed anything (the others found it done)
    highest = (await store.state(inbox)).highestmodseq
    assert highest == state.highestmodseq + 31 and max(m.modseq for m in messages) == highest


async def test_concurrent_copy_and_expunge_of_the_source(store, engine):
    inbox, archive = await folder_id(store, "INBOX"), await folder_id(store, "Archive")
    for _ in range(10):
        await store.append(inbox, b"shared", {"\\Deleted"}, NOW)
    copied, expunged = await asyncio.gather(store.copy(inbox, range(1, 11), archive), store.expunge(inbox))
    assert expunged == list(range(1, 11))
    kept = await store.messages(archive)
    assert len(kept) == len(copied[1]) and await count(engine, bodies) == len(kept)


async def test_quota(store):
    inbox, archive = await folder_id(store, "INBOX"), await folder_id(store, "Archive")
    await store.append(inbox, b"x" * 6000, set(), NOW)
    assert await store.quota(1) == (6000, 1, QUOTA)
    with pytest.raises(OverQuota):
        await store.append(inbox, b"x" * 5000, set(), NOW)
    with pytest.raises(OverQuota):
        await store.copy(inbox, [1], archive)
    await store.move(inbox, [1], archive)  # within the box: no new bytes
    assert await store.quota(1) == (6000, 1, QUOTA)
    assert (await store.state(inbox)).uidnext == 2  # the refused append gave its UID back
    assert await store.quota(2) == (0, 0, QUOTA)


async def counted_as_summed(engine) -> dict[int, tuple[int, int]]:
    """Each folder's counters (messages, octets), asserted equal to its messages' count and sum."""
    async with engine.connect() as conn:
        counted = {r.id: (r.messages, r.octets) for r in await conn.execute(
            select(folders.c.id, folders.c.messages, folders.c.octets))}
        summed = {r.folder_id: (r.n, r.octets) for r in await conn.execute(
            select(folder_messages.c.folder_id, func.count().label("n"),
                   func.sum(folder_messages.c.size).label("octets")).group_by(folder_messages.c.folder_id))}
    assert counted == {folder: summed.get(folder, (0, 0)) for folder in counted}
    return counted


async def test_folder_counters_follow_every_write(store, engine):
    """The quota and STATUS SIZE read folders.messages/octets: delivery, APPEND, COPY, MOVE
    (within and across boxes), EXPUNGE, RENAME INBOX and DELETE keep them equal to the sums,
    and a write refused over quota leaves them as they were."""
    inbox, archive, other = await folder_id(store, "INBOX"), await folder_id(store, "Archive"), \
        await folder_id(store, "INBOX", box=2)
    async with engine.begin() as conn:
        body_id = (await conn.execute(insert(bodies).returning(bodies.c.id),
                                      {"size": 700, "data": b"d" * 700, "created_at": NOW})).scalar_one()
        await _deliver(conn, 1, "INBOX", body_id, 700, NOW)
    await store.append_all(inbox, [(b"a" * 100, set(), NOW), (b"b" * 200, {"\\Seen"}, NOW)])
    assert (await counted_as_summed(engine))[inbox] == (3, 1000)
    await store.copy(inbox, [1, 2], archive)
    await store.move(inbox, [3], inbox)  # renumbered in place
    await store.move(archive, [2], other)  # to another box
    assert {f: c for f, c in (await counted_as_summed(engine)).items() if c != (0, 0)} == {
        inbox: (3, 1000), archive: (1, 700), other: (1, 100)}
    assert await store.quota(1) == (1700, 4, QUOTA) and await store.quota(2) == (100, 1, QUOTA)
    assert (await store.summary(archive, size=True))[1]["SIZE"] == 700
    with pytest.raises(OverQuota):
        await store.append(inbox, b"x" * 9000, set(), NOW)
    await store.append(other, b"y" * 9000, set(), NOW)
    with pytest.raises(OverQuota):
        await store.copy(inbox, [1, 2, 4], other)  # 1,000 more into box 2's 9,100
    with pytest.raises(OverQuota):
        await store.move(inbox, [1, 2, 4], other)
    assert await store.quota(1) == (1700, 4, QUOTA) and await store.quota(2) == (9100, 2, QUOTA)
    await store.store_flags(inbox, [1], "+", {"\\Deleted"})
    assert await store.expunge(inbox) == [1]
    await store.rename(1, "INBOX", "Old")
    old = (await store.get(1, "Old")).id
    assert {f: c for f, c in (await counted_as_summed(engine)).items() if f in (inbox, old)} == {
        inbox: (0, 0), old: (2, 300)}
    await store.delete(1, "Old")
    assert await store.quota(1) == (700, 1, QUOTA)
    await counted_as_summed(engine)


async def test_subscriptions_and_acl(store):
    who = "810001045367"
    await store.subscribe(1, who, "inbox")
    await store.subscribe(1, who, "Not/yet")
    await store.subscribe(1, who, "Not/yet")
    assert await store.subscriptions(1, who) == {"INBOX", "Not/yet"}
    assert await store.subscriptions(1, "someone else") == set()
    await store.unsubscribe(1, who, "Not/yet")
    assert await store.subscriptions(1, who) == {"INBOX"}
    await store.set_acl(1, who, "rswl")
    await store.set_acl(1, who, "lrsw")
    await store.set_acl(2, who, "a")
    assert await store.acl(1) == {who: "lrsw"}
    await store.set_acl(1, who, "")
    assert await store.acl(1) == {} and await store.acl(2) == {who: "a"}
    await store.delete_acl(2, who)
    assert await store.acl(2) == {}


async def test_events_after_commit(store, bus):
    inbox = await folder_id(store, "INBOX")
    subscription = bus.subscribe(mailbox_channel(1))
    await store.append(inbox, b"m", set(), NOW)
    await store.store_flags(inbox, [1], "+", {"\\Seen"})
    await store.store_flags(inbox, [1], "+", {"\\Seen"})  # nothing changed: no event
    events = [subscription.queue.get_nowait() for _ in range(subscription.queue.qsize())]
    highest = (await store.state(inbox)).highestmodseq
    assert [(e["type"], e["folder"], e["folder_id"], e["highestmodseq"]) for e in events] == [
        ("folder_changed", "INBOX", inbox, highest - 1), ("folder_changed", "INBOX", inbox, highest)]
    await subscription.close()


async def test_large_folder_reads_in_few_queries(store, engine, bus):
    """SELECT, STATUS, FETCH CHANGEDSINCE and bodies on 10,000 messages: statements do not grow
    with it, and SELECT gets a row per flag list, not per message."""
    inbox = await folder_id(store, "INBOX")
    async with engine.begin() as conn:
        body_id = (await conn.execute(insert(bodies).returning(bodies.c.id),
                                      {"size": 3, "data": b"abc", "created_at": NOW})).scalar_one()
        await conn.execute(insert(folder_messages), [
            {"folder_id": inbox, "uid": uid, "body_id": body_id, "flags": "", "internaldate": NOW, "modseq": uid,
             "size": 3}
            for uid in range(1, 10_001)])
        await conn.execute(text("UPDATE folders SET uidnext = 10001, highestmodseq = 10000,"
                                " messages = 10000, octets = 30000 WHERE id = :id"),
                           {"id": inbox})
    statements = []
    event.listen(engine.sync_engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    view = await store.view(inbox)  # SELECT: the state, then one row per flag list
    assert len(statements) == 2 and "bodies" not in statements[1] and "GROUP BY" in statements[1]
    assert view.uids == list(range(1, 10_001)) and set(view.flags.values()) == {frozenset()}
    assert view.modseqs == {uid: uid for uid in range(1, 10_001)} and view.first_unseen == 1
    assert view.sizes == dict.fromkeys(range(1, 10_001), 3)
    statements.clear()
    assert await store.view(inbox) is view and len(statements) == 1  # the next SELECT: the folder's row
    statements.clear()
    state, counts = await store.summary(inbox, size=True)  # STATUS: from the view kept, moved on
    assert counts == {"MESSAGES": 10_000, "RECENT": 10_000, "UNSEEN": 10_000, "DELETED": 0, "SIZE": 30_000}
    assert len(statements) == 1
    statements.clear()
    fresh = Folders(engine, bus, quota_bytes=QUOTA)  # another process: no view kept, counted by the database
    assert (await fresh.summary(inbox, size=True))[1] == counts and len(statements) == 2
    statements.clear()
    dates = await store.dates(inbox, [1, 5_000, 10_000])  # INTERNALDATE, when a command needs it
    assert dates == {uid: NOW for uid in (1, 5_000, 10_000)} and len(statements) == 1
    statements.clear()
    assert len((await store.changes(inbox, 9_000)).changed) == 1_000 and len(statements) == 2
    statements.clear()
    assert len(await store.bodies(inbox, range(1, 10_001))) == 10_000 and len(statements) == 20
    statements.clear()
    changed, _ = await store.store_flags(inbox, range(1, 10_001), "+", {"\\Seen"})
    assert len(changed) == 10_000 and len(statements) <= 4
    await store.store_flags(inbox, [2], "+", {"$Label1"})
    await store.expunge(inbox, [])  # nothing to expunge
    statements.clear()
    view = await store.view(inbox)  # the next SELECT reads what the change log has since
    assert len(statements) == 2 and "GROUP BY" not in statements[1]
    assert view.flags[1] == {"\\Seen"} and view.flags[2] == {"\\Seen", "$Label1"} and view.first_unseen is None
    assert view.keywords == {"$Label1"} and view.modseqs[2] == view.state.highestmodseq


async def test_sessions_asking_the_same_changes_at_once_share_one_read(store, engine):
    """Twenty IDLE sessions woken by one delivery each ask what changed since the same MODSEQ:
    one read of the store answers them all (a session joins a read that has not asked the
    database yet, so its answer is as fresh as its own would be)."""
    inbox = await folder_id(store, "INBOX")
    since = (await store.state(inbox)).highestmodseq
    await store.append(inbox, b"Subject: a\r\n\r\nx\r\n", set(), NOW)
    statements = []
    event.listen(engine.sync_engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    answers = await asyncio.gather(*(store.changes(inbox, since) for _ in range(20)))
    assert [[m.uid for m in a.changed] for a in answers] == [[1]] * 20
    assert len(statements) == 2  # the folder's state, then its changed rows
    statements.clear()
    await store.append(inbox, b"Subject: b\r\n\r\ny\r\n", set(), NOW)
    statements.clear()
    assert [m.uid for m in (await store.changes(inbox, since)).changed] == [1, 2]  # a later ask reads again
    assert len(statements) == 2


async def test_select_reads_the_folder_row_afresh_in_one_sqlite_call(store, engine, monkeypatch):
    """SELECT's first read (the folder by name, with its state) is read from the store each
    time, so a write of another process shows at once; on SQLite it costs one call into
    aiosqlite's thread plus the pool's reset, not SQLAlchemy cursor's four hand-offs."""
    import aiosqlite
    inbox = await folder_id(store, "INBOX")
    before = await store.state_of(1, "inbox")
    other = Folders(engine, LocalBus(), quota_bytes=QUOTA)  # another process: its write, no event here
    await other.append(inbox, b"Subject: a\r\n\r\nx\r\n", {"$Label1"}, NOW)
    calls = []
    execute = aiosqlite.Connection._execute
    monkeypatch.setattr(aiosqlite.Connection, "_execute", lambda self, fn, *a, **k: (calls.append(fn),
                                                                                     execute(self, fn, *a, **k))[1])
    after = await store.state_of(1, "INBOX")
    assert len(calls) == 1 or engine.dialect.name != "sqlite"  # the read (old: cursor, execute, fetchall, close, rollback)
    assert (after.id, after.uidvalidity) == (inbox, before.uidvalidity)
    assert (after.uidnext, after.highestmodseq) == (before.uidnext + 1, before.highestmodseq + 1)
    assert after.keywords == {"$Label1"}
    assert (await store.get(1, "inbox")).special_use == "" and (await store.get(1, "Sent")).special_use == "\\Sent"
    with pytest.raises(NoSuchFolder):
        await store.state_of(1, "nowhere")


async def test_sessions_of_one_process_claim_recent_once(store, engine):
    """Sessions of one process that see the same new messages at once (IDLE, after a delivery)
    claim \\Recent with one write: the first takes them, the others are told none are theirs
    without taking the folder's lock in turn."""
    inbox = await folder_id(store, "INBOX")
    for n in range(2):
        await store.append(inbox, b"Subject: a\r\n\r\nx\r\n", set(), NOW)
    statements = []
    event.listen(engine.sync_engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    firsts = await asyncio.gather(*(store.claim_recent(inbox, 3) for _ in range(5)))
    assert sorted(firsts) == [1, 3, 3, 3, 3]
    assert len([s for s in statements if s.startswith("UPDATE folders")]) == 2  # one lock, one claim
