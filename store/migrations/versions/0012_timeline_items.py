"""circle_messages.kind, .data: a circle's timeline holds hospital events beside messages

Revision ID: 0012
Revises: 0011

An event item takes the circle's next seq like a message, so history, resume and read
markers cover it unchanged. It has no professional for author (`author` becomes nullable);
`data` (JSON) names its source and describes the event.
"""
from alembic import op
import sqlalchemy as sa

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('circle_messages', schema=None) as batch_op:
        batch_op.alter_column('author', existing_type=sa.String(length=24), nullable=True)
        batch_op.add_column(sa.Column('kind', sa.String(length=8), server_default='text', nullable=False))
        batch_op.add_column(sa.Column('data', sa.Text(), nullable=True))


def downgrade() -> None:
    op.execute("DELETE FROM circle_messages WHERE kind <> 'text'")
    with op.batch_alter_table('circle_messages', schema=None) as batch_op:
        batch_op.drop_column('data')
        batch_op.drop_column('kind')
        batch_op.alter_column('author', existing_type=sa.String(length=24), nullable=False)
