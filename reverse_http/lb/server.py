"""The LB server of an HA cluster: stateless CONNECT forwarding to the owning proxy.

Nursery tree::

    run_lb
    ├── watch_signals            SIGTERM/SIGINT -> drain and exit
    └── SessionFrontend.run      accept loops + one task per client session
        └── handle_client        auth, allow-list, route lookup, forward, relay

The route store's answer is only a hint: the owning proxy checks its own
connections, so a stale route yields 503 from that proxy, never a tunnel to
the wrong agent.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from .. import tlsreload
from ..allowlist import parse_authority
from ..auth.authenticator import Authenticator
from ..config import ConnectorTls, LbConfig
from ..errors import ConfigError
from ..frontend import DaemonState, SessionFrontend, open_http_listeners, watch_signals
from ..metrics import serve_metrics
from ..netaddr import format_address
from ..safetext import safe_text
from ..session import OpenUpstream, SessionPolicy, Upstream
from ..store.base import RouteStore, StoreUnavailable
from ..store.memcached import open_memcached_store
from ..systemd import Notifier, run_watchdog
from ..wire.http import ConnectRequest, HttpError, request_tunnel

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class LbServer(DaemonState):
    config: LbConfig
    store: RouteStore | None = None
    frontend: SessionFrontend | None = None

    @property
    def http_port(self) -> int:
        assert self.frontend is not None
        return self.frontend.addresses[0][1]


async def run_lb(
    config: LbConfig,
    *,
    notifier: Notifier | None = None,
    task_status: trio.TaskStatus[LbServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until SIGTERM/SIGINT (or ``LbServer.shutdown()``); raises ConfigError on bad setup."""
    try:
        await _run_lb(config, notifier or Notifier(None), task_status)
    except* ConfigError as group:
        raise group.exceptions[0] from None


async def _run_lb(
    config: LbConfig, notifier: Notifier, task_status: trio.TaskStatus[LbServer]
) -> None:
    if config.store.type != "memcached":
        raise ConfigError("--store.type: the LB server needs memcached")
    authenticator = Authenticator.from_config(config.auth)
    connector_ssl = connector_context(config.connector_tls)
    server = LbServer(config=config)
    async with _store(config) as store:
        server.store = store
        policy = SessionPolicy(
            authenticator=authenticator,
            allow=config.host_whitelist,
            open_upstream=owner_upstream(
                store, connector_ssl, config.connect_timeout, server.metrics.store_error
            ),
            header_timeout=config.header_timeout,
            max_header_bytes=config.max_header_bytes,
            metrics=server.metrics,
        )
        server.health.add_check("listeners", lambda: server.listening)
        listeners, tls_files = await open_http_listeners(config.http_listen, config.http_tls)
        server.frontend = frontend = SessionFrontend(listeners, policy)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_signals, server._shutdown, nursery.cancel_scope)
            if tls_files is not None:
                assert config.http_tls is not None
                await nursery.start(tlsreload.watch, [tls_files], config.http_tls.refresh)
            if config.metrics_listen is not None:
                await nursery.start(
                    serve_metrics,
                    config.metrics_listen.host,
                    config.metrics_listen.port,
                    server.metrics,
                    server.health,
                )
            nursery.start_soon(run_watchdog, notifier)
            await nursery.start(frontend.run)
            server.listening = True
            log.info(
                "lb listening: clients on tcp %s%s; routes from memcached %s",
                ", ".join(format_address(a) for a in frontend.addresses),
                " (TLS)" if config.http_tls else "",
                ",".join(config.store.memcached_addresses),
            )
            task_status.started(server)
            notifier.ready("listening")
            await server._shutdown.wait()
            notifier.stopping("draining")
            server.listening = False
            await frontend.drain(config.shutdown_grace_period)
            nursery.cancel_scope.cancel()
    server._stopped.set()
    log.info("lb stopped")


@asynccontextmanager
async def _store(config: LbConfig) -> AsyncIterator[RouteStore]:
    s = config.store
    async with open_memcached_store(s.memcached_addresses, s.memcached_timeout, s.entry_ttl) as st:
        yield st


def connector_context(tls: ConnectorTls) -> ssl.SSLContext | None:
    """TLS towards the proxies; verification on unless explicitly skipped."""
    if not tls.enable:
        return None
    try:
        ctx = ssl.create_default_context(cafile=str(tls.root_ca_file) if tls.root_ca_file else None)
        if tls.insecure_skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if tls.cert_file is not None:
            if tls.key_file is None:
                raise ConfigError(
                    "--http-connector.tls.file.cert needs --http-connector.tls.file.key"
                )
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"--http-connector.tls.file.*: {exc}") from None
    return ctx


def owner_upstream(
    store: RouteStore,
    tls: ssl.SSLContext | None,
    connect_timeout: float,
    on_store_error: Callable[[], None] = lambda: None,
) -> OpenUpstream:
    async def open_upstream(agent_id: str, request: ConnectRequest, authorization: str) -> Upstream:
        try:
            address = await store.get_route(agent_id)
        except StoreUnavailable as exc:
            on_store_error()
            raise HttpError(503, f"route store unavailable: {safe_text(exc)}") from None
        if address is None:
            raise HttpError(503, f"agent {safe_text(agent_id)} is not connected to any proxy")
        return await forward_connect(address, request, authorization, tls, connect_timeout)

    return open_upstream


async def forward_connect(
    address: str,
    request: ConnectRequest,
    authorization: str,
    tls: ssl.SSLContext | None,
    connect_timeout: float,
) -> Upstream:
    """CONNECT through the proxy at ``address`` with the client's own credentials."""
    try:
        host, port = parse_authority(address)
    except ValueError:
        shown = safe_text(repr(address))
        raise HttpError(503, f"route store holds a malformed proxy address {shown}") from None
    stream: trio.abc.Stream | None = None
    try:
        with trio.move_on_after(connect_timeout):
            tcp = await trio.open_tcp_stream(host, port)
            stream = tcp
            if tls is not None:
                stream = trio.SSLStream(tcp, tls, server_hostname=host, https_compatible=True)
                await stream.do_handshake()
            extra = [("Proxy-Authorization", authorization)] if authorization else []
            try:
                head = await request_tunnel(stream, request.host, request.port, extra)
            except HttpError as exc:
                raise HttpError(502, f"proxy {address}: {exc.detail}") from None
            if head.status == 200:
                upstream, stream = Upstream(stream, head.leftover), None
                return upstream
            # The owner's verdict (407, 403, 503...) is the client's answer.
            raise HttpError(head.status, f"proxy {address}: {head.status} {head.reason}")
        raise HttpError(503, f"proxy {address} did not answer within {connect_timeout:g}s")
    except (OSError, ssl.SSLError, trio.BrokenResourceError) as exc:
        raise HttpError(503, f"proxy {address} unreachable: {safe_text(exc)}") from None
    finally:
        if stream is not None:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)
