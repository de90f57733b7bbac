"""mail_documents (IHE_XDM.ZIP in delivered mail: the job telling the patient's circle);
hospital_events.movement_id and .cancelled_by (ADT^A11/A13 and ZBE-4 CANCEL);
hl7_messages.purged_at (raw messages kept [hl7] raw_retention_days)

Revision ID: 0015
Revises: 0013

A mail carrying an IHE_XDM.ZIP gets a `pending` row in the transaction that delivers it
(hospital/incoming.py reads it later, off the delivery path). A cancellation finds the event it
cancels by the movement id (ZBE-1) the hospital gave both.
"""
from alembic import op
import sqlalchemy as sa

BigId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('mail_documents',
    sa.Column('id', BigId, autoincrement=True, nullable=False),
    sa.Column('envelope_id', BigId, nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('patient_ins', sa.String(length=15), nullable=False),
    sa.Column('type_code', sa.String(length=64), nullable=False),
    sa.Column('data', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('done_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['envelope_id'], ['envelopes.id'], name=op.f('fk_mail_documents_envelope_id_envelopes')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_mail_documents')),
    sa.UniqueConstraint('envelope_id', name='uq_mail_documents_envelope_id')
    )
    with op.batch_alter_table('mail_documents', schema=None) as batch_op:
        batch_op.create_index('ix_mail_documents_status', ['status', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_mail_documents_patient_ins'), ['patient_ins'], unique=False)
    with op.batch_alter_table('hospital_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('movement_id', sa.String(length=64), server_default='', nullable=False))
        batch_op.add_column(sa.Column('cancelled_by', BigId, nullable=True))
        batch_op.create_index('ix_hospital_events_movement', ['organisation_id', 'movement_id'], unique=False)
    with op.batch_alter_table('hl7_messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('purged_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_hl7_messages_received_at'), ['received_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('hl7_messages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_hl7_messages_received_at'))
        batch_op.drop_column('purged_at')
    with op.batch_alter_table('hospital_events', schema=None) as batch_op:
        batch_op.drop_index('ix_hospital_events_movement')
        batch_op.drop_column('cancelled_by')
        batch_op.drop_column('movement_id')
    with op.batch_alter_table('mail_documents', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_mail_documents_patient_ins'))
        batch_op.drop_index('ix_mail_documents_status')
    op.drop_table('mail_documents')
