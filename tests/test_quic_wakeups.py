"""Scheduler rounds on a request's path: a relayed hop costs no task switch it does not
need (the driver is not woken to sleep again, a woken reader returns at once, bytes for
a waiting relay into TCP go out from the receive path). Socket-free; counts task steps,
never time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing

from reverse_http.devcerts import CertFiles
from reverse_http.quic import Connection, TransportSettings
from reverse_http.quic.driver import Driver
from reverse_http.quic.stream import QuicStream, Sink
from tests.quic_helpers import DueConnection
from tests.quic_memory import settled_pair

_QUIET = TransportSettings(liveness_timeout=0)


async def _opened(client: Connection, server: Connection) -> tuple[QuicStream, QuicStream]:
    """A stream each way, its first bytes read."""
    stream = await client.open_stream()
    await stream.send_all(b"open")
    theirs = await server.accept_stream()
    assert await theirs.receive_some(100) == b"open"
    return stream, theirs


def _taking_all(sunk: list[bytes]) -> Sink:
    def sink(data: bytes) -> int:
        sunk.append(data)
        return len(data)

    return sink


@asynccontextmanager
async def _sinking_until_the_end(stream: QuicStream) -> AsyncIterator[list[bytes]]:
    """The sink takes all while a reader waits; only the end of the stream reaches it."""
    sunk: list[bytes] = []
    stream.set_sink(_taking_all(sunk))

    async def reader() -> None:
        assert await stream.receive_some(100) == b""

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        yield sunk


class _StepCounter(trio.abc.Instrument):
    """Counts the steps of one task."""

    def __init__(self) -> None:
        self.task: trio.lowlevel.Task | None = None
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1


async def test_an_earlier_deadline_does_not_wake_the_sleeping_driver(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Every request made one side's deadline earlier (an ACK timer before the keepalive,
    a PTO before an ACK timer), and the driver task was woken only to sleep again."""
    driver = Driver(lambda datagrams: None)
    far, near = DueConnection(), DueConnection()
    counter = _StepCounter()
    t0 = trio.current_time()

    async def run_driver(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        counter.task = trio.lowlevel.current_task()
        task_status.started()
        await driver.run()

    trio.lowlevel.add_instrument(counter)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(run_driver)
            for conn in (far, near):
                driver.add(conn)  # type: ignore[arg-type]
            driver.schedule(far, t0 + 30.0)  # type: ignore[arg-type]
            await trio.testing.wait_all_tasks_blocked()
            asleep = counter.steps
            driver.schedule(near, t0 + 1.0)  # type: ignore[arg-type]
            await trio.testing.wait_all_tasks_blocked()
            assert counter.steps == asleep  # not woken by the earlier deadline
            await near.serviced.wait()
            assert near.serviced_at == [t0 + 1.0]  # yet serviced at it
            assert far.serviced_at == []
            await far.serviced.wait()
            assert far.serviced_at == [t0 + 30.0]
            nursery.cancel_scope.cancel()
    finally:
        trio.lowlevel.remove_instrument(counter)


async def test_a_woken_reader_returns_in_the_round_it_was_woken(
    certs: CertFiles, autojump_clock: trio.testing.MockClock
) -> None:
    """Parking was receive_some's checkpoint: a second yield after the wake-up delayed
    every relayed hop by a scheduler round."""
    async with settled_pair(certs, _QUIET) as (_link, client, server):
        stream, theirs = await _opened(client, server)
        counter = _StepCounter()
        got: list[bytes] = []

        async def reader(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            counter.task = trio.lowlevel.current_task()
            task_status.started()
            got.append(await theirs.receive_some(100))

        trio.lowlevel.add_instrument(counter)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(reader)
                await trio.testing.wait_all_tasks_blocked()
                parked = counter.steps
                await stream.send_all(b"request")
            # one step from the wake-up to its end (the old code took two)
            assert counter.steps == parked + 1
        finally:
            trio.lowlevel.remove_instrument(counter)
        assert got == [b"request"]


async def test_bytes_for_a_waiting_reader_go_to_the_sink_and_count_as_read(
    certs: CertFiles, autojump_clock: trio.testing.MockClock
) -> None:
    """With a reader waiting and nothing queued, the sink takes what arrives; taken
    bytes free flow-control credit (more than a receive window passes through)."""
    t = TransportSettings(
        liveness_timeout=0,
        stream_receive_window=64 * 1024,
        stream_receive_window_max=64 * 1024,
    )
    async with settled_pair(certs, t) as (_link, client, server):
        stream, theirs = await _opened(client, server)
        async with _sinking_until_the_end(theirs) as sunk:
            payload = bytes(range(256)) * 1024  # 256 KiB: four receive windows
            await stream.send_all(payload)
            await stream.send_eof()
        assert b"".join(sunk) == payload
        assert theirs.receive_buffered == 0


async def test_what_the_sink_does_not_take_reaches_the_reader_in_order(
    certs: CertFiles, autojump_clock: trio.testing.MockClock
) -> None:
    async with settled_pair(certs, _QUIET) as (_link, client, server):
        stream, theirs = await _opened(client, server)
        sunk: list[bytes] = []

        def sink(data: bytes) -> int:  # a socket buffer with room for 3 bytes
            sunk.append(data[:3])
            return 3

        theirs.set_sink(sink)
        got: list[bytes] = []
        async with trio.open_nursery() as nursery:

            async def reader() -> None:
                got.append(await theirs.receive_some(100))

            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            await stream.send_all(b"abcdefgh")
        assert sunk == [b"abc"]
        assert got == [b"defgh"]


async def test_without_a_waiting_reader_bytes_are_queued_not_sunk(
    certs: CertFiles, autojump_clock: trio.testing.MockClock
) -> None:
    """The reader may still be writing its previous chunk: bytes written around it
    would overtake that chunk."""
    async with settled_pair(certs, _QUIET) as (_link, client, server):
        stream = await client.open_stream()
        await stream.send_all(b"open")
        theirs = await server.accept_stream()
        sunk: list[bytes] = []
        theirs.set_sink(_taking_all(sunk))
        await stream.send_all(b"more")
        await trio.testing.wait_all_tasks_blocked()
        assert sunk == []
        got = b""
        while len(got) < 8:
            got += await theirs.receive_some(100)
        assert got == b"openmore"
        theirs.set_sink(None)


async def test_a_batch_of_datagrams_reaches_the_sink_in_one_write(
    certs: CertFiles, autojump_clock: trio.testing.MockClock, monkeypatch: Any
) -> None:
    """Written per packet, a bulk download cost the proxy a TCP write per 1.3 KB; the
    woken reader used to take the whole batch in one receive_some."""
    async with settled_pair(certs, _QUIET) as (link, client, server):
        stream, theirs = await _opened(client, server)
        async with _sinking_until_the_end(theirs) as sunk:
            flush = link.server_driver.flush
            monkeypatch.setattr(link.server_driver, "flush", lambda: None)  # one batch
            for part in (b"one ", b"two ", b"three"):
                await stream.send_all(part)  # a packet each
                await trio.testing.wait_all_tasks_blocked()
            assert sunk == []
            monkeypatch.undo()
            flush()
            assert sunk == [b"one two three"]
            await stream.send_eof()
