"""Fault injection against real components: what the watchdog does when they misbehave.

An HTTP server that accepts and never answers, or answers 503; a PostgreSQL server that is
stopped or frozen with SIGSTOP (a cluster of this module's own, never the session's shared
one); a supervisord that was shut down; an SQLite file locked by another connection. Every
test is bounded by its own timeouts and leaves no process or connection behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest
import sqlalchemy as sa

from tests.apptable import AppTable
from tests.pg import Cluster
from tests.supervisord import sleeper, supervisord
from watchdog.actions.api import ApiRestart, HttpClient
from watchdog.actions.supervisor import SupervisorRestart
from watchdog.actions.transport import AsyncioTransport, DirectClient
from watchdog.config import InstancesSettings
from watchdog.core.errors import PermanentRecoveryError, StoreUnavailable, TransientRecoveryError
from watchdog.core.model import Target
from watchdog.core.policy import DetectionRules
from watchdog.resilience import RetryingRecovery, retry_transient
from watchdog.store.database import Database
from watchdog.store.instances import SqlInstanceStore
from watchdog.wiring import api_tls

TARGET = Target("inst-1", None)
PASSWORD = "hunter2-not-for-logs"  # ignored by the trust-auth cluster; must never be shown


def instances(db: Database) -> SqlInstanceStore:
    return SqlInstanceStore(db, InstancesSettings(), DetectionRules())


# ------------------------------------------------------------------------------- HTTP


@contextmanager
def silent_server() -> Iterator[tuple[str, list[socket.socket]]]:
    """A TCP server that accepts every connection and never sends a byte.

    Yields the restart URL template and the accepted connections."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    accepted: list[socket.socket] = []
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/api/instances/{{id}}/restart", accepted
    finally:
        done.set()
        thread.join(5)
        for conn in accepted:
            conn.close()
        listener.close()


@dataclass
class Script:
    """The statuses to answer with, one per request (the last one repeats)."""

    statuses: list[int]
    paths: list[str] = field(default_factory=list)


class _ScriptServer(ThreadingHTTPServer):
    daemon_threads = True
    script: Script


class _ScriptHandler(BaseHTTPRequestHandler):
    server: _ScriptServer

    def do_POST(self) -> None:
        script = self.server.script
        script.paths.append(self.path)
        status = script.statuses.pop(0) if len(script.statuses) > 1 else script.statuses[0]
        body = b"busy, try later" if status == 503 else b"{}"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def scripted_server(*statuses: int) -> Iterator[tuple[str, Script]]:
    server = _ScriptServer(("127.0.0.1", 0), _ScriptHandler)
    server.script = Script(list(statuses))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        yield f"http://127.0.0.1:{port}/api/instances/{{id}}/restart", server.script
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
async def client() -> AsyncIterator[HttpClient]:
    """The daemon's own client (no proxy named)."""
    async with DirectClient(AsyncioTransport(api_tls("http://"))) as direct:
        yield direct


async def test_api_that_never_answers_times_out_as_transient(client: HttpClient) -> None:
    with silent_server() as (url, accepted):
        api = ApiRestart(client, url, timeout=0.5)
        start = time.monotonic()
        with pytest.raises(TransientRecoveryError, match=r"timed out after 0\.5s") as caught:
            await api.recover(TARGET)
        assert time.monotonic() - start < 1.0
        assert "ReadTimeout" in str(caught.value)
        assert len(accepted) == 1  # it connected; the silence is what timed out


async def test_retries_of_a_silent_api_stay_within_its_timeout(
    client: HttpClient,
) -> None:
    with silent_server() as (url, accepted):
        wrapped = RetryingRecovery(ApiRestart(client, url, timeout=0.5), attempts=3)
        start = time.monotonic()
        with pytest.raises(TransientRecoveryError, match=r"\(after 1 try\)$"):
            await wrapped.recover(TARGET)
        assert time.monotonic() - start < 0.5 + 0.3
        assert len(accepted) == 1  # the first try used the whole budget: no doomed retry


async def test_503_twice_then_200_succeeds_on_the_third_try(client: HttpClient) -> None:
    with scripted_server(503, 503, 200) as (url, script):
        wrapped = RetryingRecovery(ApiRestart(client, url, timeout=5.0), attempts=3)
        start = time.monotonic()
        result = await wrapped.recover(TARGET)
        assert time.monotonic() - start < 2.0  # two waits of 0.2 to 0.8 s
        assert result.detail["status"] == 200
        assert script.paths == ["/api/instances/inst-1/restart"] * 3


async def test_503_every_time_gives_up_after_attempts(client: HttpClient) -> None:
    with scripted_server(503) as (url, script):
        wrapped = RetryingRecovery(ApiRestart(client, url, timeout=5.0), attempts=3)
        with pytest.raises(TransientRecoveryError) as caught:
            await wrapped.recover(TARGET)
        assert len(script.paths) == 3
        assert str(caught.value).startswith("HTTP 503 from POST http://127.0.0.1:")
        assert str(caught.value).endswith("busy, try later (after 3 tries)")


async def test_404_is_permanent_and_asked_once(client: HttpClient) -> None:
    with scripted_server(404, 200) as (url, script):
        wrapped = RetryingRecovery(ApiRestart(client, url, timeout=5.0), attempts=3)
        with pytest.raises(PermanentRecoveryError, match="HTTP 404") as caught:
            await wrapped.recover(TARGET)
        assert len(script.paths) == 1
        assert "after" not in str(caught.value)


# ------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[Cluster]:
    """A PostgreSQL server of this module's own, with one instance row: these tests stop
    and freeze it, which the session's shared server must never see."""
    with Cluster() as server:
        app = AppTable(server.url)
        try:
            app.create()
            app.add("inst-1", heartbeat_ago=1.0)
        finally:
            app.dispose()
        yield server


@pytest.fixture
def pg(own_cluster: Cluster) -> Iterator[Cluster]:
    """The module's server, running and not suspended before and after each test."""
    own_cluster.resume()
    own_cluster.start()
    yield own_cluster
    own_cluster.resume()
    own_cluster.start()


def with_password(url: str) -> str:
    return sa.make_url(url).set(password=PASSWORD).render_as_string(hide_password=False)


@pytest.fixture
async def pg_db(pg: Cluster) -> AsyncIterator[Database]:
    """A Database on the module's server with a connection in its pool, as the daemon has."""
    db = Database(with_password(pg.url), timeout=1.0)
    try:
        assert (await instances(db).scan()).enabled_count == 1
        yield db
    finally:
        await db.dispose()


@pytest.mark.postgres
async def test_postgres_stopped_is_store_unavailable_quickly(pg: Cluster, pg_db: Database) -> None:
    pg.stop()
    start = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        await instances(pg_db).scan()
    assert time.monotonic() - start < 3.0
    message = str(caught.value)
    assert message.startswith("database unavailable (detection query): ")
    assert "Connection refused" in message, message
    assert "\n" not in message
    assert PASSWORD not in message
    # The daemon keeps its Database: once the server is back, the same one works again.
    pg.start()
    assert (await instances(pg_db).scan()).enabled_count == 1


@pytest.mark.postgres
async def test_postgres_frozen_is_store_unavailable_within_the_timeout(
    pg: Cluster, pg_db: Database
) -> None:
    """SIGSTOPped: the TCP connection is up but nothing answers. Only the client-side
    timeout can end the scan."""
    pg.suspend()
    try:
        start = time.monotonic()
        async with asyncio.timeout(4.0):  # the test's own bound, well past the 1 s timeout
            with pytest.raises(StoreUnavailable, match=r"did not answer within 1s"):
                await instances(pg_db).scan()
        elapsed = time.monotonic() - start
    finally:
        pg.resume()
    assert elapsed < 1.0 + 0.75


@pytest.mark.postgres
async def test_postgres_frozen_then_resumed_the_same_database_works_again(
    pg: Cluster, pg_db: Database
) -> None:
    store = instances(pg_db)
    pg.suspend()
    try:
        scan = asyncio.create_task(store.scan())
        await asyncio.wait({scan}, timeout=1.5)  # past the 1 s timeout
    finally:
        pg.resume()
    with pytest.raises(StoreUnavailable, match=r"did not answer within 1s"):
        async with asyncio.timeout(12.0):
            await scan
    # Same Database object, as the daemon keeps its engine (pool_pre_ping is on).
    start = time.monotonic()
    async with asyncio.timeout(5.0):
        assert (await store.scan()).enabled_count == 1
    assert time.monotonic() - start < 1.0


@pytest.mark.postgres
async def test_the_kept_detection_connection_is_replaced_when_its_server_side_dies(
    pg: Cluster, pg_db: Database
) -> None:
    """The detection query keeps its connection between cycles; one killed under it
    costs one retry on a fresh connection, not a failed cycle."""
    store = instances(pg_db)
    assert pg_db.kept == 1  # kept after the fixture's scan
    async with pg_db.connect("kept pid") as conn:
        others = (
            (
                await conn.execute(
                    sa.text(
                        "SELECT pid FROM pg_stat_activity WHERE application_name = 'watchdog' "
                        "AND pid <> pg_backend_pid()"
                    )
                )
            )
            .scalars()
            .all()
        )
        assert others  # the kept one, idle
        await conn.execute(
            sa.text("SELECT pg_terminate_backend(pid) FROM unnest(:p) pid"), {"p": list(others)}
        )
    assert (await store.scan()).enabled_count == 1
    assert pg_db.kept == 1
    # A reader while the kept one is busy gets a pooled connection of its own.
    both = await asyncio.gather(store.scan(), store.scan())
    assert [s.enabled_count for s in both] == [1, 1]
    await pg_db.dispose()
    assert pg_db.kept == 0


@pytest.mark.postgres
def test_suspend_stops_the_postmaster_and_all_its_children(pg: Cluster) -> None:
    postmaster = psutil.Process(pg.postmaster_pid())
    try:
        stopped = set(pg.suspend())
        assert postmaster.status() == psutil.STATUS_STOPPED
        children = postmaster.children(recursive=True)
        assert children  # checkpointer, background writer, walwriter, ...
        for child in children:
            # A backend that was exiting stays a zombie: its parent cannot reap it now.
            with contextlib.suppress(psutil.NoSuchProcess):
                assert child.status() in {psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE}
                assert child.pid in stopped
    finally:
        pg.resume()
    assert postmaster.status() != psutil.STATUS_STOPPED
    for child in postmaster.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            assert child.status() != psutil.STATUS_STOPPED


# ------------------------------------------------------------------------- supervisord


async def test_supervisord_down_is_a_quick_transient_failure() -> None:
    with supervisord({"app": sleeper()}) as sv:
        program_pid = sv.pid("app")
        restart = SupervisorRestart(sv.url, "app", timeout=5.0, stop_wait=1.0)
        sv.stop()
        assert not psutil.pid_exists(program_pid)

        start = time.monotonic()
        with pytest.raises(TransientRecoveryError, match="unreachable") as caught:
            await restart.recover(TARGET)
        assert time.monotonic() - start < 1.0
        assert "check that supervisord runs" in str(caught.value)

        wrapped = RetryingRecovery(restart, attempts=3)
        start = time.monotonic()
        with pytest.raises(TransientRecoveryError, match=r"\(after 3 tries\)$"):
            await wrapped.recover(TARGET)
        assert time.monotonic() - start < 2.0  # two short waits, far below the 5 s timeout


# ------------------------------------------------------------------------------ SQLite


@pytest.fixture
def sqlite_app(tmp_path: Path) -> Path:
    path = tmp_path / "app.db"
    app = AppTable(f"sqlite:///{path}")
    try:
        app.create()
        app.add("inst-1", heartbeat_ago=1.0)
    finally:
        app.dispose()
    return path


@contextmanager
def exclusive_lock(path: Path) -> Iterator[sqlite3.Connection]:
    """Another connection holding `BEGIN EXCLUSIVE` on the file until released."""
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        yield holder
    finally:
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()


async def test_sqlite_locked_is_store_unavailable_then_works(sqlite_app: Path) -> None:
    db = Database(f"sqlite:///{sqlite_app}", timeout=0.5)
    try:
        store = instances(db)
        with exclusive_lock(sqlite_app):
            start = time.monotonic()
            with pytest.raises(StoreUnavailable) as caught:
                await store.scan()
            assert time.monotonic() - start < 1.0 + 0.25
            message = str(caught.value)
            assert "locked" in message or "did not answer within 0.5s" in message, message
            assert "\n" not in message
        assert (await store.scan()).enabled_count == 1
    finally:
        await db.dispose()


async def test_a_read_retried_across_a_short_lock_succeeds(sqlite_app: Path) -> None:
    db = Database(f"sqlite:///{sqlite_app}", timeout=0.5)
    try:
        store = instances(db)
        with exclusive_lock(sqlite_app) as holder:
            asyncio.get_running_loop().call_later(0.7, holder.execute, "ROLLBACK")
            start = time.monotonic()
            scan = await retry_transient(store.scan, 3, "detection query")
            elapsed = time.monotonic() - start
        assert scan.enabled_count == 1
        assert 0.5 < elapsed < 2.5  # the first try waited out its timeout, a later one won
    finally:
        await db.dispose()
