"""Keepalive, idle timeout, dead-peer detection and handshake timeout, on virtual time.

Two ``Connection`` objects exchange datagrams through an in-memory link that can be
cut; ``trio.testing.MockClock`` (autojump) runs minutes of protocol time instantly.
"""

from __future__ import annotations

import itertools

import pytest
import trio
import trio.testing

from reverse_http.devcerts import CertFiles
from reverse_http.quic import ConnectionError, TransportSettings
from tests.quic_memory import linked, pmtu_settled


def max_gap(times: list[float], since: float) -> float:
    ts = [since] + [t for t in times if t >= since]
    return max(b - a for a, b in itertools.pairwise(ts))


async def test_keepalive_cadence(certs: CertFiles, autojump_clock: trio.testing.MockClock) -> None:
    t = TransportSettings(keepalive_interval=10, liveness_timeout=0, idle_timeout=30)
    async with linked(certs, t) as (link, client):
        await client.wait_handshake()
        start = trio.current_time()
        await trio.sleep(300)  # virtual time
        assert not client.is_closed, client.close_info  # idle timeout (30 s) never hit
        for direction in ("c2s", "s2c"):
            assert max_gap(link.sent[direction], start) <= 10.5, direction
            # keepalive, not a flood: about one PING (or its ACK) per interval
            assert len([x for x in link.sent[direction] if x >= start]) <= 2 * 300 / 10 + 4


async def test_default_keepalive_costs_one_round_trip_per_period(
    certs: CertFiles, autojump_clock: trio.testing.MockClock
) -> None:
    """An idle agent is what a proxy holds thousands of: by default only the client
    PINGs, every keepalive interval (10 s, as the reference), and the server just ACKs."""
    t = TransportSettings()
    assert t.probe_after == 10 and t.server_probe_after > t.probe_after
    async with linked(certs, t) as (link, client):
        await client.wait_handshake()
        await pmtu_settled(client, await link.server_conn())  # start-up probes done
        start = trio.current_time()
        await trio.sleep(300)
        assert not client.is_closed, client.close_info
        for direction in ("c2s", "s2c"):
            sent = [x for x in link.sent[direction] if x >= start]
            assert max_gap(sent, start) <= 10.5, direction
            assert len(sent) <= 300 / 10 + 3, (direction, len(sent))
        # each PING is acknowledged as it arrives, not by a separate ACK-delay wake-up
        pings = set(x for x in link.sent["c2s"] if x >= start)
        acks = [x for x in link.sent["s2c"] if x >= start]
        assert acks and all(x in pings for x in acks), sorted(set(acks) - pings)[:5]


async def test_idle_timeout_without_keepalive(
    certs: CertFiles, autojump_clock: trio.testing.MockClock
) -> None:
    t = TransportSettings(keepalive_interval=1000, liveness_timeout=0, idle_timeout=30)
    async with linked(certs, t) as (_link, client):
        await client.wait_handshake()
        start = trio.current_time()
        info = await client.wait_closed()
        elapsed = trio.current_time() - start
    assert info.kind == "idle-timeout"
    assert 29 <= elapsed <= 31


async def test_dead_peer_detected_by_liveness_timeout(
    certs: CertFiles, autojump_clock: trio.testing.MockClock
) -> None:
    t = TransportSettings(keepalive_interval=10, liveness_timeout=5, idle_timeout=30)
    async with linked(certs, t) as (link, client):
        await client.wait_handshake()
        stream = await client.open_stream()
        await stream.send_all(b"hello")
        await trio.sleep(1)
        link.up = False
        cut_at = trio.current_time()
        with pytest.raises(trio.BrokenResourceError):
            await stream.receive_some()
        info = await client.wait_closed()
        detected = trio.current_time() - cut_at
    assert info.kind == "liveness"
    assert detected <= 5.5
    # a probe went out before giving up
    assert any(x > cut_at for x in link.sent["c2s"])


async def test_liveness_keeps_a_healthy_idle_connection(
    certs: CertFiles, autojump_clock: trio.testing.MockClock
) -> None:
    t = TransportSettings(keepalive_interval=10, liveness_timeout=5, idle_timeout=30)
    async with linked(certs, t) as (link, client):
        await client.wait_handshake()
        await trio.sleep(120)
        assert not client.is_closed
        assert link.server is not None and not link.server.is_closed


async def test_handshake_timeout(certs: CertFiles, autojump_clock: trio.testing.MockClock) -> None:
    t = TransportSettings(handshake_timeout=7)
    async with linked(certs, t, start_cut=True) as (_link, client):
        start = trio.current_time()
        with pytest.raises(ConnectionError) as exc_info:
            await client.wait_handshake()
        elapsed = trio.current_time() - start
    assert exc_info.value.info.kind == "handshake-timeout"
    assert 7 <= elapsed <= 7.5


@pytest.mark.parametrize(("packets_at", "ends_at"), [((4.0,), 11.0), ((4, 8, 12, 16, 20), 21.0)])
async def test_handshake_timeout_counts_idle_time_up_to_a_cap(
    certs: CertFiles,
    autojump_clock: trio.testing.MockClock,
    packets_at: tuple[float, ...],
    ends_at: float,
) -> None:
    """A handshake that keeps hearing from its peer is not restarted at 7 s (a loaded
    agent or proxy would otherwise throw away half-done work), but ends at 3 x 7 s."""
    t = TransportSettings(handshake_timeout=7)
    async with linked(certs, t, start_cut=True) as (_link, client):
        start = trio.current_time()

        async def packets() -> None:
            for at in packets_at:
                await trio.sleep_until(start + at)
                client._quic.last_authenticated_rx = trio.current_time()  # a packet decrypted

        async with trio.open_nursery() as nursery:
            nursery.start_soon(packets)
            with pytest.raises(ConnectionError) as exc_info:
                await client.wait_handshake()
            nursery.cancel_scope.cancel()
        elapsed = trio.current_time() - start
    assert exc_info.value.info.kind == "handshake-timeout"
    assert ends_at <= elapsed <= ends_at + 0.5
