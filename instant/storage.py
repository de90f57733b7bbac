"""Care circles in the store: circles, members, messages and read markers. The one place the
instant handlers' SQL lives; `InstantStore` is the contract they rely on, and `SqlStore` its
implementation for SQLite and PostgreSQL alike.

Two guarantees come from here:
- Sequence numbers: a message's seq is taken by bumping `circles.last_seq` in the transaction
  that inserts it, so seqs per circle are 1, 2, 3… with no hole and no repeat (the row lock
  orders concurrent posts on PostgreSQL; SQLite has one writer).
- Idempotency: a post whose (circle, author, client_id) exists meets the unique constraint;
  its transaction, seq included, is rolled back and the stored message is returned instead.
- One timeline: a hospital event enters a circle as an item of kind `event` (`append_item`,
  in the transaction of the job that raises it), with the next seq like a message, so
  history, resume, search and read markers cover it unchanged. It has no professional for
  author; its `data` names its source (the hospital) and describes the event.

Transactions write first, then read: under SQLite's WAL, a transaction that reads and then
writes fails outright if another writer committed in between.
"""
from __future__ import annotations

import json
from collections import Counter
from datetime import date, datetime, timezone
from types import SimpleNamespace
from typing import Any, Awaitable, Callable, Protocol

from sqlalchemy import and_, case, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from store.db import dialect_insert, reads
from store.schema import circle_attachments, circle_members, circle_messages, circles, professionals, read_markers

from .patient import Patient


QUOTE_CHARS = 200  # a reply shows the start of what it answers; the whole is in the history


class CircleExists(Exception):
    """A circle already exists for this patient (one per INS)."""


class AttachmentUnavailable(Exception):
    """A post names an attachment that is not the poster's, not of this circle, or posted already."""


Stored = Callable[[AsyncConnection, dict], Awaitable[None]]  # work in the transaction that stored a message


class InstantStore(Protocol):
    async def create_circle(self, patient: Patient, coordinator: str, members: list[tuple[str, str]], by: str,
                            now: datetime) -> int: ...
    async def circle(self, circle_id: int) -> dict | None: ...
    async def members(self, circle_id: int) -> list[dict]: ...
    async def membership(self, circle_id: int, idnat: str) -> dict | None: ...
    async def followed_still(self, idnat: str, circle_ids: list[int]) -> dict[int, str]: ...
    async def circles_of(self, idnat: str) -> list[dict]: ...
    async def receipts(self, circle_id: int) -> list[dict]: ...
    async def all_circles(self) -> list[dict]: ...
    async def add_member(self, circle_id: int, idnat: str, on_behalf_of: str, by: str, now: datetime) -> bool: ...
    async def remove_member(self, circle_id: int, idnat: str, now: datetime) -> bool: ...
    async def professional(self, identifier: str) -> dict | None: ...
    async def quote(self, circle_id: int, seq: int) -> dict | None: ...
    async def append(self, circle_id: int, author: str, client_id: str, text: str, now: datetime,
                     reply_to: dict | None = None, attachments: tuple[int, ...] = (),
                     stored: Stored | None = None, author_name: str | None = None) -> tuple[dict, bool]: ...
    async def messages(self, circle_id: int, *, after: int | None = None, before: int | None = None,
                       limit: int) -> tuple[list[dict], bool]: ...
    async def search(self, circle_id: int, text: str, *, before: int | None, limit: int) -> tuple[list[dict], bool]: ...
    async def mark_read(self, circle_id: int, idnat: str, seq: int, now: datetime) -> tuple[int, int]:
        """Move the person's marker forward to `seq` (never back, never past the last message);
        returns (marker, unread)."""
        async with self._engine.connect() as conn:
            head = (await conn.execute(select(circles.c.last_seq).where(circles.c.id == circle_id))).scalar_one()
        async with self._engine.begin() as conn:
            upsert = dialect_insert(conn, read_markers).values(
                circle_id=circle_id, idnat=idnat, seq=min(seq, head), updated_at=now)
            await conn.execute(upsert.on_conflict_do_update(
                index_elements=[read_markers.c.circle_id, read_markers.c.idnat],
                set_={"seq": case((upsert.excluded.seq > read_markers.c.seq, upsert.excluded.seq),
                                  else_=read_markers.c.seq),
                      "updated_at": upsert.excluded.updated_at}))
        marker, _head, unread = await self.read_state(circle_id, idnat)
        return marker, unread

    async def read_state(self, circle_id: int, idnat: str) -> tuple[int, int, int]: ...


def display_name(row: Any) -> str:
    """How a professional is shown: "Dr Claire LEROY" (practice civility, given, family)."""
    civility = "Dr" if row.practice_civility.upper() in ("DR", "DOCTEUR") else ""
    given = row.given_name.title()
    return " ".join(part for part in (civility, given, row.family_name.upper()) if part)


def iso(moment: datetime | date | None) -> str | None:
    """ISO 8601, UTC; SQLite hands back naive datetimes, written in UTC."""
    if moment is None or not isinstance(moment, datetime):
        return moment.isoformat() if moment else None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).isoformat()


_PERSON = (professionals.c.idnat, professionals.c.given_name, professionals.c.family_name,
           professionals.c.practice_civility, professionals.c.profession_label)


class SqlStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._reads = reads(engine)

    # --- circles and members ------------------------------------------------------------------

    async def create_circle(self, patient: Patient, coordinator: str, members: list[tuple[str, str]], by: str,
                            now: datetime) -> int:
        """The circle with its coordinator and `members` [(idnat, on_behalf_of)] as members."""
        row = {"patient_ins": patient.ins, "patient_ins_oid": patient.ins_oid,
               "patient_family_name": patient.family_name, "patient_given_name": patient.given_name,
               "patient_birth_date": patient.birth_date, "coordinator": coordinator, "last_seq": 0,
               "created_at": now, "updated_at": now}
        everyone = dict([(coordinator, ""), *members])
        try:
            async with self._engine.begin() as conn:
                circle_id = (await conn.execute(insert(circles).returning(circles.c.id), row)).scalar_one()
                await conn.execute(insert(circle_members), [
                    {"circle_id": circle_id, "idnat": idnat, "on_behalf_of": behalf, "added_at": now, "added_by": by}
                    for idnat, behalf in everyone.items()])
        except IntegrityError as exc:
            if "patient_ins" in str(exc.orig):
                raise CircleExists(f"a care circle already exists for INS {patient.ins}") from None
            raise
        return circle_id

    async def circle(self, circle_id: int) -> dict | None:
        async with self._reads.connect() as conn:
            row = (await conn.execute(select(circles).where(circles.c.id == circle_id))).first()
        return _circle(row) if row else None

    async def members(self, circle_id: int) -> list[dict]:
        query = (select(*_PERSON, circle_members.c.on_behalf_of, circle_members.c.added_at, circles.c.coordinator)
                 .join(professionals, professionals.c.idnat == circle_members.c.idnat)
                 .join(circles, circles.c.id == circle_members.c.circle_id)
                 .where(circle_members.c.circle_id == circle_id)
                 .order_by(professionals.c.family_name, professionals.c.given_name))
        async with self._reads.connect() as conn:
            return [{"id": r.idnat, "name": display_name(r), "profession": r.profession_label,
                     "role": "coordinator" if r.idnat == r.coordinator else "member",
                     "on_behalf_of": r.on_behalf_of, "added_at": iso(r.added_at)}
                    for r in await conn.execute(query)]

    async def membership(self, circle_id: int, idnat: str) -> dict | None:
        """The person's membership ({on_behalf_of, coordinator: bool}), or None."""
        query = (select(circle_members.c.on_behalf_of, circles.c.coordinator)
                 .join(circles, circles.c.id == circle_members.c.circle_id)
                 .where(circle_members.c.circle_id == circle_id, circle_members.c.idnat == idnat))
        async with self._reads.connect() as conn:
            row = (await conn.execute(query)).first()
        return {"on_behalf_of": row.on_behalf_of, "coordinator": row.coordinator == idnat} if row else None

    async def followed_still(self, idnat: str, circle_ids: list[int]) -> dict[int, str]:
        """Which of `circle_ids` the person is still a member of: {circle id: on_behalf_of}."""
        query = select(circle_members.c.circle_id, circle_members.c.on_behalf_of).where(
            circle_members.c.idnat == idnat, circle_members.c.circle_id.in_(circle_ids))
        async with self._reads.connect() as conn:
            return {r.circle_id: r.on_behalf_of for r in await conn.execute(query)}

    async def circles_of(self, idnat: str) -> list[dict]:
        """The person's circles with their read marker, unread count (others' messages only) and
        last message (its start, as a list shows it; None before the first)."""
        marker = func.coalesce(select(read_markers.c.seq).where(
            read_markers.c.circle_id == circles.c.id, read_markers.c.idnat == idnat).scalar_subquery(), 0)
        unread = select(func.count()).select_from(circle_messages).where(
            circle_messages.c.circle_id == circles.c.id, circle_messages.c.seq > marker,
            _by_others(idnat)).scalar_subquery()
        query = (select(circles, circle_members.c.on_behalf_of, marker.label("read"), unread.label("unread"),
                        _LAST.c.text.label("last_text"), _LAST.c.created_at.label("last_at"),
                        _LAST.c.data.label("last_data"),
                        *(_LAST_BY.c[name].label(f"last_{name}")
                          for name in ("idnat", "given_name", "family_name", "practice_civility")))
                 .join(circle_members, circle_members.c.circle_id == circles.c.id)
                 .outerjoin(_LAST, and_(_LAST.c.circle_id == circles.c.id, _LAST.c.seq == circles.c.last_seq))
                 .outerjoin(_LAST_BY, _LAST_BY.c.idnat == _LAST.c.author)
                 .where(circle_members.c.idnat == idnat)
                 .order_by(circles.c.patient_family_name, circles.c.patient_given_name, circles.c.id))
        async with self._reads.connect() as conn:
            return [{**_circle(r), "role": "coordinator" if r.coordinator == idnat else "member",
                     "on_behalf_of": r.on_behalf_of, "read": r.read, "unread": r.unread,
                     "last_message": None if r.last_text is None else {
                         **_quote(r.last_seq, _author(r.last_idnat, SimpleNamespace(
                             given_name=r.last_given_name, family_name=r.last_family_name,
                             practice_civility=r.last_practice_civility), r.last_data), r.last_text),
                         "at": iso(r.last_at)}}
                    for r in await conn.execute(query)]

    async def receipts(self, circle_id: int) -> list[dict]:
        """Every member's read marker that has moved: [{user: {id, name}, seq}]."""
        query = (select(read_markers.c.seq, *_PERSON)
                 .join(professionals, professionals.c.idnat == read_markers.c.idnat)
                 .join(circle_members, and_(circle_members.c.circle_id == read_markers.c.circle_id,
                                            circle_members.c.idnat == read_markers.c.idnat))
                 .where(read_markers.c.circle_id == circle_id, read_markers.c.seq > 0)
                 .order_by(read_markers.c.idnat))
        async with self._reads.connect() as conn:
            return [{"user": {"id": r.idnat, "name": display_name(r)}, "seq": r.seq} for r in await conn.execute(query)]

    async def all_circles(self) -> list[dict]:
        """Every circle with its members' identifiers (the operator's view)."""
        async with self._engine.connect() as conn:
            found = [_circle(r) for r in await conn.execute(select(circles).order_by(circles.c.id))]
            members: dict[int, list[str]] = {}
            for r in await conn.execute(select(circle_members.c.circle_id, circle_members.c.idnat)
                                        .order_by(circle_members.c.idnat)):
                members.setdefault(r.circle_id, []).append(r.idnat)
        return [{**c, "members": members.get(c["id"], [])} for c in found]

    async def add_member(self, circle_id: int, idnat: str, on_behalf_of: str, by: str, now: datetime) -> bool:
        """False when the person is a member already (membership unchanged)."""
        async with self._engine.begin() as conn:
            await conn.execute(update(circles).where(circles.c.id == circle_id).values(updated_at=now))
            added = await conn.execute(dialect_insert(conn, circle_members).on_conflict_do_nothing(), {
                "circle_id": circle_id, "idnat": idnat, "on_behalf_of": on_behalf_of, "added_at": now,
                "added_by": by})
        return added.rowcount == 1

    async def remove_member(self, circle_id: int, idnat: str, now: datetime) -> bool:
        async with self._engine.begin() as conn:
            await conn.execute(update(circles).where(circles.c.id == circle_id).values(updated_at=now))
            removed = await conn.execute(delete(circle_members).where(
                circle_members.c.circle_id == circle_id, circle_members.c.idnat == idnat))
        return removed.rowcount == 1

    async def professional(self, identifier: str) -> dict | None:
        """An active professional by national identifier or RPPS."""
        column = professionals.c.rpps if len(identifier) == 11 else professionals.c.idnat
        async with self._reads.connect() as conn:
            row = (await conn.execute(select(*_PERSON).where(
                column == identifier, professionals.c.retired_at.is_(None)))).first()
        return {"id": row.idnat, "name": display_name(row), "profession": row.profession_label} if row else None

    # --- messages and read markers ------------------------------------------------------------

    async def quote(self, circle_id: int, seq: int) -> dict | None:
        """Message `seq` of the circle as a reply quotes it ({seq, author, text: its start}), or None."""
        query = (select(circle_messages.c.seq, circle_messages.c.text, circle_messages.c.data, *_PERSON)
                 .outerjoin(professionals, professionals.c.idnat == circle_messages.c.author)
                 .where(circle_messages.c.circle_id == circle_id, circle_messages.c.seq == seq))
        async with self._reads.connect() as conn:
            row = (await conn.execute(query)).first()
        return _quote(row.seq, _author(row.idnat, row, row.data), row.text) if row else None

    async def append(self, circle_id: int, author: str, client_id: str, text: str, now: datetime,
                     reply_to: dict | None = None, attachments: tuple[int, ...] = (),
                     stored: Stored | None = None, author_name: str | None = None) -> tuple[dict, bool]:
        """Store a message (answering `reply_to`, a quote, carrying `attachments`); (message,
        True) when this client_id was stored before. The insert is optimistic: a retry meets the
        unique constraint, and the rollback gives its seq back. Attachments are claimed in the
        same transaction, only the author's own uploads to this circle not posted yet
        (AttachmentUnavailable otherwise, and nothing is stored). `stored(conn, message)` runs
        last in that transaction (the audit row: one commit for both, and it exists exactly
        when the message does). `author_name`: the author as frames show them, when the caller
        has read it already (a websocket, at authentication): one round trip less per post."""
        try:
            async with self._engine.begin() as conn:
                seq = await append_item(conn, circle_id, author=author, client_id=client_id, text=text, now=now,
                                        reply_to=reply_to["seq"] if reply_to else None)
                carried = await _claim(conn, circle_id, seq, author, attachments)
                if author_name is None:
                    person = (await conn.execute(select(*_PERSON).where(professionals.c.idnat == author))).one()
                    author_name = display_name(person)
                message = {"circle": circle_id, "seq": seq, "kind": "text",
                           "author": {"id": author, "name": author_name}, "client_id": client_id,
                           "text": text, "at": iso(now), "reply_to": reply_to, "attachments": carried}
                if stored is not None:
                    await stored(conn, message)
        except IntegrityError:  # stored before (a retry), or just now by the same post racing this one
            async with self._reads.connect() as conn:
                prior = await self._by_client_id(conn, circle_id, author, client_id)
            if prior is None:
                raise
            return prior, True
        return message, False

    async def _by_client_id(self, conn, circle_id: int, author: str, client_id: str) -> dict | None:  # noqa: ANN001
        row = (await conn.execute(_messages().where(
            circle_messages.c.circle_id == circle_id, circle_messages.c.author == author,
            circle_messages.c.client_id == client_id))).first()
        return (await _with_attachments(conn, circle_id, [_message(row)]))[0] if row else None

    async def messages(self, circle_id: int, *, after: int | None = None, before: int | None = None,
                       limit: int) -> tuple[list[dict], bool]:
        """A page in seq order: after `after`, or before `before`, or the latest; and whether
        more lie beyond it in the direction paged."""
        query = _messages().where(circle_messages.c.circle_id == circle_id)
        if after is not None:
            query = query.where(circle_messages.c.seq > after).order_by(circle_messages.c.seq)
        else:
            if before is not None:
                query = query.where(circle_messages.c.seq < before)
            query = query.order_by(circle_messages.c.seq.desc())
        async with self._reads.connect() as conn:
            rows = [_message(r) for r in await conn.execute(query.limit(limit + 1))]
            more = len(rows) > limit
            rows = await _with_attachments(conn, circle_id, rows[:limit])
        return (rows if after is not None else rows[::-1]), more

    async def search(self, circle_id: int, text: str, *, before: int | None, limit: int) -> tuple[list[dict], bool]:
        """Messages holding `text` (case-insensitive: ILIKE on PostgreSQL, lower() on SQLite,
        which folds ASCII letters only), newest first, before `before`; and whether more match."""
        pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        query = _messages().where(circle_messages.c.circle_id == circle_id,
                                  circle_messages.c.text.ilike(pattern, escape="\\"))
        if before is not None:
            query = query.where(circle_messages.c.seq < before)
        async with self._reads.connect() as conn:
            newest = query.order_by(circle_messages.c.seq.desc()).limit(limit + 1)
            rows = [_message(r) for r in await conn.execute(newest)]
            return await _with_attachments(conn, circle_id, rows[:limit]), len(rows) > limit

    async def mark_read(self, circle_id: int, idnat: str, seq: int, now: datetime) -> tuple[int, int]:
        """Move the person's marker forward to `seq` (never back, never past the last message);
        returns (marker, unread)."""
        async with self._engine.begin() as conn:
            head = select(circles.c.last_seq).where(circles.c.id == circle_id).scalar_subquery()
            upsert = dialect_insert(conn, read_markers).from_select(
                ["circle_id", "idnat", "seq", "updated_at"],
                select(circles.c.id, func.cast(idnat, read_markers.c.idnat.type), func.min(seq, head) if False else
                       case((head < seq, head), else_=seq), func.cast(now, read_markers.c.updated_at.type))
                .where(circles.c.id == circle_id))
            upsert = upsert.on_conflict_do_update(
                index_elements=[read_markers.c.circle_id, read_markers.c.idnat],
                set_={"seq": case((upsert.excluded.seq > read_markers.c.seq, upsert.excluded.seq),
                                  else_=read_markers.c.seq),
                      "updated_at": upsert.excluded.updated_at})
            await conn.execute(upsert)
        marker, _head, unread = await self.read_state(circle_id, idnat)
        return marker, unread

    async def read_state(self, circle_id: int, idnat: str) -> tuple[int, int, int]:
        """(read marker, last seq, unread count) of one person in one circle."""
        marker = func.coalesce(select(read_markers.c.seq).where(
            read_markers.c.circle_id == circle_id, read_markers.c.idnat == idnat).scalar_subquery(), 0)
        unread = select(func.count()).select_from(circle_messages).where(
            circle_messages.c.circle_id == circle_id, circle_messages.c.seq > marker,
            _by_others(idnat)).scalar_subquery()
        query = select(marker, circles.c.last_seq, unread).where(circles.c.id == circle_id)
        async with self._reads.connect() as conn:
            row = (await conn.execute(query)).one()
        return int(row[0]), int(row[1]), int(row[2])


_QUOTED = circle_messages.alias("quoted")
_QUOTED_BY = professionals.alias("quoted_by")
_LAST = circle_messages.alias("last")
_LAST_BY = professionals.alias("last_by")


def _messages():  # noqa: ANN202 - a Select
    """Messages with their author (none for an event), and the message each answers with its
    author (outer joins)."""
    return (select(circle_messages, *_PERSON, _QUOTED.c.text.label("q_text"), _QUOTED.c.data.label("q_data"),
                   _QUOTED_BY.c.idnat.label("q_idnat"),
                   _QUOTED_BY.c.given_name.label("q_given_name"), _QUOTED_BY.c.family_name.label("q_family_name"),
                   _QUOTED_BY.c.practice_civility.label("q_practice_civility"))
            .outerjoin(professionals, professionals.c.idnat == circle_messages.c.author)
            .outerjoin(_QUOTED, and_(_QUOTED.c.circle_id == circle_messages.c.circle_id,
                                     _QUOTED.c.seq == circle_messages.c.reply_to))
            .outerjoin(_QUOTED_BY, _QUOTED_BY.c.idnat == _QUOTED.c.author))


async def _claim(conn, circle_id: int, seq: int, author: str, ids: tuple[int, ...]) -> list[dict]:  # noqa: ANN001
    """Attach the uploads `ids` to message `seq`; their descriptions in id order."""
    if not ids:
        return []
    claimed = await conn.execute(update(circle_attachments).where(
        circle_attachments.c.id.in_(ids), circle_attachments.c.circle_id == circle_id,
        circle_attachments.c.uploader == author, circle_attachments.c.seq.is_(None)).values(seq=seq))
    if claimed.rowcount != len(ids):
        raise AttachmentUnavailable(f"attachments must be your own uploads to care circle {circle_id}, "
                                    f"not yet posted")
    rows = await conn.execute(select(*_ATTACHMENT).where(circle_attachments.c.id.in_(ids))
                              .order_by(circle_attachments.c.id))
    return [attachment_view(r) for r in rows]


async def _with_attachments(conn, circle_id: int, messages: list[dict]) -> list[dict]:  # noqa: ANN001
    """The messages, each with the attachments it carries (one query for the page)."""
    carried: dict[int, list[dict]] = {m["seq"]: [] for m in messages}
    if carried:
        rows = await conn.execute(select(circle_attachments.c.seq, *_ATTACHMENT).where(
            circle_attachments.c.circle_id == circle_id, circle_attachments.c.seq.in_(list(carried)))
            .order_by(circle_attachments.c.id))
        for row in rows:
            carried[row.seq].append(attachment_view(row))
    return [{**m, "attachments": carried[m["seq"]]} for m in messages]


_ATTACHMENT = (circle_attachments.c.id, circle_attachments.c.name, circle_attachments.c.content_type,
               circle_attachments.c.size)


def attachment_view(row: Any) -> dict:
    """An attachment as frames show it (never its bytes)."""
    return {"id": row.id, "name": row.name, "type": row.content_type, "size": row.size}


def _message(row: Any) -> dict:
    quoted = None
    if row.reply_to is not None and row.q_text is not None:
        who = SimpleNamespace(given_name=row.q_given_name, family_name=row.q_family_name,
                              practice_civility=row.q_practice_civility)
        quoted = _quote(row.reply_to, _author(row.q_idnat, who, row.q_data), row.q_text)
    message = {"circle": row.circle_id, "seq": row.seq, "kind": row.kind,
               "author": _author(row.author, row, row.data), "client_id": row.client_id, "text": row.text,
               "at": iso(row.created_at), "reply_to": quoted}
    if row.kind != "text" and row.data:  # event (a hospital's), document (an XDM that came by mail)
        message["event"] = json.loads(row.data)["event"]
    return message


def _author(idnat: str | None, person: Any, data: str | None) -> dict:
    """{id, name}: the professional who wrote it, or the source an event item's data names."""
    if idnat is None:
        return json.loads(data)["author"] if data else {"id": "", "name": ""}
    return {"id": idnat, "name": display_name(person)}


def _quote(seq: int, author: dict, text: str) -> dict:
    return {"seq": seq, "author": author, "text": text[:QUOTE_CHARS]}


def _by_others(idnat: str):  # noqa: ANN202 - a clause
    """Items that count as unread for `idnat`: others' messages, and every event."""
    return func.coalesce(circle_messages.c.author, "") != idnat


async def append_item(conn: AsyncConnection, circle_id: int, *, author: str | None, client_id: str, text: str,
                      now: datetime, reply_to: int | None = None, kind: str = "text",
                      data: dict | None = None) -> int:
    """Store one timeline item in `conn`'s transaction with the circle's next seq; returns the
    seq. The circle's row stays locked until that transaction ends, so seqs follow commits."""
    (seq,) = await append_items(conn, [{"circle_id": circle_id, "author": author, "client_id": client_id,
                                        "text": text, "reply_to": reply_to, "kind": kind, "data": data}], now)
    return seq


async def append_items(conn: AsyncConnection, items: list[dict], now: datetime) -> list[int]:
    """`append_item` for several items ({circle_id, author, client_id, text, reply_to, kind,
    data}), in the order given; their seqs. Each circle's seqs come from one UPDATE (circles
    locked in id order), the items from one INSERT: the hospital dispatch adds a chunk of events
    to a patient's circle at once."""
    counts = Counter(item["circle_id"] for item in items)
    next_seq: dict[int, int] = {}
    for circle_id, count in sorted(counts.items()):
        last = (await conn.execute(update(circles).where(circles.c.id == circle_id)
                                   .values(last_seq=circles.c.last_seq + count)
                                   .returning(circles.c.last_seq))).scalar_one()
        next_seq[circle_id] = last - count + 1
    seqs, rows = [], []
    for item in items:
        seq = next_seq[item["circle_id"]]
        next_seq[item["circle_id"]] = seq + 1
        seqs.append(seq)
        data = item["data"]
        rows.append({**item, "seq": seq, "created_at": now,
                     "data": json.dumps(data, ensure_ascii=False, sort_keys=True) if data is not None else None})
    if rows:
        await conn.execute(insert(circle_messages), rows)
    return seqs


def _circle(row: Any) -> dict:
    return {"id": row.id, "patient": Patient(row.patient_ins, row.patient_ins_oid, row.patient_family_name,
                                             row.patient_given_name, row.patient_birth_date).as_dict(),
            "coordinator": row.coordinator, "last_seq": row.last_seq, "created_at": iso(row.created_at)}
