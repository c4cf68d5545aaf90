"""Helpers for tests that run a real QUIC server and client over loopback UDP."""

from __future__ import annotations

import hashlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from reverse_http.devcerts import CertFiles
from reverse_http.quic import (
    AdmissionSettings,
    ClientTls,
    Connection,
    QuicServer,
    QuicStream,
    ServerSettings,
    ServerTls,
    TransportSettings,
    connect,
    serve_quic,
)


@dataclass
class Pair:
    server: QuicServer
    client: Connection
    server_conns: trio.MemoryReceiveChannel[Connection]
    nursery: trio.Nursery

    async def server_conn(self) -> Connection:
        return await self.server_conns.receive()

    async def stream_pair(self, server_conn: Connection) -> tuple[QuicStream, QuicStream]:
        """A client-opened stream and its server end (one byte is exchanged to announce it)."""
        ours = await self.client.open_stream()
        await ours.send_all(b"!")
        theirs = await server_conn.accept_stream()
        assert await theirs.receive_some(1) == b"!"
        return ours, theirs


def client_tls(certs: CertFiles) -> ClientTls:
    return ClientTls(root_ca_file=certs.ca_cert, server_name="localhost")


def server_settings(
    certs: CertFiles, transport: TransportSettings | None = None, **kw: object
) -> ServerSettings:
    return ServerSettings(
        tls=ServerTls(cert_file=certs.cert, key_file=certs.key),
        transport=transport or TransportSettings(),
        **kw,  # type: ignore[arg-type]
    )


@asynccontextmanager
async def quic_pair(
    certs: CertFiles,
    *,
    server_transport: TransportSettings | None = None,
    client_transport: TransportSettings | None = None,
    handler: Callable[[Connection], Awaitable[None]] | None = None,
    retry: bool = False,
    admission: AdmissionSettings | None = None,
) -> AsyncIterator[Pair]:
    """A server on 127.0.0.1:ephemeral and one client connected to it."""
    send, receive = trio.open_memory_channel[Connection](16)

    async def default_handler(conn: Connection) -> None:
        await send.send(conn)
        await conn.wait_closed()

    settings = server_settings(
        certs, server_transport, admission=admission or AdmissionSettings(retry=retry)
    )
    async with trio.open_nursery() as nursery:
        server: QuicServer = await nursery.start(
            serve_quic, handler or default_handler, "127.0.0.1", 0, settings
        )
        client = await connect(
            nursery,
            "127.0.0.1",
            server.local_address[1],
            client_transport or TransportSettings(),
            client_tls(certs),
        )
        try:
            yield Pair(server, client, receive, nursery)
        finally:
            nursery.cancel_scope.cancel()


async def echo_streams(conn: Connection) -> None:
    """Echo every stream the peer opens, half-close included."""
    async with trio.open_nursery() as nursery:
        while True:
            stream = await conn.accept_stream()
            nursery.start_soon(_echo, stream)


async def _echo(stream: QuicStream) -> None:
    async with stream:
        try:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)
            await stream.send_eof()
        except trio.BrokenResourceError:
            pass


def pattern(size: int, seed: int = 0) -> bytes:
    """Deterministic, incompressible-looking bytes (SHA-256 chained)."""
    out = bytearray()
    block = seed.to_bytes(8, "big")
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block * 64
    return bytes(out[:size])


async def send_all_chunked(stream: QuicStream, data: bytes, chunk: int = 256 * 1024) -> None:
    view = memoryview(data)
    for i in range(0, len(data), chunk):
        await stream.send_all(view[i : i + chunk])


async def read_to_eof(stream: QuicStream) -> bytes:
    parts = []
    while data := await stream.receive_some(256 * 1024):
        parts.append(data)
    return b"".join(parts)


async def sha_of_stream(stream: QuicStream) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    while data := await stream.receive_some(256 * 1024):
        h.update(data)
        n += len(data)
    return n, h.hexdigest()


class DueConnection:
    """What the driver needs of a connection: a deadline, a service call and the receive
    hold it allows (none)."""

    def __init__(self) -> None:
        self._timer_at = math.inf
        self.serviced = trio.Event()
        self.serviced_at: list[float] = []

    def receive_hold(self) -> float:
        return 0.0

    def _service(self, now: float) -> None:
        self.serviced_at.append(now)
        self.serviced.set()
