"""One client CONNECT session: parse, authenticate, open the upstream, relay.

Shared by the proxy (upstream: a QUIC stream to the agent) and the LB server
(upstream: a TCP/TLS connection to the proxy that owns the agent).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from .allowlist import AllowList
from .auth.authenticator import Authenticator, AuthError
from .metrics import SessionMetrics
from .relay import RelayStats, relay
from .wire.http import (
    PROXY_AUTHENTICATE,
    ConnectRequest,
    HttpError,
    read_connect_request,
    response_bytes,
)

log = logging.getLogger(__name__)
access_log = logging.getLogger("reverse_http.access")


@dataclass
class Upstream:
    """An open path towards the destination, already past its CONNECT."""

    stream: trio.abc.HalfCloseableStream | trio.abc.Stream
    #: Bytes the upstream sent right after its 200; they belong to the client.
    leftover: bytes = b""


#: Opens the upstream for (agent id, request, the client's Proxy-Authorization);
#: raises HttpError with the status the client should see.
OpenUpstream = Callable[[str, ConnectRequest, str], Awaitable[Upstream]]


@dataclass
class SessionPolicy:
    authenticator: Authenticator
    allow: AllowList
    open_upstream: OpenUpstream
    header_timeout: float = 10.0
    metrics: SessionMetrics | None = None
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
    #: From accept to the 200 sent back (None: no tunnel was set up).
    setup_seconds: float | None = None
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
) -> None:
    """Serve one client connection; always closes it, never raises for client faults."""
    record = SessionRecord(client=peer)
    if policy.metrics is not None:
        policy.metrics.session_started()
    try:
        async with client:
            await _serve(client, policy, record)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        record.detail = record.detail or f"client connection failed: {exc}"
    finally:
        if record.status:
            record.emit()
        if policy.metrics is not None:
            r = record
            policy.metrics.session_finished(r.status, r.stats.up, r.stats.down, r.setup_seconds)


async def refuse(client: trio.abc.Stream, status: int, detail: str) -> None:
    """Answer ``status`` and close, e.g. while shutting down."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        async with client:
            await client.send_all(response_bytes(status, detail))


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
        authorization = request.headers.get("proxy-authorization", "")
        try:
            agent_id = policy.authenticator.check_client(authorization)
        except AuthError as exc:
            raise HttpError(407, f"proxy authentication failed: {exc}") from None
        record.agent_id = agent_id
        if not policy.allow.allows(request.host, request.port):
            raise HttpError(403, f"destination {request.authority} is not allowed by the proxy")
        upstream = await policy.open_upstream(agent_id, request, authorization)
    except HttpError as exc:
        record.status, record.detail = exc.status, exc.detail
        headers = [PROXY_AUTHENTICATE] if exc.status == 407 else None
        await client.send_all(response_bytes(exc.status, exc.detail, headers))
        return
    async with upstream.stream:
        record.status = 200
        await client.send_all(response_bytes(200))
        record.setup_seconds = trio.current_time() - record.started
        if upstream.leftover:
            await client.send_all(upstream.leftover)
            record.stats.down += len(upstream.leftover)
        if request.leftover:
            await upstream.stream.send_all(request.leftover)
            record.stats.up += len(request.leftover)
        await relay(client, upstream.stream, record.stats)
        if record.stats.error:
            record.detail = record.stats.error
