"""Builds the adapters from the settings and closes them again: the only place that
imports both the pure core and the adapters (besides the CLI that calls it).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from sqlalchemy.engine import make_url

from watchdog.actions.api import ApiRestart, HttpClients, check_api
from watchdog.actions.command import CommandRestart
from watchdog.actions.db_flag import DbFlag
from watchdog.actions.systemd import SystemdRestart
from watchdog.config import Settings
from watchdog.core.errors import ConfigError, StoreError
from watchdog.core.model import Action
from watchdog.core.ports import Recovery
from watchdog.resilience import RetryingRecovery
from watchdog.store.audit import AuditSink, ignore_audit
from watchdog.store.database import Database
from watchdog.store.instances import SqlInstanceStore
from watchdog.store.ledger import REVISION, SqlLedger


@dataclass(frozen=True, slots=True)
class Runtime:
    settings: Settings
    db: Database
    instances: SqlInstanceStore
    ledger: SqlLedger


def sqlite_path(url: str) -> Path | None:
    """The file behind an SQLite URL, or None for other databases and in-memory SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    if parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def require_database_file(settings: Settings) -> None:
    """SQLite would silently create a missing file; say what is wrong instead."""
    path = sqlite_path(settings.database.url)
    if path is not None and not path.exists():
        raise StoreError(
            f"database file {path} does not exist; check [database] url "
            "(or WATCHDOG_DATABASE__URL) and the working directory"
        )


@asynccontextmanager
async def open_runtime(
    settings: Settings, emit: AuditSink = ignore_audit
) -> AsyncIterator[Runtime]:
    require_database_file(settings)
    # A connection for each action in flight to record its outcome, and some for the cycle:
    # a storm's outcome writes must not queue the next detection query behind them.
    pool = settings.daemon.max_concurrent_actions + 4
    db = Database(settings.database.url, settings.database.timeout, pool_size=pool)
    try:
        instances = SqlInstanceStore(
            db,
            settings.instances,
            settings.detection.rules(),
            lookahead=settings.detection.interval + 1.0,
            # The monitored count is exact whenever the brake could turn on it.
            exact_share=settings.safety.brake_fraction / 2,
            ledger_revision=REVISION,
        )
        yield Runtime(settings, db, instances, SqlLedger(db, emit))
    finally:
        await db.dispose()


@asynccontextmanager
async def open_recoveries(runtime: Runtime) -> AsyncIterator[dict[Action, Recovery]]:
    """The recovery backends the ladder uses, with their HTTP clients closed afterwards."""
    settings = runtime.settings
    actions = settings.escalation.actions()
    async with AsyncExitStack() as stack:
        http: HttpClients | None = None
        if Action.API_RESTART in actions:
            http = HttpClients([await stack.enter_async_context(c) for c in _api_clients(settings)])
        attempts = settings.safety.retry_attempts
        yield {
            action: RetryingRecovery(_build(action, settings, runtime, http), attempts=attempts)
            for action in actions
        }


def _api_clients(settings: Settings) -> list[httpx.AsyncClient]:
    """One client per concurrent action (see HttpClients), all on one TLS context."""
    tls = api_tls(settings.api.restart_url)
    return [
        httpx.AsyncClient(timeout=settings.api.timeout, verify=tls)
        for _ in range(settings.daemon.max_concurrent_actions)
    ]


def api_tls(url: str) -> ssl.SSLContext:
    """TLS for the restart API's clients: verified against the CA bundle for https. Over
    plain http (redirects are not followed) they never speak TLS, so they get a context
    without the bundle (which costs resident memory) that still verifies: any handshake would
    fail rather than go unverified."""
    if urlsplit(url).scheme.lower() == "http":
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    return httpx.create_ssl_context()


def _build(
    action: Action, settings: Settings, runtime: Runtime, http: HttpClients | None
) -> Recovery:
    if action is Action.API_RESTART:
        assert http is not None  # made by open_recoveries whenever the ladder has the rung
        api = settings.api
        return ApiRestart(http, api.restart_url, api.method, settings.api_token(), api.timeout)
    if action is Action.DB_FLAG:
        return DbFlag(runtime.instances, settings.database.timeout)
    return _process_backend(settings)


def breaker_names(settings: Settings) -> dict[Action, str]:
    """The circuit breaker of each rung, by the name it is stored and shown under."""
    return {
        Action.API_RESTART: "api",
        Action.DB_FLAG: "db_flag",
        Action.PROCESS_RESTART: settings.process.backend,
    }


def check_backends(settings: Settings) -> None:
    """Every recovery backend the ladder uses, checked as `run` builds it but without any
    I/O: a bad template, URL or token stops `config check` and `run` with one line naming
    the key (exit 2), not a failure later."""
    actions = settings.escalation.actions()
    if Action.API_RESTART in actions:
        api = settings.api
        try:
            check_api(api.restart_url, api.method, settings.api_token(), api.timeout)
        except ValueError as exc:
            raise ConfigError(f"config error: {exc}") from None
    if Action.PROCESS_RESTART in actions:
        _process_backend(settings)


def _process_backend(settings: Settings) -> Recovery:
    process = settings.process
    try:
        if process.backend == "supervisor":
            # Imported where chosen: the XML-RPC stack is resident memory nobody else needs.
            from watchdog.actions.supervisor import SupervisorRestart

            return SupervisorRestart(
                process.supervisor_url, process.program, process.timeout, process.stop_wait
            )
        if process.backend == "systemd":
            return SystemdRestart(process.unit, process.timeout, process.user)
        return CommandRestart(process.command, process.program, process.timeout)
    except ValueError as exc:
        key = {"supervisor": "program", "systemd": "unit"}.get(process.backend, "command")
        text = str(exc)
        if text.startswith("supervisor url"):
            key = "supervisor_url"
        elif "stop_wait" in text:
            key = "stop_wait"
        raise ConfigError(f"config error: process.{key}: {text}") from None


def process_backend(settings: Settings) -> Recovery | None:
    """The configured process backend, when the ladder has a process rung."""
    if Action.PROCESS_RESTART not in settings.escalation.actions():
        return None
    return _process_backend(settings)


def login_user() -> str:
    """Who is at the keyboard, for the audit's actor column."""
    for name in ("SUDO_USER", "USER", "LOGNAME"):
        if os.environ.get(name):
            return os.environ[name]
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return "unknown"
