"""Receive windows that grow with the bandwidth-delay product: the tuner on a fake
clock, then one stream over an in-memory path with a 50 ms round trip."""

from __future__ import annotations

import trio
import trio.testing

from reverse_http.devcerts import CertFiles
from reverse_http.quic import TransportSettings
from reverse_http.quic.flowcontrol import WindowTuner
from tests.quic_memory import linked

KIB = 1024


def test_a_window_read_within_a_few_round_trips_doubles_up_to_its_maximum() -> None:
    tuner = WindowTuner(512 * KIB, 6 * 1024 * KIB)
    rtt, now, consumed = 0.05, 0.0, 0
    assert tuner.on_credit_due(consumed, now, rtt) == 512 * KIB  # starts an epoch
    sizes = []
    for _ in range(8):  # a fast reader: each window read in one round trip
        consumed += tuner.size
        now += rtt
        sizes.append(tuner.on_credit_due(consumed, now, rtt))
    assert sizes[:4] == [1024 * KIB, 2048 * KIB, 4096 * KIB, 6144 * KIB]
    assert max(sizes) == 6 * 1024 * KIB  # the memory bound holds


def test_a_slow_reader_or_a_short_path_does_not_grow_the_window() -> None:
    slow = WindowTuner(512 * KIB, 6 * 1024 * KIB)
    slow.on_credit_due(0, 0.0, 0.05)
    consumed, now = 0, 0.0
    for _ in range(8):  # a window every second on a 50 ms path: the reader is the limit
        consumed += slow.size
        now += 1.0
        slow.on_credit_due(consumed, now, 0.05)
    assert slow.size == 512 * KIB
    unknown = WindowTuner(512 * KIB, 6 * 1024 * KIB)
    unknown.on_credit_due(0, 0.0, 0.0)
    assert unknown.on_credit_due(10**7, 0.0, 0.0) == 512 * KIB  # no RTT sample: no growth


def test_less_than_half_a_window_read_keeps_the_epoch() -> None:
    tuner = WindowTuner(512 * KIB, 6 * 1024 * KIB)
    tuner.on_credit_due(0, 0.0, 0.05)
    assert tuner.on_credit_due(100 * KIB, 10.0, 0.05) == 512 * KIB
    # the epoch still started at 0: reading the rest now is slow, so no growth
    assert tuner.on_credit_due(512 * KIB, 10.01, 0.05) == 512 * KIB


async def download_seconds(certs: CertFiles, t: TransportSettings, size: int) -> tuple[float, int]:
    """Virtual seconds to move ``size`` bytes over a 50 ms path; the window it reached."""
    async with linked(certs, t) as (link, client):
        link.delay = 0.025
        server = await link.server_conn()
        mine = await client.open_stream()
        await mine.send_all(b"go")
        theirs = await server.accept_stream()
        await theirs.receive_some()
        t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(theirs.send_all, b"x" * size)
            got = 0
            while got < size:
                got += len(await mine.receive_some())
        return trio.current_time() - t0, client.quic._stream_window(mine.stream_id)


async def test_one_stream_over_a_long_path_fills_it_only_with_a_grown_window(
    certs: CertFiles, autojump_clock: trio.testing.MockClock
) -> None:
    size = 12 * 1024 * KIB
    fixed = TransportSettings(
        stream_receive_window=512 * KIB,
        stream_receive_window_max=512 * KIB,
        stream_send_buffer=512 * KIB,
        stream_send_buffer_max=512 * KIB,
    )
    fixed_s, fixed_window = await download_seconds(certs, fixed, size)
    tuned_s, tuned_window = await download_seconds(certs, TransportSettings(), size)
    assert fixed_window == 512 * KIB
    assert tuned_window > 2 * 1024 * KIB
    # 512 KiB per 50 ms round trip is at most 10.5 MB/s; the grown window does better
    assert fixed_s >= size / (512 * KIB / 0.05) * 0.9
    assert tuned_s < fixed_s / 2, (tuned_s, fixed_s)
