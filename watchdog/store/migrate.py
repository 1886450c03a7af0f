"""Schema migrations of the watchdog's own tables, run through Alembic in-process."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from watchdog.errors import StoreSchemaError
from watchdog.store.database import Database

_SCRIPTS = Path(__file__).parent / "migrations"
VERSION_TABLE = "watchdog_alembic_version"


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None, "the package ships at least one migration"
    return head


async def upgrade(db: Database, revision: str = "head") -> None:
    """Bring the watchdog's tables to `revision` (idempotent)."""

    def run(connection: Connection) -> None:
        command.upgrade(_config(connection), revision)

    async with db.begin("schema upgrade") as conn:
        await conn.run_sync(run)


async def current_revision(db: Database) -> str | None:
    def read(connection: Connection) -> str | None:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()

    async with db.connect("schema version") as conn:
        return await conn.run_sync(read)


async def require_current(db: Database) -> None:
    """Refuse to run against tables older than this version of the watchdog."""
    current, head = await current_revision(db), head_revision()
    if current != head:
        raise StoreSchemaError(
            f"the watchdog's tables are at revision {current or 'none'}, this version needs "
            f"{head}; run `watchdogctl db upgrade`"
        )
