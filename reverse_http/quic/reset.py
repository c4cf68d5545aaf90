"""Stateless reset (RFC 9000 section 10.3), sans-IO.

A proxy that crashed and came back, or the other proxy behind a UDP load balancer,
holds no state for an agent's connection. Without a reset the agent only finds out
after its liveness timeout; with one it reconnects on its next packet.

Tokens are an HMAC of the connection ID under a key derived from the proxy's TLS
private key, so a restarted proxy, and every proxy of a fleet that shares the key
file, can reset connections it never saw. The key cannot be recovered from tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

TOKEN_SIZE = 16
#: The smallest datagram a reset can be (RFC 9000: 5 unpredictable bytes and a token).
MIN_RESET_SIZE = 21
#: Resets for datagrams longer than this are this long; shorter ones get one byte less.
RESET_SIZE = 43

_INFO = b"reverse-http stateless reset v1"


def derive_reset_key(secret_material: bytes) -> bytes:
    """A reset key from secret bytes (the TLS private key file's contents)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(secret_material)


def reset_token(key: bytes, cid: bytes) -> bytes:
    return hmac.new(key, cid, hashlib.sha256).digest()[:TOKEN_SIZE]


def encode_reset(token: bytes, trigger_size: int) -> bytes | None:
    """A reset answering a datagram of ``trigger_size`` bytes, always shorter than it
    (two endpoints resetting each other's resets run out of bytes); None if too short."""
    size = min(trigger_size - 1, RESET_SIZE)
    if size < MIN_RESET_SIZE:
        return None
    head = bytearray(os.urandom(size - TOKEN_SIZE))
    head[0] = 0x40 | (head[0] & 0x3F)  # looks like a short-header packet
    return bytes(head) + token


def is_reset(datagram: bytes, tokens: set[bytes]) -> bool:
    """Whether a datagram that did not decrypt ends in one of the peer's tokens."""
    return (
        len(datagram) >= MIN_RESET_SIZE
        and not datagram[0] & 0x80
        and datagram[-TOKEN_SIZE:] in tokens
    )
