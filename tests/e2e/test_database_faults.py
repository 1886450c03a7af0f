"""The watchdog's own database misbehaves under a running daemon, on a real PostgreSQL
server of this module's own: restarted, the watchdog's connections killed, read-only for
a while. Heartbeat writers come back quickly or slowly, as applications do.

Whatever the fault, and wherever the daemon meets it first (the leader lock is asked
before the scan): no instance whose writer comes back within the grace is acted on, the
brake is not engaged by writers catching up, an action in flight keeps its outcome, and
the audit holds exactly one outcome for every intent.
"""

from __future__ import annotations

import itertools
import signal
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from tests.apptable import AppTable
from tests.e2e.helpers import ctl, start_daemon, watchdog_env
from tests.httpapp import RestartApi, restart_api
from tests.pg import Cluster, create_database, drop_database
from tests.waiting import wait_for

TOKEN = "faults-token"
STALE_AFTER = 4.0  # and so the grace after an outage
ATTEMPTS = ("api_restart", "db_flag", "process_restart")
_databases = itertools.count()


@pytest.fixture(scope="module")
def server() -> Iterator[Cluster]:
    """Stopped, restarted and made read-only by these tests: never the shared server."""
    with Cluster() as cluster:
        yield cluster


@pytest.fixture
def db_url(server: Cluster) -> Iterator[str]:
    server.start()
    name = f"faults_{next(_databases)}"
    yield create_database(server.url, name)
    server.start()
    _set_read_only(server, on=False)  # whatever a failed test left behind
    drop_database(server.url, name)


def _set_read_only(server: Cluster, *, on: bool) -> None:
    admin = sa.create_engine(server.url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        setting = (
            "SET default_transaction_read_only = on"
            if on
            else "RESET default_transaction_read_only"
        )
        conn.execute(sa.text(f"ALTER SYSTEM {setting}"))
        conn.execute(sa.text("SELECT pg_reload_conf()"))
    admin.dispose()


class Writer:
    """The application's heartbeat writer for some instances: one connection, a beat every
    0.2 s; when the database fails it, it waits `comes_back_after` seconds before it
    tries again (an application that reconnects quickly, or slowly)."""

    def __init__(self, url: str, ids: list[str], comes_back_after: float) -> None:
        self._conninfo = (
            sa.engine.make_url(url)
            .set(drivername="postgresql")
            .render_as_string(hide_password=False)
        )
        self._ids = ids
        self._comes_back_after = comes_back_after
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=2) as conn:
                    while not self._stop.wait(0.2):
                        conn.execute(
                            "UPDATE instances SET last_heartbeat_at = now() WHERE id = ANY(%s)",
                            (self._ids,),
                        )
            except psycopg.Error:
                self._stop.wait(self._comes_back_after)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def write_config(tmp_path: Path, db_url: str, api_url: str) -> Path:
    config = tmp_path / "watchdog.toml"
    config.write_text(f"""
[database]
url = "{db_url}"
timeout = 1.0
[detection]
interval = 0.2
stale_after = {STALE_AFTER}
[escalation]
settle = 0.5
backoff_factor = 1.0
jitter = 0.0
max_attempts = 50
ladder = [ {{ action = "api_restart" }} ]
[api]
restart_url = "{api_url}"
timeout = 20.0
[daemon]
shutdown_timeout = 20.0
""")
    return config


def audit_rows(engine: sa.Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT id, at, instance_id, action, outcome, attempt, incident_id, intent_id "
                "FROM watchdog_audit ORDER BY id"
            )
        )
        return [dict(r) for r in rows.mappings()]


def quietly(engine: sa.Engine) -> Callable[[], list[dict[str, Any]]]:
    """`audit_rows`, or nothing while the database is down (for wait_for)."""

    def read() -> list[dict[str, Any]]:
        try:
            return audit_rows(engine)
        except sa.exc.OperationalError:
            return []

    return read


def assert_one_outcome_per_intent(rows: list[dict[str, Any]]) -> Counter[str]:
    """Every intent has exactly one outcome row naming it; returns the outcomes."""
    intents = {r["id"] for r in rows if r["action"] in ATTEMPTS and r["outcome"] == "started"}
    outcomes = [r for r in rows if r["action"] in ATTEMPTS and r["outcome"] != "started"]
    assert Counter(r["intent_id"] for r in outcomes) == Counter(intents)
    return Counter(str(r["outcome"]) for r in outcomes)


def stop_daemon(proc: subprocess.Popen[bytes], log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]


def test_no_action_within_the_grace_when_the_database_comes_back(
    tmp_path: Path, db_url: str, server: Cluster, watchdogctl: str
) -> None:
    """Restarted for longer than stale_after: when it returns, every heartbeat is stale.
    Quick writers are back at once, slow ones 2.5 s later; neither is acted on. The
    instance nobody writes for is acted on again once the grace has passed."""
    app = AppTable(db_url)
    app.create()
    quick, slow = ["q1", "q2", "q3"], ["s1", "s2", "s3"]
    for instance_id in [*quick, *slow, "frozen"]:
        app.add(instance_id, heartbeat_ago=0)
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    log = tmp_path / "daemon.log"
    with (
        restart_api(RestartApi()) as api,
        Writer(db_url, quick, comes_back_after=0.2),
        Writer(db_url, slow, comes_back_after=2.5),
    ):
        config = write_config(tmp_path, db_url, api.url())
        assert ctl(watchdogctl, config, "db", "upgrade", token=TOKEN).returncode == 0
        proc = start_daemon(watchdogctl, config, log, watchdog_env(TOKEN))
        try:
            wait_for(lambda: api.calls_for("frozen"), 30, "the first action on `frozen`")
            server.stop("fast")
            stopped = len(api.paths)
            wait_for(lambda: "database_unavailable" in log.read_text(), 10, "the outage")
            threading.Event().wait(STALE_AFTER + 1.0)  # every heartbeat goes stale meanwhile
            server.start()
            wait_for(lambda: "database_available_again" in log.read_text(), 15, "the return")
            calls_after = len(api.paths)
            # The frozen one is acted on again, once the grace is over: the daemon is not
            # simply idle. By then the slow writers have been back for a while.
            wait_for(lambda: len(api.paths) > calls_after, 30, "an action after the grace")
        finally:
            stop_daemon(proc, log)
    rows = audit_rows(engine)
    acted = {r["instance_id"] for r in rows if r["action"] in ATTEMPTS}
    assert acted == {"frozen"}, log.read_text()[-3000:]
    assert api.paths[stopped:]
    assert set(api.paths) == {"/api/instances/frozen/restart"}
    assert not [r for r in rows if r["action"] == "brake_engaged"]
    back = [r["at"] for r in rows if r["action"] == "leader_changed"][-1]
    first_after = min(r["at"] for r in rows if r["outcome"] == "started" and r["at"] > back)
    assert (first_after - back).total_seconds() >= STALE_AFTER - 0.5
    assert_one_outcome_per_intent(rows)
    engine.dispose()
    app.dispose()


def _restart(server: Cluster, release: Callable[[], None], _db: str) -> None:
    server.stop("fast")
    release()  # the calls answer while the database is down: outcomes cannot be written
    threading.Event().wait(2.0)
    server.start()


def _kill_connections(server: Cluster, release: Callable[[], None], db: str) -> None:
    """The watchdog's connections (named in pg_stat_activity), the lock's too, are killed
    while the calls are in flight; the daemon takes the lead again before they answer."""
    admin = sa.create_engine(server.url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        killed = conn.execute(
            sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = :db AND application_name LIKE 'watchdog%'"
            ),
            {"db": db},
        ).scalar_one()
    admin.dispose()
    assert killed > 0
    engine = sa.create_engine(
        sa.engine.make_url(server.url).set(database=db), poolclass=sa.pool.NullPool
    )
    leads = lambda: sum(r["action"] == "leader_changed" for r in quietly(engine)())  # noqa: E731
    wait_for(lambda: leads() >= 2, 30, "the lead taken again")
    engine.dispose()
    release()


def _read_only(server: Cluster, release: Callable[[], None], _db: str) -> None:
    _set_read_only(server, on=True)
    release()  # the calls answer while no transaction may write
    threading.Event().wait(2.5)
    _set_read_only(server, on=False)


@pytest.mark.parametrize(
    "fault", [_restart, _kill_connections, _read_only], ids=lambda f: f.__name__[1:]
)
def test_an_action_in_flight_through_a_fault_keeps_its_one_outcome(
    tmp_path: Path,
    db_url: str,
    server: Cluster,
    watchdogctl: str,
    fault: Callable[[Cluster, Callable[[], None], str], None],
) -> None:
    app = AppTable(db_url)
    app.create()
    frozen, healthy = ["f1", "f2", "f3"], ["h1", "h2", "h3", "h4"]
    for instance_id in frozen:
        app.add(instance_id, heartbeat_ago=600)
    for instance_id in healthy:
        app.add(instance_id, heartbeat_ago=0)
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    log = tmp_path / "daemon.log"
    gate = threading.Event()
    with restart_api(RestartApi(gate=gate)) as api, Writer(db_url, healthy, comes_back_after=0.2):
        config = write_config(tmp_path, db_url, api.url())
        assert ctl(watchdogctl, config, "db", "upgrade", token=TOKEN).returncode == 0
        proc = start_daemon(watchdogctl, config, log, watchdog_env(TOKEN))
        try:
            wait_for(lambda: len(api.requests) == 3, 30, "three calls in flight")
            fault(server, gate.set, str(sa.engine.make_url(db_url).database))
            gate.set()

            def all_recorded() -> bool:
                rows = quietly(engine)()
                outcomes = {r["intent_id"] for r in rows if r["outcome"] == "ok"}
                started = [r["id"] for r in rows if r["outcome"] == "started"]
                return bool(started) and set(started[:3]) <= outcomes

            wait_for(all_recorded, 40, "the outcomes of the calls that were in flight")
        finally:
            stop_daemon(proc, log)
    rows = audit_rows(engine)
    outcomes = assert_one_outcome_per_intent(rows)
    assert outcomes["interrupted"] == 0, log.read_text()[-3000:]
    first_three = [r for r in rows if r["outcome"] == "started"][:3]
    assert {r["instance_id"] for r in first_three} == set(frozen)
    assert not {r["instance_id"] for r in rows if r["action"] in ATTEMPTS} & set(healthy)
    engine.dispose()
    app.dispose()
