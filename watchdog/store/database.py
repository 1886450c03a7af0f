"""The database connection: URL normalisation, pools, timeouts and error translation.

Every statement the watchdog runs goes through `Database.guard`, which bounds it by the
configured timeout and turns driver errors into the project's own (see `core/errors.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable, Collection, Hashable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.dialects.postgresql import JSON
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from watchdog.core.errors import StoreError, StoreSchemaError, StoreTimeout, StoreUnavailable

_Statement = TypeVar("_Statement", bound=sa.Executable)
APPLICATION_NAME = "watchdog"  # how the watchdog's sessions show in pg_stat_activity
_CANCEL_GRACE = 0.25  # seconds a timed-out query gets to be cancelled before it is dropped
_REFUSED_HINTS = ("does not exist", "authentication failed", "no pg_hba.conf entry")
_SCHEMA_HINTS = ("no such table", "no such column", "does not exist", "undefinedtable")


def async_url(url: str) -> str:
    """Map a user's URL onto the async driver the watchdog uses for it."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    raise StoreError(f"unsupported database {backend!r}; use sqlite:/// or postgresql+psycopg://")


class Database:
    """An async engine plus the statement timeout that bounds every call."""

    def __init__(self, url: str, timeout: float, *, pool_size: int = 5) -> None:
        self.timeout = timeout
        self.url = async_url(url)
        self.dialect = make_url(self.url).get_backend_name()
        self.engine: AsyncEngine = create_async_engine(self.url, **self._engine_args(pool_size))
        self._kept: AsyncConnection | None = None  # see `steady`
        self._memo: dict[Hashable, sa.Executable] = {}
        self._kept_lock = asyncio.Lock()
        if self.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", self._sqlite_pragmas)

    def _engine_args(self, pool_size: int) -> dict[str, Any]:
        if self.dialect == "sqlite":
            return {"connect_args": {"timeout": self.timeout}}
        millis = int(self.timeout * 1000)
        return {
            "pool_size": pool_size,
            "max_overflow": 0,
            "pool_timeout": self.timeout,
            "pool_pre_ping": True,
            "connect_args": {
                "connect_timeout": max(1, int(self.timeout)),
                "application_name": APPLICATION_NAME,
                # The server stops a runaway statement too, not only our client-side timeout.
                "options": f"-c statement_timeout={millis} -c lock_timeout={millis}",
            },
        }

    def _sqlite_pragmas(self, dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        cursor.close()

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    def among(
        self, column: sa.ColumnElement[Any], values: Collection[str]
    ) -> sa.ColumnElement[Any]:
        """`column IN values` with the values as one parameter (see `listed`), not one
        placeholder each: thousands of ids stay one cheap statement."""
        listed = self.listed("among", values)
        return column.in_(sa.select(listed.c.value).scalar_subquery())

    def listed(self, name: str, values: Collection[str]) -> sa.TableValuedAlias:
        """`values` as a one-column derived table `name(value)`, sent as one JSON text:
        thousands of ids cost one string to send, not an array to encode item by item."""
        text = sa.bindparam(f"{name}_json", json.dumps(list(values)), sa.Text)
        return self._json_values(name, text)

    def placeholder(self, name: str) -> sa.ColumnElement[Any]:
        """A parameter left for the driver in a `FrozenStatement` (whose other values are
        written in); it becomes `%(name)s` for psycopg, `:name` for sqlite3."""
        return sa.literal_column(_PLACEHOLDER.format(name=name), sa.Text)

    def driver_placeholder(self, name: str) -> str:
        return f":{name}" if self.is_sqlite else f"%({name})s"

    def listed_by_driver(self, name: str) -> sa.TableValuedAlias:
        """`listed`, with the JSON text a driver parameter of that name."""
        return self._json_values(name, self.placeholder(name))

    def _json_values(self, name: str, text: sa.ColumnElement[Any]) -> sa.TableValuedAlias:
        """The elements of a JSON array of strings as a one-column table `name(value)`."""
        if self.is_sqlite:
            return sa.func.json_each(text).table_valued("value", name=name)
        elements = sa.func.json_array_elements_text(sa.cast(text, JSON))
        return elements.table_valued("value", name=name)

    def rows(
        self,
        name: str,
        columns: Mapping[str, sa.types.TypeEngine[Any]],
        data: Sequence[Sequence[Any]] = (),
    ) -> sa.FromClause:
        """`data` as a derived table `name` with these columns plus `n`, each row's position
        from 1. The rows travel as one JSON text, so a batch of any size is one short
        statement that both SQLAlchemy and the driver cache, and its values are encoded in
        one call (arrays, one per column, were dumped value by value). A statement built
        once (see `memo`) runs with other rows given `batch(name, rows)` as parameters."""
        param = sa.bindparam(f"{name}_json", self._rows_json(data), sa.Text)
        if self.is_sqlite:
            each = sa.func.json_each(param).table_valued("value", "key")
            fields = [
                sa.type_coerce(sa.func.json_extract(each.c.value, f"$[{i}]"), type_).label(col)
                for i, (col, type_) in enumerate(columns.items())
            ]
            return sa.select(*fields, (each.c.key + 1).label("n")).subquery(name)
        elements = sa.func.json_array_elements(sa.cast(param, JSON))
        each = elements.table_valued("value", with_ordinality="n").render_derived()
        fields = [
            sa.cast(each.c.value.op("->>")(sa.literal_column(str(i))), type_).label(col)
            for i, (col, type_) in enumerate(columns.items())
        ]
        return sa.select(*fields, each.c.n).subquery(name)

    def batch(self, name: str, data: Sequence[Sequence[Any]]) -> dict[str, str]:
        """The parameter carrying `data` into `rows(name, ...)`."""
        return {f"{name}_json": self._rows_json(data)}

    def _rows_json(self, data: Sequence[Sequence[Any]]) -> str:
        sqlite = self.is_sqlite
        return json.dumps([[_json_value(v, sqlite) for v in row] for row in data])

    def memo(self, key: Hashable, build: Callable[[], _Statement]) -> _Statement:
        """The statement `build` makes, built once: the writes a recovery storm repeats
        run with their values as parameters. Building and keying one of them for
        SQLAlchemy's cache was a large part of each batch's CPU."""
        found = self._memo.get(key)
        if found is None:
            found = self._memo[key] = build()
        return cast(_Statement, found)

    def insert_skipping(self, table: sa.Table, unique: str | None) -> sa.Insert:
        """INSERT into `table`; with `unique` (a column under a unique index), a row that
        would repeat a value there is skipped (ON CONFLICT DO NOTHING)."""
        if unique is None:
            return sa.insert(table)
        dialect_insert = sqlite_insert if self.is_sqlite else postgresql_insert
        return dialect_insert(table).on_conflict_do_nothing(index_elements=[unique])

    def now_expr(self) -> sa.ColumnElement[Any]:
        """The database clock as a SQL expression."""
        if self.is_sqlite:
            return sa.func.strftime("%Y-%m-%d %H:%M:%f", "now")
        return sa.func.now()

    async def read_now(self, conn: AsyncConnection) -> datetime:
        """The database clock, read on `conn` (inside its transaction, if it has one)."""
        return as_utc((await conn.execute(sa.select(self.now_expr()))).scalar_one())

    @asynccontextmanager
    async def guard(self, what: str) -> AsyncIterator[None]:
        """Bound a piece of database work by the timeout and translate its errors."""
        try:
            # Cancelled once, psycopg asks the server to cancel the query and waits for it
            # (seconds, against a frozen server); a second cancellation drops the connection.
            async with asyncio.timeout(self.timeout + _CANCEL_GRACE):
                async with asyncio.timeout(self.timeout):
                    yield
        except TimeoutError:
            raise StoreTimeout(
                f"database did not answer within {self.timeout:g}s ({what}); "
                "check that it is up and not overloaded"
            ) from None
        except exc.DBAPIError as error:
            raise translate(error, what) from error
        except (OSError, exc.TimeoutError) as error:
            raise StoreUnavailable(f"database unreachable ({what}): {error}") from error

    @asynccontextmanager
    async def begin(self, what: str) -> AsyncIterator[AsyncConnection]:
        """A transaction bounded by the timeout."""
        async with self.guard(what), self.engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def connect(self, what: str) -> AsyncIterator[AsyncConnection]:
        """A read-only connection bounded by the timeout. In autocommit: each read is a
        statement of its own, without the BEGIN and ROLLBACK round trips around it."""
        async with self.guard(what), self.engine.connect() as conn:
            yield await conn.execution_options(isolation_level="AUTOCOMMIT")

    @asynccontextmanager
    async def steady(self, what: str) -> AsyncIterator[AsyncConnection]:
        """`connect`, on a connection kept for the read every cycle makes: no checkout,
        ping and return around each cycle's statement. A second reader meanwhile gets a
        pooled connection; any failure drops the kept one (the next read opens another)."""
        if self._kept_lock.locked():
            async with self.connect(what) as conn:
                yield conn
            return
        async with self._kept_lock, self.guard(what):
            conn = self._kept or await self._autocommit()
            self._kept = None  # kept again only once this read went well
            try:
                yield conn
            except BaseException:
                await _discard(conn)
                raise
            self._kept = conn

    @property
    def kept(self) -> int:
        """Connections kept checked out between reads (`steady`): 0 or 1."""
        return 0 if self._kept is None else 1

    async def _autocommit(self) -> AsyncConnection:
        opened = await self.engine.connect()
        return await opened.execution_options(isolation_level="AUTOCOMMIT")

    async def dispose(self) -> None:
        kept, self._kept = self._kept, None
        if kept is not None:
            await _discard(kept)
        await self.engine.dispose()


async def _discard(conn: AsyncConnection) -> None:
    """Close a connection that failed or is no longer wanted, whatever state it is in."""
    with contextlib.suppress(Exception):
        await conn.invalidate()
    with contextlib.suppress(Exception):
        await conn.close()


_PLACEHOLDER = "__watchdog_param_{name}__"
_PLACEHOLDERS = re.compile(r"__watchdog_param_(\w+?)__")


class FrozenStatement:
    """A large read compiled to SQL text once per set of runtime values (a handful: the
    zone's offset moves with DST), with every value written in, and run through the
    driver. SQLAlchemy's statement cache computes its key over the whole expression tree
    on every call, which for the detection query costs about as much as judging the rows
    it returns."""

    def __init__(self, db: Database, statement: sa.Select[Any]) -> None:
        self._dialect = db.engine.dialect
        self._placeholder = lambda found: db.driver_placeholder(found.group(1))
        self._statement = statement
        self._texts: dict[tuple[tuple[str, Any], ...], str] = {}

    def text(self, params: Mapping[str, Any]) -> str:
        key = tuple(sorted(params.items()))
        text = self._texts.get(key)
        if text is None:
            bound = self._statement.params(dict(params)) if params else self._statement
            compiled = bound.compile(dialect=self._dialect, compile_kwargs={"literal_binds": True})
            text = self._texts[key] = _PLACEHOLDERS.sub(self._placeholder, str(compiled))
        return text

    async def execute(
        self,
        conn: AsyncConnection,
        params: Mapping[str, Any],
        driver_params: Mapping[str, Any] | None = None,
    ) -> sa.CursorResult[Any]:
        """`driver_params`: the values of its `Database.placeholder`s, if any."""
        # SQLAlchemy hands the driver a parameter set (empty without placeholders), so
        # psycopg reads the `%%` that literal rendering writes for a `%` in a value as one
        # `%` (a test checks).
        return await conn.exec_driver_sql(self.text(params), dict(driver_params or {}))


def translate(error: exc.DBAPIError, what: str) -> StoreError:
    """Turn a driver error into a transient or permanent store error, one line long."""
    message = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
    lowered = message.lower()
    if "file is not a database" in lowered:  # SQLite: no wait will make it one
        return StoreError(
            f"database file is not an SQLite database ({what}): {message}; check the path "
            "in [database] url"
        )
    if "fatal:" in lowered and any(hint in lowered for hint in _REFUSED_HINTS):
        # Not a missing table: the server refused who we are or where we want to go.
        return StoreError(
            f"database refused the connection ({what}): {message}; check the user, password "
            "and database name in [database] url"
        )
    if any(hint in lowered for hint in _SCHEMA_HINTS):
        return StoreSchemaError(
            f"database schema problem ({what}): {message}; check [instances] table and column "
            "names, and run `watchdogctl db upgrade` for the watchdog's own tables"
        )
    if isinstance(error, exc.IntegrityError | exc.ProgrammingError | exc.DataError):
        return StoreError(f"database rejected a statement ({what}): {message}")
    return StoreUnavailable(f"database unavailable ({what}): {message}")


def _json_value(value: Any, sqlite: bool) -> Any:
    """A value as `Database.rows` sends it: datetimes as text (naive UTC for SQLite, as
    SQLAlchemy stores them there; ISO 8601 with its offset for PostgreSQL)."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; pass an aware UTC datetime")
        utc = value.astimezone(UTC)
        return utc.strftime("%Y-%m-%d %H:%M:%S.%f") if sqlite else utc.isoformat()
    return value


def as_utc(value: Any) -> datetime:
    """A database timestamp (aware datetime or SQLite text) as an aware UTC datetime."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
