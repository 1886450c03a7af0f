"""Reading the configuration: a TOML file, then `WATCHDOG_<SECTION>__<KEY>` variables over
it, validated into `Settings`; one-line errors naming the key and where to fix it; the
token variables checked at start; the effective configuration shown with secrets masked."""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import (
    ValidationError,
)
from pydantic_core import ErrorDetails

from watchdog.config.sections import CONFIG_ENV, ENV_PREFIX, Settings
from watchdog.core.errors import ConfigError
from watchdog.core.model import Action
from watchdog.masking import check_token, mask_url, mask_urls_in, mask_webhook


def load_settings(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    require_secrets: bool = False,
) -> Settings:
    """Read the TOML file (if any), overlay the environment, validate. Raises ConfigError."""
    env = os.environ if environ is None else environ
    path = path if path is not None else env.get(CONFIG_ENV)
    raw = _read_toml(Path(path)) if path else {}
    _overlay_env(raw, env)
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors()[0], path)) from None
    if require_secrets:
        _check_secrets(settings, env)
    return settings


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} not found; pass --config PATH or create it"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}; fix the syntax") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None


def _overlay_env(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    sections = set(Settings.model_fields)
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        if section not in sections:
            raise ConfigError(
                f"environment variable {name}: there is no section [{section}]; "
                f"known sections: {', '.join(sorted(sections))}"
            )
        target = raw.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"config key {section} must be a table like [{section}]")
        target[key] = _parse_env_value(value)


def _parse_env_value(value: str) -> Any:
    """Numbers, booleans and lists as JSON; anything else as the plain string."""
    try:
        return json.loads(value)
    except ValueError:
        return value


def _describe(error: ErrorDetails, path: str | Path | None) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    env_name = ENV_PREFIX + "__".join(str(p).upper() for p in error["loc"][:2])
    where = f"{path} or {env_name}" if path else env_name
    if error["type"] == "extra_forbidden":
        return f"config error: {key}: unknown key; check its spelling (see README, Configure)"
    got = error.get("input")
    if isinstance(got, str):
        got = mask_urls_in(got)  # a URL in the message must not carry its password
    shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
    msg = error["msg"].removeprefix("Value error, ")
    return f"config error: {key}: {msg}{shown}; fix it in {where}"


def _check_secrets(settings: Settings, env: Mapping[str, str]) -> None:
    """Every token a configured part will send or want: set, and fit for a header."""
    if Action.API_RESTART in settings.escalation.actions():
        bearer_token("api.token_env", settings.api.token_env, env)
    if settings.health.enabled:
        bearer_token("health.token_env", settings.health.token_env, env)
    for n, sink in enumerate(settings.alerts.sinks):
        bearer_token(f"alerts.sinks.{n}.token_env", sink.token_env, env)


def bearer_token(
    key: str, variable: str, env: Mapping[str, str] | None = None, *, required: bool = True
) -> str | None:
    """The token in environment variable `variable`, which setting `key` names (None when
    it names none, or, not `required`, when it is unset: a dry run sends nothing). Unset
    when required, empty or unfit for a header: a ConfigError naming the key."""
    if not variable:
        return None
    token = (os.environ if env is None else env).get(variable)
    if not token and not required:
        return None
    if not token:
        raise ConfigError(
            f"config error: {key}: environment variable {variable} is not set; "
            f'export the token in it, or set {key.rpartition(".")[2]} = "" for none'
        )
    try:
        check_token(token, variable)
    except ValueError as exc:
        raise ConfigError(f"config error: {key}: {exc}") from None
    return token


# ----------------------------------------------------------------------------- display


def redacted(settings: Settings, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The effective configuration as plain data, with every secret masked."""
    env = os.environ if env is None else env
    data = settings.model_dump(mode="json")
    data["database"]["url"] = mask_url(settings.database.url)
    data["process"]["supervisor_url"] = mask_url(settings.process.supervisor_url)
    token_env = settings.api.token_env
    data["api"]["token"] = "(set)" if token_env and env.get(token_env) else "(unset)"
    for sink in data["alerts"]["sinks"]:
        sink["url"] = mask_webhook(sink["url"])  # a webhook URL is itself a credential
    return data
