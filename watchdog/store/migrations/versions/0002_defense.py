"""Defense in depth: circuit breakers, restart budgets, fleet flags, flapping, suppression.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_OLD_OPEN = sa.text("state IN ('open', 'exhausted')")
_OPEN = sa.text("state IN ('open', 'exhausted', 'suppressed')")


def _ts(name: str, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _open_index(where: sa.TextClause) -> None:
    op.create_index(
        "ux_watchdog_incidents_open",
        "watchdog_incidents",
        ["instance_id"],
        unique=True,
        sqlite_where=where,
        postgresql_where=where,
    )


def upgrade() -> None:
    # A suppressed incident (restart budget spent) is still open: one per instance.
    op.drop_index("ux_watchdog_incidents_open", table_name="watchdog_incidents")
    _open_index(_OPEN)
    with op.batch_alter_table("watchdog_incidents") as batch:
        batch.add_column(
            sa.Column("flapping", sa.Boolean, nullable=False, server_default=sa.false())
        )
    op.create_table(
        "watchdog_breakers",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("successes", sa.Integer, nullable=False),
        sa.Column("total", sa.Integer, nullable=False),
        sa.Column("total_failures", sa.Integer, nullable=False),
        sa.Column("failure_rate", sa.Float, nullable=False),
        _ts("opened_at"),
        _ts("last_failure_at"),
        _ts("last_success_at"),
        _ts("next_attempt_at"),
        sa.Column("last_error", sa.Text),
        _ts("updated_at", nullable=False),
    )
    op.create_table(
        "watchdog_restarts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("process", sa.Text, nullable=False),
        _ts("at", nullable=False),
        sa.Column("instances", sa.Text, nullable=False),
    )
    op.create_index("ix_watchdog_restarts_at", "watchdog_restarts", ["at"])
    op.create_table(
        "watchdog_flags",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        _ts("updated_at", nullable=False),
    )


def downgrade() -> None:
    op.drop_table("watchdog_flags")
    op.drop_index("ix_watchdog_restarts_at", table_name="watchdog_restarts")
    op.drop_table("watchdog_restarts")
    op.drop_table("watchdog_breakers")
    with op.batch_alter_table("watchdog_incidents") as batch:
        batch.drop_column("flapping")
    op.drop_index("ux_watchdog_incidents_open", table_name="watchdog_incidents")
    _open_index(_OLD_OPEN)
