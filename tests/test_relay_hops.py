"""Work on a request's path through one relayed hop (issue 9's open-tunnel round trip):
a request's datagram goes on before the read that finds the UDP socket empty, and a
request read from TCP is queued on its QUIC stream with one scheduler round for the
pump, not two plus a read that finds nothing. Counts calls and task steps, never time.
"""

from __future__ import annotations

import socket
from typing import Any

import trio
import trio.testing

from reverse_http.devcerts import CertFiles
from reverse_http.quic import TransportSettings
from reverse_http.quic.endpoint import UdpEndpoint
from reverse_http.relay import relay
from tests.quic_memory import settled_pair

_QUIET = TransportSettings(liveness_timeout=0)


async def test_the_first_datagram_of_a_wake_up_is_handed_on_before_the_next_read() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    endpoint = UdpEndpoint(ours, connected_peer="peer")
    seen: list[str] = []
    batch_done = trio.Event()

    def dispatch(data: bytes, addr: Any) -> None:
        seen.append(data.decode())

    def after_batch() -> None:
        seen.append("batch")
        batch_done.set()

    try:
        for i in range(3):
            theirs.send(b"d%d" % i)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                endpoint.receive_loop, dispatch, after_batch, None, lambda: seen.append("first")
            )
            with trio.fail_after(5):
                await batch_done.wait()
            nursery.cancel_scope.cancel()
        assert seen == ["d0", "first", "d1", "d2", "batch"]
    finally:
        ours.close()
        theirs.close()


class _PumpSteps(trio.abc.Instrument):
    """Counts the steps of the relay's pumps (both directions)."""

    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("relay.<locals>.pump"):
            self.steps += 1


async def test_a_short_request_from_tcp_costs_its_pump_one_scheduler_round(
    certs: CertFiles, autojump_clock: trio.testing.MockClock
) -> None:
    requests = 20
    async with settled_pair(certs, _QUIET) as (_link, client, server):
        stream = await client.open_stream()
        await stream.send_all(b"open")
        theirs = await server.accept_stream()
        assert await theirs.receive_some(100) == b"open"
        a, b = socket.socketpair()
        tcp = trio.SocketStream(trio.socket.from_stdlib_socket(a))
        counter = _PumpSteps()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(relay, tcp, stream)
                await trio.testing.wait_all_tasks_blocked()
                trio.lowlevel.add_instrument(counter)
                got = bytearray()
                for i in range(requests):
                    request = b"GET /%02d HTTP/1.1\r\n\r\n" % i
                    b.send(request)
                    while len(got) < (i + 1) * len(request):
                        got += await theirs.receive_some(65536)
                    await trio.testing.wait_all_tasks_blocked()
                trio.lowlevel.remove_instrument(counter)
                assert bytes(got) == b"".join(
                    b"GET /%02d HTTP/1.1\r\n\r\n" % i for i in range(requests)
                )
                # one wake-up per request (two before: send_all's checkpoint, then a
                # read that found the socket empty)
                assert counter.steps == requests, counter.steps
                b.shutdown(socket.SHUT_WR)
                assert await theirs.receive_some(100) == b""
                nursery.cancel_scope.cancel()
        finally:
            b.close()


async def test_send_nowait_takes_all_or_nothing(
    certs: CertFiles, autojump_clock: trio.testing.MockClock
) -> None:
    async with settled_pair(certs, _QUIET) as (_link, client, server):
        stream = await client.open_stream()
        room = stream.send_capacity()
        assert room > 0
        # more than it takes at once: nothing is sent (a slow peer still stops the sender)
        assert not stream.send_nowait(b"x" * (room + 1))
        assert stream.unacked == 0
        assert stream.send_nowait(b"hello")
        theirs = await server.accept_stream()
        assert await theirs.receive_some(100) == b"hello"
        await stream.send_eof()
        assert not stream.send_nowait(b"late")
        assert await theirs.receive_some(100) == b""
