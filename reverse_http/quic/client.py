"""QUIC client: a fresh, connected UDP socket per connection attempt.

A new socket (so a new source port) per attempt lets a UDP load balancer route
a reconnecting agent anew instead of pinning it to a dead backend.
"""

from __future__ import annotations

import socket

import trio

from .connection import CloseInfo, Connection, ConnectionError
from .driver import Driver
from .endpoint import UdpEndpoint
from .protocol import TunnelQuicConnection
from .settings import ClientTls, TransportSettings, client_configuration


async def connect(
    nursery: trio.Nursery,
    host: str,
    port: int,
    transport: TransportSettings,
    tls: ClientTls,
) -> Connection:
    """Connect and complete the handshake; the connection's tasks live in ``nursery``.

    Each resolved address is tried in turn. Raises :class:`ConnectionError` (or
    ``OSError`` for resolution and socket errors) when none works.
    """
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    if not infos:
        raise OSError(f"cannot resolve {host!r}")
    last: Exception | None = None
    for family, _type, _proto, _name, sockaddr in infos:
        try:
            conn: Connection = await nursery.start(
                _client_connection, family, sockaddr, host, transport, tls
            )
            return conn
        except (ConnectionError, OSError) as exc:
            last = exc
    assert last is not None
    raise last


async def _client_connection(
    family: int,
    sockaddr: tuple[str, int] | tuple[str, int, int, int],
    host: str,
    transport: TransportSettings,
    tls: ClientTls,
    *,
    task_status: trio.TaskStatus[Connection] = trio.TASK_STATUS_IGNORED,
) -> None:
    configuration = client_configuration(transport, tls, host)
    endpoint = UdpEndpoint.connected(family, sockaddr, transport.socket_buffer_size)
    try:
        quic = TunnelQuicConnection.for_transport(configuration, transport)
        driver = Driver(endpoint.send_nowait)
        conn = Connection(quic, transport, driver, sockaddr)
        quic.connect(sockaddr, now=trio.current_time())
        driver.touch(conn)
        driver.flush()  # the Initial
        established = False
        try:
            async with trio.open_nursery() as nursery:
                conn.cancel_on_close(nursery.cancel_scope)

                def feed(data: bytes, addr: object) -> None:
                    conn.datagram_received(data, addr, trio.current_time())

                nursery.start_soon(endpoint.run, feed, driver.flush, driver.take_hold, driver.flush)
                nursery.start_soon(driver.run)
                try:
                    await conn.wait_handshake()
                    established = True
                except ConnectionError:
                    pass
                if established:
                    task_status.started(conn)
                else:
                    nursery.cancel_scope.cancel()
        finally:
            conn.abort_now()
        if not established:
            raise ConnectionError(
                conn.close_info or CloseInfo(0, "handshake failed", False, "transport")
            )
    finally:
        endpoint.close()
