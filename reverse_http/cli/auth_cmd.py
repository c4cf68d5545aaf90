"""``reverse-http auth``: key and token tools with the Go reference's flags and defaults.

Files written here are byte-compatible with the reference's (``auth key private``,
``auth key public``, ``auth jwt token``), so keys and tokens can move between the
two implementations. Unlike the reference, private keys and tokens are written with
mode 0600. User mistakes print one ``error:`` line to stderr and exit with status 2.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer

from reverse_http import agentid
from reverse_http.auth.jwt import ROLES, issue_token
from reverse_http.auth.keys import (
    Algorithm,
    KeyFileError,
    PrivateKey,
    generate_private_key,
    load_private_key_pem,
    private_key_to_pem,
    public_key_of,
    public_key_to_pem,
)
from reverse_http.durations import parse_duration

__all__ = ["EXIT_USAGE", "auth_app", "main"]

EXIT_USAGE = 2
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
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_USAGE)


def _read_input(path: str, flag: str) -> tuple[bytes, str]:
    if path == STDIO:
        return sys.stdin.buffer.read(), "<stdin>"
    try:
        return Path(path).read_bytes(), path
    except OSError as exc:
        raise _UsageError(f"{flag} {path}: {exc.strerror or type(exc).__name__}") from None


def _load_private(path: str, flag: str = "--in") -> PrivateKey:
    data, source = _read_input(path, flag)
    try:
        return load_private_key_pem(data, source)
    except KeyFileError as exc:
        raise _UsageError(f"{flag} {exc}") from None


def _write_output(path: str, data: bytes, *, secret: bool, flag: str = "--out") -> None:
    """Write to stdout or a file; secret files get 0600 even when they already exist."""
    if path == STDIO:
        stream = sys.stdout.buffer
        stream.write(data)
        stream.flush()
        return
    mode = 0o600 if secret else 0o644
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        with os.fdopen(fd, "wb") as out:
            if secret:
                os.fchmod(out.fileno(), 0o600)
            out.write(data)
    except OSError as exc:
        raise _UsageError(f"{flag} {path}: {exc.strerror or type(exc).__name__}") from None


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
) -> None:
    """Generate a signing key in the reference's PEM format."""
    try:
        key = generate_private_key(_algorithm(algo))
        _write_output(out, private_key_to_pem(key), secret=True)
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
) -> None:
    """Write the public half of a private key, for the proxy's verifier."""
    try:
        key = _load_private(in_)
        _write_output(out, public_key_to_pem(public_key_of(key)), secret=False)
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
) -> None:
    """Mint a token; written without a trailing newline, like the reference."""
    try:
        if not agent_id:
            raise _UsageError("--agent-id is required and must not be empty")
        if (reason := agentid.problem(agent_id)) is not None:
            raise _UsageError(f"--agent-id {agentid.shown(agent_id)}: {reason}")
        if role not in ROLES:
            raise _UsageError(f"--role: {role!r} is not one of {', '.join(ROLES)}")
        lifetime = _duration(duration)
        key = _load_private(in_)
        token = issue_token(
            key,
            agent_id,
            "agent" if role == "agent" else "client",
            audience=audience or None,
            duration=lifetime,
        )
        _write_output(out, token.encode("ascii"), secret=True)
    except _UsageError as exc:
        raise _fail(str(exc)) from None


def main() -> None:
    """Entry point for ``python -m reverse_http.cli.auth_cmd``."""
    auth_app()


if __name__ == "__main__":
    main()
