"""The one way a message body enters the store, and what is learnt from it then.

Every body row (SMTP accept, DSN reports, relay, hospital notices: mailstore; IMAP APPEND and
MULTIAPPEND: imap/folders) is inserted by `insert`, in the caller's transaction, with its
message_facts row: ENVELOPE, BODY, BODYSTRUCTURE, the header, and the decoded header fields
SEARCH and SORT read (imap/message.py computes them: parsing stays there). IMAP then answers
those from `facts`, never reading the body again, and SEARCH SUBJECT in SQL
(`subject_contains`). Migration 0014 learnt the bodies stored before; every body has its facts.
"""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Iterable, Sequence

from sqlalchemy import delete, exists, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from store.db import inserted_ids
from store.schema import bodies, folder_messages, message_facts

from .imap.message import Facts, Message

# The message_facts columns each part of Facts comes from.
COLUMNS = ("envelope", "body", "bodystructure", "header", "fields")
_BATCH = 500  # UIDs per query (IN lists stay short)


def facts_row(body_id: int, data: bytes) -> dict[str, Any]:
    """The message_facts row of a body (also what migration 0014 writes)."""
    return {"body_id": body_id, **facts_of(data)}


def facts_of(data: bytes) -> dict[str, Any]:
    """A body's message_facts row but its body_id: what a writer may learn before its
    transaction (the hospital dispatch does, out of the write the feed's ACKs wait on)."""
    return facts_from(Message(data))


def facts_from(message: Message) -> dict[str, Any]:
    """`facts_of` a message already parsed (SMTP reads it once, for its checks and for this)."""
    f = message.facts()
    fields = {"h": f.fields, "a": f.addresses, "m": f.first_mailboxes,
              "s": f.sent_at.isoformat() if f.sent_at is not None else None}
    # ASCII JSON: header text may hold lone surrogates (8-bit octets kept by surrogateescape)
    subjects = f.fields.get("subject")
    return {"envelope": f.envelope, "body": f.body, "bodystructure": f.bodystructure,
            "header": f.header, "fields": json.dumps(fields, separators=(",", ":")),
            "search_subject": _storable("\n".join(v.casefold() for v in subjects)) if subjects is not None else None}


def _storable(text: str) -> str:
    """Text both stores take: a NUL (PostgreSQL refuses it in text, and so refused the whole
    delivery) and any lone surrogate (an 8-bit octet kept by surrogateescape, which no store
    encodes) become U+FFFD. A SEARCH string holds neither, so no match is lost."""
    text = text.replace("\x00", "\ufffd")
    return text if text.isascii() else "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)


def _facts(row: Any, columns: Iterable[str]) -> Facts:
    got = dict(zip(columns, row))
    fields = json.loads(got["fields"]) if "fields" in got else None
    return Facts(
        _bytes(got.get("envelope")), _bytes(got.get("body")), _bytes(got.get("bodystructure")),
        _bytes(got.get("header")),
        fields["h"] if fields else None, fields["a"] if fields else None, fields["m"] if fields else None,
        datetime.fromisoformat(fields["s"]) if fields and fields["s"] else None)


def _bytes(value: Any) -> bytes | None:
    return bytes(value) if value is not None else None


# Built once: on every 250's path, and building a statement cost more CPU than running it on SQLite.
_NEW_BODY = insert(bodies).returning(bodies.c.id)
_NEW_FACTS = insert(message_facts)


async def insert_body(conn: AsyncConnection, data: bytes, now: datetime) -> int:
    """A new body row and its facts; returns the body's id."""
    (body_id,) = await insert_bodies(conn, [data], now)
    return body_id


async def insert_bodies(conn: AsyncConnection, datas: Sequence[bytes], now: datetime,
                        known: Sequence[dict[str, Any] | None] = ()) -> list[int]:
    """New body rows and their facts, two statements for all; their ids, in order. `known`:
    the `facts_of` some of them, learnt before the transaction (None where not)."""
    body_ids = await inserted_ids(conn, _NEW_BODY,
                                  [{"size": len(data), "data": data, "created_at": now} for data in datas])
    known = list(known) + [None] * (len(datas) - len(known))
    await conn.execute(_NEW_FACTS, [{"body_id": body_id, **(facts or facts_of(data))}
                                    for body_id, data, facts in zip(body_ids, datas, known)])
    return body_ids


async def delete_bodies(conn: AsyncConnection, body_ids: Sequence[int]) -> None:
    """Delete bodies and their facts (the caller knows nothing needs them)."""
    await conn.execute(delete(message_facts).where(message_facts.c.body_id.in_(body_ids)))
    await conn.execute(delete(bodies).where(bodies.c.id.in_(body_ids)))


async def facts(conn: AsyncConnection, folder_id: int, uids: Sequence[int],
                columns: Sequence[str] = COLUMNS) -> dict[int, Facts]:
    """The facts of a folder's messages by UID (absent UIDs left out), only `columns` read."""
    found: dict[int, Facts] = {}
    wanted = sorted(set(uids))
    cols = [message_facts.c[name] for name in columns]
    for start in range(0, len(wanted), _BATCH):
        chunk = wanted[start:start + _BATCH]
        rows = await conn.execute(
            select(folder_messages.c.uid, *cols)
            .select_from(folder_messages.join(message_facts, message_facts.c.body_id == folder_messages.c.body_id))
            .where(folder_messages.c.folder_id == folder_id, folder_messages.c.uid.in_(chunk)))
        found.update((row[0], _facts(row[1:], columns)) for row in rows.all())
    return found


def subject_contains(needle: str) -> Any:
    """SQL on folder_messages: SEARCH SUBJECT `needle` (search.py: a substring of a decoded
    Subject value, casefolded), or None when SQL cannot say it exactly (a line break in it)."""
    needle = needle.casefold()
    if "\n" in needle:
        return None
    return exists().where(message_facts.c.body_id == folder_messages.c.body_id,
                          message_facts.c.search_subject.contains(needle, autoescape=True))
