"""Steering: `pause`, `resume` (and `pauses`, those in force), `reset`, `approve`, each
audited once, with who did it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import ParamSpec, TypeVar

import click

from watchdog import render
from watchdog.cli.base import (
    Context,
    actor_option,
    cli,
    duration_value,
    handle_errors,
    pass_ctx,
    with_runtime,
)
from watchdog.core.errors import NotFound
from watchdog.core.model import FLEET, IncidentState, Pause, Selector, SelectorKind
from watchdog.core.situation import human_delta, stamp
from watchdog.render import one_line
from watchdog.views import pause_record
from watchdog.wiring import Runtime

P = ParamSpec("P")
T = TypeVar("T")


def _selector_options(func: Callable[P, T]) -> Callable[P, T]:
    """IDS... or exactly one of --process, --match, --all: which instances a command holds."""
    for option in reversed(
        (
            click.argument("instance_ids", nargs=-1),
            click.option("--process", "process", help="Every instance of this process."),
            click.option("--match", "match", help="Every instance whose id matches this glob."),
            click.option("--all", "everyone", is_flag=True, help="Every instance."),
        )
    ):
        func = option(func)
    return func


def _selector(
    instance_ids: tuple[str, ...], process: str | None, match: str | None, everyone: bool
) -> Selector | None:
    """The selector given, None for ids; exactly one way of choosing is a usage error."""
    given = [bool(instance_ids), process is not None, match is not None, everyone]
    if sum(given) != 1:
        raise click.UsageError("name the instances: IDS..., or one of --process, --match, --all")
    if process is not None:
        if not process:
            raise click.UsageError("--process needs a process name")
        return Selector(SelectorKind.PROCESS, process)
    if match is not None:
        if not match:
            raise click.UsageError("--match needs a glob, e.g. 'wa-*'")
        return Selector(SelectorKind.MATCH, match)
    return Selector(SelectorKind.ALL) if everyone else None


@cli.command()
@_selector_options
@click.option("--for", "duration", required=True, callback=duration_value, help="e.g. 30m, 2h.")
@click.option("--reason", required=True, help="Why, for the audit trail.")
@actor_option
@pass_ctx
@handle_errors
def pause(
    ctx: Context,
    instance_ids: tuple[str, ...],
    process: str | None,
    match: str | None,
    everyone: bool,
    duration: float,
    reason: str,
    actor: str,
) -> None:
    """Take no recovery action on instances for a while: IDS..., or every instance of a
    process (--process), whose id matches a glob (--match) or all (--all); a selector also
    holds instances that appear while it lasts."""
    selector = _selector(instance_ids, process, match, everyone)

    async def work(rt: Runtime) -> None:
        now = await rt.instances.now()
        until = now + timedelta(seconds=duration)
        if selector is not None:
            await rt.ledger.pause_all([Pause(FLEET, until, reason, actor, selector)], now)
            click.echo(f"paused {one_line(str(selector))} until {stamp(until)}")
            return
        for instance_id in instance_ids:
            await _require_known(rt, instance_id)
        held = [Pause(i, until, reason, actor) for i in dict.fromkeys(instance_ids)]
        await rt.ledger.pause_all(held, now)
        names = ", ".join(one_line(p.instance_id) for p in held)
        click.echo(f"paused {names} until {stamp(until)}")

    with_runtime(ctx, work)


@cli.command()
@_selector_options
@actor_option
@pass_ctx
@handle_errors
def resume(
    ctx: Context,
    instance_ids: tuple[str, ...],
    process: str | None,
    match: str | None,
    everyone: bool,
    actor: str,
) -> None:
    """Lift pauses: of IDS..., or the pause set with the same --process, --match or --all."""
    selector = _selector(instance_ids, process, match, everyone)

    async def work(rt: Runtime) -> None:
        if selector is not None:
            if not await rt.ledger.resume_fleet(selector, actor):
                raise NotFound(
                    f"no pause {selector} is in force; nothing to resume (see `watchdogctl pauses`)"
                )
            click.echo(f"resumed {one_line(str(selector))}")
            return
        lifted = await rt.ledger.resume_all(list(dict.fromkeys(instance_ids)), actor)
        if not lifted:
            named = (
                f"instance {instance_ids[0]!r} is"
                if len(instance_ids) == 1
                else f"none of {', '.join(repr(i) for i in instance_ids)} is"
            )
            raise NotFound(f"{named} not paused; nothing to resume (see `watchdogctl pauses`)")
        left = [i for i in instance_ids if i not in lifted]
        note = f" ({', '.join(one_line(i) for i in left)} had no pause)" if left else ""
        click.echo(f"resumed {', '.join(one_line(i) for i in lifted)}{note}")

    with_runtime(ctx, work)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per pause.")
@pass_ctx
@handle_errors
def pauses(ctx: Context, as_json: bool) -> None:
    """The pauses in force: selector, owner, reason and expiry."""

    async def work(rt: Runtime) -> None:
        now = await rt.instances.now()
        state = await rt.ledger.load_state(now)
        held = [*state.fleet_pauses, *sorted(state.pauses.values(), key=lambda p: p.instance_id)]
        records = [pause_record(p) for p in held]
        if as_json:
            click.echo(render.as_json(records))
            return
        if not held:
            click.echo("no pauses in force")
            return
        rows = [
            (
                str(p.selector) if p.selector else p.instance_id,
                p.actor,
                p.reason,
                f"{stamp(p.until)} (in {human_delta((p.until - now).total_seconds())})",
            )
            for p in held
        ]
        click.echo(render.table(("SELECTOR", "OWNER", "REASON", "UNTIL"), rows))

    with_runtime(ctx, work)


@cli.command()
@click.argument("instance_id")
@actor_option
@pass_ctx
@handle_errors
def reset(ctx: Context, instance_id: str, actor: str) -> None:
    """Close an instance's incident and forget its attempt count."""

    async def work(rt: Runtime) -> None:
        incident = (await rt.ledger.load_open()).get(instance_id)
        if incident is None:
            raise NotFound(f"instance {instance_id!r} has no open incident; nothing to reset")
        now = await rt.instances.now()
        detail = {"attempts": incident.attempt, "state_was": str(incident.state)}
        await rt.ledger.close(incident, IncidentState.RESET, now, actor, detail)
        click.echo(
            f"reset {one_line(instance_id)}: incident {incident.id} closed at attempt "
            f"{incident.attempt}"
        )

    with_runtime(ctx, work)


@cli.command()
@click.argument("instance_id")
@actor_option
@pass_ctx
@handle_errors
def approve(ctx: Context, instance_id: str, actor: str) -> None:
    """Let one process restart of an instance through the blast radius."""

    async def work(rt: Runtime) -> None:
        incident = await rt.ledger.approve(instance_id, actor)
        if incident is None:
            raise NotFound(
                f"instance {instance_id!r} has no open incident; nothing to approve "
                "(see `watchdogctl status`)"
            )
        held = incident.held
        why = (
            f"held: {held.get('healthy')} of {held.get('monitored')} instances of "
            f"{one_line(str(held.get('process')))} healthy; "
            if held
            else "not held now; "
        )
        click.echo(
            f"approved {one_line(instance_id)}: {why}its next process restart goes through "
            "the blast radius once (the brake, budgets and breakers still apply)"
        )

    with_runtime(ctx, work)


async def _require_known(rt: Runtime, instance_id: str) -> None:
    if instance_id in await rt.ledger.load_open() or await rt.instances.exists(instance_id):
        return
    raise NotFound(f"unknown instance {instance_id!r}: not in table {rt.settings.instances.table}")
