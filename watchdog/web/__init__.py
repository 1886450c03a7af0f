"""The read-only status page of the health endpoint: what `watchdogctl status` and
`explain` show, in a browser. `data.py` gathers it, `page.py` renders it."""

from __future__ import annotations

from watchdog.web import data, page
from watchdog.wiring import Runtime


class Pages:
    """The page source of the health endpoint: HTML read from the database now."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    async def status_page(self, number: int) -> str:
        return page.status_page(await data.status_page(self._runtime, number))

    async def instance_page(self, instance_id: str) -> str | None:
        """None when the instance is unknown (the endpoint answers 404 with a page)."""
        found = await data.instance_page(self._runtime, instance_id)
        return None if found is None else page.instance_page(found)
