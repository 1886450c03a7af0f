"""The health rules, pure: is the loop alive, is the daemon ready. Kept apart from the
HTTP server so the daemon can judge itself without loading the server's library."""

from __future__ import annotations

from typing import Final

from watchdog.masking import mask_urls_in

ALIVE_INTERVALS: Final = 3.0  # the loop is alive while its last attempt is this recent


def liveness(since_attempt: float, interval: float, slack: float = 0.0) -> bool:
    """Whether a loop whose last cycle attempt (or, before the first, its start) was
    `since_attempt` seconds ago is alive. `slack` covers a cycle that may legitimately
    block meanwhile, e.g. the database timeout."""
    return since_attempt <= ALIVE_INTERVALS * interval + slack


def readiness(
    database_ok: bool, since_good: float | None, max_age: float, database_error: str = ""
) -> tuple[bool, str]:
    """`HealthSource.ready` from its two facts: the database answered the last cycle,
    and the last good cycle was `since_good` seconds ago (None: none yet)."""
    if not database_ok:
        detail = f": {mask_urls_in(database_error)}" if database_error else ""
        return False, f"database unreachable{detail}"
    if since_good is None:
        return False, "no good cycle yet"
    if since_good > max_age:
        return False, f"last good cycle {since_good:.0f}s ago (limit {max_age:g}s)"
    return True, "ok"
