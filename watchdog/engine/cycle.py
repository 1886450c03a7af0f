"""One cycle of the watchdog: detect → decide → persist intent → act → audit the outcome.

Actions run as tasks bounded by a semaphore, so a hung backend never stalls detection:
the next cycle skips instances whose action is still in flight.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from watchdog.core.errors import InvalidTarget, RecoveryError, StoreError, WatchdogError
from watchdog.core.model import (
    Action,
    Incident,
    IncidentState,
    Outcome,
    Target,
    Unjudgeable,
)
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
    Claim,
    Clock,
    Closing,
    Finished,
    InstanceStore,
    Ledger,
    Opening,
    Recovery,
    chunks,
)
from watchdog.core.safety import SafetyRules
from watchdog.engine.breakers import BackendBreakers
from watchdog.engine.dry_run import DryRun
from watchdog.engine.guards import Guards
from watchdog.engine.outcomes import OutcomeWriter

# The pure core logs through the standard library; observability routes it to stderr.
log = logging.getLogger(__name__)


@dataclass(slots=True)
class CycleReport:
    """What one cycle saw and did; the daemon logs it and the tests read it."""

    now: datetime
    unhealthy: int
    monitored: int = 0
    next_deadline: float | None = None  # seconds until a healthy instance could turn stale
    unjudgeable: tuple[Unjudgeable, ...] = ()  # rows that cannot be judged
    rows_total: int | None = None  # the table's rows, when this cycle's scan counted them
    open_by_state: dict[str, int] = field(default_factory=dict)
    opened: int = 0
    acted: int = 0
    exhausted: int = 0
    resolved: int = 0
    actions: list[tuple[str, Action, int]] = field(default_factory=list)


class _Group(NamedTuple):
    """The acts that share one recovery call: those whose target the backend keys alike,
    or one instance on its own when its target cannot be keyed (no key value can pass
    for that, whatever the application's table holds)."""

    action: Action
    key: str  # the backend's key, or the instance id when not `keyed`
    keyed: bool


@dataclass(frozen=True, slots=True)
class _Job:
    """One claimed attempt waiting for its recovery call."""

    incident: Incident
    act: Act
    started_mono: float
    intent_id: int | None = None  # its `started` audit row, once claimed


@dataclass(frozen=True, slots=True)
class _Admitted:
    """A group past the restart budget, waiting for its claims."""

    group: _Group
    jobs: list[_Job]
    budgeted: bool  # holds a place in the restart budget until its claims settle


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
        fence: Callable[[], Awaitable[bool]] | None = None,
        owner: str | None = None,
        live: set[int] | None = None,
    ) -> None:
        self._instances = instances
        self._ledger = ledger
        self._recoveries = recoveries
        self._rules = rules
        self._clock = clock
        self._jitter = jitter
        # The engine's bound is a backstop: adapters time out first, with a clearer message.
        self._timeout_margin = timeout_margin
        self._guards = guards or Guards(ledger, None, SafetyRules(), startup_grace=False)
        self._breakers = breakers
        # Asked before every action: is this node still the leader? (None: single node.)
        self._fence = fence
        # This node, named in every intent row: a new leader leaves the intents of a
        # node still alive to it (see `daemon/reconcile.py`).
        self._owner = owner
        self._slots = asyncio.Semaphore(max_concurrent_actions)
        self._busy: set[str] = set()
        # Intent rows whose action or outcome is in flight here (shared with the reconciler).
        self._live: set[int] = live if live is not None else set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._outcomes = OutcomeWriter(ledger, on_unavailable=self._guards.database_lost)
        self._dry_run = DryRun(ledger) if dry_run else None
        self._stopping = False
        self._first_cycle = True

    @property
    def busy(self) -> frozenset[str]:
        return frozenset(self._busy)

    def stop_acting(self) -> None:
        """Shutdown began: start no new action (in-flight ones finish; see `drain`)."""
        self._stopping = True

    @property
    def guards(self) -> Guards:
        return self._guards

    @property
    def breakers(self) -> BackendBreakers | None:
        return self._breakers

    async def run_cycle(self) -> CycleReport:
        try:
            scan = await self._instances.scan()
        except StoreError:
            self._guards.database_lost()  # no action while we cannot read the truth
            raise
        mono0 = self._clock.monotonic()
        if self._guards.database_back(scan.now) and self._dry_run is None:
            await self._guards.record_grace(scan.now, after_start=self._first_cycle)
        self._first_cycle = False
        self._guards.new_cycle()
        in_grace = self._guards.in_grace(scan.now)
        state = await self._ledger.load_state(scan.now, scan.ledger_revision)
        incidents = state.incidents
        if self._dry_run is not None:
            incidents = self._dry_run.view(incidents, scan.findings)
        new_ids = [i for i in scan.findings if i not in incidents]
        unjudged = {u.instance_id for u in scan.unjudgeable if u.instance_id}
        gone = [
            i
            for i in incidents
            if i not in scan.findings and i not in self._busy and i not in unjudged
        ]
        unmonitored = await self._instances.unmonitored(gone) if gone else {}
        recent = await self._ledger.last_closed(new_ids) if new_ids else {}
        world = World(
            now=scan.now,
            findings=scan.findings,
            incidents=incidents,
            recent=recent,
            pauses=state.pauses,
            busy=self.busy,
            unjudged=unjudged,
            unmonitored=unmonitored,
            grace_until=self._guards.grace_until,
            # In grace, the unhealthy count is heartbeat writers catching up, not a failure.
            brake=not in_grace and await self._guards.brake(scan, record=self._dry_run is None),
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
            await self._apply(decisions, dict(incidents), report, scan.now, mono0)
            await self._guards.report_unjudgeable(scan)
            if self._breakers is not None:
                await self._breakers.save(scan.now)
        return report

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait for in-flight actions and their outcomes; True when all finished within
        `timeout`. Outcomes still unwritten then are logged: they will be lost."""
        if not self._tasks:
            return True
        _done, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for lost in self._outcomes.held:
            log.error(
                "the %s outcome (%s) of %s attempt %d is not recorded: the database did not "
                "answer before shutdown; the next leader audits its intent `interrupted`",
                lost.action,
                lost.outcome,
                lost.incident.instance_id,
                lost.attempt,
            )
        return not pending

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
        # In batches: a mass recovery closes hundreds of incidents in one cycle.
        for closing in chunks(closings, BATCH):
            await self._ledger.close_all(closing, now)
        # Grouped over the whole cycle (one restart per process), then started as soon as
        # every member has its incident: after a mass freeze the first calls go out once
        # the first batch of incidents is open, not once all of them are.
        waiting = self._group(acts)
        await self._start(_ready(waiting, incidents), incidents, report, now, mono0)
        openings = [
            Opening(d.finding, d.carried_attempts, d.continues)
            for d in decisions
            if isinstance(d, Open)
        ]
        for chunk in chunks(openings, BATCH):
            opened = await self._ledger.open_incidents(chunk, now)
            incidents.update((i.instance_id, i) for i in opened)
            report.opened += len(opened)
            await self._guards.check_flapping(opened, now)
            await self._start(_ready(waiting, incidents), incidents, report, now, mono0)
        for spent in chunks(exhausts, BATCH):  # may be for incidents opened just above
            await self._ledger.exhaust_all([incidents[e.instance_id] for e in spent], now)
            report.exhausted += len(spent)

    async def _start(
        self,
        groups: Mapping[_Group, list[Act]],
        incidents: Mapping[str, Incident],
        report: CycleReport,
        now: datetime,
        mono0: float,
    ) -> None:
        """Admit each group (restarts pass the budget), claim the attempts in batches whose
        intent rows are committed before any of their calls, then launch each group's
        shared call."""
        if not groups or not await self._still_leading():
            return
        admitted = [
            admission
            for group, acts in groups.items()
            if (admission := await self._admit(group, acts, incidents, now)) is not None
        ]
        while admitted and not self._stopping:
            chunk, admitted = admitted[:BATCH], admitted[BATCH:]
            await self._claim_and_launch(chunk, report, now, mono0)
        if admitted:
            log.info("shutting down: due actions not started are left for the next leader")
            for left in admitted:
                await self._settle_budget(left, [], now)
        report.acted = len(report.actions)

    async def _admit(
        self, group: _Group, acts: list[Act], incidents: Mapping[str, Incident], now: datetime
    ) -> _Admitted | None:
        """The group's jobs, unless the restart budget holds it back."""
        members = [incidents[a.instance_id] for a in acts]
        # A restart that an open breaker will skip spends no restart budget.
        budgeted = (
            group.action is Action.PROCESS_RESTART
            and group.keyed
            and not (self._breakers is not None and self._breakers.refuses(group.action, now))
        )
        if budgeted and not await self._guards.admit_restart(group.key, members, now):
            return None
        jobs = [_Job(i, a, 0.0) for i, a in zip(members, acts, strict=True)]
        return _Admitted(group, jobs, budgeted)

    async def _claim_and_launch(
        self, chunk: Sequence[_Admitted], report: CycleReport, now: datetime, mono0: float
    ) -> None:
        claims = [self._claim(job, now, a.group) for a in chunk for job in a.jobs]
        results = iter(await self._ledger.begin_actions(claims, now))
        for admitted in chunk:
            mono = self._clock.monotonic()
            intents = [(job, next(results)) for job in admitted.jobs]
            won = [
                replace(j, started_mono=mono, intent_id=intent)
                for j, intent in intents
                if intent is not None
            ]
            action = admitted.group.action
            skip = self._skip(action, now) if won else None
            await self._settle_budget(admitted, won if skip is None else [], now)
            if won:
                self._live.update(j.intent_id for j in won if j.intent_id is not None)
                self._launch(action, won, now, mono0, skip)
            report.actions += [(j.act.instance_id, j.act.action, j.act.attempt) for j in won]

    async def _settle_budget(self, admitted: _Admitted, calling: list[_Job], now: datetime) -> None:
        """Only a restart that goes out (claimed, not skipped) spends restart budget."""
        if not admitted.budgeted:
            return
        if calling:
            ids = [j.act.instance_id for j in calling]
            await self._guards.restart_claimed(admitted.group.key, ids, now)
        else:
            self._guards.restart_dropped(admitted.group.key, now)

    def _skip(self, action: Action, now: datetime) -> dict[str, Any] | None:
        """Why a claimed call is not made: its breaker is open. The attempt is spent without
        a call; the ladder goes on to its next rung after the usual wait."""
        if self._breakers is None or self._breakers.allows(action, now):
            return None
        return {"reason": "circuit_open", "breaker": self._breakers.name(action)}

    def _group(self, acts: list[Act]) -> dict[_Group, list[Act]]:
        """Acts that share one recovery call (one restart per process per cycle)."""
        groups: dict[_Group, list[Act]] = defaultdict(list)
        for act in acts:
            groups[_group_of(self._recoveries.get(act.action), act)].append(act)
        return groups

    def _claim(self, job: _Job, now: datetime, group: _Group) -> Claim:
        act = job.act
        restart = act.action is Action.PROCESS_RESTART and group.keyed
        detail: dict[str, Any] = {"target": group.key} if restart else {}
        if self._owner is not None:
            detail["node"] = self._owner
        return Claim(
            job.incident,
            act.attempt,
            act.action,
            now + timedelta(seconds=act.delay),
            detail or None,
        )

    def _launch(
        self,
        action: Action,
        jobs: list[_Job],
        now: datetime,
        mono0: float,
        skip: dict[str, Any] | None = None,
    ) -> None:
        """Run one group's shared recovery call (or, given `skip`, record it skipped) as a
        task; its instances are busy until the outcome is on record."""
        self._busy.update(job.act.instance_id for job in jobs)
        task = asyncio.create_task(self._run_group(action, jobs, now, mono0, skip))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _still_leading(self) -> bool:
        if self._fence is None or await self._fence():
            return True
        log.error("no longer the leader: actions stop here")
        return False

    async def _run_group(
        self,
        action: Action,
        members: list[_Job],
        now: datetime,
        mono0: float,
        skip: dict[str, Any] | None,
    ) -> None:
        try:
            if skip is not None:
                outcome, detail = Outcome.SKIPPED, skip
            else:
                async with self._slots:
                    if await self._still_leading():
                        outcome, detail = await self._call(action, members[0])
                    else:
                        outcome, detail = Outcome.SKIPPED, {"reason": "lost_leadership"}
            if (
                self._breakers is not None
                and outcome in (Outcome.OK, Outcome.FAILED)
                and not detail.get("invalid_target")
            ):
                at = now + timedelta(seconds=self._clock.monotonic() - mono0)
                error = str(detail.get("error", ""))
                await self._breakers.record(action, outcome is Outcome.OK, at, error)
            if len(members) > 1:
                detail = {**detail, "shared_with": [m.act.instance_id for m in members]}
            await self._finish(members, outcome, detail, now, mono0)
        except StoreError as exc:
            ids = ", ".join(m.act.instance_id for m in members)
            log.error(
                "could not record the %s outcome of %s (attempt %d): %s; its intent row "
                "stays and the next leader audits it `interrupted`",
                action,
                ids,
                members[0].act.attempt,
                exc,
            )
        finally:
            for job in members:
                self._busy.discard(job.act.instance_id)
                if job.intent_id is not None:
                    self._live.discard(job.intent_id)

    async def _call(self, action: Action, job: _Job) -> tuple[Outcome, dict[str, Any]]:
        recovery = self._recoveries.get(action)
        if recovery is None:
            return Outcome.FAILED, {"error": f"no backend configured for {action}"}
        target = Target(job.act.instance_id, job.act.finding.process)
        try:
            async with asyncio.timeout(recovery.timeout + self._timeout_margin):
                result = await recovery.recover(target)
        except TimeoutError:
            limit = recovery.timeout + self._timeout_margin
            return Outcome.FAILED, {"error": f"timed out after {limit:g}s", "transient": True}
        except InvalidTarget as exc:  # nothing was asked of the backend: not its failure
            return Outcome.FAILED, {"error": str(exc), "transient": False, "invalid_target": True}
        except WatchdogError as exc:
            return Outcome.FAILED, {"error": str(exc), "transient": exc.transient}
        except Exception as exc:  # an adapter bug must still leave an outcome row
            log.exception("recovery %s crashed (a bug in its adapter)", action)
            return Outcome.FAILED, {"error": f"{type(exc).__name__}: {exc}", "unexpected": True}
        return Outcome.OK, dict(result.detail)

    async def _finish(
        self,
        jobs: Sequence[_Job],
        outcome: Outcome,
        detail: dict[str, Any],
        now: datetime,
        mono0: float,
    ) -> None:
        """Record the outcome of each job's attempt; returns once it is committed."""
        finished_mono = self._clock.monotonic()
        finished_at = now + timedelta(seconds=finished_mono - mono0)
        await self._outcomes.write(
            [
                Finished(
                    job.incident,
                    job.act.attempt,
                    job.act.action,
                    outcome,
                    detail,
                    finished_mono - job.started_mono,
                    finished_at + timedelta(seconds=job.act.delay),
                    job.intent_id,
                )
                for job in jobs
            ]
        )


def _count_states(incidents: Mapping[str, Incident]) -> dict[str, int]:
    # Counted as enum members, named once each: thousands of str() calls cost a cycle more.
    return {str(state): n for state, n in Counter(i.state for i in incidents.values()).items()}


def _recovered(incident: Incident, now: datetime) -> Closing:
    seconds = (now - incident.opened_at).total_seconds()
    detail = {"time_to_recover": round(seconds, 3), "attempts": incident.attempt}
    return Closing(incident, IncidentState.RECOVERED, "watchdog", detail)


def _ready(
    waiting: dict[_Group, list[Act]], incidents: Mapping[str, Incident]
) -> dict[_Group, list[Act]]:
    """Take out of `waiting` the groups whose members all have an incident."""
    ready = {
        key: group
        for key, group in waiting.items()
        if all(a.instance_id in incidents for a in group)
    }
    for key in ready:
        del waiting[key]
    return ready


def _group_of(recovery: Recovery | None, act: Act) -> _Group:
    """The act's shared call, or a call of its own when its target cannot be keyed."""
    own = _Group(act.action, act.instance_id, keyed=False)
    if recovery is None:
        return own
    try:
        key = recovery.key(Target(act.instance_id, act.finding.process))
    except RecoveryError:
        return own
    return _Group(act.action, key, keyed=True)
