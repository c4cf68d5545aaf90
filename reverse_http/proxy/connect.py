"""One client CONNECT session: parse, authenticate, open a tunnel stream, relay."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from ..allowlist import AllowList
from ..quic import Connection, ConnectionError, QuicStream
from ..relay import RelayStats, relay
from ..wire.http import (
    PROXY_AUTHENTICATE,
    ConnectRequest,
    HttpError,
    connect_request_bytes,
    read_connect_request,
    read_response_head,
    response_bytes,
)
from .auth import Authenticator, AuthError

log = logging.getLogger(__name__)
access_log = logging.getLogger("reverse_http.access")

#: Finds the agent connection for an agent id (None: not connected here).
AgentLookup = Callable[[str], Connection | None]


@dataclass
class SessionPolicy:
    authenticator: Authenticator
    allow: AllowList
    lookup: AgentLookup
    dial_timeout: float = 10.0
    header_timeout: float = 10.0
    max_header_bytes: int = 16 * 1024


@dataclass
class SessionRecord:
    """What the access log says about one session."""

    client: str
    agent_id: str = "-"
    destination: str = "-"
    status: int = 0
    detail: str = ""
    started: float = field(default_factory=trio.current_time)
    stats: RelayStats = field(default_factory=RelayStats)

    def emit(self) -> None:
        duration = trio.current_time() - self.started
        fields = {
            "client": self.client,
            "agent_id": self.agent_id,
            "destination": self.destination,
            "status": self.status,
            "bytes_up": self.stats.up,
            "bytes_down": self.stats.down,
            "duration": round(duration, 6),
        }
        if self.detail:
            fields["detail"] = self.detail
        access_log.info(
            "CONNECT %s via agent %s -> %d (up %d B, down %d B, %.3fs)%s",
            self.destination,
            self.agent_id,
            self.status,
            self.stats.up,
            self.stats.down,
            duration,
            f": {self.detail}" if self.detail else "",
            extra={"fields": fields},
        )


async def handle_client(
    client: trio.abc.Stream,
    policy: SessionPolicy,
    peer: str,
    on_session: Callable[[SessionRecord], Awaitable[None]] | None = None,
) -> None:
    """Serve one client connection; always closes it, never raises for client faults."""
    record = SessionRecord(client=peer)
    try:
        async with client:
            await _serve(client, policy, record)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        record.detail = record.detail or f"client connection failed: {exc}"
    finally:
        if record.status:
            record.emit()
        if on_session is not None:
            await on_session(record)


async def _serve(client: trio.abc.Stream, policy: SessionPolicy, record: SessionRecord) -> None:
    request: ConnectRequest | None = None
    try:
        with trio.move_on_after(policy.header_timeout) as timeout:
            request = await read_connect_request(client, policy.max_header_bytes)
        if timeout.cancelled_caught:
            raise HttpError(408, "timed out waiting for the request headers")
        if request is None:
            return  # connected and left without a word
        record.destination = request.authority
        try:
            agent_id = policy.authenticator.check_client(request.headers.get("proxy-authorization"))
        except AuthError as exc:
            raise HttpError(407, f"proxy authentication failed: {exc}") from None
        record.agent_id = agent_id
        if not policy.allow.allows(request.host, request.port):
            raise HttpError(403, f"destination {request.authority} is not allowed by the proxy")
        conn = policy.lookup(agent_id)
        if conn is None:
            raise HttpError(503, f"agent {agent_id} is not connected")
        tunnel = await _open_tunnel(conn, request, policy.dial_timeout)
    except HttpError as exc:
        record.status, record.detail = exc.status, exc.detail
        headers = [PROXY_AUTHENTICATE] if exc.status == 407 else None
        await client.send_all(response_bytes(exc.status, exc.detail, headers))
        return
    async with tunnel.stream:
        record.status = 200
        await client.send_all(response_bytes(200))
        if tunnel.leftover:
            await client.send_all(tunnel.leftover)
            record.stats.down += len(tunnel.leftover)
        if request.leftover:
            await tunnel.stream.send_all(request.leftover)
            record.stats.up += len(request.leftover)
        await relay(client, tunnel.stream, record.stats)
        if record.stats.error:
            record.detail = record.stats.error


@dataclass
class _Tunnel:
    stream: QuicStream
    leftover: bytes


async def _open_tunnel(
    conn: Connection, request: ConnectRequest, dial_timeout: float
) -> _Tunnel:
    """A stream to the agent whose CONNECT it accepted; HttpError(403/503) otherwise."""
    stream: QuicStream | None = None
    try:
        with trio.move_on_after(dial_timeout):
            stream = await conn.open_stream()
            await stream.send_all(connect_request_bytes(request.host, request.port))
            try:
                head = await read_response_head(stream, request.authority)
            except HttpError as exc:
                raise HttpError(503, f"agent answered badly: {exc.detail}") from None
            if head.status == 200:
                tunnel, stream = _Tunnel(stream, head.leftover), None
                return tunnel
            if head.status == 403:
                raise HttpError(403, f"destination {request.authority} is not allowed by the agent")
            raise HttpError(
                503, f"agent could not reach {request.authority}: {head.status} {head.reason}"
            )
        raise HttpError(503, f"agent did not answer within {dial_timeout:g}s")
    except (ConnectionError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise HttpError(503, f"tunnel to agent failed: {exc}") from None
    finally:
        if stream is not None:
            with trio.CancelScope(shield=True):
                await stream.aclose()
