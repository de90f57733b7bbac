"""One process among several runs a job: the outbound queue must not send a message twice
because two nodes (or workers) picked the same due delivery at once.

On PostgreSQL the job runs while its process holds a session advisory lock, on a connection
kept for that purpose. PostgreSQL releases the lock when that connection ends, however the
process ends (SIGKILL, a node lost: the server notices the dead socket), so another process
takes the job over within RETRY_SECONDS, with no lease table and no clock to trust. A living
process whose locking connection alone was cut stops the job when it notices (it checks every
CHECK_SECONDS), so for that long, at worst, two processes run it: a queue pass in flight may
then send a message the other process sends too.

SQLite is one process's store: the job simply runs.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Awaitable, Callable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger("msante.store")

RETRY_SECONDS = 5.0  # how often a process without the lock tries to take it
CHECK_SECONDS = 5.0  # how often the holder makes sure its locking connection is alive
OUTBOUND_QUEUE = 0x6D73_0001  # the advisory lock keys of msante's jobs ("ms", job 1)


async def run_exclusively(engine: AsyncEngine, key: int, name: str,
                          job: Callable[[asyncio.Event], Awaitable[None]], stop: asyncio.Event) -> None:
    """Run `job(until)` while this process holds lock `key`, until `stop`. `until` is set
    when `stop` is, or when the lock is lost; the job must then return."""
    if engine.dialect.name != "postgresql":
        await job(stop)
        return
    while not stop.is_set():
        try:
            async with engine.connect() as conn:
                if (await conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key})).scalar():
                    log.info("%s runs in this process", name)
                    await _hold(conn, job, stop)
                    await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                    continue
        except Exception:  # the database is unreachable: try again later, the job stopped
            log.exception("%s: cannot hold its lock; retrying", name)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), RETRY_SECONDS)


async def _hold(conn, job: Callable[[asyncio.Event], Awaitable[None]], stop: asyncio.Event) -> None:  # noqa: ANN001
    until = asyncio.Event()
    running = asyncio.create_task(job(until))
    try:
        while not running.done():
            waiters = {running, asyncio.ensure_future(stop.wait())}
            await asyncio.wait(waiters, timeout=CHECK_SECONDS, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters - {running}:
                waiter.cancel()
            if stop.is_set():
                break
            if not running.done():
                await conn.execute(text("SELECT 1"))  # raises once the locking connection is gone
    finally:
        until.set()
        await running
