"""Dispatch: the actions a cycle decided, from admission to their outcome on record.

Acts that share one recovery call are grouped (one restart per process per cycle); each
group passes the restart budget, its attempts are claimed in batches whose intent rows
are committed before any call, and its call runs as a task bounded by a semaphore, so a
hung backend never stalls detection: the next cycle skips instances still in flight.
Before each call the node proves it still leads; an open breaker skips the call.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from watchdog.core.errors import InvalidTarget, RecoveryError, StoreError, WatchdogError
from watchdog.core.model import Action, ActionResult, AuditAction, Incident, Outcome, Target
from watchdog.core.pacing import TokenBucket
from watchdog.core.policy import Act
from watchdog.core.ports import BATCH, Claim, Clock, Finished, Ledger, NewAudit, Recovery
from watchdog.engine.breakers import BackendBreakers
from watchdog.engine.guards import Guards
from watchdog.engine.hosts import Hosts
from watchdog.engine.outcomes import OutcomeWriter
from watchdog.engine.report import CycleReport

log = logging.getLogger(__name__)


class Group(NamedTuple):
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

    group: Group
    jobs: list[_Job]
    budgeted: bool  # holds a place in the restart budget until its claims settle
    shared: dict[str, Any] | None = None  # the process restart it follows: no call of its own
    approved_by: str | None = None  # an operator let it through the blast radius
    send_at: float | None = None  # monotonic: when its pace lets the call go out


@dataclass(frozen=True, slots=True)
class _Call:
    """One group's claimed recovery call, as its task runs it."""

    action: Action
    jobs: list[_Job]
    skip: dict[str, Any] | None  # recorded skipped with this detail: no call
    counted: str | None  # the process whose restart budget the call was counted against
    host: str | None  # the process this call restarts
    send_at: float | None  # monotonic: not before (the backend's pace)


class Dispatcher:
    def __init__(
        self,
        ledger: Ledger,
        recoveries: Mapping[Action, Recovery],
        clock: Clock,
        guards: Guards,
        *,
        breakers: BackendBreakers | None = None,
        hosts: Hosts | None = None,
        pacers: Mapping[Action, TokenBucket] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        fence: Callable[[], Awaitable[bool]] | None = None,
        owner: str | None = None,
        live: set[int] | None = None,
        max_concurrent_actions: int = 16,
        timeout_margin: float = 2.0,
    ) -> None:
        self._ledger = ledger
        self._recoveries = recoveries
        self._clock = clock
        self._guards = guards
        self._breakers = breakers
        self._hosts = hosts
        self._pacers = pacers or {}
        self._sleep = sleep
        self._queued: Counter[str] = Counter()  # calls waiting for their pace, by rung
        self._stopped = asyncio.Event()  # a shutdown cuts the waits short
        # Asked before every action: is this node still the leader? (None: single node.)
        self._fence = fence
        # This node, named in every intent row: a new leader leaves the intents of a
        # node still alive to it (see `daemon/reconcile.py`).
        self._owner = owner
        # Intent rows whose action or outcome is in flight here (shared with the reconciler).
        self._live: set[int] = live if live is not None else set()
        self._slots = asyncio.Semaphore(max_concurrent_actions)
        # The bound here is a backstop: adapters time out first, with a clearer message.
        self._timeout_margin = timeout_margin
        self._busy: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._outcomes = OutcomeWriter(ledger, on_unavailable=guards.database_lost)
        self._stopping = False

    @property
    def busy(self) -> frozenset[str]:
        """Instances with an action in flight, or its outcome not yet on record."""
        return frozenset(self._busy)

    @property
    def queued(self) -> dict[str, int]:
        """Claimed calls waiting for their backend's pace, by rung."""
        return {action: n for action, n in self._queued.items() if n}

    def stop_acting(self) -> None:
        """Shutdown began: start no new action (in-flight ones finish; see `drain`)."""
        self._stopping = True
        self._stopped.set()

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

    def group(self, acts: list[Act]) -> dict[Group, list[Act]]:
        """Acts that share one recovery call (one restart per process per cycle)."""
        groups: dict[Group, list[Act]] = defaultdict(list)
        for act in acts:
            groups[_group_of(self._recoveries.get(act.action), act)].append(act)
        return groups

    async def start(
        self,
        groups: Mapping[Group, list[Act]],
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
        self, group: Group, acts: list[Act], incidents: Mapping[str, Incident], now: datetime
    ) -> _Admitted | None:
        """The group's jobs, unless the blast radius or the restart budget holds it back.
        A process restart within the settle of the last one shares it: no call, no budget."""
        members = [incidents[a.instance_id] for a in acts]
        jobs = [_Job(i, a, 0.0) for i, a in zip(members, acts, strict=True)]
        restart = group.action is Action.PROCESS_RESTART and group.keyed
        shared, approved_by = None, None
        if restart and self._hosts is not None:
            last = await self._guards.last_restart(group.key, now)
            shared = await self._hosts.shared(group.key, last, now)
            if shared is None:
                held = await self._hosts.blast_radius(group.key)
                approved_by = next((m.approved_by for m in members if m.approved_by), None)
                if held is not None and approved_by is None:
                    await self._hold(members, held, now)
                    return None
        if shared is not None:
            return _Admitted(group, jobs, budgeted=False, shared=shared)
        # A restart that an open breaker will skip spends no restart budget.
        budgeted = restart and not (
            self._breakers is not None and self._breakers.refuses(group.action, now)
        )
        if budgeted and not await self._guards.admit_restart(group.key, members, now):
            return None
        return _Admitted(group, jobs, budgeted, approved_by=approved_by)

    async def _hold(self, members: list[Incident], held: dict[str, Any], now: datetime) -> None:
        """Held by the blast radius: audited (and alerted) once per incident; it stays due,
        so each cycle weighs it again until the radius shrinks or an operator approves."""
        new = [m for m in members if m.held is None]
        if new:
            await self._ledger.hold_all(new, now, held)
            log.warning(
                "restart of %s held: %d of %d instances it hosts are healthy; "
                "`watchdogctl approve ID` lets one through",
                held["process"],
                held["healthy"],
                held["monitored"],
            )

    async def _claim_and_launch(
        self, chunk: Sequence[_Admitted], report: CycleReport, now: datetime, mono0: float
    ) -> None:
        chunk = [self._paced(admitted, now) for admitted in chunk]
        claims = [self._claim(job, now, a) for a in chunk for job in a.jobs]
        results = iter(await self._ledger.begin_actions(claims, now))
        claimed = [(admitted, _won(admitted.jobs, results)) for admitted in chunk]
        retried = [job for _admitted, won in claimed for job in won if job.act.retry]
        if retried:  # the ladder ran out and starts its last rung again: said (and alerted)
            await self._ledger.append_all([_retried(job) for job in retried])
        for admitted, won in claimed:
            mono = self._clock.monotonic()
            won = [replace(job, started_mono=mono) for job in won]
            action = admitted.group.action
            skip = (admitted.shared or self._skip(action, now)) if won else None
            await self._settle_budget(admitted, won if skip is None else [], now)
            if won:
                self._live.update(j.intent_id for j in won if j.intent_id is not None)
                counted = admitted.group.key if admitted.budgeted and skip is None else None
                restarting = action is Action.PROCESS_RESTART and admitted.group.keyed
                host = admitted.group.key if restarting and skip is None else None
                call = _Call(action, won, skip, counted, host, admitted.send_at)
                self._launch(call, now, mono0)
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

    def _paced(self, admitted: _Admitted, now: datetime) -> _Admitted:
        """When its backend's pace lets the call go out: a slot booked with the claim (a
        claim lost, or a call skipped after all, leaves its slot unused)."""
        action = admitted.group.action
        pacer = self._pacers.get(action)
        refused = self._breakers is not None and self._breakers.refuses(action, now)
        if pacer is None or admitted.shared is not None or refused:
            return admitted
        return replace(admitted, send_at=pacer.reserve(self._clock.monotonic()))

    def _skip(self, action: Action, now: datetime) -> dict[str, Any] | None:
        """Why a claimed call is not made: its breaker is open. The attempt is spent without
        a call; the ladder goes on to its next rung after the usual wait."""
        if self._breakers is None or self._breakers.allows(action, now):
            return None
        return {"reason": "circuit_open", "breaker": self._breakers.name(action)}

    def _claim(self, job: _Job, now: datetime, admitted: _Admitted) -> Claim:
        act, group = job.act, admitted.group
        restart = act.action is Action.PROCESS_RESTART and group.keyed
        detail: dict[str, Any] = {"target": group.key} if restart else {}
        if self._owner is not None:
            detail["node"] = self._owner
        if act.retry:
            detail["exhausted_retry"] = True
        if admitted.shared is not None:
            detail["shared"] = True
        wait = 0.0 if admitted.send_at is None else admitted.send_at - self._clock.monotonic()
        if wait > 0:  # said in the intent, so `status` can tell queued from running
            detail["queued_until"] = (now + timedelta(seconds=wait)).isoformat()
        elif admitted.approved_by is not None and job.incident.approved_by is not None:
            detail["approved_by"] = job.incident.approved_by  # spent by this claim
        return Claim(
            job.incident,
            act.attempt,
            act.action,
            now + timedelta(seconds=act.delay),
            detail or None,
        )

    def _launch(self, call: _Call, now: datetime, mono0: float) -> None:
        """Run one group's shared recovery call (or record it skipped) as a task; its
        instances are busy until the outcome is on record."""
        self._busy.update(job.act.instance_id for job in call.jobs)
        if call.host is not None and self._hosts is not None:
            self._hosts.begin(call.host)
        task = asyncio.create_task(self._run_group(call, now, mono0))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _still_leading(self) -> bool:
        if self._fence is None or await self._fence():
            return True
        log.error("no longer the leader: actions stop here")
        return False

    async def _run_group(self, call: _Call, now: datetime, mono0: float) -> None:
        action, members, host = call.action, call.jobs, call.host
        try:
            outcome, detail, result = await self._attempt(call, now)
            await self._record_breaker(action, outcome, detail, now, mono0)
            if len(members) > 1:
                detail = {**detail, "shared_with": [m.act.instance_id for m in members]}
            finished_at = await self._finish(members, outcome, detail, now, mono0)
            if host is not None and self._hosts is not None and result is not None:
                hosted = [m.act.instance_id for m in members]
                await self._hosts.restarted(host, members[0].incident, hosted, result, finished_at)
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
            if host is not None and self._hosts is not None:
                self._hosts.end(host)
            for job in members:
                self._busy.discard(job.act.instance_id)
                if job.intent_id is not None:
                    self._live.discard(job.intent_id)

    async def _attempt(
        self, call: _Call, now: datetime
    ) -> tuple[Outcome, dict[str, Any], ActionResult | None]:
        """The call, made once its pace allows and while this node still leads (given a
        skip: no call)."""
        if call.skip is not None:
            return Outcome.SKIPPED, call.skip, None
        if call.send_at is not None and not await self._wait_turn(call.action, call.send_at):
            reason = "shutting_down"  # queued by its pace when the shutdown came: not sent
        else:
            async with self._slots:
                if await self._still_leading():
                    return await self._call(call.action, call.jobs[0])
            reason = "lost_leadership"
        if call.counted is not None:  # never went out: no budget spent
            await self._guards.restart_unsent(call.counted, now)
        return Outcome.SKIPPED, {"reason": reason}, None

    async def _wait_turn(self, action: Action, send_at: float) -> bool:
        """Wait until `send_at` (monotonic); False when a shutdown came first."""
        wait = send_at - self._clock.monotonic()
        if wait <= 0:
            return not self._stopping
        self._queued[action] += 1
        try:
            napping = asyncio.ensure_future(self._sleep(wait))
            stopping = asyncio.ensure_future(self._stopped.wait())
            await asyncio.wait({napping, stopping}, return_when=asyncio.FIRST_COMPLETED)
            for waiting in (napping, stopping):
                waiting.cancel()
        finally:
            self._queued[action] -= 1
        return not self._stopping

    async def _record_breaker(
        self, action: Action, outcome: Outcome, detail: dict[str, Any], now: datetime, mono0: float
    ) -> None:
        """What the backend answered teaches its breaker (a target it was never asked
        about does not)."""
        if (
            self._breakers is None
            or outcome not in (Outcome.OK, Outcome.FAILED)
            or detail.get("invalid_target")
        ):
            return
        at = now + timedelta(seconds=self._clock.monotonic() - mono0)
        error = str(detail.get("error", ""))
        await self._breakers.record(action, outcome is Outcome.OK, at, error)

    async def _call(
        self, action: Action, job: _Job
    ) -> tuple[Outcome, dict[str, Any], ActionResult | None]:
        recovery = self._recoveries.get(action)
        if recovery is None:
            return Outcome.FAILED, {"error": f"no backend configured for {action}"}, None
        target = Target(job.act.instance_id, job.act.finding.process)
        try:
            async with asyncio.timeout(recovery.timeout + self._timeout_margin):
                result = await recovery.recover(target)
        except TimeoutError:
            limit = recovery.timeout + self._timeout_margin
            failed = {"error": f"timed out after {limit:g}s", "transient": True}
        except InvalidTarget as exc:  # nothing was asked of the backend: not its failure
            failed = {"error": str(exc), "transient": False, "invalid_target": True}
        except WatchdogError as exc:
            failed = {"error": str(exc), "transient": exc.transient}
        except Exception as exc:  # an adapter bug must still leave an outcome row
            log.exception("recovery %s crashed (a bug in its adapter)", action)
            failed = {"error": f"{type(exc).__name__}: {exc}", "unexpected": True}
        else:
            return Outcome.OK, dict(result.detail), result
        return Outcome.FAILED, failed, None

    async def _finish(
        self,
        jobs: Sequence[_Job],
        outcome: Outcome,
        detail: dict[str, Any],
        now: datetime,
        mono0: float,
    ) -> datetime:
        """Record the outcome of each job's attempt; returns once it is committed, with
        the time it finished."""
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
        return finished_at


def ready(
    waiting: dict[Group, list[Act]], incidents: Mapping[str, Incident]
) -> dict[Group, list[Act]]:
    """Take out of `waiting` the groups whose members all have an incident."""
    ready = {
        key: group
        for key, group in waiting.items()
        if all(a.instance_id in incidents for a in group)
    }
    for key in ready:
        del waiting[key]
    return ready


def _group_of(recovery: Recovery | None, act: Act) -> Group:
    """The act's shared call, or a call of its own when its target cannot be keyed."""
    own = Group(act.action, act.instance_id, keyed=False)
    if recovery is None:
        return own
    try:
        key = recovery.key(Target(act.instance_id, act.finding.process))
    except RecoveryError:
        return own
    return Group(act.action, key, keyed=True)


def _won(jobs: Sequence[_Job], results: Iterator[int | None]) -> list[_Job]:
    """The jobs whose claim won (the next results, in order), with their intent row."""
    intents = [(job, next(results)) for job in jobs]
    return [replace(job, intent_id=intent) for job, intent in intents if intent is not None]


def _retried(job: _Job) -> NewAudit:
    incident, act = job.incident, job.act
    detail = {"rung": str(act.action), "intent": job.intent_id}
    return NewAudit(
        incident.instance_id,
        AuditAction.EXHAUSTED_RETRY,
        Outcome.OK,
        incident.id,
        str(incident.reason),
        act.attempt,
        detail,
    )
