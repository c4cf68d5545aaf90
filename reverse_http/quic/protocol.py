"""aioquic's ``QuicConnection`` with receive credit that follows consumption.

Stock aioquic doubles a stream's receive window whenever half of it has *arrived*,
so a reader that stops reading cannot stop the peer. Here a stream's credit is
``consumed + window``: the application's reads, reported via :meth:`consumed`,
are what let the peer send more. Still sans-IO: no clock, no sockets.
"""

from __future__ import annotations

from typing import Any

from aioquic.quic.connection import MAX_STREAM_DATA_FRAME_CAPACITY, QuicConnection
from aioquic.quic.packet import QuicFrameType
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.recovery import QuicPacketSpace
from aioquic.quic.stream import QuicStream as AioStream

from . import compat as _compat  # noqa: F401  (verifies the internals used below)
from .congestion import BurstPacer

#: Below this much room in a packet, a STREAM frame is not worth its header.
_MIN_FRAME_ROOM = 64


class TunnelQuicConnection(QuicConnection):
    def __init__(
        self,
        *,
        stream_receive_window: int,
        max_concurrent_streams: int,
        pacing_burst_packets: int = 16,
        request_client_certificate: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._rh_window = stream_receive_window
        self._rh_consumed: dict[int, int] = {}
        self._rh_request_client_cert = request_client_certificate
        # aioquic advertises 128; concurrent CONNECTs need far more.
        limit = self._local_max_streams_bidi
        limit.value = limit.sent = max_concurrent_streams
        self._loss._pacer = BurstPacer(
            max_datagram_size=self._max_datagram_size, burst_packets=pacing_burst_packets
        )

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        if self._rh_request_client_cert:
            self.tls._request_client_certificate = True

    def consumed(self, stream_id: int, nbytes: int) -> bool:
        """Record that the application read ``nbytes``; True when new credit is due.

        Credit is announced once the unannounced part reaches half a window, which
        keeps MAX_STREAM_DATA frames (and connection wake-ups) rare.
        """
        total = self._rh_consumed.get(stream_id, 0) + nbytes
        self._rh_consumed[stream_id] = total
        stream: AioStream | None = self._streams.get(stream_id)
        if stream is None or not stream.max_stream_data_local:
            return False
        due = total + self._rh_window - stream.max_stream_data_local_sent
        return due >= self._rh_window // 2

    def forget_stream(self, stream_id: int) -> None:
        self._rh_consumed.pop(stream_id, None)

    def _write_stream_frame(
        self,
        builder: QuicPacketBuilder,
        space: QuicPacketSpace,
        stream: AioStream,
        max_offset: int,
    ) -> int:
        # aioquic offers every stream with pending data to every packet, even a
        # full one; with many busy streams that walk dominated the CPU profile.
        if builder.remaining_flight_space < _MIN_FRAME_ROOM:
            return 0
        used: int = super()._write_stream_frame(builder, space, stream, max_offset)
        return used

    def _write_stream_limits(
        self, builder: QuicPacketBuilder, space: QuicPacketSpace, stream: AioStream
    ) -> None:
        sid = stream.stream_id
        if sid is None or not stream.max_stream_data_local or stream.receiver.is_finished:
            return
        target = self._rh_consumed.get(sid, 0) + self._rh_window
        if target - stream.max_stream_data_local_sent < self._rh_window // 2:
            return
        stream.max_stream_data_local = target
        buf = builder.start_frame(
            QuicFrameType.MAX_STREAM_DATA,
            capacity=MAX_STREAM_DATA_FRAME_CAPACITY,
            handler=self._on_max_stream_data_delivery,
            handler_args=(stream,),
        )
        buf.push_uint_var(sid)
        buf.push_uint_var(target)
        stream.max_stream_data_local_sent = target
        if self._quic_logger is not None and builder.quic_logger_frames is not None:
            builder.quic_logger_frames.append(
                self._quic_logger.encode_max_stream_data_frame(maximum=target, stream_id=sid)
            )
