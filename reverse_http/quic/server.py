"""QUIC server: routes datagrams by connection ID, one handler task per connection.

Nursery tree of :func:`serve_quic`::

    serve_quic
    ├── endpoint receive loop   (routes datagrams, creates connections, services
    │                            every connection it fed once per batch)
    ├── endpoint backlog writer (only busy while the socket buffer is full)
    ├── driver                  (one deadline heap for all connections' timers)
    └── per connection: _connection_lifetime
        └── handler(conn)       (cancelled when the connection ends)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.packet import (
    QuicPacketType,
    encode_quic_retry,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from aioquic.quic.retry import QuicRetryTokenHandler

from .connection import Connection, ConnectionError
from .driver import Driver
from .endpoint import UdpEndpoint
from .initial import opens_handshake
from .protocol import TunnelQuicConnection, encode_invalid_token_close
from .reset import derive_reset_key, encode_reset, reset_token
from .settings import ClientCertVerifier, ServerSettings, client_verifier, server_configuration

log = logging.getLogger(__name__)

Handler = Callable[[Connection], Awaitable[None]]

#: Stateless resets sent per second at most (a restarted proxy with 5000 agents that
#: keep alive every 10 s needs 500).
RESETS_PER_SECOND = 2000


class QuicServer:
    """Routing state of one listening endpoint; see :func:`serve_quic`."""

    def __init__(self, settings: ServerSettings, endpoint: UdpEndpoint) -> None:
        self.settings = settings
        self.endpoint = endpoint
        self.driver = Driver(endpoint.send_nowait)
        self._configuration: QuicConfiguration = server_configuration(settings)
        self._client_verifier: ClientCertVerifier | None = client_verifier(settings.tls)
        self._cid_length: int = self._configuration.connection_id_length
        self._routes: dict[bytes, Connection] = {}
        self._cids: dict[Connection, set[bytes]] = {}
        self._new_initials: list[tuple[bytes, Any, Any]] = []
        self._retry = QuicRetryTokenHandler() if settings.retry else None
        self._pending_handshakes = 0
        self._accepting = True
        self.connections: set[Connection] = set()
        self._spawn: Callable[[Connection], None] | None = None
        self.initials_dropped = 0
        self._reset_key = settings.stateless_reset_key or derive_reset_key(
            settings.tls.key_file.read_bytes()
        )
        self._reset_budget = float(RESETS_PER_SECOND)
        self._reset_refilled_at = trio.current_time()
        self.resets_sent = 0
        #: Initials that did not decrypt or carried no ClientHello; no state was kept.
        self.initials_refused = 0

    @property
    def local_address(self) -> Any:
        return self.endpoint.local_address

    def reload_tls(self, settings: ServerSettings) -> None:
        """Use new certificate material (and client CA and CRL) for new handshakes; live
        connections keep theirs. Nothing changes unless all of it loads."""
        configuration = server_configuration(settings)
        verifier = client_verifier(settings.tls)
        self._configuration, self._client_verifier = configuration, verifier
        self.settings = settings

    def stop_accepting(self) -> None:
        self._accepting = False

    async def close_all(self, error_code: int = 0, reason: str = "") -> None:
        self._accepting = False
        async with trio.open_nursery() as nursery:
            for conn in list(self.connections):
                nursery.start_soon(conn.close, error_code, reason)

    # --- datagram routing (synchronous, called from the receive loop) -------------------

    def dispatch(self, data: bytes, addr: Any) -> None:
        if not data:
            return
        now = trio.current_time()
        if not data[0] & 0x80:  # short header: the fast path for established traffic
            cid = data[1 : 1 + self._cid_length]
            conn = self._routes.get(cid)
            if conn is not None:
                conn.datagram_received(data, addr, now)
            elif len(cid) == self._cid_length:
                self._send_reset(cid, len(data), addr, now)
            return
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=self._cid_length)
        except Exception:  # garbage: aioquic raises ValueError and friends
            return
        conn = self._routes.get(header.destination_cid)
        if conn is not None:
            conn.datagram_received(data, addr, now)
            return
        if header.packet_type == QuicPacketType.INITIAL and len(self._new_initials) < 4096:
            # New connections wait for the end of the batch: established traffic first.
            self._new_initials.append((data, addr, header))
            return
        self._new_connection(data, addr, header, now)

    def _after_batch(self) -> None:
        """Admit the batch's new connections (a bounded number, in arrival order), then
        service every connection the batch touched."""
        initials, self._new_initials = self._new_initials, []
        admitted = 0
        now = trio.current_time()
        for data, addr, header in initials:
            conn = self._routes.get(header.destination_cid)
            if conn is not None:  # a retransmitted Initial of one admitted just now
                conn.datagram_received(data, addr, now)
            elif admitted < self.settings.handshakes_per_batch:
                admitted += self._new_connection(data, addr, header, now)
            else:
                self.initials_dropped += 1  # the client resends it
        self.driver.flush()

    def _new_connection(self, data: bytes, addr: Any, header: Any, now: float) -> bool:
        """Version negotiation, retry, or a new connection; True when one was created."""
        cfg = self._configuration
        if (
            header.packet_type != QuicPacketType.VERSION_NEGOTIATION
            and header.version is not None
            and header.version not in cfg.supported_versions
        ):
            self._send_now(
                encode_quic_version_negotiation(
                    source_cid=header.destination_cid,
                    destination_cid=header.source_cid,
                    supported_versions=cfg.supported_versions,
                ),
                addr,
            )
            return False
        if header.packet_type != QuicPacketType.INITIAL or len(data) < SMALLEST_MAX_DATAGRAM_SIZE:
            return False
        if not self._accepting or self._spawn is None:
            return False
        if not opens_handshake(data, self._cid_length):
            self.initials_refused += 1
            return False
        if self._pending_handshakes >= self.settings.max_pending_handshakes:
            self.initials_dropped += 1
            return False
        version = header.version
        assert version is not None  # an Initial always has a long header
        odcid: bytes = header.destination_cid
        retry_scid: bytes | None = None
        if self._retry is not None:
            if not header.token:
                scid = os.urandom(8)
                token = self._retry.create_token(
                    address=addr,
                    original_destination_connection_id=header.destination_cid,
                    retry_source_connection_id=scid,
                    now=now,
                )
                self._send_now(
                    encode_quic_retry(
                        version=version,
                        source_cid=scid,
                        destination_cid=header.source_cid,
                        original_destination_cid=header.destination_cid,
                        retry_token=token,
                    ),
                    addr,
                )
                return False
            try:
                odcid = self._retry.validate_token(
                    address=addr,
                    destination_cid=header.destination_cid,
                    token=header.token,
                    now=now,
                )
            except ValueError:
                self._send_now(
                    encode_invalid_token_close(
                        version=version,
                        source_cid=header.destination_cid,
                        destination_cid=header.source_cid,
                    ),
                    addr,
                )
                return False
            retry_scid = header.destination_cid
        conn = self._create_connection(odcid, retry_scid, addr)
        self._route(header.destination_cid, conn)
        self._route(conn.host_cid, conn)
        self._pending_handshakes += 1
        self._spawn(conn)
        conn.datagram_received(data, addr, now)
        return True

    def _create_connection(self, odcid: bytes, retry_scid: bytes | None, addr: Any) -> Connection:
        t = self.settings.transport
        quic = TunnelQuicConnection(
            configuration=self._configuration,
            original_destination_connection_id=odcid,
            retry_source_connection_id=retry_scid,
            stream_receive_window=t.stream_receive_window,
            connection_receive_window=t.connection_receive_window,
            max_concurrent_streams=t.max_concurrent_streams,
            pacing_burst_packets=t.pacing_burst_packets,
            client_certificate_check=self._client_verifier,
            stateless_reset_key=self._reset_key,
        )
        conn: Connection

        def issued(cid: bytes) -> None:
            self._route(cid, conn)

        def retired(cid: bytes) -> None:
            if self._routes.get(cid) is conn:
                del self._routes[cid]
            self._cids.get(conn, set()).discard(cid)

        conn = Connection(
            quic,
            t,
            self.driver,
            addr,
            on_cid_issued=issued,
            on_cid_retired=retired,
        )
        return conn

    def _send_reset(self, cid: bytes, size: int, addr: Any, now: float) -> None:
        """Tell the sender of a packet for a connection we do not know that it is gone
        (we restarted, or a load balancer moved it here), at a bounded rate."""
        elapsed = now - self._reset_refilled_at
        self._reset_refilled_at = now
        self._reset_budget = min(
            RESETS_PER_SECOND, self._reset_budget + elapsed * RESETS_PER_SECOND
        )
        if self._reset_budget < 1:
            return
        reset = encode_reset(reset_token(self._reset_key, cid), size)
        if reset is not None:
            self._reset_budget -= 1
            self.resets_sent += 1
            self._send_now(reset, addr)

    def _send_now(self, datagram: bytes, addr: Any) -> None:
        self.endpoint.send_nowait([(datagram, addr)])

    def _route(self, cid: bytes, conn: Connection) -> None:
        self._routes[cid] = conn
        self._cids.setdefault(conn, set()).add(cid)

    def _forget(self, conn: Connection) -> None:
        for cid in self._cids.pop(conn, ()):
            if self._routes.get(cid) is conn:
                del self._routes[cid]
        self.connections.discard(conn)

    # --- tasks ------------------------------------------------------------------------------

    async def _run(self, handler: Handler) -> None:
        async with trio.open_nursery() as nursery:
            self._spawn = lambda conn: nursery.start_soon(self._connection_lifetime, conn, handler)
            nursery.start_soon(self.driver.run)
            await self.endpoint.run(self.dispatch, self._after_batch)

    async def _connection_lifetime(self, conn: Connection, handler: Handler) -> None:
        handshake_counted = True
        self.connections.add(conn)
        try:
            with trio.CancelScope() as scope:
                conn.cancel_on_close(scope)
                try:
                    await conn.wait_handshake()
                except ConnectionError as exc:
                    log.debug("handshake with %s failed: %s", conn.peer_address, exc)
                    return
                finally:
                    self._pending_handshakes -= 1
                    handshake_counted = False
                try:
                    await handler(conn)
                except* ConnectionError:
                    pass  # the connection ended under the handler: normal
                except* Exception as group:
                    # A handler bug costs this connection, never the server.
                    log.error(
                        "connection handler for %s failed",
                        conn.peer_address,
                        exc_info=group,
                    )
                    conn.abort(1, "internal error")
                await conn.close()
        finally:
            if handshake_counted:
                self._pending_handshakes -= 1
            conn.abort_now()
            self._forget(conn)


async def serve_quic(
    handler: Handler,
    host: str,
    port: int,
    settings: ServerSettings,
    *,
    task_status: trio.TaskStatus[QuicServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``host:port`` and run ``handler(conn)`` for each established connection.

    When the handler returns, the connection is closed gracefully; when the
    connection ends first, the handler is cancelled.
    """
    endpoint = UdpEndpoint.bind(host, port, settings.transport.socket_buffer_size)
    try:
        server = QuicServer(settings, endpoint)
        task_status.started(server)
        await server._run(handler)
    finally:
        endpoint.close()
