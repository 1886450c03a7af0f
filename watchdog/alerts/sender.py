"""Alert orchestration: the feeder fills the outbox from the audit trail, the sender
drains it over HTTP. Both are safe to run on every replica at once.

AlertFeeder.feed: audit rows past the cursor → one outbox row per configured sink. On
PostgreSQL audit ids are taken before commit, so a row can become visible after a higher
one; the feeder therefore only reads up to the highest id it saw at least `settle`
seconds ago (longer than any watchdog transaction may stay open), never skipping a row.

AlertSender.send_due: claim due rows (a lease, not a lock: a crashed node's rows come
back when it lapses), post them, mark each sent or failed. Each sink gets its rows in
order, oldest first: after a failed attempt the sink's later rows wait (untried, no
attempt counted) until the failed one is due again, sent, or given up. A run is bounded:
at most `per_sink` rows per sink, up to `parallel` sinks at once, every request bounded by
its sink's timeout, the whole run by `budget`. Errors are one line and never carry a
webhook URL's path or query, nor a bearer token.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import httpx

from watchdog.alerts import formats
from watchdog.config import SinkSettings
from watchdog.core.errors import StoreError, describe
from watchdog.core.model import AuditRow
from watchdog.core.policy import exponential
from watchdog.masking import check_token, mask_urls_in
from watchdog.store.database import Database
from watchdog.store.outbox import Claimed, NewAlert, SqlOutbox

log = logging.getLogger(__name__)

TokenLookup = Callable[[str], str | None]
BACKOFF_BASE = 2.0  # seconds before the 2nd attempt; doubles per failed attempt ...
BACKOFF_CAP = 300.0  # ... up to 5 minutes
# The sink understood the request and refused this body: the row fails at once. Any other
# failure (no answer, 5xx, 429, 401/403/404: the sink or its configuration) is retried.
REJECTED = frozenset({400, 413, 422})
_ERROR_CHARS = 300
_BODY_CHARS = 120


def backoff(attempts: int) -> float:
    """Seconds before the next try after `attempts` failed ones: 2, 4, 8 … 300."""
    return exponential(BACKOFF_BASE, attempts, cap=BACKOFF_CAP)


def _env_token(name: str) -> str | None:
    return os.environ.get(name) or None


# --------------------------------------------------------------------------- feeding


class AlertFeeder:
    """Turns alert-worthy audit rows into outbox rows, exactly once across replicas."""

    def __init__(
        self,
        db: Database,
        sinks: Sequence[SinkSettings],
        *,
        settle: float | None = None,
        batch: int = 500,
    ) -> None:
        """`settle`: None is 0 on SQLite (one writer: ids commit in order), and twice the
        database timeout plus a second on PostgreSQL."""
        self._outbox = SqlOutbox(db)
        self._sinks = tuple(sinks)
        self.settle = settle if settle is not None else _default_settle(db)
        self._batch = batch
        self._seen: deque[tuple[datetime, int]] = deque()
        self._settled = 0

    async def feed(self, now: datetime | None = None) -> int:
        """Enqueue the alerts of new audit rows; the number of outbox rows written."""
        if not self._sinks:
            return 0
        now = now or await self._outbox.db_now()
        if await self._outbox.cursor() is None:
            start = await self._outbox.start_cursor(now)
            log.info("alerting starts after audit row %d (earlier rows are not alerted)", start)
            return 0
        horizon = self._horizon(now, await self._outbox.max_audit_id())
        result = await self._outbox.feed(
            now, horizon, self._alerts_for, formats.ALERT_ACTIONS, self._batch
        )
        if result.enqueued:
            log.info("%d alert(s) enqueued for %d sink(s)", result.audit_rows, len(self._sinks))
        return result.enqueued

    def _horizon(self, now: datetime, newest: int) -> int:
        """The highest audit id seen at least `settle` seconds ago: every lower id has
        been committed or rolled back by now."""
        self._seen.append((now, newest))
        ripe = now - timedelta(seconds=self.settle)
        while self._seen and self._seen[0][0] <= ripe:
            self._settled = max(self._settled, self._seen.popleft()[1])
        return self._settled

    def _alerts_for(self, row: AuditRow) -> list[NewAlert]:
        if not formats.alert_worthy(row):
            return []
        bodies = {kind: formats.encode(kind, row) for kind in {s.kind for s in self._sinks}}
        return [NewAlert(str(row.action), s.name, bodies[s.kind]) for s in self._sinks]


def _default_settle(db: Database) -> float:
    return 0.0 if db.is_sqlite else 2 * db.timeout + 1.0


# --------------------------------------------------------------------------- sending


@dataclass(frozen=True, slots=True)
class Failure:
    message: str  # one line, secrets removed
    rejected: bool = False  # the sink refused this body (400, 413, 422): retrying cannot help


@dataclass
class SendReport:
    claimed: int = 0
    sent: int = 0
    retrying: int = 0  # failed attempts that will be retried
    failed: int = 0  # given up: rejected, or max_attempts reached
    deferred: int = 0  # not tried: an earlier row of their sink failed in this run
    lost: int = 0  # the claim lapsed before the row was marked (another node has it)


class AlertSender:
    """Delivers claimed outbox rows to their sinks; see the module docstring."""

    def __init__(
        self,
        db: Database,
        sinks: Sequence[SinkSettings],
        node_id: str,
        client: httpx.AsyncClient,
        max_attempts: int = 12,
        token: TokenLookup = _env_token,
        *,
        per_sink: int = 10,
        parallel: int = 4,
    ) -> None:
        if max_attempts < 1 or per_sink < 1 or parallel < 1:
            raise ValueError("max_attempts, per_sink and parallel must be at least 1")
        self._outbox = SqlOutbox(db)
        self._sinks: Mapping[str, SinkSettings] = {s.name: s for s in sinks}
        self._node = node_id
        self._client = client
        self._max_attempts = max_attempts
        self._token = token
        self._per_sink = per_sink
        self._parallel = parallel
        slowest = max((s.timeout for s in sinks), default=0.0)
        rounds = math.ceil(len(self._sinks) / parallel) * per_sink
        # The longest one run may take: each row's request and mark, one sink after another.
        self.budget = rounds * (slowest + db.timeout) + db.timeout
        # A claim outlives the run that made it, so a live node never loses a row it is
        # sending; a dead node's claims lapse after this long.
        self.lease = self.budget + 2 * db.timeout + 5.0

    async def pending_count(self) -> int:
        """Outbox rows still to be delivered (for the metrics)."""
        return await self._outbox.pending_count()

    async def send_due(self, now: datetime | None = None) -> SendReport:
        """Claim and deliver what is due; bounded by `budget` seconds."""
        report = SendReport()
        if not self._sinks:
            return report
        now = now or await self._outbox.db_now()
        until = now + timedelta(seconds=self.lease)
        rows = await self._outbox.claim(list(self._sinks), self._node, now, until, self._per_sink)
        report.claimed = len(rows)
        if not rows:
            return report
        gate = asyncio.Semaphore(self._parallel)
        try:
            async with asyncio.timeout(self.budget), asyncio.TaskGroup() as group:
                for name, sink in self._sinks.items():
                    mine = [row for row in rows if row.sink == name]
                    if mine:
                        group.create_task(self._drain(gate, sink, mine, now, report))
        except TimeoutError:
            # Unmarked rows stay claimed; they are due again when the lease lapses.
            log.warning("alert delivery took over %.0fs; the rest is retried later", self.budget)
        return report

    async def _drain(
        self,
        gate: asyncio.Semaphore,
        sink: SinkSettings,
        rows: Sequence[Claimed],
        now: datetime,
        report: SendReport,
    ) -> None:
        """One sink's rows, oldest first; a failure keeps the rest for a later run."""
        async with gate:
            for index, row in enumerate(rows):
                failure = await self._deliver(sink, row)
                marked = await self._record(sink, row, failure, now, report)
                if marked and (failure is None or failure.rejected):
                    continue
                rest = rows[index + 1 :]
                report.deferred += len(rest)
                await self._release(sink, rest)
                return

    async def _release(self, sink: SinkSettings, rows: Sequence[Claimed]) -> None:
        try:
            await self._outbox.release(rows, self._node)
        except StoreError as exc:
            log.warning("alerts to sink %s could not be released: %s", sink.name, exc)

    async def _record(
        self,
        sink: SinkSettings,
        row: Claimed,
        failure: Failure | None,
        now: datetime,
        report: SendReport,
    ) -> bool:
        """Mark the row; False if that was impossible (the row stays claimed or lost)."""
        try:
            if failure is None:
                kept = await self._outbox.mark_sent(row, self._node, now)
                report.sent += int(kept)
            else:
                kept = await self._fail(sink, row, failure, now, report)
        except StoreError as exc:
            # Delivered or not, the row stays claimed and is retried once the lease lapses.
            log.warning("alert %d to sink %s could not be marked: %s", row.id, sink.name, exc)
            return False
        if not kept:
            report.lost += 1
            log.warning("alert %d to sink %s: claim lapsed before marking", row.id, sink.name)
        return kept

    async def _fail(
        self, sink: SinkSettings, row: Claimed, failure: Failure, now: datetime, report: SendReport
    ) -> bool:
        attempts = row.attempts + 1
        give_up = failure.rejected or attempts >= self._max_attempts
        retry_at = now + timedelta(seconds=backoff(attempts))
        kept = await self._outbox.mark_failed(row, self._node, failure.message, retry_at, give_up)
        what = f"alert {row.id} ({row.event}) to sink {sink.name}"
        if give_up:
            report.failed += int(kept)
            log.error("%s failed for good after %d attempt(s): %s", what, attempts, failure.message)
        else:
            report.retrying += int(kept)
            log.warning(
                "%s failed (attempt %d of %d), retry at %s: %s",
                what,
                attempts,
                self._max_attempts,
                retry_at.isoformat(timespec="seconds"),
                failure.message,
            )
        return kept

    async def _deliver(self, sink: SinkSettings, row: Claimed) -> Failure | None:
        """POST the stored body; None on 2xx. Bounded by the sink's timeout."""
        token = self._token(sink.token_env) if sink.token_env else None
        headers = {"Content-Type": "application/json"}
        if token:
            try:
                check_token(token, sink.token_env)
            except ValueError as exc:  # not sent: a header error would quote it
                return Failure(str(exc))
            headers["Authorization"] = f"Bearer {token}"
        url = formats.target_url(sink.kind, sink.url)
        try:
            async with asyncio.timeout(sink.timeout):
                response = await self._client.post(
                    url, content=row.payload.encode(), headers=headers, timeout=sink.timeout
                )
        except (TimeoutError, httpx.TimeoutException):
            return Failure(f"no answer within {sink.timeout:g}s")
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            # Not chained or kept: the request inside the exception carries the headers.
            return Failure(scrub(describe(exc), sink, token))
        if response.is_success:
            return None
        code = response.status_code
        body = " ".join(response.text[: _BODY_CHARS * 4].split())[:_BODY_CHARS]
        message = f"HTTP {code}" + (f": {body}" if body else "")
        return Failure(scrub(message, sink, token), rejected=code in REJECTED)


# --------------------------------------------------------------------------- secrets


def scrub(text: str, sink: SinkSettings, token: str | None) -> str:
    """One line without the sink's URL path or query, any URL's path, or the token."""
    for secret in _secrets(sink, token):
        text = text.replace(secret, "***")
    text = mask_urls_in(text, webhook=True)
    line = " ".join(text.split())
    return line if len(line) <= _ERROR_CHARS else line[: _ERROR_CHARS - 1] + "…"


def _secrets(sink: SinkSettings, token: str | None) -> list[str]:
    parts = urlsplit(sink.url)
    found = [token or "", parts.path.strip("/"), parts.query, parts.fragment]
    found.extend(segment for segment in parts.path.split("/") if len(segment) >= 8)
    # Longest first, so a whole path is replaced before its segments.
    return sorted({s for s in found if len(s) >= 4}, key=len, reverse=True)
