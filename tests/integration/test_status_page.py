"""The status page of the health endpoint on a real SQLite file and a real HTTP server:
the fleet, the tracked instances with their ladder, the timeline, one instance's page;
escaped, self-contained, paged, guarded by the token, and never changing state.
(tests/e2e/test_status_page_browser.py loads it in a real Chromium.)"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from tests.apptable import AppTable
from tests.integration.test_health import settings
from watchdog.clock import SystemClock
from watchdog.config import Settings
from watchdog.core.model import Pause, Selector, SelectorKind
from watchdog.core.ports import AuditQuery
from watchdog.daemon.health import HealthServer
from watchdog.daemon.metrics import Metrics
from watchdog.engine.cycle import Engine
from watchdog.store import migrate
from watchdog.testing import IdleDaemon
from watchdog.web import Pages
from watchdog.wiring import Runtime, open_recoveries, open_runtime

HOSTILE = "<script>alert(1)</script>"
TOKEN = "page-token"


@pytest.fixture
async def runtime(sqlite_url: str, tmp_path: Path) -> AsyncIterator[Runtime]:
    app = AppTable(sqlite_url)
    app.create()
    for n in range(8):
        app.add(f"ok-{n}", heartbeat_ago=1, process="app")
    app.add("frozen", heartbeat_ago=300, process="app")
    app.add(HOSTILE, heartbeat_ago=300, process="app")
    app.add("quiet", heartbeat_ago=300, process="maint")
    app.dispose()
    settings = Settings.model_validate(
        {
            "database": {"url": sqlite_url},
            "escalation": {"ladder": [{"action": "db_flag", "attempts": 2}, {"action": "db_flag"}]},
            "detection": {"grace": 0},
        }
    )
    async with open_runtime(settings) as rt:
        await migrate.upgrade(rt.db)
        now = await rt.instances.now()
        quiet = Pause(
            "*", now + timedelta(hours=1), "upgrade", "bob", Selector(SelectorKind.PROCESS, "maint")
        )
        await rt.ledger.pause_all([quiet], now)
        async with open_recoveries(rt) as recoveries:
            engine = Engine(
                rt.instances, rt.ledger, recoveries, settings.escalation.rules(), SystemClock()
            )
            await engine.run_cycle()
            assert await engine.drain(10)
        yield rt


async def serve(rt: Runtime, token: str | None = None) -> HealthServer:
    server = HealthServer(settings(), IdleDaemon(), Metrics(), token, Pages(rt))
    await server.start()
    return server


async def test_the_page_shows_the_fleet_the_instances_and_the_timeline(runtime: Runtime) -> None:
    server = await serve(runtime)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            page = await client.get("/")
    finally:
        await server.stop()
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "script-src" not in policy  # none: default-src 'none' forbids every script
    assert page.headers["cache-control"] == "no-store"
    html = page.text
    assert re.search(r'id="fleet-monitored"[^>]*>11<', html)  # 8 ok + frozen + hostile + quiet
    assert re.search(r'id="fleet-unhealthy"[^>]*>3<', html)
    assert re.search(r'id="fleet-healthy"[^>]*>8<', html)
    assert 'data-instance="frozen"' in html
    assert HOSTILE not in html  # escaped, never markup
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'href="/instances/%3Cscript%3Ealert%281%29%3C%2Fscript%3E"' in html
    assert "<script" not in html
    assert not re.search(r'(src|href)="(https?:)?//', html)  # no outside asset or link
    assert 'class="rung done db_flag"' in html  # frozen's attempt 1 is drawn done
    assert "pauses in force: --process maint" in html
    assert "restart budgets left" in html
    assert re.search(r"last hour: 2 actions", html)  # frozen and the hostile one, db_flag ok
    assert '<rect class="db_flag ok"' in html


async def test_an_instance_page_explains_and_lists_its_trail(runtime: Runtime) -> None:
    server = await serve(runtime)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            frozen = await client.get("/instances/frozen")
            hostile = await client.get("/instances/%3Cscript%3Ealert%281%29%3C%2Fscript%3E")
            unknown = await client.get("/instances/nobody")
            quiet = await client.get("/instances/quiet")
    finally:
        await server.stop()
    assert frozen.status_code == 200
    assert re.search(r'id="verdict"[^>]*>unhealthy<', frozen.text)
    assert "heartbeat age" in frozen.text
    assert "db_flag" in frozen.text  # the trail
    assert "detected" in frozen.text
    assert hostile.status_code == 200
    assert HOSTILE not in hostile.text
    assert unknown.status_code == 404
    assert "unknown instance" in unknown.text
    assert "paused until" in quiet.text  # the fleet pause by process holds it


async def test_many_instances_are_paged(runtime: Runtime, sqlite_url: str) -> None:
    app = AppTable(sqlite_url)
    for n in range(150):
        app.add(f"bulk-{n:03d}", heartbeat_ago=300, process=f"p{n}")
    app.dispose()
    server = await serve(runtime)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            first = (await client.get("/")).text
            second = (await client.get("/?page=2")).text
            beyond = (await client.get("/?page=99")).text
            junk = (await client.get("/?page=x")).text
    finally:
        await server.stop()
    assert "tracked instances (153)" in first
    assert first.count("data-instance=") == 100
    assert second.count("data-instance=") == 53
    assert '<a href="/?page=2">2</a>' in first
    assert beyond.count("data-instance=") == 53  # past the end: the last page
    assert junk.count("data-instance=") == 100


async def test_the_token_guards_the_pages_too_and_a_get_changes_nothing(
    runtime: Runtime,
) -> None:
    server = await serve(runtime, TOKEN)
    before = await runtime.ledger.audit(AuditQuery(limit=10_000))
    incidents = await runtime.ledger.load_open()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            assert (await client.get("/")).status_code == 401
            assert (await client.get("/instances/frozen")).status_code == 401
            auth = {"Authorization": f"Bearer {TOKEN}"}
            assert (await client.get("/", headers=auth)).status_code == 200
            assert (await client.post("/", headers=auth)).status_code == 405
    finally:
        await server.stop()
    assert await runtime.ledger.audit(AuditQuery(limit=10_000)) == before
    assert await runtime.ledger.load_open() == incidents
