"""Alembic migrations build the schema the code queries, on SQLite and PostgreSQL alike."""
import subprocess
import sys

from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from store import db
from store.schema import metadata


async def test_upgrade_creates_every_table_and_is_idempotent(database_url):
    engine = db.create_engine(database_url)
    try:
        applied = await db.upgrade(engine)
        assert await db.upgrade(engine) == []  # init and serve both run it: the second run is a no-op
        head = ScriptDirectory.from_config(db.alembic_config(database_url)).get_current_head()
        assert applied[0] == "0001" and applied[-1] == head
        assert await db.current_revision(engine) == head
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
            for table in metadata.tables.values():
                assert table.name in tables
                columns = await conn.run_sync(lambda c, t=table.name: {col["name"] for col in inspect(c).get_columns(t)})
                assert columns == {c.name for c in table.columns}, table.name
    finally:
        await engine.dispose()


async def test_downgrade_to_base_and_back(database_url):
    engine = db.create_engine(database_url)
    try:
        await db.upgrade(engine)

        def down(sync_conn):
            cfg = db.alembic_config(database_url)
            cfg.attributes["connection"] = sync_conn
            command.downgrade(cfg, "base")
        async with engine.begin() as conn:
            await conn.run_sync(down)
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert not tables & set(metadata.tables)
        await db.upgrade(engine)
        assert await db.current_revision(engine) is not None
    finally:
        await engine.dispose()


async def test_sqlite_pragmas(tmp_path):
    engine = db.create_engine(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}")
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1
    finally:
        await engine.dispose()


def test_cli_logs_migrations_only_when_one_runs(tmp_path):
    """Every command opens the store; only the first, on an empty database, migrates and says so."""
    def msante(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "msante", *args, "--data-dir", str(tmp_path / "var")],
                              capture_output=True, text=True, check=True)
        return done.stdout + done.stderr
    first = msante("init")
    assert "applying migration 0001" in first
    again = msante("mailbox", "list")
    assert "migration" not in again and "alembic" not in again.lower() and "INFO" not in again
