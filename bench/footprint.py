"""Scenario 4 — the daemon's footprint at 100k instances on PostgreSQL.

The real daemon (`watchdogctl run`, ladder `db_flag` only) on the cycle scenario's fleet
(1 % unhealthy, 5 % with open incidents); its first cycle resolves the healthy ones'
incidents. RSS is sampled with psutil through the whole run; CPU time per cycle is the
process's user+system time over the steady cycles after the first two, divided by their
number (the daemon's own `watchdog_cycle_duration_seconds_count`, read from /metrics).
"""

from __future__ import annotations

import re
import socket
import time
import urllib.request

import psutil

from bench.common import Env, Results, wait_until
from bench.daemon_common import config, prepare, wait_ready

NAME = "footprint"
MIB = 2**20
BOUND_MIB = 64  # issue 17: the daemon at 100k instances


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(env: Env, results: Results) -> None:
    n, interval, window = (10_000, 1.0, 3.0) if env.quick else (100_000, 2.0, 24.0)
    port = _free_port()
    url, conninfo = prepare(env, "bench_footprint", n)
    cfg = env.tmp / "footprint.toml"
    cfg.write_text(
        config(
            url,
            f"[detection]\ninterval = {interval}\ngrace = 0.0\n\n"
            '[escalation]\nladder = [ { action = "db_flag" } ]\n\n'
            "[safety]\nbrake_min_unhealthy = 1000000\n\n"
            f"[health]\nenabled = true\nport = {port}\n",
        )
    )
    count = "watchdog_cycle_duration_seconds_count"
    total = "watchdog_cycle_duration_seconds_sum"
    print(f"  {NAME}: daemon on {n} instances, interval {interval:g} s …", flush=True)
    rss: list[int] = []
    with env.daemon(cfg, log_name="footprint") as proc:
        me = psutil.Process(proc.pid)
        wait_ready(conninfo, proc)
        wait_until(lambda: _sample(me, rss) and _metric(port, count) >= 2, 60.0, 0.25)
        cpu0, t0 = me.cpu_times(), time.monotonic()
        cycles0, sum0 = _metric(port, count), _metric(port, total)
        while time.monotonic() - t0 < window:
            _sample(me, rss)
            time.sleep(0.25)
        cpu1, cycles1, sum1 = me.cpu_times(), _metric(port, count), _metric(port, total)
        _sample(me, rss)
    env.cluster.drop_database("bench_footprint")
    cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    cycles = int(cycles1 - cycles0)
    wall = (sum1 - sum0) / cycles if cycles else None
    peak = max(rss) / MIB if rss else None
    label = f"{NAME} pg {n // 1000}k"
    results.add(
        label,
        "daemon RSS peak",
        None if peak is None else round(peak, 1),
        "MiB",
        f"≤ {BOUND_MIB} MiB",
        None if peak is None else peak <= BOUND_MIB,
    )
    results.add(label, "daemon RSS at end", round(rss[-1] / MIB, 1) if rss else None, "MiB")
    per_cycle = cpu / cycles if cycles else None
    results.add(
        label,
        "CPU time / cycle",
        None if per_cycle is None else round(per_cycle * 1000, 1),
        "ms",
    )
    results.add(
        label,
        "daemon cycle duration (its metric)",
        None if wall is None else round(wall * 1000, 1),
        "ms",
    )
    results.add(label, "steady cycles measured", cycles, "")
    results.details[NAME] = {
        "instances": n,
        "interval": interval,
        "rss_samples_mib": [round(r / MIB, 1) for r in rss],
        "cpu_seconds": cpu,
        "cycles": cycles,
    }


def _sample(proc: psutil.Process, rss: list[int]) -> bool:
    try:
        rss.append(proc.memory_info().rss)
    except psutil.NoSuchProcess:
        return False
    return True
