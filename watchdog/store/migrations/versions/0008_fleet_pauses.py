"""Fleet pauses: an operator's hold on every instance a selector covers (a process, a glob
on ids, all of them), also those that appear while it lasts.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "watchdog_fleet_pauses",
        sa.Column("kind", sa.Text, primary_key=True),  # all | process | match
        sa.Column("pattern", sa.Text, primary_key=True),  # "" for all
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("watchdog_fleet_pauses")
