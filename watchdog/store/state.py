"""The open incidents and the pauses (by instance and by selector), as a cycle reads
them: cached, and read again only when their revision moved (every writer bumps it in
its own transaction) or the cache is older than `max_cache_age` (a writer that does not
bump: an older version mid-upgrade, a hand-made SQL fix)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from watchdog.core.model import FLEET, Incident, Pause, Selector, SelectorKind
from watchdog.store.database import Database
from watchdog.store.records import INCIDENT_COLUMNS, incident_from
from watchdog.store.schema import OPEN_STATES, fleet_pauses, incidents, pauses, revisions

_MAX_WAITING = 64  # writes of ours held for an earlier one to report (see `wrote`)


@dataclass(frozen=True, slots=True)
class Cached:
    revision: int | None
    loaded_at: float  # monotonic
    incidents: dict[str, Incident]  # open ones
    pauses: dict[str, Pause]  # all rows: each read keeps those in force at its own now
    fleet_pauses: tuple[Pause, ...]  # likewise


class StateCache:
    def __init__(
        self,
        db: Database,
        max_cache_age: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._max_cache_age = max_cache_age
        self._monotonic = monotonic
        self._cached: Cached | None = None
        self._written: dict[int, list[Incident]] = {}  # this process's, ahead of the cache

    async def load(self, known: int | None = None) -> Cached:
        """Nothing read when the revision is `known` (read with the detection query, see
        `REVISION`) and unchanged, one tiny read without it; both tables only after a
        change. The revision is read first, so a cache is never labelled newer than its
        content."""
        cached = self._cached
        if known is not None and cached is not None and self._fresh(cached, known):
            return cached
        async with self._db.connect("load open incidents and pauses") as conn:
            revision = known
            if revision is None:
                revision = (await conn.execute(_READ_REVISION)).scalar_one_or_none()
            if cached is None or not self._fresh(cached, revision):
                loaded_at = self._monotonic()
                rows = (await conn.execute(_OPEN_INCIDENTS)).all()
                held = (await conn.execute(_ALL_PAUSES)).all()
                cached = Cached(
                    revision,
                    loaded_at,
                    {row.instance_id: incident_from(row) for row in rows},
                    {
                        r.pattern: Pause(r.pattern, r.until, r.reason, r.actor)
                        for r in held
                        if r.kind == _BY_ID
                    },
                    tuple(fleet_pause(r) for r in held if r.kind != _BY_ID),
                )
                self._cached = cached if revision is not None else None  # no row: never trust
                self._written = {r: w for r, w in self._written.items() if r > (revision or 0)}
        return cached

    def wrote(self, revision: int | None, incidents: Iterable[Incident]) -> None:
        """This process committed `incidents` (as the database now has them) with the
        bump that made `revision`. Taken in revision order from the one the cache holds:
        a gap means another writer, and the next load reads again. Writes of this process
        committed together may report in any order, so a later one waits here for the
        earlier (a few at most). A storm's own writes no longer reload thousands of open
        incidents every cycle."""
        cached = self._cached
        if revision is None or cached is None or cached.revision is None:
            return
        if revision <= cached.revision or len(self._written) >= _MAX_WAITING:
            return
        self._written[revision] = list(incidents)
        at = cached.revision
        if at + 1 not in self._written:
            return  # an earlier write has yet to report
        current = dict(cached.incidents)  # a copy: readers may hold the old one
        while (changed := self._written.pop(at + 1, None)) is not None:
            at += 1
            for incident in changed:
                if not incident.state.is_closed:
                    current[incident.instance_id] = incident
                elif current.get(incident.instance_id, incident).id == incident.id:
                    current.pop(incident.instance_id, None)
        self._cached = replace(cached, revision=at, incidents=current)

    def _fresh(self, cached: Cached, revision: int | None) -> bool:
        """The cache holds `revision` or, through this process's own writes since, a few
        later ones (a cycle's scan read the revision before they committed)."""
        if revision is None or cached.revision is None:
            return False
        return (
            revision <= cached.revision <= revision + _MAX_WAITING
            and self._monotonic() - cached.loaded_at < self._max_cache_age
        )


async def bump(conn: AsyncConnection) -> int | None:
    """Mark the incidents or pauses changed; last in the transaction, so on PostgreSQL the
    row lock it takes (serialising incident writers) is held only until the commit.
    Returns the new revision (None: no revision row, before the first migration)."""
    revision: int | None = (await conn.execute(_BUMP_REVISION)).scalar_one_or_none()
    return revision


_INCIDENTS_REVISION = revisions.c.name == "incidents"
_READ_REVISION = sa.select(revisions.c.revision).where(_INCIDENTS_REVISION)
# For `SqlInstanceStore(ledger_revision=...)`: read with each scan, passed to `load_state`.
REVISION = _READ_REVISION.scalar_subquery()
_BUMP_REVISION = (
    sa.update(revisions)
    .where(_INCIDENTS_REVISION)
    .values(revision=revisions.c.revision + 1)
    .returning(revisions.c.revision)
)


_BY_ID = "id"
# Both kinds of pause in one statement, oldest first: a revision change costs two reads.
_ALL_PAUSES = sa.union_all(
    sa.select(
        sa.literal(_BY_ID).label("kind"),
        pauses.c.instance_id.label("pattern"),
        pauses.c.until,
        pauses.c.reason,
        pauses.c.actor,
        pauses.c.created_at,
    ),
    sa.select(
        fleet_pauses.c.kind,
        fleet_pauses.c.pattern,
        fleet_pauses.c.until,
        fleet_pauses.c.reason,
        fleet_pauses.c.actor,
        fleet_pauses.c.created_at,
    ),
).order_by("created_at")


def fleet_pause(row: sa.Row[Any]) -> Pause:
    selector = Selector(SelectorKind(row.kind), row.pattern)
    return Pause(FLEET, row.until, row.reason, row.actor, selector)


_OPEN_INCIDENTS = sa.select(*INCIDENT_COLUMNS).where(incidents.c.state.in_(OPEN_STATES))
