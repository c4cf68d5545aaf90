"""The ``reverse-http`` command line: ``proxy``, ``agent``, ``lb``, ``auth`` and ``version``.

Flag names, help, environment variables and defaults come from the table in
:mod:`reverse_http.cli.options`; ``tests/test_cli_config.py`` checks that the
signatures below match it. Values are layered by click itself: command line, then
``envvar=`` (``REVERSE_HTTP_<FLAG>``), then the context's ``default_map``, which the
eager ``--config`` option fills from the configuration files (merged, a later file's
value winning) before any other option is resolved, then the default.

Every error a user can fix is one line on stderr, ``reverse-http <cmd>: <message>``,
with exit status 1, as the Go reference's: usage errors, :class:`ConfigError` from
the builders, and ``ConfigError`` raised by a daemon at start-up (e.g. address in use).
A crash (an exception nobody expected) exits 2 with its traceback, as a Go panic does,
so that ``RestartPreventExitStatus=1`` still restarts a crashed daemon.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import os
import re
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from typing import IO, Annotated, Any, ClassVar, Final, NoReturn, TypeVar

import typer

# typer >= 0.29 vendors click as typer._click (pinned in pyproject); plain click
# objects do not mix with it.
from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
from typer.core import TyperCommand, TyperGroup

from ..errors import ConfigError
from ..logs import log_fields, setup_logging
from ..systemd import Notifier
from . import options, version_text
from .auth_cmd import LOG_FORMAT_OPTION, LOG_LEVEL_OPTION, auth_app

__all__ = [
    "PROG_NAME",
    "AgentCommand",
    "CliError",
    "DaemonCommand",
    "LbCommand",
    "OneLineCommand",
    "ProxyCommand",
    "app",
    "main",
]

PROG_NAME: Final = "reverse-http"

_ROOT_LOG_KEY: Final = "reverse_http.root_log_flags"
_CONFIG_SEARCH_KEY: Final = "reverse_http.config_search"
_CONFIG_ENTRIES_KEY: Final = "reverse_http.config_entries"

_TRUE: Final = frozenset({"true", "1", "yes", "on", "t", "y"})
_FALSE: Final = frozenset({"false", "0", "no", "off", "f", "n"})

#: Every usage or configuration error, as in the Go reference (kong exits 1).
EXIT_USAGE: Final = 1
#: An unexpected exception: what a Go panic exits with, and click's usage-error code.
EXIT_CRASH: Final = 2

log = logging.getLogger("reverse_http.cli")

T = TypeVar("T")


class CliError(ClickException):
    """A user error shown as a single line, ``<prefix>: <message>``; exit status 1."""

    exit_code = EXIT_USAGE

    def __init__(self, prefix: str, message: str) -> None:
        one_line = " ".join(part.strip() for part in message.splitlines() if part.strip())
        super().__init__(one_line)
        self.prefix = prefix

    def show(self, file: IO[Any] | None = None) -> None:
        typer.echo(f"{self.prefix}: {self.format_message()}", file=file, err=file is None)


def _source_name(ctx: typer.Context, param: str) -> str | None:
    source = ctx.get_parameter_source(param)
    return None if source is None else source.name


def _file_entries(ctx: typer.Context) -> dict[str, options.FileEntry]:
    """The configuration file values in use, by flag name (not those a flag or env beat)."""
    entries: dict[str, options.FileEntry] = ctx.meta.get(_CONFIG_ENTRIES_KEY, {})
    root_flags: dict[str, str | None] = ctx.meta.get(_ROOT_LOG_KEY, {})
    return {
        flag: entry
        for flag, entry in entries.items()
        if _source_name(ctx, options.param_name(flag)) == "DEFAULT_MAP"
        and root_flags.get(flag) is None
    }


_LEADING_FLAG: Final = re.compile(r"--([a-z0-9][a-z0-9.-]*)(?=[: ]|$)")


def _env_source(ctx: typer.Context, flag: str) -> str | None:
    """The environment variable ``--<flag>``'s value came from, if it came from one.

    Click reads the first of the flag's variables that is set and not empty.
    """
    root_flags: dict[str, str | None] = ctx.meta.get(_ROOT_LOG_KEY, {})
    definition = options.FLAGS.get(flag)
    if (
        definition is None
        or root_flags.get(flag) is not None
        or _source_name(ctx, options.param_name(flag)) != "ENVIRONMENT"
    ):
        return None
    return next((name for name in definition.envvars if os.environ.get(name)), None)


def _blame_source(ctx: typer.Context, message: str) -> str:
    """A message about ``--<flag>`` names the file and key, or the environment variable,
    instead, if the value came from there.

    The builders in :mod:`.options` start every message about one flag's value with
    ``--<flag>``.
    """
    match = _LEADING_FLAG.match(message)
    if match is None:
        return message
    flag = match.group(1)
    entry = _file_entries(ctx).get(flag)
    if entry is not None:
        return entry.label + message[match.end() :]
    env = _env_source(ctx, flag)
    if env is not None:
        return f"environment variable {env}" + message[match.end() :]
    return message


_FLAG_OF_PARAM: Final = {options.param_name(name): name for name in options.FLAGS}


def _bad_boolean(value: str) -> str:
    return f"invalid boolean value {json.dumps(value)} (expected true or false)"


def _usage_message(ctx: typer.Context, exc: UsageError) -> str:
    """The usage error's message, naming the file and key or the environment variable when
    the bad value came from there (click says only "env var", in its own words)."""
    message = exc.format_message()
    name = getattr(getattr(exc, "param", None), "name", None)
    flag = _FLAG_OF_PARAM.get(name or "")
    env = None if flag is None else _env_source(ctx, flag)
    if flag is not None and env is not None and options.FLAGS[flag].kind == "bool":
        return f"environment variable {env}: {_bad_boolean(os.environ[env])}"
    for flag, entry in _file_entries(ctx).items():
        if name == options.param_name(flag):
            message = f"{message.rstrip('.')} (from {entry.label})"
    return message


# ----------------------------------------------------------------- option helpers


def _option_factory(command: str) -> Callable[[str], Any]:
    """``opt(name)``: the ``typer.Option`` for one row of ``command``'s flag table.

    The default is written in the signature (typer wants it there); a test checks it.
    """

    def opt(name: str) -> Any:
        flag = options.command_flag(command, name)
        decl = f"--{name}/--no-{name}" if flag.kind == "bool" else f"--{name}"
        metavar = flag.metavar or ("|".join(flag.choices) if flag.choices else "STRING")
        return typer.Option(
            decl,
            envvar=flag.envvars[0] if len(flag.envvars) == 1 else list(flag.envvars),
            show_envvar=True,
            show_default=flag.kind == "str" and flag.default is not None,
            metavar=None if flag.kind == "bool" else metavar,
            help=flag.help,
        )

    return opt


_proxy_opt: Final = _option_factory("proxy")
_agent_opt: Final = _option_factory("agent")
_lb_opt: Final = _option_factory("lb")


def _load_config_file(ctx: typer.Context, value: str | None) -> None:
    """Eager ``--config`` callback: the files' merged values become the context's default_map.

    Every file is read and checked, even when a later one overrides all its values.
    """
    if ctx.resilient_parsing or ctx.command.name is None:
        return
    search = options.find_config_files(value)
    ctx.meta[_CONFIG_SEARCH_KEY] = search
    files = [options.load_config_file(path) for path in search.files]
    entries = options.merge_config_files(files, ctx.command.name)
    defaults = {options.param_name(k): e.value for k, e in entries.items()}
    ctx.default_map = {**defaults, **(ctx.default_map or {})}
    ctx.meta[_CONFIG_ENTRIES_KEY] = entries


_CONFIG_OPTION: Final[Any] = typer.Option(
    "--config",
    metavar="FILE",
    envvar=options.CONFIG_ENVVAR,
    show_envvar=True,
    is_eager=True,
    expose_value=False,
    callback=_load_config_file,
    help=(
        "Configuration file (.yaml, .yml or .json). Default: every one of "
        + ", ".join(options.CONFIG_SEARCH_PATHS)
        + " that exists, later ones overriding earlier ones; '' for none."
    ),
)


_CHECK_OPTION: Final[Any] = typer.Option(
    "--check",
    help=(
        "Load the configuration and every file it names, cross-check them, print what "
        "was found and exit: 0 if fine, 1 with one line per problem. Binds no port and "
        "connects nowhere."
    ),
)


# ------------------------------------------------------------------ command classes


class OneLineCommand(TyperCommand):
    """A command whose usage errors are one line, ``reverse-http <cmd>: <message>``."""

    @property
    def error_prefix(self) -> str:
        return f"{PROG_NAME} {self.name}"

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:  # type: ignore[override]
        try:
            return super().parse_args(ctx, args)
        except ConfigError as exc:  # from the --config callback
            message = str(exc)
            if _source_name(ctx, "config") == "ENVIRONMENT":
                message = re.sub(
                    r"^--config\b", f"environment variable {options.CONFIG_ENVVAR}", message
                )
            raise CliError(self.error_prefix, message) from None
        except UsageError as exc:
            raise CliError(self.error_prefix, _usage_message(ctx, exc)) from None


class DaemonCommand(OneLineCommand):
    """Also: ConfigError from the command on one line, and Kong's ``--bool-flag=true``."""

    flag_table: ClassVar[tuple[options.Flag, ...]] = ()

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:  # type: ignore[override]
        return super().parse_args(ctx, self._rewrite_bool_values(args))

    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            raise CliError(self.error_prefix, _blame_source(ctx, str(exc))) from None

    def flag_values(self, ctx: typer.Context) -> dict[str, object]:
        """The resolved flag values by flag name, with the global ``--log.*`` flags applied."""
        values = {flag.name: ctx.params[options.param_name(flag.name)] for flag in self.flag_table}
        root_flags: dict[str, str | None] = ctx.meta.get(_ROOT_LOG_KEY, {})
        for flag_name, value in root_flags.items():
            if value is not None and _source_name(ctx, options.param_name(flag_name)) != (
                "COMMANDLINE"
            ):
                values[flag_name] = value
        return values

    def _rewrite_bool_values(self, args: list[str]) -> list[str]:
        bools = {f"--{flag.name}" for flag in self.flag_table if flag.kind == "bool"}
        return _rewrite_bool_values(args, bools, self.error_prefix)


def _rewrite_bool_values(args: list[str], bools: set[str], prefix: str) -> list[str]:
    """Kong's ``--flag=true`` / ``--flag=false`` -> ``--flag`` / ``--no-flag``."""
    out: list[str] = []
    for i, arg in enumerate(args):
        if arg == "--":
            out.extend(args[i:])
            break
        name, sep, value = arg.partition("=")
        if not sep or name not in bools:
            out.append(arg)
        elif value.strip().lower() in _TRUE:
            out.append(name)
        elif value.strip().lower() in _FALSE:
            out.append(f"--no-{name[2:]}")
        else:
            raise CliError(prefix, f"{name}: {_bad_boolean(value)}")
    return out


class VersionCommand(OneLineCommand):
    """``version``: also Kong's ``--verbose=true`` / ``--verbose=false``."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:  # type: ignore[override]
        return super().parse_args(ctx, _rewrite_bool_values(args, {"--verbose"}, self.error_prefix))


class ProxyCommand(DaemonCommand):
    flag_table = options.PROXY_FLAGS


class AgentCommand(DaemonCommand):
    flag_table = options.AGENT_FLAGS


class LbCommand(DaemonCommand):
    flag_table = options.LB_FLAGS


def _install_lazy_conversion(command: TyperGroup, ctx: typer.Context) -> None:
    """Before any option is converted: no pydantic for string options (cli.coercion).
    A typer without the internals it uses keeps its own (slower to start) conversion."""
    try:
        from . import coercion
    except ImportError:
        return
    coercion.install(command, ctx)


class RootGroup(TyperGroup):
    """The top-level group: usage errors (unknown command, bad global flag) on one line."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """Exit statuses as the Go reference's (module docstring): click's own usage
        errors (a missing command, ``auth`` sub-command errors) exit 2 in click, 1 here;
        an unexpected exception exits 2 after its traceback instead of Python's 1."""
        try:
            return super().main(*args, **kwargs)
        except SystemExit as exc:
            if exc.code == 2:  # click's UsageError.exit_code
                raise SystemExit(EXIT_USAGE) from None
            raise
        except Exception:
            traceback.print_exc()
            raise SystemExit(EXIT_CRASH) from None

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:  # type: ignore[override]
        _install_lazy_conversion(self, ctx)
        try:
            return super().parse_args(ctx, args)
        except NoArgsIsHelpError:
            raise
        except UsageError as exc:
            raise CliError(PROG_NAME, exc.format_message()) from None

    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except NoArgsIsHelpError:
            raise
        except UsageError as exc:
            if exc.ctx is not ctx:  # a sub-command's own error: its own business
                raise
            raise CliError(PROG_NAME, exc.format_message()) from None

    def resolve_command(  # type: ignore[override]
        self, ctx: typer.Context, args: list[str]
    ) -> tuple[str | None, Any, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except UsageError as exc:
            raise CliError(PROG_NAME, exc.format_message()) from None


app = typer.Typer(
    name=PROG_NAME,
    cls=RootGroup,
    help="HTTP reverse tunnel.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(auth_app, name="auth", help="Auth tools.")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(version_text(verbose=False))
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    log_level: Annotated[
        str | None,
        typer.Option(
            "--log.level",
            metavar="LEVEL",
            help="Log level (also accepted after the command). One of: "
            + ", ".join(options.LOG_LEVELS)
            + ".",
        ),
    ] = None,
    log_format: Annotated[
        str | None,
        typer.Option(
            "--log.format",
            metavar="FORMAT",
            help="Log format (also accepted after the command). One of: "
            + ", ".join(options.LOG_FORMATS)
            + ".",
        ),
    ] = None,
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            is_eager=True,
            expose_value=False,
            callback=_print_version,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """HTTP reverse tunnel."""
    # As with Kong, the daemons' log flags may come before the command; one given
    # after the command wins, and env/file values apply only when neither is given.
    # The daemons check them with their other flags; for the commands that do not log
    # they are checked here, as Kong checks them on every command.
    command = ctx.invoked_subcommand
    for flag, value, choices in (
        ("log.level", log_level, options.LOG_LEVELS),
        ("log.format", log_format, options.LOG_FORMATS),
    ):
        if value is not None and value not in choices and command not in options.COMMANDS:
            allowed = ", ".join(choices)
            raise CliError(
                f"reverse-http {command}", f"--{flag}: {value!r} is not one of {allowed}"
            )
    ctx.meta[_ROOT_LOG_KEY] = {"log.level": log_level, "log.format": log_format}


# ---------------------------------------------------------------------- running


def _log_config_source(ctx: typer.Context) -> None:
    search: options.ConfigSearch | None = ctx.meta.get(_CONFIG_SEARCH_KEY)
    if search is None:
        return
    for path, reason in search.skipped:
        log.warning("configuration file skipped", extra=log_fields(path=str(path), error=reason))
    for path in search.files:
        log.info("configuration file loaded", extra=log_fields(path=str(path)))


def _only(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """``exc`` if it is a ``kind``, or the first leaf of a group made only of ``kind``."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        match, rest = exc.split(kind)
        if match is not None and rest is None:
            leaf: BaseException = match
            while isinstance(leaf, BaseExceptionGroup):
                leaf = leaf.exceptions[0]
            return leaf
    return None


def _notifier() -> Notifier:
    """systemd's notify socket, if any: the CLI is the one place that reads the environment."""
    return _TuneWhenReady.from_environ(os.environ)


class _TuneWhenReady(Notifier):
    """Also freezes the start-up objects (a full collection first) when the daemon is ready:
    tens of milliseconds that no longer delay its listening (issue 12 gap 6)."""

    _tuned = False

    def ready(self, status: str | None = None) -> None:
        super().ready(status)
        if not self._tuned:
            self._tuned = True
            from ..gctuning import tune_for_daemon

            tune_for_daemon()


def _run_daemon(run: Callable[[T], Awaitable[object]], config: T) -> None:
    """``trio.run(run, config)``; start-up errors become one line, Ctrl-C exit 130."""
    import trio

    from ..gctuning import defer_collections
    from ..quic.settings import TlsConfigError

    defer_collections()  # the daemon's thresholds; it freezes when ready (_TuneWhenReady)
    try:
        trio.run(run, config)
    except BaseException as exc:
        user_error = _only(exc, ConfigError) or _only(exc, TlsConfigError)
        if user_error is not None:
            raise ConfigError(str(user_error)) from None
        if _only(exc, KeyboardInterrupt) is not None:
            raise typer.Exit(130) from None
        raise


def _check(
    ctx: typer.Context,
    values: dict[str, object],
    build: Callable[[dict[str, object]], Any],
    checker: str,
) -> NoReturn:
    """``--check``: notes on stdout, one line per problem on stderr; exit 0 or 1."""
    from .. import check as checks

    prefix = _command(ctx).error_prefix
    report = checks.Report()
    search: options.ConfigSearch | None = ctx.meta.get(_CONFIG_SEARCH_KEY)
    if search is not None:
        for path in search.files:
            report.note(f"configuration file {path} loaded")
        for path, reason in search.skipped:
            report.note(f"configuration file {path} skipped: {reason}")
    try:
        options.build_log_config(values)
        config = build(values)
    except ConfigError as exc:
        report.problem(_blame_source(ctx, str(exc)))
    else:
        found = getattr(checks, checker)(config)
        report.notes.extend(found.notes)
        report.problems.extend(_blame_source(ctx, p) for p in found.problems)
    for note in report.notes:
        typer.echo(f"{prefix}: ok: {note}")
    for problem in report.problems:
        typer.echo(f"{prefix}: {problem}", err=True)
    if report.ok:
        typer.echo(f"{prefix}: configuration OK")
        raise typer.Exit(0)
    count = len(report.problems)
    typer.echo(f"{prefix}: configuration check failed: {count} problem(s)", err=True)
    raise typer.Exit(1)


def _command(ctx: typer.Context) -> DaemonCommand:
    command = ctx.command
    assert isinstance(command, DaemonCommand)
    return command


# --------------------------------------------------------------------- commands
# Parameter names must be options.param_name(flag) and defaults the table's; a
# test compares them. Values are read back by flag name via flag_values().


@app.command(cls=ProxyCommand, help="Start proxy server.")
def proxy(
    ctx: typer.Context,
    agent_server_listen_address: Annotated[
        str, _proxy_opt("agent-server.listen-address")
    ] = ":4242",
    agent_server_tls_refresh: Annotated[str, _proxy_opt("agent-server.tls.refresh")] = "0s",
    agent_server_tls_file_key: Annotated[
        str | None, _proxy_opt("agent-server.tls.file.key")
    ] = None,
    agent_server_tls_file_cert: Annotated[
        str | None, _proxy_opt("agent-server.tls.file.cert")
    ] = None,
    agent_server_tls_file_client_ca: Annotated[
        str | None, _proxy_opt("agent-server.tls.file.client-ca")
    ] = None,
    agent_server_tls_file_client_crl: Annotated[
        str | None, _proxy_opt("agent-server.tls.file.client-crl")
    ] = None,
    agent_server_agent_dial_timeout: Annotated[
        str, _proxy_opt("agent-server.agent.dial-timeout")
    ] = "10s",
    agent_server_retry: Annotated[bool, _proxy_opt("agent-server.retry")] = False,
    quic_max_datagram_size: Annotated[str, _proxy_opt("quic.max-datagram-size")] = "1452",
    quic_pmtu_discovery: Annotated[bool, _proxy_opt("quic.pmtu-discovery")] = True,
    quic_congestion_control: Annotated[str, _proxy_opt("quic.congestion-control")] = "cubic",
    quic_max_congestion_window: Annotated[
        str, _proxy_opt("quic.max-congestion-window")
    ] = "1048576",
    quic_initial_congestion_window: Annotated[
        str, _proxy_opt("quic.initial-congestion-window")
    ] = "32",
    quic_stream_receive_window: Annotated[str, _proxy_opt("quic.stream-receive-window")] = "524288",
    quic_max_stream_receive_window: Annotated[
        str, _proxy_opt("quic.max-stream-receive-window")
    ] = "6291456",
    quic_connection_receive_window: Annotated[
        str, _proxy_opt("quic.connection-receive-window")
    ] = "16777216",
    quic_keepalive_interval: Annotated[str, _proxy_opt("quic.keepalive-interval")] = "10s",
    quic_liveness_timeout: Annotated[str, _proxy_opt("quic.liveness-timeout")] = "30s",
    quic_idle_timeout: Annotated[str, _proxy_opt("quic.idle-timeout")] = "30s",
    quic_handshake_timeout: Annotated[str, _proxy_opt("quic.handshake-timeout")] = "5s",
    quic_udp_buffer_size: Annotated[str, _proxy_opt("quic.udp-buffer-size")] = "4194304",
    http_proxy_listen_address: Annotated[str, _proxy_opt("http-proxy.listen-address")] = ":3128",
    http_proxy_tls_enable: Annotated[bool, _proxy_opt("http-proxy.tls.enable")] = False,
    http_proxy_tls_refresh: Annotated[str, _proxy_opt("http-proxy.tls.refresh")] = "0s",
    http_proxy_tls_file_key: Annotated[str | None, _proxy_opt("http-proxy.tls.file.key")] = None,
    http_proxy_tls_file_cert: Annotated[str | None, _proxy_opt("http-proxy.tls.file.cert")] = None,
    http_proxy_tls_file_client_ca: Annotated[
        str | None, _proxy_opt("http-proxy.tls.file.client-ca")
    ] = None,
    http_proxy_tls_file_client_crl: Annotated[
        str | None, _proxy_opt("http-proxy.tls.file.client-crl")
    ] = None,
    http_proxy_tls_key_password: Annotated[
        str | None, _proxy_opt("http-proxy.tls.key-password")
    ] = None,
    http_proxy_host_whitelist: Annotated[
        list[str] | None, _proxy_opt("http-proxy.host-whitelist")
    ] = None,
    auth_type: Annotated[str, _proxy_opt("auth.type")] = "noauth",
    auth_jwt_public_key: Annotated[str, _proxy_opt("auth.jwt.public-key")] = "auth-key-public.pem",
    auth_jwt_audience: Annotated[str | None, _proxy_opt("auth.jwt.audience")] = None,
    store_type: Annotated[str, _proxy_opt("store.type")] = "none",
    store_http_proxy_address: Annotated[str | None, _proxy_opt("store.http-proxy-address")] = None,
    store_memcached_address: Annotated[
        str, _proxy_opt("store.memcached.address")
    ] = "localhost:11211",
    store_memcached_timeout: Annotated[str, _proxy_opt("store.memcached.timeout")] = "1s",
    store_readiness_grace: Annotated[str, _proxy_opt("store.readiness-grace")] = "30s",
    shutdown_grace_period: Annotated[str, _proxy_opt("shutdown-grace-period")] = "30s",
    metrics_listen_address: Annotated[str, _proxy_opt("metrics.listen-address")] = "",
    log_level: Annotated[str, _proxy_opt("log.level")] = "info",
    log_format: Annotated[str, _proxy_opt("log.format")] = "text",
    config: Annotated[str | None, _CONFIG_OPTION] = None,
    check: Annotated[bool, _CHECK_OPTION] = False,
) -> None:
    values = _command(ctx).flag_values(ctx)
    if check:
        _check(ctx, values, options.build_proxy_config, "check_proxy")
    log_config = options.build_log_config(values)
    proxy_config = options.build_proxy_config(values)
    setup_logging(log_config)
    _log_config_source(ctx)
    from ..proxy.server import run_proxy

    _run_daemon(functools.partial(run_proxy, notifier=_notifier()), proxy_config)


@app.command(cls=AgentCommand, help="Start agent.")
def agent(
    ctx: typer.Context,
    agent_client_server_address: Annotated[
        str, _agent_opt("agent-client.server-address")
    ] = "localhost:4242",
    agent_client_host_whitelist: Annotated[
        list[str] | None, _agent_opt("agent-client.host-whitelist")
    ] = None,
    agent_client_tls_refresh: Annotated[str, _agent_opt("agent-client.tls.refresh")] = "0s",
    agent_client_tls_insecure_skip_verify: Annotated[
        bool, _agent_opt("agent-client.tls.insecure-skip-verify")
    ] = False,
    agent_client_tls_file_root_ca: Annotated[
        str | None, _agent_opt("agent-client.tls.file.root-ca")
    ] = None,
    agent_client_tls_file_cert: Annotated[
        str | None, _agent_opt("agent-client.tls.file.cert")
    ] = None,
    agent_client_tls_file_key: Annotated[
        str | None, _agent_opt("agent-client.tls.file.key")
    ] = None,
    auth_type: Annotated[str, _agent_opt("auth.type")] = "noauth",
    auth_noauth_agent_id: Annotated[str | None, _agent_opt("auth.noauth.agent-id")] = None,
    auth_jwt_token: Annotated[str | None, _agent_opt("auth.jwt.token")] = None,
    quic_max_datagram_size: Annotated[str, _agent_opt("quic.max-datagram-size")] = "1452",
    quic_pmtu_discovery: Annotated[bool, _agent_opt("quic.pmtu-discovery")] = True,
    quic_congestion_control: Annotated[str, _agent_opt("quic.congestion-control")] = "cubic",
    quic_max_congestion_window: Annotated[
        str, _agent_opt("quic.max-congestion-window")
    ] = "1048576",
    quic_initial_congestion_window: Annotated[
        str, _agent_opt("quic.initial-congestion-window")
    ] = "32",
    quic_stream_receive_window: Annotated[str, _agent_opt("quic.stream-receive-window")] = "524288",
    quic_max_stream_receive_window: Annotated[
        str, _agent_opt("quic.max-stream-receive-window")
    ] = "6291456",
    quic_connection_receive_window: Annotated[
        str, _agent_opt("quic.connection-receive-window")
    ] = "16777216",
    quic_keepalive_interval: Annotated[str, _agent_opt("quic.keepalive-interval")] = "10s",
    quic_liveness_timeout: Annotated[str, _agent_opt("quic.liveness-timeout")] = "30s",
    quic_idle_timeout: Annotated[str, _agent_opt("quic.idle-timeout")] = "30s",
    quic_handshake_timeout: Annotated[str, _agent_opt("quic.handshake-timeout")] = "5s",
    quic_udp_buffer_size: Annotated[str, _agent_opt("quic.udp-buffer-size")] = "4194304",
    metrics_listen_address: Annotated[str, _agent_opt("metrics.listen-address")] = "",
    log_level: Annotated[str, _agent_opt("log.level")] = "info",
    log_format: Annotated[str, _agent_opt("log.format")] = "text",
    config: Annotated[str | None, _CONFIG_OPTION] = None,
    check: Annotated[bool, _CHECK_OPTION] = False,
) -> None:
    values = _command(ctx).flag_values(ctx)
    if check:
        _check(ctx, values, options.build_agent_config, "check_agent")
    log_config = options.build_log_config(values)
    agent_config = options.build_agent_config(values)
    setup_logging(log_config)
    _log_config_source(ctx)
    from ..agent.client import run_agent

    _run_daemon(functools.partial(run_agent, notifier=_notifier()), agent_config)


@app.command(cls=LbCommand, help="Start load balancer.")
def lb(
    ctx: typer.Context,
    http_proxy_listen_address: Annotated[str, _lb_opt("http-proxy.listen-address")] = ":3129",
    http_proxy_tls_enable: Annotated[bool, _lb_opt("http-proxy.tls.enable")] = False,
    http_proxy_tls_refresh: Annotated[str, _lb_opt("http-proxy.tls.refresh")] = "0s",
    http_proxy_tls_file_key: Annotated[str | None, _lb_opt("http-proxy.tls.file.key")] = None,
    http_proxy_tls_file_cert: Annotated[str | None, _lb_opt("http-proxy.tls.file.cert")] = None,
    http_proxy_tls_file_client_ca: Annotated[
        str | None, _lb_opt("http-proxy.tls.file.client-ca")
    ] = None,
    http_proxy_tls_file_client_crl: Annotated[
        str | None, _lb_opt("http-proxy.tls.file.client-crl")
    ] = None,
    http_proxy_tls_key_password: Annotated[
        str | None, _lb_opt("http-proxy.tls.key-password")
    ] = None,
    http_proxy_host_whitelist: Annotated[
        list[str] | None, _lb_opt("http-proxy.host-whitelist")
    ] = None,
    http_connector_tls_enable: Annotated[bool, _lb_opt("http-connector.tls.enable")] = False,
    http_connector_tls_refresh: Annotated[str, _lb_opt("http-connector.tls.refresh")] = "0s",
    http_connector_tls_insecure_skip_verify: Annotated[
        bool, _lb_opt("http-connector.tls.insecure-skip-verify")
    ] = False,
    http_connector_tls_file_root_ca: Annotated[
        str | None, _lb_opt("http-connector.tls.file.root-ca")
    ] = None,
    http_connector_tls_use_system_pool: Annotated[
        bool, _lb_opt("http-connector.tls.use-system-pool")
    ] = False,
    http_connector_tls_server_name: Annotated[
        str | None, _lb_opt("http-connector.tls.server-name")
    ] = None,
    http_connector_allowed_proxies: Annotated[
        list[str] | None, _lb_opt("http-connector.allowed-proxies")
    ] = None,
    http_connector_tls_file_cert: Annotated[
        str | None, _lb_opt("http-connector.tls.file.cert")
    ] = None,
    http_connector_tls_file_key: Annotated[
        str | None, _lb_opt("http-connector.tls.file.key")
    ] = None,
    http_connector_tls_key_password: Annotated[
        str | None, _lb_opt("http-connector.tls.key-password")
    ] = None,
    auth_type: Annotated[str, _lb_opt("auth.type")] = "noauth",
    auth_jwt_public_key: Annotated[str, _lb_opt("auth.jwt.public-key")] = "auth-key-public.pem",
    auth_jwt_audience: Annotated[str | None, _lb_opt("auth.jwt.audience")] = None,
    store_type: Annotated[str, _lb_opt("store.type")] = "memcached",
    store_memcached_address: Annotated[str, _lb_opt("store.memcached.address")] = "localhost:11211",
    store_memcached_timeout: Annotated[str, _lb_opt("store.memcached.timeout")] = "1s",
    store_readiness_grace: Annotated[str, _lb_opt("store.readiness-grace")] = "5s",
    shutdown_grace_period: Annotated[str, _lb_opt("shutdown-grace-period")] = "30s",
    metrics_listen_address: Annotated[str, _lb_opt("metrics.listen-address")] = "",
    log_level: Annotated[str, _lb_opt("log.level")] = "info",
    log_format: Annotated[str, _lb_opt("log.format")] = "text",
    config: Annotated[str | None, _CONFIG_OPTION] = None,
    check: Annotated[bool, _CHECK_OPTION] = False,
) -> None:
    values = _command(ctx).flag_values(ctx)
    if check:
        _check(ctx, values, options.build_lb_config, "check_lb")
    log_config = options.build_log_config(values)
    lb_config = options.build_lb_config(values)
    setup_logging(log_config)
    _log_config_source(ctx)
    from ..lb.server import run_lb

    _run_daemon(functools.partial(run_lb, notifier=_notifier()), lb_config)


@app.command(cls=VersionCommand, help="Show version.")
def version(
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose/--no-verbose", "-V", help="Print version, commit and date as JSON."
        ),
    ] = False,
    log_level: Annotated[str, LOG_LEVEL_OPTION] = "info",
    log_format: Annotated[str, LOG_FORMAT_OPTION] = "text",
) -> None:
    typer.echo(version_text(verbose))


@app.command(cls=OneLineCommand, help="Run proxy, agent and a local web page in one process.")
def demo(
    http_port: Annotated[int, typer.Option("--http-port", help="Proxy port for clients.")] = 3128,
    agent_port: Annotated[
        int, typer.Option("--agent-port", help="Proxy UDP port for agents.")
    ] = 4242,
    once: Annotated[bool, typer.Option("--once", help="Check one request, then exit.")] = False,
) -> None:
    """Zero-configuration tour: loopback only, throwaway development certificates."""
    from ..config import LogConfig
    from ..demo import run_demo
    from ..logs import setup_logging

    setup_logging(LogConfig(level="warn"))
    worked: list[bool] = []

    async def tour(_: None) -> None:
        worked.append(await run_demo(http_port, agent_port, once=once))

    try:
        _run_daemon(tour, None)
    except ConfigError as exc:
        raise CliError(f"{PROG_NAME} demo", str(exc)) from None
    if not all(worked):
        raise typer.Exit(1)


def _app_for(args: Sequence[str]) -> typer.Typer:
    """``app`` with only the command that ``args`` start with, if they start with one.

    Typer builds every command's options from its signature before it parses anything
    (~30 ms for all of them); a daemon's start needs only its own. Anything else (no
    command, a global flag first) gets the whole command line.
    """
    if not args:
        return app
    commands = [
        info
        for info in app.registered_commands
        if str(info.name or getattr(info.callback, "__name__", "")).replace("_", "-") == args[0]
    ]
    groups = [info for info in app.registered_groups if info.name == args[0]]
    if len(commands) + len(groups) != 1:
        return app
    only = copy.copy(app)
    only.registered_commands, only.registered_groups = commands, groups
    return only


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    args = sys.argv[1:] if argv is None else list(argv)
    _app_for(args)(args=args, prog_name=PROG_NAME)


if __name__ == "__main__":
    main()
