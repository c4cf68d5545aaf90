"""The accept loop every TCP listener of ours runs."""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio

log = logging.getLogger(__name__)


async def accept_forever(
    listener: trio.abc.Listener[Any],
    nursery: trio.Nursery,
    handler: Callable[[Any], Awaitable[None]],
    what: str,
) -> None:
    """Accept connections and run ``handler`` for each in ``nursery``.

    EMFILE and friends back off briefly instead of spinning the loop.
    """
    backlog = _Backlog.of(listener)
    try:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                log.warning("%s accept failed: %s", what, exc)
                await trio.sleep(0.1)
                continue
            nursery.start_soon(handler, stream)
            if backlog is not None:
                for more in backlog.drain():
                    nursery.start_soon(handler, more)
    finally:
        if backlog is not None:
            backlog.close()  # else the duplicate keeps the port listening


#: Connections taken from the kernel's accept queue per wake-up, beyond the first.
ACCEPT_BATCH = 256


class _Backlog:
    """The rest of a plain TCP listener's accept queue, taken without waiting.

    One ``accept()`` per wake-up lets a burst of 10,000 clients overflow the
    kernel's queue (somaxconn) while thousands of sessions keep the loop busy:
    every accept waits for a whole round of the scheduler. A duplicate of the
    listening socket, non-blocking, empties the queue in one go.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    @classmethod
    def of(cls, listener: trio.abc.Listener[Any]) -> _Backlog | None:
        if not isinstance(listener, trio.SocketListener):
            return None  # TLS listeners wrap each stream; they take one at a time
        try:
            dup = socket.socket(fileno=listener.socket.dup().detach())
        except OSError:  # EMFILE: accept one at a time, as without the backlog
            return None
        dup.setblocking(False)
        return cls(dup)

    def close(self) -> None:
        self._sock.close()

    def drain(self) -> list[trio.SocketStream]:
        streams: list[trio.SocketStream] = []
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _addr = self._sock.accept()
            except OSError:  # empty (EAGAIN), or EMFILE: the next accept() reports it
                break
            streams.append(trio.SocketStream(trio.socket.from_stdlib_socket(conn)))
        return streams
