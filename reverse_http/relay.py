"""Copy bytes both ways between two streams, carrying half-close, until both end.

Each direction reads only after its previous write completed, so nothing is
buffered beyond one chunk per direction: a slow reader on either side slows
the other side down (backpressure end to end).
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

CHUNK = 64 * 1024


@dataclass
class RelayStats:
    #: Bytes from the first stream to the second (client -> target).
    up: int = 0
    #: Bytes from the second stream to the first (target -> client).
    down: int = 0
    error: str | None = None


async def relay(
    a: trio.abc.Stream, b: trio.abc.Stream, stats: RelayStats | None = None
) -> RelayStats:
    """Relay until both directions saw EOF, or either broke (then both are aborted)."""
    stats = stats or RelayStats()

    async def pump(
        src: trio.abc.Stream, dst: trio.abc.Stream, up: bool, scope: trio.CancelScope
    ) -> None:
        try:
            while data := await src.receive_some(CHUNK):
                await dst.send_all(data)
                if up:
                    stats.up += len(data)
                else:
                    stats.down += len(data)
            if isinstance(dst, trio.abc.HalfCloseableStream):
                await dst.send_eof()
            else:
                # No half-close on this transport (TLS): ending the write side ends it all.
                await dst.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            if stats.error is None:
                direction = "client -> upstream" if up else "upstream -> client"
                stats.error = f"{direction}: {exc or type(exc).__name__}"
            scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump, a, b, True, nursery.cancel_scope)
        nursery.start_soon(pump, b, a, False, nursery.cancel_scope)
    return stats
