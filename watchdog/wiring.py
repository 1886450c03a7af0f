"""The composition root: builds every adapter from the settings, and closes them again,
for `run`, the operator's commands and `/status` alike (nothing else constructs a store,
a lock or a backend)."""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from sqlalchemy.engine import make_url

from watchdog.actions.api import ApiRestart, HttpClients, HttpxClient, check_api
from watchdog.actions.command import CommandRestart
from watchdog.actions.db_flag import DbFlag
from watchdog.actions.systemd import SystemdRestart
from watchdog.actions.transport import AsyncioTransport, DirectClient, proxies_in_environment
from watchdog.alerts.sender import AlertFeeder, AlertSender
from watchdog.config import Settings, bearer_token
from watchdog.core.breaker import BreakerRules
from watchdog.core.errors import ConfigError, StoreError
from watchdog.core.model import Action
from watchdog.core.pacing import TokenBucket
from watchdog.core.ports import GenerationSource, Recovery
from watchdog.core.safety import SafetyRules
from watchdog.daemon.leadership import LeaderLock
from watchdog.engine.breakers import BackendBreakers
from watchdog.engine.guards import Guards
from watchdog.engine.hosts import Hosts
from watchdog.resilience import RetryingRecovery
from watchdog.store.audit import AuditSink, ignore_audit
from watchdog.store.breakers import SqlBreakerStore
from watchdog.store.database import Database
from watchdog.store.fleet import SqlFleetState
from watchdog.store.instances import SqlInstanceStore
from watchdog.store.ledger import SqlLedger
from watchdog.store.locks import PgAdvisoryLock, SqliteFileLock
from watchdog.store.nodes import SqlNodes
from watchdog.store.retention import Keep, SqlRetention
from watchdog.store.state import REVISION


@dataclass(frozen=True, slots=True)
class Runtime:
    """The stores on one database, built once per process."""

    settings: Settings
    db: Database
    instances: SqlInstanceStore
    ledger: SqlLedger
    nodes: SqlNodes
    fleet: SqlFleetState
    breaker_store: SqlBreakerStore


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
        ledger = SqlLedger(db, emit)
        fleet = SqlFleetState(db, ledger)
        yield Runtime(settings, db, instances, ledger, SqlNodes(db), fleet, SqlBreakerStore(db))
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


def _api_clients(settings: Settings) -> list[DirectClient] | list[HttpxClient]:
    """One client per concurrent action (see HttpClients), all on one TLS context: direct
    ones on the asyncio transport, unless the environment names a proxy. Then httpx's own
    clients make the calls: only they know which URLs it carries (and a client given a
    transport of ours would ignore it)."""
    tls = api_tls(settings.api.restart_url)
    n = settings.daemon.max_concurrent_actions
    if not proxies_in_environment():
        return [DirectClient(AsyncioTransport(tls)) for _ in range(n)]
    timeout = settings.api.timeout
    return [HttpxClient(httpx.AsyncClient(timeout=timeout, verify=tls)) for _ in range(n)]


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
        return ApiRestart(http, api.restart_url, api.method, api_token(settings), api.timeout)
    if action is Action.DB_FLAG:
        return DbFlag(runtime.instances, settings.database.timeout)
    return _process_backend(settings)


def pacers(settings: Settings) -> dict[Action, TokenBucket]:
    """The pace of each rung that has one (`[api] rate`, `[process] rate`; 0: none)."""
    paces = {
        Action.API_RESTART: (settings.api.rate, settings.api.burst),
        Action.PROCESS_RESTART: (settings.process.rate, settings.process.burst),
    }
    return {action: TokenBucket(rate, burst) for action, (rate, burst) in paces.items() if rate}


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
            check_api(api.restart_url, api.method, api_token(settings), api.timeout)
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
        return CommandRestart(
            process.command, process.program, process.timeout, pid_command=process.pid_command
        )
    except ValueError as exc:
        key = {"supervisor": "program", "systemd": "unit"}.get(process.backend, "command")
        text = str(exc)
        if text.startswith("supervisor url"):
            key = "supervisor_url"
        elif text.startswith("pid_command"):
            key = "pid_command"
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


# ----------------------------------------------------------- what the daemon adds


def safety_rules(settings: Settings) -> SafetyRules:
    return SafetyRules(**settings.safety.model_dump(exclude={"retry_attempts"}))


def guards(runtime: Runtime, *, startup_grace: bool) -> Guards:
    settings = runtime.settings
    grace = settings.detection.grace
    return Guards(
        runtime.ledger,
        runtime.fleet,
        safety_rules(settings),
        grace=settings.detection.stale_after if grace is None else grace,
        startup_grace=startup_grace,
    )


def hosts(runtime: Runtime, recoveries: Mapping[Action, Recovery]) -> Hosts | None:
    """What the process rung knows of the processes hosting instances (None: no rung)."""
    recovery = recoveries.get(Action.PROCESS_RESTART)
    if recovery is None:
        return None
    settings = runtime.settings
    backend = recovery.inner if isinstance(recovery, RetryingRecovery) else recovery
    source = backend if isinstance(backend, GenerationSource) else None
    return Hosts(
        runtime.ledger,
        runtime.fleet,
        runtime.instances,
        recovery,
        safety_rules(settings),
        settings.escalation.rules().settle_of(Action.PROCESS_RESTART),
        source,
    )


async def breakers(runtime: Runtime) -> BackendBreakers:
    """The breaker of each rung, loaded as the database last saw them."""
    settings = runtime.settings
    rules = BreakerRules(**settings.breaker.model_dump())
    board = BackendBreakers(rules, breaker_names(settings), runtime.ledger, runtime.breaker_store)
    await board.load()
    return board


async def leader_lock(runtime: Runtime, on_lost: Callable[[str], None]) -> LeaderLock:
    """A file lock beside an SQLite database (taken now: a second daemon on the same file
    is refused at once, naming the other's pid), else a PostgreSQL advisory lock."""
    settings = runtime.settings
    path = sqlite_path(settings.database.url)
    if runtime.db.is_sqlite and path is not None:
        lock = SqliteFileLock(path)
        await lock.acquire()  # raises ConfigError naming the other daemon's pid
        return lock
    return PgAdvisoryLock(
        settings.database.url, settings.ha.lock_key, settings.database.timeout, on_lost=on_lost
    )


def retention(runtime: Runtime) -> SqlRetention | None:
    """What `[retention]` deletes (None when it keeps everything)."""
    settings = runtime.settings
    r = settings.retention
    floor = max(settings.escalation.reopen_window, settings.safety.flapping_window)
    keep = Keep.days(r.audit_days, r.incidents_days, r.outbox_days, incidents_floor=floor)
    return None if keep.forever else SqlRetention(runtime.db, runtime.ledger, keep)


def alert_senders(
    runtime: Runtime, node_id: str, client: httpx.AsyncClient
) -> tuple[AlertFeeder, AlertSender]:
    alerts = runtime.settings.alerts
    feeder = AlertFeeder(runtime.db, alerts.sinks)
    sender = AlertSender(runtime.db, alerts.sinks, node_id, client, alerts.max_attempts)
    return feeder, sender


def api_token(settings: Settings) -> str | None:
    """The restart API's bearer token (never logged). `load_settings` requires it for a
    run that acts; a dry run calls nothing and may do without."""
    return bearer_token("api.token_env", settings.api.token_env, required=False)
