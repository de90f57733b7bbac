"""Login failures counted across nodes (mailserver/logins.py SharedFailures): two of them on one
private redis-server stand for two nodes. The per-process Throttle is tested in test_logins.py."""
from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from mailserver.logins import SharedFailures, Throttle

ADDRESS, ACCOUNT = "password:address:192.0.2.7", "password:account:jean.dupont@msante.test"


@pytest.fixture
async def clients(redis_server):
    opened = [aioredis.from_url(redis_server.url) for _ in range(3)]
    yield opened
    for client in opened:
        await client.aclose()


async def test_failures_count_across_nodes(clients):
    node_a, node_b, spy = SharedFailures(clients[0]), SharedFailures(clients[1]), clients[2]
    assert await node_a.wait(ADDRESS, ACCOUNT) == 0
    for node in (node_a, node_b, node_a, node_b):  # an attacker alternating between the nodes
        await node.failed(ADDRESS, ACCOUNT)
    # 4 failures in all, 2 on each: each node alone would let the next attempt through at once
    assert await node_a.wait(ADDRESS) == await node_b.wait(ACCOUNT) == Throttle.step(4) == 1.0
    keys = await spy.keys("msante:throttle:*")
    assert len(keys) == 2 and not any(b"192.0.2.7" in k or b"jean" in k for k in keys)  # hashed
    assert all(0 < ttl <= Throttle.FORGET for ttl in [await spy.ttl(k) for k in keys])  # Redis forgets them
    await node_b.forgive(ACCOUNT)  # a login on B clears the account on A too
    assert await node_a.wait(ACCOUNT) == 0
    assert await node_a.wait(ADDRESS) == 1.0


async def test_without_redis_logins_go_on(clients, redis_server):
    node_a = SharedFailures(clients[0])
    for _ in range(4):
        await node_a.failed(ADDRESS)
    redis_server.kill()
    await node_a.failed(ADDRESS)  # neither raises nor blocks longer than TIMEOUT
    assert await node_a.wait(ADDRESS) == 0  # each process's own Throttle is all that counts now
    redis_server.start()  # a fresh Redis: the counts restart from the next failure
    await node_a.failed(ADDRESS)
    assert await node_a.wait(ADDRESS) == 0 and await node_a.wait(ACCOUNT) == 0
