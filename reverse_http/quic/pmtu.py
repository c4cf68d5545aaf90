"""Datagram packetization-layer path MTU discovery (DPLPMTUD, RFC 8899), sans-IO.

A connection starts at :data:`BASE_DATAGRAM_SIZE`, which every QUIC path carries,
and probes upwards with padded PING packets: a probe that is acknowledged raises
the size every later packet uses; one lost :data:`MAX_PROBES` times (or refused
by the kernel with ``EMSGSIZE``) lowers the ceiling. The first probe tries the
ceiling itself, so a path that carries it (most of them) is done in one round
trip; otherwise a binary search narrows the gap to :data:`SEARCH_GRANULARITY`.

The size in use falls back to the base when the path stops carrying it: a send
refused with ``EMSGSIZE`` (the kernel learnt a smaller path MTU from ICMP), or a
black hole, where packets above the base keep being lost and none of them has
been acknowledged for a while. The search then starts again, and a completed
search is repeated every :data:`RAISE_INTERVAL` in case the path got better.

Nothing here knows about packets, clocks or sockets: the connection reports what
happened to which size and asks which size to probe next.
"""

from __future__ import annotations

import enum

#: Every QUIC path carries 1200-byte UDP payloads (RFC 9000 section 14).
BASE_DATAGRAM_SIZE = 1200
#: Ethernet's 1500-byte MTU less IPv6 and UDP headers: quic-go's ceiling too.
DEFAULT_MAX_DATAGRAM_SIZE = 1452
#: Losses of one probe size before it counts as too big (RFC 8899's MAX_PROBES).
MAX_PROBES = 3
#: A search stops when the gap between what works and what failed is this small.
SEARCH_GRANULARITY = 16
#: Large packets lost in a row (none acknowledged) before the path counts as a black hole.
BLACK_HOLE_LOSSES = 3
#: A completed search is repeated this often (RFC 8899's PMTU_RAISE_TIMER).
RAISE_INTERVAL = 600.0


class Phase(enum.Enum):
    #: Probing is due or in flight.
    SEARCHING = "searching"
    #: Nothing left to probe until the raise timer.
    COMPLETE = "complete"
    #: Discovery is off: the base size is all there is.
    DISABLED = "disabled"


class PathMtu:
    """The datagram size a path carries, and which probe to send next."""

    def __init__(
        self,
        max_size: int = DEFAULT_MAX_DATAGRAM_SIZE,
        base_size: int = BASE_DATAGRAM_SIZE,
        raise_interval: float = RAISE_INTERVAL,
    ) -> None:
        if max_size < base_size:
            raise ValueError(f"max datagram size {max_size} is below the base {base_size}")
        self.base_size = base_size
        self.max_size = max_size
        self.raise_interval = raise_interval
        #: The size confirmed to work (what every non-probe packet uses).
        self.current = base_size
        #: Sizes above this are known not to work (until the raise timer).
        self._ceiling = max_size
        self._probing: int | None = None
        self._losses = 0
        self._raise_at = 0.0
        self._large_losses = 0
        self._first_large_loss_at = 0.0
        self.phase = Phase.SEARCHING if max_size > base_size else Phase.DISABLED
        #: Times the size in use fell back to the base (EMSGSIZE or black hole).
        self.fallbacks = 0
        #: Probes acknowledged / lost / refused by the kernel.
        self.probes_acked = 0
        self.probes_lost = 0

    def __repr__(self) -> str:
        return f"<PathMtu {self.current} ({self.phase.value}, ceiling {self._ceiling})>"

    # --- what to send -------------------------------------------------------------------

    def probe_size(self, now: float) -> int | None:
        """The size of the probe to send now; None while one is in flight or none is due."""
        if self.phase is Phase.DISABLED or self._probing is not None:
            return None
        if self.phase is Phase.COMPLETE:
            if now < self._raise_at or self.current >= self.max_size:
                return None
            self.phase = Phase.SEARCHING
            self._ceiling = self.max_size  # the path may carry more now
        target = self._next_target()
        if target is None:
            self._complete(now)
            return None
        return target

    def next_event_at(self) -> float | None:
        """When :meth:`probe_size` may next return a size without anything else happening."""
        if self.phase is Phase.COMPLETE and self.current < self.max_size:
            return self._raise_at
        return None

    def _next_target(self) -> int | None:
        low, high = self.current, self._ceiling
        if (high - low < SEARCH_GRANULARITY and high != self.max_size) or high <= low:
            return None
        if high == self.max_size:
            return high  # most paths carry the ceiling: one round trip settles them
        return (low + high + 1) // 2

    # --- what happened ------------------------------------------------------------------

    def on_probe_sent(self, size: int) -> None:
        self._probing = size

    def on_probe_acked(self, size: int, now: float) -> None:
        self.probes_acked += 1
        if self._probing == size:
            self._probing = None
            self._losses = 0
        if size > self._ceiling:
            return  # a late answer to a probe sent before the path shrank
        if size > self.current:
            self.current = size
        if self._next_target() is None:
            self._complete(now)

    def on_probe_lost(self, size: int, now: float) -> None:
        self.probes_lost += 1
        if self._probing != size:
            return
        self._probing = None
        self._losses += 1
        if self._losses >= MAX_PROBES:
            self._too_big(size, now)

    def on_too_big(self, size: int, now: float) -> None:
        """A send of ``size`` bytes was refused by the kernel (``EMSGSIZE``)."""
        if self.phase is Phase.DISABLED:
            return
        if self._probing == size:
            self._probing = None
            self._too_big(size, now)
        elif size <= self.current and self.current > self.base_size:
            self._fall_back(size, now)

    def on_packet_acked(self, size: int, now: float) -> None:
        """Any packet was acknowledged (for black-hole detection)."""
        if size > self.base_size:
            self._large_losses = 0

    def on_packet_lost(self, size: int, now: float, patience: float) -> None:
        """A non-probe packet was declared lost (or expired unacknowledged).

        A black hole: :data:`BLACK_HOLE_LOSSES` packets above the base size lost in a
        row, with none of them acknowledged in between, over at least ``patience``
        seconds (a few probe timeouts) since the first of them. Then the path no
        longer carries them: fall back to the base and search again. A random loss,
        or a burst dropped by a full queue among acknowledged packets, is not one.
        """
        if size <= self.base_size or self.current <= self.base_size:
            return
        if self._large_losses == 0:
            self._first_large_loss_at = now
        self._large_losses += 1
        if self._large_losses >= BLACK_HOLE_LOSSES and now - self._first_large_loss_at >= patience:
            self._fall_back(self.current, now)

    # --- transitions --------------------------------------------------------------------

    def _too_big(self, size: int, now: float) -> None:
        self._losses = 0
        self._ceiling = min(self._ceiling, size - 1)
        if self._next_target() is None:
            self._complete(now)

    def _fall_back(self, failed: int, now: float) -> None:
        self.fallbacks += 1
        self.current = self.base_size
        self._ceiling = max(self.base_size, failed - 1)
        self._probing = None
        self._losses = 0
        self._large_losses = 0
        self.phase = Phase.SEARCHING
        if self._next_target() is None:
            self._complete(now)

    def _complete(self, now: float) -> None:
        self.phase = Phase.COMPLETE
        self._raise_at = now + self.raise_interval
