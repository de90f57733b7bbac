"""A notification's receipts: queued, sent, delivered, read, failed, each with its time.

Every fact is written where it becomes known, by one small call from that place: the
dispatcher's transaction (queued; delivered when the mail is committed to a local box or the
alert raised; failed), the relay's answer for another operator's box (sent, failed), a DSN or
MDN delivered to the hospital's box (delivered, failed, read; matched by the notice's
Message-ID and the recipient), IMAP STORE adding \\Seen to the notice mail in the recipient's
box (read), a subscriber acknowledging the alert (read). The history is what coordinators and
the care circle look at (`/api/notifications`, `msante notification list`); the notice's own
`status` stays what dispatch decided, which the indicators count.

Each call that adds facts returns what to tell after its commit: a `notice` event on the
channel of each care circle of the event's patient (channel, event), so the circle's timeline
updates its ticks live. The caller publishes them with its other events once committed
(`announce`, or the mail store's and the folders' own publishing), never before: a rolled-back
receipt is not shown. The event only names the hospital event and the new fact; a client reads
the notices themselves from `/api/notifications`, which checks who may see them.
"""
from __future__ import annotations

from datetime import datetime
from typing import Iterable, Sequence

from sqlalchemy import and_, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from instant.hub import circle_channel
from mailserver.reports import Report
from store.db import utc
from store.events import EventBus
from store.schema import (circles, deliveries, envelopes, hospital_events, hospital_notice_history,
                          hospital_notices)

ALERT_KEY = "hospital-event:"  # an alert's key names its event (hospital/dispatch.py)
MAX_EVENTS = 500  # events shown per patient, newest first
Announcement = tuple[str, dict]  # (a circle's channel, the `notice` event), published after the commit


async def dispatched(conn: AsyncConnection, event_ids: list[int], now: datetime) -> None:
    """The events' notices just written: each is queued, and delivered or failed at once when
    dispatch already knows (a local box, an alert). Dispatch knows the events' circles (the
    timeline items it wrote): it tells them, with `notice`, without reading them again here."""
    rows = (await conn.execute(select(hospital_notices.c.id, hospital_notices.c.status, hospital_notices.c.reason)
                               .where(hospital_notices.c.event_id.in_(event_ids),
                                      hospital_notices.c.status != "not_notified")
                               .order_by(hospital_notices.c.id))).all()
    facts = []
    for row in rows:
        facts.append({"notice_id": row.id, "status": "queued", "reason": "", "at": now})
        if row.status in ("delivered", "alerted"):
            facts.append({"notice_id": row.id, "status": "delivered", "reason": "", "at": now})
        elif row.status == "failed":
            facts.append({"notice_id": row.id, "status": "failed", "reason": row.reason, "at": now})
    if facts:
        await conn.execute(insert(hospital_notice_history), facts)


async def seen(conn: AsyncConnection, folder_message_ids: Iterable[int], now: datetime) -> list[Announcement]:
    """\\Seen was just set on these stored messages: those that are a notice mail, in the box it
    was delivered to, are read (once)."""
    ids = list(folder_message_ids)
    if not ids:
        return []
    rows = await conn.execute(
        select(hospital_notices.c.id).distinct()
        .join(deliveries, and_(deliveries.c.envelope_id == hospital_notices.c.envelope_id,
                               deliveries.c.recipient == hospital_notices.c.recipient))
        .where(deliveries.c.folder_message_id.in_(ids)))
    return await _read(conn, [r.id for r in rows], now)


async def acknowledged(conn: AsyncConnection, alert_key: str | None, audience: str,
                       now: datetime) -> list[Announcement]:
    """A subscriber acknowledged the alert raised for an event: that notice is read. Alerts of
    other kinds (a circle's, some with no key) are no notice's."""
    if not alert_key or not alert_key.startswith(ALERT_KEY) or not alert_key[len(ALERT_KEY):].isdigit():
        return []
    rows = await conn.execute(select(hospital_notices.c.id).where(
        hospital_notices.c.event_id == int(alert_key[len(ALERT_KEY):]), hospital_notices.c.recipient == audience))
    return await _read(conn, [r.id for r in rows], now)


async def relayed(conn: AsyncConnection, envelope_id: int, recipient: str, outcome: str, reason: str,
                  now: datetime) -> list[Announcement]:
    """The relay's answer for one recipient of a queued mail (mailserver/outbound.py): a notice
    to another operator's box is sent (their server took it) or failed (refused, or expired)."""
    rows = await conn.execute(select(hospital_notices.c.id).where(
        hospital_notices.c.envelope_id == envelope_id, hospital_notices.c.recipient == recipient))
    return await _add(conn, [r.id for r in rows], outcome, reason, now)


async def reported(conn: AsyncConnection, found: list[Report], boxes: Sequence[str],
                   now: datetime) -> list[Announcement]:
    """DSNs and MDNs (mailserver/reports.py) just delivered to these local boxes: each tells of
    the notice that one of these boxes sent under that Message-ID to that recipient, if any. A
    report naming a mail some other box sent changes nothing."""
    senders = [b.lower() for b in boxes]
    told: list[Announcement] = []
    for report in found:
        rows = await conn.execute(
            select(hospital_notices.c.id).join(envelopes, envelopes.c.id == hospital_notices.c.envelope_id)
            .where(envelopes.c.message_id == report.message_id, func.lower(envelopes.c.sender).in_(senders),
                   func.lower(hospital_notices.c.recipient) == report.recipient))
        ids = [r.id for r in rows]
        if report.outcome == "read":
            told += await _read(conn, ids, now)
        else:
            told += await _add(conn, ids, report.outcome, report.reason, now)
    return told


def notice(circle_id: int, event_id: int, status: str) -> Announcement:
    """The `notice` event telling a circle that an event's notices have a new receipt."""
    return circle_channel(circle_id), {"type": "notice", "circle": circle_id, "event": event_id, "status": status}


async def announce(bus: EventBus, announcements: list[Announcement]) -> None:
    """After the commit: each circle hears of its events' new receipts."""
    for channel, event in announcements:
        await bus.publish(channel, event)


async def _add(conn: AsyncConnection, notice_ids: list[int], status: str, reason: str,
               now: datetime) -> list[Announcement]:
    if not notice_ids:
        return []
    await conn.execute(insert(hospital_notice_history),
                       [{"notice_id": i, "status": status, "reason": reason, "at": now} for i in notice_ids])
    return await _announcements(conn, notice_ids, status)


async def _read(conn: AsyncConnection, notice_ids: list[int], now: datetime) -> list[Announcement]:
    if not notice_ids:
        return []
    already = {r.notice_id for r in await conn.execute(select(hospital_notice_history.c.notice_id).where(
        hospital_notice_history.c.notice_id.in_(notice_ids), hospital_notice_history.c.status == "read"))}
    return await _add(conn, [i for i in notice_ids if i not in already], "read", "", now)


async def _announcements(conn: AsyncConnection, notice_ids: list[int], status: str) -> list[Announcement]:
    """A `notice` event for each care circle of the patient of each of these notices' events."""
    if not notice_ids:
        return []
    rows = await conn.execute(
        select(circles.c.id.label("circle"), hospital_events.c.id.label("event")).distinct()
        .select_from(hospital_notices.join(hospital_events, hospital_events.c.id == hospital_notices.c.event_id)
                     .join(circles, circles.c.patient_ins == hospital_events.c.patient_ins))
        .where(hospital_notices.c.id.in_(notice_ids), hospital_events.c.patient_ins != ""))
    return [notice(r.circle, r.event, status) for r in rows]


async def history(conn: AsyncConnection, ins: str) -> list[dict]:
    """The patient's events, newest first, each with every notice and its receipts in order."""
    events = (await conn.execute(
        select(hospital_events.c.id, hospital_events.c.kind, hospital_events.c.unit, hospital_events.c.occurred_at,
               hospital_events.c.organisation_id, hospital_events.c.status)
        .where(hospital_events.c.patient_ins == ins).order_by(hospital_events.c.id.desc()).limit(MAX_EVENTS))).all()
    if not events:
        return []
    by_event: dict[int, dict] = {e.id: {"event": e.id, "kind": e.kind, "unit": e.unit, "structure": e.organisation_id,
                                        "occurred": utc(e.occurred_at).isoformat(), "pending": e.status == "pending",
                                        "notices": []} for e in events}
    notices: dict[int, dict] = {}
    for n in await conn.execute(select(hospital_notices).where(hospital_notices.c.event_id.in_(list(by_event)))
                                .order_by(hospital_notices.c.id)):
        notices[n.id] = {"recipient": n.recipient, "role": n.role, "status": n.status, "reason": n.reason,
                         "history": []}
        by_event[n.event_id]["notices"].append(notices[n.id])
    if notices:
        for h in await conn.execute(select(hospital_notice_history).where(
                hospital_notice_history.c.notice_id.in_(list(notices))).order_by(hospital_notice_history.c.id)):
            fact = {"status": h.status, "at": utc(h.at).isoformat()}
            notices[h.notice_id]["history"].append({**fact, "reason": h.reason} if h.reason else fact)
    return list(by_event.values())


def table(events: list[dict]) -> str:
    """The history as text lines for the CLI: one per notice."""
    lines = []
    for e in events:
        for n in e["notices"]:
            steps = ", ".join(f"{h['status']} {h['at'][:19]}" + (f" ({h['reason']})" if h.get("reason") else "")
                              for h in n["history"]) or f"{n['status']}: {n['reason']}"
            lines.append(f"{e['event']:>6} {e['kind']:<4} {n['role']:<12} {n['recipient'] or '-':<36} {steps}")
    return "\n".join(lines)
