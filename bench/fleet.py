"""The application's `instances` table, filled in bulk on SQLite or PostgreSQL.

Instance `g` (1..n) is `i000123`-style; every 100th is unhealthy (heartbeat 600 s old),
every 20th has an open incident (so the unhealthy ones all have one, due in an hour:
they wait for an earlier action to settle, the steady state of a fleet being repaired).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from watchdog.store import migrate
from watchdog.store.database import Database
from watchdog.store.schema import incidents

UNHEALTHY_EVERY = 100  # 1 %
INCIDENT_EVERY = 20  # 5 %

_PG_TABLE = """
CREATE TABLE instances (
  id TEXT PRIMARY KEY,
  enabled BOOLEAN NOT NULL DEFAULT TRUE,
  connection_status TEXT NOT NULL,
  status_changed_at timestamptz NOT NULL,
  last_heartbeat_at timestamptz,
  force_reconnect BOOLEAN NOT NULL DEFAULT FALSE,
  process TEXT)"""

_PG_FILL = """
INSERT INTO instances
SELECT 'i' || lpad(g::text, 7, '0'), TRUE, 'CONNECTED', now() - interval '1 hour',
       CASE WHEN :unhealthy > 0 AND g % :unhealthy = 0
            THEN now() - interval '600 seconds' ELSE now() END,
       FALSE, 'proc-' || (g % 20)
FROM generate_series(1, :n) AS g"""

_SQLITE_TABLE = _PG_TABLE.replace("timestamptz", "TEXT")

_SQLITE_FILL = """
WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < :n)
INSERT INTO instances
SELECT printf('i%07d', g), 1, 'CONNECTED',
       strftime('%Y-%m-%d %H:%M:%f', 'now', '-3600 seconds'),
       CASE WHEN :unhealthy > 0 AND g % :unhealthy = 0
            THEN strftime('%Y-%m-%d %H:%M:%f', 'now', '-600 seconds')
            ELSE strftime('%Y-%m-%d %H:%M:%f', 'now') END,
       0, 'proc-' || (g % 20)
FROM s"""


def instance_id(g: int) -> str:
    return f"i{g:07d}"


async def build(
    db: Database,
    n: int,
    *,
    unhealthy_every: int = UNHEALTHY_EVERY,
    incident_every: int = INCIDENT_EVERY,
) -> None:
    """The watchdog's tables (migrated) and `n` instances, with incidents as described."""
    await migrate.upgrade(db)
    table, fill = (_SQLITE_TABLE, _SQLITE_FILL) if db.is_sqlite else (_PG_TABLE, _PG_FILL)
    now = datetime.now(UTC)
    rows = (
        [
            {
                "instance_id": instance_id(g),
                "reason": "stale_heartbeat",
                "state": "open",
                "attempt": 1,
                "process": f"proc-{g % 20}",
                "last_action": "api_restart",
                "opened_at": now - timedelta(seconds=500),
                "updated_at": now - timedelta(seconds=500),
                "next_action_at": now + timedelta(hours=1),
                "flapping": False,
            }
            for g in range(incident_every, n + 1, incident_every)
        ]
        if incident_every
        else []
    )
    async with db.begin("bench fill") as conn:
        await conn.execute(sa.text(table))
        await conn.execute(sa.text(fill), {"n": n, "unhealthy": unhealthy_every})
        if rows:
            await conn.execute(sa.insert(incidents), rows)
    # A long-lived table, not a freshly bulk-loaded one: on PostgreSQL, VACUUM sets the
    # hint bits and visibility map now, rather than the first measured scans (or an
    # autovacuum in the middle of the measurement) doing it.
    statement = "ANALYZE" if db.is_sqlite else "VACUUM ANALYZE"
    async with db.connect("bench vacuum") as conn:
        auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await auto.execute(sa.text(statement))
