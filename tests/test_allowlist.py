"""Tests for the destination allow-list and CONNECT authority parsing."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from reverse_http.allowlist import (
    ALL_PORTS,
    AddressRule,
    AllowList,
    AllowListError,
    HostRule,
    NetworkRule,
    PortRange,
    ZoneRule,
    parse_authority,
)

# pattern -> (allowed host:port destinations, blocked destinations)
PATTERN_CASES: dict[str, tuple[list[str], list[str]]] = {
    "localhost": (
        ["localhost:1", "localhost:80", "localhost:65535", "LOCALHOST:80", "localhost.:80"],
        ["localhost2:80", "a.localhost:80", "127.0.0.1:80", "[::1]:80", "host:80"],
    ),
    "localhost:80": (
        ["localhost:80", "LocalHost.:80"],
        ["localhost:81", "localhost:79", "localhost:443", "127.0.0.1:80"],
    ),
    "localhost:1000-2000": (
        ["localhost:1000", "localhost:1500", "localhost:2000"],
        ["localhost:999", "localhost:2001", "localhost:80", "127.0.0.1:1500"],
    ),
    "*.zone": (
        ["zone:80", "a.zone:80", "a.b.zone:1", "A.ZONE.:65535", "zone.:443"],
        ["xzone:80", "zone.com:80", "a.zone.com:80", "zon:80", "10.0.0.1:80"],
    ),
    "*.zone:80": (
        ["zone:80", "a.zone:80", "deep.a.zone:80"],
        ["zone:81", "a.zone:443", "other:80", "xzone:80"],
    ),
    "*.zone:1000-2000": (
        ["zone:1000", "a.zone:2000", "b.a.zone:1500"],
        ["zone:999", "a.zone:2001", "xzone:1500"],
    ),
    "127.0.0.1": (
        ["127.0.0.1:1", "127.0.0.1:80", "127.0.0.1:65535", "[::ffff:127.0.0.1]:80"],
        ["127.0.0.2:80", "localhost:80", "[::1]:80", "[::127.0.0.1]:80"],
    ),
    "127.0.0.1:80": (
        ["127.0.0.1:80", "::ffff:127.0.0.1:80"],
        ["127.0.0.1:81", "127.0.0.2:80", "localhost:80"],
    ),
    "127.0.0.1:1000-2000": (
        ["127.0.0.1:1000", "127.0.0.1:2000"],
        ["127.0.0.1:999", "127.0.0.1:2001", "127.0.0.2:1500"],
    ),
    "10.0.0.1/8": (
        ["10.0.0.0:80", "10.1.2.3:80", "10.255.255.255:1", "[::ffff:10.1.2.3]:80"],
        ["11.0.0.1:80", "9.255.255.255:80", "[::a01:203]:80", "ten.zone:80", "[1000::]:80"],
    ),
    "10.0.0.1/8:80": (
        ["10.1.2.3:80"],
        ["10.1.2.3:81", "11.1.2.3:80"],
    ),
    "10.0.0.1/8:1000-2000": (
        ["10.1.2.3:1000", "10.1.2.3:2000"],
        ["10.1.2.3:999", "10.1.2.3:2001", "11.1.2.3:1500"],
    ),
    "1000::/16": (
        ["[1000::]:80", "[1000:ffff::1]:443", "1000::1:80", "[1000::1]:1"],
        ["[1001::]:80", "[0fff:ffff::]:80", "16.0.0.0:80", "localhost:80"],
    ),
    "1000::/16:80": (
        ["[1000::5]:80"],
        ["[1000::5]:81", "[1001::5]:80"],
    ),
    "1000::/16:1000-2000": (
        ["[1000::5]:1000", "[1000::5]:2000"],
        ["[1000::5]:999", "[1000::5]:2001", "[1001::5]:1500"],
    ),
    "[2001:db8::1]/64": (
        ["[2001:db8::]:80", "[2001:db8::ffff]:80", "[2001:DB8:0:0:1::]:80"],
        ["[2001:db8:0:1::]:80", "[2001:db9::1]:80", "32.1.13.184:80"],
    ),
    "[2001:db8::1]/64:80": (
        ["[2001:db8::42]:80"],
        ["[2001:db8::42]:81", "[2001:db8:1::42]:80"],
    ),
    "[2001:db8::1]/64:1000-2000": (
        ["[2001:db8::42]:1000", "[2001:db8::42]:2000"],
        ["[2001:db8::42]:999", "[2001:db8::42]:2001", "[2001:db8:1::42]:1500"],
    ),
    "2001:db8::1": (
        ["[2001:db8::1]:80", "[2001:0db8:0000::0001]:1", "[2001:DB8::1]:65535"],
        ["[2001:db8::2]:80", "[2001:db8::]:80", "localhost:80"],
    ),
    "[2001:db8::1]": (
        ["[2001:db8::1]:80", "[2001:db8::1]:65535"],
        ["[2001:db8::2]:80"],
    ),
    "[2001:db8::1]:80": (
        ["[2001:db8::1]:80"],
        ["[2001:db8::1]:81", "[2001:db8::2]:80"],
    ),
    "[2001:db8::1]:1000-2000": (
        ["[2001:db8::1]:1000", "[2001:db8::1]:2000"],
        ["[2001:db8::1]:999", "[2001:db8::1]:2001", "[2001:db8::2]:1500"],
    ),
}


# Copied verbatim from the spec's pattern table.
SPEC_TABLE = """
        localhost   localhost:80   localhost:1000-2000
        *.zone      *.zone:80      *.zone:1000-2000
        127.0.0.1   127.0.0.1:80   127.0.0.1:1000-2000
        10.0.0.1/8  10.0.0.1/8:80  10.0.0.1/8:1000-2000
        1000::/16   1000::/16:80   1000::/16:1000-2000
        [2001:db8::1]/64  [2001:db8::1]/64:80  [2001:db8::1]/64:1000-2000
        2001:db8::1  [2001:db8::1]  [2001:db8::1]:80  [2001:db8::1]:1000-2000
    """


def _split(dest: str) -> tuple[str, int]:
    host, _, port = dest.rpartition(":")
    return host, int(port)


def test_every_spec_form_is_covered() -> None:
    spec_forms = SPEC_TABLE.split()
    assert set(spec_forms) == set(PATTERN_CASES)


@pytest.mark.parametrize(("pattern", "dest", "expected"), [
    (pattern, dest, expected)
    for pattern, (allowed, blocked) in PATTERN_CASES.items()
    for dests, expected in ((allowed, True), (blocked, False))
    for dest in dests
])  # fmt: skip
def test_pattern_matching(pattern: str, dest: str, expected: bool) -> None:
    allow_list = AllowList.parse([pattern])
    host, port = _split(dest)
    assert allow_list.allows(host, port) is expected
    if host.startswith("["):
        assert allow_list.allows(host[1:-1], port) is expected


@pytest.mark.parametrize(
    ("pattern", "rule"),
    [
        ("localhost", HostRule("localhost")),
        ("LocalHost.:80", HostRule("localhost", PortRange(80, 80))),
        ("*.Zone.:1000-2000", ZoneRule("zone", PortRange(1000, 2000))),
        ("127.0.0.1", AddressRule(ipaddress.IPv4Address("127.0.0.1"))),
        ("::ffff:127.0.0.1", AddressRule(ipaddress.IPv4Address("127.0.0.1"))),
        (
            "[::ffff:127.0.0.1]:80",
            AddressRule(ipaddress.IPv4Address("127.0.0.1"), PortRange(80, 80)),
        ),
        ("10.0.0.1/8", NetworkRule(ipaddress.IPv4Network("10.0.0.0/8"))),
        ("::ffff:10.0.0.1/104", NetworkRule(ipaddress.IPv4Network("10.0.0.0/8"))),
        ("1000::/16:80", NetworkRule(ipaddress.IPv6Network("1000::/16"), PortRange(80, 80))),
        ("[2001:db8::1]/64", NetworkRule(ipaddress.IPv6Network("2001:db8::/64"))),
        ("2001:db8::1", AddressRule(ipaddress.IPv6Address("2001:db8::1"))),
        ("0.0.0.0/0", NetworkRule(ipaddress.IPv4Network("0.0.0.0/0"))),
        ("my_service-1", HostRule("my_service-1")),
    ],
)
def test_parsed_rules(pattern: str, rule: object) -> None:
    assert AllowList.parse([pattern]).rules == (rule,)


def test_rules_render_back_to_patterns() -> None:
    text = "localhost,*.zone:80,127.0.0.1:1000-2000,10.0.0.0/8,[1000::]/16:80,[2001:db8::1]:443"
    allow_list = AllowList.parse([text])
    assert str(allow_list) == text
    assert AllowList.parse([str(allow_list)]) == allow_list


@pytest.mark.parametrize(
    "pattern",
    [
        "localhost:",
        "localhost:0",
        "localhost:65536",
        "localhost:99999",
        "localhost:123456",
        "localhost:http",
        "localhost:-80",
        "localhost:+80",
        "localhost:80-",
        "localhost:2000-1000",
        "localhost:0-10",
        "localhost:1-65536",
        "localhost:80:90",
        ":80",
        "*",
        "*.",
        "*:80",
        "*zone",
        "*.*.zone",
        "a.*.zone",
        "**.zone",
        "a..b",
        ".zone",
        "localhost..",
        "-host",
        "host-",
        "ho$t",
        "user@host",
        "h/x",
        "http://host",
        "local host",
        "localhost :80",
        "a" * 64,
        ".".join(["a" * 60] * 5),
        "10.0.0.1/33",
        "10.0.0.1/-1",
        "10.0.0.1/",
        "10.0.0.1/8/9",
        "10.0.0.1/255.0.0.0",
        "10.0.0.1/x",
        "1000::/129",
        "[2001:db8::1]/129",
        "[2001:db8::1]/64:0",
        "[2001:db8::1]/64:1-",
        "10.0.0.1/8:70000",
        "256.0.0.1",
        "10.0.0",
        "127.1",
        "2130706433",
        "0x7f000001",
        "010.0.0.1",
        "[127.0.0.1]",
        "[127.0.0.1]:80",
        "[2001:db8::1",
        "[2001:db8::1]x",
        "[2001:db8::1]80",
        "[2001:db8::1]:",
        "[]",
        "[zone]",
        "2001:db8::1:80:x",
        "2001:db8::g",
        "fe80::1%eth0",
        "[fe80::1%eth0]:80",
        "localhost/8",
        "exämple.com",
    ],
)
def test_malformed_patterns_are_rejected(pattern: str) -> None:
    with pytest.raises(AllowListError) as info:
        AllowList.parse([f"localhost,{pattern}"])
    assert info.value.pattern == pattern.strip()
    assert repr(pattern.strip()) in str(info.value)
    assert info.value.reason


def test_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"'\*\.'"):
        AllowList.parse(["*."])


def test_comma_separated_and_repeated() -> None:
    allow_list = AllowList.parse(["localhost:80, *.zone", "", " , ,", "10.0.0.0/8,[::1]"])
    assert allow_list.rules == (
        HostRule("localhost", PortRange(80, 80)),
        ZoneRule("zone"),
        NetworkRule(ipaddress.IPv4Network("10.0.0.0/8")),
        AddressRule(ipaddress.IPv6Address("::1")),
    )
    assert allow_list.allows("localhost", 80)
    assert allow_list.allows("a.zone", 22)
    assert allow_list.allows("10.9.9.9", 22)
    assert allow_list.allows("::1", 22)
    assert not allow_list.allows("localhost", 22)
    assert not allow_list.allows("example.com", 80)


@pytest.mark.parametrize("patterns", [[], [""], ["", " , "], [","]])
def test_empty_list_allows_everything(patterns: list[str]) -> None:
    allow_list = AllowList.parse(patterns)
    assert allow_list.allows_all
    for host in ("example.com", "1.2.3.4", "::1", "[2001:db8::1]", "localhost."):
        assert allow_list.allows(host, 443)


@pytest.mark.parametrize(
    ("host", "port"),
    [
        ("example.com", 0),
        ("example.com", 65536),
        ("example.com", -1),
        ("", 80),
        ("exa mple.com", 80),
        ("bad$host", 80),
        ("127.1", 80),
        ("[1.2.3.4]", 80),
        ("[::1", 80),
        ("fe80::1%eth0", 80),
    ],
)
def test_malformed_destinations_are_refused_even_by_empty_list(host: str, port: int) -> None:
    assert not AllowList.parse([]).allows(host, port)
    assert not AllowList.parse(["*.com,0.0.0.0/0,::/0,bad"]).allows(host, port)


def test_any_matching_rule_allows() -> None:
    """Unlike the reference, a host match with the wrong port does not shadow later rules."""
    allow_list = AllowList.parse(["10.0.0.0/8:80,10.1.2.3:443,*.zone:80,a.zone:443,*.a.zone:22"])
    assert allow_list.allows("10.1.2.3", 443)
    assert allow_list.allows("10.1.2.4", 80)
    assert not allow_list.allows("10.1.2.4", 443)
    assert allow_list.allows("a.zone", 443)
    assert allow_list.allows("a.zone", 22)
    assert allow_list.allows("b.a.zone", 22)
    assert allow_list.allows("b.a.zone", 80)
    assert not allow_list.allows("b.a.zone", 443)


def test_names_and_ip_literals_never_cross_match() -> None:
    allow_list = AllowList.parse(["localhost,127.0.0.1,*.1.example"])
    assert not allow_list.allows("[::1]", 80)
    assert allow_list.allows("2.1.example", 80)
    assert not AllowList.parse(["0.0.0.0/0,::/0"]).allows("localhost", 80)
    assert not AllowList.parse(["*.com"]).allows("1.2.3.4", 80)


def test_ipv4_and_ipv6_rules_are_separate() -> None:
    v4_all = AllowList.parse(["0.0.0.0/0"])
    v6_all = AllowList.parse(["::/0"])
    assert v4_all.allows("1.2.3.4", 80)
    assert v4_all.allows("::ffff:1.2.3.4", 80)
    assert not v4_all.allows("1001::", 80)
    assert v6_all.allows("1001::", 80)
    assert not v6_all.allows("1.2.3.4", 80)
    assert not v6_all.allows("::ffff:1.2.3.4", 80)


def test_allow_list_is_frozen() -> None:
    allow_list = AllowList.parse(["localhost"])
    with pytest.raises(AttributeError):
        allow_list.rules = ()  # type: ignore[misc]
    with pytest.raises(AttributeError):
        allow_list.rules[0].name = "x"  # type: ignore[misc, union-attr]


ports = st.integers(min_value=1, max_value=65535)
label = st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True)
hostname = st.lists(label, min_size=1, max_size=4).map(".".join)


@given(ports, ports, st.integers(min_value=-10, max_value=70000))
def test_port_range_rule_allows_exactly_its_range(a: int, b: int, port: int) -> None:
    low, high = sorted((a, b))
    for pattern, host in (
        (f"example.com:{low}-{high}", "example.com"),
        (f"*.zone:{low}-{high}", "x.zone"),
        (f"10.0.0.0/8:{low}-{high}", "10.2.3.4"),
        (f"[2001:db8::1]:{low}-{high}", "2001:db8::1"),
    ):
        assert AllowList.parse([pattern]).allows(host, port) is (low <= port <= high)


@given(ports, ports)
def test_single_port_rule(rule_port: int, port: int) -> None:
    allow_list = AllowList.parse([f"localhost:{rule_port}"])
    assert allow_list.allows("localhost", port) is (port == rule_port)


@given(ports)
def test_reversed_range_is_rejected(low: int) -> None:
    assume(low < 65535)
    with pytest.raises(AllowListError, match="reversed"):
        AllowList.parse([f"localhost:{low + 1}-{low}"])


@given(hostname, hostname, ports)
def test_zone_matches_itself_and_subdomains_only(zone: str, sub: str, port: int) -> None:
    allow_list = AllowList.parse([f"*.{zone}"])
    assert allow_list.allows(zone, port)
    assert allow_list.allows(f"{sub}.{zone}", port)
    assert allow_list.allows(f"{sub}.{zone}".upper(), port)
    assert not allow_list.allows(f"{sub}{zone}", port) or f"{sub}{zone}".endswith(f".{zone}")


@given(st.ip_addresses(v=4), st.integers(min_value=0, max_value=32), ports)
def test_ipv4_network_matches_like_ipaddress(
    addr: ipaddress.IPv4Address, prefix: int, port: int
) -> None:
    network = ipaddress.IPv4Network((addr, prefix), strict=False)
    other = ipaddress.IPv4Address(int(addr) ^ 0xA5A5A5A5)
    allow_list = AllowList.parse([f"{addr}/{prefix}"])
    assert allow_list.allows(str(addr), port)
    assert allow_list.allows(str(other), port) is (other in network)
    assert allow_list.allows(f"::ffff:{other}", port) is (other in network)


@given(st.ip_addresses(v=6), st.integers(min_value=0, max_value=95), ports)
def test_ipv6_network_matches_like_ipaddress(
    addr: ipaddress.IPv6Address, prefix: int, port: int
) -> None:
    network = ipaddress.IPv6Network((addr, prefix), strict=False)
    other = ipaddress.IPv6Address(int(addr) ^ (0xA5 << 100))
    allow_list = AllowList.parse([f"[{addr}]/{prefix}"])
    assume(addr.ipv4_mapped is None and other.ipv4_mapped is None)
    assert allow_list.allows(f"[{addr}]", port)
    assert allow_list.allows(str(other), port) is (other in network)


@given(hostname, ports)
def test_parse_authority_round_trips_names(host: str, port: int) -> None:
    assert parse_authority(f"{host}:{port}") == (host, port)


@given(st.ip_addresses(v=4), ports)
def test_parse_authority_round_trips_ipv4(addr: ipaddress.IPv4Address, port: int) -> None:
    assert parse_authority(f"{addr}:{port}") == (str(addr), port)


@given(st.ip_addresses(v=6), ports)
def test_parse_authority_round_trips_ipv6(addr: ipaddress.IPv6Address, port: int) -> None:
    for text in (addr.compressed, addr.exploded):
        assert parse_authority(f"[{text}]:{port}") == (text, port)


@given(st.one_of(hostname, st.ip_addresses().map(str)), ports)
def test_parse_authority_feeds_allows(host: str, port: int) -> None:
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    parsed_host, parsed_port = parse_authority(authority)
    assert AllowList.parse([]).allows(parsed_host, parsed_port)


@pytest.mark.parametrize(
    ("authority", "expected"),
    [
        ("example.com:443", ("example.com", 443)),
        ("Example.COM.:443", ("Example.COM.", 443)),
        ("localhost:1", ("localhost", 1)),
        ("localhost:65535", ("localhost", 65535)),
        ("localhost:0080", ("localhost", 80)),
        ("my_service:8080", ("my_service", 8080)),
        ("xn--bcher-kva.example:443", ("xn--bcher-kva.example", 443)),
        ("127.0.0.1:80", ("127.0.0.1", 80)),
        ("[::1]:80", ("::1", 80)),
        ("[2001:DB8::1]:443", ("2001:DB8::1", 443)),
        ("[::ffff:10.1.2.3]:22", ("::ffff:10.1.2.3", 22)),
        ("3com.example:80", ("3com.example", 80)),
    ],
)
def test_parse_authority_good(authority: str, expected: tuple[str, int]) -> None:
    assert parse_authority(authority) == expected


@pytest.mark.parametrize(
    ("authority", "message"),
    [
        ("", "empty"),
        ("example.com", "port required"),
        ("example.com:", "invalid port"),
        (":443", "empty host"),
        ("example.com:0", "out of range"),
        ("example.com:65536", "out of range"),
        ("example.com:123456", "invalid port"),
        ("example.com:https", "invalid port"),
        ("example.com:-1", "invalid port"),
        ("example.com:+1", "invalid port"),
        ("example.com:4 43", "invalid characters"),
        ("exa mple.com:443", "invalid characters"),
        ("example.com:443\r\n", "invalid characters"),
        ("exämple.com:443", "invalid characters"),
        ("example.com:٤٤٣", "invalid characters"),
        ("user@example.com:443", "invalid host name label"),
        ("http://example.com:443", "invalid"),
        ("example..com:443", "empty label"),
        ("-example.com:443", "invalid host name label"),
        ("*.example.com:443", "invalid host name label"),
        ("example.com/x:443", "invalid host name label"),
        ("256.1.1.1:80", "not a valid IPv4"),
        ("127.1:80", "not a valid IPv4"),
        ("2130706433:80", "not a valid IPv4"),
        ("0x7f000001:80", "not a valid IPv4"),
        ("::1:80", "must be bracketed"),
        ("2001:db8::1:443", "must be bracketed"),
        ("[::1]", "port required"),
        ("[::1]80", "port required"),
        ("[::1", "missing ']'"),
        ("[::1]:", "invalid port"),
        ("[::1]:0", "out of range"),
        ("[127.0.0.1]:80", "not a valid IPv6"),
        ("[example.com]:80", "not a valid IPv6"),
        ("[]:80", "not a valid IPv6"),
        ("[fe80::1%25eth0]:80", "zone ids"),
        ("[::1]:80:80", "invalid port"),
        ("a" * 64 + ".com:443", "invalid host name label"),
        (".".join(["a" * 60] * 5) + ":443", "longer than"),
    ],
)
def test_parse_authority_bad(authority: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"CONNECT target|empty") as info:
        parse_authority(authority)
    assert message in str(info.value)


def test_port_range_validates_itself() -> None:
    assert 80 in ALL_PORTS
    assert 0 not in ALL_PORTS
    with pytest.raises(ValueError):
        PortRange(2, 1)
    with pytest.raises(ValueError):
        PortRange(0, 1)


@pytest.mark.parametrize(
    ("patterns", "shadowed"),
    [
        # a network tried before an address, wherever each is listed
        ("10.0.0.0/8:80,10.1.2.3:443", [("10.1.2.3:443", "10.0.0.0/8:80")]),
        ("10.1.2.3:443,10.0.0.0/8:80", [("10.1.2.3:443", "10.0.0.0/8:80")]),
        # the same name twice: the first one's ports decide there
        ("example.com:80,example.com:443", [("example.com:443", "example.com:80")]),
        # a zone tried before a name, wherever each is listed
        ("api.example.com,*.example.com:443", [("api.example.com", "*.example.com:443")]),
        (
            "*.a.com:80,*.b.a.com:81,x.b.a.com",
            [("*.b.a.com:81", "*.a.com:80"), ("x.b.a.com", "*.a.com:80")],
        ),
        # networks in list order: the narrow one first shadows the wide one
        ("10.1.0.0/16:22,10.0.0.0/8", [("10.0.0.0/8", "10.1.0.0/16:22")]),
        # no difference: the first match's ports include the later entry's
        ("10.0.0.0/8,10.1.0.0/16:22", []),
        ("10.0.0.0/8,10.0.0.0/16:80,10.0.0.5:443", []),
        ("127.0.0.1:80-90,127.0.0.1:85", []),
        ("*.example.com,api.example.com:443", []),
        # disjoint hosts, names vs. addresses, v4 vs. v6: never shadowed
        ("a.com:80,b.com:443,127.0.0.1:80,[::1]:443,10.0.0.0/8:80,[::]/0:443", []),
        ("*.a.com:80,a.com.b:443,xa.com:443", []),
    ],
)
def test_go_shadowed_entries(patterns: str, shadowed: list[tuple[str, str]]) -> None:
    """Where the Go reference (first matching host pattern decides) and ours (any match
    allows) would decide differently: exactly the entries listed."""
    found = AllowList.parse([patterns]).go_shadowed()
    assert [(str(s.entry), str(s.by)) for s in found] == shadowed
    for s in found:
        assert f"entry {str(s.entry)!r} is shadowed in the Go reference by {str(s.by)!r}" in str(s)


def test_go_shadowed_is_exactly_where_first_match_differs() -> None:
    """Brute force over a small universe: a destination ours allows and a first-match
    reading refuses exists exactly when some entry is reported shadowed."""
    patterns = "10.0.0.0/8:80,10.1.2.3:443,10.1.0.0/16:22,*.a.com:80,x.a.com:443,x.a.com:22"
    allow = AllowList.parse([patterns])
    rules = allow.rules
    kinds = ("NetworkRule", "AddressRule", "ZoneRule", "HostRule")
    order = sorted(rules, key=lambda r: kinds.index(type(r).__name__))

    def first_match(host: str, port: int) -> bool:
        """The Go reference's reading: the first entry whose host matches decides."""
        for rule in order:
            host_only = AllowList.parse([str(rule).rsplit(":", 1)[0]])
            if host_only.allows(host, port):
                return port in rule.ports
        return False

    differing = {
        (host, port)
        for host in ("10.1.2.3", "10.1.9.9", "10.2.0.1", "x.a.com", "y.a.com", "a.com")
        for port in (22, 80, 443)
        if allow.allows(host, port) != first_match(host, port)
    }
    assert differing == {
        ("10.1.2.3", 443),
        ("10.1.2.3", 22),
        ("10.1.9.9", 22),
        ("x.a.com", 443),
        ("x.a.com", 22),
    }
    assert {str(s.entry) for s in allow.go_shadowed()} == {
        "10.1.2.3:443",
        "10.1.0.0/16:22",
        "x.a.com:443",
        "x.a.com:22",
    }
