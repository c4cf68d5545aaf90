"""One QUIC connection: the trio-facing side of a sans-IO ``TunnelQuicConnection``.

A connection has no task. Its endpoint feeds it datagrams (:meth:`datagram_received`)
and its :class:`~.driver.Driver` services it when input arrived, when the
application wrote, or when its deadline is due; servicing is synchronous. It adds
what aioquic leaves out: keepalive PINGs, dead-peer detection, a handshake
deadline, graceful drain before CONNECTION_CLOSE, a bounded queue for stream
opens beyond the peer's limit, and waking writers as acknowledgements free
their buffers.
"""

from __future__ import annotations

import contextlib
import enum
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio
from aioquic.quic import events

from .driver import Driver
from .protocol import TunnelQuicConnection
from .reset import is_reset
from .settings import TransportSettings
from .stream import QuicStream

Address = Any  # socket address tuple as used by the UDP socket


#: Seconds added to aioquic's timers (see ``Connection._next_deadline``).
TIMER_SLACK = 1e-6


class State(enum.Enum):
    """Where a connection is in its life; only ever moves down this list."""

    HANDSHAKE = "handshake"
    OPEN = "open"
    #: close() was called: new streams are refused, sent data is being acknowledged.
    DRAINING = "draining"
    #: CONNECTION_CLOSE sent or received; aioquic's closing or draining period.
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(frozen=True)
class CloseInfo:
    """Why a connection ended."""

    error_code: int
    reason: str
    #: True when the peer closed, False when we did (including timeouts).
    by_peer: bool
    #: "application", "transport", "idle-timeout", "liveness", "handshake-timeout",
    #: "stateless-reset"
    kind: str

    def __str__(self) -> str:
        who = "peer" if self.by_peer else "local"
        reason = f" {self.reason!r}" if self.reason else ""
        return f"{self.kind} close by {who}: code {self.error_code}{reason}"


class ConnectionError(Exception):
    """The connection is gone or never came up."""

    def __init__(self, info: CloseInfo) -> None:
        super().__init__(str(info))
        self.info = info


class StreamLimitError(Exception):
    """No stream could be opened: the peer's stream limit is reached and the queue
    of waiting opens is full."""


#: However much it progresses, a handshake ends after this many handshake timeouts.
HANDSHAKE_CAP_FACTOR = 3

#: Budget waiters woken per service at most; their sends bring the next services.
WAKE_BATCH = 64

#: A connection is serviced (its ACK sent, its streams' data handed on) after this many
#: datagrams even in the middle of a receive batch. A receiver that falls behind reads
#: up to the endpoint's batch of 512 at once, ~30 ms of work: its ACKs came that late
#: and in one clump (one per ~240 datagrams on 50 ms / 100 Mbit/s), the sender's RTT
#: samples swung by as much, and its delay-based slow-start exit missed the queue.
SERVICE_EVERY = 64

#: An open connection lets its endpoint wait a fraction of the smoothed RTT before
#: reading the socket again, so that paced datagrams are read and acknowledged several
#: per wake-up (see ``endpoint.ReceiveHold``), at most RECEIVE_HOLD_MAX; none on a path
#: under RECEIVE_HOLD_MIN_RTT, where the wait would cost latency for little gain. The
#: fraction grows with the RTT (RECEIVE_HOLD_FRACTION_PER_S per second of it): RTT/64
#: at 50 ms, as before (RTT/16 there gained no measurable CPU, only latency), RTT/32 at
#: 100 ms; past RECEIVE_HOLD_KNEE_RTT it grows with the RTT's square, so that 200 ms
#: takes the cap (16 ms: ~27 datagrams per wake-up at 20 Mbit/s, not ~3). RTT/16
#: capped at 12 ms halved the CPU per byte at 200 ms; 16 ms there takes another fifth
#: of the receiver's wake-ups and of the sender's ACKs away (bench/linksim.py, 9 MiB:
#: 353 -> 271 receiver reads, 338 -> 259 sender reads), same throughput, more
#: bottleneck drops (193 -> 244: the sender's bursts follow the batched ACKs). Paths up
#: to the knee keep their hold: with the square from 100 ms on, linksim's 150 ms /
#: 30 Mbit/s download went from 88 to 686 drops (from 150 ms on: 101, 3% less
#: throughput). The cap stays under ACK_DELAY; the wait is part of the RTT the sender
#: measures.
RECEIVE_HOLD_FRACTION_PER_S = 1 / 3.2
RECEIVE_HOLD_KNEE_RTT = 0.15
RECEIVE_HOLD_MAX = 0.016
RECEIVE_HOLD_MIN_RTT = 0.032


def receive_hold_for(smoothed_rtt: float) -> float:
    """The receive hold an open connection with this smoothed RTT allows (seconds)."""
    if smoothed_rtt < RECEIVE_HOLD_MIN_RTT:
        return 0.0
    fraction = smoothed_rtt * RECEIVE_HOLD_FRACTION_PER_S
    if smoothed_rtt > RECEIVE_HOLD_KNEE_RTT:
        fraction *= smoothed_rtt / RECEIVE_HOLD_KNEE_RTT
    return min(smoothed_rtt * fraction, RECEIVE_HOLD_MAX)


class Connection:
    #: A proxy holds thousands of these: no per-instance __dict__.
    __slots__ = (
        "__weakref__",  # the driver's deadline heap refers to connections weakly
        "_accept_recv",
        "_accept_send",
        "_budget_waiters",
        "_cancel_on_close",
        "_close_request",
        "_closing_streams",
        "_created_at",
        "_discarded",
        "_drained",
        "_driver",
        "_ending",
        "_first_peer_address",
        "_handshake_at",
        "_heard",
        "_is_client",
        "_last_ping",
        "_live_for",
        "_on_cid_issued",
        "_on_cid_retired",
        "_opens",
        "_ping_uid",
        "_probe_after",
        "_quic",
        "_refusing_streams",
        "_send_budget_exhausted",
        "_send_hwm",
        "_send_lwm",
        "_settings",
        "_settled",
        "_sink_pending",
        "_stream_send_limit",
        "_streams",
        "_terminated",
        "_timer_at",
        "_unserviced",
        "_want_write",
        "alpn",
        "close_info",
        "state",
    )

    def __init__(
        self,
        quic: TunnelQuicConnection,
        settings: TransportSettings,
        driver: Driver,
        peer_address: Address,
        *,
        on_cid_issued: Callable[[bytes], None] | None = None,
        on_cid_retired: Callable[[bytes], None] | None = None,
    ) -> None:
        self._quic = quic
        self._settings = settings
        self._driver = driver
        self._first_peer_address = peer_address
        self._on_cid_issued = on_cid_issued
        self._on_cid_retired = on_cid_retired
        self._is_client = quic.is_client
        #: Read on every service (settings' properties each cost a call and a min()).
        self._probe_after = settings.probe_after if self._is_client else settings.server_probe_after
        self._live_for = settings.liveness_timeout
        self.state = State.HANDSHAKE
        self._streams: dict[int, QuicStream] = {}
        #: Closed by the application, still known to aioquic (awaiting acknowledgement).
        self._closing_streams: set[int] = set()
        self._discarded: list[int] = []
        #: Streams whose received bytes go to their sink at the end of this dispatch.
        self._sink_pending: list[QuicStream] = []
        #: Writers waiting for their own stream's data to be acknowledged.
        self._want_write: set[QuicStream] = set()
        #: Writers waiting for the connection's send budget, oldest first.
        self._budget_waiters: OrderedDict[QuicStream, None] = OrderedDict()
        self._accept_send, self._accept_recv = trio.open_memory_channel[QuicStream](math.inf)
        self._opens = trio.lowlevel.ParkingLot()
        self._settled = trio.Event()  # handshake done, or the connection ended
        self._heard = trio.lowlevel.ParkingLot()  # tasks waiting for any packet from the peer
        self._terminated = trio.Event()
        self._drained = trio.Event()
        self._refusing_streams = False
        self._close_request: tuple[int, str] | None = None
        self._cancel_on_close: list[trio.CancelScope] = []
        self.close_info: CloseInfo | None = None
        self._ending: CloseInfo | None = None
        self.alpn: str | None = None
        self._created_at = trio.current_time()
        self._handshake_at = math.inf
        self._last_ping = -math.inf
        self._ping_uid = 0
        self._timer_at = math.inf
        #: Datagrams received since the last service.
        self._unserviced = 0
        self._send_hwm = settings.connection_send_buffer
        self._send_lwm = settings.connection_send_buffer // 2
        self._stream_send_limit = settings.stream_send_buffer_limit
        #: The connection's send budget was exhausted; writers wait for it to halve.
        self._send_budget_exhausted = False
        quic.on_stream_acked = self._on_stream_acked
        quic.on_stream_discarded = self._on_stream_discarded
        quic.on_streams_available = self._on_streams_available
        driver.add(self)

    def __repr__(self) -> str:
        return f"<Connection {self.peer_address!r} {self.state.value}>"

    # --- public API ------------------------------------------------------------------

    @property
    def is_closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def ending(self) -> CloseInfo | None:
        """Why the connection is ending or ended (known before the closing period is
        over); None while it is healthy."""
        return self.close_info or self._ending

    @property
    def handshake_complete(self) -> bool:
        return self._handshake_at < math.inf

    @property
    def host_cid(self) -> bytes:
        return bytes(self._quic.host_cid)

    @property
    def peer_address(self) -> Address:
        """Where the peer is now: a NAT rebinding or a migration moves it."""
        return self._quic.current_peer_address or self._first_peer_address

    @property
    def quic(self) -> TunnelQuicConnection:
        return self._quic

    def stats(self) -> dict[str, float]:
        """RTT, congestion window and losses, for metrics and logs."""
        stats = self._quic.stats()
        stats["streams"] = float(len(self._streams))
        return stats

    def cancel_on_close(self, scope: trio.CancelScope) -> None:
        """Cancel ``scope`` when the connection ends (its owner's work depends on it)."""
        if self.is_closed:
            scope.cancel()
        else:
            self._cancel_on_close.append(scope)

    async def wait_handshake(self) -> None:
        """Return once the handshake completed; raise if the connection ended first."""
        await self._settled.wait()
        if not self.handshake_complete or self.is_closed:
            raise ConnectionError(self._info_or_unknown())

    async def wait_closed(self) -> CloseInfo:
        await self._terminated.wait()
        return self._info_or_unknown()

    @property
    def pending_opens(self) -> int:
        """Stream opens waiting for the peer's stream limit."""
        return len(self._opens)

    async def open_stream(self) -> QuicStream:
        """A new bidirectional stream; waits (in order) while the peer's stream limit
        is reached. Raises :class:`StreamLimitError` when too many opens wait already."""
        await trio.lowlevel.checkpoint()
        self._check_open()
        quic = self._quic
        if self._opens or not quic.can_open_stream():
            if len(self._opens) >= self._settings.max_pending_stream_opens:
                raise StreamLimitError(
                    f"{len(self._opens)} stream opens already wait for the peer's stream limit"
                )
            while True:
                try:
                    await self._opens.park()
                except trio.Cancelled:
                    self._on_streams_available()  # pass on a wake-up we cannot use
                    raise
                self._check_open()
                if quic.can_open_stream():
                    break
        stream_id = quic.get_next_available_stream_id()
        stream = QuicStream(self, stream_id, self._settings.stream_send_buffer)
        self._streams[stream_id] = stream
        # get_next_available_stream_id does not reserve the id; an empty write does.
        quic.send_stream_data(stream_id, b"", end_stream=False)
        self._on_streams_available()  # credit for more: wake the next in line
        return stream

    async def accept_stream(self) -> QuicStream:
        """Next stream the peer opened; raises ConnectionError once the connection ends."""
        try:
            return await self._accept_recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise ConnectionError(self._info_or_unknown()) from None

    async def accept_streams(self, limit: int = 256) -> list[QuicStream]:
        """The streams the peer opened since the last call (at least one, at most ``limit``).

        A burst of CONNECTs must not be served one per scheduler round: with
        thousands of busy tunnels a round takes milliseconds, so taking 2000 new
        streams one at a time costs seconds before the last one is even read.
        """
        first = await self.accept_stream()
        streams = [first]
        while len(streams) < limit:
            try:
                streams.append(self._accept_recv.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        return streams

    async def close(self, error_code: int = 0, reason: str = "") -> CloseInfo:
        """Let unacknowledged stream data drain, then send CONNECTION_CLOSE."""
        if self.state in (State.HANDSHAKE, State.OPEN):
            self.state = State.DRAINING
            self._refusing_streams = True
            self._check_drained()
            with trio.move_on_after(self._settings.close_drain_timeout):
                await self._drained.wait()
            self._request_close(error_code, reason)
        with trio.move_on_after(self._settings.close_drain_timeout):
            await self._terminated.wait()
        if not self.is_closed:
            self._terminate(CloseInfo(error_code, reason, False, "application"))
        return self._info_or_unknown()

    def refuse_new_streams(self) -> None:
        """Reset every stream the peer opened and did not get accepted yet, and every
        stream it opens from now on (it has no business opening any).

        Unaccepted streams would otherwise each hold up to a receive window of memory.
        """
        self._refusing_streams = True
        while True:
            try:
                stream = self._accept_recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            stream.abort()
            stream._closed = True
            self._stream_closed(stream)

    def abort(self, error_code: int = 0, reason: str = "") -> None:
        """Close now, discarding unsent data."""
        self._request_close(error_code, reason)

    def abort_now(self, reason: str = "aborted") -> None:
        """Send CONNECTION_CLOSE and end at once (the owner is going away)."""
        if self.is_closed:
            return
        if self.state is not State.CLOSING:
            self._quic.close(error_code=0, reason_phrase=reason)
            self._transmit(trio.current_time())
        self._terminate(CloseInfo(0, reason, False, "application"))

    def _fail(self, reason: str) -> None:
        with contextlib.suppress(Exception):
            self._quic.close(error_code=1, reason_phrase=reason)
            self._transmit(trio.current_time())
        self._terminate(CloseInfo(1, reason, False, "application"))

    # --- input (synchronous, from the endpoint) ------------------------------------------

    def datagram_received(self, data: bytes, addr: Address, now: float) -> None:
        if self.is_closed:
            return
        quic = self._quic
        before = quic.packets_authenticated
        quic.receive_datagram(data, addr, now)
        if (
            quic.packets_authenticated == before
            and self.handshake_complete
            and is_reset(data, quic.peer_reset_tokens())
        ):
            # The peer lost our connection (it restarted, or a load balancer moved us
            # to another proxy): nothing more will get through, reconnect now.
            self._terminate(CloseInfo(0, "stateless reset by peer", True, "stateless-reset"))
            return
        if self._heard and quic.packets_authenticated != before:
            self._heard.unpark_all()
        driver = self._driver
        driver.touch(self)
        self._unserviced += 1
        if self._unserviced >= SERVICE_EVERY:
            driver.flush()

    def receive_hold(self) -> float:
        """Seconds the endpoint may delay reading this connection's next datagrams.

        On a long path a paced sender's datagrams arrive one per wake-up (20 Mbit/s:
        one every 0.6 ms), and each costs a service, an ACK and a relay write; a
        wait of an RTT's small fraction lets several share them. None during the
        handshake or the close, nor on a short path, where it would cost latency.
        """
        if self.state is not State.OPEN:
            return 0.0
        return receive_hold_for(self._quic.smoothed_rtt)

    # --- servicing (synchronous, from the driver) -------------------------------------------

    def _service(self, now: float) -> None:
        self._unserviced = 0
        if self.is_closed:
            return
        quic = self._quic
        # Only when the deadline last scheduled has come (NaN: the driver took it as due):
        # a service for input or a write skips aioquic's timer computation. A deadline
        # that the input brought forward into the past is scheduled below and serviced
        # at once.
        if not self._timer_at > now and quic.has_peer_address:
            timer = quic.get_timer()
            if timer is not None and now >= timer:
                quic.handle_timer(now)
        self._dispatch_events()
        own: tuple[float, float] | None = None
        if self._close_request is not None:
            code, reason = self._close_request
            self._close_request = None
            if self.state is not State.CLOSING and quic.close_event is None:
                quic.close(error_code=code, reason_phrase=reason)
        elif not self.is_closed:
            own = self._check_liveness(now)
        state = self.state
        self._transmit(now)
        if not self.is_closed:
            # The liveness check's deadlines still hold unless the state moved on.
            self._driver.schedule(self, self._next_deadline(own if self.state is state else None))

    def _transmit(self, now: float) -> None:
        quic = self._quic
        if quic.has_peer_address:
            datagrams = quic.datagrams_to_send(now=now)
            # NEW_CONNECTION_ID frames surface as events while datagrams are built.
            self._dispatch_events()
            if datagrams:
                too_big = self._driver.send(datagrams)
                if too_big:
                    quic.datagrams_too_big(too_big, now)
        if self._send_budget_exhausted and quic.unacked_bytes < self._send_lwm:
            self._send_budget_exhausted = False
        if self._budget_waiters and not self._send_budget_exhausted:
            self._wake_budget_waiters()
        self._check_drained()

    def _wake_budget_waiters(self) -> None:
        """Wake the oldest budget waiters, as many as the free budget can take.

        Waking all of them (10,000 parked tunnels) would run every one only for
        most to find the budget used up again. Each woken writer's send brings
        another service, which wakes the next ones while budget is left.
        """
        room = self._send_hwm - self._quic.unacked_bytes
        waiters = self._budget_waiters
        woken = 0
        while waiters and room > 0 and woken < WAKE_BATCH:
            stream, _ = waiters.popitem(last=False)  # a dict's front is O(deleted)
            room -= stream._send_estimate()
            woken += 1
            stream._writers.unpark_all()

    def _kick(self) -> None:
        """Output is pending: service now unless a service is running (it will see it)."""
        driver = self._driver
        driver.touch(self)
        driver.flush()

    def _check_drained(self) -> None:
        if (
            self.state is State.DRAINING
            and not self._drained.is_set()
            and self._quic.unacked_bytes <= 0
        ):
            self._drained.set()

    def _next_deadline(self, own: tuple[float, float] | None = None) -> float:
        """The connection's next deadline; ``own``: its :meth:`_own_deadlines` when the
        caller just computed them and nothing they depend on changed since."""
        timer = self._quic.get_timer() if self._quic.has_peer_address else None
        # A microsecond late: aioquic compares a packet's loss time with ``now`` after
        # floating-point arithmetic, and serviced exactly at the deadline it may find
        # nothing due and ask for the same deadline again (a clock that does not move
        # in between, as trio's MockClock, then spins).
        deadline = math.inf if timer is None else timer + TIMER_SLACK
        first, live_until = self._own_deadlines() if own is None else own
        return min(deadline, first, live_until)

    def silent_for(self) -> float:
        """Seconds since the last packet from the peer (or since the handshake)."""
        return trio.current_time() - self._last_rx

    async def wait_heard_since(self, since: float) -> None:
        """Return once a packet from the peer arrived after ``since`` (trio time), or the
        connection ended."""
        while self._last_rx <= since and not self.is_closed:
            await self._heard.park()

    @property
    def _last_rx(self) -> float:
        rx = self._quic.last_authenticated_rx
        return max(self._handshake_at if rx is None else rx, self._handshake_at)

    def _own_deadlines(self) -> tuple[float, float]:
        """(probe or handshake deadline, liveness deadline); one expression for waiting
        and checking, so float rounding can never leave a deadline due but unhandled."""
        s = self._settings
        if not self.handshake_complete:
            # An idle timeout, as quic-go's: a handshake that makes progress (a slow
            # peer, or our own loaded loop) is not thrown away and started over.
            rx = self._quic.last_authenticated_rx
            idle_since = self._created_at if rx is None else max(rx, self._created_at)
            cap = self._created_at + HANDSHAKE_CAP_FACTOR * s.handshake_timeout
            return min(idle_since + s.handshake_timeout, cap), math.inf
        if self.state is State.CLOSING:
            return math.inf, math.inf
        last_rx = self._last_rx
        probe_at = max(last_rx, self._last_ping) + self._probe_after
        live_until = last_rx + self._live_for if self._live_for else math.inf
        return probe_at, live_until

    def _check_liveness(self, now: float) -> tuple[float, float] | None:
        """Ping, or give up on, a quiet peer; returns the deadlines it checked when it
        did neither (the service schedules them without computing them again)."""
        first, live_until = self._own_deadlines()
        if not self.handshake_complete:
            if now >= first:
                self._quic.close(error_code=0, reason_phrase="handshake timeout")
                self._transmit(now)
                self._terminate(CloseInfo(0, "handshake timeout", False, "handshake-timeout"))
            return None
        if now >= live_until:
            self._quic.close(error_code=0, reason_phrase="peer unresponsive")
            self._transmit(now)
            timeout = self._settings.liveness_timeout
            self._terminate(
                CloseInfo(0, f"no packet from peer for {timeout:g}s", False, "liveness")
            )
            return None
        if now >= first:
            self._ping_uid += 1
            self._quic.send_ping(self._ping_uid)
            self._last_ping = now
            return None
        return first, live_until

    def _dispatch_events(self) -> None:
        quic = self._quic
        while (event := quic.next_event()) is not None:
            if isinstance(event, events.StreamDataReceived):
                self._on_stream_data(event)
            elif isinstance(event, events.StreamReset):
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    stream._on_reset(event.error_code)
            elif isinstance(event, events.StopSendingReceived):
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    stream._on_stop_sending(event.error_code)
            elif isinstance(event, events.ConnectionIdIssued):
                if self._on_cid_issued is not None:
                    self._on_cid_issued(event.connection_id)
            elif isinstance(event, events.ConnectionIdRetired):
                if self._on_cid_retired is not None:
                    self._on_cid_retired(event.connection_id)
            elif isinstance(event, events.HandshakeCompleted):
                self._on_handshake(event)
            elif isinstance(event, events.ConnectionTerminated):
                self._terminate(self._terminated_info(event))
        if self._sink_pending:
            pending, self._sink_pending = self._sink_pending, []
            for stream in pending:
                stream._drain_to_sink()
        if self._discarded:
            self._forget_discarded()
        close_event = quic.close_event
        if self._ending is None and close_event is not None:
            # Fail streams now rather than after the closing or draining period.
            self._ending = info = self._terminated_info(close_event, quic.closed_by_peer)
            if self.state is not State.CLOSED:
                self.state = State.CLOSING
            self._settled.set()
            for stream in list(self._streams.values()):
                stream._on_connection_lost(f"connection closed: {info}")
            self._opens.unpark_all()
            self._heard.unpark_all()

    def _on_handshake(self, event: events.HandshakeCompleted) -> None:
        self.alpn = event.alpn_protocol
        self._handshake_at = trio.current_time()
        if self.state is State.HANDSHAKE:
            self.state = State.OPEN
        self._settled.set()

    def _on_stream_data(self, event: events.StreamDataReceived) -> None:
        sid = event.stream_id
        stream = self._streams.get(sid)
        if stream is None:
            if bool(sid & 1) != self._is_client or (not event.data and event.end_stream is False):
                return
            # A stream may arrive before our handshake completes (its packet overtook
            # a lost or late Finished): it waits in the accept queue like any other.
            if self._refusing_streams:
                self._quic.released(len(event.data))
                with contextlib.suppress(ValueError, RuntimeError):
                    self._quic.reset_stream(sid, 0x10C)
                    self._quic.stop_stream(sid, 0x10C)
                return
            stream = QuicStream(self, sid, self._settings.stream_send_buffer)
            self._streams[sid] = stream
            self._accept_send.send_nowait(stream)
            # A STOP_SENDING that overtook the stream's first data had no stream to tell
            # (its event was dropped): without this the application's writes and its
            # close would fail on aioquic's reset sender.
            stopped = self._quic.stopped_by_peer(sid)
            if stopped is not None:
                stream._on_stop_sending(stopped)
        stream._on_data(event.data, event.end_stream)

    # --- called by the protocol layer --------------------------------------------------------

    def _on_stream_acked(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None and stream in self._want_write and stream._own_buffer_free():
            self._want_write.discard(stream)
            if self._send_budget_exhausted:
                self._budget_waiters[stream] = None
            else:
                stream._writers.unpark_all()

    def _on_stream_discarded(self, stream_id: int) -> None:
        # Events of this stream may still be queued: forget it once they are dispatched.
        self._discarded.append(stream_id)

    def _forget_discarded(self) -> None:
        for sid in self._discarded:
            if sid in self._closing_streams:
                self._closing_streams.discard(sid)
                self._streams.pop(sid, None)
        self._discarded.clear()

    def _on_streams_available(self) -> None:
        quic = self._quic
        if self._opens and quic.can_open_stream():
            self._opens.unpark()

    # --- called by streams ---------------------------------------------------------------

    def _check_open(self) -> None:
        if self.state is not State.OPEN or self._close_request is not None:
            raise ConnectionError(self._info_or_unknown())

    def stream_send_limit(self, base: int) -> int:
        """A stream's send buffer: twice the congestion window, so one stream can fill a
        long fat path, between ``base`` and the settings' limit."""
        limit = self._stream_send_limit
        if limit <= base:
            return base
        return max(base, min(limit, 2 * self._quic.congestion_window))

    def send_room(self) -> int:
        """Bytes the connection's send budget still allows."""
        room = self._send_hwm - self._quic.unacked_bytes
        if room <= 0:
            self._send_budget_exhausted = True
        return room

    def _send(self, stream: QuicStream, data: bytes, end_stream: bool) -> None:
        if self.is_closed:
            raise trio.BrokenResourceError(f"connection closed: {self._info_or_unknown()}")
        try:
            self._quic.send_stream_data(stream.stream_id, data, end_stream)
        except (RuntimeError, ValueError) as exc:
            raise trio.BrokenResourceError(f"stream {stream.stream_id}: {exc}") from None
        self._kick()

    def _reset(self, stream: QuicStream, error_code: int) -> None:
        if self.is_closed:
            return
        try:
            self._quic.reset_stream(stream.stream_id, error_code)
        except (RuntimeError, ValueError):
            return
        self._kick()

    def _stop(self, stream: QuicStream, error_code: int) -> None:
        if self.is_closed:
            return
        try:
            self._quic.stop_stream(stream.stream_id, error_code)
        except (RuntimeError, ValueError):
            return
        self._kick()

    def _consumed(self, stream: QuicStream, nbytes: int) -> None:
        if self._quic.consumed(stream.stream_id, nbytes):
            self._kick()

    def _sink_later(self, stream: QuicStream) -> None:
        self._sink_pending.append(stream)

    def _consumed_later(self, stream: QuicStream, nbytes: int) -> None:
        """:meth:`_consumed` from inside a service (a stream's sink took received
        bytes): credit that falls due goes out in the same flush, not re-entered."""
        if self._quic.consumed(stream.stream_id, nbytes):
            self._driver.touch(self)

    def _released(self, nbytes: int) -> None:
        if nbytes and self._quic.released(nbytes):
            self._kick()

    def _want_write_for(self, stream: QuicStream) -> None:
        if stream._own_buffer_free():
            self._budget_waiters[stream] = None
        else:
            self._want_write.add(stream)

    def _stream_closed(self, stream: QuicStream) -> None:
        self._want_write.discard(stream)
        self._budget_waiters.pop(stream, None)
        sid = stream.stream_id
        if self._quic.has_stream(sid):
            self._closing_streams.add(sid)
        else:
            self._streams.pop(sid, None)

    def stream_unacked(self, stream: QuicStream) -> int:
        """Bytes of the stream's send buffer that count against it (``QuicStream._hwm``).

        After a loss everything sent past the gap stays buffered until the
        retransmission is acknowledged, about two round trips later (detection, then
        the repair): counting those bytes stalled a long link's sender after every loss
        (200 ms at 20 Mbit/s: its in-flight halved twice per transfer). Bytes the peer
        acknowledged past a gap count only as far as the buffer would outgrow the
        settings' limit (the memory bound), so a stream keeps sending at the path's rate
        during repair while never holding more than ``stream_send_buffer_max``.
        """
        quic, sid = self._quic, stream.stream_id
        held = quic.stream_unacked(sid)
        ahead = quic.stream_acked_ahead(sid) if held else 0
        if not ahead:
            return held
        slack = self._stream_send_limit - stream._hwm
        return max(held - ahead, held - slack)

    # --- ending --------------------------------------------------------------------------------

    def _request_close(self, error_code: int, reason: str) -> None:
        if self.state in (State.CLOSING, State.CLOSED) or self._quic.close_event is not None:
            return
        self._close_request = (error_code, reason)
        self._kick()

    def _terminate(self, info: CloseInfo) -> None:
        if self.is_closed:
            return
        self.close_info = info
        self.state = State.CLOSED
        for stream in list(self._streams.values()):
            stream._on_connection_lost(f"connection closed: {info}")
        self._accept_send.close()
        self._opens.unpark_all()
        self._heard.unpark_all()
        self._drained.set()
        self._settled.set()
        self._terminated.set()
        self._driver.remove(self)
        for scope in self._cancel_on_close:
            scope.cancel()
        self._cancel_on_close.clear()

    def _terminated_info(
        self, event: events.ConnectionTerminated, by_peer: bool | None = None
    ) -> CloseInfo:
        reason = event.reason_phrase or ""
        if reason == "Idle timeout":
            return CloseInfo(event.error_code, reason, False, "idle-timeout")
        kind = "application" if event.frame_type is None else "transport"
        if by_peer is None:
            by_peer = self._ending.by_peer if self._ending is not None else False
        return CloseInfo(event.error_code, reason, by_peer, kind)

    def _info_or_unknown(self) -> CloseInfo:
        if self.close_info is not None:
            return self.close_info
        if self._ending is not None:
            return self._ending
        return CloseInfo(0, "connection closing", False, "application")
