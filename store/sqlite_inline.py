"""The group commit's SQLite connection: statements run on the event loop's thread, only the
waits (the write lock, the commit's fsync) in a worker thread.

aiosqlite runs every call in its connection's thread, and SQLAlchemy makes three or four calls
a statement (cursor, execute and fetch, close): each a hand-off through a queue, a wake of the
event loop through its self-pipe and a turn of the loop. py-spy on SMTP acceptance (issue 13)
put a quarter of the main thread's time in those hand-offs, more than SQLite took to run the
statements, which are small inserts and updates of a few microseconds each. The group commit's
writer is the one connection that writes in turn for everyone, so it is the one that pays:
here it calls sqlite3 directly, and SQLAlchemy's awaits on it complete without yielding.

Two things may block for long, and those go to a thread, so the loop keeps serving sessions:
- `begin_immediate`: taking the write lock, which another process's writer (workers on one
  SQLite file) or this process's other writes (aiosqlite's connections) may hold for a while;
  once held, a statement in WAL mode waits for nobody;
- `commit`: the WAL's fsync (`synchronous=FULL`), and a checkpoint now and then.

This is aiosqlite's interface as SQLAlchemy's aiosqlite dialect uses it (`async_creator`),
not all of it. Reads stay on aiosqlite: a large SELECT must not stop the loop.
"""
from __future__ import annotations

import asyncio
import sqlite3
from typing import Any, Iterable, Sequence


async def connect(path: str, *, timeout: float) -> "Connection":
    """sqlite3's connection, which a worker thread may commit (never while the loop uses it:
    the writer awaits each call before the next)."""
    return Connection(sqlite3.connect(path, timeout=timeout, check_same_thread=False))


class Cursor:
    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    def __await__(self):  # noqa: ANN204 - SQLAlchemy before 2.1 awaits `cursor()`, 2.1 enters it
        yield from ()
        return self

    async def __aenter__(self) -> "Cursor":
        return self

    async def __aexit__(self, *_exc: Any) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> "Cursor":
        self._cursor.execute(sql, parameters)
        return self

    async def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> "Cursor":
        self._cursor.executemany(sql, parameters)
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(self._cursor.arraysize if size is None else size)

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()


class Connection:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._connection = conn  # what SQLAlchemy's adapter tests to know the connection is open

    def cursor(self) -> Cursor:
        return Cursor(self._conn.cursor())

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    async def begin_immediate(self) -> None:
        """Take the write lock now, waiting (up to the busy timeout) in a thread."""
        await asyncio.get_running_loop().run_in_executor(None, self._conn.execute, "BEGIN IMMEDIATE")

    async def commit(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._conn.commit)

    async def rollback(self) -> None:
        self._conn.rollback()

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._conn.create_function(*args, **kwargs)

    async def close(self) -> None:
        self.stop()

    def stop(self) -> None:
        """SQLAlchemy's terminate (a connection invalidated): nothing runs beside the loop."""
        self._connection = None
        self._conn.close()
