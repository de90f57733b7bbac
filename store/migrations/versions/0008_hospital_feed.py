"""hospital feed: hl7_messages (one per sender and MSH-10, with the ACK sent), hospital_events
(the dispatch job), hospital_notices (who was told, or why nobody was)

Revision ID: 0008
Revises: 0007
"""
from alembic import op
import sqlalchemy as sa

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('hl7_messages',
    sa.Column('id', BigId, autoincrement=True, nullable=False),
    sa.Column('sender', sa.String(length=320), nullable=False),
    sa.Column('control_id', sa.String(length=199), nullable=False),
    sa.Column('message_type', sa.String(length=16), nullable=False),
    sa.Column('ack_code', sa.String(length=2), nullable=False),
    sa.Column('ack', sa.Text(), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_hl7_messages')),
    sa.UniqueConstraint('sender', 'control_id', name='uq_hl7_messages_control_id')
    )
    op.create_table('hospital_events',
    sa.Column('id', BigId, autoincrement=True, nullable=False),
    sa.Column('message_id', BigId, nullable=False),
    sa.Column('organisation_id', sa.String(length=24), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('trigger', sa.String(length=8), nullable=False),
    sa.Column('patient_ins', sa.String(length=15), nullable=False),
    sa.Column('patient', sa.Text(), nullable=False),
    sa.Column('gp_rpps', sa.String(length=11), nullable=False),
    sa.Column('unit', sa.Text(), nullable=False),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('dispatched_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['message_id'], ['hl7_messages.id'],
                            name=op.f('fk_hospital_events_message_id_hl7_messages')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_hospital_events'))
    )
    with op.batch_alter_table('hospital_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_hospital_events_message_id'), ['message_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_hospital_events_patient_ins'), ['patient_ins'], unique=False)
        batch_op.create_index('ix_hospital_events_status', ['status', 'id'], unique=False)
    op.create_table('hospital_notices',
    sa.Column('id', BigId, autoincrement=True, nullable=False),
    sa.Column('event_id', BigId, nullable=False),
    sa.Column('recipient', sa.String(length=320), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('envelope_id', BigId, nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['envelope_id'], ['envelopes.id'],
                            name=op.f('fk_hospital_notices_envelope_id_envelopes')),
    sa.ForeignKeyConstraint(['event_id'], ['hospital_events.id'],
                            name=op.f('fk_hospital_notices_event_id_hospital_events')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_hospital_notices'))
    )
    with op.batch_alter_table('hospital_notices', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_hospital_notices_event_id'), ['event_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('hospital_notices', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_hospital_notices_event_id'))
    op.drop_table('hospital_notices')
    with op.batch_alter_table('hospital_events', schema=None) as batch_op:
        batch_op.drop_index('ix_hospital_events_status')
        batch_op.drop_index(batch_op.f('ix_hospital_events_patient_ins'))
        batch_op.drop_index(batch_op.f('ix_hospital_events_message_id'))
    op.drop_table('hospital_events')
    op.drop_table('hl7_messages')
