"""What an agent id may be: one rule for authentication, token minting and the route store.

An agent id names an agent on the wire (the noauth token, the JWT ``agent_id`` claim,
the Proxy-Authorization user) and becomes a route store key as it is (memcached key =
agent id, as in the Go reference). memcached refuses keys longer than 250 bytes or
holding spaces or control characters, so an id it cannot store must be refused where
it enters the system, not discovered when registering its route.

The rule: 1 to :data:`MAX_LENGTH` characters, each an ASCII letter, a digit or one of
``- _ . : @``. That covers numbers (``4711``), host names, UUIDs and e-mail addresses.
ASCII only, so characters are bytes and ids compare exactly (no Unicode
normalisation, no look-alike letters). :data:`MAX_LENGTH` is well below memcached's
250-byte key limit (:data:`MAX_KEY_BYTES`), leaving room for a key prefix should one
ever be needed. A ``:`` is allowed but cannot be named by a client: Basic credentials
end the user name at the first colon (RFC 7617; the reference parses them the same way).
"""

from __future__ import annotations

import string

__all__ = [
    "ALLOWED_PUNCTUATION",
    "ALLOWED_TEXT",
    "MAX_KEY_BYTES",
    "MAX_LENGTH",
    "InvalidAgentId",
    "check",
    "is_valid",
    "problem",
    "shown",
]

MAX_LENGTH = 128
#: memcached's key limit; every store key built from a valid id must fit in it.
MAX_KEY_BYTES = 250
ALLOWED_PUNCTUATION = "-_.:@"
ALLOWED_TEXT = "ASCII letters, digits and - _ . : @"

_ALLOWED_CHARS = frozenset(string.ascii_letters + string.digits + ALLOWED_PUNCTUATION)
_SHOWN_MAX = 60


class InvalidAgentId(ValueError):
    """An agent id outside the rule; ``str()`` shows the id and what is wrong with it."""


def problem(agent_id: str) -> str | None:
    """Why ``agent_id`` breaks the rule (a phrase to follow the id), or None when it is valid."""
    if not agent_id:
        return "must not be empty"
    if len(agent_id) > MAX_LENGTH:
        return f"{len(agent_id)} characters long, at most {MAX_LENGTH} are allowed"
    for position, char in enumerate(agent_id, 1):
        if char not in _ALLOWED_CHARS:
            return f"{_describe(char)} at position {position} is not allowed (only {ALLOWED_TEXT})"
    return None


def is_valid(agent_id: str) -> bool:
    return problem(agent_id) is None


def check(agent_id: str) -> str:
    """Return ``agent_id`` unchanged, or raise :class:`InvalidAgentId` with the reason."""
    reason = problem(agent_id)
    if reason is not None:
        raise InvalidAgentId(f"invalid agent id {shown(agent_id)}: {reason}")
    return agent_id


def shown(agent_id: str) -> str:
    """The id as it may appear in a log line: escaped and shortened, whatever it holds."""
    text = ascii(agent_id)
    if len(text) > _SHOWN_MAX:
        return f"{text[:_SHOWN_MAX]}... ({len(agent_id)} characters)"
    return text


def _describe(char: str) -> str:
    if char == " ":
        return "a space"
    if ord(char) < 32 or 127 <= ord(char) < 160:
        return f"a control character ({char!a})"
    return ascii(char)
