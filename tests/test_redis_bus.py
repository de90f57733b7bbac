"""The Redis event bus (store/redis_bus.py) between two processes' buses, on a private
redis-server that the tests kill, freeze and restart: events cross once and in order, a
process never hears its own twice, and whatever is lost on the way ends in OVERFLOW, on
which sessions re-read the store."""
from __future__ import annotations

import asyncio
import os
import signal

import pytest
import redis.asyncio as aioredis

import config
from store import redis_bus
from store.events import OVERFLOW
from store.redis_bus import CHANNEL, RedisBus

WAIT = 10.0


async def started(url: str) -> RedisBus:
    bus = RedisBus(url)
    assert await bus.start(WAIT), "the bus did not subscribe"
    return bus


async def take(events, count: int = 1) -> list:
    return [await asyncio.wait_for(anext(events), WAIT) for _ in range(count)]


async def test_events_cross_once_and_in_order(redis_server):
    a, b = await started(redis_server.url), await started(redis_server.url)
    try:
        on_a, on_b = aiter(a.subscribe("circle:1")), aiter(b.subscribe("circle:1"))
        elsewhere = b.subscribe("circle:2")
        for seq in range(1, 301):
            await a.publish("circle:1", {"type": "message", "circle": 1, "seq": seq})
        heard = await take(on_b, 300)
        assert [e["seq"] for e in heard] == list(range(1, 301))
        assert heard[0] == {"type": "message", "circle": 1, "seq": 1, "channel": "circle:1"}
        assert [e["seq"] for e in await take(on_a, 300)] == list(range(1, 301))  # A's own, at once
        # Redis handed A its own 300 back before B's marker (B sent it after hearing them all):
        # had A not skipped them, seq 1 would come next instead of the marker.
        await b.publish("circle:1", {"type": "marker"})
        assert (await take(on_a))[0]["type"] == "marker"
        assert elsewhere.queue.empty()
    finally:
        await a.close()
        await b.close()


async def test_outbox_overflow_makes_the_other_nodes_resynchronise(redis_server, monkeypatch):
    monkeypatch.setattr(redis_bus, "OUTBOX_DEPTH", 5)
    a, b = await started(redis_server.url), await started(redis_server.url)
    try:
        on_b = aiter(b.subscribe("person:1"))
        for n in range(20):  # no await yields to the sender: the outbox overflows at the sixth
            await a.publish("person:1", {"type": "alert", "n": n})
        first, *rest = await take(on_b, 6)
        assert first is OVERFLOW  # the resync notice comes before what could still be sent
        assert [e["n"] for e in rest] == [0, 1, 2, 3, 4]
        await a.publish("person:1", {"type": "alert", "n": 99})
        assert (await take(on_b))[0]["n"] == 99  # and nothing more about the 15 lost
    finally:
        await a.close()
        await b.close()


async def test_redis_killed_and_restarted_sessions_resynchronise(redis_server):
    a, b = await started(redis_server.url), await started(redis_server.url)
    try:
        on_b = aiter(b.subscribe("mailbox:7"))
        redis_server.kill()
        await a.publish("mailbox:7", {"type": "new_mail", "uid": 1})  # lost: nobody to carry it
        for _ in range(100):
            if not b.subscribed.is_set():
                break
            await asyncio.sleep(0.05)
        assert not b.subscribed.is_set(), "the bus did not notice Redis dying"
        redis_server.start()
        await asyncio.wait_for(b.subscribed.wait(), WAIT)
        await asyncio.wait_for(a.subscribed.wait(), WAIT)
        assert (await take(on_b))[0] is OVERFLOW  # B re-subscribed: re-read the store
        await a.publish("mailbox:7", {"type": "new_mail", "uid": 2})
        after = []
        while not after or after[-1] is OVERFLOW:  # A's resync notice may come too, never the lost event
            after += await take(on_b)
        assert after[-1] == {"type": "new_mail", "uid": 2, "channel": "mailbox:7"}
    finally:
        await a.close()
        await b.close()


async def test_a_frozen_redis_is_found_out_by_the_heartbeat(redis_server, monkeypatch):
    """SIGSTOP keeps the socket open: only the PING that gets no answer tells."""
    monkeypatch.setattr(redis_bus, "HEARTBEAT_SECONDS", 0.2)
    bus = await started(redis_server.url)
    try:
        events = aiter(bus.subscribe("circle:3"))
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        try:
            for _ in range(100):
                if not bus.subscribed.is_set():
                    break
                await asyncio.sleep(0.05)
            assert not bus.subscribed.is_set(), "a frozen Redis went unnoticed"
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        await asyncio.wait_for(bus.subscribed.wait(), WAIT)
        assert (await take(events))[0] is OVERFLOW
    finally:
        await bus.close()


async def test_what_is_no_event_on_the_channel_makes_subscribers_resynchronise(redis_server):
    bus = await started(redis_server.url)
    client = aioredis.from_url(redis_server.url)
    try:
        events = aiter(bus.subscribe("circle:4"))
        for junk in (b"not json", b'["a list"]', b'{"node": "x", "channel": 4, "event": {}}',
                     b'{"node": "x", "channel": "circle:4", "event": {}, "pad": "' + b"x" * redis_bus.MAX_EVENT_BYTES + b'"}'):
            await client.publish(CHANNEL, junk)
            assert (await take(events))[0] is OVERFLOW
        await client.publish(CHANNEL, b'{"node": "x", "channel": "circle:4", "event": {"type": "typing"}}')
        assert (await take(events))[0] == {"type": "typing", "channel": "circle:4"}
    finally:
        await client.aclose()
        await bus.close()


async def test_an_unreachable_redis_does_not_stop_the_process(redis_server):
    redis_server.kill()
    bus = RedisBus(redis_server.url)
    try:
        assert not await bus.start(0.3)
        events = aiter(bus.subscribe("circle:5"))
        await bus.publish("circle:5", {"type": "typing"})  # this process's subscribers still hear it
        assert (await take(events))[0] == {"type": "typing", "channel": "circle:5"}
        redis_server.start()
        await asyncio.wait_for(bus.subscribed.wait(), WAIT)
        assert (await take(events))[0] is OVERFLOW
    finally:
        await bus.close()


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "127.0.0.1:6379", "postgresql://x"])
def test_bus_url_must_name_redis(url):
    with pytest.raises(config.ConfigError, match="bus.url must start with redis://"):
        config.load(environ={"MSANTE_BUS__URL": url})


def test_bus_url_defaults_to_this_process_only():
    assert config.load(environ={}).bus_url == ""
    assert config.load(environ={"MSANTE_BUS__URL": "redis://10.0.0.7:6379/0"}).bus_url == "redis://10.0.0.7:6379/0"
