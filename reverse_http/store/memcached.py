"""Routes in memcached (aiomcache, run from trio through trio-asyncio).

Compatible with the Go reference: key = agent id, value = the owning proxy's
HTTP address, byte for byte what a Go LB dials. Every key passes
:func:`~.base.route_key` first, so an id memcached cannot store is refused here rather
than sent (aiomcache would refuse it too, but as a client error indistinguishable from
a broken connection). Beyond the reference:

* entries carry a TTL that the owner keeps refreshing, so a crashed proxy's routes
  expire by themselves;
* deletion is conditional (compare-and-swap to an immediately expiring tombstone, an
  empty value) so a proxy can never delete a route another proxy has taken over;
* our entries carry an owner tag in memcached's 32-bit ``flags`` field
  (:func:`owner_tag`, derived from the value). Go reads only the value and ignores
  flags. A Go proxy that takes a key over copies the old flags with its new value
  (gomemcache's compare-and-swap), which then no longer match: the tag tells "one of
  ours, with a TTL" from "foreign, probably without one" reliably for both. It is
  hygiene, not security: anyone who can write memcached can forge it, which is why
  the LB server validates every value whoever wrote it (see ``store/route.py``).
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiomcache
import trio
import trio_asyncio

from .. import agentid
from .base import (
    InvalidRouteKey,
    Reclaim,
    RouteStore,
    StoredRoute,
    StoreUnavailable,
    route_key,
)

log = logging.getLogger(__name__)

#: Virtual nodes per server on the hash ring.
RING_REPLICAS = 160
#: A tombstone written by a conditional delete lives this long (memcached's minimum).
TOMBSTONE_TTL = 1
CAS_RETRIES = 5


@dataclass(frozen=True)
class Flagged:
    """A value with non-zero memcached flags (aiomcache returns plain bytes for flags 0)."""

    value: bytes
    flags: int


def owner_tag(value: bytes) -> int:
    """The flags our proxies store with ``value``: "written by us, with a TTL"."""
    return zlib.crc32(b"reverse-http owner\0" + value) | 1


def lease_tag(value: bytes) -> int:
    """The flags of a foreign entry an LB server leased (gave a TTL) after a failed dial."""
    return zlib.crc32(b"reverse-http lease\0" + value) | 1


async def _from_flags(value: bytes, flags: int) -> Flagged:
    return Flagged(value, flags)


async def _to_flags(item: Flagged) -> tuple[bytes, int]:
    return item.value, item.flags


def _split(raw: bytes | Flagged) -> tuple[bytes, int]:
    return (raw.value, raw.flags) if isinstance(raw, Flagged) else (raw, 0)


def parse_servers(addresses: tuple[str, ...] | list[str]) -> list[tuple[str, int]]:
    servers = []
    for item in addresses:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            host, sep, port = part.rpartition(":")
            if not sep or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"memcached address {part!r}: expected host:port")
            servers.append((host.strip("[]") or "localhost", int(port)))
    if not servers:
        raise ValueError("no memcached address given")
    return servers


def memcached_key(agent_id: str) -> bytes:
    """The key bytes for ``agent_id`` (at most 250); raises :class:`InvalidRouteKey`."""
    return route_key(agent_id).encode("ascii")


class HashRing:
    """Consistent hashing: adding or losing a server moves only its share of keys."""

    def __init__(self, nodes: list[str]) -> None:
        points = []
        for node in nodes:
            for i in range(RING_REPLICAS):
                digest = hashlib.md5(f"{node}-{i}".encode(), usedforsecurity=False).digest()
                points.append((int.from_bytes(digest[:4], "big"), node))
        points.sort()
        self._hashes = [h for h, _ in points]
        self._nodes = [n for _, n in points]

    def node_for(self, key: str) -> str:
        digest = hashlib.md5(key.encode(), usedforsecurity=False).digest()
        h = int.from_bytes(digest[:4], "big")
        i = bisect.bisect(self._hashes, h) % len(self._hashes)
        return self._nodes[i]


class MemcachedStore(RouteStore):
    def __init__(self, servers: list[tuple[str, int]], timeout: float, ttl: float) -> None:
        self._servers = {f"{h}:{p}": (h, p) for h, p in servers}
        self._ring = HashRing(list(self._servers))
        self._clients: dict[str, Any] = {}
        self._timeout = timeout
        self._ttl = max(1, round(ttl))

    def _client(self, node: str) -> Any:
        client = self._clients.get(node)
        if client is None:
            host, port = self._servers[node]
            client = aiomcache.FlagClient(
                host,
                port,
                pool_size=4,
                get_flag_handler=_from_flags,
                set_flag_handler=_to_flags,
            )
            self._clients[node] = client
        return client

    async def _call(self, key: bytes, method: str, *args: Any, **kwargs: Any) -> Any:
        """``client.method(key, *args)`` on the server that owns ``key``."""
        node = self._ring.node_for(key.decode("ascii"))
        return await self._on(node, method, key, *args, **kwargs)

    async def ping(self) -> None:
        """Ask every server for its version; fine while any one answers.

        With some servers down the LB still reaches the routes on the others, so only
        a store with no server answering is unavailable.
        """
        errors = []
        for node in self._servers:
            try:
                await self._on(node, "version")
                return
            except StoreUnavailable as exc:
                errors.append(str(exc))
        raise StoreUnavailable("; ".join(errors))

    async def _on(self, node: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """``client.method(*args)`` on ``node``; StoreUnavailable if it does not answer."""
        client = self._client(node)
        try:
            with trio.fail_after(self._timeout):
                call = trio_asyncio.aio_as_trio(getattr(client, method))
                return await call(*args, **kwargs)
        except aiomcache.exceptions.ValidationException as exc:
            # Refused before anything was sent: the connection is fine.
            raise InvalidRouteKey(f"memcached {node}: {exc}") from None
        except (trio.TooSlowError, OSError, aiomcache.exceptions.ClientException) as exc:
            # A timed-out request may leave a half-read connection behind: start afresh.
            self._clients.pop(node, None)
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await trio_asyncio.aio_as_trio(client.close)()
            reason = "timed out" if isinstance(exc, trio.TooSlowError) else str(exc)
            raise StoreUnavailable(f"memcached {node}: {reason or type(exc).__name__}") from None

    async def set_route(self, agent_id: str, address: str) -> None:
        key, value = memcached_key(agent_id), address.encode()
        item = Flagged(value, owner_tag(value))
        for _ in range(CAS_RETRIES):
            old, token = await self._call(key, "gets")
            if old is None or token is None:
                if await self._call(key, "add", item, exptime=self._ttl):
                    return
            elif await self._call(key, "cas", item, token, exptime=self._ttl):
                return
        raise StoreUnavailable(f"route for agent {agent_id}: too much contention")

    async def delete_route(self, agent_id: str, address: str) -> bool:
        if not agentid.is_valid(agent_id):
            return False
        key = memcached_key(agent_id)
        for _ in range(CAS_RETRIES):
            old, token = await self._call(key, "gets")
            if old is None or _split(old)[0] != address.encode() or token is None:
                return False
            if await self._call(key, "cas", b"", token, exptime=TOMBSTONE_TTL):
                return True
        return False

    async def refresh_route(self, agent_id: str, address: str) -> bool:
        """The owner's heartbeat: keep our entry alive, and make an untagged copy ours.

        An entry holding our address without our tag (a Go proxy that ran at this
        address before us, a hand-written entry) is foreign and may have no TTL; it is
        rewritten with the tag and a TTL, so it ends when we stop refreshing it.
        """
        key, value = memcached_key(agent_id), address.encode()
        current, token = await self._call(key, "gets")
        if current is not None:
            current_value, flags = _split(current)
            if current_value == value:
                if flags == owner_tag(value):
                    if await self._call(key, "touch", self._ttl):
                        return True
                elif token is not None:
                    # if it changed meanwhile, the CAS fails and the next refresh looks again
                    item = Flagged(value, owner_tag(value))
                    await self._call(key, "cas", item, token, exptime=self._ttl)
                    return True
            elif current_value:
                return False
        # missing (store restarted, entry evicted) or a tombstone: take it again
        await self.set_route(agent_id, address)
        return True

    async def get_route(self, agent_id: str) -> str | None:
        if not agentid.is_valid(agent_id):
            return None
        raw = await self._call(memcached_key(agent_id), "get")
        if raw is None:
            return None
        value = _split(raw)[0]
        return value.decode("utf-8", "replace") if value else None

    async def lookup(self, agent_id: str) -> StoredRoute | None:
        if not agentid.is_valid(agent_id):
            return None
        raw, token = await self._call(memcached_key(agent_id), "gets")
        if raw is None:
            return None
        value, flags = _split(raw)
        return StoredRoute(
            value,
            owned=bool(value) and flags == owner_tag(value),
            leased=bool(value) and flags == lease_tag(value),
            token=token,
        )

    async def reclaim(self, agent_id: str, seen: StoredRoute, how: Reclaim) -> bool:
        if seen.owned or not seen.value or seen.token is None or not agentid.is_valid(agent_id):
            return False
        new: bytes | Flagged
        if how == "delete":
            new, exptime = b"", TOMBSTONE_TTL
        elif how == "lease":
            new, exptime = Flagged(seen.value, lease_tag(seen.value)), self._ttl
        else:  # as its writer left it: no flags, no TTL
            new, exptime = seen.value, 0
        key = memcached_key(agent_id)
        return bool(await self._call(key, "cas", new, seen.token, exptime=exptime))

    async def aclose(self) -> None:
        for client in self._clients.values():
            with trio.move_on_after(1):
                await trio_asyncio.aio_as_trio(client.close)()
        self._clients.clear()


@asynccontextmanager
async def open_memcached_store(
    addresses: tuple[str, ...], request_timeout: float, ttl: float
) -> AsyncIterator[MemcachedStore]:
    """The store and the one asyncio loop (per process) that aiomcache runs on."""
    async with trio_asyncio.open_loop():
        store = MemcachedStore(parse_servers(addresses), request_timeout, ttl)
        try:
            yield store
        finally:
            with trio.CancelScope(shield=True):
                await store.aclose()
