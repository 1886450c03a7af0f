"""The engine's protections against making an outage worse, with the state they keep
between cycles: grace after the watchdog's own database outage (and its start), the
mass-failure brake, restart budgets and flapping, and the fleet alert raised while rows
cannot be judged. The rules themselves are pure functions in `core/safety.py`; this module
applies them and writes down what they decided.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from watchdog.core.model import Incident, Scan
from watchdog.core.ports import FleetState, Ledger
from watchdog.core.safety import Restart, SafetyRules, brake_engaged, budget_returns_at, is_flapping

log = logging.getLogger(__name__)

_SAMPLE = 5  # instance ids named in the unjudgeable alert


class Guards:
    def __init__(
        self,
        ledger: Ledger,
        fleet: FleetState | None,
        rules: SafetyRules,
        *,
        grace: float = 0.0,
        startup_grace: bool = True,
    ) -> None:
        self._ledger = ledger
        self._fleet = fleet
        self._rules = rules
        self._grace = grace
        self._database_lost = startup_grace  # the start counts as an outage of our view
        self.grace_until: datetime | None = None
        self._brake: bool | None = None  # None: not yet read back from the store
        self._unjudgeable: bool | None = None  # likewise
        self._backlog: bool | None = None  # likewise
        self._history: list[Restart] | None = None

    # ------------------------------------------------------------------- grace

    def database_lost(self) -> None:
        """Something failed to reach the database (a scan, the leader lock, an outcome
        write, a side job): heartbeat writers may have been blocked too."""
        self._database_lost = True

    def in_grace(self, now: datetime) -> bool:
        return self.grace_until is not None and now < self.grace_until

    def database_back(self, now: datetime) -> bool:
        """Heartbeat writers were blocked too: give everyone `grace` before judging. True
        when a grace starts now."""
        started = self._database_lost and self._grace > 0
        if started:
            self.grace_until = now + timedelta(seconds=self._grace)
        self._database_lost = False
        return started

    async def record_grace(self, now: datetime, *, after_start: bool) -> None:
        """Write the grace down (audit row and fleet state), so that `status` and
        `explain` can say why nothing happens until it ends."""
        if self._fleet is None or self.grace_until is None:
            return
        why = "the watchdog started" if after_start else "the watchdog's database was away"
        await self._fleet.set_grace(self.grace_until, now, {"why": why, "seconds": self._grace})

    # ------------------------------------------------------------------- brake

    async def brake(self, scan: Scan, *, record: bool) -> bool:
        """Whether the mass-failure brake holds this cycle; audits engage and release.
        Unrecorded (a dry run), the state is kept in memory only, for the gauge. When it
        releases, everyone gets `grace` before being judged again, as after our own start:
        a fleet coming back is not escalated all at once."""
        engaged = brake_engaged(len(scan.findings), scan.enabled_count, self._rules)
        if record and self._fleet is not None:
            await self._record_brake(self._fleet, engaged, scan)
        released = self._brake is True and not engaged
        self._brake = engaged
        if released and self._grace > 0:
            self.grace_until = scan.now + timedelta(seconds=self._grace)
            if record and self._fleet is not None:
                detail = {"why": "the mass-failure brake released", "seconds": self._grace}
                await self._fleet.set_grace(self.grace_until, scan.now, detail)
        return engaged

    async def _record_brake(self, fleet: FleetState, engaged: bool, scan: Scan) -> None:
        if self._brake is None:
            stored = await fleet.brake()
            self._brake = bool(stored and stored.get("engaged"))
        if engaged != self._brake:
            detail = {"unhealthy": len(scan.findings), "monitored": scan.enabled_count}
            await fleet.set_brake(engaged, scan.now, detail)

    @property
    def braking(self) -> bool:
        return bool(self._brake)

    # ------------------------------------------------------------ unjudgeable

    async def report_unjudgeable(self, scan: Scan) -> None:
        """Audit (and so alert) when rows that cannot be judged appear, and when none is
        left; the state is stored, so a restart raises no second alert."""
        if self._fleet is None:
            return
        if self._unjudgeable is None:
            stored = await self._fleet.unjudgeable()
            self._unjudgeable = bool(stored and stored.get("present"))
        present = bool(scan.unjudgeable)
        if present == self._unjudgeable:
            return
        detail: dict[str, Any] = {}
        if present:
            detail = {
                "count": len(scan.unjudgeable),
                "columns": dict(Counter(u.column for u in scan.unjudgeable)),
                "sample": [u.instance_id for u in scan.unjudgeable[:_SAMPLE]],
            }
        await self._fleet.set_unjudgeable(present, scan.now, detail)
        self._unjudgeable = present

    async def report_backlog(self, backlog: int, budget: int, now: datetime) -> None:
        """Audit when a cycle leaves openings or actions to the next (a mass freeze beyond
        the cycle budget) and when none is left; `explain` reads the stored state."""
        if self._fleet is None:
            return
        if self._backlog is None:
            stored = await self._fleet.backlog()
            self._backlog = bool(stored and stored.get("present"))
        present = backlog > 0
        if present == self._backlog:
            return
        detail = {"left": backlog, "budget": budget} if present else {}
        await self._fleet.set_backlog(present, now, detail)
        self._backlog = present

    # ----------------------------------------------------------------- budgets

    def new_cycle(self) -> None:
        self._history = None  # read the restart history again when it is next needed

    async def admit_restart(self, process: str, members: Sequence[Incident], now: datetime) -> bool:
        """True when `process` may be restarted now; otherwise suppress every incident
        waiting for it until the budget returns. An admitted restart holds its place in
        this cycle's count, so the groups admitted after it cannot overshoot the budget;
        it counts once `restart_claimed`, and `restart_dropped` gives the place back."""
        if self._fleet is None:
            return True
        history = await self._restart_history(now)
        returns_at = budget_returns_at(history, process, now, self._rules)
        if returns_at is None:
            history.append(Restart(process, now))
            return True
        await self._ledger.suppress_all(members, returns_at, now, self._budget_detail(process))
        log.warning("restart of %s suppressed until %s: budget spent", process, returns_at)
        return False

    async def last_restart(self, process: str, now: datetime) -> datetime | None:
        """When this watchdog last started a restart of `process` (claimed, or admitted
        this cycle), as far back as the budgets look."""
        if self._fleet is None:
            return None
        return max(
            (r.at for r in await self._restart_history(now) if r.process == process), default=None
        )

    async def restart_claimed(
        self, process: str, instance_ids: Sequence[str], now: datetime
    ) -> None:
        """An admitted restart won its claim and goes out: it counts against the budget."""
        if self._fleet is not None:
            await self._fleet.record_restart(process, now, instance_ids)

    def restart_dropped(self, process: str, now: datetime) -> None:
        """An admitted restart will not go out (its claim lost, a shutdown, an open
        breaker): it spends no budget."""
        held = Restart(process, now)
        if self._history is not None and held in self._history:
            self._history.remove(held)

    async def restart_unsent(self, process: str, now: datetime) -> None:
        """A claimed restart whose call did not go out (this node stopped leading before
        it): the budget it was counted against is given back."""
        if self._fleet is not None:
            await self._fleet.forget_restart(process, now)
        self.restart_dropped(process, now)

    async def _restart_history(self, now: datetime) -> list[Restart]:
        assert self._fleet is not None
        if self._history is None:
            longest = max(self._rules.process_restart_window, self._rules.fleet_restart_window)
            self._history = await self._fleet.recent_restarts(now - timedelta(seconds=longest))
        return self._history

    def _budget_detail(self, process: str) -> dict[str, Any]:
        r = self._rules
        return {
            "process": process,
            "budget": f"{r.process_restarts_per_process} per {r.process_restart_window:g}s "
            f"per process, {r.fleet_restarts} per {r.fleet_restart_window:g}s fleet-wide",
        }

    # ---------------------------------------------------------------- flapping

    async def check_flapping(self, opened: Sequence[Incident], now: datetime) -> None:
        if not opened:
            return
        since = now - timedelta(seconds=self._rules.flapping_window)
        counts = await self._ledger.incident_counts([i.instance_id for i in opened], since)
        counted = [(incident, counts.get(incident.instance_id, 0)) for incident in opened]
        flapping = [(i, n) for i, n in counted if is_flapping(n, self._rules)]
        await self._ledger.mark_flapping_all(flapping, now)
