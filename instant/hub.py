"""This process's live connections and the bus channels they listen to.

One bus subscription per channel that has at least one local listener, whatever the number
of listeners: a message to a circle of twenty is one bus event, fanned out here to the
connections following it. Delivery never blocks; each connection queues what it is given
and decides itself when it has fallen too far behind.

Presence is kept here too, ephemeral: a person is online in a circle while one of their
connections follows it in state "online", away while all of them are away. Changes are
announced on the circle's channel. With several processes (a RedisBus), each one's view of a
person is written to Redis (instant/presence.py) and a change is announced only when it
changes the person's presence over every process; if Redis does not answer, this process's
own view is announced instead (a hint, corrected by the next change).

Channels: `circle:<id>` (messages, typing, presence, removals of members) and
`person:<idnat>` (alerts, read markers moved from another device). Rights changes (RIGHTS: a
delegation revoked, from this server or the CLI) are heard once for the process and handed
to the connections of the person concerned as a `rights` event on their person channel: a
membership held on behalf of an organisational box ends with the delegation.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from typing import Any, Protocol

from redis.exceptions import RedisError

from store.events import RIGHTS, LocalBus, LocalTap, Subscription
from store.redis_bus import RedisBus

from .ordering import InOrder
from .presence import HEARTBEAT_SECONDS, Change, SharedPresence

log = logging.getLogger("msante.instant")


def circle_channel(circle_id: int) -> str:
    return f"circle:{circle_id}"


def person_channel(idnat: str) -> str:
    return f"person:{idnat}"


class Listener(Protocol):
    def deliver(self, channel: str, event: dict[str, Any]) -> None: ...


class Hub:
    def __init__(self, bus: LocalBus | RedisBus, shared: SharedPresence | None = None) -> None:
        self._bus = bus
        self._shared = shared
        self._writing = asyncio.Lock()  # presence writes reach Redis in the order they were made
        self._listeners: dict[str, set[Listener]] = {}
        self._pumps: dict[str, tuple[Subscription, asyncio.Task]] = {}  # RIGHTS
        self._taps: dict[str, LocalTap] = {}  # every other channel with a listener here
        self._order: dict[str, InOrder] = {}  # circle channel -> its messages in seq order
        self._presence: dict[int, dict[str, dict[Listener, str]]] = {}  # circle -> idnat -> listener -> state
        self._names: dict[str, dict[str, str]] = {}  # idnat -> {id, name}, for presence frames
        self._people: Counter[str] = Counter()
        self._heartbeat: asyncio.Task | None = None

    # --- connections --------------------------------------------------------------------------

    async def admit(self, idnat: str, limit: int) -> bool:
        """Count a person's connection in; False when they already hold `limit` (over every
        process with a RedisBus; this process's alone when Redis does not answer)."""
        if self._people[idnat] >= limit:
            return False
        if self._redis():
            try:
                async with self._writing:  # counted here before the heartbeat rewrites the count
                    if not await self._shared.count({idnat: self._people[idnat] + 1}, limit):
                        return False
                    self._people[idnat] += 1
                    return True
            except (RedisError, OSError) as exc:
                log.warning("connections not counted through Redis (%s): this process's only", exc)
        self._people[idnat] += 1
        return True

    async def leave(self, idnat: str) -> None:
        self._people[idnat] -= 1
        if self._people[idnat] <= 0:
            del self._people[idnat]
        if self._redis():
            try:
                async with self._writing:
                    await self._shared.count({idnat: self._people.get(idnat, 0)})
            except (RedisError, OSError) as exc:
                log.warning("connections not counted through Redis (%s): the count expires", exc)

    # --- channels -----------------------------------------------------------------------------

    def attach(self, channel: str, listener: Listener) -> None:
        listeners = self._listeners.setdefault(channel, set())
        listeners.add(listener)
        if channel not in self._taps:  # heard at once, inside publish: no queue or task per channel
            self._taps[channel] = self._bus.tap(channel, self._heard)
            if channel.startswith("circle:"):
                self._order[channel] = InOrder(lambda event: self._deliver(channel, event))

    async def detach(self, channel: str, listener: Listener) -> None:
        listeners = self._listeners.get(channel)
        if listeners is None:
            return
        listeners.discard(listener)
        if not listeners:
            del self._listeners[channel]
            self._taps.pop(channel).close()
            order = self._order.pop(channel, None)
            if order is not None:
                order.flush()

    def _heard(self, channel: str, event: dict[str, Any]) -> None:
        order = self._order.get(channel)
        if order is None:
            self._deliver(channel, event)
        elif event.get("type") == "message":
            order.message(event)
        else:
            if event.get("type") == "overflow":  # what waits goes first, then the resync
                order.flush()
            self._deliver(channel, event)

    def start(self) -> None:
        """Hear rights changes (store.events.RIGHTS) from now on."""
        subscription = self._bus.subscribe(RIGHTS)
        self._pumps[RIGHTS] = (subscription, asyncio.create_task(self._pump_rights(subscription), name="hub rights"))
        if self._shared is not None:
            self._heartbeat = asyncio.create_task(self._beat(), name="hub presence heartbeat")

    async def _pump_rights(self, subscription: Subscription) -> None:
        """A person's rights changed: their connections re-read their memberships. After an
        overflow, whose they were is unknown: everyone's do."""
        async for event in subscription:
            idnat = event.get("idnat")
            channels = [person_channel(idnat)] if idnat else [c for c in self._listeners if c.startswith("person:")]
            for channel in channels:
                self._deliver(channel, {**event, "type": "rights"})

    def _deliver(self, channel: str, event: dict[str, Any]) -> None:
        for listener in list(self._listeners.get(channel, ())):
            try:
                listener.deliver(channel, event)
            except Exception:  # one broken connection must not starve the others
                log.exception("delivering %s on %s failed", event.get("type"), channel)

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        for tap in self._taps.values():
            tap.close()
        self._taps.clear()
        for order in self._order.values():
            order.flush()
        self._order.clear()
        for channel in list(self._pumps):
            subscription, task = self._pumps.pop(channel)
            await subscription.close()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._listeners.clear()

    # --- circles and presence -------------------------------------------------------------------

    async def unfollow(self, circle_id: int, listener: Listener, user: dict[str, str]) -> None:
        """Stop delivering the circle to `listener`, and count it out of the circle's presence.
        Idempotent: a connection may be cut from a circle and leave at the same time."""
        await self.detach(circle_channel(circle_id), listener)
        await self.set_presence(circle_id, listener, user, None)

    async def present(self, circle_id: int) -> list[dict[str, Any]]:
        """Who is online or away in the circle (over every process), as presence entries."""
        if self._redis():
            try:
                return await self._shared.present(circle_id)
            except (RedisError, OSError) as exc:
                log.warning("presence from Redis unavailable (%s): this process's only", exc)
        people = self._presence.get(circle_id, {})
        return [{"user": self._names[idnat], "state": _aggregate(states)} for idnat, states in sorted(people.items())]

    async def set_presence(self, circle_id: int, listener: Listener, user: dict[str, str], state: str | None) -> None:
        """Record a connection's state in a circle (None: it stopped following it) and announce
        the person's presence if that changed it."""
        idnat = user["id"]
        people = self._presence.setdefault(circle_id, {})
        states = people.setdefault(idnat, {})
        before = _aggregate(states)
        if state is None:
            states.pop(listener, None)
        else:
            states[listener] = state
            self._names[idnat] = user
        after = _aggregate(states)
        if not states:
            del people[idnat]
            if not people:
                del self._presence[circle_id]
            if not any(idnat in p for p in self._presence.values()):
                self._names.pop(idnat, None)
        if after == before:
            return
        if self._redis():
            try:
                async with self._writing:  # this process's state now: a later change may have come first
                    changes = await self._shared.write([(circle_id, user, self._local(circle_id, idnat))])
                await self._announce(changes)
                return
            except (RedisError, OSError) as exc:
                log.warning("presence not shared through Redis (%s): announcing this process's", exc)
        await self._announce([(circle_id, user, after)])

    def _redis(self) -> bool:
        """Whether to share through Redis now: not while the bus has lost it (each call would
        wait for a timeout, connections queueing behind it; this process's view serves)."""
        return self._shared is not None and self._shared.reachable()

    def _local(self, circle_id: int, idnat: str) -> str | None:
        states = self._presence.get(circle_id, {}).get(idnat)
        return _aggregate(states) if states else None

    async def _announce(self, changes: list[Change]) -> None:
        for circle_id, user, state in changes:
            await self._bus.publish(circle_channel(circle_id), {
                "type": "presence", "circle": circle_id, "user": user, "state": state})

    async def _beat(self) -> None:
        """Rewrite this process's entries and connection counts (so they outlive the TTL, and
        return after Redis lost them) and sweep away those of processes that stopped rewriting
        theirs. Skipped while the bus has no Redis subscription: Redis is not answering."""
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            if not self._redis():
                continue
            try:
                async with self._writing:
                    entries = [(circle_id, self._names[idnat], _aggregate(states))
                               for circle_id, people in self._presence.items() for idnat, states in people.items()]
                    changes = await self._shared.write(entries) if entries else []
                    if self._people:
                        await self._shared.count(dict(self._people))
                await self._announce(changes + await self._shared.sweep())
            except (RedisError, OSError) as exc:
                log.warning("presence heartbeat failed (%s): retrying in %.0f s", exc, HEARTBEAT_SECONDS)


def _aggregate(states: dict[Any, str]) -> str:
    if not states:
        return "offline"
    return "online" if "online" in states.values() else "away"
