"""Group commit: the writes of many concurrent sessions in one transaction, one fsync.

A `250` after DATA must follow a durable commit, and on this kind of machine the fsync, not
Python, bounds how many commits a second there can be. So sessions hand their write to one
writer, which runs every write waiting at that moment in a single transaction (as
PostgreSQL's commit_delay and InnoDB's group commit do) and then answers each of them.

A write that fails takes its batch down with it; the writer then replays the batch one write
per transaction, so one bad write never costs the others theirs. Writes must therefore be
plain database work (no side effects outside the connection); callers act after the answer.

Several processes on one PostgreSQL database (workers, nodes) each have their writer. Their
batches lock the same rows (a folder's next UID) in whatever order their messages came, so
two batches would deadlock, PostgreSQL would abort one after a second, and it would be
replayed write by write: measured, two workers took mail at 40 % of one's rate. So each batch
first takes a transaction-scoped advisory lock: the writers of all processes commit one
batch at a time, as one process's writer does.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, TypeVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from . import db, sqlite_inline

log = logging.getLogger("msante.store")

T = TypeVar("T")
Write = Callable[[AsyncConnection], Awaitable[Any]]
MAX_BATCH = 64  # writes per transaction: bounds the latency one batch adds to its first write
WRITER_LOCK = 0x6D73_0002  # the advisory lock of the writers of every process


class GroupCommit:
    def __init__(self, engine: AsyncEngine) -> None:
        # on a SQLite file, the writer's own engine (store/sqlite_inline.py)
        self._own = engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:")
        self._engine = db.create_engine(engine.url.render_as_string(hide_password=False), writer=True) \
            if self._own else engine
        self._pending: asyncio.Queue[tuple[Write, asyncio.Future]] | None = None
        self._writer: asyncio.Task | None = None

    async def run(self, write: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run `write` in a shared transaction; returns its result once that transaction committed."""
        if self._writer is None or self._writer.done():
            self._pending = asyncio.Queue()
            self._writer = asyncio.create_task(self._write_forever(), name="group-commit")
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending.put_nowait((write, future))
        return await future

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        if self._own:
            await self._engine.dispose()

    async def _write_forever(self) -> None:
        assert self._pending is not None
        while True:
            batch = [await self._pending.get()]
            while len(batch) < MAX_BATCH and not self._pending.empty():
                batch.append(self._pending.get_nowait())
            batch = [(write, future) for write, future in batch if not future.cancelled()]
            try:
                results = []
                async with self._engine.begin() as conn:
                    await _one_writer(conn)
                    for write, _future in batch:
                        results.append(await write(conn))
            except Exception as exc:
                if len(batch) == 1:
                    settle(batch[0][1], error=exc)
                    continue
                log.warning("a batch of %d writes failed; replaying them one by one", len(batch))
                for write, future in batch:
                    try:
                        async with self._engine.begin() as conn:
                            await _one_writer(conn)
                            result = await write(conn)
                    except Exception as exc:
                        settle(future, error=exc)
                    else:
                        settle(future, result)
                continue
            for (_write, future), result in zip(batch, results):
                settle(future, result)


async def _one_writer(conn: AsyncConnection) -> None:
    """Wait for the other processes' batch, if one is being written; held until commit. On
    SQLite, the write lock itself, taken in a thread (store/sqlite_inline.py)."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": WRITER_LOCK})
        return
    driver = (await conn.get_raw_connection()).driver_connection
    if isinstance(driver, sqlite_inline.Connection):
        await driver.begin_immediate()


def settle(future: asyncio.Future, result: Any = None, *, error: BaseException | None = None) -> None:
    """Answer a waiting caller, unless it has gone (its future cancelled)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
