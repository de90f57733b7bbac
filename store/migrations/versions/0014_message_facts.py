"""message_facts: what IMAP answers without reading a body, learnt when it is stored;
folder_messages.size

Revision ID: 0014
Revises: 0013

ENVELOPE, BODY, BODYSTRUCTURE, the top-level header, the decoded header fields SEARCH and SORT
read, and the casefolded subject SEARCH SUBJECT matches in SQL (mailserver/bodies.py writes and reads them; mailserver/imap/message.py computes
them). Existing bodies are learnt here, a batch at a time: memory stays bounded by the batch.
folder_messages.size copies the body's size: SELECT and APPEND's quota sum read those narrow
rows, not the bodies' (one 10 KB row a page: the quota sum alone cost 12 ms per APPEND at
10,000 messages).
"""
from alembic import op
import sqlalchemy as sa

BigId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None

BATCH = 200  # bodies read at once (10 KB to 20 MB each)


def upgrade() -> None:
    op.create_table('message_facts',
    sa.Column('body_id', BigId, nullable=False),
    sa.Column('search_subject', sa.Text(), nullable=True),
    sa.Column('fields', sa.Text(), nullable=False),
    sa.Column('envelope', sa.LargeBinary(), nullable=False),
    sa.Column('body', sa.LargeBinary(), nullable=False),
    sa.Column('bodystructure', sa.LargeBinary(), nullable=False),
    sa.Column('header', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['body_id'], ['bodies.id'], name=op.f('fk_message_facts_body_id_bodies')),
    sa.PrimaryKeyConstraint('body_id', name=op.f('pk_message_facts'))
    )
    op.add_column('folder_messages', sa.Column('size', sa.Integer(), nullable=False, server_default='0'))
    op.execute('UPDATE folder_messages SET size = (SELECT size FROM bodies WHERE bodies.id = folder_messages.body_id)')
    from mailserver.bodies import facts_row  # the one computation, as at delivery

    bind = op.get_bind()
    facts = sa.table('message_facts', *(sa.column(c) for c in ('body_id', 'search_subject', 'fields', 'envelope',
                                                                 'body', 'bodystructure', 'header')))
    last = 0
    while True:
        ids = [r[0] for r in bind.execute(sa.text('SELECT id FROM bodies WHERE id > :last ORDER BY id LIMIT :n'),
                                          {'last': last, 'n': BATCH})]
        if not ids:
            break
        for body_id in ids:  # one body in memory at a time
            data = bind.execute(sa.text('SELECT data FROM bodies WHERE id = :id'), {'id': body_id}).scalar_one()
            bind.execute(facts.insert(), facts_row(body_id, bytes(data)))
        last = ids[-1]


def downgrade() -> None:
    op.drop_table('message_facts')
    with op.batch_alter_table('folder_messages', schema=None) as batch_op:
        batch_op.drop_column('size')
