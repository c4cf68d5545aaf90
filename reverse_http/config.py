"""Typed configuration of the daemons.

Only the CLI reads flags, environment and files; it builds these objects and the
rest of the code takes them as given. Every value here is already validated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .allowlist import AllowList
from .quic.settings import AdmissionSettings, ClientTls, ServerTls, TransportSettings
from .store.route import ProxyAllowList
from .tlsfiles import present

AuthType = Literal["noauth", "jwt"]


@dataclass(frozen=True)
class ListenAddress:
    """``host:port``; an empty host means every address (dual-stack where possible)."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class TcpTls:
    """TLS for a TCP listener (the "HTTPS proxy" mode)."""

    cert_file: Path
    key_file: Path
    #: Re-read the files this often (0: only on SIGHUP).
    refresh: float = 0.0
    #: Decrypts an encrypted key file; never logged.
    key_password: str | None = field(default=None, repr=False)
    #: Clients must present a certificate from this CA (mutual TLS)...
    client_ca_file: Path | None = None
    #: ...that these PEM CRLs, signed by that CA, do not revoke.
    client_crl_file: Path | None = None

    @property
    def files(self) -> list[Path]:
        """Every file behind this material (what a reload re-reads)."""
        return present(self.cert_file, self.key_file, self.client_ca_file, self.client_crl_file)


@dataclass(frozen=True)
class ProxyAuth:
    """How the proxy verifies agents and clients."""

    type: AuthType = "noauth"
    jwt_public_key: Path | None = None
    jwt_audience: str | None = None


@dataclass(frozen=True)
class AgentCredentials:
    """What the agent presents: its id (noauth) or a JWT (already read from ``file:``)."""

    type: AuthType
    agent_id: str | None = None
    token: str | None = None
    #: The ``file:`` the token came from: the agent re-reads it before every connection
    #: attempt and on SIGHUP.
    token_file: Path | None = None

    def __post_init__(self) -> None:
        if self.type == "noauth" and not self.agent_id:
            raise ValueError("--auth.noauth.agent-id is required with --auth.type noauth")
        if self.type == "jwt" and not self.token:
            raise ValueError("--auth.jwt.token is required with --auth.type jwt")

    @property
    def secret(self) -> str:
        """The bytes sent on the auth stream; never log this."""
        return self.token if self.type == "jwt" and self.token else self.agent_id or ""


#: An LB server without its store can route nothing: it leaves its load balancer soon.
LB_READINESS_GRACE = 5.0


@dataclass(frozen=True)
class StoreConfig:
    type: Literal["none", "memcached"] = "none"
    memcached_addresses: tuple[str, ...] = ("localhost:11211",)
    memcached_timeout: float = 1.0
    #: The proxy's HTTP address as the LB servers reach it; None: the listen address.
    http_proxy_address: str | None = None
    entry_ttl: float = 30.0
    #: The store may fail this long (no success in between) before /readyz says 503.
    readiness_grace: float = 30.0


@dataclass(frozen=True)
class ProxyConfig:
    agent_listen: ListenAddress = ListenAddress("", 4242)
    agent_tls: ServerTls | None = None
    agent_tls_refresh: float = 0.0
    agent_dial_timeout: float = 10.0
    #: Retry under load and limits on agent handshakes in progress (UDP floods).
    agent_admission: AdmissionSettings = field(default_factory=AdmissionSettings)
    http_listen: ListenAddress = ListenAddress("", 3128)
    http_tls: TcpTls | None = None
    host_whitelist: AllowList = field(default_factory=lambda: AllowList.parse([]))
    auth: ProxyAuth = field(default_factory=ProxyAuth)
    store: StoreConfig = field(default_factory=StoreConfig)
    transport: TransportSettings = field(default_factory=TransportSettings)
    #: Time for a client to send its CONNECT headers (slowloris guard).
    header_timeout: float = 10.0
    max_header_bytes: int = 16 * 1024
    #: Running sessions may finish for this long after SIGTERM.
    shutdown_grace_period: float = 30.0
    metrics_listen: ListenAddress | None = None


@dataclass(frozen=True)
class AgentConfig:
    credentials: AgentCredentials
    server_host: str = "localhost"
    server_port: int = 4242
    tls: ClientTls = field(default_factory=ClientTls)
    host_whitelist: AllowList = field(default_factory=lambda: AllowList.parse([]))
    transport: TransportSettings = field(default_factory=TransportSettings)
    #: TCP connect timeout towards the destination.
    dial_timeout: float = 10.0
    reconnect_initial_backoff: float = 0.5
    reconnect_max_backoff: float = 30.0
    #: A connection that lived this long resets the backoff.
    healthy_after: float = 10.0
    metrics_listen: ListenAddress | None = None


@dataclass(frozen=True)
class LogConfig:
    level: Literal["trace", "debug", "info", "warn", "error"] = "info"
    format: Literal["text", "json"] = "text"


@dataclass(frozen=True)
class ConnectorTls:
    """TLS from an LB server to the proxies (``--http-connector.tls.*``).

    The proxies' certificates are verified against ``root_ca_file``, and against the
    system store only with ``use_system_pool``; one of them (or ``insecure_skip_verify``)
    is required. The name verified is ``server_name`` when given, else the host of the
    route, which is used only after it passed the allow-list.
    """

    enable: bool = False
    insecure_skip_verify: bool = False
    root_ca_file: Path | None = None
    use_system_pool: bool = False
    server_name: str | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    #: Decrypts an encrypted client key file; never logged.
    key_password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class LbConfig:
    http_listen: ListenAddress = ListenAddress("", 3129)
    http_tls: TcpTls | None = None
    host_whitelist: AllowList = field(default_factory=lambda: AllowList.parse([]))
    auth: ProxyAuth = field(default_factory=ProxyAuth)
    store: StoreConfig = field(
        default_factory=lambda: StoreConfig(type="memcached", readiness_grace=LB_READINESS_GRACE)
    )
    connector_tls: ConnectorTls = field(default_factory=ConnectorTls)
    #: The only addresses the LB dials because a route names them.
    allowed_proxies: ProxyAllowList = field(default_factory=ProxyAllowList.default)
    #: Time to reach the owning proxy and get its answer to the CONNECT.
    connect_timeout: float = 10.0
    header_timeout: float = 10.0
    max_header_bytes: int = 16 * 1024
    shutdown_grace_period: float = 30.0
    metrics_listen: ListenAddress | None = None
