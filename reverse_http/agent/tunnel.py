"""Serve one tunnel stream on the agent: the proxy's CONNECT, then the relay."""

from __future__ import annotations

import ipaddress
import logging
import socket

import trio

from ..allowlist import AllowList
from ..quic import QuicStream
from ..relay import RelayStats, relay
from ..wire.http import HttpError, read_connect_request, response_bytes

log = logging.getLogger(__name__)

#: The proxy writes its CONNECT right after opening the stream.
REQUEST_TIMEOUT = 10.0
MAX_HEADER_BYTES = 16 * 1024


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


async def serve_tunnel(stream: QuicStream, allow: AllowList, dial_timeout: float) -> None:
    """Answer 200 and relay, 403 when the allow-list refuses, 503 when the dial fails."""
    async with stream:
        try:
            await _serve(stream, allow, dial_timeout)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("tunnel stream %d ended early: %s", stream.stream_id, exc)


async def _serve(stream: QuicStream, allow: AllowList, dial_timeout: float) -> None:
    try:
        with trio.move_on_after(REQUEST_TIMEOUT) as scope:
            request = await read_connect_request(stream, MAX_HEADER_BYTES)
        if scope.cancelled_caught:
            raise HttpError(408, "no CONNECT received")
        if request is None:
            return
        if not allow.allows(request.host, request.port):
            raise HttpError(403, f"destination {request.authority} is not allowed by the agent")
        target: trio.SocketStream | None = None
        with trio.move_on_after(dial_timeout):
            try:
                target = await dial_tcp(request.host, request.port)
            except OSError as exc:
                raise HttpError(503, f"dial {request.authority}: {exc.strerror or exc}") from None
        if target is None:
            raise HttpError(503, f"dial {request.authority}: timed out after {dial_timeout:g}s")
    except HttpError as exc:
        log.info("tunnel refused: %d %s", exc.status, exc.detail)
        await stream.send_all(response_bytes(exc.status, exc.detail))
        await stream.send_eof()
        return
    async with target:
        await stream.send_all(response_bytes(200))
        if request.leftover:
            await target.send_all(request.leftover)
        stats = await relay(stream, target, RelayStats())
    log.debug(
        "tunnel to %s closed: %d B up, %d B down%s",
        request.authority,
        stats.up,
        stats.down,
        f" ({stats.error})" if stats.error else "",
    )
