"""The CLI's frame: the command group, its context, the one way errors reach the
operator (one line, an exit code, never a traceback), the option parsers commands share."""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

import click

from watchdog import render
from watchdog.config import Settings, load_settings
from watchdog.core.errors import ConfigError, WatchdogError
from watchdog.masking import mask_urls_in
from watchdog.observability import configure_logging, emit_audit, silence_logging
from watchdog.render import one_line
from watchdog.store import migrate
from watchdog.store.audit import AuditSink, ignore_audit
from watchdog.wiring import Runtime, login_user, open_runtime

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
    def __init__(self, config_path: str | None = None, verbose: bool = False) -> None:
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


def _config_here(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:  # the later one wins: after the command over before it
        ctx.ensure_object(Context).config_path = value


def _verbose_here(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(Context).verbose = True


def _shared_options() -> list[click.Parameter]:
    """`--config` and `--verbose` as every command takes them after its name: they set
    what the group's options set, and a `--config` given here wins over one given
    before the command (and over WATCHDOG_CONFIG)."""
    return [
        click.Option(
            ["--config", "config_path"],
            type=click.Path(),
            expose_value=False,
            callback=_config_here,
            help="TOML configuration file; wins over a --config before the command "
            "and over WATCHDOG_CONFIG.",
        ),
        click.Option(
            ["--verbose", "-v"],
            is_flag=True,
            expose_value=False,
            callback=_verbose_here,
            help="Operator commands also print their log lines (JSON on stderr).",
        ),
    ]


class _Group(click.Group):
    """A group whose every command, nested groups and theirs included, also takes the
    shared options after its name: `watchdogctl status --config x.toml` works as
    `watchdogctl --config x.toml status` does. One place, whatever module adds a command."""

    group_class = type  # `@cli.group()` makes groups of this class too

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        taken = {p.name for p in cmd.params}
        cmd.params.extend(p for p in _shared_options() if p.name not in taken)
        super().add_command(cmd, name)


@click.group(cls=_Group, epilog=ENV_HELP)
@click.option(
    "--config",
    "config_path",
    envvar="WATCHDOG_CONFIG",
    type=click.Path(),
    help="TOML configuration file [env: WATCHDOG_CONFIG]. Also accepted after the "
    "command, where it wins over this one.",
)
@click.option(
    "--verbose",
    "-v",
    is_flag=True,
    help="Operator commands also print their log lines (also accepted after the command).",
)
@click.version_option(package_name="instance-watchdog")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: bool) -> None:
    """External watchdog for fleets of long-lived instances."""
    ctx.obj = Context(config_path, verbose)


def with_runtime(
    ctx: Context,
    work: Callable[[Runtime], Coroutine[Any, Any, T]],
    *,
    check_schema: bool = True,
) -> T:
    """Open the stores for an operator command, run `work`, close them. `check_schema`
    False: `work` checks the watchdog's tables itself (`status --watch` keeps watching
    while the database is away)."""
    settings = ctx.settings()
    emit = ctx.operator_logging(settings)

    async def go() -> T:
        async with open_runtime(settings, emit) as runtime:
            if check_schema:
                await migrate.require_current(runtime.db)
            return await work(runtime)

    return run_async(go())


def duration_value(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return render.parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def since_value(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """Checked now (a usage error, exit 2); turned into a time once the clock is read."""
    if value is not None:
        try:
            render.parse_since(value, datetime.now(UTC))
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


actor_option = click.option(
    "--actor",
    default=login_user,
    show_default="login user",
    help="Who is doing this, for the audit trail.",
)


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
