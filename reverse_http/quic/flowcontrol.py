"""Receive windows that grow with the path's bandwidth-delay product (sans-IO).

A fixed window caps one stream at ``window / RTT``: 1 MiB over a 100 ms path is
10 MB/s however fast the link. Starting small and doubling whenever a window's
worth of data was read much faster than the round trip would allow at the
current size (quic-go's rule: half a window or more read within ``4 * fraction *
RTT`` of the epoch's start) gives long fat paths the window they need, while a
short path or a slow reader never grows one. The ceiling is a per-stream memory
bound; the connection window (the per-connection budget) is not tuned.
"""

from __future__ import annotations


class WindowTuner:
    """One stream's receive window: ``size`` grows from its initial value up to ``maximum``."""

    __slots__ = ("_epoch_at", "_epoch_offset", "maximum", "size")

    def __init__(self, size: int, maximum: int) -> None:
        self.size = size
        self.maximum = max(size, maximum)
        self._epoch_at: float | None = None
        self._epoch_offset = 0

    def __repr__(self) -> str:
        return f"<WindowTuner {self.size} of {self.maximum}>"

    def on_credit_due(self, consumed: int, now: float, rtt: float) -> int:
        """New credit is about to be sent, ``consumed`` bytes read so far; the window to
        extend it by."""
        if self._epoch_at is None:
            self._start(consumed, now)
            return self.size
        read = consumed - self._epoch_offset
        if read <= self.size // 2:
            return self.size
        if rtt > 0 and self.size < self.maximum:
            fraction = read / self.size
            if now - self._epoch_at < 4 * fraction * rtt:
                self.size = min(2 * self.size, self.maximum)
        self._start(consumed, now)
        return self.size

    def _start(self, consumed: int, now: float) -> None:
        self._epoch_at = now
        self._epoch_offset = consumed
