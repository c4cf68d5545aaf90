"""``--check``: everything a daemon would load at start, loaded and cross-checked, without
binding a port or connecting anywhere (as ``nginx -t`` and ``haproxy -c``).

Each check runs the loader the daemon itself uses (certificate chains against their
keys, CA and CRL files, encrypted keys, the JWT public key, the connector's TLS), so a
configuration that passes here fails at start only for what only a start can find
(ports in use, an unreachable memcached). On top of the loaders, it says what it found:
certificate names and expiry, the agent's token and when it expires.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import agentid
from .allowlist import AllowList
from .auth.authenticator import Authenticator
from .auth.tokenfile import TokenFileError, describe_token, read_token_file
from .config import AgentConfig, LbConfig, ProxyAuth, ProxyConfig, TcpTls
from .errors import ConfigError
from .quic.settings import TlsConfigError
from .tlsfiles import read_certificates

__all__ = ["Report", "check_agent", "check_lb", "check_proxy"]

#: A certificate that expires sooner than this gets a warning (expired ones are problems).
EXPIRY_WARNING = dt.timedelta(days=14)


@dataclass
class Report:
    """What a check found: notes (fine) and problems (each one line)."""

    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def note(self, text: str) -> None:
        self.notes.append(text)

    def problem(self, text: str) -> None:
        self.problems.append(" ".join(text.split()))

    def run(self, load: Callable[[], object]) -> bool:
        """Run a loader; its ConfigError becomes a problem. True when it loaded."""
        try:
            load()
        except (ConfigError, TlsConfigError) as exc:
            self.problem(str(exc))
            return False
        return True


def check_proxy(config: ProxyConfig) -> Report:
    from .frontend import http_tls_context
    from .proxy.server import agent_server_settings

    report = Report()
    tls = config.agent_tls
    if tls is None:
        report.note(
            "agent server: no --agent-server.tls.file.cert/key: a throwaway development "
            "certificate would be made at start (agents must skip verification)"
        )
    elif report.run(lambda: agent_server_settings(config, tls)):
        _certificate(report, "--agent-server.tls.file.cert", tls.cert_file, tls.key_file)
        _client_authority(report, "--agent-server", tls.client_ca_file, tls.client_crl_file)
    if config.http_tls is not None:
        http_tls = config.http_tls
        if report.run(lambda: http_tls_context(http_tls)):
            _tcp_tls(report, "--http-proxy", http_tls)
    _auth(report, config.auth)
    _allow_list(report, "--http-proxy.host-whitelist", config.host_whitelist)
    report.note(f"agent server would listen on udp {config.agent_listen} (not bound)")
    report.note(f"HTTP proxy would listen on tcp {config.http_listen} (not bound)")
    if config.store.type == "memcached":
        report.note(
            f"route store: memcached {','.join(config.store.memcached_addresses)} (not contacted)"
        )
    return report


def check_agent(config: AgentConfig) -> Report:
    from .agent.client import check_client_tls

    report = Report()
    tls = config.tls
    if report.run(lambda: check_client_tls(config)):
        if tls.insecure_skip_verify:
            report.note("proxy certificate: NOT verified (--agent-client.tls.insecure-skip-verify)")
        elif tls.root_ca_file is not None:
            count = len(read_certificates(tls.root_ca_file))
            report.note(
                f"--agent-client.tls.file.root-ca {tls.root_ca_file}: {count} CA "
                f"certificate(s); the proxy must present {tls.server_name or config.server_host}"
            )
        else:
            report.note("proxy certificate: verified against the system trust store")
        if tls.cert_file is not None and tls.key_file is not None:
            _certificate(report, "--agent-client.tls.file.cert", tls.cert_file, tls.key_file)
    creds = config.credentials
    if creds.type == "jwt":
        _agent_token(report, creds.token or "", creds.token_file)
    else:
        reason = agentid.problem(creds.agent_id or "")
        if reason is not None:
            report.problem(
                f"--auth.noauth.agent-id: {agentid.shown(creds.agent_id or '')} {reason}"
            )
        else:
            report.note(f"agent id {creds.agent_id!r} (noauth)")
    _allow_list(report, "--agent-client.host-whitelist", config.host_whitelist)
    report.note(f"proxy at {config.server_host}:{config.server_port} (udp; not contacted)")
    return report


def check_lb(config: LbConfig) -> Report:
    from .frontend import http_tls_context
    from .lb.server import connector_context

    report = Report()
    if config.store.type != "memcached":
        report.problem("--store.type: the LB server needs memcached")
    if config.http_tls is not None:
        http_tls = config.http_tls
        if report.run(lambda: http_tls_context(http_tls)):
            _tcp_tls(report, "--http-proxy", http_tls)
    connector = config.connector_tls
    if report.run(lambda: connector_context(connector)) and connector.enable:
        if connector.insecure_skip_verify:
            report.note("proxies' certificates: NOT verified (insecure-skip-verify)")
        elif connector.root_ca_file is not None:
            try:
                count = len(read_certificates(connector.root_ca_file))
            except TlsConfigError as exc:  # OpenSSL takes a file of CRLs only
                report.problem(f"--http-connector.tls.file.root-ca: {exc}")
            else:
                report.note(
                    f"--http-connector.tls.file.root-ca {connector.root_ca_file}: "
                    f"{count} CA certificate(s)"
                )
        if connector.cert_file is not None and connector.key_file is not None:
            _certificate(
                report, "--http-connector.tls.file.cert", connector.cert_file, connector.key_file
            )
    _auth(report, config.auth)
    _allow_list(report, "--http-proxy.host-whitelist", config.host_whitelist)
    report.note(f"--http-connector.allowed-proxies: dials only {config.allowed_proxies}")
    report.note(f"LB would listen on tcp {config.http_listen} (not bound)")
    report.note(
        f"route store: memcached {','.join(config.store.memcached_addresses)} (not contacted)"
    )
    return report


# ------------------------------------------------------------------------- pieces


def _tcp_tls(report: Report, prefix: str, tls: TcpTls) -> None:
    _certificate(report, f"{prefix}.tls.file.cert", tls.cert_file, tls.key_file)
    _client_authority(report, prefix, tls.client_ca_file, tls.client_crl_file)


def _certificate(report: Report, flag: str, cert_file: Path, key_file: Path) -> None:
    """Names and dates of a chain's leaf (its key was already matched by the loader)."""
    leaf = read_certificates(cert_file)[0]
    now = dt.datetime.now(dt.UTC)
    expires = leaf.not_valid_after_utc
    names = _names(leaf)
    when = expires.strftime("%Y-%m-%d")
    where = f"{flag} {cert_file}"
    if expires <= now:
        report.problem(f"{where}: certificate for {names} expired on {when}")
    elif leaf.not_valid_before_utc > now:
        start = leaf.not_valid_before_utc.strftime("%Y-%m-%d")
        report.problem(f"{where}: certificate for {names} is not valid before {start}")
    elif expires - now < EXPIRY_WARNING:
        report.note(f"{where}: WARNING: certificate for {names} expires soon, on {when}")
    else:
        days = (expires - now).days
        report.note(
            f"{where}: certificate for {names}, expires {when} (in {days} days); "
            f"key {key_file} matches"
        )


def _names(cert: object) -> str:
    from cryptography import x509

    assert isinstance(cert, x509.Certificate)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n.value) for n in san]
    except x509.ExtensionNotFound:
        names = []
    if not names:
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(x509.OID_COMMON_NAME)]
    return ", ".join(names) or cert.subject.rfc4514_string() or "(no name)"


def _client_authority(
    report: Report, prefix: str, ca_file: Path | None, crl_file: Path | None
) -> None:
    if ca_file is None:
        return
    count = len(read_certificates(ca_file))
    crl = f", revocation list {crl_file}" if crl_file is not None else ""
    report.note(
        f"{prefix}.tls.file.client-ca {ca_file}: clients need a certificate from "
        f"{count} CA certificate(s){crl}"
    )


def _auth(report: Report, auth: ProxyAuth) -> None:
    if auth.type == "noauth":
        report.note("auth: noauth (any client naming an agent id reaches it)")
        return
    if report.run(lambda: Authenticator.from_config(auth)):
        audience = f", audience {auth.jwt_audience!r}" if auth.jwt_audience else ""
        report.note(
            f"auth: JWT verified with --auth.jwt.public-key {auth.jwt_public_key}{audience}"
        )


def _agent_token(report: Report, token: str, path: Path | None) -> None:
    flag = "--auth.jwt.token"
    where = f"{flag}: token file {path}" if path is not None else flag
    if path is not None:
        try:
            token = read_token_file(path)
        except TokenFileError as exc:
            report.problem(f"{flag}: {exc}")
            return
    try:
        about = describe_token(token)
    except ValueError as exc:
        report.problem(f"{where}: not a well-formed reverse-http JWT: {exc}")
        return
    if "EXPIRED" in about:
        report.problem(f"{where}: {about}")
    elif not about.startswith("agent id "):
        report.problem(f"{where}: not an agent token ({about})")
    else:
        report.note(f"{where}: {about}")


def _allow_list(report: Report, flag: str, allow: AllowList) -> None:
    if allow.allows_all:
        report.note(f"{flag}: empty, every destination is allowed")
    else:
        report.note(f"{flag}: {len(allow.rules)} pattern(s): {allow}")
    for shadowed in allow.go_shadowed():
        report.note(f"{flag}: WARNING: {shadowed}")
