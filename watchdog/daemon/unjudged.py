"""The watchdog is never blind in silence: each row it cannot judge is logged when the
scan first finds it so (once while it stays so, not every cycle), and a table whose rows
are all outside its care is a warning (the count of unjudgeable rows is also a metric,
part of each cycle's log line and, on the leader, a fleet alert)."""

from __future__ import annotations

from collections.abc import Sequence

from watchdog.core.model import Unjudgeable
from watchdog.engine.report import CycleReport
from watchdog.observability import get_logger

log = get_logger(component="detection")

# One line each up to this many new rows a cycle; the rest are summed up in one line.
_LINES_PER_CYCLE = 20


class UnjudgeableLog:
    def __init__(self) -> None:
        self._seen: set[tuple[str | None, str]] = set()
        self._none_monitored = False

    def observe(self, report: CycleReport) -> None:
        self._rows(report.unjudgeable)
        if report.rows_total is not None:  # counted this cycle
            self._monitored(report.rows_total, report.monitored)

    def _monitored(self, rows: int, monitored: int) -> None:
        none = rows > 0 and monitored == 0
        if none and not self._none_monitored:
            log.warning(
                "no_instance_monitored",
                rows=rows,
                fix="every row is disabled or in an ignored status as the watchdog reads "
                "them: check [instances] enabled and [detection] ignored_statuses",
            )
        elif self._none_monitored and not none:
            log.info("instances_monitored_again", rows=rows, monitored=monitored)
        self._none_monitored = none

    def _rows(self, rows: Sequence[Unjudgeable]) -> None:
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
