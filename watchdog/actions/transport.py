"""An httpx transport whose connections are plain asyncio streams.

httpx's own transport reaches the socket through anyio, which wraps every read and write
in a cancel scope and asks sniffio which event loop runs it: a large share of each call's
CPU in a restart storm. The watchdog only ever runs on asyncio, so its restart calls
go through httpcore's connection pool (the same HTTP/1.1 machinery httpx uses) on the
`AsyncioBackend` below, httpcore's documented extension point for the network layer.
An httpx client given a transport ignores the proxies the environment names, so where
one is named the daemon keeps httpx's own clients (see `wiring._api_clients`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import ssl
import urllib.request
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from typing import Any

import httpcore
import httpx

_CLOSE_WAIT = 0.5  # seconds a closing connection may take to flush before it is aborted

# Every httpcore error, as the httpx error its own transport raises for it.
_ERRORS: tuple[tuple[type[Exception], type[httpx.HTTPError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)

_CORE_ERRORS = tuple(core for core, _httpx in _ERRORS)


@contextlib.contextmanager
def _as_httpx_errors() -> Iterator[None]:
    try:
        yield
    except _CORE_ERRORS as exc:
        raise _translate(exc) from exc


def _translate(exc: Exception) -> httpx.HTTPError:
    """The first (most specific) httpx error the table maps `exc`'s class to."""
    mapped = next(to for core, to in _ERRORS if isinstance(exc, core))
    return mapped(str(exc))


class _Stream(httpcore.AsyncNetworkStream):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)
        except TimeoutError:
            raise httpcore.ReadTimeout(f"no data within {timeout}s") from None
        except OSError as exc:
            raise httpcore.ReadError(str(exc) or type(exc).__name__) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        try:
            self._writer.write(buffer)
            async with asyncio.timeout(timeout):
                await self._writer.drain()
        except TimeoutError:
            raise httpcore.WriteTimeout(f"could not send within {timeout}s") from None
        except OSError as exc:
            raise httpcore.WriteError(str(exc) or type(exc).__name__) from exc

    async def aclose(self) -> None:
        self._writer.close()
        try:
            async with asyncio.timeout(_CLOSE_WAIT):
                await self._writer.wait_closed()
        except TimeoutError:
            self._writer.transport.abort()  # a peer that stopped reading cannot hold us
        except OSError:
            pass

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                await self._writer.start_tls(ssl_context, server_hostname=server_hostname)
        except TimeoutError:
            await self.aclose()
            raise httpcore.ConnectTimeout(f"TLS handshake not done within {timeout}s") from None
        except (OSError, ssl.SSLError) as exc:
            await self.aclose()
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        return self

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self._writer.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._writer.get_extra_info("sockname")
        if info == "server_addr":
            return self._writer.get_extra_info("peername")
        if info == "socket":
            return self._writer.get_extra_info("socket")
        if info == "is_readable":
            # An idle keep-alive connection that reads anything was closed or broken by
            # the server: the pool must not send a request on it.
            return self._reader.at_eof() or self._writer.is_closing()
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network layer on asyncio streams."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        local = None if local_address is None else (local_address, 0)
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(host, port, local_addr=local)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"not connected within {timeout}s") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        sock: socket.socket = writer.get_extra_info("socket")
        for option in socket_options or ():
            sock.setsockopt(*option)
        return _Stream(reader, writer)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class _Body(httpx.AsyncByteStream):
    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        if hasattr(self._stream, "aclose"):
            with _as_httpx_errors():
                await self._stream.aclose()


class AsyncioTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 over httpcore's pool on `AsyncioBackend`, verified with `verify`, with
    httpx's connection limits."""

    def __init__(self, verify: ssl.SSLContext, limits: httpx.Limits | None = None) -> None:
        limits = limits or httpx.Limits()
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=verify,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=AsyncioBackend(),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _as_httpx_errors():
            response = await self._pool.handle_async_request(core_request)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_Body(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


# What httpx's client sends with every request unless told otherwise.
_DEFAULT_HEADERS = {
    "Accept": "*/*",
    "Accept-Encoding": "gzip, deflate",
    "Connection": "keep-alive",
    "User-Agent": f"python-httpx/{httpx.__version__}",
}


class DirectClient:
    """The two calls ApiRestart makes of an httpx client, straight on a transport.

    A restart call needs none of the client's per-request machinery (auth flows, redirect
    handling, event hooks, the cookie jar, matching the URL against proxy mounts), which
    cost much of each call's CPU in a storm. `proxies_in_environment` says when it must
    not be used: then httpx's client, which honours them, makes the calls."""

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        self._transport = transport

    def build_request(
        self, method: str, url: str, *, headers: Mapping[str, str], timeout: float
    ) -> httpx.Request:
        request = httpx.Request(
            method,
            url,
            headers={**_DEFAULT_HEADERS, **headers},
            extensions={"timeout": httpx.Timeout(timeout).as_dict()},
        )
        user, password = request.url.username, request.url.password
        if user or password:  # credentials in the URL are sent as basic auth, as httpx does
            pair = f"{user}:{password}".encode()
            request.headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        return request

    async def send(self, request: httpx.Request) -> httpx.Response:
        response = await self._transport.handle_async_request(request)
        response.request = request
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response

    async def __aenter__(self) -> DirectClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self._transport.aclose()


def proxies_in_environment() -> bool:
    """Whether the environment names an HTTP proxy (which httpx's client would use)."""
    return any(scheme != "no" for scheme in urllib.request.getproxies_environment())
