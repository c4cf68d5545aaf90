"""Where each agent's owning proxy is recorded, for the LB servers of an HA cluster."""

from __future__ import annotations

import abc

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
