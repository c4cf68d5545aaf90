"""Congestion control: a whole flight lost at once (a NAT rebinding, an outage) halves
the window as RFC 9438 says, instead of collapsing it to two packets; every controller
starts (and Cubic restarts after idle) at the configured initial window."""

from __future__ import annotations

import pytest
from aioquic.quic.congestion.base import QuicCongestionControl, create_congestion_control
from aioquic.quic.congestion.cubic import CubicCongestionControl
from aioquic.quic.congestion.reno import RenoCongestionControl
from aioquic.quic.packet import QuicPacketType
from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.tls import Epoch

from reverse_http.quic.congestion import (
    SLOW_START_PACING_GAIN,
    BurstPacer,
    CappedRenoCongestionControl,
    ObservedCongestionControl,
    WindowCubicCongestionControl,
    WindowRenoCongestionControl,
    algorithm_name,
)
from reverse_http.quic.settings import ClientTls, TransportSettings, client_configuration

MDS = 1452


def flight(
    cc: QuicCongestionControl, count: int, sent_at: float, first: int = 0
) -> list[QuicSentPacket]:
    packets = []
    for n in range(first, first + count):
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


def test_each_algorithm_is_ours_at_its_initial_window() -> None:
    made = {
        name: create_congestion_control(algorithm_name(name, 64 * MDS, 32), max_datagram_size=MDS)
        for name in ("cubic", "reno", "capped-reno")
    }
    assert type(made["cubic"]) is WindowCubicCongestionControl
    assert type(made["reno"]) is WindowRenoCongestionControl
    assert type(made["capped-reno"]) is CappedRenoCongestionControl
    assert {cc.congestion_window for cc in made.values()} == {32 * MDS}
    assert algorithm_name("cubic", 0, 32) == algorithm_name("cubic", 1, 32)  # cap: reno only
    assert algorithm_name("cubic", 0, 32) != algorithm_name("cubic", 0, 20)
    assert algorithm_name("bbr", 0, 32) == "bbr"  # unknown: left to aioquic to refuse


@pytest.mark.parametrize("name", ["cubic", "reno", "capped-reno"])
def test_the_transport_setting_reaches_the_controller(name: str) -> None:
    """The setting travels in the aioquic configuration a connection is made from."""
    settings = TransportSettings(congestion_control=name, initial_congestion_window=20)
    cfg = client_configuration(settings, ClientTls(insecure_skip_verify=True), "example.test")
    cc = create_congestion_control(cfg.congestion_control_algorithm, max_datagram_size=1200)
    assert cc.congestion_window == 20 * 1200
    assert TransportSettings().initial_congestion_window == 32  # quic-go's default


def test_initial_window_out_of_range_is_refused() -> None:
    for packets in (1, 1001):
        with pytest.raises(ValueError, match="initial congestion window"):
            TransportSettings(initial_congestion_window=packets)


def slow_start_and_loss(cc: QuicCongestionControl) -> tuple[int, int]:
    """The window after one flight acknowledged in slow start, then after a loss."""
    start = cc.congestion_window
    packets = flight(cc, 10, sent_at=1.0)
    for packet in packets:
        cc.on_packet_acked(now=1.2, packet=packet)
    grown = cc.congestion_window - start
    lost = flight(cc, 10, sent_at=1.3, first=10)
    cc.on_packets_lost(now=1.5, packets=lost[:1])
    return grown, cc.congestion_window


@pytest.mark.parametrize(
    ("ours", "reference"),
    [
        # the window-based loss reduction above, from aioquic's 10-packet start
        (WindowCubicCongestionControl, WindowCubicCongestionControl),
        (WindowRenoCongestionControl, RenoCongestionControl),
    ],
)
def test_growth_and_loss_reaction_are_unchanged(
    ours: type[QuicCongestionControl], reference: type[QuicCongestionControl]
) -> None:
    """Only the start differs: one byte of window per byte acked in slow start, and a
    loss reduces the window by the algorithm's factor, as from the same window with
    aioquic's initial window."""
    cc = ours(max_datagram_size=MDS, initial_window=32)  # type: ignore[call-arg]
    assert cc.congestion_window == 32 * MDS
    before = reference(max_datagram_size=MDS)
    assert before.congestion_window == 10 * MDS  # RFC 9002's, aioquic's
    before.congestion_window = 32 * MDS
    grown, after_loss = slow_start_and_loss(cc)
    assert grown == 10 * MDS
    assert (grown, after_loss) == slow_start_and_loss(before)
    factor = 0.7 if ours is WindowCubicCongestionControl else 0.5
    assert after_loss == int(42 * MDS * factor)


def test_cubic_restarts_at_the_initial_window_after_idle() -> None:
    cc = WindowCubicCongestionControl(max_datagram_size=MDS, initial_window=32)
    packets = flight(cc, 10, sent_at=1.0)
    for packet in packets:
        cc.on_packet_acked(now=1.2, packet=packet)
    cc.congestion_window = 400 * MDS
    flight(cc, 1, sent_at=1.0 + 2.5, first=10)  # 2.5 s after the last acknowledged send
    assert cc.congestion_window == 32 * MDS
    assert cc.ssthresh is None  # slow start again


def test_persistent_congestion_still_collapses_to_the_minimum() -> None:
    """RFC 9002 7.6.2: persistent congestion means the minimum window, not the initial."""
    for cc in (
        WindowCubicCongestionControl(max_datagram_size=MDS, initial_window=32),
        WindowRenoCongestionControl(max_datagram_size=MDS, initial_window=32),
    ):
        cc.on_persistent_congestion()
        assert cc.congestion_window == 2 * MDS


def test_the_pacer_runs_at_twice_the_window_in_slow_start_only() -> None:
    slow_start = [True]
    pacer = BurstPacer(max_datagram_size=MDS, burst_packets=64, in_slow_start=lambda: slow_start[0])
    pacer.update_rate(64 * MDS, 0.2)
    fast = pacer.packet_time
    slow_start[0] = False
    pacer.update_rate(64 * MDS, 0.2)
    assert pacer.packet_time == pytest.approx(0.2 / 64)  # aioquic's: cwnd per RTT
    assert fast == pytest.approx(pacer.packet_time / SLOW_START_PACING_GAIN)
    plain = BurstPacer(max_datagram_size=MDS, burst_packets=64)
    plain.update_rate(64 * MDS, 0.2)
    assert plain.packet_time == pacer.packet_time


def test_a_connection_paces_by_its_own_controllers_slow_start() -> None:
    from reverse_http.quic.protocol import TunnelQuicConnection

    cfg = client_configuration(
        TransportSettings(), ClientTls(insecure_skip_verify=True), "example.test"
    )
    conn = TunnelQuicConnection(
        configuration=cfg, stream_receive_window=1 << 20, max_concurrent_streams=16
    )
    observed = conn._loss._cc
    assert isinstance(observed, ObservedCongestionControl)
    assert observed.in_slow_start()
    observed.inner.ssthresh = observed.congestion_window
    assert not observed.in_slow_start()
    pacer = conn._loss._pacer
    assert isinstance(pacer, BurstPacer)
    pacer.update_rate(observed.congestion_window, 0.2)
    after = pacer.packet_time
    observed.inner.ssthresh = None
    pacer.update_rate(observed.congestion_window, 0.2)
    assert pacer.packet_time == pytest.approx(after / SLOW_START_PACING_GAIN)


def _drain(pacer: BurstPacer, now: float) -> int:
    """Packets the pacer lets out at ``now`` before it asks to wait."""
    sent = 0
    while pacer.next_send_time(now) is None:
        pacer.update_after_send(now)
        sent += 1
    return sent


def test_an_empty_pacer_waits_for_a_batch_on_a_long_path() -> None:
    """200 ms / 20 Mbit/s: the sender wakes every 5 ms for ~9 packets, not every 0.6 ms."""
    pacer = BurstPacer(max_datagram_size=MDS, burst_packets=64)
    window, rtt = 500_000, 0.2  # one BDP of 20 Mbit/s
    pacer.update_rate(window, rtt)
    assert pacer.packet_time == pytest.approx(MDS / (window / rtt))
    now = 10.0
    _drain(pacer, now)
    at = pacer.next_send_time(now)
    assert at is not None and at - now == pytest.approx(0.005)  # not one packet_time
    wakes, sent = 0, 0
    while now < 11.0:  # one second of sending, paced
        now = pacer.next_send_time(now) or now
        wakes += 1
        sent += _drain(pacer, now)
    assert 195 <= wakes <= 205
    assert sent == pytest.approx(window / rtt / MDS, rel=0.05)  # the rate is unchanged


def test_an_empty_pacer_on_a_short_path_waits_a_fortieth_of_the_rtt_or_one_packet() -> None:
    pacer = BurstPacer(max_datagram_size=MDS, burst_packets=64)
    pacer.update_rate(625_000, 0.05)  # 50 ms / 100 Mbit/s
    _drain(pacer, 5.0)
    at = pacer.next_send_time(5.0)
    assert at is not None and at - 5.0 == pytest.approx(0.05 / 40)
    pacer.update_rate(64 * MDS, 0.00002)  # loopback: one packet's time, as aioquic
    _drain(pacer, 6.0)
    at = pacer.next_send_time(6.0)
    assert pacer.packet_time is not None and pacer.packet_time > 0.00002 / 40
    assert at is not None and at - 6.0 == pytest.approx(pacer.packet_time)
