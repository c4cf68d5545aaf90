"""``Proxy-Authorization: Basic`` parsing (RFC 7617) for the CONNECT front end.

The user is the agent id to reach and the password is ``noauth`` or a client JWT.
Parsing is strict (padded standard base64, UTF-8) so malformed input is refused
with a reason instead of being silently reinterpreted.
"""

from __future__ import annotations

import binascii

__all__ = ["AuthError", "parse_proxy_authorization"]

#: Registered HTTP auth schemes (IANA): the only first words an answer may repeat.
#: Anything else may be a bare token sent without a scheme, i.e. the secret itself.
_KNOWN_SCHEMES = frozenset(
    {"bearer", "concealed", "digest", "dpop", "gnap", "hoba", "mutual", "negotiate"}
    | {"ntlm", "oauth", "privatetoken", "scram-sha-1", "scram-sha-256", "vapid"}
)


class AuthError(Exception):
    """Authentication failed; ``str()`` is a short reason that never contains a secret.

    Defined here, not in ``jwt``, so noauth deployments need not import python-jose.
    """


def parse_proxy_authorization(header_value: str | bytes | None) -> tuple[str, str]:
    """Return ``(user, password)`` from a ``Basic`` credentials header value.

    The scheme is matched case-insensitively; the credentials are split on the first
    colon, so passwords (JWTs) may contain colons. An empty user is returned as is:
    the caller refuses it with its own message. Raises ``AuthError`` naming the
    problem; the credentials themselves never appear in the message.
    """
    if header_value is None:
        raise AuthError("missing Proxy-Authorization")
    if isinstance(header_value, bytes):
        try:
            header_value = header_value.decode("ascii")
        except UnicodeDecodeError:
            raise AuthError("malformed Proxy-Authorization") from None
    value = header_value.strip(" \t")
    if not value:
        raise AuthError("missing Proxy-Authorization")
    scheme, _, credentials = value.partition(" ")
    if scheme.lower() != "basic":
        shown = scheme if scheme.lower() in _KNOWN_SCHEMES else "unrecognized"
        raise AuthError(f"unsupported auth scheme: {shown}")
    credentials = credentials.strip(" \t")
    if not credentials:
        raise AuthError("missing Basic credentials")
    try:
        if len(credentials) % 4:
            raise ValueError("not a whole number of base64 quanta")
        decoded = binascii.a2b_base64(credentials.encode("ascii"), strict_mode=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise AuthError("malformed Basic credentials: invalid base64") from None
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        raise AuthError("malformed Basic credentials: not UTF-8") from None
    user, sep, password = text.partition(":")
    if not sep:
        raise AuthError("malformed Basic credentials: missing ':'")
    return user, password
