"""The LB server's own metrics after real traffic: look-ups, dials, sessions, bytes."""

from __future__ import annotations

import httpx
import trio

from conftest import Memcached, free_port
from reverse_http.agent.client import run_agent
from reverse_http.config import LbConfig, ListenAddress
from reverse_http.devcerts import CertFiles
from reverse_http.lb.server import run_lb
from reverse_http.proxy.server import run_proxy
from tests.test_ha_store import address_of, echo_through, store_config, wait_route
from tests.tunnel_helpers import (
    agent_config,
    echo_target,
    noauth,
    open_connect,
    parse_samples,
    proxy_config,
)


async def test_lb_metrics_count_lookups_dials_and_bytes(
    certs: CertFiles, memcached: Memcached
) -> None:
    mport = free_port()
    async with echo_target() as target, trio.open_nursery() as nursery:
        proxy = await nursery.start(run_proxy, proxy_config(certs, store=store_config(memcached)))
        agent = await nursery.start(run_agent, agent_config(certs, proxy.agent_port, "4711"))
        with trio.fail_after(10):
            await agent.connected.wait()
        await wait_route(memcached, "4711", address_of(proxy))
        lb = await nursery.start(
            run_lb,
            LbConfig(
                http_listen=ListenAddress("127.0.0.1", 0),
                store=store_config(memcached),
                metrics_listen=ListenAddress("127.0.0.1", mport),
            ),
        )
        for payload in (b"a" * 5000, b"b" * 70_000):
            assert await echo_through(lb.http_port, target.port, "4711", payload) == 200
        assert await echo_through(lb.http_port, target.port, "4712", b"x") == 503
        # the agent's reason for a refusal travels through proxy and LB to the client
        closed = free_port()
        refused = await open_connect(lb.http_port, f"127.0.0.1:{closed}", noauth("4711"))
        assert refused.status == 503
        assert refused.head.endswith(
            f"proxy {address_of(proxy)}: agent could not reach 127.0.0.1:{closed}: "
            "connection refused\n".encode()
        )
        async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
            with trio.fail_after(10):
                while True:  # sessions are counted when they end
                    text = (await client.get(f"http://127.0.0.1:{mport}/metrics")).text
                    m = parse_samples(text)
                    if m[("reverse_http_connect_sessions_active", ())] == 0:
                        break
                    await trio.sleep(0.05)
        nursery.cancel_scope.cancel()

    def lookups(result: str) -> float:
        return m[("reverse_http_lb_route_lookups_total", (("result", result),))]

    assert [lookups(r) for r in ("found", "missing", "malformed", "not_allowed")] == [3, 1, 0, 0]
    assert lookups("store_error") == 0
    assert m[("reverse_http_lb_upstream_dial_seconds_count", ())] == 3
    assert 0 < m[("reverse_http_lb_upstream_dial_seconds_sum", ())] < 1
    assert m[("reverse_http_connect_sessions_total", (("status", "200"),))] == 2
    assert m[("reverse_http_connect_sessions_total", (("status", "503"),))] == 2
    assert m[("reverse_http_relay_bytes_total", (("direction", "up"),))] == 75_000
    assert m[("reverse_http_relay_bytes_total", (("direction", "down"),))] == 75_000
    assert m[("reverse_http_store_errors_total", (("kind", "unavailable"), ("op", "get")))] == 0
    # no agent or QUIC series on the LB: it holds no agent connections
    assert not [n for (n, _) in m if "agent" in n or "quic" in n]
    assert m[("process_open_fds", ())] > 0
