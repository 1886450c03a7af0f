"""The processes hosting instances: each one's generation as last seen (for restarts
made by anyone) and, on incidents, a held process restart and the operator's approval.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "watchdog_hosts",
        sa.Column("process", sa.Text, primary_key=True),
        sa.Column("pid", sa.Integer),
        sa.Column("started", sa.Float),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("restarted_at", sa.DateTime(timezone=True)),
        sa.Column("restarted_by", sa.Text),  # watchdog | external
        sa.Column("incident_id", sa.Integer),  # the incident the watchdog restarted it for
    )
    # JSON: why a process restart is held (the blast radius), until it goes out.
    op.add_column("watchdog_incidents", sa.Column("held", sa.Text))
    # The operator who let one held process restart through; spent by that restart.
    op.add_column("watchdog_incidents", sa.Column("approved_by", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("watchdog_incidents") as batch:
        batch.drop_column("approved_by")
        batch.drop_column("held")
    op.drop_table("watchdog_hosts")
