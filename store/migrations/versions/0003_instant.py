"""instant: care circles, messages, alerts

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('alerts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('audience', sa.String(length=330), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('key', sa.String(length=160), nullable=True),
    sa.Column('title', sa.Text(), nullable=False),
    sa.Column('data', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('acknowledged_by', sa.String(length=24), nullable=True),
    sa.Column('acknowledged_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alerts')),
    sa.UniqueConstraint('audience', 'key', name='uq_alerts_audience_key')
    )
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.create_index('ix_alerts_pending', ['audience', 'acknowledged_at'], unique=False)

    op.create_table('circles',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('patient_ins', sa.String(length=15), nullable=False),
    sa.Column('patient_ins_oid', sa.String(length=32), nullable=False),
    sa.Column('patient_family_name', sa.Text(), nullable=False),
    sa.Column('patient_given_name', sa.Text(), nullable=False),
    sa.Column('patient_birth_date', sa.Date(), nullable=False),
    sa.Column('coordinator', sa.String(length=24), nullable=False),
    sa.Column('last_seq', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['coordinator'], ['professionals.idnat'], name=op.f('fk_circles_coordinator_professionals')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_circles')),
    sa.UniqueConstraint('patient_ins', name=op.f('uq_circles_patient_ins'))
    )
    with op.batch_alter_table('circles', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_circles_coordinator'), ['coordinator'], unique=False)

    op.create_table('circle_members',
    sa.Column('circle_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('idnat', sa.String(length=24), nullable=False),
    sa.Column('on_behalf_of', sa.String(length=320), nullable=False),
    sa.Column('added_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('added_by', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['circle_id'], ['circles.id'], name=op.f('fk_circle_members_circle_id_circles')),
    sa.ForeignKeyConstraint(['idnat'], ['professionals.idnat'], name=op.f('fk_circle_members_idnat_professionals')),
    sa.PrimaryKeyConstraint('circle_id', 'idnat', name=op.f('pk_circle_members'))
    )
    with op.batch_alter_table('circle_members', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_circle_members_idnat'), ['idnat'], unique=False)

    op.create_table('circle_messages',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('circle_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('author', sa.String(length=24), nullable=False),
    sa.Column('client_id', sa.String(length=64), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['author'], ['professionals.idnat'], name=op.f('fk_circle_messages_author_professionals')),
    sa.ForeignKeyConstraint(['circle_id'], ['circles.id'], name=op.f('fk_circle_messages_circle_id_circles')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_circle_messages')),
    sa.UniqueConstraint('circle_id', 'author', 'client_id', name='uq_circle_messages_client_id'),
    sa.UniqueConstraint('circle_id', 'seq', name='uq_circle_messages_seq')
    )
    op.create_table('read_markers',
    sa.Column('circle_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('idnat', sa.String(length=24), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['circle_id'], ['circles.id'], name=op.f('fk_read_markers_circle_id_circles')),
    sa.ForeignKeyConstraint(['idnat'], ['professionals.idnat'], name=op.f('fk_read_markers_idnat_professionals')),
    sa.PrimaryKeyConstraint('circle_id', 'idnat', name=op.f('pk_read_markers'))
    )


def downgrade() -> None:
    op.drop_table('read_markers')
    op.drop_table('circle_messages')
    with op.batch_alter_table('circle_members', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_circle_members_idnat'))

    op.drop_table('circle_members')
    with op.batch_alter_table('circles', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_circles_coordinator'))

    op.drop_table('circles')
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.drop_index('ix_alerts_pending')

    op.drop_table('alerts')
