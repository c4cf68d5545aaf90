"""The proxy's upstream for a CONNECT: a new QUIC stream to the agent."""

from __future__ import annotations

import trio

from ..quic import Connection, ConnectionError, QuicStream, StreamLimitError
from ..safetext import safe_text
from ..session import OpenUpstream, Upstream
from ..wire.http import ConnectRequest, HttpError, ResponseHead, request_tunnel
from .agents import AgentRegistry

#: An agent quiet for longer than this must show it is alive while its CONNECT is on
#: its way: an idle agent's keepalive comes every 10 s, a cut link's never.
SILENT_AFTER = 2.0
#: How long such an agent has to answer with any packet (our CONNECT draws an ACK).
PROOF_OF_LIFE_TIMEOUT = 1.0


def agent_upstream(registry: AgentRegistry, dial_timeout: float) -> OpenUpstream:
    async def open_upstream(agent_id: str, request: ConnectRequest, _auth: str) -> Upstream:
        conn = registry.get(agent_id)
        if conn is None:
            raise HttpError(503, f"agent {safe_text(agent_id)} is not connected")
        return await open_tunnel(conn, request, dial_timeout)

    return open_upstream


async def open_tunnel(conn: Connection, request: ConnectRequest, dial_timeout: float) -> Upstream:
    """A stream to the agent whose CONNECT it accepted; HttpError(403/503) otherwise.

    The 503 says where the time went: waiting for the agent's stream limit (its
    concurrent tunnels are all in use), or waiting for the agent's answer.
    """
    stream: QuicStream | None = None
    try:
        with trio.move_on_after(dial_timeout):
            try:
                stream = await conn.open_stream()
            except StreamLimitError as exc:
                raise HttpError(
                    503, f"agent has no free stream for another tunnel: {safe_text(exc)}"
                ) from None
            silent = conn.silent_for()
            try:
                head = await _request(conn, stream, request, silent)
            except HttpError as exc:
                raise HttpError(503, f"agent answered badly: {exc.detail}") from None
            if head is None:
                raise HttpError(
                    503,
                    f"agent has been silent for {conn.silent_for():.0f}s (its network may be "
                    "down); tunnels in flight wait for it, new ones are refused",
                )
            if head.status == 200:
                tunnel, stream = Upstream(stream, head.leftover), None
                return tunnel
            if head.status == 403:
                raise HttpError(403, f"destination {request.authority} is not allowed by the agent")
            raise HttpError(503, f"agent could not reach {request.authority}: {_why(head)}")
        if stream is None:
            raise HttpError(
                503,
                f"agent's stream limit reached: no tunnel stream became free within "
                f"{dial_timeout:g}s",
            )
        raise HttpError(503, f"agent did not answer within {dial_timeout:g}s")
    except (ConnectionError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise HttpError(503, f"tunnel to agent failed: {safe_text(exc)}") from None
    finally:
        if stream is not None:
            with trio.CancelScope(shield=True):
                await stream.aclose()


async def _request(
    conn: Connection, stream: QuicStream, request: ConnectRequest, silent: float
) -> ResponseHead | None:
    """The agent's answer to our CONNECT; a fast 503 if the agent went silent.

    During an outage the connection lives on (up to the liveness timeout) so that
    transfers in flight resume, but a new CONNECT would wait its whole dial timeout.
    An agent that has been quiet for a while therefore gets its CONNECT sent at once
    (no extra round trip when it is merely idle) and must show any sign of life
    within a second or so (None: it did not), else the client would learn nothing
    for the whole dial timeout.
    """
    if silent <= SILENT_AFTER:
        return await request_tunnel(stream, request.host, request.port)
    sent_at = trio.current_time()
    patience = max(PROOF_OF_LIFE_TIMEOUT, 3 * conn.stats().get("rtt_seconds", 0.0))
    dead = False
    async with trio.open_nursery() as nursery:

        async def proof_of_life() -> None:
            nonlocal dead
            with trio.move_on_after(patience):
                await conn.wait_heard_since(sent_at)
                return
            dead = True
            nursery.cancel_scope.cancel()

        nursery.start_soon(proof_of_life)
        head = await request_tunnel(stream, request.host, request.port)
        nursery.cancel_scope.cancel()
    return None if dead else head


def _why(head: ResponseHead) -> str:
    """The agent's own reason (refused, timed out, DNS...) from its answer's body.

    Our agents write ``dial <host:port>: <reason>``; the Go agent sends no body, so
    its status line is all there is to pass on.
    """
    text = safe_text(head.body.decode("utf-8", "replace").strip())
    if text.startswith("dial ") and ": " in text:
        text = text.split(": ", 1)[1]
    return text or f"{head.status} {head.reason} (the agent gave no reason)"
