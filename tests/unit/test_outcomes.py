"""Group commit of outcome rows: one write when idle, the rest together, errors to all;
while the database is away, outcomes are held (bounded) and written once it answers."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from watchdog.core.errors import StoreError, StoreUnavailable
from watchdog.core.model import Action, Incident, IncidentState, Outcome, Reason
from watchdog.core.ports import Finished
from watchdog.engine.outcomes import OutcomeWriter

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def finished(n: int) -> Finished:
    incident = Incident(n, f"i{n}", Reason.STALE_HEARTBEAT, IncidentState.OPEN, 1, T0, T0)
    return Finished(incident, 1, Action.API_RESTART, Outcome.OK, {}, 0.05, T0)


class GatedLedger:
    """finish_actions records each batch and waits for `gate` before it returns."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.fail_with: Exception | None = None  # once
        self.down = False  # every write fails as unavailable while set

    async def finish_actions(self, rows: Sequence[Finished]) -> None:
        self.batches.append([f.incident.id for f in rows])
        await self.gate.wait()
        if self.down:
            raise StoreUnavailable("database unavailable (record outcomes): gone")
        if self.fail_with is not None:
            error, self.fail_with = self.fail_with, None
            raise error


async def test_outcomes_arriving_during_a_write_are_committed_together() -> None:
    ledger = GatedLedger()
    writer = OutcomeWriter(ledger)  # type: ignore[arg-type]
    first = asyncio.create_task(writer.write([finished(1)]))
    await asyncio.sleep(0)
    later = [asyncio.create_task(writer.write([finished(n)])) for n in (2, 3, 4)]
    await asyncio.sleep(0)
    assert ledger.batches == [[1]]  # written at once, not after a linger
    assert not first.done()  # a caller returns only once its row is committed
    ledger.gate.set()
    await asyncio.gather(first, *later)
    assert ledger.batches == [[1], [2, 3, 4]]


async def test_a_rejected_write_reaches_its_callers_and_the_next_write_goes_on() -> None:
    ledger = GatedLedger()
    ledger.fail_with = StoreError("database rejected a statement (record outcomes): no")
    ledger.gate.set()
    writer = OutcomeWriter(ledger)  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="rejected"):
        await writer.write([finished(1), finished(2)])
    await writer.write([finished(3)])
    assert ledger.batches == [[1, 2], [3]]


async def test_while_the_database_is_away_outcomes_are_held_and_written_once_it_answers() -> None:
    ledger = GatedLedger()
    ledger.gate.set()
    ledger.down = True
    waits: list[float] = []
    outages: list[str] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 4:
            ledger.down = False  # the database answers again during the fourth wait
        await asyncio.sleep(0)

    writer = OutcomeWriter(
        ledger,  # type: ignore[arg-type]
        sleep=sleep,
        linger=0,
        on_unavailable=lambda: outages.append("lost"),
    )
    first = asyncio.create_task(writer.write([finished(1)]))
    for _ in range(3):
        await asyncio.sleep(0)
    later = asyncio.create_task(writer.write([finished(2)]))  # arrives mid-outage
    while not first.done():
        await asyncio.sleep(0)
    await asyncio.gather(first, later)
    assert len(waits) == 4
    assert all(0 < w <= 5.0 for w in waits)
    assert outages == ["lost"] * 4  # every failed try tells the guards
    # The held batch is tried again as it was; the one that came meanwhile follows.
    assert ledger.batches == [[1]] * 5 + [[2]]
    assert writer.held == []


async def test_outcomes_held_are_bounded_and_listed() -> None:
    ledger = GatedLedger()
    ledger.down = True
    ledger.gate.set()

    async def sleep(_seconds: float) -> None:
        await asyncio.sleep(0.001)

    writer = OutcomeWriter(ledger, sleep=sleep, max_held=2)  # type: ignore[arg-type]
    held = asyncio.create_task(writer.write([finished(1), finished(2)]))
    await asyncio.sleep(0.01)
    with pytest.raises(StoreUnavailable, match="2 outcomes already wait"):
        await writer.write([finished(3)])
    assert [f.incident.id for f in writer.held] == [1, 2]
    ledger.down = False
    await held
    assert writer.held == []


async def test_batches_are_bounded() -> None:
    ledger = GatedLedger()
    ledger.gate.set()
    writer = OutcomeWriter(ledger, max_batch=2)  # type: ignore[arg-type]
    await writer.write([finished(n) for n in range(5)])
    assert ledger.batches == [[0, 1], [2, 3], [4]]


async def test_a_cancelled_caller_does_not_cancel_the_shared_write() -> None:
    ledger = GatedLedger()
    writer = OutcomeWriter(ledger)  # type: ignore[arg-type]
    first = asyncio.create_task(writer.write([finished(1)]))
    await asyncio.sleep(0)
    first.cancel()
    other = asyncio.create_task(writer.write([finished(2)]))
    await asyncio.sleep(0)
    ledger.gate.set()
    await other
    assert ledger.batches == [[1], [2]]


async def test_under_load_the_next_write_lingers_for_company() -> None:
    ledger = GatedLedger()
    lingering = asyncio.Event()
    go_on = asyncio.Event()
    lingered: list[float] = []

    async def sleep(seconds: float) -> None:
        lingered.append(seconds)
        lingering.set()
        await go_on.wait()

    writer = OutcomeWriter(ledger, linger=0.01, sleep=sleep)  # type: ignore[arg-type]
    first = asyncio.create_task(writer.write([finished(1), finished(2)]))
    await asyncio.sleep(0)
    second = asyncio.create_task(writer.write([finished(3)]))  # while [1, 2] is written
    await asyncio.sleep(0)
    ledger.gate.set()
    await asyncio.wait_for(
        lingering.wait(), 5
    )  # the first batch carried two: the writer waits before the next
    late = asyncio.create_task(writer.write([finished(4)]))
    await asyncio.sleep(0)
    go_on.set()
    await asyncio.gather(first, second, late)
    assert ledger.batches == [[1, 2], [3, 4]]
    assert lingered == [0.01]


async def test_outcomes_arriving_close_together_wait_for_company_a_lone_one_does_not() -> None:
    """One outcome every few milliseconds (calls finishing one by one in a storm) leaves
    no write carrying several, so arrival spacing must be enough to start lingering."""
    ledger = GatedLedger()
    ledger.gate.set()
    clock = [100.0]
    lingered: list[float] = []

    async def sleep(seconds: float) -> None:
        lingered.append(seconds)

    writer = OutcomeWriter(
        ledger,  # type: ignore[arg-type]
        linger=0.01,
        sleep=sleep,
        monotonic=lambda: clock[0],
    )
    await writer.write([finished(1)])
    assert lingered == []  # alone: written at once
    clock[0] += 5.0
    await writer.write([finished(2)])
    assert lingered == []  # seconds after the last one: still alone
    clock[0] += 0.003
    await writer.write([finished(3)])
    assert lingered == [0.01]  # 3 ms after the last one: a storm, wait for company
    assert ledger.batches == [[1], [2], [3]]
