"""Looking: `status`, `explain`, `show`, `audit`."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import click

from watchdog import render, views
from watchdog.cli.base import Context, cli, handle_errors, pass_ctx, since_value, with_runtime
from watchdog.core.errors import NotFound, WatchdogError
from watchdog.core.model import AuditAction, Target
from watchdog.core.ports import AuditQuery, ProcessLocator
from watchdog.core.situation import human_delta, stamp
from watchdog.render import one_line
from watchdog.store import migrate
from watchdog.wiring import Runtime

# How `status --watch` waits between frames (a test replaces it, so as not to wait).
watch_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.option(
    "--watch",
    "every",
    type=click.FloatRange(min=0.5),
    is_flag=False,
    flag_value=2.0,
    default=None,
    metavar="[SECONDS]",
    help="Show it again every SECONDS (2 if not given, at least 0.5) until Ctrl-C: drawn "
    "in place on a terminal, frame after frame (a blank line between) through a pipe. "
    "A database that does not answer is shown in the frame and tried again.",
)
@pass_ctx
@handle_errors
def status(ctx: Context, as_json: bool, every: float | None) -> None:
    """The fleet as the table says it now, who acts, and every instance needing attention.

    Coloured on a terminal, unless NO_COLOR is set; never with --json or through a pipe."""
    if every is not None and as_json:
        raise click.UsageError(
            "--watch cannot be combined with --json; run `status --json` from a loop instead",
            ctx=click.get_current_context(),
        )
    colour = render.colour_enabled(sys.stdout)
    if every is not None:
        _watch(ctx, every, colour)
        return

    async def work(rt: Runtime) -> None:
        view = await views.fleet_view(rt)
        if as_json:
            click.echo(render.as_json(views.status_records(view, rt.settings.escalation.rules())))
        else:
            click.echo(_status_text(rt, view, colour), color=colour)
        if view.table_failure is not None:  # shown; the exit code says it too
            raise view.table_failure

    with_runtime(ctx, work)


def _status_text(rt: Runtime, view: views.FleetView, colour: bool) -> str:
    """`status` for people: every value from a table escaped first, then coloured."""
    settings = rt.settings
    records = views.status_records(view, settings.escalation.rules())
    nodes = [views.node_record(n, view.now, settings.detection.interval) for n in view.nodes]
    return "\n".join(
        [
            render.fleet_line(
                view.census, settings.instances.table, view.table_error, colour=colour
            ),
            render.acting_line(view.acting.detail, view.acting.leader, view.now, colour=colour),
            render.nodes_table(nodes, view.now, colour=colour),
            render.brake_line(view.brake, colour=colour),
            *[render.fleet_pause_line(p) for p in view.fleet_pauses],
            render.breaker_table(view.breakers, colour=colour),
            "",
            render.status_table(records, view.census, colour=colour),
        ]
    )


def _watch(ctx: Context, every: float, colour: bool) -> None:
    """`status` again and again on one runtime (one pool, not a connection per frame)
    until Ctrl-C, which ends it quietly with exit 0. A frame whose database does not
    answer says so; the next one tries again."""
    terminal = render.is_terminal(sys.stdout)

    async def work(rt: Runtime) -> None:
        checked = False  # the watchdog's tables, once: they do not go back in time
        first = True
        while True:
            try:
                if not checked:
                    await migrate.require_current(rt.db)
                    checked = True
                body = _status_text(rt, await views.fleet_view(rt), colour)
            except WatchdogError as exc:
                body = render.paint(
                    f"cannot read the database now: {one_line(str(exc))}; "
                    f"trying again in {every:g}s",
                    "bad",
                    colour,
                )
            frame = render.watch_header(datetime.now(UTC), every) + "\n" + body
            if terminal:
                click.echo(render.CLEAR_SCREEN + frame, color=True)
            else:
                click.echo(frame if first else "\n" + frame, color=colour)
            sys.stdout.flush()
            first = False
            await watch_sleep(every)

    try:
        with_runtime(ctx, work, check_schema=False)
    except KeyboardInterrupt:
        if terminal:
            click.echo()  # the prompt on a line of its own, after the `^C`
    except BrokenPipeError:  # `status --watch | head`: the reader is done, and so are we
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


@cli.command()
@click.argument("instance_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_ctx
@handle_errors
def explain(ctx: Context, instance_id: str, as_json: bool) -> None:
    """Why the watchdog is or is not acting on one instance, and what it does next."""

    async def work(rt: Runtime) -> None:
        explained = await views.explain_instance(rt, instance_id)
        if explained is None:
            raise NotFound(
                f"unknown instance {instance_id!r}: neither in table "
                f"{rt.settings.instances.table} nor in the watchdog's records"
            )
        click.echo(render.as_json(explained) if as_json else render.explanation(explained))

    with_runtime(ctx, work)


@cli.command()
@click.argument("instance_id")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000))
@pass_ctx
@handle_errors
def show(ctx: Context, instance_id: str, limit: int) -> None:
    """One instance: its incidents and recent audit trail."""

    async def work(rt: Runtime) -> None:
        history = await rt.ledger.incident_history(instance_id, 5)
        rows = await rt.ledger.audit(AuditQuery(instance_id=instance_id, limit=limit))
        known = history or rows or await rt.instances.exists(instance_id)
        if not known:
            raise NotFound(f"unknown instance {instance_id!r}; `watchdogctl status` lists them")
        now = await rt.instances.now()
        pause = (await rt.ledger.load_pauses(now)).get(instance_id)
        click.echo(f"instance {one_line(instance_id)}")
        click.echo(
            f"  paused until {stamp(pause.until)} ({pause.reason}, by {pause.actor})"
            if pause
            else "  not paused"
        )
        for incident in history:
            click.echo(_incident_line(incident))
        process = history[0].process if history else None
        click.echo(await _hosting_process(rt, instance_id, process))
        click.echo(render.audit_table(rows))

    with_runtime(ctx, work)


async def _hosting_process(rt: Runtime, instance_id: str, process: str | None) -> str:
    """One line about the process hosting the instance, from its backend and psutil."""
    from watchdog.actions.evidence import process_facts
    from watchdog.wiring import process_backend

    backend = process_backend(rt.settings)
    if backend is None or not isinstance(backend, ProcessLocator):
        return "  hosting process: unknown (the process backend cannot locate processes)"
    try:
        name = backend.key(Target(instance_id, process))
        facts = process_facts(await backend.locate(name))
    except WatchdogError as exc:
        return f"  hosting process: unknown ({exc})"
    if facts is None:
        return f"  hosting process {name}: not running or not visible from here"
    return (
        f"  hosting process {name}: pid {facts['pid']}, {facts['state']}, up "
        f"{human_delta(facts['uptime'])}, rss {facts['rss'] / 2**20:.1f} MiB"
    )


def _incident_line(incident: Any) -> str:
    closed = f", closed {stamp(incident.closed_at)}" if incident.closed_at else ""
    return (
        f"  incident {incident.id}: {incident.state} {incident.reason}, attempt "
        f"{incident.attempt}, opened {stamp(incident.opened_at)}{closed}"
    )


@cli.command()
@click.option("--instance", "instance_id", help="Only this instance.")
@click.option(
    "--since",
    callback=since_value,
    help="Only rows newer than this: a duration (1h, 30m) or an ISO-8601 time.",
)
@click.option(
    "--action",
    "actions",
    multiple=True,
    type=click.Choice([a.value for a in AuditAction]),
    help="Only these actions.",
)
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array, oldest first.")
@pass_ctx
@handle_errors
def audit(
    ctx: Context,
    instance_id: str | None,
    since: str | None,
    actions: tuple[str, ...],
    limit: int,
    as_json: bool,
) -> None:
    """The audit trail, oldest first."""

    async def work(rt: Runtime) -> None:
        since_at = render.parse_since(since, await rt.instances.now()) if since else None
        query = AuditQuery(instance_id, since_at, [AuditAction(a) for a in actions], limit)
        rows = await rt.ledger.audit(query)
        if as_json:
            click.echo(render.as_json([r.as_json() for r in rows]))
        else:
            click.echo(render.audit_table(rows))

    with_runtime(ctx, work)
