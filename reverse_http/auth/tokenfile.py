"""The agent's ``file:`` token: read at start, and again before every connection attempt
and on SIGHUP, so that a token renewed on disk (expiry, key rotation) is used without a
restart.

Reading never logs or shows the token itself.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["TokenFile", "TokenFileError", "describe_token", "read_token_file"]

log = logging.getLogger(__name__)


class TokenFileError(ValueError):
    """The token file cannot be used; the message names the file, never the token."""


def _q(path: Path | str) -> str:
    return json.dumps(str(path), ensure_ascii=False)


def read_token_file(path: Path) -> str:
    """The token in ``path``, surrounding whitespace removed; raises TokenFileError."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise TokenFileError(f"token file {_q(path)} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise TokenFileError(f"cannot read token file {_q(path)}: {reason}") from None
    if not token:
        raise TokenFileError(f"token file {_q(path)} is empty")
    return token


def describe_token(token: str, now: datetime | None = None) -> str:
    """``agent id "a1", expires 2026-12-04T06:00:00Z (in 23h59m)``; raises
    TokenFileError for a token that is not a well-formed reverse-http JWT."""
    from .basic import AuthError
    from .jwt import inspect_token

    try:
        claims = inspect_token(token)
    except AuthError as exc:
        raise TokenFileError(str(exc)) from None
    who = f"{claims.role} id {_q(claims.agent_id)}" if claims.agent_id else "no agent_id"
    if claims.expires_at is None:
        return f"{who}, never expires"
    expires = datetime.fromtimestamp(claims.expires_at, UTC)
    left = expires - (now or datetime.now(UTC))
    when = expires.strftime("%Y-%m-%dT%H:%M:%SZ")
    if left.total_seconds() <= 0:
        return f"{who}, EXPIRED at {when}"
    minutes = int(left.total_seconds() // 60)
    return f"{who}, expires {when} (in {minutes // 60}h{minutes % 60:02d}m)"


class TokenFile:
    """The current token of a ``file:`` source; a :class:`~reverse_http.daemon.Reloadable`.

    A file that cannot be read (being rewritten, removed) keeps the last good token in
    use; each new problem is logged once.
    """

    def __init__(self, path: Path, token: str) -> None:
        self.path = path
        self.name = f"token file {path}"
        self.token = token
        self.reloads = 0
        self._failed: str | None = None

    def reload(self, *, force: bool = False) -> bool:
        """Read the file again; True when it holds a new token (now in use)."""
        try:
            token = read_token_file(self.path)
        except TokenFileError as exc:
            if str(exc) != self._failed or force:
                log.warning("%s; keeping the token read before", exc)
                self._failed = str(exc)
            return False
        self._failed = None
        if token == self.token:
            if force:
                log.info("%s re-read: unchanged", self.name)
            return False
        self.token = token
        self.reloads += 1
        try:
            about = describe_token(token)
        except ValueError as exc:
            about = f"not a well-formed JWT ({exc})"
        log.info("%s re-read: new token in use (%s)", self.name, about)
        return True
