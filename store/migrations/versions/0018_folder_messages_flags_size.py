"""SELECT's index also holds the size: RFC822.SIZE known from SELECT's view

Revision ID: 0018
Revises: 0017

mailserver/imap/folders.py `view` reads sizes with UIDs and MODSEQs (FETCH RFC822.SIZE then
needs no read of its own, which cost a 10,000-row query at the first FETCH); with the size in
(folder_id, flags, uid, modseq, size) that read stays on the index alone.
"""
from alembic import op

revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index('ix_folder_messages_flags', table_name='folder_messages')
    op.create_index('ix_folder_messages_flags', 'folder_messages', ['folder_id', 'flags', 'uid', 'modseq', 'size'])


def downgrade() -> None:
    op.drop_index('ix_folder_messages_flags', table_name='folder_messages')
    op.create_index('ix_folder_messages_flags', 'folder_messages', ['folder_id', 'flags', 'uid', 'modseq'])
