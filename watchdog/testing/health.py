"""A health source for serving the endpoint's pages without a daemon loop behind it."""

from __future__ import annotations

from typing import Any


class IdleDaemon:
    """Always alive and ready, with an empty `/status`: for tests and benches that serve
    the status page (or metrics) on their own."""

    def alive(self) -> bool:
        return True

    def ready(self) -> tuple[bool, str]:
        return True, "ok"

    async def status(self) -> dict[str, Any]:
        return {}
