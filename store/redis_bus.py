"""The event bus across processes and nodes: Redis pub/sub behind the EventBus interface.

Several msante processes (workers on one machine, nodes behind a load balancer) share one
store; an IDLE session on node B must hear of mail that node A just committed. Every event
goes to this process's own subscribers at once (a LocalBus, as with a single process) and
onto one Redis pub/sub channel, from which every other process hands it to its own
subscribers; a process skips the events it sent itself (they carry its node id).

Events stay hints (store/events.py), so Redis keeps nothing that cannot be lost: pub/sub
stores nothing at all. What is lost is told instead. When this process's subscription to
Redis breaks (Redis restarted, the network cut, Redis dropping a subscriber whose output
buffer overflowed), every local subscriber gets OVERFLOW once it is subscribed again, and
re-reads the store, which has everything. When events could not be sent (Redis unreachable,
or the outbox full), the next successful send is preceded by a resync notice, on which every
other process's subscribers get OVERFLOW too.

Publishing never waits for Redis: events are queued and sent by one task, in order, batched
in a pipeline; a delivery is not slowed by a Redis outage, only its wake-ups on other nodes.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from typing import Any, Callable

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .events import LocalBus, LocalSubscription, LocalTap

log = logging.getLogger("msante.events")

CHANNEL = "msante:events"
OUTBOX_DEPTH = 10_000  # events waiting to be sent; beyond, they are dropped and a resync is announced
BATCH = 512  # events sent in one pipeline round trip
MAX_EVENT_BYTES = 1024 * 1024  # a larger message on the channel is not an msante event: resync instead
HEARTBEAT_SECONDS = 5.0  # a silent subscription is PINGed after this; lost after twice this
SOCKET_SECONDS = 5.0  # connecting, and waiting for a PUBLISH to be answered
RECONNECT_SECONDS = (0.05, 2.0)  # first and longest wait between attempts to reach Redis again
START_SECONDS = 5.0  # how long the server waits for Redis at start before serving without it


class RedisBus:
    """An EventBus spanning every process that uses the same Redis `url`."""

    def __init__(self, url: str, local: LocalBus | None = None, *, channel: str = CHANNEL) -> None:
        self.node = uuid.uuid4().hex  # this process, in the events it sends
        self.local = local or LocalBus()
        self.subscribed = asyncio.Event()  # set while events from other processes arrive
        self._channel = channel
        # No retries inside redis-py: a reconnection it made silently would hide lost events.
        # Shared with what else crosses nodes through Redis (mailserver/logins.py SharedFailures).
        self.redis = aioredis.from_url(url, retry=Retry(NoBackoff(), 0), socket_timeout=SOCKET_SECONDS,
                                        socket_connect_timeout=SOCKET_SECONDS)
        self._where = self.redis.get_connection_kwargs().get("host", "redis")
        self._outbox: asyncio.Queue[bytes] = asyncio.Queue(OUTBOX_DEPTH)
        self._dropped = False  # events were lost on the way out: announce a resync first
        self._tasks: list[asyncio.Task] = []

    async def start(self, wait: float = START_SECONDS) -> bool:
        """Begin sending and receiving; True once subscribed, False if Redis did not answer
        within `wait` seconds (the bus keeps trying and resynchronises when it does)."""
        self._tasks = [asyncio.create_task(self._send(), name="redis bus send"),
                       asyncio.create_task(self._receive(), name="redis bus receive")]
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.subscribed.wait(), wait)
        if not self.subscribed.is_set():
            log.warning("Redis (%s) does not answer: other nodes' events arrive once it does", self._where)
        return self.subscribed.is_set()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.redis.aclose()

    async def publish(self, channel: str, event: dict[str, Any]) -> None:
        await self.local.publish(channel, event)
        data = json.dumps({"node": self.node, "channel": channel, "event": event}, default=str).encode()
        try:
            self._outbox.put_nowait(data)
        except asyncio.QueueFull:
            if not self._dropped:
                log.warning("events for other nodes overflowed the outbox: they will resynchronise")
            self._dropped = True

    def subscribe(self, *channels: str) -> LocalSubscription:
        return self.local.subscribe(*channels)

    def tap(self, channel: str, listener: Callable[[str, dict[str, Any]], None]) -> LocalTap:
        return self.local.tap(channel, listener)

    def hears_all(self) -> bool:
        return self.subscribed.is_set()

    # --- sending -------------------------------------------------------------------------------

    async def _send(self) -> None:
        delay = RECONNECT_SECONDS[0]
        while True:
            batch = []
            if self._dropped:  # announce the resync as soon as Redis answers, whether events wait or not
                with contextlib.suppress(asyncio.TimeoutError):
                    batch.append(await asyncio.wait_for(self._outbox.get(), delay))
            else:
                batch.append(await self._outbox.get())
            while len(batch) < BATCH and not self._outbox.empty():
                batch.append(self._outbox.get_nowait())
            resync, self._dropped = self._dropped, False
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    if resync:
                        pipe.publish(self._channel, json.dumps({"node": self.node, "resync": True}))
                    for data in batch:
                        pipe.publish(self._channel, data)
                    await pipe.execute()
                delay = RECONNECT_SECONDS[0]
            except (RedisError, OSError) as exc:
                if not (self._dropped or resync):
                    log.warning("cannot send events to Redis (%s): %s; other nodes will resynchronise", self._where, exc)
                self._dropped = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_SECONDS[1])

    # --- receiving -----------------------------------------------------------------------------

    async def _receive(self) -> None:
        delay = RECONNECT_SECONDS[0]
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                await self._listen(pubsub)
            except (RedisError, OSError) as exc:
                if self.subscribed.is_set():
                    log.warning("lost the Redis subscription (%s): %s; reconnecting", self._where, exc)
                    delay = RECONNECT_SECONDS[0]
                else:
                    delay = min(delay * 2, RECONNECT_SECONDS[1])
            finally:
                self.subscribed.clear()
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
            await asyncio.sleep(delay)

    async def _listen(self, pubsub: aioredis.client.PubSub) -> None:
        """Hand what arrives to the local subscribers until the subscription breaks; a
        subscription silent for HEARTBEAT_SECONDS is PINGed, one silent for twice that is broken
        (a cut network does not always close the socket)."""
        heard = time.monotonic()
        while True:
            message = await pubsub.get_message(timeout=HEARTBEAT_SECONDS)
            now = time.monotonic()
            if message is None:
                if now - heard >= 2 * HEARTBEAT_SECONDS:
                    raise ConnectionError(f"no answer to PING in {2 * HEARTBEAT_SECONDS:.1f} s")
                if now - heard >= HEARTBEAT_SECONDS:
                    await pubsub.ping()
                continue
            heard = now
            if message["type"] == "subscribe":
                log.info("subscribed to events from other nodes on Redis (%s)", self._where)
                self.subscribed.set()
                self.local.resync()  # whatever other nodes sent while this one was not subscribed
            elif message["type"] == "message":
                await self._heard(message["data"])

    async def _heard(self, data: bytes) -> None:
        if len(data) > MAX_EVENT_BYTES:
            log.warning("a %d-byte message on %s is no event: resynchronising", len(data), self._channel)
            self.local.resync()
            return
        try:
            message = json.loads(data)
            node, channel, event = message["node"], message.get("channel"), message.get("event")
        except (ValueError, TypeError, KeyError):
            log.warning("a message on %s is no event: resynchronising", self._channel)
            self.local.resync()
            return
        if node == self.node:
            return
        if message.get("resync"):
            self.local.resync()
        elif isinstance(channel, str) and isinstance(event, dict):
            await self.local.publish(channel, event)
        else:
            log.warning("an event on %s names no channel: resynchronising", self._channel)
            self.local.resync()
