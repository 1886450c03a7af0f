"""Scenario 2 — detection delay of the real daemon (`watchdogctl run`) on PostgreSQL.

10k instances beat through one bulk UPDATE a second; 100 of them stop at random moments.
The daemon runs with the default interval (5 s), `stale_after` compressed to 10 s, no
start-up grace and a ladder of `db_flag` only. For each frozen instance: the moment it
crossed `stale_after` (its last heartbeat + stale_after, database clock) against the `at`
of its `detected` audit row (the database clock of the scan that found it).
"""

from __future__ import annotations

import random
import time
from datetime import timedelta

from bench import fleet
from bench.app import Beater
from bench.common import Env, Results, median, pct, wait_until
from bench.daemon_common import config, first_rows, heartbeats, prepare, wait_ready

NAME = "delay"


def run(env: Env, results: Results) -> None:
    n, frozen_count, stale, window = (
        (1_000, 5, 5.0, 3.0) if env.quick else (10_000, 100, 10.0, 30.0)
    )
    url, conninfo = prepare(env, "bench_delay", n, unhealthy_every=0, incident_every=0)
    rng = random.Random(20240601)
    ids = [fleet.instance_id(g) for g in rng.sample(range(1, n + 1), frozen_count)]
    freeze_at: dict[str, float] = {}
    cfg = env.tmp / "delay.toml"
    cfg.write_text(
        config(
            url,
            f"[detection]\nstale_after = {stale}\ngrace = 0.0\n\n"
            '[escalation]\nladder = [ { action = "db_flag" } ]\n\n'
            "[safety]\nbrake_min_unhealthy = 1000000\n",
        )
    )
    print(f"  {NAME}: {n} instances, {frozen_count} freeze within {window:g} s …", flush=True)
    with (
        Beater(conninfo, lambda t: {i for i, at in freeze_at.items() if at <= t}) as beater,
        env.daemon(cfg, log_name="delay") as proc,
    ):
        wait_ready(conninfo, proc)
        ready = time.monotonic() - beater.started
        freeze_at.update({i: ready + rng.uniform(0.5, window) for i in ids})
        end = time.monotonic() + window + stale + 15.0
        wait_until(
            lambda: (
                len(set(first_rows(conninfo, "detected")) & set(ids)) == len(ids)
                or time.monotonic() > end
            ),
            window + stale + 20.0,
            0.5,
        )
    if beater.error is not None:
        raise beater.error
    detected = first_rows(conninfo, "detected")
    beats = heartbeats(conninfo, ids)
    stale_delta = timedelta(seconds=stale)
    delays = [
        (detected[i] - (beats[i] + stale_delta)).total_seconds() for i in ids if i in detected
    ]
    false_alarms = sorted(set(detected) - set(ids))
    env.cluster.drop_database("bench_delay")
    results.add(NAME, "frozen instances detected", len(delays), f"of {len(ids)}")
    results.add(NAME, "instances detected that never froze", len(false_alarms), "")
    results.add(NAME, "detection delay p50", _r(median(delays)), "s")
    p99 = pct(delays, 99)
    results.add(
        NAME, "detection delay p99", _r(p99), "s", "≤ 1 s", None if p99 is None else p99 <= 1.0
    )
    results.add(NAME, "detection delay max", _r(max(delays) if delays else None), "s")
    results.details[NAME] = {
        "instances": n,
        "frozen": len(ids),
        "stale_after": stale,
        "interval": 5.0,
        "delays_s": sorted(delays),
        "false_alarms": false_alarms[:20],
        "beats": beater.beats,
    }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
