"""Each folder counts its messages and their octets: the quota check stops summing the box

Revision ID: 0019
Revises: 0018

APPEND, COPY and MOVE checked the quota by summing every message's size in the box (from
ix_folder_messages_size): 0.55 ms a command at 10,000 messages, growing with the box, and the
APPEND fill slowed from about 200 to 150 messages/s over 10,000. folders.messages and
folders.octets are now moved by every write that adds or removes a message, in its
transaction; the quota check and STATUS SIZE read them. The index, then read by nothing, goes:
one index fewer to update at every delivery and APPEND.
"""
import sqlalchemy as sa
from alembic import op

revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('folders', schema=None) as batch_op:
        batch_op.add_column(sa.Column('messages', sa.BigInteger(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('octets', sa.BigInteger(), server_default='0', nullable=False))
    op.execute('UPDATE folders SET'
               ' messages = (SELECT COUNT(*) FROM folder_messages WHERE folder_id = folders.id),'
               ' octets = (SELECT COALESCE(SUM(size), 0) FROM folder_messages WHERE folder_id = folders.id)')
    op.drop_index('ix_folder_messages_size', table_name='folder_messages')


def downgrade() -> None:
    op.create_index('ix_folder_messages_size', 'folder_messages', ['folder_id', 'size'])
    with op.batch_alter_table('folders', schema=None) as batch_op:
        batch_op.drop_column('octets')
        batch_op.drop_column('messages')
