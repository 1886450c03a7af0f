"""Alerts end to end on real databases (SQLite file and PostgreSQL) and a real HTTP server.

Audit rows are written by the real ledger; the feeder turns them into outbox rows, the
sender posts them to a ThreadingHTTPServer on 127.0.0.1. Every clock is passed in, so
no test waits for a backoff or a lease.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

import httpx
import pytest
import sqlalchemy as sa

from watchdog.alerts import AlertFeeder, AlertSender, SqlOutbox
from watchdog.config import SinkSettings
from watchdog.core.model import Action, AuditAction, Finding, Outcome, Reason
from watchdog.core.ports import Claim, Finished, NewAudit, Opening
from watchdog.store import migrate
from watchdog.store import outbox as outbox_module
from watchdog.store.database import Database
from watchdog.store.fleet import SqlFleetState
from watchdog.store.ledger import SqlLedger
from watchdog.store.schema import flags, outbox

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
SLACK_SECRET = "T0AAAA1/B0BBBB2/xoxSecretWebhookPath42"
TOKEN = "s3cr3t-bearer-token-value"


# ------------------------------------------------------------------------ the receiver


@dataclass
class Hit:
    path: str
    body: Any
    authorization: str | None


@dataclass
class Receiver:
    """Records every POST; answers 200 unless its path is listed in `statuses`."""

    statuses: dict[str, int] = field(default_factory=dict)
    hold: set[str] = field(default_factory=set)  # paths whose answer waits for `released`
    released: threading.Event = field(default_factory=threading.Event)
    hits: list[Hit] = field(default_factory=list)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Hit]:
        return [h for h in list(self.hits) if h.path == path]


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"null")
            authorization = self.headers.get("Authorization")
            receiver.hits.append(Hit(self.path, body, authorization))
            if self.path in receiver.hold:
                receiver.released.wait(10)
            status = receiver.statuses.get(self.path, 200)
            # A careless server echoes what it got: the secret path and the token.
            reply = f"error at {self.path} for {authorization}" if status >= 400 else "ok"
            data = reply.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            return

    return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(found))
    found.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield found
    finally:
        found.released.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


# ------------------------------------------------------------------------- fixtures


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url, timeout=5.0)
    await migrate.upgrade(database)
    yield database
    await database.dispose()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as http:
        yield http


TOKENS = {"HOOK_TOKEN": TOKEN, "BAD_TOKEN": "multi-line\nsecretline2"}


def tokens(name: str) -> str | None:
    return TOKENS.get(name)


def sink(receiver: Receiver, name: str, path: str, kind: str = "json", **more: Any) -> SinkSettings:
    return SinkSettings(name=name, kind=kind, url=receiver.url(path), **more)  # type: ignore[arg-type]


def feeder_for(db: Database, sinks: list[SinkSettings], **more: Any) -> AlertFeeder:
    """A feeder that reads audit rows as soon as they are committed. (On PostgreSQL the
    default waits `settle` seconds for ids committed out of order; one test covers that.)"""
    return AlertFeeder(db, sinks, settle=0.0, **more)


def sender(
    db: Database,
    sinks: list[SinkSettings],
    client: httpx.AsyncClient,
    node: str = "node-a",
    max_attempts: int = 12,
    **more: Any,
) -> AlertSender:
    return AlertSender(db, sinks, node, client, max_attempts, tokens, **more)


async def restart_intent(ledger: SqlLedger, instance: str = "wa-05", attempt: int = 6) -> int:
    """A process restart's intent row, as the engine writes it: alert-worthy."""
    spec = NewAudit(
        instance,
        AuditAction.PROCESS_RESTART,
        Outcome.STARTED,
        None,
        "stuck_connecting",
        attempt,
        {"target": "app"},
    )
    return (await ledger.append(spec)).id


async def outbox_rows(db: Database) -> list[dict[str, Any]]:
    return await SqlOutbox(db).rows()


def audit_ids(hits: list[Hit]) -> list[int]:
    return [h.body["audit_id"] for h in hits]


# ------------------------------------------------------------------------ delivery


async def test_alerts_reach_json_slack_and_alertmanager_sinks(
    db: Database, receiver: Receiver, client: httpx.AsyncClient
) -> None:
    sinks = [
        sink(receiver, "hooks", "/hooks/json", token_env="HOOK_TOKEN"),
        sink(receiver, "slack", f"/services/{SLACK_SECRET}", kind="slack"),
        sink(receiver, "am", "/am/", kind="alertmanager"),
    ]
    ledger = SqlLedger(db)
    fleet = SqlFleetState(db, ledger)
    feeder = feeder_for(db, sinks)
    assert await feeder.feed(T0) == 0  # the first start only places the cursor

    finding = Finding("wa-05", Reason.STUCK_CONNECTING, "CONNECTING", 500.0, 120.0, "app")
    (incident,) = await ledger.open_incidents([Opening(finding, 5, None)], T0)  # no alert
    claim = Claim(incident, 6, Action.PROCESS_RESTART, T0, {"t": 1})
    (intent,) = await ledger.begin_actions([claim], T0)
    assert intent is not None
    done = Finished(incident, 6, Action.PROCESS_RESTART, Outcome.OK, {}, 1.0, T0)
    await ledger.finish_actions([done])
    await ledger.exhaust_all([await _reload(ledger, "wa-05")], T0)
    await fleet.set_brake(True, T0, {"unhealthy": 9, "monitored": 10})
    await fleet.set_brake(False, T0, {"unhealthy": 0, "monitored": 10})
    await ledger.append(NewAudit("*", cast(AuditAction, "leader_changed"), Outcome.OK, detail={}))

    assert await feeder.feed(T0) == 5 * 3  # restart, exhausted, brake on/off, leader; 3 sinks
    assert await feeder.feed(T0) == 0
    alerts = sender(db, sinks, client)
    assert await alerts.pending_count() == 15

    report = await alerts.send_due(T0)

    assert (report.claimed, report.sent, report.retrying, report.failed) == (15, 15, 0, 0)
    assert await alerts.pending_count() == 0
    generic = receiver.at("/hooks/json")
    assert [h.body["event"] for h in generic] == [
        "process_restart",
        "exhausted",
        "brake_engaged",
        "brake_released",
        "leader_changed",
    ]
    assert generic[0].body["audit_id"] == intent
    assert generic[0].body["summary"] == "wa-05: process_restart (attempt 6) after stuck_connecting"
    assert set(generic[0].body) == {
        "event",
        "instance",
        "attempt",
        "reason",
        "detail",
        "at",
        "summary",
        "audit_id",
    }
    assert {h.authorization for h in generic} == {f"Bearer {TOKEN}"}
    slack = receiver.at(f"/services/{SLACK_SECRET}")
    assert slack[0].body == {"text": "wa-05: process_restart (attempt 6) after stuck_connecting"}
    assert slack[1].body["text"].startswith("wa-05: recovery exhausted after 6 attempts")
    assert {h.authorization for h in slack} == {None}
    am = receiver.at("/am/api/v2/alerts")
    assert [h.body[0]["labels"]["alertname"] for h in am] == [
        "WatchdogProcessRestart",
        "WatchdogRecoveryExhausted",
        "WatchdogBrakeEngaged",
        "WatchdogBrakeEngaged",
        "WatchdogLeaderChanged",
    ]
    assert am[0].body[0]["labels"] == {
        "alertname": "WatchdogProcessRestart",
        "instance": "wa-05",
        "severity": "warning",
    }
    assert "startsAt" in am[2].body[0]
    assert "endsAt" in am[3].body[0]  # the released brake resolves the engaged one
    assert am[3].body[0]["labels"] == am[2].body[0]["labels"]

    rows = await outbox_rows(db)
    assert {(r["state"], r["claimed_by"], r["attempts"]) for r in rows} == {("sent", "node-a", 0)}
    assert {r["sent_at"] for r in rows} == {T0}
    again = await alerts.send_due(T0 + timedelta(hours=1))
    assert again.claimed == 0
    assert len(receiver.hits) == 15


async def _reload(ledger: SqlLedger, instance_id: str) -> Any:
    return (await ledger.load_open())[instance_id]


async def test_history_before_the_first_start_is_not_alerted(
    db: Database, receiver: Receiver, client: httpx.AsyncClient
) -> None:
    sinks = [sink(receiver, "hooks", "/hooks")]
    ledger = SqlLedger(db)
    for n in range(3):
        await restart_intent(ledger, f"old-{n}")
    feeder = feeder_for(db, sinks)

    assert await feeder.feed(T0) == 0
    assert await feeder.feed(T0) == 0
    new = await restart_intent(ledger, "new")
    assert await feeder.feed(T0) == 1
    await sender(db, sinks, client).send_due(T0)

    assert audit_ids(receiver.hits) == [new]
    value = await _flag(db)
    assert json.loads(value) == {"audit_id": new}


async def test_no_sinks_no_cursor_no_rows(db: Database, client: httpx.AsyncClient) -> None:
    await restart_intent(SqlLedger(db))
    assert await feeder_for(db, []).feed(T0) == 0
    assert (await AlertSender(db, [], "a", client).send_due(T0)).claimed == 0
    assert await SqlOutbox(db).cursor() is None
    assert await outbox_rows(db) == []


async def _flag(db: Database) -> str:
    async with db.connect("test") as conn:
        query = sa.select(flags.c.value).where(flags.c.name == "alert_cursor")
        return str((await conn.execute(query)).scalar_one())


# ------------------------------------------------------------------- failures, backoff


async def test_a_failing_sink_is_retried_with_backoff_then_failed_while_others_deliver(
    db: Database, receiver: Receiver, client: httpx.AsyncClient
) -> None:
    receiver.statuses["/bad"] = 500
    sinks = [sink(receiver, "good", "/good"), sink(receiver, "bad", "/bad")]
    ledger = SqlLedger(db)
    feeder = feeder_for(db, sinks)
    await feeder.feed(T0)
    first = await restart_intent(ledger, "wa-01")
    second = await restart_intent(ledger, "wa-02")
    assert await feeder.feed(T0) == 4
    alerts = sender(db, sinks, client, max_attempts=3)

    report = await alerts.send_due(T0)

    assert (report.sent, report.retrying, report.deferred, report.failed) == (2, 1, 1, 0)
    assert audit_ids(receiver.at("/good")) == [first, second]
    # The sink failed on its first row: the second waits behind it, untried.
    assert audit_ids(receiver.at("/bad")) == [first]
    bad = await rows_of(db, "bad")
    assert [(r["state"], r["attempts"]) for r in bad] == [("pending", 1), ("pending", 0)]
    assert bad[0]["next_attempt_at"] == T0 + timedelta(seconds=2)
    assert bad[0]["last_error"] == "HTTP 500: error at /bad for None"
    assert [r["claimed_until"] for r in bad] == [None, None]
    assert bad[1]["last_error"] is None

    # Nothing is due before the backoff; then 2 s, 4 s later, and failed at attempt 3.
    assert (await alerts.send_due(T0 + timedelta(seconds=1.9))).claimed == 0
    assert (await alerts.send_due(T0 + timedelta(seconds=2))).retrying == 1
    assert (await rows_of(db, "bad"))[0]["next_attempt_at"] == T0 + timedelta(seconds=6)
    assert (await alerts.send_due(T0 + timedelta(seconds=5.9))).claimed == 0
    assert (await alerts.send_due(T0 + timedelta(seconds=6))).failed == 1
    # Then the second row gets its own attempts, in order.
    for at, (state, attempts) in [(6, ("pending", 1)), (8, ("pending", 2)), (12, ("failed", 3))]:
        await alerts.send_due(T0 + timedelta(seconds=at))
        assert [(r["state"], r["attempts"]) for r in await rows_of(db, "bad")] == [
            ("failed", 3),
            (state, attempts),
        ]

    assert (await alerts.send_due(T0 + timedelta(days=1))).claimed == 0
    assert audit_ids(receiver.at("/bad")) == [first] * 3 + [second] * 3
    assert len(receiver.at("/good")) == 2
    assert await alerts.pending_count() == 0


async def rows_of(db: Database, sink_name: str) -> list[dict[str, Any]]:
    return [r for r in await outbox_rows(db) if r["sink"] == sink_name]


async def test_a_sink_gets_its_alerts_in_order_even_after_failures(
    db: Database, receiver: Receiver, client: httpx.AsyncClient
) -> None:
    receiver.statuses["/am/api/v2/alerts"] = 503
    sinks = [sink(receiver, "am", "/am", kind="alertmanager")]
    ledger = SqlLedger(db)
    fleet = SqlFleetState(db, ledger)
    feeder = feeder_for(db, sinks)
    await feeder.feed(T0)
    await fleet.set_brake(True, T0, {"unhealthy": 9, "monitored": 10})
    await feeder.feed(T0)
    alerts = sender(db, sinks, client)
    await alerts.send_due(T0)  # fails: the engaged alert backs off
    await fleet.set_brake(False, T0, {"unhealthy": 0, "monitored": 10})
    await feeder.feed(T0)
    assert (await alerts.send_due(T0 + timedelta(seconds=1))).claimed == 0  # waits its turn
    del receiver.statuses["/am/api/v2/alerts"]

    report = await alerts.send_due(T0 + timedelta(seconds=2))

    assert report.sent == 2
    hits = receiver.at("/am/api/v2/alerts")
    # Engaged (failed), engaged, released: a resolve never overtakes its alert.
    assert ["endsAt" in h.body[0] for h in hits] == [False, False, True]


async def test_a_rejected_alert_fails_at_once_and_the_next_is_sent(
    db: Database, receiver: Receiver, client: httpx.AsyncClient
) -> None:
    receiver.statuses["/picky"] = 400
    sinks = [sink(receiver, "picky", "/picky")]
    ledger = SqlLedger(db)
    feeder = feeder_for(db, sinks)
    await feeder.feed(T0)
    await restart_intent(ledger, "wa-01")
    await restart_intent(ledger, "wa-02")
    await feeder.feed(T0)

    report = await sender(db, sinks, client).send_due(T0)

    # A 400 is about this body, not the sink: no retry, and the next row is still tried.
    assert (report.failed, report.deferred) == (2, 0)
    assert len(receiver.at("/picky")) == 2
    rows = await outbox_rows(db)
    assert [(r["state"], r["attempts"]) for r in rows] == [("failed", 1), ("failed", 1)]


async def test_secrets_never_reach_last_error_or_logs(
    db: Database, receiver: Receiver, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.statuses[f"/services/{SLACK_SECRET}"] = 503
    dead = sink(receiver, "dead", f"/hook/{SLACK_SECRET}?key=querysecret1234")
    dead = dead.model_copy(
        update={"url": dead.url.replace(str(receiver.port), str(_closed_port()))}
    )
    sinks = [
        sink(receiver, "slack", f"/services/{SLACK_SECRET}", kind="slack", token_env="HOOK_TOKEN"),
        dead,
        sink(receiver, "badtoken", "/badtoken", token_env="BAD_TOKEN"),
    ]
    ledger = SqlLedger(db)
    feeder = feeder_for(db, sinks)
    await feeder.feed(T0)
    await restart_intent(ledger)
    await feeder.feed(T0)
    alerts = sender(db, sinks, client, max_attempts=2)

    with caplog.at_level(logging.DEBUG):
        await alerts.send_due(T0)
        await alerts.send_due(T0 + timedelta(seconds=2))

    # The server did get the token and echoed it, with the secret path, in its answer.
    assert receiver.hits[0].authorization == f"Bearer {TOKEN}"
    rows = await outbox_rows(db)
    assert [r["state"] for r in rows] == ["failed"] * 3
    errors = [r["last_error"] for r in rows]
    assert errors[0] == "HTTP 503: error at /*** for Bearer ***"
    assert errors[1] == "ConnectError: Connection refused"
    assert errors[2] == "the token in BAD_TOKEN must be visible ASCII without spaces or line breaks"
    assert receiver.at("/badtoken") == []
    assert all("\n" not in e for e in errors)
    # The watchdog's own log lines. (httpx logs every request URL at INFO on its own logger
    # "httpx": the daemon's logging configuration must keep that logger at WARNING.)
    ours = [r for r in caplog.records if r.name.startswith("watchdog")]
    logged = "\n".join(r.getMessage() for r in ours)
    assert "failed for good" in logged
    for text in [*errors, logged]:
        for secret in (SLACK_SECRET, "xoxSecretWebhookPath42", TOKEN, "querysecret1234", "line2"):
            assert secret not in text


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------- several nodes


async def test_racing_senders_deliver_each_row_exactly_once(
    db_url: str, db: Database, receiver: Receiver, client: httpx.AsyncClient
) -> None:
    sinks = [sink(receiver, "hooks", "/hooks"), sink(receiver, "slack", "/slack", kind="slack")]
    ledger = SqlLedger(db)
    feeder = feeder_for(db, sinks)
    await feeder.feed(T0)
    written = [await restart_intent(ledger, f"wa-{n:02}") for n in range(24)]
    assert await feeder.feed(T0) == 48
    other_db = Database(db_url, timeout=5.0)  # another replica: its own pool
    try:
        nodes = [
            sender(db, sinks, client, "node-a", per_sink=5),
            sender(other_db, sinks, client, "node-b", per_sink=5),
            sender(db, sinks, client, "node-c", per_sink=7),
            sender(other_db, sinks, client, "node-d", per_sink=3),
        ]
        claims = 0
        for _ in range(30):
            reports = await asyncio.gather(*(n.send_due(T0) for n in nodes))
            claims += sum(r.claimed for r in reports)
            if not any(r.claimed for r in reports):
                break
    finally:
        await other_db.dispose()

    assert claims == 48  # no row was ever claimed twice, let alone sent twice
    assert sorted(audit_ids(receiver.at("/hooks"))) == written
    assert len(receiver.at("/slack")) == 24
    rows = await outbox_rows(db)
    assert {r["state"] for r in rows} == {"sent"}


async def test_alerts_survive_a_restart_of_the_watchdog(
    db_url: str, db: Database, receiver: Receiver, client: httpx.AsyncClient
) -> None:
    receiver.hold.add("/hooks")
    sinks = [sink(receiver, "hooks", "/hooks", timeout=30.0)]
    ledger = SqlLedger(db)
    feeder = feeder_for(db, sinks)
    await feeder.feed(T0)
    written = [await restart_intent(ledger, f"wa-{n}") for n in range(3)]
    await feeder.feed(T0)
    crashing = sender(db, sinks, client, "node-a")
    delivery = asyncio.create_task(crashing.send_due(T0))
    await _until(lambda: len(receiver.hits) >= 1)

    delivery.cancel()  # the watchdog dies mid-delivery: its rows stay claimed
    with pytest.raises(asyncio.CancelledError):
        await delivery
    receiver.released.set()
    rows = await outbox_rows(db)
    assert {(r["state"], r["claimed_by"]) for r in rows} == {("pending", "node-a")}

    fresh_db = Database(db_url, timeout=5.0)  # the restarted watchdog
    try:
        restarted = sender(fresh_db, sinks, client, "node-a-restarted")
        lapsed = T0 + timedelta(seconds=crashing.lease)
        assert (await restarted.send_due(lapsed - timedelta(seconds=1))).claimed == 0  # leased
        report = await restarted.send_due(lapsed)
    finally:
        await fresh_db.dispose()

    assert report.sent == 3
    rows = await outbox_rows(db)
    assert {(r["state"], r["claimed_by"], r["attempts"]) for r in rows} == {
        ("sent", "node-a-restarted", 0)
    }
    delivered = audit_ids(receiver.hits)
    assert sorted(set(delivered)) == written


async def _until(check: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out waiting")
        await asyncio.sleep(0.01)


async def test_racing_feeders_enqueue_each_audit_row_once_per_sink(
    db_url: str, db: Database, receiver: Receiver
) -> None:
    sinks = [sink(receiver, "hooks", "/hooks"), sink(receiver, "am", "/am", kind="alertmanager")]
    ledger = SqlLedger(db)
    other_db = Database(db_url, timeout=5.0)
    try:
        feeders = [
            feeder_for(db, sinks, batch=3),
            feeder_for(other_db, sinks, batch=2),
            feeder_for(db, sinks, batch=5),
        ]
        await asyncio.gather(*(f.feed(T0) for f in feeders))
        written: list[int] = []
        for round_ in range(6):
            written += [await restart_intent(ledger, f"wa-{round_}-{n}") for n in range(4)]
            await ledger.append(NewAudit("x", AuditAction.DETECTED, Outcome.OK))  # no alert
            await asyncio.gather(*(f.feed(T0) for f in feeders))
        for _ in range(20):
            if not sum(await asyncio.gather(*(f.feed(T0) for f in feeders))):
                break
    finally:
        await other_db.dispose()

    rows = await outbox_rows(db)
    per_sink = sorted((r["sink"], _audit_id(r)) for r in rows)
    assert per_sink == sorted([("hooks", i) for i in written] + [("am", i) for i in written])


def _audit_id(row: dict[str, Any]) -> int:
    body = json.loads(row["payload"])
    if isinstance(body, list):
        return int(body[0]["annotations"]["description"].split("audit_id=")[1].split(";")[0])
    return int(body["audit_id"])


async def test_a_feeder_that_lost_the_race_writes_nothing(
    db: Database, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    sinks = [sink(receiver, "hooks", "/hooks")]
    ledger = SqlLedger(db)
    winner, loser = feeder_for(db, sinks), feeder_for(db, sinks)
    await winner.feed(T0)
    start = await SqlOutbox(db).cursor()
    await restart_intent(ledger)
    stale = json.dumps({"audit_id": start})
    assert await winner.feed(T0) == 1

    async def read_stale(_conn: Any) -> str:
        return stale  # read just before the winner moved the cursor

    monkeypatch.setattr(outbox_module, "_read_cursor", read_stale)
    assert await loser.feed(T0) == 0
    monkeypatch.undo()

    assert len(await outbox_rows(db)) == 1
    assert await SqlOutbox(db).cursor() == (await SqlOutbox(db).max_audit_id())


@pytest.mark.postgres
async def test_an_audit_row_committed_after_a_higher_id_is_not_skipped(
    pg_url: str, receiver: Receiver
) -> None:
    db = Database(pg_url, timeout=5.0)
    try:
        await migrate.upgrade(db)
        ledger = SqlLedger(db)
        feeder = AlertFeeder(db, [sink(receiver, "hooks", "/hooks")])
        assert feeder.settle == 11.0
        await feeder.feed(T0)
        async with db.engine.connect() as slow:
            transaction = await slow.begin()
            spec = NewAudit("slow", AuditAction.EXHAUSTED, Outcome.OK, attempt=3)
            early = await ledger.insert_audit(slow, T0, spec)  # lower id, not committed yet
            late = await restart_intent(ledger, "fast")
            assert late > early.id
            # The higher id is visible first: it must not carry the cursor past the lower.
            assert await feeder.feed(T0 + timedelta(seconds=1)) == 0
            await transaction.commit()
        assert await feeder.feed(T0 + timedelta(seconds=5)) == 0  # not settled yet
        assert await feeder.feed(T0 + timedelta(seconds=12)) == 2
        rows = await outbox_rows(db)
        assert sorted(_audit_id(r) for r in rows) == [early.id, late]
    finally:
        await db.dispose()


# ------------------------------------------------------------------------ upkeep


async def test_a_malformed_cursor_is_reported(db: Database, receiver: Receiver) -> None:
    async with db.begin("test") as conn:
        await conn.execute(sa.insert(flags).values(name="alert_cursor", value="{}", updated_at=T0))
    with pytest.raises(Exception, match="delete that flag row"):
        await feeder_for(db, [sink(receiver, "hooks", "/hooks")]).feed(T0)
    async with db.connect("test") as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(outbox))).scalar() == 0
