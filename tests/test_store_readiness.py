"""Readiness against a real memcached that is killed and restarted (issue 13 defect 5).

The LB server can route nothing without its store: /readyz says 503 after a short
grace. A proxy still serves its own agents: a blip shorter than its grace leaves it
ready, so a shared store outage does not empty the whole fleet's load balancer.
"""

from __future__ import annotations

from dataclasses import replace

import httpx
import trio

from conftest import Memcached, free_ports
from reverse_http.agent.client import run_agent
from reverse_http.config import LbConfig, ListenAddress
from reverse_http.devcerts import CertFiles
from reverse_http.lb.server import run_lb
from reverse_http.proxy.server import run_proxy
from tests.test_ha_store import store_config
from tests.tunnel_helpers import agent_config, proxy_config


async def readyz(port: int) -> tuple[int, str]:
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        r = await client.get(f"http://127.0.0.1:{port}/readyz")
    return r.status_code, r.text


async def wait_status(port: int, status: int, within: float = 10) -> str:
    with trio.fail_after(within):
        while True:
            got, body = await readyz(port)
            if got == status:
                return body
            await trio.sleep(0.05)


async def test_lb_unready_without_its_store_proxy_rides_out_a_blip(
    certs: CertFiles, memcached: Memcached
) -> None:
    proxy_metrics, lb_metrics = free_ports(2)
    proxy_store = replace(store_config(memcached, ttl=3.0), readiness_grace=4.0)
    lb_store = replace(store_config(memcached), readiness_grace=1.0)
    async with trio.open_nursery() as nursery:
        proxy = await nursery.start(
            run_proxy,
            proxy_config(
                certs,
                store=proxy_store,
                metrics_listen=ListenAddress("127.0.0.1", proxy_metrics),
            ),
        )
        agent = await nursery.start(run_agent, agent_config(certs, proxy.agent_port, "4711"))
        with trio.fail_after(10):
            await agent.connected.wait()
        await nursery.start(
            run_lb,
            LbConfig(
                http_listen=ListenAddress("127.0.0.1", 0),
                store=lb_store,
                metrics_listen=ListenAddress("127.0.0.1", lb_metrics),
            ),
        )
        await wait_status(lb_metrics, 200)
        await wait_status(proxy_metrics, 200)

        memcached.kill()
        killed = trio.current_time()
        body = await wait_status(lb_metrics, 503)
        assert "failing: store" in body
        assert trio.current_time() - killed >= 1.0  # the LB's grace
        # the proxy's registrar refreshes every second, so it has seen failures by
        # now; within its grace it stays ready
        assert proxy.registrar is not None and proxy.registrar.errors >= 1
        assert (await readyz(proxy_metrics))[0] == 200

        memcached.start()
        await wait_status(lb_metrics, 200)
        assert (await readyz(proxy_metrics))[0] == 200
        errors = proxy.registrar.errors

        # a longer outage: the proxy too, once its grace is over
        memcached.kill()
        killed = trio.current_time()
        body = await wait_status(proxy_metrics, 503, within=15)
        assert "failing: store" in body
        assert trio.current_time() - killed >= 4.0
        assert proxy.registrar.errors > errors
        nursery.cancel_scope.cancel()
