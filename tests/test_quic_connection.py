"""``Connection`` and ``QuicStream`` over an in-memory link, on virtual time:
stream opens beyond the peer's limit, the connection's send budget, close states."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from reverse_http.devcerts import CertFiles
from reverse_http.quic import ConnectionError, QuicStream, TransportSettings
from reverse_http.quic.connection import State, StreamLimitError
from tests.quic_memory import linked


async def test_opens_beyond_the_peer_stream_limit_wait_then_succeed(
    certs: CertFiles, autojump_clock: trio.testing.MockClock
) -> None:
    server_t = TransportSettings(max_concurrent_streams=4)
    async with linked(certs, TransportSettings(), server_t) as (link, client):
        await client.wait_handshake()
        server = await link.server_conn()
        opened: list[QuicStream] = []
        waited: list[float] = []

        async def open_one() -> None:
            t0 = trio.current_time()
            stream = await client.open_stream()
            waited.append(trio.current_time() - t0)
            await stream.send_all(b"ping")
            await stream.send_eof()
            opened.append(stream)

        async def serve(nursery: trio.Nursery) -> None:
            while True:
                stream = await server.accept_stream()
                nursery.start_soon(answer, stream)

        async def answer(stream: QuicStream) -> None:
            assert await stream.receive_some() == b"ping"
            await trio.sleep(1)  # hold the stream: later opens must wait for it
            await stream.send_all(b"pong")
            await stream.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, nursery)
            async with trio.open_nursery() as clients:
                for _ in range(12):
                    clients.start_soon(open_one)
                await trio.testing.wait_all_tasks_blocked()
                assert client.pending_opens == 8  # 4 open, 8 in the queue
            for stream in opened:
                assert await stream.receive_some() == b"pong"
                await stream.aclose()
            nursery.cancel_scope.cancel()
        assert len(opened) == 12
        assert sorted(waited)[:4] == [0, 0, 0, 0]
        assert max(waited) >= 2  # the last ones waited for two rounds of closes


async def test_the_queue_of_waiting_opens_is_bounded(
    certs: CertFiles, autojump_clock: trio.testing.MockClock
) -> None:
    server_t = TransportSettings(max_concurrent_streams=2)
    client_t = TransportSettings(max_pending_stream_opens=3)
    async with linked(certs, client_t, server_t) as (_link, client):
        await client.wait_handshake()
        async with trio.open_nursery() as nursery:
            for _ in range(5):  # 2 open, 3 wait
                nursery.start_soon(client.open_stream)
            await trio.testing.wait_all_tasks_blocked()
            assert client.pending_opens == 3
            with pytest.raises(StreamLimitError):
                await client.open_stream()
            nursery.cancel_scope.cancel()


async def test_waiting_opens_fail_when_the_connection_ends(
    certs: CertFiles, autojump_clock: trio.testing.MockClock
) -> None:
    server_t = TransportSettings(max_concurrent_streams=1)
    async with linked(certs, TransportSettings(), server_t) as (link, client):
        await client.wait_handshake()
        await client.open_stream()
        server = await link.server_conn()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.close, 0, "bye")
            with pytest.raises(ConnectionError):
                await client.open_stream()


async def test_connection_send_budget_blocks_writers_across_streams(
    certs: CertFiles, autojump_clock: trio.testing.MockClock
) -> None:
    budget = 256 * 1024
    client_t = TransportSettings(
        stream_send_buffer=budget, connection_send_buffer=budget, liveness_timeout=0
    )
    async with linked(certs, client_t) as (link, client):
        await client.wait_handshake()
        link.up = False  # nothing is acknowledged
        streams = [await client.open_stream() for _ in range(4)]
        written = [0] * 4

        async def write(i: int) -> None:
            while True:
                await streams[i].send_all(b"w" * 16384)
                written[i] += 16384

        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(write, i)
            await trio.sleep(5)
            # one budget for all four streams, however many streams write
            assert budget <= sum(written) <= budget + 4 * 16384
            assert client.quic.unacked_bytes <= budget + 16384
            nursery.cancel_scope.cancel()


async def test_close_states(certs: CertFiles, autojump_clock: trio.testing.MockClock) -> None:
    async with linked(certs, TransportSettings()) as (link, client):
        assert client.state is State.HANDSHAKE
        await client.wait_handshake()
        assert client.state is State.OPEN
        server = await link.server_conn()
        stream = await client.open_stream()
        await stream.send_all(b"x" * 100_000)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.close, 0, "done")
            await trio.testing.wait_all_tasks_blocked()
            # unacknowledged data drains before CONNECTION_CLOSE, new streams refused
            assert client.state in (State.DRAINING, State.CLOSING, State.CLOSED)
            with pytest.raises(ConnectionError):
                await client.open_stream()
        assert client.state is State.CLOSED
        info = await server.wait_closed()
        assert info.by_peer and info.reason == "done"
        assert server.state is State.CLOSED


@pytest.mark.parametrize("client_closes_first", [True, False])
async def test_a_finished_exchange_leaves_no_stream_state(
    certs: CertFiles, autojump_clock: trio.testing.MockClock, client_closes_first: bool
) -> None:
    """The agent's auth exchange, then hours of idle: neither end may keep the stream."""
    async with linked(certs, TransportSettings()) as (link, client):
        await client.wait_handshake()
        server = await link.server_conn()
        mine = await client.open_stream()
        await mine.send_all(b"token")
        theirs = await server.accept_stream()
        assert await theirs.receive_some() == b"token"
        await theirs.send_all(b"authenticated")
        if not client_closes_first:
            await theirs.aclose()  # before the client's FIN arrives: STOP_SENDING
        assert await mine.receive_some() == b"authenticated"
        await mine.aclose()
        if client_closes_first:
            await trio.sleep(1)
            await theirs.aclose()
        await trio.sleep(5)
        for conn in (client, server):
            assert conn._streams == {}
            assert not conn._quic._streams


async def test_writers_woken_into_an_exhausted_budget_wait_again_and_finish(
    certs: CertFiles, autojump_clock: trio.testing.MockClock
) -> None:
    """Many writers share a small budget: a writer woken when it frees up may find it
    used again by the writers that ran first; it must stay registered for the next
    wake-up (2865 tunnels of one agent once hung forever here)."""
    budget = 64 * 1024
    client_t = TransportSettings(
        stream_send_buffer=budget, connection_send_buffer=budget, liveness_timeout=0
    )
    async with linked(certs, client_t) as (link, client):
        await client.wait_handshake()
        server = await link.server_conn()
        received = [0] * 40

        async def write(stream: QuicStream) -> None:
            for _ in range(8):
                await stream.send_all(b"w" * 16384)
            await stream.send_eof()

        async def read(i: int) -> None:
            stream = await server.accept_stream()
            while data := await stream.receive_some():
                received[i] += len(data)

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for i in range(40):
                    nursery.start_soon(read, i)
                for _ in range(40):
                    nursery.start_soon(write, await client.open_stream())
    assert received == [8 * 16384] * 40


async def test_a_new_stream_answers_while_bulk_data_holds_the_whole_budget(
    certs: CertFiles, autojump_clock: trio.testing.MockClock
) -> None:
    """The agent's answer to a new CONNECT must not wait behind other tunnels' bulk data
    for the connection's send budget; only its first few KiB are exempt."""
    budget = 64 * 1024
    client_t = TransportSettings(
        stream_send_buffer=budget, connection_send_buffer=budget, liveness_timeout=0
    )
    async with linked(certs, client_t) as (link, client):
        await client.wait_handshake()
        link.up = False  # nothing is acknowledged: the budget stays used
        bulk = await client.open_stream()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(bulk.send_all, b"b" * (4 * budget))
            await trio.testing.wait_all_tasks_blocked()
            assert client.send_room() <= 0
            fresh = await client.open_stream()
            with trio.fail_after(1):
                await fresh.send_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            # beyond its first 4 KiB a stream waits like any other
            with trio.move_on_after(5) as scope:
                await fresh.send_all(b"x" * 8192)
            assert scope.cancelled_caught
            nursery.cancel_scope.cancel()


async def test_a_burst_of_new_streams_is_accepted_in_batches(
    certs: CertFiles, autojump_clock: trio.testing.MockClock
) -> None:
    """2000 CONNECTs at once: taking them one per scheduler round cost the agent
    seconds before it read the last one (503 "agent did not answer")."""
    async with linked(certs, TransportSettings()) as (link, client):
        await client.wait_handshake()
        server = await link.server_conn()
        for i in range(300):
            stream = await client.open_stream()
            await stream.send_all(b"%d" % i)
        await trio.testing.wait_all_tasks_blocked()
        batches: list[list[QuicStream]] = []
        with trio.fail_after(5):
            while sum(map(len, batches)) < 300:
                batches.append(await server.accept_streams(limit=256))
        assert len(batches) <= 3  # one at a time would take 300 calls
        assert max(map(len, batches)) <= 256
        accepted = [s for batch in batches for s in batch]
        assert [await s.receive_some() for s in accepted[:3]] == [b"0", b"1", b"2"]
        # the peer went quiet: the next call waits instead of returning nothing
        with trio.move_on_after(1) as scope:
            await server.accept_streams()
        assert scope.cancelled_caught
