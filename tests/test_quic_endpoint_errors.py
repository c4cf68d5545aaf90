"""The UDP endpoint's send errors: EMSGSIZE reported per datagram for path MTU
discovery (a batch falls back to single sends), other errors counted and logged at
most once per interval."""

from __future__ import annotations

import errno
import logging
import os
import socket
from typing import Any

import pytest

from reverse_http.quic.endpoint import SEND_ERROR_LOG_INTERVAL, UdpEndpoint

PEER = ("192.0.2.1", 4242)


class PathSocket:
    """A UDP socket whose path carries ``mtu`` bytes (as the kernel with DF set)."""

    family = socket.AF_INET

    def __init__(self, mtu: int, error: int = errno.EMSGSIZE) -> None:
        self.mtu = mtu
        self.error = error
        self.delivered: list[int] = []

    def setblocking(self, _flag: bool) -> None:
        pass

    def _out(self, size: int) -> None:
        if size > self.mtu:
            raise OSError(self.error, os.strerror(self.error))
        self.delivered.append(size)

    def sendto(self, data: bytes, _addr: Any) -> int:
        self._out(len(data))
        return len(data)

    def sendmsg(self, buffers: list[bytes], cmsg: list[Any], _flags: int, _addr: Any) -> int:
        segment = int.from_bytes(cmsg[0][2], "little")
        data = b"".join(buffers)
        if segment > self.mtu:
            raise OSError(self.error, os.strerror(self.error))
        for k in range(0, len(data), segment):
            self.delivered.append(len(data[k : k + segment]))
        return len(data)


def test_a_batch_with_too_big_segments_is_sent_one_by_one_and_each_refusal_reported() -> None:
    sock = PathSocket(mtu=1252)
    endpoint = UdpEndpoint(sock, gso=True)  # type: ignore[arg-type]
    datagrams = [(b"x" * 1452, PEER)] * 3 + [(b"y" * 600, PEER)]
    refused = endpoint.send_nowait(datagrams)
    assert refused == [1452, 1452, 1452]
    assert sock.delivered == [600]  # the small one still went
    assert endpoint.too_big_errors == 3
    # what fits goes out batched as before
    assert endpoint.send_nowait([(b"z" * 1200, PEER)] * 4) == []
    assert sock.delivered[1:] == [1200] * 4


def test_other_send_errors_are_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr("reverse_http.quic.endpoint.time.monotonic", lambda: now[0])
    sock = PathSocket(mtu=0, error=errno.ENETUNREACH)
    endpoint = UdpEndpoint(sock, gso=False)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="reverse_http.quic.endpoint"):
        for _ in range(100):
            assert endpoint.send_nowait([(b"x" * 100, PEER)]) == []
        now[0] += SEND_ERROR_LOG_INTERVAL
        endpoint.send_nowait([(b"x" * 100, PEER)])
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "unreachable" in lines[0].lower()
    assert "99 more since the last report" in lines[1]
    assert endpoint.send_errors == 101
    assert endpoint.too_big_errors == 0
