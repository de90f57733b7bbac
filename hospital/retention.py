"""Raw HL7 messages are kept `[hl7] raw_retention_days`, then cut down to their MSH segment.

A raw message names the patient and may carry a document. It is needed until its event is
dispatched (a document event builds its mail from it) and for a while after, to settle what a
hospital sent. Past the retention `purge` keeps only the MSH segment, which names no patient
(sending application and facility, type, control id, character set) and is what answering a late
resend with the same ACK needs (hospital/feed.py reads the character set there); `purged_at`
says when. The event rows stay: notices, receipts and indicators stand on them. The purge runs
at start and every PURGE_EVERY seconds in `msante serve`, and on demand (`msante hl7 purge`);
rows are cut a batch per transaction, each only once.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone

from sqlalchemy import and_, exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from store.audit import SERVER, Actor, AuditTrail
from store.db import committed
from store.schema import hl7_messages, hospital_events

log = logging.getLogger("msante.hl7")
PURGE_EVERY = 3600.0
BATCH = 500
HEAD = 2048  # bytes read of each message: an MSH segment is a few hundred


async def purge(engine: AsyncEngine, audit: AuditTrail, days: int, *, actor: Actor = SERVER,
                now: datetime | None = None) -> int:
    """Cut every message received more than `days` ago whose event is not pending; returns how many."""
    if days <= 0:
        return 0
    now = now or datetime.now(timezone.utc)
    cutoff = now - timedelta(days=days)
    waiting = exists().where(hospital_events.c.message_id == hl7_messages.c.id, hospital_events.c.status == "pending")
    query = (select(hl7_messages.c.id, func.substr(hl7_messages.c.data, 1, HEAD).label("head"))
             .where(hl7_messages.c.received_at < cutoff, hl7_messages.c.purged_at.is_(None), ~waiting)
             .order_by(hl7_messages.c.id).limit(BATCH))
    total = 0
    while True:
        async with engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        if not rows:
            break

        async def cut(conn: AsyncConnection) -> None:
            for row in rows:
                await conn.execute(update(hl7_messages).where(and_(
                    hl7_messages.c.id == row.id, hl7_messages.c.purged_at.is_(None))).values(
                    data=msh(bytes(row.head)), purged_at=now))
        await committed(engine, cut)
        total += len(rows)
    if total:
        await audit.record(actor, "hl7.purge", target=f"{days} days", purged=total, before=cutoff.isoformat())
        log.info("hl7: %d raw messages older than %d days cut to their MSH segment", total, days)
    return total


def msh(data: bytes) -> bytes:
    """The message's first segment (MSH), as it came."""
    return data.split(b"\r", 1)[0].split(b"\n", 1)[0]


async def run(engine: AsyncEngine, audit: AuditTrail, days: int, stop: asyncio.Event) -> None:
    """`purge` now and every PURGE_EVERY seconds until `stop`."""
    while not stop.is_set():
        try:
            await purge(engine, audit, days)
        except Exception:
            log.exception("hl7: the purge of raw messages failed; it runs again in %.0f s", PURGE_EVERY)
        try:
            await asyncio.wait_for(stop.wait(), PURGE_EVERY)
        except asyncio.TimeoutError:
            pass
