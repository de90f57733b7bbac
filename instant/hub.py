"""This process's live connections and the bus channels they listen to.

One bus subscription per channel that has at least one local listener, whatever the number
of listeners: a message to a circle of twenty is one bus event, fanned out here to the
connections following it. Delivery never blocks; each connection queues what it is given
and decides itself when it has fallen too far behind.

Presence is kept here too, ephemeral and per process: a person is online in a circle while
one of their connections follows it in state "online", away while all of them are away.
Changes are announced on the circle's channel.

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

from store.events import RIGHTS, EventBus, Subscription

log = logging.getLogger("msante.instant")


def circle_channel(circle_id: int) -> str:
    return f"circle:{circle_id}"


def person_channel(idnat: str) -> str:
    return f"person:{idnat}"


class Listener(Protocol):
    def deliver(self, channel: str, event: dict[str, Any]) -> None: ...


class Hub:
    def __init__(self, bus: EventBus) -> None:
        self._bus = bus
        self._listeners: dict[str, set[Listener]] = {}
        self._pumps: dict[str, tuple[Subscription, asyncio.Task]] = {}
        self._presence: dict[int, dict[str, dict[Listener, str]]] = {}  # circle -> idnat -> listener -> state
        self._names: dict[str, dict[str, str]] = {}  # idnat -> {id, name}, for presence frames
        self._people: Counter[str] = Counter()

    # --- connections --------------------------------------------------------------------------

    def admit(self, idnat: str, limit: int) -> bool:
        """Count a person's connection in; False when they already hold `limit`."""
        if self._people[idnat] >= limit:
            return False
        self._people[idnat] += 1
        return True

    def leave(self, idnat: str) -> None:
        self._people[idnat] -= 1
        if self._people[idnat] <= 0:
            del self._people[idnat]

    # --- channels -----------------------------------------------------------------------------

    def attach(self, channel: str, listener: Listener) -> None:
        listeners = self._listeners.setdefault(channel, set())
        listeners.add(listener)
        if channel not in self._pumps:
            subscription = self._bus.subscribe(channel)
            task = asyncio.create_task(self._pump(channel, subscription), name=f"hub {channel}")
            self._pumps[channel] = (subscription, task)

    async def detach(self, channel: str, listener: Listener) -> None:
        listeners = self._listeners.get(channel)
        if listeners is None:
            return
        listeners.discard(listener)
        if not listeners:
            del self._listeners[channel]
            subscription, task = self._pumps.pop(channel)
            await subscription.close()
            task.cancel()

    def start(self) -> None:
        """Hear rights changes (store.events.RIGHTS) from now on."""
        subscription = self._bus.subscribe(RIGHTS)
        self._pumps[RIGHTS] = (subscription, asyncio.create_task(self._pump_rights(subscription), name="hub rights"))

    async def _pump(self, channel: str, subscription: Subscription) -> None:
        async for event in subscription:
            self._deliver(channel, event)

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

    def present(self, circle_id: int) -> list[dict[str, Any]]:
        """Who is online or away in the circle, as presence entries."""
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
        if after != before:
            await self._bus.publish(circle_channel(circle_id), {
                "type": "presence", "circle": circle_id, "user": user, "state": after})


def _aggregate(states: dict[Any, str]) -> str:
    if not states:
        return "offline"
    return "online" if "online" in states.values() else "away"
