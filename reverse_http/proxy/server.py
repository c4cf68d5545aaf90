"""The proxy daemon.

Nursery tree (who owns whom; cancelling a node cancels its subtree)::

    run_proxy
    └── daemon.lifecycle               signals, SIGHUP reload, watchdog, metrics
        ├── serve_quic (agent server)  one task per agent connection:
        │   └── _serve_agent           authenticate, register, wait for the end
        ├── RouteRegistrar.run         with a route store: publish our agents
        ├── _publish_quic_stats        RTT, cwnd, losses per agent
        └── SessionFrontend.run        accept loops (own cancel scope: stop accepting)
            └── sessions nursery       one task per client: handle_client

Shutdown: stop accepting clients and agents, let running sessions finish for
``shutdown_grace_period``, then close agent connections with code 0.
"""

from __future__ import annotations

import functools
import logging
import socket
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from .. import tlsreload
from ..allowlist import warn_go_shadowed
from ..auth.authenticator import Authenticator, AuthError
from ..config import ProxyConfig
from ..daemon import DaemonState, lifecycle
from ..devcerts import make_dev_certs
from ..errors import ConfigError
from ..frontend import SessionFrontend, open_http_listeners, os_reason
from ..metrics import ProxyMetrics
from ..netaddr import format_address
from ..quic import Connection, ConnectionError, QuicServer, ServerSettings, ServerTls, serve_quic
from ..quic.settings import TlsConfigError, client_verifier, server_configuration
from ..session import SessionPolicy
from ..store.base import RouteStore
from ..systemd import Notifier
from ..tlsfiles import tls_file_flag
from ..wire.auth import AUTH_TIMEOUT, AUTHENTICATED, FramingError, encode_message, read_message
from .agents import AgentRegistry
from .connect import agent_upstream
from .quic_metrics import watch_agent_server
from .registrar import RouteRegistrar

log = logging.getLogger(__name__)

CODE_AUTH_FAILURE = 500
CODE_EMPTY_AGENT_ID = 400
CODE_SHUTDOWN = 0
REASON_SHUTDOWN = "proxy server shutdown"
QUIC_STATS_INTERVAL = 5.0


@dataclass(kw_only=True)
class ProxyServer(DaemonState):
    """Handles a running proxy exposes to tests and to the CLI."""

    config: ProxyConfig
    metrics: ProxyMetrics = field(default_factory=ProxyMetrics)
    registry: AgentRegistry = field(default_factory=AgentRegistry)
    quic: QuicServer | None = None
    frontend: SessionFrontend | None = None
    registrar: RouteRegistrar | None = None

    @property
    def agent_port(self) -> int:
        assert self.quic is not None
        return int(self.quic.local_address[1])

    @property
    def http_addresses(self) -> list[tuple[str, int]]:
        assert self.frontend is not None
        return self.frontend.addresses

    @property
    def http_port(self) -> int:
        return self.http_addresses[0][1]

    @property
    def active_sessions(self) -> int:
        return self.frontend.active_sessions if self.frontend else 0


async def run_proxy(
    config: ProxyConfig,
    *,
    handle_signals: bool = True,
    notifier: Notifier | None = None,
    task_status: trio.TaskStatus[ProxyServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until SIGTERM/SIGINT (or ``ProxyServer.shutdown()``); raises ConfigError on bad setup.

    Without ``handle_signals`` the caller owns the signals (trio delivers each to one
    receiver only) and calls ``shutdown()`` itself.
    """
    try:
        await _run_proxy(config, handle_signals, notifier or Notifier(None), task_status)
    except* ConfigError as group:
        raise group.exceptions[0] from None


async def _run_proxy(
    config: ProxyConfig,
    handle_signals: bool,
    notifier: Notifier,
    task_status: trio.TaskStatus[ProxyServer],
) -> None:
    authenticator = Authenticator.from_config(config.auth)
    warn_go_shadowed("--http-proxy.host-whitelist", config.host_whitelist)
    server = ProxyServer(config=config)
    metrics, health = server.metrics, server.health
    policy = SessionPolicy(
        authenticator=authenticator,
        allow=config.host_whitelist,
        open_upstream=agent_upstream(server.registry, config.agent_dial_timeout),
        header_timeout=config.header_timeout,
        max_header_bytes=config.max_header_bytes,
        metrics=metrics,
    )
    health.add_check("listeners", lambda: server.listening)
    with tempfile.TemporaryDirectory(prefix="reverse-http-devcerts-") as tmp:
        settings = _quic_settings(config, Path(tmp))
        listeners, http_tls_files = await open_http_listeners(config.http_listen, config.http_tls)
        server.frontend = frontend = SessionFrontend(listeners, policy)
        async with (
            _open_store(config) as store,
            lifecycle(
                "proxy",
                server,
                notifier,
                handle_signals=handle_signals,
                metrics_listen=config.metrics_listen,
            ) as life,
        ):
            nursery = life.nursery
            try:
                server.quic = quic = await nursery.start(
                    serve_quic,
                    lambda conn: _serve_agent(conn, server.registry, authenticator, metrics),
                    config.agent_listen.host,
                    config.agent_listen.port,
                    settings,
                )
            except OSError as exc:
                raise ConfigError(
                    f"--agent-server.listen-address {config.agent_listen}: {os_reason(exc)}"
                ) from None
            watch_agent_server(metrics.registry, quic)
            life.watch_files(
                _reloadables(config, settings, quic, http_tls_files), _refresh_interval(config)
            )
            if store is not None:
                address = config.store.http_proxy_address or _advertised(frontend.addresses[0])
                server.registrar = RouteRegistrar(
                    store,
                    address,
                    config.store.entry_ttl,
                    server.registry.agent_ids,
                    health_grace=config.store.readiness_grace,
                )
                server.registry.on_up = server.registrar.agent_up
                server.registry.on_down = server.registrar.agent_down
                server.registrar.on_error = metrics.store_error
                registrar = server.registrar
                health.add_check("store", lambda: registrar.healthy)
                nursery.start_soon(registrar.run)
                log.info("registering agents in the route store as %s", address)
            nursery.start_soon(_publish_quic_stats, server.registry, metrics)
            await nursery.start(frontend.run)
            server.listening = True
            log.info(
                "proxy listening: agents on udp %s, clients on tcp %s%s",
                format_address(quic.local_address),
                ", ".join(format_address(a) for a in frontend.addresses),
                " (TLS)" if config.http_tls else "",
            )
            task_status.started(server)
            life.ready("listening")
            await life.until_shutdown("draining")
            quic.stop_accepting()
            await frontend.drain(config.shutdown_grace_period)
            if server.registrar is not None:
                await server.registrar.unregister_all()
            await quic.close_all(CODE_SHUTDOWN, REASON_SHUTDOWN)


async def _serve_agent(
    conn: Connection, registry: AgentRegistry, auth: Authenticator, metrics: ProxyMetrics
) -> None:
    """Authenticate an agent on its first stream, then own its registration."""
    peer = format_address(conn.peer_address)
    try:
        with trio.fail_after(AUTH_TIMEOUT):
            stream = await conn.accept_stream()
            # Agents open exactly one stream (this one); tunnels are opened by us.
            conn.refuse_new_streams()
            token = (await read_message(stream)).decode("utf-8")
        agent_id = auth.agent_id_for(token)
    except (trio.TooSlowError, FramingError, AuthError, UnicodeDecodeError) as exc:
        reason = "authentication timed out" if isinstance(exc, trio.TooSlowError) else str(exc)
        log.warning("agent from %s refused: %s", peer, reason)
        metrics.agent_disconnected("", "auth_failed")
        conn.abort(CODE_AUTH_FAILURE, reason)
        return
    except (trio.BrokenResourceError, ConnectionError) as exc:
        log.info("agent from %s left during authentication: %s", peer, exc)
        return
    if not agent_id:
        log.warning("agent from %s refused: empty agent id", peer)
        metrics.agent_disconnected("", "auth_failed")
        conn.abort(CODE_EMPTY_AGENT_ID, "empty agent id")
        return
    try:
        await stream.send_all(encode_message(AUTHENTICATED))
        # the auth stream is done: holding it would cost every idle agent its state
        await stream.aclose()
    except trio.BrokenResourceError:
        return
    del stream
    registry.register(agent_id, conn)
    metrics.agent_connected(agent_id)
    metrics.agents_registered(len(registry))
    log.info("agent %s connected from %s", agent_id, peer)
    try:
        await conn.wait_closed()
    finally:
        registry.unregister(agent_id, conn)
        info = conn.close_info
        label = (
            ProxyMetrics.disconnect_reason(info.kind, info.error_code, info.by_peer, info.reason)
            if info is not None
            else "error"
        )
        metrics.agent_disconnected(agent_id, label)
        metrics.agents_registered(len(registry))
        log.info("agent %s from %s disconnected (%s)", agent_id, peer, info or "ended")


async def _publish_quic_stats(registry: AgentRegistry, metrics: ProxyMetrics) -> None:
    """RTT, congestion window and losses of every agent connection, every few seconds."""
    while True:
        for agent_id in registry.agent_ids():
            conn = registry.get(agent_id)
            if conn is not None:
                stats = conn.stats()
                metrics.update_quic(
                    agent_id,
                    stats["rtt_seconds"],
                    stats["congestion_window_bytes"],
                    stats["lost_packets"],
                )
        await trio.sleep(QUIC_STATS_INTERVAL)


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
    return agent_server_settings(config, tls)


def agent_server_settings(config: ProxyConfig, tls: ServerTls) -> ServerSettings:
    """The agent server's settings with ``tls`` loaded and cross-checked as a start would
    (also what ``--check`` runs); ConfigError names the flag of the bad file."""
    settings = ServerSettings(tls=tls, transport=config.transport, admission=config.agent_admission)
    try:
        server_configuration(settings)
        client_verifier(settings.tls)
    except TlsConfigError as exc:
        blamed = tls_file_flag(
            str(exc),
            "--agent-server",
            cert=tls.cert_file,
            key=tls.key_file,
            client_ca=tls.client_ca_file,
            client_crl=tls.client_crl_file,
        )
        raise ConfigError(f"{blamed}: {exc}") from None
    return settings


def _reloadables(
    config: ProxyConfig,
    settings: ServerSettings,
    quic: QuicServer,
    http_tls_files: tlsreload.ReloadableFiles | None,
) -> list[tlsreload.ReloadableFiles]:
    materials = [] if http_tls_files is None else [http_tls_files]
    if config.agent_tls is not None:
        materials.append(
            tlsreload.ReloadableFiles(
                "agent server TLS",
                config.agent_tls.files,
                functools.partial(quic.reload_tls, settings),
            )
        )
    return materials


def _refresh_interval(config: ProxyConfig) -> float:
    intervals = [config.agent_tls_refresh]
    if config.http_tls is not None:
        intervals.append(config.http_tls.refresh)
    active = [i for i in intervals if i > 0]
    return min(active) if active else 0.0


@asynccontextmanager
async def _open_store(config: ProxyConfig) -> AsyncIterator[RouteStore | None]:
    """None for ``--store.type none``: a lone proxy needs no routes."""
    if config.store.type == "none":
        yield None
        return
    # imported here: aiomcache brings asyncio and trio-asyncio, ~0.2 s a lone proxy skips
    from ..store.memcached import open_memcached_store

    store_cfg = config.store
    async with open_memcached_store(
        store_cfg.memcached_addresses, store_cfg.memcached_timeout, store_cfg.entry_ttl
    ) as store:
        yield store


def _advertised(address: tuple[str, int]) -> str:
    """Our HTTP address as other hosts reach it: the wildcard becomes the host name."""
    host, port = address
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return format_address((host, port))
