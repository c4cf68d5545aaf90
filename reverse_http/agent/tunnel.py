"""Serve one tunnel stream on the agent: the proxy's CONNECT, then the relay.

A refusal's answer carries the reason in its body (``dial host:port: connection
refused``), which the proxy passes on in its own 503; the Go proxy ignores the body.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket

import trio

from ..allowlist import AllowList
from ..logs import log_fields
from ..metrics import AgentMetrics
from ..quic import QuicStream
from ..relay import RelayStats, relay
from ..wire.http import HttpError, read_connect_request, response_bytes

log = logging.getLogger(__name__)

#: The proxy writes its CONNECT right after opening the stream.
REQUEST_TIMEOUT = 10.0
MAX_HEADER_BYTES = 16 * 1024

_UNREACHABLE = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL})


class _Refusal(HttpError):
    """An answer other than 200, with the ``agent_sessions_failed_total`` reason."""

    def __init__(self, status: int, detail: str, reason: str) -> None:
        super().__init__(status, detail)
        self.reason = reason


async def dial_tcp(host: str, port: int) -> trio.SocketStream:
    """TCP to host:port; an IP literal skips the resolver and happy-eyeballs machinery."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return await trio.open_tcp_stream(host, port)
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


def dial_failure(exc: OSError) -> tuple[str, str]:
    """(reason label, words) for a failed dial: refused, dns, unreachable, timeout, error.

    trio's happy eyeballs raises one OSError for all its attempts, the individual
    errors in its cause; they agree in the common case (every address refused).
    """
    if isinstance(exc, socket.gaierror):
        return "dns", f"cannot resolve the host: {exc.strerror or exc}"
    errors = [exc]
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        errors = [e for e in cause.exceptions if isinstance(e, OSError)] or errors
    codes = {e.errno for e in errors}
    if codes == {errno.ECONNREFUSED}:
        return "refused", "connection refused"
    if codes <= _UNREACHABLE:
        return "unreachable", f"{errors[0].strerror or 'unreachable'}".lower()
    if codes == {errno.ETIMEDOUT}:
        return "timeout", "connection timed out"
    first = errors[0]
    return "error", str(first.strerror or first).lower()


async def serve_tunnel(
    stream: QuicStream,
    allow: AllowList,
    dial_timeout: float,
    metrics: AgentMetrics | None = None,
) -> None:
    """Answer 200 and relay, 403 when the allow-list refuses, 503 when the dial fails."""
    if metrics is not None:
        metrics.session_started()
    stats = RelayStats()
    failure: str | None = None
    try:
        async with stream:
            failure = await _serve(stream, allow, dial_timeout, stats, metrics)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        log.debug("tunnel stream %d ended early: %s", stream.stream_id, exc)
    finally:
        if metrics is not None:
            metrics.session_finished(failure, stats.up, stats.down)


async def _serve(
    stream: QuicStream,
    allow: AllowList,
    dial_timeout: float,
    stats: RelayStats,
    metrics: AgentMetrics | None = None,
) -> str | None:
    """The tunnel's failure reason, or None once it relayed (or the proxy left at once)."""
    try:
        with trio.move_on_after(REQUEST_TIMEOUT) as scope:
            try:
                request = await read_connect_request(stream, MAX_HEADER_BYTES)
            except HttpError as exc:
                raise _Refusal(exc.status, exc.detail, "bad_request") from None
        if scope.cancelled_caught:
            raise _Refusal(408, "no CONNECT received", "bad_request")
        if request is None:
            return None
        if not allow.allows(request.host, request.port):
            raise _Refusal(
                403, f"destination {request.authority} is not allowed by the agent", "not_allowed"
            )
        target: trio.SocketStream | None = None
        started = trio.current_time()
        with trio.move_on_after(dial_timeout):
            try:
                target = await dial_tcp(request.host, request.port)
            except OSError as exc:
                reason, words = dial_failure(exc)
                raise _Refusal(503, f"dial {request.authority}: {words}", reason) from None
        if target is None:
            raise _Refusal(
                503, f"dial {request.authority}: timed out after {dial_timeout:g}s", "timeout"
            )
    except _Refusal as exc:
        log.info(
            "tunnel refused: %d %s",
            exc.status,
            exc.detail,
            extra=log_fields(status=exc.status, reason=exc.reason),
        )
        await stream.send_all(response_bytes(exc.status, exc.detail))
        await stream.send_eof()
        return exc.reason
    if metrics is not None:
        metrics.dialled(trio.current_time() - started)
    async with target:
        await stream.send_all(response_bytes(200))
        if request.leftover:
            await target.send_all(request.leftover)
            stats.up += len(request.leftover)
        await relay(stream, target, stats)
    log.debug(
        "tunnel to %s closed: %d B up, %d B down%s",
        request.authority,
        stats.up,
        stats.down,
        f" ({stats.error})" if stats.error else "",
        extra=log_fields(destination=request.authority, bytes_up=stats.up, bytes_down=stats.down),
    )
    return None
