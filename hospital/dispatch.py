"""Who must know of a hospital event, and telling them: a durable job, like the outbound queue.

`hospital_events` rows wait `pending` after the ACK. For each, the dispatcher finds the GP
the hospital named (ROL/PD1 RPPS → directory → the GP's nominative box, ours or another
operator's; else an organisational box of a structure where the GP practises), writes the
notification mail, and in the same transaction as that mail records the notice, raises a
`patient` alert for the members of the patient's care circle (if one exists for that INS),
tells the patient's subscribers (hospital/subscriptions.py: mails, alerts, a notice each),
puts the event in that circle's timeline (hospital/timeline.py), starts each notice's
receipts (hospital/receipts.py) and marks the event dispatched. A crash before that commit
leaves the event pending and nothing sent; after it, everything done: each event is notified
exactly once, restarts included. When nobody can be told, the reason is kept ("no GP given", "GP has no MSSanté box"…): coordinators count them.
"""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Awaitable, Callable, TypeVar

from sqlalchemy import and_, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mailserver import dsn, headers
from mailserver.mailstore import Accepted, MailStore, Recipient
from store.audit import Actor, AuditTrail
from store.db import dialect_insert, utc
from store.events import EventBus, run_job
from store.schema import (activities, alerts, circle_members, circles, hl7_messages, hospital_events,
                          hospital_notices, mailboxes, organisations, professionals)

from . import notice, receipts, subscriptions, timeline
from .feed import CHANNEL
from .message import parse

log = logging.getLogger("msante.hl7")
T = TypeVar("T")
BATCH = 100  # pending events read at a time
CONCURRENT = 8  # events dispatched at once, their mails in one group commit; more would hold up the feed's ACKs
POLL_SECONDS = 30.0  # a wake-up lost (another process stored the event) costs at most this
NO_GP = "no GP given"
NO_BOX = "GP has no MSSanté box"
UNKNOWN_GP = "GP unknown to the directory"
# Another operator's box: a DSN tells the hospital's box when the mail is delivered or fails. Ours:
# the transaction that stores the mail in the GP's INBOX is the delivery, recorded on the notice
# as it commits, so no report is written to the hospital's box (it doubled the work per event).
NOTIFY_REMOTE = dsn.RcptDsn(notify=frozenset({"SUCCESS", "FAILURE"}))
NOTIFY_LOCAL = dsn.RcptDsn(notify=frozenset({"NEVER"}))
ALERT_KIND = "patient"
TITLES = {"ADM": "Admission", "URG": "Passage aux urgences", "SOR": "Sortie d'hospitalisation",
          "DOC": "Nouveau document"}


@dataclass(frozen=True)
class Target:
    address: str
    mailbox_id: int | None  # None: another operator's box, through the relay queue
    name: str
    role: str  # gp, gp_structure


class Dispatcher:
    def __init__(self, engine: AsyncEngine, mailstore: MailStore, audit: AuditTrail, bus: EventBus, *,
                 domains: tuple[str, ...], poll_seconds: float = POLL_SECONDS) -> None:
        self._engine = engine
        self._poll = poll_seconds
        self._mailstore = mailstore
        self._audit = audit
        self._bus = bus
        self._hostname = domains[0]

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch what is pending, then sleep until the feed stores more, POLL_SECONDS, or stop."""
        async def poll() -> float:
            return self._poll
        await run_job(self._bus, CHANNEL, stop, self.run_once, poll, "hospital dispatch")

    async def run_once(self) -> int:
        """Dispatch every pending event; returns how many."""
        done = 0
        while True:
            async with self._engine.connect() as conn:
                rows = (await conn.execute(
                    select(hospital_events, hl7_messages.c.sender)
                    .join(hl7_messages, hl7_messages.c.id == hospital_events.c.message_id)
                    .where(hospital_events.c.status == "pending").order_by(hospital_events.c.id).limit(BATCH))).all()
            found: dict = {}  # the pass's directory answers, shared by its chunks
            for start in range(0, len(rows), CONCURRENT):  # their mails share group commits
                async with self._engine.connect() as conn:
                    lookups = _Lookups(conn, found)
                    await asyncio.gather(*(self.dispatch(row, lookups) for row in rows[start:start + CONCURRENT]))
            done += len(rows)
            if len(rows) < BATCH:
                return done

    async def dispatch(self, event, lookups: "_Lookups") -> None:  # noqa: ANN001 - hospital_events + sender
        patient = json.loads(event.patient)
        sender = event.sender
        # the message itself (up to [hl7] max_frame) only for a document: an ADT event has all it needs
        data = await lookups.read(None, lambda conn: _message_data(conn, event.message_id)) \
            if event.kind == "DOC" else b""
        hospital, contact = await lookups.read(("hospital", event.organisation_id),
                                               lambda conn: _hospital(conn, event.organisation_id))
        contact = contact or sender
        target, reason = await lookups.read(("gp", event.gp_rpps, json.dumps(patient.get("gp"), sort_keys=True)),
                                            lambda conn: _target(conn, event.gp_rpps, patient.get("gp")))
        members = await lookups.read(("circle", event.patient_ins),
                                     lambda conn: _circle_members(conn, event.patient_ins))
        plan = await lookups.read(("plan", event.patient_ins, event.kind), lambda conn: subscriptions.plan(
            conn, event.patient_ins, event.kind, members, datetime.now(timezone.utc)))
        alert_rows = [_alert_row(event, patient, audience) for audience in plan.alerts]
        actor = Actor(sender, "application")
        facts = notice.Notice(
            kind=event.kind, patient={**patient, "ins": event.patient_ins}, occurred=_occurred(event, patient),
            unit=event.unit, hospital=hospital, sender=sender, contact=contact, recipient="", recipient_name="",
            event_id=event.id)
        # subscribers' mails (the GP's box once): written before the transaction, stored in it
        extra = [m for m in plan.mails if not (target and m.address == target.address)]
        messages = await self._messages(facts, [t for t in [target, *extra] if t and t.address], data)
        gp_message = messages.pop(0) if target else b""
        outgoing = [(m, messages.pop(0) if m.address else b"", Recipient(
            m.address, NOTIFY_LOCAL if m.mailbox_id else NOTIFY_REMOTE, m.mailbox_id) if m.address else None)
            for m in extra]
        mail_events: list = []
        items: list[dict] = []  # the event in its patient's circle(s), announced after the commit

        async def finish(conn: AsyncConnection, accepted: Accepted | None) -> list[dict]:
            now = datetime.now(timezone.utc)
            marked = await conn.execute(update(hospital_events).where(and_(
                hospital_events.c.id == event.id, hospital_events.c.status == "pending")).values(
                status="dispatched", dispatched_at=now))
            if marked.rowcount != 1:
                raise _AlreadyDone()
            status = "not_notified"
            if accepted is not None:
                status = "delivered" if accepted.delivered else "queued" if accepted.queued else "failed"
            await conn.execute(insert(hospital_notices), {
                "event_id": event.id, "recipient": target.address if target else "",
                "role": target.role if target else "gp", "status": status, "reason": reason,
                "envelope_id": accepted.envelope_id if accepted else None, "created_at": now})
            raised = []
            if alert_rows:  # one statement for the whole circle; a replayed event raises nothing new
                statement = dialect_insert(conn, alerts).on_conflict_do_nothing(
                    index_elements=[alerts.c.audience, alerts.c.key]).returning(alerts.c.id, alerts.c.audience)
                inserted = {r.audience: r.id for r in await conn.execute(
                    statement, [{**row, "created_at": now} for row in alert_rows])}
                raised = [{"id": inserted[row["audience"]], **row, "data": json.loads(row["data"]),
                           "created_at": now.isoformat(), "acknowledged_by": None, "acknowledged_at": None}
                          for row in alert_rows if row["audience"] in inserted]
            mail_events.extend(await subscriptions.deliver(
                conn, self._mailstore, event_id=event.id, mails=outgoing, alerts=plan.subscribed_alerts, sender=sender,
                actor=actor, audit=self._audit, now=now))
            await receipts.dispatched(conn, event.id, now)
            items[:] = await timeline.record(conn, event, patient, title=TITLES[event.kind], hospital=hospital,
                                             sender=sender, occurred=_occurred(event, patient), now=now)
            if accepted is None:
                await self._audit.record(actor, "hospital.not_notified", target=str(event.id), conn=conn,
                                         kind=event.kind, reason=reason)
            return raised

        try:
            if target is None:
                raised = await self._mailstore.writes.run(lambda conn: finish(conn, None))
            else:
                holder: dict = {}

                async def alongside(conn: AsyncConnection, accepted: Accepted) -> None:
                    holder["raised"] = await finish(conn, accepted)
                await self._mailstore.accept(
                    message=gp_message, message_id=headers.read(gp_message).get("message-id") or "", sender=sender,
                    actor=actor, audit=self._audit,
                    audit_action="hospital.notify", source="hl7", mail_dsn=dsn.MailDsn(ret="HDRS"),
                    recipients=[Recipient(target.address, NOTIFY_LOCAL if target.mailbox_id else NOTIFY_REMOTE,
                                          target.mailbox_id)], alongside=alongside)
                raised = holder["raised"]
        except _AlreadyDone:
            return
        await self._mailstore.publish(mail_events)
        await timeline.announce(self._bus, items)
        for alert in raised:
            await self._bus.publish(alert["audience"], {"type": "alert", "alert": alert})


    async def _messages(self, facts: notice.Notice, recipients: list, data: bytes) -> list[bytes]:
        """One mail per recipient (a Target or a subscriber's MailTarget: address, name)."""
        def build() -> list[bytes]:
            base = replace(facts, document=parse(data).document) if facts.kind == "DOC" else facts
            return [notice.build(replace(base, recipient=r.address, recipient_name=r.name), hostname=self._hostname)
                    for r in recipients]
        if facts.kind == "DOC":  # the document (up to [hl7] max_frame) is decoded and zipped off the loop
            return await asyncio.to_thread(build)
        return build()


class _Lookups:
    """The directory reads of one pass, each made once: the events of a pass mostly share their
    hospital, and often their GP or patient (a stay's admission, report and discharge). Read
    right before the events' own transactions, as each event's were before; the dispatches of a
    chunk share one connection, in turn."""

    def __init__(self, conn: AsyncConnection, found: dict) -> None:
        self._conn = conn
        self._found = found
        self._turn = asyncio.Lock()

    async def read(self, key: tuple | None, query: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """`query`'s answer, asked once per pass for a `key` (None: not kept)."""
        async with self._turn:
            if key is None:
                return await query(self._conn)
            if key not in self._found:
                self._found[key] = await query(self._conn)
            return self._found[key]


class _AlreadyDone(Exception):
    """Another dispatcher marked the event first: this transaction rolls back, mail included."""


async def _message_data(conn: AsyncConnection, message_id: int) -> bytes:
    return (await conn.execute(select(hl7_messages.c.data).where(hl7_messages.c.id == message_id))).scalar_one()


async def _hospital(conn: AsyncConnection, organisation_id: str) -> tuple[str, str]:
    """The structure's name and an organisational box of it to name as the contact ("" if none)."""
    row = (await conn.execute(
        select(organisations.c.name, mailboxes.c.address)
        .select_from(organisations.outerjoin(mailboxes, and_(
            mailboxes.c.organisation_id == organisations.c.id, mailboxes.c.kind == "organisational",
            mailboxes.c.retired_at.is_(None))))
        .where(organisations.c.id == organisation_id).order_by(mailboxes.c.address).limit(1))).first()
    return (row.name, row.address or "") if row else (organisation_id, "")


async def _target(conn: AsyncConnection, rpps: str, gp: dict | None) -> tuple[Target | None, str]:
    if not rpps:
        if gp and gp.get("problem"):
            return None, f"GP identifier unusable: {gp['problem']}"
        return None, NO_GP
    person = (await conn.execute(select(professionals).where(and_(
        professionals.c.rpps == rpps, professionals.c.retired_at.is_(None))))).first()
    if person is None:
        return None, f"{UNKNOWN_GP} (RPPS {rpps})"
    name = " ".join(part for part in ("Dr" if person.profession_code == "10" else "", person.given_name.title(),
                                      person.family_name) if part)
    box = await subscriptions.nominative_box(conn, person.idnat)
    if box is not None:
        return Target(box.address, box.id if box.local else None, name, "gp"), ""
    structure = (await conn.execute(
        select(mailboxes.c.id, mailboxes.c.address, mailboxes.c.local, mailboxes.c.service)
        .select_from(mailboxes.join(activities, activities.c.organisation_id == mailboxes.c.organisation_id))
        .where(and_(activities.c.idnat == person.idnat, activities.c.retired_at.is_(None),
                    mailboxes.c.kind == "organisational", mailboxes.c.retired_at.is_(None)))
        .order_by(mailboxes.c.address).limit(1))).first()
    if structure is not None:
        return Target(structure.address, structure.id if structure.local else None,
                      structure.service or structure.address, "gp_structure"), f"sent to the GP's structure ({name})"
    return None, NO_BOX


async def _circle_members(conn: AsyncConnection, ins: str) -> list[str]:
    if not ins:
        return []
    rows = await conn.execute(select(circle_members.c.idnat).join(circles, circles.c.id == circle_members.c.circle_id)
                              .where(circles.c.patient_ins == ins).order_by(circle_members.c.idnat))
    return [r.idnat for r in rows]


def _alert_row(event, patient: dict, audience: str) -> dict:  # noqa: ANN001
    who = f"{patient.get('family_name', '')} {patient.get('given_name', '').title()}".strip()
    return {"audience": audience, "kind": ALERT_KIND, "key": f"{receipts.ALERT_KEY}{event.id}",
            "title": f"{TITLES[event.kind]} : {who}" + (f" ({event.unit})" if event.unit else ""),
            "data": json.dumps({"event": event.id, "kind": event.kind, "ins": event.patient_ins,
                                "occurred": patient.get("occurred", "")}, ensure_ascii=False, sort_keys=True)}


def _occurred(event, patient: dict) -> datetime:  # noqa: ANN001
    try:
        return datetime.fromisoformat(patient["occurred"])
    except (KeyError, ValueError):
        return utc(event.occurred_at)
