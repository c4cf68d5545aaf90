"""Where each agent's owning proxy is recorded, for the LB servers of an HA cluster."""

from __future__ import annotations

import abc


class StoreUnavailable(Exception):
    """The backend did not answer (in time); the caller retries later."""


class RouteStore(abc.ABC):
    """agent id -> HTTP address of the proxy holding that agent's connection."""

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
    async def get_route(self, agent_id: str) -> str | None: ...

    async def aclose(self) -> None:
        return None


class MemoryStore(RouteStore):
    """The ``none`` store: routes live in this process only (single proxy)."""

    def __init__(self) -> None:
        self._routes: dict[str, str] = {}

    async def set_route(self, agent_id: str, address: str) -> None:
        self._routes[agent_id] = address

    async def delete_route(self, agent_id: str, address: str) -> bool:
        if self._routes.get(agent_id) == address:
            del self._routes[agent_id]
            return True
        return False

    async def refresh_route(self, agent_id: str, address: str) -> bool:
        current = self._routes.setdefault(agent_id, address)
        return current == address

    async def get_route(self, agent_id: str) -> str | None:
        return self._routes.get(agent_id)
