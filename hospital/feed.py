"""Storing what hospitals send: one HL7 message in, one ACK out, the ACK only after the commit.

The ACK is the hospital's receipt, as SMTP's 250: once it reads AA it forgets the message, so
the message, the event it means and the audit row commit together (group commit, as mail)
before the ACK is written. The messages of every connection that wait for the same group
commit go in one write of three statements (messages, events, audit rows, each inserted many
rows at a time): measured, one write per message (three statements each, with SQLite's thread
hop per statement) was what the ACKs waited on. MSH-10 names a message for its sender: a
resend (the hospital did not read our ACK, its connection dropped) finds the stored row and
gets the same ACK byte for byte, and nothing is stored or notified twice (a unique key on
sender and MSH-10, ON CONFLICT DO NOTHING, settles two resends racing on two connections or in
one write).

A hospital speaks only for its own structure: MSH-4 (sending facility) must carry the FINESS
of the structure its certificate's applicative box belongs to, else AR, audited. Refused and
malformed messages are audited and not stored. The event waits, `pending`, for the dispatcher
(hospital/dispatch.py), which is woken through the bus, once per write.
"""
from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone

from sqlalchemy import Insert, and_, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from store.audit import Actor, AuditTrail, entry
from store.db import dialect_insert
from store.events import EventBus
from store.group_commit import GroupCommit
from store.schema import audit, hl7_messages, hospital_events
from web.metrics import HL7_EVENTS, HL7_REFUSALS

from . import ack
from .message import Document, Header, HospitalMessage, Hl7Error, parse, read_header

CHANNEL = "hospital"  # "an event is pending": wakes the dispatcher
PENDING = {"type": "pending"}
NOTIFIED_KINDS = ("ADM", "URG", "SOR", "DOC")  # what subscribers choose from; updates are kept, not announced
DISPATCHED_KINDS = (*NOTIFIED_KINDS, "ANN")  # a cancellation tells those told of what it cancels
IN_THREAD = 256 * 1024  # bytes beyond which a message is parsed in a thread (base64 documents)
FACILITY_MISMATCH = 204  # table 0357 "unknown key identifier": the facility is not the sender's


@dataclass(frozen=True)
class Sender:
    """Who is on the other end, from its certificate: the applicative box and its structure."""

    mailbox: str
    organisation_id: str
    finess: str

    @property
    def actor(self) -> Actor:
        return Actor(self.mailbox, "application")


@dataclass
class _Taken:
    """A message read and answered, waiting to be stored."""

    message: HospitalMessage
    data: bytes
    answer: bytes
    sender: Sender
    source: str
    stored: bool = False  # after the write: False when its MSH-10 was stored before (a resend)


@dataclass
class _Write:
    """The messages that go in one group-commit write, and the bus told once for all of them."""

    taken: list[_Taken] = field(default_factory=list)
    done: asyncio.Future | None = None
    announced: bool = False


class Feed:
    def __init__(self, engine: AsyncEngine, audit: AuditTrail, bus: EventBus, writes: GroupCommit, *,
                 facility: str) -> None:
        self._engine = engine
        self._audit = audit
        self._bus = bus
        self._writes = writes  # the mail store's: one writer for SQLite's one write lock
        self._facility = facility  # our MSH-3/4 in ACKs: the operator's host name
        self._open: _Write | None = None  # the write waiting for its turn, that new messages join

    async def receive(self, data: bytes, sender: Sender, *, source: str) -> bytes:
        """The ACK for one message (the bytes of one MLLP frame)."""
        try:
            header = read_header(data)
        except Hl7Error as error:
            return await self._refuse(error, sender, source, data)
        if sender.finess not in header.sending_facility:
            error = Hl7Error("AR", FACILITY_MISMATCH, f"MSH-4 {'^'.join(header.sending_facility)[:80]!r} is not "
                             f"the structure of this certificate (FINESS {sender.finess})", "MSH", field_no=4,
                             header=header)
            return await self._refuse(error, sender, source, data)
        try:  # a document message (up to [hl7] max_frame) is decoded off the event loop
            message = await asyncio.to_thread(parse, data) if len(data) > IN_THREAD else parse(data)
        except Hl7Error as error:
            stored = await self._stored_ack(sender, header.control_id)  # what was taken once stays taken
            return stored if stored is not None else await self._refuse(error, sender, source, data)
        taken = _Taken(message, data, ack.build(header, "AA", _ack_id(), facility=self._facility), sender, source)
        write = await self._store(taken)
        if not taken.stored:  # a resend: this MSH-10 is stored (the unique key says so, no read first)
            stored = await self._stored_ack(sender, header.control_id)
            if stored is None:
                raise RuntimeError(f"hl7: {header.control_id!r} of {sender.mailbox} neither stored nor found")
            await self._audit.record(sender.actor, "hl7.resend", target=header.control_id, source=source,
                                     message_type=header.message_type)
            return stored
        HL7_EVENTS.labels(kind=message.kind, structure=sender.finess).inc()
        if message.kind in DISPATCHED_KINDS and not write.announced:
            write.announced = True
            await self._bus.publish(CHANNEL, PENDING)
        return taken.answer

    async def _store(self, taken: _Taken) -> _Write:
        """Join the write waiting for the group commit (or start one); return once it committed."""
        write = self._open
        if write is None:
            write = self._open = _Write()
            write.done = asyncio.ensure_future(self._writes.run(lambda conn: self._write(conn, write)))
        write.taken.append(taken)
        try:  # shielded: a connection closing does not cancel the others' messages
            await asyncio.shield(write.done)
        except Exception:
            if len(write.taken) == 1:
                raise
            alone = _Write([taken])  # one bad message must not cost the others their ACK
            await self._writes.run(lambda conn: self._write(conn, alone))
            return alone
        return write

    async def _write(self, conn: AsyncConnection, write: _Write) -> None:
        if self._open is write:  # from now on, messages wait for the next write
            self._open = None
        now = datetime.now(timezone.utc)
        rows = [{"sender": t.sender.mailbox, "control_id": t.message.header.control_id,
                 "message_type": t.message.header.message_type, "ack_code": "AA",
                 "ack": t.answer.decode(t.message.header.encoding, "replace"), "size": len(t.data), "data": t.data,
                 "received_at": now} for t in write.taken]
        inserted = await conn.execute(_new_messages(conn), rows)
        ids = {(r.sender, r.control_id): r.id for r in inserted}
        stored: dict[int, _Taken] = {}
        for t in write.taken:  # a message sent twice in one write: the first is stored, the second a resend
            message_id = ids.pop((t.sender.mailbox, t.message.header.control_id), None)
            t.stored = message_id is not None
            if t.stored:
                stored[message_id] = t
        if not stored:
            return
        events = {r.message_id: r.id for r in await conn.execute(
            _NEW_EVENTS, [_event_row(t, message_id, now) for message_id, t in stored.items()])}
        await conn.execute(_NEW_AUDIT, [
            entry(t.sender.actor, "hl7.accept", target=t.message.header.control_id, source=t.source,
                  message_type=t.message.header.message_type, event=events[message_id], kind=t.message.kind,
                  size=len(t.data))
            for message_id, t in stored.items()])

    async def _stored_ack(self, sender: Sender, control_id: str) -> bytes | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(hl7_messages.c.ack, hl7_messages.c.data).where(and_(
                hl7_messages.c.sender == sender.mailbox, hl7_messages.c.control_id == control_id)))).first()
        if row is None:
            return None
        return row.ack.encode(read_header(row.data).encoding, "replace")

    async def _refuse(self, error: Hl7Error, sender: Sender, source: str, data: bytes) -> bytes:
        header: Header | None = error.header
        HL7_REFUSALS.labels(code=error.code).inc()
        await self._audit.record(sender.actor, "hl7.refuse", target=header.control_id if header else "",
                                 outcome="denied" if error.code == "AR" else "failed", source=source,
                                 code=error.code, condition=error.condition,
                                 where=f"{error.segment}-{error.field}" if error.segment else "",
                                 reason=error.text, size=len(data))
        return ack.build(header, error.code, _ack_id(), error=error, facility=self._facility)


# The write's statements, built once: each write built its three, more CPU than SQLite took to run them.
_NEW_MESSAGES: dict[str, Insert] = {}  # by dialect: ON CONFLICT is the dialect's construct
_NEW_EVENTS = insert(hospital_events).returning(hospital_events.c.id, hospital_events.c.message_id)
_NEW_AUDIT = insert(audit)


def _new_messages(conn: AsyncConnection) -> Insert:
    """INSERT of hl7_messages, a resend (its MSH-10 stored already) left out by the unique key."""
    name = conn.dialect.name
    if name not in _NEW_MESSAGES:
        _NEW_MESSAGES[name] = dialect_insert(conn, hl7_messages).on_conflict_do_nothing(
            index_elements=[hl7_messages.c.sender, hl7_messages.c.control_id]).returning(
            hl7_messages.c.id, hl7_messages.c.sender, hl7_messages.c.control_id)
    return _NEW_MESSAGES[name]


def _event_row(taken: _Taken, message_id: int, now: datetime) -> dict:
    message, sender = taken.message, taken.sender
    p = message.patient
    gp = message.gp
    return {
        "message_id": message_id, "organisation_id": sender.organisation_id, "kind": message.kind,
        "trigger": message.trigger, "patient_ins": p.ins,
        "patient": json.dumps({"ins_oid": p.ins_oid, "family_name": p.family_name, "given_name": p.given_name,
                               "birth_date": p.birth_date, "local_id": p.local_id,
                               "occurred": message.occurred_at.isoformat(),
                               "gp": {"family_name": gp.family_name, "given_name": gp.given_name,
                                      "source": gp.source, "problem": gp.problem} if gp else None,
                               "document": _document(message.document)},
                              ensure_ascii=False),
        "gp_rpps": gp.rpps if gp else "", "unit": message.unit[:200],
        # in UTC: SQLite keeps a date-time's wall clock and drops its offset (+04:00 at La Réunion)
        "occurred_at": message.occurred_at.astimezone(timezone.utc),
        "status": "pending" if message.kind in DISPATCHED_KINDS else "recorded", "created_at": now,
        "movement_id": message.movement_id[:64]}


def _document(document: Document | None) -> dict | None:
    """What the care circle's timeline shows of a document (its bytes stay in the message)."""
    if document is None:
        return None
    return {"type_code": document.type_code, "type_label": document.type_label[:200],
            "unique_id": document.unique_id[:200], "media_type": document.media_type, "size": len(document.data)}


def _ack_id() -> str:
    return "MSANTE" + secrets.token_hex(8)
