"""One QUIC connection driven by one trio task.

:meth:`Connection.run` is the only place that feeds datagrams and time into the
sans-IO ``TunnelQuicConnection``; stream objects enqueue data synchronously and
kick it. It also adds what aioquic leaves out: keepalive PINGs, dead-peer
detection, a handshake deadline, graceful drain before CONNECTION_CLOSE, and
waking blocked writers as acknowledgements free their buffers.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from aioquic.quic import events
from aioquic.quic.connection import QuicConnectionState
from aioquic.tls import verify_certificate

from .protocol import TunnelQuicConnection
from .settings import TransportSettings
from .stream import QuicStream

Address = Any  # socket address tuple as used by the UDP socket
SendDatagrams = Callable[[list[tuple[bytes, Address]]], Awaitable[None]]

#: Inbound datagrams queued for a connection task that has not caught up yet;
#: beyond this they are dropped like a full socket buffer would.
MAX_INBOX = 4096


@dataclass(frozen=True)
class CloseInfo:
    """Why a connection ended."""

    error_code: int
    reason: str
    #: True when the peer closed, False when we did (including timeouts).
    by_peer: bool
    #: "application", "transport", "idle-timeout", "liveness", "handshake-timeout"
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


class Connection:
    def __init__(
        self,
        quic: TunnelQuicConnection,
        settings: TransportSettings,
        send_datagrams: SendDatagrams,
        peer_address: Address,
        *,
        client_ca_file: Path | None = None,
        on_cid_issued: Callable[[bytes], None] | None = None,
        on_cid_retired: Callable[[bytes], None] | None = None,
    ) -> None:
        self._quic = quic
        self._settings = settings
        self._send_datagrams = send_datagrams
        self.peer_address = peer_address
        self._client_ca_file = client_ca_file
        self._on_cid_issued = on_cid_issued
        self._on_cid_retired = on_cid_retired
        self._is_client: bool = quic.configuration.is_client
        self._inbox: deque[tuple[bytes, Address]] = deque()
        self._wake = trio.Event()
        self._streams: dict[int, QuicStream] = {}
        self._closing_streams: set[QuicStream] = set()
        self._want_write: set[QuicStream] = set()
        self._accept_send, self._accept_recv = trio.open_memory_channel[QuicStream](math.inf)
        self._handshake_done = trio.Event()
        self._terminated = trio.Event()
        self._drained = trio.Event()
        self._draining = False
        self._refusing_streams = False
        self._close_requested: tuple[int, str] | None = None
        self._close_seen = False
        self._closed_by_peer = False
        self.close_info: CloseInfo | None = None
        self.alpn: str | None = None
        self._created_at = trio.current_time()
        self._last_rx = self._created_at
        self._last_ping = -math.inf
        self._ping_uid = 0
        self.datagrams_dropped = 0

    def __repr__(self) -> str:
        return f"<Connection {self.peer_address!r}>"

    # --- public API ------------------------------------------------------------------

    @property
    def is_closed(self) -> bool:
        return self._terminated.is_set()

    @property
    def ending(self) -> CloseInfo | None:
        """Why the connection is ending or ended (known before the draining period
        is over); None while it is healthy."""
        if self.close_info is not None:
            return self.close_info
        if self._close_seen:
            return self._info_or_unknown()
        return None

    @property
    def handshake_complete(self) -> bool:
        return self._handshake_done.is_set()

    @property
    def host_cid(self) -> bytes:
        return bytes(self._quic.host_cid)

    def stats(self) -> dict[str, float]:
        """RTT, congestion window and losses, for metrics and logs."""
        loss = self._quic._loss
        return {
            "rtt_seconds": float(loss._rtt_smoothed),
            "congestion_window_bytes": float(loss.congestion_window),
            "bytes_in_flight": float(loss.bytes_in_flight),
            "lost_packets": float(getattr(loss._cc, "lost_packets", 0)),
            "streams": float(len(self._streams)),
        }

    async def wait_handshake(self) -> None:
        """Return once the handshake completed; raise if the connection ended first."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_set_on, self._terminated, nursery.cancel_scope)
            await self._handshake_done.wait()
            nursery.cancel_scope.cancel()
        if not self._handshake_done.is_set():
            raise ConnectionError(self._info_or_unknown())

    async def wait_closed(self) -> CloseInfo:
        await self._terminated.wait()
        return self._info_or_unknown()

    async def open_stream(self) -> QuicStream:
        await trio.lowlevel.checkpoint()
        self._check_open()
        stream_id = self._quic.get_next_available_stream_id()
        stream = QuicStream(self, stream_id, self._settings.stream_send_buffer)
        self._streams[stream_id] = stream
        # get_next_available_stream_id does not reserve the id; an empty write does.
        self._quic.send_stream_data(stream_id, b"", end_stream=False)
        stream._attach(self._quic._streams[stream_id])
        return stream

    async def accept_stream(self) -> QuicStream:
        """Next stream the peer opened; raises ConnectionError once the connection ends."""
        try:
            return await self._accept_recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise ConnectionError(self._info_or_unknown()) from None

    async def close(self, error_code: int = 0, reason: str = "") -> CloseInfo:
        """Let unacknowledged stream data drain, then send CONNECTION_CLOSE."""
        if not self._terminated.is_set() and self._close_requested is None:
            self._draining = True
            self._kick()
            with trio.move_on_after(self._settings.close_drain_timeout):
                await self._drained.wait()
            self._request_close(error_code, reason)
        with trio.move_on_after(self._settings.close_drain_timeout):
            await self._terminated.wait()
        if not self._terminated.is_set():
            self._terminate(self._local_info(error_code, reason, "application"))
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
        """Close now, discarding unsent data; the run task finishes the close."""
        self._request_close(error_code, reason)

    # --- datagram input (called synchronously by the endpoint) --------------------------

    def feed(self, data: bytes, addr: Address) -> None:
        if len(self._inbox) >= MAX_INBOX:
            self.datagrams_dropped += 1
            return
        self._inbox.append((data, addr))
        self._wake.set()

    # --- the connection task ---------------------------------------------------------------

    async def run(self) -> None:
        """Drive the connection until it terminates; cancelling it aborts the connection."""
        self._wake.set()
        try:
            while not self._terminated.is_set():
                deadline = self._next_deadline()
                if not self._wake.is_set():
                    with trio.move_on_at(deadline):
                        await self._wake.wait()
                self._wake = trio.Event()
                self._step(trio.current_time())
                await self._transmit()
        finally:
            if not self._terminated.is_set():
                self._quic.close(error_code=0, reason_phrase="aborted")
                with trio.CancelScope(shield=True), trio.move_on_after(0.5):
                    await self._transmit()
                self._terminate(self._local_info(0, "aborted", "application"))

    def _step(self, now: float) -> None:
        quic = self._quic
        if self._inbox:
            before = quic._close_at
            inbox = self._inbox
            while inbox:
                data, addr = inbox.popleft()
                quic.receive_datagram(data, addr, now)
            if quic._close_at != before:
                self._last_rx = now
        timer = quic.get_timer()
        if timer is not None and now >= timer:
            quic.handle_timer(now)
        self._dispatch_events()
        if self._close_requested is not None:
            code, reason = self._close_requested
            self._close_requested = None
            quic.close(error_code=code, reason_phrase=reason)
        elif not self._terminated.is_set():
            self._check_liveness(now)

    async def _transmit(self) -> None:
        if not self._quic._network_paths:  # a server connection not fed yet
            return
        datagrams = self._quic.datagrams_to_send(now=trio.current_time())
        # NEW_CONNECTION_ID frames surface as events while datagrams are built.
        self._dispatch_events()
        if datagrams:
            await self._send_datagrams(datagrams)
        self._after_io()

    def _after_io(self) -> None:
        if self._want_write:
            ready = [s for s in self._want_write if s._writer_may_proceed()]
            for s in ready:
                self._want_write.discard(s)
                s._writers.unpark_all()
        if self._closing_streams:
            self._reap_streams()
        if (
            self._draining
            and not self._drained.is_set()
            and all(s.unacked == 0 for s in self._streams.values())
        ):
            self._drained.set()

    def _next_deadline(self) -> float:
        timer = self._quic.get_timer()
        deadline = math.inf if timer is None else timer
        return min(deadline, *self._own_deadlines())

    def _own_deadlines(self) -> tuple[float, float]:
        """(probe or handshake deadline, liveness deadline); one expression for waiting
        and checking, so float rounding can never leave a deadline due but unhandled."""
        s = self._settings
        if not self._handshake_done.is_set():
            return self._created_at + s.handshake_timeout, math.inf
        probe_at = max(self._last_rx, self._last_ping) + s.probe_after
        live_until = self._last_rx + s.liveness_timeout if s.liveness_timeout else math.inf
        return probe_at, live_until

    def _check_liveness(self, now: float) -> None:
        first, live_until = self._own_deadlines()
        if not self._handshake_done.is_set():
            if now >= first:
                self._quic.close(error_code=0, reason_phrase="handshake timeout")
                self._terminate(self._local_info(0, "handshake timeout", "handshake-timeout"))
            return
        if now >= live_until:
            self._quic.close(error_code=0, reason_phrase="peer unresponsive")
            timeout = self._settings.liveness_timeout
            self._terminate(
                self._local_info(0, f"no packet from peer for {timeout:g}s", "liveness")
            )
            return
        if now >= first:
            self._ping_uid += 1
            self._quic.send_ping(self._ping_uid)
            self._last_ping = now

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
        if not self._close_seen and quic._close_event is not None:
            # Fail streams now rather than after the closing or draining period.
            self._close_seen = True
            self._closed_by_peer = quic._state == QuicConnectionState.DRAINING
            info = self._terminated_info(quic._close_event)
            for stream in list(self._streams.values()):
                stream._on_connection_lost(f"connection closed: {info}")

    def _on_handshake(self, event: events.HandshakeCompleted) -> None:
        self.alpn = event.alpn_protocol
        self._last_rx = trio.current_time()
        if self._client_ca_file is not None and not self._is_client:
            problem = self._verify_client_certificate()
            if problem:
                self._request_close(0x100 + 42, problem)  # TLS alert bad_certificate
                return
        self._handshake_done.set()

    def _verify_client_certificate(self) -> str | None:
        tls = self._quic.tls
        cert = getattr(tls, "_peer_certificate", None)
        if cert is None:
            return "client certificate required"
        try:
            verify_certificate(
                certificate=cert,
                chain=getattr(tls, "_peer_certificate_chain", []),
                cafile=str(self._client_ca_file),
            )
        except Exception as exc:
            return f"client certificate rejected: {exc}"
        return None

    def _on_stream_data(self, event: events.StreamDataReceived) -> None:
        sid = event.stream_id
        stream = self._streams.get(sid)
        if stream is None:
            if bool(sid & 1) != self._is_client or (not event.data and event.end_stream is False):
                return
            if self._draining or self._refusing_streams or not self._handshake_done.is_set():
                self._quic.reset_stream(sid, 0x10C)
                self._quic.stop_stream(sid, 0x10C)
                return
            stream = QuicStream(self, sid, self._settings.stream_send_buffer)
            aio = self._quic._streams.get(sid)
            if aio is not None:
                stream._attach(aio)
            self._streams[sid] = stream
            self._accept_send.send_nowait(stream)
        stream._on_data(event.data, event.end_stream)

    # --- called by streams ---------------------------------------------------------------

    def _kick(self) -> None:
        self._wake.set()

    def _check_open(self) -> None:
        if self._terminated.is_set() or self._close_requested is not None or self._close_seen:
            raise ConnectionError(self._info_or_unknown())

    def _send(self, stream: QuicStream, data: bytes, end_stream: bool) -> None:
        if self._terminated.is_set():
            raise trio.BrokenResourceError(f"connection closed: {self._info_or_unknown()}")
        try:
            self._quic.send_stream_data(stream.stream_id, data, end_stream)
        except (RuntimeError, ValueError) as exc:
            raise trio.BrokenResourceError(f"stream {stream.stream_id}: {exc}") from None
        if stream._aio is None:
            aio = self._quic._streams.get(stream.stream_id)
            if aio is not None:
                stream._attach(aio)
        self._wake.set()

    def _reset(self, stream: QuicStream, error_code: int) -> None:
        if self._terminated.is_set():
            return
        try:
            self._quic.reset_stream(stream.stream_id, error_code)
        except (RuntimeError, ValueError):
            return
        self._wake.set()

    def _stop(self, stream: QuicStream, error_code: int) -> None:
        if self._terminated.is_set():
            return
        try:
            self._quic.stop_stream(stream.stream_id, error_code)
        except (RuntimeError, ValueError):
            return
        self._wake.set()

    def _consumed(self, stream: QuicStream, nbytes: int) -> None:
        if self._quic.consumed(stream.stream_id, nbytes):
            self._wake.set()

    def _want_write_for(self, stream: QuicStream) -> None:
        self._want_write.add(stream)

    def _stream_closed(self, stream: QuicStream) -> None:
        self._want_write.discard(stream)
        self._closing_streams.add(stream)
        self._wake.set()

    def _reap_streams(self) -> None:
        """Forget locally closed streams once aioquic has discarded them too."""
        aio_streams = self._quic._streams
        done = [s for s in self._closing_streams if s.stream_id not in aio_streams]
        for s in done:
            self._closing_streams.discard(s)
            self._streams.pop(s.stream_id, None)
            self._quic.forget_stream(s.stream_id)

    # --- ending --------------------------------------------------------------------------------

    def _request_close(self, error_code: int, reason: str) -> None:
        if self._terminated.is_set() or self._quic._close_event is not None:
            return
        self._close_requested = (error_code, reason)
        self._wake.set()

    def _terminate(self, info: CloseInfo) -> None:
        if self._terminated.is_set():
            return
        self.close_info = info
        for stream in list(self._streams.values()):
            stream._on_connection_lost(f"connection closed: {info}")
        self._accept_send.close()
        self._drained.set()
        self._terminated.set()
        self._wake.set()

    def _terminated_info(self, event: events.ConnectionTerminated) -> CloseInfo:
        reason = event.reason_phrase or ""
        if reason == "Idle timeout":
            return CloseInfo(event.error_code, reason, False, "idle-timeout")
        kind = "application" if event.frame_type is None else "transport"
        return CloseInfo(event.error_code, reason, self._closed_by_peer, kind)

    def _local_info(self, code: int, reason: str, kind: str) -> CloseInfo:
        return CloseInfo(code, reason, False, kind)

    def _info_or_unknown(self) -> CloseInfo:
        if self.close_info is not None:
            return self.close_info
        event = self._quic._close_event
        if event is not None:
            return self._terminated_info(event)
        return CloseInfo(0, "connection closing", False, "application")


async def _set_on(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
