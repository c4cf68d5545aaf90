"""Stateless reset tokens and datagrams (sans-IO)."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from reverse_http.quic.reset import (
    MIN_RESET_SIZE,
    RESET_SIZE,
    TOKEN_SIZE,
    derive_reset_key,
    encode_reset,
    is_reset,
    reset_token,
)

KEY = derive_reset_key(b"-----BEGIN PRIVATE KEY----- test")


def test_tokens_depend_on_key_and_connection_id_only() -> None:
    cid = os.urandom(8)
    assert reset_token(KEY, cid) == reset_token(
        derive_reset_key(b"-----BEGIN PRIVATE KEY----- test"), cid
    )
    assert reset_token(KEY, cid) != reset_token(derive_reset_key(b"another key file"), cid)
    assert reset_token(KEY, cid) != reset_token(KEY, os.urandom(8))
    assert len(reset_token(KEY, cid)) == TOKEN_SIZE


@given(st.integers(0, 1500))
def test_a_reset_is_always_shorter_than_what_triggered_it(trigger: int) -> None:
    token = reset_token(KEY, b"12345678")
    reset = encode_reset(token, trigger)
    if trigger - 1 < MIN_RESET_SIZE:
        assert reset is None
        return
    assert reset is not None
    assert MIN_RESET_SIZE <= len(reset) <= min(trigger - 1, RESET_SIZE)
    assert reset[0] & 0xC0 == 0x40  # a short header with the fixed bit
    assert is_reset(reset, {token})
    assert not is_reset(reset, {reset_token(KEY, b"87654321")})


def test_long_headers_and_runts_are_never_resets() -> None:
    token = reset_token(KEY, b"12345678")
    assert not is_reset(b"\xc0" + os.urandom(40) + token, {token})
    assert not is_reset(b"\x40" + token, {token})
