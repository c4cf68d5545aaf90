"""Admission of new QUIC connections under load: Retry, handshake limits, tokens, logs."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import ssl

import pytest
import trio
import trio.testing
from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicFrameType, QuicPacketType, pull_quic_header
from prometheus_client import CollectorRegistry

from reverse_http.devcerts import CertFiles
from reverse_http.proxy.quic_metrics import watch_agent_server
from reverse_http.quic import DEFAULT_ALPN, AdmissionSettings, TransportSettings, connect
from reverse_http.quic.admission import (
    Admission,
    AttackLog,
    RateMeter,
    RetryMemory,
    WaitingRoom,
    source_key,
)
from tests.quic_helpers import client_tls, echo_streams, quic_pair, read_to_eof
from tests.test_quic_initial import initial_with
from tests.tunnel_helpers import echo_target, noauth, open_connect, tunnel

ADDR = ("192.0.2.1", 4433)


# --- sans-IO -------------------------------------------------------------------------


def test_retry_while_handshakes_in_progress_reach_the_threshold() -> None:
    adm = Admission(AdmissionSettings(retry_pending_threshold=3), now=0.0)
    assert not adm.retry_required(0.0)
    for _ in range(3):
        adm.started("a")
    assert adm.retry_required(0.0)
    adm.finished("a")
    assert not adm.retry_required(0.0)
    assert Admission(AdmissionSettings(retry=True), now=0.0).retry_required(0.0)


async def test_retry_while_initials_arrive_faster_than_the_rate(
    mock_clock: trio.testing.MockClock,
) -> None:
    adm = Admission(AdmissionSettings(retry_initial_rate=100), now=trio.current_time())
    for _ in range(90):  # 90 in the first second: below
        adm.initial_seen(trio.current_time())
        mock_clock.jump(0.01)
    assert not adm.retry_required(trio.current_time())
    for _ in range(150):  # 150/s for 1.5 s: above
        adm.initial_seen(trio.current_time())
        mock_clock.jump(0.01)
    assert adm.retry_required(trio.current_time())
    mock_clock.jump(2.5)  # the flood stopped: no Retry after a quiet second or two
    assert not adm.retry_required(trio.current_time())


def test_rate_meter_interpolates_between_windows() -> None:
    meter = RateMeter(now=0.0)
    for i in range(100):
        meter.add(i / 100)
    assert meter.rate(1.0) == pytest.approx(100)
    assert meter.rate(1.5) == pytest.approx(50)
    assert meter.rate(3.0) == 0


def test_pending_handshakes_are_limited_per_source_and_in_total() -> None:
    adm = Admission(AdmissionSettings(max_pending_per_source=2, max_pending_handshakes=3), 0.0)
    adm.started("a")
    adm.started("a")
    assert adm.limit_reached("a") == "source_limit"
    assert adm.limit_reached("b") is None
    adm.started("b")
    assert adm.limit_reached("c") == "global_limit"
    adm.finished("a")
    assert adm.limit_reached("c") is None
    assert adm.limit_reached("a") is None
    adm.finished("a")
    adm.finished("b")
    assert adm.pending == 0 and adm.pending_from("a") == 0


def test_a_source_is_an_ipv4_address_or_an_ipv6_64() -> None:
    assert source_key(("192.0.2.1", 1)) == source_key(("192.0.2.1", 2)) == "192.0.2.1"
    assert source_key(("192.0.2.1", 1)) != source_key(("192.0.2.2", 1))
    a = source_key(("2001:db8:1:2::1", 1, 0, 0))
    assert a == source_key(("2001:db8:1:2:ffff::9", 7, 0, 0)) == "2001:db8:1:2::/64"
    assert a != source_key(("2001:db8:1:3::1", 1, 0, 0))
    assert source_key(("::ffff:192.0.2.1", 1, 0, 0)) == "::ffff:192.0.2.1"


def test_tokens_are_bound_to_address_connection_ids_and_time() -> None:
    adm = Admission(AdmissionSettings(), now=100.0)
    odcid, scid = os.urandom(8), os.urandom(8)
    token = adm.create_token(ADDR, odcid, scid, now=100.0)
    assert adm.validate_token(ADDR, scid, token, now=101.0) == odcid
    assert adm.validate_token(("192.0.2.1", 4434), scid, token, now=101.0) is None  # port
    assert adm.validate_token(("192.0.2.9", 4433), scid, token, now=101.0) is None  # host
    assert adm.validate_token(ADDR, odcid, token, now=101.0) is None  # not the Retry's CID
    assert adm.validate_token(ADDR, scid, token, now=131.0) is None  # expired
    forged = bytearray(token)
    forged[20] ^= 1
    assert adm.validate_token(ADDR, scid, bytes(forged), now=101.0) is None
    assert adm.validate_token(ADDR, scid, os.urandom(len(token)), now=101.0) is None
    assert adm.validate_token(ADDR, scid, b"short", now=101.0) is None
    other = Admission(AdmissionSettings(), now=100.0)  # another process: another key
    assert other.validate_token(ADDR, scid, token, now=101.0) is None


def test_tokens_parse_no_address_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """A token is created and validated per client in a reconnect storm: aioquic's
    handler parsed the address with ipaddress (and built the token in a Buffer) each
    time, a tenth of the proxy's CPU in one. IPv6 addresses are bound too."""
    import ipaddress

    def refuse(*_args: object) -> None:
        raise AssertionError("ipaddress used")

    monkeypatch.setattr(ipaddress, "ip_address", refuse)
    adm = Admission(AdmissionSettings(), now=100.0)
    odcid, scid = os.urandom(8), os.urandom(8)
    for addr in (ADDR, ("2001:db8::1", 4433, 0, 0)):
        token = adm.create_token(addr, odcid, scid, now=100.0)
        assert adm.validate_token(addr, scid, token, now=101.0) == odcid
    assert adm.validate_token(("2001:db8::2", 4433, 0, 0), scid, token, now=101.0) is None


async def test_attack_logs_are_one_line_per_interval(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("test.attack")
    attack = AttackLog(10.0, trio.current_time(), logger)
    with caplog.at_level(logging.WARNING, logger="test.attack"):
        for i in range(20_000):  # 1000 events per second for 20 s
            attack.note("retries sent" if i % 2 else "initials dropped (busy)", trio.current_time())
            mock_clock.jump(0.001)
        mock_clock.jump(10)
        attack.flush(trio.current_time())
        attack.flush(trio.current_time())  # nothing new: no line
    lines = [r.getMessage() for r in caplog.records]
    assert 2 <= len(lines) <= 4, lines
    assert "initials dropped (busy)" in lines[-1] and "retries sent" in lines[-1]
    assert sum(int(n) for line in lines for n in re.findall(r" (\d+)(?=,|$)", line)) == 20_000


def test_settings_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="max_pending_per_source"):
        AdmissionSettings(max_pending_per_source=0)
    with pytest.raises(ValueError, match="retry_initial_rate"):
        AdmissionSettings(retry_initial_rate=0)


# --- live: a server on loopback, raw datagrams and real clients ----------------------


def _client(server_name: str = "localhost") -> QuicConnection:
    cfg = QuicConfiguration(is_client=True, alpn_protocols=[DEFAULT_ALPN])
    cfg.verify_mode = ssl.CERT_NONE
    cfg.server_name = server_name
    return QuicConnection(configuration=cfg)


def _first_datagram(quic: QuicConnection, peer: tuple[str, int]) -> bytes:
    quic.connect(peer, now=0.0)
    return quic.datagrams_to_send(now=0.0)[0][0]


async def _udp(host: str = "127.0.0.1") -> trio.socket.SocketType:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind((host, 0))
    return sock


async def _eventually(check: object) -> None:
    with trio.fail_after(5):
        while not check():  # type: ignore[operator]
            await trio.sleep(0.01)


async def test_below_the_thresholds_nobody_pays_a_retry(certs: CertFiles) -> None:
    async with quic_pair(certs, handler=echo_streams) as pair:
        assert pair.client.handshake_complete
        assert pair.server.retries_sent == 0


async def test_an_agent_connects_through_retry_and_transfers(certs: CertFiles) -> None:
    """Threshold forced low: every new agent gets a Retry, and works."""
    low = AdmissionSettings(retry_pending_threshold=1, retry_initial_rate=0.01)
    async with (
        echo_target() as target,
        tunnel(certs, proxy_overrides={"agent_admission": low}) as t,
    ):
        quic = t.proxy.quic
        assert quic is not None
        assert quic.retries_sent >= 1
        assert quic.initials_dropped["invalid_token"] == 0
        result = await open_connect(t.http_port, f"127.0.0.1:{target.port}", noauth())
        assert result.status == 200 and result.stream is not None
        payload = os.urandom(256 * 1024)
        async with result.stream as s, trio.open_nursery() as n:
            n.start_soon(s.send_all, payload)
            got = b""
            with trio.fail_after(10):
                while len(got) < len(payload):
                    got += await s.receive_some(65536)
        assert got == payload


async def test_a_token_is_refused_from_another_address_or_forged(certs: CertFiles) -> None:
    async with quic_pair(certs, handler=echo_streams, retry=True) as pair:
        server = pair.server
        port = server.local_address[1]
        peer = ("127.0.0.1", port)
        a, b = await _udp(), await _udp()
        quic = _client()
        await a.sendto(_first_datagram(quic, peer), peer)
        with trio.fail_after(5):
            retry, _ = await a.recvfrom(2048)
        header = pull_quic_header(Buffer(data=retry), host_cid_length=8)
        assert header.packet_type == QuicPacketType.RETRY and header.token
        quic.receive_datagram(retry, peer, now=0.1)
        with_token = quic.datagrams_to_send(now=0.1)[0][0]
        retries = server.retries_sent

        # the token replayed from another port: refused with INVALID_TOKEN, no state
        await b.sendto(with_token, peer)
        with trio.fail_after(5):
            answer, _ = await b.recvfrom(2048)
        assert pull_quic_header(Buffer(data=answer), 8).packet_type == QuicPacketType.INITIAL
        assert server.initials_dropped["invalid_token"] == 1
        # a forged token on an Initial that decrypts: refused the same way
        forged = initial_with(bytes([0x06, 0, 4]) + b"helo", token=os.urandom(60))
        await b.sendto(forged, peer)
        await _eventually(lambda: server.initials_dropped["invalid_token"] == 2)
        assert server.handshakes_pending == 0 and server.retries_sent == retries

        # from the address it was issued to, the same Initial opens the handshake
        await a.sendto(with_token, peer)
        with trio.fail_after(5):
            flight, _ = await a.recvfrom(2048)
        assert pull_quic_header(Buffer(data=flight), 8).packet_type == QuicPacketType.INITIAL
        assert server.handshakes_pending == 1
        assert server.initials_dropped["invalid_token"] == 2
        assert server.retries_sent == retries
        a.close()
        b.close()


async def test_a_source_over_its_pending_limit_is_dropped_while_another_connects(
    certs: CertFiles,
) -> None:
    limits = AdmissionSettings(max_pending_per_source=3, retry_pending_threshold=100)
    async with quic_pair(certs, handler=echo_streams, admission=limits) as pair:
        server = pair.server
        peer = ("127.0.0.1", server.local_address[1])
        flooder = await _udp("127.0.0.2")
        for _ in range(8):  # real ClientHellos, never continued
            await flooder.sendto(_first_datagram(_client(), peer), peer)
        await _eventually(lambda: server.initials_dropped["source_limit"] == 5)
        assert server.handshakes_pending == 3
        with trio.fail_after(10):
            other = await connect(
                pair.nursery, "127.0.0.1", peer[1], TransportSettings(), client_tls(certs)
            )
        assert other.handshake_complete
        stream = await other.open_stream()
        await stream.send_all(b"still served")
        await stream.send_eof()
        with trio.fail_after(10):
            assert await read_to_eof(stream) == b"still served"
        assert server.initials_dropped["source_limit"] == 5
        flooder.close()


async def test_small_datagrams_draw_no_version_negotiation(certs: CertFiles) -> None:
    async with quic_pair(certs) as pair:
        server = pair.server
        peer = ("127.0.0.1", server.local_address[1])
        sock = await _udp()
        unknown = b"\xc0\x1a\x2a\x3a\x4a"
        small_scid, big_scid = b"S" * 8, b"B" * 8
        await sock.sendto(unknown + b"\x08" + os.urandom(8) + b"\x08" + small_scid
                          + bytes(1199 - 23), peer)  # fmt: skip
        await sock.sendto(unknown + b"\x08" + os.urandom(8) + b"\x08" + small_scid, peer)
        await sock.sendto(initial_with(bytes([0x06, 0, 4]) + b"helo", size=1000), peer)
        await sock.sendto(unknown + b"\x08" + os.urandom(8) + b"\x08" + big_scid
                          + bytes(1200 - 23), peer)  # fmt: skip
        with trio.fail_after(5):
            answer, _ = await sock.recvfrom(2048)
        # the first answer is the big datagram's: the small ones drew none
        header = pull_quic_header(Buffer(data=answer), host_cid_length=8)
        assert header.packet_type == QuicPacketType.VERSION_NEGOTIATION
        assert header.destination_cid == big_scid
        assert server.versions_negotiated == 1
        assert server.initials_dropped["too_small"] == 1
        sock.close()


async def test_initials_beyond_a_batchs_share_still_get_a_retry(certs: CertFiles) -> None:
    """Creating connections is limited per receive batch; answering with Retry is not."""
    limits = AdmissionSettings(
        handshakes_per_batch=2, retry_pending_threshold=2, retry_initial_rate=1e6
    )
    async with quic_pair(certs, handler=echo_streams, admission=limits) as pair:
        server = pair.server
        peer = ("127.0.0.1", server.local_address[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.3", 0))
            for _ in range(6):  # no checkpoint in between: the server reads one batch
                sock.sendto(_first_datagram(_client(), peer), peer)
            await _eventually(lambda: server.retries_sent == 4)
        assert server.handshakes_pending == 2
        assert server.initials_dropped["busy"] == 0


def test_the_waiting_room_serves_in_arrival_order_within_its_bounds() -> None:
    room: WaitingRoom[str] = WaitingRoom(limit=3, max_wait=1.0, per_source=2)
    assert room.wait(b"a", "first", "10.0.0.1", 0.0)
    assert room.wait(b"b", "second", "10.0.0.1", 0.1)
    assert not room.wait(b"c", "third", "10.0.0.1", 0.2)  # that source's share
    assert room.wait(b"a", "first again", "10.0.0.1", 0.3)  # a retransmission keeps its place
    assert room.wait(b"d", "other", "10.0.0.2", 0.4)
    assert not room.wait(b"e", "full", "10.0.0.3", 0.5)
    assert len(room) == 3 and b"a" in room
    got = []
    while (item := room.peek(0.6)) is not None:
        got.append(room.pop())
        assert got[-1] == item
    assert got == ["first", "second", "other"]
    assert room.wait(b"c", "third", "10.0.0.1", 0.7)  # the source's places were freed


def test_the_waiting_room_gives_up_places_that_waited_too_long_for_good() -> None:
    room: WaitingRoom[str] = WaitingRoom(limit=10, max_wait=1.0, per_source=10)
    room.wait(b"old", "old", "10.0.0.1", 0.0)
    room.wait(b"new", "new", "10.0.0.1", 0.8)
    assert room.peek(1.0) == "old"  # waited exactly max_wait: still in time
    assert room.peek(1.5) == "new"
    assert room.expired == 1 and b"old" not in room
    # its client's retransmission does not queue again: that attempt is past saving
    assert not room.wait(b"old", "old", "10.0.0.1", 1.6)
    # a token's lifetime later the attempt is forgotten
    assert room.peek(40.0) is None
    assert room.wait(b"old", "old", "10.0.0.1", 40.0)


async def test_a_validated_client_beyond_the_limit_waits_for_the_freed_slot(
    certs: CertFiles,
) -> None:
    """With the only handshake slot taken, a client that came back with its Retry token
    waits (its Initial is neither dropped nor decrypted again) and gets the slot as soon
    as the handshake holding it completes."""
    limits = AdmissionSettings(retry=True, max_pending_handshakes=1, max_wait=30.0)
    async with quic_pair(certs, handler=echo_streams, admission=limits) as pair:
        server = pair.server
        peer = ("127.0.0.1", server.local_address[1])
        holder_sock = await _udp("127.0.0.2")
        holder = _client()
        await holder_sock.sendto(_first_datagram(holder, peer), peer)
        with trio.fail_after(5):
            retry, _ = await holder_sock.recvfrom(2048)
        holder.receive_datagram(retry, peer, now=0.0)
        for datagram, _ in holder.datagrams_to_send(now=0.0):
            await holder_sock.sendto(datagram, peer)
        await _eventually(lambda: server.handshakes_pending == 1)

        connected: list[object] = []

        async def other_client() -> None:
            connected.append(
                await connect(
                    pair.nursery, "127.0.0.1", peer[1], TransportSettings(), client_tls(certs)
                )
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other_client)
            await _eventually(lambda: len(server.admission.waiting) == 1)
            assert not connected
            # the holder completes its handshake: the slot is the waiting client's
            with trio.fail_after(5):
                while server.handshakes_pending == 1 and not connected:
                    with trio.move_on_after(0.5):
                        answer, _ = await holder_sock.recvfrom(2048)
                        holder.receive_datagram(answer, peer, now=0.0)
                        for datagram, _ in holder.datagrams_to_send(now=0.0):
                            await holder_sock.sendto(datagram, peer)
            await _eventually(lambda: bool(connected))
        assert server.admission.admitted_after_wait == 1
        assert server.initials_dropped["global_limit"] == 0
        assert len(server.admission.waiting) == 0
        registry = CollectorRegistry()
        watch_agent_server(registry, server)
        assert (
            registry.get_sample_value("reverse_http_quic_handshakes_admitted_after_wait_total")
            == 1.0
        )
        assert registry.get_sample_value("reverse_http_quic_handshakes_waiting") == 0.0
        assert registry.get_sample_value("reverse_http_quic_handshake_waits_expired_total") == 0
        holder_sock.close()


def test_a_retransmitted_first_initial_gets_the_same_retry_at_a_bounded_rate() -> None:
    memory = RetryMemory(limit=2, ttl=5.0, resend_after=0.5)
    client = ("10.0.0.1", 4433)
    assert memory.recall(b"dcid-a", client, 0.0) is None  # new: decrypt, answer
    memory.remember(b"dcid-a", client, b"retry-a", 0.0)
    assert memory.recall(b"dcid-a", client, 0.2) == b""  # just sent: nothing again
    assert memory.recall(b"dcid-a", client, 0.6) == b"retry-a"
    assert memory.recall(b"dcid-a", client, 0.8) == b""
    assert memory.recall(b"dcid-a", ("10.0.0.2", 4433), 0.8) is None  # another address
    memory.remember(b"dcid-b", client, b"retry-b", 1.0)
    memory.remember(b"dcid-c", client, b"retry-c", 1.0)  # over the bound: the oldest goes
    assert len(memory) == 2 and memory.recall(b"dcid-a", client, 2.0) is None
    assert memory.recall(b"dcid-b", client, 6.5) is None  # forgotten after ttl


def test_a_retry_remembered_again_is_the_newest_and_the_older_ones_still_expire() -> None:
    """The same first Initial from another address (NAT rebinding, or a spoofed copy)
    draws a new Retry, remembered again: it moves to the end of the table, so pruning,
    which stops at the first unexpired entry, does not keep the older ones past ttl."""
    memory = RetryMemory(limit=10, ttl=5.0, resend_after=0.5)
    client, rebound = ("10.0.0.1", 4433), ("10.0.0.1", 5544)
    memory.remember(b"dcid-a", client, b"retry-a", 0.0)
    memory.remember(b"dcid-b", client, b"retry-b", 1.0)
    memory.remember(b"dcid-a", rebound, b"retry-a2", 4.0)
    assert memory.recall(b"dcid-b", client, 6.5) is None  # 5.5 s after its Retry
    assert len(memory) == 1
    assert memory.recall(b"dcid-a", rebound, 6.5) == b"retry-a2"
    assert memory.recall(b"dcid-a", client, 6.5) is None  # the new address replaced it


def test_a_retry_remembered_again_in_a_full_memory_evicts_nothing() -> None:
    memory = RetryMemory(limit=2, ttl=5.0, resend_after=0.5)
    client, rebound = ("10.0.0.1", 4433), ("10.0.0.1", 5544)
    memory.remember(b"dcid-a", client, b"retry-a", 0.0)
    memory.remember(b"dcid-b", client, b"retry-b", 0.0)
    memory.remember(b"dcid-b", rebound, b"retry-b2", 1.0)  # an entry replaced, none added
    assert len(memory) == 2
    assert memory.recall(b"dcid-a", client, 1.0) == b"retry-a"
    assert memory.recall(b"dcid-b", rebound, 1.0) == b""  # sent just now


async def test_a_retransmitted_first_initial_draws_no_new_retry(certs: CertFiles) -> None:
    """While the Retry is on its way a client resends its first Initial: that costs no
    decryption and no new token, and draws no second Retry."""
    async with quic_pair(certs, admission=AdmissionSettings(retry=True)) as pair:
        server = pair.server
        peer = ("127.0.0.1", server.local_address[1])
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as marker,
        ):
            sock.bind(("127.0.0.4", 0))
            marker.bind(("127.0.0.5", 0))
            before = server.retries_sent  # the pair's own client had one
            datagram = _first_datagram(_client(), peer)
            for _ in range(3):  # no checkpoint in between: one receive batch
                sock.sendto(datagram, peer)
            marker.sendto(_first_datagram(_client(), peer), peer)
            # the marker's Retry is the last
            await _eventually(lambda: server.retries_sent == before + 2)
            sock.setblocking(False)
            answers = []
            with contextlib.suppress(BlockingIOError):
                while True:
                    answers.append(sock.recv(2048))
        assert len(answers) == 1
        header = pull_quic_header(Buffer(data=answers[0]), host_cid_length=8)
        assert header.packet_type == QuicPacketType.RETRY
        assert server.admission.retries_repeated == 0


async def test_a_server_going_away_starts_no_handshake_for_those_waiting(
    certs: CertFiles,
) -> None:
    """Cancelled (an error elsewhere in the proxy, a test's end), each handshake in
    progress ends and frees its slot: that must not start the waiting clients'
    handshakes, one after the other, each ending at once and freeing the slot again."""
    from reverse_http.quic import serve_quic
    from reverse_http.quic.connection import Connection
    from tests.quic_helpers import server_settings

    async def handler(conn: Connection) -> None:
        await conn.wait_closed()

    settings = server_settings(certs, admission=AdmissionSettings(max_pending_handshakes=1))
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_quic, handler, "127.0.0.1", 0, settings)
        peer = ("127.0.0.1", server.local_address[1])
        now = trio.current_time()
        data = _first_datagram(_client(), peer)
        header = pull_quic_header(Buffer(data=data), host_cid_length=8)
        assert server._new_connection(data, ("127.0.0.1", 9), header, now)  # the only slot
        for i in range(20):  # waiting for it (address-validated clients, in real life)
            data = _first_datagram(_client(), peer)
            header = pull_quic_header(Buffer(data=data), host_cid_length=8)
            addr = ("127.0.0.1", 1000 + i)
            place = (data, addr, header, header.destination_cid, None, "127.0.0.1")
            assert server.admission.waiting.wait(header.destination_cid, place, "127.0.0.1", now)
        await trio.testing.wait_all_tasks_blocked()
        assert server.handshakes_pending == 1
        nursery.cancel_scope.cancel()
    assert server.handshakes_admitted_after_wait == 0
    assert server.handshakes_pending == 0


async def test_an_initial_that_crashes_its_connection_costs_only_that_connection(
    certs: CertFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """New connections' Initials are handled at the end of their receive batch, outside
    the endpoint's per-datagram guard: a failure there (a bug, ours or aioquic's, on some
    ClientHello) ended the receive loop, and with it every agent's connection."""
    from reverse_http.quic.protocol import TunnelQuicConnection

    async with quic_pair(certs) as pair:
        server = pair.server
        peer = ("127.0.0.1", server.local_address[1])
        poisoned = _first_datagram(_client(), peer)
        crashed: list[bytes] = []
        receive = TunnelQuicConnection.receive_datagram

        def receive_datagram(self: TunnelQuicConnection, data: bytes, *args: object) -> None:
            if data == poisoned:
                crashed.append(data)
                raise RuntimeError("a bug")
            receive(self, data, *args)  # type: ignore[arg-type]

        monkeypatch.setattr(TunnelQuicConnection, "receive_datagram", receive_datagram)
        sock = await _udp()
        await sock.sendto(poisoned, peer)
        # its slot is free again (once its closing connection is gone)
        await _eventually(
            lambda: crashed and len(server.connections) == 1 and server.handshakes_pending == 0
        )
        # the established client still works, and a new one connects
        stream = await pair.client.open_stream()
        await stream.send_all(b"ping")
        other = await connect(
            pair.nursery, "127.0.0.1", peer[1], TransportSettings(), client_tls(certs)
        )
        assert other.handshake_complete
        sock.close()


async def test_under_load_a_first_initial_gets_its_retry_without_being_decrypted(
    certs: CertFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deriving an Initial's keys and decrypting it cost more than the Retry; under load
    a token-less Initial is answered without either (RFC 9000 17.2.5.1), and the client
    then connects with its token (that Initial is decrypted)."""
    from reverse_http.quic import server as server_module

    checked: list[bytes] = []
    real = server_module.opens_handshake

    def counting(data: bytes, cid_length: int) -> bool:
        checked.append(data)
        return real(data, cid_length)

    monkeypatch.setattr(server_module, "opens_handshake", counting)
    async with quic_pair(certs, handler=echo_streams, retry=True) as pair:
        server = pair.server
        assert server.retries_sent == 1 and len(checked) == 1  # the pair's client: token only
        peer = ("127.0.0.1", server.local_address[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.6", 0))
            sock.sendto(initial_with(bytes([0x06, 0, 4]) + b"helo", dcid=os.urandom(8)), peer)
            await _eventually(lambda: server.retries_sent == 2)
        assert len(checked) == 1
        assert server.initials_refused == 0
    checked.clear()
    async with quic_pair(certs, handler=echo_streams) as pair:  # no load: checked, refused
        server = pair.server
        peer = ("127.0.0.1", server.local_address[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.6", 0))
            sock.sendto(initial_with(bytes([QuicFrameType.PING]), dcid=os.urandom(8)), peer)
            await _eventually(lambda: server.initials_refused == 1)
        assert server.retries_sent == 0 and len(checked) == 2
