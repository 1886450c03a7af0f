"""Fencing: every action goes out on a check of the lock sent within FENCE_VALIDITY, and
concurrent askers share one check."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from watchdog.daemon.leadership import FENCE_VALIDITY, Leadership, NodeIdentity
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


class Ticks:
    """A monotonic clock moved by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def leadership(lock: CountingLock, ticks: Ticks | None = None) -> Leadership:
    me = NodeIdentity("n1", "host", 1)
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    return Leadership(lock, Nodes(), MemoryLedger(clock), me, monotonic=ticks or Ticks())


async def leading(lock: CountingLock, ticks: Ticks) -> Leadership:
    """A leader whose lock answers checks only once `lock.answer` is set."""
    lead = leadership(lock, ticks)
    lock.answer.set()
    assert await lead.ensure()
    lock.answer.clear()
    lock.checks = 0
    return lead


async def settle() -> None:
    for _ in range(3):  # the askers, then the check they started, get to run
        await asyncio.sleep(0)


async def test_concurrent_fences_share_one_check() -> None:
    lock, ticks = CountingLock(), Ticks()
    lead = await leading(lock, ticks)
    askers = [asyncio.create_task(lead.fence()) for _ in range(16)]
    await settle()
    assert lock.checks == 1
    lock.answer.set()
    assert await asyncio.gather(*askers) == [True] * 16


async def test_a_proof_serves_within_its_validity_and_the_next_check_starts_ahead() -> None:
    lock, ticks = CountingLock(), Ticks()
    lead = await leading(lock, ticks)
    lock.answer.set()
    assert await lead.fence() is True  # the check sent at 100.0
    assert lock.checks == 1
    ticks.now += FENCE_VALIDITY * 0.4
    assert await lead.fence() is True
    assert lock.checks == 1  # the proof served: no query
    lock.answer.clear()
    ticks.now = 100.0 + FENCE_VALIDITY * 0.6
    assert await lead.fence() is True  # at once, though the lock does not answer now
    await settle()
    assert lock.checks == 2  # the next check, started ahead
    ticks.now = 100.0 + FENCE_VALIDITY * 1.2  # the first proof ran out; the next is due
    lock.answer.set()
    await settle()
    assert await lead.fence() is True
    assert lock.checks == 2  # proven by the check started ahead


async def test_a_lost_lock_is_seen_once_the_proof_runs_out() -> None:
    lock, ticks = CountingLock(), Ticks()
    lead = await leading(lock, ticks)
    lock.answer.set()
    assert await lead.fence() is True
    lock.holding = False  # lost just after it was confirmed
    ticks.now += FENCE_VALIDITY + 0.001
    assert await lead.fence() is False
    assert lock.checks == 2
    assert await lead.fence() is False  # a lost lock proves nothing: asked again
    assert lock.checks == 3


async def test_a_newer_check_finding_the_lock_lost_ends_the_proof_at_once() -> None:
    lock, ticks = CountingLock(), Ticks()
    lead = await leading(lock, ticks)
    lock.answer.set()
    assert await lead.fence() is True
    lock.holding = False
    ticks.now += FENCE_VALIDITY * 0.6
    assert await lead.fence() is True  # still within the proof; the next check goes ahead
    await settle()  # and finds the lock lost
    ticks.now += FENCE_VALIDITY * 0.1  # the first proof has not run out
    assert await lead.fence() is False
    assert lock.checks == 3


async def test_a_check_sent_before_a_pause_is_not_shared_after_it() -> None:
    """A check still in flight after a pause (GC, SIGSTOP) proves nothing about now."""
    lock, ticks = CountingLock(), Ticks()
    lead = await leading(lock, ticks)
    before = asyncio.create_task(lead.fence())
    await settle()
    ticks.now += 30.0
    after = asyncio.create_task(lead.fence())
    await settle()
    assert lock.checks == 2
    lock.answer.set()
    assert await asyncio.gather(before, after) == [True, True]


async def test_stopping_cancels_a_check_started_ahead() -> None:
    lock, ticks = CountingLock(), Ticks()
    lead = await leading(lock, ticks)
    lock.answer.set()
    assert await lead.fence() is True
    lock.answer.clear()
    ticks.now += FENCE_VALIDITY * 0.6
    assert await lead.fence() is True
    await settle()
    assert lock.checks == 2
    await lead.stop()
    await settle()
    assert await lead.fence() is False  # stopped: a standby


async def test_a_standby_is_fenced_without_asking_the_lock() -> None:
    lock = CountingLock()
    assert await leadership(lock).fence() is False
    assert lock.checks == 0
