"""Where each agent's owning proxy is recorded, for the LB servers of an HA cluster."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Literal, TypeAlias

import trio

from .. import agentid


class StoreError(Exception):
    """A route store operation failed."""


class StoreUnavailable(StoreError):
    """The backend did not answer (in time); the caller retries later."""


class InvalidRouteKey(StoreError, ValueError):
    """The agent id cannot be a store key; nothing was sent to the backend."""


def route_key(agent_id: str) -> str:
    """The store key for ``agent_id``: the id itself, as in the Go reference.

    Every store checks it here, so a key the backend would refuse (memcached: spaces,
    control characters, more than 250 bytes) never reaches it; valid ids are at most
    ``agentid.MAX_LENGTH`` ASCII characters, within ``agentid.MAX_KEY_BYTES``.
    """
    reason = agentid.problem(agent_id)
    if reason is not None:
        raise InvalidRouteKey(f"no route for agent {agentid.shown(agent_id)}: {reason}")
    return agent_id


class Outage:
    """How long the store has failed with no success since: readiness with a grace.

    A shared store going away takes every daemon that depends on it down at once, so
    readiness must not follow each failed request: only a failure that lasted
    ``grace`` seconds (no success in between) makes the daemon unready. ``grace`` 0
    makes the first failure count.
    """

    def __init__(self, grace: float) -> None:
        self.grace = grace
        #: When the failing began (trio time); None while the store works.
        self.since: float | None = None

    def failed(self) -> bool:
        """A request failed because the store did not answer; True if this starts an outage."""
        if self.since is None:
            self.since = trio.current_time()
            return True
        return False

    def succeeded(self) -> bool:
        """A request succeeded; True if that ended an outage."""
        ended, self.since = self.since is not None, None
        return ended

    @property
    def ready(self) -> bool:
        return self.since is None or trio.current_time() - self.since < self.grace

    def failing_for(self) -> float:
        """Seconds since the failing began (0 while the store works)."""
        return 0.0 if self.since is None else trio.current_time() - self.since


#: How an LB server reclaims a foreign entry it read (see :meth:`RouteStore.reclaim`).
Reclaim: TypeAlias = Literal["delete", "lease", "unlease"]


@dataclass(frozen=True)
class StoredRoute:
    """A route entry as the LB server read it: untrusted bytes plus who wrote them."""

    value: bytes
    #: Written by one of our proxies (owner tag): it has a TTL its owner keeps refreshing.
    owned: bool = True
    #: A foreign entry an LB server gave a lease (a TTL) after its proxy was unreachable.
    leased: bool = False
    #: The backend's compare-and-swap token, so a reclaim never hits a newer write.
    token: int | None = None


class RouteStore(abc.ABC):
    """agent id -> HTTP address of the proxy holding that agent's connection.

    Writes (set, refresh) of an id that cannot be a key raise :class:`InvalidRouteKey`;
    reads and deletes answer "no route", since no such route can exist.
    """

    @abc.abstractmethod
    async def set_route(self, agent_id: str, address: str) -> None:
        """Record that ``address`` owns ``agent_id`` (compare-and-swap over any old value)."""

    @abc.abstractmethod
    async def delete_route(self, agent_id: str, address: str) -> bool:
        """Forget the route only while it still points at ``address``."""

    @abc.abstractmethod
    async def refresh_route(self, agent_id: str, address: str) -> bool:
        """Extend our route's lifetime; re-create it if it vanished (store restart).

        Returns False when another proxy owns the agent now; the route is left alone.
        """

    @abc.abstractmethod
    async def get_route(self, agent_id: str) -> str | None:
        """The owning proxy's address, or None when no proxy holds ``agent_id``."""

    async def lookup(self, agent_id: str) -> StoredRoute | None:
        """The entry for ``agent_id`` as stored, for the LB server to validate itself."""
        value = await self.get_route(agent_id)
        return None if value is None else StoredRoute(value.encode())

    async def reclaim(self, agent_id: str, seen: StoredRoute, how: Reclaim) -> bool:
        """Change a foreign entry only if it is still exactly ``seen``; True if changed.

        ``delete``: the LB can never use it (malformed, outside the allow-list).
        ``lease``: its proxy cannot be reached, so it expires unless that proxy answers
        again; ``unlease``: it did, so the lease is lifted. Owned entries are left alone.
        """
        return False

    async def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the backend answers (health probes)."""
        return None

    async def aclose(self) -> None:
        return None


class MemoryStore(RouteStore):
    """The ``none`` store: routes live in this process only (single proxy)."""

    def __init__(self) -> None:
        self._routes: dict[str, str] = {}

    async def set_route(self, agent_id: str, address: str) -> None:
        self._routes[route_key(agent_id)] = address

    async def delete_route(self, agent_id: str, address: str) -> bool:
        if self._routes.get(agent_id) == address:
            del self._routes[agent_id]
            return True
        return False

    async def refresh_route(self, agent_id: str, address: str) -> bool:
        current = self._routes.setdefault(route_key(agent_id), address)
        return current == address

    async def get_route(self, agent_id: str) -> str | None:
        return self._routes.get(agent_id)
