"""Steering: `pause`, `resume`, `reset`, `approve`, each audited with who did it."""

from __future__ import annotations

from datetime import timedelta

import click

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
from watchdog.core.model import IncidentState, Pause
from watchdog.core.situation import stamp
from watchdog.render import one_line
from watchdog.wiring import Runtime


@cli.command()
@click.argument("instance_id")
@click.option("--for", "duration", required=True, callback=duration_value, help="e.g. 30m, 2h.")
@click.option("--reason", required=True, help="Why, for the audit trail.")
@actor_option
@pass_ctx
@handle_errors
def pause(ctx: Context, instance_id: str, duration: float, reason: str, actor: str) -> None:
    """Take no recovery action on an instance for a while."""

    async def work(rt: Runtime) -> None:
        await _require_known(rt, instance_id)
        now = await rt.instances.now()
        until = now + timedelta(seconds=duration)
        await rt.ledger.pause(Pause(instance_id, until, reason, actor), now)
        click.echo(f"paused {one_line(instance_id)} until {stamp(until)}")

    with_runtime(ctx, work)


@cli.command()
@click.argument("instance_id")
@actor_option
@pass_ctx
@handle_errors
def resume(ctx: Context, instance_id: str, actor: str) -> None:
    """Lift a pause."""

    async def work(rt: Runtime) -> None:
        if not await rt.ledger.resume(instance_id, actor):
            raise NotFound(f"instance {instance_id!r} is not paused; nothing to resume")
        click.echo(f"resumed {one_line(instance_id)}")

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
