"""Alerts in the store. An alert is addressed to an audience: one person ("person:<idnat>"),
or whoever may read a mailbox ("mailbox:<address>"), decided when it is read, so a revoked
delegation hides the box's alerts at once. It stays pending until someone in its audience
acknowledges it; the first acknowledgement is kept (who and when), later ones change nothing.
"""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from hospital import receipts
from store.db import committed, dialect_insert
from store.group_commit import GroupCommit
from store.schema import alerts, professionals

from .storage import display_name, iso

MAX_PENDING = 200  # alerts sent on connect; older pending ones wait for these to be acknowledged


def person(idnat: str) -> str:
    return f"person:{idnat}"


def mailbox(address: str) -> str:
    return f"mailbox:{address}"


class AlertStore:
    def __init__(self, engine: AsyncEngine, writes: GroupCommit | None = None) -> None:
        self._engine = engine
        # new alerts ride the mail store's group commit when given: on SQLite, one transaction per
        # mail alert took the write lock from the writer the hospital feed's ACKs wait on
        self._writes = writes

    async def add(self, audience: str, kind: str, title: str, data: dict[str, Any], now: datetime,
                  key: str | None = None) -> dict | None:
        """The stored alert, or None when `key` was raised for this audience before."""
        row = {"audience": audience, "kind": kind, "key": key, "title": title,
               "data": json.dumps(data, ensure_ascii=False, sort_keys=True), "created_at": now}

        async def write(conn: AsyncConnection) -> int | None:
            if key is None:
                statement = insert(alerts)
            else:
                statement = dialect_insert(conn, alerts).on_conflict_do_nothing(
                    index_elements=[alerts.c.audience, alerts.c.key])
            return (await conn.execute(statement.returning(alerts.c.id), row)).scalar()
        alert_id = await (self._writes.run(write) if self._writes else committed(self._engine, write))
        return None if alert_id is None else {**_alert_row(alert_id, row), "acknowledged_by": None,
                                              "acknowledged_at": None}

    async def add_keyed(self, wanted: list[tuple[str, str, str, dict[str, Any], str]],
                        now: datetime) -> list[dict]:
        """Keyed alerts, (audience, kind, title, data, key) each, in one transaction: a burst of
        mail costs one commit, not one per message. The stored ones, in `wanted`'s order; a key
        raised for its audience before (or twice in `wanted`) is stored once."""
        rows = list({(audience, key): {"audience": audience, "kind": kind, "key": key, "title": title,
                                       "data": json.dumps(data, ensure_ascii=False, sort_keys=True),
                                       "created_at": now}
                     for audience, kind, title, data, key in wanted}.values())
        if not rows:
            return []

        async def write(conn: AsyncConnection) -> dict[tuple[str, str], int]:
            statement = dialect_insert(conn, alerts).on_conflict_do_nothing(
                index_elements=[alerts.c.audience, alerts.c.key])
            stored = await conn.execute(statement.returning(alerts.c.id, alerts.c.audience, alerts.c.key), rows)
            return {(r.audience, r.key): r.id for r in stored}
        ids = await (self._writes.run(write) if self._writes else committed(self._engine, write))
        return [{**_alert_row(ids[row["audience"], row["key"]], row), "acknowledged_by": None,
                 "acknowledged_at": None} for row in rows if (row["audience"], row["key"]) in ids]

    async def pending(self, audiences: list[str]) -> list[dict]:
        query = (_alerts().where(alerts.c.audience.in_(audiences), alerts.c.acknowledged_at.is_(None))
                 .order_by(alerts.c.id.desc()).limit(MAX_PENDING))
        async with self._engine.connect() as conn:
            return [_alert(r) for r in await conn.execute(query)][::-1]

    async def get(self, alert_id: int) -> dict | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(_alerts().where(alerts.c.id == alert_id))).first()
        return _alert(row) if row else None

    async def acknowledge(self, alert_id: int, idnat: str,
                          now: datetime) -> tuple[dict, bool, list[receipts.Announcement]]:
        """(the alert, True if this call acknowledged it (False if someone had already), what the
        care circles must hear once committed: receipts.announce)."""
        async def work(conn: AsyncConnection) -> tuple[bool, list[receipts.Announcement]]:
            row = (await conn.execute(update(alerts).where(
                alerts.c.id == alert_id, alerts.c.acknowledged_at.is_(None)).values(
                acknowledged_by=idnat, acknowledged_at=now).returning(alerts.c.key, alerts.c.audience))).first()
            if row is None:
                return False, []
            # a subscriber's alert for a hospital event: its notice is read
            return True, await receipts.acknowledged(conn, row.key, row.audience, now)
        changed, told = await committed(self._engine, work)
        alert = await self.get(alert_id)
        assert alert is not None
        return alert, changed, told


def _alerts():  # noqa: ANN202 - a Select
    return (select(alerts, professionals.c.given_name, professionals.c.family_name,
                   professionals.c.practice_civility)
            .join(professionals, professionals.c.idnat == alerts.c.acknowledged_by, isouter=True))


def _alert_row(alert_id: int, row: Any) -> dict:
    return {"id": alert_id, "audience": row["audience"], "kind": row["kind"], "title": row["title"],
            "data": json.loads(row["data"]) if row["data"] else {}, "created_at": iso(row["created_at"])}


def _alert(row: Any) -> dict:
    by = {"id": row.acknowledged_by, "name": display_name(row)} if row.acknowledged_by else None
    return {**_alert_row(row.id, row._mapping), "acknowledged_by": by, "acknowledged_at": iso(row.acknowledged_at)}
