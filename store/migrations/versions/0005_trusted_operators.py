"""trust: the operator certificates (DNCertificatOperateur) of each white-listed domain

Revision ID: 0005
Revises: 0004

A domain may be listed under several operators' certificates, hence one row per (domain, DN).
No foreign key to `trusted_domains`: the import replaces both in one transaction.
"""
from alembic import op
import sqlalchemy as sa

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('trusted_operators',
    sa.Column('domain', sa.String(length=253), nullable=False),
    sa.Column('dn', sa.String(length=1024), nullable=False),
    sa.Column('added_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('domain', 'dn', name=op.f('pk_trusted_operators'))
    )


def downgrade() -> None:
    op.drop_table('trusted_operators')
