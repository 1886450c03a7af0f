"""psutil evidence about a hosting process, for audit details, `watchdogctl show` and the
generation of a process a backend only knows by its PID."""

from __future__ import annotations

import time
from typing import Any

import psutil

from watchdog.core.model import Generation


def process_facts(pid: int | None) -> dict[str, Any] | None:
    """PID, state, RSS and uptime of a live process, or None when it cannot be found."""
    if not pid:
        return None
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            return {
                "pid": pid,
                "state": proc.status(),
                "rss": proc.memory_info().rss,
                "uptime": round(time.time() - proc.create_time(), 1),
            }
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def process_started(pid: int | None) -> float | None:
    """When local process `pid` started (Unix seconds, to the clock tick), or None when it
    cannot be seen (no pid, gone, another host's, not ours to read)."""
    if not pid:
        return None
    try:
        return round(psutil.Process(pid).create_time(), 2)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def local_generation(pid: int | None, started: float | None = None) -> Generation | None:
    """The generation of process `pid` (None for no pid): its start time `started` when the
    backend knows it, else the local process's own (`process_started`)."""
    if not pid:
        return None
    return Generation(pid, started if started is not None else process_started(pid))


def restart_evidence(
    old_pid: int | None, old_facts: dict[str, Any] | None, new_pid: int | None
) -> dict[str, Any]:
    """The audit detail of a process restart: old and new PID, the old process's state."""
    detail: dict[str, Any] = {"old_pid": old_pid, "new_pid": new_pid}
    if old_facts is not None:
        detail["old_state"] = old_facts["state"]
        detail["old_rss"] = old_facts["rss"]
    return detail
