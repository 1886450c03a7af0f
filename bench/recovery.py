"""Scenario 3 — recovery throughput: 1,000 instances freeze at once.

The real daemon (default interval, default ladder, default `max_concurrent_actions` = 16,
`stale_after` compressed to 10 s, no start-up grace, brake threshold out of reach) against
a local HTTP restart endpoint
that answers each call after 50 ms. Measured from the moment the 1,000 crossed
`stale_after`: until every one had its first `api_restart` received by the server (and
its `started` audit row). Ten more instances freeze 2 s later, during the storm; their
detection delay says whether detection of others waited for the storm. Then the 1,000
beat again at once, while ten more cross `stale_after`: the cycles that close 1,000
incidents must still detect those in time.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import psutil

from bench import fleet
from bench.app import Beater, RestartApi
from bench.common import Env, Results, median, pct, wait_until
from bench.daemon_common import config, first_rows, heartbeats, prepare, wait_ready

NAME = "recovery"
PROBE_OFFSET = 2.0  # seconds after the storm's freeze that the probes freeze


def run(env: Env, results: Results) -> None:
    # stale_after compressed to 10 s as in the delay scenario: below interval + 1 s, every
    # healthy row would be within a cycle of its threshold (fetched and judged each cycle),
    # unlike any real configuration (90 s against a 5 s interval).
    n, storm_n, probe_n = (1_000, 50, 3) if env.quick else (10_000, 1_000, 10)
    stale = 10.0
    url, conninfo = prepare(env, "bench_recovery", n, unhealthy_every=0, incident_every=0)
    storm = [fleet.instance_id(g) for g in range(1, storm_n + 1)]
    probes = [fleet.instance_id(g) for g in range(n - probe_n + 1, n + 1)]
    late_probes = [fleet.instance_id(g) for g in range(n - 2 * probe_n + 1, n - probe_n + 1)]
    freeze_at: dict[str, float] = {}
    print(f"  {NAME}: {storm_n} of {n} instances freeze at once …", flush=True)
    with RestartApi(0.05) as api:
        cfg = env.tmp / "recovery.toml"
        cfg.write_text(
            config(
                url,
                f"[detection]\nstale_after = {stale}\ngrace = 0.0\n\n"
                "[safety]\nbrake_min_unhealthy = 1000000\n\n"
                '[process]\nbackend = "command"\ncommand = ["true"]\n',
                api=f'restart_url = "{api.url}"\n',
            )
        )
        with (
            Beater(conninfo, lambda t: {i for i, at in freeze_at.items() if at <= t}) as beater,
            env.daemon(cfg, log_name="recovery") as proc,
        ):
            wait_ready(conninfo, proc)
            now = time.monotonic() - beater.started
            freeze_at.update({i: now + 0.5 for i in storm})
            freeze_at.update({i: now + 0.5 + PROBE_OFFSET for i in probes})

            def done() -> bool:
                got = {i for _t, i in list(api.received)}
                return got >= set(storm) and set(first_rows(conninfo, "detected")) >= set(probes)

            daemon = psutil.Process(proc.pid)
            time.sleep(stale)  # about half a second before the storm crosses stale_after
            cpu0 = _cpu(daemon)
            wait_until(done, stale + 90.0, 0.5)
            cpu = _cpu(daemon) - cpu0
            _report(results, conninfo, api, storm, probes, stale)  # before they beat again
            label = f"{NAME} {len(storm)}"
            results.add(label, "daemon CPU until the last first call", round(cpu, 2), "s")
            results.add(label, "  per first api_restart", round(cpu / len(storm) * 1000, 2), "ms")
            _mass_recovery(conninfo, beater, freeze_at, storm, late_probes, stale)
    if beater.error is not None:
        raise beater.error
    _report_recovery(results, conninfo, storm, late_probes, stale)
    env.cluster.drop_database("bench_recovery")


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _mass_recovery(
    conninfo: str,
    beater: Beater,
    freeze_at: dict[str, float],
    storm: list[str],
    late_probes: list[str],
    stale: float,
) -> None:
    """The storm's instances beat again, all at once, 2 s before `late_probes` start to
    cross `stale_after` (a quarter second apart): the cycles that close the 1,000
    incidents are the ones that should detect them."""
    now = time.monotonic() - beater.started
    freeze_at.update({p: now + 0.25 * k for k, p in enumerate(late_probes)})
    time.sleep(stale - 2.0)
    for instance_id in storm:
        del freeze_at[instance_id]

    def done() -> bool:
        recovered = first_rows(conninfo, "recovered")
        return set(recovered) >= set(storm) and set(first_rows(conninfo, "detected")) >= set(
            late_probes
        )

    wait_until(done, stale + 60.0, 0.5)


def _report_recovery(
    results: Results, conninfo: str, storm: list[str], late_probes: list[str], stale: float
) -> None:
    recovered = first_rows(conninfo, "recovered")
    closed = sum(i in recovered for i in storm)
    label = f"{NAME} {len(storm)}"
    results.add(label, "then all beat again: incidents closed", closed, f"of {len(storm)}")
    beats = heartbeats(conninfo, late_probes)
    detected = first_rows(conninfo, "detected")
    delays = [
        _since(detected[i], beats[i] + timedelta(seconds=stale))
        for i in late_probes
        if i in detected
    ]
    worst = _max(delays)
    met = None if worst is None or len(delays) < len(late_probes) else worst <= 1.0
    results.add(
        label, "  probes freezing meanwhile detected", len(delays), f"of {len(late_probes)}"
    )
    results.add(label, "  their detection delay max", _r(worst), "s", "≤ 1 s (as 2)", met)
    results.details[f"{NAME}_mass_recovery"] = {"closed": closed, "probe_delays_s": delays}


def _report(
    results: Results,
    conninfo: str,
    api: RestartApi,
    storm: list[str],
    probes: list[str],
    stale: float,
) -> None:
    beats = heartbeats(conninfo, storm + probes)
    crossing = max(beats[i] for i in storm) + timedelta(seconds=stale)
    t0 = crossing.timestamp()
    first_call: dict[str, float] = {}
    for at, instance in api.received:
        first_call.setdefault(instance, at)
    calls = [first_call[i] - t0 for i in storm if i in first_call]
    started = first_rows(conninfo, "api_restart", "started")
    started_s = [_since(started[i], crossing) for i in storm if i in started]
    detected = first_rows(conninfo, "detected")
    detected_s = [_since(detected[i], crossing) for i in storm if i in detected]
    probe_delays = [
        _since(detected[i], beats[i] + timedelta(seconds=stale)) for i in probes if i in detected
    ]
    all_called = max(calls) if len(calls) == len(storm) else None
    label = f"{NAME} {len(storm)}"
    results.add(label, "first api_restart received", len(calls), f"of {len(storm)}")
    results.add(
        label,
        "all first api_restart received (from stale)",
        _r(all_called),
        "s",
        "≤ 5 s",
        None if all_called is None else all_called <= 5.0,
    )
    # A `started` row's `at` is the claiming cycle's database now, not the claim's moment.
    results.add(label, "latest `started` row at (cycle's now)", _r(_max(started_s)), "s")
    results.add(label, "all detected (from stale)", _r(_max(detected_s)), "s")
    results.add(label, "first api_restart p50 (from stale)", _r(median(calls)), "s")
    results.add(label, "api_restart within 5 s of stale", sum(c <= 5.0 for c in calls), "")
    results.add(label, "probes detected during storm", len(probe_delays), f"of {len(probes)}")
    results.add(label, "probe detection delay p50", _r(median(probe_delays)), "s")
    worst = _max(probe_delays)
    met = None if worst is None or len(probe_delays) < len(probes) else worst <= 1.0
    results.add(label, "probe detection delay max", _r(worst), "s", "≤ 1 s (as 2)", met)
    results.details[NAME] = {
        "storm": len(storm),
        "stale_after": stale,
        "server_delay_s": api.delay,
        "requests": len(api.received),
        "first_call_s": sorted(calls),
        "started_s": sorted(started_s),
        "detected_s": sorted(detected_s),
        "probe_delays_s": probe_delays,
        "call_rate_per_s": _r(len(calls) / (max(calls) - min(calls))) if len(calls) > 1 else None,
        "p95_first_call_s": _r(pct(calls, 95)),
    }


def _since(at: datetime, origin: datetime) -> float:
    return (at - origin).total_seconds()


def _max(values: list[float]) -> float | None:
    return max(values) if values else None


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
