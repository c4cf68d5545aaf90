"""The route registrar against a real memcached: every entry stands alone.

Time-dependent cases run on a ``MockClock`` that jumps only after 20 ms of real
idleness, so memcached's loopback answers (well under a millisecond) never see a
jump while the registrar's backoff sleeps take no real time. Tests wait on the
store's calls (an event per call), never by polling, so the clock jumps only to the
registrar's own deadlines.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio.testing

from conftest import Memcached
from reverse_http.metrics import ProxyMetrics
from reverse_http.proxy.registrar import RouteRegistrar
from reverse_http.store.base import RouteStore, StoreUnavailable
from reverse_http.store.memcached import open_memcached_store

ADDRESS = "proxy-a:3128"


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.02)


@dataclass
class Recording(RouteStore):
    """The real store, with every call recorded and chosen agents made to fail."""

    inner: RouteStore
    #: (time, op, agent id) of every call, as it started
    calls: list[tuple[float, str, str]] = field(default_factory=list)
    #: (op, agent id) of every call that succeeded
    done: list[tuple[str, str]] = field(default_factory=list)
    #: Agents whose operations raise StoreUnavailable ("*": all of them).
    down: set[str] = field(default_factory=set)
    _changed: trio.Event = field(default_factory=trio.Event)

    def _enter(self, op: str, agent_id: str) -> None:
        self.calls.append((trio.current_time(), op, agent_id))
        self._notify()
        if agent_id in self.down or "*" in self.down:
            raise StoreUnavailable(f"memcached test:1: {agent_id} is on a dead server")

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def set_route(self, agent_id: str, address: str) -> None:
        self._enter("set", agent_id)
        await self.inner.set_route(agent_id, address)
        self.done.append(("set", agent_id))
        self._notify()

    async def delete_route(self, agent_id: str, address: str) -> bool:
        self._enter("delete", agent_id)
        deleted = await self.inner.delete_route(agent_id, address)
        self.done.append(("delete", agent_id))
        self._notify()
        return deleted

    async def refresh_route(self, agent_id: str, address: str) -> bool:
        self._enter("refresh", agent_id)
        refreshed = await self.inner.refresh_route(agent_id, address)
        self.done.append(("refresh", agent_id))
        self._notify()
        return refreshed

    async def get_route(self, agent_id: str) -> str | None:
        return await self.inner.get_route(agent_id)

    def times(self, op: str, agent_id: str) -> list[float]:
        return [t for t, o, a in self.calls if (o, a) == (op, agent_id)]

    async def until(self, condition: Callable[[], bool], within: float = 10) -> None:
        """Wait (``within`` virtual seconds) until ``condition`` holds after a store call."""
        with trio.fail_after(within):
            while not condition():
                await self._changed.wait()

    async def until_written(self, *agent_ids: str) -> None:
        await self.until(lambda: all(("set", a) in self.done for a in agent_ids))
        for agent_id in agent_ids:
            assert await self.inner.get_route(agent_id) == ADDRESS


@dataclass
class Running:
    registrar: RouteRegistrar
    store: Recording
    connected: list[str]
    metrics: ProxyMetrics

    def up(self, *agent_ids: str) -> None:
        for agent_id in agent_ids:
            self.connected.append(agent_id)
            self.registrar.agent_up(agent_id)

    def errors(self, op: str, kind: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "reverse_http_store_errors_total", {"op": op, "kind": kind}
        )
        return value or 0.0


@asynccontextmanager
async def registrar(
    memcached: Memcached, ttl: float = 30.0, **kwargs: Any
) -> AsyncIterator[Running]:
    async with (
        open_memcached_store((memcached.address,), request_timeout=1, ttl=ttl) as mc,
        trio.open_nursery() as nursery,
    ):
        connected: list[str] = []
        store = Recording(mc)
        reg = RouteRegistrar(store, ADDRESS, ttl, lambda: list(connected), **kwargs)
        metrics = ProxyMetrics()
        reg.on_error = metrics.store_error
        nursery.start_soon(reg.run)
        yield Running(reg, store, connected, metrics)
        nursery.cancel_scope.cancel()


async def test_a_key_the_store_cannot_hold_blocks_no_one(
    memcached: Memcached, caplog: pytest.LogCaptureFixture
) -> None:
    """The finding: 'bad id' first in the queue kept every later agent unregistered."""
    caplog.set_level(logging.WARNING, "reverse_http.proxy.registrar")
    async with registrar(memcached, initial_backoff=0.05) as r:
        r.up("bad id", "4711", "x" * 251, "4712")
        await r.store.until_written("4711", "4712")
        await r.store.until(lambda: len(r.store.times("set", "bad id")) >= 2)
        assert r.registrar.healthy
        assert r.errors("set", "invalid_key") >= 3
        assert r.errors("set", "unavailable") == 0
    failing = [rec.getMessage() for rec in caplog.records if "failing" in rec.getMessage()]
    assert len(failing) == 1, failing  # one line per pass, naming both keys and why
    assert "set 'bad id'" in failing[0] and "a space at position 4" in failing[0]
    assert "251 characters long" in failing[0]


async def test_backoff_per_entry_is_exponential_and_capped(
    memcached: Memcached, clock: trio.testing.MockClock
) -> None:
    async with registrar(memcached, ttl=30.0, initial_backoff=0.5, max_backoff=10.0) as r:
        start = trio.current_time()
        r.up("bad id", "4711")
        await r.store.until(lambda: len(r.store.times("set", "bad id")) >= 9, within=120)
        tries = r.store.times("set", "bad id")
        gaps = [b - a for a, b in itertools.pairwise(tries)]
        assert gaps[:8] == pytest.approx([0.5, 1, 2, 4, 8, 10, 10, 10], abs=0.01)
        assert [r.registrar.backoff(n) for n in (1, 2, 5, 6, 50)] == [0.5, 1, 8, 10, 10]
        # meanwhile the good entry was written once, then refreshed on its own schedule
        assert r.store.times("set", "4711") == [pytest.approx(start, abs=0.01)]
        refreshes = r.store.times("refresh", "4711")
        expected = [start + 10 * i for i in range(1, 5)]
        assert refreshes[:4] == pytest.approx(expected, abs=0.01)
        assert await r.store.get_route("4711") == ADDRESS
        assert r.errors("set", "invalid_key") == len(tries)
        assert r.registrar.healthy


async def test_one_unanswered_key_neither_blocks_nor_unreadies(
    memcached: Memcached, clock: trio.testing.MockClock
) -> None:
    """A key on a dead server (or under contention) fails alone; the store still works."""
    async with registrar(memcached, ttl=3.0, max_backoff=2.0, health_grace=5.0) as r:
        r.store.down.add("4711")
        r.up("4711", "4712")
        await r.store.until_written("4712")
        # far beyond the health grace, after every store call: 4712's refreshes succeed
        unready: list[float] = []

        def sample() -> bool:
            if not r.registrar.healthy:
                unready.append(trio.current_time())
            return len(r.store.times("set", "4711")) > 20

        await r.store.until(sample, within=120)
        assert unready == []
        assert len(r.store.times("refresh", "4712")) > 10
        assert r.errors("set", "unavailable") == len(r.store.times("set", "4711"))
        r.store.down.clear()
        await r.store.until_written("4711")
        assert r.registrar.healthy


async def test_outage_unreadies_and_recovery_reregisters(
    memcached: Memcached, clock: trio.testing.MockClock
) -> None:
    async with registrar(memcached, ttl=3.0, max_backoff=2.0, health_grace=5.0) as r:
        r.up("4711", "4712")
        await r.store.until_written("4711", "4712")
        r.store.down.add("*")
        down_at = trio.current_time()
        await r.store.until(lambda: not r.registrar.healthy, within=30)
        # unready once the store failed for the grace with no success in between: the
        # first failure is the next refresh (<= 1 s after the outage), noticed at the
        # next retry (<= max_backoff later)
        assert 5.0 <= trio.current_time() - down_at <= 1.0 + 5.0 + 2.0
        assert r.errors("refresh", "unavailable") >= 2
        # the store comes back empty
        for agent_id in ("4711", "4712"):
            await r.store.inner.delete_route(agent_id, ADDRESS)
        r.store.done.clear()
        r.store.down.clear()
        await r.store.until_written("4711", "4712")
        assert r.registrar.healthy


async def test_a_blip_shorter_than_the_grace_keeps_the_proxy_ready(
    memcached: Memcached, clock: trio.testing.MockClock
) -> None:
    """Defect 5: a memcached restart must not take every proxy out of the LB at once."""
    async with registrar(memcached, ttl=3.0, max_backoff=2.0) as r:  # default grace, 30 s
        r.up("4711")
        await r.store.until_written("4711")
        await r.store.until(lambda: len(r.store.times("refresh", "4711")) >= 1)
        r.store.down.add("*")
        down_at = trio.current_time()
        unready: list[float] = []

        def sample(seconds: float) -> Callable[[], bool]:
            def check() -> bool:
                if not r.registrar.healthy:
                    unready.append(trio.current_time() - down_at)
                return trio.current_time() - down_at >= seconds

            return check

        await r.store.until(sample(25.0), within=60)
        assert unready == []  # 25 s of failures: still ready
        assert r.errors("refresh", "unavailable") + r.errors("set", "unavailable") >= 5
        # a longer outage does unready it, once the grace is over
        await r.store.until(lambda: not r.registrar.healthy, within=60)
        assert 30.0 <= trio.current_time() - down_at <= 1.0 + 30.0 + 2.0
        r.store.down.clear()
        await r.store.until(lambda: r.registrar.healthy, within=30)


async def test_disconnect_while_failing_supersedes_the_retry(memcached: Memcached) -> None:
    async with registrar(memcached, initial_backoff=0.05, max_backoff=0.2) as r:
        r.store.down.add("4711")
        r.up("4711")
        await r.store.until(lambda: len(r.store.times("set", "4711")) >= 2)
        r.connected.remove("4711")
        r.registrar.agent_down("4711")
        r.store.down.clear()
        await r.store.until(lambda: ("delete", "4711") in r.store.done)
        assert r.registrar.healthy
        calls = len(r.store.calls)
        with trio.move_on_after(1):  # nothing is left to retry: no further call comes
            await r.store.until(lambda: len(r.store.calls) > calls)
        assert len(r.store.calls) == calls
        assert await r.store.get_route("4711") is None
