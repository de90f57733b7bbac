"""hospital_notice_history: each notification's receipts (queued, sent, delivered, read, failed)

Revision ID: 0013
Revises: 0012

One row per fact, written where it becomes known (hospital/receipts.py): the dispatcher's
transaction, the relay, IMAP STORE of \\Seen, an acknowledged alert.
"""
from alembic import op
import sqlalchemy as sa

BigId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('hospital_notice_history',
    sa.Column('id', BigId, autoincrement=True, nullable=False),
    sa.Column('notice_id', BigId, nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['notice_id'], ['hospital_notices.id'],
                            name=op.f('fk_hospital_notice_history_notice_id_hospital_notices')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_hospital_notice_history'))
    )
    with op.batch_alter_table('hospital_notice_history', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_hospital_notice_history_notice_id'), ['notice_id'], unique=False)
    with op.batch_alter_table('hospital_notices', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_hospital_notices_envelope_id'), ['envelope_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('hospital_notices', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_hospital_notices_envelope_id'))
    with op.batch_alter_table('hospital_notice_history', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_hospital_notice_history_notice_id'))
    op.drop_table('hospital_notice_history')
