"""attachment_contents, circle_attachments: documents shared in care circles

Revision ID: 0010
Revises: 0009

A document's bytes are kept once, by SHA-256 (the same discharge letter posted to three
circles is one row of content); each upload is a row of its circle, with the name, the type
read from the bytes, the uploader, and the message that carries it once posted.
"""
from alembic import op
import sqlalchemy as sa

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('attachment_contents',
    sa.Column('id', BigId, autoincrement=True, nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_attachment_contents')),
    sa.UniqueConstraint('sha256', name=op.f('uq_attachment_contents_sha256'))
    )
    op.create_table('circle_attachments',
    sa.Column('id', BigId, autoincrement=True, nullable=False),
    sa.Column('circle_id', BigId, nullable=False),
    sa.Column('content_id', BigId, nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('content_type', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('uploader', sa.String(length=24), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['circle_id'], ['circles.id'], name=op.f('fk_circle_attachments_circle_id_circles')),
    sa.ForeignKeyConstraint(['content_id'], ['attachment_contents.id'],
                            name=op.f('fk_circle_attachments_content_id_attachment_contents')),
    sa.ForeignKeyConstraint(['uploader'], ['professionals.idnat'],
                            name=op.f('fk_circle_attachments_uploader_professionals')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_circle_attachments'))
    )
    with op.batch_alter_table('circle_attachments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_circle_attachments_circle_id'), ['circle_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_circle_attachments_content_id'), ['content_id'], unique=False)
        batch_op.create_index('ix_circle_attachments_message', ['circle_id', 'seq'], unique=False)


def downgrade() -> None:
    op.drop_table('circle_attachments')
    op.drop_table('attachment_contents')
