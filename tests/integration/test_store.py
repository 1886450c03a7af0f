"""The store on real databases: every test runs on an SQLite file and on PostgreSQL."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from tests.apptable import AppTable
from watchdog.clock import SystemClock
from watchdog.config import DatabaseSettings, InstancesSettings, Settings
from watchdog.core.errors import ConfigError, StoreError, StoreSchemaError
from watchdog.core.model import (
    Action,
    AuditAction,
    Finding,
    Incident,
    IncidentState,
    Outcome,
    Pause,
    Reason,
    Scan,
)
from watchdog.core.policy import UNREADABLE, DetectionRules, EscalationRules, InstanceRow, classify
from watchdog.core.ports import AuditQuery, Claim, Closing, Finished, Opening
from watchdog.engine.cycle import Engine
from watchdog.store import migrate
from watchdog.store.database import Database
from watchdog.store.instances import SqlInstanceStore
from watchdog.store.ledger import SqlLedger
from watchdog.store.schema import incidents, pauses, revisions
from watchdog.store.state import StateCache
from watchdog.wiring import open_runtime

RULES = DetectionRules()


@pytest.fixture
def app(db_url: str) -> Iterator[AppTable]:
    table = AppTable(db_url)
    table.create()
    yield table
    table.dispose()


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url, timeout=5.0)
    await migrate.upgrade(database)
    yield database
    await database.dispose()


def store(
    db: Database, mapping: InstancesSettings | None = None, lookahead: float = 6.0
) -> SqlInstanceStore:
    return SqlInstanceStore(db, mapping or InstancesSettings(), RULES, lookahead)


# ------------------------------------------------------------------------- detection


async def test_scan_finds_each_kind_of_unhealthy_and_nothing_else(
    app: AppTable, db: Database
) -> None:
    app.add("healthy", heartbeat_ago=5)
    app.add("stale", heartbeat_ago=200, process="p1")
    app.add("never", heartbeat_ago=None, status_ago=120)
    app.add("young-never", heartbeat_ago=None, status_ago=30)
    app.add("stuck", status="CONNECTING", status_ago=150, heartbeat_ago=2)
    app.add("connecting-briefly", status="CONNECTING", status_ago=60, heartbeat_ago=2)
    app.add("disabled", enabled=False, heartbeat_ago=500)
    app.add("banned", status="BANNED", heartbeat_ago=None, status_ago=9999)

    scan = await store(db).scan()

    reasons = {i: f.reason for i, f in scan.findings.items()}
    assert reasons == {
        "stale": Reason.STALE_HEARTBEAT,
        "never": Reason.NEVER_BEAT,
        "stuck": Reason.STUCK_CONNECTING,
    }
    assert scan.findings["stale"].process == "p1"
    assert 199 < scan.findings["stale"].age < 215
    assert scan.now.tzinfo is not None


async def test_scan_returns_the_database_clock_when_all_is_healthy(
    app: AppTable, db: Database
) -> None:
    app.add("ok", heartbeat_ago=1)
    instances = store(db)
    scan = await instances.scan()
    assert scan.findings == {}
    assert abs((scan.now - await instances.now()).total_seconds()) < 5


async def test_scan_of_an_empty_then_an_all_healthy_table(app: AppTable, db: Database) -> None:
    """One aggregate row comes back either way: the clock, the count, no candidates."""
    instances = store(db)
    empty = await instances.scan()
    assert (empty.enabled_count, empty.findings, empty.next_deadline) == (0, {}, None)
    assert abs((empty.now - await instances.now()).total_seconds()) < 5
    for n in range(3):
        app.add(f"ok{n}", heartbeat_ago=1)
    healthy = await instances.scan()
    assert (healthy.enabled_count, healthy.findings, healthy.next_deadline) == (3, {}, None)
    assert abs((healthy.now - await instances.now()).total_seconds()) < 5


async def test_scan_reads_an_integer_id_as_text_and_a_null_process_as_none(
    app: AppTable, db: Database
) -> None:
    ts = "TEXT" if app.is_sqlite else "timestamptz"
    with app.engine.begin() as conn:  # the application's id column may be an integer
        conn.execute(
            sa.text(f"""
            CREATE TABLE numbered (
              id INTEGER PRIMARY KEY,
              enabled BOOLEAN NOT NULL DEFAULT TRUE,
              connection_status TEXT NOT NULL,
              status_changed_at {ts} NOT NULL,
              last_heartbeat_at {ts},
              force_reconnect BOOLEAN NOT NULL DEFAULT FALSE,
              process TEXT)""")
        )
    numbered = AppTable(app.url, InstancesSettings(table="numbered"))
    try:
        numbered.add("42", heartbeat_ago=300)
        numbered.add("43", heartbeat_ago=1)
        app.add("007", heartbeat_ago=300)  # an integer-like text id keeps its zeros
        scan = await store(db, InstancesSettings(table="numbered")).scan()
        texts = await store(db).scan()
    finally:
        numbered.dispose()
    assert list(scan.findings) == ["42"]
    assert scan.enabled_count == 2
    assert scan.findings["42"].process is None
    assert scan.findings["42"].reason is Reason.STALE_HEARTBEAT
    assert list(texts.findings) == ["007"]
    assert texts.findings["007"].process is None


def loose_table(app: AppTable) -> AppTable:
    """The instances table as a hand-made schema may have it: no NOT NULL, no key."""
    ts = "TEXT" if app.is_sqlite else "timestamptz"
    with app.engine.begin() as conn:
        conn.execute(
            sa.text(f"""
            CREATE TABLE loose (
              id TEXT, enabled BOOLEAN DEFAULT TRUE, connection_status TEXT,
              status_changed_at {ts}, last_heartbeat_at {ts}, force_reconnect BOOLEAN,
              process TEXT)""")
        )
    return AppTable(app.url, InstancesSettings(table="loose"))


async def test_a_row_that_cannot_be_read_is_reported_and_the_others_judged(
    app: AppTable, db: Database
) -> None:
    """A table without NOT NULL (and, on SQLite, any value in any column): a bad value is
    its row's problem, never the scan's."""
    loose = loose_table(app)
    try:
        loose.add("frozen", heartbeat_ago=300)
        loose.add("fine", heartbeat_ago=1)
        loose.add("", heartbeat_ago=300)
        with loose.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO loose (id, connection_status, status_changed_at, "
                    "last_heartbeat_at) SELECT NULL, 'CONNECTED', status_changed_at, "
                    "last_heartbeat_at FROM loose WHERE id = 'frozen'"
                )
            )
            conn.execute(
                sa.text(
                    "INSERT INTO loose (id, connection_status, status_changed_at, "
                    "last_heartbeat_at) SELECT 'no-change-time', 'CONNECTED', NULL, "
                    "last_heartbeat_at FROM loose WHERE id = 'frozen'"
                )
            )
            if app.is_sqlite:
                conn.execute(
                    sa.text(
                        "INSERT INTO loose (id, connection_status, status_changed_at, "
                        "last_heartbeat_at) SELECT 'blob-beat', 'CONNECTING', "
                        "status_changed_at, x'00ff' FROM loose WHERE id = 'frozen'"
                    )
                )
        scan = await store(db, InstancesSettings(table="loose")).scan()
    finally:
        loose.dispose()
    assert list(scan.findings) == ["frozen"]
    seen = {(u.instance_id, u.column, u.value) for u in scan.unjudgeable}
    expected = {(None, "id", None), ("", "id", ""), ("no-change-time", "status_changed_at", None)}
    if app.is_sqlite:
        expected.add(("blob-beat", "last_heartbeat_at", "x'00FF'"))
    assert seen == expected
    assert all(u.fix for u in scan.unjudgeable)


async def test_sql_predicate_agrees_with_the_pure_rule(app: AppTable, db: Database) -> None:
    """The WHERE clause mirrors policy.classify on a grid of rows around the thresholds."""
    grid = itertools.product(
        [True, False],
        ["CONNECTED", "CONNECTING", "LOADING", "BANNED", "QR_REQUIRED"],
        [None, 10.0, 80.0, 100.0, 400.0],
        [10.0, 100.0, 110.0, 130.0],
    )
    expected: dict[str, Reason] = {}
    for n, (enabled, status, hb_ago, st_ago) in enumerate(grid):
        instance_id = f"i{n:03d}"
        app.add(
            instance_id, enabled=enabled, status=status, heartbeat_ago=hb_ago, status_ago=st_ago
        )
        row = InstanceRow(instance_id, enabled, status, st_ago, hb_ago)
        finding = classify(row, RULES)
        if finding is not None:
            expected[instance_id] = finding.reason

    scan = await store(db).scan()

    assert {i: f.reason for i, f in scan.findings.items()} == expected
    assert len(expected) > 20  # the grid really exercises every reason


@pytest.mark.parametrize("fmt", ["sqlite", "iso"])
async def test_both_sqlite_timestamp_formats(fmt: str, sqlite_url: str) -> None:
    app = AppTable(sqlite_url, sqlite_format=fmt)
    app.create()
    app.add("fresh", heartbeat_ago=3)
    app.add("stale", heartbeat_ago=95)
    app.add("stuck", status="RECONNECTING", status_ago=125)
    database = Database(sqlite_url, 5.0)
    try:
        scan = await store(database).scan()
    finally:
        await database.dispose()
        app.dispose()
    assert set(scan.findings) == {"stale", "stuck"}
    assert 94 < scan.findings["stale"].age < 100


async def test_a_renamed_table_and_columns(db_url: str, db: Database) -> None:
    mapping = InstancesSettings(
        table="sessions",
        id="session_key",
        enabled="active",
        status="state",
        status_changed_at="state_since",
        heartbeat="beat_at",
        force_reconnect="kick",
        process="",
    )
    app = AppTable(db_url, mapping)
    app.create()
    app.add("s1", heartbeat_ago=300)
    app.add("s2", heartbeat_ago=1)
    instances = store(db, mapping)
    try:
        scan = await instances.scan()
        assert set(scan.findings) == {"s1"}
        assert scan.findings["s1"].process is None
        assert await instances.set_force_reconnect("s1") is True
        assert app.row("s1")["kick"] in (True, 1)
    finally:
        app.dispose()


async def test_force_reconnect_touches_only_the_flag(app: AppTable, db: Database) -> None:
    app.add("a", heartbeat_ago=200)
    app.add("b", heartbeat_ago=200)
    before_a, before_b = app.row("a"), app.row("b")
    instances = store(db)

    assert await instances.set_force_reconnect("a") is True
    assert await instances.set_force_reconnect("nope") is False

    after_a = app.row("a")
    assert after_a.pop("force_reconnect") in (True, 1)
    before_a.pop("force_reconnect")
    assert after_a == before_a
    assert app.row("b") == before_b


async def test_a_missing_table_names_the_fix(db: Database) -> None:
    instances = store(db, InstancesSettings(table="no_such_table"))
    with pytest.raises(StoreSchemaError, match=r"\[instances\]"):
        await instances.scan()
    with pytest.raises(ConfigError, match=r"^config error: instances.table: .*no_such_table"):
        await instances.check()


@pytest.mark.parametrize(
    ("key", "column"), [("heartbeat", "last_beat"), ("process", "host"), ("id", "sid")]
)
async def test_a_missing_column_names_its_key(
    app: AppTable, db: Database, key: str, column: str
) -> None:
    instances = store(db, InstancesSettings(**{key: column}))
    pattern = rf"^config error: instances.{key}: table instances has no column {column}; "
    with pytest.raises(ConfigError, match=pattern):
        await instances.check()


# ---------------------------------------------------------------------------- ledger


async def _open(ledger: SqlLedger, instances: SqlInstanceStore, app: AppTable, iid: str):  # type: ignore[no-untyped-def]
    app.add(iid, heartbeat_ago=200)
    scan = await instances.scan()
    (opened,) = await ledger.open_incidents([Opening(scan.findings[iid], 0, None)], scan.now)
    return opened, scan.now


async def _open_abc(ledger: SqlLedger, db: Database, app: AppTable) -> tuple[list[Incident], Scan]:
    """Instances a, b and c frozen, and their incidents opened in one batch."""
    for iid in ("a", "b", "c"):
        app.add(iid, heartbeat_ago=200)
    scan = await store(db).scan()
    openings = [Opening(scan.findings[i]) for i in ("a", "b", "c")]
    return await ledger.open_incidents(openings, scan.now), scan


async def test_batches_open_and_claim_together_each_claim_still_conditional(
    app: AppTable, db: Database
) -> None:
    ledger = SqlLedger(db)
    opened, scan = await _open_abc(ledger, db, app)
    assert [i.instance_id for i in opened] == ["a", "b", "c"]
    assert set(await ledger.load_open()) == {"a", "b", "c"}
    a, b, c = opened
    api = Action.API_RESTART
    results = await ledger.begin_actions(
        [Claim(a, 1, api, scan.now), Claim(b, 2, api, scan.now), Claim(c, 1, api, scan.now)],
        scan.now,
    )
    assert results[0] is not None
    assert results[2] is not None
    assert results[1] is None  # attempt 2 of "b" skips its first: refused, the others stand
    trail = [(r.instance_id, r.action, r.outcome) for r in await ledger.audit(AuditQuery())]
    assert trail == [
        ("a", AuditAction.DETECTED, Outcome.OK),
        ("b", AuditAction.DETECTED, Outcome.OK),
        ("c", AuditAction.DETECTED, Outcome.OK),
        ("a", AuditAction.API_RESTART, Outcome.STARTED),
        ("c", AuditAction.API_RESTART, Outcome.STARTED),
    ]
    again = await ledger.begin_actions([Claim(a, 1, api, scan.now)], scan.now)
    assert again == [None]  # claimed once


async def test_a_batch_closes_each_incident_still_open_and_audits_only_those(
    app: AppTable, db: Database
) -> None:
    seconds = [0.0]
    daemon = SqlLedger(db, monotonic=lambda: seconds[0])  # caches open incidents
    ledger = SqlLedger(db)
    (a, b, c), scan = await _open_abc(ledger, db, app)
    assert set(await daemon.load_open()) == {"a", "b", "c"}
    await ledger.close(b, IncidentState.RESET, scan.now, "ops", {})  # another writer was first
    later = scan.now + timedelta(seconds=5)
    await ledger.close_all(
        [
            Closing(a, IncidentState.RECOVERED, "watchdog", {"time_to_recover": 5.0}),
            Closing(b, IncidentState.RECOVERED, "watchdog", {"time_to_recover": 5.0}),
            Closing(c, IncidentState.DISMISSED, "watchdog", {"why": "disabled"}),
        ],
        later,
    )
    assert await daemon.load_open() == {}  # the batch bumped the revision
    closed = await ledger.last_closed(["a", "b", "c"])
    assert {i: (x.state, x.closed_at) for i, x in closed.items()} == {
        "a": (IncidentState.RECOVERED, later),
        "b": (IncidentState.RESET, scan.now),  # left as the first writer closed it
        "c": (IncidentState.DISMISSED, later),
    }
    trail = [(r.instance_id, r.action, r.detail) for r in await ledger.audit(AuditQuery())]
    assert trail[3:] == [
        ("b", AuditAction.RESET, {}),
        ("a", AuditAction.RECOVERED, {"time_to_recover": 5.0}),
        ("c", AuditAction.DISMISSED, {"why": "disabled"}),
    ]


async def test_a_batch_exhausts_each_incident_still_actionable(app: AppTable, db: Database) -> None:
    ledger = SqlLedger(db)
    (a, b, c), scan = await _open_abc(ledger, db, app)
    await ledger.close(c, IncidentState.RESET, scan.now, "ops", {})
    await ledger.exhaust_all([a, b, c], scan.now)
    loaded = await ledger.load_open()
    assert {i: x.state for i, x in loaded.items()} == {
        "a": IncidentState.EXHAUSTED,
        "b": IncidentState.EXHAUSTED,
    }
    assert all(x.next_action_at is None for x in loaded.values())
    exhausted = await ledger.audit(AuditQuery(actions=[AuditAction.EXHAUSTED]))
    assert [(r.instance_id, r.detail) for r in exhausted] == [
        ("a", {"attempts": 0}),
        ("b", {"attempts": 0}),
    ]


async def test_a_batch_claims_and_finishes_each_incident_with_its_own_values(
    app: AppTable, db: Database
) -> None:
    ledger = SqlLedger(db)
    (a, b, c), scan = await _open_abc(ledger, db, app)
    now = scan.now
    retry = {"a": now + timedelta(seconds=10), "b": now + timedelta(seconds=20)}
    claims = [
        Claim(a, 1, Action.API_RESTART, retry["a"]),
        Claim(b, 1, Action.DB_FLAG, retry["b"], {"target": "k"}),
    ]
    assert None not in await ledger.begin_actions(claims, now)
    loaded = await ledger.load_open()
    assert (loaded["a"].last_action, loaded["a"].next_action_at) == (Action.API_RESTART, retry["a"])
    assert (loaded["b"].last_action, loaded["b"].next_action_at) == (Action.DB_FLAG, retry["b"])
    assert (loaded["c"].attempt, loaded["c"].last_action) == (0, None)  # not in the batch

    later = now + timedelta(seconds=60)
    await ledger.finish_actions(
        [
            Finished(a, 1, Action.API_RESTART, Outcome.OK, {"status": 200}, 0.1, later),
            Finished(b, 1, Action.DB_FLAG, Outcome.FAILED, {"error": "x"}, 0.2, later),
            # an outcome for an attempt that is no longer the latest moves nothing
            Finished(c, 3, Action.DB_FLAG, Outcome.OK, {}, 0.3, later),
        ]
    )
    loaded = await ledger.load_open()
    assert loaded["a"].next_action_at == later
    assert loaded["b"].next_action_at == later
    assert loaded["c"].next_action_at == now
    outcomes = await ledger.audit(AuditQuery(limit=3))
    assert [(r.instance_id, r.outcome, r.attempt, r.duration) for r in outcomes] == [
        ("a", Outcome.OK, 1, pytest.approx(0.1)),
        ("b", Outcome.FAILED, 1, pytest.approx(0.2)),
        ("c", Outcome.OK, 3, pytest.approx(0.3)),
    ]
    assert outcomes[0].id < outcomes[1].id < outcomes[2].id
    assert outcomes[1].detail == {"error": "x"}


async def test_open_incidents_are_reloaded_when_any_writer_changed_them(
    app: AppTable, db: Database
) -> None:
    seconds = [0.0]
    daemon = SqlLedger(db, max_cache_age=60.0, monotonic=lambda: seconds[0])
    operator = SqlLedger(db)  # watchdogctl, or another node: its own ledger
    instances = store(db)
    incident, now = await _open(operator, instances, app, "x")
    assert set(await daemon.load_open()) == {"x"}  # first load: from the table

    await operator.close(incident, IncidentState.RESET, now, "ops", {})
    assert await daemon.load_open() == {}  # seen at once: the writer bumped the revision

    await _open(operator, instances, app, "y")
    assert set(await daemon.load_open()) == {"y"}
    # A change by hand that bumps nothing is picked up once the cache is max_cache_age old.
    async with db.begin("test") as conn:
        await conn.execute(sa.update(incidents).values(attempt=7))
    assert (await daemon.load_open())["y"].attempt == 0
    seconds[0] += 60.0
    assert (await daemon.load_open())["y"].attempt == 7


async def test_pauses_are_reloaded_when_any_writer_changed_them(
    app: AppTable, db: Database
) -> None:
    seconds = [0.0]
    daemon = SqlLedger(db, max_cache_age=60.0, monotonic=lambda: seconds[0])
    operator = SqlLedger(db)  # watchdogctl pause/resume: its own ledger
    now = await store(db).now()
    assert (await daemon.load_state(now)).pauses == {}  # cached from here on

    await operator.pause(Pause("x", now + timedelta(hours=1), "maintenance", "bob"), now)
    state = await daemon.load_state(now)  # seen at once: pause bumped the revision
    assert set(state.pauses) == {"x"}
    assert state.pauses["x"].reason == "maintenance"
    # In force until its end, judged at each read's own moment (no reload needed).
    assert (await daemon.load_state(now + timedelta(hours=2))).pauses == {}
    assert set(await daemon.load_pauses(now)) == {"x"}

    assert await operator.resume("x", "bob")
    assert (await daemon.load_state(now)).pauses == {}  # resume bumped it too
    # A pause written by hand (no bump) is picked up once the cache is max_cache_age old.
    async with db.begin("test") as conn:
        await conn.execute(
            sa.insert(pauses).values(
                instance_id="y",
                until=now + timedelta(hours=1),
                reason="r",
                actor="sql",
                created_at=now,
            )
        )
    assert (await daemon.load_state(now)).pauses == {}
    seconds[0] += 60.0
    assert set((await daemon.load_state(now)).pauses) == {"y"}


async def test_an_attempt_is_claimed_once_and_audited_before_and_after(
    app: AppTable, db: Database
) -> None:
    ledger, instances = SqlLedger(db), store(db)
    incident, now = await _open(ledger, instances, app, "x")

    claim = Claim(incident, 1, Action.API_RESTART, now)
    (first,) = await ledger.begin_actions([claim], now)
    (again,) = await ledger.begin_actions([claim], now)
    assert first is not None
    assert again is None  # a second writer loses the claim
    outcome = {"status": 200}
    next_at = now + timedelta(seconds=30)
    done = Finished(incident, 1, Action.API_RESTART, Outcome.OK, outcome, 0.25, next_at)
    await ledger.finish_actions([done])

    rows = await ledger.audit(AuditQuery(instance_id="x"))
    assert [(r.action, r.outcome, r.attempt) for r in rows] == [
        (AuditAction.DETECTED, Outcome.OK, 0),
        (AuditAction.API_RESTART, Outcome.STARTED, 1),
        (AuditAction.API_RESTART, Outcome.OK, 1),
    ]
    assert rows[-1].detail == {"status": 200}
    assert rows[-1].duration == pytest.approx(0.25)
    reloaded = (await ledger.load_open())["x"]
    assert reloaded.attempt == 1
    assert reloaded.last_action is Action.API_RESTART
    assert reloaded.next_action_at == now + timedelta(seconds=30)


async def test_one_open_incident_per_instance(app: AppTable, db: Database) -> None:
    ledger, instances = SqlLedger(db), store(db)
    incident, now = await _open(ledger, instances, app, "x")
    scan = await instances.scan()
    from watchdog.core.errors import StoreError

    with pytest.raises(StoreError):
        await ledger.open_incidents([Opening(scan.findings["x"], 0, None)], now)
    assert list(await ledger.load_open()) == ["x"]
    assert incident.state is IncidentState.OPEN


async def test_exhaust_then_close_then_history(app: AppTable, db: Database) -> None:
    ledger, instances = SqlLedger(db), store(db)
    incident, now = await _open(ledger, instances, app, "x")
    await ledger.exhaust_all([incident], now)
    exhausted = (await ledger.load_open())["x"]
    assert exhausted.state is IncidentState.EXHAUSTED
    await ledger.close(exhausted, IncidentState.RESET, now, "alice", {"why": "test"})
    await ledger.close(exhausted, IncidentState.RESET, now, "alice", {})  # no second row

    assert await ledger.load_open() == {}
    closed = await ledger.last_closed(["x", "other"])
    assert closed["x"].state is IncidentState.RESET
    assert closed["x"].closed_at == now
    actions = [(r.action, r.actor) for r in await ledger.audit(AuditQuery(instance_id="x"))]
    assert actions[-2:] == [(AuditAction.EXHAUSTED, "watchdog"), (AuditAction.RESET, "alice")]


async def test_pause_and_resume_are_audited(app: AppTable, db: Database) -> None:
    ledger, instances = SqlLedger(db), store(db)
    now = await instances.now()
    await ledger.pause(Pause("x", now + timedelta(hours=2), "maintenance", "bob"), now)
    assert set(await ledger.load_pauses(now)) == {"x"}
    assert await ledger.load_pauses(now + timedelta(hours=3)) == {}
    assert await ledger.resume("x", "bob") is True
    assert await ledger.resume("x", "bob") is False
    rows = await ledger.audit(AuditQuery(instance_id="x"))
    assert [(r.action, r.actor) for r in rows] == [
        (AuditAction.PAUSED, "bob"),
        (AuditAction.RESUMED, "bob"),
    ]
    assert rows[0].detail["reason"] == "maintenance"


async def test_audit_filters_and_limit_keep_the_latest_oldest_first(
    app: AppTable, db: Database
) -> None:
    ledger, instances = SqlLedger(db), store(db)
    now = await instances.now()
    for n in range(5):
        await ledger.pause(Pause(f"i{n}", now + timedelta(hours=1), f"r{n}", "op"), now)
        await ledger.resume(f"i{n}", "op")
    latest = await ledger.audit(AuditQuery(limit=3))
    assert [(r.instance_id, r.action) for r in latest] == [
        ("i3", AuditAction.RESUMED),
        ("i4", AuditAction.PAUSED),
        ("i4", AuditAction.RESUMED),
    ]
    paused = await ledger.audit(AuditQuery(actions=[AuditAction.PAUSED]))
    assert [r.instance_id for r in paused] == ["i0", "i1", "i2", "i3", "i4"]
    future = await ledger.audit(AuditQuery(since=now + timedelta(hours=1)))
    assert future == []


async def test_migrations_are_idempotent_and_use_their_own_version_table(db: Database) -> None:
    await migrate.upgrade(db)
    assert await migrate.current_revision(db) == migrate.HEAD_REVISION
    async with db.connect("inspect") as conn:
        tables = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
    assert {
        "watchdog_incidents",
        "watchdog_audit",
        "watchdog_pauses",
        "watchdog_alembic_version",
    } <= set(tables)
    assert "alembic_version" not in tables


def test_head_revision_constant_matches_the_newest_migration() -> None:
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(migrate.alembic_config())
    assert scripts.get_current_head() == migrate.HEAD_REVISION


async def test_unmonitored_says_why(app: AppTable, db: Database) -> None:
    app.add("fine", heartbeat_ago=1)
    app.add("off", enabled=False)
    app.add("banned", status="TOS_BLOCK")
    found = await store(db).unmonitored(["fine", "off", "banned", "gone"])
    assert found == {"off": "disabled", "banned": "status TOS_BLOCK", "gone": "deleted"}


async def test_a_row_that_cannot_be_read_any_more_is_not_taken_for_healthy(
    app: AppTable, db: Database
) -> None:
    """An unhealthy instance whose row turns unreadable leaves the scan (no threshold can
    be compared): asked about it, the store says so, and the incident is not closed."""
    loose = loose_table(app)
    try:
        for instance_id in ("no-status", "no-change-time", "garbage", "fine"):
            loose.add(instance_id, heartbeat_ago=1)
        with loose.engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE loose SET connection_status = NULL WHERE id = 'no-status'")
            )
            conn.execute(
                sa.text("UPDATE loose SET status_changed_at = NULL WHERE id = 'no-change-time'")
            )
            if app.is_sqlite:
                conn.execute(
                    sa.text(
                        "UPDATE loose SET status_changed_at = 'soon', last_heartbeat_at = 1.7e9 "
                        "WHERE id = 'garbage'"
                    )
                )
        mapping = InstancesSettings(table="loose")
        found = await store(db, mapping).unmonitored(
            ["no-status", "no-change-time", "garbage", "fine"]
        )
    finally:
        loose.dispose()
    unreadable = {"no-status": UNREADABLE, "no-change-time": UNREADABLE}
    if app.is_sqlite:
        unreadable["garbage"] = UNREADABLE
    assert found == unreadable


async def test_unmonitored_among_many_healthy_ids_names_only_the_one_that_left(
    app: AppTable, db: Database
) -> None:
    healthy = [f"h{n:04d}" for n in range(300)]
    for instance_id in healthy:
        app.add(instance_id, heartbeat_ago=1)
    app.add("off", enabled=False)
    assert await store(db).unmonitored([*healthy, "off"]) == {"off": "disabled"}
    assert await store(db).unmonitored(healthy) == {}


async def test_scan_counts_the_monitored_fleet(app: AppTable, db: Database) -> None:
    app.add("a", heartbeat_ago=1)
    app.add("b", heartbeat_ago=500)
    app.add("off", enabled=False)
    app.add("banned", status="BANNED")
    assert (await store(db).scan()).enabled_count == 2


async def test_suppress_flapping_counts_and_interrupted(app: AppTable, db: Database) -> None:
    ledger = SqlLedger(db)
    (a, b, c), scan = await _open_abc(ledger, db, app)
    now, until = scan.now, scan.now + timedelta(minutes=20)
    # b's attempt moved on meanwhile (another writer): it is left as it is.
    await ledger.suppress_all([a, replace(b, attempt=5), c], until, now, {"process": "p1"})
    loaded = await ledger.load_open()
    assert {i: x.state for i, x in loaded.items()} == {
        "a": IncidentState.SUPPRESSED,
        "b": IncidentState.OPEN,
        "c": IncidentState.SUPPRESSED,
    }
    assert loaded["a"].next_action_at == until
    suppressed = await ledger.audit(AuditQuery(actions=[AuditAction.SUPPRESSED]))
    assert [(r.instance_id, r.outcome, r.attempt) for r in suppressed] == [
        ("a", Outcome.SKIPPED, 1),
        ("c", Outcome.SKIPPED, 1),
    ]
    # A suppressed incident is claimed like an open one, and becomes open again.
    held = loaded["a"]
    claim = Claim(held, 1, Action.PROCESS_RESTART, until)
    assert (await ledger.begin_actions([claim], now)) != [None]
    assert (await ledger.load_open())["a"].state is IncidentState.OPEN

    assert await ledger.incident_counts(["a", "y"], now - timedelta(hours=1)) == {"a": 1}
    await ledger.mark_flapping_all([(held, 4), (loaded["c"], 4)], now)
    await ledger.mark_flapping_all([(held, 5)], now)  # once per incident
    assert {i: x.flapping for i, x in (await ledger.load_open()).items()} == {
        "a": True,
        "b": False,
        "c": True,
    }

    interrupted = await ledger.interrupt(await ledger.orphan_intents(), "stopped")
    assert [(r.action, r.outcome, r.attempt) for r in interrupted] == [
        (AuditAction.PROCESS_RESTART, Outcome.INTERRUPTED, 1)
    ]
    assert await ledger.orphan_intents() == []
    actions = [r.action for r in await ledger.audit(AuditQuery(instance_id="a"))]
    assert actions.count(AuditAction.FLAPPING) == 1


async def test_the_database_holds_every_intent_to_one_outcome(app: AppTable, db: Database) -> None:
    """An outcome written again (its commit acknowledgement lost), an `interrupted` after
    the outcome, a late outcome after `interrupted`: one outcome each, whatever comes first."""
    ledger = SqlLedger(db)
    app.add("a", heartbeat_ago=300)
    app.add("b", heartbeat_ago=300)
    scan = await store(db).scan()
    now = scan.now
    opened = await ledger.open_incidents([Opening(scan.findings[i]) for i in ("a", "b")], now)
    due = now + timedelta(seconds=30)
    claims = [Claim(i, 1, Action.API_RESTART, due, {"node": "n1"}) for i in opened]
    intent_a, intent_b = await ledger.begin_actions(claims, now)
    assert intent_a is not None
    assert intent_b is not None
    orphans = await ledger.orphan_intents()
    assert [(r.id, r.detail["node"]) for r in orphans] == [(intent_a, "n1"), (intent_b, "n1")]
    assert [r.id for r in await ledger.orphan_intents(among=[intent_b])] == [intent_b]

    ok_a = Finished(opened[0], 1, Action.API_RESTART, Outcome.OK, {}, 0.1, due, intent_a)
    await ledger.finish_actions([ok_a])
    await ledger.finish_actions([ok_a])  # written again after a lost acknowledgement
    assert await ledger.interrupt(orphans, "stopped") != []  # only b's
    late_b = Finished(opened[1], 1, Action.API_RESTART, Outcome.OK, {}, 0.1, due, intent_b)
    await ledger.finish_actions([late_b, ok_a])  # both already have their outcome

    rows = await ledger.audit(AuditQuery(actions=[AuditAction.API_RESTART]))
    outcomes = [(r.instance_id, r.outcome, r.intent_id) for r in rows if r.outcome != "started"]
    assert outcomes == [("a", Outcome.OK, intent_a), ("b", Outcome.INTERRUPTED, intent_b)]
    assert await ledger.orphan_intents() == []


async def test_fleet_state_restarts_and_brake(db: Database) -> None:
    from watchdog.store.fleet import SqlFleetState

    ledger = SqlLedger(db)
    fleet = SqlFleetState(db, ledger)
    now = await store(db).now()
    assert await fleet.brake() is None
    await fleet.record_restart("p1", now, ["a", "b"])
    await fleet.record_restart("p2", now - timedelta(hours=2), ["c"])
    recent = await fleet.recent_restarts(now - timedelta(hours=1))
    assert [(r.process, r.at) for r in recent] == [("p1", now)]
    await fleet.record_restart("p1", now, ["a"])  # a second restart of p1 at that moment
    await fleet.forget_restart("p1", now)  # that one never went out: one is forgotten
    recent = await fleet.recent_restarts(now - timedelta(hours=1))
    assert [(r.process, r.at) for r in recent] == [("p1", now)]
    row = await fleet.set_brake(True, now, {"unhealthy": 5, "monitored": 6})
    assert row.action is AuditAction.BRAKE_ENGAGED
    assert (await fleet.brake() or {})["engaged"] is True
    await fleet.set_brake(False, now, {"unhealthy": 0, "monitored": 6})
    assert (await fleet.brake() or {})["engaged"] is False
    assert await fleet.backlog() is None
    row = await fleet.set_backlog(True, now, {"left": 9500, "budget": 500})
    assert row.action is AuditAction.BACKLOG
    stored = await fleet.backlog() or {}
    assert (stored["present"], stored["left"], stored["since"]) == (True, 9500, now.isoformat())
    await fleet.set_backlog(False, now, {})
    assert (await fleet.backlog() or {})["present"] is False


async def test_the_scan_finds_the_next_deadline_like_the_pure_rule(
    app: AppTable, db: Database
) -> None:
    from watchdog.core.policy import time_to_threshold

    app.add("beating", heartbeat_ago=50)  # 40 s left
    app.add("connecting", status="CONNECTING", heartbeat_ago=1, status_ago=100)  # 20 s left
    app.add("never", heartbeat_ago=None, status_ago=60)  # 30 s left
    app.add("stale", heartbeat_ago=300)  # already past: not a deadline
    app.add("off", enabled=False, heartbeat_ago=85)  # not monitored
    scan = await store(db, lookahead=60.0).scan()
    expected = min(
        time_to_threshold(InstanceRow("c", True, "CONNECTING", 100, 1), RULES) or 1e9,
        time_to_threshold(InstanceRow("n", True, "CONNECTED", 60, None), RULES) or 1e9,
    )
    assert expected == pytest.approx(20.0)
    assert scan.next_deadline == pytest.approx(expected, abs=2.0)
    assert set(scan.findings) == {"stale"}


async def test_the_scan_looks_ahead_only_as_far_as_asked(app: AppTable, db: Database) -> None:
    """Healthy rows beyond the lookahead are not fetched: the next deadline among them
    is found by a later cycle, when it is near."""
    app.add("soon", heartbeat_ago=86)  # 4 s left
    app.add("later", heartbeat_ago=50)  # 40 s left
    app.add("stale", heartbeat_ago=300)
    near = await store(db, lookahead=6.0).scan()
    assert near.next_deadline == pytest.approx(4.0, abs=1.5)
    app.beat("soon")
    far = await store(db, lookahead=6.0).scan()
    assert far.next_deadline is None
    assert set(far.findings) == {"stale"}
    assert far.enabled_count == 3


@pytest.mark.parametrize("part", ["username", "database"])
async def test_a_refused_connection_names_the_url_not_the_schema(pg_server: str, part: str) -> None:
    wrong = sa.engine.make_url(pg_server).set(**{part: "no_such_name"})
    db = Database(wrong.render_as_string(hide_password=False), timeout=5.0)
    try:
        with pytest.raises(StoreError) as raised:
            await store(db).scan()
    finally:
        await db.dispose()
    assert type(raised.value) is StoreError  # permanent: not waited for, not a schema fix
    assert "[database] url" in str(raised.value)
    assert "no_such_name" in str(raised.value)


async def test_the_monitored_count_is_refreshed_each_minute_and_exact_when_it_matters(
    app: AppTable, db: Database
) -> None:
    seconds = [0.0]
    instances = SqlInstanceStore(
        db, InstancesSettings(), RULES, exact_share=0.25, monotonic=lambda: seconds[0]
    )
    for n in range(8):
        app.add(f"h{n}", heartbeat_ago=1)
    first = await instances.scan()
    assert (first.enabled_count, first.findings) == (8, {})

    app.add("new", heartbeat_ago=1)
    app.add("frozen", heartbeat_ago=500)  # 1 unhealthy of 8 counted: under a quarter
    cached = await instances.scan()
    assert set(cached.findings) == {"frozen"}  # found by the cheaper query too
    assert cached.enabled_count == 8  # the count of a moment ago

    seconds[0] += 60.0
    assert (await instances.scan()).enabled_count == 10  # a minute on: counted again

    app.add("frozen2", heartbeat_ago=500)
    app.add("frozen3", heartbeat_ago=500)  # 3 unhealthy of 10 counted: the share matters
    exact = await instances.scan()
    assert set(exact.findings) == {"frozen", "frozen2", "frozen3"}
    assert exact.enabled_count == 12  # counted at once, not a minute later


async def test_a_steady_cycle_is_one_statement_and_still_sees_another_writers_pause(
    app: AppTable, db_url: str
) -> None:
    for n in range(30):  # one frozen in 31: no exact count needed each cycle for the brake
        app.add(f"calm{n}", heartbeat_ago=1)
    app.add("frozen", heartbeat_ago=500)
    settings = Settings(database=DatabaseSettings(url=db_url))
    async with open_runtime(settings) as runtime:
        await migrate.upgrade(runtime.db)
        engine = Engine(
            runtime.instances,
            runtime.ledger,
            {},
            settings.escalation.rules(),
            SystemClock(),
            dry_run=True,
        )
        async with runtime.db.connect("now") as conn:
            now = await runtime.db.read_now(conn)
        frozen = Finding("frozen", Reason.STALE_HEARTBEAT, "CONNECTED", 500.0, 90.0)
        await runtime.ledger.open_incidents([Opening(frozen, 0, None)], now)  # an earlier one's
        statements: list[str] = []
        sa.event.listen(
            runtime.db.engine.sync_engine,
            "before_cursor_execute",
            lambda _c, _cur, sql, *_rest: statements.append(sql),
        )
        await engine.run_cycle()  # records the would-be decisions
        statements.clear()
        steady = await engine.run_cycle()
        assert steady.actions == [("frozen", Action.API_RESTART, 1)]
        assert len(statements) == 1  # the ledger's revision rides with the detection query

        other = Database(db_url, timeout=5.0)  # another process, as `watchdogctl pause` is
        try:
            async with other.connect("now") as conn:
                now = await other.read_now(conn)
            await SqlLedger(other).pause(
                Pause("frozen", now + timedelta(hours=1), "ops", "me"), now
            )
        finally:
            await other.dispose()
        statements.clear()
        paused = await engine.run_cycle()
        assert paused.actions == []  # the pause was seen at once
        assert len(statements) == 3  # the revision moved: incidents and pauses read again
        statements.clear()
        await engine.run_cycle()
        assert len(statements) == 1


async def test_the_ledgers_own_writes_keep_its_cache_exact_and_another_writers_do_not(
    db_url: str,
) -> None:
    """A storm's opens, claims and outcomes are taken into the cache with the revision
    their bump made: the next cycle reads nothing, and what it holds is what a fresh read
    gives. A write by another process in between makes it read again."""
    db = Database(db_url, timeout=5.0)
    other = Database(db_url, timeout=5.0)  # another process, as a second watchdog is
    try:
        await migrate.upgrade(db)
        ledger, theirs = SqlLedger(db), SqlLedger(other)
        async with db.connect("now") as conn:
            now = await db.read_now(conn)

        async def revision() -> int:
            async with db.connect("revision") as conn:
                query = sa.select(revisions.c.revision).where(revisions.c.name == "incidents")
                return int((await conn.execute(query)).scalar_one())

        statements: list[str] = []
        sa.event.listen(
            db.engine.sync_engine,
            "before_cursor_execute",
            lambda _c, _cur, sql, *_rest: statements.append(sql),
        )

        async def cached() -> dict[str, Incident]:
            known = await revision()
            statements.clear()
            state = await ledger.load_state(now, known)
            assert statements == []  # nothing read: the cache took our own write
            assert state.incidents == await SqlLedger(db).load_open()  # and it is exact
            return state.incidents

        await ledger.load_state(now, await revision())  # the cache starts
        found = [Finding(i, Reason.STALE_HEARTBEAT, "CONNECTED", 200.0, 90.0) for i in "abc"]
        a, b, c = await ledger.open_incidents([Opening(f, 0, None) for f in found], now)
        assert set(await cached()) == {"a", "b", "c"}
        (intent,) = await ledger.begin_actions(
            [Claim(a, 1, Action.API_RESTART, now + timedelta(seconds=30))], now
        )
        claimed = (await cached())["a"]
        assert (claimed.attempt, claimed.last_action) == (1, Action.API_RESTART)
        done = Finished(
            claimed, 1, Action.API_RESTART, Outcome.OK, {}, 0.1, now + timedelta(hours=1), intent
        )
        await ledger.finish_actions([done])
        assert (await cached())["a"].next_action_at == now + timedelta(hours=1)
        await ledger.close_all(
            [Closing(c, IncidentState.RECOVERED, "watchdog", {})], now
        )  # a write that does not keep the cache: read again once
        await ledger.load_state(now, await revision())
        assert set(await cached()) == {"a", "b"}

        await theirs.begin_actions(
            [Claim(b, 1, Action.DB_FLAG, now + timedelta(seconds=30))], now
        )  # between our writes
        await ledger.begin_actions(
            [Claim(claimed, 2, Action.API_RESTART, now + timedelta(seconds=30))], now
        )
        statements.clear()
        state = await ledger.load_state(now, await revision())
        assert len(statements) == 3  # the revision read, then incidents and pauses again
        assert state.incidents["b"].last_action == Action.DB_FLAG  # their write, seen
        assert state.incidents["a"].attempt == 2
    finally:
        await db.dispose()
        await other.dispose()


async def test_writes_reported_out_of_order_are_taken_in_revision_order(db_url: str) -> None:
    db = Database(db_url, timeout=5.0)
    try:
        await migrate.upgrade(db)
        cache = StateCache(db)
        known = (await cache.load()).revision
        assert known is not None
        opened = datetime(2026, 1, 1, tzinfo=UTC)

        def incident(n: int, instance_id: str, state: IncidentState) -> Incident:
            return Incident(n, instance_id, Reason.STALE_HEARTBEAT, state, 1, opened, None)

        statements: list[str] = []
        sa.event.listen(
            db.engine.sync_engine,
            "before_cursor_execute",
            lambda _c, _cur, sql, *_rest: statements.append(sql),
        )
        cache.wrote(known + 2, [incident(2, "b", IncidentState.OPEN)])  # reports first
        assert set((await cache.load(known)).incidents) == set()  # waits for the earlier
        cache.wrote(known + 1, [incident(1, "a", IncidentState.OPEN)])
        state = await cache.load(known + 2)
        assert set(state.incidents) == {"a", "b"}
        assert state.revision == known + 2
        cache.wrote(known + 3, [incident(1, "a", IncidentState.RECOVERED)])
        assert set((await cache.load(known + 3)).incidents) == {"b"}
        assert statements == []  # none of it read the database
        cache.wrote(known + 5, [incident(3, "c", IncidentState.OPEN)])  # known + 4: another's
        await cache.load(known + 5)
        assert statements  # the gap: read again
    finally:
        await db.dispose()


@pytest.mark.parametrize("odd", ["100%_DOWN", "IT'S_OFF", "A:B"])
async def test_statuses_with_quotes_percent_signs_and_colons_are_matched_exactly(
    app: AppTable, db: Database, odd: str
) -> None:
    rules = DetectionRules(ignored_statuses=frozenset({odd}))
    app.add("ignored", status=odd, heartbeat_ago=500)
    app.add(
        "lookalike",
        status=odd.replace("%", "X").replace("'", "").replace(":", ""),
        heartbeat_ago=500,
    )

    scan = await SqlInstanceStore(db, InstancesSettings(), rules).scan()

    assert set(scan.findings) == {"lookalike"}


async def test_a_scan_told_its_last_findings_reuses_those_still_unhealthy_and_no_other(
    app: AppTable, db: Database
) -> None:
    for name in ("still", "recovers", "turns-bad", "disabled-later", "stays-too"):
        app.add(name, heartbeat_ago=200, process="p1")
    app.add("healthy", heartbeat_ago=5)
    scanner = store(db)
    first = await scanner.scan()
    assert set(first.findings) == {"still", "recovers", "turns-bad", "disabled-later", "stays-too"}
    app.beat("recovers")
    ahead = "datetime('now', '+1 hour')" if app.is_sqlite else "now() + interval '1 hour'"
    with app.engine.begin() as conn:  # a status change an hour ahead: cannot be believed
        conn.execute(
            sa.text(f"UPDATE instances SET status_changed_at = {ahead} WHERE id = 'turns-bad'")
        )
        conn.execute(sa.text("UPDATE instances SET enabled = false WHERE id = 'disabled-later'"))
    app.add("new", heartbeat_ago=300)
    second = await scanner.scan(first.findings)
    assert set(second.findings) == {"still", "stays-too", "new"}
    # Reused as judged last time: the very same findings, ages and all.
    assert second.findings["still"] is first.findings["still"]
    assert second.findings["stays-too"] is first.findings["stays-too"]
    assert second.findings["new"].age >= 300  # judged afresh: it was not known
    assert [u.instance_id for u in second.unjudgeable] == ["turns-bad"]  # never reused
    # Without them (status, explain) every row is read and judged again.
    fresh = await scanner.scan()
    assert fresh.findings["still"] is not first.findings["still"]
    assert fresh.findings["still"].age >= first.findings["still"].age
    assert set(fresh.findings) == set(second.findings)


async def test_an_instance_detected_anew_after_a_reset_is_judged_from_its_row_now(
    app: AppTable, db: Database
) -> None:
    for n in range(6):
        app.add(f"ok-{n}", heartbeat_ago=1)
    app.add("frozen", heartbeat_ago=200)
    ledger = SqlLedger(db)
    engine = Engine(store(db), ledger, {}, EscalationRules(), SystemClock())
    await engine.run_cycle()  # detected
    assert await engine.drain(5.0)
    app.beat("frozen", ago=400)  # its row says older now
    await engine.run_cycle()  # still unhealthy: its finding is reused, not judged again
    assert await engine.drain(5.0)
    incident = (await ledger.load_open())["frozen"]
    now = await store(db).now()
    await ledger.close(incident, IncidentState.RESET, now, "bob", {})
    await engine.run_cycle()  # detected anew: from the row as it is now
    assert await engine.drain(5.0)
    detected = await ledger.audit(
        AuditQuery(instance_id="frozen", actions=[AuditAction.DETECTED], limit=10)
    )
    assert [round(r.detail["age"] / 100) for r in detected] == [2, 4]
