"""folders.keywords: every keyword ever set in a folder, which IMAP's FLAGS lists

Revision ID: 0009
Revises: 0008

A keyword stays one of the folder's FLAGS (RFC 3501 §7.2.6) once used, as Dovecot keeps it,
so every session is told the same list, even of a keyword whose last message was expunged
before it looked. Filled here from the keywords the folders' messages carry.
"""
from collections import defaultdict

from alembic import op
import sqlalchemy as sa

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('folders', sa.Column('keywords', sa.Text(), nullable=False, server_default=''))
    bind = op.get_bind()
    found: dict[int, set[str]] = defaultdict(set)
    for folder_id, flags in bind.execute(sa.text("SELECT folder_id, flags FROM folder_messages WHERE flags != ''")):
        found[folder_id].update(f for f in flags.split() if not f.startswith('\\'))
    for folder_id, keywords in found.items():
        if keywords:
            bind.execute(sa.text("UPDATE folders SET keywords = :k WHERE id = :id"),
                         {"k": " ".join(sorted(keywords)), "id": folder_id})


def downgrade() -> None:
    op.execute("ALTER TABLE folders DROP COLUMN keywords")  # SQLite 3.35+ and PostgreSQL alike
