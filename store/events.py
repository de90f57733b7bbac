"""The event bus: announcements of rows just committed (new mail, circle changes, rights), for
the layers that push to live sessions (IMAP IDLE, websockets). Other processes (the CLI)
publish through the store (store/relay.py).

Events are hints, not the data: a subscriber that hears "new mail in box 12" reads the
store. That is what lets the bus of several processes (Redis pub/sub, store/redis_bus.py)
lose nothing that matters: a subscriber that overflowed, or whose events were lost between
processes, gets OVERFLOW and resynchronises from the store.
"""
from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any, AsyncIterator, Awaitable, Callable, Protocol

log = logging.getLogger("msante.events")

# Who may open what changed: a delegation granted or revoked, IMAP rights (RFC 4314) set.
# {"type": "rights", "change": ..., "mailbox": <id>, "idnat": <whose rights>}; the layers that
# hold live sessions re-read that person's rights (IMAP) or memberships (websockets).
RIGHTS = "rights"
QUEUE_DEPTH = 1024  # events buffered per subscriber before it is told to resynchronise
OVERFLOW = {"type": "overflow"}  # delivered in place of what was dropped: "re-read the store"


def rights_event(change: str, mailbox_id: int, idnat: str) -> dict[str, Any]:
    """What goes on RIGHTS: `change` is delegation.granted, delegation.revoked or acl."""
    return {"type": "rights", "change": change, "mailbox": mailbox_id, "idnat": idnat}


class Subscription(Protocol):
    def __aiter__(self) -> AsyncIterator[dict[str, Any]]: ...
    async def close(self) -> None: ...


class EventBus(Protocol):
    async def publish(self, channel: str, event: dict[str, Any]) -> None: ...
    def subscribe(self, *channels: str) -> Subscription: ...
    def tap(self, channel: str, listener: Callable[[str, dict[str, Any]], None]) -> "LocalTap": ...

    def hears_all(self) -> bool:
        """Whether every process's events reach this one now: what it has not heard of did not
        happen. False while a RedisBus has lost its subscription."""


async def run_job(bus: EventBus, channel: str, stop: asyncio.Event, run_once: Callable[[], Awaitable[Any]],
                  timeout: Callable[[], Awaitable[float | None]], what: str) -> None:
    """A durable job's loop (the outbound queue, the hospital dispatch): a pass over what the
    store says is due, then sleep until `channel` announces more, `timeout()` seconds pass (a
    retry falls due, or an announcement lost between processes is caught by polling), or
    `stop`. The rows are the job: a pass that fails leaves them for the next one."""
    subscription = bus.subscribe(channel)
    wake = asyncio.Event()

    async def listen() -> None:
        async for _event in subscription:
            wake.set()
    listener = asyncio.create_task(listen())
    try:
        while not stop.is_set():
            wake.clear()
            try:
                await run_once()
            except Exception:
                log.exception("%s: a pass failed; its rows stay for the next one", what)
            waiters = [asyncio.create_task(wake.wait()), asyncio.create_task(stop.wait())]
            await asyncio.wait(waiters, timeout=await timeout(), return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
    finally:
        listener.cancel()
        await subscription.close()


class LocalSubscription:
    def __init__(self, bus: "LocalBus", channels: tuple[str, ...]) -> None:
        self._bus = bus
        self.channels = channels
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_DEPTH)
        self.overflowed = False

    def offer(self, event: dict[str, Any]) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True
            log.warning("subscriber of %s overflowed: it will resynchronise", ",".join(self.channels))

    def resync(self) -> None:
        """Tell the subscriber, after what it already holds, to re-read the store: events
        meant for it were lost before reaching this process (store/redis_bus.py)."""
        if not self.overflowed:
            try:
                self.queue.put_nowait(OVERFLOW)
            except asyncio.QueueFull:
                self.overflowed = True

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._events()

    async def _events(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            if self.overflowed and self.queue.empty():
                self.overflowed = False
                yield OVERFLOW
                continue
            yield await self.queue.get()

    async def close(self) -> None:
        self._bus._remove(self)


class LocalTap:
    """A listener called at once, inside publish, with (channel, event): no queue and no task.
    For the websocket hub, whose delivery only queues on each connection and never waits: a
    subscription (a queue of QUEUE_DEPTH and a task to empty it) for each person and circle with
    a live connection cost every idle websocket a few KiB (bench/instant.py)."""

    def __init__(self, bus: "LocalBus", channel: str, listener: Callable[[str, dict[str, Any]], None]) -> None:
        self._bus = bus
        self.channels = (channel,)
        self._listener = listener

    def offer(self, event: dict[str, Any]) -> None:
        self._listener(self.channels[0], event)

    def resync(self) -> None:
        self._listener(self.channels[0], OVERFLOW)

    def close(self) -> None:
        self._bus._remove(self)


class LocalBus:
    """In-process fan-out: publish never blocks; a slow subscriber loses events, then gets OVERFLOW."""

    def __init__(self) -> None:
        self._subscribers: dict[str, set[LocalSubscription | LocalTap]] = defaultdict(set)

    async def publish(self, channel: str, event: dict[str, Any]) -> None:
        for subscriber in list(self._subscribers.get(channel, ())):
            subscriber.offer({**event, "channel": channel})

    def resync(self) -> None:
        """Every subscriber gets OVERFLOW once: events may have been lost on their way here."""
        for subscription in set().union(*self._subscribers.values()):
            subscription.resync()

    def subscribe(self, *channels: str) -> LocalSubscription:
        subscription = LocalSubscription(self, channels)
        for channel in channels:
            self._subscribers[channel].add(subscription)
        return subscription

    def tap(self, channel: str, listener: Callable[[str, dict[str, Any]], None]) -> LocalTap:
        tap = LocalTap(self, channel, listener)
        self._subscribers[channel].add(tap)
        return tap

    def hears_all(self) -> bool:
        return True  # one process: every event is published here

    def _remove(self, subscription: LocalSubscription | LocalTap) -> None:
        for channel in subscription.channels:
            subscribers = self._subscribers.get(channel)
            if subscribers is not None:
                subscribers.discard(subscription)
                if not subscribers:
                    del self._subscribers[channel]
