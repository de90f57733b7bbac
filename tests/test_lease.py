"""Rows leased to one process at a time (store/lease.py): engines on one PostgreSQL database
stand for processes on several nodes; SQLite runs the same statements, one process."""
from __future__ import annotations

import asyncio
import contextlib
import os
from datetime import datetime, timedelta, timezone

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, func, insert, select, update

from store import db
from store.lease import Lease, holder_name

ROWS = 120
metadata = MetaData()
jobs = Table("lease_test_jobs", metadata, Column("id", Integer, primary_key=True),
             Column("status", String(16), nullable=False), Column("leased_by", String(64)),
             Column("lease_until", DateTime(timezone=True)))
QUEUED = jobs.c.status == "queued"


async def jobs_in(url: str, count: int = ROWS):  # noqa: ANN201
    engine = db.create_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
        await conn.execute(insert(jobs), [{"id": i, "status": "queued"} for i in range(1, count + 1)])
    return engine


@contextlib.asynccontextmanager
async def processes(url: str, rows: int, seconds: float, count: int = 2):  # noqa: ANN201
    """`count` processes' engines on one database holding `rows` jobs, and their leases."""
    engines = [await jobs_in(url, rows)] + [db.create_engine(url) for _ in range(count - 1)]
    try:
        yield engines, [Lease(engine, jobs, seconds=seconds) for engine in engines]
    finally:
        for engine in engines:
            await engine.dispose()


async def finish(engine, lease: Lease, ids: list[int]) -> int:  # noqa: ANN001
    """Commit the outcome of `ids` as a job does: only on rows still leased by `lease`."""
    async with engine.begin() as conn:
        result = await conn.execute(update(jobs).where(jobs.c.id.in_(ids), lease.mine())
                                    .values(status="done", **Lease.cleared()))
    return result.rowcount


async def test_concurrent_claims_on_postgresql_never_share_a_row(postgresql_url):
    async with processes(postgresql_url, ROWS, 30, count=3) as (engines, leases):
        claimed: list[list[int]] = [[] for _ in leases]

        async def worker(i: int) -> None:
            while ids := await leases[i].claim(QUEUED, [jobs.c.id], 7):
                claimed[i] += ids
                assert await finish(engines[i], leases[i], ids) == len(ids)
        await asyncio.gather(*(worker(i) for i in range(len(leases)) for _ in range(4)))
        everything = sorted(sum(claimed, []))
        assert everything == list(range(1, ROWS + 1))  # each row once, none left
        assert all(claimed), [len(c) for c in claimed]  # every process took its share


async def test_a_dead_holders_rows_are_taken_over_when_its_lease_ends(postgresql_url):
    async with processes(postgresql_url, 10, 2) as (engines, (dead, alive)):
        assert await dead.claim(QUEUED, [jobs.c.id], 100) == list(range(1, 11))
        assert dead.holds()
        assert await alive.claim(QUEUED, [jobs.c.id], 100) == []
        soonest = await alive.next_claimable(QUEUED)
        assert 1.0 < (soonest - datetime.now(timezone.utc)).total_seconds() <= 2.0
        await asyncio.sleep(2.1)  # the holder renews nothing: it is dead
        assert not dead.holds()
        assert await alive.claim(QUEUED, [jobs.c.id], 100) == list(range(1, 11))
        # the old holder, had it only stalled, may not write an outcome over the new one's lease
        assert await finish(engines[0], dead, list(range(1, 11))) == 0
        assert await finish(engines[1], alive, list(range(1, 11))) == 10


async def test_leases_are_renewed_while_working_and_released_after(postgresql_url):
    async with processes(postgresql_url, 10, 2) as (engines, (worker, other)):
        async with worker.working():
            assert len(await worker.claim(QUEUED, [jobs.c.id], 4)) == 4
            await asyncio.sleep(4.5)  # a long SMTP delivery: the lease is renewed meanwhile
            assert worker.holds()
            assert await other.claim(QUEUED, [jobs.c.id], 100) == list(range(5, 11))
            assert await finish(engines[1], other, list(range(5, 11))) == 6
            assert await finish(engines[0], worker, [1, 2]) == 2
        # what the pass did not finish is given back at once
        assert await other.claim(QUEUED, [jobs.c.id], 100) == [3, 4]


async def test_on_sqlite_the_same_statements_work(tmp_path):
    async with processes(f"sqlite+aiosqlite:///{tmp_path / 'one.db'}", 10, 30, count=1) as ((engine,), (lease,)):
        async with lease.working():
            assert await lease.claim(QUEUED, [jobs.c.id], 4) == [1, 2, 3, 4]
            assert await lease.claim(QUEUED, [jobs.c.id], 100) == list(range(5, 11))
            assert await finish(engine, lease, [1, 2, 3, 4]) == 4
        async with engine.connect() as conn:
            assert (await conn.execute(select(func.count()).where(jobs.c.leased_by.is_not(None)))).scalar() == 0
        assert await lease.claim(QUEUED, [jobs.c.id], 100) == list(range(5, 11))


async def test_at_start_the_leases_of_ended_processes_are_given_back(postgresql_url):
    """A node restarted after a crash does not wait for its former self's leases to end; those
    of a living process, or of another host, it leaves alone."""
    ended = await asyncio.create_subprocess_exec("true")
    await ended.wait()
    host = holder_name().split(":")[0]
    holders = {1: f"{host}:{ended.pid}:dead", 2: f"{host}:{os.getpid()}:alive", 3: f"elsewhere:{ended.pid}:x"}
    async with processes(postgresql_url, 6, 30) as (engines, (_, lease)):
        async with engines[0].begin() as conn:
            for row_id, holder in holders.items():
                await conn.execute(update(jobs).where(jobs.c.id == row_id).values(
                    leased_by=holder, lease_until=datetime.now(timezone.utc) + timedelta(minutes=5)))
        await lease.recover(QUEUED)
        assert await lease.claim(QUEUED, [jobs.c.id], 100) == [1, 4, 5, 6]


async def test_on_sqlite_every_other_holders_leases_are_given_back_at_start(tmp_path):
    async with processes(f"sqlite+aiosqlite:///{tmp_path / 'one.db'}", 3, 30) as (_, (killed, restarted)):
        assert await killed.claim(QUEUED, [jobs.c.id], 2) == [1, 2]
        await restarted.recover(QUEUED)
        assert await restarted.claim(QUEUED, [jobs.c.id], 100) == [1, 2, 3]
