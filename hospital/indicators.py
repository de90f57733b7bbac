"""The coordinators' figures, per hospital (FINESS) and month: what the feed received, how many
ED patients' GPs were told by MSSanté, why the others were not, and how long telling took.

Computed from hospital_events and the GP's notice (hospital_notices, role gp or gp_structure),
never stored: the rows are the truth, and a figure recomputed tomorrow says the same. A month
is the calendar month of the event's own time (the admission, the discharge), in UTC. An ED
visit counts as notified when its mail was delivered to a box of ours or queued for another
operator's; the time to notice runs from the event's time to that mail, over notified
admissions and ED visits. Delivered and read rates are over the GP's notices of every kind that
were sent (not those nobody could be told), from their receipts (hospital/receipts.py). An event
the hospital cancelled (hospital/cancels.py) stays counted as received, but is no ED visit and
times nothing: it did not happen. Rows are read one range at a time (at most MAX_MONTHS), streamed.
"""
from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from store.db import utc
from store.schema import hospital_events, hospital_notice_history, hospital_notices, organisations

from .dispatch import NOTIFIED, REASONS, reason_key

MAX_MONTHS = 36  # a range to compare three years; a wider one is refused, not slowly computed
TIMED_KINDS = ("ADM", "URG")  # admissions: the field's "time from admission to notification"


@dataclass
class _Month:
    structure: str
    events: Counter = field(default_factory=Counter)
    ed_visits: int = 0
    ed_notified: int = 0
    reasons: Counter = field(default_factory=Counter)
    minutes: list[int] = field(default_factory=list)
    notices: int = 0
    delivered: int = 0
    read: int = 0

    def as_dict(self, finess: str, month: str) -> dict:
        return {"finess": finess, "structure": self.structure, "month": month,
                "events": dict(sorted(self.events.items())),
                "ed_visits": self.ed_visits, "ed_gp_notified": self.ed_notified,
                "ed_gp_notified_share": _share(self.ed_notified, self.ed_visits),
                "ed_not_notified": {reason: self.reasons[reason] for reason in REASONS},
                "median_minutes_to_notice": statistics.median(self.minutes) if self.minutes else None,
                "gp_notices": self.notices, "gp_delivered": self.delivered, "gp_read": self.read,
                "gp_delivered_share": _share(self.delivered, self.notices),
                "gp_read_share": _share(self.read, self.notices)}


def period(since: str | None, until: str | None, today: date) -> tuple[datetime, datetime]:
    """[start, end) in UTC from `from` and `to` (YYYY-MM or YYYY-MM-DD, both included); by
    default the twelve months up to this one. ValueError says what is wrong."""
    def day(text: str, name: str, last: bool) -> date:
        try:
            if len(text) == 7:
                first = date.fromisoformat(text + "-01")
                return _next_month(first) - timedelta(days=1) if last else first
            if len(text) == 10:
                return date.fromisoformat(text)
        except ValueError:
            pass
        raise ValueError(f"{name} is a month (YYYY-MM) or a day (YYYY-MM-DD)")
    end = day(until, "to", True) if until else _next_month(today.replace(day=1)) - timedelta(days=1)
    start = day(since, "from", False) if since else _months_before(end.replace(day=1), 11)
    if start > end:
        raise ValueError("from comes after to")
    if _months_before(end.replace(day=1), MAX_MONTHS - 1) > start:
        raise ValueError(f"at most {MAX_MONTHS} months at a time")
    return (datetime.combine(start, time(), timezone.utc),
            datetime.combine(end + timedelta(days=1), time(), timezone.utc))


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _next_month(first: date) -> date:
    return date(first.year + first.month // 12, first.month % 12 + 1, 1)


def _months_before(first: date, count: int) -> date:
    index = first.year * 12 + first.month - 1 - count
    return date(index // 12, index % 12 + 1, 1)


async def monthly(engine: AsyncEngine, start: datetime, end: datetime, finess: str = "") -> list[dict]:
    """One row per hospital and month with events whose time is in [start, end)."""
    gp_notice = and_(hospital_notices.c.event_id == hospital_events.c.id,
                     hospital_notices.c.role.in_(("gp", "gp_structure")))
    query = (select(hospital_events.c.kind, hospital_events.c.status.label("event_status"),
                    hospital_events.c.occurred_at, hospital_events.c.organisation_id,
                    organisations.c.finess, organisations.c.name, hospital_notices.c.status, hospital_notices.c.reason,
                    hospital_notices.c.created_at.label("notified_at"),
                    _receipt("delivered").label("delivered"), _receipt("read").label("read"))
             .select_from(hospital_events
                          .outerjoin(organisations, organisations.c.id == hospital_events.c.organisation_id)
                          .outerjoin(hospital_notices, gp_notice))
             .where(hospital_events.c.occurred_at >= start, hospital_events.c.occurred_at < end))
    if finess:
        query = query.where(organisations.c.finess == finess)
    months: dict[tuple[str, str], _Month] = defaultdict(lambda: _Month(""))
    async with engine.connect() as conn:
        async for row in await conn.stream(query.execution_options(yield_per=1000)):
            occurred = utc(row.occurred_at)
            key = (row.finess or row.organisation_id, f"{occurred:%Y-%m}")
            month = months[key]
            month.structure = row.name or row.organisation_id
            month.events[row.kind] += 1
            if row.event_status == "cancelled":
                continue
            notified = row.status in NOTIFIED
            if row.kind == "URG":
                month.ed_visits += 1
                if notified:
                    month.ed_notified += 1
                else:
                    month.reasons[reason_key(row.status, row.reason or "")] += 1
            if row.status is not None and row.status != "not_notified":
                month.notices += 1
                month.delivered += bool(row.delivered)
                month.read += bool(row.read)
            if notified and row.kind in TIMED_KINDS:
                month.minutes.append(int((utc(row.notified_at) - occurred).total_seconds() // 60))
    return [months[key].as_dict(*key) for key in sorted(months)]


def _receipt(status: str):  # noqa: ANN202 - a column: has the GP's notice this receipt?
    return select(hospital_notice_history.c.id).where(
        hospital_notice_history.c.notice_id == hospital_notices.c.id,
        hospital_notice_history.c.status == status).exists()
