"""A QUIC stream as a ``trio.abc.HalfCloseableStream``.

Both directions are bounded: ``send_all`` blocks while the peer has not
acknowledged ``send_buffer`` bytes, and received bytes are only credited back to
the peer once ``receive_some`` hands them to the application.
"""

from __future__ import annotations

import operator
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from .connection import Connection

#: Application error code for streams aborted by us (reset / STOP_SENDING).
STREAM_ABORTED = 0x10C


#: Bytes every stream may send beyond the connection's send budget: its opening words
#: (a CONNECT head, an HTTP answer) go out however much bulk data other streams queued.
#: Bounded by the stream limit: 16384 streams x 4 KiB = 64 MiB in the worst case.
UNBUDGETED_BYTES = 4096

#: The most a relay (``reverse_http.relay``) reads for one write.
RELAY_CHUNK = 64 * 1024

#: Writes received bytes on at once without blocking; returns how many it took.
Sink = Callable[[bytes], int]


class QuicStream(trio.abc.HalfCloseableStream):
    def __init__(self, conn: Connection, stream_id: int, send_buffer: int) -> None:
        self._conn = conn
        self.stream_id = stream_id
        self._send_buffer = send_buffer
        self._rx: deque[bytes] = deque()
        self._rx_buffered = 0
        self._rx_eof = False
        self._rx_error: str | None = None
        self._tx_eof = False
        self._tx_error: str | None = None
        self._tx_total = 0
        self._closed = False
        self._receiving = False
        self._sending = False
        self._readers = trio.lowlevel.ParkingLot()
        self._writers = trio.lowlevel.ParkingLot()
        self._sink: Sink | None = None
        self._sink_queued = False

    def __repr__(self) -> str:
        return f"<QuicStream {self.stream_id} of {self._conn!r}>"

    @property
    def _hwm(self) -> int:
        """Unacknowledged bytes past which ``send_all`` waits (grows with the path's BDP)."""
        return self._conn.stream_send_limit(self._send_buffer)

    @property
    def _lwm(self) -> int:
        return self._hwm // 2

    # --- called by the connection -------------------------------------------------

    def _on_data(self, data: bytes, end_stream: bool) -> None:
        if data:
            if self._rx_error is None and not self._closed:
                self._rx.append(data)
                self._rx_buffered += len(data)
            else:
                self._conn._released(len(data))
        if end_stream:
            self._rx_eof = True
        if self._readers:
            if self._sink is not None and self._rx and not self._sink_queued:
                # Written once the connection dispatched this batch: one write per
                # stream per batch, as the woken reader's receive_some would do.
                self._sink_queued = True
                self._conn._sink_later(self)
            elif not self._sink_queued:
                self._readers.unpark_all()

    def set_sink(self, sink: Sink | None) -> None:
        """Hand received bytes to ``sink`` while a reader waits with nothing queued.

        For a relay into a TCP socket: the bytes go out from the receive path, with
        no task switch to the waiting reader and back (one scheduler round per hop
        of a request's round trip). What the sink does not take stays queued, and the
        reader, woken, writes it (and sees the socket's errors). Order holds: the
        reader waits in ``receive_some`` only after its previous write completed.
        """
        self._sink = sink

    def _drain_to_sink(self) -> None:
        """Offer what a batch queued to the sink (the connection calls this once per
        dispatch); taken bytes count as read. Wake the reader for the rest or the end."""
        self._sink_queued = False
        rx = self._rx
        sink = self._sink
        if sink is not None and rx and self._readers and self._rx_error is None:
            data = rx[0] if len(rx) == 1 else b"".join(rx)
            rx.clear()
            taken = sink(data)
            if taken:
                self._conn._consumed_later(self, taken)
                data = data[taken:]
            if data:
                rx.append(data)
            self._rx_buffered = len(data)
        if self._readers and (rx or self._rx_eof or self._rx_error is not None):
            self._readers.unpark_all()

    def _on_reset(self, error_code: int) -> None:
        self._rx_error = f"stream reset by peer (code {error_code})"
        self._drop_received()
        self._readers.unpark_all()

    def _drop_received(self) -> None:
        """Forget unread data; it frees connection credit as if it had been read."""
        self._rx.clear()
        dropped, self._rx_buffered = self._rx_buffered, 0
        self._conn._released(dropped)

    def _on_stop_sending(self, error_code: int) -> None:
        self._tx_error = f"peer stopped reading (code {error_code})"
        self._writers.unpark_all()

    def _on_connection_lost(self, reason: str) -> None:
        if self._rx_error is None and not self._rx_eof:
            self._rx_error = reason
        if self._tx_error is None:
            self._tx_error = reason
        self._readers.unpark_all()
        self._writers.unpark_all()

    @property
    def unacked(self) -> int:
        """Bytes written but not yet acknowledged by the peer."""
        if self._tx_error is not None:
            return 0  # a reset send side will never be acknowledged
        return self._conn.stream_unacked(self)

    @property
    def receive_buffered(self) -> int:
        return self._rx_buffered

    def _writer_may_proceed(self) -> bool:
        if self._tx_error is not None or self._closed:
            return True
        return self.unacked < self._lwm and not self._conn._send_budget_exhausted

    def _own_buffer_free(self) -> bool:
        """Nothing but the connection's shared budget could hold this writer back."""
        return self._tx_error is not None or self._closed or self.unacked < self._lwm

    def _send_estimate(self) -> int:
        """Budget a woken writer may take: at most one relay chunk, at most its buffer."""
        return max(1, min(RELAY_CHUNK, self._hwm - self.unacked))

    def send_capacity(self) -> int:
        """Bytes ``send_all`` would take now without waiting (0: it would wait).

        A relay reads only this much from its source, so data a slow tunnel can't
        take stays in the source's kernel buffer, not in our memory.
        """
        shared = self._conn.send_room()
        if shared <= 0 and self._tx_total < UNBUDGETED_BYTES:
            # A tunnel's first bytes (the agent's answer to CONNECT) never
            # wait behind other streams' bulk data for the shared budget.
            shared = UNBUDGETED_BYTES - self._tx_total
        return max(0, min(self._hwm - self.unacked, shared))

    # --- trio.abc.HalfCloseableStream ------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            self._check_writable()
            view = memoryview(data)
            sent_any = False
            try:
                while view:
                    room = self.send_capacity()
                    if room <= 0:
                        await self._wait_writable()
                        continue
                    chunk, view = view[:room], view[room:]
                    self._queue(bytes(chunk))
                    sent_any = True
            except trio.Cancelled:
                if sent_any and view:
                    # A partial write corrupts the byte stream; make that visible.
                    self._abort_send()
                raise
            await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    def send_nowait(self, data: bytes) -> bool:
        """Queue all of ``data`` if the stream takes it now without waiting; else send
        nothing and return False (``send_all`` then waits, or raises what is wrong).

        Not a checkpoint: for a relay whose next step is one (its wait for more input).
        """
        if self._sending or self._closed or self._tx_eof or self._tx_error is not None:
            return False
        if len(data) > self.send_capacity():
            return False
        self._queue(data)
        return True

    def _queue(self, data: bytes) -> None:
        """Hand bytes the send budget has room for to the connection."""
        self._conn._send(self, data, end_stream=False)
        self._tx_total += len(data)

    async def wait_send_all_might_not_block(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            self._check_writable(eof_ok=True)
            if self.send_capacity() <= 0:
                await self._wait_writable()
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    async def _wait_writable(self) -> None:
        while not self._writer_may_proceed():
            # (Re-)register on every round: a wake-up takes us off the list, and the
            # writers that ran before us may have used the budget up again.
            self._conn._want_write_for(self)
            await self._writers.park()
        self._check_writable(eof_ok=True)

    def _check_writable(self, eof_ok: bool = False) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream was closed")
        if self._tx_error is not None:
            raise trio.BrokenResourceError(self._tx_error)
        if self._tx_eof and not eof_ok:
            raise trio.ClosedResourceError("send_eof() was already called")

    async def send_eof(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise trio.ClosedResourceError("stream was closed")
        self._finish_send()

    def _finish_send(self) -> None:
        if self._tx_eof or self._tx_error is not None:
            return
        self._tx_eof = True
        self._conn._send(self, b"", end_stream=True)

    def abort(self) -> None:
        """Abort both directions: the peer sees a reset, not a clean end of stream."""
        self._abort_send()
        if not self._rx_eof and self._rx_error is None and not self._closed:
            self._conn._stop(self, STREAM_ABORTED)
            self._rx_error = "stream aborted"
            self._drop_received()
            self._readers.unpark_all()

    def _abort_send(self) -> None:
        if self._tx_error is None and not self._tx_eof:
            self._tx_error = "send aborted"
            self._conn._reset(self, STREAM_ABORTED)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this stream")
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            # Parking was this call's checkpoint: once woken with data, return in the
            # same scheduler round. A second yield cost every relayed hop (QUIC to TCP)
            # one more round before its write: two per request round trip.
            parked = False
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("stream was closed")
                if self._rx:
                    data = self._take(max_bytes)
                    if not parked:
                        await trio.lowlevel.cancel_shielded_checkpoint()
                    return data
                if self._rx_error is not None:
                    raise trio.BrokenResourceError(self._rx_error)
                if self._rx_eof:
                    if not parked:
                        await trio.lowlevel.cancel_shielded_checkpoint()
                    return b""
                await self._readers.park()
                parked = True
        finally:
            self._receiving = False

    def _take(self, max_bytes: int | None) -> bytes:
        first = self._rx[0]
        if max_bytes is None or len(first) <= max_bytes:
            parts = [self._rx.popleft()]
            size = len(first)
            limit = max_bytes if max_bytes is not None else 256 * 1024
            while self._rx and size + len(self._rx[0]) <= limit:
                nxt = self._rx.popleft()
                parts.append(nxt)
                size += len(nxt)
            data = parts[0] if len(parts) == 1 else b"".join(parts)
        else:
            data = first[:max_bytes]
            self._rx[0] = first[max_bytes:]
        self._rx_buffered -= len(data)
        self._conn._consumed(self, len(data))
        return data

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            if self._tx_error is None and not self._tx_eof:
                if self._sending:
                    self._abort_send()
                else:
                    self._finish_send()
            if not self._rx_eof and self._rx_error is None:
                self._conn._stop(self, STREAM_ABORTED)
            self._drop_received()
            self._readers.unpark_all()
            self._writers.unpark_all()
            self._conn._stream_closed(self)
        await trio.lowlevel.checkpoint()
