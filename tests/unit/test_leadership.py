"""Fencing: every action asks the lock itself, and concurrent askers share one check."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from watchdog.daemon.leadership import Leadership, NodeIdentity
from watchdog.testing import FakeClock, MemoryLedger


class CountingLock:
    def __init__(self) -> None:
        self.checks = 0
        self.holding = True
        self.answer = asyncio.Event()

    async def acquire(self) -> bool:
        return True

    async def held(self) -> bool:
        self.checks += 1
        await self.answer.wait()
        return self.holding

    async def release(self) -> None:
        self.holding = False


class Nodes:
    async def update(self, *_args: object, **_kwargs: object) -> None:
        return None

    async def demote_others(self, *_args: object, **_kwargs: object) -> None:
        return None


def leadership(lock: CountingLock) -> Leadership:
    me = NodeIdentity("n1", "host", 1)
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    return Leadership(lock, Nodes(), MemoryLedger(clock), me)


async def test_concurrent_fences_share_one_check_and_a_later_one_asks_again() -> None:
    lock = CountingLock()
    lead = leadership(lock)
    lock.answer.set()
    assert await lead.ensure()
    lock.answer.clear()
    lock.checks = 0
    askers = [asyncio.create_task(lead.fence()) for _ in range(16)]
    for _ in range(3):  # the askers, then the check they started, get to run
        await asyncio.sleep(0)
    assert lock.checks == 1
    lock.answer.set()
    assert await asyncio.gather(*askers) == [True] * 16
    lock.holding = False  # lost since: the next asker is told so
    assert await lead.fence() is False
    assert lock.checks == 2


async def test_a_standby_is_fenced_without_asking_the_lock() -> None:
    lock = CountingLock()
    assert await leadership(lock).fence() is False
    assert lock.checks == 0
