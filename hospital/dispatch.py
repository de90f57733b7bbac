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

Every node runs the dispatch: a pass leases a batch of pending events (store/lease.py) so that
two nodes do not build the same mails; the transaction's `pending` check keeps an event whose
lease ran out (a stalled node) from being notified twice, and a dead node's events are taken
over when their lease ends.
"""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, TypeVar

from sqlalchemy import and_, bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mailserver import bodies, dsn, headers
from mailserver.mailstore import QUEUED, Mail, MailStore, Recipient
from store.audit import Actor, AuditTrail, entry
from store.events import EventBus, run_job
from store.lease import LEASE_SECONDS, Lease
from store.schema import (activities, audit, circle_members, circles, hl7_messages, hospital_events,
                          hospital_notices, mailboxes, organisations, professionals)
from web.metrics import HOSPITAL_NOTIFICATIONS

from . import cancels, notice, receipts, subscriptions, timeline
from .notice import NOTIFY_LOCAL, NOTIFY_REMOTE, TITLES, occurred_of
from .timeline import ALERT_KIND
from .feed import CHANNEL
from .message import parse

log = logging.getLogger("msante.hl7")
T = TypeVar("T")
BATCH = 100  # pending events read at a time
# Events dispatched in one write. The feed's ACKs share that write's group commit, so a chunk
# holds them up; but each write has its own statements to run, and with 8 the dispatcher fell
# behind under load. `bench/hl7.py --messages 6000`, alternating: 8 → 16 → 32 took the ACK-to-alert
# p99 from 376-451 to 253-327 to 241-262 ms and events/s from 267-291 to 266-310 to 283-325, ACK
# p99 from 32-34 to 38-43 ms (still under issue 11's 50).
CONCURRENT = 32
POLL_SECONDS = 30.0  # a wake-up lost (another process stored the event) costs at most this
NO_GP = "no GP given"
NO_BOX = "GP has no MSSanté box"
UNKNOWN_GP = "GP unknown to the directory"
NOTIFIED = ("delivered", "queued")  # the GP's notice statuses that count as told (hospital/indicators.py)
REASONS = ("no_gp", "gp_without_box", "unknown_rpps", "delivery_failed", "pending")


@dataclass(frozen=True)
class Target:
    address: str
    mailbox_id: int | None  # None: another operator's box, through the relay queue
    name: str
    role: str  # gp, gp_structure


class Dispatcher:
    def __init__(self, engine: AsyncEngine, mailstore: MailStore, audit: AuditTrail, bus: EventBus, *,
                 domains: tuple[str, ...], poll_seconds: float = POLL_SECONDS,
                 lease_seconds: float = LEASE_SECONDS) -> None:
        self._engine = engine
        self._lease = Lease(engine, hospital_events, seconds=lease_seconds, writes=mailstore.writes)
        self._poll = poll_seconds
        self._mailstore = mailstore
        self._audit = audit
        self._bus = bus
        self._hostname = domains[0]

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch what is pending, then sleep until the feed stores more, POLL_SECONDS, another
        node's lease on a pending event ends (it may be dead), or stop."""
        await self._lease.recover(hospital_events.c.status == "pending")
        async def poll() -> float:
            soonest = await self._lease.next_claimable(hospital_events.c.status == "pending")
            if soonest is None:
                return self._poll
            return max(0.05, min(self._poll, (soonest - datetime.now(timezone.utc)).total_seconds()))
        await run_job(self._bus, CHANNEL, stop, self.run_once, poll, "hospital dispatch")

    async def run_once(self) -> int:
        """Dispatch every pending event no other process holds; returns how many."""
        done = 0
        async with self._lease.working():
            while True:
                ids = await self._lease.claim(hospital_events.c.status == "pending", [hospital_events.c.id], BATCH)
                if ids:
                    done += await self._dispatch_all(ids)
                if len(ids) < BATCH:
                    return done

    async def _dispatch_all(self, ids: list[int]) -> int:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(
                select(hospital_events, hl7_messages.c.sender)
                .join(hl7_messages, hl7_messages.c.id == hospital_events.c.message_id)
                .where(hospital_events.c.id.in_(ids), hospital_events.c.status == "pending")
                .order_by(hospital_events.c.id))).all()
        lookups = _Lookups(self._engine)  # the pass's directory answers, shared by its chunks
        chunks = _chunks(rows)
        # each chunk's mails are built while the one before it is written (the writer's turn)
        planning = asyncio.ensure_future(self._plan_chunk(chunks[0], lookups)) if chunks else None
        try:
            for n, chunk in enumerate(chunks):
                planned = await planning
                planning = asyncio.ensure_future(self._plan_chunk(chunks[n + 1], lookups)) \
                    if n + 1 < len(chunks) else None
                await self._write_chunk(chunk, planned, lookups)
        finally:
            if planning is not None:  # a write failed: the pass ends, its rows stay pending
                planning.cancel()
                await asyncio.gather(planning, return_exceptions=True)
        return len(rows)

    async def dispatch(self, event, lookups: "_Lookups") -> None:  # noqa: ANN001 - hospital_events + sender
        await self.dispatch_chunk([event], lookups)

    async def dispatch_chunk(self, events: list, lookups: "_Lookups") -> None:
        """Tell of these events in one write (a cancellation alone): their mails are built
        first, then stored with everything else the events mean, many rows a statement."""
        await self._write_chunk(events, await self._plan_chunk(events, lookups), lookups)

    async def _plan_chunk(self, events: list, lookups: "_Lookups") -> "list[_Planned] | None":
        """The chunk's events planned (None for a cancellation: it reads what it cancels in its write)."""
        if events[0].kind == cancels.KIND:
            return None
        return list(await asyncio.gather(*(self._plan(event, lookups) for event in events)))

    async def _write_chunk(self, events: list, planned: "list[_Planned] | None", lookups: "_Lookups") -> None:
        if planned is None:
            await self._cancel(events[0], lookups)
            return
        try:
            done = await self._mailstore.writes.run(lambda conn: self._finish(conn, planned))
        except Exception:
            if len(planned) == 1:
                raise
            log.exception("hospital dispatch: a chunk of %d events failed; each alone now", len(planned))
            failed = [r for r in await asyncio.gather(*(self.dispatch_chunk([e], lookups) for e in events),
                                                      return_exceptions=True) if isinstance(r, Exception)]
            if failed:
                raise failed[0]
            return
        for told in done:
            notified = told.status in NOTIFIED
            HOSPITAL_NOTIFICATIONS.labels(outcome="notified" if notified else "not_notified",
                                          reason="" if notified else reason_key(told.status, told.reason)).inc()
        await self._mailstore.publish([e for told in done for e in told.mail_events])
        items = [i for told in done for i in told.items]
        await timeline.announce(self._bus, items)
        await receipts.announce(self._bus, [receipts.notice(i["circle"], i["event"]["id"], "dispatched")
                                            for i in items])
        await timeline.publish_alerts(self._bus, [a for told in done for a in told.alerts])

    async def _plan(self, event, lookups: "_Lookups") -> "_Planned":  # noqa: ANN001 - hospital_events + sender
        """Who is told of `event` and the mails they get, before the write."""
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
                                     lambda conn: members_of(conn, event.patient_ins))
        plan = await lookups.read(("plan", event.patient_ins, event.kind), lambda conn: subscriptions.plan(
            conn, event.patient_ins, event.kind, members, datetime.now(timezone.utc)))
        circle_ids = await lookups.read(("circles", event.patient_ins),
                                        lambda conn: timeline.circles_of(conn, event.patient_ins))
        facts = notice.Notice(
            kind=event.kind, patient={**patient, "ins": event.patient_ins}, occurred=occurred_of(event, patient),
            unit=event.unit, hospital=hospital, sender=sender, contact=contact, recipient="", recipient_name="",
            event_id=event.id)
        # subscribers' mails (the GP's box once): written before the transaction, stored in it
        extra = [m for m in plan.mails if not (target and m.address == target.address)]
        messages = await self._messages(facts, [t for t in [target, *extra] if t and t.address], data)
        gp_message = messages.pop(0) if target else b""
        outgoing = [(m, messages.pop(0) if m.address else b"", Recipient(
            m.address, NOTIFY_LOCAL if m.mailbox_id else NOTIFY_REMOTE, m.mailbox_id) if m.address else None)
            for m in extra]
        # the GP's mail read for IMAP here, not in the write that the feed's ACKs queue behind
        gp_facts = bodies.facts_of(gp_message) if gp_message else None
        return _Planned(event, patient, hospital, target, reason, gp_message, gp_facts, outgoing, plan,
                        [_alert_row(event, patient, audience) for audience in plan.alerts], circle_ids)

    async def _finish(self, conn: AsyncConnection, planned: list["_Planned"]) -> list["_Told"]:
        """In one transaction: the events still pending marked dispatched (another dispatcher's
        are left alone, nothing written for them), each one's mails, notices, alerts, receipts and
        timeline items; what to announce once committed."""
        now = datetime.now(timezone.utc)
        claimed = set((await conn.execute(_CLAIM, {"ids": [p.event.id for p in planned], "now": now})).scalars())
        planned = [p for p in planned if p.event.id in claimed]
        mailed = [p for p in planned if p.target is not None]
        stored = dict(zip((p.event.id for p in mailed), await self._mailstore.store_many(conn, [Mail(
            p.gp_message, headers.read(p.gp_message).get("message-id") or "", p.event.sender,
            Actor(p.event.sender, "application"), "hospital.notify", "hl7", dsn.MailDsn(ret="HDRS"),
            (Recipient(p.target.address, NOTIFY_LOCAL if p.target.mailbox_id else NOTIFY_REMOTE,
                       p.target.mailbox_id),), p.gp_facts) for p in mailed])))
        done, notices, unheard = [], [], []
        for p in planned:
            event, target = p.event, p.target
            told = _Told(status="not_notified", reason=p.reason)
            accepted = None
            if target is not None:
                accepted, told.mail_events = stored[event.id]
                if accepted.queued:
                    told.mail_events.append((0, QUEUED))
                told.status = "delivered" if accepted.delivered else "queued" if accepted.queued else "failed"
            else:
                unheard.append(entry(Actor(event.sender, "application"), "hospital.not_notified",
                                     target=str(event.id), kind=event.kind, reason=p.reason))
            notices.append({"event_id": event.id, "recipient": target.address if target else "",
                            "role": target.role if target else "gp", "status": told.status, "reason": p.reason,
                            "envelope_id": accepted.envelope_id if accepted else None, "created_at": now})
            done.append(told)
        if not planned:
            return []
        await conn.execute(_NEW_NOTICES, notices)  # each GP's notice before its subscribers'
        raised: dict[str, list[dict]] = {}  # by key: each event's own (a replayed event raises nothing new)
        for alert in await timeline.raise_alerts(conn, [r for p in planned for r in p.alert_rows], now):
            raised.setdefault(alert["key"], []).append(alert)
        subscribed: list[dict] = []
        for p, told in zip(planned, done):
            told.alerts = raised.get(f"{receipts.ALERT_KEY}{p.event.id}", [])
            mail_events, notice_rows = await subscriptions.deliver(
                conn, self._mailstore, event_id=p.event.id, mails=p.outgoing, alerts=p.plan.subscribed_alerts,
                sender=p.event.sender, actor=Actor(p.event.sender, "application"), audit=self._audit, now=now)
            told.mail_events += mail_events
            subscribed += notice_rows
        if subscribed:
            await conn.execute(_NEW_NOTICES, subscribed)
        await receipts.dispatched(conn, [p.event.id for p in planned], now)
        items = await timeline.add(conn, [i for p in planned for i in timeline.event_items(
            p.event, p.patient, p.circle_ids, title=TITLES[p.event.kind], hospital=p.hospital, sender=p.event.sender,
            occurred=occurred_of(p.event, p.patient))], now)
        by_event: dict[int, list[dict]] = {}
        for item in items:
            by_event.setdefault(item["event"]["id"], []).append(item)
        for p, told in zip(planned, done):
            told.items = by_event.get(p.event.id, [])
        if unheard:
            await conn.execute(insert(audit), unheard)
        return done

    async def _cancel(self, event, lookups: "_Lookups") -> None:  # noqa: ANN001 - hospital_events + sender
        name, contact = await lookups.read(("hospital", event.organisation_id),
                                           lambda conn: _hospital(conn, event.organisation_id))
        hospital = cancels.Hospital(event.sender, name, contact or event.sender, self._hostname)
        told = await self._mailstore.writes.run(lambda conn: cancels.cancel(
            conn, self._mailstore, self._audit, event, hospital, datetime.now(timezone.utc)))
        if told is not None:
            await self._mailstore.publish(told.mail_events)
            await timeline.announce(self._bus, told.items)
            await timeline.publish_alerts(self._bus, told.alerts)

    async def _messages(self, facts: notice.Notice, recipients: list, data: bytes) -> list[bytes]:
        """One mail per recipient (a Target or a subscriber's MailTarget: address, name)."""
        def build() -> list[bytes]:
            base = replace(facts, document=parse(data).document) if facts.kind == "DOC" else facts
            return [notice.build(replace(base, recipient=r.address, recipient_name=r.name), hostname=self._hostname)
                    for r in recipients]
        if facts.kind == "DOC":  # the document (up to [hl7] max_frame) is decoded and zipped off the loop
            return await asyncio.to_thread(build)
        return build()


# The write's own statements, built once (with the chunk's ids bound): building one cost more
# CPU than SQLite took to run it.
_CLAIM = (update(hospital_events)
          .where(hospital_events.c.id.in_(bindparam("ids", expanding=True)), hospital_events.c.status == "pending")
          .values(status="dispatched", dispatched_at=bindparam("now", type_=hospital_events.c.dispatched_at.type),
                  **Lease.cleared())
          .returning(hospital_events.c.id))
_NEW_NOTICES = insert(hospital_notices)


class _Lookups:
    """The directory reads of one pass, each made once: the events of a pass mostly share their
    hospital, and often their GP or patient (a stay's admission, report and discharge). Each
    read has a pooled connection of its own, so a chunk's events read at once (taken in turn on
    one connection, they doubled the dispatch lag on PostgreSQL); an event asking what another
    is already reading waits for that answer."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._found: dict[tuple, asyncio.Future] = {}

    async def read(self, key: tuple | None, query: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """`query`'s answer, asked once per pass for a `key` (None: not kept)."""
        if key is None:
            return await self._ask(query)
        if key not in self._found:
            self._found[key] = asyncio.ensure_future(self._ask(query))
        return await asyncio.shield(self._found[key])  # one event cancelled does not cancel the others' read

    async def _ask(self, query: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        async with self._engine.connect() as conn:
            return await query(conn)


@dataclass
class _Planned:
    """An event as the write needs it: who is told, the mails already built."""

    event: Any  # hospital_events row + sender
    patient: dict
    hospital: str
    target: Target | None
    reason: str
    gp_message: bytes
    gp_facts: dict | None  # bodies.facts_of(gp_message)
    outgoing: list
    plan: subscriptions.Plan
    alert_rows: list[dict]
    circle_ids: list[int]


@dataclass
class _Told:
    """What one event's write did: the GP's notice, and what to announce once committed."""

    status: str
    reason: str
    mail_events: list = field(default_factory=list)
    items: list[dict] = field(default_factory=list)
    alerts: list[dict] = field(default_factory=list)


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


def _chunks(rows: list) -> list[list]:
    """Pending events in order, CONCURRENT at a time; a cancellation alone, once what came
    before it (perhaps the event it cancels) is done."""
    chunks: list[list] = []
    for row in rows:
        alone = row.kind == cancels.KIND or (chunks and chunks[-1][0].kind == cancels.KIND)
        if alone or not chunks or len(chunks[-1]) >= CONCURRENT:
            chunks.append([row])
        else:
            chunks[-1].append(row)
    return chunks


async def members_of(conn: AsyncConnection, ins: str) -> list[str]:
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


def reason_key(status: str | None, reason: str) -> str:
    """Why a GP was not told, as coordinators count it (the indicators, /metrics)."""
    if status is None:
        return "pending"
    if status == "failed":
        return "delivery_failed"
    if reason == NO_GP:
        return "no_gp"
    if reason == NO_BOX:
        return "gp_without_box"
    return "unknown_rpps"  # not in the directory (UNKNOWN_GP), or an RPPS whose check digit is wrong
