"""Storing what hospitals send: one HL7 message in, one ACK out, the ACK only after the commit.

The ACK is the hospital's receipt, as SMTP's 250: once it reads AA it forgets the message, so
the message, the event it means and the audit row commit together (group commit, as mail)
before the ACK is written. MSH-10 names a message for its sender: a resend (the hospital did
not read our ACK, its connection dropped) finds the stored row and gets the same ACK byte for
byte, and nothing is stored or notified twice (a unique key on sender and MSH-10 settles two
resends racing on two connections).

A hospital speaks only for its own structure: MSH-4 (sending facility) must carry the FINESS
of the structure its certificate's applicative box belongs to, else AR, audited. Refused and
malformed messages are audited and not stored. The event waits, `pending`, for the dispatcher
(hospital/dispatch.py), which is woken through the bus.
"""
from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import and_, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from store.audit import Actor, AuditTrail
from store.events import EventBus
from store.group_commit import GroupCommit
from store.schema import hl7_messages, hospital_events
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


class Feed:
    def __init__(self, engine: AsyncEngine, audit: AuditTrail, bus: EventBus, writes: GroupCommit, *,
                 facility: str) -> None:
        self._engine = engine
        self._audit = audit
        self._bus = bus
        self._writes = writes  # the mail store's: one writer for SQLite's one write lock
        self._facility = facility  # our MSH-3/4 in ACKs: the operator's host name

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
        answer = ack.build(header, "AA", _ack_id(), facility=self._facility)
        try:
            await self._writes.run(lambda conn: self._store(conn, message, data, answer, sender, source))
        except IntegrityError:  # a resend: this MSH-10 is stored (the unique key says so, no read first)
            stored = await self._stored_ack(sender, header.control_id)
            if stored is None:
                raise
            await self._audit.record(sender.actor, "hl7.resend", target=header.control_id, source=source,
                                     message_type=header.message_type)
            return stored
        HL7_EVENTS.labels(kind=message.kind, structure=sender.finess).inc()
        if message.kind in DISPATCHED_KINDS:
            await self._bus.publish(CHANNEL, PENDING)
        return answer

    async def _store(self, conn: AsyncConnection, message: HospitalMessage, data: bytes, answer: bytes,
                     sender: Sender, source: str) -> int:
        now = datetime.now(timezone.utc)
        header = message.header
        message_id = (await conn.execute(insert(hl7_messages).returning(hl7_messages.c.id), {
            "sender": sender.mailbox, "control_id": header.control_id, "message_type": header.message_type,
            "ack_code": "AA", "ack": answer.decode(header.encoding, "replace"), "size": len(data), "data": data,
            "received_at": now})).scalar_one()
        p = message.patient
        gp = message.gp
        event_id = (await conn.execute(insert(hospital_events).returning(hospital_events.c.id), {
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
            "movement_id": message.movement_id[:64]})).scalar_one()
        await self._audit.record(sender.actor, "hl7.accept", target=header.control_id, source=source, conn=conn,
                                 message_type=header.message_type, event=event_id, kind=message.kind,
                                 size=len(data))
        return event_id

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


def _document(document: Document | None) -> dict | None:
    """What the care circle's timeline shows of a document (its bytes stay in the message)."""
    if document is None:
        return None
    return {"type_code": document.type_code, "type_label": document.type_label[:200],
            "unique_id": document.unique_id[:200], "media_type": document.media_type, "size": len(document.data)}


def _ack_id() -> str:
    return "MSANTE" + secrets.token_hex(8)
