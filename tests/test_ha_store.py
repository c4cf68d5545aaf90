"""HA in one process: two proxies and an LB server sharing a real memcached."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import trio

from conftest import Memcached
from reverse_http.agent.client import AgentHandle, run_agent
from reverse_http.config import LbConfig, ListenAddress, StoreConfig
from reverse_http.devcerts import CertFiles
from reverse_http.lb.server import LbServer, run_lb
from reverse_http.proxy.server import ProxyServer, run_proxy
from reverse_http.store.memcached import open_memcached_store
from tests.tunnel_helpers import agent_config, echo_target, noauth, open_connect, proxy_config


def store_config(
    memcached: Memcached, ttl: float = 30.0, readiness_grace: float = 30.0
) -> StoreConfig:
    return StoreConfig(
        type="memcached",
        memcached_addresses=(memcached.address,),
        memcached_timeout=0.5,
        entry_ttl=ttl,
        readiness_grace=readiness_grace,
    )


@asynccontextmanager
async def cluster(
    certs: CertFiles, memcached: Memcached, ttl: float = 30.0, readiness_grace: float = 30.0
) -> AsyncIterator[tuple[trio.Nursery, list[ProxyServer], LbServer]]:
    async with trio.open_nursery() as nursery:
        store = store_config(memcached, ttl, readiness_grace)
        proxies = [
            await nursery.start(run_proxy, proxy_config(certs, store=store)) for _ in range(2)
        ]
        lb = await nursery.start(
            run_lb,
            LbConfig(http_listen=ListenAddress("127.0.0.1", 0), store=store_config(memcached, ttl)),
        )
        yield nursery, proxies, lb
        nursery.cancel_scope.cancel()


async def start_agent(
    nursery: trio.Nursery, certs: CertFiles, proxy: ProxyServer, agent_id: str
) -> AgentHandle:
    handle: AgentHandle = await nursery.start(
        run_agent, agent_config(certs, proxy.agent_port, agent_id)
    )
    with trio.fail_after(10):
        await handle.connected.wait()
    return handle


async def route(memcached: Memcached, agent_id: str) -> str | None:
    async with open_memcached_store((memcached.address,), request_timeout=1, ttl=30) as store:
        return await store.get_route(agent_id)


async def wait_route(memcached: Memcached, agent_id: str, expected: str | None) -> None:
    with trio.fail_after(15):
        while await route(memcached, agent_id) != expected:
            await trio.sleep(0.05)


def address_of(proxy: ProxyServer) -> str:
    assert proxy.registrar is not None
    return proxy.registrar.address


async def echo_through(port: int, target: int, agent_id: str, payload: bytes) -> int:
    result = await open_connect(port, f"127.0.0.1:{target}", noauth(agent_id))
    if result.stream is None:
        return result.status
    async with result.stream:
        await result.stream.send_all(payload)
        await result.stream.send_eof()
        got = b""
        while chunk := await result.stream.receive_some():
            got += chunk
    assert got == payload
    return result.status


async def test_lb_forwards_to_the_owning_proxy(certs: CertFiles, memcached: Memcached) -> None:
    async with echo_target() as target, cluster(certs, memcached) as (nursery, proxies, lb):
        await start_agent(nursery, certs, proxies[0], "4711")
        await start_agent(nursery, certs, proxies[1], "4712")
        await wait_route(memcached, "4711", address_of(proxies[0]))
        await wait_route(memcached, "4712", address_of(proxies[1]))
        assert await echo_through(lb.http_port, target.port, "4711", b"via lb to A") == 200
        assert await echo_through(lb.http_port, target.port, "4712", b"via lb to B") == 200
        assert await echo_through(lb.http_port, target.port, "9999", b"x") == 503
        bad = await open_connect(lb.http_port, f"127.0.0.1:{target.port}", None)
        assert bad.status == 407


async def test_stale_route_never_reaches_the_wrong_agent(
    certs: CertFiles, memcached: Memcached
) -> None:
    async with echo_target() as target, cluster(certs, memcached) as (nursery, proxies, lb):
        await start_agent(nursery, certs, proxies[0], "4712")
        # a crashed proxy left 4711's route pointing at proxy A, which holds only 4712
        async with open_memcached_store((memcached.address,), 1, 30) as store:
            await store.set_route("4711", address_of(proxies[0]))
        assert await echo_through(lb.http_port, target.port, "4711", b"x") == 503
        assert await echo_through(lb.http_port, target.port, "4712", b"ok") == 200


async def test_moving_agent_leaves_only_the_current_route(
    certs: CertFiles, memcached: Memcached
) -> None:
    async with echo_target() as target, cluster(certs, memcached) as (nursery, proxies, lb):
        for hop in range(4):
            owner = proxies[hop % 2]
            agent = await start_agent(nursery, certs, owner, "4711")
            await wait_route(memcached, "4711", address_of(owner))
            assert await echo_through(lb.http_port, target.port, "4711", b"hop") == 200
            agent.stop()
            with trio.fail_after(10):
                while owner.registry.get("4711") is not None:
                    await trio.sleep(0.05)
        # once settled: no route to a proxy that no longer holds the agent
        await wait_route(memcached, "4711", None)


async def test_memcached_outage_keeps_local_traffic_and_reregisters(
    certs: CertFiles, memcached: Memcached
) -> None:
    async with (
        echo_target() as target,
        cluster(certs, memcached, readiness_grace=1.0) as (nursery, proxies, _lb),
    ):
        await start_agent(nursery, certs, proxies[0], "4711")
        await start_agent(nursery, certs, proxies[1], "4712")
        await wait_route(memcached, "4711", address_of(proxies[0]))
        memcached.kill()
        # each proxy keeps serving its own agents directly
        assert await echo_through(proxies[0].http_port, target.port, "4711", b"a") == 200
        assert await echo_through(proxies[1].http_port, target.port, "4712", b"b") == 200
        registrar = proxies[0].registrar
        assert registrar is not None
        with trio.fail_after(15):
            while registrar.healthy:
                await trio.sleep(0.05)
        memcached.start()  # empty: every route was lost
        await wait_route(memcached, "4711", address_of(proxies[0]))
        await wait_route(memcached, "4712", address_of(proxies[1]))


async def test_crashed_proxy_routes_expire(certs: CertFiles, memcached: Memcached) -> None:
    async with cluster(certs, memcached, ttl=2) as (nursery, proxies, _lb):
        await start_agent(nursery, certs, proxies[0], "4711")
        await wait_route(memcached, "4711", address_of(proxies[0]))
        # the refresher keeps the route alive past its TTL while the agent is connected
        await trio.sleep(3)
        assert await route(memcached, "4711") == address_of(proxies[0])
    # the whole cluster is gone without cleaning up (as in a crash): the TTL ends the route
    # ... but a clean shutdown removed it already; simulate a crash by writing it back
    async with open_memcached_store((memcached.address,), 1, 2) as store:
        await store.set_route("4711", "crashed-proxy:3128")
    await wait_route(memcached, "4711", None)


def test_lb_config_defaults() -> None:
    cfg = LbConfig()
    assert cfg.http_listen.port == 3129
    assert replace(cfg.store, type="memcached").type == "memcached"
