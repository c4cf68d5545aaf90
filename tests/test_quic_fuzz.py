"""QUIC datagram fuzzing against a live proxy while an agent carries a transfer.

The proxy is a real ``reverse-http proxy`` process (so its memory is its own); the
agent, the echo target and the CONNECT client run here. Datagrams come from a
seeded random generator: random bytes, random long headers, and real datagrams of
a client connection (captured from an in-memory aioquic handshake) mutated or
replayed, some aimed at the live agent connection's connection ID.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from conftest import free_ports
from reverse_http.agent.client import run_agent
from reverse_http.devcerts import CertFiles
from reverse_http.quic import DEFAULT_ALPN
from tests.tunnel_helpers import agent_config, echo_target, noauth, open_connect

SEED = int(os.environ.get("FUZZ_SEED", "1103"))
#: Datagrams sent at least, and at most (the flood is bounded in count and in time).
MIN_DATAGRAMS, MAX_DATAGRAMS = 15_000, 40_000
TRANSFER = 8 * 1024 * 1024
RSS_GROWTH_LIMIT_KIB = 64 * 1024


def _capture_client_datagrams(certs: CertFiles) -> list[bytes]:
    """Every datagram a client sends in a handshake plus a little stream data (in memory)."""
    ccfg = QuicConfiguration(is_client=True, alpn_protocols=[DEFAULT_ALPN])
    ccfg.verify_mode = ssl.CERT_NONE
    scfg = QuicConfiguration(is_client=False, alpn_protocols=[DEFAULT_ALPN])
    scfg.load_cert_chain(certs.cert, certs.key)
    client = QuicConnection(configuration=ccfg)
    server: QuicConnection | None = None
    caddr, saddr = ("127.0.0.1", 50000), ("127.0.0.1", 4242)
    client.connect(saddr, now=0.0)
    captured: list[bytes] = []
    now = 0.0
    for step in range(12):
        now += 0.01
        for data, _ in client.datagrams_to_send(now=now):
            captured.append(data)
            if server is None:
                server = QuicConnection(
                    configuration=scfg, original_destination_connection_id=data[6:14]
                )
            server.receive_datagram(data, caddr, now=now)
        if server is not None:
            for data, _ in server.datagrams_to_send(now=now):
                client.receive_datagram(data, saddr, now=now)
        if step == 4:
            sid = client.get_next_available_stream_id()
            client.send_stream_data(sid, os.urandom(3000), end_stream=True)
    assert any(not d[0] & 0x80 for d in captured), "no 1-RTT datagram captured"
    return captured


def _fresh_initials(n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        cfg = QuicConfiguration(is_client=True, alpn_protocols=[DEFAULT_ALPN])
        quic = QuicConnection(configuration=cfg)
        quic.connect(("127.0.0.1", 4242), now=0.0)
        out.append(quic.datagrams_to_send(now=0.0)[0][0])
    return out


def _datagrams(
    rng: random.Random, real: list[bytes], initials: list[bytes], live_cid: bytes
) -> Iterator[bytes]:
    """An endless, seeded mix of hostile datagrams."""
    while True:
        kind = rng.randrange(9)
        if kind == 0:
            yield rng.randbytes(rng.randrange(1, 1500))
        elif kind == 1:  # long header, version 1, random type and CIDs, random body
            first = 0xC0 | rng.randrange(64)
            yield (
                bytes([first])
                + b"\x00\x00\x00\x01\x08"
                + rng.randbytes(8)
                + b"\x08"
                + rng.randbytes(rng.randrange(8, 1400))
            )
        elif kind == 2:  # unknown version, both sides of 1200 bytes
            yield b"\xc0" + rng.randbytes(4) + b"\x08" + rng.randbytes(9 + rng.choice((30, 1200)))
        elif kind in (3, 4):  # a real datagram with a few bytes flipped
            d = bytearray(rng.choice(real))
            for _ in range(rng.randrange(1, 6)):
                d[rng.randrange(len(d))] ^= 1 << rng.randrange(8)
            yield bytes(d)
        elif kind == 5:  # truncated or extended real datagram
            d = rng.choice(real)
            yield (
                d[: rng.randrange(1, len(d))]
                if rng.random() < 0.5
                else d + rng.randbytes(rng.randrange(1, 300))
            )
        elif kind == 6:  # short header aimed at the live agent connection
            yield (
                bytes([0x40 | rng.randrange(64)]) + live_cid + rng.randbytes(rng.randrange(1, 1300))
            )
        elif kind == 7:  # a real 1-RTT datagram re-addressed to the live connection
            shorts = [d for d in real if not d[0] & 0x80]
            d = rng.choice(shorts)
            yield d[:1] + live_cid + d[1 + len(live_cid) :]
        else:  # a real, decryptable ClientHello: a handshake the proxy must bound
            yield rng.choice(initials)


def _rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+)", status, re.M)
    assert match, status
    return int(match.group(1))


async def _get(port: int, path: str) -> str:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        body = b""
        while chunk := await stream.receive_some(65536):
            body += chunk
    return body.decode()


async def _until_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    with trio.fail_after(20):
        while True:
            assert proc.poll() is None, "the proxy exited at start"
            try:
                (await trio.open_tcp_stream("127.0.0.1", port)).socket.close()
                return
            except OSError:
                await trio.sleep(0.05)


@pytest.fixture
def proxy(
    certs: CertFiles, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], int, int, int, Path]]:
    udp = free_ports(1, socket.SOCK_DGRAM)[0]
    http, metrics = free_ports(2)
    log = tmp_path / "proxy.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable, "-c", "from reverse_http.cli.main import main; main()", "proxy",
                f"--agent-server.listen-address=127.0.0.1:{udp}",
                f"--agent-server.tls.file.cert={certs.cert}",
                f"--agent-server.tls.file.key={certs.key}",
                f"--http-proxy.listen-address=127.0.0.1:{http}",
                f"--metrics.listen-address=127.0.0.1:{metrics}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield proc, udp, http, metrics, log
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def test_fuzzed_datagrams_during_a_transfer(
    certs: CertFiles, proxy: tuple[subprocess.Popen[bytes], int, int, int, Path]
) -> None:
    proc, udp, http, metrics, log = proxy
    real = _capture_client_datagrams(certs)
    initials = _fresh_initials(64)
    rng = random.Random(SEED)
    await _until_listening(metrics, proc)
    async with echo_target() as target, trio.open_nursery() as nursery:
        handle = await nursery.start(run_agent, agent_config(certs, udp))
        with trio.fail_after(15):
            await handle.connected.wait()
        assert handle.connection is not None
        live_cid = handle.connection.quic.peer_cid
        rss_before = _rss_kib(proc.pid)
        result = await open_connect(http, f"127.0.0.1:{target.port}", noauth())
        assert result.status == 200 and result.stream is not None
        payload = random.Random(SEED + 1).randbytes(TRANSFER)
        done = trio.Event()
        sent = 0

        async def fuzz() -> None:
            nonlocal sent
            socks = []
            for i in range(4):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.setblocking(False)
                s.bind((f"127.0.0.{2 + i}", 0))
                socks.append(s)
            source = _datagrams(rng, real, initials, live_cid)
            try:
                while sent < MAX_DATAGRAMS and not (done.is_set() and sent >= MIN_DATAGRAMS):
                    for _ in range(100):
                        with contextlib.suppress(BlockingIOError):  # a full buffer: loss
                            socks[sent % 4].sendto(next(source), ("127.0.0.1", udp))
                        sent += 1
                    await trio.sleep(0.005)  # pacing: about 20,000 datagrams per second
            finally:
                for s in socks:
                    s.close()

        async def transfer() -> str:
            stream = result.stream
            assert stream is not None
            digest = hashlib.sha256()
            got = 0
            async with stream, trio.open_nursery() as n:
                n.start_soon(stream.send_all, payload)
                while got < TRANSFER:
                    chunk = await stream.receive_some(1 << 18)
                    assert chunk, "the tunnel closed during the transfer"
                    digest.update(chunk)
                    got += len(chunk)
            return digest.hexdigest()

        with trio.fail_after(30):
            async with trio.open_nursery() as n:
                n.start_soon(fuzz)
                echoed = await transfer()
                done.set()
        assert echoed == hashlib.sha256(payload).hexdigest()
        assert sent >= MIN_DATAGRAMS
        assert proc.poll() is None, log.read_text()
        assert handle.connects == 1 and handle.is_connected  # never dropped or replaced
        growth = _rss_kib(proc.pid) - rss_before
        assert growth <= RSS_GROWTH_LIMIT_KIB, f"proxy RSS grew {growth} KiB"
        exposition = await _get(metrics, "/metrics")
        undecryptable = re.search(
            r'^reverse_http_quic_initials_dropped_total\{reason="undecryptable"\} (\S+)',
            exposition,
            re.M,
        )
        retries = re.search(r"^reverse_http_quic_retries_sent_total (\S+)", exposition, re.M)
        assert undecryptable and retries, exposition[-2000:]
        # Long-header junk is refused, or, while the replayed ClientHellos keep the proxy
        # under load, answered with a stateless Retry without being decrypted.
        assert float(undecryptable.group(1)) + float(retries.group(1)) > 100
        assert "HTTP/1.1 200" in await _get(metrics, "/healthz")
        # and a new agent still connects
        other = await nursery.start(run_agent, agent_config(certs, udp, "after-fuzz"))
        with trio.fail_after(10):
            await other.connected.wait()
        nursery.cancel_scope.cancel()
