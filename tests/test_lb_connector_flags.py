"""``--http-connector.*`` flags and environment -> LbConfig: allow-list, trust, name."""

from __future__ import annotations

from reverse_http.devcerts import CertFiles
from reverse_http.store.route import ProxyAllowList
from tests.test_cli_config import Captured, captured, fails, isolated, ok

__all__ = ["captured", "isolated"]  # fixtures, used by name


def test_lb_connector_defaults(captured: Captured) -> None:
    ok(["lb"])
    config = captured.lb
    assert config.allowed_proxies == ProxyAllowList.default()
    assert config.connector_tls.use_system_pool is False
    assert config.connector_tls.server_name is None


def test_lb_connector_flags_reach_config(captured: Captured, certs: CertFiles) -> None:
    ok(
        [
            "lb",
            "--http-connector.tls.enable",
            "--http-connector.tls.use-system-pool",
            "--http-connector.tls.server-name=Proxies.Internal",
            "--http-connector.allowed-proxies=no-defaults,10.1.0.0/16",
            "--http-connector.allowed-proxies=2001:db8::/32",
        ]
    )
    config = captured.lb
    assert config.connector_tls.use_system_pool is True
    assert config.connector_tls.root_ca_file is None
    assert config.connector_tls.server_name == "proxies.internal"
    assert str(config.allowed_proxies) == "10.1.0.0/16,2001:db8::/32"


def test_lb_connector_environment(captured: Captured, certs: CertFiles) -> None:
    ok(
        ["lb"],
        env={
            "REVERSE_HTTP_HTTP_CONNECTOR_ALLOWED_PROXIES": "203.0.113.0/24,198.51.100.7",
            "REVERSE_HTTP_HTTP_CONNECTOR_TLS_ENABLE": "true",
            "REVERSE_HTTP_HTTP_CONNECTOR_TLS_FILE_ROOT_CA": str(certs.ca_cert),
            "REVERSE_HTTP_HTTP_CONNECTOR_TLS_SERVER_NAME": "fd00::7",
        },
    )
    config = captured.lb
    networks = [str(n) for n in config.allowed_proxies.networks]
    assert networks[-2:] == ["203.0.113.0/24", "198.51.100.7/32"]
    assert "10.0.0.0/8" in networks  # listed networks add to the defaults
    assert config.connector_tls.root_ca_file == certs.ca_cert
    assert config.connector_tls.use_system_pool is False
    assert config.connector_tls.server_name == "fd00::7"


def test_lb_connector_errors(captured: Captured) -> None:
    fails(
        ["lb", "--http-connector.tls.enable"],
        "--http-connector.tls.enable requires --http-connector.tls.file.root-ca",
        "--http-connector.tls.use-system-pool",
    )
    fails(
        ["lb", "--http-connector.allowed-proxies=10.0.0.0/8,proxy-1"],
        "--http-connector.allowed-proxies",
        "'proxy-1' is not an IP address or CIDR range",
    )
    fails(
        ["lb", "--http-connector.tls.server-name=bad name"],
        "--http-connector.tls.server-name",
        '"bad name" is not a host name or IP address',
    )
    assert captured.configs == []
