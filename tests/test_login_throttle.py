"""The login throttle (mailserver/logins.py): the delay after repeated failures, and, with
several nodes, failures counted across them in Redis (two RedisThrottles on one private
redis-server stand for two nodes)."""
from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from mailserver.logins import RedisThrottle, Throttle

ADDRESS, ACCOUNT = "address:192.0.2.7", "account:jean.dupont@msante.test"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_delay_doubles_after_the_free_failures_and_is_forgotten():
    clock = Clock()
    throttle = Throttle(clock)
    delays = []
    for _ in range(12):
        delays.append(await throttle.delay(ADDRESS, ACCOUNT))
        await throttle.failed(ADDRESS, ACCOUNT)
    assert delays == [0, 0, 0, 0.5, 1, 2, 4, 8, 16, 16, 16, 16]
    await throttle.succeeded("jean.dupont@msante.test")  # the account is cleared, not the address
    assert await throttle.delay(ACCOUNT) == 0 and await throttle.delay(ADDRESS) == 16
    clock.now += Throttle.FORGET
    assert await throttle.delay(ADDRESS) == 0


@pytest.fixture
async def clients(redis_server):
    opened = [aioredis.from_url(redis_server.url) for _ in range(3)]
    yield opened
    for client in opened:
        await client.aclose()


async def test_failures_count_across_nodes(clients):
    node_a, node_b, spy = RedisThrottle(clients[0]), RedisThrottle(clients[1]), clients[2]
    for node in (node_a, node_b, node_a, node_b):  # an attacker alternating between the nodes
        await node.failed(ADDRESS, ACCOUNT)
    # 4 failures in all, 2 on each: each node alone would let the next attempt through at once
    assert await node_a.delay(ADDRESS) == await node_b.delay(ACCOUNT) == 1.0
    assert await node_a.local.delay(ADDRESS) == 0
    keys = await spy.keys("msante:throttle:*")
    assert len(keys) == 2 and not any(b"192.0.2.7" in k or b"jean" in k for k in keys)  # hashed
    assert all(0 < ttl <= Throttle.FORGET for ttl in [await spy.ttl(k) for k in keys])  # Redis forgets them
    await node_b.succeeded("jean.dupont@msante.test")  # a login on B clears the account on A too
    assert await node_a.delay(ACCOUNT) == 0
    assert await node_a.delay(ADDRESS) == 1.0


async def test_without_redis_each_node_still_throttles(clients, redis_server):
    node_a, node_b = RedisThrottle(clients[0]), RedisThrottle(clients[1])
    await node_b.failed(ADDRESS)
    redis_server.kill()
    for _ in range(4):
        await node_a.failed(ADDRESS)
    assert await node_a.delay(ADDRESS) == 1.0  # its own four failures
    assert await node_b.delay(ADDRESS) == 0  # B saw one: the shared count is gone with Redis
    redis_server.start()  # a fresh Redis: the counts restart from the next failure
    await node_b.failed(ADDRESS)
    assert await node_a.delay(ADDRESS) == 1.0 and await node_b.delay(ADDRESS) == 0
