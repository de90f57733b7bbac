"""circle_messages.reply_to: a message may quote an earlier one of its circle (by seq)

Revision ID: 0007
Revises: 0006
"""
from alembic import op
import sqlalchemy as sa

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('circle_messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reply_to', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('circle_messages', schema=None) as batch_op:
        batch_op.drop_column('reply_to')
