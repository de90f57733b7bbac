"""Alembic environment: migrations run on the connection the caller hands over (store.db.upgrade)."""
from alembic import context

from store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `msante init` / `msante serve` (store.db.upgrade)")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
