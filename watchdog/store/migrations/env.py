"""Alembic environment for the watchdog's own tables.

Run only through `watchdog.store.migrate`, which hands over an open connection. The
version table has its own name so it never clashes with the application's Alembic.
"""

from __future__ import annotations

from alembic import context

VERSION_TABLE = "watchdog_alembic_version"

connection = context.config.attributes["connection"]
context.configure(connection=connection, version_table=VERSION_TABLE, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
