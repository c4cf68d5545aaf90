"""QUIC server: routes datagrams by connection ID, one handler task per connection.

Nursery tree of :func:`serve_quic`::

    serve_quic
    ├── endpoint receive loop   (routes datagrams, creates connections, services
    │                            every connection it fed once per batch)
    ├── endpoint backlog writer (only busy while the socket buffer is full)
    ├── driver                  (one deadline heap for all connections' timers)
    ├── admit loop              (a freed handshake slot to the longest-waiting client)
    └── per connection: _connection_lifetime
        └── handler(conn)       (cancelled when the connection ends)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import trio
from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import (
    QuicPacketType,
    encode_quic_retry,
    encode_quic_version_negotiation,
    pull_quic_header,
)

from .admission import Admission, TokenBucket, source_key
from .connection import Connection, ConnectionError
from .driver import Driver
from .endpoint import UdpEndpoint, crash_log
from .initial import forget_keys, keep_keys, opens_handshake, take_keys
from .protocol import TunnelQuicConnection, encode_invalid_token_close
from .reset import MIN_RESET_SIZE, derive_reset_key, encode_reset, reset_token
from .settings import (
    ClientCertVerifier,
    ServerSettings,
    certificate_alert,
    client_verifier,
    server_configuration,
)
from .trim import release_free_memory, resident_bytes

log = logging.getLogger(__name__)


def _log_handshake_failure(conn: Connection, exc: ConnectionError) -> None:
    """A client certificate we refused is the operator's business (a warning naming the
    alert and why; the reason holds no secret); any other failed handshake is noise."""
    info = exc.info
    alert = certificate_alert(info.error_code) if info.kind == "transport" else None
    if alert is not None and not info.by_peer:
        host, port = conn.peer_address[:2]
        log.warning(
            "client %s:%s refused in the TLS handshake: %s (TLS alert %s, code 0x%x)",
            host,
            port,
            info.reason,
            alert,
            info.error_code,
        )
    else:
        log.debug("handshake with %s failed: %s", conn.peer_address, exc)


Handler = Callable[[Connection], Awaitable[None]]

#: Stateless resets sent per second at most (a restarted proxy with 5000 agents that
#: keep alive every 10 s needs 500).
RESETS_PER_SECOND = 2000
#: Version Negotiation and INVALID_TOKEN closes sent per second at most: floods of
#: them are what a reflection attack asks for, a real client needs one.
ANSWERS_PER_SECOND = 1000
#: Initials of new connections waiting for the end of their receive batch.
MAX_QUEUED_INITIALS = 4096


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
        now = trio.current_time()
        self.admission = Admission(settings.admission, now)
        #: The source (see admission.source_key) of each connection still in handshake.
        self._handshake_sources: dict[Connection, str] = {}
        #: Handshake slots freed since the waiting clients were last admitted.
        self._slots_freed = 0
        #: Handshakes that may still start before the next receive batch (refilled to
        #: handshakes_per_batch by each): the admit loop's starts count too, so the
        #: loop reads the socket again after at most that many handshakes' CPU.
        self._starts_left = settings.admission.handshakes_per_batch
        self._slot_freed = trio.Event()
        self._accepting = True
        self.connections: set[Connection] = set()
        self._spawn: Callable[[Connection], None] | None = None
        self._reset_key = settings.stateless_reset_key or derive_reset_key(
            settings.tls.key_file.read_bytes()
        )
        self._reset_budget = TokenBucket(RESETS_PER_SECOND, now)
        self._answer_budget = TokenBucket(ANSWERS_PER_SECOND, now)
        self.resets_sent = 0
        self.versions_negotiated = 0
        #: Times the state a load episode left was released (see release_after_load), and
        #: the resident bytes those releases gave back (0 where RSS is not readable).
        self.memory_releases = 0
        self.memory_released_bytes = 0

    # --- counters (what metrics.Metrics.watch_agent_server reads) -----------------------

    @property
    def initials_refused(self) -> int:
        """Initials that did not decrypt or carried no ClientHello; no state was kept."""
        return self.admission.dropped["undecryptable"]

    @property
    def initials_dropped(self) -> Mapping[str, int]:
        """Initials of new connections dropped, by reason (admission.DROP_REASONS)."""
        return self.admission.dropped

    @property
    def retries_sent(self) -> int:
        return self.admission.retries_sent

    @property
    def handshakes_pending(self) -> int:
        return self.admission.pending

    @property
    def handshakes_waiting(self) -> int:
        """Address-validated Initials waiting for a handshake slot right now."""
        self.admission.waiting.expire(trio.current_time())
        return len(self.admission.waiting)

    @property
    def handshakes_admitted_after_wait(self) -> int:
        return self.admission.admitted_after_wait

    @property
    def handshake_waits_expired(self) -> int:
        """Waiting places given up (waited longer than ``max_wait``)."""
        self.admission.waiting.expire(trio.current_time())
        return self.admission.waiting.expired

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
        supported = header.version in self._configuration.supported_versions
        is_initial = supported and header.packet_type == QuicPacketType.INITIAL
        if len(data) < SMALLEST_MAX_DATAGRAM_SIZE:
            # RFC 9000 14.1: an Initial in a datagram this small opens nothing, and no
            # answer (Version Negotiation neither) goes to one: nothing to amplify.
            if is_initial:
                self.admission.drop("too_small", now)
            return
        if not supported:
            if header.packet_type != QuicPacketType.VERSION_NEGOTIATION:
                self._negotiate_version(header, addr, now)
            return
        if not is_initial:
            return  # Handshake or 0-RTT for a connection we do not know
        if len(self._new_initials) >= MAX_QUEUED_INITIALS:
            self.admission.drop("busy", now)
            return
        # New connections wait for the end of the batch: established traffic first.
        self._new_initials.append((data, addr, header))

    def _after_batch(self) -> None:
        """Admit the batch's new connections (a bounded number, in arrival order), then
        service every connection the batch touched."""
        initials, self._new_initials = self._new_initials, []
        now = trio.current_time()
        self._starts_left = self.settings.admission.handshakes_per_batch
        # Clients waiting for a handshake slot go first, oldest first.
        self._admit_waiting(now)
        waiting = self.admission.waiting
        for data, addr, header in initials:
            try:
                conn = self._routes.get(header.destination_cid)
                if conn is not None:  # a retransmitted Initial of one admitted just now
                    conn.datagram_received(data, addr, now)
                elif header.destination_cid in waiting:
                    pass  # a waiting client's retransmission: it keeps its place
                elif waiting.gave_up(header.destination_cid):
                    self.admission.drop("busy", now)  # no need to decrypt it again
                elif (
                    retry := self.admission.recent_retries.recall(header.destination_cid, addr, now)
                ) is not None:
                    if retry:  # a first Initial retransmitted: the same Retry, not a new one
                        self.admission.retries_repeated += 1
                        self._send_now(retry, addr)
                else:
                    may_create = self._starts_left > 0 and not waiting
                    self._starts_left -= self._new_connection(data, addr, header, now, may_create)
            except Exception:
                self._initial_failed(header, addr)
        self.admission.log.flush(now)
        self.driver.flush()

    def _initial_failed(self, header: Any, addr: Any) -> None:
        """Handling an Initial at the end of a batch (or from the waiting room) raised: a
        bug, ours or aioquic's, on some ClientHello. Out of reach of the endpoint's
        per-datagram guard, it would end the receive loop and every agent's connection;
        it costs the connection that Initial opened or reached, if any."""
        crash_log.exception("an Initial from %s crashed its handling; dropped", addr)
        conn = self._routes.get(header.destination_cid)
        if conn is not None:
            conn._fail("internal error")

    def _negotiate_version(self, header: Any, addr: Any, now: float) -> None:
        if self._answer_budget.take(now):
            self.versions_negotiated += 1
            self._send_now(
                encode_quic_version_negotiation(
                    source_cid=header.destination_cid,
                    destination_cid=header.source_cid,
                    supported_versions=self._configuration.supported_versions,
                ),
                addr,
            )

    def _new_connection(
        self, data: bytes, addr: Any, header: Any, now: float, may_create: bool = True
    ) -> bool:
        """Retry, a refusal, or a new connection for an Initial of a supported version
        in a full-sized datagram; True when a connection was created. Without
        ``may_create`` (the batch admitted its share) a Retry is still sent: it is cheap."""
        if not self._accepting or self._spawn is None:
            return False
        admission = self.admission
        version: int = header.version
        odcid: bytes = header.destination_cid
        retry_scid: bytes | None = None
        if header.token:
            # We issue no NEW_TOKEN: a token is from one of our Retries, whatever the load
            # is now, and the connection must tell the client it saw that Retry.
            validated = admission.validate_token(addr, odcid, header.token, now)
            if validated is None:
                if not self._decrypts(data, now):  # junk: no answer
                    return False
                admission.drop("invalid_token", now)
                if self._answer_budget.take(now):
                    self._send_now(
                        encode_invalid_token_close(
                            version=version,
                            source_cid=header.destination_cid,
                            destination_cid=header.source_cid,
                        ),
                        addr,
                    )
                return False
            # Its client received our Retry at this address: it is decrypted only when
            # its handshake starts (most wait, many of those give up in a storm).
            odcid, retry_scid = validated, header.destination_cid
        else:
            # RFC 9000 17.2.5.1: a Retry needs no processing of the Initial. Under load
            # the Initial is not decrypted (deriving its keys and decrypting cost more
            # than the Retry): the Retry is smaller than the datagram, keeps no state,
            # and only a client at that address can come back with its token.
            if admission.retry_required(now):
                self._send_retry(header, addr, now)
                return False
            if not self._decrypts(data, now):
                return False
        admission.initial_seen(now)
        if retry_scid is None and admission.retry_required(now):  # this one tipped the rate
            self._send_retry(header, addr, now)
            return False
        source = source_key(addr)
        refusal = admission.limit_reached(source) if may_create else "busy"
        if refusal is not None:
            # An address-validated client waits its turn; others resend their Initial.
            validated_client = retry_scid is not None and refusal != "source_limit"
            place = (data, addr, header, odcid, retry_scid, source)
            if not (
                validated_client
                and admission.waiting.wait(header.destination_cid, place, source, now)
            ):
                admission.drop(refusal, now)
                if retry_scid is None:  # it decrypted: keep its keys for its retransmission
                    keep_keys(header.destination_cid, version)
            return False
        if retry_scid is not None and not self._decrypts(data, now):  # a token's, unchecked
            return False
        self._start_handshake(data, addr, header, odcid, retry_scid, source, now)
        return True

    def _decrypts(self, data: bytes, now: float) -> bool:
        """The Initial decrypts and carries a ClientHello; if not, it is dropped (junk)."""
        if opens_handshake(data, self._cid_length):
            return True
        self.admission.drop("undecryptable", now)
        return False

    def _send_retry(self, header: Any, addr: Any, now: float) -> None:
        admission = self.admission
        scid = os.urandom(self._cid_length)
        token = admission.create_token(addr, header.destination_cid, scid, now)
        retry = encode_quic_retry(
            version=header.version,
            source_cid=scid,
            destination_cid=header.source_cid,
            original_destination_cid=header.destination_cid,
            retry_token=token,
        )
        admission.recent_retries.remember(header.destination_cid, addr, retry, now)
        self._send_now(retry, addr)
        admission.retry_sent(now)

    def _admit_waiting(self, now: float, most: int | None = None) -> int:
        """Start handshakes of waiting clients, in arrival order, while this batch's
        starts (and ``most``) and the limits on handshakes in progress allow; how many
        were started."""
        admission = self.admission
        waiting = admission.waiting
        started = 0
        limit = self._starts_left if most is None else min(most, self._starts_left)
        while started < limit and self._accepting and self._spawn is not None:
            place = waiting.peek(now)
            if place is None:
                break
            data, addr, header, odcid, retry_scid, source = place
            refusal = admission.limit_reached(source)
            if refusal == "global_limit":
                break  # the head waits for a handshake to finish
            waiting.pop()
            if refusal is not None:  # its source's share is in progress: resend later
                admission.drop(refusal, now)
                continue
            if not self._decrypts(data, now):  # waited undecrypted
                continue
            admission.admitted_after_wait += 1
            try:
                self._start_handshake(data, addr, header, odcid, retry_scid, source, now)
            except Exception:
                self._initial_failed(header, addr)
            started += 1
        self._starts_left -= started
        return started

    def _start_handshake(
        self,
        data: bytes,
        addr: Any,
        header: Any,
        odcid: bytes,
        retry_scid: bytes | None,
        source: str,
        now: float,
    ) -> None:
        admission = self.admission
        keys = take_keys(header.destination_cid, header.version)
        conn = self._create_connection(odcid, retry_scid, addr, keys)
        self._route(header.destination_cid, conn)
        self._route(conn.host_cid, conn)
        admission.started(source)
        self._handshake_sources[conn] = source
        assert self._spawn is not None  # checked by the callers
        self._spawn(conn)
        conn.datagram_received(data, addr, now)

    def _handshake_over(self, conn: Connection) -> None:
        source = self._handshake_sources.pop(conn, None)
        if source is not None:
            self.admission.finished(source)
            # The freed slot goes to the longest-waiting client now, not at the next batch.
            if self.admission.waiting:
                self._slots_freed += 1
                self._slot_freed.set()

    async def _admit_loop(self) -> None:
        """Give each freed handshake slot to the longest-waiting client, within the
        batch's starts (beyond them the next batch admits the waiting first). Not done
        by the task whose handshake ended: it may end because the server is being
        cancelled, and each handshake started then ended at once and started the next
        waiting one (the whole waiting room's, TLS flights sent, while the server went
        away)."""
        while True:
            await self._slot_freed.wait()
            self._slot_freed = trio.Event()
            freed, self._slots_freed = self._slots_freed, 0
            if self._admit_waiting(trio.current_time(), freed):
                self.driver.flush()

    def _create_connection(
        self,
        odcid: bytes,
        retry_scid: bytes | None,
        addr: Any,
        initial_keys: CryptoPair | None = None,
    ) -> Connection:
        """``initial_keys``: the ones its first Initial was checked with (not derived again)."""
        t = self.settings.transport
        quic = TunnelQuicConnection.for_transport(
            self._configuration,
            t,
            original_destination_connection_id=odcid,
            retry_source_connection_id=retry_scid,
            client_certificate_check=self._client_verifier,
            stateless_reset_key=self._reset_key,
            initial_keys=initial_keys,
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
        if size <= MIN_RESET_SIZE:
            return
        if self._reset_budget.take(now):
            reset = encode_reset(reset_token(self._reset_key, cid), size)
            assert reset is not None  # size checked above
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
            nursery.start_soon(self._admit_loop)
            nursery.start_soon(self._release_loop)
            # Only the driver's flush after a wake-up's first datagram: admitting new
            # connections stays once per batch (its budget is per batch).
            await self.endpoint.run(
                self.dispatch, self._after_batch, self.driver.take_hold, self.driver.flush
            )

    async def _release_loop(self) -> None:
        while True:
            await trio.sleep(1.0)
            self.release_after_load(trio.current_time())

    def release_after_load(self, now: float) -> bool:
        """Once a flood or a reconnect storm is over (Admission.load_is_over), drop the
        Initial keys and the admission state (remembered Retries) it left and return the
        heap's free pages to the OS, so RSS falls back (issue 11); True when it did."""
        if not self.admission.load_is_over(now):
            return False
        before = resident_bytes()
        self.admission.forget_episode()
        keys = forget_keys()
        trimmed = release_free_memory()
        after = resident_bytes()
        released = max(before - after, 0) if before is not None and after is not None else 0
        self.memory_releases += 1
        self.memory_released_bytes += released
        log.debug(
            "load over: %d cached Initial keys dropped, heap trimmed: %s, %d KiB released",
            keys,
            trimmed,
            released // 1024,
        )
        return True

    async def _connection_lifetime(self, conn: Connection, handler: Handler) -> None:
        self.connections.add(conn)
        try:
            with trio.CancelScope() as scope:
                conn.cancel_on_close(scope)
                try:
                    await conn.wait_handshake()
                except ConnectionError as exc:
                    _log_handshake_failure(conn, exc)
                    return
                finally:
                    self._handshake_over(conn)
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
            self._handshake_over(conn)
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
