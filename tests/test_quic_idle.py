"""What an idle agent costs the proxy per keepalive: its PING is acknowledged with one
packet built, and a padded packet (quic-go pads each path MTU probe, and its first
keepalives each come with one) is skipped without a Python step per byte. Socket-free;
counts packets and interpreter steps, never time."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType, SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing
from aioquic.buffer import Buffer
from aioquic.quic.packet_builder import QuicPacketBuilder

from reverse_http.devcerts import CertFiles
from reverse_http.quic import Connection, TransportSettings
from reverse_http.quic.protocol import TunnelQuicConnection
from reverse_http.quic.settings import client_configuration
from tests.quic_helpers import client_tls
from tests.quic_memory import settled_pair

_QUIET = TransportSettings(liveness_timeout=0)


@contextmanager
def _lines_run_in(function_name: str) -> Iterator[list[int]]:
    """Counts the Python lines executed in functions of this name (a list of one)."""
    count = [0]

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code.co_name != function_name:
            return None

        def lines(frame: FrameType, event: str, arg: Any) -> Any:
            if event == "line":
                count[0] += 1
            return lines

        return lines

    sys.settrace(tracer)
    try:
        yield count
    finally:
        sys.settrace(None)


def _connection(certs: CertFiles) -> TunnelQuicConnection:
    return TunnelQuicConnection.for_transport(
        client_configuration(_QUIET, client_tls(certs), "localhost"), _QUIET
    )


@pytest.mark.parametrize(
    ("data", "start", "end"),
    [
        (b"\x00" * 1400, 0, 1400),  # padding to the end of the packet
        (b"\x06" + b"\x00" * 1400 + b"\x01", 1, 1401),  # after a frame, before a PING
        (b"\x00\x01", 0, 1),
        (b"\x01", 0, 0),  # a handler called on a non-zero byte consumes nothing
    ],
)
def test_padding_is_skipped_to_the_first_nonzero_byte(
    certs: CertFiles, data: bytes, start: int, end: int
) -> None:
    conn = _connection(certs)
    buf = Buffer(data=data)
    buf.seek(start)
    context = SimpleNamespace(quic_logger_frames=None)
    with _lines_run_in("_handle_padding_frame") as lines:
        conn._handle_padding_frame(context, 0, buf)  # type: ignore[arg-type]
    assert buf.tell() == end
    # aioquic's loop runs three lines per byte (over 4,000 for a probe's padding)
    assert lines[0] <= 10, lines[0]


async def _keepalives(link: Any, client: Connection, count: int = 5) -> int:
    """Send ``count`` keepalives from ``client``, each once acknowledged; the datagrams
    the server sent meanwhile."""
    before = len(link.sent["s2c"])
    for uid in range(count):
        client.quic.send_ping(uid)
        client._kick()
        with trio.fail_after(1):
            while client.quic._loss.bytes_in_flight:
                await trio.sleep(0.001)
    return len(link.sent["s2c"]) - before


async def test_a_keepalive_is_acknowledged_with_one_packet_built(
    certs: CertFiles, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with settled_pair(certs, _QUIET) as (link, client, _server):
        await trio.sleep(1)
        started: list[int] = []
        start_packet = QuicPacketBuilder.start_packet

        def counting(builder: QuicPacketBuilder, *args: Any, **kwargs: Any) -> None:
            if builder._is_client is False:
                started.append(1)
            start_packet(builder, *args, **kwargs)

        monkeypatch.setattr(QuicPacketBuilder, "start_packet", counting)
        sent = await _keepalives(link, client)
        # one ACK datagram per keepalive, each built from one packet (a second one was
        # started and thrown away after every ACK)
        assert sent == 5
        assert len(started) == 5, started


async def test_a_keepalive_service_computes_its_own_deadlines_once(
    certs: CertFiles, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The liveness check's probe and liveness deadlines are the ones scheduled: one
    computation per service, not one for the check and one for the schedule, and no
    settings property on the way (each a call and a min())."""
    async with settled_pair(certs, TransportSettings()) as (link, client, server):
        await trio.sleep(1)
        computed: list[Connection] = []
        own = Connection._own_deadlines

        def counting(conn: Connection) -> tuple[float, float]:
            computed.append(conn)
            return own(conn)

        def no_property(_settings: TransportSettings) -> float:
            raise AssertionError("settings property read on the service path")

        monkeypatch.setattr(Connection, "_own_deadlines", counting)
        monkeypatch.setattr(TransportSettings, "server_probe_after", property(no_property))
        sent = await _keepalives(link, client)
        assert sent == 5  # every keepalive acknowledged
        # one service per keepalive on the server (10 computations before)
        assert computed.count(server) == 5, computed.count(server)
        # and what was scheduled is what the service would compute now
        assert server._timer_at == server._next_deadline()


async def test_a_quiet_peer_is_still_pinged_and_given_up_on(
    certs: CertFiles, autojump_clock: trio.testing.MockClock
) -> None:
    """The deadlines reused for the schedule are the liveness check's: the server still
    PINGs a client quieter than ``server_probe_after`` and drops one silent for
    ``liveness_timeout`` (the link cut), on time."""
    t = TransportSettings()
    async with settled_pair(certs, t) as (link, client, server):
        pings = server._ping_uid
        client._probe_after = math.inf  # a client that sends no keepalives
        client._live_for = 0.0
        client._driver.schedule(client, client._next_deadline())
        await trio.sleep(t.server_probe_after + 1)
        assert server._ping_uid > pings
        link.up = False
        start = trio.current_time()
        with trio.fail_after(t.liveness_timeout + 5):
            info = await server.wait_closed()
        assert info.kind == "liveness"
        assert trio.current_time() - start <= t.liveness_timeout + 1


async def test_keepalives_raise_no_exception_on_the_way(
    certs: CertFiles, autojump_clock: trio.testing.MockClock
) -> None:
    """Neither side raises (and catches) an exception in the QUIC layer while a
    keepalive and its ACK go through: aioquic's ``next_event`` raised IndexError on
    every empty queue, twice per service."""
    raised: list[str] = []

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        name = frame.f_code.co_filename
        if "aioquic" not in name and "reverse_http" not in name:
            return None

        def exceptions(frame: FrameType, event: str, arg: Any) -> Any:
            # (GeneratorExit: a client-side all() closing its generator early)
            if event == "exception" and arg[0] is not GeneratorExit:
                raised.append(f"{frame.f_code.co_name}: {arg[0].__name__}")
            return exceptions

        return exceptions

    async with settled_pair(certs, _QUIET) as (link, client, _server):
        await trio.sleep(1)
        sent = len(link.sent["s2c"])
        for uid in range(5):
            client.quic.send_ping(uid)
            sys.settrace(tracer)
            try:
                client._kick()
                with trio.fail_after(1):
                    while client.quic._loss.bytes_in_flight:
                        await trio.sleep(0.001)
            finally:
                sys.settrace(None)
        assert len(link.sent["s2c"]) - sent == 5
    assert raised == []
