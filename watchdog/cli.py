"""`watchdogctl`: a thin click CLI. Parse, build, call one function, print, exit.

Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error. Errors are one
line naming the cause and the fix; never a traceback.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar

import click

from watchdog import render, views
from watchdog.config import Settings, load_settings, redacted
from watchdog.core.errors import ConfigError, NotFound, WatchdogError
from watchdog.core.model import AuditAction, IncidentState, Pause, RowFacts, Target, Verdict
from watchdog.core.ports import AuditQuery, ProcessLocator
from watchdog.core.situation import human_delta, stamp
from watchdog.masking import mask_urls_in
from watchdog.observability import configure_logging, emit_audit, silence_logging
from watchdog.render import one_line
from watchdog.store import migrate
from watchdog.store.audit import AuditSink, ignore_audit
from watchdog.wiring import Runtime, check_backends, login_user, open_runtime

P = ParamSpec("P")
T = TypeVar("T")

ENV_HELP = (
    "Every configuration key can also be set as WATCHDOG_<SECTION>__<KEY>, "
    "e.g. WATCHDOG_DETECTION__INTERVAL=2.5; the config file is --config or WATCHDOG_CONFIG."
)


def _fail(message: str, code: int) -> None:
    click.echo(f"watchdogctl: {one_line(message)}", err=True)
    sys.exit(code)


def handle_errors(func: Callable[P, T]) -> Callable[P, T]:
    """Turn the project's errors into one line and an exit code."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            _fail(str(exc), 2)
        except WatchdogError as exc:
            _fail(str(exc), 1)
        raise AssertionError("unreachable")

    return wrapper


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class Context:
    def __init__(self, config_path: str | None, verbose: bool = False) -> None:
        self.config_path = config_path
        self.verbose = verbose

    def operator_logging(self, settings: Settings) -> AuditSink:
        """An operator command prints human text; its log lines and audit events only with
        `--verbose` (on stderr, as JSON). The audit sink to give the stores back."""
        if not self.verbose:
            silence_logging()
            return ignore_audit
        configure_logging(settings.daemon.log_level, stream=sys.stderr)
        return emit_audit

    def settings(self, *, require_secrets: bool = False) -> Settings:
        return load_settings(self.config_path, require_secrets=require_secrets)


pass_ctx = click.make_pass_decorator(Context)


@click.group(epilog=ENV_HELP)
@click.option(
    "--config",
    "config_path",
    envvar="WATCHDOG_CONFIG",
    type=click.Path(),
    help="TOML configuration file [env: WATCHDOG_CONFIG].",
)
@click.option("--verbose", "-v", is_flag=True, help="Operator commands also print their log lines.")
@click.version_option(package_name="instance-watchdog")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: bool) -> None:
    """External watchdog for fleets of long-lived instances."""
    ctx.obj = Context(config_path, verbose)


# ------------------------------------------------------------------------------- run


@cli.command()
@click.option("--once", is_flag=True, help="Run one cycle, wait for its actions, exit.")
@click.option("--dry-run", is_flag=True, help="Detect and audit what would be done (skipped).")
@pass_ctx
@handle_errors
def run(ctx: Context, once: bool, dry_run: bool) -> None:
    """Run the watchdog (the daemon, or one cycle with --once)."""
    from watchdog.daemon.bootstrap import run_daemon

    settings = ctx.settings(require_secrets=not dry_run)
    check_backends(settings)  # what config check checks, before anything starts
    configure_logging(settings.daemon.log_level)
    sys.exit(run_async(run_daemon(settings, once=once, dry_run=dry_run)))


# --------------------------------------------------------------------------- inspect


def with_runtime(ctx: Context, work: Callable[[Runtime], Coroutine[Any, Any, T]]) -> T:
    """Open the stores for an operator command, run `work`, close them."""
    settings = ctx.settings()
    emit = ctx.operator_logging(settings)

    async def go() -> T:
        async with open_runtime(settings, emit) as runtime:
            await migrate.require_current(runtime.db)
            return await work(runtime)

    return run_async(go())


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_ctx
@handle_errors
def status(ctx: Context, as_json: bool) -> None:
    """The fleet as the table says it now, who acts, and every instance needing attention."""

    async def work(rt: Runtime) -> None:
        view = await views.fleet_view(rt)
        records = views.status_records(view, rt.settings.escalation.rules())
        if as_json:
            click.echo(render.as_json(records))
            return
        interval = rt.settings.detection.interval
        nodes = [views.node_record(n, view.now, interval) for n in view.nodes]
        click.echo(render.fleet_line(view.census, rt.settings.instances.table, view.table_error))
        click.echo(f"acting: {view.acting.detail} (as of {stamp(view.now)})")
        click.echo(render.nodes_table(nodes, view.now))
        click.echo(render.brake_line(view.brake))
        click.echo(render.breaker_table(view.breakers))
        click.echo()
        click.echo(render.status_table(records, view.census))

    with_runtime(ctx, work)


@cli.command()
@click.argument("instance_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_ctx
@handle_errors
def explain(ctx: Context, instance_id: str, as_json: bool) -> None:
    """Why the watchdog is or is not acting on one instance, and what it does next."""

    async def work(rt: Runtime) -> None:
        view = await views.fleet_view(rt)
        row = await rt.instances.inspect_row(instance_id) if view.scan is not None else None
        history = await rt.ledger.incident_history(instance_id, 1)
        if row is None and not history and instance_id not in view.pauses:
            raise NotFound(
                f"unknown instance {instance_id!r}: neither in table "
                f"{rt.settings.instances.table} nor in the watchdog's records"
            )
        if row is None and view.scan is not None:
            row = RowFacts(instance_id, Verdict.DELETED, "the row is gone from the table", {})
        explained = views.explanation(view, instance_id, row, history, rt.settings)
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
            f"  paused until {pause.until:%Y-%m-%d %H:%M:%S} ({pause.reason}, by {pause.actor})"
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
    closed = f", closed {incident.closed_at:%Y-%m-%d %H:%M:%S}" if incident.closed_at else ""
    return (
        f"  incident {incident.id}: {incident.state} {incident.reason}, attempt "
        f"{incident.attempt}, opened {incident.opened_at:%Y-%m-%d %H:%M:%S}{closed}"
    )


def _duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return render.parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _since(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """Checked now (a usage error, exit 2); turned into a time once the clock is read."""
    if value is not None:
        try:
            render.parse_since(value, datetime.now(UTC))
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


@cli.command()
@click.option("--instance", "instance_id", help="Only this instance.")
@click.option(
    "--since",
    callback=_since,
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


# ----------------------------------------------------------------------------- steer

actor_option = click.option(
    "--actor",
    default=login_user,
    show_default="login user",
    help="Who is doing this, for the audit trail.",
)


@cli.command()
@click.argument("instance_id")
@click.option("--for", "duration", required=True, callback=_duration, help="e.g. 30m, 2h.")
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
        click.echo(f"paused {one_line(instance_id)} until {until:%Y-%m-%d %H:%M:%S} UTC")

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


async def _require_known(rt: Runtime, instance_id: str) -> None:
    if instance_id in await rt.ledger.load_open() or await rt.instances.exists(instance_id):
        return
    raise NotFound(f"unknown instance {instance_id!r}: not in table {rt.settings.instances.table}")


# ------------------------------------------------------------------------ db, config


@cli.group()
def db() -> None:
    """The watchdog's own tables."""


@db.command("upgrade")
@pass_ctx
@handle_errors
def db_upgrade(ctx: Context) -> None:
    """Create or upgrade the watchdog's tables (idempotent)."""
    from watchdog.store.database import Database

    settings = ctx.settings()

    async def go() -> None:
        database = Database(settings.database.url, settings.database.timeout)
        try:
            await migrate.upgrade(database)
            click.echo(f"watchdog tables at revision {await migrate.current_revision(database)}")
        finally:
            await database.dispose()

    run_async(go())


@cli.group()
def config() -> None:
    """The configuration."""


@config.command("check")
@click.option("--offline", is_flag=True, help="Do not connect to the database.")
@pass_ctx
@handle_errors
def config_check(ctx: Context, offline: bool) -> None:
    """Check everything `run` will use and print the configuration, secrets masked.

    Connects by default: the database answers, the mapped table and columns exist and
    how their values are read, the watchdog's tables are current."""
    settings = ctx.settings(require_secrets=True)
    check_backends(settings)
    click.echo(render.as_json(redacted(settings)))
    if not offline:
        for line in run_async(_check_database(settings, ctx.operator_logging(settings))):
            click.echo(line, err=True)
    click.echo("configuration ok", err=True)


async def _check_database(settings: Settings, emit: AuditSink) -> list[str]:
    """What `run` meets at start, as lines for the operator; raises on what stops it."""
    async with open_runtime(settings, emit) as rt:
        revision = await migrate.current_revision(rt.db)
        if rt.db.is_sqlite:
            tables = f"watchdog tables: revision {revision or 'none'} (run upgrades SQLite itself)"
        else:
            await migrate.require_current(rt.db)
            tables = f"watchdog tables: revision {revision} (current)"
        reading = await rt.instances.check()
        mapping = settings.instances
        lines = [f"database: answers ({rt.db.dialect})", tables]
        lines += [
            f"table {mapping.table}: {column} read as {how}"
            for column, how in reading.describe(mapping).items()
        ]
        return lines


@cli.command()
@click.option("--seconds", default=75.0, show_default=True, help="How long the scenario runs.")
@click.option("--dir", "workdir", default="demo-run", show_default=True, type=click.Path())
def demo(seconds: float, workdir: str) -> None:
    """A self-contained scenario on SQLite: a simulated app, frozen instances, the ladder."""
    from watchdog.demo.driver import run_demo

    sys.exit(run_demo(workdir, seconds))


def main() -> None:
    try:
        cli.main(prog_name="watchdogctl", standalone_mode=False)
    except click.UsageError as exc:  # one line, like every other error the operator sees
        command = exc.ctx.command_path if exc.ctx else "watchdogctl"
        _fail(f"{exc.format_message().rstrip('.')}; see `{command} --help`", 2)
    except click.Abort:
        _fail("aborted", 1)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug of ours: still one line, secrets masked, no traceback
        _fail(
            f"internal error ({type(exc).__name__}: {mask_urls_in(str(exc))}); please report it", 70
        )
