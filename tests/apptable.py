"""The application's side of the database, as tests need it: create the instances
table (default or renamed columns) and write rows whose times are relative to the
database clock, in either SQLite timestamp format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from watchdog.config import InstancesSettings

SQLITE_FORMATS = {
    "sqlite": "%Y-%m-%d %H:%M:%f",  # strftime('%Y-%m-%d %H:%M:%f','now')
    "iso": "%Y-%m-%dT%H:%M:%fZ",  # ISO-8601 with Z
}


@dataclass
class AppTable:
    url: str  # a sync SQLAlchemy URL (sqlite:/// or postgresql+psycopg://)
    mapping: InstancesSettings = field(default_factory=InstancesSettings)
    sqlite_format: str = "sqlite"

    def __post_init__(self) -> None:
        self.engine = sa.create_engine(self.url, poolclass=sa.pool.NullPool)
        self.is_sqlite = self.engine.dialect.name == "sqlite"

    def _ago(self, seconds: float | None) -> str:
        if seconds is None:
            return "NULL"
        if self.is_sqlite:
            fmt = SQLITE_FORMATS[self.sqlite_format]
            return f"strftime('{fmt}', 'now', '-{seconds:.3f} seconds')"
        return f"(now() - make_interval(secs => {seconds:.3f}))"

    def create(self) -> None:
        m = self.mapping
        ts = "TEXT" if self.is_sqlite else "timestamptz"
        process = f", {m.process} TEXT" if m.process else ""
        with self.engine.begin() as conn:
            conn.execute(
                sa.text(f"""
                CREATE TABLE {m.table} (
                  {m.id} TEXT PRIMARY KEY,
                  {m.enabled} BOOLEAN NOT NULL DEFAULT TRUE,
                  {m.status} TEXT NOT NULL,
                  {m.status_changed_at} {ts} NOT NULL,
                  {m.heartbeat} {ts},
                  {m.force_reconnect} BOOLEAN NOT NULL DEFAULT FALSE
                  {process})""")
            )

    def add(
        self,
        instance_id: str,
        *,
        enabled: bool = True,
        status: str = "CONNECTED",
        heartbeat_ago: float | None = 1.0,
        status_ago: float = 1000.0,
        process: str | None = None,
    ) -> None:
        m = self.mapping
        cols = [m.id, m.enabled, m.status, m.status_changed_at, m.heartbeat]
        vals = [":id", ":enabled", ":status", self._ago(status_ago), self._ago(heartbeat_ago)]
        params: dict[str, Any] = {"id": instance_id, "enabled": enabled, "status": status}
        if m.process:
            cols.append(m.process)
            vals.append(":process")
            params["process"] = process
        with self.engine.begin() as conn:
            conn.execute(
                sa.text(f"INSERT INTO {m.table} ({', '.join(cols)}) VALUES ({', '.join(vals)})"),
                params,
            )

    def beat(self, instance_id: str, ago: float = 0.0) -> None:
        m = self.mapping
        with self.engine.begin() as conn:
            conn.execute(
                sa.text(
                    f"UPDATE {m.table} SET {m.heartbeat} = {self._ago(ago)} WHERE {m.id} = :id"
                ),
                {"id": instance_id},
            )

    def set_status(self, instance_id: str, status: str, ago: float = 0.0) -> None:
        m = self.mapping
        with self.engine.begin() as conn:
            conn.execute(
                sa.text(
                    f"UPDATE {m.table} SET {m.status} = :s, "
                    f"{m.status_changed_at} = {self._ago(ago)} WHERE {m.id} = :id"
                ),
                {"id": instance_id, "s": status},
            )

    def row(self, instance_id: str) -> dict[str, Any]:
        m = self.mapping
        with self.engine.connect() as conn:
            found = (
                conn.execute(
                    sa.text(f"SELECT * FROM {m.table} WHERE {m.id} = :id"), {"id": instance_id}
                )
                .mappings()
                .one()
            )
        return dict(found)

    def dispose(self) -> None:
        self.engine.dispose()
