"""directory, mailboxes, audit

Revision ID: 0001
Revises: 
"""
from alembic import op
import sqlalchemy as sa

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=320), nullable=False),
    sa.Column('actor_kind', sa.String(length=16), nullable=False),
    sa.Column('source', sa.String(length=64), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('target', sa.String(length=320), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit'))
    )
    with op.batch_alter_table('audit', schema=None) as batch_op:
        batch_op.create_index('ix_audit_actor', ['actor', 'at'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_at'), ['at'], unique=False)

    op.create_table('imports',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('file_name', sa.Text(), nullable=False),
    sa.Column('stamp', sa.String(length=12), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('lines', sa.Integer(), nullable=False),
    sa.Column('accepted', sa.Integer(), nullable=False),
    sa.Column('rejected', sa.Integer(), nullable=False),
    sa.Column('retired', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_imports')),
    sa.UniqueConstraint('kind', 'sha256', name='uq_imports_kind_sha256')
    )
    op.create_table('organisations',
    sa.Column('id', sa.String(length=24), nullable=False),
    sa.Column('finess', sa.String(length=9), nullable=True),
    sa.Column('siret', sa.String(length=14), nullable=True),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('trade_name', sa.Text(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('sector_code', sa.String(length=8), nullable=False),
    sa.Column('sector_label', sa.Text(), nullable=False),
    sa.Column('street', sa.Text(), nullable=False),
    sa.Column('postal_code', sa.String(length=10), nullable=False),
    sa.Column('city', sa.Text(), nullable=False),
    sa.Column('department', sa.String(length=3), nullable=False),
    sa.Column('country', sa.Text(), nullable=False),
    sa.Column('search_text', sa.Text().with_variant(sa.Text(collation='C'), 'postgresql'), nullable=False),
    sa.Column('city_search', sa.Text().with_variant(sa.Text(collation='C'), 'postgresql'), nullable=False),
    sa.Column('digest', sa.String(length=40), nullable=False),
    sa.Column('source_stamp', sa.String(length=12), nullable=False),
    sa.Column('retired_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_organisations'))
    )
    with op.batch_alter_table('organisations', schema=None) as batch_op:
        batch_op.create_index('ix_organisations_city_search', ['city_search'], unique=False)
        batch_op.create_index(batch_op.f('ix_organisations_finess'), ['finess'], unique=False)
        batch_op.create_index('ix_organisations_search', ['search_text', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_organisations_siret'), ['siret'], unique=False)

    op.create_table('professionals',
    sa.Column('idnat', sa.String(length=24), nullable=False),
    sa.Column('rpps', sa.String(length=11), nullable=True),
    sa.Column('civility', sa.Text(), nullable=False),
    sa.Column('practice_civility', sa.Text(), nullable=False),
    sa.Column('family_name', sa.Text(), nullable=False),
    sa.Column('given_name', sa.Text(), nullable=False),
    sa.Column('profession_code', sa.String(length=4), nullable=False),
    sa.Column('profession_label', sa.Text(), nullable=False),
    sa.Column('specialty_code', sa.String(length=8), nullable=False),
    sa.Column('specialty_label', sa.Text(), nullable=False),
    sa.Column('search_text', sa.Text().with_variant(sa.Text(collation='C'), 'postgresql'), nullable=False),
    sa.Column('digest', sa.String(length=40), nullable=False),
    sa.Column('source_stamp', sa.String(length=12), nullable=False),
    sa.Column('retired_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('idnat', name=op.f('pk_professionals')),
    sa.UniqueConstraint('rpps', name=op.f('uq_professionals_rpps'))
    )
    with op.batch_alter_table('professionals', schema=None) as batch_op:
        batch_op.create_index('ix_professionals_profession_search', ['profession_code', 'search_text', 'idnat'], unique=False)
        batch_op.create_index('ix_professionals_search', ['search_text', 'idnat'], unique=False)

    op.create_table('activities',
    sa.Column('key', sa.String(length=40), nullable=False),
    sa.Column('idnat', sa.String(length=24), nullable=False),
    sa.Column('organisation_id', sa.String(length=24), nullable=True),
    sa.Column('mode_code', sa.String(length=4), nullable=False),
    sa.Column('mode_label', sa.Text(), nullable=False),
    sa.Column('city', sa.Text(), nullable=False),
    sa.Column('postal_code', sa.String(length=10), nullable=False),
    sa.Column('city_search', sa.Text().with_variant(sa.Text(collation='C'), 'postgresql'), nullable=False),
    sa.Column('source_stamp', sa.String(length=12), nullable=False),
    sa.Column('retired_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['idnat'], ['professionals.idnat'], name=op.f('fk_activities_idnat_professionals')),
    sa.ForeignKeyConstraint(['organisation_id'], ['organisations.id'], name=op.f('fk_activities_organisation_id_organisations')),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_activities'))
    )
    with op.batch_alter_table('activities', schema=None) as batch_op:
        batch_op.create_index('ix_activities_city_search', ['city_search'], unique=False)
        batch_op.create_index(batch_op.f('ix_activities_idnat'), ['idnat'], unique=False)
        batch_op.create_index(batch_op.f('ix_activities_organisation_id'), ['organisation_id'], unique=False)

    op.create_table('mailboxes',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('address', sa.String(length=320), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('owner_idnat', sa.String(length=24), nullable=True),
    sa.Column('organisation_id', sa.String(length=24), nullable=True),
    sa.Column('service', sa.Text(), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('published', sa.Boolean(), nullable=False),
    sa.Column('local', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('digest', sa.String(length=40), nullable=False),
    sa.Column('source_stamp', sa.String(length=12), nullable=False),
    sa.Column('retired_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['organisation_id'], ['organisations.id'], name=op.f('fk_mailboxes_organisation_id_organisations')),
    sa.ForeignKeyConstraint(['owner_idnat'], ['professionals.idnat'], name=op.f('fk_mailboxes_owner_idnat_professionals')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_mailboxes')),
    sa.UniqueConstraint('address', name=op.f('uq_mailboxes_address'))
    )
    with op.batch_alter_table('mailboxes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_mailboxes_organisation_id'), ['organisation_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_mailboxes_owner_idnat'), ['owner_idnat'], unique=False)

    op.create_table('mailbox_delegates',
    sa.Column('mailbox_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('idnat', sa.String(length=24), nullable=False),
    sa.Column('granted_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('granted_by', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['idnat'], ['professionals.idnat'], name=op.f('fk_mailbox_delegates_idnat_professionals')),
    sa.ForeignKeyConstraint(['mailbox_id'], ['mailboxes.id'], name=op.f('fk_mailbox_delegates_mailbox_id_mailboxes')),
    sa.PrimaryKeyConstraint('mailbox_id', 'idnat', name=op.f('pk_mailbox_delegates'))
    )


def downgrade() -> None:
    op.drop_table('mailbox_delegates')
    with op.batch_alter_table('mailboxes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_mailboxes_owner_idnat'))
        batch_op.drop_index(batch_op.f('ix_mailboxes_organisation_id'))

    op.drop_table('mailboxes')
    with op.batch_alter_table('activities', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_activities_organisation_id'))
        batch_op.drop_index(batch_op.f('ix_activities_idnat'))
        batch_op.drop_index('ix_activities_city_search')

    op.drop_table('activities')
    with op.batch_alter_table('professionals', schema=None) as batch_op:
        batch_op.drop_index('ix_professionals_search')
        batch_op.drop_index('ix_professionals_profession_search')

    op.drop_table('professionals')
    with op.batch_alter_table('organisations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_organisations_siret'))
        batch_op.drop_index('ix_organisations_search')
        batch_op.drop_index(batch_op.f('ix_organisations_finess'))
        batch_op.drop_index('ix_organisations_city_search')

    op.drop_table('organisations')
    op.drop_table('imports')
    with op.batch_alter_table('audit', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_at'))
        batch_op.drop_index('ix_audit_actor')

    op.drop_table('audit')
