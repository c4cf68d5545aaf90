"""A relay cancelled from outside ends both sides with an abort, never a clean end.

The agent cancels its tunnels when its QUIC connection is lost (and a daemon its
sessions when it stops): what was in flight is truncated, so the target must not see
a FIN that looks like the end of an upload. Real TCP over loopback on both sides.
"""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from reverse_http.devcerts import CertFiles
from reverse_http.quic import TransportSettings
from reverse_http.relay import RelayStats, relay
from tests.quic_memory import linked


def _tcp_pair(listener: socket.socket) -> tuple[trio.SocketStream, trio.SocketStream]:
    outer = socket.create_connection(listener.getsockname())
    inner, _ = listener.accept()
    return (
        trio.SocketStream(trio.socket.from_stdlib_socket(outer)),
        trio.SocketStream(trio.socket.from_stdlib_socket(inner)),
    )


async def test_a_relay_cancelled_from_outside_resets_the_target() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client, ours_a = _tcp_pair(listener)  # client -> relay
        ours_b, target = _tcp_pair(listener)  # relay -> target
    stats = RelayStats()
    done = trio.Event()

    async def tunnel(scope: trio.CancelScope) -> None:
        with scope:
            async with ours_a, ours_b:  # as the callers hold them
                await relay(ours_a, ours_b, stats)
        done.set()

    scope = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tunnel, scope)
        await client.send_all(b"part of an upload")
        got = b""
        while len(got) < 17:
            got += await target.receive_some(100)
        assert got == b"part of an upload"
        scope.cancel()  # e.g. the agent's QUIC connection was lost
        await done.wait()
    with pytest.raises(trio.BrokenResourceError):
        while await target.receive_some(100):
            pass  # b"" here would be a clean end of a truncated upload
    await client.aclose()
    await target.aclose()


async def test_a_relay_cancelled_from_outside_resets_its_quic_stream(
    certs: CertFiles, autojump_clock: trio.testing.MockClock
) -> None:
    """The QUIC side: the peer's stream sees a reset, not the end of the stream."""
    async with linked(certs, TransportSettings(liveness_timeout=0)) as (link, client):
        await client.wait_handshake()
        server = await link.server_conn()
        with socket.create_server(("127.0.0.1", 0)) as listener:
            source, ours = _tcp_pair(listener)
        stream = await client.open_stream()
        done = trio.Event()

        async def tunnel(scope: trio.CancelScope) -> None:
            with scope:
                async with ours, stream:
                    await relay(ours, stream)
            done.set()

        scope = trio.CancelScope()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tunnel, scope)
            await source.send_all(b"part of an upload")
            theirs = await server.accept_stream()
            got = b""
            while len(got) < 17:
                got += await theirs.receive_some(100)
            scope.cancel()
            await done.wait()
        with pytest.raises(trio.BrokenResourceError):
            while await theirs.receive_some(100):
                pass  # b"" here would be a clean end of a truncated upload
        await source.aclose()
