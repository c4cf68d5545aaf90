"""Packet building per request round trip (issue 9, open-tunnel latency): a receive
that owes the peer nothing yet (its ACK held for ACK_DELAY) skips aioquic's packet
building, and a service for input or a write skips aioquic's timer computation before
it; neither ever holds back a frame that was due."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from aioquic.quic.connection import QuicConnection

from reverse_http.devcerts import CertFiles
from reverse_http.quic import TransportSettings
from reverse_http.quic.protocol import TunnelQuicConnection
from tests.quic_memory import settled_pair

EXCHANGES = 50


def _count_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> dict[int, int]:
    """Calls of aioquic's ``QuicConnection.<name>``, per connection (by id)."""
    calls: dict[int, int] = {}
    stock = getattr(QuicConnection, name)

    def counting(self: QuicConnection, *args: Any, **kwargs: Any) -> Any:
        calls[id(self)] = calls.get(id(self), 0) + 1
        return stock(self, *args, **kwargs)

    monkeypatch.setattr(QuicConnection, name, counting)
    return calls


async def _exchanges(certs: CertFiles, monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Calls of ``name`` on (client, server) over EXCHANGES request/response round trips
    on an open stream, with the datagrams each way."""
    async with settled_pair(certs, TransportSettings()) as (link, client, server):
        mine = await client.open_stream()
        await mine.send_all(b"hello")
        theirs = await server.accept_stream()
        assert await theirs.receive_some() == b"hello"
        await theirs.send_all(b"welcome")
        assert await mine.receive_some() == b"welcome"
        # A path with an RTT: exchanges in zero virtual time would run into the pacer.
        link.delay = 0.002
        calls = _count_calls(monkeypatch, name)
        sent = {way: len(link.sizes[way]) for way in ("c2s", "s2c")}
        for i in range(EXCHANGES):
            request = b"GET /%d HTTP/1.1\r\n\r\n" % i
            await mine.send_all(request)
            assert await theirs.receive_some() == request
            await theirs.send_all(b"HTTP/1.1 200 OK\r\n\r\n%d" % i)
            assert await mine.receive_some() == b"HTTP/1.1 200 OK\r\n\r\n%d" % i
        # one datagram each way per exchange: the ACKs ride on the requests and answers
        assert len(link.sizes["c2s"]) - sent["c2s"] == EXCHANGES
        assert len(link.sizes["s2c"]) - sent["s2c"] == EXCHANGES
        return [calls.get(id(client.quic), 0), calls.get(id(server.quic), 0)]


async def test_a_receive_that_owes_nothing_builds_no_packet(
    certs: CertFiles, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    passes = await _exchanges(certs, monkeypatch, "datagrams_to_send")
    # one pass for the write on each side; the receive's pass built nothing (2 before)
    assert passes == [EXCHANGES, EXCHANGES]


async def test_a_service_for_input_computes_the_timer_once(
    certs: CertFiles, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    timers = await _exchanges(certs, monkeypatch, "get_timer")
    # two services per side per exchange (its write, the answer's receive), each asks
    # for the next deadline once; 4 per exchange before (and checking it first)
    assert all(t <= 2 * EXCHANGES + 4 for t in timers), timers


async def test_nothing_to_send_never_hides_a_frame(
    certs: CertFiles, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whenever the pre-check says nothing is to be sent, aioquic's own pass agrees:
    through bulk transfers both ways (credit updates), stream opens and closes (stream
    credit), keepalives and idle periods."""
    checked = [0]
    precheck = TunnelQuicConnection._nothing_to_send

    def verified(self: TunnelQuicConnection, now: float) -> bool:
        nothing = precheck(self, now)
        if nothing:
            checked[0] += 1
            pacing = self._pacing_at
            assert QuicConnection.datagrams_to_send(self, now=now) == []
            self._pacing_at = pacing
        return nothing

    monkeypatch.setattr(TunnelQuicConnection, "_nothing_to_send", verified)
    t = TransportSettings(max_concurrent_streams=8)
    async with settled_pair(certs, t) as (_link, client, server):
        for round_ in range(20):
            mine = await client.open_stream()
            await mine.send_all(b"x" * (300 * 1024 if round_ % 5 == 0 else 100))
            await mine.send_eof()
            theirs = await server.accept_stream()
            got = b""
            while chunk := await theirs.receive_some():
                got += chunk
            await theirs.send_all(b"y" * (200 * 1024 if round_ % 7 == 0 else 50))
            await theirs.send_eof()
            answer = 0
            while chunk := await mine.receive_some():
                answer += len(chunk)
            await mine.aclose()
            await theirs.aclose()
            if round_ % 4 == 0:
                await trio.sleep(30)  # keepalives, and timers expire
    assert checked[0] > 50
