"""The memcached route store against a real memcached."""

from __future__ import annotations

import pytest
import trio

from conftest import Memcached
from reverse_http.store.base import StoreUnavailable
from reverse_http.store.memcached import HashRing, open_memcached_store, parse_servers


async def test_set_get_and_conditional_delete(memcached: Memcached) -> None:
    async with open_memcached_store((memcached.address,), request_timeout=1, ttl=30) as store:
        assert await store.get_route("4711") is None
        await store.set_route("4711", "proxy-a:3128")
        assert await store.get_route("4711") == "proxy-a:3128"
        # another proxy takes the agent over (compare-and-swap over the old value)
        await store.set_route("4711", "proxy-b:3128")
        assert await store.get_route("4711") == "proxy-b:3128"
        # the old owner's delete must not remove the new owner's route
        assert await store.delete_route("4711", "proxy-a:3128") is False
        assert await store.get_route("4711") == "proxy-b:3128"
        assert await store.delete_route("4711", "proxy-b:3128") is True
        assert await store.get_route("4711") is None


async def test_refresh_recreates_a_lost_route_but_respects_another_owner(
    memcached: Memcached,
) -> None:
    async with open_memcached_store((memcached.address,), request_timeout=1, ttl=30) as store:
        assert await store.refresh_route("4711", "proxy-a:3128") is True
        assert await store.get_route("4711") == "proxy-a:3128"
        await store.set_route("4711", "proxy-b:3128")
        assert await store.refresh_route("4711", "proxy-a:3128") is False
        assert await store.get_route("4711") == "proxy-b:3128"
        await store.delete_route("4711", "proxy-b:3128")
        assert await store.refresh_route("4711", "proxy-a:3128") is True  # over a tombstone
        assert await store.get_route("4711") == "proxy-a:3128"


async def test_entries_expire_without_refresh(memcached: Memcached) -> None:
    async with open_memcached_store((memcached.address,), request_timeout=1, ttl=1) as store:
        await store.set_route("4711", "proxy-a:3128")
        assert await store.get_route("4711") == "proxy-a:3128"
        with trio.fail_after(5):
            while await store.get_route("4711") is not None:
                await trio.sleep(0.2)


async def test_unreachable_memcached_raises_store_unavailable(memcached: Memcached) -> None:
    memcached.kill()
    async with open_memcached_store((memcached.address,), request_timeout=0.5, ttl=30) as store:
        with pytest.raises(StoreUnavailable, match="memcached"):
            await store.get_route("4711")
        memcached.start()
        await store.set_route("4711", "proxy-a:3128")  # recovers once it answers
        assert await store.get_route("4711") == "proxy-a:3128"


def test_hash_ring_spreads_and_is_stable() -> None:
    ring = HashRing(["a:1", "b:1", "c:1"])
    keys = [str(i) for i in range(3000)]
    placement = {k: ring.node_for(k) for k in keys}
    counts = {n: list(placement.values()).count(n) for n in ("a:1", "b:1", "c:1")}
    assert all(600 < c < 1400 for c in counts.values()), counts
    # losing one server moves only that server's keys
    smaller = HashRing(["a:1", "b:1"])
    moved = [k for k in keys if placement[k] != "c:1" and smaller.node_for(k) != placement[k]]
    assert moved == []


def test_parse_servers() -> None:
    assert parse_servers(("127.0.0.1:11211,mc2:11212",)) == [("127.0.0.1", 11211), ("mc2", 11212)]
    with pytest.raises(ValueError, match="host:port"):
        parse_servers(("nohost",))
