"""Several watchdogs on one real PostgreSQL: exactly one acts; when the leader is killed
(-9), another takes over and the ladder goes on where it was. On SQLite, a second
daemon refuses to start."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import sqlalchemy as sa

from tests.apptable import AppTable
from tests.e2e.helpers import ctl, start_daemon, watchdog_env
from tests.httpapp import RestartApi, restart_api
from tests.waiting import wait_for

TOKEN = "ha-token"
INTERVAL = 0.3


class BulkBeater:
    """The application: one UPDATE beats every healthy instance."""

    def __init__(self, url: str) -> None:
        self._engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self._engine.connect() as conn:
            while not self._stop.wait(0.2):
                conn.execute(
                    sa.text("UPDATE instances SET last_heartbeat_at = now() WHERE id LIKE 'ok-%'")
                )
                conn.commit()

    def __enter__(self) -> BulkBeater:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._engine.dispose()


def write_config(tmp_path: Path, db_url: str, api_url: str) -> Path:
    config = tmp_path / "watchdog.toml"
    config.write_text(f"""
[database]
url = "{db_url}"
[detection]
interval = {INTERVAL}
stale_after = 2.0
[escalation]
settle = 0.4
backoff_factor = 1.0
jitter = 0.0
max_attempts = 6
ladder = [ {{ action = "api_restart", attempts = 2 }}, {{ action = "db_flag" }} ]
[api]
restart_url = "{api_url}"
timeout = 2.0
""")
    return config


def leader_pid(engine: sa.Engine) -> int | None:
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT pid FROM watchdog_nodes WHERE role = 'leader' ORDER BY updated_at DESC")
        ).first()
    return int(row[0]) if row else None


def audit_rows(engine: sa.Engine) -> list[dict[str, object]]:
    with engine.connect() as conn:
        rows = (
            conn.execute(
                sa.text(
                    "SELECT id, instance_id, action, outcome, attempt, detail, at "
                    "FROM watchdog_audit ORDER BY id"
                )
            )
            .mappings()
            .all()
        )
    return [dict(r) for r in rows]


def test_three_replicas_one_actor_and_failover(
    tmp_path: Path, pg_url: str, watchdogctl: str
) -> None:
    app = AppTable(pg_url)
    app.create()
    for n in range(50):
        app.add(f"frozen-{n:02d}", heartbeat_ago=600)
    for n in range(100):
        app.add(f"ok-{n:03d}", heartbeat_ago=0)
    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    with restart_api(RestartApi()) as api, BulkBeater(pg_url):
        config = write_config(tmp_path, pg_url, api.url())
        assert ctl(watchdogctl, config, "db", "upgrade", token=TOKEN).returncode == 0
        env = watchdog_env(TOKEN)
        procs = []
        for n in range(3):
            procs.append(start_daemon(watchdogctl, config, tmp_path / f"node{n}.log", env))
        try:
            # The ladder is under way: every frozen instance had its first db_flag.
            wait_for(
                lambda: (
                    sum(
                        r["action"] == "db_flag" and r["outcome"] == "ok"
                        for r in audit_rows(engine)
                    )
                    >= 50
                ),
                60,
                "attempt 3 everywhere",
            )
            old = leader_pid(engine)
            assert old in [p.pid for p in procs]
            before = max(int(r["id"]) for r in audit_rows(engine))  # type: ignore[call-overload]
            killed_at = time.monotonic()
            os.kill(old, signal.SIGKILL)
            wait_for(lambda: (leader_pid(engine) or old) != old, 30, "another leader")
            failover = time.monotonic() - killed_at
            # The new leader goes on with the ladder where the old one stopped.
            wait_for(
                lambda: any(
                    int(r["id"]) > before
                    and r["action"] == "db_flag"  # type: ignore[call-overload]
                    and r["outcome"] == "ok"
                    for r in audit_rows(engine)
                ),
                30,
                "the ladder to go on",
            )
            table = ctl(watchdogctl, config, "status", token=TOKEN).stdout
            assert table.count("LEADER") == 1
            assert table.count("standby") == 1
            assert table.count(" lost ") == 1  # the killed leader, demoted by its successor
            print(f"failover: a new leader {failover:.2f}s after kill -9 (interval {INTERVAL}s)")
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            codes = [proc.wait(timeout=60) for proc in procs]
    assert codes.count(-signal.SIGKILL) == 1
    assert codes.count(0) == 2

    rows = audit_rows(engine)
    started = Counter(
        (r["instance_id"], r["attempt"], r["action"]) for r in rows if r["outcome"] == "started"
    )
    assert started, "no action was taken"
    duplicates = {k: v for k, v in started.items() if v > 1}
    assert duplicates == {}  # zero duplicate actions across three replicas
    outcomes = Counter(
        (r["instance_id"], r["attempt"], r["action"])
        for r in rows
        if r["action"] in ("api_restart", "db_flag", "process_restart")
        and r["outcome"] != "started"
    )
    assert outcomes == Counter(started.keys())  # every intent has exactly one outcome
    leaders = [json.loads(str(r["detail"]))["pid"] for r in rows if r["action"] == "leader_changed"]
    assert len(leaders) == 2
    assert leaders[0] == old
    with engine.connect() as conn:
        roles = Counter(r[0] for r in conn.execute(sa.text("SELECT role FROM watchdog_nodes")))
    assert roles["gone"] == 2  # the two that stopped cleanly marked themselves gone
    engine.dispose()
    app.dispose()


def test_a_second_daemon_on_one_sqlite_file_refuses(
    tmp_path: Path, sqlite_url: str, watchdogctl: str
) -> None:
    app = AppTable(sqlite_url)
    app.create()
    app.add("a", heartbeat_ago=0)
    config = write_config(tmp_path, sqlite_url, "http://127.0.0.1:9/{id}")
    env = watchdog_env(TOKEN)
    first = start_daemon(watchdogctl, config, tmp_path / "first.log", env)
    try:
        wait_for(lambda: "started" in (tmp_path / "first.log").read_text(), 20, "first daemon")
        second = ctl(watchdogctl, config, "run", token=TOKEN)
        assert second.returncode == 2
        assert "another watchdog (pid " + str(first.pid) + ")" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0
    assert sys.executable  # the installed tool, not this interpreter, ran the daemons
    app.dispose()
