"""Real daemons in-process, real TCP targets, and a CONNECT client for end-to-end tests."""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import h11
import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from reverse_http.agent.client import AgentHandle, run_agent
from reverse_http.allowlist import AllowList
from reverse_http.config import (
    AgentConfig,
    AgentCredentials,
    ListenAddress,
    ProxyAuth,
    ProxyConfig,
)
from reverse_http.devcerts import CertFiles
from reverse_http.proxy.server import ProxyServer, run_proxy
from reverse_http.quic import ClientTls, ServerTls, TransportSettings
from tests.quic_helpers import pattern

LOOPBACK = "127.0.0.1"


def proxy_config(certs: CertFiles, **overrides: object) -> ProxyConfig:
    base = ProxyConfig(
        agent_listen=ListenAddress(LOOPBACK, 0),
        agent_tls=ServerTls(cert_file=certs.cert, key_file=certs.key),
        http_listen=ListenAddress(LOOPBACK, 0),
        shutdown_grace_period=5.0,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def agent_config(
    certs: CertFiles, port: int, agent_id: str = "4711", **overrides: object
) -> AgentConfig:
    base = AgentConfig(
        credentials=AgentCredentials(type="noauth", agent_id=agent_id),
        server_host=LOOPBACK,
        server_port=port,
        tls=ClientTls(root_ca_file=certs.ca_cert, server_name="localhost"),
        reconnect_initial_backoff=0.1,
        reconnect_max_backoff=1.0,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass
class Target:
    """A TCP server on loopback: echoes, or serves HTTP for curl."""

    port: int
    connections: int = 0


async def _echo(stream: trio.SocketStream, target: Target) -> None:
    target.connections += 1
    async with stream:
        try:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)
            await stream.send_eof()
        except trio.BrokenResourceError:
            pass


@asynccontextmanager
async def _target(
    handler: Callable[[trio.SocketStream, Target], Awaitable[None]],
) -> AsyncIterator[Target]:
    """A TCP server on a free loopback port for as long as the block runs."""
    async with trio.open_nursery() as nursery:
        target = Target(0)
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, host=LOOPBACK), lambda s: handler(s, target), 0
        )
        target.port = listeners[0].socket.getsockname()[1]
        yield target
        nursery.cancel_scope.cancel()


def echo_target() -> AbstractAsyncContextManager[Target]:
    return _target(_echo)


async def _http(stream: trio.SocketStream, target: Target) -> None:
    """GET /bytes/N -> N pattern bytes; POST /sha256 -> hex digest of the body."""
    target.connections += 1
    conn = h11.Connection(h11.SERVER)
    async with stream:
        try:
            request = None
            digest = hashlib.sha256()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    digest.update(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    return
            assert request is not None
            path = request.target.decode()
            if path.startswith("/bytes/"):
                body = pattern(int(path.split("/")[2]), 42)
            else:
                body = digest.hexdigest().encode()
            headers = [("Content-Length", str(len(body))), ("Connection", "close")]
            await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers)))
            view = memoryview(body)
            for i in range(0, len(body), 1 << 20):
                await stream.send_all(conn.send(h11.Data(data=view[i : i + (1 << 20)])))
            await stream.send_all(conn.send(h11.EndOfMessage()))
        except (trio.BrokenResourceError, h11.ProtocolError):
            pass


def http_target() -> AbstractAsyncContextManager[Target]:
    return _target(_http)


@dataclass
class Tunnel:
    proxy: ProxyServer
    agents: list[AgentHandle] = field(default_factory=list)
    nursery: trio.Nursery | None = None

    @property
    def http_port(self) -> int:
        return self.proxy.http_port

    @property
    def agent_port(self) -> int:
        return self.proxy.agent_port

    async def start_agent(self, config: AgentConfig) -> AgentHandle:
        assert self.nursery is not None
        handle: AgentHandle = await self.nursery.start(run_agent, config)
        self.agents.append(handle)
        return handle


@asynccontextmanager
async def tunnel(
    certs: CertFiles,
    *,
    agent_ids: tuple[str, ...] = ("4711",),
    proxy_overrides: dict[str, object] | None = None,
    agent_overrides: dict[str, object] | None = None,
    wait_connected: bool = True,
) -> AsyncIterator[Tunnel]:
    """A proxy and agents in this process, each agent connected and authenticated."""
    async with trio.open_nursery() as nursery:
        proxy = await nursery.start(run_proxy, proxy_config(certs, **(proxy_overrides or {})))
        t = Tunnel(proxy, nursery=nursery)
        for agent_id in agent_ids:
            handle = await t.start_agent(
                agent_config(certs, proxy.agent_port, agent_id, **(agent_overrides or {}))
            )
            if wait_connected:
                with trio.fail_after(10):
                    await handle.connected.wait()
        yield t
        nursery.cancel_scope.cancel()


@dataclass
class ConnectResult:
    status: int
    head: bytes
    stream: trio.SocketStream | None


async def open_connect(
    port: int,
    destination: str,
    authorization: str | None = None,
    *,
    raw: bytes | None = None,
) -> ConnectResult:
    """Send a CONNECT to the proxy and read its answer head; returns the open stream on 200."""
    stream = await trio.open_tcp_stream(LOOPBACK, port)
    if raw is None:
        lines = [f"CONNECT {destination} HTTP/1.1", f"Host: {destination}"]
        if authorization:
            lines.append(f"Proxy-Authorization: {authorization}")
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode()
    await stream.send_all(raw)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        head += chunk
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
    if status != 200:
        await stream.aclose()
        return ConnectResult(status, head, None)
    return ConnectResult(status, head, stream)


def noauth(agent_id: str = "4711") -> str:
    return basic(agent_id, "noauth")


def jwt_proxy_auth(public_key: Path, audience: str | None = None) -> ProxyAuth:
    return ProxyAuth(type="jwt", jwt_public_key=public_key, jwt_audience=audience)


def allow(*patterns: str) -> AllowList:
    return AllowList.parse(patterns)


def small_transport() -> TransportSettings:
    """Small windows that do not grow (tests of the bounds themselves)."""
    return fixed_windows(64 * 1024, 64 * 1024)


def fixed_windows(receive: int, send: int) -> TransportSettings:
    return TransportSettings(
        stream_receive_window=receive,
        stream_receive_window_max=receive,
        stream_send_buffer=send,
        stream_send_buffer_max=send,
    )


def echo_server() -> tuple[socket.socket, int]:
    """A loopback TCP echo in daemon threads (one per connection), for tests whose
    daemons run in other processes; close the socket to stop accepting."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(128)

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return

            def echo(c: socket.socket) -> None:
                # a tunnel torn down by an abort arrives as a reset: that ends this echo
                with c, contextlib.suppress(OSError):
                    while data := c.recv(65536):
                        c.sendall(data)

            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return srv, int(srv.getsockname()[1])


#: /metrics samples by (name, sorted labels).
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(port: int) -> Samples:
    """A daemon's /metrics on 127.0.0.1:``port``."""
    return parse_samples(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
