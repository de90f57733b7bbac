"""The NOTIFY watcher of one session (RFC 5465): it hears the store's announcements for every
box the person may use (the bus channels IDLE hears for the selected one) and sends, between
commands, what the session's NOTIFY asked for: the selected mailbox's EXISTS, EXPUNGE and FETCH
FLAGS as they happen, the STATUS of other watched mailboxes, a LIST for a name created, deleted
or renamed, or a subscription changed. The session's turn lock keeps these out of a command's
responses; during IDLE the watcher speaks freely, and leaves the selected mailbox to IDLE.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from mailserver.mailstore import mailbox_channel
from store.events import OVERFLOW, Subscription

from . import listing
from .folders import NoSuchFolder
from .names import Box
from .notify import MESSAGE_EVENTS, Notify

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger("msante.imap")


class Watcher:
    def __init__(self, session: Session, spec: Notify) -> None:
        self.session = session
        self.spec = spec
        self._task: asyncio.Task | None = None
        self._subscription: Subscription | None = None

    def start(self) -> None:
        """Hear the boxes from now on: subscribed before NOTIFY's OK, so no news after it is missed."""
        channels = (mailbox_channel(b.grant.mailbox_id) for b in self.session.namespace.boxes)
        self._subscription = self.session.ctx.bus.subscribe(*channels)
        self._task = asyncio.create_task(self._run(self._subscription), name="imap notify")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._subscription is not None:
            await self._subscription.close()

    def _items(self) -> list[str]:
        """Dovecot's choice: the counts a client shows, HIGHESTMODSEQ when flags are watched."""
        flags = any("FlagChange" in g.events for g in self.spec.groups)
        return ["MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN", *(["HIGHESTMODSEQ"] if flags else [])]

    async def _events(self, box: Box, folder: str) -> frozenset[str]:
        session = self.session
        subscribed = False
        if any(g.kind == "SUBSCRIBED" for g in self.spec.groups):
            subscribed = folder in await session.ctx.folders.subscriptions(box.grant.mailbox_id,
                                                                           session.login.principal.id)
        return self.spec.events_for(box.visible_name(folder), inbox=folder == "INBOX",
                                    personal=box is session.namespace.personal, subscribed=subscribed)

    def _is_selected(self, box: Box, folder: str) -> bool:
        selected = self.session.selected
        return selected is not None and selected.box.grant.mailbox_id == box.grant.mailbox_id \
            and selected.folder == folder

    async def status_now(self) -> bytes:
        """NOTIFY SET STATUS: the STATUS of every watched mailbox but the selected one."""
        out = []
        for box in self.session.namespace.boxes:
            if not box.may("r"):
                continue
            for info in await self.session.ctx.folders.list(box.grant.mailbox_id):
                if not self._is_selected(box, info.name) and await self._events(box, info.name) & MESSAGE_EVENTS:
                    out.append(await listing.status_line(self.session, box.visible_name(info.name), info.id,
                                                         self._items()))
        return b"".join(out)

    async def _run(self, subscription: Subscription) -> None:
        from .session import LOGOUT  # session.py imports this module
        session = self.session
        try:
            async for event in subscription:
                if event is OVERFLOW or "folder" not in event:
                    continue  # an overflow loses news of other boxes; the selected one syncs at the next command
                try:
                    async with session.turn:
                        # Rights read again if they changed: a box withdrawn is heard of no more.
                        # For a shared box's news, read again every time: a change made by another
                        # process (the CLI, another node) is heard here through the bus relay, up
                        # to its poll later, and a delegate withdrawn must not be told meanwhile.
                        shared = event["channel"] != mailbox_channel(session.namespace.personal.grant.mailbox_id)
                        if session.state == LOGOUT or not await session._rights_hold(heard=shared):
                            return
                        box = next((b for b in session.namespace.boxes
                                    if mailbox_channel(b.grant.mailbox_id) == event["channel"]), None)
                        out = await self._answer(box, event) if box is not None else b""
                        if out:
                            await session.conn.send(out)
                except (ConnectionError, OSError):
                    return
                except Exception:  # one event that cannot be told must not end the watching
                    log.exception("NOTIFY could not tell %s", event)
        finally:
            await subscription.close()

    async def _answer(self, box: Box, event: dict) -> bytes:
        session = self.session
        folder, kind = event["folder"], event.get("type")
        if kind == "subscription":
            if event.get("who") != session.login.principal.id \
                    or "SubscriptionChange" not in await self._events(box, folder):
                return b""
            subscribed = folder in await session.ctx.folders.subscriptions(box.grant.mailbox_id, event["who"])
            return self._list(box, folder, "\\Subscribed" if subscribed else "")
        if kind == "folder_named":
            if "MailboxName" not in await self._events(box, folder):
                return b""
            try:
                await session.ctx.folders.get(box.grant.mailbox_id, folder)
            except NoSuchFolder:
                return self._list(box, folder, "\\NonExistent")
            return self._list(box, folder, "", old=event.get("old"))
        if self._is_selected(box, folder):
            if self.spec.selected and session._command != "IDLE":
                await session._sync(expunges=True)
            return b""
        events = await self._events(box, folder)
        if not events & MESSAGE_EVENTS or not box.may("r"):
            return b""
        try:
            info = await session.ctx.folders.get(box.grant.mailbox_id, folder)
        except NoSuchFolder:
            return b""
        return await listing.status_line(session, box.visible_name(folder), info.id, self._items())

    def _list(self, box: Box, folder: str, attributes: str, *, old: str | None = None) -> bytes:
        line = b'* LIST (%s) "/" %s' % (attributes.encode(), self.session._encode_name(box.visible_name(folder)))
        if old is not None:
            line += b' ("OLDNAME" (%s))' % self.session._encode_name(box.visible_name(old))
        return line + b"\r\n"
