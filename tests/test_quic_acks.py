"""ACK frequency (RFC 9000 13.2.2): every second ack-eliciting packet is acknowledged at
once, a lone one within ACK_DELAY, and an ACK rides on data whenever data goes out."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from reverse_http.devcerts import CertFiles
from reverse_http.quic import TransportSettings
from reverse_http.quic.connection import SERVICE_EVERY
from reverse_http.quic.protocol import ACK_DELAY
from tests.quic_memory import SERVER_ADDR, settled_pair


async def test_a_bulk_transfer_is_acknowledged_every_second_packet(
    certs: CertFiles, autojump_clock: trio.testing.MockClock
) -> None:
    async with settled_pair(certs, TransportSettings()) as (link, client, server):
        mine = await client.open_stream()
        await mine.send_all(b"go")
        theirs = await server.accept_stream()
        await theirs.receive_some()
        before = {way: len(link.sizes[way]) for way in ("c2s", "s2c")}
        body = b"x" * (4 * 1024 * 1024)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(theirs.send_all, body)
            got = 0
            while got < len(body):
                got += len(await mine.receive_some())
        data_packets = len(link.sizes["s2c"]) - before["s2c"]
        acks = len(link.sizes["c2s"]) - before["c2s"]
        assert data_packets > 2500
        # one ACK per packet was aioquic's rate; every second one, plus a few for credit
        assert acks <= data_packets * 0.6, (acks, data_packets)
        assert acks >= data_packets * 0.3, (acks, data_packets)


async def test_a_lone_packet_is_acknowledged_within_the_ack_delay(
    certs: CertFiles, autojump_clock: trio.testing.MockClock
) -> None:
    async with settled_pair(certs, TransportSettings()) as (link, client, server):
        await trio.sleep(1)
        mine = await client.open_stream()
        sent_at = trio.current_time()
        await mine.send_all(b"one packet, no answer")
        theirs = await server.accept_stream()
        assert await theirs.receive_some() == b"one packet, no answer"
        with trio.fail_after(1):
            while client.quic._loss.bytes_in_flight:
                await trio.sleep(0.001)
        acked_after = [t - sent_at for t in link.sent["s2c"] if t >= sent_at]
        assert acked_after and ACK_DELAY * 0.9 <= acked_after[0] <= ACK_DELAY * 1.5


async def test_a_long_receive_batch_is_acknowledged_within_it(
    certs: CertFiles, autojump_clock: trio.testing.MockClock
) -> None:
    """A receiver that fell behind reads up to 512 queued datagrams at once: their ACKs
    go out every SERVICE_EVERY datagrams, not all at the batch's end."""
    t = TransportSettings(initial_congestion_window=200)
    async with settled_pair(certs, t) as (link, client, server):
        mine = await client.open_stream()
        await mine.send_all(b"go")
        theirs = await server.accept_stream()
        await theirs.receive_some()
        await trio.sleep(1)
        # Hold back what the server sends next, as a full socket buffer would.
        held: list[bytes] = []

        def hold(datagrams: list[tuple[bytes, Any]]) -> list[int]:
            held.extend(d for d, _ in datagrams)
            return []

        link.server_driver.send = hold
        await theirs.send_all(b"x" * (250 * 1024))
        with trio.fail_after(5):
            while len(held) < 2 * SERVICE_EVERY + 1:  # the pacer spreads the window out
                await trio.sleep(0.001)
        acks_before = len(link.sizes["c2s"])
        now = trio.current_time()
        for data in held:  # one receive batch: no flush in between
            client.datagram_received(data, SERVER_ADDR, now)
        acks_within = len(link.sizes["c2s"]) - acks_before
        assert acks_within >= len(held) // SERVICE_EVERY, (acks_within, len(held))
        assert acks_within <= len(held) // SERVICE_EVERY + 1, (acks_within, len(held))
