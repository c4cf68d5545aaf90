"""The relay reads from a TCP socket only what the QUIC connection's send budget takes.

Many tunnels woken at once (a burst of responses from the target) must not each read
a whole chunk into memory while the shared budget is full: the data stays in the
kernel's socket buffers. In-memory QUIC link with nothing acknowledged, real TCP
socket pairs as sources.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios

import trio
import trio.testing

from reverse_http.devcerts import CertFiles
from reverse_http.quic import TransportSettings
from reverse_http.quic.stream import UNBUDGETED_BYTES
from reverse_http.relay import CHUNK, MIN_READ, relay
from tests.quic_memory import linked

TUNNELS = 50
BUDGET = 64 * 1024


def _unread(sock: socket.socket) -> int:
    return int(struct.unpack("i", fcntl.ioctl(sock, termios.FIONREAD, b"\0\0\0\0"))[0])


def _tcp_pair(listener: socket.socket) -> tuple[socket.socket, socket.socket]:
    target = socket.create_connection(listener.getsockname())
    ours, _ = listener.accept()
    return ours, target


async def test_tunnels_woken_together_read_no_more_than_the_budget(
    certs: CertFiles, autojump_clock: trio.testing.MockClock
) -> None:
    client_t = TransportSettings(
        stream_send_buffer=BUDGET, connection_send_buffer=BUDGET, liveness_timeout=0
    )
    async with linked(certs, client_t) as (link, client):
        await client.wait_handshake()
        link.up = False  # nothing is acknowledged: the budget stays used
        sources: list[socket.socket] = []
        targets: list[socket.socket] = []
        with socket.create_server(("127.0.0.1", 0), backlog=TUNNELS) as listener:
            for _ in range(TUNNELS):
                ours, target = _tcp_pair(listener)
                sources.append(ours)
                targets.append(target)
        async with trio.open_nursery() as nursery:
            for ours in sources:
                tcp = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
                nursery.start_soon(relay, tcp, await client.open_stream())
            await trio.testing.wait_all_tasks_blocked()
            for target in targets:  # every target answers at once
                assert target.send(b"r" * CHUNK) == CHUNK
            # (loopback: the bytes are in our sockets' buffers when send returns)
            for _ in range(3):
                await trio.sleep(0.1)
                await trio.testing.wait_all_tasks_blocked()
            read = TUNNELS * CHUNK - sum(_unread(s) for s in sources)
            assert read <= BUDGET + TUNNELS * UNBUDGETED_BYTES + MIN_READ, read
            assert client.send_room() <= 0
            nursery.cancel_scope.cancel()
        for target in targets:
            target.close()
