"""job leases: deliveries and hospital_events are worked by every node (store/lease.py)

Revision ID: 0016
Revises: 0015

A process claims due rows by writing its name and a lease end on them; the single-runner
advisory lock is gone.
"""
from alembic import op
import sqlalchemy as sa

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None

TABLES = ('deliveries', 'hospital_events')


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('leased_by', sa.String(length=64), nullable=True))
            batch_op.add_column(sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column('lease_until')
            batch_op.drop_column('leased_by')
