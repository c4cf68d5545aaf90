"""Receive coalescing: on a long path the endpoint waits a small fraction of the RTT
before reading again while datagrams come densely, so that paced datagrams are read,
serviced and acknowledged several per wake-up; never after a lull, nor on a short path
or while a connection that allows no wait is active."""

from __future__ import annotations

import math
import socket
from typing import Any

import trio
import trio.testing

from reverse_http.devcerts import CertFiles
from reverse_http.quic import TransportSettings
from reverse_http.quic.connection import (
    RECEIVE_HOLD_KNEE_RTT,
    RECEIVE_HOLD_MAX,
    RECEIVE_HOLD_MIN_RTT,
    receive_hold_for,
)
from reverse_http.quic.driver import Driver
from reverse_http.quic.endpoint import DENSE_GAP, NO_HOLD_PERIOD, ReceiveHold, UdpEndpoint
from reverse_http.quic.protocol import ACK_DELAY
from tests.quic_memory import linked

HOLD = 0.002


def test_no_hold_after_a_lull() -> None:
    policy = ReceiveHold()
    # the first batch ever, and one after a long silence, are not followed by a wait
    assert policy.after_batch(10.0, 10.0001, HOLD) == 0.0
    assert policy.after_batch(11.0, 11.0001, HOLD) == 0.0


def test_dense_batches_are_held_back_while_they_stay_dense() -> None:
    policy = ReceiveHold()
    assert policy.after_batch(1.0, 1.0001, HOLD) == 0.0
    # the next datagram came 0.6 ms after the last batch: dense
    assert policy.after_batch(1.0007, 1.0008, HOLD) == HOLD
    # read at once after the wait: still dense
    assert policy.after_batch(1.0028, 1.0029, HOLD) == HOLD
    # datagrams stop for longer than the hold plus DENSE_GAP: the next batch is read
    # without a wait after it
    late = 1.0029 + HOLD + DENSE_GAP + 0.001
    assert policy.after_batch(late, late + 0.0001, HOLD) == 0.0


def test_a_connection_without_allowance_stops_holds_for_a_while() -> None:
    policy = ReceiveHold()
    policy.after_batch(1.0, 1.0001, HOLD)
    assert policy.after_batch(1.0005, 1.0006, HOLD) == HOLD
    # a short path's connection was serviced: its datagrams must not wait
    assert policy.after_batch(1.0027, 1.0028, 0.0) == 0.0
    t = 1.0028
    while t < 1.0028 + NO_HOLD_PERIOD - 0.001:
        t += 0.0005
        assert policy.after_batch(t, t + 0.0001, HOLD) == 0.0
        t += 0.0001
    t = 1.0028 + NO_HOLD_PERIOD + 0.0001
    assert policy.after_batch(t, t + 0.0001, HOLD) == HOLD


class FakeConn:
    def __init__(self, hold: float) -> None:
        self.hold = hold
        self.serviced = 0
        self._timer_at = math.inf

    def receive_hold(self) -> float:
        return self.hold

    def _service(self, now: float) -> None:
        self.serviced += 1


async def test_driver_takes_the_least_hold_of_the_connections_serviced() -> None:
    driver = Driver(lambda datagrams: None)
    long_path, short_path = FakeConn(HOLD), FakeConn(0.0)
    assert driver.take_hold() == 0.0  # nothing serviced: no wait
    driver.touch(long_path)  # type: ignore[arg-type]
    driver.flush()
    assert driver.take_hold() == HOLD
    assert driver.take_hold() == 0.0  # taken: nothing serviced since
    driver.touch(long_path)  # type: ignore[arg-type]
    driver.flush()
    driver.touch(short_path)  # type: ignore[arg-type]
    driver.flush()
    assert driver.take_hold() == 0.0
    assert (long_path.serviced, short_path.serviced) == (2, 1)


async def test_a_connection_allows_a_hold_only_on_a_long_path(
    certs: CertFiles, autojump_clock: trio.testing.MockClock
) -> None:
    for one_way, expected in ((0.15, RECEIVE_HOLD_MAX), (0.0005, 0.0)):
        async with linked(certs, TransportSettings()) as (link, client):
            link.delay = one_way
            assert client.receive_hold() == 0.0  # no wait during the handshake
            server = await link.server_conn()
            await client.wait_handshake()
            mine = await client.open_stream()
            for _ in range(5):  # a few round trips for the smoothed RTT
                await mine.send_all(b"ping")
                await trio.sleep(4 * one_way + 0.05)
            assert client.receive_hold() == expected
            assert server.receive_hold() == expected


def test_the_hold_scales_with_the_rtt_between_a_floor_and_a_cap() -> None:
    # a short path (LAN, same region) is never held: the wait would be latency
    assert receive_hold_for(0.002) == 0.0
    assert receive_hold_for(RECEIVE_HOLD_MIN_RTT - 0.001) == 0.0
    # from the floor on, a fraction of the RTT that grows with it: 50 ms -> RTT/64
    # (~0.8 ms, as before: more cost throughput there), 100 ms -> RTT/32
    assert abs(receive_hold_for(0.05) - 0.05 / 64) < 1e-9
    assert abs(receive_hold_for(0.1) - 0.1 / 32) < 1e-9
    # up to the knee the fraction stays linear in the RTT (150 ms -> RTT/21)
    assert abs(receive_hold_for(RECEIVE_HOLD_KNEE_RTT) - 0.15 * 0.15 / 3.2) < 1e-9
    # a 200 ms path takes the cap: at 20 Mbit/s ~27 datagrams per wake-up, not ~3
    assert receive_hold_for(0.2) == RECEIVE_HOLD_MAX
    assert RECEIVE_HOLD_MAX / (1400 * 8 / 20e6) > 25
    assert receive_hold_for(2.0) == RECEIVE_HOLD_MAX
    # the hold must stay small next to the ACK delay the peer allows for
    assert RECEIVE_HOLD_MAX < ACK_DELAY


async def test_the_receive_loop_reads_dense_datagrams_several_per_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """20 Mbit/s pacing: a datagram every 0.6 ms; with a 2 ms hold, several per batch."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    endpoint = UdpEndpoint(ours, connected_peer="peer")
    received: list[Any] = []
    batches: list[int] = []

    def dispatch(data: bytes, addr: Any) -> None:
        received.append(data)

    def after_batch() -> None:
        batches.append(len(received))

    async def run(hold: float) -> tuple[int, int]:
        received.clear()
        batches.clear()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(endpoint.receive_loop, dispatch, after_batch, lambda: hold)
            for i in range(200):
                theirs.send(b"%d" % i)
                await trio.sleep(0.0006)
            await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        return len(received), len(batches)

    try:
        got, batch_count = await run(HOLD)
        assert got == 200
        assert batch_count < 200 / 2.5, batch_count
        # allowing no hold, each datagram is its own batch, as before
        got, batch_count = await run(0.0)
        assert (got, batch_count) == (200, 200)
    finally:
        ours.close()
        theirs.close()


def wake_ups(hold: float, spacing: float, seconds: float) -> tuple[int, int]:
    """Wake-ups of a receive loop under ReceiveHold for datagrams arriving every
    ``spacing`` seconds: each reads all that arrived, then waits the hold it returns."""
    policy = ReceiveHold()
    arrivals = [1.0 + i * spacing for i in range(round(seconds / spacing))]
    wakes, i, now = 0, 0, arrivals[0]
    while i < len(arrivals):
        now = max(now, arrivals[i])
        started = now
        while i < len(arrivals) and arrivals[i] <= now:
            i += 1
        wakes += 1
        ended = now + 0.0001  # the batch's service
        now = ended + policy.after_batch(started, ended, hold)
    return wakes, len(arrivals)


def test_a_200_ms_path_reads_a_second_of_20_mbit_in_few_wake_ups() -> None:
    """200 ms / 20 Mbit/s (a 1400-byte datagram every 0.56 ms): each wake-up reads,
    acknowledges and relays about 27 datagrams (12 ms held: about 20)."""
    spacing = 1400 * 8 / 20e6
    wakes, datagrams = wake_ups(receive_hold_for(0.2), spacing, 1.0)
    assert datagrams == 1786
    assert wakes <= 1 + datagrams / 27, wakes
    # the hold is all of it: without one, a wake-up per datagram
    assert wake_ups(0.0, spacing, 1.0) == (datagrams, datagrams)
    # a 100 ms path keeps its RTT/32 (~3 ms: ~6 datagrams per wake-up)
    wakes_100, _ = wake_ups(receive_hold_for(0.1), spacing, 1.0)
    assert datagrams / 7 <= wakes_100 <= datagrams / 5, wakes_100
