"""Scenario 5 — the status page with 10,000 tracked instances, on PostgreSQL.

A fleet of 20,000 instances, half of them with an open incident (10,000 tracked, 200 of
them unhealthy now), served by a real `HealthServer` with the daemon's page source: the
time from request to the last byte of `/` (the first page of 100) and of one instance's
page, over HTTP on loopback, as a browser would ask. The bound is 1 s for `/`.
"""

from __future__ import annotations

import asyncio
import time

import httpx

from bench.common import Env, Results, median
from bench.daemon_common import prepare
from bench.fleet import instance_id
from watchdog.config import HealthSettings, Settings
from watchdog.daemon.health import HealthServer
from watchdog.daemon.metrics import Metrics
from watchdog.testing import IdleDaemon
from watchdog.web import Pages
from watchdog.wiring import open_runtime

NAME = "page"
BOUND = 1.0  # seconds for `/` with 10,000 tracked instances


async def _measure(url: str, rounds: int) -> tuple[list[float], list[float], int]:
    settings = Settings.model_validate({"database": {"url": url}})
    health = HealthSettings(enabled=True).model_copy(update={"port": 0})
    async with open_runtime(settings) as rt:
        server = HealthServer(health, IdleDaemon(), Metrics(), None, Pages(rt))
        await server.start()
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
                first = await client.get("/")  # warm-up: connections, compiled statements
                first.raise_for_status()
                tracked = first.text.count("data-instance=")
                fleet, instance = [], []
                for _ in range(rounds):
                    t0 = time.perf_counter()
                    (await client.get("/")).raise_for_status()
                    fleet.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    (await client.get(f"/instances/{instance_id(2)}")).raise_for_status()
                    instance.append(time.perf_counter() - t0)
        finally:
            await server.stop()
    return fleet, instance, tracked


def run(env: Env, results: Results) -> None:
    n, rounds = (2_000, 3) if env.quick else (20_000, 7)
    url, _conninfo = prepare(env, "bench_page", n, incident_every=2)
    print(f"  {NAME}: status page, {n // 2} tracked instances …", flush=True)
    fleet, instance, shown = asyncio.run(_measure(url, rounds))
    label = f"{NAME} pg {n // 2 // 1000}k tracked"
    fleet_med = median(fleet)
    results.add(
        label,
        "GET / median",
        None if fleet_med is None else round(fleet_med * 1000, 1),
        "ms",
        f"≤ {BOUND * 1000:g} ms",
        None if fleet_med is None else fleet_med <= BOUND,
    )
    results.add(label, "GET / worst", round(max(fleet) * 1000, 1), "ms")
    instance_med = median(instance)
    results.add(
        label,
        "GET /instances/ID median",
        None if instance_med is None else round(instance_med * 1000, 1),
        "ms",
    )
    results.details[NAME] = {"fleet_s": fleet, "instance_s": instance, "rows_on_page": shown}
