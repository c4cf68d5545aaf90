"""Copy bytes both ways between two streams, carrying half-close, until both end.

Each direction reads only after its previous write completed, so nothing is
buffered beyond one chunk per direction: a slow reader on either side slows
the other side down (backpressure end to end). Towards a QUIC stream a direction
reads only what the stream can take at once, so 10,000 tunnels waiting for the
connection's send budget hold their data in kernel buffers, not in ours.

A clean end (EOF) is passed on as EOF; a broken side is passed on as an abort
(QUIC RESET_STREAM / STOP_SENDING, TCP RST), so a truncated transfer never
looks complete to the other end.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from dataclasses import dataclass

import trio

from .quic.stream import RELAY_CHUNK as CHUNK
from .quic.stream import Sink

#: The least a relay reads when the QUIC side has less room (keeps packets full).
MIN_READ = 4096
_LINGER_RST = struct.pack("ii", 1, 0)


@dataclass
class RelayStats:
    #: Bytes from the first stream to the second (client -> target).
    up: int = 0
    #: Bytes from the second stream to the first (target -> client).
    down: int = 0
    error: str | None = None

    def count(self, up: bool, nbytes: int) -> None:
        if up:
            self.up += nbytes
        else:
            self.down += nbytes


async def relay(
    a: trio.abc.Stream, b: trio.abc.Stream, stats: RelayStats | None = None
) -> RelayStats:
    """Relay until both directions saw EOF, or either broke or the relay is cancelled
    (then both are aborted)."""
    stats = stats or RelayStats()
    closed_by_us: set[int] = set()

    async def pump(
        src: trio.abc.Stream, dst: trio.abc.Stream, up: bool, scope: trio.CancelScope
    ) -> None:
        # A QUIC stream says how much it takes without waiting: read no more than
        # that, so what a congested tunnel can't take stays in the kernel's buffer.
        send_capacity = getattr(dst, "send_capacity", None)
        # From a TCP socket into a QUIC stream: size the read by the budget, read and
        # queue it without yielding in between, and wait for readability only when the
        # socket has nothing. Sized before a wait, 10,000 tunnels woken together each
        # read a whole chunk while the budget still looked free: 600 MiB held by the
        # agent (receive_some yields after reading).
        raw = src.socket if send_capacity is not None and type(src) is trio.SocketStream else None
        send_nowait = getattr(dst, "send_nowait", None) if raw is not None else None
        # From a QUIC stream into a TCP socket: what arrives while this pump waits goes
        # out from the connection's receive path (see QuicStream.set_sink).
        set_sink = getattr(src, "set_sink", None)
        if set_sink is not None and type(dst) is trio.SocketStream:
            set_sink(_socket_sink(dst.socket, stats, up))
        else:
            set_sink = None
        data: bytes | bytearray
        try:
            while True:
                size = CHUNK
                if send_capacity is not None:
                    room = send_capacity()
                    if room <= 0:  # wait only when it must: no extra task switch per chunk
                        await dst.wait_send_all_might_not_block()
                        continue  # others may have used the room up meanwhile
                    size = min(CHUNK, max(room, MIN_READ))
                if raw is not None:
                    try:
                        data = os.read(raw.fileno(), size)
                    except BlockingIOError:
                        await trio.lowlevel.wait_readable(raw)
                        continue
                    if 0 < len(data) < size and send_nowait is not None and send_nowait(data):
                        # A short read (a request, an answer) emptied the socket: queued
                        # at once, the wait for more is this round's only checkpoint.
                        # send_all's own checkpoint and a read that finds nothing cost
                        # every relayed hop a scheduler round and a syscall.
                        stats.count(up, len(data))
                        await trio.lowlevel.wait_readable(raw)
                        continue
                else:
                    data = await src.receive_some(size)
                if not data:
                    break
                await dst.send_all(data)
                stats.count(up, len(data))
            if isinstance(dst, trio.abc.HalfCloseableStream):
                await dst.send_eof()
            else:
                # No half-close on this transport (TLS): ending the write side ends it all.
                closed_by_us.add(id(dst))
                await dst.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            if isinstance(exc, trio.ClosedResourceError) and id(src) in closed_by_us:
                return  # the other direction finished and closed this TLS stream
            if stats.error is None:
                direction = "client -> upstream" if up else "upstream -> client"
                stats.error = f"{direction}: {exc or type(exc).__name__}"
            scope.cancel()
        finally:
            if set_sink is not None:
                set_sink(None)

    clean = False
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, a, b, True, nursery.cancel_scope)
            nursery.start_soon(pump, b, a, False, nursery.cancel_scope)
        clean = stats.error is None
    finally:
        if not clean:
            # Broken, or cancelled from outside (the agent cancels its tunnels when its
            # connection is lost): what was in flight is truncated, so the closes that
            # follow are aborts (a direction that already ended cleanly stays ended on
            # a QUIC stream).
            abort(a)
            abort(b)
    return stats


def _socket_sink(sock: trio.socket.SocketType, stats: RelayStats, up: bool) -> Sink:
    """Write without blocking to ``sock``, counting into ``stats``; 0 when it takes
    nothing (full, or broken: the pump's own write then meets the error)."""

    def sink(data: bytes) -> int:
        fd = sock.fileno()
        if fd < 0:
            return 0
        try:
            sent = os.write(fd, data)
        except OSError:
            return 0
        stats.count(up, sent)
        return sent

    return sink


def abort(stream: trio.abc.Stream) -> None:
    """Make the coming close an abort: RESET_STREAM on QUIC, RST on TCP."""
    stream_abort = getattr(stream, "abort", None)
    if callable(stream_abort):
        stream_abort()
        return
    inner = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if isinstance(inner, trio.SocketStream):
        with contextlib.suppress(OSError):
            inner.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
