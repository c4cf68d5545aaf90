"""The proxy daemon.

Nursery tree (who owns whom; cancelling a node cancels its subtree)::

    run_proxy
    ├── _watch_signals                 SIGTERM/SIGINT -> ProxyServer.shutdown()
    ├── serve_quic (agent server)      one task per agent connection:
    │   └── _serve_agent               authenticate, register, wait for the end
    └── accept loop (HTTP CONNECT)     under its own cancel scope: stop accepting
        └── sessions nursery           one task per client: handle_client

Shutdown: stop accepting clients and agents, let running sessions finish for
``shutdown_grace_period``, then close agent connections with code 0.
"""

from __future__ import annotations

import errno
import logging
import signal
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import trio

from ..config import ListenAddress, ProxyConfig
from ..devcerts import make_dev_certs
from ..errors import ConfigError
from ..netaddr import format_address
from ..quic import Connection, ConnectionError, QuicServer, ServerSettings, ServerTls, serve_quic
from ..quic.settings import TlsConfigError, server_configuration
from ..wire.auth import AUTH_TIMEOUT, AUTHENTICATED, FramingError, encode_message, read_message
from .agents import AgentRegistry
from .auth import Authenticator, AuthError
from .connect import SessionPolicy, handle_client

log = logging.getLogger(__name__)

CODE_AUTH_FAILURE = 500
CODE_EMPTY_AGENT_ID = 400
CODE_SHUTDOWN = 0
REASON_SHUTDOWN = "proxy server shutdown"


@dataclass
class ProxyServer:
    """Handles a running proxy exposes to tests and to the CLI."""

    config: ProxyConfig
    registry: AgentRegistry = field(default_factory=AgentRegistry)
    quic: QuicServer | None = None
    http_addresses: list[tuple[str, int]] = field(default_factory=list)
    active_sessions: int = 0
    _accept_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    _sessions_idle: trio.Event = field(default_factory=trio.Event)
    _shutdown: trio.Event = field(default_factory=trio.Event)
    _stopped: trio.Event = field(default_factory=trio.Event)

    @property
    def agent_port(self) -> int:
        assert self.quic is not None
        return int(self.quic.local_address[1])

    @property
    def http_port(self) -> int:
        return self.http_addresses[0][1]

    def shutdown(self) -> None:
        self._shutdown.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


async def run_proxy(
    config: ProxyConfig, *, task_status: trio.TaskStatus[ProxyServer] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run until SIGTERM/SIGINT (or ``ProxyServer.shutdown()``); raises ConfigError on bad setup."""
    authenticator = Authenticator.from_config(config.auth)
    with tempfile.TemporaryDirectory(prefix="reverse-http-devcerts-") as tmp:
        settings = _quic_settings(config, Path(tmp))
        server = ProxyServer(config)
        policy = SessionPolicy(
            authenticator=authenticator,
            allow=config.host_whitelist,
            lookup=server.registry.get,
            dial_timeout=config.agent_dial_timeout,
            header_timeout=config.header_timeout,
            max_header_bytes=config.max_header_bytes,
        )
        listeners = await _open_http_listeners(config)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_signals, server, nursery.cancel_scope)
            try:
                server.quic = await nursery.start(
                    serve_quic,
                    lambda conn: _serve_agent(conn, server.registry, authenticator),
                    config.agent_listen.host,
                    config.agent_listen.port,
                    settings,
                )
            except OSError as exc:
                raise ConfigError(
                    f"--agent-server.listen-address {config.agent_listen}: {_os_reason(exc)}"
                ) from None
            server.http_addresses = [_sockname(ln) for ln in listeners]
            async with trio.open_nursery() as sessions:
                nursery.start_soon(_accept_clients, server, listeners, sessions, policy)
                log.info(
                    "proxy listening: agents on udp %s, clients on tcp %s%s",
                    format_address(server.quic.local_address),
                    ", ".join(format_address(a) for a in server.http_addresses),
                    " (TLS)" if config.http_tls else "",
                )
                task_status.started(server)
                await server._shutdown.wait()
                await _drain(server, config.shutdown_grace_period)
                sessions.cancel_scope.cancel()
            await server.quic.close_all(CODE_SHUTDOWN, REASON_SHUTDOWN)
            nursery.cancel_scope.cancel()
    server._stopped.set()
    log.info("proxy stopped")


async def _drain(server: ProxyServer, grace: float) -> None:
    server._accept_scope.cancel()
    assert server.quic is not None
    server.quic.stop_accepting()
    if server.active_sessions:
        log.info(
            "shutting down: waiting up to %gs for %d session(s)", grace, server.active_sessions
        )
        with trio.move_on_after(grace):
            await server._sessions_idle.wait()


async def _watch_signals(server: ProxyServer, everything: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if server._shutdown.is_set():
                log.warning("second signal: exiting now")
                everything.cancel()
                return
            log.info("received %s: shutting down", signal.Signals(signum).name)
            server.shutdown()


async def _accept_clients(
    server: ProxyServer,
    listeners: list[trio.abc.Listener[trio.abc.Stream]],
    sessions: trio.Nursery,
    policy: SessionPolicy,
) -> None:
    async def session(stream: trio.abc.Stream) -> None:
        server.active_sessions += 1
        if server.active_sessions == 1:
            server._sessions_idle = trio.Event()
        try:
            await handle_client(stream, policy, _peer_of(stream))
        finally:
            server.active_sessions -= 1
            if server.active_sessions == 0:
                server._sessions_idle.set()

    server._sessions_idle.set()
    with server._accept_scope:
        async with trio.open_nursery() as accepting:
            for listener in listeners:
                accepting.start_soon(_accept_loop, listener, sessions, session)
    for listener in listeners:
        await listener.aclose()


async def _accept_loop(
    listener: trio.abc.Listener[trio.abc.Stream],
    sessions: trio.Nursery,
    session: object,
) -> None:
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            # EMFILE and friends: back off briefly instead of spinning.
            log.warning("accept failed: %s", exc)
            await trio.sleep(0.1)
            continue
        sessions.start_soon(session, stream)  # type: ignore[arg-type]


async def _serve_agent(conn: Connection, registry: AgentRegistry, auth: Authenticator) -> None:
    """Authenticate an agent on its first stream, then own its registration."""
    peer = format_address(conn.peer_address)
    try:
        with trio.fail_after(AUTH_TIMEOUT):
            stream = await conn.accept_stream()
            token = (await read_message(stream)).decode("utf-8")
        agent_id = auth.agent_id_for(token)
    except (trio.TooSlowError, FramingError, AuthError, UnicodeDecodeError) as exc:
        reason = "authentication timed out" if isinstance(exc, trio.TooSlowError) else str(exc)
        log.warning("agent from %s refused: %s", peer, reason)
        conn.abort(CODE_AUTH_FAILURE, reason)
        return
    except (trio.BrokenResourceError, ConnectionError) as exc:
        log.info("agent from %s left during authentication: %s", peer, exc)
        return
    if not agent_id:
        log.warning("agent from %s refused: empty agent id", peer)
        conn.abort(CODE_EMPTY_AGENT_ID, "empty agent id")
        return
    try:
        await stream.send_all(encode_message(AUTHENTICATED))
        await stream.send_eof()
    except trio.BrokenResourceError:
        return
    registry.register(agent_id, conn)
    log.info("agent %s connected from %s", agent_id, peer)
    try:
        await conn.wait_closed()
    finally:
        registry.unregister(agent_id, conn)
        log.info("agent %s from %s disconnected (%s)", agent_id, peer, conn.close_info or "ended")
        await stream.aclose()


def _quic_settings(config: ProxyConfig, devcert_dir: Path) -> ServerSettings:
    tls = config.agent_tls
    if tls is None:
        certs = make_dev_certs(devcert_dir)
        log.warning(
            "no --agent-server.tls.file.cert/key given: using a throwaway development "
            "certificate (CA at %s); agents must trust that CA or skip verification. "
            "Never run like this in production.",
            certs.ca_cert,
        )
        tls = ServerTls(cert_file=certs.cert, key_file=certs.key)
    settings = ServerSettings(tls=tls, transport=config.transport)
    try:
        server_configuration(settings)
    except TlsConfigError as exc:
        raise ConfigError(f"--agent-server.tls.file.*: {exc}") from None
    return settings


async def _open_http_listeners(config: ProxyConfig) -> list[trio.abc.Listener[trio.abc.Stream]]:
    addr: ListenAddress = config.http_listen
    try:
        tcp = await trio.open_tcp_listeners(addr.port, host=addr.host or None)
    except OSError as exc:
        raise ConfigError(f"--http-proxy.listen-address {addr}: {_os_reason(exc)}") from None
    if config.http_tls is None:
        return list(tcp)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(config.http_tls.cert_file, config.http_tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        for ln in tcp:
            await ln.aclose()
        raise ConfigError(
            f"--http-proxy.tls.file.cert/key ({config.http_tls.cert_file}, "
            f"{config.http_tls.key_file}): {exc}"
        ) from None
    return [trio.SSLListener(ln, ctx, https_compatible=True) for ln in tcp]


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "address already in use"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    return exc.strerror or str(exc)


def _sockname(listener: trio.abc.Listener[trio.abc.Stream]) -> tuple[str, int]:
    inner = listener.transport_listener if isinstance(listener, trio.SSLListener) else listener
    assert isinstance(inner, trio.SocketListener)
    name = inner.socket.getsockname()
    return str(name[0]), int(name[1])


def _peer_of(stream: trio.abc.Stream) -> str:
    inner = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if isinstance(inner, trio.SocketStream):
        try:
            return format_address(inner.socket.getpeername())
        except OSError:
            return "?"
    return "?"
