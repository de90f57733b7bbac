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
