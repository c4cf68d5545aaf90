"""The shared accept loop over real TCP sockets."""

from __future__ import annotations

import contextlib
import socket

import pytest
import trio
import trio.testing

from reverse_http.accepting import accept_forever


async def test_a_burst_is_taken_from_the_accept_queue_in_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """10,000 clients at once must not wait one scheduler round per accept (the kernel's
    queue, 4096 by default, overflows and clients get ECONNRESET)."""
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    port = sock.getsockname()[1]
    listener = trio.SocketListener(sock)
    accepts = [0]
    plain_accept = trio.SocketListener.accept

    async def counting_accept(self: trio.SocketListener) -> trio.SocketStream:
        accepts[0] += 1
        return await plain_accept(self)

    monkeypatch.setattr(trio.SocketListener, "accept", counting_accept)
    clients = []
    for _ in range(500):  # all queued before the loop runs
        c = socket.socket()
        c.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            c.connect(("127.0.0.1", port))
        clients.append(c)
    handled: list[trio.SocketStream] = []
    done = trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        handled.append(stream)
        if len(handled) == len(clients):
            done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_forever, listener, nursery, handler, "test")
        with trio.fail_after(10):
            await done.wait()
        nursery.cancel_scope.cancel()
    assert len(handled) == 500
    assert accepts[0] < 500 / 10
    for s in handled:
        await s.aclose()
    for c in clients:
        c.close()
    await listener.aclose()


async def test_the_port_stops_listening_when_the_loop_ends() -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]

    async def handler(stream: trio.SocketStream) -> None:
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_forever, listener, nursery, handler, "test")
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    await listener.aclose()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
