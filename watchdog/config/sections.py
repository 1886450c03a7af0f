"""The configuration's sections and keys, with their defaults and checks: validated once
at start-up into a frozen object. Unknown keys are errors."""

from __future__ import annotations

import re
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from sqlalchemy.engine import make_url

from watchdog.core.model import Action
from watchdog.core.policy import DetectionRules, EscalationRules, LadderStep
from watchdog.render import MAX_DURATION

ENV_PREFIX = "WATCHDOG_"
CONFIG_ENV = "WATCHDOG_CONFIG"

# At most ten years: a longer duration overflows the dates it is added to.
Seconds = Annotated[float, Field(gt=0, le=315_576_000, allow_inf_nan=False)]
Identifier = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
QualifiedName = Annotated[
    str, Field(pattern=r"^([A-Za-z_][A-Za-z0-9_]*\.)?[A-Za-z_][A-Za-z0-9_]*$")
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseSettings(_Section):
    url: str = "sqlite:///watchdog.db"
    timeout: Seconds = 5.0

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", url):
            raise ValueError("must start with sqlite:/// or postgresql+psycopg://")
        try:
            make_url(url).port  # noqa: B018 (parsing the port is what fails)
        except ValueError:
            raise ValueError(
                "cannot be read as a URL: percent-encode any @ : / in the user name and "
                "password (@ is %40, : is %3A, / is %2F)"
            ) from None
        return url


class InstancesSettings(_Section):
    """Where the application keeps its instances: table and column names."""

    table: QualifiedName = "instances"
    id: Identifier = "id"
    enabled: Identifier = "enabled"
    status: Identifier = "connection_status"
    status_changed_at: Identifier = "status_changed_at"
    heartbeat: Identifier = "last_heartbeat_at"
    force_reconnect: Identifier = "force_reconnect"
    process: Identifier | Literal[""] = "process"  # "": the table has no process column
    # Timestamps stored without an offset are in this zone (IANA name).
    timezone: str = "UTC"
    # Timestamps stored as numbers are Unix epoch in this unit.
    epoch_unit: Literal["s", "ms"] = "s"

    def columns(self) -> dict[str, str]:
        """Each mapped key → its column, as the watchdog reads them (no process: absent)."""
        mapped = {
            "id": self.id,
            "enabled": self.enabled,
            "status": self.status,
            "status_changed_at": self.status_changed_at,
            "heartbeat": self.heartbeat,
            "force_reconnect": self.force_reconnect,
            "process": self.process,
        }
        return {key: column for key, column in mapped.items() if column}

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                "must be an IANA time zone name such as UTC or Europe/Berlin"
            ) from None
        return name


class DetectionSettings(_Section):
    interval: Seconds = 5.0
    stale_after: Seconds = 90.0
    connecting_after: Seconds = 120.0
    # After the watchdog starts or its database comes back, heartbeat writers get this long
    # to catch up before anyone is judged (None: stale_after).
    grace: Annotated[float, Field(ge=0, le=315_576_000)] | None = None
    # A timestamp further ahead of the database clock than this is not believed: the row
    # is unjudgeable (a writer's clock, or a wrong timezone or epoch_unit).
    max_clock_skew: Seconds = 30.0
    connecting_statuses: tuple[str, ...] = ("CONNECTING", "RECONNECTING", "INITIALIZING", "LOADING")
    ignored_statuses: tuple[str, ...] = ("LOGOUT", "TOS_BLOCK", "BANNED")

    def rules(self) -> DetectionRules:
        return DetectionRules(
            self.stale_after,
            self.connecting_after,
            frozenset(self.connecting_statuses),
            frozenset(self.ignored_statuses),
            self.max_clock_skew,
        )


class StepSettings(_Section):
    action: Action
    attempts: Annotated[int, Field(ge=1)] | None = None
    settle: Seconds | None = None


_DEFAULT_LADDER = (
    StepSettings(action=Action.API_RESTART, attempts=2),
    StepSettings(action=Action.DB_FLAG, attempts=3),
    StepSettings(action=Action.PROCESS_RESTART, settle=120.0),
)


class EscalationSettings(_Section):
    settle: Seconds = 30.0
    max_attempts: Annotated[int, Field(ge=1, le=1000)] = 10
    ladder: tuple[StepSettings, ...] = _DEFAULT_LADDER
    backoff_factor: Annotated[float, Field(ge=1.0, le=10.0)] = 1.5
    backoff_cap: Seconds = 300.0
    jitter: Annotated[float, Field(ge=0.0, le=1.0)] = 0.2
    reopen_window: Annotated[float, Field(ge=0.0, le=315_576_000)] = 600.0
    # An exhausted incident's last rung is tried again this often (0: never).
    exhausted_retry: Annotated[float, Field(ge=0.0, le=315_576_000)] = 3600.0

    @field_validator("ladder")
    @classmethod
    def _ladder_shape(cls, ladder: tuple[StepSettings, ...]) -> tuple[StepSettings, ...]:
        if not ladder:
            raise ValueError('must list at least one step, e.g. [{ action = "api_restart" }]')
        for step in ladder[:-1]:
            if step.attempts is None:
                raise ValueError(f"step {step.action} needs attempts (only the last may omit it)")
        return ladder

    def rules(self) -> EscalationRules:
        steps = tuple(
            LadderStep(s.action, s.attempts, s.settle if s.settle is not None else self.settle)
            for s in self.ladder
        )
        return EscalationRules(
            steps,
            self.max_attempts,
            self.backoff_factor,
            self.backoff_cap,
            self.jitter,
            self.reopen_window,
            self.exhausted_retry,
        )

    def actions(self) -> frozenset[Action]:
        return frozenset(step.action for step in self.ladder)


class ApiSettings(_Section):
    restart_url: str = "http://127.0.0.1:3000/api/instances/{id}/restart"
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    token_env: str = "WATCHDOG_API_TOKEN"  # noqa: S105 (a variable name) "": no auth
    timeout: Seconds = 10.0
    rate: Annotated[float, Field(ge=0)] = 0.0  # restart calls per second; 0: unlimited
    burst: Annotated[int, Field(ge=0)] = 0  # calls at once after a quiet spell; 0: a second's

    @field_validator("restart_url")
    @classmethod
    def _has_id(cls, url: str) -> str:
        if "{id}" not in url:
            raise ValueError("must contain {id}, where the instance id goes")
        if not re.match(r"^https?://", url):
            raise ValueError("must be an http:// or https:// URL")
        return url


class ProcessSettings(_Section):
    backend: Literal["supervisor", "systemd", "command"] = "supervisor"
    supervisor_url: str = "unix:///run/supervisor.sock"
    program: str = "app"
    unit: str = "app.service"
    command: tuple[str, ...] = ("pm2", "restart", "{process}")
    # command: an argv printing the process's PID (0 or nothing: not running), e.g.
    # ["pm2", "pid", "{process}"]; without it the backend cannot tell a process's generation
    pid_command: tuple[str, ...] | None = None
    user: bool = False  # systemd: systemctl --user
    timeout: Seconds = 30.0
    rate: Annotated[float, Field(ge=0)] = 0.0  # process restarts per second; 0: unlimited
    burst: Annotated[int, Field(ge=0)] = 0  # restarts at once after a quiet spell
    # supervisor: SIGKILL a program still not down after this (checked against timeout)
    stop_wait: Seconds = Field(default=10.0, validate_default=True)

    @field_validator("stop_wait")
    @classmethod
    def _stop_wait_fits(cls, stop_wait: float, info: ValidationInfo) -> float:
        """Checked on `stop_wait` itself, so the error names that key (and its variable)."""
        timeout = info.data.get("timeout")
        if info.data.get("backend") == "supervisor" and timeout and stop_wait >= timeout:
            raise ValueError(f"must be shorter than process.timeout ({timeout:g})")
        return stop_wait

    @field_validator("command")
    @classmethod
    def _non_empty(cls, argv: tuple[str, ...]) -> tuple[str, ...]:
        if not argv or not argv[0]:
            raise ValueError('must be a non-empty argv list, e.g. ["pm2", "restart", "{process}"]')
        return argv

    @field_validator("pid_command")
    @classmethod
    def _non_empty_when_set(cls, argv: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if argv is not None and (not argv or not argv[0]):
            raise ValueError('must be a non-empty argv list, e.g. ["pm2", "pid", "{process}"]')
        return argv


class DaemonSettings(_Section):
    max_concurrent_actions: Annotated[int, Field(ge=1, le=1000)] = 16
    shutdown_timeout: Seconds = 30.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    memory_limit_mb: Annotated[float, Field(gt=0)] = 256.0  # warn at 80 %, critical at 95 %


class BreakerSettings(_Section):
    """Circuit breaker per backend (api, db_flag, supervisor, systemd, command)."""

    mode: Literal["consecutive", "rate"] = "consecutive"
    failure_threshold: Annotated[int, Field(ge=1)] = 5  # consecutive failures that open it
    recovery_timeout: Seconds = 60.0  # open → half-open after this
    success_threshold: Annotated[int, Field(ge=1)] = 2  # half-open → closed after these
    rate_threshold: Annotated[float, Field(gt=0, le=1)] = 0.5  # rate mode: failure rate ...
    monitoring_window: Seconds = 60.0  # ... over this window ...
    minimum_requests: Annotated[int, Field(ge=1)] = 5  # ... once this many calls were made


class SafetySettings(_Section):
    """What keeps the watchdog from making an outage worse."""

    process_restarts_per_process: Annotated[int, Field(ge=1)] = 3
    process_restart_window: Seconds = 1800.0
    fleet_restarts: Annotated[int, Field(ge=1)] = 6
    fleet_restart_window: Seconds = 3600.0
    flapping_incidents: Annotated[int, Field(ge=2)] = 4  # incidents of one instance ...
    flapping_window: Seconds = 3600.0  # ... within this long
    brake_min_unhealthy: Annotated[int, Field(ge=0)] = 2  # brake when more than this many ...
    brake_fraction: Annotated[float, Field(gt=0, le=1)] = 0.5  # ... and at least this share
    # A process restart is held while more than this share of its instances is healthy
    # (1.0: never held).
    collateral_fraction: Annotated[float, Field(ge=0, le=1)] = 0.5
    retry_attempts: Annotated[int, Field(ge=1, le=10)] = 3  # tries of one transient failure


class HaSettings(_Section):
    """Several replicas on one PostgreSQL database: exactly one acts."""

    lock_key: int = 7_406_711_502  # the advisory lock the leader holds
    node_id: str = ""  # "": host:pid


class HealthSettings(_Section):
    """The HTTP health endpoint (off by default; bound to loopback)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 9464
    token_env: str = ""  # bearer token read from this variable; "": no auth
    ready_max_age: Seconds = 60.0  # /readyz: the last good cycle is at most this old


class SinkSettings(_Section):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    kind: Literal["json", "slack", "alertmanager"] = "json"
    url: str
    token_env: str = ""  # bearer token variable for the sink; "": none
    timeout: Seconds = 5.0

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        if not re.match(r"^https?://", url):
            raise ValueError("must be an http:// or https:// URL")
        return url


class AlertSettings(_Section):
    sinks: tuple[SinkSettings, ...] = ()
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 12
    interval: Seconds = 2.0  # how often the outbox is drained


# Whole days (a boolean is refused: `true` is not a number of days), at most the ten
# years `MAX_DURATION` allows; 0 keeps the rows forever.
Days = Annotated[int, Field(strict=True, ge=0, le=int(MAX_DURATION // 86400))]


class RetentionSettings(_Section):
    """How long the leader keeps the watchdog's own history (0: forever)."""

    audit_days: Days = 90  # audit rows older than this are deleted
    incidents_days: Days = 90  # closed incidents, once no kept audit row names them
    outbox_days: Days = 7  # alert rows sent or given up


class Settings(_Section):
    database: DatabaseSettings = DatabaseSettings()
    instances: InstancesSettings = InstancesSettings()
    detection: DetectionSettings = DetectionSettings()
    escalation: EscalationSettings = EscalationSettings()
    api: ApiSettings = ApiSettings()
    process: ProcessSettings = ProcessSettings()
    daemon: DaemonSettings = DaemonSettings()
    breaker: BreakerSettings = BreakerSettings()
    safety: SafetySettings = SafetySettings()
    ha: HaSettings = HaSettings()
    health: HealthSettings = HealthSettings()
    alerts: AlertSettings = AlertSettings()
    retention: RetentionSettings = RetentionSettings()

    @model_validator(mode="after")
    def _interval_fits(self) -> Settings:
        if self.detection.interval > self.detection.stale_after:
            raise ValueError(
                "detection.interval must not exceed detection.stale_after "
                f"({self.detection.interval:g} > {self.detection.stale_after:g})"
            )
        return self
