"""Group commit for outcome rows.

After a mass freeze, recovery calls finish faster than one transaction each can be
committed. Every caller still waits until its own outcome is committed (so an instance
stops being busy only once its outcome is on record), but outcomes that arrive while a
write is in progress go together in the next one: one commit when idle, few under load.
Under load (the last write carried more than one outcome, or outcomes arrive less than
`linger` apart) the next write waits `linger` seconds more for company: an instance
stays busy a moment longer, and a storm's outcomes go in a few large commits rather than
many small ones (each commit costs the daemon several round trips of CPU). A lone
outcome is written at once.

An outcome is never dropped because the database is away (restarted, read-only, our
connections killed): the write is tried again until the database answers, and its
callers wait, so the action stays in flight (its instance busy, its intent owned) until
its outcome is on record. The database holds each intent to one outcome, so a write
repeated after a lost commit acknowledgement appends nothing twice. Outcomes held are
bounded in number; beyond that, a new outcome fails at once (its caller logs it).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence

from watchdog.core.errors import StoreUnavailable, WatchdogError
from watchdog.core.ports import Finished, Ledger
from watchdog.observability import get_logger
from watchdog.resilience import retry_until_available

log = get_logger(component="outcomes")


class OutcomeWriter:
    def __init__(
        self,
        ledger: Ledger,
        max_batch: int = 200,
        linger: float = 0.05,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        *,
        max_held: int = 10_000,
        on_unavailable: Callable[[], None] | None = None,
    ) -> None:
        self._ledger = ledger
        self._max_held = max_held
        # Told of every failed write: the database was away (the guards start a grace).
        self._on_unavailable = on_unavailable
        self._max_batch = max_batch
        self._linger = linger
        self._sleep = sleep
        self._monotonic = monotonic
        self._last_arrival = -math.inf
        self._arrival_gap = math.inf  # between the two latest write() calls
        self._pending: list[tuple[Finished, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def write(self, finished: Sequence[Finished]) -> None:
        """Return once these outcomes are committed; raise what the write raised."""
        if not finished:
            return
        if len(self._pending) + len(finished) > self._max_held:
            raise StoreUnavailable(
                f"{len(self._pending)} outcomes already wait for the database to answer; "
                "this one is not recorded"
            )
        arrived = self._monotonic()
        self._arrival_gap, self._last_arrival = arrived - self._last_arrival, arrived
        loop = asyncio.get_running_loop()
        waits = [loop.create_future() for _ in finished]
        self._pending += zip(finished, waits, strict=True)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain(), name="outcome-writer")
        # Shielded: a caller cancelled mid-wait must not cancel a write others share.
        await asyncio.shield(asyncio.gather(*waits))

    async def _drain(self) -> None:
        busy = False
        while self._pending:
            busy = busy or self._arrival_gap < self._linger
            if busy and self._linger > 0 and len(self._pending) < self._max_batch:
                await self._sleep(self._linger)
            batch = self._pending[: self._max_batch]  # new outcomes only ever go at the end
            outcomes = [f for f, _ in batch]

            async def record(outcomes: list[Finished] = outcomes) -> None:
                await self._ledger.finish_actions(outcomes)

            try:
                await retry_until_available(record, on_failure=self._held, sleep=self._sleep)
            except Exception as exc:  # every waiter hears it; the writer goes on
                del self._pending[: len(batch)]
                for _f, wait in batch:
                    if not wait.done():
                        wait.set_exception(exc)
            else:
                del self._pending[: len(batch)]
                for _f, wait in batch:
                    if not wait.done():
                        wait.set_result(None)
            busy = len(batch) > 1

    @property
    def held(self) -> list[Finished]:
        """Outcomes not yet on record (at shutdown: the ones that will be lost)."""
        return [f for f, _ in self._pending]

    def _held(self, error: WatchdogError, failures: int) -> None:
        if self._on_unavailable is not None:
            self._on_unavailable()
        if failures == 1:  # once per outage, not once per try
            log.warning(
                "outcomes_held_until_the_database_answers",
                held=len(self._pending),
                error=str(error),
            )
