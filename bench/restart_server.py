"""The recovery bench's restart endpoint, in a process of its own (not the bench's threads
and GIL): `python -m bench.restart_server DELAY [PORT]`.

An asyncio HTTP/1.1 server (standard library only) on 127.0.0.1: `POST
/api/instances/{id}/restart` is answered `200 {"ok": true}` DELAY seconds after it was
received, any other path 404. Connections are kept alive; each one's requests are read
one after the other (request line, headers, a Content-Length body). Its first line on
stdout is the port it listens on; then one line per restart received, `TIME ID` (wall
`time.time()` at receipt, the instance id as sent in the path), flushed at once. SIGTERM or
SIGINT closes it: every receipt line is out before it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable

_PATH = re.compile(rb"^/api/instances/([^/?#]+)/restart$")
_OK = b'{"ok": true}'
_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed"}
_REASONS |= {411: b"Length Required", 431: b"Request Header Fields Too Large"}
BACKLOG = 1024  # a storm's connects all at once must not overflow it (1 s SYN retries)
_MAX_HEADERS = 100


class _BadRequest(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _report(line: str) -> None:
    # One write per line, unbuffered: a line is in the pipe before the answer goes out,
    # and nothing is left in a buffer when the process ends.
    data = line.encode()
    while data:
        data = data[os.write(1, data) :]


def _response(status: int, body: bytes, close: bool) -> bytes:
    head = [
        b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, b"")),
        b"Content-Type: application/json",
        b"Content-Length: %d" % len(body),
    ]
    if close:
        head.append(b"Connection: close")
    return b"\r\n".join(head) + b"\r\n\r\n" + body


async def _read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes, bool] | None:
    """(method, target, keep-alive) of the next request, its body read; None at EOF."""
    line = await reader.readline()
    if not line:
        return None
    parts = line.split()
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise _BadRequest(400)
    method, target, version = parts
    headers: dict[bytes, bytes] = {}
    for _ in range(_MAX_HEADERS):
        header = await reader.readline()
        if header in (b"\r\n", b"\n", b""):
            break
        name, sep, value = header.partition(b":")
        if not sep:
            raise _BadRequest(400)
        headers[name.strip().lower()] = value.strip()
    else:
        raise _BadRequest(431)
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        raise _BadRequest(411)
    try:
        length = int(headers.get(b"content-length", b"0"))
    except ValueError:
        raise _BadRequest(400) from None
    if length < 0:
        raise _BadRequest(400)
    if length:
        await reader.readexactly(length)
    connection = headers.get(b"connection", b"").lower()
    keep_alive = connection != b"close" and (version != b"HTTP/1.0" or connection == b"keep-alive")
    return method, target, keep_alive


async def _answer(method: bytes, target: bytes, delay: float) -> tuple[int, bytes]:
    match = _PATH.match(target)
    if match is None:
        return 404, b'{"error": "not found"}'
    if method != b"POST":
        return 405, b'{"error": "method not allowed"}'
    _report(f"{time.time():.6f} {match.group(1).decode('latin-1')}\n")
    await asyncio.sleep(delay)
    return 200, _OK


def _handler(
    delay: float,
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # Headers and body go out in one write anyway; no Nagle delay on any of them.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                try:
                    request = await _read_request(reader)
                except _BadRequest as bad:
                    writer.write(_response(bad.status, b"", close=True))
                    await writer.drain()
                    return
                if request is None:
                    return
                method, target, keep_alive = request
                status, body = await _answer(method, target, delay)
                writer.write(_response(status, body, close=not keep_alive))
                await writer.drain()
                if not keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return  # ValueError: a line longer than the reader's limit
        except asyncio.CancelledError:
            # The shutdown: asyncio.run cancels the connections still open. Ending normally
            # keeps Python 3.11's StreamReaderProtocol from logging each as an error.
            return
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return handle


async def serve(delay: float, port: int = 0) -> None:
    """Serve until SIGTERM or SIGINT; the port is printed first."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = await asyncio.start_server(
        _handler(delay), "127.0.0.1", port, backlog=BACKLOG, reuse_address=True
    )
    _report(f"{server.sockets[0].getsockname()[1]}\n")
    await stop.wait()
    # Stop accepting, without waiting for the kept-alive connections (wait_closed would,
    # since 3.12): asyncio.run cancels their tasks, each closing its connection.
    server.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2:
        print("usage: python -m bench.restart_server DELAY [PORT]", file=sys.stderr)
        return 2
    asyncio.run(serve(float(args[0]), int(args[1]) if len(args) > 1 else 0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
