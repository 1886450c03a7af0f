"""The daemon's HTTP transport (httpcore on asyncio streams) against real servers: TLS with
a real certificate, a keep-alive connection the server closes while idle, and a server
that stops reading. The ApiRestart tests in test_actions.py run on it as well."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpcore
import httpx
import pytest

from watchdog.actions.api import ApiRestart, HttpClient, HttpxClient
from watchdog.actions.transport import AsyncioBackend, AsyncioTransport, DirectClient
from watchdog.config import load_settings
from watchdog.core.errors import TransientRecoveryError
from watchdog.core.model import Target
from watchdog.wiring import _api_clients

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Server:
    """An HTTP/1.1 server on asyncio that answers every request with `OK`, counting the
    connections it accepted; `close_idle` closes each connection right after answering
    (without saying so in a header), as a server's idle timeout does."""

    def __init__(self, *, close_idle: bool = False, tls: ssl.SSLContext | None = None) -> None:
        self.close_idle = close_idle
        self.tls = tls
        self.connections = 0
        self.requests = 0
        self.lines: list[bytes] = []  # each request's first line
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.lines.append(head.split(b"\r\n", 1)[0])
                self.requests += 1
                writer.write(OK)
                await writer.drain()
                if self.close_idle:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def plain() -> AsyncIterator[DirectClient]:
    """The daemon's own client, over plain HTTP."""
    async with DirectClient(AsyncioTransport(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))) as client:
        yield client


async def test_a_kept_connection_is_reused(plain: DirectClient) -> None:
    async with Server() as server:
        restart = ApiRestart(plain, f"http://127.0.0.1:{server.port}/restart/{{id}}")
        for n in range(5):
            await restart.recover(Target(f"i{n}", None))
    assert (server.requests, server.connections) == (5, 1)


async def test_a_connection_the_server_closed_while_idle_is_not_reused(
    plain: DirectClient,
) -> None:
    async with Server(close_idle=True) as server:
        restart = ApiRestart(plain, f"http://127.0.0.1:{server.port}/restart/{{id}}")
        for n in range(3):
            await restart.recover(Target(f"i{n}", None))
            await asyncio.sleep(0.05)  # the server's close reaches the idle connection
    assert (server.requests, server.connections) == (3, 3)


async def test_a_server_that_accepts_but_never_answers_times_out(
    plain: DirectClient,
) -> None:
    done = asyncio.Event()

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await done.wait()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    restart = ApiRestart(plain, f"http://127.0.0.1:{port}/restart/{{id}}", timeout=0.2)
    try:
        with pytest.raises(TransientRecoveryError, match=r"timed out after 0\.2s"):
            await restart.recover(Target("w", None))
    finally:
        done.set()
        server.close()
        await server.wait_closed()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, made by openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is needed for the TLS tests: apt-get install openssl")
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def _server_tls(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


async def test_https_verified_against_the_servers_certificate(
    certificate: tuple[Path, Path],
) -> None:
    cert, key = certificate
    trusting = ssl.create_default_context(cafile=str(cert))
    async with (
        Server(tls=_server_tls(cert, key)) as server,
        DirectClient(AsyncioTransport(trusting)) as client,
    ):
        restart = ApiRestart(client, f"https://localhost:{server.port}/restart/{{id}}")
        first = await restart.recover(Target("a", None))
        await restart.recover(Target("b", None))
    assert first.detail["status"] == 200
    assert (server.requests, server.connections) == (2, 1)


@pytest.mark.parametrize("ours", [True, False], ids=["asyncio", "httpx"])
async def test_https_to_an_unknown_certificate_fails_naming_the_certificate(
    certificate: tuple[Path, Path], ours: bool
) -> None:
    cert, key = certificate
    default = ssl.create_default_context()  # the system's CAs: the self-signed one is not
    client: HttpClient = (
        DirectClient(AsyncioTransport(default))
        if ours
        else HttpxClient(httpx.AsyncClient(trust_env=False, verify=default))
    )
    async with Server(tls=_server_tls(cert, key)) as server, client:
        restart = ApiRestart(client, f"https://localhost:{server.port}/restart/{{id}}")
        with pytest.raises(TransientRecoveryError, match="CERTIFICATE_VERIFY_FAILED"):
            await restart.recover(Target("a", None))
    assert server.requests == 0


@pytest.mark.parametrize("proxied", [False, True], ids=["direct", "proxy"])
async def test_a_proxy_named_in_the_environment_carries_the_restart_calls(
    monkeypatch: pytest.MonkeyPatch, proxied: bool
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    async with Server() as app, Server() as proxy:
        if proxied:
            monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        app_port = app.port
        url = f"http://127.0.0.1:{app_port}/restart/{{id}}"
        settings = load_settings(None, {"WATCHDOG_API__RESTART_URL": url})
        clients = _api_clients(settings)
        assert all(isinstance(c, HttpxClient) == proxied for c in clients)
        async with clients[0] as client:
            await ApiRestart(client, url).recover(Target("i1", None))
        for other in clients[1:]:
            await other.__aexit__(None, None, None)
    via, unused = (proxy, app) if proxied else (app, proxy)
    target = f"http://127.0.0.1:{app_port}/restart/i1" if proxied else "/restart/i1"
    assert via.lines == [f"POST {target} HTTP/1.1".encode()]
    assert unused.lines == []


_FIRST_CALL = """
import asyncio, sys
from watchdog.actions.api import ApiRestart
from watchdog.config import load_settings
from watchdog.core.model import Target
from watchdog.wiring import _api_clients

async def serve(reader, writer):
    try:
        while True:
            await reader.readuntil(b"\\r\\n\\r\\n")
            writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok")
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
        writer.close()

async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/restart/{{id}}"
    clients = _api_clients(load_settings(None, {"WATCHDOG_API__RESTART_URL": url}))
    for client in clients:
        await client.__aenter__()  # as the daemon enters them, at start-up
    before = set(sys.modules)
    await ApiRestart(clients[0], url).recover(Target("i1", None))
    print(type(clients[0]).__name__, sorted(set(sys.modules) - before))
    for client in clients:
        await client.__aexit__(None, None, None)
    server.close()

asyncio.run(main())
"""


@pytest.mark.parametrize("proxied", [False, True], ids=["direct", "httpx"])
def test_the_first_restart_call_loads_no_module(proxied: bool) -> None:
    """httpcore loads anyio's asyncio backend (some thirty modules) on its first request:
    the daemon's clients load it when they are entered at start-up, so the first call of
    a restart storm does not (it cost that call about 20 ms, in a fresh process)."""
    env = {**os.environ, "NO_PROXY": "127.0.0.1"}
    env.pop("HTTP_PROXY", None)
    if proxied:  # a proxy named: httpx's own clients, which still go direct here
        env["HTTP_PROXY"] = "http://127.0.0.1:9"
    done = subprocess.run(
        [sys.executable, "-c", _FIRST_CALL], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    kind = "HttpxClient" if proxied else "DirectClient"
    assert done.stdout.strip() == f"{kind} []"


async def test_closing_a_connection_whose_peer_stopped_reading_aborts_it() -> None:
    """A write the peer never reads leaves data queued; closing must not wait for it
    forever (the daemon closes every client at shutdown)."""
    peer_closed = asyncio.Event()

    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await peer_closed.wait()  # never reads
        writer.close()

    server = await asyncio.start_server(deaf, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        stream = await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=5.0)
        with pytest.raises(httpcore.WriteTimeout):
            await stream.write(b"x" * (64 * 2**20), timeout=0.2)  # far beyond socket buffers
        socket_ = stream.get_extra_info("socket")
        await asyncio.wait_for(stream.aclose(), timeout=10.0)  # returns: aborted
        assert socket_.fileno() == -1  # the socket is released
    finally:
        peer_closed.set()
        server.close()
        await server.wait_closed()
