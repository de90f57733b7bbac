"""`MailStore.accept`, the write behind every SMTP `250`: the messages of concurrent sessions
are stored by one write, a table at a time, and a message whose store fails fails alone."""
from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import event, select
from sqlalchemy.engine import Engine

from mailserver import dsn
from mailserver.mailstore import MailStore, Recipient
from store import db
from store.audit import Actor, AuditTrail
from store.events import LocalBus
from store.schema import audit, folder_messages, folders, mailboxes
from tests.conftest import init_data_dir

BOX = "sophie.hoarau@msante.test"  # a demo box


@pytest.fixture
async def store(tmp_path, monkeypatch, database_url):  # noqa: ANN001, ANN201
    await asyncio.to_thread(init_data_dir, tmp_path / "var", monkeypatch, database_url=database_url)
    engine = db.create_engine(database_url)
    mail_store = MailStore(engine, LocalBus(), reporting_mta="msante.test")
    yield mail_store, engine
    await mail_store.close()
    await engine.dispose()


async def _box(engine) -> int:  # noqa: ANN001
    async with engine.connect() as conn:
        return (await conn.execute(select(mailboxes.c.id).where(mailboxes.c.address == BOX))).scalar_one()


def _rows(statement: str) -> int:
    return statement.count("), (") + 1  # the rows of a multi-row INSERT … VALUES (…), (…)


async def _accept(mail_store: MailStore, engine, box: int, n: int) -> object:  # noqa: ANN001
    return await mail_store.accept(
        message=f"From: a@msante.test\r\nSubject: n{n}\r\nMessage-ID: <n{n}@t>\r\n\r\nbody {n}\r\n".encode(),
        message_id=f"<n{n}@t>", sender="a@msante.test", actor=Actor("a@msante.test", "application"), audit=AuditTrail(engine),
        audit_action="smtp.accept", source="127.0.0.1", mail_dsn=dsn.MailDsn(),
        recipients=[Recipient(BOX, dsn.RcptDsn(), box)])


async def test_concurrent_messages_share_one_write_and_a_bad_one_fails_alone(store):
    mail_store, engine = store
    box = await _box(engine)
    await _accept(mail_store, engine, box, 0)  # the box's folders made, its first UID taken
    poisoned = []

    async def hook(_conn, delivered) -> list[str]:  # noqa: ANN001 - a hook that cannot record its work
        if b"Subject: n5\r\n" in delivered.message:
            poisoned.append(delivered.envelope_id)
            raise RuntimeError("the hook's table is gone")
        return []
    mail_store.delivery_hooks.append(hook)
    inserts: list[str] = []

    def seen(_conn, _cursor, statement, *_args) -> None:  # noqa: ANN001
        if statement.startswith("INSERT INTO folder_messages"):
            inserts.append(statement)
    event.listen(Engine, "before_cursor_execute", seen)
    try:
        results = await asyncio.gather(*(_accept(mail_store, engine, box, n) for n in range(1, 11)),
                                       return_exceptions=True)
    finally:
        event.remove(Engine, "before_cursor_execute", seen)
    failed = [n for n, r in enumerate(results, 1) if isinstance(r, Exception)]
    assert failed == [5] and "the hook's table is gone" in str(results[4])
    assert poisoned  # the hook did run for it, and took its message down
    # ten messages at once: one write for the ten, which failed; then each alone (nine stored)
    assert _rows(inserts[0]) == 10 and all(_rows(s) == 1 for s in inserts[1:]), inserts
    async with engine.connect() as conn:
        inbox = (await conn.execute(select(folders).join(mailboxes, mailboxes.c.id == folders.c.mailbox_id)
                                    .where(mailboxes.c.address == BOX, folders.c.name == "INBOX"))).one()
        uids = (await conn.execute(select(folder_messages.c.uid).where(folder_messages.c.folder_id == inbox.id)
                                   .order_by(folder_messages.c.uid))).scalars().all()
        accepted = (await conn.execute(select(audit.c.detail).where(audit.c.action == "smtp.accept"))).scalars().all()
    assert len(uids) == inbox.messages == 10 and len(set(uids)) == 10  # message 0 and the nine
    # an audit row for each stored message, none for the one refused
    assert len(accepted) == 10 and not [d for d in accepted if "<n5@t>" in d]

    mail_store.delivery_hooks.clear()
    inserts.clear()
    event.listen(Engine, "before_cursor_execute", seen)
    try:
        assert len(await asyncio.gather(*(_accept(mail_store, engine, box, n) for n in range(11, 21)))) == 10
    finally:
        event.remove(Engine, "before_cursor_execute", seen)
    assert [_rows(s) for s in inserts] == [10], inserts  # the ten in one write
