"""The agent authentication message: 4-byte big-endian length, then the payload.

The agent sends its token (noauth: the agent id) on the first stream; the proxy
answers ``authenticated`` in the same framing and closes its side.
"""

from __future__ import annotations

import struct

import trio

MAX_MESSAGE = 1024 * 1024
AUTHENTICATED = b"authenticated"
#: Both sides give the exchange this long, as the reference does.
AUTH_TIMEOUT = 3.0


class FramingError(Exception):
    """The peer sent something that is not one well-formed auth message."""


def encode_message(payload: bytes) -> bytes:
    if len(payload) > MAX_MESSAGE:
        raise FramingError(f"message of {len(payload)} bytes exceeds {MAX_MESSAGE}")
    return struct.pack(">I", len(payload)) + payload


async def read_message(stream: trio.abc.ReceiveStream, max_length: int = MAX_MESSAGE) -> bytes:
    """Read exactly one message; never reads past it."""
    header = await _read_exactly(stream, 4)
    (length,) = struct.unpack(">I", header)
    if length > max_length:
        raise FramingError(f"message length {length} exceeds the {max_length}-byte limit")
    return await _read_exactly(stream, length)


async def _read_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.receive_some(n - len(buf))
        if not chunk:
            raise FramingError(f"stream ended after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)
