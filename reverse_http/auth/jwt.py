"""JWT issuing and verification, wire-compatible with the Go reference.

Semantics follow golang-jwt v5 as used by the reference: the signature, ``exp`` and
``nbf`` (5 s leeway) are checked when present, ``aud`` only when an audience is
configured (then it is required), ``iat``/``sub``/``jti`` are not checked. On top of
that the algorithm is pinned to the one matching the verification key, and ``iss``,
when present, must be ``reverse-http`` (the reference always writes that value).

Token parsing is done here rather than by ``jose.jwt.decode`` so that every rejection
gets its own short reason; the signature itself is checked by python-jose.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeAlias

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwk
from jose import jwt as jose_jwt
from jose.exceptions import JOSEError

from reverse_http import agentid
from reverse_http.auth.basic import AuthError
from reverse_http.auth.keys import (
    Algorithm,
    PrivateKey,
    PublicKey,
    algorithm_for_key,
    load_private_key_pem,
    load_public_key_pem,
    public_key_of,
)

__all__ = [
    "ISSUER",
    "LEEWAY_SECONDS",
    "AuthError",
    "Claims",
    "EmptyAgentId",
    "Role",
    "TokenVerifier",
    "inspect_token",
    "issue_token",
]

Role: TypeAlias = Literal["agent", "client"]
ROLES: tuple[Role, ...] = ("agent", "client")
ISSUER = "reverse-http"
LEEWAY_SECONDS = 5.0
DEFAULT_DURATION = timedelta(hours=24)

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
#: Stripped from both ends of a token: a token file written by ``echo`` ends in a newline,
#: and the reference (golang-jwt, whose base64 decoder skips CR and LF) accepts that.
_SURROUNDING_WHITESPACE = " \t\r\n"
_PLAIN_ALG = re.compile(r"[A-Za-z0-9_+-]{1,16}")


class EmptyAgentId(AuthError):
    """A validly signed token whose ``agent_id`` is missing, null or empty.

    Its own type so that the proxy can close such an agent connection with the
    reference's code for an empty agent id (400) rather than 500.
    """


@dataclass(frozen=True)
class Claims:
    """The verified claims of a reverse-http token."""

    agent_id: str
    role: Role
    issuer: str | None = None
    subject: str | None = None
    audience: tuple[str, ...] = ()
    expires_at: float | None = None
    not_before: float | None = None
    issued_at: float | None = None
    token_id: str | None = None


def _to_private_key(key: PrivateKey | bytes | str) -> PrivateKey:
    if isinstance(key, bytes | str):
        return load_private_key_pem(key)
    return key


def issue_token(
    private_key: PrivateKey | bytes | str,
    agent_id: str,
    role: Role,
    audience: str | None = None,
    duration: timedelta = DEFAULT_DURATION,
    now: datetime | None = None,
) -> str:
    """Mint a token with the same claims, order and header as the reference's signer.

    ``private_key`` is a key object or PEM data; ``agent_id`` must pass
    :mod:`reverse_http.agentid`'s rule, or no proxy would accept the token. Times are
    whole seconds, as golang-jwt truncates them; ``aud`` is written as a one-element
    array, as golang-jwt does.
    """
    if not isinstance(agent_id, str) or not agent_id:
        raise ValueError("agent_id must be a non-empty string")
    reason = agentid.problem(agent_id)
    if reason is not None:
        raise ValueError(f"agent_id {agentid.shown(agent_id)}: {reason}")
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if duration <= timedelta(0):
        raise ValueError("token duration must be positive")
    key = _to_private_key(private_key)
    algorithm = algorithm_for_key(key)
    issued = now if now is not None else datetime.now(UTC)
    if issued.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    iat = math.floor(issued.timestamp())
    exp = math.floor((issued + duration).timestamp())
    claims: dict[str, Any] = {
        "agent_id": agent_id,
        "role": role,
        "iss": ISSUER,
        "sub": agent_id,
    }
    if audience:
        claims["aud"] = [audience]
    claims.update({"exp": exp, "nbf": iat, "iat": iat, "jti": str(uuid.uuid4())})
    token = jose_jwt.encode(claims, key, algorithm=algorithm)
    if not isinstance(token, str):
        raise TypeError("python-jose returned a non-string token")
    return token


def _shown_alg(alg: object) -> str:
    """The header is attacker-controlled: only plain algorithm names reach the logs."""
    if alg is None:
        return "missing"
    if isinstance(alg, str) and _PLAIN_ALG.fullmatch(alg):
        return alg
    return "unrecognized"


def _b64url_decode(segment: str) -> bytes:
    if not _B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise AuthError("malformed token")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise AuthError("malformed token") from None


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise AuthError(f"malformed token {what}") from None
    if not isinstance(value, dict):
        raise AuthError(f"malformed token {what}")
    return value


def _optional_str(payload: dict[str, Any], name: str) -> str | None:
    value = payload.get(name)
    if value is None or isinstance(value, str):
        return value
    raise AuthError(f"malformed claim: {name}")


def _optional_time(payload: dict[str, Any], name: str) -> float | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthError(f"malformed claim: {name}")
    try:
        seconds = float(value)
    except OverflowError:
        raise AuthError(f"malformed claim: {name}") from None
    if not math.isfinite(seconds):
        raise AuthError(f"malformed claim: {name}")
    return seconds


def _audience(payload: dict[str, Any]) -> tuple[str, ...]:
    value = payload.get("aud")
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise AuthError("malformed claim: aud")


def inspect_token(token: str) -> Claims:
    """The claims of ``token`` read without checking its signature or times.

    For the agent's own token (``--check``, reload logs): whether it is a well-formed
    reverse-http JWT and when it expires. Only the proxy's verification decides anything.
    """
    parts = token.strip(_SURROUNDING_WHITESPACE).split(".")
    if len(parts) != 3:
        raise AuthError("malformed token: not three dot-separated parts")
    _json_object(_b64url_decode(parts[0]), "header")
    payload = _json_object(_b64url_decode(parts[1]), "payload")
    role = payload.get("role")
    if role not in ROLES:
        raise AuthError(f"no reverse-http role claim (want one of {', '.join(ROLES)})")
    agent_id = payload.get("agent_id")
    return Claims(
        agent_id=agent_id if isinstance(agent_id, str) else "",
        role=role,
        issuer=_optional_str(payload, "iss"),
        subject=_optional_str(payload, "sub"),
        audience=_audience(payload),
        expires_at=_optional_time(payload, "exp"),
        not_before=_optional_time(payload, "nbf"),
        issued_at=_optional_time(payload, "iat"),
    )


class TokenVerifier:
    """Verifies reverse-http tokens against one public key and optional audience."""

    def __init__(
        self,
        public_key: PublicKey | PrivateKey | bytes | str,
        audience: str | None = None,
        *,
        leeway: float = LEEWAY_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        key: PublicKey
        if isinstance(public_key, bytes | str):
            key = load_public_key_pem(public_key)
        elif isinstance(public_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            key = public_key_of(public_key)
        else:
            key = public_key
        self._algorithm: Algorithm = algorithm_for_key(key)
        self._jwk = jwk.construct(key, self._algorithm)
        self._audience = audience or None
        self._leeway = leeway
        self._clock = clock

    @property
    def algorithm(self) -> Algorithm:
        """The only JWS ``alg`` accepted: the one that matches the key."""
        return self._algorithm

    def verify(self, token: str, role: Role) -> Claims:
        """Return the claims of a valid token for ``role`` or raise ``AuthError``.

        Surrounding spaces, tabs, CRs and LFs are ignored (see ``_SURROUNDING_WHITESPACE``).
        """
        if not isinstance(token, str):
            raise AuthError("empty token")
        token = token.strip(_SURROUNDING_WHITESPACE)
        if not token:
            raise AuthError("empty token")
        parts = token.split(".")
        if len(parts) != 3:
            raise AuthError("malformed token")
        header_b64, payload_b64, signature_b64 = parts
        header = _json_object(_b64url_decode(header_b64), "header")
        alg = header.get("alg")
        if alg != self._algorithm:
            raise AuthError(f"algorithm not allowed: {_shown_alg(alg)}")
        signature = _b64url_decode(signature_b64)
        signing_input = f"{header_b64}.{payload_b64}".encode("ascii")
        try:
            valid = bool(self._jwk.verify(signing_input, signature))
        except (JOSEError, ValueError, TypeError):
            valid = False
        if not valid:
            raise AuthError("invalid signature")
        payload = _json_object(_b64url_decode(payload_b64), "payload")
        return self._check_claims(payload, role)

    def verify_client(self, token: str, username: str) -> Claims:
        """Verify a CONNECT password: a ``client`` token whose agent_id is the username."""
        claims = self.verify(token, "client")
        if claims.agent_id != username:
            raise AuthError("agent_id does not match username")
        return claims

    def _check_claims(self, payload: dict[str, Any], role: Role) -> Claims:
        now = self._clock()
        expires_at = _optional_time(payload, "exp")
        not_before = _optional_time(payload, "nbf")
        issued_at = _optional_time(payload, "iat")
        if expires_at is not None and now >= expires_at + self._leeway:
            raise AuthError("token expired")
        if not_before is not None and now < not_before - self._leeway:
            raise AuthError("token not yet valid")
        audience = _audience(payload)
        if self._audience is not None:
            if not audience:
                raise AuthError("missing audience")
            if self._audience not in audience:
                raise AuthError("invalid audience")
        issuer = _optional_str(payload, "iss")
        if issuer is not None and issuer != ISSUER:
            raise AuthError("invalid issuer")
        token_role = payload.get("role")
        if token_role != role:
            raise AuthError(f"wrong role: expected {role}")
        # role before agent_id, and a missing/null/empty id apart from a non-string one,
        # as the reference decides: wrong role -> 500, no id -> 400, malformed -> 500
        agent_id = payload.get("agent_id")
        if agent_id is None or agent_id == "":
            raise EmptyAgentId("missing or empty agent_id")
        if not isinstance(agent_id, str):
            raise AuthError("missing or empty agent_id")
        return Claims(
            agent_id=agent_id,
            role=role,
            issuer=issuer,
            subject=_optional_str(payload, "sub"),
            audience=audience,
            expires_at=expires_at,
            not_before=not_before,
            issued_at=issued_at,
            token_id=_optional_str(payload, "jti"),
        )
