"""The answer to a CONNECT: the agents' plain 200s skip h11 and read exactly as h11
reads them; anything else still goes through h11."""

from __future__ import annotations

from collections.abc import Sequence

import h11
import pytest
import trio

from reverse_http.wire import http
from reverse_http.wire.http import HttpError, ResponseHead, read_response_head, response_bytes
from tests.test_wire_connect_fastpath import ChunkStream


class H11Used(Exception):
    pass


def _refuse(*_args: object, **_kwargs: object) -> h11.Connection:
    raise H11Used


async def _read(chunks: Sequence[bytes]) -> tuple[object, ...]:
    try:
        return ("ok", await read_response_head(ChunkStream(chunks), "a:1"))
    except HttpError as exc:
        return ("error", exc.status, exc.detail)


def _both(chunks: Sequence[bytes], monkeypatch: pytest.MonkeyPatch) -> tuple[object, object]:
    """(with the fast path, h11 alone)"""
    fast = trio.run(_read, chunks)
    with monkeypatch.context() as m:
        m.setattr(http, "_PLAIN_200S", ())
        slow = trio.run(_read, chunks)
    return fast, slow


PLAIN = response_bytes(200)


@pytest.mark.parametrize(
    "chunks",
    [
        [PLAIN],
        [PLAIN + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"],
        [b"HTTP/1.1 200 OK\r\n\r\n\x16\x03"],
        [PLAIN[:5], PLAIN[5:] + b"rest"],  # split: h11 on both sides
        [b"HTTP/1.1 200 Connection established\r\nX: y\r\n\r\nrest"],
        [b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\n\r\ndial!"],
        [b"HTTP/1.0 200 OK\r\n\r\n"],
        [b"SSH-2.0-OpenSSH\r\n"],
        [],
    ],
)
def test_same_answer_as_h11(chunks: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    fast, slow = _both(chunks, monkeypatch)
    assert fast == slow


@pytest.mark.parametrize(
    ("first", "reason"),
    [(PLAIN, "Connection established"), (b"HTTP/1.1 200 OK\r\n\r\n", "OK")],
)
async def test_plain_200_skips_h11(
    first: bytes, reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(h11, "Connection", _refuse)
    head = await read_response_head(ChunkStream([first + b"tunnel bytes"]), "a:1")
    assert head == ResponseHead(200, reason, b"tunnel bytes")


async def test_a_200_with_headers_needs_h11(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(h11, "Connection", _refuse)
    with pytest.raises(H11Used):
        await read_response_head(ChunkStream([b"HTTP/1.1 200 OK\r\nX: y\r\n\r\n"]), "a:1")
