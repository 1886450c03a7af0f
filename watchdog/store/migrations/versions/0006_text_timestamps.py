"""PostgreSQL: `watchdog_timestamptz(text, zone)`, which reads a timestamp stored as text
(ISO-8601 or PostgreSQL's own format, with an offset or naive in `zone`) and returns NULL
for anything else, so one bad value never fails the detection query. SQLite reads text
timestamps with its own julianday().

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Only a date, an optional time and an optional offset: PostgreSQL's parser also takes
# words such as 'now' or 'epoch', which must never read as a heartbeat.
_TIME = r"\d{2}:\d{2}(:\d{2}(\.\d+)?)?"
_OFFSET = r"(Z|z|[+-]\d{2}(:?\d{2})?)"
_SHAPE = rf"^\s*\d{{4}}-\d{{2}}-\d{{2}}([ T]{_TIME}\s*{_OFFSET}?)?\s*$"
_ZONED = rf"{_TIME}\s*{_OFFSET}\s*$"
_FUNCTION = f"""
CREATE OR REPLACE FUNCTION watchdog_timestamptz(value text, zone text)
RETURNS timestamptz LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
  IF value !~ '{_SHAPE}' THEN
    RETURN NULL;
  END IF;
  IF value ~ '{_ZONED}' THEN
    RETURN value::timestamptz;
  END IF;
  RETURN value::timestamp AT TIME ZONE zone;
EXCEPTION WHEN others THEN
  RETURN NULL;
END $$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS watchdog_timestamptz(text, text)")
