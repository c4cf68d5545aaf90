"""Route values are untrusted input: one parser, and an allow-list of proxy networks."""

from __future__ import annotations

import ipaddress
import re

import pytest

from reverse_http.store.route import (
    DEFAULT_PROXY_NETWORKS,
    InvalidRoute,
    ProxyAddress,
    ProxyAllowList,
    parse_route,
)


@pytest.mark.parametrize(
    ("value", "host", "port", "ip"),
    [
        (b"proxy-1:3128", "proxy-1", 3128, None),
        (b"Proxy-1.EU.example.com.:3128", "proxy-1.eu.example.com", 3128, None),
        (b"reverse-http_proxy_1:3128", "reverse-http_proxy_1", 3128, None),
        (b"10.1.2.3:3128", "10.1.2.3", 3128, "10.1.2.3"),
        (b"[fd00::1]:3128", "fd00::1", 3128, "fd00::1"),
        (b"[::ffff:10.0.0.1]:3128", "::ffff:a00:1", 3128, "10.0.0.1"),
        # the Go proxy's default: its listen address, no host -> this host, as Go dials it
        (b":3128", "", 3128, "127.0.0.1"),
        (b"0.0.0.0:3128", "0.0.0.0", 3128, "127.0.0.1"),
        (b"[::]:3128", "::", 3128, "::1"),
        (b"h:65535", "h", 65535, None),
    ],
)
def test_valid_routes(value: bytes, host: str, port: int, ip: str | None) -> None:
    address = parse_route(value)
    assert address == ProxyAddress(host, port)
    assert address.ip == (None if ip is None else ipaddress.ip_address(ip))
    assert address.this_host == (host in ("", "0.0.0.0", "::"))


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", "empty"),
        (b"proxy-1", "no port"),
        (b"proxy-1:", "invalid port"),
        (b"proxy-1:0", "out of range"),
        (b"proxy-1:65536", "out of range"),
        (b"proxy-1:+80", "invalid port"),
        (b"proxy-1:3128\r\nset x", "control characters"),
        (b"evil host:80", "spaces"),
        (b"\xff\xfe:80", "not ASCII"),
        (b"a" * 300 + b":80", "longer than"),
        (b"::1:3128", "brackets"),
        (b"[::1]3128", "expected [IPv6]:port"),
        (b"[fe80::1%eth0]:3128", "zone ids"),
        (b"[not-v6]:3128", "invalid IPv6"),
        (b"010.0.0.1:80", "invalid IPv4"),
        (b"1.2.3:80", "invalid IPv4"),
        (b"256.1.1.1:80", "invalid IPv4"),
        (b"10.1:80", "invalid IPv4"),
        (b"host.0x7f:80", "numeric last label"),
        (b"-bad.example:80", "invalid host name"),
        (b"a..b:80", "invalid host name"),
        (b"user@host:80", "invalid host name"),
        (b"http://host:80", "invalid host name"),
        (("a" * 64 + ".example:80").encode(), "invalid host name"),
    ],
)
def test_invalid_routes(value: bytes, reason: str) -> None:
    with pytest.raises(InvalidRoute, match=re.escape(reason)):
        parse_route(value)


def test_address_formats_as_go_dials_it() -> None:
    assert str(parse_route(b"[fd00::1]:3128")) == "[fd00::1]:3128"
    assert str(parse_route(b"proxy-1:3128")) == "proxy-1:3128"
    assert str(parse_route(b":3128")) == ":3128"


def test_default_allow_list_is_loopback_and_private_only() -> None:
    allowed = ProxyAllowList.default()
    assert [str(n) for n in allowed.networks] == list(DEFAULT_PROXY_NETWORKS)
    for ip in ("127.0.0.1", "127.9.9.9", "::1", "10.2.3.4", "172.31.0.1", "192.168.1.1",
               "fd12::1", "::ffff:10.0.0.1"):  # fmt: skip
        assert allowed.allows(ipaddress.ip_address(ip)), ip
    # public, link-local (cloud metadata), CGNAT, multicast, unspecified: not by default
    for ip in ("203.0.113.7", "8.8.8.8", "169.254.169.254", "fe80::1", "100.64.0.1",
               "172.32.0.1", "224.0.0.1", "0.0.0.0", "2001:db8::1", "::ffff:8.8.8.8"):  # fmt: skip
        assert not allowed.allows(ipaddress.ip_address(ip)), ip


def test_listed_networks_add_to_the_defaults_or_replace_them() -> None:
    added = ProxyAllowList.parse(["203.0.113.0/24, 2001:db8::1", "[2001:db8:1::]/48"])
    assert added.allows(ipaddress.ip_address("203.0.113.99"))
    assert added.allows(ipaddress.ip_address("2001:db8::1"))
    assert added.allows(ipaddress.ip_address("2001:db8:1::5"))
    assert not added.allows(ipaddress.ip_address("2001:db8::2"))
    assert added.allows(ipaddress.ip_address("10.0.0.1"))  # defaults stay
    only = ProxyAllowList.parse(["no-defaults,10.1.0.0/16", "::ffff:192.0.2.0/120"])
    assert [str(n) for n in only.networks] == ["10.1.0.0/16", "192.0.2.0/24"]
    assert not only.allows(ipaddress.ip_address("127.0.0.1"))
    assert not only.allows(ipaddress.ip_address("10.2.0.1"))
    assert only.allows(ipaddress.ip_address("::ffff:192.0.2.9"))
    assert str(ProxyAllowList.parse(["no-defaults"])) == "(nothing)"


@pytest.mark.parametrize("entry", ["proxy-1", "10.0.0.0/33", "10.0.0.1:3128", "fe80::1%eth0"])
def test_allow_list_rejects_what_it_cannot_check(entry: str) -> None:
    with pytest.raises(ValueError, match=r"not an IP address or CIDR|zone"):
        ProxyAllowList.parse([entry])
