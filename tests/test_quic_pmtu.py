"""Path MTU discovery: the sans-IO search (``quic.pmtu``), then two connections over an
in-memory path that carries only so much, on virtual time."""

from __future__ import annotations

import hashlib

import pytest
import trio
import trio.testing

from reverse_http.devcerts import CertFiles
from reverse_http.quic import TransportSettings
from reverse_http.quic.pmtu import (
    BASE_DATAGRAM_SIZE,
    MAX_PROBES,
    RAISE_INTERVAL,
    SEARCH_GRANULARITY,
    PathMtu,
    Phase,
)
from tests.quic_memory import linked, pmtu_settled


def search(pmtu: PathMtu, carries: int, *, refuse: bool = False, now: float = 0.0) -> list[int]:
    """Answer every probe as a path carrying ``carries`` bytes would; the sizes probed."""
    probed = []
    while (size := pmtu.probe_size(now)) is not None:
        probed.append(size)
        pmtu.on_probe_sent(size)
        if size <= carries:
            pmtu.on_probe_acked(size, now)
        elif refuse:
            pmtu.on_too_big(size, now)
        else:
            pmtu.on_probe_lost(size, now)
        assert len(probed) < 64
    return probed


def test_a_path_that_carries_the_ceiling_takes_one_probe() -> None:
    pmtu = PathMtu(max_size=1452)
    assert pmtu.current == BASE_DATAGRAM_SIZE
    assert search(pmtu, carries=1500) == [1452]
    assert pmtu.current == 1452
    assert pmtu.phase is Phase.COMPLETE
    assert pmtu.next_event_at() is None  # nothing above the ceiling to look for


def test_lost_probes_narrow_the_search_to_what_the_path_carries() -> None:
    pmtu = PathMtu(max_size=1452)
    probed = search(pmtu, carries=1252)  # IPv4 over a 1280-byte MTU
    assert 1252 - SEARCH_GRANULARITY < pmtu.current <= 1252
    assert probed[:MAX_PROBES] == [1452] * MAX_PROBES  # a size counts as too big only after
    assert pmtu.phase is Phase.COMPLETE
    assert pmtu.probes_lost >= MAX_PROBES


def test_a_single_lost_probe_is_tried_again() -> None:
    pmtu = PathMtu(max_size=1452)
    size = pmtu.probe_size(0)
    assert size == 1452
    pmtu.on_probe_sent(size)
    pmtu.on_probe_lost(size, 0)  # random loss, not the path
    assert pmtu.probe_size(0) == 1452
    pmtu.on_probe_sent(1452)
    pmtu.on_probe_acked(1452, 0)
    assert pmtu.current == 1452


def test_emsgsize_on_a_probe_settles_its_size_at_once() -> None:
    pmtu = PathMtu(max_size=1452)
    probed = search(pmtu, carries=1372, refuse=True)
    assert probed.count(1452) == 1
    assert 1372 - SEARCH_GRANULARITY < pmtu.current <= 1372


def test_emsgsize_on_a_normal_packet_falls_back_to_the_base_and_searches_again() -> None:
    pmtu = PathMtu(max_size=1452)
    search(pmtu, carries=1452)
    assert pmtu.current == 1452
    pmtu.on_too_big(1452, now=5.0)  # an ICMP message taught the kernel a smaller MTU
    assert pmtu.current == BASE_DATAGRAM_SIZE
    assert pmtu.fallbacks == 1
    probed = search(pmtu, carries=1300, refuse=True, now=5.0)
    assert 1452 not in probed
    assert 1300 - SEARCH_GRANULARITY < pmtu.current <= 1300


def test_a_black_hole_falls_back_only_when_no_large_packet_got_through() -> None:
    pmtu = PathMtu(max_size=1452)
    search(pmtu, carries=1452)
    # one random loss after a quiet minute is not a black hole
    pmtu.on_packet_lost(1452, now=60.0, patience=1.0)
    pmtu.on_packet_acked(1452, now=60.1)
    # nor is a burst a full queue dropped, among acknowledged packets
    for t in (61.0, 61.001, 61.002, 61.003):
        pmtu.on_packet_lost(1452, now=t, patience=1.0)
    pmtu.on_packet_acked(1452, now=61.1)
    pmtu.on_packet_lost(BASE_DATAGRAM_SIZE, now=70.0, patience=1.0)  # small: says nothing
    assert pmtu.current == 1452 and pmtu.fallbacks == 0
    # big packets lost, one after the other, none acknowledged, for over the patience
    for t in (80.0, 80.4, 80.8):
        pmtu.on_packet_lost(1452, now=t, patience=1.0)
    assert pmtu.current == 1452  # three in a row, but within 1 s of the first
    pmtu.on_packet_lost(1452, now=81.2, patience=1.0)
    assert pmtu.current == BASE_DATAGRAM_SIZE
    assert pmtu.fallbacks == 1


def test_a_late_ack_of_a_probe_above_the_ceiling_is_ignored() -> None:
    pmtu = PathMtu(max_size=1452)
    pmtu.on_probe_sent(pmtu.probe_size(0) or 0)
    pmtu.on_too_big(1452, 0)
    size = pmtu.probe_size(0)
    assert size is not None and size < 1452
    pmtu.on_probe_sent(size)
    pmtu.on_too_big(size, 0)  # the kernel learnt a smaller MTU meanwhile
    pmtu.on_probe_acked(1452, 0.1)  # an answer to the first probe, very late
    assert pmtu.current < size


def test_a_completed_search_is_repeated_after_the_raise_interval() -> None:
    pmtu = PathMtu(max_size=1452)
    search(pmtu, carries=1300)
    found = pmtu.current
    assert pmtu.next_event_at() == pytest.approx(RAISE_INTERVAL)
    assert pmtu.probe_size(RAISE_INTERVAL - 1) is None
    assert pmtu.probe_size(RAISE_INTERVAL) == 1452  # the path may have got better
    search(pmtu, carries=1452, now=RAISE_INTERVAL)
    assert pmtu.current == 1452 > found


def test_without_a_ceiling_above_the_base_nothing_is_probed() -> None:
    pmtu = PathMtu(max_size=1350, base_size=1350)
    assert pmtu.phase is Phase.DISABLED
    assert pmtu.probe_size(0) is None
    pmtu.on_too_big(1350, 0)
    assert pmtu.current == 1350


def test_a_ceiling_below_the_base_is_refused() -> None:
    with pytest.raises(ValueError, match="below the base"):
        PathMtu(max_size=1100)


# --- two connections ------------------------------------------------------------------


async def download(link: object, client: object, size: int) -> bytes:
    """The server sends ``size`` bytes on a stream the client opened; their SHA-256."""
    from reverse_http.quic import Connection

    assert isinstance(client, Connection)
    server = await link.server_conn()  # type: ignore[attr-defined]
    mine = await client.open_stream()
    await mine.send_all(b"go")
    theirs = await server.accept_stream()
    assert await theirs.receive_some() == b"go"
    body = bytes(range(256)) * (size // 256)

    async def send() -> None:
        await theirs.send_all(body)
        await theirs.send_eof()

    got = hashlib.sha256()
    received = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        while chunk := await mine.receive_some():
            got.update(chunk)
            received += len(chunk)
    assert received == len(body)
    assert got.digest() == hashlib.sha256(body).digest()
    return got.digest()


@pytest.mark.parametrize(
    ("mtu", "refuse"),
    [(None, False), (1252, False), (1252, True)],
    ids=["path-carries-1452", "black-hole-above-1252", "emsgsize-above-1252"],
)
async def test_bulk_data_uses_the_largest_size_the_path_carries(
    certs: CertFiles, autojump_clock: trio.testing.MockClock, mtu: int | None, refuse: bool
) -> None:
    async with linked(certs, TransportSettings()) as (link, client):
        link.mtu, link.refuse_too_big = mtu, refuse
        server = await link.server_conn()
        await pmtu_settled(server)
        with trio.fail_after(60):
            await download(link, client, 2 * 1024 * 1024)
        largest = max(link.sizes["s2c"])
        if mtu is None:
            assert server._quic.pmtu.current == largest == 1452
        else:
            assert mtu - SEARCH_GRANULARITY < server._quic.pmtu.current <= mtu
            assert largest <= mtu
        # the handshake went at the base size, which every path carries
        assert link.sizes["c2s"][0] == BASE_DATAGRAM_SIZE
        full = [s for s in link.sizes["s2c"][-200:] if s > 1100]
        assert max(full) == server._quic.pmtu.current  # the size found, and no bigger
        assert sorted(full)[len(full) // 2] == server._quic.pmtu.current


async def test_a_path_that_shrinks_mid_transfer_falls_back_and_finishes(
    certs: CertFiles, autojump_clock: trio.testing.MockClock
) -> None:
    """A route change to a tunnel with a smaller MTU and no ICMP: a black hole for the
    1452-byte packets in flight; the transfer must not stall."""
    async with linked(certs, TransportSettings()) as (link, client):
        await download(link, client, 256 * 1024)
        server = await link.server_conn()
        assert server._quic.pmtu.current == 1452
        link.mtu = 1280
        with trio.fail_after(60):
            await download(link, client, 2 * 1024 * 1024)
        assert server._quic.pmtu.fallbacks >= 1
        assert server._quic.pmtu.current <= 1280


async def test_lost_probes_do_not_shrink_the_congestion_window(
    certs: CertFiles, autojump_clock: trio.testing.MockClock
) -> None:
    async with linked(certs, TransportSettings()) as (link, client):
        link.mtu = 1252
        await client.wait_handshake()
        server = await link.server_conn()
        cwnd = server._quic._loss.congestion_window
        await pmtu_settled(server)
        assert server._quic.pmtu.probes_lost >= MAX_PROBES
        assert server._quic._loss.congestion_window >= cwnd


@pytest.mark.timeout(30)
async def test_after_a_nat_rebinding_probing_goes_on_and_never_spins(
    certs: CertFiles, autojump_clock: trio.testing.MockClock
) -> None:
    """The rebinding leaves aioquic a second (old) path: the re-probe deadline must not
    become one that no service can act on (a busy loop), and discovery must go on."""
    async with linked(certs, TransportSettings()) as (link, client):
        link.mtu = 1300
        server = await link.server_conn()
        await pmtu_settled(server)
        link.client_addr = ("127.0.0.1", 50001)  # the agent's NAT picked a new port
        await download(link, client, 256 * 1024)
        assert len(server._quic._network_paths) == 2
        await trio.sleep(RAISE_INTERVAL + 60)  # past the re-probe time
        assert server._quic.get_timer() > trio.current_time()
        link.mtu = 1252  # and the path shrinks: a black hole, found and searched again
        with trio.fail_after(120):
            await download(link, client, 2 * 1024 * 1024)
        await pmtu_settled(server)
        assert server._quic.pmtu.fallbacks >= 1
        assert 1252 - SEARCH_GRANULARITY < server._quic.pmtu.current <= 1252


async def test_the_peer_address_follows_a_nat_rebinding(
    certs: CertFiles, autojump_clock: trio.testing.MockClock
) -> None:
    async with linked(certs, TransportSettings()) as (link, client):
        server = await link.server_conn()
        assert server.peer_address == ("127.0.0.1", 50000)
        link.client_addr = ("127.0.0.1", 50001)
        await download(link, client, 64 * 1024)
        assert server.peer_address == ("127.0.0.1", 50001)  # logs name the agent's new port
