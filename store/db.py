"""Engine factory and schema upgrade, for SQLite (embedded default) and PostgreSQL.

SQLite gets WAL (readers do not block the writer), foreign keys (off by default in SQLite)
and a busy timeout, set on every new connection because they are per-connection pragmas.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import namedtuple
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, TypeVar
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Table, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool
from sqlalchemy.sql import Select
from sqlalchemy.sql.dml import Insert

from . import sqlite_inline

MIGRATIONS = Path(__file__).with_name("migrations")
log = logging.getLogger("msante.store")
T = TypeVar("T")
SQLITE_POOL = 20  # SQLite connections kept open, and as many more opened on demand
_unfinished: set[asyncio.Future] = set()  # shielded writes whose callers may be gone


def create_engine(url: str, *, writer: bool = False) -> AsyncEngine:
    """The store's engine; `writer`: the group commit's own (store/group_commit.py), whose
    SQLite connection runs statements on the loop's thread (store/sqlite_inline.py)."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        if writer and path and path != ":memory:":
            # one connection: the writer writes one batch at a time
            engine = create_async_engine(url, async_creator=lambda: sqlite_inline.connect(path, timeout=30),
                                         poolclass=AsyncAdaptedQueuePool, pool_size=1, max_overflow=1,
                                         pool_reset_on_return=None)
        else:
            # Every SMTP session checks a connection out at MAIL and at each RCPT. With the default
            # pool (5 kept, 10 more opened on demand and closed when given back), 20 sessions opened
            # and closed a connection (a thread, the file, four PRAGMAs) every ~20 messages. Idle
            # SQLite connections cost a thread each and nothing on the database. The pool class
            # named: older SQLAlchemy 2.0 releases (2.0.30, our floor) gave aiosqlite a NullPool.
            engine = create_async_engine(url, connect_args={"timeout": 30}, poolclass=AsyncAdaptedQueuePool,
                                         pool_size=SQLITE_POOL, max_overflow=SQLITE_POOL,
                                         pool_reset_on_return=None)  # _reset_if_open below instead

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn, _record):  # noqa: ANN001 - DB-API connection
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=FULL")  # a 250 after DATA must survive power loss
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine.sync_engine, "reset")
        def _reset_if_open(dbapi_conn, record, state) -> None:  # noqa: ANN001
            """A connection given back is rolled back only if a transaction is open on it. The
            pool's default rolled back every time, one more hand-off to aiosqlite's thread after
            each commit and after a read that began none (sqlite3 begins one before a write only)."""
            if state.asyncio_safe and not state.transaction_was_reset and record.driver_connection.in_transaction:
                dbapi_conn.rollback()
        return engine
    engine = create_async_engine(url, pool_size=10, max_overflow=10)
    _ping_when_idle(engine)
    return engine


IDLE_PING_SECONDS = 10.0  # a pooled connection unused this long is pinged before it is handed out


def _ping_when_idle(engine: AsyncEngine) -> None:
    """Ping a pooled connection only when it sat unused for IDLE_PING_SECONDS (a restarted
    PostgreSQL, a firewall that dropped it). pool_pre_ping pinged at every checkout, and on
    asyncpg a ping is three round trips (BEGIN, a query, ROLLBACK): the ten checkouts of a
    websocket post paid thirty. A connection that breaks while in use fails its statement,
    and SQLAlchemy then invalidates the whole pool, as it did with pool_pre_ping."""
    @event.listens_for(engine.sync_engine, "checkin")
    def _returned(_dbapi_conn, record) -> None:  # noqa: ANN001
        record.info["returned"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _handed_out(dbapi_conn, record, _proxy) -> None:  # noqa: ANN001
        if time.monotonic() - record.info.get("returned", time.monotonic()) < IDLE_PING_SECONDS:
            return
        try:
            dbapi_conn.ping()
        except Exception as exc:
            raise DisconnectionError(f"pooled connection lost while idle: {exc}") from exc


def reads(engine: AsyncEngine) -> AsyncEngine:
    """The engine for reads of one statement (or of rows committed together): on PostgreSQL in
    autocommit, so a read is one round trip instead of BEGIN, the query and ROLLBACK."""
    if engine.dialect.name == "postgresql":
        return engine.execution_options(isolation_level="AUTOCOMMIT")
    return engine


class OneRead:
    """A SELECT built once whose columns need no conversion (integers, text) and whose
    parameters are single values (an IN list only of literals): on SQLite it is
    read in one call into aiosqlite's thread (`execute_fetchall`: cursor, statement, rows and
    close there), where SQLAlchemy's cursor makes three or four, each a hand-off through a
    queue and a turn of the event loop. Those hand-offs were the largest cost of a warm IMAP
    SELECT (issue 12) and of SMTP's MAIL and RCPT (issue 13). Elsewhere, SQLAlchemy's path."""

    def __init__(self, statement: Select) -> None:
        self.statement = statement
        self.row = namedtuple("Row", list(statement.selected_columns.keys()), rename=True)  # type: ignore[misc]
        self._sqlite: tuple[str, tuple[str, ...], dict[str, Any]] | None = None

    async def rows(self, conn: AsyncConnection, params: dict[str, Any]) -> list[Any]:
        if conn.dialect.name != "sqlite":
            return list((await conn.execute(self.statement, params)).all())
        if self._sqlite is None:  # an IN list of literals expanded to parameters as well
            compiled = self.statement.compile(dialect=conn.dialect)
            state = compiled.construct_expanded_state(
                {name: None for name, bind in compiled.binds.items() if bind.required})  # the caller's, later
            self._sqlite = state.statement, tuple(state.positiontup or ()), dict(state.parameters)
        sql, names, constants = self._sqlite
        driver = (await conn.get_raw_connection()).driver_connection
        rows = await driver.execute_fetchall(sql, tuple(params[n] if n in params else constants[n] for n in names))
        return [self.row._make(r) for r in rows]

    async def first(self, conn: AsyncConnection, params: dict[str, Any]) -> Any:
        rows = await self.rows(conn, params)
        return rows[0] if rows else None


def dialect_insert(conn: AsyncConnection, table: Table) -> Insert:
    """INSERT for the connection's dialect: ON CONFLICT exists on the dialect constructs only."""
    name = conn.dialect.name
    if name == "sqlite":
        return sqlite.insert(table)
    if name == "postgresql":
        return postgresql.insert(table)
    raise NotImplementedError(f"msante runs on SQLite or PostgreSQL, not {name}")


async def inserted_ids(conn: AsyncConnection, statement: Insert, rows: list[dict]) -> list[int]:
    """The ids of `rows` inserted by `statement` (INSERT … RETURNING its autoincrement key), in
    the order of `rows`, from one multi-row INSERT: a key hands its ids to the rows of one
    statement in their order on both stores, whatever order RETURNING gives them back in.
    (SQLAlchemy's sort_by_parameter_order ran one INSERT a row here.)"""
    return sorted((await conn.execute(statement, rows)).scalars())


async def committed(engine: AsyncEngine, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """Run `work` in its own transaction, shielded from the caller's cancellation: cut in the
    middle (a session closed at shutdown), an aiosqlite transaction can keep SQLite's write lock
    on a pooled connection, and every later writer then waits for it."""
    async def run() -> T:
        async with engine.begin() as conn:
            return await work(conn)
    task = asyncio.ensure_future(run())
    _unfinished.add(task)
    task.add_done_callback(_unfinished.discard)
    return await asyncio.shield(task)


async def finish_writes() -> None:
    """At shutdown, before the engine goes: let the writes of cancelled callers commit."""
    if _unfinished:
        await asyncio.wait(set(_unfinished))


def utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; msante writes them in UTC."""
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


async def upgrade(engine: AsyncEngine) -> list[str]:
    """Apply every pending migration and return their revisions, oldest first.

    Idempotent: `init`, `serve` and every CLI command that opens the store run it, so a current
    schema costs one read and logs nothing; each migration applied logs one line of ours
    (Alembic's own INFO lines are left to `--verbose`).
    """
    def _run(sync_conn) -> list[str]:  # noqa: ANN001
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        cfg = alembic_config(str(engine.url))
        cfg.attributes["connection"] = sync_conn
        script = ScriptDirectory.from_config(cfg)
        current = MigrationContext.configure(sync_conn).get_current_revision()
        pending = list(reversed(list(script.iterate_revisions("head", current))))
        for revision in pending:
            log.info("applying migration %s (%s)", revision.revision, (revision.doc or "").strip())
        if pending:
            command.upgrade(cfg, "head")
        return [revision.revision for revision in pending]
    async with engine.begin() as conn:
        return await conn.run_sync(_run)


async def current_revision(engine: AsyncEngine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    async with engine.connect() as conn:
        return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())
