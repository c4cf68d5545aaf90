"""Two ``Connection`` objects wired in memory, with no sockets: an in-memory link
that can be cut, each direction drained by its own task. With
``trio.testing.MockClock`` (autojump) minutes of protocol time run instantly."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from aioquic.buffer import Buffer
from aioquic.quic.packet import pull_quic_header

from reverse_http.devcerts import CertFiles
from reverse_http.quic import Connection, TransportSettings
from reverse_http.quic.driver import Driver
from reverse_http.quic.protocol import TunnelQuicConnection
from reverse_http.quic.settings import client_configuration, server_configuration
from tests.quic_helpers import client_tls, server_settings

CLIENT_ADDR = ("127.0.0.1", 50000)
SERVER_ADDR = ("127.0.0.1", 4242)


class Link:
    """A lossless wire between two connections, with a switch to cut it.

    Each direction is a queue drained by its own task, as a socket would be: a
    send never re-enters the receiving connection.
    """

    def __init__(self, nursery: trio.Nursery, certs: CertFiles, server_t: TransportSettings):
        self.up = True
        #: Largest datagram the path carries; bigger ones vanish (a black hole) or, with
        #: ``refuse_too_big``, are refused at the sender as the kernel does (EMSGSIZE).
        self.mtu: int | None = None
        self.refuse_too_big = False
        #: One-way delay of each direction (seconds): a path with a round-trip time.
        self.delay = 0.0
        #: Where the server sees the client's datagrams come from (a NAT may change it).
        self.client_addr = CLIENT_ADDR
        self.sizes: dict[str, list[int]] = {"c2s": [], "s2c": []}
        self.nursery = nursery
        self.settings = server_settings(certs, server_t)
        self.client: Connection | None = None
        self.server: Connection | None = None
        self.client_driver = Driver(self.client_send)
        self.server_driver = Driver(self.server_send)
        self.sent: dict[str, list[float]] = {"c2s": [], "s2c": []}
        self.server_created = trio.Event()
        self._to_server_send, self._to_server = trio.open_memory_channel[tuple[float, bytes]](
            math.inf
        )
        self._to_client_send, self._to_client = trio.open_memory_channel[tuple[float, bytes]](
            math.inf
        )
        nursery.start_soon(self.client_driver.run)
        nursery.start_soon(self.server_driver.run)
        nursery.start_soon(self._pump_to_server)
        nursery.start_soon(self._pump_to_client)

    def _carry(self, data: bytes, way: str, too_big: list[int]) -> bool:
        if self.mtu is not None and len(data) > self.mtu:
            if self.refuse_too_big:
                too_big.append(len(data))
            return False
        self.sent[way].append(trio.current_time())
        self.sizes[way].append(len(data))
        return self.up

    def client_send(self, datagrams: list[tuple[bytes, Any]]) -> list[int]:
        too_big: list[int] = []
        for data, _ in datagrams:
            if self._carry(data, "c2s", too_big):
                self._to_server_send.send_nowait((trio.current_time() + self.delay, data))
        return too_big

    def server_send(self, datagrams: list[tuple[bytes, Any]]) -> list[int]:
        too_big: list[int] = []
        for data, _ in datagrams:
            if self._carry(data, "s2c", too_big):
                self._to_client_send.send_nowait((trio.current_time() + self.delay, data))
        return too_big

    async def _pump_to_server(self) -> None:
        async for due, data in self._to_server:
            if due > trio.current_time():
                await trio.sleep_until(due)
            if self.server is None:
                self.server = self._make_server(data)
            self.server.datagram_received(data, self.client_addr, trio.current_time())
            self.server_driver.flush()

    async def _pump_to_client(self) -> None:
        async for due, data in self._to_client:
            if due > trio.current_time():
                await trio.sleep_until(due)
            if self.client is not None:
                self.client.datagram_received(data, SERVER_ADDR, trio.current_time())
                self.client_driver.flush()

    def _make_server(self, first: bytes) -> Connection:
        header = pull_quic_header(Buffer(data=first), host_cid_length=8)
        t = self.settings.transport
        quic = TunnelQuicConnection.for_transport(
            server_configuration(self.settings),
            t,
            original_destination_connection_id=header.destination_cid,
        )
        conn = Connection(quic, t, self.server_driver, CLIENT_ADDR)
        self.server_created.set()
        return conn

    async def server_conn(self) -> Connection:
        await self.server_created.wait()
        assert self.server is not None
        await self.server.wait_handshake()
        return self.server


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
        quic = TunnelQuicConnection.for_transport(
            client_configuration(client_t, client_tls(certs), "localhost"), client_t
        )
        conn = Connection(quic, client_t, link.client_driver, SERVER_ADDR)
        link.client = conn
        quic.connect(SERVER_ADDR, now=trio.current_time())
        link.client_driver.touch(conn)
        link.client_driver.flush()
        try:
            yield link, conn
        finally:
            nursery.cancel_scope.cancel()


async def pmtu_settled(*conns: Connection) -> None:
    """Wait (virtual time) until each connection's path MTU search has finished."""
    from reverse_http.quic.pmtu import Phase

    with trio.fail_after(30):
        while not all(c.quic.pmtu.phase is Phase.COMPLETE for c in conns):
            await trio.sleep(0.01)


@asynccontextmanager
async def settled_pair(
    certs: CertFiles, t: TransportSettings
) -> AsyncIterator[tuple[Link, Connection, Connection]]:
    """``linked``, once both ends are past the handshake and their start-up probes."""
    async with linked(certs, t) as (link, client):
        await client.wait_handshake()
        server = await link.server_conn()
        await pmtu_settled(client, server)
        yield link, client, server
