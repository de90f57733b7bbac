"""The durable message store: one body per message, a row per (folder, message) with its UID.

`accept` is the one transaction behind SMTP's `250` after DATA: the body, the envelope, each
local recipient's INBOX entry, each remote recipient's queue entry, any delivery-status
report and the audit row commit together or not at all (possibly alongside other sessions'
messages, in one group commit). Events go out only after the commit, so a listener
woken by one always finds the rows.

UIDs (RFC 3501 §2.3.1.1) come from the folder's `uidnext`, bumped in the same UPDATE that
returns it, so concurrent deliveries to one folder never share a UID, and MODSEQ (RFC 7162)
from the folder's `highestmodseq` the same way.

What else must happen when mail reaches a box belongs to other packages (a document for a
patient's care circle: hospital/incoming.py); they register a `DeliveryHook`, which the
composition root (msante/app.py) does, so this module knows nothing of them. A hook runs in the
delivering transaction and must only record work for later (a job row): it is on the path of
every `250`, and whatever it raises fails the delivery.
"""
from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Iterable, Sequence

from sqlalchemy import and_, bindparam, exists, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from hospital import receipts
from store.audit import AuditTrail, entry
from store.db import dialect_insert, inserted_ids
from store.group_commit import GroupCommit, settle
from store.events import EventBus
from store.schema import audit as audit_rows, bodies, deliveries, envelopes, folder_messages, folders, mailboxes

from . import dsn
from .bodies import delete_bodies, insert_bodies, insert_body
from . import reports as incoming

# RFC 6154 special-use folders every box gets (the IMAP layer shows them).
DEFAULT_FOLDERS = (("INBOX", ""), ("Sent", "\\Sent"), ("Drafts", "\\Drafts"), ("Trash", "\\Trash"),
                   ("Junk", "\\Junk"), ("Archive", "\\Archive"))


@dataclass(frozen=True)
class Recipient:
    address: str
    dsn: dsn.RcptDsn
    mailbox_id: int | None  # local box; None: remote, to the outbound queue


@dataclass(frozen=True)
class Delivered:
    """What a delivery hook is told: a message just stored in local boxes (not yet committed)."""

    envelope_id: int
    message: bytes
    sender: str
    source: str  # smtp, submission, hl7 (a hospital notice)…
    mailbox_ids: tuple[int, ...]
    at: datetime


# In the delivering transaction; returns the bus channels to wake once it commits.
DeliveryHook = Callable[[AsyncConnection, Delivered], Awaitable[list[str]]]


@dataclass(frozen=True)
class Mail:
    """A message to store (`MailStore.store_many`), and how to audit it."""

    message: bytes
    message_id: str
    sender: str
    actor: Any
    audit_action: str
    source: str
    mail_dsn: dsn.MailDsn
    recipients: tuple[Recipient, ...]
    facts: dict | None = None  # bodies.facts_of(message), when the caller learnt it before the write


@dataclass(frozen=True)
class Accepted:
    envelope_id: int
    delivered: tuple[str, ...]
    queued: tuple[str, ...]
    failed: tuple[str, ...]


FREE_BATCH = 500  # body ids per IN (...) list: far below SQLite's and asyncpg's bound-parameter limits
QUEUE_CHANNEL = "queue"  # "something was queued for relay": wakes the outbound queue
QUEUED = {"type": "queued"}


def channel_of(key: int | str) -> str:
    """Where an event of a write goes: a box's channel (by its id), the outbound queue's (0), or
    the channel named (a care circle's: hospital/receipts.py)."""
    return key if isinstance(key, str) else mailbox_channel(key) if key else QUEUE_CHANNEL


def mailbox_channel(mailbox_id: int) -> str:
    return f"mailbox:{mailbox_id}"


class MailStore:
    def __init__(self, engine: AsyncEngine, bus: EventBus, *, reporting_mta: str) -> None:
        self._engine = engine
        self._bus = bus
        self._reporting_mta = reporting_mta
        # The writer the hospital feed shares (hospital/feed.py): with SQLite's one write lock,
        # writes taken in turn by one task beat writers fighting over it with busy-wait backoff.
        self.writes = GroupCommit(engine)
        self.delivery_hooks: list[DeliveryHook] = []
        self._waiting: list[tuple[Mail, asyncio.Future]] = []  # accepted messages for the next write
        self._storing: set[asyncio.Task] = set()

    async def accept(self, *, message: bytes, message_id: str, sender: str, actor: Any, audit: AuditTrail,
                     audit_action: str, source: str, mail_dsn: dsn.MailDsn, recipients: Iterable[Recipient],
                     facts: dict | None = None) -> Accepted:
        """Store one accepted message; returns once it is committed, then wakes whoever watches
        the boxes. The messages of the sessions waiting at the writer's turn are stored together,
        each table written once for all of them (`store_many`), in one group commit: one message
        a write was ten statements each, and SQLAlchemy's own work per statement was the largest
        cost on the 250's path (issue 13)."""
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._waiting.append((Mail(message, message_id, sender, actor, audit_action, source, mail_dsn,
                                   tuple(recipients), facts), future))
        if len(self._waiting) == 1:  # else a write already queued takes this message too
            task = asyncio.ensure_future(self._store_waiting())
            self._storing.add(task)
            task.add_done_callback(self._storing.discard)
        accepted, events = await future
        await self.publish(events + ([(0, QUEUED)] if accepted.queued else []))
        return accepted

    async def _store_waiting(self) -> None:
        """One write for the messages waiting when the writer gets to it (a session gone
        meanwhile is left out, as the group commit leaves out a cancelled write). If it fails,
        each message is tried alone, so one bad message never costs the others theirs."""
        taken: list[tuple[Mail, asyncio.Future]] = []
        started = False

        async def write(conn: AsyncConnection) -> list[tuple[Accepted, list[tuple[int | str, dict]]]]:
            nonlocal started
            if not started:  # the group commit may replay this write: the same messages then
                started = True
                taken.extend((mail, future) for mail, future in self._waiting if not future.cancelled())
                self._waiting.clear()
            return await self.store_many(conn, [mail for mail, _future in taken])
        try:
            stored = await self.writes.run(write)
        except Exception as exc:
            if len(taken) == 1:
                settle(taken[0][1], error=exc)
                return
            await asyncio.gather(*(self._store_alone(mail, future) for mail, future in taken))
            return
        for (_mail, future), result in zip(taken, stored):
            settle(future, result)

    async def _store_alone(self, mail: Mail, future: asyncio.Future) -> None:
        try:
            (result,) = await self.writes.run(lambda conn: self.store_many(conn, [mail]))
        except Exception as exc:
            settle(future, error=exc)
        else:
            settle(future, result)

    async def close(self) -> None:
        if self._storing:  # the messages of sessions being stored: their writes end first
            await asyncio.wait(set(self._storing))
        await self.writes.close()

    async def store(self, conn: AsyncConnection, *, message: bytes, message_id: str, sender: str, actor: Any,
                    audit: AuditTrail, audit_action: str, source: str, mail_dsn: dsn.MailDsn,
                    recipients: list[Recipient]) -> tuple[Accepted, list[tuple[int | str, dict]]]:
        """`accept`'s work in the caller's transaction, for a job sending several messages at once
        (hospital/subscriptions.py); the caller hands the events to `publish` after its commit."""
        (stored,) = await self.store_many(conn, [Mail(message, message_id, sender, actor, audit_action, source, mail_dsn,
                                                      tuple(recipients))])
        return stored

    async def store_many(self, conn: AsyncConnection,
                         mails: Sequence["Mail"]) -> list[tuple[Accepted, list[tuple[int | str, dict]]]]:
        """`store` for several messages, each table written once for all of them (many rows a
        statement): the hospital dispatch stores a chunk of events' notices this way, where one
        message at a time was nine statements each on the path of the feed's ACKs."""
        if not mails:
            return []
        now = datetime.now(timezone.utc)
        body_ids = await insert_bodies(conn, [m.message for m in mails], now, [m.facts for m in mails])
        envelope_ids = await inserted_ids(conn, _NEW_ENVELOPE, [{
            "body_id": body_id, "message_id": m.message_id[:998], "sender": m.sender, "actor": m.actor.id,
            "actor_kind": m.actor.kind, "source": m.source, "received_at": now, "ret": m.mail_dsn.ret or "",
            "envid": m.mail_dsn.envid or "", "size": len(m.message)} for m, body_id in zip(mails, body_ids)])
        local = [(i, rcpt) for i, m in enumerate(mails) for rcpt in m.recipients if rcpt.mailbox_id is not None]
        placed = iter(await _deliver_many(conn, [(rcpt.mailbox_id, "INBOX", body_ids[i], len(mails[i].message))
                                                 for i, rcpt in local], now))
        rows: list[dict] = []
        stored = []
        for m, body_id, envelope_id in zip(mails, body_ids, envelope_ids):
            events: list[tuple[int | str, dict]] = []
            delivered, queued, failed = [], [], []
            delivered_to: list[int] = []
            reports: list[dsn.RecipientStatus] = []
            for rcpt in m.recipients:
                row = {"envelope_id": envelope_id, "recipient": rcpt.address,
                       "orcpt": ";".join(rcpt.dsn.orcpt) if rcpt.dsn.orcpt else "",
                       "notify": ",".join(sorted(rcpt.dsn.notify)), "updated_at": now, "attempts": 0,
                       "last_error": "", "next_attempt_at": None, "folder_message_id": None}
                if rcpt.mailbox_id is None:
                    rows.append({**row, "status": "queued", "next_attempt_at": now})
                    queued.append(rcpt.address)
                    continue
                place = next(placed)
                if place is None:  # the box was retired between RCPT and DATA
                    rows.append({**row, "status": "failed", "last_error": "550 5.1.1 mailbox no longer exists"})
                    failed.append(rcpt.address)
                    if "FAILURE" in rcpt.dsn.notify:
                        reports.append(_status(rcpt, "failed", "5.1.1", "smtp; 550 5.1.1 mailbox no longer exists",
                                               now))
                    continue
                folder_message_id, _uid, event = place
                events.append((rcpt.mailbox_id, event))
                rows.append({**row, "status": "delivered", "folder_message_id": folder_message_id})
                delivered.append(rcpt.address)
                delivered_to.append(rcpt.mailbox_id)
                if "SUCCESS" in rcpt.dsn.notify:
                    reports.append(_status(rcpt, "delivered", "2.0.0", None, now))
            if delivered and incoming.looks_like_report(m.message):  # a receipt for a hospital notice?
                events += await receipts.reported(conn, incoming.read(m.message), delivered, now)
            if delivered_to:
                facts = Delivered(envelope_id, m.message, m.sender, m.source, tuple(delivered_to), now)
                for hook in self.delivery_hooks:
                    events += [(channel, {"type": "delivered"}) for channel in await hook(conn, facts)]
            if reports:
                events += await self.report(conn, sender=m.sender, envid=m.mail_dsn.envid, ret=m.mail_dsn.ret,
                                            arrival=now, statuses=reports, original=m.message)
            stored.append((Accepted(envelope_id, tuple(delivered), tuple(queued), tuple(failed)), events,
                           entry(m.actor, m.audit_action, target=m.sender or "<>", source=m.source,
                                 message_id=m.message_id, envelope=envelope_id, delivered=delivered, queued=queued,
                                 failed=failed, size=len(m.message))))
        if rows:
            await conn.execute(_NEW_DELIVERY, rows)
        await conn.execute(_NEW_AUDIT, [row for _a, _e, row in stored])
        return [(accepted, events) for accepted, events, _row in stored]

    async def publish(self, events: list[tuple[int | str, dict]]) -> None:
        """After the commit: wake whoever watches these boxes (mailbox 0: the outbound queue) or
        these channels (a care circle's; a delivery hook's job)."""
        for key, event in events:
            await self._bus.publish(channel_of(key), event)

    async def report(self, conn: AsyncConnection, *, sender: str, envid: str | None, ret: str | None,
                     arrival: datetime, statuses: list[dsn.RecipientStatus],
                     original: bytes) -> list[tuple[int | str, dict]]:
        """A delivery-status report to `sender`, inside the caller's transaction: into the
        sender's INBOX when the box is ours, else queued for relay with the null sender. Never
        for a message that had the null sender itself (RFC 3461 §6.2: no reports on reports)."""
        if not sender:
            return [(0, QUEUED)]
        now = datetime.now(timezone.utc)
        report = dsn.build_report(
            reporting_mta=self._reporting_mta, original_envelope_id=envid, arrival_date=arrival,
            recipients=statuses, original_message=original, ret=ret,
            from_addr=f"mailer-daemon@{self._reporting_mta}", to_addr=sender, subject_hint=None)
        body_id = await insert_body(conn, report, now)
        local = (await conn.execute(select(mailboxes.c.id).where(and_(
            mailboxes.c.address == sender, mailboxes.c.local.is_(True))))).first()
        if local is not None:
            placed = await _deliver(conn, local.id, "INBOX", body_id, len(report), now)
            return [(local.id, placed[2])] if placed else []
        envelope_id = (await conn.execute(insert(envelopes).returning(envelopes.c.id), {
            "body_id": body_id, "message_id": "", "sender": "", "actor": self._reporting_mta,
            "actor_kind": "server", "source": "", "received_at": now, "ret": "", "envid": "",
            "size": len(report)})).scalar_one()
        await conn.execute(insert(deliveries), {
            "envelope_id": envelope_id, "recipient": sender, "orcpt": "", "notify": "NEVER", "status": "queued",
            "attempts": 0, "next_attempt_at": now, "last_error": "", "updated_at": now})
        return [(0, QUEUED)]


def _status(rcpt: Recipient, action: str, status: str, diagnostic: str | None, now: datetime) -> dsn.RecipientStatus:
    return dsn.RecipientStatus(final_recipient=rcpt.address, action=action, status=status, diagnostic=diagnostic,
                               original_recipient=rcpt.dsn.orcpt, last_attempt=now)


async def ensure_folders(conn: AsyncConnection, mailbox_id: int) -> None:
    """Create the default folders of a box on first use (imported boxes number in the
    hundreds of thousands; most never receive mail here)."""
    existing = {r.name for r in await conn.execute(select(folders.c.name).where(folders.c.mailbox_id == mailbox_id))}
    missing = [(name, use) for name, use in DEFAULT_FOLDERS if name not in existing]
    if missing:
        now = datetime.now(timezone.utc)
        # ON CONFLICT: two first deliveries to one box may race; both then find the folders.
        await conn.execute(dialect_insert(conn, folders).on_conflict_do_nothing(), [
            {"mailbox_id": mailbox_id, "name": name, "special_use": use, "uidvalidity": int(time.time()),
             "uidnext": 1, "highestmodseq": 1, "created_at": now} for name, use in missing])


async def _deliver(conn: AsyncConnection, mailbox_id: int, folder_name: str, body_id: int, size: int,
                   now: datetime) -> tuple[int, int, dict] | None:
    (placed,) = await _deliver_many(conn, [(mailbox_id, folder_name, body_id, size)], now)
    return placed


async def _deliver_many(conn: AsyncConnection, wanted: Sequence[tuple[int, str, int, int]],
                        now: datetime) -> list[tuple[int, int, dict] | None]:
    """Each (box, folder, body, size) placed: its folder_messages id, UID and new_mail event, or
    None when the box is retired. A folder's UIDs and MODSEQs for all its new rows come from one
    UPDATE of its counters, in the order asked. On every 250's path, so the usual case is that
    UPDATE (which checks the box is active and returns its address) and the INSERT; the box is
    read only when the UPDATE changes nothing (a retired box, or one whose folders were never made)."""
    if not wanted:
        return []
    counts: Counter[tuple[int, str]] = Counter()
    octets: Counter[tuple[int, str]] = Counter()
    for box, folder, _b, size in wanted:
        counts[box, folder] += 1
        octets[box, folder] += size
    next_of: dict[tuple[int, str], list[int]] = {}  # folder → [id, next uid, next modseq]
    address: dict[int, str] = {}
    for (box, folder), count in sorted(counts.items()):
        bumped = await _bump(conn, box, folder, count, octets[box, folder])
        if bumped is None:
            active = (await conn.execute(select(mailboxes.c.id).where(and_(
                mailboxes.c.id == box, mailboxes.c.retired_at.is_(None))))).first()
            if active is None:
                continue
            await ensure_folders(conn, box)
            bumped = await _bump(conn, box, folder, count, octets[box, folder])
            if bumped is None:
                raise LookupError(f"box {box} has no folder {folder!r}")
        next_of[box, folder] = [bumped.id, bumped.uidnext - count, bumped.highestmodseq - count + 1]
        address[box] = bumped.address
    live = [w for w in wanted if (w[0], w[1]) in next_of]
    rows = []
    for box, folder, body_id, size in live:
        folder_id, uid, modseq = next_of[box, folder]
        next_of[box, folder][1:] = [uid + 1, modseq + 1]
        rows.append({"folder_id": folder_id, "uid": uid, "body_id": body_id, "size": size, "flags": "",
                     "internaldate": now, "modseq": modseq})
    ids = iter(await inserted_ids(conn, _NEW_FOLDER_MESSAGE, rows) if rows else [])
    placed = iter(zip(ids, rows))
    found: list[tuple[int, int, dict] | None] = []
    for box, folder, _body, _size in wanted:
        if (box, folder) not in next_of:
            found.append(None)
            continue
        folder_message_id, row = next(placed)
        found.append((folder_message_id, row["uid"],
                      {"type": "new_mail", "mailbox": address[box], "folder": folder, "uid": row["uid"]}))
    return found


async def _bump(conn: AsyncConnection, mailbox_id: int, folder_name: str, count: int, octets: int) -> Any:
    """Take the folder's next `count` UIDs and MODSEQs, and count its `count` new messages of
    `octets` in all, if the box is active; the row (id, the new uidnext and highestmodseq, the
    box's address) or None."""
    return (await conn.execute(_BUMP, {"box": mailbox_id, "folder": folder_name, "count": count,
                                       "octets": octets})).first()


# The statements of every 250's path, built once: building one (and its cache key) cost more
# CPU than running it on SQLite (issue 13).
_NEW_ENVELOPE = insert(envelopes).returning(envelopes.c.id)
_NEW_DELIVERY = insert(deliveries)
_NEW_AUDIT = insert(audit_rows)
_NEW_FOLDER_MESSAGE = insert(folder_messages).returning(folder_messages.c.id)
_ACTIVE_BOX = select(mailboxes.c.address).where(mailboxes.c.id == bindparam("box"), mailboxes.c.retired_at.is_(None))
_BUMP = (update(folders)
         .where(folders.c.mailbox_id == bindparam("box"), folders.c.name == bindparam("folder"), _ACTIVE_BOX.exists())
         .values(uidnext=folders.c.uidnext + bindparam("count"),
                 highestmodseq=folders.c.highestmodseq + bindparam("count"),
                 messages=folders.c.messages + bindparam("count"), octets=folders.c.octets + bindparam("octets"))
         .returning(folders.c.id, folders.c.uidnext, folders.c.highestmodseq,
                    _ACTIVE_BOX.scalar_subquery().label("address")))


async def free_bodies(conn: AsyncConnection, body_ids: Sequence[int]) -> None:
    """Delete the bodies no folder row and no queued delivery needs. The bodies are locked
    first (PostgreSQL; SQLite's writer already holds the database), in id order: two sessions
    expunging the last two copies of one message would otherwise each see the other's and
    free neither; a COPY of it cannot race this, as it locks the source folder. Called by
    IMAP expunges and by the outbound queue once a message's last queued delivery ends."""
    queued = (select(deliveries.c.id).join(envelopes, envelopes.c.id == deliveries.c.envelope_id)
              .where(envelopes.c.body_id == bodies.c.id, deliveries.c.status == "queued"))
    for start in range(0, len(body_ids), FREE_BATCH):
        chunk = body_ids[start:start + FREE_BATCH]
        await conn.execute(select(bodies.c.id).where(bodies.c.id.in_(chunk)).order_by(bodies.c.id).with_for_update())
        unused = list((await conn.execute(select(bodies.c.id).where(
            bodies.c.id.in_(chunk), ~exists().where(folder_messages.c.body_id == bodies.c.id),
            ~queued.exists()))).scalars())
        if unused:
            await conn.execute(update(envelopes).where(envelopes.c.body_id.in_(unused)).values(body_id=None))
            await delete_bodies(conn, unused)
