"""bus_events: events that cross processes through the store (store/relay.py)

Revision ID: 0006
Revises: 0005
"""
from alembic import op
import sqlalchemy as sa

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('bus_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('channel', sa.String(length=340), nullable=False),
    sa.Column('event', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_bus_events'))
    )
    with op.batch_alter_table('bus_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_bus_events_created_at'), ['created_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('bus_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_bus_events_created_at'))
    op.drop_table('bus_events')
