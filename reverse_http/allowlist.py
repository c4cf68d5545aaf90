"""Destination allow-list ("host whitelist") and CONNECT authority parsing.

Pattern syntax follows the reference implementation (see the protocol spec), with
three deliberate differences:

* Malformed patterns raise :class:`AllowListError` instead of being dropped, so a
  typo in a flag cannot silently widen or narrow what an agent may reach.
* A destination is allowed when *any* rule matches both host and port. The
  reference stops at the first rule whose host matches, so ``10.0.0.0/8:80`` listed
  before ``10.1.2.3:443`` would block ``10.1.2.3:443`` there but not here.
  :meth:`AllowList.go_shadowed` finds every entry where the two would decide
  differently; the daemons log each at start-up and ``--check`` reports it.
* Names compare case-insensitively and ignore one trailing dot on both sides.

IPv4-mapped IPv6 addresses (``::ffff:a.b.c.d``) are treated as the IPv4 address they
carry, in patterns and destinations alike: that is the host a dial would reach, and
Go's ``net.IP`` treats them the same way. A v6 network inside ``::ffff:0:0/96`` is
therefore turned into the matching IPv4 network.

Names whose last label is numeric (``127.1``, ``10.0.0``, ``0x7f000001``) are
rejected everywhere: resolvers parse them as IPv4 addresses, which would let a
name slip past IP rules or match name rules it should not.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

__all__ = [
    "ALL_PORTS",
    "AddressRule",
    "AllowList",
    "AllowListError",
    "HostRule",
    "NetworkRule",
    "PortRange",
    "Rule",
    "Shadowed",
    "ZoneRule",
    "parse_authority",
    "parse_rule",
    "warn_go_shadowed",
]

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MIN_PORT: Final = 1
MAX_PORT: Final = 65535
_MAX_NAME_LEN: Final = 253

_LABEL_RE: Final = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?", re.ASCII)
_NUMERIC_LABEL_RE: Final = re.compile(r"[0-9]+|0x[0-9a-f]*", re.ASCII)
_PORT_RE: Final = re.compile(r"[0-9]{1,5}", re.ASCII)
_PORTS_RE: Final = re.compile(r"([0-9]{1,5})(?:-([0-9]{1,5}))?", re.ASCII)
_PREFIX_RE: Final = re.compile(r"[0-9]{1,3}", re.ASCII)
_IPV6_CHARS_RE: Final = re.compile(r"[0-9a-fA-F:.]+", re.ASCII)
_MAPPED_V4_NET: Final = ipaddress.IPv6Network("::ffff:0:0/96")


class AllowListError(ValueError):
    """A destination pattern that cannot be parsed; raised at start-up."""

    def __init__(self, pattern: str, reason: str) -> None:
        super().__init__(pattern, reason)
        self.pattern = pattern
        self.reason = reason

    def __str__(self) -> str:
        return f"invalid allow-list pattern {self.pattern!r}: {self.reason}"


@dataclass(frozen=True, slots=True)
class PortRange:
    """Inclusive port range; a rule written without a port gets :data:`ALL_PORTS`."""

    low: int
    high: int

    def __post_init__(self) -> None:
        if not MIN_PORT <= self.low <= self.high <= MAX_PORT:
            raise ValueError(f"invalid port range {self.low}-{self.high}")

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.low <= port <= self.high

    def __str__(self) -> str:
        if self == ALL_PORTS:
            return ""
        if self.low == self.high:
            return f":{self.low}"
        return f":{self.low}-{self.high}"


ALL_PORTS: Final = PortRange(MIN_PORT, MAX_PORT)


@dataclass(frozen=True, slots=True)
class HostRule:
    """Exact host name (lower-case, no trailing dot)."""

    name: str
    ports: PortRange = ALL_PORTS

    def __str__(self) -> str:
        return f"{self.name}{self.ports}"


@dataclass(frozen=True, slots=True)
class ZoneRule:
    """``*.zone``: the zone itself and every name below it."""

    zone: str
    ports: PortRange = ALL_PORTS

    def __str__(self) -> str:
        return f"*.{self.zone}{self.ports}"


@dataclass(frozen=True, slots=True)
class AddressRule:
    """A single IP literal; never matches names, even ones resolving to it."""

    address: IPAddress
    ports: PortRange = ALL_PORTS

    def __str__(self) -> str:
        if self.address.version == 6:
            return f"[{self.address}]{self.ports}"
        return f"{self.address}{self.ports}"


@dataclass(frozen=True, slots=True)
class NetworkRule:
    """An IP network (host bits in the pattern are ignored); matches IP literals only."""

    network: IPNetwork
    ports: PortRange = ALL_PORTS

    def __str__(self) -> str:
        if self.network.version == 6:
            return f"[{self.network.network_address}]/{self.network.prefixlen}{self.ports}"
        return f"{self.network}{self.ports}"


Rule = HostRule | ZoneRule | AddressRule | NetworkRule

_PortIndex = Mapping[object, tuple[PortRange, ...]]


def _index(pairs: Iterable[tuple[object, PortRange]]) -> _PortIndex:
    merged: dict[object, tuple[PortRange, ...]] = {}
    for key, ports in pairs:
        merged[key] = (*merged.get(key, ()), ports)
    return MappingProxyType(merged)


def _port_ok(ranges: tuple[PortRange, ...], port: int) -> bool:
    return any(r.low <= port <= r.high for r in ranges)


@dataclass(frozen=True, slots=True)
class AllowList:
    """Parsed allow-list; ``allows`` is a few dict look-ups plus a scan of networks."""

    rules: tuple[Rule, ...] = ()
    _hosts: _PortIndex = field(init=False, repr=False, compare=False)
    _zones: _PortIndex = field(init=False, repr=False, compare=False)
    _addresses: _PortIndex = field(init=False, repr=False, compare=False)
    _networks: tuple[NetworkRule, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rules = self.rules
        object.__setattr__(
            self, "_hosts", _index((r.name, r.ports) for r in rules if isinstance(r, HostRule))
        )
        object.__setattr__(
            self, "_zones", _index((r.zone, r.ports) for r in rules if isinstance(r, ZoneRule))
        )
        object.__setattr__(
            self,
            "_addresses",
            _index((r.address, r.ports) for r in rules if isinstance(r, AddressRule)),
        )
        object.__setattr__(self, "_networks", tuple(r for r in rules if isinstance(r, NetworkRule)))

    @classmethod
    def parse(cls, patterns: Iterable[str]) -> AllowList:
        """Parse repeated and/or comma-separated patterns; blanks are skipped."""
        rules: list[Rule] = []
        for item in patterns:
            for raw in item.split(","):
                pattern = raw.strip()
                if pattern:
                    rules.append(parse_rule(pattern))
        return cls(tuple(rules))

    @property
    def allows_all(self) -> bool:
        """True for the empty list, which the spec defines as "allow everything"."""
        return not self.rules

    def allows(self, host: str, port: int) -> bool:
        """Whether ``host:port`` may be dialled.

        ``host`` is a name or IP literal, IPv6 with or without brackets. Malformed
        hosts and out-of-range ports are refused even by an empty list, so callers
        cannot fail open on input that skipped :func:`parse_authority`.
        """
        if not MIN_PORT <= port <= MAX_PORT:
            return False
        dest = _destination(host)
        if dest is None:
            return False
        if not self.rules:
            return True
        if isinstance(dest, str):
            ranges = self._hosts.get(dest)
            if ranges is not None and _port_ok(ranges, port):
                return True
            if self._zones:
                suffix = dest
                while True:
                    ranges = self._zones.get(suffix)
                    if ranges is not None and _port_ok(ranges, port):
                        return True
                    dot = suffix.find(".")
                    if dot < 0:
                        return False
                    suffix = suffix[dot + 1 :]
            return False
        ranges = self._addresses.get(dest)
        if ranges is not None and _port_ok(ranges, port):
            return True
        return any(
            dest in r.network and r.ports.low <= port <= r.ports.high for r in self._networks
        )

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.rules)

    def go_shadowed(self) -> tuple[Shadowed, ...]:
        """The entries the Go reference would decide differently for.

        Go takes the first entry whose host matches, in its own order (networks, then
        addresses, then zones, then names, each in list order), and lets its port range
        decide; ours allows when any entry matches host and port. So an entry is
        shadowed where an entry Go tries first matches some of its hosts with a port
        range that lacks some of its ports: those destinations are allowed here and
        refused by Go. Everything else is decided alike.
        """
        found: list[Shadowed] = []
        for index, rule in enumerate(self.rules):
            for earlier in _go_before(self.rules, index):
                if not _hosts_overlap(earlier, rule):
                    continue
                if not _covers(earlier.ports, rule.ports):
                    found.append(Shadowed(rule, earlier))
                    break
                if _hosts_cover(earlier, rule):
                    break
        return tuple(found)


@dataclass(frozen=True, slots=True)
class Shadowed:
    """``entry``'s hosts are decided in the Go reference by ``by``, listed or tried first."""

    entry: Rule
    by: Rule

    def __str__(self) -> str:
        return (
            f"entry {str(self.entry)!r} is shadowed in the Go reference by {str(self.by)!r}"
            f" (Go decides by the first matching host pattern, so it refuses ports of"
            f" {str(self.entry)!r} that {str(self.by)!r} lacks; this program allows them)"
        )


def warn_go_shadowed(flag: str, allow: AllowList) -> None:
    """One start-up warning per entry the Go reference would decide differently for,
    so an operator moving between the two programs sees where (``flag`` names the list)."""
    for shadowed in allow.go_shadowed():
        log.warning("%s: %s", flag, shadowed)


def _go_rank(rule: Rule) -> int:
    """The Go reference's order of kinds: networks, addresses, zones, names."""
    if isinstance(rule, NetworkRule):
        return 0
    if isinstance(rule, AddressRule):
        return 1
    return 2 if isinstance(rule, ZoneRule) else 3


def _go_before(rules: tuple[Rule, ...], index: int) -> Iterable[Rule]:
    """The entries Go tries before ``rules[index]``, in the order it tries them."""
    rank = _go_rank(rules[index])
    ordered = sorted(range(len(rules)), key=lambda i: (_go_rank(rules[i]), i))
    for i in ordered:
        if i == index:
            return
        if _go_rank(rules[i]) <= rank:
            yield rules[i]


def _covers(outer: PortRange, inner: PortRange) -> bool:
    return outer.low <= inner.low and inner.high <= outer.high


def _zone_contains(zone: str, name: str) -> bool:
    return name == zone or name.endswith("." + zone)


def _hosts_overlap(a: Rule, b: Rule) -> bool:
    """Whether some destination host matches both entries (ports aside)."""
    return (
        _hosts_cover(a, b)
        or _hosts_cover(b, a)
        or (
            isinstance(a, NetworkRule)
            and isinstance(b, NetworkRule)
            and a.network.overlaps(b.network)
        )
    )


def _hosts_cover(a: Rule, b: Rule) -> bool:
    """Whether every destination host ``b`` matches also matches ``a``."""
    if isinstance(a, NetworkRule):
        if isinstance(b, NetworkRule):
            outer, inner = a.network, b.network
            return (
                outer.version == inner.version
                and int(outer.network_address) <= int(inner.network_address)
                and int(inner.broadcast_address) <= int(outer.broadcast_address)
            )
        return isinstance(b, AddressRule) and b.address in a.network
    if isinstance(a, AddressRule):
        return isinstance(b, AddressRule) and a.address == b.address
    if isinstance(a, ZoneRule):
        if isinstance(b, ZoneRule):
            return _zone_contains(a.zone, b.zone)
        return isinstance(b, HostRule) and _zone_contains(a.zone, b.name)
    return isinstance(b, HostRule) and a.name == b.name


def parse_rule(pattern: str) -> Rule:
    """Parse one pattern (no commas, already stripped)."""
    try:
        return _parse_rule(pattern)
    except _Invalid as exc:
        raise AllowListError(pattern, str(exc)) from None


class _Invalid(ValueError):
    pass


def _parse_rule(pattern: str) -> Rule:
    if any(c.isspace() for c in pattern):
        raise _Invalid("contains whitespace")
    if "%" in pattern:
        raise _Invalid("IPv6 zone identifiers are not supported")
    if pattern.startswith("["):
        end = pattern.find("]")
        if end < 0:
            raise _Invalid("missing ']'")
        address = _parse_ipv6(pattern[1:end])
        rest = pattern[end + 1 :]
        if rest.startswith("/"):
            prefix, ports = _split_ports(rest[1:])
            return NetworkRule(_network(address, prefix), ports)
        if rest.startswith(":"):
            return AddressRule(_unmap(address), _parse_ports(rest[1:]))
        if rest:
            raise _Invalid(f"unexpected {rest!r} after ']'")
        return AddressRule(_unmap(address))
    if "/" in pattern:
        addr_text, _, tail = pattern.partition("/")
        prefix, ports = _split_ports(tail)
        return NetworkRule(_network(_parse_ip(addr_text), prefix), ports)
    if ":" in pattern and pattern.count(":") > 1:
        address = _parse_ipv6(pattern)
        return AddressRule(_unmap(address))
    host, sep, port_text = pattern.partition(":")
    ports = _parse_ports(port_text) if sep else ALL_PORTS
    if host.startswith("*"):
        if not host.startswith("*."):
            raise _Invalid("wildcard must be written '*.zone'")
        return ZoneRule(_parse_name(host[2:]), ports)
    if _looks_numeric(host):
        return AddressRule(_parse_ipv4(host), ports)
    return HostRule(_parse_name(host), ports)


def _split_ports(text: str) -> tuple[str, PortRange]:
    prefix, sep, port_text = text.partition(":")
    return prefix, (_parse_ports(port_text) if sep else ALL_PORTS)


def _parse_ports(text: str) -> PortRange:
    m = _PORTS_RE.fullmatch(text)
    if m is None:
        raise _Invalid(f"invalid port {text!r}")
    low = int(m[1])
    high = low if m[2] is None else int(m[2])
    for port in (low, high):
        if not MIN_PORT <= port <= MAX_PORT:
            raise _Invalid(f"port {port} out of range {MIN_PORT}-{MAX_PORT}")
    if low > high:
        raise _Invalid(f"port range {low}-{high} is reversed")
    return PortRange(low, high)


def _network(address: IPAddress, prefix_text: str) -> IPNetwork:
    if _PREFIX_RE.fullmatch(prefix_text) is None:
        raise _Invalid(f"invalid prefix length {prefix_text!r}")
    prefix = int(prefix_text)
    if prefix > address.max_prefixlen:
        raise _Invalid(f"prefix length {prefix} exceeds {address.max_prefixlen}")
    if isinstance(address, ipaddress.IPv4Address):
        return ipaddress.IPv4Network((address, prefix), strict=False)
    network = ipaddress.IPv6Network((address, prefix), strict=False)
    if network.subnet_of(_MAPPED_V4_NET):
        v4 = ipaddress.IPv4Address(int(network.network_address) & 0xFFFFFFFF)
        return ipaddress.IPv4Network((v4, prefix - 96))
    return network


def _parse_ip(text: str) -> IPAddress:
    return _parse_ipv6(text) if ":" in text else _parse_ipv4(text)


def _parse_ipv4(text: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise _Invalid(f"{text!r} is not a valid IPv4 address") from None


def _parse_ipv6(text: str) -> ipaddress.IPv6Address:
    if _IPV6_CHARS_RE.fullmatch(text) is None:
        raise _Invalid(f"{text!r} is not a valid IPv6 address")
    try:
        return ipaddress.IPv6Address(text)
    except ValueError:
        raise _Invalid(f"{text!r} is not a valid IPv6 address") from None


def _unmap(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _looks_numeric(name: str) -> bool:
    last = name.removesuffix(".").rpartition(".")[2]
    return _NUMERIC_LABEL_RE.fullmatch(last.lower()) is not None


def _parse_name(text: str) -> str:
    """Validate a DNS name and return it lower-cased without a trailing dot."""
    name = text.lower().removesuffix(".")
    if not name:
        raise _Invalid("empty host name")
    if len(name) > _MAX_NAME_LEN:
        raise _Invalid(f"host name longer than {_MAX_NAME_LEN} characters")
    for label in name.split("."):
        if not label:
            raise _Invalid("empty label in host name")
        if _LABEL_RE.fullmatch(label) is None:
            raise _Invalid(f"invalid host name label {label!r}")
    if _looks_numeric(name):
        raise _Invalid(f"{text!r} is neither an IPv4 address nor a host name")
    return name


def _destination(host: str) -> str | IPAddress | None:
    """Normalise a destination host to a name or address, or None if malformed."""
    try:
        if host.startswith("[") and host.endswith("]"):
            return _unmap(_parse_ipv6(host[1:-1]))
        if ":" in host:
            return _unmap(_parse_ipv6(host))
        if _looks_numeric(host):
            return _parse_ipv4(host)
        return _parse_name(host)
    except _Invalid:
        return None


def parse_authority(authority: str) -> tuple[str, int]:
    """Split a CONNECT request-target into ``(host, port)``.

    Accepts ``name:port``, ``a.b.c.d:port`` and ``[v6]:port``; the returned host is
    as written, minus IPv6 brackets. Anything else raises ``ValueError`` so the proxy
    can answer 400 rather than dial something unexpected.
    """
    if not authority:
        raise ValueError("empty CONNECT target")
    if not authority.isascii() or not authority.isprintable() or " " in authority:
        raise ValueError(f"CONNECT target {authority!r} contains invalid characters")
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise ValueError(f"CONNECT target {authority!r}: missing ']'")
        host = authority[1:end]
        rest = authority[end + 1 :]
        if not rest.startswith(":"):
            raise ValueError(f"CONNECT target {authority!r}: port required after ']'")
        port_text = rest[1:]
        if "%" in host:
            raise ValueError(f"CONNECT target {authority!r}: IPv6 zone ids are not supported")
        try:
            _parse_ipv6(host)
        except _Invalid as exc:
            raise ValueError(f"CONNECT target {authority!r}: {exc}") from None
    else:
        host, sep, port_text = authority.rpartition(":")
        if not sep:
            raise ValueError(f"CONNECT target {authority!r}: port required")
        if not host:
            raise ValueError(f"CONNECT target {authority!r}: empty host")
        if ":" in host:
            try:
                _parse_ipv6(host)
            except _Invalid:
                raise ValueError(f"CONNECT target {authority!r}: invalid host {host!r}") from None
            raise ValueError(f"CONNECT target {authority!r}: IPv6 address must be bracketed")
        try:
            if _looks_numeric(host):
                _parse_ipv4(host)
            else:
                _parse_name(host)
        except _Invalid as exc:
            raise ValueError(f"CONNECT target {authority!r}: {exc}") from None
    if _PORT_RE.fullmatch(port_text) is None:
        raise ValueError(f"CONNECT target {authority!r}: invalid port {port_text!r}")
    port = int(port_text)
    if not MIN_PORT <= port <= MAX_PORT:
        raise ValueError(
            f"CONNECT target {authority!r}: port {port} out of range {MIN_PORT}-{MAX_PORT}"
        )
    return host, port
