"""Key files, JWTs and Basic credentials.

Names are resolved lazily so that importing ``reverse_http.auth.basic`` (noauth mode)
does not pull in python-jose and cryptography.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reverse_http.auth.basic import AuthError, parse_proxy_authorization
    from reverse_http.auth.jwt import Claims, Role, TokenVerifier, issue_token
    from reverse_http.auth.keys import (
        Algorithm,
        KeyFileError,
        PrivateKey,
        PublicKey,
        algorithm_for_key,
        generate_private_key,
        load_private_key,
        load_private_key_pem,
        load_public_key,
        load_public_key_pem,
        private_key_to_pem,
        public_key_of,
        public_key_to_pem,
    )

_EXPORTS: dict[str, str] = {
    "AuthError": "basic",
    "parse_proxy_authorization": "basic",
    "Claims": "jwt",
    "Role": "jwt",
    "TokenVerifier": "jwt",
    "issue_token": "jwt",
    "Algorithm": "keys",
    "KeyFileError": "keys",
    "PrivateKey": "keys",
    "PublicKey": "keys",
    "algorithm_for_key": "keys",
    "generate_private_key": "keys",
    "load_private_key": "keys",
    "load_private_key_pem": "keys",
    "load_public_key": "keys",
    "load_public_key_pem": "keys",
    "private_key_to_pem": "keys",
    "public_key_of": "keys",
    "public_key_to_pem": "keys",
}

__all__ = [
    "Algorithm",
    "AuthError",
    "Claims",
    "KeyFileError",
    "PrivateKey",
    "PublicKey",
    "Role",
    "TokenVerifier",
    "algorithm_for_key",
    "generate_private_key",
    "issue_token",
    "load_private_key",
    "load_private_key_pem",
    "load_public_key",
    "load_public_key_pem",
    "parse_proxy_authorization",
    "private_key_to_pem",
    "public_key_of",
    "public_key_to_pem",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
