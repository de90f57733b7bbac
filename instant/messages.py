"""Messages of a care circle: post, history, read markers. Members only, every access audited
(never the text).

A post is acknowledged only once stored, and before it is announced: the author's connection
then has the ack queued ahead of its own copy of the message, as the protocol promises. The
announcement carries the message frame already encoded, so fanning it out to a circle's
connections costs no store read and one JSON encoding, whatever the number of members.
"""
from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Callable

from sqlalchemy.ext.asyncio import AsyncConnection

from directory.authn import Principal
from store.audit import AuditTrail
from store.events import EventBus

from . import frames
from .circles import Circles
from .errors import InstantError
from .hub import circle_channel, person_channel
from .storage import AttachmentUnavailable, InstantStore


class Messages:
    def __init__(self, store: InstantStore, circles: Circles, audit: AuditTrail, bus: EventBus) -> None:
        self._store = store
        self._circles = circles
        self._audit = audit
        self._bus = bus
        self._gaps: dict[tuple[int, int, int], tuple[int, asyncio.Future]] = {}  # catch-ups shared (catch_up)

    async def post(self, principal: Principal, circle_id: int, client_id: str, text: str, source: str,
                   acknowledge: Callable[[dict, bool], None], reply_to: int | None = None,
                   attachments: tuple[int, ...] = (), author_name: str | None = None) -> tuple[dict, bool]:
        """(the stored message, True when this client_id had been stored already); `acknowledge`
        is called with the same once it is stored, before anyone hears of it. `reply_to` must
        name a message of the same circle (messages are never deleted: one seen stays);
        `attachments`, documents the poster uploaded to this circle and has not posted yet;
        `author_name`, the poster as frames show them if the caller knows (else it is read)."""
        await self._circles.require_member(principal, circle_id, "circle.post", source)
        quoted = None
        if reply_to is not None:
            quoted = await self._store.quote(circle_id, reply_to)
            if quoted is None:
                raise InstantError(f"care circle {circle_id} has no message {reply_to} to reply to",
                                   "no_such_message")

        async def audited(conn: AsyncConnection | None, message: dict, duplicate: bool = False) -> None:
            await self._audit.record(principal.actor, "circle.post", target=str(circle_id), source=source, conn=conn,
                                     seq=message["seq"], client_id=client_id, duplicate=duplicate,
                                     reply_to=reply_to, attachments=[a["id"] for a in message["attachments"]])

        async with self._circles.ordered(circle_id):
            try:
                message, duplicate = await self._store.append(circle_id, principal.id, client_id, text, _now(),
                                                              quoted, attachments, stored=audited,
                                                              author_name=author_name)
            except AttachmentUnavailable as exc:
                await self._audit.record(principal.actor, "circle.post", target=str(circle_id), outcome="denied",
                                         source=source, reason="attachment not available", attachments=attachments)
                raise InstantError(str(exc), "no_such_attachment") from None
            acknowledge(message, duplicate)
            if not duplicate:
                await self._bus.publish(circle_channel(circle_id), {
                    "type": "message", "circle": circle_id, "seq": message["seq"], "author": principal.id,
                    "client_id": client_id, "wire": frames.encode(frames.message(**message))})
        if duplicate:  # a new message's row was written in its transaction
            await audited(None, message, True)
        return message, duplicate

    async def history(self, principal: Principal, circle_id: int, *, before: int | None, after: int | None,
                      limit: int, source: str) -> tuple[list[dict], bool]:
        await self._circles.require_member(principal, circle_id, "circle.read", source)
        page, more = await self._store.messages(circle_id, before=before, after=after, limit=limit)
        await self._audit.record(principal.actor, "circle.read", target=str(circle_id), source=source,
                                 via="history", before=before, after=after, results=len(page))
        return page, more

    async def search(self, principal: Principal, circle_id: int, text: str, *, before: int | None, limit: int,
                     source: str) -> tuple[list[dict], bool]:
        """Members only; audited like a read, with the length of what was looked for (never the
        words: they may name a patient or a condition)."""
        await self._circles.require_member(principal, circle_id, "circle.read", source)
        found, more = await self._store.search(circle_id, text, before=before, limit=limit)
        await self._audit.record(principal.actor, "circle.read", target=str(circle_id), source=source,
                                 via="search", chars=len(text), before=before, results=len(found))
        return found, more

    async def catch_up(self, circle_id: int, after: int, limit: int, *, reaching: int | None = None) -> list[dict]:
        """Messages after `after` for a connection that follows the circle (membership was
        checked when it subscribed, and is withdrawn from it as soon as it changes).

        `reaching`: the seq of the live message that showed a gap. Every connection of this
        process in the circle sees the same gap at once; they share one query, started for a
        seq at least as high as theirs, so it cannot miss their message (committed before it
        was announced). The page is shared: callers must not change it."""
        if reaching is None:
            page, _more = await self._store.messages(circle_id, after=after, limit=limit)
            return page
        key = (circle_id, after, limit)
        shared = self._gaps.get(key)
        if shared is None or shared[0] < reaching:
            query = asyncio.ensure_future(self._store.messages(circle_id, after=after, limit=limit))
            shared = self._gaps[key] = (reaching, query)
            query.add_done_callback(lambda done: self._forget(key, done))
        page, _more = await asyncio.shield(shared[1])
        return page

    def _forget(self, key: tuple[int, int, int], query: asyncio.Future) -> None:
        if self._gaps.get(key, (0, None))[1] is query:
            del self._gaps[key]
        if not query.cancelled():
            query.exception()  # retrieved, even when every caller was cancelled meanwhile

    async def mark_read(self, principal: Principal, circle_id: int, seq: int, source: str,
                        user: dict[str, str]) -> tuple[int, int]:
        """(marker, unread) after moving the caller's read marker; their other connections hear of
        it, and the circle hears a `receipt` (`user` is the caller as frames show them), so
        authors see who has read what."""
        await self._circles.require_member(principal, circle_id, "circle.mark_read", source)
        marker, unread = await self._store.mark_read(circle_id, principal.id, seq, _now())
        await self._audit.record(principal.actor, "circle.mark_read", target=str(circle_id), source=source,
                                 seq=marker)
        await self._bus.publish(person_channel(principal.id), {
            "type": "read", "circle": circle_id, "seq": marker, "unread": unread})
        await self._bus.publish(circle_channel(circle_id), {
            "type": "receipt", "circle": circle_id, "user": user, "seq": marker})
        return marker, unread

    async def read_state(self, principal: Principal, circle_id: int) -> tuple[int, int, int]:
        return await self._store.read_state(circle_id, principal.id)


def _now() -> datetime:
    return datetime.now(timezone.utc)
