"""`watchdogctl` at the terminal: `--config` and `--verbose` after the command, colour only
on a terminal without NO_COLOR, `status --watch`, and the `run --once` summary. The real
CLI in-process (click's runner) on real SQLite files; a terminal is simulated by making
`render.is_terminal` say yes, the one place that asks."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from tests.apptable import AppTable
from watchdog import cli, render, wiring
from watchdog.cli import inspect as inspect_cli

HOSTILE = "evil\x1b]0;pwned\x07\x1b[2J"  # sets the title and clears the screen, if let through
ESCAPED = "evil\\x1b]0;pwned\\x07\\x1b[2J"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("WATCHDOG_") or name == "NO_COLOR":
            monkeypatch.delenv(name)


def write_config(path: Path, url: str, *, timeout: float = 5.0) -> Path:
    path.write_text(f"""
[database]
url = "{url}"
timeout = {timeout}
[escalation]
ladder = [ {{ action = "db_flag" }} ]
""")
    return path


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli.cli, list(args), env=env, catch_exceptions=False)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "app.db"
    app = AppTable(f"sqlite:///{path}")
    app.create()
    app.add("frozen", heartbeat_ago=200)
    app.add("healthy", heartbeat_ago=1)
    app.add(HOSTILE, heartbeat_ago=300)
    app.dispose()
    return path


@pytest.fixture
def config(tmp_path: Path, db_path: Path) -> Path:
    path = write_config(tmp_path / "watchdog.toml", f"sqlite:///{db_path}", timeout=0.5)
    upgraded = invoke("--config", str(path), "db", "upgrade")
    assert upgraded.exit_code == 0, upgraded.output
    return path


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """stdout is a terminal, as far as `watchdogctl` can tell."""
    monkeypatch.setattr(render, "is_terminal", lambda _stream: True)


# ----------------------------------------------------------------- --config after


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """Another configuration: a database file that does not exist."""
    return write_config(tmp_path / "elsewhere.toml", f"sqlite:///{tmp_path / 'nowhere.db'}")


def test_config_is_taken_after_the_command_too(config: Path) -> None:
    before = invoke("--config", str(config), "status", "--json")
    after = invoke("status", "--json", "--config", str(config))
    assert before.exit_code == after.exit_code == 0, after.output
    assert [r["id"] for r in json.loads(after.stdout)] == [
        r["id"] for r in json.loads(before.stdout)
    ]


def test_given_in_both_places_the_one_after_the_command_wins(config: Path, elsewhere: Path) -> None:
    wins = invoke("--config", str(elsewhere), "status", "--json", "--config", str(config))
    assert wins.exit_code == 0, wins.output
    assert "frozen" in wins.stdout

    loses = invoke("--config", str(config), "status", "--config", str(elsewhere))
    assert loses.exit_code == 1
    assert "nowhere.db does not exist" in loses.stderr


def test_the_config_after_the_command_wins_over_the_environment(
    config: Path, elsewhere: Path
) -> None:
    result = invoke("status", "--config", str(config), env={"WATCHDOG_CONFIG": str(elsewhere)})
    assert result.exit_code == 0, result.output


def test_every_command_takes_them_nested_and_steering_ones_too(config: Path) -> None:
    assert invoke("db", "upgrade", "--config", str(config)).exit_code == 0
    checked = invoke("config", "check", "--offline", "--config", str(config))
    assert checked.exit_code == 0, checked.output
    assert json.loads(checked.stdout)["escalation"]["ladder"][0]["action"] == "db_flag"
    shown = invoke("show", "frozen", "--config", str(config))
    assert shown.exit_code == 0, shown.output
    for name, command in cli.cli.commands.items():
        options = {o for p in command.params for o in getattr(p, "opts", [])}
        assert {"--config", "--verbose", "-v"} <= options, name


def test_verbose_after_the_command_adds_the_log_lines_on_stderr(config: Path) -> None:
    quiet = invoke("--config", str(config), "pause", "healthy", "--for", "1h", "--reason", "x")
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stderr == ""
    loud = invoke("resume", "healthy", "--config", str(config), "-v")
    assert loud.exit_code == 0, loud.output
    assert loud.stdout == "resumed healthy\n"
    (event,) = (json.loads(line) for line in loud.stderr.splitlines())
    assert (event["event"], event["action"], event["instance"]) == ("audit", "resumed", "healthy")


def test_the_help_says_which_config_wins() -> None:
    assert "wins over a --config before" in " ".join(invoke("status", "--help").stdout.split())
    assert "where it wins over this one" in " ".join(invoke("--help").stdout.split())


# ----------------------------------------------------------------- colour


class FakeStream:
    def __init__(self, tty: bool | None) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        if self.tty is None:
            raise ValueError("I/O operation on closed file")
        return self.tty


@pytest.mark.parametrize(
    ("tty", "environ", "expected"),
    [
        (True, {}, True),
        (True, {"NO_COLOR": ""}, True),  # no-color.org: set to a non-empty value
        (True, {"NO_COLOR": "1"}, False),
        (True, {"NO_COLOR": "0"}, False),  # any value
        (False, {}, False),  # a pipe, a file
        (None, {}, False),  # a closed stream
    ],
)
def test_one_function_decides_colour_from_the_stream_and_no_color(
    tty: bool | None, environ: dict[str, str], expected: bool
) -> None:
    assert render.colour_enabled(FakeStream(tty), environ) is expected
    assert render.is_terminal(FakeStream(tty)) is bool(tty)


def test_a_stream_without_isatty_is_not_a_terminal() -> None:
    assert render.is_terminal(object()) is False
    assert render.colour_enabled(object(), {}) is False


def test_status_on_a_terminal_is_coloured_and_table_values_stay_escaped(
    config: Path, terminal: None
) -> None:
    result = CliRunner().invoke(cli.cli, ["--config", str(config), "status"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "\x1b[31m" in out  # unhealthy, and no daemon acting, in red
    assert "\x1b[32m" in out  # healthy in green
    assert "\x1b[33m" in out  # held in yellow
    assert HOSTILE not in out
    assert "\x07" not in out
    assert "\x1b]" not in out
    assert ESCAPED in out
    # The same text as without colour, once the colour is taken out.
    plain = invoke("--config", str(config), "status", env={"NO_COLOR": "1"}).stdout
    assert "\x1b" not in plain
    assert _unstyled(out).splitlines()[2:] == plain.splitlines()[2:]  # the `as of` time moves


def test_no_color_and_json_have_no_colour_on_a_terminal(config: Path, terminal: None) -> None:
    no_color = invoke("--config", str(config), "status", env={"NO_COLOR": "yes"})
    assert no_color.exit_code == 0
    assert "\x1b" not in no_color.stdout
    as_json = invoke("--config", str(config), "status", "--json")
    assert as_json.exit_code == 0
    assert "\x1b" not in as_json.stdout
    assert HOSTILE in {r["id"] for r in json.loads(as_json.stdout)}  # JSON escapes it itself


def test_status_not_on_a_terminal_has_no_colour(config: Path) -> None:
    result = invoke("--config", str(config), "status")
    assert result.exit_code == 0
    assert "\x1b" not in result.stdout
    assert ESCAPED in result.stdout


def test_table_colours_a_cell_without_moving_the_columns() -> None:
    rows = [("a", "unhealthy", "x"), ("bb", "healthy", "y")]
    plain = render.table(("ID", "VERDICT", "Z"), rows, width=80)
    coloured = render.table(
        ("ID", "VERDICT", "Z"), rows, width=80, tones=lambda col, v: "bad" if col == 1 else None
    )
    assert coloured != plain
    assert _unstyled(coloured) == plain


def _unstyled(text: str) -> str:
    return click.unstyle(text)


# ----------------------------------------------------------------- status --watch


class Frames:
    """An injected sleep: runs `between[n]` after frame n (no waiting), then Ctrl-C."""

    def __init__(self, *between: Any) -> None:
        self.between = list(between)
        self.slept: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)
        if not self.between:
            raise KeyboardInterrupt
        self.between.pop(0)()


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many runtimes were opened (once for the whole watch, not once a frame)."""
    from watchdog.cli import base

    count: list[int] = []
    real = wiring.open_runtime

    def counting(*args: Any, **kwargs: Any) -> Any:
        count.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(base, "open_runtime", counting)
    return count


def test_watch_draws_frame_after_frame_through_a_pipe_until_ctrl_c(
    config: Path, monkeypatch: pytest.MonkeyPatch, opened: list[int]
) -> None:
    frames = Frames(lambda: None)
    monkeypatch.setattr(inspect_cli, "watch_sleep", frames)
    result = invoke("--config", str(config), "status", "--watch", "1.5")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # Ctrl-C: quietly, no traceback, no "aborted"
    assert frames.slept == [1.5, 1.5]
    out = result.stdout
    headers = [line for line in out.splitlines() if line.startswith("watchdogctl status at ")]
    assert len(headers) == 2
    assert headers[0].endswith("Z, every 1.5s, Ctrl-C to quit")
    assert out.count("fleet: 3 rows in instances") == 2
    assert "\n\nwatchdogctl status at " in out  # a blank line between frames
    assert "\x1b" not in out  # no clearing, no colour in a pipe
    assert opened == [1]


def test_watch_on_a_terminal_redraws_in_place(
    config: Path, monkeypatch: pytest.MonkeyPatch, terminal: None
) -> None:
    monkeypatch.setattr(inspect_cli, "watch_sleep", Frames(lambda: None))
    result = invoke("--config", str(config), "status", "--watch")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith(render.CLEAR_SCREEN + "watchdogctl status at ")
    assert out.count(render.CLEAR_SCREEN) == 2
    assert "every 2s, Ctrl-C to quit" in out  # the default
    assert "\x1b[31m" in out
    assert HOSTILE not in out


def test_a_database_that_does_not_answer_is_a_frame_not_the_end(
    config: Path, db_path: Path, monkeypatch: pytest.MonkeyPatch, opened: list[int]
) -> None:
    locker = sqlite3.connect(db_path, isolation_level=None)

    def lock() -> None:
        locker.execute("BEGIN EXCLUSIVE")  # nobody else reads until it ends

    def unlock() -> None:
        locker.execute("COMMIT")

    monkeypatch.setattr(inspect_cli, "watch_sleep", Frames(lock, unlock))
    try:
        result = invoke("--config", str(config), "status", "--watch", "0.5")
    finally:
        locker.close()
    assert result.exit_code == 0, result.output
    frames = result.stdout.split("\n\nwatchdogctl status at ")
    assert len(frames) == 3
    assert "fleet: 3 rows" in frames[0]
    assert "cannot read the database now: " in frames[1]
    assert "trying again in 0.5s" in frames[1]
    assert "fleet: 3 rows" not in frames[1]
    assert "fleet: 3 rows" in frames[2]  # back, on the same runtime
    assert opened == [1]


def test_watch_starts_while_the_database_does_not_answer(
    config: Path, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    locker = sqlite3.connect(db_path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    monkeypatch.setattr(inspect_cli, "watch_sleep", Frames(lambda: locker.execute("COMMIT")))
    try:
        result = invoke("--config", str(config), "status", "--watch")
    finally:
        locker.close()
    assert result.exit_code == 0, result.output
    first, second = result.stdout.split("\n\nwatchdogctl status at ")
    assert "cannot read the database now: " in first
    assert "fleet: 3 rows" in second


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["status", "--watch", "--json"], "--watch cannot be combined with --json"),
        (["status", "--json", "--watch", "5"], "--watch cannot be combined with --json"),
        (["status", "--watch", "0.1"], "0.1 is not in the range x>=0.5"),
    ],
)
def test_watch_mistakes_are_one_line_and_exit_2(
    config: Path,
    args: list[str],
    needle: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr("sys.argv", ["watchdogctl", "--config", str(config), *args])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    captured = capsys.readouterr()
    assert exited.value.code == 2
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert needle in captured.err
    assert captured.err.rstrip().endswith("see `watchdogctl status --help`")


# ----------------------------------------------------------------- run --once summary


def test_run_once_on_a_terminal_ends_with_a_summary_for_people(
    config: Path, terminal: None
) -> None:
    result = invoke("--config", str(config), "run", "--once")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("run --once (")))
    for line in lines[:start]:  # the log lines come first, JSON as ever
        json.loads(line)
    summary = lines[start:]
    assert summary[0].startswith("run --once (database clock ")
    assert "  found: 3 rows, 3 monitored, 2 unhealthy, 0 unjudgeable" in summary
    assert "  incidents: 2 opened, 0 resolved, 0 exhausted, 0 dismissed" in summary
    assert f"  db_flag: ok 2 ({ESCAPED}, frozen)" in summary
    assert "  brake: released" in summary
    assert "\x1b" not in "\n".join(summary)


def test_a_dry_run_summary_says_nothing_was_done(config: Path, terminal: None) -> None:
    result = invoke("--config", str(config), "run", "--once", "--dry-run")
    assert result.exit_code == 0, result.output
    summary = result.stdout[result.stdout.index("run --once --dry-run") :].splitlines()
    assert summary[0].startswith("run --once --dry-run: nothing was done")
    assert (
        "  incidents: 2 would be opened, 0 would be resolved, 0 would be exhausted, "
        in (summary[2])
    )
    assert f"  db_flag: would run on 2 ({ESCAPED}, frozen)" in summary
    audit = json.loads(invoke("--config", str(config), "audit", "--json").stdout)
    assert {r["outcome"] for r in audit if r["action"] != "leader_changed"} == {"skipped"}


def test_run_once_not_on_a_terminal_prints_its_json_lines_only(config: Path) -> None:
    result = invoke("--config", str(config), "run", "--once")
    assert result.exit_code == 0, result.output
    assert result.stdout
    for line in result.stdout.splitlines():
        json.loads(line)
    assert "run --once" not in result.stdout


def test_the_summary_names_ten_instances_and_counts_the_rest() -> None:
    from datetime import UTC, datetime

    from watchdog.core.model import AuditAction, AuditRow, Outcome
    from watchdog.engine.report import CycleReport

    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    rows = [
        AuditRow(i, now, f"i{i:02d}", AuditAction.API_RESTART, Outcome.FAILED, intent_id=100 + i)
        for i in range(12)
    ]
    rows.append(AuditRow(200, now, "slow", AuditAction.API_RESTART, Outcome.STARTED))
    report = CycleReport(now=now, unhealthy=13, monitored=20, brake=True)
    text = render.once_summary(report, rows, dry_run=False, code=0)
    assert "  found: 20 monitored, 13 unhealthy, 0 unjudgeable" in text
    assert (
        "api_restart: failed 12 (i00, i01, i02, i03, i04, i05, i06, i07, i08, i09, … 2 more)"
        in (text)
    )
    assert "; no outcome yet 1 (slow)" in text
    assert "  brake: ENGAGED" in text
    assert render.once_summary(None, [], dry_run=False, code=1).endswith(
        "the cycle failed (see the log lines above); no action was taken"
    )
    assert render.once_summary(None, [], dry_run=False, code=0).endswith(
        "another watchdog leads: this run took no action"
    )
