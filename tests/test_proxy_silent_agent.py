"""A new CONNECT to an agent whose link went quiet: an idle agent still gets its
tunnel with no extra round trip, a cut-off one a 503 within about a second instead of
the whole dial timeout; tunnels already open keep waiting for it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from reverse_http.devcerts import CertFiles
from reverse_http.proxy.connect import PROOF_OF_LIFE_TIMEOUT, SILENT_AFTER, open_tunnel
from reverse_http.quic import Connection, TransportSettings
from reverse_http.wire.http import ConnectRequest, HttpError
from tests.quic_memory import Link, linked

REQUEST = ConnectRequest(host="10.0.0.1", port=80, headers={}, leftover=b"")


async def answer_connects(agent: Connection) -> None:
    """The agent's side: every CONNECT gets a 200."""
    async with trio.open_nursery() as nursery:
        while True:
            stream = await agent.accept_stream()

            async def answer(s: object = stream) -> None:
                head = b""
                while b"\r\n\r\n" not in head:
                    head += await s.receive_some()  # type: ignore[attr-defined]
                await s.send_all(b"HTTP/1.1 200 OK\r\n\r\n")  # type: ignore[attr-defined]

            nursery.start_soon(answer)


@asynccontextmanager
async def agent_answering(certs: CertFiles) -> AsyncIterator[tuple[Link, Connection]]:
    """A proxy-side connection to an agent that answers every CONNECT with 200."""
    async with linked(certs, TransportSettings()) as (link, agent):
        proxy = await link.server_conn()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer_connects, agent)
            yield link, proxy
            nursery.cancel_scope.cancel()


async def test_an_idle_agent_answers_as_usual(
    certs: CertFiles, autojump_clock: trio.testing.MockClock
) -> None:
    async with agent_answering(certs) as (_link, proxy):
        await trio.sleep(5)  # quiet, but within its keepalive period
        assert proxy.silent_for() > SILENT_AFTER
        t0 = trio.current_time()
        tunnel = await open_tunnel(proxy, REQUEST, dial_timeout=10)
        assert trio.current_time() - t0 < 0.1  # one round trip, nothing added
        await tunnel.stream.aclose()


async def test_an_agent_cut_off_gets_a_fast_503_and_open_tunnels_wait(
    certs: CertFiles, autojump_clock: trio.testing.MockClock
) -> None:
    async with agent_answering(certs) as (link, proxy):
        open_before = await open_tunnel(proxy, REQUEST, dial_timeout=10)
        link.up = False  # the agent's network goes away
        await trio.sleep(3)
        t0 = trio.current_time()
        with pytest.raises(HttpError) as refused:
            await open_tunnel(proxy, REQUEST, dial_timeout=10)
        waited = trio.current_time() - t0
        assert refused.value.status == 503
        assert "agent has been silent for" in refused.value.detail
        assert PROOF_OF_LIFE_TIMEOUT - 0.01 <= waited < PROOF_OF_LIFE_TIMEOUT + 0.5
        # the link comes back within the liveness timeout: the old tunnel still works
        link.up = True
        await open_before.stream.send_all(b"still there?")
        assert not proxy.is_closed
        tunnel = await open_tunnel(proxy, REQUEST, dial_timeout=10)
        await tunnel.stream.aclose()
        await open_before.stream.aclose()
