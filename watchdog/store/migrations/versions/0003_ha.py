"""Several watchdogs: the nodes table and the alert outbox.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _ts(name: str, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "watchdog_nodes",
        sa.Column("node_id", sa.Text, primary_key=True),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("role", sa.Text, nullable=False),  # leader | standby | gone
        sa.Column("version", sa.Text, nullable=False),
        _ts("started_at", nullable=False),
        _ts("last_good_cycle_at"),
        _ts("updated_at", nullable=False),
    )
    op.create_table(
        "watchdog_outbox",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        _ts("created_at", nullable=False),
        sa.Column("event", sa.Text, nullable=False),
        sa.Column("sink", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),  # pending | sent | failed
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        _ts("next_attempt_at", nullable=False),
        sa.Column("claimed_by", sa.Text),
        _ts("claimed_until"),
        _ts("sent_at"),
        sa.Column("last_error", sa.Text),
    )
    op.create_index("ix_watchdog_outbox_due", "watchdog_outbox", ["state", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_watchdog_outbox_due", table_name="watchdog_outbox")
    op.drop_table("watchdog_outbox")
    op.drop_table("watchdog_nodes")
