"""No server state for an Initial that does not decrypt or carries no ClientHello."""

from __future__ import annotations

import os
import socket

import pytest
import trio
from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import (
    QuicFrameType,
    QuicPacketType,
    QuicProtocolVersion,
    pull_quic_header,
)
from aioquic.quic.packet_builder import QuicPacketBuilder
from hypothesis import given, settings
from hypothesis import strategies as st

from reverse_http.devcerts import CertFiles
from reverse_http.quic import TransportSettings, connect
from reverse_http.quic.initial import forget_keys, keep_keys, opens_handshake
from tests.quic_helpers import client_tls, echo_streams, quic_pair

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


def test_a_retransmitted_initial_reuses_its_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deriving Initial keys is most of the check's cost (about 0.2 ms); a client whose
    handshake was not admitted yet retransmits under the same CID."""
    data = client_hello_datagram()
    setups = []
    real = CryptoPair.setup_initial

    def counting(self: CryptoPair, *args: object, **kwargs: object) -> None:
        setups.append(1)
        real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(CryptoPair, "setup_initial", counting)
    forget_keys()
    assert opens_handshake(data, 8)
    dcid = pull_quic_header(Buffer(data=data), host_cid_length=8).destination_cid
    assert keep_keys(dcid, QuicProtocolVersion.VERSION_1)  # the server dropped it: busy
    assert all(opens_handshake(data, 8) for _ in range(4))
    assert len(setups) == 1  # derived once, then taken from the cache
    forget_keys()
