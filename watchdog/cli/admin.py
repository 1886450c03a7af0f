"""Running and setting up: `run`, `db upgrade`, `config check`, `demo`."""

from __future__ import annotations

import sys

import click

from watchdog import render
from watchdog.cli.base import Context, cli, handle_errors, pass_ctx, run_async
from watchdog.config import Settings, redacted
from watchdog.observability import configure_logging
from watchdog.store import migrate
from watchdog.store.audit import AuditSink
from watchdog.wiring import check_backends, open_runtime


@cli.command()
@click.option("--once", is_flag=True, help="Run one cycle, wait for its actions, exit.")
@click.option("--dry-run", is_flag=True, help="Detect and audit what would be done (skipped).")
@pass_ctx
@handle_errors
def run(ctx: Context, once: bool, dry_run: bool) -> None:
    """Run the watchdog (the daemon, or one cycle with --once).

    Log lines are JSON on stdout. When stdout is a terminal, --once ends with a short
    summary for people on stdout, after the log lines: what the cycle found, the
    incidents it opened or closed, the actions per rung and the brake. Piped or
    redirected, stdout holds the JSON lines only."""
    from watchdog.daemon.bootstrap import OnceRecord, run_daemon

    settings = ctx.settings(require_secrets=not dry_run)
    check_backends(settings)  # what config check checks, before anything starts
    configure_logging(settings.daemon.log_level)
    record = OnceRecord() if once and render.is_terminal(sys.stdout) else None
    code = run_async(run_daemon(settings, once=once, dry_run=dry_run, record=record))
    if record is not None:
        summary = render.once_summary(record.report, record.audits, dry_run=dry_run, code=code)
        click.echo(summary)
    sys.exit(code)


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
