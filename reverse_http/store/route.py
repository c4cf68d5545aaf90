"""What a route entry may say, and which proxies an LB server may dial because of it.

A route value is written by whoever can reach memcached, so the LB server treats it
as untrusted input: :func:`parse_route` is the one parser of route values, and
:class:`ProxyAllowList` decides which addresses the LB may connect to (and send a
client's ``Proxy-Authorization`` to) because a route says so.

Accepted values, in the Go reference's format (Go's ``net.Dial`` address):
``name:port``, ``a.b.c.d:port``, ``[v6]:port`` and ``:port``. An empty host, as the Go
proxy stores it by default (its listen address ``:3128``), and the unspecified
addresses ``0.0.0.0`` / ``::`` mean "this host": Go's dialer connects to 127.0.0.1
(or ::1 for ``::``) for them, and so do we.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from ..allowlist import IPAddress, IPNetwork

__all__ = [
    "DEFAULT_PROXY_NETWORKS",
    "NO_DEFAULTS",
    "InvalidRoute",
    "ProxyAddress",
    "ProxyAllowList",
    "parse_route",
]


#: The longest value worth parsing: a 253-byte name, ``:`` and a 5-digit port.
MAX_ROUTE_BYTES: Final = 259

#: Where proxies normally live: loopback and the private ranges (RFC 1918, RFC 4193).
#: Not included: link-local (169.254/16 holds cloud metadata services, fe80::/10 needs
#: zone ids), CGNAT 100.64/10 (shared with other customers of a carrier), and every
#: public address. List those explicitly when proxies really live there.
DEFAULT_PROXY_NETWORKS: Final[tuple[str, ...]] = (
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
)
#: An allow-list entry that drops :data:`DEFAULT_PROXY_NETWORKS`: only listed ones remain.
NO_DEFAULTS: Final = "no-defaults"

_LABEL_RE: Final = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?", re.ASCII)
_PORT_RE: Final = re.compile(r"[0-9]{1,5}", re.ASCII)
_LOOPBACK_V4: Final = ipaddress.IPv4Address("127.0.0.1")
_LOOPBACK_V6: Final = ipaddress.IPv6Address("::1")


class InvalidRoute(ValueError):
    """The value is not a proxy address; the LB treats it as no route at all."""


@dataclass(frozen=True)
class ProxyAddress:
    """A parsed route value."""

    #: A lower-case name, an IP literal (IPv6 without brackets), or "" for this host.
    host: str
    port: int

    @property
    def ip(self) -> IPAddress | None:
        """The address to dial when the route names no name (IP literal or this host)."""
        if not self.host:
            return _LOOPBACK_V4
        try:
            ip = ipaddress.ip_address(self.host)
        except ValueError:
            return None
        if ip.is_unspecified:  # Go dials loopback for 0.0.0.0 and ::
            return _LOOPBACK_V4 if ip.version == 4 else _LOOPBACK_V6
        return _unmap(ip)

    @property
    def this_host(self) -> bool:
        """The route means the LB's own host (empty or unspecified host)."""
        if not self.host:
            return True
        try:
            return ipaddress.ip_address(self.host).is_unspecified
        except ValueError:
            return False

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_route(value: bytes | str) -> ProxyAddress:
    """Parse a stored route value; raises :class:`InvalidRoute` naming the problem."""
    if isinstance(value, bytes):
        if len(value) > MAX_ROUTE_BYTES:
            raise InvalidRoute(f"longer than {MAX_ROUTE_BYTES} bytes")
        try:
            text = value.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidRoute("not ASCII") from None
    else:
        text = value
        if len(text) > MAX_ROUTE_BYTES or not text.isascii():
            raise InvalidRoute(f"not ASCII or longer than {MAX_ROUTE_BYTES} bytes")
    if not text:
        raise InvalidRoute("empty")
    if not text.isprintable() or " " in text:
        raise InvalidRoute("contains spaces or control characters")
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise InvalidRoute("expected [IPv6]:port")
        host, port_text = text[1:end], text[end + 2 :]
        if "%" in host:
            raise InvalidRoute("IPv6 zone ids are not supported")
        try:
            ip6 = ipaddress.IPv6Address(host)
        except ValueError:
            raise InvalidRoute("invalid IPv6 address") from None
        host = str(ip6)
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise InvalidRoute("no port")
        if ":" in host:
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise InvalidRoute("invalid host name") from None
            raise InvalidRoute("an IPv6 address must be in brackets")
        host = _host(host)
    return ProxyAddress(host, _port(port_text))


def _host(host: str) -> str:
    """An IPv4 literal, a sane DNS name (lower-cased, one trailing dot dropped) or ""."""
    if not host:
        return ""
    if host.replace(".", "").isdigit():
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise InvalidRoute("invalid IPv4 address") from None
    name = host.lower().removesuffix(".")
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL_RE.fullmatch(label) for label in labels):
        raise InvalidRoute("invalid host name")
    if labels[-1].isdigit() or labels[-1].startswith("0x"):
        # resolvers would read "10.1" or "0x7f000001" as an IPv4 address
        raise InvalidRoute("host name with a numeric last label")
    return name


def _port(text: str) -> int:
    if _PORT_RE.fullmatch(text) is None:
        raise InvalidRoute("invalid port")
    port = int(text)
    if not 1 <= port <= 65535:
        raise InvalidRoute(f"port {port} out of range 1-65535")
    return port


def _unmap(ip: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address is the IPv4 host a dial reaches."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True)
class ProxyAllowList:
    """The networks an LB server may dial as proxies (``--http-connector.allowed-proxies``)."""

    networks: tuple[IPNetwork, ...]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> ProxyAllowList:
        """IPs and CIDRs (repeated and/or comma-separated), added to the default networks.

        The entry ``no-defaults`` drops :data:`DEFAULT_PROXY_NETWORKS`, so only the
        listed networks remain. Raises ``ValueError`` naming a malformed entry.
        """
        listed: list[IPNetwork] = []
        defaults = True
        for item in entries:
            for raw in item.replace(",", " ").split():
                if raw.lower() == NO_DEFAULTS:
                    defaults = False
                    continue
                listed.append(_network(raw))
        base = [ipaddress.ip_network(n) for n in DEFAULT_PROXY_NETWORKS] if defaults else []
        unique = dict.fromkeys([*base, *listed])
        return cls(tuple(unique))

    @classmethod
    def default(cls) -> ProxyAllowList:
        return cls.parse([])

    def allows(self, ip: IPAddress) -> bool:
        ip = _unmap(ip)
        return any(ip in network for network in self.networks)

    def __str__(self) -> str:
        return ",".join(str(n) for n in self.networks) or "(nothing)"


def _network(entry: str) -> IPNetwork:
    text = entry
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]" or "[2001:db8::]/32"
        end = text.index("]")
        text = text[1:end] + text[end + 1 :]
    if "%" in text:
        raise ValueError(f"{entry!r}: IPv6 zone identifiers are not supported")
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{entry!r} is not an IP address or CIDR range") from None
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(
        ipaddress.IPv6Network("::ffff:0:0/96")
    ):
        mapped = network.network_address.ipv4_mapped
        assert mapped is not None
        return ipaddress.IPv4Network(f"{mapped}/{max(0, network.prefixlen - 96)}", strict=False)
    return network
