"""A hospital cancels an event: ADT^A11 (admission), A13 (discharge), or any message whose ZBE-4
is CANCEL. Run by the dispatcher (hospital/dispatch.py), in one transaction, exactly once.

The cancelled event is the hospital's own earlier event with the movement id (ZBE-1) the
cancellation names, of a kind it may cancel (A11: an admission or ED visit; A13: a discharge;
ZBE-4 CANCEL on another trigger: whatever that movement was). Without ZBE-1, the patient's
latest such event from that hospital. Then:
- not dispatched yet: it is marked cancelled and the dispatcher never tells anyone of it;
- dispatched: marked cancelled; each notice mail still queued for another operator is
  withdrawn (its delivery `withdrawn`, the notice's history says so); each recipient already
  told gets a short cancellation: a mail "Annulation : <subject>" answering the notice (same
  MSSanté headers) to a mail recipient, a `patient` alert to an alert's audience (circle
  members included); the circle's timeline item is marked cancelled and a cancellation item
  follows it, so live clients and history both show it. Each cancellation is a notice of the
  cancelling event, with its own receipts.
A cancellation that finds nothing to cancel is recorded and audited, nothing else. The window
left: a notice mail the relay is sending at the very moment it is withdrawn may still arrive;
its cancellation is then not sent.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import datetime

from sqlalchemy import and_, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from mailserver import dsn, headers
from mailserver.mailstore import QUEUED, MailStore, Recipient, free_bodies
from store.audit import Actor, AuditTrail
from store.lease import Lease
from store.schema import (alerts, circle_messages, deliveries, envelopes, hospital_events,
                          hospital_notice_history, hospital_notices, mailboxes)

from . import notice, receipts, timeline
from .notice import NOTIFY_LOCAL, NOTIFY_REMOTE, TITLES, occurred_of

KIND = "ANN"
CANCELS = {"A11": ("ADM", "URG"), "A13": ("SOR",)}  # trigger → the kinds it cancels; others: by movement only
ALERT_KEY = "hospital-cancel:"
TOLD = ("delivered", "queued", "alerted")  # notice statuses whose recipient heard of the event


@dataclass(frozen=True)
class Hospital:
    """What the dispatcher knows of the cancelling hospital."""

    sender: str  # its applicative box
    name: str
    contact: str
    hostname: str


@dataclass
class Told:
    """What to announce once the transaction commits."""

    mail_events: list = field(default_factory=list)
    items: list[dict] = field(default_factory=list)
    alerts: list[dict] = field(default_factory=list)


async def cancel(conn: AsyncConnection, mailstore: MailStore, audit: AuditTrail, event, hospital: Hospital,  # noqa: ANN001
                 now: datetime) -> Told | None:
    """Carry out the cancellation `event` (a pending hospital_events row); None when another
    dispatcher took it first (nothing was written)."""
    claimed = await conn.execute(update(hospital_events).where(and_(
        hospital_events.c.id == event.id, hospital_events.c.status == "pending")).values(
        status="dispatched", dispatched_at=now, **Lease.cleared()))
    if claimed.rowcount != 1:
        return None
    actor = Actor(hospital.sender, "application")
    target = await _target(conn, event)
    told = Told()
    if target is None:
        await audit.record(actor, "hospital.cancel", target=str(event.id), conn=conn, outcome="failed",
                           trigger=event.trigger, movement=event.movement_id, reason="no event to cancel")
        return told
    withdrawn = await conn.execute(update(hospital_events).where(and_(
        hospital_events.c.id == target.id, hospital_events.c.status == "pending")).values(
        status="cancelled", cancelled_by=event.id))
    if withdrawn.rowcount:  # never told: nobody will be
        await audit.record(actor, "hospital.cancel", target=str(event.id), conn=conn, cancelled=target.id,
                           kind=target.kind, before="dispatch")
        return told
    await conn.execute(update(hospital_events).where(hospital_events.c.id == target.id).values(
        status="cancelled", cancelled_by=event.id))
    patient = json.loads(target.patient)
    facts = notice.Notice(
        kind=target.kind, patient={**patient, "ins": target.patient_ins}, occurred=occurred_of(target, patient),
        unit=target.unit, hospital=hospital.name, sender=hospital.sender, contact=hospital.contact,
        recipient="", recipient_name="", event_id=event.id)
    rows = (await conn.execute(
        select(hospital_notices, envelopes.c.message_id).outerjoin(envelopes, envelopes.c.id == hospital_notices.c.envelope_id)
        .where(hospital_notices.c.event_id == target.id, hospital_notices.c.status.in_(TOLD))
        .order_by(hospital_notices.c.id))).all()
    notices, audiences, withdrawn_count = [], [], 0
    for row in rows:
        if row.status == "alerted":
            audiences.append(row.recipient)
            notices.append({"recipient": row.recipient, "role": row.role, "status": "alerted", "envelope_id": None})
            continue
        if await _withdraw(conn, row, now):
            withdrawn_count += 1
            continue
        box = (await conn.execute(select(mailboxes.c.id, mailboxes.c.local).where(
            mailboxes.c.address == row.recipient))).first()
        local = box.id if box is not None and box.local else None
        message = notice.cancellation(replace(facts, recipient=row.recipient), original_id=row.message_id or "",
                                      hostname=hospital.hostname)
        accepted, events = await mailstore.store(
            conn, message=message, message_id=headers.read(message).get("message-id") or "", sender=hospital.sender,
            actor=actor, audit=audit, audit_action="hospital.cancel_notify", source="hl7",
            mail_dsn=dsn.MailDsn(ret="HDRS"),
            recipients=[Recipient(row.recipient, NOTIFY_LOCAL if local else NOTIFY_REMOTE, local)])
        told.mail_events += events + ([(0, QUEUED)] if accepted.queued else [])
        notices.append({"recipient": row.recipient, "role": row.role, "envelope_id": accepted.envelope_id,
                        "status": "delivered" if accepted.delivered else "queued" if accepted.queued else "failed"})
    circle_audiences = (await conn.execute(select(alerts.c.audience).where(
        alerts.c.key == f"{receipts.ALERT_KEY}{target.id}"))).scalars().all()
    title = f"Annulation : {TITLES[target.kind]} : {notice.patient_name(patient)}" + (f" ({target.unit})" if target.unit else "")
    data = json.dumps({"event": event.id, "cancels": target.id, "kind": KIND, "ins": target.patient_ins},
                      sort_keys=True)
    told.alerts = await timeline.raise_alerts(conn, [
        {"audience": a, "kind": timeline.ALERT_KIND, "key": f"{ALERT_KEY}{target.id}", "title": title, "data": data}
        for a in dict.fromkeys([*circle_audiences, *audiences])], now)
    if notices:
        await conn.execute(insert(hospital_notices), [{**n, "event_id": event.id, "reason": "", "created_at": now}
                                                      for n in notices])
    await receipts.dispatched(conn, [event.id], now)
    told.items = await _timeline(conn, target, event, title, hospital, now)
    await audit.record(actor, "hospital.cancel", target=str(event.id), conn=conn, cancelled=target.id,
                       kind=target.kind, before="", told=len(notices), withdrawn=withdrawn_count,
                       alerts=len(told.alerts))
    return told


async def _target(conn: AsyncConnection, event):  # noqa: ANN001, ANN202 - hospital_events rows
    kinds = CANCELS.get(event.trigger)
    query = select(hospital_events).where(
        hospital_events.c.organisation_id == event.organisation_id, hospital_events.c.id < event.id,
        hospital_events.c.kind != KIND, hospital_events.c.status.in_(("pending", "dispatched")))
    if kinds:
        query = query.where(hospital_events.c.kind.in_(kinds))
    if event.movement_id:
        query = query.where(hospital_events.c.movement_id == event.movement_id)
    elif kinds and event.patient_ins:
        query = query.where(hospital_events.c.patient_ins == event.patient_ins)
    else:
        return None
    return (await conn.execute(query.order_by(hospital_events.c.id.desc()).limit(1))).first()


async def _withdraw(conn: AsyncConnection, row, now: datetime) -> bool:  # noqa: ANN001
    """A notice mail still in the outbound queue does not go out."""
    if row.envelope_id is None or row.status != "queued":
        return False
    taken = await conn.execute(update(deliveries).where(and_(
        deliveries.c.envelope_id == row.envelope_id, deliveries.c.recipient == row.recipient,
        deliveries.c.status == "queued")).values(status="withdrawn", last_error="event cancelled", updated_at=now,
                                                 **Lease.cleared()))  # a node sending it: its outcome is refused
    if not taken.rowcount:
        return False
    await conn.execute(insert(hospital_notice_history), {"notice_id": row.id, "status": "withdrawn",
                                                         "reason": "event cancelled", "at": now})
    body = (await conn.execute(select(envelopes.c.body_id).where(envelopes.c.id == row.envelope_id))).scalar()
    if body is not None:
        await free_bodies(conn, [body])
    return True


async def _timeline(conn: AsyncConnection, target, event, title: str, hospital: Hospital,  # noqa: ANN001
                    now: datetime) -> list[dict]:
    """The event's items marked cancelled; a cancellation item after each, as frames show it."""
    client_id = f"{receipts.ALERT_KEY}{target.id}"
    rows = (await conn.execute(select(circle_messages.c.id, circle_messages.c.circle_id, circle_messages.c.seq,
                                      circle_messages.c.data).where(and_(
        circle_messages.c.client_id == client_id, circle_messages.c.kind == timeline.KIND,
        circle_messages.c.author.is_(None))).order_by(circle_messages.c.circle_id))).all()
    author = {"id": hospital.sender, "name": hospital.name}
    items = []
    for row in rows:
        data = json.loads(row.data)
        data["event"]["cancelled"] = {"at": now.isoformat(), "by": event.id}
        await conn.execute(update(circle_messages).where(circle_messages.c.id == row.id).values(
            data=json.dumps(data, ensure_ascii=False, sort_keys=True)))
        details = {"id": event.id, "kind": KIND, "cancels": {"id": target.id, "kind": target.kind, "seq": row.seq},
                   "unit": target.unit, "occurred": now.isoformat(), "hospital": hospital.name, "document": None}
        items += await timeline.add_items(conn, [row.circle_id], author=author, client_id=f"{ALERT_KEY}{target.id}",
                                          text=title, details=details, now=now)
    return items
