"""Schema migrations of the watchdog's own tables, run through Alembic in-process.

Alembic is imported only to upgrade: reading the current revision is one SELECT, so
operator commands start fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from watchdog.core.errors import StoreError, StoreSchemaError
from watchdog.store.database import Database

SCRIPTS = Path(__file__).parent / "migrations"
VERSION_TABLE = "watchdog_alembic_version"
HEAD_REVISION = "0008"  # a test checks this against the newest migration script


def alembic_config(connection: Connection | None = None) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(SCRIPTS))
    config.attributes["connection"] = connection
    return config


async def upgrade(db: Database, revision: str = "head") -> None:
    """Bring the watchdog's tables to `revision` (idempotent)."""
    if revision == "head" and await current_revision(db) == HEAD_REVISION:
        return  # up to date: Alembic (megabytes resident) is not even imported
    from alembic import command

    def run(connection: Connection) -> None:
        command.upgrade(alembic_config(connection), revision)

    async with db.begin("schema upgrade") as conn:
        await conn.run_sync(run)


async def current_revision(db: Database) -> str | None:
    query = sa.text(f"SELECT version_num FROM {VERSION_TABLE}")
    try:
        async with db.connect("schema version") as conn:
            return (await conn.execute(query)).scalar_one_or_none()
    except StoreSchemaError:
        return None  # no version table: the watchdog's tables were never created


async def require_current(db: Database) -> None:
    """Refuse to work against tables older than this version of the watchdog."""
    current = await current_revision(db)
    if current != HEAD_REVISION:
        raise StoreError(
            f"the watchdog's tables are at revision {current or 'none'}, this version needs "
            f"{HEAD_REVISION}; run `watchdogctl db upgrade`"
        )
