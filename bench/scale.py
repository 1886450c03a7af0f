"""Scenario 6 — a million instances on PostgreSQL (issue 17): `python -m bench --only scale`.

1. The steady cycle against the raw detection query (the cycle scenario's measurement,
   1 % of the fleet frozen, 5 % with an open incident), without and with README's two
   suggested indexes.
2. The real daemon (`watchdogctl run`, ladder `db_flag` only, `stale_after` 120 s so the
   fleet filled at its start stays healthy through the run) on a million rows: 100 of
   them stop beating as the daemon starts (their heartbeat set so that each crosses
   `stale_after` 25-55 s later, at a known moment of the database clock), each timed to
   its `detected` row; the daemon's RSS is sampled through the run.
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import datetime

import psutil

from bench import cycle, fleet
from bench.common import Env, Results, median, pct, wait_until
from bench.daemon_common import config, first_rows, prepare, query, wait_ready

NAME = "scale"
MIB = 2**20
STALE = 120.0  # seconds: longer than the run, so only the instances moved back go stale
RSS_BOUND_MIB = 120.0
DELAY_BOUND = 0.25  # seconds past the threshold, p99
RATIO_BOUND = 1.2


def run(env: Env, results: Results) -> None:
    n, cycles, budget = (100_000, 10, 20.0) if env.quick else (1_000_000, 12, 60.0)
    for indexed in (False, True):
        _cycle(env, results, n, cycles, budget, indexed=indexed)
    _daemon(env, results, n)


def _cycle(
    env: Env, results: Results, n: int, cycles: int, budget: float, *, indexed: bool
) -> None:
    name = f"bench_scale_{'indexed' if indexed else 'plain'}"
    url = env.cluster.create_database(name)
    what = "with the suggested indexes" if indexed else "without indexes"
    print(f"  {NAME}: cycle at {n} instances, {what} …", flush=True)
    samples, _info = asyncio.run(cycle.measure(url, n, cycles, budget, indexed=indexed))
    env.cluster.drop_database(name)
    label = f"{NAME} pg {n // 1000}k" + (" indexed" if indexed else "")
    cycle_med, raw_med = median(samples.cycle), median(samples.raw)
    results.add(label, "cycle median (dry-run)", _ms(cycle_med), "ms")
    results.add(label, "raw detection query median", _ms(raw_med), "ms")
    ratio = cycle_med / raw_med if cycle_med and raw_med else None
    results.add(
        label,
        "cycle / raw query",
        None if ratio is None else round(ratio, 2),
        "×",
        f"≤ {RATIO_BOUND}×",
        None if ratio is None else ratio <= RATIO_BOUND,
    )
    results.add(label, "statements / cycle", median(samples.statements), "")


def _daemon(env: Env, results: Results, n: int) -> None:
    url, conninfo = prepare(env, "bench_scale_daemon", n, unhealthy_every=0, incident_every=0)
    rng = random.Random(20261130)
    frozen = [fleet.instance_id(g) for g in rng.sample(range(1, n + 1), 100)]
    cfg = env.tmp / "scale.toml"
    cfg.write_text(
        config(
            url,
            f"[detection]\nstale_after = {STALE}\ngrace = 0.0\n\n"
            '[escalation]\nladder = [ { action = "db_flag" } ]\n\n'
            "[safety]\nbrake_min_unhealthy = 1000000\n",
        )
    )
    # They stop beating now, as far as the daemon can tell: each crosses the threshold
    # 25-55 s from now (database clock), after the daemon has started and is watching.
    crossing: dict[str, datetime] = {}
    for instance_id in frozen:
        offset = rng.uniform(25.0, 55.0)
        crossing[instance_id] = query(
            conninfo,
            "UPDATE instances SET last_heartbeat_at = now() - make_interval(secs => %s) "
            "WHERE id = %s RETURNING last_heartbeat_at + make_interval(secs => %s)",
            (STALE - offset, instance_id, STALE),
        )[0][0]
    print(f"  {NAME}: daemon on {n} instances, 100 crossing stale_after …", flush=True)
    rss: list[int] = []
    with env.daemon(cfg, log_name="scale") as proc:
        me = psutil.Process(proc.pid)
        wait_ready(conninfo, proc, timeout=60.0)
        end = time.monotonic() + 75.0

        def all_detected() -> bool:
            rss.append(me.memory_info().rss)
            found = set(first_rows(conninfo, "detected")) & set(frozen)
            return len(found) == len(frozen) or time.monotonic() > end

        wait_until(all_detected, 80.0, 0.5)
        rss.append(me.memory_info().rss)
    detected = first_rows(conninfo, "detected")
    env.cluster.drop_database("bench_scale_daemon")
    delays = [(detected[i] - crossing[i]).total_seconds() for i in frozen if i in detected]
    label = f"{NAME} pg {n // 1000}k daemon"
    results.add(label, "frozen instances detected", f"{len(delays)} of {len(frozen)}", "")
    p99 = pct(delays, 99)
    results.add(
        label,
        "detection delay p99",
        None if p99 is None else round(p99, 3),
        "s",
        f"≤ {DELAY_BOUND} s",
        None if p99 is None else p99 <= DELAY_BOUND and len(delays) == len(frozen),
    )
    results.add(label, "detection delay p50", _round(pct(delays, 50)), "s")
    peak = max(rss) / MIB if rss else None
    results.add(
        label,
        "daemon RSS peak",
        None if peak is None else round(peak, 1),
        "MiB",
        f"≤ {RSS_BOUND_MIB:g} MiB",
        None if peak is None else peak <= RSS_BOUND_MIB,
    )
    results.details[NAME] = {"delays_s": delays, "rss_mib": [round(r / MIB, 1) for r in rss]}


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
