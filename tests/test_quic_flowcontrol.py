"""Receive windows that grow with the bandwidth-delay product: the tuner on a fake
clock, then one stream over an in-memory path with a 50 ms round trip."""

from __future__ import annotations

import trio
import trio.testing
from aioquic.quic.packet_builder import QuicDeliveryState

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


async def test_stream_credit_goes_out_after_a_quarter_window_read(certs: CertFiles) -> None:
    """The peer may always send three quarters of a window ahead (quic-go's threshold):
    at half, a long path's sender in slow start hit the limit at every doubling."""
    async with linked(certs, TransportSettings()) as (link, client):
        server = await link.server_conn()
        mine = await client.open_stream()
        await mine.send_all(b"go")
        theirs = await server.accept_stream()
        await theirs.send_all(b"x")
        assert await mine.receive_some() == b"x"  # one byte consumed
        quic, sid = client.quic, mine.stream_id
        quarter = quic._stream_window(sid) // 4
        assert quic.consumed(sid, quarter - 2) is False
        assert quic.consumed(sid, 1) is True  # a quarter of the window read


async def _blocked_writer_after_ack_past_gap(
    certs: CertFiles, buffer_max: int
) -> tuple[bool, int, int]:
    """A writer blocked on a full send buffer (64 KiB, nothing acknowledged: the link is
    cut), then the peer acknowledges everything past the first 16 KiB (a lost packet at
    the start). Whether the writer went on; the bytes held and counted against it."""
    # 10 packets: the buffer follows twice the window, which from 32 packets starts past 64 KiB
    t = TransportSettings(
        stream_send_buffer=64 * KIB, stream_send_buffer_max=buffer_max, initial_congestion_window=10
    )
    async with linked(certs, t) as (link, client):
        server = await link.server_conn()
        mine = await client.open_stream()
        await mine.send_all(b"go")
        theirs = await server.accept_stream()
        await theirs.receive_some()
        link.up = False
        done = trio.Event()

        async def write() -> None:
            await theirs.send_all(b"x" * 96 * KIB)
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(write)
            await trio.testing.wait_all_tasks_blocked()
            quic = server.quic
            assert quic.stream_unacked(theirs.stream_id) == 64 * KIB
            assert not done.is_set()
            aio = quic._streams[theirs.stream_id]
            quic._on_stream_delivery(QuicDeliveryState.ACKED, aio, 16 * KIB, 64 * KIB, False)
            await trio.testing.wait_all_tasks_blocked()
            went_on = done.is_set()
            held, counted = quic.stream_unacked(theirs.stream_id), theirs.unacked
            nursery.cancel_scope.cancel()
        return went_on, held, counted


async def test_data_acknowledged_past_a_gap_frees_the_writer_up_to_the_memory_bound(
    certs: CertFiles,
) -> None:
    """While a lost packet is repaired (about two round trips), everything sent past it
    stays buffered: counted against the send buffer, it stopped a long link's writer
    after every loss. Acknowledged bytes count only as far as the buffer would outgrow
    ``stream_send_buffer_max``."""
    went_on, held, counted = await _blocked_writer_after_ack_past_gap(certs, 1024 * KIB)
    assert went_on  # woken by the acknowledgement, though it freed no memory
    assert held == 96 * KIB  # the gap still holds everything behind it
    assert counted == held - 48 * KIB  # only what the peer has not acknowledged
    went_on, held, counted = await _blocked_writer_after_ack_past_gap(certs, 80 * KIB)
    assert not went_on  # 64 KiB held of an 80 KiB bound: still half the buffer counts
    assert held == 64 * KIB
    assert counted == 48 * KIB
