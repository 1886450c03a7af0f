"""Group commit for outcome rows.

After a mass freeze, recovery calls finish faster than one transaction each can be
committed. Every caller still waits until its own outcome is committed (so an instance
stops being busy only once its outcome is on record), but outcomes that arrive while a
write is in progress go together in the next one: one commit when idle, few under load.
Under load (the last write carried more than one outcome, or outcomes arrive less than
`linger` apart) the next write waits `linger` seconds more for company: a few
milliseconds of delay for far fewer commits. A lone outcome is written at once.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence

from watchdog.ports import Finished, Ledger


class OutcomeWriter:
    def __init__(
        self,
        ledger: Ledger,
        max_batch: int = 200,
        linger: float = 0.01,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ledger = ledger
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
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            try:
                await self._ledger.finish_actions([f for f, _ in batch])
            except Exception as exc:  # every waiter hears it; the writer goes on
                for _f, wait in batch:
                    if not wait.done():
                        wait.set_exception(exc)
            else:
                for _f, wait in batch:
                    if not wait.done():
                        wait.set_result(None)
            busy = len(batch) > 1
