"""Does a new connection's first datagram really open a handshake? (sans-IO)

A server starts no handshake for a datagram until its Initial decrypts and carries a
CRYPTO frame (the ClientHello); under load a token-less Initial gets a stateless Retry
without this check (see :mod:`.admission`). Everything else is dropped without an answer:
random long-header bytes, and a client's ACK- or PING-only Initial whose ClientHello
the server never admitted (it was dropped under load, or its half-done connection
was given up). aioquic would create a connection for such a packet and close it
with PROTOCOL_VIOLATION, killing the client's attempt; dropped, the client just
retransmits its ClientHello.
"""

from __future__ import annotations

from collections import OrderedDict

from aioquic.buffer import Buffer, BufferReadError  # type: ignore[attr-defined]
from aioquic.quic.crypto import (  # type: ignore[attr-defined]
    INITIAL_CIPHER_SUITE,
    INITIAL_SALT_VERSION_1,
    INITIAL_SALT_VERSION_2,
    CryptoError,
    CryptoPair,
)
from aioquic.quic.packet import (
    QuicFrameType,
    QuicPacketType,
    QuicProtocolVersion,
    pull_quic_header,
)
from aioquic.tls import cipher_suite_hash, hkdf_expand_label, hkdf_extract

_ACK_TYPES = (QuicFrameType.ACK, QuicFrameType.ACK_ECN)


def opens_handshake(data: bytes, cid_length: int) -> bool:
    """True when the datagram's first packet is an Initial that decrypts with the keys
    its destination CID implies and contains a CRYPTO frame."""
    buf = Buffer(data=data)
    try:
        header = pull_quic_header(buf, host_cid_length=cid_length)
    except ValueError:
        return False
    if header.packet_type != QuicPacketType.INITIAL or header.version is None:
        return False
    encrypted_offset = buf.tell()
    end = header.packet_length
    if end > len(data) or end <= encrypted_offset:
        return False
    global _last
    try:
        key = (bytes(header.destination_cid), header.version)
        pair = _initial_keys(key)
        _, payload, _ = pair.decrypt_packet(data[:end], encrypted_offset, 0)
    except (CryptoError, ValueError, BufferReadError):
        return False
    _last = (key, pair)
    return _has_crypto_frame(payload)


#: Initial keys of destination CIDs whose Initial decrypted but was dropped by a limit
#: (see keep_keys): such a client retransmits under the same CID, and deriving the keys
#: (HKDF, cipher objects) is most of what checking an Initial costs. Nothing else is
#: kept: a full pair held four OpenSSL cipher contexts and a dozen Python objects (about
#: 9 KiB; a checked one now has the client's direction only, see _setup_initial), and a
#: flood of Initials under fresh CIDs (each answered with a Retry, after which the
#: client uses another CID) filled the cache for good: 1024 pairs, ~7 MiB of C heap and
#: ~2.6 MiB of pymalloc arenas that objects allocated meanwhile kept from being
#: returned, even after the cache was dropped.
_KEYS: OrderedDict[tuple[bytes, int], CryptoPair] = OrderedDict()
KEY_CACHE_SIZE = 1024
#: The keys of the last Initial that decrypted, for keep_keys.
_last: tuple[tuple[bytes, int], CryptoPair] | None = None


def _initial_keys(key: tuple[bytes, int]) -> CryptoPair:
    pair = _KEYS.get(key)
    if pair is not None:
        _KEYS.move_to_end(key)
        return pair
    pair = CryptoPair()
    _setup_initial(pair, key, send=False)
    return pair


_HASH = cipher_suite_hash(INITIAL_CIPHER_SUITE)


def _setup_initial(pair: CryptoPair, key: tuple[bytes, int], send: bool) -> None:
    """One direction of a server's Initial keys (what ``CryptoPair.setup_initial`` does
    for both): checking an Initial needs only the client's, and most checked Initials
    are answered with a Retry or dropped, so the server's own are derived only for the
    connection that uses them (see take_keys). Half of each check's HKDF and cipher
    contexts."""
    cid, version = key
    salt = (
        INITIAL_SALT_VERSION_2
        if version == QuicProtocolVersion.VERSION_2
        else INITIAL_SALT_VERSION_1
    )
    initial_secret = hkdf_extract(_HASH, salt, cid)
    label = b"server in" if send else b"client in"
    secret = hkdf_expand_label(_HASH, initial_secret, label, b"", _HASH.digest_size)
    ctx = pair.send if send else pair.recv
    ctx.setup(cipher_suite=INITIAL_CIPHER_SUITE, secret=secret, version=version)


def keep_keys(dcid: bytes, version: int) -> bool:
    """Cache the keys :func:`opens_handshake` derived for the last Initial that decrypted,
    if it was this CID's: call it when that Initial is dropped by a limit (its client
    resends it under the same CID), not when it was answered with a Retry or opened a
    connection. True when the keys are (now) cached."""
    global _last
    key = (bytes(dcid), version)
    if key in _KEYS:
        return True
    if _last is None or _last[0] != key:
        return False
    _KEYS[key] = _last[1]
    _last = None
    if len(_KEYS) > KEY_CACHE_SIZE:
        _KEYS.popitem(last=False)
    return True


def take_keys(dcid: bytes, version: int) -> CryptoPair | None:
    """The server-side Initial keys of ``dcid`` if they were derived lately (the last
    Initial that decrypted, or cached by :func:`keep_keys`), completed with the
    server's direction, for the connection this CID opens: it then derives none
    itself. They leave the cache (the connection tears them down when it discards its
    Initial keys)."""
    global _last
    key = (bytes(dcid), version)
    pair = _KEYS.pop(key, None)
    if _last is not None and _last[0] == key:
        pair, _last = _last[1], None
    if pair is not None and not pair.send.is_valid():
        _setup_initial(pair, key, send=True)
    return pair


def cached_keys() -> int:
    """How many destination CIDs' Initial keys are kept."""
    return len(_KEYS)


def forget_keys() -> int:
    """Drop every kept key (a fresh table: a dict keeps its grown one); returns how many.

    The server calls this once new Initials have stopped for a while (a flood or a
    reconnect storm is over): no client is retransmitting a ClientHello by then."""
    global _KEYS, _last
    dropped = len(_KEYS)
    _KEYS, _last = OrderedDict(), None
    return dropped


def _has_crypto_frame(payload: bytes) -> bool:
    """Walk the frames an Initial may carry (RFC 9000 section 17.2.2) up to a CRYPTO frame."""
    buf = Buffer(data=payload)
    try:
        while not buf.eof():
            frame_type = buf.pull_uint_var()
            if frame_type == QuicFrameType.CRYPTO:
                return True
            if frame_type == QuicFrameType.PADDING:
                # quic-go pads *before* its CRYPTO frame: skip the zeros at C speed
                # (one frame per byte in Python was 0.9 ms per Initial, half the
                # proxy's CPU in a reconnect storm of Go agents).
                at = buf.tell()
                rest = len(payload) - at
                skipped = rest - len(payload[at:].lstrip(b"\x00"))
                buf.seek(at + skipped)
                continue
            if frame_type == QuicFrameType.PING:
                continue
            if frame_type in _ACK_TYPES:
                buf.pull_uint_var()  # largest acknowledged
                buf.pull_uint_var()  # ack delay
                ranges = buf.pull_uint_var()
                buf.pull_uint_var()  # first range
                for _ in range(2 * ranges):
                    buf.pull_uint_var()
                if frame_type == QuicFrameType.ACK_ECN:
                    for _ in range(3):
                        buf.pull_uint_var()
                continue
            return False  # CONNECTION_CLOSE, or a frame an Initial may not carry
    except BufferReadError:
        return False
    return False
