"""A hospital event in the timeline of its patient's care circle(s).

The dispatcher (hospital/dispatch.py) calls `record` in the transaction that marks the event
dispatched: the item, with the circle's next seq, exists if and only if the event was
dispatched, so a replay or a crash adds nothing twice and loses nothing. `announce` then tells
the circle's live connections, as a post is announced; a lost announcement is caught up from
the store like a message's.

The item's text is a short French line for any client ("Passage aux urgences — CH Saint-Paul,
06/12 14:32", in the hospital's own time); its `event` data lets a client show more: the event
id and kind (ADM, URG, SOR, DOC), the unit, when, and for a document its type (LOINC code and
label) and TXA-12 identifier. The document itself went to the GP by mail; the circle learns
that it exists.
"""
from __future__ import annotations

from datetime import datetime

import json

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from instant import frames
from instant.hub import circle_channel
from instant.storage import append_items, iso
from store.db import dialect_insert
from store.events import EventBus
from store.schema import alerts, circles

KIND = "event"
ALERT_KIND = "patient"  # the alert a member gets for an event or document of their patient


async def circles_of(conn: AsyncConnection, ins: str) -> list[int]:
    """The care circles of a patient (the dispatcher reads them once a pass, with its other lookups)."""
    if not ins:
        return []
    return list((await conn.execute(select(circles.c.id).where(circles.c.patient_ins == ins)
                                    .order_by(circles.c.id))).scalars())


def event_items(event, patient: dict, ids: list[int], *, title: str, hospital: str, sender: str,  # noqa: ANN001
                occurred: datetime) -> list[dict]:
    """The event's item for each of the circles `ids` of its INS (`circles_of`), for `add`."""
    document = patient.get("document")
    what = title if document is None else f"{title} : {document['type_label'] or document['type_code']}"
    text = f"{what} — {hospital}" + (f" ({event.unit})" if event.unit else "") + f", {occurred:%d/%m %H:%M}"
    author = {"id": sender, "name": hospital}
    details = {"id": event.id, "kind": event.kind, "unit": event.unit, "occurred": occurred.isoformat(),
               "hospital": hospital, "document": document}
    return [_item(circle_id, author, f"hospital-event:{event.id}", text, details, KIND) for circle_id in ids]


async def add_items(conn: AsyncConnection, circle_ids: list[int], *, author: dict, client_id: str, text: str,
                    details: dict, now: datetime, kind: str = KIND) -> list[dict]:
    """One item (no professional for author: `author` names the source) in each circle, with its
    next seq, in the caller's transaction; the items as frames show them, for `announce`."""
    return await add(conn, [_item(circle_id, author, client_id, text, details, kind) for circle_id in circle_ids], now)


async def add(conn: AsyncConnection, items: list[dict], now: datetime) -> list[dict]:
    """Items (`event_items`, `add_items`) stored with their seqs, in the order given, many rows a
    statement; the items as frames show them, for `announce`."""
    seqs = await append_items(conn, [{"circle_id": i["circle"], "author": None, "client_id": i["client_id"],
                                      "text": i["text"], "reply_to": None, "kind": i["kind"],
                                      "data": {"author": i["author"], "event": i["details"]}} for i in items], now)
    return [frames.message(circle=i["circle"], seq=seq, author=i["author"], client_id=i["client_id"], text=i["text"],
                           at=iso(now), reply_to=None, kind=i["kind"], event=i["details"])
            for i, seq in zip(items, seqs)]


def _item(circle_id: int, author: dict, client_id: str, text: str, details: dict, kind: str) -> dict:
    return {"circle": circle_id, "author": author, "client_id": client_id, "text": text, "details": details,
            "kind": kind}


async def announce(bus: EventBus, items: list[dict]) -> None:
    """Each item to its circle's live connections, encoded once, as a post is announced."""
    for item in items:
        await bus.publish(circle_channel(item["circle"]), {
            "type": "message", "circle": item["circle"], "seq": item["seq"], "author": item["author"]["id"],
            "client_id": item["client_id"], "wire": frames.encode(item)})


async def raise_alerts(conn: AsyncConnection, rows: list[dict], now: datetime) -> list[dict]:
    """`patient` alerts (audience, kind, key, title, data as JSON) in one statement, in the
    caller's transaction; an (audience, key) raised before raises nothing new. Returns the new
    ones as the websocket shows them, for `publish_alerts` once committed."""
    if not rows:
        return []
    statement = dialect_insert(conn, alerts).on_conflict_do_nothing(
        index_elements=[alerts.c.audience, alerts.c.key]).returning(alerts.c.id, alerts.c.audience, alerts.c.key)
    inserted = {(r.audience, r.key): r.id
                for r in await conn.execute(statement, [{**row, "created_at": now} for row in rows])}
    return [{"id": inserted[row["audience"], row["key"]], **row, "data": json.loads(row["data"]),
             "created_at": now.isoformat(), "acknowledged_by": None, "acknowledged_at": None}
            for row in rows if (row["audience"], row["key"]) in inserted]


async def publish_alerts(bus: EventBus, raised: list[dict]) -> None:
    for alert in raised:
        await bus.publish(alert["audience"], {"type": "alert", "alert": alert})
