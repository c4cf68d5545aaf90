"""The QUIC transport over real loopback UDP sockets."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys

import pytest
import trio
import trio.lowlevel
import trio.testing

from reverse_http.devcerts import CertFiles
from reverse_http.quic import ClientTls, ConnectionError, QuicStream, TransportSettings, connect
from tests.quic_helpers import (
    echo_streams,
    pattern,
    quic_pair,
    read_to_eof,
    send_all_chunked,
    sha_of_stream,
)
from tests.tunnel_helpers import fixed_windows


async def test_echo(certs: CertFiles) -> None:
    async with quic_pair(certs, handler=echo_streams) as pair:
        stream = await pair.client.open_stream()
        await stream.send_all(b"hello quic")
        await stream.send_eof()
        with trio.fail_after(10):
            assert await read_to_eof(stream) == b"hello quic"
        await stream.aclose()
        assert pair.client.alpn == "reverse-http-proto"


async def test_64_mib_each_way_intact(certs: CertFiles) -> None:
    size = 64 * 1024 * 1024
    up, down = pattern(size, 1), pattern(size, 2)
    async with quic_pair(certs) as pair:
        server_conn = await pair.server_conn()
        client_stream = await pair.client.open_stream()
        results: dict[str, tuple[int, str]] = {}

        async def server_side() -> None:
            stream = await server_conn.accept_stream()
            async with trio.open_nursery() as n:
                n.start_soon(_collect, stream, results, "up")
                await send_all_chunked(stream, down)
                await stream.send_eof()
            await stream.aclose()

        async def client_send() -> None:
            await send_all_chunked(client_stream, up)
            await client_stream.send_eof()

        with trio.fail_after(120):
            async with trio.open_nursery() as n:
                n.start_soon(server_side)
                n.start_soon(client_send)
                n.start_soon(_collect, client_stream, results, "down")
    assert results["up"] == (size, hashlib.sha256(up).hexdigest())
    assert results["down"] == (size, hashlib.sha256(down).hexdigest())


async def _collect(stream: QuicStream, results: dict[str, tuple[int, str]], key: str) -> None:
    results[key] = await sha_of_stream(stream)


async def test_300_concurrent_streams(certs: CertFiles) -> None:
    """aioquic's stock limit is 128 open streams; all 300 must be open at once."""
    async with quic_pair(certs, handler=echo_streams) as pair:
        streams = [await pair.client.open_stream() for _ in range(300)]
        all_sent = trio.Event()
        sent = 0
        results: dict[int, bytes] = {}

        async def one(i: int, stream: QuicStream) -> None:
            nonlocal sent
            msg = f"stream {i} ".encode() * 50
            await stream.send_all(msg)
            sent += 1
            if sent == len(streams):
                all_sent.set()
            # nobody half-closes before every stream carried data: all are open together
            await all_sent.wait()
            await stream.send_eof()
            results[i] = await read_to_eof(stream)
            await stream.aclose()

        with trio.fail_after(60):
            async with trio.open_nursery() as n:
                for i, s in enumerate(streams):
                    n.start_soon(one, i, s)
    assert len(results) == 300
    assert all(results[i] == f"stream {i} ".encode() * 50 for i in range(300))


async def test_half_close_client_to_server(certs: CertFiles) -> None:
    async with quic_pair(certs) as pair:
        server_conn = await pair.server_conn()
        ours, theirs = await pair.stream_pair(server_conn)
        with trio.fail_after(10):
            await ours.send_all(b"request")
            await ours.send_eof()
            assert await read_to_eof(theirs) == b"request"
            # the other direction stays open after our EOF
            await theirs.send_all(b"response after eof")
            await theirs.send_eof()
            assert await read_to_eof(ours) == b"response after eof"
        with pytest.raises(trio.ClosedResourceError):
            await ours.send_all(b"more")


async def test_half_close_server_to_client(certs: CertFiles) -> None:
    async with quic_pair(certs) as pair:
        server_conn = await pair.server_conn()
        ours, theirs = await pair.stream_pair(server_conn)
        with trio.fail_after(10):
            await theirs.send_all(b"banner")
            await theirs.send_eof()
            assert await read_to_eof(ours) == b"banner"
            await ours.send_all(b"still talking")
            await ours.send_eof()
            assert await read_to_eof(theirs) == b"still talking"


async def test_peer_reset_surfaces_as_broken(certs: CertFiles) -> None:
    async with quic_pair(certs) as pair:
        server_conn = await pair.server_conn()
        ours, theirs = await pair.stream_pair(server_conn)
        with trio.fail_after(10):
            await ours.send_all(b"partial")
            # a cancelled send_all resets the stream: the byte stream is no longer intact
            with trio.CancelScope() as scope:
                scope.cancel()
                await ours.send_all(b"x" * (8 * 1024 * 1024))
            ours._abort_send()
            with pytest.raises(trio.BrokenResourceError, match="reset"):
                while True:
                    await theirs.receive_some()


async def test_stop_sending_surfaces_as_broken_on_write(certs: CertFiles) -> None:
    async with quic_pair(certs) as pair:
        server_conn = await pair.server_conn()
        ours, theirs = await pair.stream_pair(server_conn)
        # closing a stream whose receive side is open sends STOP_SENDING
        await theirs.aclose()
        with trio.fail_after(10), pytest.raises(trio.BrokenResourceError):
            while True:
                await ours.send_all(b"y" * 65536)


async def test_slow_reader_bounds_buffers_on_both_sides(certs: CertFiles) -> None:
    window = 256 * 1024
    send_buffer = 128 * 1024
    transport = fixed_windows(window, send_buffer)
    total = 16 * 1024 * 1024
    data = pattern(total, 7)
    async with quic_pair(certs, server_transport=transport, client_transport=transport) as pair:
        server_conn = await pair.server_conn()
        ours, theirs = await pair.stream_pair(server_conn)
        accepted = 0
        max_unacked = 0
        max_buffered = 0

        async def writer() -> None:
            nonlocal accepted, max_unacked
            for i in range(0, total, 16384):
                await ours.send_all(data[i : i + 16384])
                accepted += 16384
                max_unacked = max(max_unacked, ours.unacked)
            await ours.send_eof()

        async with trio.open_nursery() as n:
            n.start_soon(writer)
            # poll with a deadline until the reader's window is full
            with trio.fail_after(20):
                while theirs.receive_buffered < window - 2 * 1400:
                    await trio.sleep(0.01)
                    max_buffered = max(max_buffered, theirs.receive_buffered)
            # the writer is now blocked: it cannot have handed over more than
            # the peer's window plus its own send buffer (plus one chunk)
            for _ in range(20):
                await trio.sleep(0.01)
                assert accepted <= 1 + window + send_buffer + 16384
                assert theirs.receive_buffered <= window
                assert ours.unacked <= send_buffer
            # reading resumes the flow; everything arrives intact
            h = hashlib.sha256()
            got = 1  # the "!" exchanged by stream_pair
            with trio.fail_after(60):
                while chunk := await theirs.receive_some(65536):
                    h.update(chunk)
                    got += len(chunk)
                    max_buffered = max(max_buffered, theirs.receive_buffered)
        assert got == total + 1
        assert h.hexdigest() == hashlib.sha256(data).hexdigest()
        assert max_unacked <= send_buffer
        assert max_buffered <= window


async def test_garbage_datagrams_do_not_disturb_a_transfer(certs: CertFiles) -> None:
    size = 16 * 1024 * 1024
    data = pattern(size, 3)
    async with quic_pair(certs, handler=echo_streams) as pair:
        port = pair.server.local_address[1]
        server_cid = bytes(pair.client._quic._peer_cid.cid)
        stream = await pair.client.open_stream()
        junk_sent = 0

        async def junk() -> None:
            nonlocal junk_sent
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for i in range(3000):
                    kind = i % 6
                    if kind == 0:
                        d = os.urandom(1 + i % 1500)  # random bytes
                    elif kind == 1:
                        d = b"\xc0\x00\x00\x00\x01" + os.urandom(20)  # truncated Initial
                    elif kind == 2:  # Initial-looking flood with fresh CIDs
                        d = b"\xc0\x00\x00\x00\x01\x08" + os.urandom(8) + b"\x08"
                        d += os.urandom(8) + b"\x00\x44\xb0" + os.urandom(1200)
                    elif kind == 3:  # short header with the live connection's CID
                        d = b"\x40" + server_cid + os.urandom(60)
                    elif kind == 4:
                        d = b"\x80\xff\xff\xff\xff" + os.urandom(40)  # unknown version
                    else:
                        d = b""
                    s.sendto(d, ("127.0.0.1", port))
                    junk_sent += 1
                    if i % 50 == 0:
                        await trio.lowlevel.checkpoint()

        async def transfer() -> tuple[int, str]:
            async with trio.open_nursery() as n:
                n.start_soon(_send_then_eof, stream, data)
                result = await sha_of_stream(stream)
            return result

        with trio.fail_after(60):
            async with trio.open_nursery() as n:
                n.start_soon(junk)
                result = await transfer()
        assert junk_sent == 3000
        assert result == (size, hashlib.sha256(data).hexdigest())
        # the Initial-looking junk (kind 2) never got connection state
        assert pair.server.initials_refused >= 500
        assert not pair.client.is_closed
        # the server still accepts new connections
        async with trio.open_nursery() as n:
            other = await connect(
                n,
                "127.0.0.1",
                port,
                TransportSettings(),
                ClientTls(root_ca_file=certs.ca_cert, server_name="localhost"),
            )
            assert other.handshake_complete
            await other.close()


async def _send_then_eof(stream: QuicStream, data: bytes) -> None:
    await send_all_chunked(stream, data)
    await stream.send_eof()


async def test_stateless_retry(certs: CertFiles) -> None:
    async with quic_pair(certs, handler=echo_streams, retry=True) as pair:
        stream = await pair.client.open_stream()
        await stream.send_all(b"after retry")
        await stream.send_eof()
        with trio.fail_after(10):
            assert await read_to_eof(stream) == b"after retry"


async def test_untrusted_server_certificate_is_refused(
    certs: CertFiles, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from reverse_http.devcerts import make_dev_certs

    other = make_dev_certs(tmp_path_factory.mktemp("other-ca"))
    async with quic_pair(certs) as pair:
        port = pair.server.local_address[1]
        with trio.fail_after(15), pytest.raises(ConnectionError):
            await connect(
                pair.nursery,
                "127.0.0.1",
                port,
                TransportSettings(),
                ClientTls(root_ca_file=other.ca_cert, server_name="localhost"),
            )
        with trio.fail_after(15), pytest.raises(ConnectionError):
            await connect(
                pair.nursery,
                "127.0.0.1",
                port,
                TransportSettings(),
                ClientTls(root_ca_file=certs.ca_cert, server_name="wrong.example"),
            )
        # insecure-skip-verify connects anyway
        with trio.fail_after(15):
            conn = await connect(
                pair.nursery,
                "127.0.0.1",
                port,
                TransportSettings(),
                ClientTls(insecure_skip_verify=True),
            )
        assert conn.handshake_complete
        await conn.close()


async def test_graceful_close_drains_stream_data(certs: CertFiles) -> None:
    size = 4 * 1024 * 1024
    data = pattern(size, 9)
    async with quic_pair(certs) as pair:
        server_conn = await pair.server_conn()
        ours, theirs = await pair.stream_pair(server_conn)
        received: dict[str, tuple[int, str]] = {}
        async with trio.open_nursery() as n:
            n.start_soon(_collect, theirs, received, "x")
            await send_all_chunked(ours, data)
            await ours.send_eof()
            # close right away: the queued bytes must still arrive before CONNECTION_CLOSE
            info = await pair.client.close(0, "done")
        assert info.kind == "application"
        assert received["x"] == (size, hashlib.sha256(data).hexdigest())
        closed = await server_conn.wait_closed()
        assert closed.by_peer and closed.reason == "done"


async def test_application_close_code_reaches_peer(certs: CertFiles) -> None:
    async with quic_pair(certs) as pair:
        server_conn = await pair.server_conn()
        with trio.fail_after(10):
            await server_conn.close(409, "closing old connection")
            info = await pair.client.wait_closed()
        assert (info.error_code, info.reason, info.by_peer) == (409, "closing old connection", True)
        with pytest.raises(ConnectionError):
            await pair.client.open_stream()


async def test_conformance_check_half_closeable_stream(certs: CertFiles) -> None:
    small = fixed_windows(16384, 16384)
    async with quic_pair(certs, server_transport=small, client_transport=small) as pair:
        server_conn = await pair.server_conn()

        async def maker() -> tuple[QuicStream, QuicStream]:
            return await pair.stream_pair(server_conn)

        async def clogged_maker() -> tuple[QuicStream, QuicStream]:
            ours, theirs = await pair.stream_pair(server_conn)
            # Queue the peer's whole credit plus a full send buffer in one go: the
            # unacknowledged bytes can then never fall below the high-water mark
            # until the peer reads.
            # (check_two_way_stream also uses the pair flipped, so clog both ways.)
            for stream in (ours, theirs):
                stream._conn._send(stream, b"c" * (16384 + 16384), end_stream=False)
                assert stream.unacked >= 16384
            return ours, theirs

        await trio.testing.check_half_closeable_stream(maker, clogged_maker)


@pytest.mark.parametrize("victim", ["server", "client"])
async def test_killed_peer_is_noticed_within_liveness_timeout(
    certs: CertFiles, victim: str
) -> None:
    """SIGKILL the peer process: our streams fail and the connection ends, quickly."""
    liveness = 2.0
    transport = TransportSettings(liveness_timeout=liveness, keepalive_interval=10)
    script = os.path.join(os.path.dirname(__file__), "quic_peer.py")
    if victim == "server":
        proc = await trio.lowlevel.open_process(
            [sys.executable, script, "server", str(certs.cert), str(certs.key)],
            stdout=subprocess.PIPE,
        )
        assert proc.stdout is not None
        port = int((await proc.stdout.receive_some(64)).split()[0])
        async with trio.open_nursery() as n:
            conn = await connect(
                n,
                "127.0.0.1",
                port,
                transport,
                ClientTls(root_ca_file=certs.ca_cert, server_name="localhost"),
            )
            stream = await conn.open_stream()
            await stream.send_all(b"ping")
            assert await stream.receive_some() == b"ping"
            proc.kill()
            start = trio.current_time()
            with trio.fail_after(liveness + 3):
                with pytest.raises(trio.BrokenResourceError):
                    while True:
                        await stream.receive_some()
                info = await conn.wait_closed()
            assert info.kind == "liveness"
            assert trio.current_time() - start <= liveness + 1
            n.cancel_scope.cancel()
        await proc.wait()
    else:
        async with quic_pair(certs, server_transport=transport) as pair:
            port = pair.server.local_address[1]
            proc = await trio.lowlevel.open_process(
                [sys.executable, script, "client", str(certs.ca_cert), str(port)],
                stdout=subprocess.PIPE,
            )
            assert proc.stdout is not None
            server_conn = await pair.server_conn()  # the test's own client
            await pair.client.close()
            victim_conn = await pair.server_conn()
            stream = await victim_conn.accept_stream()
            assert await stream.receive_some() == b"hi"
            proc.kill()
            start = trio.current_time()
            with trio.fail_after(liveness + 3):
                with pytest.raises(trio.BrokenResourceError):
                    while True:
                        await stream.receive_some()
                info = await victim_conn.wait_closed()
            assert info.kind == "liveness"
            assert trio.current_time() - start <= liveness + 1
            assert server_conn.is_closed
            await proc.wait()


async def test_close_does_not_wait_for_a_reset_stream(certs: CertFiles) -> None:
    """Data on a stream the peer stopped can never be acknowledged: close() must not wait."""
    async with quic_pair(certs) as pair:
        server_conn = await pair.server_conn()
        ours, theirs = await pair.stream_pair(server_conn)
        await theirs.send_all(b"unread by the peer")
        await ours.aclose()  # STOP_SENDING towards the server
        with trio.fail_after(10):
            while theirs._tx_error is None:
                await trio.sleep(0.01)
        start = trio.current_time()
        await server_conn.close(0, "bye")
        assert trio.current_time() - start < 2


async def test_mutual_tls_requires_a_client_certificate_from_the_ca(
    certs: CertFiles, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Each refusal is a TLS alert in a transport CONNECTION_CLOSE (CRYPTO_ERROR 0x100 +
    alert), the alert the Go reference's proxy sends for the same certificate."""
    from reverse_http.devcerts import issue_cert, make_ca
    from reverse_http.quic import ServerSettings, ServerTls, serve_quic
    from tests.test_tls_files import make_crl

    d = tmp_path_factory.mktemp("mtls")
    client_cert, client_key = issue_cert(
        d, certs.ca_cert, certs.ca_key, "agent", ["agent"], client=True
    )
    revoked = issue_cert(d, certs.ca_cert, certs.ca_key, "revoked", ["revoked"], client=True)
    make_crl(certs.ca_cert, certs.ca_key, d / "crl.pem", [revoked[0]])
    rogue_dir = d / "rogue"
    rogue_dir.mkdir()
    rogue_ca, rogue_ca_key = make_ca(rogue_dir)  # the same name as ours: signature failure
    rogue_cert, rogue_key = issue_cert(d, rogue_ca, rogue_ca_key, "rogue", ["rogue"], client=True)
    other_dir = d / "other"
    other_dir.mkdir()
    other_ca, other_ca_key = make_ca(other_dir, "another CA")  # no issuer found
    other = issue_cert(other_dir, other_ca, other_ca_key, "other", ["other"], client=True)
    settings = ServerSettings(
        tls=ServerTls(
            cert_file=certs.cert,
            key_file=certs.key,
            client_ca_file=certs.ca_cert,
            client_crl_file=d / "crl.pem",
        )
    )
    async with trio.open_nursery() as n:
        server = await n.start(serve_quic, echo_streams, "127.0.0.1", 0, settings)
        port = server.local_address[1]

        def tls(cert: object = None, key: object = None) -> ClientTls:
            return ClientTls(
                root_ca_file=certs.ca_cert,
                server_name="localhost",
                cert_file=cert,
                key_file=key,  # type: ignore[arg-type]
            )

        with trio.fail_after(15):
            good = await connect(
                n, "127.0.0.1", port, TransportSettings(), tls(client_cert, client_key)
            )
            stream = await good.open_stream()
            await stream.send_all(b"with a client certificate")
            await stream.send_eof()
            assert await read_to_eof(stream) == b"with a client certificate"
            refusals = [
                (tls(), 0x100 + 116, "client certificate required"),  # certificate_required
                (tls(rogue_cert, rogue_key), 0x100 + 48, "signature failure"),  # unknown_ca
                (tls(*other), 0x100 + 48, "unable to get local issuer"),  # unknown_ca
                (tls(*revoked), 0x100 + 42, "is revoked"),  # bad_certificate
            ]
            for bad, code, why in refusals:
                try:
                    rejected = await connect(n, "127.0.0.1", port, TransportSettings(), bad)
                except ConnectionError as exc:
                    info = exc.info
                else:
                    info = await rejected.wait_closed()
                assert info.by_peer and info.kind == "transport", info
                assert (info.error_code, why in info.reason) == (code, True), info
        n.cancel_scope.cancel()


async def test_ipv6_loopback(certs: CertFiles) -> None:
    import socket as _socket

    if not _socket.has_ipv6:
        pytest.skip("no IPv6")
    from reverse_http.quic import ServerSettings, ServerTls, serve_quic

    settings = ServerSettings(tls=ServerTls(cert_file=certs.cert, key_file=certs.key))
    async with trio.open_nursery() as n:
        try:
            server = await n.start(serve_quic, echo_streams, "::1", 0, settings)
        except OSError:
            pytest.skip("IPv6 loopback unavailable")
        conn = await connect(
            n,
            "::1",
            server.local_address[1],
            TransportSettings(),
            ClientTls(root_ca_file=certs.ca_cert, server_name="localhost"),
        )
        stream = await conn.open_stream()
        await stream.send_all(b"over v6")
        await stream.send_eof()
        with trio.fail_after(10):
            assert await read_to_eof(stream) == b"over v6"
        n.cancel_scope.cancel()


async def test_refused_streams_are_reset_not_buffered(certs: CertFiles) -> None:
    async with quic_pair(certs) as pair:
        server_conn = await pair.server_conn()
        server_conn.refuse_new_streams()
        stream = await pair.client.open_stream()
        with trio.fail_after(10), pytest.raises(trio.BrokenResourceError):
            while True:
                await stream.send_all(b"z" * 65536)
        assert not server_conn._streams


async def test_refusing_also_resets_streams_already_waiting(certs: CertFiles) -> None:
    async with quic_pair(certs) as pair:
        server_conn = await pair.server_conn()
        streams = [await pair.client.open_stream() for _ in range(10)]
        for s in streams:
            await s.send_all(b"queued before the refusal")
        with trio.fail_after(10):
            while len(server_conn._streams) < 10:
                await trio.sleep(0.01)
        server_conn.refuse_new_streams()
        for s in streams:
            with trio.fail_after(10), pytest.raises(trio.BrokenResourceError):
                while True:
                    await s.send_all(b"z" * 65536)
        with trio.fail_after(10):
            while server_conn._streams:
                await trio.sleep(0.01)


async def test_a_restarted_server_resets_connections_it_no_longer_knows(certs: CertFiles) -> None:
    """SIGKILL the server and start a new one on the same port with the same key: the
    client learns from the new server's stateless reset, not after its liveness (30 s)."""
    script = os.path.join(os.path.dirname(__file__), "quic_peer.py")

    async def start_server(port: int) -> tuple[trio.Process, int]:
        proc = await trio.lowlevel.open_process(
            [sys.executable, script, "server", str(certs.cert), str(certs.key), str(port)],
            stdout=subprocess.PIPE,
        )
        assert proc.stdout is not None
        return proc, int((await proc.stdout.receive_some(64)).split()[0])

    first, port = await start_server(0)
    async with trio.open_nursery() as n:
        conn = await connect(
            n,
            "127.0.0.1",
            port,
            TransportSettings(),
            ClientTls(root_ca_file=certs.ca_cert, server_name="localhost"),
        )
        assert TransportSettings().liveness_timeout == 30
        stream = await conn.open_stream()
        await stream.send_all(b"ping")
        assert await stream.receive_some() == b"ping"
        first.kill()
        await first.wait()
        second, _ = await start_server(port)
        try:
            with trio.fail_after(10):
                await stream.send_all(b"anyone there?")
                info = await conn.wait_closed()
            assert info.kind == "stateless-reset" and info.by_peer, info
            with pytest.raises(trio.BrokenResourceError):
                await stream.receive_some()
        finally:
            second.kill()
            await second.wait()
        n.cancel_scope.cancel()
