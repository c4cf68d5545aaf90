"""Keeps the route store in line with the agents connected to this proxy.

Agent connects and disconnects are queued (coalesced per agent, so memory is
bounded by the number of agents) and written by one task, which also refreshes
every connected agent's route before its TTL runs out. Each agent's entry stands
alone: an operation that fails is logged, counted (``on_error``) and retried on
that entry's own exponential backoff, capped, while the other entries carry on.
So one key the store refuses, or one slow key, cannot hold up anyone else's route.

When the store is down, every entry fails and retries that way: the proxy keeps
serving its own agents, the outage is logged once, and routes are written again
(and every connected agent refreshed) as soon as the store answers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeAlias

import trio

from ..agentid import shown
from ..store.base import InvalidRouteKey, Outage, RouteStore, StoreError, StoreUnavailable

log = logging.getLogger(__name__)

#: Store operations, as ``on_error`` and the ``store_errors_total{op}`` metric name them.
Op: TypeAlias = Literal["set", "delete", "refresh"]
#: How a failure is reported: the store did not answer, or refused the key itself.
ErrorKind: TypeAlias = Literal["unavailable", "invalid_key"]

INITIAL_BACKOFF = 0.5
MAX_BACKOFF = 10.0
#: The store may fail this long before the proxy reports itself unready (see ``healthy``).
HEALTH_GRACE = 30.0
#: Entries named in one summary log line; the rest are counted.
LOG_NAMES = 5
#: Store operations in flight at once; matches the memcached client's pool per server.
CONCURRENCY = 4


@dataclass
class _Failing:
    """The retry state of one entry whose last store operation failed."""

    since: float
    due: float = 0.0
    attempts: int = 0
    unavailable: bool = False
    #: The failure was logged above debug, so its end is too.
    reported: bool = False


class RouteRegistrar:
    """Writes agent routes to the store, one independent entry per agent.

    :attr:`healthy` (the proxy's ``store`` readiness check) is about the store, not one
    key: it turns false once operations have failed because the store did not answer
    for ``health_grace`` seconds with no success in between (``--store.readiness-grace``);
    the next success makes it true again. A short blip (a memcached restart) leaves every
    proxy in its load balancer, and meanwhile each keeps serving its own agents. A key
    the store cannot hold (:class:`InvalidRouteKey`) never counts against it.

    New failures and recoveries are logged once per pass, as one line each; repeats go
    to debug, and a whole-store outage is logged once.
    """

    def __init__(
        self,
        store: RouteStore,
        address: str,
        ttl: float,
        connected_agents: Callable[[], list[str]],
        *,
        initial_backoff: float = INITIAL_BACKOFF,
        max_backoff: float = MAX_BACKOFF,
        health_grace: float = HEALTH_GRACE,
        concurrency: int = CONCURRENCY,
    ) -> None:
        self.store = store
        self.address = address
        self._refresh_every = max(0.5, ttl / 3)
        self._connected = connected_agents
        self._pending: dict[str, bool] = {}  # agent id -> True: register, False: delete
        self._failing: dict[str, _Failing] = {}
        self._wake = trio.Event()
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._outage = Outage(health_grace)
        self._concurrency = max(1, concurrency)
        self._last_ok: float | None = None
        self._reported_healthy = True
        self._refresh_now = False
        self._new_failures: list[str] = []
        self._recovered: list[str] = []
        self.errors = 0
        #: Told about every failed store operation: (op, kind), for the metrics.
        self.on_error: Callable[[Op, ErrorKind], None] | None = None

    @property
    def healthy(self) -> bool:
        return self._outage.ready

    def backoff(self, attempts: int) -> float:
        """Delay before the next try of an entry that has failed ``attempts`` times."""
        return float(min(self._initial_backoff * 2 ** (attempts - 1), self._max_backoff))

    def agent_up(self, agent_id: str) -> None:
        self._pending[agent_id] = True
        self._wake.set()

    def agent_down(self, agent_id: str) -> None:
        self._pending[agent_id] = False
        self._wake.set()

    async def run(self) -> None:
        next_refresh = trio.current_time() + self._refresh_every
        while True:
            retries = [f.due for a, f in self._failing.items() if a in self._pending]
            deadline = min([next_refresh, *retries])
            with trio.move_on_at(deadline):
                await self._wake.wait()
            self._wake = trio.Event()
            now = trio.current_time()
            jobs: list[tuple[str, Op]] = [
                (agent_id, "set" if up else "delete")
                for agent_id, up in self._pending.items()
                if self._due(agent_id, now)
            ]
            if now >= next_refresh or self._refresh_now:
                self._refresh_now = False
                jobs += [(a, "refresh") for a in self._connected() if a not in self._pending]
                next_refresh = now + self._refresh_every
            await self._run_jobs(jobs)

    def _due(self, agent_id: str, now: float) -> bool:
        failing = self._failing.get(agent_id)
        return failing is None or failing.due <= now

    async def _run_jobs(self, jobs: list[tuple[str, Op]]) -> None:
        todo = iter(jobs)

        async def worker() -> None:
            for agent_id, op in todo:
                await self._one(agent_id, op)

        async with trio.open_nursery() as nursery:
            for _ in range(min(self._concurrency, len(jobs))):
                nursery.start_soon(worker)
        if self._new_failures:
            log.warning(
                "route store: %s failing, retrying with backoff: %s",
                _entries(len(self._new_failures)),
                _listed(self._new_failures),
            )
            self._new_failures.clear()
        if self._recovered:
            log.info(
                "route store: %s written again: %s",
                _entries(len(self._recovered)),
                _listed(self._recovered),
            )
            self._recovered.clear()

    async def _one(self, agent_id: str, op: Op) -> None:
        try:
            if op == "set":
                await self.store.set_route(agent_id, self.address)
            elif op == "delete":
                await self.store.delete_route(agent_id, self.address)
            elif not await self.store.refresh_route(agent_id, self.address):
                log.debug("agent %s is registered elsewhere; not refreshing", shown(agent_id))
        except StoreError as exc:
            self._failed(agent_id, op, exc)
            return
        self._succeeded(agent_id, op)

    def _succeeded(self, agent_id: str, op: Op) -> None:
        self._last_ok = trio.current_time()
        self._outage.succeeded()
        # a newer event for this agent may have arrived while we awaited
        if op != "refresh" and self._pending.get(agent_id) is (op == "set"):
            del self._pending[agent_id]
        failing = self._failing.pop(agent_id, None)
        if failing is not None:
            log.debug(
                "route store: %s for agent %s succeeded after %d failed attempt(s)",
                op,
                shown(agent_id),
                failing.attempts,
            )
            if failing.reported:
                self._recovered.append(shown(agent_id))
        if not self._reported_healthy and self.healthy:
            self._reported_healthy = True
            self._refresh_now = True
            for other in self._failing.values():
                if other.unavailable:
                    other.due = self._last_ok
            self._wake.set()
            log.info("route store reachable again; re-registering every connected agent")

    def _failed(self, agent_id: str, op: Op, exc: StoreError) -> None:
        now = trio.current_time()
        kind: ErrorKind = "invalid_key" if isinstance(exc, InvalidRouteKey) else "unavailable"
        self.errors += 1
        if self.on_error is not None:
            self.on_error(op, kind)
        failing = self._failing.setdefault(agent_id, _Failing(since=now))
        failing.attempts += 1
        failing.unavailable = isinstance(exc, StoreUnavailable)
        if failing.unavailable:
            self._outage.failed()
        delay = self.backoff(failing.attempts)
        failing.due = now + delay
        if op == "refresh":
            # retried as a registration, which also re-creates a lost route
            self._pending.setdefault(agent_id, True)
        if failing.unavailable and not self.healthy and self._reported_healthy:
            self._reported_healthy = False
            log.error("route store unreachable, serving local agents only: %s", exc)
        if failing.attempts == 1 and self._reported_healthy:
            failing.reported = True
            self._new_failures.append(f"{op} {shown(agent_id)}: {exc}")
        log.debug(
            "route store: %s for agent %s failed (attempt %d, retrying in %gs): %s",
            op,
            shown(agent_id),
            failing.attempts,
            delay,
            exc,
        )

    async def unregister_all(self) -> None:
        """On shutdown: remove our routes so LBs stop sending clients here."""
        with trio.move_on_after(2):
            for agent_id in self._connected():
                try:
                    await self.store.delete_route(agent_id, self.address)
                except StoreUnavailable:
                    return
                except StoreError:
                    continue


def _entries(count: int) -> str:
    return f"{count} entry" if count == 1 else f"{count} entries"


def _listed(items: list[str]) -> str:
    text = "; ".join(items[:LOG_NAMES])
    return text if len(items) <= LOG_NAMES else f"{text}; and {len(items) - LOG_NAMES} more"
