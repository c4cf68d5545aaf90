"""The LB server treats memcached as untrusted: real memcached, real LB, real sockets.

A route is dialled only when it parses and every address it names is in
``--http-connector.allowed-proxies``; the proxy's certificate is checked against the
configured CA (the system store only when asked) and a configured or allowed name.
Foreign entries it cannot use are reclaimed by compare-and-swap. Entries as a Go
proxy writes them (flags 0, no TTL, ``:3128`` by default) are routed and left as written.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import trio

from conftest import Memcached, free_port
from reverse_http.config import ConnectorTls, LbConfig, ListenAddress, TcpTls
from reverse_http.devcerts import CertFiles, make_ca, make_dev_certs
from reverse_http.errors import ConfigError
from reverse_http.lb.server import LbServer, ProxyConnector, connector_context, run_lb
from reverse_http.store.memcached import lease_tag, open_memcached_store, owner_tag
from reverse_http.store.route import IPAddress, ProxyAllowList
from reverse_http.wire.http import ConnectRequest, HttpError
from tests.memcached_raw import RawMemcached, entry_of, meta_of
from tests.test_ha_store import echo_through, store_config
from tests.tunnel_helpers import LOOPBACK, echo_target, noauth, open_connect, tunnel


@asynccontextmanager
async def lb(memcached: Memcached, **overrides: object) -> AsyncIterator[LbServer]:
    config = LbConfig(http_listen=ListenAddress(LOOPBACK, 0), store=store_config(memcached))
    async with trio.open_nursery() as nursery:
        server: LbServer = await nursery.start(run_lb, replace(config, **overrides))  # type: ignore[arg-type]
        yield server
        nursery.cancel_scope.cancel()


@dataclass
class Spy:
    """A fake proxy that records every CONNECT head it gets and answers 503."""

    port: int = 0
    heads: list[bytes] = field(default_factory=list)


async def _spy_handler(spy: Spy, stream: trio.SocketStream) -> None:
    async with stream:
        head = b""
        while b"\r\n\r\n" not in head and (chunk := await stream.receive_some(4096)):
            head += chunk
        spy.heads.append(head)
        await stream.send_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")


@asynccontextmanager
async def spy_proxy() -> AsyncIterator[Spy]:
    spy = Spy()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, host=LOOPBACK),
            functools.partial(_spy_handler, spy),
            0,
        )
        spy.port = listeners[0].socket.getsockname()[1]
        yield spy
        nursery.cancel_scope.cancel()


async def refused(port: int, agent_id: str = "4711") -> tuple[int, str]:
    """A CONNECT through the LB that is not answered 200: (status, whole answer)."""
    stream = await trio.open_tcp_stream(LOOPBACK, port)
    async with stream:
        dest = "127.0.0.1:9"
        await stream.send_all(
            f"CONNECT {dest} HTTP/1.1\r\nHost: {dest}\r\n"
            f"Proxy-Authorization: {noauth(agent_id)}\r\n\r\n".encode()
        )
        answer = b""
        while chunk := await stream.receive_some(4096):
            answer += chunk
    return int(answer.split(b" ", 2)[1]), answer.decode(errors="replace")


async def round_trip(port: int, target: int, agent_id: str, payload: bytes) -> int:
    """CONNECT, then one echo without half-close (TLS towards a proxy cannot half-close)."""
    result = await open_connect(port, f"127.0.0.1:{target}", noauth(agent_id))
    if result.stream is None:
        return result.status
    async with result.stream:
        await result.stream.send_all(payload)
        got = b""
        while len(got) < len(payload) and (chunk := await result.stream.receive_some()):
            got += chunk
    assert got == payload
    return result.status


def counted(server: LbServer, name: str, **labels: str) -> float | None:
    return server.metrics.registry.get_sample_value(f"reverse_http_{name}", labels)


def deleted(raw: RawMemcached, key: str) -> bool:
    """Gone, or the empty tombstone of a conditional delete (lives 1 s)."""
    entry = raw.gets(key)
    return entry is None or entry.value == b""


# ----------------------------------------------------------------- untrusted values


async def test_a_malformed_route_is_no_route_counted_logged_once_and_deleted(
    memcached: Memcached, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "reverse_http.lb.server")
    async with lb(memcached) as server:
        with RawMemcached(memcached.address) as raw:
            for _ in range(3):
                raw.set("4711", b"evil host:80")  # written by someone else, no TTL
                status, answer = await refused(server.http_port)
                assert status == 503
                assert "agent 4711 is not connected to any proxy (its route is malformed)" in answer
                assert deleted(raw, "4711")
        assert counted(server, "lb_routes_refused_total", reason="malformed") == 3
        assert counted(server, "lb_routes_refused_total", reason="not_allowed") == 0
        assert counted(server, "lb_routes_reclaimed_total", action="delete") == 3
    warnings = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(warnings) == 1, warnings  # rate-limited: one line per kind per 10 s
    assert "agent 4711" in warnings[0] and "spaces" in warnings[0]
    assert "b'evil host:80'" in warnings[0]


async def test_a_route_outside_the_allow_list_is_never_dialled(memcached: Memcached) -> None:
    strict = ProxyAllowList.parse(["no-defaults,10.0.0.0/8"])
    async with (
        spy_proxy() as spy,
        lb(memcached) as default_lb,
        lb(memcached, allowed_proxies=strict) as strict_lb,
    ):
        with RawMemcached(memcached.address) as raw:
            # control: loopback is allowed by default, and the LB forwards the credentials
            raw.set("4711", f"127.0.0.1:{spy.port}".encode())
            status, answer = await refused(default_lb.http_port)
            assert status == 503 and f"proxy 127.0.0.1:{spy.port}: 503" in answer
            assert len(spy.heads) == 1
            assert f"Proxy-Authorization: {noauth('4711')}\r\n".encode() in spy.heads[0]

            for value in (f"127.0.0.1:{spy.port}", f"localhost:{spy.port}", f":{spy.port}"):
                raw.set("4711", value.encode())
                status, answer = await refused(strict_lb.http_port)
                assert status == 503, value
                assert "which is not in --http-connector.allowed-proxies; not dialled" in answer
                assert deleted(raw, "4711")  # a foreign entry this LB can never use
            # the spy would have answered every dial before the LB could answer the client
            assert len(spy.heads) == 1
        assert counted(strict_lb, "lb_routes_refused_total", reason="not_allowed") == 3


async def test_every_address_a_proxy_name_resolves_to_must_be_allowed(
    memcached: Memcached,
) -> None:
    """A name with one allowed and one outside address is refused, not half-trusted."""
    resolved: dict[str, list[IPAddress]] = {}

    async def resolve(host: str, port: int) -> list[IPAddress]:
        return resolved[host]

    request = ConnectRequest("127.0.0.1", 9, {}, b"")
    async with (
        spy_proxy() as spy,
        open_memcached_store((memcached.address,), request_timeout=1, ttl=30) as store,
    ):
        connector = ProxyConnector(store, resolve=resolve)
        with RawMemcached(memcached.address) as raw:
            route = f"proxies.internal:{spy.port}".encode()
            raw.set("4711", route)
            # the allowed address comes first: checking only the first would dial it
            resolved["proxies.internal"] = [
                ipaddress.ip_address("127.0.0.1"),
                ipaddress.ip_address("203.0.113.9"),
            ]
            with pytest.raises(HttpError) as refusal:
                await connector.open_upstream("4711", request, noauth())
            assert refusal.value.status == 503
            assert "(127.0.0.1, 203.0.113.9)" not in refusal.value.detail
            assert "(203.0.113.9)" in refusal.value.detail and "not dialled" in refusal.value.detail
            assert spy.heads == []

            raw.set("4711", route)
            resolved["proxies.internal"] = [
                ipaddress.ip_address("127.0.0.1"),
                ipaddress.ip_address("10.255.255.1"),
            ]
            with pytest.raises(HttpError) as answer:
                await connector.open_upstream("4711", request, noauth())
            assert answer.value.status == 503 and f"proxies.internal:{spy.port}: 503" in (
                answer.value.detail
            )
            assert len(spy.heads) == 1


# ------------------------------------------------------------------------ reclaiming


async def test_an_unreachable_foreign_route_is_leased_once_and_lifted_when_it_answers(
    certs: CertFiles, memcached: Memcached
) -> None:
    port = free_port()  # nothing listens here (yet)
    value = f"127.0.0.1:{port}".encode()
    async with echo_target() as target, lb(memcached) as server:
        with RawMemcached(memcached.address) as raw:
            raw.set("4711", value)  # as a Go proxy writes it: flags 0, no TTL
            status, answer = await refused(server.http_port)
            assert status == 503 and f"proxy 127.0.0.1:{port} unreachable" in answer
            leased = meta_of(raw, "4711")
            assert 0 < leased.ttl <= 30 and leased.flags == lease_tag(value)
            status, _ = await refused(server.http_port)
            assert status == 503
            assert meta_of(raw, "4711").cas == leased.cas  # a lease is not extended
            # the proxy is back (it writes no routes: as far as memcached goes, a Go proxy)
            overrides: dict[str, object] = {"http_listen": ListenAddress(LOOPBACK, port)}
            async with tunnel(certs, proxy_overrides=overrides):
                assert await echo_through(server.http_port, target.port, "4711", b"back") == 200
            lifted = meta_of(raw, "4711")
            assert lifted.ttl == -1 and lifted.flags == 0  # exactly as its writer left it
            assert entry_of(raw, "4711").value == value
        assert counted(server, "lb_routes_reclaimed_total", action="lease") == 1
        assert counted(server, "lb_routes_reclaimed_total", action="unlease") == 1


async def test_any_http_answer_lifts_a_lease(memcached: Memcached) -> None:
    """A 503 from the proxy (its agent's destination is down, say) still means it is there."""
    async with spy_proxy() as spy, lb(memcached) as server:
        value = f"127.0.0.1:{spy.port}".encode()
        with RawMemcached(memcached.address) as raw:
            raw.set("4711", value, flags=lease_tag(value), exptime=30)  # leased earlier
            status, answer = await refused(server.http_port)
            assert status == 503 and f"proxy 127.0.0.1:{spy.port}: 503" in answer
            lifted = meta_of(raw, "4711")
            assert lifted.ttl == -1 and lifted.flags == 0
        assert counted(server, "lb_routes_reclaimed_total", action="unlease") == 1


async def test_our_own_routes_are_left_to_their_owner_and_ttl(memcached: Memcached) -> None:
    closed = free_port()
    async with (
        lb(memcached) as server,
        open_memcached_store((memcached.address,), request_timeout=1, ttl=30) as store,
    ):
        with RawMemcached(memcached.address) as raw:
            for address, problem in ((f"127.0.0.1:{closed}", "unreachable"), ("x y", "malformed")):
                await store.set_route("4711", address)
                before = entry_of(raw, "4711")
                assert before.flags == owner_tag(address.encode())
                status, answer = await refused(server.http_port)
                assert status == 503 and problem in answer
                assert entry_of(raw, "4711") == before
                assert 0 < meta_of(raw, "4711").ttl <= 30
        for action in ("delete", "lease", "unlease"):
            assert counted(server, "lb_routes_reclaimed_total", action=action) == 0


# ------------------------------------------------------------------- Go interop


async def test_go_proxy_entries_are_routed_and_left_as_written(
    certs: CertFiles, memcached: Memcached
) -> None:
    """The Go proxy stores its listen address (``:3128`` by default) with plain ``set``.

    The Go LB dials such an address on its own host (Go's dialer turns an empty or
    unspecified host into loopback), and so does ours.
    """
    async with echo_target() as target, tunnel(certs) as go_proxy, lb(memcached) as server:
        port = go_proxy.http_port
        with RawMemcached(memcached.address) as raw:
            for value in (f":{port}", f"0.0.0.0:{port}", f"127.0.0.1:{port}"):
                raw.set("4711", value.encode())
                before = entry_of(raw, "4711")
                assert await echo_through(server.http_port, target.port, "4711", b"go") == 200
                assert entry_of(raw, "4711") == before, value
                assert meta_of(raw, "4711").ttl == -1


# ------------------------------------------------------------------------------ TLS


def test_connector_tls_verifies_against_something_chosen(certs: CertFiles) -> None:
    with pytest.raises(ConfigError, match=r"root-ca or --http-connector\.tls\.use-system-pool"):
        connector_context(ConnectorTls(enable=True))
    assert connector_context(ConnectorTls(enable=True, use_system_pool=True)) is not None
    assert connector_context(ConnectorTls(enable=True, root_ca_file=certs.ca_cert)) is not None


async def test_connector_tls_uses_the_system_store_only_when_asked(
    certs: CertFiles, memcached: Memcached, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # make the dev CA the whole "system store" (OpenSSL reads these at load time)
    monkeypatch.setenv("SSL_CERT_FILE", str(certs.ca_cert))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))
    (tmp_path / "other").mkdir()
    other_ca, _ = make_ca(tmp_path / "other", "an unrelated CA")
    http_tls = TcpTls(cert_file=certs.cert, key_file=certs.key)
    async with (
        echo_target() as target,
        tunnel(certs, proxy_overrides={"http_tls": http_tls}) as proxy,
    ):
        with RawMemcached(memcached.address) as raw:
            cases = [
                (f"127.0.0.1:{proxy.http_port}", ConnectorTls(True, root_ca_file=other_ca), 503),
                (
                    f"127.0.0.1:{proxy.http_port}",
                    ConnectorTls(True, root_ca_file=other_ca, use_system_pool=True),
                    200,
                ),
                (
                    f"127.0.0.1:{proxy.http_port}",
                    ConnectorTls(True, root_ca_file=certs.ca_cert),
                    200,
                ),
                # the route's name is verified once it passed the allow-list
                (
                    f"localhost:{proxy.http_port}",
                    ConnectorTls(True, root_ca_file=certs.ca_cert),
                    200,
                ),
            ]
            for route, tls, expected in cases:
                raw.set("4711", route.encode())
                async with lb(memcached, connector_tls=tls) as server:
                    status = await round_trip(server.http_port, target.port, "4711", b"tls")
                    assert status == expected, (route, tls)
                # a failed TLS handshake reclaims nothing
                assert entry_of(raw, "4711").value == route.encode()


async def test_connector_tls_verifies_the_configured_server_name(
    certs: CertFiles, memcached: Memcached, tmp_path: Path
) -> None:
    named = make_dev_certs(tmp_path / "named", names=["proxies.internal"])
    http_tls = TcpTls(cert_file=named.cert, key_file=named.key)
    async with (
        echo_target() as target,
        tunnel(certs, proxy_overrides={"http_tls": http_tls}) as proxy,
    ):
        with RawMemcached(memcached.address) as raw:
            raw.set("4711", f"127.0.0.1:{proxy.http_port}".encode())
            for name, expected in ((None, 503), ("proxies.internal", 200), ("other.internal", 503)):
                tls = ConnectorTls(True, root_ca_file=named.ca_cert, server_name=name)
                async with lb(memcached, connector_tls=tls) as server:
                    status = await round_trip(server.http_port, target.port, "4711", b"n")
                    assert status == expected, name
