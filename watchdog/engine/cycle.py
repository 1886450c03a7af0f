"""One cycle of the watchdog: detect → decide → persist intent → act → audit the outcome.

The cycle reads the table and the ledger, lets the pure policy decide, closes, opens and
exhausts incidents in batches, and hands the actions to the dispatcher (`dispatch.py`);
a dry run records the decisions instead (`dry_run.py`).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from operator import attrgetter

from watchdog.core.errors import StoreError
from watchdog.core.model import Action, Finding, Incident, IncidentState, Scan
from watchdog.core.pacing import TokenBucket
from watchdog.core.policy import (
    Act,
    Decision,
    Dismiss,
    EscalationRules,
    Exhaust,
    Open,
    Resolve,
    World,
    decide,
)
from watchdog.core.ports import (
    BATCH,
    Clock,
    Closing,
    InstanceStore,
    Ledger,
    Opening,
    Recovery,
    chunks,
)
from watchdog.core.safety import SafetyRules
from watchdog.engine.breakers import BackendBreakers
from watchdog.engine.dispatch import Dispatcher, ready
from watchdog.engine.dry_run import DryRun
from watchdog.engine.guards import Guards
from watchdog.engine.hosts import Hosts
from watchdog.engine.report import CycleReport
from watchdog.observability import get_logger

log = get_logger(component="engine")

# Incidents one cycle opens, and actions it starts, at most: after a mass freeze of
# thousands, a cycle that opened and claimed them all would leave detection blind for
# seconds (the next cycle waits for it). The rest follows in the cycles after, at once.
CYCLE_BUDGET = 5 * BATCH


class Engine:
    def __init__(
        self,
        instances: InstanceStore,
        ledger: Ledger,
        recoveries: Mapping[Action, Recovery],
        rules: EscalationRules,
        clock: Clock,
        *,
        dry_run: bool = False,
        max_concurrent_actions: int = 16,
        jitter: Callable[[], float] = random.random,
        timeout_margin: float = 2.0,
        guards: Guards | None = None,
        breakers: BackendBreakers | None = None,
        hosts: Hosts | None = None,
        pacers: Mapping[Action, TokenBucket] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        fence: Callable[[], Awaitable[bool]] | None = None,
        owner: str | None = None,
        live: set[int] | None = None,
        budget: int = CYCLE_BUDGET,
    ) -> None:
        self._instances = instances
        self._budget = budget
        # The first incidents a cycle opens are as many as can be acted on at once: their
        # calls start while the rest are opened.
        self._first_batch = max(1, min(BATCH, max_concurrent_actions))
        self._ledger = ledger
        self._rules = rules
        self._clock = clock
        self._jitter = jitter
        self._guards = guards or Guards(ledger, None, SafetyRules(), startup_grace=False)
        self._breakers = breakers
        self._hosts = hosts
        self._dispatch = Dispatcher(
            ledger,
            recoveries,
            clock,
            self._guards,
            breakers=breakers,
            hosts=hosts,
            pacers=pacers,
            sleep=sleep,
            fence=fence,
            owner=owner,
            live=live,
            max_concurrent_actions=max_concurrent_actions,
            timeout_margin=timeout_margin,
        )
        self._dry_run = DryRun(ledger) if dry_run else None
        self._first_cycle = True
        self._last_scan: tuple[datetime, float] | None = None  # (database now, monotonic)
        # The last scan's findings: a row still unhealthy is not judged again (see scan).
        self._known: Mapping[str, Finding] = {}
        # Instances the last cycle found newly unhealthy but left for later (its budget),
        # with when they crossed their threshold: their findings are reused, ages and all.
        self._deferred: dict[str, datetime] = {}

    @property
    def busy(self) -> frozenset[str]:
        return self._dispatch.busy

    @property
    def queued(self) -> dict[str, int]:
        """Claimed calls waiting for their backend's pace, by rung."""
        return self._dispatch.queued

    def stop_acting(self) -> None:
        """Shutdown began: start no new action (in-flight ones finish; see `drain`)."""
        self._dispatch.stop_acting()

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait for in-flight actions and their outcomes (see `Dispatcher.drain`)."""
        return await self._dispatch.drain(timeout)

    async def save_breakers(self) -> None:
        """After the last drain: keep what the breakers learned from the actions that
        finished after their cycle (a `--once` run, a shutdown), for the next start and
        `status`. A database that does not answer now only costs that."""
        if self._breakers is None or self._last_scan is None:
            return
        scan_now, mono = self._last_scan
        now = scan_now + timedelta(seconds=self._clock.monotonic() - mono)
        try:
            await self._breakers.save(now)
        except StoreError as exc:
            log.warning("breakers_not_saved", error=str(exc))

    async def watch_hosts(self) -> int:
        """Look for restarts of the processes hosting open incidents that this watchdog
        did not make (a side job of the leader); returns how many were seen."""
        if self._hosts is None or self._dry_run is not None:
            return 0
        return await self._hosts.poll(await self._instances.now())

    def database_lost(self) -> None:
        """The database did not answer: no action until it is back, then a grace."""
        self._guards.database_lost()

    async def run_cycle(self) -> CycleReport:
        try:
            scan = await self._instances.scan(self._known)
        except StoreError:
            self._guards.database_lost()  # no action while we cannot read the truth
            raise
        mono0 = self._clock.monotonic()
        self._last_scan = (scan.now, mono0)
        if self._guards.database_back(scan.now) and self._dry_run is None:
            await self._guards.record_grace(scan.now, after_start=self._first_cycle)
        self._first_cycle = False
        self._guards.new_cycle()
        if self._hosts is not None:
            self._hosts.new_cycle(scan.findings)
        in_grace = self._guards.in_grace(scan.now)
        state = await self._ledger.load_state(scan.now, scan.ledger_revision)
        incidents = state.incidents
        if self._dry_run is not None:
            incidents = self._dry_run.view(incidents, scan.findings)
        if self._reused_without_incident(scan, incidents):
            # An incident closed since (a reset, another writer): its instance is to be
            # detected anew, from a finding read now, not the one kept since its first.
            scan = await self._instances.scan()
        # Set differences of the key views, in C: a long outage keeps thousands of both.
        new_ids = list(scan.findings.keys() - incidents.keys())
        unjudged = {u.instance_id for u in scan.unjudgeable if u.instance_id}
        busy = self._dispatch.busy  # a copy: taken once, not once per incident
        gone = list(incidents.keys() - scan.findings.keys() - busy - unjudged)
        unmonitored = await self._instances.unmonitored(gone) if gone else {}
        recent = await self._ledger.last_closed(new_ids) if new_ids else {}
        # In grace, the unhealthy count is heartbeat writers catching up, not a failure.
        # Judged before the world is made: a release starts a grace this very cycle.
        brake = not in_grace and await self._guards.brake(scan, record=self._dry_run is None)
        world = World(
            now=scan.now,
            findings=scan.findings,
            incidents=incidents,
            recent=recent,
            pauses=state.pauses,
            fleet_pauses=state.fleet_pauses,
            busy=busy,
            unjudged=unjudged,
            unmonitored=unmonitored,
            grace_until=self._guards.grace_until,
            brake=brake,
        )
        report = CycleReport(
            now=scan.now,
            unhealthy=len(scan.findings),
            monitored=scan.enabled_count,
            next_deadline=scan.next_deadline,
            unjudgeable=scan.unjudgeable,
            rows_total=scan.rows_total,
            open_by_state=_count_states(incidents),
        )
        decisions = decide(self._rules, world, self._jitter)
        if self._dry_run is not None:
            acts = await self._dry_run.record(decisions, incidents)
            report.actions = [(a.instance_id, a.action, a.attempt) for a in acts]
            report.acted = len(acts)
        else:
            live = dict(incidents)
            await self._apply(decisions, live, report, scan.now, mono0)
            incidents = live  # with the incidents opened just now
            await self._guards.report_unjudgeable(scan)
            await self._guards.report_backlog(report.backlog, self._budget, scan.now)
            if self._breakers is not None:
                await self._breakers.save(scan.now)
        # Next time the scan reuses, of these findings, those of an instance with an
        # incident, or left for later by this cycle's budget, and still unhealthy: any
        # other new detection is judged afresh. A storm's backlog is judged once, not
        # once per cycle until its turn comes.
        findings = scan.findings
        without = findings.keys() - incidents.keys() - self._deferred.keys()
        self._known = (
            {i: f for i, f in findings.items() if i not in without} if without else findings
        )
        report.brake = self._guards.braking
        report.queued = self._dispatch.queued
        if self._breakers is not None:
            report.breakers = tuple(self._breakers.board.snapshots())
        return report

    def _reused_without_incident(self, scan: Scan, incidents: Mapping[str, Incident]) -> bool:
        known = self._known
        return any(
            scan.findings.get(instance_id) is known[instance_id]
            for instance_id in known.keys() - incidents.keys() - self._deferred.keys()
        )

    # ----------------------------------------------------------------- applying

    async def _apply(
        self,
        decisions: list[Decision],
        incidents: dict[str, Incident],
        report: CycleReport,
        now: datetime,
        mono0: float,
    ) -> None:
        acts: list[Act] = []
        exhausts: list[Exhaust] = []
        closings: list[Closing] = []
        opens: list[Open] = []
        for decision in decisions:
            match decision:
                case Resolve(incident=incident):
                    closings.append(_recovered(incident, now))
                    report.resolved += 1
                case Dismiss(incident=incident, why=why):
                    detail = {"why": why, "attempts": incident.attempt}
                    closings.append(Closing(incident, IncidentState.DISMISSED, "watchdog", detail))
                case Exhaust():
                    exhausts.append(decision)
                case Act():
                    acts.append(decision)
                case Open():
                    opens.append(decision)
        openings, acts = self._within_budget(opens, acts, report, now)
        # In batches: a mass recovery closes hundreds of incidents in one cycle.
        for closing in chunks(closings, BATCH):
            await self._ledger.close_all(closing, now)
        # Grouped over the whole cycle (one restart per process), then started as soon as
        # every member has its incident: after a mass freeze the first calls go out once
        # the first batch of incidents is open, not once all of them are.
        waiting = self._dispatch.group(acts)
        await self._dispatch.start(ready(waiting, incidents), incidents, report, now, mono0)
        first = self._first_batch
        for chunk in [openings[:first], *chunks(openings[first:], BATCH)] if openings else []:
            opened = await self._ledger.open_incidents(chunk, now)
            incidents.update((i.instance_id, i) for i in opened)
            report.opened += len(opened)
            await self._guards.check_flapping(opened, now)
            await self._dispatch.start(ready(waiting, incidents), incidents, report, now, mono0)
        every = self._rules.exhausted_retry
        retry_at = now + timedelta(seconds=every) if every > 0 else None
        for spent in chunks(exhausts, BATCH):  # may be for incidents opened just above
            batch = [incidents[e.instance_id] for e in spent]
            await self._ledger.exhaust_all(batch, now, retry_at)
            report.exhausted += len(spent)

    def _within_budget(
        self, opens: list[Open], acts: list[Act], report: CycleReport, now: datetime
    ) -> tuple[list[Opening], list[Act]]:
        """What this cycle opens and starts: at most `budget` of each, the least overdue
        instances opened first, so one that froze during a storm is detected at once
        while the storm's own backlog waits a cycle or two. The rest is counted in the
        report, and the next cycle follows at once."""
        deferred = self._deferred

        def crossed(d: Open) -> datetime:  # a reused finding's age is that of its scan
            known = deferred.get(d.finding.instance_id)
            return known if known is not None else now - timedelta(seconds=d.finding.overdue)

        # The latest crossing first; stable: a storm's own order is kept among equals.
        opens = sorted(opens, key=crossed, reverse=True)
        self._deferred = {d.finding.instance_id: crossed(d) for d in opens[self._budget :]}
        if self._deferred:
            acts = [a for a in acts if a.instance_id not in self._deferred]
        report.backlog = len(self._deferred) + max(0, len(acts) - self._budget)
        openings = [
            Opening(d.finding, d.carried_attempts, d.continues) for d in opens[: self._budget]
        ]
        return openings, acts[: self._budget]


def _count_states(incidents: Mapping[str, Incident]) -> dict[str, int]:
    # Counted as enum members, named once each: thousands of str() calls cost a cycle more.
    counted = Counter(map(_STATE, incidents.values()))
    return {str(state): n for state, n in counted.items()}


_STATE = attrgetter("state")


def _recovered(incident: Incident, now: datetime) -> Closing:
    seconds = (now - incident.opened_at).total_seconds()
    detail = {"time_to_recover": round(seconds, 3), "attempts": incident.attempt}
    return Closing(incident, IncidentState.RECOVERED, "watchdog", detail)
