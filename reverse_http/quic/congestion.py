"""Congestion control: Reno with a capped window, a pacer, and a packet observer.

aioquic's Reno grows the window without bound on a lossless path (tens of MB on
loopback), and its pacer then spreads sends so thin that throughput halves. A cap
at or above the path's bandwidth-delay product costs nothing and keeps pacing sane.

Every controller of ours starts at a configurable initial window (quic-go's 32
packets by default, not RFC 9002's 10): on a 200 ms path slow start from 10 packets
spends a second, a fifth of a 9 MiB download, before the window reaches the BDP.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from aioquic.quic.congestion.base import (
    K_INITIAL_WINDOW,
    K_MINIMUM_WINDOW,
    QuicCongestionControl,
    register_congestion_control,
)
from aioquic.quic.congestion.cubic import K_CUBIC_LOSS_REDUCTION_FACTOR, CubicCongestionControl
from aioquic.quic.congestion.reno import RenoCongestionControl
from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.quic.recovery import QuicPacketPacer

from .settings import CAPPED_RENO as NAME

#: Names registered with aioquic, by (algorithm, window cap, initial window).
_registered: dict[tuple[str, int, int], str] = {}


class WindowRenoCongestionControl(RenoCongestionControl):
    """aioquic's NewReno, starting at ``initial_window`` packets."""

    def __init__(self, *, max_datagram_size: int, initial_window: int = K_INITIAL_WINDOW) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self.congestion_window = initial_window * max_datagram_size


class CappedRenoCongestionControl(WindowRenoCongestionControl):
    cap: int = 4 * 1024 * 1024

    def on_packet_acked(self, *, now: float, packet: QuicSentPacket) -> None:
        super().on_packet_acked(now=now, packet=packet)
        if self.congestion_window > self.cap:
            self.congestion_window = self.cap


class WindowCubicCongestionControl(CubicCongestionControl):
    """aioquic's Cubic, with the multiplicative decrease applied to the window.

    aioquic takes 0.7 of the bytes still in flight *after* removing the lost ones: when
    a whole flight is lost at once (a NAT rebinding sends it to a dead mapping, an
    outage swallows it) almost nothing is left, and the window collapses to 2 packets
    and creeps back by slow start (a 16 MiB upload on a 50 ms path went from 6 MB/s
    to 0.2 MB/s for 2 s per rebinding). RFC 9438 reduces the window itself, as
    quic-go does.

    It starts at ``initial_window`` packets, and returns there after 2 s without an
    acknowledgement (aioquic's idle restart, :meth:`reset`).
    """

    def __init__(self, *, max_datagram_size: int, initial_window: int = K_INITIAL_WINDOW) -> None:
        self._rh_initial_window = initial_window  # read by reset(), which __init__ calls
        super().__init__(max_datagram_size=max_datagram_size)

    def reset(self) -> None:
        super().reset()
        self.congestion_window = self._rh_initial_window * self._max_datagram_size
        self._W_max = self.congestion_window

    def on_packets_lost(self, *, now: float, packets: Iterable[QuicSentPacket]) -> None:
        window, ssthresh = self.congestion_window, self.ssthresh
        super().on_packets_lost(now=now, packets=packets)
        if self.congestion_window == window and self.ssthresh == ssthresh:
            return  # no new congestion event
        floor = K_MINIMUM_WINDOW * self.additive_increase_factor
        self.ssthresh = max(int(window * K_CUBIC_LOSS_REDUCTION_FACTOR), floor)
        self.congestion_window = self.ssthresh


def _factory(name: str, cap: int, initial_window: int) -> Callable[..., QuicCongestionControl]:
    def make(*, max_datagram_size: int) -> QuicCongestionControl:
        mds, window = max_datagram_size, initial_window
        if name == "cubic":
            return WindowCubicCongestionControl(max_datagram_size=mds, initial_window=window)
        if name == "reno":
            return WindowRenoCongestionControl(max_datagram_size=mds, initial_window=window)
        cc = CappedRenoCongestionControl(max_datagram_size=mds, initial_window=window)
        cc.cap = max(cap, 16 * mds)
        return cc

    return make


def algorithm_name(name: str, cap: int, initial_window: int = K_INITIAL_WINDOW) -> str:
    """Name under which aioquic finds ``name`` (cubic, reno or capped-reno) starting at
    ``initial_window`` packets; aioquic's registry takes names, so each combination in
    use is registered under its own."""
    if name not in ("cubic", "reno", NAME):
        return name
    key = (name, cap if name == NAME else 0, initial_window)
    registered = _registered.get(key)
    if registered is None:
        registered = f"reverse-http-{name}-{key[1]}-{initial_window}"
        register_congestion_control(registered, _factory(*key))
        _registered[key] = registered
    return registered


register_congestion_control(NAME, _factory(NAME, CappedRenoCongestionControl.cap, K_INITIAL_WINDOW))


#: The pacer sends this much faster than the window per round trip while in slow start
#: (Linux TCP's default ratio, ``tcp_pacing_ss_ratio``). At 1x, a paced sender in slow
#: start lags its own window; at 2x, the queue grows while the window is still small, so
#: aioquic's delay-based slow-start exit fires before the bottleneck queue overflows:
#: 9 MiB over 200 ms / 20 Mbit/s, 200-226 drops at 1x, 9-56 at 2x, the same 1.92 MB/s.
SLOW_START_PACING_GAIN = 2.0

#: Once the pacer's bucket is empty, the next send waits for this fraction of the RTT
#: of sending time to accumulate (a fortieth of the window), at most PACING_MAX_WAIT,
#: not for one packet's: on a slow link a paced sender would otherwise wake for every
#: datagram (20 Mbit/s: every 0.6 ms, a service and a ``sendmsg`` each). Linux TCP sends
#: bursts of about 1 ms of its pacing rate for the same reason (TSO autosizing); a
#: fortieth of the window is far below the bottleneck queue a path needs anyway.
PACING_WAIT_RTT_FRACTION = 1 / 40
PACING_MAX_WAIT = 0.005


class BurstPacer(QuicPacketPacer):
    """aioquic's pacer with a configurable burst size, and faster in slow start.

    Stock bursts are 16 datagrams, so each wake-up of the connection task moves
    at most 16 packets; larger bursts amortise the per-wake-up cost of trio and
    epoll. The pacing rate is aioquic's (cwnd / RTT), except in slow start
    (``SLOW_START_PACING_GAIN``); an empty bucket refills for ``PACING_WAIT_RTT_FRACTION``
    of the RTT before the next send, not for one packet.
    """

    def __init__(
        self,
        *,
        max_datagram_size: int,
        burst_packets: int,
        in_slow_start: Callable[[], bool] | None = None,
    ) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self._burst = burst_packets
        self._in_slow_start = in_slow_start
        self._wait = 0.0

    def next_send_time(self, now: float) -> float:
        at = super().next_send_time(now)
        if at is not None:  # None (annotated float in aioquic): the bucket has room
            at = max(at, now + min(self._wait, self.bucket_max))
        return at

    def update_rate(self, congestion_window: int, smoothed_rtt: float) -> None:
        if self._in_slow_start is not None and self._in_slow_start():
            congestion_window = int(congestion_window * SLOW_START_PACING_GAIN)
        super().update_rate(congestion_window, smoothed_rtt)
        self._wait = min(PACING_MAX_WAIT, smoothed_rtt * PACING_WAIT_RTT_FRACTION)
        rate = congestion_window / max(smoothed_rtt, 1e-6)
        mds = self._max_datagram_size
        self.bucket_max = max(2 * mds, min(congestion_window // 4, self._burst * mds)) / rate
        if self.bucket_time > self.bucket_max:
            self.bucket_time = self.bucket_max


class PacketObserver(Protocol):
    def packet_acked(self, pn: int, size: int, now: float) -> None: ...

    def packet_lost(self, pn: int, size: int, now: float) -> bool: ...

    def packet_expired(self, pn: int, size: int) -> None: ...


class ObservedCongestionControl:
    """Any aioquic congestion controller, with every acked and lost packet reported first.

    Path MTU discovery learns from them (probes acknowledged or lost, black holes), and
    a lost probe only leaves the bytes in flight: RFC 8899 section 4.4 says the loss of
    a probe packet is not a congestion signal.
    """

    def __init__(self, inner: QuicCongestionControl, observer: PacketObserver) -> None:
        self._inner = inner
        self._observer = observer
        #: Packets declared lost so far, probes not included (for metrics).
        self.lost_packets = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    # Read for every packet built: plain properties, not a failed lookup and __getattr__.
    @property
    def congestion_window(self) -> int:
        return self._inner.congestion_window

    @property
    def bytes_in_flight(self) -> int:
        return self._inner.bytes_in_flight

    def on_packet_sent(self, *, packet: QuicSentPacket) -> None:
        self._inner.on_packet_sent(packet=packet)

    @property
    def inner(self) -> QuicCongestionControl:
        return self._inner

    def in_slow_start(self) -> bool:
        """As aioquic's controllers decide it: no threshold yet, or the window below it."""
        inner = self._inner
        return inner.ssthresh is None or inner.congestion_window < inner.ssthresh

    def on_packet_acked(self, *, now: float, packet: QuicSentPacket) -> None:
        self._observer.packet_acked(packet.packet_number, packet.sent_bytes, now)
        self._inner.on_packet_acked(now=now, packet=packet)

    def on_packets_expired(self, *, packets: Iterable[QuicSentPacket]) -> None:
        """Packets aioquic stopped tracking without a loss signal (a PTO's retransmission)."""
        packets = list(packets)
        for packet in packets:
            self._observer.packet_expired(packet.packet_number, packet.sent_bytes)
        self._inner.on_packets_expired(packets=packets)

    def on_packets_lost(self, *, now: float, packets: Iterable[QuicSentPacket]) -> None:
        observer = self._observer
        congestion: list[QuicSentPacket] = []
        probes: list[QuicSentPacket] = []
        for packet in packets:
            is_probe = observer.packet_lost(packet.packet_number, packet.sent_bytes, now)
            (probes if is_probe else congestion).append(packet)
        if probes:
            self._inner.on_packets_expired(packets=probes)
        if congestion:
            self.lost_packets += len(congestion)
            self._inner.on_packets_lost(now=now, packets=congestion)
