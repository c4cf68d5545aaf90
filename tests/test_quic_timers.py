"""Keepalive, idle timeout, dead-peer detection and handshake timeout, on virtual time.

Two ``Connection`` objects exchange datagrams through an in-memory link that can be
cut; ``trio.testing.MockClock`` (autojump) runs minutes of protocol time instantly.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from aioquic.buffer import Buffer
from aioquic.quic.packet import pull_quic_header

from reverse_http.devcerts import CertFiles
from reverse_http.quic import Connection, ConnectionError, TransportSettings
from reverse_http.quic.protocol import TunnelQuicConnection
from reverse_http.quic.settings import client_configuration, server_configuration
from tests.quic_helpers import client_tls, server_settings

CLIENT_ADDR = ("127.0.0.1", 50000)
SERVER_ADDR = ("127.0.0.1", 4242)


class Link:
    """A lossless wire between two connections, with a switch to cut it."""

    def __init__(self, nursery: trio.Nursery, certs: CertFiles, server_t: TransportSettings):
        self.up = True
        self.nursery = nursery
        self.settings = server_settings(certs, server_t)
        self.client: Connection | None = None
        self.server: Connection | None = None
        self.sent: dict[str, list[float]] = {"c2s": [], "s2c": []}

    async def client_send(self, datagrams: list[tuple[bytes, Any]]) -> None:
        for data, _ in datagrams:
            self.sent["c2s"].append(trio.current_time())
            if not self.up:
                continue
            if self.server is None:
                self.server = self._make_server(data)
            self.server.feed(data, CLIENT_ADDR)

    async def server_send(self, datagrams: list[tuple[bytes, Any]]) -> None:
        for data, _ in datagrams:
            self.sent["s2c"].append(trio.current_time())
            if self.up and self.client is not None:
                self.client.feed(data, SERVER_ADDR)

    def _make_server(self, first: bytes) -> Connection:
        header = pull_quic_header(Buffer(data=first), host_cid_length=8)
        t = self.settings.transport
        quic = TunnelQuicConnection(
            configuration=server_configuration(self.settings),
            original_destination_connection_id=header.destination_cid,
            stream_receive_window=t.stream_receive_window,
            max_concurrent_streams=t.max_concurrent_streams,
        )
        conn = Connection(quic, t, self.server_send, CLIENT_ADDR)
        self.nursery.start_soon(conn.run)
        return conn


@asynccontextmanager
async def linked(
    certs: CertFiles,
    client_t: TransportSettings,
    server_t: TransportSettings | None = None,
    *,
    start_cut: bool = False,
) -> AsyncIterator[tuple[Link, Connection]]:
    async with trio.open_nursery() as nursery:
        link = Link(nursery, certs, server_t or client_t)
        link.up = not start_cut
        quic = TunnelQuicConnection(
            configuration=client_configuration(client_t, client_tls(certs), "localhost"),
            stream_receive_window=client_t.stream_receive_window,
            max_concurrent_streams=client_t.max_concurrent_streams,
        )
        conn = Connection(quic, client_t, link.client_send, SERVER_ADDR)
        link.client = conn
        quic.connect(SERVER_ADDR, now=trio.current_time())
        nursery.start_soon(conn.run)
        try:
            yield link, conn
        finally:
            nursery.cancel_scope.cancel()


def max_gap(times: list[float], since: float) -> float:
    ts = [since] + [t for t in times if t >= since]
    return max(b - a for a, b in itertools.pairwise(ts))


async def test_keepalive_cadence(certs: CertFiles, autojump_clock: trio.testing.MockClock) -> None:
    t = TransportSettings(keepalive_interval=10, liveness_timeout=0, idle_timeout=30)
    async with linked(certs, t) as (link, client):
        await client.wait_handshake()
        start = trio.current_time()
        await trio.sleep(300)  # virtual time
        assert not client.is_closed, client.close_info  # idle timeout (30 s) never hit
        for direction in ("c2s", "s2c"):
            assert max_gap(link.sent[direction], start) <= 10.5, direction
            # keepalive, not a flood: about one PING (or its ACK) per interval
            assert len([x for x in link.sent[direction] if x >= start]) <= 2 * 300 / 10 + 4


async def test_idle_timeout_without_keepalive(
    certs: CertFiles, autojump_clock: trio.testing.MockClock
) -> None:
    t = TransportSettings(keepalive_interval=1000, liveness_timeout=0, idle_timeout=30)
    async with linked(certs, t) as (_link, client):
        await client.wait_handshake()
        start = trio.current_time()
        info = await client.wait_closed()
        elapsed = trio.current_time() - start
    assert info.kind == "idle-timeout"
    assert 29 <= elapsed <= 31


async def test_dead_peer_detected_by_liveness_timeout(
    certs: CertFiles, autojump_clock: trio.testing.MockClock
) -> None:
    t = TransportSettings(keepalive_interval=10, liveness_timeout=5, idle_timeout=30)
    async with linked(certs, t) as (link, client):
        await client.wait_handshake()
        stream = await client.open_stream()
        await stream.send_all(b"hello")
        await trio.sleep(1)
        link.up = False
        cut_at = trio.current_time()
        with pytest.raises(trio.BrokenResourceError):
            await stream.receive_some()
        info = await client.wait_closed()
        detected = trio.current_time() - cut_at
    assert info.kind == "liveness"
    assert detected <= 5.5
    # a probe went out before giving up
    assert any(x > cut_at for x in link.sent["c2s"])


async def test_liveness_keeps_a_healthy_idle_connection(
    certs: CertFiles, autojump_clock: trio.testing.MockClock
) -> None:
    t = TransportSettings(keepalive_interval=10, liveness_timeout=5, idle_timeout=30)
    async with linked(certs, t) as (link, client):
        await client.wait_handshake()
        await trio.sleep(120)
        assert not client.is_closed
        assert link.server is not None and not link.server.is_closed


async def test_handshake_timeout(certs: CertFiles, autojump_clock: trio.testing.MockClock) -> None:
    t = TransportSettings(handshake_timeout=7)
    async with linked(certs, t, start_cut=True) as (_link, client):
        start = trio.current_time()
        with pytest.raises(ConnectionError) as exc_info:
            await client.wait_handshake()
        elapsed = trio.current_time() - start
    assert exc_info.value.info.kind == "handshake-timeout"
    assert 7 <= elapsed <= 7.5
