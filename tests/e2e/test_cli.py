"""The operator's commands, run as the installed `watchdogctl`, on a real SQLite file."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tests.apptable import AppTable


def ctl(
    watchdogctl: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOG_")}
    full_env.update(env or {})
    return subprocess.run(
        [watchdogctl, *args], capture_output=True, text=True, timeout=60, env=full_env, cwd=cwd
    )


@pytest.fixture
def config(tmp_path: Path, sqlite_url: str, watchdogctl: str) -> Path:
    app = AppTable(sqlite_url)
    app.create()
    app.add("frozen", heartbeat_ago=200)
    app.add("healthy", heartbeat_ago=1)
    app.dispose()
    path = tmp_path / "watchdog.toml"
    path.write_text(f"""
[database]
url = "{sqlite_url}"
[escalation]
ladder = [ {{ action = "db_flag" }} ]
""")
    assert ctl(watchdogctl, "--config", str(path), "db", "upgrade").returncode == 0
    return path


def one_line_error(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0]


def test_steering_an_incident(watchdogctl: str, config: Path) -> None:
    c = str(config)
    assert ctl(watchdogctl, "--config", c, "run", "--once").returncode == 0

    status = json.loads(ctl(watchdogctl, "--config", c, "status", "--json").stdout)
    assert [(s["id"], s["state"], s["attempt"], s["next_action"]) for s in status] == [
        ("frozen", "open", 1, "db_flag")
    ]
    assert {"reason", "next_action_at", "paused_until"} <= set(status[0])

    paused = ctl(
        watchdogctl,
        "--config",
        c,
        "pause",
        "frozen",
        "--for",
        "2h",
        "--reason",
        "maintenance window",
        "--actor",
        "alice",
    )
    assert paused.returncode == 0, paused.stderr
    status = json.loads(ctl(watchdogctl, "--config", c, "status", "--json").stdout)
    assert status[0]["state"] == "paused"
    assert status[0]["paused_until"] is not None
    table = ctl(watchdogctl, "--config", c, "status").stdout
    assert "frozen" in table
    assert "paused" in table

    assert ctl(watchdogctl, "--config", c, "resume", "frozen", "--actor", "alice").returncode == 0
    reset = ctl(watchdogctl, "--config", c, "reset", "frozen", "--actor", "bob")
    assert reset.returncode == 0, reset.stderr
    # Reset closes the incident; the instance is still stale and says so, with what holds it.
    (after_reset,) = json.loads(ctl(watchdogctl, "--config", c, "status", "--json").stdout)
    assert (after_reset["id"], after_reset["state"], after_reset["incident"]) == (
        "frozen",
        "unhealthy",
        None,
    )
    assert after_reset["next_action"] == "detect, then db_flag"
    assert after_reset["blocked_by"] == ["no_leader"]

    rows = json.loads(
        ctl(watchdogctl, "--config", c, "audit", "--json", "--instance", "frozen").stdout
    )
    assert [(r["action"], r["outcome"]) for r in rows] == [
        ("detected", "ok"),
        ("db_flag", "started"),
        ("db_flag", "ok"),
        ("paused", "ok"),
        ("resumed", "ok"),
        ("reset", "ok"),
    ]
    assert [r["actor"] for r in rows[3:]] == ["alice", "alice", "bob"]
    only = json.loads(
        ctl(
            watchdogctl, "--config", c, "audit", "--json", "--action", "reset", "--since", "1h"
        ).stdout
    )
    assert [r["action"] for r in only] == ["reset"]

    shown = ctl(watchdogctl, "--config", c, "show", "frozen")
    assert shown.returncode == 0
    assert "incident 1: reset" in shown.stdout
    assert "db_flag" in shown.stdout


def test_a_healthy_instance_can_be_paused_ahead_of_maintenance(
    watchdogctl: str, config: Path
) -> None:
    result = ctl(
        watchdogctl,
        "--config",
        str(config),
        "pause",
        "healthy",
        "--for",
        "30m",
        "--reason",
        "deploy",
    )
    assert result.returncode == 0, result.stderr
    status = json.loads(ctl(watchdogctl, "--config", str(config), "status", "--json").stdout)
    # `frozen` is listed too: it is unhealthy (no daemon ran yet), not paused.
    assert [(s["id"], s["state"]) for s in status] == [
        ("frozen", "unhealthy"),
        ("healthy", "paused"),
    ]


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["show", "nobody"], 1, "unknown instance 'nobody'"),
        (["pause", "nobody", "--for", "1h", "--reason", "x"], 1, "unknown instance 'nobody'"),
        (["resume", "healthy"], 1, "is not paused"),
        (["reset", "healthy"], 1, "has no open incident"),
        (["pause", "healthy", "--for", "soon", "--reason", "x"], 2, "is not a duration"),
        (["pause", "healthy", "--for", "0s", "--reason", "x"], 2, "longer than zero"),
        (["audit", "--since", "yesterday"], 2, "is not a duration"),
        (["audit", "--since", "99999999h"], 2, "longer than ten years"),
        (["audit", "--since", "2026-13-01"], 2, "is not an ISO-8601 time"),
        (["no-such-command"], 2, "No such command 'no-such-command'; see `watchdogctl --help`"),
        (["pause", "healthy", "--for", "99999999h", "--reason", "x"], 2, "longer than ten years"),
    ],
)
def test_operator_mistakes_get_one_clear_line(
    watchdogctl: str, config: Path, args: list[str], code: int, needle: str
) -> None:
    one_line_error(ctl(watchdogctl, "--config", str(config), *args), code, needle)


def test_a_missing_database_is_named(watchdogctl: str, tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    result = ctl(watchdogctl, "status", env={"WATCHDOG_DATABASE__URL": f"sqlite:///{missing}"})
    one_line_error(result, 1, "does not exist", str(missing))
    assert not missing.exists()  # never created by accident


@pytest.mark.parametrize("command", [("status",), ("run",)])
def test_a_file_that_is_not_a_database_is_named_at_once(
    watchdogctl: str, tmp_path: Path, command: tuple[str, ...]
) -> None:
    junk = tmp_path / "app.db"
    junk.write_text("this is not a database\n" * 100)
    env = {"WATCHDOG_DATABASE__URL": f"sqlite:///{junk}", "WATCHDOG_API__TOKEN_ENV": ""}
    result = ctl(watchdogctl, *command, env=env)  # `run` exits too: no wait would help
    one_line_error(result, 1, "not an SQLite database", "[database] url")


def test_tables_never_created_are_named(watchdogctl: str, sqlite_url: str) -> None:
    AppTable(sqlite_url).create()
    result = ctl(watchdogctl, "status", env={"WATCHDOG_DATABASE__URL": sqlite_url})
    one_line_error(result, 1, "watchdogctl db upgrade")
    upgraded = ctl(watchdogctl, "db", "upgrade", env={"WATCHDOG_DATABASE__URL": sqlite_url})
    assert upgraded.returncode == 0, upgraded.stderr
    assert ctl(watchdogctl, "status", env={"WATCHDOG_DATABASE__URL": sqlite_url}).returncode == 0


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"WATCHDOG_DETECTION__INTERVAL": "0"}, "detection.interval"),
        ({"WATCHDOG_API__RESTART_URL": "http://app/restart"}, "api.restart_url"),
        ({"WATCHDOG_ESCALATION__LADDER": "[]"}, "escalation.ladder"),
        ({}, "WATCHDOG_API_TOKEN is not set"),
    ],
)
def test_configuration_errors_exit_2(watchdogctl: str, env: dict[str, str], needle: str) -> None:
    one_line_error(ctl(watchdogctl, "config", "check", env=env), 2, needle)


@pytest.mark.parametrize("password", ["hunter2", "pa/ss", "p%40ss%3Aw"])
def test_config_check_masks_secrets(watchdogctl: str, password: str) -> None:
    env = {
        "WATCHDOG_DATABASE__URL": f"postgresql+psycopg://wd:{password}@db/app",
        "WATCHDOG_API_TOKEN": "tok-secret-123",
    }
    result = ctl(watchdogctl, "config", "check", "--offline", env=env)
    assert result.returncode == 0, result.stderr
    assert password not in result.stdout + result.stderr
    assert "tok-secret-123" not in result.stdout + result.stderr
    assert json.loads(result.stdout)["api"]["token"] == "(set)"
    assert json.loads(result.stdout)["database"]["url"] == "postgresql+psycopg://wd:***@db/app"


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        (
            {"WATCHDOG_API__RESTART_URL": "http://app/{ID}/restart/{id}"},
            "config error: api.restart_url 'http://app/{ID}/restart/{id}' has unknown placeholder",
        ),
        (
            {
                "WATCHDOG_PROCESS__BACKEND": "command",
                "WATCHDOG_PROCESS__COMMAND": '["pm2", "restart", "{proces}"]',
            },
            "config error: process.command: ",
        ),
        (
            {
                "WATCHDOG_PROCESS__UNIT": "app@{instance}.service",
                "WATCHDOG_PROCESS__BACKEND": "systemd",
            },
            "config error: process.unit: ",
        ),
        (
            {"WATCHDOG_PROCESS__SUPERVISOR_URL": "http://admin:s3/cr@t:x@127.0.0.1:9001"},
            "config error: process.supervisor_url: ",
        ),
        (
            {"WATCHDOG_DATABASE__URL": "postgresql+psycopg://op:top@x:hunter2@127.0.0.1:5/app"},
            "config error: database.url: cannot be read as a URL: percent-encode",
        ),
    ],
)
def test_what_run_would_refuse_config_check_refuses(
    watchdogctl: str, env: dict[str, str], needle: str
) -> None:
    env = {**env, "WATCHDOG_API_TOKEN": "t"}
    for args in (["config", "check", "--offline"], ["run", "--once"]):
        result = ctl(watchdogctl, *args, env=env)
        one_line_error(result, 2, needle)
        for secret in ("s3/cr@t", "hunter2", "top@x"):
            assert secret not in result.stdout + result.stderr


def test_config_check_connects_and_says_how_it_reads_the_table(
    watchdogctl: str, config: Path
) -> None:
    result = ctl(
        watchdogctl, "--config", str(config), "config", "check", env={"WATCHDOG_API_TOKEN": "t"}
    )
    assert result.returncode == 0, result.stderr
    assert "database: answers (sqlite)" in result.stderr
    assert "table instances: last_heartbeat_at read as per value" in result.stderr
    assert result.stderr.strip().endswith("configuration ok")


@pytest.mark.parametrize(
    ("mapping", "needle"),
    [
        ("table = 'sessions'", "config error: instances.table: the database has no table sessions"),
        (
            "heartbeat = 'last_beat'",
            "config error: instances.heartbeat: table instances has no column last_beat",
        ),
    ],
)
def test_a_wrong_table_or_column_is_exit_2_in_config_check_and_run(
    watchdogctl: str, config: Path, mapping: str, needle: str
) -> None:
    config.write_text(config.read_text() + f"\n[instances]\n{mapping}\n")
    env = {"WATCHDOG_API_TOKEN": "t"}
    one_line_error(ctl(watchdogctl, "--config", str(config), "config", "check", env=env), 2, needle)
    one_line_error(ctl(watchdogctl, "--config", str(config), "run", "--once", env=env), 2, needle)


def test_an_unreachable_database_is_exit_1(watchdogctl: str) -> None:
    env = {
        "WATCHDOG_DATABASE__URL": "postgresql+psycopg://wd:pw@127.0.0.1:9/app",  # discard port
        "WATCHDOG_DATABASE__TIMEOUT": "2",
        "WATCHDOG_API_TOKEN": "t",
    }
    result = ctl(watchdogctl, "config", "check", env=env)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "pw@" not in result.stderr


def test_audit_since_an_iso_time(watchdogctl: str, config: Path) -> None:
    assert ctl(watchdogctl, "--config", str(config), "run", "--once").returncode == 0
    every = ctl(
        watchdogctl, "--config", str(config), "audit", "--json", "--since", "2000-01-01T00:00:00Z"
    )
    assert every.returncode == 0, every.stderr
    assert json.loads(every.stdout)
    none = ctl(watchdogctl, "--config", str(config), "audit", "--json", "--since", "2999-01-01")
    assert json.loads(none.stdout) == []


def test_operator_commands_print_human_text_and_log_lines_only_when_verbose(
    watchdogctl: str, config: Path
) -> None:
    c = str(config)
    paused = ctl(watchdogctl, "--config", c, "pause", "healthy", "--for", "1h", "--reason", "x")
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.startswith("paused healthy until ")
    assert len(paused.stdout.splitlines()) == 1
    assert paused.stderr == ""  # no audit event, no log line

    resumed = ctl(watchdogctl, "--config", c, "--verbose", "resume", "healthy")
    assert resumed.stdout == "resumed healthy\n"
    (event,) = (json.loads(line) for line in resumed.stderr.splitlines())
    assert (event["event"], event["action"], event["instance"]) == ("audit", "resumed", "healthy")


def test_a_daemon_logs_json_lines_only_on_stdout(watchdogctl: str, config: Path) -> None:
    ran = ctl(watchdogctl, "--config", str(config), "run", "--once")
    assert ran.returncode == 0, ran.stderr
    assert ran.stderr == ""
    events = [json.loads(line) for line in ran.stdout.splitlines()]
    loggers = {e["logger"] for e in events}
    assert "watchdog" in loggers  # structlog's own events
    assert any(name.startswith("watchdog.") for name in loggers)  # the standard library's
    assert {"db_flag", "detected"} <= {e.get("action") for e in events}


def test_a_run_once_keeps_what_its_calls_taught_the_breakers(
    watchdogctl: str, tmp_path: Path, sqlite_url: str
) -> None:
    app = AppTable(sqlite_url)
    app.create()
    app.add("frozen", heartbeat_ago=200)
    app.dispose()
    with socket.socket() as s:  # a port nobody listens on: every call is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "watchdog.toml"
    path.write_text(f"""
[database]
url = "{sqlite_url}"
[api]
restart_url = "http://127.0.0.1:{port}/restart/{{id}}"
token_env = ""
""")
    assert ctl(watchdogctl, "--config", str(path), "run", "--once").returncode == 0
    shown = ctl(watchdogctl, "--config", str(path), "status").stdout
    assert "no calls yet" not in shown
    (api,) = [line.split() for line in shown.splitlines() if line.startswith("api ")]
    assert api[1:3] == ["closed", "1"]  # the refused call is on record


def test_a_wrong_mapping_is_named_by_explain_and_status_not_taken_for_a_missing_row(
    watchdogctl: str, config: Path
) -> None:
    env = {"WATCHDOG_INSTANCES__HEARTBEAT": "last_beat"}
    c = str(config)
    explained = ctl(watchdogctl, "--config", c, "explain", "healthy", env=env)
    one_line_error(explained, 2, "instances.heartbeat", "no column last_beat")
    assert "unknown instance" not in explained.stderr
    status = ctl(watchdogctl, "--config", c, "status", env=env)
    assert status.returncode == 2  # what it could show is shown, and the exit says it failed
    assert "no column last_beat" in status.stdout


def test_a_dry_run_needs_no_api_token_but_a_run_that_acts_does(
    watchdogctl: str, tmp_path: Path, sqlite_url: str
) -> None:
    app = AppTable(sqlite_url)
    app.create()
    app.add("frozen", heartbeat_ago=200)
    app.dispose()
    path = tmp_path / "watchdog.toml"  # the default ladder: api_restart with a token
    path.write_text(f'[database]\nurl = "{sqlite_url}"\n')
    dry = ctl(watchdogctl, "--config", str(path), "run", "--once", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    acting = ctl(watchdogctl, "--config", str(path), "run", "--once")
    one_line_error(acting, 2, "api.token_env", "WATCHDOG_API_TOKEN is not set")


# ------------------------------------------------------------ at the terminal


def on_a_terminal(
    watchdogctl: str, *args: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """Run `watchdogctl ARGS` with a pseudo-terminal as its stdout: (exit code, what the
    terminal showed, stderr)."""
    import pty
    import tempfile

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOG_")}
    full_env.pop("NO_COLOR", None)
    full_env.update(env or {})
    master, slave = pty.openpty()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([watchdogctl, *args], stdout=slave, stderr=err, env=full_env)
        os.close(slave)
        shown = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the other side is closed
                break
            if not chunk:
                break
            shown += chunk
        os.close(master)
        code = proc.wait(timeout=60)
        err.seek(0)
        return code, shown.decode().replace("\r\n", "\n"), err.read().decode()


def test_config_after_the_command_and_the_later_one_wins(
    watchdogctl: str, config: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.toml"
    other.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "missing.db"}"\n')
    after = ctl(watchdogctl, "status", "--json", "--config", str(config))
    assert after.returncode == 0, after.stderr
    assert [s["id"] for s in json.loads(after.stdout)] == ["frozen"]
    wins = ctl(watchdogctl, "--config", str(other), "status", "--config", str(config))
    assert wins.returncode == 0, wins.stderr
    loses = ctl(watchdogctl, "--config", str(config), "status", "--config", str(other))
    one_line_error(loses, 1, "missing.db does not exist")


def test_through_a_pipe_status_has_no_escape_codes(
    watchdogctl: str, config: Path, sqlite_url: str
) -> None:
    app = AppTable(sqlite_url)
    app.add("ev\x1b[2Jil", heartbeat_ago=300)
    app.dispose()
    for args in (["status"], ["status", "--json"]):
        result = ctl(watchdogctl, "--config", str(config), *args)
        assert result.returncode == 0, result.stderr
        assert "\x1b" not in result.stdout
    assert "ev\\x1b[2Jil" in ctl(watchdogctl, "--config", str(config), "status").stdout


def test_status_watch_through_a_pipe_ends_quietly_on_ctrl_c(watchdogctl: str, config: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOG_")}
    proc = subprocess.Popen(
        [watchdogctl, "status", "--watch", "0.5", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    seen: list[str] = []
    for wanted in ("INSTANCE", "frozen", "watchdogctl status at "):  # a second frame began
        while not seen or not seen[-1].startswith(wanted):
            seen.append(proc.stdout.readline())
            assert seen[-1], f"watchdogctl exited: {proc.communicate(timeout=30)}"
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert err == ""  # no traceback, no "aborted"
    shown = "".join(seen) + rest
    assert shown.startswith("watchdogctl status at ")
    assert ", every 0.5s, Ctrl-C to quit\n" in shown
    assert "\x1b" not in shown
    assert "\n\nwatchdogctl status at " in shown


def test_on_a_terminal_status_is_coloured_unless_no_color(watchdogctl: str, config: Path) -> None:
    code, shown, err = on_a_terminal(watchdogctl, "--config", str(config), "status")
    assert code == 0, err
    assert "\x1b[31m" in shown  # unhealthy, no daemon acting
    code, shown, err = on_a_terminal(
        watchdogctl, "--config", str(config), "status", env={"NO_COLOR": "1"}
    )
    assert code == 0, err
    assert "\x1b" not in shown
    code, shown, err = on_a_terminal(watchdogctl, "--config", str(config), "status", "--json")
    assert code == 0, err
    assert "\x1b" not in shown


def test_run_once_summarises_on_a_terminal_only(watchdogctl: str, config: Path) -> None:
    piped = ctl(watchdogctl, "--config", str(config), "run", "--once", "--dry-run")
    assert piped.returncode == 0, piped.stderr
    for line in piped.stdout.splitlines():
        json.loads(line)  # scripts keep their JSON
    code, shown, err = on_a_terminal(watchdogctl, "--config", str(config), "run", "--once")
    assert code == 0, err
    assert err == ""
    summary = shown[shown.index("\nrun --once (") + 1 :].splitlines()
    assert summary[1:] == [
        "  found: 2 rows, 2 monitored, 1 unhealthy, 0 unjudgeable",
        "  incidents: 1 opened, 0 resolved, 0 exhausted, 0 dismissed",
        "  db_flag: ok 1 (frozen)",
        "  brake: released",
    ]
