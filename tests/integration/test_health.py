"""The health endpoint: the real server on a free loopback port, a fake daemon behind it,
and real HTTP requests through httpx (and raw sockets for what httpx would not send)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from watchdog.config import HealthSettings
from watchdog.core.errors import ConfigError
from watchdog.core.model import AuditAction, AuditRow, Outcome
from watchdog.daemon import health
from watchdog.daemon.health import HEAD_LIMIT, SHUTDOWN_TIMEOUT, HealthServer
from watchdog.daemon.metrics import Metrics
from watchdog.daemon.selfcheck import liveness, readiness

TOKEN = "s3cret-token-value"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


class FakeSource:
    """A daemon whose answers the test sets."""

    def __init__(self) -> None:
        self.is_alive = True
        self.readiness: tuple[bool, str] = (True, "ok")
        self.state: dict[str, Any] = {
            "nodes": [{"id": "host:1", "leader": True}],
            "breakers": [{"backend": "api", "state": "closed"}],
            "brake": {"engaged": False},
            "incidents": [],
            "at": T0,  # not JSON by itself: served as its text
        }
        self.failure: Exception | None = None

    def alive(self) -> bool:
        return self.is_alive

    def ready(self) -> tuple[bool, str]:
        return self.readiness

    async def status(self) -> dict[str, Any]:
        await asyncio.sleep(0)
        if self.failure is not None:
            raise self.failure
        return self.state


def settings() -> HealthSettings:
    # Port 0: a free port chosen by the kernel (the setting itself requires 1..65535).
    return HealthSettings(enabled=True).model_copy(update={"port": 0})


@pytest.fixture
def source() -> FakeSource:
    return FakeSource()


@pytest.fixture
def metrics() -> Metrics:
    metrics = Metrics()
    metrics.observe_audit(AuditRow(1, T0, "i-1", AuditAction.DB_FLAG, Outcome.OK))
    metrics.set_leader(True)
    return metrics


async def started(
    source: FakeSource, metrics: Metrics, token: str | None = None
) -> AsyncIterator[HealthServer]:
    server = HealthServer(settings(), source, metrics, token)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def server(source: FakeSource, metrics: Metrics) -> AsyncIterator[HealthServer]:
    async for server in started(source, metrics):
        yield server


@pytest.fixture
async def locked(source: FakeSource, metrics: Metrics) -> AsyncIterator[HealthServer]:
    async for server in started(source, metrics, TOKEN):
        yield server


def client(server: HealthServer, token: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", headers=headers)


async def get(server: HealthServer, path: str, token: str | None = None) -> httpx.Response:
    async with client(server, token) as http:
        return await http.get(path)


# ------------------------------------------------------------------------- routes


async def test_healthz_says_alive(server: HealthServer, source: FakeSource) -> None:
    response = await get(server, "/healthz")
    assert (response.status_code, response.json()) == (200, {"alive": True})
    assert response.headers["content-type"].startswith("application/json")

    source.is_alive = False
    response = await get(server, "/healthz")
    assert (response.status_code, response.json()) == (503, {"alive": False})


async def test_readyz_says_ready_or_why_not(server: HealthServer, source: FakeSource) -> None:
    response = await get(server, "/readyz")
    assert (response.status_code, response.json()) == (200, {"ready": True, "reason": "ok"})

    source.readiness = (False, "database unreachable")
    response = await get(server, "/readyz")
    assert response.status_code == 503
    assert response.json() == {"ready": False, "reason": "database unreachable"}


async def test_status_is_the_sources_json(server: HealthServer) -> None:
    response = await get(server, "/status")
    assert response.status_code == 200
    assert response.json() == {
        "nodes": [{"id": "host:1", "leader": True}],
        "breakers": [{"backend": "api", "state": "closed"}],
        "brake": {"engaged": False},
        "incidents": [],
        "at": str(T0),
    }


async def test_a_failing_status_answers_500_with_one_line(
    server: HealthServer, source: FakeSource
) -> None:
    source.failure = RuntimeError(
        "connection to postgresql://wd:hunter2@db:5432/app failed\nsecond line"
    )
    with capture_logs() as logs:
        response = await get(server, "/status")
    assert response.status_code == 500
    error = response.json()["error"]
    assert error == (
        "/status failed: RuntimeError: connection to postgresql://wd:***@db:5432/app failed "
        "second line"
    )
    assert "hunter2" not in response.text
    assert [e["event"] for e in logs] == ["health_request_failed"]
    assert logs[0]["path"] == "/status"
    assert logs[0]["log_level"] == "error"

    source.failure = None  # the server lives on
    assert (await get(server, "/status")).status_code == 200


async def test_metrics_are_the_prometheus_text_format(server: HealthServer) -> None:
    response = await get(server, "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    assert values[("watchdog_actions_total", (("action", "db_flag"), ("outcome", "ok")))] == 1
    assert values[("watchdog_leader", ())] == 1


async def test_unknown_paths_and_methods(server: HealthServer) -> None:
    async with client(server) as http:
        assert (await http.get("/nope")).status_code == 404
        assert (await http.post("/healthz")).status_code == 405
        assert (await http.head("/healthz")).status_code == 200


async def test_head_has_the_length_but_no_body_and_a_query_is_ignored(
    server: HealthServer,
) -> None:
    async with client(server) as http:
        head = await http.head("/readyz?verbose=1")
        full = await http.get("/readyz?verbose=1")
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["content-length"] == str(len(full.content))
    assert full.json() == {"ready": True, "reason": "ok"}


async def raw(server: HealthServer, data: bytes, *, pause: float = 0.0) -> bytes:
    """Send `data` (in two halves `pause` apart) on a plain socket; the whole answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        half = len(data) // 2
        writer.write(data[:half])
        await writer.drain()
        await asyncio.sleep(pause)
        writer.write(data[half:])
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5.0)  # until the server closes
    finally:
        writer.close()


async def test_a_request_in_pieces_is_answered_and_the_connection_closed(
    server: HealthServer,
) -> None:
    answer = await raw(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", pause=0.05)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Connection: close" in head
    assert body == b'{"alive": true}'


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"NONSENSE\r\n\r\n", b"400"),
        (b"GET /healthz HTTP/2\r\n\r\n", b"400"),
        (b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n", b"400"),
        (b"GET /healthz HTTP/1.1\r\nX-Pad: " + b"a" * (HEAD_LIMIT + 1) + b"\r\n\r\n", b"431"),
    ],
)
async def test_a_malformed_or_oversized_request_gets_an_error_not_a_crash(
    server: HealthServer, request_bytes: bytes, status: bytes
) -> None:
    answer = await raw(server, request_bytes)
    assert answer.startswith(b"HTTP/1.1 " + status)
    assert (await get(server, "/healthz")).status_code == 200  # the server lives on


async def test_a_silent_client_times_out_and_blocks_nobody(
    server: HealthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(health, "HEAD_TIMEOUT", 0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        assert (await get(server, "/healthz")).status_code == 200  # served meanwhile
        answer = await asyncio.wait_for(reader.read(), 5.0)
        assert answer.startswith(b"HTTP/1.1 408")
    finally:
        writer.close()


async def test_stop_closes_a_connection_still_sending_its_request(
    source: FakeSource, metrics: Metrics
) -> None:
    server = HealthServer(settings(), source, metrics)
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\n")  # and never the rest
        await writer.drain()
        await asyncio.sleep(0.05)
        began = time.monotonic()
        await server.stop()
        assert time.monotonic() - began < 1.0  # not HEAD_TIMEOUT
        assert await asyncio.wait_for(reader.read(), 5.0) == b""  # closed, nothing sent
    finally:
        writer.close()


# ---------------------------------------------------------------------- the token


def assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert TOKEN not in response.text
    assert TOKEN not in str(response.headers)


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/status", "/metrics", "/nope"])
async def test_without_a_token_every_route_is_401(locked: HealthServer, path: str) -> None:
    assert_refused(await get(locked, path))


@pytest.mark.parametrize(
    "authorization",
    [
        "",
        "Bearer",
        "Bearer wrong",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        f"Basic {TOKEN}",
        TOKEN,
    ],
)
async def test_a_wrong_token_is_401(locked: HealthServer, authorization: str) -> None:
    async with client(locked) as http:
        assert_refused(await http.get("/status", headers={"Authorization": authorization}))


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/status", "/metrics"])
async def test_with_the_right_token_every_route_answers(locked: HealthServer, path: str) -> None:
    response = await get(locked, path, TOKEN)
    assert response.status_code == 200
    assert TOKEN not in response.text


async def test_the_scheme_is_case_insensitive(locked: HealthServer) -> None:
    async with client(locked) as http:
        response = await http.get("/healthz", headers={"Authorization": f"bearer {TOKEN}"})
    assert response.status_code == 200


async def test_a_non_ascii_token_is_refused_not_crashed(locked: HealthServer) -> None:
    async with client(locked) as http:
        response = await http.get(
            "/healthz", headers={b"Authorization": "Bearer s3cr\u00e9t".encode()}
        )
    assert response.status_code == 401


async def test_with_a_token_an_unknown_path_is_404(locked: HealthServer) -> None:
    assert (await get(locked, "/nope", TOKEN)).status_code == 404


def test_an_empty_token_is_refused(source: FakeSource, metrics: Metrics) -> None:
    with pytest.raises(ValueError, match="empty"):
        HealthServer(settings(), source, metrics, "")


# ------------------------------------------------------------------- the socket


def listening(port: int) -> list[Any]:
    connections = psutil.Process().net_connections(kind="tcp")
    return [c for c in connections if c.laddr and c.laddr.port == port and c.status != "TIME_WAIT"]


async def test_stop_releases_the_port(source: FakeSource, metrics: Metrics) -> None:
    server = HealthServer(settings(), source, metrics)
    await server.start()
    port = server.port
    assert port > 0
    assert listening(port)
    assert (await get(server, "/healthz")).status_code == 200

    await server.stop()
    assert not listening(port)
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.port
    async with httpx.AsyncClient() as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{port}/healthz")
    # Nobody listens there any more: the port can be bound again (SO_REUSEADDR still
    # refuses a port somebody listens on).
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()
    await server.stop()  # idempotent


async def test_a_restarted_server_can_take_the_same_port(
    source: FakeSource, metrics: Metrics
) -> None:
    first = HealthServer(settings(), source, metrics)
    await first.start()
    port = first.port
    await first.stop()
    same = HealthSettings(enabled=True, port=port)
    second = HealthServer(same, source, metrics)
    await second.start()
    try:
        assert second.port == port
        assert (await get(second, "/readyz")).status_code == 200
    finally:
        await second.stop()


async def test_stop_does_not_wait_for_an_idle_keep_alive_connection(
    source: FakeSource, metrics: Metrics
) -> None:
    server = HealthServer(settings(), source, metrics)
    await server.start()
    port = server.port
    async with client(server) as http:
        assert (await http.get("/healthz")).status_code == 200  # connection stays open
        began = time.monotonic()
        await server.stop()
        assert time.monotonic() - began < SHUTDOWN_TIMEOUT
    assert not listening(port)


async def test_start_twice_is_an_error(server: HealthServer) -> None:
    with pytest.raises(RuntimeError, match="already running"):
        await server.start()


async def test_a_taken_port_fails_start_and_leaks_nothing(
    source: FakeSource, metrics: Metrics
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        server = HealthServer(HealthSettings(enabled=True, port=port), source, metrics)
        with pytest.raises(ConfigError, match=r"^config error: health.port: cannot listen on "):
            await server.start()
        assert not server.running
        assert len(listening(port)) == 1  # only the test's own socket


# ----------------------------------------------------------------- the judgements


def test_liveness_allows_three_intervals_and_the_slack() -> None:
    assert liveness(0.0, 5.0)
    assert liveness(15.0, 5.0)
    assert not liveness(15.1, 5.0)
    assert liveness(20.0, 5.0, slack=5.0)
    assert not liveness(20.1, 5.0, slack=5.0)


def test_readiness_wants_the_database_and_a_recent_good_cycle() -> None:
    assert readiness(True, 0.0, 60.0) == (True, "ok")
    assert readiness(True, 60.0, 60.0) == (True, "ok")
    assert readiness(True, 61.0, 60.0) == (False, "last good cycle 61s ago (limit 60s)")
    assert readiness(True, None, 60.0) == (False, "no good cycle yet")
    assert readiness(False, 1.0, 60.0) == (False, "database unreachable")
    assert readiness(False, 1.0, 60.0, "cannot reach postgresql://u:pw@h/db") == (
        False,
        "database unreachable: cannot reach postgresql://u:***@h/db",
    )
