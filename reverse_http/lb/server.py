"""The LB server of an HA cluster: stateless CONNECT forwarding to the owning proxy.

Nursery tree::

    run_lb
    └── daemon.lifecycle             signals, SIGHUP reload, watchdog, metrics
        └── SessionFrontend.run      accept loops + one task per client session
            └── handle_client        auth, allow-list, route lookup, forward, relay
                └── ProxyConnector   parse the route, check it, dial, CONNECT

The route store's answer is only a hint: the owning proxy checks its own
connections, so a stale route yields 503 from that proxy, never a tunnel to
the wrong agent. Nor is it trusted: whoever can reach memcached can write it, so a
route is dialled only if it parses and every address it names is in the allow-list
of proxy networks (see :class:`ProxyConnector` and docs/ha.md).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Final

import trio

from ..allowlist import IPAddress, warn_go_shadowed
from ..auth.authenticator import Authenticator
from ..config import ConnectorTls, LbConfig
from ..daemon import DaemonState, lifecycle
from ..errors import ConfigError
from ..frontend import SessionFrontend, open_http_listeners
from ..metrics import LbMetrics
from ..netaddr import format_address
from ..safetext import safe_text
from ..session import SessionPolicy, Upstream
from ..store.base import (
    Outage,
    Reclaim,
    RouteStore,
    StoredRoute,
    StoreError,
    StoreUnavailable,
)
from ..store.memcached import open_memcached_store
from ..store.route import InvalidRoute, ProxyAddress, ProxyAllowList, parse_route
from ..systemd import Notifier
from ..tlsfiles import TlsConfigError, flag_of_file, load_key_pair
from ..wire.http import ConnectRequest, HttpError, request_tunnel

log = logging.getLogger(__name__)

#: A refused route (malformed, outside the allow-list) is logged at most this often per kind.
REFUSAL_LOG_INTERVAL: Final = 10.0
#: How often the LB server asks the store whether it answers (readiness).
STORE_PROBE_INTERVAL: Final = 1.0


@dataclass(kw_only=True)
class LbServer(DaemonState):
    config: LbConfig
    metrics: LbMetrics = field(default_factory=LbMetrics)
    store: RouteStore | None = None
    frontend: SessionFrontend | None = None

    @property
    def http_port(self) -> int:
        assert self.frontend is not None
        return self.frontend.addresses[0][1]


async def run_lb(
    config: LbConfig,
    *,
    handle_signals: bool = True,
    notifier: Notifier | None = None,
    task_status: trio.TaskStatus[LbServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until SIGTERM/SIGINT (or ``LbServer.shutdown()``); raises ConfigError on bad setup."""
    try:
        await _run_lb(config, handle_signals, notifier or Notifier(None), task_status)
    except* ConfigError as group:
        raise group.exceptions[0] from None


async def _run_lb(
    config: LbConfig,
    handle_signals: bool,
    notifier: Notifier,
    task_status: trio.TaskStatus[LbServer],
) -> None:
    if config.store.type != "memcached":
        raise ConfigError("--store.type: the LB server needs memcached")
    authenticator = Authenticator.from_config(config.auth)
    warn_go_shadowed("--http-proxy.host-whitelist", config.host_whitelist)
    connector_ssl = connector_context(config.connector_tls)
    server = LbServer(config=config)
    async with _store(config) as store:
        server.store = store
        policy = SessionPolicy(
            authenticator=authenticator,
            allow=config.host_whitelist,
            open_upstream=ProxyConnector(
                store,
                allowed=config.allowed_proxies,
                tls=connector_ssl,
                server_name=config.connector_tls.server_name,
                connect_timeout=config.connect_timeout,
                metrics=server.metrics,
            ).open_upstream,
            header_timeout=config.header_timeout,
            max_header_bytes=config.max_header_bytes,
            metrics=server.metrics,
        )
        server.health.add_check("listeners", lambda: server.listening)
        outage = Outage(config.store.readiness_grace)
        server.health.add_check("store", lambda: outage.ready)
        listeners, tls_files = await open_http_listeners(config.http_listen, config.http_tls)
        server.frontend = frontend = SessionFrontend(listeners, policy)
        async with lifecycle(
            "lb",
            server,
            notifier,
            handle_signals=handle_signals,
            metrics_listen=config.metrics_listen,
        ) as life:
            if tls_files is not None:
                assert config.http_tls is not None
                life.watch_files([tls_files], config.http_tls.refresh)
            life.nursery.start_soon(probe_store, store, outage, server.metrics)
            await life.nursery.start(frontend.run)
            server.listening = True
            log.info(
                "lb listening: clients on tcp %s%s; routes from memcached %s; "
                "dialling proxies only in %s",
                ", ".join(format_address(a) for a in frontend.addresses),
                " (TLS)" if config.http_tls else "",
                ",".join(config.store.memcached_addresses),
                config.allowed_proxies,
            )
            task_status.started(server)
            life.ready("listening")
            await life.until_shutdown("draining")
            await frontend.drain(config.shutdown_grace_period)


async def probe_store(
    store: RouteStore, outage: Outage, metrics: LbMetrics, interval: float = STORE_PROBE_INTERVAL
) -> None:
    """Ping the store every ``interval``: the LB is ready only while it answers.

    Without its store the LB can route nothing; after ``--store.readiness-grace`` of
    failures /readyz answers 503, so its load balancer sends clients to another LB.
    """
    while True:
        try:
            await store.ping()
        except StoreUnavailable as exc:
            metrics.store_error("ping")
            if outage.failed():
                log.warning(
                    "route store not answering: %s; unready after %gs more of this",
                    exc,
                    outage.grace,
                )
        else:
            if outage.succeeded():
                log.info("route store answers again")
        await trio.sleep(interval)


@asynccontextmanager
async def _store(config: LbConfig) -> AsyncIterator[RouteStore]:
    s = config.store
    async with open_memcached_store(s.memcached_addresses, s.memcached_timeout, s.entry_ttl) as st:
        yield st


def connector_context(tls: ConnectorTls) -> ssl.SSLContext | None:
    """TLS towards the proxies: verified against the configured CA, or the system store
    only when ``use_system_pool`` asks for it; never unverified unless explicitly skipped.
    """
    if not tls.enable:
        return None
    if not (tls.insecure_skip_verify or tls.root_ca_file is not None or tls.use_system_pool):
        raise ConfigError(
            "--http-connector.tls.enable: give --http-connector.tls.file.root-ca or "
            "--http-connector.tls.use-system-pool to verify the proxies' certificates "
            "(or --http-connector.tls.insecure-skip-verify)"
        )
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if tls.insecure_skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            if tls.root_ca_file is not None:
                ctx.load_verify_locations(cafile=str(tls.root_ca_file))
            if tls.use_system_pool:
                ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if tls.cert_file is not None:
            if tls.key_file is None:
                raise ConfigError(
                    "--http-connector.tls.file.cert needs --http-connector.tls.file.key"
                )
            password_flag = "--http-connector.tls.key-password"
            try:
                load_key_pair(
                    tls.cert_file, tls.key_file, tls.key_password, password_flag=password_flag
                )
            except TlsConfigError as exc:
                blamed = flag_of_file(
                    str(exc),
                    {
                        "--http-connector.tls.file.cert": tls.cert_file,
                        "--http-connector.tls.file.key": tls.key_file,
                    },
                    "--http-connector.tls.file.cert",
                )
                raise ConfigError(f"{blamed}: {exc}") from None
            ctx.load_cert_chain(tls.cert_file, tls.key_file, password=tls.key_password or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"--http-connector.tls.file.*: {exc}") from None
    return ctx


#: Resolves a proxy's host name to every address it has.
Resolve = Callable[[str, int], Awaitable[list[IPAddress]]]


async def resolve_addresses(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to, in resolver order, IPv4-mapped ones unmapped."""
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: dict[IPAddress, None] = {}
    for _family, _type, _proto, _name, sockaddr in infos:
        ip = ipaddress.ip_address(sockaddr[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        found[ip] = None
    return list(found)


class ThrottledLog:
    """Log lines about input anyone with memcached access writes: one per kind per interval.

    The rest are counted and mentioned in the next line of their kind, so a flood of
    bad routes costs a bounded number of log lines.
    """

    def __init__(self, logger: logging.Logger, interval: float = REFUSAL_LOG_INTERVAL) -> None:
        self._log = logger
        self._interval = interval
        self._next: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def log(self, kind: str, level: int, message: str, *args: object) -> bool:
        """Log ``message % args`` unless ``kind`` was logged less than an interval ago."""
        now = time.monotonic()
        due = self._next.get(kind)
        if due is not None and now < due:
            self._skipped[kind] = self._skipped.get(kind, 0) + 1
            return False
        skipped = self._skipped.pop(kind, 0)
        self._next[kind] = now + self._interval
        more = f" ({skipped} more like it since the last report)" if skipped else ""
        self._log.log(level, message + "%s", *args, more)
        return True


class _Unusable(Exception):
    """The route's proxy could not be reached or is no HTTP proxy: a lease is due."""

    def __init__(self, error: HttpError) -> None:
        super().__init__(error.detail)
        self.error = error


class _Verdict(HttpError):
    """The proxy answered the CONNECT with a status other than 200; the client gets it."""


@dataclass
class ProxyConnector:
    """Turns an agent's route into a CONNECT through the proxy it names.

    The route is untrusted: it is parsed (:func:`parse_route`), every address it names
    or resolves to must be in ``allowed`` before anything is dialled (so the client's
    ``Proxy-Authorization`` only ever goes to an allowed proxy), and with TLS the
    proxy's certificate must carry ``server_name`` or else the route's (allowed) host.

    Foreign entries (not tagged by our proxies) that cannot be used are reclaimed:
    malformed or disallowed ones are deleted, those whose proxy cannot be reached get a
    lease (a TTL) once, lifted again when that proxy answers; all by compare-and-swap,
    so a newer write is never lost. Our proxies' entries expire by their own TTL.
    """

    store: RouteStore
    allowed: ProxyAllowList = field(default_factory=ProxyAllowList.default)
    tls: ssl.SSLContext | None = None
    server_name: str | None = None
    connect_timeout: float = 10.0
    metrics: LbMetrics | None = None
    resolve: Resolve = resolve_addresses
    throttled: ThrottledLog = field(default_factory=lambda: ThrottledLog(log))

    async def open_upstream(
        self, agent_id: str, request: ConnectRequest, authorization: str
    ) -> Upstream:
        shown = safe_text(agent_id)
        try:
            stored = await self.store.lookup(agent_id)
        except StoreUnavailable as exc:
            self._looked_up("store_error")
            if self.metrics is not None:
                self.metrics.store_error()
            raise HttpError(503, f"route store unavailable: {safe_text(exc)}") from None
        if stored is None or not stored.value:
            self._looked_up("missing")
            raise HttpError(503, f"agent {shown} is not connected to any proxy")
        try:
            address = parse_route(stored.value)
        except InvalidRoute as exc:
            self._looked_up("malformed")
            await self._refuse(agent_id, stored, "malformed", f"{exc}: {stored.value!r}")
            raise HttpError(
                503, f"agent {shown} is not connected to any proxy (its route is malformed)"
            ) from None
        deadline = trio.current_time() + self.connect_timeout
        try:
            ips = await self._allowed_addresses(agent_id, stored, address, deadline)
            self._looked_up("found")
            upstream = await self._connect(ips, address, request, authorization, deadline)
        except _Unusable as exc:
            if not stored.leased:
                await self._reclaim(agent_id, stored, "lease", exc.error.detail)
            raise exc.error from None
        except _Verdict:
            # the proxy is there and speaks HTTP: whatever it says, the lease is over
            if stored.leased:
                await self._reclaim(agent_id, stored, "unlease", f"proxy {address} answered")
            raise
        if stored.leased:
            await self._reclaim(agent_id, stored, "unlease", f"proxy {address} answered")
        return upstream

    async def _allowed_addresses(
        self, agent_id: str, stored: StoredRoute, address: ProxyAddress, deadline: float
    ) -> list[IPAddress]:
        """Every address of the route, all inside the allow-list; else 503, nothing dialled."""
        ip = address.ip
        if ip is not None:
            ips = [ip]
        else:
            try:
                with trio.fail_at(deadline):
                    ips = await self.resolve(address.host, address.port)
            except (OSError, trio.TooSlowError) as exc:
                reason = "timed out" if isinstance(exc, trio.TooSlowError) else safe_text(exc)
                raise _Unusable(
                    HttpError(503, f"proxy {address} unreachable: cannot resolve: {reason}")
                ) from None
            if not ips:
                raise _Unusable(HttpError(503, f"proxy {address} unreachable: no address"))
        outside = [str(a) for a in ips if not self.allowed.allows(a)]
        if outside:
            self._looked_up("not_allowed")
            where = f" ({', '.join(outside)})" if address.ip is None else ""
            await self._refuse(
                agent_id, stored, "not_allowed", f"{address}{where} is outside {self.allowed}"
            )
            raise HttpError(
                503,
                f"the route of agent {safe_text(agent_id)} names proxy {address}{where}, "
                "which is not in --http-connector.allowed-proxies; not dialled",
            )
        return ips

    async def _connect(
        self,
        ips: list[IPAddress],
        address: ProxyAddress,
        request: ConnectRequest,
        authorization: str,
        deadline: float,
    ) -> Upstream:
        """CONNECT through the proxy at ``ips`` with the client's own credentials."""
        stream: trio.abc.Stream | None = None
        try:
            with trio.move_on_at(deadline):
                started = trio.current_time()
                try:
                    tcp = await _dial(ips, address.port)
                except OSError as exc:
                    raise _Unusable(
                        HttpError(503, f"proxy {address} unreachable: {safe_text(exc)}")
                    ) from None
                stream = tcp
                if self.tls is not None:
                    name = self.server_name or ("localhost" if address.this_host else address.host)
                    stream = trio.SSLStream(
                        tcp, self.tls, server_hostname=name, https_compatible=True
                    )
                    await stream.do_handshake()
                if self.metrics is not None:
                    self.metrics.upstream_dialled(trio.current_time() - started)
                extra = [("Proxy-Authorization", authorization)] if authorization else []
                try:
                    head = await request_tunnel(stream, request.host, request.port, extra)
                except HttpError as exc:
                    raise _Unusable(HttpError(502, f"proxy {address}: {exc.detail}")) from None
                if head.status == 200:
                    upstream, stream = Upstream(stream, head.leftover), None
                    return upstream
                # The owner's verdict (407, 403, 503...) is the client's answer.
                # ... with the proxy's reason (e.g. the agent's dial failure) passed on
                why = safe_text(head.body.decode("utf-8", "replace").strip())
                raise _Verdict(
                    head.status, f"proxy {address}: {why or f'{head.status} {head.reason}'}"
                )
            if stream is None:
                raise _Unusable(HttpError(503, f"proxy {address} unreachable: connect timed out"))
            raise HttpError(503, f"proxy {address} did not answer within {self.connect_timeout:g}s")
        except (OSError, ssl.SSLError, trio.BrokenResourceError) as exc:
            # trio wraps TLS failures (certificate checks) as the cause of a broken stream
            cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else None
            reason = safe_text(cause or exc) or type(cause or exc).__name__
            raise HttpError(503, f"proxy {address} failed: {reason}") from None
        finally:
            if stream is not None:
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(stream)

    def _looked_up(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.route_lookup(result)

    async def _refuse(self, agent_id: str, stored: StoredRoute, reason: str, detail: str) -> None:
        """Count and (throttled) log a route we will not dial; delete it if foreign."""
        if self.metrics is not None:
            self.metrics.route_refused(reason)
        owner = "one of our proxies" if stored.owned else "a foreign writer"
        self.throttled.log(
            reason,
            logging.WARNING,
            "route for agent %s (written by %s) refused as %s, treated as no route: %s",
            agent_id,
            owner,
            reason.replace("_", " "),
            detail,
        )
        await self._reclaim(agent_id, stored, "delete", reason.replace("_", " "))

    async def _reclaim(self, agent_id: str, stored: StoredRoute, how: Reclaim, why: str) -> None:
        if stored.owned:
            return  # its owner refreshes it, or its TTL ends it
        try:
            changed = await self.store.reclaim(agent_id, stored, how)
        except StoreError as exc:
            if self.metrics is not None:
                self.metrics.store_error("reclaim")
            log.debug("route for agent %s: %s failed: %s", agent_id, how, exc)
            return
        if changed:
            if self.metrics is not None:
                self.metrics.route_reclaimed(how)
            self.throttled.log(
                how,
                logging.INFO,
                "foreign route for agent %s (%r): %s (%s)",
                agent_id,
                stored.value,
                _RECLAIMED[how],
                why,
            )


_RECLAIMED: dict[Reclaim, str] = {
    "delete": "deleted",
    "lease": "leased, it expires unless its proxy answers again",
    "unlease": "lease lifted",
}


async def _dial(ips: list[IPAddress], port: int) -> trio.SocketStream:
    """TCP to the first of ``ips`` that answers (all of them already allowed)."""
    error: OSError | None = None
    for ip in ips:
        try:
            return await trio.open_tcp_stream(str(ip), port)
        except OSError as exc:
            error = exc
    assert error is not None
    raise error
