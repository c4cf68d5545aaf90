"""Keeps the route store in line with the agents connected to this proxy.

Agent connects and disconnects are queued (coalesced per agent, so memory is
bounded by the number of agents) and written by one task. That task also
refreshes every connected agent's route before its TTL runs out. When the store
is down, the proxy keeps serving its own agents: the outage is logged once,
retried with backoff, and every connected agent is re-registered on recovery.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from ..store.base import RouteStore, StoreUnavailable

log = logging.getLogger(__name__)


class RouteRegistrar:
    def __init__(
        self,
        store: RouteStore,
        address: str,
        ttl: float,
        connected_agents: Callable[[], list[str]],
        *,
        max_backoff: float = 10.0,
    ) -> None:
        self.store = store
        self.address = address
        self._refresh_every = max(0.5, ttl / 3)
        self._connected = connected_agents
        self._pending: dict[str, bool] = {}  # agent id -> True: register, False: delete
        self._wake = trio.Event()
        self._max_backoff = max_backoff
        self.healthy = True
        self.errors = 0
        #: Told about every failed store call (metrics).
        self.on_error: Callable[[], None] | None = None

    def agent_up(self, agent_id: str) -> None:
        self._pending[agent_id] = True
        self._wake.set()

    def agent_down(self, agent_id: str) -> None:
        self._pending[agent_id] = False
        self._wake.set()

    async def run(self) -> None:
        backoff = 0.5
        next_refresh = trio.current_time() + self._refresh_every
        while True:
            with trio.move_on_at(next_refresh):
                await self._wake.wait()
            self._wake = trio.Event()
            try:
                await self._flush()
                if trio.current_time() >= next_refresh or not self.healthy:
                    await self._refresh_all()
                    next_refresh = trio.current_time() + self._refresh_every
            except StoreUnavailable as exc:
                self.errors += 1
                if self.on_error is not None:
                    self.on_error()
                if self.healthy:
                    log.error("route store unreachable, serving local agents only: %s", exc)
                    self.healthy = False
                await trio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                next_refresh = trio.current_time()
                continue
            if not self.healthy:
                log.info(
                    "route store reachable again; re-registered %d agent(s)", len(self._connected())
                )
                self.healthy = True
            backoff = 0.5

    async def _flush(self) -> None:
        while self._pending:
            agent_id, up = next(iter(self._pending.items()))
            if up:
                await self.store.set_route(agent_id, self.address)
            else:
                await self.store.delete_route(agent_id, self.address)
            # a newer event for this agent may have arrived while we awaited
            if self._pending.get(agent_id) is up:
                del self._pending[agent_id]

    async def _refresh_all(self) -> None:
        for agent_id in self._connected():
            if agent_id in self._pending:
                continue
            if not await self.store.refresh_route(agent_id, self.address):
                log.debug("agent %s is registered to another proxy; not refreshing", agent_id)

    async def unregister_all(self) -> None:
        """On shutdown: remove our routes so LBs stop sending clients here."""
        with trio.move_on_after(2):
            for agent_id in self._connected():
                try:
                    await self.store.delete_route(agent_id, self.address)
                except StoreUnavailable:
                    return
