"""instant/ordering.py: a circle's message events handed on in seq order, once per process,
whatever order the workers' announcements arrive in; an event that waits too long goes on."""
from __future__ import annotations

import asyncio

from instant import ordering
from instant.ordering import InOrder


def event(seq: int) -> dict:
    return {"type": "message", "seq": seq}


async def test_an_early_message_waits_for_the_one_before_it() -> None:
    delivered: list[int] = []
    order = InOrder(lambda e: delivered.append(e["seq"]))
    order.message(event(5))  # the first one heard sets the pace
    order.message(event(7))  # 6 was committed first, by another worker: its event is on the way
    order.message(event(8))
    assert delivered == [5]
    order.message(event(6))
    assert delivered == [5, 6, 7, 8]
    order.message(event(7))  # heard twice (a resync): handed on, connections drop what they had
    assert delivered == [5, 6, 7, 8, 7]


async def test_a_gap_that_stays_goes_on_after_the_wait() -> None:
    delivered: list[int] = []
    order = InOrder(lambda e: delivered.append(e["seq"]))
    order.message(event(1))
    order.message(event(3))
    await asyncio.sleep(ordering.WAIT * 3)
    assert delivered == [1, 3]  # connections see the gap and read 2 from the store
    order.message(event(4))
    assert delivered == [1, 3, 4]
    order.message(event(2))  # late: handed on, connections that caught up drop it
    assert delivered == [1, 3, 4, 2]
