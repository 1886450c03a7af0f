"""Configuration: defaults from DESIGN.md, TOML plus environment, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from watchdog.actions.command import CommandRestart
from watchdog.config import load_settings, redacted
from watchdog.core.errors import ConfigError
from watchdog.core.model import Action
from watchdog.wiring import api_token, check_backends, process_backend


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "watchdog.toml"
    path.write_text(text)
    return path


def test_defaults_are_the_seed_numbers() -> None:
    settings = load_settings(None, {})
    assert settings.database.url == "sqlite:///watchdog.db"
    assert settings.database.timeout == 5.0
    assert settings.detection.interval == 5.0
    assert settings.detection.stale_after == 90.0
    assert settings.detection.connecting_after == 120.0
    assert settings.api.timeout == 10.0
    assert settings.process.timeout == 30.0
    rules = settings.escalation.rules()
    assert [(s.action, s.attempts, s.settle) for s in rules.ladder] == [
        (Action.API_RESTART, 2, 30.0),
        (Action.DB_FLAG, 3, 30.0),
        (Action.PROCESS_RESTART, None, 120.0),
    ]
    assert rules.max_attempts == 10
    assert rules.backoff_cap == 300.0
    assert rules.reopen_window == 600.0


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[detection]\ninterval = 3.0\nstale_after = 60\n")
    env = {
        "WATCHDOG_DETECTION__INTERVAL": "2.5",
        "WATCHDOG_DETECTION__IGNORED_STATUSES": '["BANNED"]',
        "WATCHDOG_DATABASE__URL": "postgresql+psycopg://wd@db/app",
        "WATCHDOG_API_TOKEN": "not-a-section-key",
    }
    settings = load_settings(path, env)
    assert settings.detection.interval == 2.5
    assert settings.detection.stale_after == 60.0
    assert settings.detection.ignored_statuses == ("BANNED",)
    assert settings.database.url.startswith("postgresql")


def test_config_path_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "[detection]\nstale_after = 42\n")
    assert load_settings(None, {"WATCHDOG_CONFIG": str(path)}).detection.stale_after == 42


@pytest.mark.parametrize(
    ("text", "env", "names"),
    [
        ("[detection]\nintervall = 5\n", {}, "detection.intervall: unknown key"),
        ("[detection]\ninterval = 'soon'\n", {}, "detection.interval"),
        ("[detection]\ninterval = 0\n", {}, "detection.interval"),
        ("[detection]\nstale_after = -1\n", {}, "detection.stale_after"),
        ("[escalation]\nladder = []\n", {}, "escalation.ladder"),
        ("[escalation]\nladder = [{ action = 'reboot' }]\n", {}, "escalation.ladder.0.action"),
        (
            "[escalation]\nladder = [{ action = 'db_flag' }, { action = 'api_restart' }]\n",
            {},
            "escalation.ladder",
        ),
        ("[api]\nrestart_url = 'http://app/restart'\n", {}, "api.restart_url: must contain {id}"),
        ("[process]\nbackend = 'pm2'\n", {}, "process.backend"),
        ("[process]\ncommand = []\n", {}, "process.command"),
        ("[process]\npid_command = []\n", {}, "process.pid_command: must be a non-empty"),
        ("[process]\npid_command = ['']\n", {}, "process.pid_command"),
        ("", {"WATCHDOG_PROCESS__PID_COMMAND": "pm2"}, "WATCHDOG_PROCESS__PID_COMMAND"),
        ("[nonsense]\nx = 1\n", {}, "nonsense: unknown key"),
        ("", {"WATCHDOG_DETECTON__INTERVAL": "1"}, "WATCHDOG_DETECTON__INTERVAL"),
        ("", {"WATCHDOG_DETECTION__INTERVAL": "0"}, "WATCHDOG_DETECTION__INTERVAL"),
        ("[detection\n", {}, "not valid TOML"),
        ("[detection]\ninterval = 100\n", {}, "must not exceed detection.stale_after"),
        (
            "[process]\ntimeout = 5\n",
            {},
            "process.stop_wait: must be shorter than process.timeout (5) (got 10.0); fix it in",
        ),
    ],
)
def test_errors_are_one_line_naming_the_key(
    tmp_path: Path, text: str, env: dict[str, str], names: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text), env)
    message = str(caught.value)
    assert names in message
    assert "\n" not in message


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml not found"):
        load_settings(tmp_path / "nope.toml", {})


def test_an_unset_token_variable_is_an_error_only_when_the_api_rung_is_used(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match="WATCHDOG_API_TOKEN is not set"):
        load_settings(None, {}, require_secrets=True)
    assert load_settings(None, {"WATCHDOG_API_TOKEN": "t"}, require_secrets=True)
    no_api = write(tmp_path, "[escalation]\nladder = [{ action = 'db_flag' }]\n")
    assert load_settings(no_api, {}, require_secrets=True)
    no_auth = write(tmp_path, "[api]\ntoken_env = ''\n")
    assert api_token(load_settings(no_auth, {}, require_secrets=True)) is None


@pytest.mark.parametrize(
    ("toml", "key", "variable"),
    [
        (
            "[health]\nenabled = true\ntoken_env = 'HEALTH_TOKEN'\n",
            "health.token_env",
            "HEALTH_TOKEN",
        ),
        (
            "[[alerts.sinks]]\nname = 'ops'\nurl = 'https://hooks.example/x'\n"
            "token_env = 'HOOK_TOKEN'\n",
            "alerts.sinks.0.token_env",
            "HOOK_TOKEN",
        ),
    ],
)
def test_every_token_variable_is_checked_at_start_by_one_rule(
    tmp_path: Path, toml: str, key: str, variable: str
) -> None:
    path = write(tmp_path, "[api]\ntoken_env = ''\n" + toml)
    with pytest.raises(
        ConfigError, match=rf"^config error: {key}: environment variable {variable} is not set"
    ):
        load_settings(path, {}, require_secrets=True)
    with pytest.raises(
        ConfigError, match=rf"^config error: {key}: the token in {variable} must be visible ASCII"
    ) as bad:
        load_settings(path, {variable: "tok\r\nX-Evil: 1"}, require_secrets=True)
    assert "Evil" not in str(bad.value)  # never echoed
    assert load_settings(path, {variable: "tok-1"}, require_secrets=True)


def test_secrets_never_appear_in_the_effective_configuration() -> None:
    env = {
        "WATCHDOG_DATABASE__URL": "postgresql+psycopg://wd:hunter2@db:5432/app",
        "WATCHDOG_PROCESS__SUPERVISOR_URL": "http://admin:s3cret@127.0.0.1:9001",
        "WATCHDOG_API_TOKEN": "tok-123",
    }
    settings = load_settings(None, env)
    shown = repr(redacted(settings, env))
    for secret in ("hunter2", "s3cret", "tok-123"):
        assert secret not in shown
    assert "wd:***@db" in shown
    assert "'token': '(set)'" in shown


def test_a_bad_url_error_does_not_echo_its_password() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {"WATCHDOG_DATABASE__URL": "mysql://u:hunter2@db/x"})
    assert "hunter2" not in str(caught.value)
    assert "database.url" in str(caught.value)


def test_webhook_urls_are_masked_like_secrets(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[alerts]\nsinks = [ { name = 'ops', kind = 'slack', "
        "url = 'https://hooks.slack.com/services/T0/B0/s3cr3t' } ]\n",
    )
    shown = repr(redacted(load_settings(path, {}), {}))
    assert "s3cr3t" not in shown
    assert "https://hooks.slack.com/***" in shown


@pytest.mark.parametrize(
    ("text", "names"),
    [
        (
            "[alerts]\nsinks = [ { name = 'x', kind = 'pager', url = 'http://h' } ]\n",
            "alerts.sinks.0.kind",
        ),
        ("[alerts]\nsinks = [ { name = 'x', url = 'ftp://h' } ]\n", "alerts.sinks.0.url"),
        ("[health]\nport = 0\n", "health.port"),
        ("[breaker]\nmode = 'sometimes'\n", "breaker.mode"),
        ("[safety]\nbrake_fraction = 1.5\n", "safety.brake_fraction"),
    ],
)
def test_new_sections_validate_too(tmp_path: Path, text: str, names: str) -> None:
    with pytest.raises(ConfigError, match=names.replace(".", r"\.")):
        load_settings(write(tmp_path, text), {})


def test_pid_command_is_optional_and_reaches_the_command_backend(tmp_path: Path) -> None:
    assert load_settings(None, {}).process.pid_command is None
    text = "[process]\nbackend = 'command'\npid_command = ['pm2', 'pid', '{process}']\n"
    settings = load_settings(write(tmp_path, text), {})
    assert settings.process.pid_command == ("pm2", "pid", "{process}")
    backend = process_backend(settings)
    assert isinstance(backend, CommandRestart)
    assert backend.pid_argv_for("api-1", "i-1") == ["pm2", "pid", "api-1"]
    env = {"WATCHDOG_PROCESS__PID_COMMAND": '["pm2", "pid", "{id}"]'}
    assert load_settings(None, env).process.pid_command == ("pm2", "pid", "{id}")


def test_an_unknown_pid_command_placeholder_stops_config_check(tmp_path: Path) -> None:
    text = "[process]\nbackend = 'command'\npid_command = ['pm2', 'pid', '{name}']\n"
    settings = load_settings(write(tmp_path, text), {})
    with pytest.raises(ConfigError) as caught:
        check_backends(settings)
    message = str(caught.value)
    assert message.startswith("config error: process.")
    assert "pid_command argument '{name}' has unknown placeholder(s) {name}" in message
    assert "\n" not in message
