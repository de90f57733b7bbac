"""SQLite's pool (store/db.py): a connection given back is rolled back only when a transaction
is open on it, so a commit or a read of one statement costs no further call into aiosqlite's thread."""
from __future__ import annotations

import aiosqlite
from sqlalchemy import text

from store import db


async def test_sqlite_connection_rolled_back_on_return_only_when_open(tmp_path, monkeypatch):
    engine = db.create_engine(f"sqlite+aiosqlite:///{tmp_path / 'pool.db'}")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (n int)"))
        calls = []
        execute = aiosqlite.Connection._execute
        monkeypatch.setattr(aiosqlite.Connection, "_execute", lambda self, fn, *a, **k: (
            calls.append(getattr(fn, "__name__", repr(fn))), execute(self, fn, *a, **k))[1])

        async def work(conn) -> None:  # noqa: ANN001
            await conn.execute(text("INSERT INTO t VALUES (1)"))
        await db.committed(engine, work)
        assert calls[-1] == "commit" and "rollback" not in calls  # old: a rollback after the commit
        calls.clear()
        async with engine.connect() as conn:  # left in a transaction: rolled back on return
            driver = (await conn.get_raw_connection()).driver_connection
            await driver.execute("INSERT INTO t VALUES (2)")
            assert driver.in_transaction
        assert calls[-1] == "rollback"
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT sum(n) FROM t"))).scalar() == 1
            assert not (await conn.get_raw_connection()).driver_connection.in_transaction
        await db.committed(engine, work)  # no write lock left behind
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT sum(n) FROM t"))).scalar() == 2
    finally:
        await engine.dispose()


async def test_one_read_gives_sqlalchemys_rows_in_one_call(database_url, monkeypatch):
    """`OneRead` (SMTP's MAIL and RCPT, IMAP's SELECT): the rows SQLAlchemy's path gives, with
    a literal IN list and a parameter of the caller's, in one call into aiosqlite's thread."""
    from sqlalchemy import bindparam, column, select, table

    engine = db.create_engine(database_url)
    boxes = table("one_read_boxes", column("id"), column("address"), column("kind"))
    query = select(boxes.c.id, boxes.c.address).where(
        boxes.c.kind.in_(("nominative", "cabinet")), boxes.c.address != bindparam("not")).order_by(boxes.c.id)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE one_read_boxes (id int, address text, kind text)"))
            await conn.execute(text("INSERT INTO one_read_boxes VALUES (1, 'a@t', 'nominative'), "
                                    "(2, 'b@t', 'cabinet'), (3, 'c@t', 'organisational'), (4, 'd@t', 'cabinet')"))
        calls = []
        execute = aiosqlite.Connection._execute
        monkeypatch.setattr(aiosqlite.Connection, "_execute", lambda self, fn, *a, **k: (
            calls.append(fn), execute(self, fn, *a, **k))[1])
        one = db.OneRead(query)
        async with engine.connect() as conn:
            calls.clear()
            rows = await one.rows(conn, {"not": "b@t"})
            assert len(calls) == (1 if engine.dialect.name == "sqlite" else 0)
            assert [(r.id, r.address) for r in rows] == [(1, "a@t"), (4, "d@t")]
            assert rows == list((await conn.execute(query, {"not": "b@t"})).all())
            assert (await one.first(conn, {"not": "a@t"})).address == "b@t"
            assert [r.id for r in await one.rows(conn, {"not": "x"})] == [1, 2, 4]
    finally:
        async with engine.begin() as conn:
            await conn.execute(text("DROP TABLE IF EXISTS one_read_boxes"))
        await engine.dispose()
