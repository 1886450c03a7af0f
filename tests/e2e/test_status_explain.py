"""`status` and `explain` tell the truth, read from the database now: the fleet line from
the application's table, who acts (or that nobody does, after `kill -9` or a failed
start), unhealthy instances without an incident, and the guard that holds each one. The
installed `watchdogctl` against a real SQLite file."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.apptable import AppTable
from tests.e2e.helpers import ctl, start_daemon, watchdog_env
from tests.waiting import wait_for

TOKEN = "status-token"
INTERVAL = 0.2


@pytest.fixture
def app(sqlite_url: str) -> AppTable:
    table = AppTable(sqlite_url)
    table.create()
    table.add("ok", heartbeat_ago=1)
    table.add("frozen", heartbeat_ago=300)
    table.add("off", enabled=False, heartbeat_ago=300)
    table.add("banned", status="BANNED", heartbeat_ago=300)
    table.add("gone", heartbeat_ago=300)
    return table


@pytest.fixture
def config(tmp_path: Path, sqlite_url: str, watchdogctl: str) -> Path:
    path = tmp_path / "watchdog.toml"
    path.write_text(f"""
[database]
url = "{sqlite_url}"
[detection]
interval = {INTERVAL}
stale_after = 90.0
[escalation]
settle = 3600.0
ladder = [ {{ action = "db_flag" }} ]
""")
    assert ctl(watchdogctl, path, "db", "upgrade", token=TOKEN).returncode == 0
    return path


def explain(watchdogctl: str, config: Path, instance_id: str) -> dict[str, Any]:
    result = ctl(watchdogctl, config, "explain", instance_id, "--json", token=TOKEN)
    assert result.returncode == 0, result.stderr
    explained: dict[str, Any] = json.loads(result.stdout)
    return explained


def test_explain_gives_each_verdict_with_its_rule_and_guards(
    watchdogctl: str, config: Path, app: AppTable, sqlite_url: str
) -> None:
    assert ctl(watchdogctl, config, "run", "--once", token=TOKEN).returncode == 0
    engine = app.engine
    with engine.begin() as conn:  # an incident whose row is then deleted; a garbage row
        conn.exec_driver_sql("DELETE FROM instances WHERE id = 'gone'")
        conn.exec_driver_sql(
            "INSERT INTO instances (id, enabled, connection_status, status_changed_at, "
            "last_heartbeat_at) VALUES ('garbage', 1, 'CONNECTED', 'soon', NULL)"
        )
    verdicts = {
        i: explain(watchdogctl, config, i)
        for i in ("ok", "frozen", "off", "banned", "gone", "garbage")
    }
    assert {i: e["verdict"] for i, e in verdicts.items()} == {
        "ok": "healthy",
        "frozen": "unhealthy",
        "off": "disabled",
        "banned": "ignored",
        "gone": "deleted",
        "garbage": "unjudgeable",
    }
    frozen = verdicts["frozen"]
    assert frozen["reason"] == "stale_heartbeat"
    assert frozen["rule"].startswith("heartbeat age ")
    assert frozen["rule"].endswith(" s > stale_after 90 s")
    assert frozen["incident"]["state"] == "open"
    assert frozen["incident"]["attempt"] == 1
    assert frozen["next_action"] == "db_flag"
    assert frozen["blocked_by"] == ["no_leader"]  # the --once run has stopped
    assert {g["name"] for g in frozen["guards"]} >= {
        "grace",
        "pause",
        "brake",
        "budget",
        "breaker",
        "in_flight",
        "no_leader",
        "exhausted",
    }
    assert all({"name", "ok", "detail"} <= set(g) for g in frozen["guards"])
    assert frozen["row"]["last_heartbeat_at"] is not None
    assert verdicts["gone"]["next_action"] == "close (dismissed)"
    assert verdicts["garbage"]["blocked_by"][0] == "readable"
    assert verdicts["garbage"]["row"]["status_changed_at"] == "soon"
    assert verdicts["ok"]["incident"] is None
    human = ctl(watchdogctl, config, "explain", "frozen", token=TOKEN).stdout
    assert "verdict: unhealthy: heartbeat age" in human
    assert "HOLD no_leader" in human
    unknown = ctl(watchdogctl, config, "explain", "nobody", token=TOKEN)
    assert unknown.returncode == 1
    assert unknown.stderr.strip().count("\n") == 0
    assert "unknown instance 'nobody'" in unknown.stderr


def test_status_reads_the_table_and_names_who_acts_even_after_kill_9(
    watchdogctl: str, config: Path, app: AppTable, tmp_path: Path
) -> None:
    log = tmp_path / "daemon.log"
    proc = start_daemon(watchdogctl, config, log, watchdog_env(TOKEN))
    try:
        wait_for(
            lambda: "leads" in ctl(watchdogctl, config, "status", token=TOKEN).stdout,
            30,
            "a leader",
        )
        acting = ctl(watchdogctl, config, "status", token=TOKEN).stdout
        fleet = "fleet: 5 rows in instances: 1 healthy, 2 unhealthy, 0 unjudgeable"
        assert f"{fleet}, 1 disabled, 1 ignored (3 monitored)" in acting
        # In the start's grace: listed as unhealthy, held by the grace, never `due`.
        (frozen,) = [line for line in acting.splitlines() if line.startswith("frozen")]
        assert "held: grace until " in frozen
        assert frozen.rstrip().endswith("Z")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def nobody_acts() -> str | None:
        out = ctl(watchdogctl, config, "status", token=TOKEN).stdout
        return out if "no daemon is acting" in out else None

    after = wait_for(nobody_acts, 10, "status to see that no daemon acts")
    assert " stale " in after  # the killed node is not shown as a live leader
    assert "LEADER" not in after
    records = json.loads(ctl(watchdogctl, config, "status", "--json", token=TOKEN).stdout)
    blocked = {r["id"]: r["blocked_by"] for r in records}
    assert blocked["frozen"] == ["no_leader", "grace"]  # the grace of the killed daemon's start


def test_a_start_that_fails_before_its_first_cycle_leaves_no_live_looking_node(
    watchdogctl: str, config: Path, app: AppTable, sqlite_url: str, tmp_path: Path
) -> None:
    config.write_text(
        config.read_text() + '\n[[alerts.sinks]]\nname = "hooks"\nurl = "http://127.0.0.1:9/hook"\n'
    )
    database = sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(database) as conn:
        query = "SELECT sql FROM sqlite_master WHERE name = 'watchdog_flags'"
        (schema,) = conn.execute(query).fetchone()
        conn.execute("DROP TABLE watchdog_flags")  # the alert feeder fails at start
    result = subprocess.run(
        [watchdogctl, "--config", str(config), "run"],
        capture_output=True,
        text=True,
        timeout=60,
        env=watchdog_env(TOKEN),
    )
    assert result.returncode != 0
    with sqlite3.connect(database) as conn:
        roles = [r[0] for r in conn.execute("SELECT role FROM watchdog_nodes")]
        conn.execute(schema)  # repaired, so that status can read the fleet's state again
    assert roles == ["gone"]
    assert "no daemon is acting" in ctl(watchdogctl, config, "status", token=TOKEN).stdout
