"""``Proxy-Authorization: Basic base64(user:password)`` as clients send it."""

from __future__ import annotations

import base64
import binascii


class AuthError(Exception):
    """Credentials refused; the message is specific and never contains the secret."""


def parse_proxy_authorization(value: str) -> tuple[str, str]:
    """(user, password) from a Basic credential; raises AuthError."""
    scheme, _, encoded = value.strip().partition(" ")
    if scheme.lower() != "basic":
        raise AuthError(f"unsupported authorization scheme {scheme[:20]!r}: expected Basic")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise AuthError("malformed Basic credentials") from None
    user, sep, password = decoded.partition(":")
    if not sep:
        raise AuthError("malformed Basic credentials: no ':' between user and password")
    return user, password
