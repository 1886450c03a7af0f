"""One outcome per intent: an outcome row names its intent row, and a unique index
holds it to one (an outcome written again after a lost commit acknowledgement, or an
`interrupted` racing a late outcome, is refused by the database, not appended twice).

Existing rows keep a NULL `intent_id` (they are never rewritten).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "watchdog_audit",
        sa.Column("intent_id", sa.BigInteger().with_variant(sa.Integer, "sqlite")),
    )
    op.create_index("ux_watchdog_audit_intent", "watchdog_audit", ["intent_id"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_watchdog_audit_intent", table_name="watchdog_audit")
    with op.batch_alter_table("watchdog_audit") as batch:
        batch.drop_column("intent_id")
