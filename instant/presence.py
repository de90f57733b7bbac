"""Presence across processes and nodes, in Redis: a person is online in a circle while any
process holds one of their connections there in state "online".

Each process writes its own view of a person in a circle (the aggregate of its local
connections) as one entry with an expiry, and rewrites every entry it holds every
HEARTBEAT_SECONDS. A process that dies (SIGKILL, a node lost) stops rewriting: its entries
expire after TTL_SECONDS and the next sweep (any process's heartbeat) removes them and
announces the change. Redis can lose all of it without harm: each process rewrites its
entries at its next heartbeat, and the presence a client saw is only a hint that the next
change corrects.

Every change (write, removal, sweep) runs as one Lua script that compares the person's
aggregate over every process before and after it: only the change that turns a person
online (the first connection anywhere) or offline (the last one) is announced, once, by the
process that made it. Times are Redis's own clock, so nodes' clocks need not agree.

A person's connections are counted the same way, so that `connections_per_person` bounds
them over every node, not per node: each process writes how many it holds, with an expiry,
rewritten by the same heartbeat; a new connection is admitted only if the sum over live
processes stays within the limit.

Keys, per circle: `msante:presence:<circle>:expiry` (sorted set of `<idnat>\\n<process>` by
expiry, ms) and `msante:presence:<circle>:state` (hash of the same members to
`<state>\\n<user JSON>`); `msante:presence:circles` lists the circles with entries; per person,
`msante:connections:<idnat>:expiry` and `msante:connections:<idnat>` (process to count).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

TTL_SECONDS = 15.0  # how long a dead process's connections stay present
HEARTBEAT_SECONDS = 5.0  # a third of the TTL: two heartbeats may be late before an entry expires

_COMMON = """
local function keys(circle)
  return 'msante:presence:' .. circle .. ':expiry', 'msante:presence:' .. circle .. ':state'
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function aggregate(circle, idnat)
  local z, h = keys(circle)
  local state = 'offline'
  for _, member in ipairs(redis.call('ZRANGE', z, 0, -1)) do
    if string.sub(member, 1, #idnat + 1) == idnat .. '\\n' then
      local value = redis.call('HGET', h, member)
      if value then
        local s = string.match(value, '^[^\\n]*')
        if s == 'online' then return 'online' end
        state = 'away'
      end
    end
  end
  return state
end
local function sweep(circle, now, changes)
  local z, h = keys(circle)
  local expired = redis.call('ZRANGEBYSCORE', z, '-inf', '(' .. now)
  local people, before = {}, {}
  for _, member in ipairs(expired) do
    local idnat = string.match(member, '^[^\\n]*')
    local value = redis.call('HGET', h, member)
    if value and not people[idnat] then
      people[idnat] = string.match(value, '\\n(.*)$')
      before[idnat] = aggregate(circle, idnat)
    end
  end
  for _, member in ipairs(expired) do
    redis.call('ZREM', z, member)
    redis.call('HDEL', h, member)
  end
  for idnat, user in pairs(people) do
    local after = aggregate(circle, idnat)
    if after ~= before[idnat] then
      table.insert(changes, circle); table.insert(changes, user); table.insert(changes, after)
    end
  end
  if redis.call('ZCARD', z) == 0 then
    redis.call('DEL', z, h)
    redis.call('SREM', 'msante:presence:circles', circle)
  end
end
"""

# ARGV: process, ttl (ms), then (circle, idnat, state or "", user JSON) per entry.
# Returns the announced changes, flat: circle, user JSON, state.
_SET = _COMMON + """
local node, ttl = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
local changes, swept = {}, {}
for i = 3, #ARGV, 4 do
  local circle, idnat, state, user = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if not swept[circle] then sweep(circle, now, changes); swept[circle] = true end
  local z, h = keys(circle)
  local member = idnat .. '\\n' .. node
  local before = aggregate(circle, idnat)
  if state == '' then
    redis.call('ZREM', z, member)
    redis.call('HDEL', h, member)
    if redis.call('ZCARD', z) == 0 then
      redis.call('DEL', z, h)
      redis.call('SREM', 'msante:presence:circles', circle)
    end
  else
    redis.call('ZADD', z, now + ttl, member)
    redis.call('HSET', h, member, state .. '\\n' .. user)
    redis.call('SADD', 'msante:presence:circles', circle)
  end
  local after = aggregate(circle, idnat)
  if after ~= before then
    table.insert(changes, circle); table.insert(changes, user); table.insert(changes, after)
  end
end
return changes
"""

_SWEEP = _COMMON + """
local now, changes = now_ms(), {}
for _, circle in ipairs(redis.call('SMEMBERS', 'msante:presence:circles')) do
  sweep(circle, now, changes)
end
return changes
"""

# ARGV: circle. Returns user JSON, state, for each person present (unexpired entries).
_PRESENT = _COMMON + """
local circle = ARGV[1]
local z, h = keys(circle)
local people, result = {}, {}
for _, member in ipairs(redis.call('ZRANGEBYSCORE', z, now_ms(), '+inf')) do
  local idnat = string.match(member, '^[^\\n]*')
  local value = redis.call('HGET', h, member)
  if value then
    local state, user = string.match(value, '^([^\\n]*)\\n(.*)$')
    local seen = people[idnat]
    if not seen then people[idnat] = {user, state} elseif state == 'online' then seen[2] = 'online' end
  end
end
for _, entry in pairs(people) do table.insert(result, entry[1]); table.insert(result, entry[2]) end
return result
"""

# ARGV: process, ttl (ms), limit (0: none), then (idnat, count) per person: this process now
# holds `count` of their connections. Returns 1, or 0 when a raised count would exceed the
# limit over every process (nothing is written then).
_COUNT = """
local node, ttl, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 4, #ARGV, 2 do
  local idnat, count = ARGV[i], tonumber(ARGV[i + 1])
  local z, h = 'msante:connections:' .. idnat .. ':expiry', 'msante:connections:' .. idnat
  for _, dead in ipairs(redis.call('ZRANGEBYSCORE', z, '-inf', '(' .. now)) do
    redis.call('ZREM', z, dead)
    redis.call('HDEL', h, dead)
  end
  if limit > 0 then
    local total = count
    local counts = redis.call('HGETALL', h)
    for j = 1, #counts, 2 do
      if counts[j] ~= node then total = total + tonumber(counts[j + 1]) end
    end
    if total > limit and count > tonumber(redis.call('HGET', h, node) or '0') then return 0 end
  end
  if count > 0 then
    redis.call('HSET', h, node, count)
    redis.call('ZADD', z, now + ttl, node)
    redis.call('PEXPIRE', z, ttl)
    redis.call('PEXPIRE', h, ttl)
  else
    redis.call('HDEL', h, node)
    redis.call('ZREM', z, node)
  end
end
return 1
"""

Change = tuple[int, dict[str, str], str]  # circle, user, state to announce


class SharedPresence:
    """This process's presence entries in Redis (one per person and circle it holds)."""

    def __init__(self, redis: aioredis.Redis, node: str, reachable: Callable[[], bool],
                 ttl: float = TTL_SECONDS) -> None:
        self.reachable = reachable  # whether Redis answers now (the bus's subscription holds)
        self._node = node
        self._ttl_ms = int(ttl * 1000)
        self._set = redis.register_script(_SET)
        self._sweep = redis.register_script(_SWEEP)
        self._present = redis.register_script(_PRESENT)
        self._count = redis.register_script(_COUNT)

    async def count(self, counts: dict[str, int], limit: int = 0) -> bool:
        """Record how many connections of each person this process holds; False (and nothing
        recorded) when one more would take a person past `limit` over every process."""
        args: list = [self._node, self._ttl_ms, limit]
        for idnat, count in counts.items():
            args += [idnat, count]
        return await self._count(args=args) == 1

    async def write(self, entries: list[tuple[int, dict[str, str], str | None]]) -> list[Change]:
        """Record this process's state of each (circle, user) (None: it holds none of their
        connections there any more); what changed a person's presence anywhere, to announce."""
        args: list[Any] = [self._node, self._ttl_ms]
        for circle, user, state in entries:
            args += [circle, user["id"], state or "", json.dumps(user)]
        return _changes(await self._set(args=args))

    async def sweep(self) -> list[Change]:
        """Remove the entries of processes that stopped rewriting them; the changes to announce."""
        return _changes(await self._sweep())

    async def present(self, circle: int) -> list[dict[str, Any]]:
        flat = await self._present(args=[circle])
        people = [{"user": json.loads(flat[i]), "state": flat[i + 1].decode()} for i in range(0, len(flat), 2)]
        return sorted(people, key=lambda p: p["user"]["id"])


def _changes(flat: list[bytes]) -> list[Change]:
    return [(int(flat[i]), json.loads(flat[i + 1]), flat[i + 2].decode()) for i in range(0, len(flat), 3)]
