"""Rows the watchdog cannot judge are never silent: each is logged when the scan first
finds it unjudgeable (once while it stays so, not every cycle); the count of them is a
metric and part of each cycle's log line."""

from __future__ import annotations

from collections.abc import Sequence

from watchdog.model import Unjudgeable
from watchdog.observability import get_logger

log = get_logger(component="detection")

# One line each up to this many new rows a cycle; the rest are summed up in one line.
_LINES_PER_CYCLE = 20


class UnjudgeableLog:
    def __init__(self) -> None:
        self._seen: set[tuple[str | None, str]] = set()

    def observe(self, rows: Sequence[Unjudgeable]) -> None:
        current = {row.key: row for row in rows}
        new = [row for key, row in current.items() if key not in self._seen]
        for row in new[:_LINES_PER_CYCLE]:
            log.warning(
                "instance_unjudgeable",
                instance=row.instance_id,
                column=row.column,
                value=row.value,
                why=row.why,
                fix=row.fix,
            )
        if len(new) > _LINES_PER_CYCLE:
            log.warning(
                "instances_unjudgeable",
                more=len(new) - _LINES_PER_CYCLE,
                total=len(current),
                fix="see the lines above: the same causes are likely",
            )
        self._seen = set(current)
