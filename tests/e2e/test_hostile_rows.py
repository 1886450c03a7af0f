"""Hostile rows in a real SQLite file whose table has no NOT NULL constraints, through
the installed `watchdogctl run --once`: a value that cannot be read is that row's
problem, never the cycle's; a NULL or empty id is never acted on (nor read as the
string "None"); ids made of dots never escape the restart URL.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tests.e2e.helpers import audit, watchdog_env
from tests.httpapp import RestartApi, restart_api

TOKEN = "hostile-token"
STALE = "strftime('%Y-%m-%d %H:%M:%f', 'now', '-500 seconds')"
FRESH = "strftime('%Y-%m-%d %H:%M:%f', 'now')"

# (id, status, status_changed_at, last_heartbeat_at) as SQL expressions
ROWS: list[tuple[str | None, str, str, str]] = [
    ("frozen", "CONNECTED", STALE, STALE),
    ("None", "CONNECTED", STALE, FRESH),  # healthy: must never be touched
    ("h1", "CONNECTED", STALE, FRESH),
    ("h2", "CONNECTED", STALE, FRESH),
    ("h3", "CONNECTED", STALE, FRESH),
    ("h4", "CONNECTED", STALE, FRESH),
    ("h5", "CONNECTED", STALE, FRESH),
    ("h6", "CONNECTED", STALE, FRESH),
    *((f"h{n}", "CONNECTED", STALE, FRESH) for n in range(7, 15)),  # the brake stays off
    (None, "CONNECTED", STALE, STALE),
    ("", "CONNECTED", STALE, STALE),
    (".", "CONNECTED", STALE, STALE),
    ("..", "CONNECTED", STALE, STALE),
    ("%2e%2e", "CONNECTED", STALE, STALE),
    ("a.b", "CONNECTED", STALE, STALE),
    ("null-changed", "CONNECTED", "NULL", STALE),
    ("garbage-changed", "CONNECTED", "'yesterday, roughly'", STALE),
    ("garbage-beat", "CONNECTING", STALE, "'not a time'"),
]
UNJUDGEABLE = {None, "", "null-changed", "garbage-changed", "garbage-beat"}
ACTED = {"frozen", ".", "..", "%2e%2e", "a.b"}


def make_table(path: Path, rows: list[tuple[str | None, str, str, str]] = ROWS) -> sa.Engine:
    engine = sa.create_engine(f"sqlite:///{path}", poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(
            sa.text("""
            CREATE TABLE instances (
              id TEXT PRIMARY KEY,
              enabled BOOLEAN DEFAULT TRUE,
              connection_status TEXT,
              status_changed_at TEXT,
              last_heartbeat_at TEXT,
              force_reconnect BOOLEAN DEFAULT FALSE,
              process TEXT)""")
        )
        for instance_id, status, changed, beat in rows:
            conn.execute(
                sa.text(
                    "INSERT INTO instances (id, connection_status, status_changed_at, "
                    f"last_heartbeat_at) VALUES (:id, :status, {changed}, {beat})"
                ),
                {"id": instance_id, "status": status},
            )
    return engine


def write_config(tmp_path: Path, db: Path, api_url: str, action: str) -> Path:
    config = tmp_path / "watchdog.toml"
    config.write_text(f"""
[database]
url = "sqlite:///{db}"
[detection]
stale_after = 90.0
[escalation]
ladder = [ {{ action = "{action}" }} ]
[api]
restart_url = "{api_url}"
timeout = 5.0
[process]
backend = "command"
command = ["{sys.executable}", "-c", "pass", "{{process}}"]
""")
    return config


def run_once(watchdogctl: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [watchdogctl, "--config", str(config), "run", "--once"],
        capture_output=True,
        text=True,
        timeout=60,
        env=watchdog_env(TOKEN),
    )


def events(output: str, name: str) -> list[dict[str, Any]]:
    found = []
    for line in output.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == name:
                found.append(record)
    return found


def outcomes_per_intent(rows: list[dict[str, Any]]) -> dict[tuple[Any, ...], list[str]]:
    """(incident, attempt, action) of every intent → the outcomes recorded after it."""
    per: dict[tuple[Any, ...], list[str]] = {}
    for row in rows:
        key = (row["incident"], row["attempt"], row["action"])
        if row["outcome"] == "started":
            per[key] = []
        elif key in per:
            per[key].append(str(row["outcome"]))
    return per


def test_poison_rows_are_skipped_and_reported_and_the_rest_is_judged(
    tmp_path: Path, watchdogctl: str
) -> None:
    db = tmp_path / "app.db"
    make_table(db).dispose()
    with restart_api(RestartApi()) as api:
        config = write_config(tmp_path, db, api.url(), "api_restart")
        result = run_once(watchdogctl, config)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Traceback" not in result.stdout + result.stderr
        # Exactly the addressable frozen ones were called, each at its own encoded path.
        assert sorted(api.paths) == sorted(
            [
                "/api/instances/frozen/restart",
                "/api/instances/%252e%252e/restart",
                "/api/instances/a%2Eb/restart",
            ]
        )

    reported = events(result.stdout, "instance_unjudgeable")
    assert {r["instance"] for r in reported} == UNJUDGEABLE
    by_id = {r["instance"]: r for r in reported}
    assert by_id["garbage-changed"]["column"] == "status_changed_at"
    assert by_id["garbage-changed"]["value"] == "yesterday, roughly"
    assert by_id["garbage-beat"]["column"] == "last_heartbeat_at"
    assert by_id[None]["column"] == "id"
    assert all(r["level"] == "warning" for r in reported)

    trail = audit(watchdogctl, config, token=TOKEN)
    (alert,) = [r for r in trail if r["action"] == "unjudgeable"]  # the fleet alert, once
    assert alert["instance"] == "*"
    assert alert["detail"]["count"] == len(UNJUDGEABLE)  # type: ignore[index]
    rows = [r for r in trail if r["instance"] != "*"]
    assert {r["instance"] for r in rows} == ACTED
    sent = {r["instance"]: r for r in rows if r["outcome"] == "ok"}
    port = api.port
    assert sent["%2e%2e"]["detail"]["url"] == (  # type: ignore[index]
        f"http://127.0.0.1:{port}/api/instances/%252e%252e/restart"
    )
    assert sent["a.b"]["detail"]["url"] == (  # type: ignore[index]
        f"http://127.0.0.1:{port}/api/instances/a%2Eb/restart"
    )
    refused = {r["instance"]: r for r in rows if r["outcome"] == "failed"}
    assert set(refused) == {".", ".."}
    for row in refused.values():
        assert "unsafe instance id" in str(row["detail"]["error"])  # type: ignore[index]
        assert row["detail"]["transient"] is False  # type: ignore[index]
    assert all(len(o) == 1 for o in outcomes_per_intent(rows).values())


def test_db_flag_never_lands_on_a_row_named_none(tmp_path: Path, watchdogctl: str) -> None:
    db = tmp_path / "app.db"
    ids_only = [row for row in ROWS if row[0] is None or not row[0].endswith(("-changed", "-beat"))]
    engine = make_table(db, ids_only)
    with restart_api(RestartApi()) as api:
        config = write_config(tmp_path, db, api.url(), "db_flag")
        result = run_once(watchdogctl, config)
    assert result.returncode == 0, result.stdout + result.stderr
    with engine.connect() as conn:
        flagged = {
            row[0]
            for row in conn.execute(sa.text("SELECT id FROM instances WHERE force_reconnect"))
        }
    assert flagged == ACTED  # "None", the NULL id and the empty id untouched
    engine.dispose()


def test_an_incident_whose_row_turns_unreadable_stays_open(
    tmp_path: Path, watchdogctl: str
) -> None:
    db = tmp_path / "app.db"
    engine = make_table(db, [("frozen", "CONNECTED", STALE, STALE)])
    with restart_api(RestartApi()) as api:
        config = write_config(tmp_path, db, api.url(), "api_restart")
        assert run_once(watchdogctl, config).returncode == 0
        with engine.begin() as conn:  # the application starts writing garbage
            conn.execute(
                sa.text(
                    "UPDATE instances SET status_changed_at = 'soon', "
                    "last_heartbeat_at = 1700000000"
                )
            )
        again = run_once(watchdogctl, config)
    assert again.returncode == 0, again.stdout + again.stderr
    actions = [r["action"] for r in audit(watchdogctl, config, token=TOKEN) if r["instance"] != "*"]
    assert "recovered" not in actions  # its health was not checked
    status = subprocess.run(
        [watchdogctl, "--config", str(config), "status", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=watchdog_env(TOKEN),
    )
    assert [s["id"] for s in json.loads(status.stdout)] == ["frozen"]
    engine.dispose()


def test_a_table_with_no_monitored_row_is_a_warning(tmp_path: Path, watchdogctl: str) -> None:
    db = tmp_path / "app.db"
    engine = make_table(db, [("a", "CONNECTED", STALE, FRESH), ("b", "CONNECTED", STALE, FRESH)])
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE instances SET enabled = 'off'"))  # read as false
    with restart_api(RestartApi()) as api:
        result = run_once(watchdogctl, write_config(tmp_path, db, api.url(), "api_restart"))
    assert result.returncode == 0, result.stdout + result.stderr
    (warning,) = events(result.stdout, "no_instance_monitored")
    assert warning["rows"] == 2
    assert "[instances] enabled" in warning["fix"]
    engine.dispose()
