"""Fleet-wide maintenance, run as the installed `watchdogctl` on a real SQLite file: pause
and resume several ids, a process, a glob or everyone; `pauses` lists what is in force;
each command is audited once; a selector pause holds an instance that appears later."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.apptable import AppTable
from tests.e2e.test_cli import ctl, one_line_error

ACTOR = ("--actor", "bob")


@pytest.fixture
def app(sqlite_url: str) -> AppTable:
    table = AppTable(sqlite_url)
    table.create()
    table.add("wa-1", heartbeat_ago=200, process="app")
    table.add("wa-2", heartbeat_ago=1, process="app")
    table.add("db-1", heartbeat_ago=200, process="db")
    for n in range(6):  # enough healthy ones that the brake stays released
        table.add(f"ok-{n}", heartbeat_ago=1, process="db")
    return table


@pytest.fixture
def config(tmp_path: Path, sqlite_url: str, watchdogctl: str, app: AppTable) -> Path:
    path = tmp_path / "watchdog.toml"
    path.write_text(f"""
[database]
url = "{sqlite_url}"
[escalation]
ladder = [ {{ action = "db_flag" }} ]
""")
    assert ctl(watchdogctl, "--config", str(path), "db", "upgrade").returncode == 0
    return path


def run(watchdogctl: str, config: Path, *args: str) -> str:
    result = ctl(watchdogctl, "--config", str(config), *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def audit(watchdogctl: str, config: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(run(watchdogctl, config, "audit", "--json"))
    return [r for r in rows if r["action"] in ("paused", "resumed")]


def test_several_ids_are_paused_and_resumed_in_one_audited_command(
    watchdogctl: str, config: Path
) -> None:
    out = run(watchdogctl, config, "pause", "wa-1", "wa-2", "--for", "30m", "--reason", "x", *ACTOR)
    assert out.startswith("paused wa-1, wa-2 until ")
    listed = json.loads(run(watchdogctl, config, "pauses", "--json"))
    assert [(p["selector"], p["actor"], p["reason"]) for p in listed] == [
        ({"id": "wa-1"}, "bob", "x"),
        ({"id": "wa-2"}, "bob", "x"),
    ]
    out = run(watchdogctl, config, "resume", "wa-1", "wa-2", "db-1", *ACTOR)
    assert out.strip() == "resumed wa-1, wa-2 (db-1 had no pause)"
    rows = audit(watchdogctl, config)
    assert [(r["action"], r["instance"], r["detail"].get("ids")) for r in rows] == [
        ("paused", "*", ["wa-1", "wa-2"]),
        ("resumed", "*", ["wa-1", "wa-2"]),
    ]
    assert run(watchdogctl, config, "pauses").strip() == "no pauses in force"


def test_a_selector_pause_covers_its_instances_and_those_that_appear_later(
    watchdogctl: str, config: Path, app: AppTable
) -> None:
    run(watchdogctl, config, "pause", "--process", "app", "--for", "1h", "--reason", "deploy")
    run(watchdogctl, config, "pause", "--match", "new-*", "--for", "2h", "--reason", "rollout")
    app.add("new-1", heartbeat_ago=200, process="other")  # appears while the pause lasts
    table = run(watchdogctl, config, "pauses")
    lines = table.strip().splitlines()
    assert lines[0].split() == ["SELECTOR", "OWNER", "REASON", "UNTIL"]
    assert lines[1].startswith("--process app")
    assert "deploy" in lines[1]
    assert lines[2].startswith("--match new-*")
    # A cycle acts only on what no pause covers.
    run(watchdogctl, config, "run", "--once")
    acted = {
        r["instance"]
        for r in json.loads(run(watchdogctl, config, "audit", "--json"))
        if r["action"] == "db_flag"
    }
    assert acted == {"db-1"}
    status = {s["id"]: s for s in json.loads(run(watchdogctl, config, "status", "--json"))}
    assert status["wa-1"]["state"] == "paused"
    assert status["wa-1"]["pause_selector"] == "--process app"
    assert status["new-1"]["pause_selector"] == "--match new-*"
    human = run(watchdogctl, config, "status")
    assert "paused --process app until " in human
    assert "by " in human
    assert run(watchdogctl, config, "resume", "--process", "app").strip() == "resumed --process app"
    rows = audit(watchdogctl, config)
    assert [(r["action"], r["instance"], r["detail"].get("selector")) for r in rows] == [
        ("paused", "*", {"process": "app"}),
        ("paused", "*", {"match": "new-*"}),
        ("resumed", "*", {"process": "app"}),
    ]
    one_line_error(
        ctl(watchdogctl, "--config", str(config), "resume", "--process", "app"),
        1,
        "no pause --process app is in force",
    )


def test_everyone_can_be_paused_and_resumed(watchdogctl: str, config: Path) -> None:
    run(watchdogctl, config, "pause", "--all", "--for", "10m", "--reason", "db upgrade")
    run(watchdogctl, config, "run", "--once")
    rows = json.loads(run(watchdogctl, config, "audit", "--json"))
    assert not [r for r in rows if r["action"] == "db_flag"]
    assert run(watchdogctl, config, "resume", "--all").strip() == "resumed --all"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["pause", "--for", "1h", "--reason", "x"], "name the instances"),
        (["pause", "wa-1", "--all", "--for", "1h", "--reason", "x"], "name the instances"),
        (["pause", "--process", "a", "--match", "b*", "--for", "1h", "--reason", "x"], "one of"),
        (["pause", "--match", "", "--for", "1h", "--reason", "x"], "--match needs a glob"),
        (["resume"], "name the instances"),
    ],
)
def test_choosing_the_instances_twice_or_not_at_all_is_a_usage_error(
    watchdogctl: str, config: Path, args: list[str], needle: str
) -> None:
    one_line_error(ctl(watchdogctl, "--config", str(config), *args), 2, needle)
