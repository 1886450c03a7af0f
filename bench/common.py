"""What every scenario shares: the run's environment, statistics and the result table."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.pg import Cluster

WATCHDOGCTL = str(Path(sys.executable).parent / "watchdogctl")


@dataclass
class Figure:
    scenario: str
    metric: str
    value: float | None
    unit: str
    target: str = ""
    met: bool | None = None  # None: no target, or not measured


@dataclass
class Results:
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def add(
        self,
        scenario: str,
        metric: str,
        value: float | None,
        unit: str,
        target: str = "",
        met: bool | None = None,
    ) -> None:
        self.figures.append(Figure(scenario, metric, value, unit, target, met))

    def as_json(self) -> dict[str, Any]:
        return {"figures": [asdict(f) for f in self.figures], "details": self.details}


class Env:
    """The run's temporary directory and (started on first use) PostgreSQL cluster."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.tmp = Path(tempfile.mkdtemp(prefix="watchdog-bench-"))
        self._cluster: Cluster | None = None
        self._children: list[subprocess.Popen[bytes]] = []

    @property
    def cluster(self) -> Cluster:
        if self._cluster is None:
            cluster = Cluster()
            self._cluster = cluster  # registered first: close() removes it even if start fails
            cluster.start()
        return self._cluster

    def sqlite_url(self, name: str) -> str:
        path = self.tmp / f"{name}.db"
        path.unlink(missing_ok=True)
        return f"sqlite:///{path}"

    @contextlib.contextmanager
    def daemon(self, config: Path, *args: str, log_name: str) -> Iterator[subprocess.Popen[bytes]]:
        """`watchdogctl run` as a subprocess, stopped with SIGTERM (then SIGKILL) after."""
        env = {**os.environ, "WATCHDOG_CONFIG": str(config), "PYTHONUNBUFFERED": "1"}
        with (self.tmp / f"{log_name}.out").open("wb") as out:
            proc = subprocess.Popen(
                [WATCHDOGCTL, "run", *args], stdout=out, stderr=subprocess.STDOUT, env=env
            )
            self._children.append(proc)
            try:
                yield proc
            finally:
                stop(proc)

    def close(self) -> None:
        for proc in self._children:
            stop(proc)
        try:
            if self._cluster is not None:
                self._cluster.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


def stop(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def wait_until(predicate: Any, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def pct(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100), linear between closest ranks; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def process_tree_alive(pid: int) -> bool:
    return psutil.pid_exists(pid)
