"""The Ledger port's contract, one suite for every implementation: `MemoryLedger` (the
fake the unit tests run on), `SqlLedger` on a real SQLite file and on a real PostgreSQL
database. Each test is written once and runs on all three.

Callers pass `now` to every method that takes one (all three see the same times). What
the store stamps itself (outcome rows, appended rows, interrupted rows, `resume`) is
stamped by its own clock: the database's for SqlLedger, the fake clock for MemoryLedger,
which starts at the real time like a database's. Only the methods production calls are
used here.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from watchdog.core.model import (
    Action,
    AuditAction,
    AuditRow,
    Finding,
    Incident,
    IncidentState,
    Outcome,
    Pause,
    Reason,
    Selector,
    SelectorKind,
)
from watchdog.core.ports import AuditQuery, Claim, Closing, Finished, Ledger, NewAudit, Opening
from watchdog.store import migrate
from watchdog.store.database import Database
from watchdog.store.ledger import SqlLedger
from watchdog.store.schema import revisions
from watchdog.testing import FakeClock, MemoryLedger

T0 = datetime(2024, 5, 1, 12, 0, 0, 250_000, tzinfo=UTC)  # the callers' time line
STORE_CLOCK_SKEW = timedelta(minutes=5)  # a store's own clock against this process's
API = Action.API_RESTART
FLAG = Action.DB_FLAG
RESTART = Action.PROCESS_RESTART

_DATABASE = pytest.StashKey[Database]()
_EMITTED = pytest.StashKey[list[AuditRow]]()


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def ledger(request: pytest.FixtureRequest) -> AsyncIterator[Ledger]:
    emitted: list[AuditRow] = []
    request.node.stash[_EMITTED] = emitted
    if request.param == "memory":
        yield MemoryLedger(FakeClock(datetime.now(UTC)), emitted.append)
        return
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    db = Database(url, timeout=5.0)
    try:
        await migrate.upgrade(db)
        request.node.stash[_DATABASE] = db
        yield SqlLedger(db, emitted.append)
    finally:
        await db.dispose()


@pytest.fixture
def emitted(request: pytest.FixtureRequest, ledger: Ledger) -> list[AuditRow]:
    """The rows handed to the ledger's emit sink (the log), in order."""
    emitted: list[AuditRow] = request.node.stash[_EMITTED]
    return emitted


@pytest.fixture
def revision(request: pytest.FixtureRequest, ledger: Ledger) -> Callable[[], Awaitable[int]]:
    """Reads the ledger's revision as a scan does (`Scan.ledger_revision`). MemoryLedger
    keeps none and reads afresh every time: any number will do for it."""
    db = request.node.stash.get(_DATABASE, None)

    async def read() -> int:
        if db is None:
            return 0
        query = sa.select(revisions.c.revision).where(revisions.c.name == "incidents")
        async with db.connect("read the ledger revision") as conn:
            return int((await conn.execute(query)).scalar_one())

    return read


# ------------------------------------------------------------------------- helpers


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def finding(instance_id: str, process: str | None = None) -> Finding:
    return Finding(instance_id, Reason.STALE_HEARTBEAT, "CONNECTED", 200.0, 90.0, process)


DETECTED_DETAIL = {"status": "CONNECTED", "age": 200.0, "threshold": 90.0, "overdue": 110.0}


async def open_(ledger: Ledger, *instance_ids: str, now: datetime = T0) -> list[Incident]:
    return await ledger.open_incidents([Opening(finding(i)) for i in instance_ids], now)


async def claim(
    ledger: Ledger,
    incident: Incident,
    attempt: int,
    action: Action = API,
    now: datetime = T0,
    delay: float = 30.0,
    detail: dict[str, Any] | None = None,
) -> int | None:
    claims = [Claim(incident, attempt, action, now + timedelta(seconds=delay), detail)]
    (intent_id,) = await ledger.begin_actions(claims, now)
    return intent_id


async def won(ledger: Ledger, incident: Incident, attempt: int, action: Action = API) -> int:
    """Claim attempt `attempt`, which nobody else can have claimed: its intent row's id."""
    intent_id = await claim(ledger, incident, attempt, action)
    assert intent_id is not None
    return intent_id


def finished(
    incident: Incident,
    attempt: int,
    intent_id: int | None,
    next_at: datetime,
    outcome: Outcome = Outcome.OK,
    action: Action = API,
    detail: dict[str, Any] | None = None,
    duration: float = 1.25,
) -> Finished:
    return Finished(incident, attempt, action, outcome, detail or {}, duration, next_at, intent_id)


async def current(ledger: Ledger, instance_id: str) -> Incident:
    return (await ledger.load_open())[instance_id]


async def trail(ledger: Ledger, instance_id: str | None = None) -> list[dict[str, Any]]:
    """Every field of the audit rows but the store-assigned id and time."""
    rows = await ledger.audit(AuditQuery(instance_id=instance_id, limit=10_000))
    return [view(r) for r in rows]


def view(row: AuditRow) -> dict[str, Any]:
    return {
        "instance": row.instance_id,
        "action": str(row.action),
        "outcome": str(row.outcome),
        "incident": row.incident_id,
        "reason": row.reason,
        "attempt": row.attempt,
        "detail": row.detail,
        "actor": row.actor,
        "intent": row.intent_id,
        "duration": row.duration,
    }


def expect(
    instance: str,
    action: str,
    outcome: str,
    incident: int | None,
    attempt: int | None,
    detail: dict[str, Any] | None = None,
    *,
    reason: str | None = "stale_heartbeat",
    actor: str = "watchdog",
    intent: int | None = None,
    duration: float | None = None,
) -> dict[str, Any]:
    return {
        "instance": instance,
        "action": action,
        "outcome": outcome,
        "incident": incident,
        "reason": reason,
        "attempt": attempt,
        "detail": detail or {},
        "actor": actor,
        "intent": intent,
        "duration": duration,
    }


def view_of(spec: NewAudit) -> dict[str, Any]:
    return expect(
        spec.instance_id,
        str(spec.action),
        str(spec.outcome),
        spec.incident_id,
        spec.attempt,
        dict(spec.detail),
        reason=spec.reason,
        actor=spec.actor,
        intent=spec.intent_id,
        duration=spec.duration,
    )


def stamped_by_store(rows: Sequence[AuditRow]) -> None:
    """Rows the store stamps itself: aware UTC, its clock's time, one stamp per batch."""
    assert rows
    assert {r.at for r in rows} == {rows[0].at}
    assert rows[0].at.utcoffset() == timedelta(0)
    assert abs(rows[0].at - datetime.now(UTC)) < STORE_CLOCK_SKEW


def increasing(ids: Sequence[int]) -> bool:
    return all(a < b for a, b in itertools.pairwise(ids))


# ------------------------------------------------------------------------- opening


async def test_open_incidents_opens_each_with_its_detected_row(ledger: Ledger) -> None:
    assert await ledger.open_incidents([], T0) == []
    (earlier,) = await open_(ledger, "b")
    await ledger.close_all([Closing(earlier, IncidentState.RECOVERED, "watchdog", {})], at(1))

    openings = [Opening(finding("a", "proc-a")), Opening(finding("b"), 4, earlier.id)]
    a, b = await ledger.open_incidents(openings, at(2))

    assert earlier.id < a.id < b.id
    assert a == Incident(
        a.id, "a", Reason.STALE_HEARTBEAT, IncidentState.OPEN, 0, at(2), at(2), process="proc-a"
    )
    assert b == Incident(b.id, "b", Reason.STALE_HEARTBEAT, IncidentState.OPEN, 4, at(2), at(2))
    assert await ledger.load_open() == {"a": a, "b": b}
    assert await trail(ledger) == [
        expect("b", "detected", "ok", earlier.id, 0, DETECTED_DETAIL),
        expect("b", "recovered", "ok", earlier.id, 0),
        expect("a", "detected", "ok", a.id, 0, DETECTED_DETAIL),
        expect(
            "b",
            "detected",
            "ok",
            b.id,
            4,
            {**DETECTED_DETAIL, "continues": earlier.id, "carried_attempts": 4},
        ),
    ]
    rows = await ledger.audit(AuditQuery())
    assert [r.at for r in rows] == [T0, at(1), at(2), at(2)]


async def test_load_open_holds_open_exhausted_and_suppressed_incidents(ledger: Ledger) -> None:
    a, b, c, d = await open_(ledger, "a", "b", "c", "d")
    await ledger.exhaust_all([b], at(1))
    await ledger.suppress_all([c], at(600), at(1), {})
    await ledger.close_all([Closing(d, IncidentState.RESET, "ops", {})], at(1))

    found = await ledger.load_open()
    assert {i: x.state for i, x in found.items()} == {
        "a": IncidentState.OPEN,
        "b": IncidentState.EXHAUSTED,
        "c": IncidentState.SUPPRESSED,
    }
    assert found["a"] == a


async def test_last_closed_is_the_latest_closed_incident_of_each(ledger: Ledger) -> None:
    (x1,) = await open_(ledger, "x")
    await ledger.close_all([Closing(x1, IncidentState.RECOVERED, "watchdog", {})], at(1))
    (x2, y) = await open_(ledger, "x", "y", now=at(2))
    await ledger.close_all([Closing(x2, IncidentState.DISMISSED, "watchdog", {})], at(3))
    await open_(ledger, "x", now=at(4))  # open: not among the closed

    closed = await ledger.last_closed(["x", "y", "z"])
    assert list(closed) == ["x"]
    assert closed["x"] == Incident(
        x2.id, "x", Reason.STALE_HEARTBEAT, IncidentState.DISMISSED, 0, at(2), None, at(3)
    )
    assert await ledger.last_closed([]) == {}
    assert (await ledger.last_closed(["y"])) == {}
    assert y.id > x1.id


# -------------------------------------------------------------------------- claims


async def test_a_claim_takes_the_next_attempt_and_commits_its_intent(ledger: Ledger) -> None:
    (a,) = await open_(ledger, "a")
    assert await ledger.begin_actions([], at(1)) == []

    intent = await claim(ledger, a, 1, now=at(1), detail={"node": "n1"})

    assert intent is not None
    assert await current(ledger, "a") == Incident(
        a.id, "a", Reason.STALE_HEARTBEAT, IncidentState.OPEN, 1, T0, at(31), None, API
    )
    (row,) = await ledger.audit(AuditQuery(actions=[AuditAction.API_RESTART]))
    assert (row.id, row.at) == (intent, at(1))
    assert view(row) == expect("a", "api_restart", "started", a.id, 1, {"node": "n1"})
    assert await ledger.orphan_intents() == [row]


async def test_claims_are_conditional(ledger: Ledger) -> None:
    a, b, c, d = await open_(ledger, "a", "b", "c", "d")
    assert await claim(ledger, a, 1) is not None
    await ledger.exhaust_all([c], at(1), at(3601))
    assert (await current(ledger, "c")).next_action_at == at(3601)  # its retry's time
    await ledger.close_all([Closing(d, IncidentState.RESET, "ops", {})], at(1))
    rows = len(await trail(ledger))

    assert await claim(ledger, a, 1, now=at(2)) is None  # taken already
    assert await claim(ledger, b, 2, now=at(2)) is None  # attempt 1 skipped
    assert await claim(ledger, c, 2, now=at(2)) is None  # exhausted at 0: attempt 1 next
    assert await claim(ledger, d, 1, now=at(2)) is None  # closed
    assert len(await trail(ledger)) == rows  # no row for a lost claim
    assert (await current(ledger, "a")).next_action_at == at(30)  # the winner's due time

    # An exhausted incident's last rung is tried again: claimed, and it stays exhausted.
    assert await claim(ledger, c, 1, now=at(3601)) is not None
    assert (await current(ledger, "c")).state is IncidentState.EXHAUSTED

    a1 = await current(ledger, "a")
    assert await claim(ledger, a1, 2, FLAG, now=at(30)) is not None  # the next one: won


async def test_a_batch_of_claims_answers_each_in_order(ledger: Ledger) -> None:
    a, b, c = await open_(ledger, "a", "b", "c")
    await claim(ledger, b, 1)
    claims = [
        Claim(a, 1, API, at(40)),
        Claim(b, 1, API, at(40)),  # lost: b has attempt 1 already
        Claim(c, 1, API, at(40), {"node": "n1"}),
    ]
    first, lost, third = await ledger.begin_actions(claims, at(10))

    assert lost is None
    assert first is not None
    assert third is not None
    assert first < third
    assert await trail(ledger) == [
        expect("a", "detected", "ok", a.id, 0, DETECTED_DETAIL),
        expect("b", "detected", "ok", b.id, 0, DETECTED_DETAIL),
        expect("c", "detected", "ok", c.id, 0, DETECTED_DETAIL),
        expect("b", "api_restart", "started", b.id, 1),
        expect("a", "api_restart", "started", a.id, 1),
        expect("c", "api_restart", "started", c.id, 1, {"node": "n1"}),
    ]


async def test_one_claim_per_incident_per_batch(ledger: Ledger) -> None:
    (a,) = await open_(ledger, "a")
    with pytest.raises(ValueError, match="one claim per incident"):
        await ledger.begin_actions([Claim(a, 1, API, at(30)), Claim(a, 2, FLAG, at(30))], T0)
    assert (await current(ledger, "a")).attempt == 0
    assert len(await trail(ledger)) == 1


async def test_a_suppressed_incident_is_claimed_and_open_again(ledger: Ledger) -> None:
    (a,) = await open_(ledger, "a")
    await ledger.suppress_all([a], at(600), at(1), {})
    assert await claim(ledger, a, 1, RESTART, now=at(600)) is not None
    state = await current(ledger, "a")
    assert (state.state, state.attempt, state.last_action) == (IncidentState.OPEN, 1, RESTART)
    assert state.next_action_at == at(630)


# ------------------------------------------------------------------------ outcomes


async def test_each_intent_gets_one_outcome(ledger: Ledger, emitted: list[AuditRow]) -> None:
    (a,) = await open_(ledger, "a")
    intent = await claim(ledger, a, 1)
    done = finished(a, 1, intent, at(90), detail={"status": 200}, duration=0.123456789)

    await ledger.finish_actions([done])
    await ledger.finish_actions([done])  # written again: its commit acknowledgement was lost
    await ledger.finish_actions([])

    outcome = expect(
        "a", "api_restart", "ok", a.id, 1, {"status": 200}, intent=intent, duration=0.123457
    )
    assert (await trail(ledger))[-2:] == [
        expect("a", "api_restart", "started", a.id, 1),
        outcome,
    ]
    assert [view(r) for r in emitted[-2:]] == (await trail(ledger))[-2:]
    assert (await current(ledger, "a")).next_action_at == at(90)
    assert await ledger.orphan_intents() == []
    stamped_by_store((await ledger.audit(AuditQuery()))[-1:])


async def test_a_batch_of_outcomes_keeps_the_first_of_each_intent(ledger: Ledger) -> None:
    a, b = await open_(ledger, "a", "b")
    ia = await claim(ledger, a, 1)
    ib = await claim(ledger, b, 1)
    await ledger.finish_actions(
        [
            finished(a, 1, ia, at(60), Outcome.FAILED, detail={"error": "boom"}),
            finished(b, 1, ib, at(60)),
            finished(a, 1, ia, at(60), Outcome.OK),  # the same intent again
            finished(a, 1, None, at(60), Outcome.OK),  # no intent named: always written
        ]
    )
    rows = await ledger.audit(AuditQuery(since=at(1)))  # the outcomes: stamped later
    assert [view(r) for r in rows] == [
        expect("a", "api_restart", "failed", a.id, 1, {"error": "boom"}, intent=ia, duration=1.25),
        expect("b", "api_restart", "ok", b.id, 1, intent=ib, duration=1.25),
        expect("a", "api_restart", "ok", a.id, 1, duration=1.25),
    ]
    assert increasing([r.id for r in rows])
    stamped_by_store(rows)


async def test_an_outcome_moves_the_next_attempt_only_of_an_open_incident_at_that_attempt(
    ledger: Ledger,
) -> None:
    moved, overtaken, suppressed, exhausted, closed = await open_(
        ledger, "moved", "overtaken", "suppressed", "exhausted", "closed"
    )
    intents = {
        i.instance_id: await claim(ledger, i, 1)
        for i in (moved, overtaken, suppressed, exhausted, closed)
    }
    await claim(ledger, await current(ledger, "overtaken"), 2, now=at(40), delay=30)
    # The restart budget holds the next attempt until it returns (another leader's cycle
    # while this attempt's call was still out): its outcome must not cut that short.
    await ledger.suppress_all([await current(ledger, "suppressed")], at(1800), at(40), {})
    await ledger.exhaust_all([await current(ledger, "exhausted")], at(40))
    closing = Closing(await current(ledger, "closed"), IncidentState.RECOVERED, "watchdog", {})
    await ledger.close_all([closing], at(40))

    await ledger.finish_actions(
        [
            finished(i, 1, intents[i.instance_id], at(95))
            for i in (moved, overtaken, suppressed, exhausted, closed)
        ]
    )

    due = {i: x.next_action_at for i, x in (await ledger.load_open()).items()}
    assert due == {"moved": at(95), "overtaken": at(70), "suppressed": at(1800), "exhausted": None}
    assert (await current(ledger, "suppressed")).state is IncidentState.SUPPRESSED
    assert (await ledger.last_closed(["closed"]))["closed"].next_action_at is None
    outcomes = await ledger.audit(AuditQuery(since=at(41)))
    assert [r.instance_id for r in outcomes] == [
        "moved",
        "overtaken",
        "suppressed",
        "exhausted",
        "closed",
    ]  # every outcome is on record, whatever became of its incident
    (left,) = await ledger.orphan_intents()  # attempt 2 of `overtaken`, still out
    assert (left.instance_id, left.attempt, left.outcome) == ("overtaken", 2, Outcome.STARTED)


# ----------------------------------------------------------------- state changes


async def test_exhaust_all(ledger: Ledger) -> None:
    a, b, c, d = await open_(ledger, "a", "b", "c", "d")
    await claim(ledger, a, 1)
    await ledger.suppress_all([b], at(600), at(1), {})
    await ledger.close_all([Closing(d, IncidentState.RECOVERED, "watchdog", {})], at(1))
    await ledger.exhaust_all([], at(2))

    a1 = await current(ledger, "a")
    await ledger.exhaust_all([a1, b, c, d], at(2))
    await ledger.exhaust_all([a1, c], at(3))  # exhausted already: nothing more

    found = await ledger.load_open()
    assert {i: (x.state, x.next_action_at) for i, x in found.items()} == {
        "a": (IncidentState.EXHAUSTED, None),
        "b": (IncidentState.EXHAUSTED, None),
        "c": (IncidentState.EXHAUSTED, None),
    }
    assert [r for r in await trail(ledger) if r["action"] == "exhausted"] == [
        expect("a", "exhausted", "ok", a.id, 1, {"attempts": 1}),
        expect("b", "exhausted", "ok", b.id, 0, {"attempts": 0}),
        expect("c", "exhausted", "ok", c.id, 0, {"attempts": 0}),
    ]


async def test_close_all_closes_each_once(ledger: Ledger) -> None:
    a, b, c = await open_(ledger, "a", "b", "c")
    await claim(ledger, a, 1)
    await ledger.exhaust_all([b], at(1))
    await ledger.suppress_all([c], at(600), at(1), {})
    await ledger.close_all([], at(2))
    a1 = await current(ledger, "a")

    await ledger.close_all(
        [
            Closing(a1, IncidentState.RECOVERED, "watchdog", {"time_to_recover": 5.0}),
            Closing(b, IncidentState.RESET, "ops", {"note": "by hand"}),
            Closing(c, IncidentState.DISMISSED, "watchdog", {"why": "disabled"}),
        ],
        at(5),
    )
    await ledger.close_all([Closing(a1, IncidentState.RESET, "ops", {})], at(9))  # closed

    assert await ledger.load_open() == {}
    closed = await ledger.last_closed(["a", "b", "c"])
    assert {i: (x.state, x.closed_at, x.next_action_at) for i, x in closed.items()} == {
        "a": (IncidentState.RECOVERED, at(5), None),
        "b": (IncidentState.RESET, at(5), None),
        "c": (IncidentState.DISMISSED, at(5), None),
    }
    rows = await ledger.audit(AuditQuery(since=at(2)))
    assert [view(r) for r in rows] == [
        expect("a", "recovered", "ok", a.id, 1, {"time_to_recover": 5.0}),
        expect("b", "reset", "ok", b.id, 0, {"note": "by hand"}, actor="ops"),
        expect("c", "dismissed", "ok", c.id, 0, {"why": "disabled"}),
    ]
    assert {r.at for r in rows} == {at(5)}


async def test_suppress_all_holds_an_actionable_incident_at_the_same_attempt(
    ledger: Ledger,
) -> None:
    a, stale, b, c = await open_(ledger, "a", "stale", "b", "c")
    await claim(ledger, stale, 1)  # `stale` (attempt 0) is out of date now
    await ledger.exhaust_all([b], at(1))
    await ledger.close_all([Closing(c, IncidentState.RESET, "ops", {})], at(1))
    budget = {"process": "p", "budget": "3 per 1800s"}

    await ledger.suppress_all([], at(600), at(2), budget)
    await ledger.suppress_all([a, stale, b, c], at(600), at(2), budget)
    held = await current(ledger, "a")
    await ledger.suppress_all([held], at(900), at(3), budget)  # still held: held longer

    found = await ledger.load_open()
    assert {i: (x.state, x.attempt, x.next_action_at) for i, x in found.items()} == {
        "a": (IncidentState.SUPPRESSED, 0, at(900)),
        "stale": (IncidentState.OPEN, 1, at(30)),
        "b": (IncidentState.EXHAUSTED, 0, None),
    }
    assert await trail(ledger, "a") == [
        expect("a", "detected", "ok", a.id, 0, DETECTED_DETAIL),
        expect("a", "suppressed", "skipped", a.id, 1, {**budget, "until": at(600).isoformat()}),
        expect("a", "suppressed", "skipped", a.id, 1, {**budget, "until": at(900).isoformat()}),
    ]


async def test_mark_flapping_all_marks_once(ledger: Ledger) -> None:
    a, b = await open_(ledger, "a", "b")
    await claim(ledger, a, 1)
    a1 = await current(ledger, "a")
    await ledger.mark_flapping_all([], at(1))

    await ledger.mark_flapping_all([(a1, 4), (b, 5)], at(1))
    await ledger.mark_flapping_all([(a1, 6)], at(2))  # flapping already

    found = await ledger.load_open()
    assert (found["a"].flapping, found["b"].flapping) == (True, True)
    assert found["a"].state is IncidentState.OPEN
    assert [r for r in await trail(ledger) if r["action"] == "flapping"] == [
        expect("a", "flapping", "ok", a.id, 1, {"incidents_in_window": 4}),
        expect("b", "flapping", "ok", b.id, 0, {"incidents_in_window": 5}),
    ]


async def test_incident_counts_counts_those_opened_since(ledger: Ledger) -> None:
    (a1,) = await open_(ledger, "a", now=at(0))
    await ledger.close_all([Closing(a1, IncidentState.RECOVERED, "watchdog", {})], at(5))
    await open_(ledger, "a", "b", now=at(10))
    await open_(ledger, "c", now=at(20))

    assert await ledger.incident_counts(["a", "b", "c", "d"], at(0)) == {"a": 2, "b": 1, "c": 1}
    assert await ledger.incident_counts(["a", "b"], at(10)) == {"a": 1, "b": 1}  # inclusive
    assert await ledger.incident_counts(["a", "c"], at(11)) == {"c": 1}
    assert await ledger.incident_counts([], at(0)) == {}


# ------------------------------------------------------------- intents left behind


async def test_orphan_intents_are_intents_without_a_later_outcome(ledger: Ledger) -> None:
    a, b, c = await open_(ledger, "a", "b", "c")
    # A row of the same attempt and action from before the intent answers nothing.
    await ledger.append(NewAudit("c", AuditAction.API_RESTART, Outcome.FAILED, c.id, None, 1))
    ia, ib, ic = [await won(ledger, i, 1) for i in (a, b, c)]
    await ledger.finish_actions([finished(b, 1, ib, at(60))])

    orphans = await ledger.orphan_intents()
    assert [r.id for r in orphans] == [ia, ic]
    assert [r.id for r in await ledger.orphan_intents(among=[ic, ib])] == [ic]
    assert [r.id for r in await ledger.orphan_intents(instances=["a", "b"])] == [ia]
    assert [r.id for r in await ledger.orphan_intents(among=[ia], instances=["c"])] == []
    assert await ledger.orphan_intents(among=[]) == []
    assert await ledger.orphan_intents(instances=[]) == []
    assert orphans == [r for r in await ledger.audit(AuditQuery()) if r.id in (ia, ic)]


async def test_interrupt_gives_an_intent_without_outcome_its_interrupted_row(
    ledger: Ledger,
) -> None:
    a, b = await open_(ledger, "a", "b")
    ia = await claim(ledger, a, 1, detail={"node": "n1"})
    ib = await claim(ledger, b, 1, RESTART, detail={"target": "p"})
    await ledger.finish_actions([finished(a, 1, ia, at(60))])
    actions = [AuditAction.API_RESTART, AuditAction.PROCESS_RESTART]
    rows = await ledger.audit(AuditQuery(actions=actions))
    intents = [r for r in rows if r.outcome is Outcome.STARTED]  # a's has its outcome
    assert await ledger.interrupt([], "note") == []

    written = await ledger.interrupt(intents, "its node is gone")
    again = await ledger.interrupt(intents, "its node is gone")

    assert again == []
    assert [view(r) for r in written] == [
        expect(
            "b",
            "process_restart",
            "interrupted",
            b.id,
            1,
            {"intent": ib, "note": "its node is gone"},
            intent=ib,
        ),
    ]
    assert written == (await ledger.audit(AuditQuery()))[-1:]
    stamped_by_store(written)
    assert await ledger.orphan_intents() == []
    await ledger.finish_actions([finished(b, 1, ib, at(60), action=RESTART)])  # too late
    assert (await ledger.audit(AuditQuery()))[-1:] == written


# ----------------------------------------------------------------------- pauses


async def test_pause_and_resume(ledger: Ledger, emitted: list[AuditRow]) -> None:
    # `resume` judges a pause by the store's own clock (the real time), not the caller's.
    soon = datetime.now(UTC) + timedelta(hours=1)
    assert await ledger.resume("a", "ops") is False
    await ledger.pause(Pause("a", at(60), "first", "ops"), T0)
    await ledger.pause(Pause("a", soon, "maintenance", "alice"), at(1))  # replaces it
    await ledger.pause(Pause("b", at(60), "short", "ops"), at(1))

    assert await ledger.load_pauses(at(59)) == {
        "a": Pause("a", soon, "maintenance", "alice"),
        "b": Pause("b", at(60), "short", "ops"),
    }
    assert list(await ledger.load_pauses(at(60))) == ["a"]  # in force while `until` > now
    assert await ledger.load_pauses(soon) == {}

    assert await ledger.resume("a", "bob") is True
    assert await ledger.resume("a", "bob") is False  # no pause left
    assert await ledger.resume("b", "ops") is False  # over by the store's clock: tidied
    assert await ledger.load_pauses(at(0)) == {}

    def paused(instance_id: str, until: datetime, reason: str, actor: str) -> dict[str, Any]:
        detail = {"until": until.isoformat(), "reason": reason}
        return expect(instance_id, "paused", "ok", None, None, detail, reason=None, actor=actor)

    rows = await ledger.audit(AuditQuery())
    assert [view(r) for r in rows] == [
        paused("a", at(60), "first", "ops"),
        paused("a", soon, "maintenance", "alice"),
        paused("b", at(60), "short", "ops"),
        expect("a", "resumed", "ok", None, None, reason=None, actor="bob"),
    ]
    assert [r.at for r in rows[:3]] == [T0, at(1), at(1)]
    stamped_by_store(rows[3:])
    assert emitted == rows


async def test_load_state_with_and_without_the_revision(
    ledger: Ledger, revision: Callable[[], Awaitable[int]]
) -> None:
    (a,) = await open_(ledger, "a")
    await ledger.pause(Pause("p", at(60), "x", "ops"), T0)

    seen = await revision()
    state = await ledger.load_state(at(1), seen)
    assert (dict(state.incidents), dict(state.pauses)) == (
        await ledger.load_open(),
        await ledger.load_pauses(at(1)),
    )
    assert dict(state.incidents) == {"a": a}
    assert list(state.pauses) == ["p"]
    unchanged = await ledger.load_state(at(61), seen)  # nothing written: pauses by `now`
    assert (dict(unchanged.incidents), dict(unchanged.pauses)) == ({"a": a}, {})

    await open_(ledger, "b", now=at(2))
    await claim(ledger, a, 1, now=at(2))
    assert await revision() != seen or isinstance(ledger, MemoryLedger)
    for later in (await ledger.load_state(at(3), await revision()), await ledger.load_state(at(3))):
        assert dict(later.incidents) == await ledger.load_open()
        assert sorted(later.incidents) == ["a", "b"]
        assert later.incidents["a"].attempt == 1
        assert list(later.pauses) == ["p"]


# ------------------------------------------------------------------------ the trail


async def test_append_and_append_all(ledger: Ledger, emitted: list[AuditRow]) -> None:
    row = NewAudit("*", AuditAction.BRAKE_ENGAGED, Outcome.OK, detail={"unhealthy": 3})
    first = await ledger.append(row)
    assert await ledger.append_all([]) == []
    batch = [
        NewAudit(
            "a",
            AuditAction.API_RESTART,
            Outcome.SKIPPED,
            7,
            "never_beat",
            2,
            {"dry_run": True},
            0.5,
            "dry-run",
        ),
        NewAudit("*", AuditAction.LEADER_CHANGED, Outcome.OK, detail={"node": "n2"}),
    ]
    second, third = await ledger.append_all(batch)

    assert [view(r) for r in (first, second, third)] == [
        expect("*", "brake_engaged", "ok", None, None, {"unhealthy": 3}, reason=None),
        expect(
            "a",
            "api_restart",
            "skipped",
            7,
            2,
            {"dry_run": True},
            reason="never_beat",
            actor="dry-run",
            duration=0.5,
        ),
        expect("*", "leader_changed", "ok", None, None, {"node": "n2"}, reason=None),
    ]
    assert increasing([first.id, second.id, third.id])
    stamped_by_store([first])
    stamped_by_store([second, third])
    assert await ledger.audit(AuditQuery()) == [first, second, third]
    assert emitted == [first, second, third]


async def test_append_all_keeps_one_outcome_per_intent(ledger: Ledger) -> None:
    (a,) = await open_(ledger, "a")
    intent = await claim(ledger, a, 1)
    outcome = NewAudit(
        "a", AuditAction.API_RESTART, Outcome.OK, a.id, "stale_heartbeat", 1, intent_id=intent
    )
    other = NewAudit("*", AuditAction.GRACE, Outcome.OK, detail={"seconds": 90})

    written = await ledger.append_all([outcome, other, outcome])
    again = await ledger.append_all([outcome, other])

    assert [view(r) for r in written] == [view_of(outcome), view_of(other)]
    assert [view(r) for r in again] == [view_of(other)]
    assert increasing([r.id for r in [*written, *again]])
    assert [r["action"] for r in await trail(ledger)] == [
        "detected",
        "api_restart",
        "api_restart",
        "grace",
        "grace",
    ]


async def test_details_read_back_as_json(ledger: Ledger, emitted: list[AuditRow]) -> None:
    detail = {"pair": (1, 2), "when": T0, "nested": {"b": [1.5, None]}}
    written = await ledger.append(NewAudit("a", AuditAction.GRACE, Outcome.OK, detail=detail))

    (stored,) = await ledger.audit(AuditQuery())
    assert stored.detail == {"pair": [1, 2], "when": str(T0), "nested": {"b": [1.5, None]}}
    assert written.detail == detail  # the row written (and logged) holds the detail given
    assert emitted == [written]


async def test_audit_query(ledger: Ledger) -> None:
    a, b = await open_(ledger, "a", "b", now=at(0))
    await claim(ledger, a, 1, now=at(10))
    await claim(ledger, b, 1, FLAG, now=at(20))
    await ledger.pause(Pause("a", at(100), "x", "ops"), at(30))
    await ledger.close_all([Closing(b, IncidentState.RESET, "ops", {})], at(40))

    def trail_of(rows: list[AuditRow]) -> list[tuple[str, str]]:
        return [(r.instance_id, str(r.action)) for r in rows]

    everything = await ledger.audit(AuditQuery())
    assert trail_of(everything) == [
        ("a", "detected"),
        ("b", "detected"),
        ("a", "api_restart"),
        ("b", "db_flag"),
        ("a", "paused"),
        ("b", "reset"),
    ]
    assert increasing([r.id for r in everything])
    assert [r.at for r in everything] == [at(0), at(0), at(10), at(20), at(30), at(40)]
    assert trail_of(await ledger.audit(AuditQuery(instance_id="a"))) == [
        ("a", "detected"),
        ("a", "api_restart"),
        ("a", "paused"),
    ]
    assert trail_of(await ledger.audit(AuditQuery(since=at(20)))) == [
        ("b", "db_flag"),
        ("a", "paused"),
        ("b", "reset"),
    ]  # `since` inclusive
    actions = [AuditAction.DB_FLAG, AuditAction.DETECTED, AuditAction.RESET]
    assert trail_of(await ledger.audit(AuditQuery(actions=actions))) == [
        ("a", "detected"),
        ("b", "detected"),
        ("b", "db_flag"),
        ("b", "reset"),
    ]
    assert trail_of(await ledger.audit(AuditQuery(limit=2))) == [("a", "paused"), ("b", "reset")]
    assert await ledger.audit(AuditQuery(limit=0)) == []
    query = AuditQuery(instance_id="b", since=at(1), actions=actions, limit=1)
    assert trail_of(await ledger.audit(query)) == [("b", "reset")]
    assert await ledger.audit(AuditQuery(instance_id="zz")) == []
    assert await ledger.audit(AuditQuery(since=at(41))) == []


async def test_incident_history_is_newest_first(ledger: Ledger) -> None:
    (a1,) = await open_(ledger, "a", now=at(0))
    await ledger.close_all([Closing(a1, IncidentState.RECOVERED, "watchdog", {})], at(1))
    (a2, _b) = await open_(ledger, "a", "b", now=at(2))
    await ledger.close_all([Closing(a2, IncidentState.RESET, "ops", {})], at(3))
    (a3,) = await open_(ledger, "a", now=at(4))

    history = await ledger.incident_history("a", 10)
    assert [(i.id, i.state, i.closed_at) for i in history] == [
        (a3.id, IncidentState.OPEN, None),
        (a2.id, IncidentState.RESET, at(3)),
        (a1.id, IncidentState.RECOVERED, at(1)),
    ]
    assert list(await ledger.incident_history("a", 2)) == list(history[:2])
    assert list(await ledger.incident_history("a", 0)) == []
    assert list(await ledger.incident_history("zz", 5)) == []


async def test_the_ladder_leaves_the_same_trail(ledger: Ledger, emitted: list[AuditRow]) -> None:
    """A whole incident, every kind of change: every implementation writes the same rows
    (all fields but the store's id and time), with ids increasing, each one logged."""
    (a,) = await open_(ledger, "a")
    await ledger.mark_flapping_all([(a, 4)], at(1))
    i1 = await claim(ledger, a, 1, now=at(1))
    await ledger.finish_actions(
        [finished(a, 1, i1, at(40), Outcome.FAILED, detail={"error": "503", "transient": True})]
    )
    a1 = await current(ledger, "a")
    i2 = await claim(ledger, a1, 2, FLAG, now=at(40))
    await ledger.finish_actions([finished(a1, 2, i2, at(80), action=FLAG)])
    a2 = await current(ledger, "a")
    await ledger.suppress_all([a2], at(900), at(80), {"process": "p"})
    i3 = await claim(ledger, a2, 3, RESTART, now=at(900), detail={"target": "p"})
    await ledger.interrupt(await ledger.orphan_intents(), "crashed")
    a3 = await current(ledger, "a")
    await ledger.exhaust_all([a3], at(1000))
    recovered = {"time_to_recover": 1100.0, "attempts": 3}
    await ledger.close_all([Closing(a3, IncidentState.RECOVERED, "watchdog", recovered)], at(1100))
    await ledger.close_all([Closing(a3, IncidentState.RESET, "ops", {})], at(1200))

    rows = await ledger.audit(AuditQuery())
    assert [view(r) for r in rows] == [
        expect("a", "detected", "ok", a.id, 0, DETECTED_DETAIL),
        expect("a", "flapping", "ok", a.id, 0, {"incidents_in_window": 4}),
        expect("a", "api_restart", "started", a.id, 1),
        expect(
            "a",
            "api_restart",
            "failed",
            a.id,
            1,
            {"error": "503", "transient": True},
            intent=i1,
            duration=1.25,
        ),
        expect("a", "db_flag", "started", a.id, 2),
        expect("a", "db_flag", "ok", a.id, 2, intent=i2, duration=1.25),
        expect(
            "a", "suppressed", "skipped", a.id, 3, {"process": "p", "until": at(900).isoformat()}
        ),
        expect("a", "process_restart", "started", a.id, 3, {"target": "p"}),
        expect(
            "a",
            "process_restart",
            "interrupted",
            a.id,
            3,
            {"intent": i3, "note": "crashed"},
            intent=i3,
        ),
        expect("a", "exhausted", "ok", a.id, 3, {"attempts": 3}),
        expect("a", "recovered", "ok", a.id, 3, recovered),
    ]
    assert increasing([r.id for r in rows])
    assert emitted == rows
    (closed,) = await ledger.incident_history("a", 1)
    assert closed == Incident(
        a.id,
        "a",
        Reason.STALE_HEARTBEAT,
        IncidentState.RECOVERED,
        attempt=3,
        opened_at=T0,
        next_action_at=None,
        closed_at=at(1100),
        last_action=RESTART,
        flapping=True,
    )


async def test_a_held_retry_of_an_exhausted_incident_waits_and_stays_exhausted(
    ledger: Ledger,
) -> None:
    (spent,) = await open_(ledger, "a")
    await ledger.exhaust_all([spent], at(1), at(3601))
    exhausted = await current(ledger, "a")
    await ledger.suppress_all([exhausted], at(7200), at(3601), {"process": "p1"})
    held = await current(ledger, "a")
    assert (held.state, held.next_action_at) == (IncidentState.EXHAUSTED, at(7200))
    assert [r["action"] for r in await trail(ledger, "a")][-1] == "suppressed"


# ------------------------------------------------------- hosts: hold, approve, told


HELD = {"reason": "blast_radius", "process": "p1", "healthy": 2, "monitored": 3}


async def test_a_hold_is_audited_once_and_a_claim_clears_it(ledger: Ledger) -> None:
    (a,) = await open_(ledger, "a")
    await ledger.hold_all([a], at(1), HELD)
    await ledger.hold_all([a], at(2), {**HELD, "healthy": 1})  # held already: no second row
    held = await current(ledger, "a")
    assert held.held == HELD
    assert held.state is IncidentState.OPEN
    rows = [r for r in await trail(ledger, "a") if r["action"] == "held"]
    assert len(rows) == 1
    assert (rows[0]["outcome"], rows[0]["attempt"], rows[0]["detail"]) == ("skipped", 1, HELD)
    assert await claim(ledger, held, 1, RESTART, at(3)) is not None
    assert (await current(ledger, "a")).held is None


async def test_an_approval_is_audited_with_its_actor_and_spent_by_one_restart(
    ledger: Ledger,
) -> None:
    assert await ledger.approve("nobody", "alice") is None  # no open incident
    (a,) = await open_(ledger, "a")
    await ledger.hold_all([a], at(1), HELD)
    approved = await ledger.approve("a", "alice")
    assert approved is not None
    assert approved.approved_by == "alice"
    assert (await current(ledger, "a")).approved_by == "alice"
    row = (await trail(ledger, "a"))[-1]
    assert (row["action"], row["actor"], row["detail"]) == ("approved", "alice", {"held": HELD})
    # A claim that does not use it (another rung) leaves it; the restart it lets through
    # spends it.
    assert await claim(ledger, approved, 1, API, at(2)) is not None
    assert (await current(ledger, "a")).approved_by == "alice"
    spending = {"approved_by": "alice"}
    assert await claim(ledger, await current(ledger, "a"), 2, RESTART, at(3), detail=spending)
    assert (await current(ledger, "a")).approved_by is None


async def test_a_host_restart_is_audited_and_defers_only_what_is_due_sooner(
    ledger: Ledger,
) -> None:
    soon, late, never = await open_(ledger, "soon", "late", "never")
    await claim(ledger, soon, 1, API, at(0), delay=10)  # due at 10
    await claim(ledger, late, 1, API, at(0), delay=500)  # due at 500
    await ledger.exhaust_all([never], at(0), None)  # exhausted, never to be retried
    told = {"process": "p1", "old_pid": 1, "new_pid": 2, "by": "external"}
    hosted = [await current(ledger, i) for i in ("soon", "late", "never")]
    await ledger.host_restarted_all(hosted, at(120), at(1), told)
    assert (await current(ledger, "soon")).next_action_at == at(120)
    assert (await current(ledger, "late")).next_action_at == at(500)
    assert (await current(ledger, "never")).next_action_at is None
    for instance in ("soon", "late", "never"):
        row = (await trail(ledger, instance))[-1]
        assert (row["action"], row["detail"]) == ("host_restarted", told)


async def test_an_outcome_never_brings_a_deferred_attempt_forward(ledger: Ledger) -> None:
    (a,) = await open_(ledger, "a")
    intent = await won(ledger, a, 1)
    await ledger.host_restarted_all([await current(ledger, "a")], at(300), at(1), {"by": "x"})
    await ledger.finish_actions([finished(a, 1, intent, at(40))])
    assert (await current(ledger, "a")).next_action_at == at(300)


# ---------------------------------------------------------------- pauses, fleet-wide


async def test_several_instances_are_paused_and_resumed_with_one_audit_row_each_way(
    ledger: Ledger,
) -> None:
    until = datetime.now(UTC) + timedelta(hours=1)
    held = [Pause(i, until, "maintenance", "bob") for i in ("i3", "i4")]
    await ledger.pause_all(held, datetime.now(UTC))
    assert set(await ledger.load_pauses(datetime.now(UTC))) == {"i3", "i4"}
    [paused] = await trail(ledger)
    assert (paused["instance"], paused["action"], paused["actor"]) == ("*", "paused", "bob")
    assert paused["detail"] == {
        "until": until.isoformat(),
        "reason": "maintenance",
        "ids": ["i3", "i4"],
    }
    assert await ledger.resume_all(["i3", "i4", "never"], "carol") == ["i3", "i4"]
    resumed = (await trail(ledger))[-1]
    assert (resumed["instance"], resumed["action"], resumed["detail"]) == (
        "*",
        "resumed",
        {"ids": ["i3", "i4"]},
    )
    assert await ledger.resume_all(["i3"], "carol") == []  # nothing left: no row
    assert len(await trail(ledger)) == 2


async def test_a_fleet_pause_is_in_the_state_until_it_ends_or_is_resumed(ledger: Ledger) -> None:
    now = datetime.now(UTC)
    app = Selector(SelectorKind.PROCESS, "app")
    await ledger.pause_all([Pause("*", now + timedelta(hours=1), "deploy", "bob", app)], now)
    glob = Selector(SelectorKind.MATCH, "wa-*")
    await ledger.pause_all([Pause("*", now + timedelta(minutes=5), "short", "eve", glob)], now)
    state = await ledger.load_state(now)
    assert [(p.selector, p.actor) for p in state.fleet_pauses] == [(app, "bob"), (glob, "eve")]
    assert state.pauses == {}
    later = await ledger.load_state(now + timedelta(minutes=10))  # the glob's has ended
    assert [p.selector for p in later.fleet_pauses] == [app]
    # Set again: replaced, not doubled.
    replaced = Pause("*", now + timedelta(hours=2), "longer", "bob", app)
    await ledger.pause_all([replaced], now + timedelta(seconds=1))
    again = await ledger.load_state(now)
    assert [(p.selector, p.reason) for p in again.fleet_pauses] == [
        (glob, "short"),
        (app, "longer"),
    ]
    assert await ledger.resume_fleet(app, "carol")
    assert not await ledger.resume_fleet(app, "carol")  # no longer in force
    rows = [r for r in await trail(ledger) if r["action"] in ("paused", "resumed")]
    assert [(r["action"], r["detail"].get("selector"), r["actor"]) for r in rows] == [
        ("paused", {"process": "app"}, "bob"),
        ("paused", {"match": "wa-*"}, "eve"),
        ("paused", {"process": "app"}, "bob"),
        ("resumed", {"process": "app"}, "carol"),
    ]
