"""The watchdog's own tables: incidents, the append-only audit trail, operator pauses.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_OPEN = sa.text("state IN ('open', 'exhausted')")


def _ts(name: str, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "watchdog_incidents",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("instance_id", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
        sa.Column("process", sa.Text),
        sa.Column("last_action", sa.Text),
        sa.Column("continues_id", sa.Integer),
        _ts("opened_at", nullable=False),
        _ts("updated_at", nullable=False),
        _ts("next_action_at"),
        _ts("closed_at"),
    )
    # At most one open (or exhausted) incident per instance: the claim that keeps two
    # writers from opening the same incident twice.
    op.create_index(
        "ux_watchdog_incidents_open",
        "watchdog_incidents",
        ["instance_id"],
        unique=True,
        sqlite_where=_OPEN,
        postgresql_where=_OPEN,
    )
    op.create_index(
        "ix_watchdog_incidents_instance", "watchdog_incidents", ["instance_id", "closed_at"]
    )
    op.create_table(
        "watchdog_audit",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        _ts("at", nullable=False),
        sa.Column("incident_id", sa.Integer),
        sa.Column("instance_id", sa.Text, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("attempt", sa.Integer),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("detail", sa.Text, nullable=False, server_default="{}"),
        sa.Column("duration", sa.Float),
        sa.Column("actor", sa.Text, nullable=False),
    )
    op.create_index("ix_watchdog_audit_at", "watchdog_audit", ["at"])
    op.create_index("ix_watchdog_audit_instance", "watchdog_audit", ["instance_id", "id"])
    op.create_table(
        "watchdog_pauses",
        sa.Column("instance_id", sa.Text, primary_key=True),
        _ts("until", nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        _ts("created_at", nullable=False),
    )


def downgrade() -> None:
    op.drop_table("watchdog_pauses")
    op.drop_table("watchdog_audit")
    op.drop_index("ux_watchdog_incidents_open", table_name="watchdog_incidents")
    op.drop_table("watchdog_incidents")
