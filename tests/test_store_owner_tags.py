"""Our memcached entries byte for byte: what a Go LB reads, and how owners are told apart.

The Go LB (pkg/proxy/loadbalancer.go, pkg/store/memcached/client.go) does
``mc.Get(agentID)``, takes ``string(item.Value)`` and, unless it is empty,
``net.Dial("tcp", value)``; gomemcache parses ``VALUE <key> <flags> <bytes>`` with
flags as a uint32 and ignores them afterwards. So our values must be exactly a
``net.Dial`` address, our flags a uint32, and a tombstone must be empty, which the
Go LB answers as "no route" without dialling anything.
"""

from __future__ import annotations

import re

import pytest

from conftest import Memcached
from reverse_http.store.memcached import lease_tag, open_memcached_store, owner_tag
from tests.memcached_raw import RawMemcached, entry_of, meta_of

#: gomemcache's reply-line parser, in effect: fmt.Sscanf("VALUE %s %d %d %d").
GO_VALUE_LINE = re.compile(rb"VALUE (\S+) ([0-9]+) ([0-9]+)")
#: What Go's net.SplitHostPort accepts and net.Dial can dial: host:port or [v6]:port.
GO_DIAL_ADDRESS = re.compile(rb"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]*):[0-9]{1,5}")


@pytest.mark.parametrize("address", ["127.0.0.1:3128", "proxy-1.example:3128", "[fd00::1]:3128"])
async def test_a_go_lb_reads_our_entries_as_plain_addresses(
    memcached: Memcached, address: str
) -> None:
    async with open_memcached_store((memcached.address,), request_timeout=1, ttl=30) as store:
        await store.set_route("4711", address)
        with RawMemcached(memcached.address) as raw:
            got = raw.get_line("4711")
            assert got is not None
            line, data = got
            match = GO_VALUE_LINE.fullmatch(line)
            assert match is not None, line
            assert match[1] == b"4711"
            assert 0 < int(match[2]) < 2**32  # the owner tag fits gomemcache's uint32
            assert int(match[3]) == len(data)
            assert data == address.encode()  # nothing but the address: Go dials it as is
            assert GO_DIAL_ADDRESS.fullmatch(data)
            meta = raw.meta("4711")
            assert meta is not None and 0 < meta.ttl <= 30 and meta.flags == owner_tag(data)

            assert await store.delete_route("4711", address) is True
            got = raw.get_line("4711")
            # the tombstone: empty, so a Go LB says "target addr ... is empty" (no dial)
            assert got is None or got[1] == b""


async def test_owner_tag_tells_our_entries_from_a_go_proxys(memcached: Memcached) -> None:
    async with open_memcached_store((memcached.address,), request_timeout=1, ttl=30) as store:
        await store.set_route("4711", "127.0.0.1:3128")
        ours = await store.lookup("4711")
        assert ours is not None and ours.owned and not ours.leased
        with RawMemcached(memcached.address) as raw:
            # a Go proxy takes the agent over: gets, then cas with the OLD flags, no TTL
            old = raw.gets("4711")
            assert old is not None
            reply = raw.storage("cas", "4711", b"10.0.0.9:3128", old.flags, 0, old.cas)
            assert reply == b"STORED"
            taken = await store.lookup("4711")
            assert taken is not None and taken.value == b"10.0.0.9:3128"
            assert not taken.owned  # the copied tag belongs to another value
            # the old owner neither refreshes nor deletes the Go proxy's route
            assert await store.refresh_route("4711", "127.0.0.1:3128") is False
            assert await store.delete_route("4711", "127.0.0.1:3128") is False
            assert meta_of(raw, "4711").ttl == -1
            assert entry_of(raw, "4711").cas == old.cas + 1  # only the Go proxy's cas wrote
            # a Go proxy's first write: plain set, flags 0, no TTL
            raw.set("4712", b":3128")
            go = await store.lookup("4712")
            assert go is not None and go.value == b":3128" and not go.owned and not go.leased


async def test_the_owners_heartbeat_makes_an_untagged_copy_of_its_route_its_own(
    memcached: Memcached,
) -> None:
    """A TTL-less entry naming our address (a Go proxy ran here before us) gets a TTL."""
    async with open_memcached_store((memcached.address,), request_timeout=1, ttl=30) as store:
        with RawMemcached(memcached.address) as raw:
            raw.set("4711", b"127.0.0.1:3128")
            assert meta_of(raw, "4711").ttl == -1
            assert await store.refresh_route("4711", "127.0.0.1:3128") is True
            meta = raw.meta("4711")
            assert meta is not None and 0 < meta.ttl <= 30
            assert meta.flags == owner_tag(b"127.0.0.1:3128")
            assert entry_of(raw, "4711").value == b"127.0.0.1:3128"
            # a tagged entry is only touched: same value and tag, TTL renewed
            before = raw.gets("4711")
            assert await store.refresh_route("4711", "127.0.0.1:3128") is True
            assert raw.gets("4711") == before


async def test_reclaim_changes_only_the_foreign_entry_it_saw(memcached: Memcached) -> None:
    async with open_memcached_store((memcached.address,), request_timeout=1, ttl=30) as store:
        with RawMemcached(memcached.address) as raw:
            raw.set("4711", b"10.0.0.9:3128")
            seen = await store.lookup("4711")
            assert seen is not None
            assert await store.reclaim("4711", seen, "lease") is True
            meta = raw.meta("4711")
            assert meta is not None and 0 < meta.ttl <= 30
            assert meta.flags == lease_tag(b"10.0.0.9:3128")
            leased = await store.lookup("4711")
            assert leased is not None and leased.leased and not leased.owned
            assert await store.reclaim("4711", seen, "delete") is False  # stale token
            assert await store.reclaim("4711", leased, "unlease") is True
            meta = raw.meta("4711")
            assert meta is not None and meta.ttl == -1 and meta.flags == 0
            # a newer write between read and reclaim is never lost
            seen = await store.lookup("4711")
            assert seen is not None
            raw.set("4711", b"10.0.0.10:3128")
            assert await store.reclaim("4711", seen, "delete") is False
            assert entry_of(raw, "4711").value == b"10.0.0.10:3128"
            # our own entries are never reclaimed by an LB
            await store.set_route("4711", "10.0.0.11:3128")
            ours = await store.lookup("4711")
            assert ours is not None and ours.owned
            assert await store.reclaim("4711", ours, "delete") is False
            assert entry_of(raw, "4711").value == b"10.0.0.11:3128"
