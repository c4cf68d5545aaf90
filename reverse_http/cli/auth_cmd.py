"""``reverse-http auth``: key and token tools with the Go reference's flags and defaults.

Files written here are byte-compatible with the reference's (``auth key private``,
``auth key public``, ``auth jwt token``), so keys and tokens can move between the
two implementations. Unlike the reference, private keys and tokens are written with
mode 0600, ``auth key private`` does not replace an existing key without ``--force``
(every token signed with the old key would stop working), and each command says on
stderr what it wrote where. With ``--out -`` the key or token goes to stdout and
nothing else is printed, so ``$(reverse-http auth jwt token ... --out -)`` captures
just the token. User mistakes print one line to stderr,
``reverse-http auth <command>: <message>`` naming the flag and the file, and exit
with status 1, as the daemons' usage errors (and the Go reference's) do.
"""

from __future__ import annotations

import math
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final

import typer
from typer._click.globals import get_current_context

from reverse_http import agentid
from reverse_http.durations import parse_duration

from .options import LOG_FORMATS, LOG_LEVELS

if TYPE_CHECKING:
    # The key and token modules (cryptography, python-jose: ~50 ms) are imported by the
    # commands that use them: the daemons' command line imports this module too.
    from reverse_http.auth.keys import Algorithm, PrivateKey, PublicKey

__all__ = ["EXIT_USAGE", "LOG_FORMAT_OPTION", "LOG_LEVEL_OPTION", "auth_app", "main"]

#: Usage errors exit 1, as the daemons' and the Go reference's do.
EXIT_USAGE = 1
STDIO = "-"
DEFAULT_PRIVATE_KEY_FILE = "auth-key-private.pem"
DEFAULT_PUBLIC_KEY_FILE = "auth-key-public.pem"
DEFAULT_TOKEN_FILE = "jwt.b64"
ALGORITHMS: tuple[Algorithm, ...] = ("RS256", "ES256")

auth_app = typer.Typer(
    name="auth",
    help="Key and JWT tools.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
key_app = typer.Typer(help="Key generator.", no_args_is_help=True)
jwt_app = typer.Typer(help="JWT tools.", no_args_is_help=True)
auth_app.add_typer(key_app, name="key")
auth_app.add_typer(jwt_app, name="jwt")


class _UsageError(Exception):
    """A mistake the user can fix; reported as one line, never as a traceback."""


def _fail(message: str) -> typer.Exit:
    """One line on stderr, prefixed with the command (``reverse-http auth key private``)."""
    context = get_current_context(silent=True)
    prefix = context.command_path if context is not None else "reverse-http auth"
    typer.echo(f"{prefix}: {message}", err=True)
    return typer.Exit(EXIT_USAGE)


def _done(message: str) -> None:
    """What a command wrote where, on stderr (stdout carries only keys and tokens)."""
    typer.echo(message, err=True)


def _describe(key: PrivateKey | PublicKey) -> str:
    """``ES256 (EC P-256)`` or ``RS256 (RSA 4096 bits)``."""
    from reverse_http.auth.keys import algorithm_for_key

    algorithm = algorithm_for_key(key)
    if algorithm == "ES256":
        return "ES256 (EC P-256)"
    return f"RS256 (RSA {key.key_size} bits)"


def _read_input(path: str, flag: str) -> tuple[bytes, str]:
    if path == STDIO:
        return sys.stdin.buffer.read(), "<stdin>"
    try:
        return Path(path).read_bytes(), path
    except OSError as exc:
        raise _UsageError(f"{flag} {path}: {exc.strerror or type(exc).__name__}") from None


def _load_private(path: str, flag: str = "--in") -> PrivateKey:
    from reverse_http.auth.keys import KeyFileError, load_private_key_pem

    data, source = _read_input(path, flag)
    try:
        return load_private_key_pem(data, source)
    except KeyFileError as exc:
        raise _UsageError(f"{flag} {exc}") from None


def _write_output(
    path: str, data: bytes, *, secret: bool, replace: bool = True, flag: str = "--out"
) -> bool:
    """Write to stdout or a file; secret files get 0600 even when they already exist.

    ``replace=False`` refuses an existing file (atomically: O_EXCL). True if a file was
    written, False for stdout.
    """
    if path == STDIO:
        stream = sys.stdout.buffer
        stream.write(data)
        stream.flush()
        return False
    mode = 0o600 if secret else 0o644
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if replace else os.O_EXCL)
    try:
        fd = os.open(path, flags, mode)
        with os.fdopen(fd, "wb") as out:
            if secret:
                os.fchmod(out.fileno(), 0o600)
            out.write(data)
    except FileExistsError:
        raise _exists(flag, path) from None
    except OSError as exc:
        raise _UsageError(f"{flag} {path}: {exc.strerror or type(exc).__name__}") from None
    return True


def _exists(flag: str, path: str) -> _UsageError:
    return _UsageError(
        f"{flag} {path}: file exists; replacing a signing key invalidates every token "
        "signed with it (use --force to replace it anyway)"
    )


def _algorithm(value: str) -> Algorithm:
    for algorithm in ALGORITHMS:
        if value.upper() == algorithm:
            return algorithm
    raise _UsageError(f"--algo: {value!r} is not one of {', '.join(ALGORITHMS)}")


def _duration(value: str) -> timedelta:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise _UsageError(f"--duration: {exc}") from None
    if seconds <= 0:
        raise _UsageError(f"--duration: {value!r} must be positive")
    return timedelta(seconds=seconds)


_IN_HELP = "Path to the private key file. Use '-' for stdin."


def _log_option(flag: str, choices: tuple[str, ...]) -> Any:
    """``--log.level`` / ``--log.format``, taken (and checked) as the Go reference takes them
    on every command; these commands write no log, so the value is not used."""

    def check(value: str) -> str:
        if value not in choices:
            raise _fail(f"--{flag}: {value!r} is not one of {', '.join(choices)}")
        return value

    return typer.Option(
        f"--{flag}",
        metavar="|".join(choices),
        callback=check,
        expose_value=False,
        help="Accepted as on every command; these commands do not log.",
    )


LOG_LEVEL_OPTION: Final[Any] = _log_option("log.level", LOG_LEVELS)
LOG_FORMAT_OPTION: Final[Any] = _log_option("log.format", LOG_FORMATS)


@key_app.command("private", help="Generate private key.")
def key_private(
    algo: Annotated[
        str, typer.Option("--algo", metavar="RS256|ES256", help="Private key type.")
    ] = "ES256",
    out: Annotated[
        str,
        typer.Option(
            "--out",
            "-o",
            metavar="FILE",
            help="Path to the generated private key file. Use '-' for stdout.",
        ),
    ] = DEFAULT_PRIVATE_KEY_FILE,
    force: Annotated[
        bool, typer.Option("--force", "-f", help="Replace the --out file if it exists.")
    ] = False,
    log_level: Annotated[str, LOG_LEVEL_OPTION] = "info",
    log_format: Annotated[str, LOG_FORMAT_OPTION] = "text",
) -> None:
    """Generate a signing key in the reference's PEM format."""
    from reverse_http.auth.keys import generate_private_key, private_key_to_pem

    try:
        algorithm = _algorithm(algo)
        if not force and out != STDIO and os.path.lexists(out):
            raise _exists("--out", out)  # before the (slow, for RSA) key generation
        key = generate_private_key(algorithm)
        if _write_output(out, private_key_to_pem(key), secret=True, replace=force):
            _done(f"wrote {_describe(key)} private key to {out} (mode 0600)")
    except _UsageError as exc:
        raise _fail(str(exc)) from None


@key_app.command("public", help="Generate public key.")
def key_public(
    in_: Annotated[
        str, typer.Option("--in", "-i", metavar="FILE", help=_IN_HELP)
    ] = DEFAULT_PRIVATE_KEY_FILE,
    out: Annotated[
        str,
        typer.Option(
            "--out",
            "-o",
            metavar="FILE",
            help="Path to the generated public key file. Use '-' for stdout.",
        ),
    ] = DEFAULT_PUBLIC_KEY_FILE,
    log_level: Annotated[str, LOG_LEVEL_OPTION] = "info",
    log_format: Annotated[str, LOG_FORMAT_OPTION] = "text",
) -> None:
    """Write the public half of a private key, for the proxy's verifier."""
    from reverse_http.auth.keys import public_key_of, public_key_to_pem

    try:
        key = _load_private(in_)
        public = public_key_of(key)
        if _write_output(out, public_key_to_pem(public), secret=False):
            source = "<stdin>" if in_ == STDIO else in_
            _done(f"wrote {_describe(public)} public key of {source} to {out}")
    except _UsageError as exc:
        raise _fail(str(exc)) from None


@jwt_app.command("token", help="Generate jwt token.")
def jwt_token(
    agent_id: Annotated[
        str | None,
        typer.Option(
            "--agent-id",
            metavar="ID",
            help=f"Agent ID (required): 1-{agentid.MAX_LENGTH} {agentid.ALLOWED_TEXT}.",
        ),
    ] = None,
    role: Annotated[str, typer.Option("--role", metavar="client|agent", help="Role.")] = "client",
    audience: Annotated[str | None, typer.Option("--audience", help="Audience.")] = None,
    duration: Annotated[
        str, typer.Option("--duration", metavar="DURATION", help="Token duration.")
    ] = "24h",
    in_: Annotated[
        str, typer.Option("--in", "-i", metavar="FILE", help=_IN_HELP)
    ] = DEFAULT_PRIVATE_KEY_FILE,
    out: Annotated[
        str,
        typer.Option(
            "--out",
            "-o",
            metavar="FILE",
            help="Path to the generated jwt token. Use '-' for stdout.",
        ),
    ] = DEFAULT_TOKEN_FILE,
    log_level: Annotated[str, LOG_LEVEL_OPTION] = "info",
    log_format: Annotated[str, LOG_FORMAT_OPTION] = "text",
) -> None:
    """Mint a token; written without a trailing newline, like the reference."""
    from reverse_http.auth.jwt import ROLES, issue_token
    from reverse_http.auth.keys import algorithm_for_key

    try:
        if not agent_id:
            raise _UsageError("--agent-id is required and must not be empty")
        if (reason := agentid.problem(agent_id)) is not None:
            raise _UsageError(f"--agent-id {agentid.shown(agent_id)}: {reason}")
        if role not in ROLES:
            raise _UsageError(f"--role: {role!r} is not one of {', '.join(ROLES)}")
        lifetime = _duration(duration)
        key = _load_private(in_)
        now = datetime.now(UTC)
        token = issue_token(
            key,
            agent_id,
            "agent" if role == "agent" else "client",
            audience=audience or None,
            duration=lifetime,
            now=now,
        )
        if _write_output(out, token.encode("ascii"), secret=True):
            expires = datetime.fromtimestamp(math.floor((now + lifetime).timestamp()), UTC)
            for_audience = f", audience {audience}" if audience else ""
            _done(
                f"wrote {role} token for agent {agent_id} ({algorithm_for_key(key)}"
                f"{for_audience}, expires {expires:%Y-%m-%dT%H:%M:%SZ}) to {out} (mode 0600)"
            )
    except _UsageError as exc:
        raise _fail(str(exc)) from None


def main() -> None:
    """Entry point for ``python -m reverse_http.cli.auth_cmd``."""
    auth_app()


if __name__ == "__main__":
    main()
