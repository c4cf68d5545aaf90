"""End to end: real proxy and agent daemons, real TCP targets, real curl and httpx."""

from __future__ import annotations

import functools
import hashlib
import shutil
import ssl
from pathlib import Path

import httpx
import pytest
import trio

from reverse_http.devcerts import CertFiles
from reverse_http.proxy.server import run_proxy
from reverse_http.quic import QuicStream, TransportSettings
from tests.quic_helpers import pattern
from tests.tunnel_helpers import (
    ConnectResult,
    allow,
    echo_target,
    http_target,
    noauth,
    open_connect,
    proxy_config,
    small_transport,
    tunnel,
)


async def _roundtrip(stream: trio.SocketStream, data: bytes) -> bytes:
    got = bytearray()

    async def reader() -> None:
        while chunk := await stream.receive_some(65536):
            got.extend(chunk)

    async with trio.open_nursery() as n:
        n.start_soon(reader)
        view = memoryview(data)
        for i in range(0, len(data), 65536):
            await stream.send_all(view[i : i + 65536])
        await stream.send_eof()
    return bytes(got)


async def test_connect_relays_bytes_intact_both_ways(certs: CertFiles) -> None:
    data = pattern(8 * 1024 * 1024, 5)
    async with echo_target() as target, tunnel(certs) as t:
        result = await open_connect(t.http_port, f"127.0.0.1:{target.port}", noauth())
        assert result.status == 200 and result.stream is not None
        with trio.fail_after(60):
            echoed = await _roundtrip(result.stream, data)
        await result.stream.aclose()
    assert hashlib.sha256(echoed).hexdigest() == hashlib.sha256(data).hexdigest()


async def test_bytes_sent_with_the_connect_head_are_not_lost(certs: CertFiles) -> None:
    async with echo_target() as target, tunnel(certs) as t:
        dest = f"127.0.0.1:{target.port}"
        raw = (
            f"CONNECT {dest} HTTP/1.1\r\nHost: {dest}\r\n"
            f"Proxy-Authorization: {noauth()}\r\n\r\nearly bytes"
        ).encode()
        result = await open_connect(t.http_port, dest, raw=raw)
        assert result.status == 200 and result.stream is not None
        head_tail = result.head.split(b"\r\n\r\n", 1)[1]
        with trio.fail_after(10):
            got = head_tail
            while len(got) < len(b"early bytes"):
                got += await result.stream.receive_some()
        assert got == b"early bytes"
        await result.stream.aclose()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
async def test_curl_download_and_upload_through_the_tunnel(
    certs: CertFiles, tmp_path: Path
) -> None:
    size = 32 * 1024 * 1024
    async with http_target() as target, tunnel(certs) as t:
        proxy = f"http://4711:noauth@127.0.0.1:{t.http_port}"
        out = tmp_path / "down.bin"
        with trio.fail_after(60):
            done = await trio.run_process(
                [
                    "curl",
                    "-sS",
                    "-f",
                    "-p",
                    "-x",
                    proxy,
                    "-o",
                    str(out),
                    f"http://127.0.0.1:{target.port}/bytes/{size}",
                ],
                capture_stderr=True,
                check=False,
            )
        assert done.returncode == 0, done.stderr
        assert (
            hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(pattern(size, 42)).digest()
        )

        upload = tmp_path / "up.bin"
        upload.write_bytes(pattern(size, 43))
        with trio.fail_after(60):
            done = await trio.run_process(
                [
                    "curl",
                    "-sS",
                    "-f",
                    "-p",
                    "-x",
                    proxy,
                    "--data-binary",
                    f"@{upload}",
                    f"http://127.0.0.1:{target.port}/sha256",
                ],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        assert done.returncode == 0, done.stderr
        assert done.stdout.decode() == hashlib.sha256(upload.read_bytes()).hexdigest()


async def test_httpx_https_through_the_tunnel(certs: CertFiles) -> None:
    """httpx tunnels https:// URLs with CONNECT; TLS runs end to end through the tunnel."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs.cert, certs.key)

    async def handler(stream: trio.SSLStream[trio.SocketStream]) -> None:
        try:
            request = b""
            while b"\r\n\r\n" not in request:
                request += await stream.receive_some(4096)
            body = b"hello over TLS through QUIC"
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                % (len(body), body)
            )
            await stream.aclose()
        except (trio.BrokenResourceError, ssl.SSLError):
            pass

    async with trio.open_nursery() as n, tunnel(certs) as t:
        listeners = await n.start(trio.serve_ssl_over_tcp, handler, 0, ctx)
        port = listeners[0].transport_listener.socket.getsockname()[1]
        client_ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
        proxy = f"http://4711:noauth@127.0.0.1:{t.http_port}"

        def fetch() -> httpx.Response:
            with httpx.Client(proxy=proxy, verify=client_ctx, timeout=10) as client:
                return client.get(f"https://localhost:{port}/")

        response = await trio.to_thread.run_sync(fetch)
        n.cancel_scope.cancel()
    assert response.status_code == 200
    assert response.text == "hello over TLS through QUIC"


async def test_error_statuses(certs: CertFiles) -> None:
    async with (
        echo_target() as target,
        tunnel(
            certs,
            proxy_overrides={"host_whitelist": allow("127.0.0.1", "localhost:1-65535")},
            agent_overrides={"host_whitelist": allow("127.0.0.1")},
        ) as t,
    ):
        dest = f"127.0.0.1:{target.port}"
        port = t.http_port

        async def status(
            destination: str = dest, auth: str | None = noauth(), raw: bytes | None = None
        ) -> int:
            with trio.fail_after(20):
                return (await open_connect(port, destination, auth, raw=raw)).status

        assert await status() == 200
        assert await status(raw=b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == 405
        assert await status(auth=None) == 407
        assert await status(auth="Basic " + "OnNlY3JldA==") == 407  # ":secret": empty agent id
        assert await status(auth="Bearer abc") == 407
        assert await status("10.1.2.3:80") == 403  # proxy allow-list
        assert await status("localhost:80") == 403  # allowed by the proxy, refused by the agent
        assert await status(auth=noauth("9999")) == 503  # agent not connected
        closed_port = target.port + 1 if target.port < 65535 else target.port - 1
        assert await status(f"127.0.0.1:{closed_port}") == 503  # the agent's dial fails
        assert await status("no-port-here") == 400
        assert await status(raw=b"CONNECT \x00bad HTTP/1.1\r\n\r\n") == 400
        assert await status(raw=b"garbage\r\n\r\n") == 400
        big = f"CONNECT {dest} HTTP/1.1\r\nHost: {dest}\r\nX: ".encode()
        big += b"a" * 40000 + b"\r\n\r\n"
        assert await status(raw=big) == 431
        result = await open_connect(port, dest, None)
        assert b'Proxy-Authenticate: Basic realm="reverse-http"' in result.head
        # the proxy still serves after all of that
        assert await status() == 200


async def test_slowloris_gets_408(certs: CertFiles) -> None:
    async with tunnel(certs, proxy_overrides={"header_timeout": 0.5}) as t:
        stream = await trio.open_tcp_stream("127.0.0.1", t.http_port)
        await stream.send_all(b"CONNECT 127.0.0.1:80 HTTP/1.1\r\nHost: 127.0.0.1")
        with trio.fail_after(10):
            head = await stream.receive_some(4096)
        assert head.startswith(b"HTTP/1.1 408 ")
        await stream.aclose()


async def test_junk_on_the_proxy_port_does_not_disturb_other_sessions(certs: CertFiles) -> None:
    data = pattern(16 * 1024 * 1024, 11)
    async with echo_target() as target, tunnel(certs) as t:
        result = await open_connect(t.http_port, f"127.0.0.1:{target.port}", noauth())
        assert result.stream is not None
        answers: list[bytes] = []

        async def junk(i: int) -> None:
            stream = await trio.open_tcp_stream("127.0.0.1", t.http_port)
            try:
                await stream.send_all(
                    [
                        b"\x16\x03\x01\x00\xa5" + bytes(range(256)),
                        b"\r\n\r\n",
                        b"HELLO\r\n\r\n",
                        bytes(300),
                    ][i % 4]
                )
                await stream.send_eof()
                answer = b""
                while chunk := await stream.receive_some():
                    answer += chunk
                answers.append(answer)
            except trio.BrokenResourceError:
                answers.append(b"")
            finally:
                await stream.aclose()

        with trio.fail_after(60):
            async with trio.open_nursery() as n:
                for i in range(40):
                    n.start_soon(junk, i)
                echoed = await _roundtrip(result.stream, data)
    assert echoed == data
    assert len(answers) == 40
    assert all(a == b"" or a.startswith(b"HTTP/1.1 400 ") for a in answers)


async def test_agent_replacement_closes_the_old_connection_with_409(certs: CertFiles) -> None:
    async with tunnel(certs) as t:
        first = t.agents[0]
        old_conn = first.connection
        assert old_conn is not None
        second = await t.start_agent(
            __import__("tests.tunnel_helpers", fromlist=["agent_config"]).agent_config(
                certs, t.agent_port, "4711"
            )
        )
        with trio.fail_after(10):
            await second.connected.wait()
            info = await old_conn.wait_closed()
        assert (info.error_code, info.reason, info.by_peer) == (409, "closing old connection", True)
        first.stop()


async def test_agent_reconnects_after_proxy_restart(certs: CertFiles) -> None:
    async with echo_target() as target, trio.open_nursery() as n:
        proxy = await n.start(run_proxy, proxy_config(certs))
        agent_port = proxy.agent_port
        from reverse_http.agent.client import run_agent
        from tests.tunnel_helpers import agent_config

        agent = await n.start(run_agent, agent_config(certs, agent_port))
        with trio.fail_after(10):
            await agent.connected.wait()
        proxy.shutdown()
        await proxy.wait_stopped()
        from reverse_http.config import ListenAddress

        proxy2 = await n.start(
            run_proxy,
            # same UDP port for the agents; the HTTP port may differ
            proxy_config(certs, agent_listen=ListenAddress("127.0.0.1", agent_port)),
        )
        with trio.fail_after(20):
            while proxy2.registry.get("4711") is None:
                await trio.sleep(0.05)
        assert agent.connects == 2
        result = await open_connect(proxy2.http_port, f"127.0.0.1:{target.port}", noauth())
        assert result.status == 200 and result.stream is not None
        assert await _roundtrip(result.stream, b"after restart") == b"after restart"
        await result.stream.aclose()
        n.cancel_scope.cancel()


async def test_2000_concurrent_sessions_through_one_agent(certs: CertFiles) -> None:
    """Every session a GET of its own size; every body arrives intact."""
    sessions = 2000
    async with http_target() as target, tunnel(certs) as t:
        ok = 0

        async def session(i: int) -> None:
            nonlocal ok
            size = 16384 + 16 * i
            result = await open_connect(t.http_port, f"127.0.0.1:{target.port}", noauth())
            assert result.status == 200 and result.stream is not None, result.head
            async with result.stream:
                await result.stream.send_all(
                    f"GET /bytes/{size} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
                )
                response = bytearray()
                while chunk := await result.stream.receive_some(65536):
                    response += chunk
            head, _, body = bytes(response).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            assert body == pattern(size, 42)
            ok += 1

        with trio.fail_after(240):
            async with trio.open_nursery() as n:
                for i in range(sessions):
                    n.start_soon(session, i)
        assert ok == sessions
        assert target.connections == sessions


async def test_connects_beyond_the_agent_stream_limit_wait_then_get_a_clear_503(
    certs: CertFiles,
) -> None:
    agent_transport = TransportSettings(max_concurrent_streams=2)
    async with echo_target() as target, tunnel(
        certs,
        proxy_overrides={"agent_dial_timeout": 1.0},
        agent_overrides={"transport": agent_transport},
    ) as t:
        dest = f"127.0.0.1:{target.port}"
        held = [await open_connect(t.http_port, dest, noauth()) for _ in range(2)]
        assert [r.status for r in held] == [200, 200]
        # both agent streams in use: the next CONNECT waits for one, then gives up
        refused = await open_connect(t.http_port, dest, noauth())
        assert refused.status == 503
        assert b"agent's stream limit reached" in refused.head, refused.head
        # a CONNECT that waits while a stream frees up gets it
        async with trio.open_nursery() as n:
            waiting: list[object] = []

            async def wait_for_stream() -> None:
                waiting.append(await open_connect(t.http_port, dest, noauth()))

            n.start_soon(wait_for_stream)
            conn = t.proxy.registry.get("4711")
            assert conn is not None
            with trio.fail_after(5):
                while conn.pending_opens != 1:
                    await trio.sleep(0.01)
            assert held[0].stream is not None
            await held[0].stream.aclose()
        (late,) = waiting
        assert isinstance(late, ConnectResult) and late.status == 200
        assert late.stream is not None
        assert await _roundtrip(late.stream, b"after the wait") == b"after the wait"
        for r in (held[1], late):
            assert r.stream is not None
            await r.stream.aclose()


async def test_slow_client_reader_keeps_buffers_bounded(certs: CertFiles) -> None:
    """The target can send 256 MiB; the client reads nothing: every buffer stays bounded."""
    transport = small_transport()
    total = 256 * 1024 * 1024
    sent = 0

    async def source(stream: trio.SocketStream) -> None:
        nonlocal sent
        block = bytes(65536)
        try:
            while sent < total:
                await stream.send_all(block)
                sent += len(block)
        except trio.BrokenResourceError:
            pass

    async with (
        trio.open_nursery() as n,
        tunnel(
            certs,
            proxy_overrides={"transport": transport},
            agent_overrides={"transport": transport},
        ) as t,
    ):
        listeners = await n.start(functools.partial(trio.serve_tcp, host="127.0.0.1"), source, 0)
        port = listeners[0].socket.getsockname()[1]
        result = await open_connect(t.http_port, f"127.0.0.1:{port}", noauth())
        assert result.stream is not None
        # wait (with a deadline) until the source is stuck: its count stops moving
        with trio.fail_after(30):
            last = -1
            while sent != last:
                last = sent
                await trio.sleep(0.3)
        agent_conn = t.agents[0].connection
        proxy_conn = t.proxy.registry.get("4711")
        assert agent_conn is not None and proxy_conn is not None
        agent_streams: list[QuicStream] = list(agent_conn._streams.values())
        proxy_streams: list[QuicStream] = list(proxy_conn._streams.values())
        assert agent_streams and proxy_streams
        for s in agent_streams:
            assert s.unacked <= transport.stream_send_buffer
        for s in proxy_streams:
            assert s.receive_buffered <= transport.stream_receive_window
        # far from everything was produced: backpressure reached the source
        assert sent < 64 * 1024 * 1024
        # reading resumes the flow
        got = 0
        with trio.fail_after(30):
            while got < 8 * 1024 * 1024:
                got += len(await result.stream.receive_some(65536))
        await result.stream.aclose()
        n.cancel_scope.cancel()


async def test_a_broken_target_is_an_abort_for_the_client_not_a_clean_end(
    certs: CertFiles,
) -> None:
    """The target resets mid-transfer: the client must not see a clean EOF (truncation)."""
    import socket as _socket
    import struct

    async def resetting(stream: trio.SocketStream) -> None:
        await stream.send_all(b"partial answer")
        stream.socket.setsockopt(_socket.SOL_SOCKET, _socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.socket.close()

    async with trio.open_nursery() as n, tunnel(certs) as t:
        listeners = await n.start(functools.partial(trio.serve_tcp, host="127.0.0.1"), resetting, 0)
        port = listeners[0].socket.getsockname()[1]
        result = await open_connect(t.http_port, f"127.0.0.1:{port}", noauth())
        assert result.stream is not None
        got = result.head.split(b"\r\n\r\n", 1)[1]
        with trio.fail_after(10), pytest.raises(trio.BrokenResourceError):
            while chunk := await result.stream.receive_some():
                got += chunk
        assert got == b"partial answer"
        n.cancel_scope.cancel()
