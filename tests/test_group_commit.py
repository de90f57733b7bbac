"""Group commit across processes (store/group_commit.py): two writers on one PostgreSQL
database, as two workers or nodes have, whose batches lock the same rows in opposite orders."""
from __future__ import annotations

import asyncio
from collections import Counter

from sqlalchemy import text

from store import db
from store.group_commit import GroupCommit


async def test_writers_of_two_processes_never_deadlock(postgresql_url):
    engines = [db.create_engine(postgresql_url) for _ in range(2)]
    async with engines[0].begin() as conn:
        await conn.execute(text("CREATE TABLE folders_like (id int PRIMARY KEY, uidnext int)"))
        await conn.execute(text("INSERT INTO folders_like VALUES (1, 1), (2, 1)"))
    calls: Counter[str] = Counter()

    def write(name: str, first: int, then: int):  # noqa: ANN202
        async def run(conn) -> None:  # noqa: ANN001
            calls[name] += 1
            for row in (first, then):
                await conn.execute(text("UPDATE folders_like SET uidnext = uidnext + 1 WHERE id = :id"), {"id": row})
                await asyncio.sleep(0.2)  # the other process's batch runs meanwhile
        return run

    writers = [GroupCommit(engine) for engine in engines]
    try:
        await asyncio.gather(writers[0].run(write("a", 1, 2)), writers[1].run(write("b", 2, 1)))
        async with engines[0].connect() as conn:
            assert (await conn.execute(text("SELECT sum(uidnext) FROM folders_like"))).scalar() == 6
        # A deadlock would have aborted one batch and replayed its write: called twice.
        assert calls == {"a": 1, "b": 1}
    finally:
        for writer in writers:
            await writer.close()
        for engine in engines:
            await engine.dispose()
