"""A circle's message events put back in seq order before the hub hands them to connections.

Within one process, messages are announced in commit order (Circles.ordered). Across workers
and nodes they are not: worker A commits seq 5, worker B commits seq 6 a moment later and
announces it to its own connections at once, while A's announcement of 5 is still on its way
through Redis. Every connection of B following the circle then saw a gap and read the store
for it, one query per connection (bench/instant.py: with two workers these catch-ups were a
third of a worker's time and held the database pool). Seqs follow commits (the circle's row
is locked until the insert commits), so the missing event is already on its way: an early
event waits here, once per process, until the ones before it arrive, at most WAIT seconds.
Past that it goes on as it is and the connections catch up from the store, as before: this
saves queries, correctness never depends on it.
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable

# s an early event waits for those before it. A Redis hop takes ~1 ms, but the other worker
# announces only once its commit has returned to it: on a loaded machine (bench/instant.py,
# load average 15 on 2 cores) 50 ms still let most gaps through to the store, where each
# connection's catch-up costs four round trips (pool ping, BEGIN, SELECT, ROLLBACK).
WAIT = 0.2

Deliver = Callable[[dict[str, Any]], None]


class InOrder:
    def __init__(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self._next: int | None = None  # the seq expected next; None until one is seen
        self._early: dict[int, dict[str, Any]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def message(self, event: dict[str, Any]) -> None:
        seq = event["seq"]
        if self._next is not None and seq > self._next:
            self._early[seq] = event
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(WAIT, self.flush)
            return
        self._deliver(event)  # the next one, or one delivered already (connections drop it)
        if self._next is None or seq == self._next:
            self._next = seq + 1
            while self._next in self._early:
                self._deliver(self._early.pop(self._next))
                self._next += 1
            if not self._early and self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def flush(self) -> None:
        """Hand on what waits, in order, and expect what follows the last of it (after WAIT, an
        overflow, or the last listener gone): the connections catch up on what is missing."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for seq in sorted(self._early):
            self._deliver(self._early.pop(seq))
            self._next = seq + 1
