"""The audit trail: append-only record of authentications and of every access to a directory
entry, mailbox or care circle (who, when, from where, what, outcome; never message content).

Nothing in the code base updates or deletes audit rows; retention beyond the configured
period is an operator's archive job, not the server's.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .db import committed, utc

from .schema import audit

ACTOR_KINDS = ("person", "application", "operator", "anonymous", "server")
OUTCOMES = ("ok", "denied", "failed", "error")


@dataclass(frozen=True)
class Actor:
    """Who acts: a national identifier (person), an applicative mailbox, the CLI operator…"""

    id: str
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in ACTOR_KINDS:
            raise ValueError(f"unknown actor kind {self.kind!r}")


ANONYMOUS = Actor("-", "anonymous")
OPERATOR = Actor("cli", "operator")
SERVER = Actor("msante", "server")


class AuditTrail:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def record(self, actor: Actor, action: str, *, target: str = "", outcome: str = "ok",
                     source: str = "", conn: AsyncConnection | None = None, **detail: Any) -> None:
        """Append one row in its own transaction, so it is kept even if the caller's work fails;
        or, with `conn`, inside the caller's transaction, so the row exists exactly when the work
        it describes was committed (an accepted message)."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        row = {"at": datetime.now(timezone.utc), "actor": actor.id[:320], "actor_kind": actor.kind,
               "source": source[:64], "action": action[:64], "target": target[:320], "outcome": outcome,
               "detail": json.dumps(detail, ensure_ascii=False, default=str, sort_keys=True) if detail else ""}
        if conn is not None:
            await conn.execute(insert(audit), row)
            return
        await committed(self._engine, lambda own: own.execute(insert(audit), row))

    async def tail(self, *, limit: int = 50, after_id: int = 0, actor: str | None = None,
                   action: str | None = None) -> list[dict[str, Any]]:
        """The newest `limit` rows (or the rows after `after_id`, oldest first, for following)."""
        query = select(audit)
        if actor:
            query = query.where(audit.c.actor == actor)
        if action:
            query = query.where(audit.c.action.startswith(action))
        if after_id:
            query = query.where(audit.c.id > after_id).order_by(audit.c.id).limit(limit)
        else:
            query = query.order_by(audit.c.id.desc()).limit(limit)
        async with self._engine.connect() as conn:
            rows = [dict(r._mapping) for r in await conn.execute(query)]
        rows.sort(key=lambda r: r["id"])
        for r in rows:
            r["at"] = utc(r["at"]).isoformat()
            r["detail"] = json.loads(r["detail"]) if r["detail"] else {}
        return rows
