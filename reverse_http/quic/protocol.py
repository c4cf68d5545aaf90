"""aioquic's ``QuicConnection``, adapted for a tunnel with thousands of streams.

This is the only module that touches aioquic's private attributes and methods;
:func:`check_aioquic` verifies each of them at import against the pinned release,
and ``tests/test_quic_internals.py`` exercises them, so an aioquic upgrade that
moves one fails loudly here rather than misbehaving later.

What changes against stock aioquic (still sans-IO: no clock, no sockets):

- **Packet building visits only streams with work.** Stock aioquic walks every
  open stream for every packet (``_write_application``); with 10,000 mostly idle
  tunnel streams that walk was the whole CPU profile. Here streams enter a
  round-robin queue when they get data, a reset, a STOP_SENDING, lost frames or
  new flow-control credit, and leave it when they have nothing left to send.
  Streams that have sent little so far are served first, so a new stream's first
  bytes (a CONNECT head, its answer) never wait behind bulk transfers.
- **ACKs ride on data.** A pending ACK goes into any packet that is sent anyway,
  instead of waiting for its own timer and datagram.
- **Receive credit follows consumption**, per stream and per connection: the
  peer may send ``consumed + window``, so a reader that stops reading stops the
  peer, and the memory a connection holds for unread data is bounded.
- **Send accounting**: bytes written but not yet acknowledged, per stream and per
  connection, so writers can be blocked before memory grows.
- **Stream-count credit** returns to the peer as soon as a stream is finished,
  and local opens beyond the peer's limit are visible (:meth:`can_open_stream`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aioquic
from aioquic import tls
from aioquic.buffer import Buffer, size_uint_var  # type: ignore[attr-defined]
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.congestion.cubic import CubicCongestionControl
from aioquic.quic.congestion.reno import RenoCongestionControl
from aioquic.quic.connection import (
    CONNECTION_LIMIT_FRAME_CAPACITY,
    MAX_STREAM_DATA_FRAME_CAPACITY,
    RESET_STREAM_FRAME_CAPACITY,
    STOP_SENDING_FRAME_CAPACITY,
    Limit,
    QuicConnection,
    QuicConnectionState,
    QuicNetworkPath,
    QuicReceiveContext,
    stream_is_client_initiated,
)
from aioquic.quic.crypto import CryptoContext, CryptoPair, NoCallback
from aioquic.quic.packet import QuicFrameType, QuicPacketType
from aioquic.quic.packet_builder import (
    QuicDeliveryState,
    QuicPacketBuilder,
    QuicPacketBuilderStop,
)
from aioquic.quic.recovery import QuicPacketPacer, QuicPacketRecovery, QuicPacketSpace
from aioquic.quic.stream import QuicStream as AioStream
from aioquic.tls import Epoch

from .congestion import BurstPacer, ObservedCongestionControl
from .flowcontrol import WindowTuner
from .pmtu import PathMtu, Phase
from .reset import reset_token

if TYPE_CHECKING:
    from .settings import TransportSettings

__all__ = [
    "AioStream",
    "AioquicIncompatible",
    "TunnelQuicConnection",
    "check_aioquic",
    "encode_invalid_token_close",
]

VERIFIED_SERIES = "1.7."

#: Below this much room in a packet, a STREAM frame is not worth its header.
_MIN_FRAME_ROOM = 64
#: Streams that have sent less than this (an answer to CONNECT, the start of a body)
#: are served before bulk streams.
FRESH_STREAM_BYTES = 4 * 1024
#: Bytes a stream may send per round-robin turn (deficit round robin). One frame per
#: turn would hand each of 10,000 busy streams ~1.3 KB at a time, and the peer's
#: reader would wake once per packet per stream; a turn of several packets lets it
#: wake once per burst, while a turn stays short next to a flight.
TURN_BYTES = 16 * 1024
#: An ACK goes out after this many ack-eliciting packets, or ``ACK_DELAY`` after the
#: first (below the 25 ms max_ack_delay aioquic advertises).
ACK_EVERY = 2
ACK_DELAY = 0.020
#: A stream's new credit (MAX_STREAM_DATA) is sent once the application read this
#: fraction (1/N) of its window since the last one.
STREAM_CREDIT_STEP = 4


def encode_invalid_token_close(version: int, source_cid: bytes, destination_cid: bytes) -> bytes:
    """aioquic's Initial closing with INVALID_TOKEN (a Retry token that does not validate).

    Imported on use: it lives in ``aioquic.asyncio``, which loads asyncio and costs tens
    of milliseconds at every daemon's start-up for a packet that is rarely sent."""
    from aioquic.asyncio.server import _encode_invalid_token_close

    return _encode_invalid_token_close(version, source_cid, destination_cid)


class _FrameHandlers:
    """aioquic's frame dispatch table, shared by all connections of a class.

    aioquic builds a dict of bound methods and epoch sets per connection (about 5 KiB,
    a tenth of an idle agent); this binds the handler when a frame arrives instead.
    """

    __slots__ = ("_conn", "_table")
    _tables: dict[type, dict[int, tuple[Callable[..., None], frozenset[Epoch]]]] = {}

    def __init__(self, conn: QuicConnection, built: dict[int, tuple[Any, frozenset[Epoch]]]):
        table = self._tables.get(type(conn))
        if table is None:
            table = {t: (handler.__func__, epochs) for t, (handler, epochs) in built.items()}
            self._tables[type(conn)] = table
        self._conn = conn
        self._table = table

    def __getitem__(self, frame_type: int) -> tuple[Callable[..., None], frozenset[Epoch]]:
        func, epochs = self._table[frame_type]
        return func.__get__(self._conn), epochs


#: Connection IDs we accept from the peer (RFC 9000's minimum); the peer's own limit,
#: 2 for our agents, bounds the IDs we issue, each a routing entry.
ACTIVE_CONNECTION_ID_LIMIT = 2
#: Room left for post-handshake CRYPTO (a NewSessionTicket is a few hundred bytes).
_POST_HANDSHAKE_CRYPTO = 1024


def _spent_space() -> QuicPacketSpace:
    space = QuicPacketSpace()
    space.discarded = True
    return space


#: Stands in for every confirmed connection's Initial and Handshake packet spaces. A
#: packet of a discarded epoch only has ``expected_packet_number`` read before its
#: decryption fails for want of keys; nothing is sent, acknowledged or timed there.
_SPENT_SPACE = _spent_space()


class AioquicIncompatible(ImportError):
    """The installed aioquic does not have the internals reverse-http relies on."""


#: aioquic's per-connection frame dispatch table (a name-mangled private attribute).
_FRAME_HANDLERS = "_QuicConnection__frame_handlers"
#: Private QuicConnection attributes (set in __init__) used below.
_CONNECTION_ATTRIBUTES = (
    "_close_event",
    "_close_pending",
    "_configuration",
    "_cryptos",
    "_crypto_buffers",
    "_crypto_streams",
    "_cryptos_initial",
    "_handshake_complete",
    "_handshake_confirmed",
    "_handshake_done_pending",
    "_host_cids",
    "_is_client",
    "_local_active_connection_id_limit",
    "_local_max_data",
    "_local_max_streams_bidi",
    "_local_max_streams_uni",
    "_local_next_stream_id_bidi",
    "_loss",
    "_max_datagram_size",
    "_network_paths",
    "_pacing_at",
    "_peer_cid",
    "_peer_cid_available",
    "_ping_pending",
    "_probe_pending",
    "_quic_logger",
    "_remote_max_data",
    "_remote_max_data_used",
    "_remote_max_streams_bidi",
    "_remote_max_streams_uni",
    "_remote_preferred_address",
    "_retire_connection_ids",
    "_spaces",
    "_state",
    "_streams",
    "_streams_blocked_bidi",
    "_streams_blocked_pending",
    "_streams_blocked_uni",
    "_streams_queue",
    "_version",
    "_datagrams_pending",
    "_events",
    _FRAME_HANDLERS,
    "_quic_logger",
)
_CRYPTO_CALLBACKS = ("_setup_cb", "_teardown_cb")
#: Private QuicConnection methods used or overridden below.
_CONNECTION_METHODS = (
    "_confirm_handshake",
    "_handle_max_data_frame",
    "_handle_max_stream_data_frame",
    "_handle_padding_frame",
    "_handle_ping_frame",
    "_handle_reset_stream_frame",
    "_handle_stop_sending_frame",
    "_handle_stream_frame",
    "_initialize",
    "_on_connection_limit_delivery",
    "_payload_received",
    "_replenish_connection_ids",
    "_stream_limit",
    "_unblock_streams",
    "_write_ack_frame",
    "_write_application",
    "_write_connection_limits",
    "_write_crypto_frame",
    "_write_datagram_frame",
    "_write_handshake_done_frame",
    "_write_new_connection_id_frame",
    "_write_path_challenge_frame",
    "_write_path_response_frame",
    "_write_ping_frame",
    "_write_retire_connection_id_frame",
    "_write_streams_blocked_frame",
)


#: Server-side handlers of the client's Certificate and CertificateVerify, wrapped per
#: connection to verify the client certificate inside the handshake.
_TLS_HANDSHAKE_HOOKS = ("_server_handle_certificate", "_server_handle_certificate_verify")

#: What a server's TLS context holds only for the handshake: the key schedule (with its
#: transcript hash) and the ephemeral key-exchange private keys.
_TLS_SERVER_SPENT = ("key_schedule", "_x25519_private_key", "_ec_private_keys")


def release_spent_server_tls(ctx: tls.Context) -> bool:
    """Drop what a server's TLS context kept for the handshake (about 1 KiB per idle
    agent, much of it OpenSSL's); False if the handshake is not over.

    A QUIC server's context after the handshake refuses every message without looking
    at them (no TLS KeyUpdate in QUIC, tickets go the other way), so none is read again.
    """
    if ctx._is_client or ctx.state != tls.State.SERVER_POST_HANDSHAKE:
        return False
    ctx.key_schedule = None
    ctx._x25519_private_key = None
    ctx._ec_private_keys = []
    return True


#: Checks a client's certificate and chain; raises a ``tls.Alert`` to refuse it.
ClientCertCheck = Callable[[Any, list[Any]], None]


def check_aioquic() -> None:
    """Raise :class:`AioquicIncompatible` naming every internal that moved."""
    version = getattr(aioquic, "__version__", "unknown")
    if not version.startswith(VERIFIED_SERIES):
        raise AioquicIncompatible(
            f"reverse-http needs aioquic {VERIFIED_SERIES}x (installed: {version}); "
            "its private connection, stream and flow-control internals were verified only there"
        )
    init_names = set(QuicConnection.__init__.__code__.co_names)
    missing = [
        f"QuicConnection.{name}" for name in _CONNECTION_ATTRIBUTES if name not in init_names
    ]
    missing += [
        f"QuicConnection.{name}"
        for name in _CONNECTION_METHODS
        if not callable(getattr(QuicConnection, name, None))
    ]
    # a server derives only the Initial keys of its connection's version (_initialize)
    initialize_names = set(QuicConnection._initialize.__code__.co_names)
    missing += [
        f"QuicConnection._initialize.{name}"
        for name in ("_cryptos_initial", "supported_versions", "_serialize_transport_parameters")
        if name not in initialize_names
    ]
    recovery_names = set(QuicPacketRecovery.__init__.__code__.co_names)
    missing += [
        f"QuicPacketRecovery.{name}"
        for name in ("_cc", "_pacer", "_rtt_smoothed", "spaces")
        if name not in recovery_names
    ]
    # path MTU discovery tells the pacer and the controllers the datagram size in use
    for cls in (QuicPacketPacer, RenoCongestionControl, CubicCongestionControl):
        if "_max_datagram_size" not in cls.__init__.__code__.co_names:
            missing.append(f"{cls.__name__}._max_datagram_size")
    # our initial window (congestion): Cubic's reset() sets the window and _W_max, at
    # start and after an idle period, and is overridden to start at ours
    for fn in (CubicCongestionControl.__init__, CubicCongestionControl.on_packet_sent):
        if "reset" not in fn.__code__.co_names:
            missing.append(f"CubicCongestionControl.{fn.__name__}.reset")
    if "_W_max" not in CubicCongestionControl.reset.__code__.co_names:
        missing.append("CubicCongestionControl.reset._W_max")
    dispatch_names = set(tls.Context._handle_reassembled_message.__code__.co_names)
    missing += [
        f"tls.Context.{name}"
        for name in _TLS_HANDSHAKE_HOOKS
        if not callable(getattr(tls.Context, name, None)) or name not in dispatch_names
    ]
    tls_names = set(tls.Context.__init__.__code__.co_names)
    missing += [
        f"tls.Context.{name}"
        for name in (
            "_peer_certificate",
            "_peer_certificate_chain",
            "_request_client_certificate",
            "_supported_groups",
            *_TLS_SERVER_SPENT,
        )
        if name not in tls_names
    ]
    if not hasattr(tls.State, "SERVER_POST_HANDSHAKE"):
        missing.append("tls.State.SERVER_POST_HANDSHAKE")
    stream = AioStream(stream_id=0, max_stream_data_local=1, max_stream_data_remote=1)
    for attr in (
        "_acked",
        "_buffer_start",
        "_buffer_stop",
        "_pending",
        "_pending_eof",
        "_reset_error_code",
        "buffer_is_empty",
        "highest_offset",
        "is_finished",
        "reset_pending",
        "get_frame",
        "get_reset_frame",
        "on_data_delivery",
        "on_reset_delivery",
        "next_offset",
    ):
        if not hasattr(stream.sender, attr):
            missing.append(f"QuicStreamSender.{attr}")
    for attr in ("highest_offset", "is_finished", "stop_pending", "get_stop_frame"):
        if not hasattr(stream.receiver, attr):
            missing.append(f"QuicStreamReceiver.{attr}")
    for attr in ("max_stream_data_local", "max_stream_data_local_sent", "is_blocked"):
        if not hasattr(stream, attr):
            missing.append(f"QuicStream.{attr}")
    limit = Limit(frame_type=0, name="probe", value=1)
    for attr in ("sent", "used", "value"):
        if not hasattr(limit, attr):
            missing.append(f"Limit.{attr}")
    if not hasattr(QuicConfiguration(is_client=True), "max_stream_data"):
        missing.append("QuicConfiguration.max_stream_data")
    crypto = CryptoContext()
    missing += [f"CryptoContext.{a}" for a in _CRYPTO_CALLBACKS if not hasattr(crypto, a)]
    context_fields = getattr(QuicReceiveContext, "__dataclass_fields__", {})
    missing += [
        f"QuicReceiveContext.{f}"
        for f in ("time", "epoch", "quic_logger_frames")
        if f not in context_fields
    ]
    if missing:
        raise AioquicIncompatible(
            f"aioquic {version} lacks internals reverse-http depends on: {', '.join(missing)}"
        )


check_aioquic()


class _InitialKeys(dict[int, CryptoPair]):
    """A server connection's Initial keys by QUIC version, derived when first used.

    aioquic derives them for every supported version (v1 and v2) when a connection
    starts, though a connection keeps one version unless the client asks for the other
    (compatible version negotiation); and the server has already derived its version's
    keys to check the Initial (:mod:`.initial`). Each pair is two HKDF derivations and
    four OpenSSL cipher contexts: half of a reconnect storm's key derivations.
    """

    __slots__ = ("_cid",)  # one per connection for its lifetime: no instance dict

    def __init__(self, cid: bytes, given: dict[int, CryptoPair]) -> None:
        super().__init__(given)
        self._cid = cid

    def __missing__(self, version: int) -> CryptoPair:
        pair = CryptoPair()
        # Once the Initial keys are discarded (torn down), the other version gets none
        # either: keys derived then would accept a forged Initial (from the CID seen in
        # clear) carrying e.g. CONNECTION_CLOSE. A pair never set up drops it.
        if all(known.recv.is_valid() for known in self.values()):
            pair.setup_initial(cid=self._cid, is_client=False, version=version)
        self[version] = pair
        return pair


#: The configuration a server connection's _initialize runs with: no versions to derive
#: Initial keys for (see _InitialKeys), one copy per configuration in use.
_VERSIONLESS: dict[int, tuple[QuicConfiguration, QuicConfiguration]] = {}


def _versionless(cfg: QuicConfiguration) -> QuicConfiguration:
    cached = _VERSIONLESS.get(id(cfg))
    if cached is not None and cached[0] is cfg:
        return cached[1]
    copy = dataclasses.replace(cfg, supported_versions=[])
    if len(_VERSIONLESS) > 8:  # configurations replaced by TLS reloads
        _VERSIONLESS.clear()
    _VERSIONLESS[id(cfg)] = (cfg, copy)
    return copy


class _NoQueue(list[AioStream]):
    """Stands in for aioquic's per-connection stream walk list, which we replace."""

    def append(self, _stream: AioStream) -> None:
        pass


class TunnelQuicConnection(QuicConnection):
    def __init__(
        self,
        *,
        stream_receive_window: int,
        max_concurrent_streams: int,
        connection_receive_window: int | None = None,
        pacing_burst_packets: int = 16,
        request_client_certificate: bool = False,
        client_certificate_check: ClientCertCheck | None = None,
        stateless_reset_key: bytes | None = None,
        max_datagram_size_ceiling: int | None = None,
        stream_receive_window_max: int | None = None,
        initial_keys: CryptoPair | None = None,
        **kwargs: Any,
    ) -> None:
        #: A server's Initial keys for its first packet's version, derived already by
        #: the caller to check that packet (see _initialize).
        self._rh_initial_keys = initial_keys
        #: While a server's _initialize runs: its CID and the Initial keys it was given.
        self._rh_lazy_initial: tuple[bytes, dict[int, CryptoPair]] | None = None
        super().__init__(**kwargs)
        #: Path MTU discovery from the configured (base) size up to the ceiling; without
        #: a ceiling the configured size is used throughout.
        if max_datagram_size_ceiling is None:
            fixed = self._max_datagram_size
            self.pmtu = PathMtu(max_size=fixed, base_size=fixed)
        else:
            self.pmtu = PathMtu(
                max_size=max_datagram_size_ceiling, base_size=self._max_datagram_size
            )
        #: Packet numbers of PMTU probes in flight, and their datagram sizes.
        self._rh_probes: dict[int, int] = {}
        #: Size of the probe the current ``datagrams_to_send`` pass builds (0: none).
        self._rh_probe_size = 0
        #: Ack-eliciting 1-RTT packets received since our last ACK.
        self._rh_eliciting_unacked = 0
        #: The time of the last packet received or ``datagrams_to_send`` (for events that
        #: come without one: expired packets, the application's reads).
        self._rh_now = 0.0
        observed = ObservedCongestionControl(self._loss._cc, self)
        self._loss._cc = observed  # type: ignore[assignment]
        self._rh_reset_key = None if self._is_client else stateless_reset_key
        self._derive_reset_tokens()
        setattr(self, _FRAME_HANDLERS, _FrameHandlers(self, getattr(self, _FRAME_HANDLERS)))
        # One spare connection ID each way covers a NAT rebinding; aioquic keeps 8.
        self._local_active_connection_id_limit = ACTIVE_CONNECTION_ID_LIMIT
        self._rh_window = stream_receive_window
        #: Streams' windows grow up to this (see ``flowcontrol``); no tuning when equal.
        self._rh_window_max = max(stream_receive_window, stream_receive_window_max or 0)
        #: Tuners of the streams whose window may grow, made at their first credit update.
        self._rh_tuners: dict[int, WindowTuner] = {}
        self._rh_conn_window = connection_receive_window or self._local_max_data.value
        self._local_max_data.value = self._local_max_data.sent = self._rh_conn_window
        self._rh_consumed: dict[int, int] = {}
        self._rh_conn_consumed = 0
        self._rh_request_client_cert = request_client_certificate or (
            client_certificate_check is not None
        )
        self._rh_client_check = client_certificate_check
        # aioquic advertises 128; concurrent CONNECTs need far more.
        limit = self._local_max_streams_bidi
        limit.value = limit.sent = max_concurrent_streams
        self._loss._pacer = BurstPacer(
            max_datagram_size=self._max_datagram_size,
            burst_packets=pacing_burst_packets,
            in_slow_start=observed.in_slow_start,
        )
        self._streams_queue = _NoQueue()
        #: Round-robin send queues (dicts keep insertion order): new streams first.
        self._rh_fresh: dict[int, AioStream] = {}
        self._rh_bulk: dict[int, AioStream] = {}
        #: The stream at the head of a queue whose turn is running, and its bytes left.
        self._rh_turn_sid = -1
        self._rh_turn_left = 0
        #: Streams with data but no connection credit; MAX_DATA requeues them.
        self._rh_conn_blocked: dict[int, AioStream] = {}
        #: Streams that owe the peer a MAX_STREAM_DATA.
        self._rh_credit_due: dict[int, AioStream] = {}
        #: Bytes written on all streams and not yet acknowledged (or reset).
        self.unacked_bytes = 0
        #: Packets that decrypted: a datagram that adds none may be a stateless reset.
        self.packets_authenticated = 0
        #: Time of the last packet that decrypted (liveness); None before any.
        self.last_authenticated_rx: float | None = None
        #: Streams looked at while building packets (scheduler cost, for tests).
        self.streams_visited = 0
        #: Told (stream id) when acknowledgements free send buffer.
        self.on_stream_acked: Callable[[int], None] | None = None
        #: Told (stream id) when aioquic forgets a finished stream.
        self.on_stream_discarded: Callable[[int], None] | None = None
        #: Told when the peer's stream limit lets us open more streams.
        self.on_streams_available: Callable[[], None] | None = None

    # --- facts other modules need, without reaching into aioquic ---------------------

    @classmethod
    def for_transport(
        cls, configuration: QuicConfiguration, transport: TransportSettings, **kwargs: Any
    ) -> TunnelQuicConnection:
        """A connection with ``transport``'s windows, stream limit, pacing burst and
        path MTU ceiling; ``kwargs`` add the role's own arguments."""
        return cls(
            configuration=configuration,
            stream_receive_window=transport.stream_receive_window,
            connection_receive_window=transport.connection_receive_window,
            max_concurrent_streams=transport.max_concurrent_streams,
            pacing_burst_packets=transport.pacing_burst_packets,
            max_datagram_size_ceiling=transport.pmtu_ceiling,
            stream_receive_window_max=transport.stream_receive_window_limit,
            **kwargs,
        )

    @property
    def is_client(self) -> bool:
        return bool(self._is_client)

    @property
    def close_event(self) -> events.ConnectionTerminated | None:
        """Set as soon as a close is sent or received (before the closing period ends)."""
        event: events.ConnectionTerminated | None = self._close_event
        return event

    @property
    def closed_by_peer(self) -> bool:
        return bool(self._state == QuicConnectionState.DRAINING)

    @property
    def has_peer_address(self) -> bool:
        """False for a server connection that has not received its first datagram."""
        return bool(self._network_paths)

    @property
    def current_peer_address(self) -> Any:
        """The address datagrams go to now (None before the first one)."""
        return self.get_peer_address()

    @property
    def peer_cid(self) -> bytes:
        return bytes(self._peer_cid.cid)

    def peer_reset_tokens(self) -> set[bytes]:
        """The stateless reset tokens the peer gave us (a server gives them)."""
        cids = [self._peer_cid, *self._peer_cid_available]
        return {bytes(c.stateless_reset_token) for c in cids if c.stateless_reset_token}

    def _derive_reset_tokens(self) -> None:
        key = self._rh_reset_key
        if key is not None:
            for host_cid in self._host_cids:
                host_cid.stateless_reset_token = reset_token(key, bytes(host_cid.cid))

    def _replenish_connection_ids(self) -> None:
        super()._replenish_connection_ids()
        self._derive_reset_tokens()

    def peer_certificate(self) -> tuple[Any, list[Any]]:
        """The peer's certificate and chain (mutual TLS), None if it sent none."""
        tls = self.tls
        return getattr(tls, "_peer_certificate", None), getattr(tls, "_peer_certificate_chain", [])

    @property
    def congestion_window(self) -> int:
        return int(self._loss.congestion_window)

    @property
    def smoothed_rtt(self) -> float:
        """Seconds; 0 before the first RTT sample."""
        return float(self._loss._rtt_smoothed)

    def stats(self) -> dict[str, float]:
        loss = self._loss
        return {
            "rtt_seconds": float(loss._rtt_smoothed),
            "congestion_window_bytes": float(loss.congestion_window),
            "bytes_in_flight": float(loss.bytes_in_flight),
            "lost_packets": float(getattr(loss._cc, "lost_packets", 0)),
            "datagram_size_bytes": float(self.pmtu.current),
            "pmtu_fallbacks": float(self.pmtu.fallbacks),
        }

    def stream_unacked(self, stream_id: int) -> int:
        """Bytes written on the stream the peer has not acknowledged; 0 once reset."""
        stream: AioStream | None = self._streams.get(stream_id)
        if stream is None:
            return 0
        sender = stream.sender
        if sender._reset_error_code is not None or sender.is_finished:
            return 0
        return int(sender._buffer_stop - sender._buffer_start)

    def stream_acked_ahead(self, stream_id: int) -> int:
        """Of ``stream_unacked``, the bytes acknowledged beyond a gap (data lost and not
        yet repaired): still buffered, but no longer in flight."""
        stream: AioStream | None = self._streams.get(stream_id)
        if stream is None or not len(stream.sender._acked):
            return 0
        return sum(len(r) for r in stream.sender._acked)

    def has_stream(self, stream_id: int) -> bool:
        return stream_id in self._streams

    def can_open_stream(self) -> bool:
        """True while the peer's MAX_STREAMS lets us open one more bidirectional stream."""
        return bool(self._local_next_stream_id_bidi // 4 < self._remote_max_streams_bidi)

    @property
    def open_stream_count(self) -> int:
        return len(self._streams)

    def stopped_by_peer(self, stream_id: int) -> int | None:
        """The error code our sending side of ``stream_id`` was reset with, or None; for
        a stream the application has not seen yet, that of the peer's STOP_SENDING."""
        stream: AioStream | None = self._streams.get(stream_id)
        return None if stream is None else stream.sender._reset_error_code

    def next_event(self) -> events.QuicEvent | None:
        """aioquic's, without raising and catching an IndexError when there is none:
        every service asks at least twice (before and after building its datagrams),
        and an idle connection's keepalive leaves nothing to find."""
        queue = self._events
        return queue.popleft() if queue else None

    # --- sans-IO API additions ----------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Any]]:
        """A path MTU probe when one is due, then aioquic's datagrams.

        The probe goes first: behind bulk data the congestion window would rarely
        leave room for it, and the search would stall for the whole transfer.
        """
        self._rh_now = now
        datagrams: list[tuple[bytes, Any]] = []
        size = self._probe_due(now)
        if size:
            normal, self._max_datagram_size = self._max_datagram_size, size
            self._rh_probe_size = size
            try:
                datagrams = super().datagrams_to_send(now=now)
            finally:
                self._max_datagram_size = normal
                self._rh_probe_size = 0
        if self._nothing_to_send(now):
            # What a stock pass that built nothing leaves: no pacing deadline.
            self._pacing_at = None
            return datagrams
        datagrams += super().datagrams_to_send(now=now)
        return datagrams

    def _nothing_to_send(self, now: float) -> bool:
        """True when aioquic's ``datagrams_to_send`` would build no packet: an open,
        confirmed connection on one validated path with no frame of any kind pending.

        Every received packet is followed by a service, and after most (an ACK held
        back for ``ACK_DELAY``) aioquic would set up a packet builder, start a
        packet and throw it away. False whenever in doubt: the stock pass runs."""
        if self._state != QuicConnectionState.CONNECTED or not self._handshake_confirmed:
            return False
        # First the usual answer: an ACK due now (each keepalive's, as a PING is acked
        # at once), then everything else that may be pending.
        ack_at = self._spaces[Epoch.ONE_RTT].ack_at
        if ack_at is not None and ack_at <= now:
            return False
        if (
            self._close_pending
            or self._rh_fresh
            or self._rh_bulk
            or self._rh_credit_due
            or self._ping_pending
            or self._probe_pending
            or self._datagrams_pending
            or self._handshake_done_pending
            or self._retire_connection_ids
            or self._streams_blocked_pending
        ):
            return False
        paths = self._network_paths
        if len(paths) != 1 or not paths[0].is_validated or paths[0].remote_challenges:
            return False
        if self._is_client and self._remote_preferred_address is not None:
            return False
        if not self._crypto_streams[Epoch.ONE_RTT].sender.buffer_is_empty:
            return False
        if any(not cid.was_sent for cid in self._host_cids):
            return False
        return not self._due_connection_limits()

    def _may_probe(self) -> bool:
        """A probe may go out: connected, on a validated path, and no other path waits
        for probing frames (aioquic pads those to the datagram size in use)."""
        if not self._handshake_confirmed or self._state != QuicConnectionState.CONNECTED:
            return False
        paths = self._network_paths
        if not paths or not paths[0].is_validated:
            return False
        return not any(
            p.remote_challenges or not (p.is_validated or p.local_challenge_sent) for p in paths[1:]
        )

    def _probe_due(self, now: float) -> int | None:
        pmtu = self.pmtu
        if pmtu.phase is not Phase.SEARCHING:  # every service of every connection asks
            at = pmtu.next_event_at()
            if at is None or now < at:
                return None
        if not self._may_probe():
            return None
        size = pmtu.probe_size(now)
        if size is None or self._loss.congestion_window - self._loss.bytes_in_flight < size:
            return None
        return size

    def get_timer(self) -> float | None:
        timer: float | None = super().get_timer()
        raise_at = self.pmtu.next_event_at()
        # Only a deadline a service can act on: one it cannot would come back at once.
        if raise_at is not None and (timer is None or raise_at < timer) and self._may_probe():
            return raise_at
        return timer

    def datagrams_too_big(self, sizes: list[int], now: float) -> None:
        """The kernel refused to send datagrams of these sizes (``EMSGSIZE``)."""
        for size in sizes:
            self.pmtu.on_too_big(size, now)
        self._apply_pmtu()

    def _apply_pmtu(self) -> None:
        if self._rh_probe_size:
            return
        size = self.pmtu.current
        if size != self._max_datagram_size:
            self._max_datagram_size = size
            # pacing and window growth count in datagrams of this size
            self._loss._pacer._max_datagram_size = size
            cc = self._loss._cc
            inner = cc.inner if isinstance(cc, ObservedCongestionControl) else cc
            if hasattr(inner, "_max_datagram_size"):
                inner._max_datagram_size = size
            if hasattr(inner, "additive_increase_factor"):
                inner.additive_increase_factor = size

    # --- told by ObservedCongestionControl --------------------------------------------

    def packet_acked(self, pn: int, size: int, now: float) -> None:
        probe = self._rh_probes.pop(pn, None)
        if probe is not None:
            self.pmtu.on_probe_acked(probe, now)
        else:
            self.pmtu.on_packet_acked(size, now)
        self._apply_pmtu()

    def packet_expired(self, pn: int, size: int) -> None:
        """aioquic stopped tracking a packet unacknowledged after a PTO: a probe counts as
        lost; so does any other for black-hole detection, since in a black hole the big
        packets only ever expire (their retransmissions are as big)."""
        self.packet_lost(pn, size, self._rh_now)

    def packet_lost(self, pn: int, size: int, now: float) -> bool:
        """Report one lost packet; True if it was a PMTU probe (no congestion signal)."""
        probe = self._rh_probes.pop(pn, None)
        if probe is not None:
            self.pmtu.on_probe_lost(probe, now)
        else:
            self.pmtu.on_packet_lost(size, now, patience=3 * self._loss.get_probe_timeout())
        self._apply_pmtu()
        return probe is not None

    def _initialize(self, peer_cid: bytes) -> None:
        if self._is_client:
            super()._initialize(peer_cid)
        else:
            self._initialize_server(peer_cid)
        if self._rh_request_client_cert:
            self.tls._request_client_certificate = True
        if self._rh_client_check is not None and not self._is_client:
            self._hook_client_certificate_check(self._rh_client_check)
        if self._is_client and tls.Group.X25519 in self.tls._supported_groups:
            # aioquic offers a key share for every group it knows (P-256, P-384, X25519,
            # X448): four key generations per attempt, a third of a reconnect storm's
            # agent CPU. Every TLS 1.3 server, quic-go's included, takes X25519.
            self.tls._supported_groups = [tls.Group.X25519]
        if self._quic_logger is None:
            # the key-update callbacks only feed a qlog trace; without one they are dead weight
            for pair in self._cryptos.values():
                for ctx in (pair.recv, pair.send):
                    ctx._setup_cb = ctx._teardown_cb = NoCallback

    def _initialize_server(self, peer_cid: bytes) -> None:
        """aioquic's _initialize without deriving Initial keys for every supported
        version up front (_InitialKeys): it runs with a configuration listing none, and
        gets the keys of its version (handed in, or derived) when it looks them up.
        The transport parameters, which list the versions, are then made again."""
        given, version = self._rh_initial_keys, self._version
        self._rh_initial_keys = None
        assert version is not None  # set from the first Initial before _initialize
        self._rh_lazy_initial = (peer_cid, {} if given is None else {version: given})
        cfg = self._configuration
        self._configuration = _versionless(cfg)
        try:
            super()._initialize(peer_cid)
        finally:
            self._configuration = cfg
            self._rh_lazy_initial = None
        self.tls.handshake_extensions = [
            (tls.ExtensionType.QUIC_TRANSPORT_PARAMETERS, self._serialize_transport_parameters())
        ]

    @property
    def _cryptos_initial(self) -> dict[int, CryptoPair]:
        return self._rh_cryptos_initial

    @_cryptos_initial.setter
    def _cryptos_initial(self, value: dict[int, CryptoPair]) -> None:
        # aioquic assigns it in __init__ and fills it in _initialize (here: lazily)
        lazy = self._rh_lazy_initial
        if lazy is not None:
            cid, given = lazy
            value = _InitialKeys(cid, {**value, **given})
        self._rh_cryptos_initial = value

    def _hook_client_certificate_check(self, check: ClientCertCheck) -> None:
        """Verify the client's certificate in the handshake, as a TLS server does: a refusal
        is a TLS alert (CRYPTO_ERROR) before the handshake completes, and a client that
        sends no certificate is refused with ``certificate_required``."""
        ctx = self.tls
        on_certificate = ctx._server_handle_certificate
        on_verify = ctx._server_handle_certificate_verify

        def handle_certificate(input_buf: Buffer) -> None:
            on_certificate(input_buf)
            if ctx._peer_certificate is None:  # an empty Certificate message
                check(None, [])

        def handle_certificate_verify(input_buf: Buffer) -> None:
            on_verify(input_buf)  # the client proved it holds the certificate's key
            check(ctx._peer_certificate, list(ctx._peer_certificate_chain))

        ctx._server_handle_certificate = handle_certificate  # type: ignore[method-assign]
        ctx._server_handle_certificate_verify = handle_certificate_verify  # type: ignore[method-assign]

    def _confirm_handshake(self) -> None:
        """An idle agent is mostly its connection's memory: the three 16 KiB buffers for
        handshake flights are empty from here on, and only 1-RTT CRYPTO can still come.

        The Initial and Handshake CRYPTO streams and packet spaces (2-3 KiB each) go
        too: both epochs' keys are discarded, so their packets are dropped before any
        frame is read and nothing is written, sent or timed in them. aioquic pushes TLS
        output per ``_crypto_buffers`` key into ``_crypto_streams``, so both keep only
        the 1-RTT epoch; the spaces become one shared discarded space, out of the loss
        detector's list.
        """
        super()._confirm_handshake()
        # a server's context writes nothing after the handshake (it refuses every message)
        spent = release_spent_server_tls(self.tls)
        self._crypto_buffers = {
            Epoch.ONE_RTT: Buffer(capacity=0 if spent else _POST_HANDSHAKE_CRYPTO),
        }
        self._crypto_streams = {Epoch.ONE_RTT: self._crypto_streams[Epoch.ONE_RTT]}
        self._spaces[Epoch.INITIAL] = self._spaces[Epoch.HANDSHAKE] = _SPENT_SPACE
        self._loss.spaces = [self._spaces[Epoch.ONE_RTT]]

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        super().send_stream_data(stream_id, data, end_stream)
        self.unacked_bytes += len(data)
        self._schedule(self._streams[stream_id])

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        stream: AioStream | None = self._streams.get(stream_id)
        was_reset = stream is not None and stream.sender._reset_error_code is not None
        super().reset_stream(stream_id, error_code)
        stream = self._streams.get(stream_id)
        if stream is not None:
            self._after_reset(stream, was_reset)
            self._schedule(stream)

    def stop_stream(self, stream_id: int, error_code: int) -> None:
        super().stop_stream(stream_id, error_code)
        self._schedule(self._streams[stream_id])

    def released(self, nbytes: int) -> bool:
        """Delivered bytes the application dropped unread (reset, close): they free
        connection credit like consumed bytes; True when a MAX_DATA is due."""
        self._rh_conn_consumed += nbytes
        return (
            self._rh_conn_consumed + self._rh_conn_window - self._local_max_data.sent
            >= self._rh_conn_window // 2
        )

    def consumed(self, stream_id: int, nbytes: int) -> bool:
        """Record that the application read ``nbytes``; True when new credit is due.

        Connection credit is announced once the unannounced part reaches half a
        window, stream credit at a quarter (``STREAM_CREDIT_STEP``, quic-go's
        threshold): the peer may always send at least three quarters of a window
        ahead. At half, a stream got half its window only, and on a long path its
        sender hit the limit at every doubling of its congestion window in slow start
        (200 ms at 20 Mbit/s: stalled for 0.1 s at 768 KiB and at 1.5 MiB).
        """
        due = self.released(nbytes)
        total = self._rh_consumed.get(stream_id, 0) + nbytes
        self._rh_consumed[stream_id] = total
        stream: AioStream | None = self._streams.get(stream_id)
        if stream is None or not stream.max_stream_data_local:
            return due
        window = self._stream_window(stream_id)
        if total + window - stream.max_stream_data_local_sent >= window // STREAM_CREDIT_STEP:
            if self._rh_window_max > self._rh_window:
                tuner = self._rh_tuners.get(stream_id)
                if tuner is None:
                    tuner = self._rh_tuners[stream_id] = WindowTuner(window, self._rh_window_max)
                tuner.on_credit_due(total, self._rh_now, self._loss._rtt_smoothed)
            self._rh_credit_due[stream_id] = stream
            due = True
        return due

    def _stream_window(self, stream_id: int) -> int:
        tuner = self._rh_tuners.get(stream_id)
        return self._rh_window if tuner is None else tuner.size

    # --- scheduling -----------------------------------------------------------------------

    def _schedule(self, stream: AioStream) -> None:
        sid = _sid(stream)
        if sid in self._rh_fresh or sid in self._rh_bulk:
            return
        if stream.sender.highest_offset < FRESH_STREAM_BYTES:
            self._rh_fresh[sid] = stream
        else:
            self._rh_bulk[sid] = stream

    def _after_reset(self, stream: AioStream, was_reset: bool) -> None:
        sender = stream.sender
        if not was_reset and sender._reset_error_code is not None:
            self.unacked_bytes -= sender._buffer_stop - sender._buffer_start

    def _maybe_discard(self, stream: AioStream) -> None:
        """Forget a finished stream at once and give the peer its stream credit back."""
        if not stream.is_finished:
            return
        sid = _sid(stream)
        if self._streams.get(sid) is not stream:
            return
        del self._streams[sid]
        for queue in (self._rh_fresh, self._rh_bulk, self._rh_conn_blocked, self._rh_credit_due):
            queue.pop(sid, None)
        self._rh_consumed.pop(sid, None)
        self._rh_tuners.pop(sid, None)
        if stream_is_client_initiated(sid) != self._is_client:
            # RFC 9000 section 4.6: one new stream for each one that closes.
            self._stream_limit(sid).value += 1
        if self.on_stream_discarded is not None:
            self.on_stream_discarded(sid)

    def _has_stream_work(self) -> bool:
        return bool(self._rh_fresh or self._rh_bulk or self._rh_credit_due)

    # --- frames received --------------------------------------------------------------

    def _payload_received(
        self, context: QuicReceiveContext, plain: bytes, crypto_frame_required: bool = False
    ) -> tuple[bool, bool]:
        result: tuple[bool, bool] = super()._payload_received(
            context, plain, crypto_frame_required=crypto_frame_required
        )
        self.last_authenticated_rx = self._rh_now = context.time
        self.packets_authenticated += 1
        if result[0] and context.epoch == Epoch.ONE_RTT:
            self._ack_eliciting_received(context.time)
        return result

    def _ack_eliciting_received(self, now: float) -> None:
        """RFC 9000 section 13.2.2: ACK every second ack-eliciting packet at once, a lone
        one within ``ACK_DELAY``. aioquic acks each after 1 ms, which on a link that
        spreads packets out (long or lossy) is an ACK, and a wake-up, per packet."""
        space = self._spaces[Epoch.ONE_RTT]
        self._rh_eliciting_unacked += 1
        if self._rh_eliciting_unacked >= ACK_EVERY:
            space.ack_at = now
        elif space.ack_at is None:
            space.ack_at = now + ACK_DELAY

    def _write_ack_frame(
        self, builder: QuicPacketBuilder, space: QuicPacketSpace, now: float
    ) -> None:
        super()._write_ack_frame(builder=builder, space=space, now=now)
        if space is self._spaces[Epoch.ONE_RTT]:
            self._rh_eliciting_unacked = 0

    def _handle_padding_frame(
        self, context: QuicReceiveContext, frame_type: int, buf: Buffer
    ) -> None:
        """Skip the run of zero bytes at C speed: aioquic steps through it byte by byte in
        Python, about 40 us for the 1,400 bytes of a padded packet. quic-go pads every
        path MTU probe, and an idle agent's keepalives come with one for their first
        minute (a probe datagram per keepalive)."""
        pos = buf.tell()
        rest = buf.data_slice(pos, buf.capacity)
        buf.seek(pos + len(rest) - len(rest.lstrip(b"\x00")))
        frames = context.quic_logger_frames
        if self._quic_logger is not None and frames is not None:
            frames.append(self._quic_logger.encode_padding_frame())

    def _handle_ping_frame(self, context: QuicReceiveContext, frame_type: int, buf: Buffer) -> None:
        """A PING is a keepalive or a loss probe: its sender waits for the ACK. Acking in
        the same service as the receive spares every idle connection a timer wake-up."""
        super()._handle_ping_frame(context, frame_type, buf)
        space = self._spaces[context.epoch]
        if space.ack_at is None or space.ack_at > context.time:
            space.ack_at = context.time

    def _handle_stream_frame(
        self, context: QuicReceiveContext, frame_type: int, buf: Buffer
    ) -> None:
        queued = len(self._events)
        super()._handle_stream_frame(context, frame_type, buf)
        # The receive side finishes exactly when aioquic delivers the end of the stream.
        if len(self._events) > queued:
            event = self._events[-1]
            if isinstance(event, events.StreamDataReceived) and event.end_stream:
                self._after_receive(event.stream_id)

    def _handle_reset_stream_frame(
        self, context: QuicReceiveContext, frame_type: int, buf: Buffer
    ) -> None:
        sid = _peek_stream_id(buf)
        stream: AioStream | None = self._streams.get(sid)
        was_finished = stream is not None and stream.receiver.is_finished
        delivered = stream.receiver._buffer_start if stream is not None else 0
        super()._handle_reset_stream_frame(context, frame_type, buf)
        stream = self._streams.get(sid)
        if stream is not None and not was_finished and stream.receiver.is_finished:
            # Counted against MAX_DATA but never delivered: nobody will consume it.
            self.released(stream.receiver.highest_offset - delivered)
        self._after_receive(sid)

    def _after_receive(self, sid: int) -> None:
        stream: AioStream | None = self._streams.get(sid)
        if stream is not None and stream.receiver.is_finished:
            self._maybe_discard(stream)

    def _handle_stop_sending_frame(
        self, context: QuicReceiveContext, frame_type: int, buf: Buffer
    ) -> None:
        sid = _peek_stream_id(buf)
        stream: AioStream | None = self._streams.get(sid)
        was_reset = stream is not None and stream.sender._reset_error_code is not None
        super()._handle_stop_sending_frame(context, frame_type, buf)
        stream = self._streams.get(sid)
        if stream is not None:
            self._after_reset(stream, was_reset)
            self._schedule(stream)

    def _handle_max_stream_data_frame(
        self, context: QuicReceiveContext, frame_type: int, buf: Buffer
    ) -> None:
        sid = _peek_stream_id(buf)
        super()._handle_max_stream_data_frame(context, frame_type, buf)
        stream: AioStream | None = self._streams.get(sid)
        if stream is not None and _has_data(stream):
            self._schedule(stream)

    def _handle_max_data_frame(
        self, context: QuicReceiveContext, frame_type: int, buf: Buffer
    ) -> None:
        before = self._remote_max_data
        super()._handle_max_data_frame(context, frame_type, buf)
        if self._remote_max_data > before and self._rh_conn_blocked:
            blocked, self._rh_conn_blocked = self._rh_conn_blocked, {}
            for stream in blocked.values():
                self._schedule(stream)

    def _unblock_streams(self, is_unidirectional: bool) -> None:
        queue = self._streams_blocked_uni if is_unidirectional else self._streams_blocked_bidi
        blocked = list(queue)
        super()._unblock_streams(is_unidirectional)
        for stream in blocked:
            if not stream.is_blocked:
                self._schedule(stream)
        if not is_unidirectional and self.on_streams_available is not None:
            self.on_streams_available()

    # --- delivery of frames we sent -------------------------------------------------------

    def _on_stream_delivery(
        self, delivery: QuicDeliveryState, stream: AioStream, start: int, stop: int, fin: bool
    ) -> None:
        sender = stream.sender
        before = sender._buffer_start
        sender.on_data_delivery(delivery, start, stop, fin)
        if delivery == QuicDeliveryState.ACKED:
            freed = sender._buffer_start - before
            past_gap = stop > start and len(sender._acked) > 0
            if sender._reset_error_code is None and (freed or past_gap):
                # Data acknowledged past a gap frees no memory, but the writer's share
                # of the path (``Connection.stream_unacked``): it may go on.
                self.unacked_bytes -= freed
                if self.on_stream_acked is not None:
                    self.on_stream_acked(_sid(stream))
            if sender.is_finished:
                self._maybe_discard(stream)
        elif sender._reset_error_code is None and _sid(stream) in self._streams:
            self._schedule(stream)

    def _on_reset_delivery(self, delivery: QuicDeliveryState, stream: AioStream) -> None:
        stream.sender.on_reset_delivery(delivery)
        if delivery == QuicDeliveryState.ACKED:
            self._maybe_discard(stream)
        elif _sid(stream) in self._streams:
            self._schedule(stream)

    def _on_stop_delivery(self, delivery: QuicDeliveryState, stream: AioStream) -> None:
        stream.receiver.on_stop_sending_delivery(delivery)
        if delivery != QuicDeliveryState.ACKED and _sid(stream) in self._streams:
            self._schedule(stream)

    def _on_credit_delivery(self, delivery: QuicDeliveryState, stream: AioStream) -> None:
        if delivery != QuicDeliveryState.ACKED and _sid(stream) in self._streams:
            stream.max_stream_data_local_sent = 0
            self._rh_credit_due[_sid(stream)] = stream

    # --- packet building --------------------------------------------------------------------

    def _write_application(
        self, builder: QuicPacketBuilder, network_path: QuicNetworkPath, now: float
    ) -> None:
        crypto_stream: AioStream | None = None
        if self._cryptos[Epoch.ONE_RTT].send.is_valid():
            crypto = self._cryptos[Epoch.ONE_RTT]
            crypto_stream = self._crypto_streams[Epoch.ONE_RTT]
            packet_type = QuicPacketType.ONE_RTT
        elif self._cryptos[Epoch.ZERO_RTT].send.is_valid():
            crypto = self._cryptos[Epoch.ZERO_RTT]
            packet_type = QuicPacketType.ZERO_RTT
        else:
            return
        if self._rh_probe_size:
            self._write_pmtu_probe(builder, packet_type, crypto)
            return
        space = self._spaces[Epoch.ONE_RTT]

        while True:
            ack_due = space.ack_at is not None and space.ack_at <= now
            if not ack_due:
                self._pacing_at = self._loss._pacer.next_send_time(now=now)
                if self._pacing_at is not None:
                    break
            builder.start_packet(packet_type, crypto)

            # An ACK goes out when due, and in any packet that carries stream work.
            after_ack = -1
            if (
                packet_type == QuicPacketType.ONE_RTT
                and space.ack_at is not None
                and (ack_due or self._has_stream_work())
            ):
                self._write_ack_frame(builder=builder, space=space, now=now)
                after_ack = builder.remaining_buffer_space

            if self._handshake_complete:
                self._write_control_frames(builder, network_path, now)

            for stream in list(self._rh_credit_due.values()):
                self._write_stream_limits(builder, space, stream)
                del self._rh_credit_due[_sid(stream)]

            if self._ping_pending:
                self._write_ping_frame(builder, self._ping_pending)
                self._ping_pending.clear()
            if self._probe_pending:
                self._write_ping_frame(builder, comment="probe")
                self._probe_pending = False

            if crypto_stream is not None and not crypto_stream.sender.buffer_is_empty:
                self._write_crypto_frame(builder=builder, space=space, stream=crypto_stream)

            while self._datagrams_pending:
                try:
                    self._write_datagram_frame(
                        builder=builder,
                        data=self._datagrams_pending[0],
                        frame_type=QuicFrameType.DATAGRAM_WITH_LENGTH,
                    )
                except QuicPacketBuilderStop:
                    break
                self._datagrams_pending.popleft()

            self._write_streams(builder, space)

            if builder.packet_is_empty:
                break
            self._loss._pacer.update_after_send(now=now)
            if builder.remaining_buffer_space == after_ack and self._handshake_confirmed:
                # Only the ACK: every writer had the rest of the packet and found
                # nothing to send, and a next packet would have less room (once the
                # handshake is confirmed, the first 1-RTT packet of a pass starts its
                # datagram; the next would share it). An idle connection's answer to a
                # keepalive and a receiver's ACK no longer start a packet to throw away.
                break

    def _write_pmtu_probe(
        self, builder: QuicPacketBuilder, packet_type: QuicPacketType, crypto: Any
    ) -> None:
        """A PING padded to exactly the probe size, alone in its packet and datagram."""
        builder.start_packet(packet_type, crypto)
        pn = builder.packet_number
        # Nothing is written unless the congestion window has room for the whole probe.
        if builder.remaining_flight_space < builder.remaining_buffer_space:
            raise QuicPacketBuilderStop
        builder.start_frame(QuicFrameType.PING)
        room = min(builder.remaining_buffer_space, builder.remaining_flight_space)
        if room > 0:
            buf = builder.start_frame(QuicFrameType.PADDING, capacity=room)
            buf.push_bytes(bytes(room - 1))
        self._rh_probes[pn] = self._rh_probe_size
        self.pmtu.on_probe_sent(self._rh_probe_size)

    def _write_control_frames(
        self, builder: QuicPacketBuilder, network_path: QuicNetworkPath, now: float
    ) -> None:
        # PATH_CHALLENGE while a migrated client's path is not validated (RFC 9000 9.3).
        if not (network_path.is_validated or network_path.local_challenge_sent):
            self._write_path_challenge_frame(builder=builder, network_path=network_path)
            if network_path.validation_deadline is None:
                network_path.validation_deadline = now + 3 * max(
                    self._loss.get_probe_timeout(), 2 * self._configuration.initial_rtt
                )
        if self._handshake_done_pending:
            self._write_handshake_done_frame(builder=builder)
            self._handshake_done_pending = False
        while network_path.remote_challenges:
            self._write_path_response_frame(
                builder=builder, challenge=network_path.remote_challenges[0]
            )
            network_path.remote_challenges.popleft()
        for connection_id in self._host_cids:
            if not connection_id.was_sent:
                self._write_new_connection_id_frame(builder=builder, connection_id=connection_id)
        while self._retire_connection_ids:
            self._write_retire_connection_id_frame(
                builder=builder, sequence_number=self._retire_connection_ids[0]
            )
            self._retire_connection_ids.pop(0)
        if self._streams_blocked_pending:
            if self._streams_blocked_bidi:
                self._write_streams_blocked_frame(
                    builder=builder,
                    frame_type=QuicFrameType.STREAMS_BLOCKED_BIDI,
                    limit=self._remote_max_streams_bidi,
                )
            if self._streams_blocked_uni:
                self._write_streams_blocked_frame(
                    builder=builder,
                    frame_type=QuicFrameType.STREAMS_BLOCKED_UNI,
                    limit=self._remote_max_streams_uni,
                )
            self._streams_blocked_pending = False
        self._write_connection_limits(builder=builder, space=self._spaces[Epoch.ONE_RTT])

    def _write_streams(self, builder: QuicPacketBuilder, space: QuicPacketSpace) -> None:
        """Fill the packet from the send queues, fresh streams first, round robin.

        A bulk stream keeps its turn for up to TURN_BYTES, across packets. A stream also
        stays at the head while a frame of it does not fit (QuicPacketBuilderStop ends
        this packet), so it goes first next time.
        """
        for queue in (self._rh_fresh, self._rh_bulk):
            while queue and builder.remaining_flight_space >= _MIN_FRAME_ROOM:
                sid, stream = next(iter(queue.items()))
                if sid != self._rh_turn_sid:
                    self._rh_turn_sid, self._rh_turn_left = sid, TURN_BYTES
                self.streams_visited += 1
                room = builder.remaining_flight_space
                more = self._serve_stream(builder, space, stream)
                written = room - builder.remaining_flight_space
                self._rh_turn_left -= written
                # Fresh streams take one frame per turn: 10,000 answers to CONNECT
                # must not wait behind each other's first kilobytes of body.
                if (
                    more
                    and written
                    and queue is self._rh_bulk
                    and (self._rh_turn_left > 0 or len(queue) == 1)
                ):
                    continue  # its turn goes on (or nobody else is waiting)
                self._rh_turn_sid = -1
                if queue.get(sid) is stream:
                    del queue[sid]
                if more:
                    self._schedule(stream)

    def _serve_stream(
        self, builder: QuicPacketBuilder, space: QuicPacketSpace, stream: AioStream
    ) -> bool:
        """Write this stream's frames; True while it still has something to send."""
        receiver, sender = stream.receiver, stream.sender
        if receiver.stop_pending:
            self._write_stop_sending(builder, stream)
        if sender.reset_pending:
            self._write_reset_stream(builder, stream)
            return False
        if sender._reset_error_code is not None or stream.is_blocked or not _has_data(stream):
            return False
        max_offset = min(
            sender.highest_offset + self._remote_max_data - self._remote_max_data_used,
            stream.max_stream_data_remote,
        )
        self._remote_max_data_used += self._write_stream_data(builder, stream, max_offset)
        pending = sender._pending
        if len(pending):
            if pending[0].start < max_offset:
                return True
            if max_offset < stream.max_stream_data_remote:
                self._rh_conn_blocked[_sid(stream)] = stream
            return False  # MAX_STREAM_DATA or MAX_DATA requeues it
        if sender._pending_eof:
            return True
        sender.buffer_is_empty = True
        return False

    def _write_stream_data(
        self, builder: QuicPacketBuilder, stream: AioStream, max_offset: int
    ) -> int:
        sender = stream.sender
        sid = _sid(stream)
        next_offset = sender.next_offset
        overhead = 3 + size_uint_var(sid) + (size_uint_var(next_offset) if next_offset else 0)
        previous_highest = sender.highest_offset
        frame = sender.get_frame(builder.remaining_flight_space - overhead, max_offset)
        if frame is None:
            return 0
        frame_type = QuicFrameType.STREAM_BASE | 2  # with length
        if frame.offset:
            frame_type |= 4
        if frame.fin:
            frame_type |= 1
        end = frame.offset + len(frame.data)
        buf = builder.start_frame(
            frame_type,
            capacity=overhead,
            handler=self._on_stream_delivery,
            handler_args=(stream, frame.offset, end, frame.fin),
        )
        buf.push_uint_var(sid)
        if frame.offset:
            buf.push_uint_var(frame.offset)
        buf.push_uint16(len(frame.data) | 0x4000)
        buf.push_bytes(frame.data)
        if self._quic_logger is not None and builder.quic_logger_frames is not None:
            builder.quic_logger_frames.append(
                self._quic_logger.encode_stream_frame(frame, stream_id=sid)
            )
        return int(sender.highest_offset - previous_highest)

    def _write_reset_stream(self, builder: QuicPacketBuilder, stream: AioStream) -> None:
        buf = builder.start_frame(
            QuicFrameType.RESET_STREAM,
            capacity=RESET_STREAM_FRAME_CAPACITY,
            handler=self._on_reset_delivery,
            handler_args=(stream,),
        )
        frame = stream.sender.get_reset_frame()
        buf.push_uint_var(frame.stream_id)
        buf.push_uint_var(frame.error_code)
        buf.push_uint_var(frame.final_size)
        if self._quic_logger is not None and builder.quic_logger_frames is not None:
            builder.quic_logger_frames.append(
                self._quic_logger.encode_reset_stream_frame(
                    error_code=frame.error_code,
                    final_size=frame.final_size,
                    stream_id=frame.stream_id,
                )
            )

    def _write_stop_sending(self, builder: QuicPacketBuilder, stream: AioStream) -> None:
        buf = builder.start_frame(
            QuicFrameType.STOP_SENDING,
            capacity=STOP_SENDING_FRAME_CAPACITY,
            handler=self._on_stop_delivery,
            handler_args=(stream,),
        )
        frame = stream.receiver.get_stop_frame()
        buf.push_uint_var(frame.stream_id)
        buf.push_uint_var(frame.error_code)
        if self._quic_logger is not None and builder.quic_logger_frames is not None:
            builder.quic_logger_frames.append(
                self._quic_logger.encode_stop_sending_frame(
                    error_code=frame.error_code, stream_id=frame.stream_id
                )
            )

    def _write_stream_limits(
        self, builder: QuicPacketBuilder, space: QuicPacketSpace, stream: AioStream
    ) -> None:
        """MAX_STREAM_DATA: credit is what the application consumed plus one window."""
        sid = _sid(stream)
        if sid is None or not stream.max_stream_data_local or stream.receiver.is_finished:
            return
        window = self._stream_window(sid)
        target = self._rh_consumed.get(sid, 0) + window
        if target - stream.max_stream_data_local_sent < window // STREAM_CREDIT_STEP:
            return
        buf = builder.start_frame(
            QuicFrameType.MAX_STREAM_DATA,
            capacity=MAX_STREAM_DATA_FRAME_CAPACITY,
            handler=self._on_credit_delivery,
            handler_args=(stream,),
        )
        stream.max_stream_data_local = target
        buf.push_uint_var(sid)
        buf.push_uint_var(target)
        stream.max_stream_data_local_sent = target
        if self._quic_logger is not None and builder.quic_logger_frames is not None:
            builder.quic_logger_frames.append(
                self._quic_logger.encode_max_stream_data_frame(maximum=target, stream_id=sid)
            )

    def _due_connection_limits(self) -> list[Limit]:
        """The connection limit frames due: MAX_DATA follows consumption (raised once
        half a window is unannounced); MAX_STREAMS is batched as aioquic does, until
        the peer has used up half of the last announced credit."""
        max_data = self._local_max_data
        target = self._rh_conn_consumed + self._rh_conn_window
        if target - max_data.sent >= self._rh_conn_window // 2:
            max_data.value = max(max_data.value, target)
        due = [max_data] if max_data.value != max_data.sent else []
        for limit in (self._local_max_streams_bidi, self._local_max_streams_uni):
            if limit.value != limit.sent and limit.sent - limit.used < limit.value - limit.sent:
                due.append(limit)
        return due

    def _write_connection_limits(self, builder: QuicPacketBuilder, space: QuicPacketSpace) -> None:
        """MAX_DATA and MAX_STREAMS, when due (see ``_due_connection_limits``)."""
        for limit in self._due_connection_limits():
            buf = builder.start_frame(
                limit.frame_type,
                capacity=CONNECTION_LIMIT_FRAME_CAPACITY,
                handler=self._on_connection_limit_delivery,
                handler_args=(limit,),
            )
            buf.push_uint_var(limit.value)
            limit.sent = limit.value
            if self._quic_logger is not None and builder.quic_logger_frames is not None:
                builder.quic_logger_frames.append(
                    self._quic_logger.encode_connection_limit_frame(
                        frame_type=limit.frame_type, maximum=limit.value
                    )
                )


def _has_data(stream: AioStream) -> bool:
    sender = stream.sender
    return len(sender._pending) > 0 or bool(sender._pending_eof)


def _sid(stream: AioStream) -> int:
    sid = stream.stream_id
    assert sid is not None  # only crypto streams have none
    return sid


def _peek_stream_id(buf: Buffer) -> int:
    pos = buf.tell()
    sid = int(buf.pull_uint_var())
    buf.seek(pos)
    return sid
