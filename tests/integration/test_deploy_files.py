"""The shipped deployment files agree with the code.

Every example configuration in deploy/config/ validates as the daemon would load it (secrets
required) and uses the backend its file name says; supervisord.conf passes supervisor's own
option parser; supervisord and systemd both wait longer for a stop than the watchdog's
graceful shutdown takes, so neither kills it between an action and its outcome.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import typing
from pathlib import Path
from typing import Any

import pytest
import supervisor.datatypes
import supervisor.options
from supervisor.datatypes import RestartUnconditionally
from supervisor.options import ServerOptions

from watchdog.actions.command import CommandRestart
from watchdog.actions.supervisor import SupervisorRestart
from watchdog.actions.systemd import SystemdRestart
from watchdog.config import DaemonSettings, ProcessSettings, load_settings
from watchdog.core.errors import ConfigError
from watchdog.wiring import process_backend

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "deploy" / "config").glob("*.toml"))
SUPERVISORD_CONF = ROOT / "supervisord.conf"
UNIT = ROOT / "systemd" / "watchdog.service"
ENV_INCLUDE = "/etc/watchdog/supervisor-env.conf"
TOKEN_ENV = "WATCHDOG_API_TOKEN"
SHUTDOWN_TIMEOUT = DaemonSettings().shutdown_timeout
BACKEND_CLASSES = {
    "supervisor": SupervisorRestart,
    "systemd": SystemdRestart,
    "command": CommandRestart,
}


# ----------------------------------------------------------------- example configurations


def test_every_process_backend_has_an_example() -> None:
    backends = typing.get_args(ProcessSettings.model_fields["backend"].annotation)
    assert {path.stem for path in EXAMPLES} == set(backends) == set(BACKEND_CLASSES)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_example_config_validates_with_its_backend(path: Path) -> None:
    settings = load_settings(path, environ={TOKEN_ENV: "token"}, require_secrets=True)

    assert settings.process.backend == path.stem
    assert settings.api.token_env == TOKEN_ENV
    # The backend can be built from it too (program/unit/command templates are valid).
    assert isinstance(process_backend(settings), BACKEND_CLASSES[path.stem])


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_example_config_needs_the_token_variable(path: Path) -> None:
    with pytest.raises(ConfigError, match=TOKEN_ENV):
        load_settings(path, environ={}, require_secrets=True)


def test_databases_of_the_examples() -> None:
    urls = {path.stem: load_settings(path, environ={}).database.url for path in EXAMPLES}
    assert urls["supervisor"].startswith("postgresql+psycopg://")
    assert urls["systemd"].startswith("postgresql+psycopg://")
    assert urls["command"].startswith("sqlite:////"), "an absolute SQLite path"


# ------------------------------------------------------------------------ supervisord.conf


@pytest.fixture
def watchdog_account(monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """User and group `watchdog` resolve to the current ones: they need not exist here."""
    real_uid, real_gid = supervisor.datatypes.name_to_uid, supervisor.datatypes.name_to_gid

    def name_to_uid(name: str) -> int:
        return os.getuid() if name == "watchdog" else int(real_uid(name))

    def name_to_gid(name: str) -> int:
        return os.getgid() if name == "watchdog" else int(real_gid(name))

    monkeypatch.setattr(supervisor.datatypes, "name_to_uid", name_to_uid)
    monkeypatch.setattr(supervisor.datatypes, "name_to_gid", name_to_gid)
    monkeypatch.setattr(supervisor.options, "name_to_uid", name_to_uid)
    return os.getuid(), os.getgid()


def _realize(path: Path) -> ServerOptions:
    """supervisord's own parse of `path`: what `supervisord -c path` checks before it runs."""
    options = ServerOptions()
    options.realize(args=["-c", str(path)], doc="", progname="supervisord")
    return options


def _program(options: ServerOptions, name: str) -> Any:
    groups = {group.name: group for group in options.process_group_configs}
    assert name in groups, f"supervisord.conf has no [program:{name}]"
    (program,) = groups[name].process_configs
    return program


def test_supervisord_conf_parses(watchdog_account: tuple[int, int]) -> None:
    options = _realize(SUPERVISORD_CONF)

    assert [g.name for g in options.process_group_configs] == ["watchdog"], "app is an example"
    watchdog = _program(options, "watchdog")
    assert shlex.split(watchdog.command) == _unit_exec_start(), "the same command as systemd"
    assert watchdog.uid == watchdog_account[0]
    assert watchdog.autostart is True
    assert watchdog.autorestart is RestartUnconditionally
    assert watchdog.stopsignal == signal.SIGTERM
    assert watchdog.stopwaitsecs > SHUTDOWN_TIMEOUT
    assert (watchdog.stopasgroup, watchdog.killasgroup) == (False, True)
    assert watchdog.startsecs > 0
    assert watchdog.redirect_stderr is True
    assert (watchdog.stdout_logfile, watchdog.stdout_logfile_maxbytes) == ("/dev/stdout", 0)
    assert TOKEN_ENV not in (watchdog.environment or {}), "the token is in the include only"


def test_supervisord_socket_is_the_watchdogs_default(watchdog_account: tuple[int, int]) -> None:
    options = _realize(SUPERVISORD_CONF)

    (server,) = options.server_configs
    assert server["family"] == socket.AF_UNIX
    assert server["chown"] == (0, watchdog_account[1]), "root:watchdog"
    assert server["chmod"] == 0o770
    assert f"unix://{server['file']}" == ProcessSettings().supervisor_url
    supervisor_example = load_settings(ROOT / "deploy" / "config" / "supervisor.toml", {})
    assert supervisor_example.process.supervisor_url == f"unix://{server['file']}"
    assert options.serverurl == f"unix://{server['file']}"


def test_supervisord_env_include_adds_the_token(
    watchdog_account: tuple[int, int], tmp_path: Path
) -> None:
    """The documented root-only include merges environment= into [program:watchdog]."""
    text = SUPERVISORD_CONF.read_text()
    assert text.count(f"files={ENV_INCLUDE}\n") == 1
    include = tmp_path / "supervisor-env.conf"
    include.write_text(f'[program:watchdog]\nenvironment={TOKEN_ENV}="s3cr%%et,x"\n')
    conf = tmp_path / "supervisord.conf"
    conf.write_text(text.replace(f"files={ENV_INCLUDE}", f"files={include}"))

    options = _realize(conf)

    assert options.parse_warnings == []
    watchdog = _program(options, "watchdog")
    assert watchdog.environment == {TOKEN_ENV: "s3cr%et,x"}
    assert watchdog.stopwaitsecs > SHUTDOWN_TIMEOUT, "the rest of the section is kept"


# --------------------------------------------------------------------------- systemd unit


def _unit_values(text: str) -> dict[str, str]:
    """`Section.Key` -> value of the last assignment (later lines override earlier ones)."""
    values: dict[str, str] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _eq, value = line.partition("=")
        values[f"{section}.{key.strip()}"] = value.strip()
    return values


_TIME_UNITS = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}


def _seconds(timespan: str) -> float:
    """A systemd time span such as `45`, `45s` or `1min 30s`, in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", timespan)
    assert parts, f"not a time span: {timespan!r}"
    return sum(float(number) * _TIME_UNITS[unit] for number, unit in parts)


def _unit_exec_start() -> list[str]:
    return shlex.split(_unit_values(UNIT.read_text())["Service.ExecStart"])


def test_seconds_parser() -> None:
    assert [_seconds(s) for s in ("45", "45s", "1min 30s", "2m")] == [45, 45, 90, 120]


def test_unit_waits_longer_than_the_graceful_shutdown() -> None:
    values = _unit_values(UNIT.read_text())

    assert _seconds(values["Service.TimeoutStopSec"]) > SHUTDOWN_TIMEOUT
    assert values["Service.KillSignal"] in ("SIGTERM", "TERM")
