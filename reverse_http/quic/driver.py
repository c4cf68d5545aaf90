"""Time and output for every connection of one UDP endpoint, from one task.

Connections have no task of their own. Datagrams are fed to them synchronously
by the endpoint's receive loop, which services every connection it touched once
per receive batch; application writes service their connection inline. What is
left is time: one heap of deadlines for the whole endpoint, and one task that
sleeps until the earliest and services the connections that are due. An idle
connection therefore costs one heap entry, not a task and its timers.
"""

from __future__ import annotations

import heapq
import itertools
import math
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from .endpoint import crash_log

if TYPE_CHECKING:
    from .connection import Connection


Address = Any
#: Sends without blocking; returns the sizes refused as too big for the path, if any.
SendNowait = Callable[[list[tuple[bytes, Address]]], "list[int] | None"]

#: Rebuild the heap when stale entries outnumber live connections this much.
_COMPACT_FACTOR = 4


class Driver:
    def __init__(self, send: SendNowait) -> None:
        #: Never blocks: the endpoint queues what the socket does not take at once.
        self.send = send
        #: Entries refer weakly: a removed connection's old deadline must not keep its
        #: TLS state and packet spaces alive until that deadline comes (up to the idle
        #: timeout after a flood of half-open handshakes).
        self._heap: list[tuple[float, int, weakref.ref[Connection]]] = []
        self._order = itertools.count()
        self._dirty: dict[Connection, None] = {}
        self._flushing = False
        #: The scope the driver sleeps in; an earlier deadline moves its deadline.
        self._sleep: trio.CancelScope | None = None
        #: The least receive hold the connections serviced since ``take_hold`` allow.
        self._hold = math.inf
        self.connections: set[Connection] = set()

    def add(self, conn: Connection) -> None:
        self.connections.add(conn)

    def remove(self, conn: Connection) -> None:
        self.connections.discard(conn)
        self._dirty.pop(conn, None)
        conn._timer_at = math.inf

    def touch(self, conn: Connection) -> None:
        """``conn`` has input or output pending; the next :meth:`flush` services it."""
        self._dirty[conn] = None

    def flush(self) -> None:
        """Service every touched connection (synchronously, never re-entered)."""
        if self._flushing:
            return
        self._flushing = True
        try:
            now = trio.current_time()
            dirty = self._dirty
            while dirty:
                conn = next(iter(dirty))
                del dirty[conn]
                try:
                    hold = conn.receive_hold()
                    if hold < self._hold:
                        self._hold = hold
                    conn._service(now)
                except Exception:
                    # A bug costs this connection, never the endpoint's others.
                    crash_log.exception("servicing %r failed; aborting it", conn)
                    conn._fail("internal error")
        finally:
            self._flushing = False

    def take_hold(self) -> float:
        """How long the endpoint may wait before reading again: the least that the
        connections serviced since the last call allow (0 if none was serviced)."""
        hold, self._hold = self._hold, math.inf
        return 0.0 if hold == math.inf else hold

    def schedule(self, conn: Connection, at: float) -> None:
        """Service ``conn`` at ``at`` (replacing its previous deadline)."""
        if at == conn._timer_at:
            return
        conn._timer_at = at
        if at == math.inf:
            return
        heapq.heappush(self._heap, (at, next(self._order), weakref.ref(conn)))
        sleep = self._sleep
        if sleep is not None and at < sleep.deadline:
            # Moving the deadline wakes nobody now (waking the driver task to sleep
            # again cost a task step per request on each side: an ACK timer is earlier
            # than the keepalive, a PTO earlier than an ACK timer).
            sleep.deadline = at
        if len(self._heap) > _COMPACT_FACTOR * len(self.connections) + 64:
            self._compact()

    def _compact(self) -> None:
        self._heap = [
            (c._timer_at, next(self._order), weakref.ref(c))
            for c in self.connections
            if c._timer_at < math.inf
        ]
        heapq.heapify(self._heap)

    def _next_deadline(self) -> float:
        heap = self._heap
        while heap:
            at, _, ref = heap[0]
            conn = ref()
            if conn is not None and conn._timer_at == at:
                return at
            heapq.heappop(heap)  # superseded by a later schedule(), or removed
        return math.inf

    def pending_deadlines(self) -> int:
        return len(self._heap)

    async def run(self) -> None:
        """Sleep until the earliest deadline, service what is due, repeat."""
        while True:
            self.flush()
            with trio.CancelScope(deadline=self._next_deadline()) as sleep:
                self._sleep = sleep
                try:
                    await trio.sleep_forever()
                finally:
                    self._sleep = None
            self._take_due(trio.current_time())

    def _take_due(self, now: float) -> None:
        """Mark the connections whose deadline passed for the next flush. A method of
        its own: a local of :meth:`run` would keep the last one (a dead half-open
        handshake's TLS state and packet spaces) alive while the driver sleeps."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            at, _, ref = heapq.heappop(heap)
            conn = ref()
            if conn is not None and conn._timer_at == at:
                conn._timer_at = math.nan  # due: the next schedule() always pushes
                self._dirty[conn] = None
