"""No server state for an Initial that does not decrypt or carries no ClientHello."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trio
import trio.testing
from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.crypto import CryptoContext, CryptoPair
from aioquic.quic.packet import (
    QuicFrameType,
    QuicPacketType,
    QuicProtocolVersion,
    pull_quic_header,
)
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.tls import CipherSuite
from hypothesis import given, settings
from hypothesis import strategies as st

from reverse_http.devcerts import CertFiles
from reverse_http.quic import AdmissionSettings, QuicServer, TransportSettings, connect
from reverse_http.quic.connection import State
from reverse_http.quic.initial import forget_keys, keep_keys, opens_handshake, take_keys
from reverse_http.quic.settings import client_configuration
from tests.quic_helpers import client_tls, echo_streams, quic_pair, server_settings

DCID = bytes(range(8))
SCID = bytes(range(8, 16))


def client_hello_datagram() -> bytes:
    quic = QuicConnection(configuration=QuicConfiguration(is_client=True, alpn_protocols=["x"]))
    quic.connect(("127.0.0.1", 4242), now=0.0)
    return quic.datagrams_to_send(now=0.0)[0][0]


def initial_with(frames: bytes, dcid: bytes = DCID, token: bytes = b"", size: int = 1200) -> bytes:
    """A client Initial padded to ``size`` bytes carrying ``frames`` (raw frame bytes)."""
    pair = CryptoPair()
    pair.setup_initial(cid=dcid, is_client=True, version=QuicProtocolVersion.VERSION_1)
    builder = QuicPacketBuilder(
        host_cid=SCID,
        peer_cid=dcid,
        version=QuicProtocolVersion.VERSION_1,
        is_client=True,
        max_datagram_size=size,
        peer_token=token,
    )
    builder.start_packet(QuicPacketType.INITIAL, pair)
    room = size - 100 - len(token)
    buf = builder.start_frame(frames[0], capacity=room)
    buf.push_bytes(frames[1:])
    buf.push_bytes(bytes(room - len(frames)))  # PADDING
    datagrams, _ = builder.flush()
    return datagrams[0]


def ack_frame() -> bytes:
    buf = Buffer(capacity=16)
    for value in (QuicFrameType.ACK, 3, 0, 1, 0, 0, 1):  # largest 3, one extra range
        buf.push_uint_var(value)
    return bytes(buf.data)


def test_a_client_hello_opens_a_handshake() -> None:
    data = client_hello_datagram()
    assert len(data) >= 1200
    assert opens_handshake(data, 8)


def test_ping_and_ack_only_initials_do_not() -> None:
    assert not opens_handshake(initial_with(bytes([QuicFrameType.PING])), 8)
    assert not opens_handshake(initial_with(ack_frame() + bytes([QuicFrameType.PING])), 8)
    crypto = bytes([QuicFrameType.CRYPTO, 0, 4]) + b"helo"
    assert opens_handshake(initial_with(ack_frame() + crypto), 8)


def test_initials_that_do_not_decrypt_do_not() -> None:
    good = bytearray(client_hello_datagram())
    tampered = bytearray(good)
    tampered[100] ^= 1  # ciphertext: the AEAD tag no longer matches
    assert not opens_handshake(bytes(tampered), 8)
    assert not opens_handshake(
        b"\xc0\x00\x00\x00\x01\x08" + os.urandom(8) + b"\x08" + bytes(1200), 8
    )
    assert not opens_handshake(bytes(good[:300]), 8)  # truncated
    assert not opens_handshake(b"", 8)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1199), st.integers(1, 255)), min_size=1, max_size=8))
def test_mutated_client_hellos_never_raise(flips: list[tuple[int, int]]) -> None:
    data = bytearray(CLIENT_HELLO)
    for index, mask in flips:
        data[index] ^= mask
    assert opens_handshake(bytes(data), 8) in (True, False)


CLIENT_HELLO = client_hello_datagram()


async def test_server_keeps_no_state_for_a_ping_only_initial(certs: CertFiles) -> None:
    """A ClientHello the server never admitted, followed by the client's PING probe: the
    probe gets no answer (aioquic would close the attempt with PROTOCOL_VIOLATION)."""
    async with quic_pair(certs, handler=echo_streams) as pair:
        port = pair.server.local_address[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
            for _ in range(20):
                dcid = os.urandom(8)
                s.sendto(initial_with(bytes([QuicFrameType.PING]), dcid), ("127.0.0.1", port))
            async with trio.open_nursery() as n:
                other = await connect(
                    n,
                    "127.0.0.1",
                    port,
                    TransportSettings(),
                    client_tls(certs),
                )
                assert other.handshake_complete
                await other.close()
            try:
                answer = s.recv(2048)
            except BlockingIOError:
                answer = b""
        assert answer == b""
        assert pair.server.initials_refused == 20
        assert len(pair.server.connections) <= 2  # the pair's own and the one above


def test_padding_before_the_crypto_frame_is_skipped() -> None:
    """quic-go's layout: ACK, about 1100 bytes of PADDING, then CRYPTO."""
    from reverse_http.quic.initial import _has_crypto_frame

    ack = b"\x02\x00\x00\x00\x00"
    crypto = b"\x06\x00\x01x"
    assert _has_crypto_frame(ack + bytes(1100) + crypto)
    assert _has_crypto_frame(bytes(1100) + crypto)
    assert not _has_crypto_frame(ack + bytes(1100))  # padding to the end: no ClientHello
    assert not _has_crypto_frame(bytes(600) + b"\x01" + bytes(500))  # PING-only
    assert not _has_crypto_frame(bytes(1100) + b"\x1c\x00\x00\x00")  # CONNECTION_CLOSE


def _key_setups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every packet-protection key set up from now on (one HKDF secret, its key, IV and
    header-protection key, two OpenSSL cipher contexts), by QUIC version, while
    ``_COUNTING`` is on."""
    setups: list[int] = []
    real = CryptoContext.setup

    def counting(
        self: CryptoContext, *, cipher_suite: CipherSuite, secret: bytes, version: int
    ) -> None:
        if _COUNTING:
            setups.append(version)
        real(self, cipher_suite=cipher_suite, secret=secret, version=version)

    monkeypatch.setattr(CryptoContext, "setup", counting)
    return setups


#: Whether _key_setups counts (the server's work, not the in-memory client's).
_COUNTING = False


@contextmanager
def _counting() -> Iterator[None]:
    global _COUNTING
    _COUNTING = True
    try:
        yield
    finally:
        _COUNTING = False


def test_a_retransmitted_initial_reuses_its_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deriving Initial keys is most of the check's cost (about 0.2 ms); a client whose
    handshake was not admitted yet retransmits under the same CID. The check needs only
    the client's direction of them."""
    data = client_hello_datagram()
    setups = _key_setups(monkeypatch)
    forget_keys()
    with _counting():
        assert opens_handshake(data, 8)
        dcid = pull_quic_header(Buffer(data=data), host_cid_length=8).destination_cid
        assert keep_keys(dcid, QuicProtocolVersion.VERSION_1)  # the server dropped it: busy
        assert all(opens_handshake(data, 8) for _ in range(4))
    assert setups == [QuicProtocolVersion.VERSION_1]  # derived once, then taken from the cache
    forget_keys()


@pytest.mark.parametrize("version", [QuicProtocolVersion.VERSION_1, QuicProtocolVersion.VERSION_2])
def test_keys_taken_for_a_connection_are_aioquics_server_initial_keys(version: int) -> None:
    """What a connection gets from take_keys protects exactly as the pair aioquic
    derives for a server, and still reads the client's Initial; it leaves the cache."""
    config = QuicConfiguration(is_client=True, alpn_protocols=["x"])
    config.supported_versions = [version]
    client = QuicConnection(configuration=config)
    client.connect(("127.0.0.1", 4242), now=0.0)
    data = client.datagrams_to_send(now=0.0)[0][0]
    header = pull_quic_header(Buffer(data=data), host_cid_length=8)
    forget_keys()
    assert opens_handshake(data, 8)
    taken = take_keys(header.destination_cid, version)
    assert taken is not None and taken.send.is_valid()
    assert take_keys(header.destination_cid, version) is None  # taken once
    reference = CryptoPair()
    reference.setup_initial(cid=header.destination_cid, is_client=False, version=version)
    plain, payload = b"\xc0\x00\x00\x00\x01" + bytes(18), bytes(range(200))
    assert taken.encrypt_packet(plain, payload, 7) == reference.encrypt_packet(plain, payload, 7)
    _, got, _ = taken.decrypt_packet(data[: header.packet_length], _encrypted_offset(data), 0)
    assert (
        got == reference.decrypt_packet(data[: header.packet_length], _encrypted_offset(data), 0)[1]
    )


def _encrypted_offset(data: bytes) -> int:
    buf = Buffer(data=data)
    pull_quic_header(buf, host_cid_length=8)
    return buf.tell()


class _Endpoint:
    """Collects what the server sends (no socket)."""

    local_address = ("127.0.0.1", 4433)

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, object]] = []

    def send_nowait(self, datagrams: list[tuple[bytes, object]]) -> None:
        self.sent += datagrams


def _to_server(server: QuicServer, client: QuicConnection, addr: tuple[str, int]) -> None:
    """The client's datagrams as one receive batch of the server (the server's work
    counted by _key_setups)."""
    datagrams = client.datagrams_to_send(now=trio.current_time())
    with _counting():
        for data, _ in datagrams:
            server.dispatch(data, addr)
        server._after_batch()


def _to_clients(server: QuicServer, clients: dict[tuple[str, int], QuicConnection]) -> None:
    endpoint = server.endpoint
    assert isinstance(endpoint, _Endpoint)
    sent, endpoint.sent = endpoint.sent, []
    for data, addr in sent:
        clients[addr].receive_datagram(data, ("127.0.0.1", 4433), now=trio.current_time())  # type: ignore[index]
    for client in clients.values():
        while client.next_event() is not None:
            pass


async def _handshake_through(
    server: QuicServer, client: QuicConnection, addr: tuple[str, int]
) -> None:
    """Datagrams between ``client`` and ``server`` until the handshake is complete."""
    for _ in range(10):
        _to_server(server, client, addr)
        _to_clients(server, {addr: client})
    assert client._handshake_complete  # type: ignore[attr-defined]
    assert [c.handshake_complete for c in server.connections] == [True]


def _storm_server(certs: CertFiles, **admission: Any) -> QuicServer:
    settings = server_settings(certs, admission=AdmissionSettings(retry=True, **admission))
    server = QuicServer(settings, _Endpoint())  # type: ignore[arg-type]
    server._spawn = server.connections.add
    return server


def _client(certs: CertFiles, version: int = QuicProtocolVersion.VERSION_1) -> QuicConnection:
    config = client_configuration(TransportSettings(), client_tls(certs), "localhost")
    config.supported_versions = [version]
    client = QuicConnection(configuration=config)
    client.connect(("127.0.0.1", 4433), now=trio.current_time())
    return client


@pytest.mark.parametrize("version", [QuicProtocolVersion.VERSION_1, QuicProtocolVersion.VERSION_2])
async def test_a_retried_handshake_sets_up_each_key_once(
    certs: CertFiles, monkeypatch: pytest.MonkeyPatch, version: int
) -> None:
    """A storm's handshake: the first Initial draws a Retry, the second (with the token)
    opens the connection. The first is answered without being decrypted; the second's
    check derives the client's Initial key only; the connection takes it and adds its own
    direction, and derives none for the QUIC version it does not use. Then two Handshake
    and two 1-RTT keys: 6 key setups (12 with both directions for each check, v1 and v2
    for the connection; 7 when the first Initial was decrypted too)."""
    server = _storm_server(certs)
    setups = _key_setups(monkeypatch)
    await _handshake_through(server, _client(certs, version), ("127.0.0.1", 50000))
    assert server.retries_sent == 1
    assert setups == [version] * 6


def _second_waits_for_first(server: Any, certs: CertFiles) -> dict[Any, Any]:
    """Two clients' ClientHellos and their Retries, then their second Initials: with one
    handshake slot, the second waits for the first. The clients, by address."""
    clients = {("127.0.0.1", 50001): _client(certs), ("127.0.0.1", 50002): _client(certs)}
    for _ in range(2):
        for addr, client in clients.items():
            _to_server(server, client, addr)
        _to_clients(server, clients)
    return clients


async def test_a_connection_admitted_after_waiting_derives_its_own_keys(
    certs: CertFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Waiting Initials keep no keys (9 KiB each): one admitted later derives both
    directions of its version's Initial keys once more, and only those."""
    server = _storm_server(certs, max_pending_handshakes=1)
    setups = _key_setups(monkeypatch)
    clients = _second_waits_for_first(server, certs)
    assert server.handshakes_waiting == 1
    (conn,) = server.connections
    del clients[("127.0.0.1", 50001)]
    forget_keys()  # in a storm, other Initials were checked since: no keys of its are left
    setups.clear()
    with _counting():
        server._handshake_over(conn)  # as if its handshake failed: the waiting one starts
        server._admit_waiting(trio.current_time(), 1)
    assert server.handshakes_admitted_after_wait == 1
    server.connections.discard(conn)
    await _handshake_through(server, clients[("127.0.0.1", 50002)], ("127.0.0.1", 50002))
    assert setups == [QuicProtocolVersion.VERSION_1] * 6


async def test_an_initial_with_a_valid_token_is_decrypted_only_when_its_handshake_starts(
    certs: CertFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token proves the client received our Retry at its address; in a storm most such
    Initials wait and many waits are given up, so each is decrypted only when it leaves
    the waiting room (and one that then does not decrypt is dropped, no handshake)."""
    from reverse_http.quic import server as server_module

    checked: list[bytes] = []
    real = server_module.opens_handshake
    monkeypatch.setattr(
        server_module, "opens_handshake", lambda data, n: checked.append(data) or real(data, n)
    )
    server = _storm_server(certs, max_pending_handshakes=1)
    clients = _second_waits_for_first(server, certs)
    assert server.retries_sent == 2 and server.handshakes_waiting == 1
    assert len(checked) == 1  # the first client's token Initial, which started
    (conn,) = server.connections
    waiting = server.admission.waiting.peek(trio.current_time())
    assert waiting is not None
    data = bytearray(waiting[0])
    data[300:320] = bytes(b ^ 0xFF for b in data[300:320])  # payload damaged, token intact
    server.admission.waiting._places[next(iter(server.admission.waiting._places))] = (
        (bytes(data), *waiting[1:]),
        trio.current_time(),
        waiting[-1],
    )
    server._handshake_over(conn)
    assert server._admit_waiting(trio.current_time(), 1) == 0
    assert len(checked) == 2 and server.initials_refused == 1
    assert server.handshakes_pending == 0 and len(server.connections) == 1
    del clients


async def test_discarded_initial_keys_stay_discarded_for_the_other_version(
    certs: CertFiles,
) -> None:
    """Once the handshake discarded the Initial keys, an Initial under the connection's
    first CID is dropped in either QUIC version: Initial keys follow from a CID seen in
    clear, so one accepted then lets an on-path sender close the connection (here with
    a CONNECTION_CLOSE). The version the connection did not use must not get fresh
    keys derived lazily at that point (aioquic derived both up front and tore both down)."""
    settings = server_settings(certs, admission=AdmissionSettings(retry=False))
    server = QuicServer(settings, _Endpoint())  # type: ignore[arg-type]
    server._spawn = server.connections.add
    client = _client(certs)
    addr = ("127.0.0.1", 50003)
    first = client.datagrams_to_send(now=trio.current_time())
    dcid = pull_quic_header(Buffer(data=first[0][0]), host_cid_length=8).destination_cid
    for data, _ in first:
        server.dispatch(data, addr)
    server._after_batch()
    _to_clients(server, {addr: client})
    await _handshake_through(server, client, addr)
    (conn,) = server.connections
    for version in (QuicProtocolVersion.VERSION_2, QuicProtocolVersion.VERSION_1):
        pair = CryptoPair()
        pair.setup_initial(cid=dcid, is_client=True, version=version)
        builder = QuicPacketBuilder(
            host_cid=SCID,
            peer_cid=dcid,
            version=version,
            is_client=True,
            max_datagram_size=1200,
            packet_number=9,
        )
        builder.start_packet(QuicPacketType.INITIAL, pair)
        buf = builder.start_frame(QuicFrameType.TRANSPORT_CLOSE, capacity=1000)
        for value in (0x0A, 0, 0):  # PROTOCOL_VIOLATION, frame type 0, no reason
            buf.push_uint_var(value)
        buf.push_bytes(bytes(1000 - 3))  # PADDING up to a full-sized datagram
        (forged,), _ = builder.flush()
        server.dispatch(forged, addr)
        server._after_batch()
        assert conn.state is State.OPEN, version


async def test_the_waiting_metrics_count_no_place_past_its_wait(
    certs: CertFiles, mock_clock: trio.testing.MockClock
) -> None:
    """handshakes_waiting is a gauge of clients waiting now: a place that waited past
    max_wait is given up (its client's own timeout ends it) whether or not a datagram
    came since to prune it, and counted in handshake_waits_expired."""
    server = _storm_server(certs, max_pending_handshakes=1)
    _second_waits_for_first(server, certs)
    assert (server.handshakes_waiting, server.handshake_waits_expired) == (1, 0)
    mock_clock.jump(server.settings.admission.max_wait + 0.1)  # nothing comes meanwhile
    assert (server.handshakes_waiting, server.handshake_waits_expired) == (0, 1)


async def test_a_batch_starts_at_most_its_share_of_handshakes_the_admit_loops_too(
    certs: CertFiles,
) -> None:
    """A handshake start is milliseconds of CPU without reading the socket. In a
    reconnect storm the admit loop gave every freed slot a start at once, beyond the
    batch's share: the receive queue, full of retransmitted Initials, held back (and
    dropped) the packets that would finish the handshakes in progress, and 128 places
    held that long capped a 5000-agent storm at 40-120 handshakes/s. Freed slots past
    the batch's share go to the waiting clients at the next batch, oldest first."""
    server = _storm_server(certs, handshakes_per_batch=2, max_pending_handshakes=2)
    clients = {("127.0.0.1", 50010 + i): _client(certs) for i in range(5)}

    def one_batch() -> None:
        now = trio.current_time()
        for addr, client in clients.items():
            for data, _ in client.datagrams_to_send(now=now):
                server.dispatch(data, addr)
        server._after_batch()

    one_batch()
    _to_clients(server, clients)
    assert server.retries_sent == 5
    one_batch()  # the Initials with tokens: two start, three wait
    assert (len(server.connections), server.handshakes_waiting) == (2, 3)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server._admit_loop)
        for conn in list(server.connections):
            server._handshake_over(conn)  # both handshakes ended: two slots are free
        await trio.testing.wait_all_tasks_blocked()
        assert (len(server.connections), server.handshakes_waiting) == (2, 3)
        server._after_batch()  # the next batch: its share goes to the longest waiting
        assert (len(server.connections), server.handshakes_waiting) == (4, 1)
        assert server.handshakes_admitted_after_wait == 2
        nursery.cancel_scope.cancel()
