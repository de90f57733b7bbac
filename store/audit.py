"""The audit trail: append-only record of authentications and of every access to a directory
entry, mailbox or care circle (who, when, from where, what, outcome; never message content).

Nothing in the code base updates or deletes audit rows; retention beyond the configured
period is an operator's archive job, not the server's.

What a row holds often comes from the client: an address of invalid UTF-8, a user name with
control characters. Every text is escaped before it is stored (`escape`), so the refusal of
hostile input is recorded like any other instead of failing in the database driver (a lone
surrogate cannot be encoded, PostgreSQL refuses NUL) and leaves no row.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .db import committed, utc

from .schema import audit

ACTOR_KINDS = ("person", "application", "operator", "anonymous", "server")
OUTCOMES = ("ok", "denied", "failed", "error")
# Control characters (C0, DEL, C1), bidi controls that reorder what a reader of the trail sees,
# and the lone surrogates Python uses for bytes that were not UTF-8 (errors="surrogateescape").
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


@dataclass(frozen=True)
class Actor:
    """Who acts: a national identifier (person), an applicative mailbox, the CLI operator…"""

    id: str
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in ACTOR_KINDS:
            raise ValueError(f"unknown actor kind {self.kind!r}")


_NEW_ROW = insert(audit)  # built once: every accepted message writes one


ANONYMOUS = Actor("-", "anonymous")
OPERATOR = Actor("cli", "operator")
SERVER = Actor("msante", "server")


def escape(text: str) -> str:
    """`text` with every unsafe character written as an escape: \\xNN for a byte that was not
    UTF-8 and for control characters, \\uNNNN for the rest. Readable, storable anywhere."""
    return _UNSAFE.sub(_escaped, text)


def _escaped(match: re.Match) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # a byte surrogateescape kept
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _escape_all(value: Any) -> Any:
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, dict):
        return {escape(str(k)): _escape_all(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_escape_all(v) for v in value]
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return escape(str(value))


def entry(actor: Actor, action: str, *, target: str = "", outcome: str = "ok", source: str = "",
          **detail: Any) -> dict[str, Any]:
    """One audit row, for a writer that inserts many in one statement (hospital/feed.py)."""
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}")
    return {"at": datetime.now(timezone.utc), "actor": escape(actor.id)[:320], "actor_kind": actor.kind,
            "source": escape(source)[:64], "action": escape(action)[:64], "target": escape(target)[:320],
            "outcome": outcome,
            "detail": json.dumps(_escape_all(detail), ensure_ascii=False, sort_keys=True) if detail else ""}


class AuditTrail:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def record(self, actor: Actor, action: str, *, target: str = "", outcome: str = "ok",
                     source: str = "", conn: AsyncConnection | None = None, **detail: Any) -> None:
        """Append one row in its own transaction, so it is kept even if the caller's work fails;
        or, with `conn`, inside the caller's transaction, so the row exists exactly when the work
        it describes was committed (an accepted message)."""
        row = entry(actor, action, target=target, outcome=outcome, source=source, **detail)
        if conn is not None:
            await conn.execute(_NEW_ROW, row)
            return
        await committed(self._engine, lambda own: own.execute(_NEW_ROW, row))

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
