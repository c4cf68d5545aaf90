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


class ConnectedPathSocket(PathSocket):
    """A connected socket after a router's ICMP "too big" for an earlier datagram: the
    kernel reports it as EMSGSIZE on the next send, whatever its size, once."""

    def __init__(self, path_mtu: int) -> None:
        super().__init__(mtu=65535)
        self.pending_icmp = True
        self.path_mtu = path_mtu

    def send(self, data: bytes) -> int:
        if self.pending_icmp:
            self.pending_icmp = False
            raise OSError(errno.EMSGSIZE, os.strerror(errno.EMSGSIZE))
        self.delivered.append(len(data))
        return len(data)

    def getsockopt(self, level: int, name: int) -> int:
        assert (level, name) == (socket.IPPROTO_IP, 14)  # IP_MTU
        return self.path_mtu


def test_a_delayed_icmp_report_blames_the_path_mtu_not_the_small_datagram() -> None:
    sock = ConnectedPathSocket(path_mtu=1300)
    endpoint = UdpEndpoint(sock, connected_peer=PEER, gso=False)  # type: ignore[arg-type]
    refused = endpoint.send_nowait([(b"a" * 40, PEER)])  # an ACK, long after a big probe
    assert refused == [1300 - 28 + 1]  # sizes above the path's limit are too big
    assert sock.delivered == [40]  # and the ACK itself still went, on a second try


class FullBuffer(PathSocket):
    """Refuses batches whose segment exceeds the path; single sends find the buffer full."""

    def sendto(self, data: bytes, _addr: Any) -> int:
        self._out(len(data))
        raise BlockingIOError


def test_a_split_batch_that_meets_a_full_buffer_keeps_the_rest_in_the_backlog() -> None:
    sock = FullBuffer(mtu=1300)
    endpoint = UdpEndpoint(sock, gso=True)  # type: ignore[arg-type]
    # one GSO batch (segment 1400, a shorter last one): refused as too big, split; the
    # 1400s are refused one by one, the 1000 meets a full buffer and must wait, not vanish
    refused = endpoint.send_nowait([(b"z" * 1400, PEER)] * 2 + [(b"w" * 1000, PEER)])
    assert refused == [1400, 1400]
    assert [(len(p), seg) for p, _, seg in endpoint._backlog] == [(1000, 1400)]


class NoGsoFillingBuffer(PathSocket):
    """A kernel without GSO (EIO for UDP_SEGMENT) whose buffer takes ``room`` singles."""

    def __init__(self, room: int) -> None:
        super().__init__(mtu=1500, error=errno.EIO)
        self.room = room

    def sendmsg(self, buffers: list[bytes], cmsg: list[Any], _flags: int, _addr: Any) -> int:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    def sendto(self, data: bytes, _addr: Any) -> int:
        if self.room == 0:
            raise BlockingIOError
        self.room -= 1
        self.delivered.append(data[0])
        return len(data)


def test_a_batch_without_gso_that_meets_a_full_buffer_keeps_the_refused_datagram() -> None:
    sock = NoGsoFillingBuffer(room=2)
    endpoint = UdpEndpoint(sock, gso=True)  # type: ignore[arg-type]
    datagrams = [(bytes([n]) * 1200, PEER) for n in range(5)]
    endpoint.send_nowait(datagrams)
    assert sock.delivered == [0, 1]
    assert not endpoint._gso
    # the one the full buffer refused (2) waits in the backlog with those after it
    waiting = [p for p, _, _ in endpoint._backlog]
    assert [p[0] for p in waiting] == [2]
    assert waiting[0] == bytes([2]) * 1200 + bytes([3]) * 1200 + bytes([4]) * 1200
