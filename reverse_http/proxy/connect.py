"""The proxy's upstream for a CONNECT: a new QUIC stream to the agent."""

from __future__ import annotations

import trio

from ..quic import Connection, ConnectionError, QuicStream, StreamLimitError
from ..safetext import safe_text
from ..session import OpenUpstream, Upstream
from ..wire.http import ConnectRequest, HttpError, ResponseHead, request_tunnel
from .agents import AgentRegistry


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
            try:
                head = await request_tunnel(stream, request.host, request.port)
            except HttpError as exc:
                raise HttpError(503, f"agent answered badly: {exc.detail}") from None
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


def _why(head: ResponseHead) -> str:
    """The agent's own reason (refused, timed out, DNS...) from its answer's body.

    Our agents write ``dial <host:port>: <reason>``; the Go agent sends no body, so
    its status line is all there is to pass on.
    """
    text = safe_text(head.body.decode("utf-8", "replace").strip())
    if text.startswith("dial ") and ": " in text:
        text = text.split(": ", 1)[1]
    return text or f"{head.status} {head.reason} (the agent gave no reason)"
