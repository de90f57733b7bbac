"""Who else hears of a patient's hospital events: subscriptions, and who may hold one.

A subscriber (a professional, or an organisational box one of them acts for) follows one
patient (by INS) for some event kinds, by mail, alert or both, over a validity period. Only
someone already in the patient's care, a member of the patient's care circle or a GP a
hospital named for that INS, may subscribe; a subscription stands on that person
(`created_by`) and stops counting when they no longer may. Care-circle members get alerts by
default (hospital/dispatch.py); their own subscription overrides that for the kinds it
names, `none` being the opt-out. Every change, and every refusal, is audited.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from directory.access import grant_for
from directory.authn import Principal
from mailserver import dsn, headers
from mailserver.mailstore import QUEUED, MailStore, Recipient
from store.audit import Actor, AuditTrail
from store.db import committed, utc
from store.schema import (circle_members, circles, hospital_events, hospital_subscriptions,
                          mailboxes, professionals)

from .feed import NOTIFIED_KINDS

MEDIA = ("mail", "alert", "both", "none")
MAX_PER_PERSON = 5000  # subscriptions one professional stands for: a GP's whole patient list fits
INS_CHARS = 15


class SubscriptionError(Exception):
    """Refused: `status` and `code` for HTTP, the message for people."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class Request:
    patient: str  # INS matricule
    kinds: tuple[str, ...] = NOTIFIED_KINDS
    medium: str = "both"
    valid_from: datetime | None = None  # None: now
    valid_until: datetime | None = None
    box: str = ""  # an organisational box the caller acts for; "" subscribes the caller

    def check(self) -> None:
        if not (len(self.patient) == INS_CHARS and self.patient.isascii() and self.patient.isalnum()):
            raise SubscriptionError(400, "invalid_patient", "patient is an INS matricule of 15 characters")
        if not self.kinds or any(k not in NOTIFIED_KINDS for k in self.kinds):
            raise SubscriptionError(400, "invalid_kinds", f"kinds are some of {', '.join(NOTIFIED_KINDS)}")
        if self.medium not in MEDIA:
            raise SubscriptionError(400, "invalid_medium", f"medium is one of {', '.join(MEDIA)}")
        if self.valid_until and self.valid_until <= (self.valid_from or datetime.now(timezone.utc)):
            raise SubscriptionError(400, "invalid_period", "valid_until must come after valid_from (and now)")


class Subscriptions:
    def __init__(self, engine: AsyncEngine, audit: AuditTrail) -> None:
        self._engine = engine
        self._audit = audit

    async def subscribe(self, principal: Principal, request: Request, *, source: str) -> tuple[dict, bool]:
        """The subscription (replacing the subscriber's earlier one for that patient) and whether it is new."""
        actor = principal.actor
        try:
            request.check()
        except SubscriptionError as exc:
            await self._audit.record(actor, "subscription.create", target=request.patient[:INS_CHARS],
                                     outcome="failed", source=source, reason=exc.code)
            raise
        async with self._engine.connect() as conn:
            allowed = principal.kind == "person" and principal.id in await entitled(conn, request.patient)
            box = await grant_for(conn, principal, request.box) if allowed and request.box else None
        if not allowed or (request.box and (box is None or box.kind != "organisational")):
            why = "not in this patient's care" if not allowed else "not an organisational box you act for"
            await self._audit.record(actor, "subscription.create", target=request.patient, outcome="denied",
                                     source=source, reason=why, box=request.box)
            raise SubscriptionError(403, "forbidden", "only a member of the patient's care circle or the GP a "
                                    "hospital named for this patient may subscribe" if not allowed else
                                    "you may subscribe only yourself or an organisational box you act for")
        now = datetime.now(timezone.utc)
        row = {"subscriber": f"mailbox:{box.address}" if box else f"person:{principal.id}",
               "patient_ins": request.patient, "kinds": " ".join(request.kinds), "medium": request.medium,
               "valid_from": request.valid_from or now, "valid_until": request.valid_until,
               "created_by": principal.id, "created_at": now}

        async def write(conn: AsyncConnection) -> tuple[int, bool]:
            mine = (await conn.execute(select(func.count()).select_from(hospital_subscriptions).where(
                hospital_subscriptions.c.created_by == principal.id))).scalar_one()
            changed = await conn.execute(update(hospital_subscriptions).where(and_(
                hospital_subscriptions.c.subscriber == row["subscriber"],
                hospital_subscriptions.c.patient_ins == row["patient_ins"])).values(row))
            if changed.rowcount:
                found = (await conn.execute(select(hospital_subscriptions.c.id).where(and_(
                    hospital_subscriptions.c.subscriber == row["subscriber"],
                    hospital_subscriptions.c.patient_ins == row["patient_ins"])))).scalar_one()
                return found, False
            if mine >= MAX_PER_PERSON:
                raise SubscriptionError(409, "too_many", f"at most {MAX_PER_PERSON} subscriptions per professional")
            return (await conn.execute(hospital_subscriptions.insert().returning(hospital_subscriptions.c.id),
                                       row)).scalar_one(), True
        try:
            found, created = await committed(self._engine, write)
        except IntegrityError:  # the same subscription created at the same moment: that one stands
            raise SubscriptionError(409, "conflict", "this subscription is being created; list them") from None
        await self._audit.record(actor, "subscription.create" if created else "subscription.replace",
                                 target=request.patient, source=source, id=found, subscriber=row["subscriber"],
                                 kinds=row["kinds"], medium=row["medium"])
        return _public({**row, "id": found}), created

    async def list(self, principal: Principal, *, source: str) -> list[dict]:
        """The caller's own subscriptions, and those they made for a box."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(hospital_subscriptions).where(or_(
                hospital_subscriptions.c.subscriber == f"person:{principal.id}",
                hospital_subscriptions.c.created_by == principal.id)).order_by(hospital_subscriptions.c.id))
            found = [_public(r._mapping) for r in rows]
        await self._audit.record(principal.actor, "subscription.list", source=source, results=len(found))
        return found

    async def remove(self, principal: Principal, subscription_id: int, *, source: str) -> None:
        async def write(conn: AsyncConnection) -> int:
            return (await conn.execute(delete(hospital_subscriptions).where(and_(
                hospital_subscriptions.c.id == subscription_id, or_(
                    hospital_subscriptions.c.subscriber == f"person:{principal.id}",
                    hospital_subscriptions.c.created_by == principal.id))))).rowcount
        removed = await committed(self._engine, write)
        await self._audit.record(principal.actor, "subscription.remove", target=str(subscription_id), source=source,
                                 outcome="ok" if removed else "denied")
        if not removed:  # someone else's and none alike: the caller learns nothing about which
            raise SubscriptionError(404, "not_found", f"you have no subscription {subscription_id}")


async def entitled(conn: AsyncConnection, ins: str) -> set[str]:
    """National identifiers that may subscribe to this patient: circle members, and GPs named by a hospital."""
    members = select(circle_members.c.idnat).join(circles, circles.c.id == circle_members.c.circle_id).where(
        circles.c.patient_ins == ins)
    named = select(professionals.c.idnat).join(
        hospital_events, hospital_events.c.gp_rpps == professionals.c.rpps).where(hospital_events.c.patient_ins == ins)
    return {r[0] for r in await conn.execute(members.union(named))}


@dataclass(frozen=True)
class MailTarget:
    audience: str  # the subscriber
    address: str  # "" when the subscriber has no box
    mailbox_id: int | None  # None: another operator's box
    name: str


@dataclass(frozen=True)
class Plan:
    """Who hears of one event beside the GP: alert audiences and mail targets, each once."""

    alerts: tuple[str, ...]
    mails: tuple[MailTarget, ...]
    subscribed_alerts: tuple[str, ...]  # the alerts subscriptions asked for (a notice each)


async def plan(conn: AsyncConnection, ins: str, kind: str, members: list[str], now: datetime) -> Plan:
    """Members' default alerts, overridden by their own subscription for this kind; then every
    other live subscription whose maker may still subscribe."""
    defaults = [f"person:{idnat}" for idnat in members]
    if not ins:
        return Plan(tuple(defaults), (), ())
    rows = (await conn.execute(select(hospital_subscriptions).where(and_(
        hospital_subscriptions.c.patient_ins == ins, hospital_subscriptions.c.valid_from <= now,
        or_(hospital_subscriptions.c.valid_until.is_(None), hospital_subscriptions.c.valid_until > now))))).all()
    rows = [r for r in rows if kind in r.kinds.split()]
    if not rows:
        return Plan(tuple(defaults), (), ())
    allowed = await entitled(conn, ins)
    media = {r.subscriber: r.medium for r in rows if r.created_by in allowed}
    alerts = [a for a in defaults if a not in media]
    subscribed = [a for a, m in media.items() if m in ("alert", "both")]
    mails = [await _mail_target(conn, a) for a, m in sorted(media.items()) if m in ("mail", "both")]
    return Plan(tuple(alerts + sorted(subscribed)), tuple(mails), tuple(sorted(subscribed)))


async def _mail_target(conn: AsyncConnection, audience: str) -> MailTarget:
    kind, _, who = audience.partition(":")
    if kind == "mailbox":
        box = (await conn.execute(select(mailboxes.c.id, mailboxes.c.address, mailboxes.c.local, mailboxes.c.service)
                                  .where(and_(mailboxes.c.address == who, mailboxes.c.retired_at.is_(None))))).first()
        return MailTarget(audience, box.address, box.id if box.local else None, box.service or box.address) \
            if box else MailTarget(audience, "", None, who)
    person = (await conn.execute(select(professionals.c.given_name, professionals.c.family_name,
                                        professionals.c.profession_code).where(professionals.c.idnat == who))).first()
    name = who if person is None else " ".join(p for p in (
        "Dr" if person.profession_code == "10" else "", person.given_name.title(), person.family_name) if p)
    box = await nominative_box(conn, who)
    return MailTarget(audience, box.address, box.id if box.local else None, name) if box \
        else MailTarget(audience, "", None, name)


async def nominative_box(conn: AsyncConnection, idnat: str):  # noqa: ANN201 - a row (id, address, local) or None
    """A professional's nominative box, ours first."""
    return (await conn.execute(select(mailboxes.c.id, mailboxes.c.address, mailboxes.c.local).where(and_(
        mailboxes.c.owner_idnat == idnat, mailboxes.c.kind == "nominative",
        mailboxes.c.retired_at.is_(None))).order_by(mailboxes.c.local.desc(), mailboxes.c.address).limit(1))).first()


def _public(row) -> dict:  # noqa: ANN001 - a row mapping
    return {"id": row["id"], "subscriber": row["subscriber"], "patient": row["patient_ins"],
            "kinds": row["kinds"].split(), "medium": row["medium"],
            "valid_from": utc(row["valid_from"]).isoformat(),
            "valid_until": utc(row["valid_until"]).isoformat() if row["valid_until"] else None,
            "created_by": row["created_by"]}


NO_BOX = "subscriber has no MSSanté box"


async def deliver(conn: AsyncConnection, mailstore: MailStore, *, event_id: int, mails: list[tuple[MailTarget, bytes,
                  Recipient | None]], alerts: tuple[str, ...], sender: str, actor: Actor, audit: AuditTrail,
                  now: datetime) -> tuple[list[tuple[int | str, dict]], list[dict]]:
    """Store the subscribers' mails, in the dispatcher's transaction; returns the events to
    publish once it commits and a notice row for each mail and subscribed alert, which the
    dispatcher inserts for all the events of its write at once (a statement per event was a
    tenth of that write's statements)."""
    events: list[tuple[int | str, dict]] = []
    notices = []
    for target, message, recipient in mails:
        if recipient is None:
            notices.append({"recipient": target.audience, "status": "not_notified", "reason": NO_BOX})
            continue
        accepted, stored = await mailstore.store(
            conn, message=message, message_id=headers.read(message).get("message-id") or "", sender=sender,
            actor=actor, audit=audit, audit_action="hospital.notify", source="hl7", mail_dsn=dsn.MailDsn(ret="HDRS"), recipients=[recipient])
        events += stored + ([(0, QUEUED)] if accepted.queued else [])
        notices.append({"recipient": target.address, "envelope_id": accepted.envelope_id, "reason": "",
                        "status": "delivered" if accepted.delivered else "queued" if accepted.queued else "failed"})
    notices += [{"recipient": audience, "status": "alerted", "reason": ""} for audience in alerts]
    return events, [{"envelope_id": None, **row, "event_id": event_id, "role": "subscriber", "created_at": now}
                    for row in notices]
