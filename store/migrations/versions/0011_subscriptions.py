"""hospital_subscriptions: who else is told of a patient's hospital events, how, and until when

Revision ID: 0011
Revises: 0010
"""
from alembic import op
import sqlalchemy as sa

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('hospital_subscriptions',
    sa.Column('id', BigId, autoincrement=True, nullable=False),
    sa.Column('subscriber', sa.String(length=330), nullable=False),
    sa.Column('patient_ins', sa.String(length=15), nullable=False),
    sa.Column('kinds', sa.String(length=32), nullable=False),
    sa.Column('medium', sa.String(length=8), nullable=False),
    sa.Column('valid_from', sa.DateTime(timezone=True), nullable=False),
    sa.Column('valid_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_by', sa.String(length=24), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_hospital_subscriptions')),
    sa.UniqueConstraint('subscriber', 'patient_ins', name='uq_hospital_subscriptions_subscriber')
    )
    with op.batch_alter_table('hospital_subscriptions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_hospital_subscriptions_patient_ins'), ['patient_ins'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('hospital_subscriptions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_hospital_subscriptions_patient_ins'))
    op.drop_table('hospital_subscriptions')
