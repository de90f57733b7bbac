"""Memberships remembered between the frames that check them (every post, read and history of
a member goes through Circles.require_member): the store was read for each, and on
PostgreSQL that read cost more than the post's own insert.

A remembered membership is forgotten the moment its end is heard: the `member.removed` that
Circles.remove_member publishes on the circle's channel once the removal is committed, by
this process, another worker or node (Redis), or the CLI (store/relay.py). It is the event
that cuts the member's live connections, heard here inside the same publish, so a removal
takes effect for posts as it does for delivery. Memberships are used only while this process
hears every event (`hears_all`: a RedisBus that lost its subscription hears nothing of the
others), and all are forgotten when events were lost (OVERFLOW). Only memberships are kept,
never a refusal (a member added is a member at once), and never a delegation: whether the
delegation a membership rests on still holds is read each time (Circles._delegation_lapsed).
"""
from __future__ import annotations

from typing import Any

from store.events import EventBus, LocalTap

from .hub import circle_channel
from .storage import InstantStore

MAX_CIRCLES = 20_000  # circles remembered; past that all are forgotten and relearnt


class Memberships:
    def __init__(self, store: InstantStore, bus: EventBus) -> None:
        self._store = store
        self._bus = bus
        self._known: dict[int, dict[str, dict]] = {}  # circle -> idnat -> membership
        self._taps: dict[int, LocalTap] = {}
        self._changes: dict[int, int] = {}  # circle -> removals heard: a read that overlapped one is not kept

    async def of(self, circle_id: int, idnat: str) -> dict | None:
        """The person's membership ({on_behalf_of, coordinator}), or None."""
        if not self._bus.hears_all():
            return await self._store.membership(circle_id, idnat)
        known = self._known.get(circle_id)
        if known is not None and idnat in known:
            return known[idnat]
        self._listen(circle_id)  # before the read: a removal committed after it is heard
        changes = self._changes[circle_id]
        membership = await self._store.membership(circle_id, idnat)
        if membership is not None and self._changes.get(circle_id) == changes and self._bus.hears_all():
            self._known.setdefault(circle_id, {})[idnat] = membership
        return membership

    def _listen(self, circle_id: int) -> None:
        if circle_id in self._taps:
            return
        if len(self._taps) >= MAX_CIRCLES:
            self.close()
        self._taps[circle_id] = self._bus.tap(circle_channel(circle_id), self._heard)
        self._changes[circle_id] = 0

    def _heard(self, channel: str, event: dict[str, Any]) -> None:
        circle_id = int(channel.partition(":")[2])
        if event.get("type") == "member.removed":
            self._known.get(circle_id, {}).pop(event.get("idnat"), None)
        elif event.get("type") == "overflow":  # events were lost: what they said is unknown
            self._known.pop(circle_id, None)
        else:
            return
        self._changes[circle_id] = self._changes.get(circle_id, 0) + 1

    def close(self) -> None:
        for tap in self._taps.values():
            tap.close()
        self._taps.clear()
        self._known.clear()
        self._changes.clear()
