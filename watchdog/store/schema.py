"""The watchdog's own tables (the application's table is mapped in `instances.py`).

Alembic migrations in `migrations/versions` create these; this module is the shape the
queries use. Timestamps are stored as UTC (timestamptz on PostgreSQL).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from watchdog.core import model


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every dialect."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; pass an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]


metadata = sa.MetaData()

OPEN_STATES = tuple(sorted(str(s) for s in model.OPEN_STATES))  # as stored

incidents = sa.Table(
    "watchdog_incidents",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("instance_id", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False, default=0),
    sa.Column("process", sa.Text),
    sa.Column("last_action", sa.Text),
    sa.Column("continues_id", sa.Integer),
    sa.Column("opened_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column("next_action_at", UtcDateTime),
    sa.Column("closed_at", UtcDateTime),
    sa.Column("flapping", sa.Boolean, nullable=False, default=False),
    sa.Column("held", sa.Text),  # JSON: why its process restart is held
    sa.Column("approved_by", sa.Text),  # who let one held process restart through
)

audit = sa.Table(
    "watchdog_audit",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("incident_id", sa.Integer),
    sa.Column("instance_id", sa.Text, nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("attempt", sa.Integer),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("outcome", sa.Text, nullable=False),
    sa.Column("detail", sa.Text, nullable=False, default="{}"),
    sa.Column("duration", sa.Float),
    sa.Column("actor", sa.Text, nullable=False),
    # An outcome row names its intent; a unique index makes it one outcome per intent.
    sa.Column("intent_id", sa.BigInteger().with_variant(sa.Integer, "sqlite")),
)

pauses = sa.Table(
    "watchdog_pauses",
    metadata,
    sa.Column("instance_id", sa.Text, primary_key=True),
    sa.Column("until", UtcDateTime, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

fleet_pauses = sa.Table(
    "watchdog_fleet_pauses",
    metadata,
    sa.Column("kind", sa.Text, primary_key=True),
    sa.Column("pattern", sa.Text, primary_key=True),
    sa.Column("until", UtcDateTime, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

breakers = sa.Table(
    "watchdog_breakers",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("successes", sa.Integer, nullable=False),
    sa.Column("total", sa.Integer, nullable=False),
    sa.Column("total_failures", sa.Integer, nullable=False),
    sa.Column("failure_rate", sa.Float, nullable=False),
    sa.Column("opened_at", UtcDateTime),
    sa.Column("last_failure_at", UtcDateTime),
    sa.Column("last_success_at", UtcDateTime),
    sa.Column("next_attempt_at", UtcDateTime),
    sa.Column("last_error", sa.Text),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

restarts = sa.Table(
    "watchdog_restarts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("process", sa.Text, nullable=False),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("instances", sa.Text, nullable=False),
)

# The processes hosting instances, as last seen: a new generation is a restart.
hosts = sa.Table(
    "watchdog_hosts",
    metadata,
    sa.Column("process", sa.Text, primary_key=True),
    sa.Column("pid", sa.Integer),
    sa.Column("started", sa.Float),
    sa.Column("seen_at", UtcDateTime, nullable=False),
    sa.Column("restarted_at", UtcDateTime),
    sa.Column("restarted_by", sa.Text),
    sa.Column("incident_id", sa.Integer),
)

flags = sa.Table(
    "watchdog_flags",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

nodes = sa.Table(
    "watchdog_nodes",
    metadata,
    sa.Column("node_id", sa.Text, primary_key=True),
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("version", sa.Text, nullable=False),
    sa.Column("started_at", UtcDateTime, nullable=False),
    sa.Column("last_good_cycle_at", UtcDateTime),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

outbox = sa.Table(
    "watchdog_outbox",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("event", sa.Text, nullable=False),
    sa.Column("sink", sa.Text, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", UtcDateTime, nullable=False),
    sa.Column("claimed_by", sa.Text),
    sa.Column("claimed_until", UtcDateTime),
    sa.Column("sent_at", UtcDateTime),
    sa.Column("last_error", sa.Text),
)

# One row per changing table the daemon caches: every transaction that writes incidents
# bumps `incidents` last, so a reader that sees the same number sees the same incidents.
revisions = sa.Table(
    "watchdog_revisions",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("revision", sa.BigInteger, nullable=False),
)
