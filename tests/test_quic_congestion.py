"""Congestion control: a whole flight lost at once (a NAT rebinding, an outage) halves
the window as RFC 9438 says, instead of collapsing it to two packets."""

from __future__ import annotations

from aioquic.quic.congestion.cubic import CubicCongestionControl
from aioquic.quic.packet import QuicPacketType
from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.tls import Epoch

from reverse_http.quic.congestion import CUBIC, WindowCubicCongestionControl, algorithm_name

MDS = 1452


def flight(cc: CubicCongestionControl, count: int, sent_at: float) -> list[QuicSentPacket]:
    packets = []
    for n in range(count):
        packet = QuicSentPacket(
            epoch=Epoch.ONE_RTT,
            in_flight=True,
            is_ack_eliciting=True,
            is_crypto_packet=False,
            packet_number=n,
            packet_type=QuicPacketType.ONE_RTT,
            sent_time=sent_at,
            sent_bytes=MDS,
        )
        cc.on_packet_sent(packet=packet)
        packets.append(packet)
    return packets


def window_after_losing_a_whole_flight(cc: CubicCongestionControl) -> tuple[int, int]:
    cc.congestion_window = 300 * MDS
    packets = flight(cc, 300, sent_at=1.0)
    cc.on_packets_lost(now=1.1, packets=packets)
    return 300 * MDS, cc.congestion_window


def test_losing_a_whole_flight_keeps_seven_tenths_of_the_window() -> None:
    before, after = window_after_losing_a_whole_flight(
        WindowCubicCongestionControl(max_datagram_size=MDS)
    )
    assert after == int(before * 0.7)
    _, stock = window_after_losing_a_whole_flight(CubicCongestionControl(max_datagram_size=MDS))
    assert stock == 2 * MDS  # what aioquic's own Cubic does


def test_losses_within_one_recovery_period_reduce_once() -> None:
    cc = WindowCubicCongestionControl(max_datagram_size=MDS)
    cc.congestion_window = 100 * MDS
    packets = flight(cc, 100, sent_at=1.0)
    cc.on_packets_lost(now=1.1, packets=packets[:10])
    reduced = cc.congestion_window
    assert reduced == int(100 * MDS * 0.7)
    cc.on_packets_lost(now=1.2, packets=packets[10:20])  # sent before the recovery began
    assert cc.congestion_window == reduced


def test_cubic_means_ours() -> None:
    assert algorithm_name("cubic", 0) == CUBIC
    assert algorithm_name("reno", 0) == "reno"
