"""imap: vanished UIDs, \\Recent, subscriptions, ACL, freeable bodies

Revision ID: 0004
Revises: 0003

`envelopes.body_id` becomes nullable: IMAP EXPUNGE frees a body once no folder and no queued
delivery needs it, and the envelope stays as the record of the SMTP transaction. On SQLite that
means rebuilding `envelopes` (batch mode), and dropping the old table would delete, as far as
the foreign key from `deliveries` is concerned, every envelope. So, as SQLite prescribes for a
rebuild (https://sqlite.org/lang_altertable.html#otheralter), foreign keys go off around it,
which SQLite only allows outside a transaction, and the rows are checked before they go back on.
"""
from contextlib import contextmanager
from typing import Iterator

from alembic import op
import sqlalchemy as sa

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


@contextmanager
def _rebuilding(table: str) -> Iterator[None]:
    bind = op.get_bind()
    if bind.dialect.name != 'sqlite':
        yield
        return

    def commit() -> None:  # the migrations so far, which SQLite already wrote outside one anyway
        if bind.connection.driver_connection.in_transaction:
            bind.exec_driver_sql('COMMIT')
    commit()
    bind.exec_driver_sql('PRAGMA foreign_keys = OFF')
    try:
        yield
        broken = bind.exec_driver_sql('PRAGMA foreign_key_check').all()
        if broken:
            raise RuntimeError(f'rebuilding {table} broke foreign keys: {broken[:5]}')
        commit()
    finally:
        bind.exec_driver_sql('PRAGMA foreign_keys = ON')  # pooled connections keep their pragmas


def upgrade() -> None:
    op.create_table('folder_vanished',
    sa.Column('folder_id', _ID, nullable=False),
    sa.Column('uid', sa.BigInteger(), nullable=False),
    sa.Column('modseq', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['folder_id'], ['folders.id'], name=op.f('fk_folder_vanished_folder_id_folders')),
    sa.PrimaryKeyConstraint('folder_id', 'uid', name=op.f('pk_folder_vanished'))
    )
    with op.batch_alter_table('folder_vanished', schema=None) as batch_op:
        batch_op.create_index('ix_folder_vanished_modseq', ['folder_id', 'modseq'], unique=False)

    op.create_table('folder_subscriptions',
    sa.Column('mailbox_id', _ID, nullable=False),
    sa.Column('who', sa.String(length=320), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['mailbox_id'], ['mailboxes.id'], name=op.f('fk_folder_subscriptions_mailbox_id_mailboxes')),
    sa.PrimaryKeyConstraint('mailbox_id', 'who', 'name', name=op.f('pk_folder_subscriptions'))
    )
    op.create_table('mailbox_acl',
    sa.Column('mailbox_id', _ID, nullable=False),
    sa.Column('identifier', sa.String(length=64), nullable=False),
    sa.Column('rights', sa.String(length=32), nullable=False),
    sa.ForeignKeyConstraint(['mailbox_id'], ['mailboxes.id'], name=op.f('fk_mailbox_acl_mailbox_id_mailboxes')),
    sa.PrimaryKeyConstraint('mailbox_id', 'identifier', name=op.f('pk_mailbox_acl'))
    )
    with op.batch_alter_table('folders', schema=None) as batch_op:
        batch_op.add_column(sa.Column('first_recent_uid', sa.BigInteger(), nullable=False, server_default='1'))
    with op.batch_alter_table('mailboxes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('last_uidvalidity', sa.BigInteger(), nullable=False, server_default='0'))
    with op.batch_alter_table('folder_messages', schema=None) as batch_op:
        batch_op.create_index('ix_folder_messages_modseq', ['folder_id', 'modseq'], unique=False)
    with _rebuilding('envelopes'), op.batch_alter_table('envelopes', schema=None) as batch_op:
        batch_op.alter_column('body_id', existing_type=_ID, nullable=True)
        batch_op.create_index(batch_op.f('ix_envelopes_body_id'), ['body_id'], unique=False)


def downgrade() -> None:
    """Fails if a body was freed (an envelope without body): those bytes are gone."""
    with _rebuilding('envelopes'), op.batch_alter_table('envelopes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_envelopes_body_id'))
        batch_op.alter_column('body_id', existing_type=_ID, nullable=False)
    with op.batch_alter_table('folder_messages', schema=None) as batch_op:
        batch_op.drop_index('ix_folder_messages_modseq')
    with _rebuilding('mailboxes'), op.batch_alter_table('mailboxes', schema=None) as batch_op:
        batch_op.drop_column('last_uidvalidity')
    with _rebuilding('folders'), op.batch_alter_table('folders', schema=None) as batch_op:
        batch_op.drop_column('first_recent_uid')
    op.drop_table('mailbox_acl')
    op.drop_table('folder_subscriptions')
    with op.batch_alter_table('folder_vanished', schema=None) as batch_op:
        batch_op.drop_index('ix_folder_vanished_modseq')
    op.drop_table('folder_vanished')
