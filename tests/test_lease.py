"""One process runs the outbound queue at a time (store/lease.py): two engines on one
PostgreSQL database stand for two nodes."""
from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from store import db, lease


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setattr(lease, "RETRY_SECONDS", 0.05)
    monkeypatch.setattr(lease, "CHECK_SECONDS", 0.05)


class Job:
    """Records whether it runs, and how often it was started."""

    def __init__(self) -> None:
        self.running = False
        self.starts = 0

    async def __call__(self, until: asyncio.Event) -> None:
        self.running = True
        self.starts += 1
        try:
            await until.wait()
        finally:
            self.running = False


async def wait_for(condition, seconds: float = 10.0) -> None:  # noqa: ANN001
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


async def test_one_node_runs_the_job_the_other_takes_over(postgresql_url, quick):
    engines = [db.create_engine(postgresql_url) for _ in range(3)]
    jobs, stops = [Job(), Job()], [asyncio.Event(), asyncio.Event()]
    tasks = [asyncio.create_task(lease.run_exclusively(engines[i], lease.OUTBOUND_QUEUE, f"job {i}", jobs[i], stops[i]))
             for i in range(2)]
    try:
        await wait_for(lambda: jobs[0].running or jobs[1].running)
        await asyncio.sleep(0.3)  # several retries of the other
        holder = 0 if jobs[0].running else 1
        other = 1 - holder
        assert not jobs[other].running and jobs[other].starts == 0
        # The holder's node dies: PostgreSQL ends its connection, and so its lock.
        async with engines[2].connect() as conn:
            ended = (await conn.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND objid = :key"),
                {"key": lease.OUTBOUND_QUEUE})).scalars().all()
        assert ended == [True]
        await wait_for(lambda: jobs[other].running)
        await wait_for(lambda: not jobs[holder].running)  # the holder noticed and stopped
        await asyncio.sleep(0.3)
        assert jobs[other].running and not jobs[holder].running  # and does not take it back
        stops[other].set()
        await tasks[other]
        await wait_for(lambda: jobs[holder].running)  # a clean stop hands it over too
    finally:
        for stop in stops:
            stop.set()
        await asyncio.gather(*tasks)
        for engine in engines:
            await engine.dispose()


async def test_on_sqlite_the_job_just_runs(tmp_path):
    engine = db.create_engine(f"sqlite+aiosqlite:///{tmp_path / 'one.db'}")
    job, stop = Job(), asyncio.Event()
    task = asyncio.create_task(lease.run_exclusively(engine, lease.OUTBOUND_QUEUE, "job", job, stop))
    await wait_for(lambda: job.running)
    stop.set()
    await task
    assert not job.running
    await engine.dispose()
