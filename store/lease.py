"""Durable jobs worked by every node at once: the outbound queue's deliveries and the hospital
events to dispatch. Each process claims a batch of due rows by writing its name and a lease end
on them (`leased_by`, `lease_until`), works them, and commits each row's outcome clearing the
lease. Two processes never claim the same row: the claim is one statement,

    UPDATE t SET leased_by = me, lease_until = now + lease
    WHERE id IN (SELECT id FROM t WHERE <due> AND (lease_until IS NULL OR lease_until < now)
                 ORDER BY ... LIMIT n FOR UPDATE SKIP LOCKED) RETURNING id

and on PostgreSQL a row another claim has locked is skipped, one it has just leased no longer
matches once re-checked. SQLite is one process's store (one writer): the same statement, without
FOR UPDATE SKIP LOCKED, which SQLite does not have and does not need.

A process renews its leases while it works (every third of the lease), so a long SMTP delivery
keeps its rows. A process that dies (SIGKILL, a node lost) renews nothing: its rows are claimable
by any node once `lease_until` passes, `[server] job_lease` seconds at most after its last
renewal. A living process that could not renew in time (the database unreachable, a stalled
loop) must not go on as if it held the rows: `holds()` says whether its lease is still surely
running, and outcomes are written only on rows it still holds (`mine()`).

Lease ends are written with the node's clock, as retry times are: nodes' clocks must agree to
well within the lease (NTP).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from datetime import datetime, timedelta, timezone
from typing import AsyncIterator, Awaitable, Callable, TypeVar

from sqlalchemy import ColumnElement, DateTime, Table, and_, case, literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from store.db import utc
from store.group_commit import GroupCommit

log = logging.getLogger("msante.store")

T = TypeVar("T")
LEASE_SECONDS = 60  # [server] job_lease: how long a dead process's rows wait before another takes them
MARGIN = 0.2  # of the lease: a process stops working rows whose lease ends sooner than this


def holder_name() -> str:
    """This process, as `leased_by` names it: host, pid and a random part (a pid is reused)."""
    return f"{_host()}:{os.getpid()}:{secrets.token_hex(4)}"


def _host() -> str:
    return socket.gethostname()[:40].replace(":", "-")


def _ended(holder: str) -> bool:
    """Whether `holder` is a process of this host that no longer exists (a pid that exists may
    be another process's now: it counts as living, and its leases simply run out)."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != _host() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False


class Lease:
    """This process's leases on the rows of `table` (a job's): claim, renew, release."""

    def __init__(self, engine: AsyncEngine, table: Table, *, seconds: float = LEASE_SECONDS,
                 holder: str | None = None, writes: GroupCommit | None = None) -> None:
        self._engine = engine
        # claims, renewals and releases ride the job's own group commit when it has one: on SQLite
        # a transaction of their own took the one write lock from under the writer, which then
        # slept in SQLite's busy backoff (up to 100 ms a try) while ACKs waited on it
        self._writes = writes
        self.table = table
        self.seconds = seconds
        self.holder = holder or holder_name()
        self._until = datetime.min.replace(tzinfo=timezone.utc)  # when the leases this process holds end
        self._held: set[int] = set()  # rows claimed since the last release: renewed and released by id

    async def recover(self, pending: ColumnElement[bool]) -> None:
        """At start: give back at once the rows of processes known to be gone rather than wait
        for their leases to end. On SQLite (one process) that is every other holder; on
        PostgreSQL, the processes of this host that have ended (a node restarted after a crash).
        `pending`: the job's rows that may be leased (an index finds them)."""
        t = self.table
        sqlite = self._engine.dialect.name == "sqlite"
        async with self._engine.begin() as conn:
            holders = (await conn.execute(select(t.c.leased_by).where(pending, t.c.leased_by.is_not(None))
                                          .distinct())).scalars()
            gone = [h for h in holders if h != self.holder and (sqlite or _ended(h))]
            if gone:
                await conn.execute(update(t).where(pending, t.c.leased_by.in_(gone)).values(**self.cleared()))
                log.info("%s: leases of ended processes given back: %s", t.name, ", ".join(gone))

    async def claim(self, due: ColumnElement[bool], order_by: list, limit: int) -> list[int]:
        """Lease up to `limit` rows that are `due` and not leased by a living process; their ids."""
        now = datetime.now(timezone.utc)
        until = now + timedelta(seconds=self.seconds)
        t = self.table
        pick = (select(t.c.id).where(due, or_(t.c.lease_until.is_(None), t.c.lease_until < now))
                .order_by(*order_by).limit(limit).with_for_update(skip_locked=True))

        async def write(conn: AsyncConnection) -> list[int]:
            claimed = await conn.execute(update(t).where(t.c.id.in_(pick.scalar_subquery()))
                                         .values(leased_by=self.holder, lease_until=until).returning(t.c.id))
            return list(claimed.scalars().all())
        ids = await self._write(write)
        if ids:
            self._until = until
            self._held.update(ids)
        return sorted(ids)

    def holds(self) -> bool:
        """Whether the leases this process took or renewed last surely still run: work on a row
        (sending it) starts only then, so that no other process may have taken it meanwhile."""
        left = (self._until - datetime.now(timezone.utc)).total_seconds()
        return left > self.seconds * MARGIN

    def mine(self) -> ColumnElement[bool]:
        """The condition of an outcome's UPDATE: the row is still leased by this process."""
        return self.table.c.leased_by == self.holder

    @staticmethod
    def cleared() -> dict[str, None]:
        """The values an outcome's UPDATE sets besides its own: the row is leased no more."""
        return {"leased_by": None, "lease_until": None}

    def _mine_held(self) -> ColumnElement[bool]:  # by id: the table's other rows are never read
        return and_(self.table.c.id.in_(sorted(self._held)), self.mine())

    async def renew(self) -> None:
        now = datetime.now(timezone.utc)
        until = now + timedelta(seconds=self.seconds)
        if self._held:
            held = self._mine_held()
            await self._write(lambda conn: conn.execute(update(self.table).where(held).values(lease_until=until)))
        self._until = until

    async def release(self) -> None:
        """Give back what this process claimed and did not finish (a pass that failed or stopped)."""
        if self._held:
            held = self._mine_held()
            await self._write(lambda conn: conn.execute(update(self.table).where(held).values(**self.cleared())))
            self._held.clear()

    async def _write(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        if self._writes is not None:
            return await self._writes.run(work)
        async with self._engine.begin() as conn:
            return await work(conn)

    @contextlib.asynccontextmanager
    async def working(self) -> AsyncIterator[None]:
        """Renew this process's leases while the block runs; release what is left after it."""
        async def renewing() -> None:
            while True:
                await asyncio.sleep(self.seconds / 3)
                try:
                    await self.renew()
                except Exception:  # the database unreachable: holds() turns false in time
                    log.exception("%s: cannot renew leases", self.table.name)
        renewer = asyncio.create_task(renewing())
        try:
            yield
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            await self.release()

    async def next_claimable(self, pending: ColumnElement[bool], ready: ColumnElement | None = None) -> datetime | None:
        """When the soonest `pending` row can be claimed: at `ready` (a retry's time; now if
        None) or when another process's lease on it ends, whichever is later."""
        lease_until = self.table.c.lease_until
        ready = ready if ready is not None else literal(datetime.now(timezone.utc), DateTime(timezone=True))
        at = case((lease_until > ready, lease_until), else_=ready).label("at")
        async with self._engine.connect() as conn:
            soonest = (await conn.execute(select(at).where(pending).order_by(at).limit(1))).scalar()
        return utc(soonest) if soonest is not None else None
