"""The application's side for the daemon scenarios: a heartbeat writer and a restart API."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import psycopg


class Beater:
    """One bulk UPDATE a second: every instance beats except those `frozen(t)` names,
    `t` being seconds since the writer started."""

    def __init__(self, conninfo: str, frozen: Callable[[float], set[str]]) -> None:
        self._conninfo = conninfo
        self._frozen = frozen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="beater", daemon=True)
        self.started = 0.0
        self.beats = 0
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            with psycopg.connect(self._conninfo, autocommit=True) as conn:
                while not self._stop.is_set():
                    frozen = sorted(self._frozen(time.monotonic() - self.started))
                    conn.execute(
                        "UPDATE instances SET last_heartbeat_at = now() WHERE NOT (id = ANY(%s))",
                        (frozen,),
                    )
                    self.beats += 1
                    self._stop.wait(1.0 - (time.monotonic() - self.started) % 1.0)
        except BaseException as exc:  # reported by the scenario
            self.error = exc

    def __enter__(self) -> Beater:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


class RestartApi:
    """The restart endpoint (bench/restart_server.py) in a process of its own, so that
    neither its threads nor the GIL are shared with the bench's (the Beater's): answers
    every restart after `delay` seconds; `received` gets (wall time of receipt, instance
    id) for each, as the server reports it. Started on entering, stopped on leaving."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.received: list[tuple[float, str]] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._port: int | None = None

    @property
    def url(self) -> str:
        if self._port is None:
            raise RuntimeError("RestartApi: enter it first (the server starts on __enter__)")
        return f"http://127.0.0.1:{self._port}/api/instances/{{id}}/restart"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("RestartApi: enter it first (the server starts on __enter__)")
        return self._proc.pid

    def __enter__(self) -> RestartApi:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.restart_server", repr(self.delay)],
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parent.parent,
        )
        self._proc = proc
        assert proc.stdout is not None
        first = proc.stdout.readline()
        if not first.strip().isdigit():
            self._stop()
            raise RuntimeError(f"the restart server did not start (said {first!r})")
        self._port = int(first)
        self._reader = threading.Thread(
            target=self._read, args=(proc.stdout,), name="restart-api", daemon=True
        )
        self._reader.start()
        return self

    def _read(self, stdout: IO[bytes]) -> None:
        """Every receipt line, until the server's end of file."""
        for line in stdout:
            at, _sep, instance_id = line.decode().rstrip("\n").partition(" ")
            self.received.append((float(at), instance_id))

    def __exit__(self, *_exc: object) -> None:
        self._stop()

    def _stop(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._reader is not None:
            self._reader.join(10)  # the pipe's end of file: every line written is read
        if proc.stdout is not None:
            proc.stdout.close()
        self._proc = None


def write_config(path: Path, body: str) -> Path:
    path.write_text(body)
    return path
