"""HTTP/1.1 CONNECT heads, parsed with h11 and written as the reference writes them."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import h11
import trio

from ..allowlist import parse_authority
from ..safetext import MAX_TEXT, safe_text

REASONS = {
    200: "Connection established",
    400: "Bad Request",
    403: "Forbidden",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
PROXY_AUTHENTICATE = ("Proxy-Authenticate", 'Basic realm="reverse-http"')
#: An answer's body: the detail, with what it quotes from peers already cut to MAX_TEXT.
MAX_DETAIL = 4 * MAX_TEXT


class HttpError(Exception):
    """A request that must be answered with ``status``; ``detail`` is safe to show.

    Safe means: no credential, and anything quoted from a peer passed through
    :func:`safe_text` (the answer and the log escape the whole again).
    """

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class ConnectRequest:
    host: str
    port: int
    headers: dict[str, str]
    #: Bytes the client sent after the head; they belong to the tunnel.
    leftover: bytes

    @property
    def authority(self) -> str:
        return format_authority(self.host, self.port)


def format_authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def connect_request_bytes(host: str, port: int, extra: Sequence[tuple[str, str]] = ()) -> bytes:
    """The CONNECT the reference writes on a tunnel stream (and the LB to a proxy)."""
    authority = format_authority(host, port)
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    lines += [f"{k}: {v}" for k, v in extra]
    lines.append("Proxy-Connection: keep-alive")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def response_bytes(
    status: int, detail: str = "", headers: list[tuple[str, str]] | None = None
) -> bytes:
    reason = REASONS.get(status, "Error")
    lines = [f"HTTP/1.1 {status} {reason}"]
    for k, v in headers or []:
        lines.append(f"{k}: {v}")
    if status == 200:
        return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    body = (safe_text(detail, MAX_DETAIL) + "\n").encode() if detail else b""
    lines += ["Content-Type: text/plain; charset=utf-8", f"Content-Length: {len(body)}"]
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


#: A whole CONNECT head in its plainest form: printable ASCII, single spaces in the
#: request line, CRLF only. Every head it matches, h11 parses the same way, so it
#: can skip h11; anything else (tabs, obs-fold, bare LF, other bytes) goes to h11.
_SIMPLE_HEAD = re.compile(
    rb"CONNECT ([\x21-\x7e]+) HTTP/1\.([01])\r\n"
    rb"((?:[-!#$%&'*+.^_`|~0-9A-Za-z]+:[\x20-\x7e]*\r\n)*)\r\n"
)
#: h11 rewrites or rejects these, so heads with them take the h11 path.
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding"})
#: Headers a request may carry once: with two, which one counts would be a guess.
_SINGLE_HEADERS = {"proxy-authorization": "Proxy-Authorization"}
#: Where h11 starts quoting the offending bytes in its error messages.
_H11_QUOTE = re.compile(r":? (?:bytearray\()?b['\"]")
#: The field name at the start of a quoted header line h11 refused, if it has one.
_H11_BAD_HEADER = re.compile(
    r"illegal header line: (?:bytearray\()?b['\"]([-!#$%&*+.^_`|~0-9A-Za-z]{1,64})(?: |\\t)*:"
)


def _header_dict(fields: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Lower-cased names to values; HttpError(400) for a repeated credentials header."""
    headers: dict[str, str] = {}
    for name, value in fields:
        if name in headers and name in _SINGLE_HEADERS:
            raise HttpError(400, f"duplicate {_SINGLE_HEADERS[name]} header")
        headers[name] = value
    return headers


def _h11_text(exc: h11.RemoteProtocolError) -> str:
    """h11's complaint up to where it quotes the offending bytes."""
    message = str(exc)
    quote = _H11_QUOTE.search(message)
    return safe_text(message[: quote.start()] if quote else message)


def _malformed_request(exc: h11.RemoteProtocolError) -> str:
    """Why h11 refused a request head, naming a bad header line but never quoting it."""
    text = _h11_text(exc)
    if text == "illegal header line":
        named = _H11_BAD_HEADER.match(str(exc))
        return f"malformed header line ({named.group(1)})" if named else "malformed header line"
    if text == "illegal request line":
        return "malformed request line"
    return f"malformed request: {text}"


def _target_error(target: str, exc: Exception) -> str:
    """Why ``target`` is refused; a target with user info is not quoted (it may hold a password)."""
    if "@" in target:
        return "CONNECT target must not contain user info"
    return safe_text(exc)


def _parse_simple_connect(data: bytes, max_header_bytes: int) -> ConnectRequest | None:
    """The request in ``data`` when h11 would accept it unchanged; None leaves it to h11.

    Saves building an h11 connection per session for the heads proxies and agents
    actually see; heads longer than ``max_header_bytes`` never match.
    """
    match = _SIMPLE_HEAD.match(data, 0, max_header_bytes)
    if match is None:
        return None
    target, minor, block = match.groups()
    fields: list[tuple[str, str]] = []
    hosts = 0
    for line in block.decode("ascii").split("\r\n")[:-1]:
        name, _, value = line.partition(":")
        name = name.lower()
        if name in _FRAMING_HEADERS:
            return None
        if name == "host":
            hosts += 1
        fields.append((name, value.strip(" ")))
    if hosts > 1 or (hosts == 0 and minor == b"1"):
        return None
    try:
        host, port = parse_authority(target.decode("ascii"))
    except ValueError:
        return None
    return ConnectRequest(host, port, _header_dict(fields), data[match.end() :])


async def read_connect_request(
    stream: trio.abc.ReceiveStream, max_header_bytes: int
) -> ConnectRequest | None:
    """Parse one request head; None if the peer closed before sending anything.

    Raises :class:`HttpError` with the status to answer: 400 malformed or with two
    Proxy-Authorization headers, 431 too large, 405 not CONNECT. A plain head that
    arrives in one read skips h11; the answers are the same either way, and never
    quote a header line.
    """
    first = bytes(await stream.receive_some(65536))
    if not first:
        return None
    request = _parse_simple_connect(first, max_header_bytes)
    if request is not None:
        return request
    return await _read_connect_request_h11(stream, max_header_bytes, first)


async def _read_connect_request_h11(
    stream: trio.abc.ReceiveStream, max_header_bytes: int, first: bytes = b""
) -> ConnectRequest | None:
    """:func:`read_connect_request` by h11 alone, after ``first`` (bytes already read).

    The reference for what the fast path must agree with.
    """
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_header_bytes)
    received_any = False
    received = 0
    if first:
        conn.receive_data(first)
        received_any = True
        received = len(first)
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == 431:
                raise HttpError(431, "request headers too large") from None
            raise HttpError(400, _malformed_request(exc)) from None
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            if not data and not received_any:
                return None
            received_any = True
            received += len(data)
            conn.receive_data(bytes(data))
            continue
        if isinstance(event, h11.ConnectionClosed):
            if not received_any:
                return None
            raise HttpError(400, "connection closed in the middle of the request head")
        if isinstance(event, h11.Request):
            if event.method != b"CONNECT":
                raise HttpError(405, "only CONNECT is served")
            target = event.target.decode("ascii", "backslashreplace")
            try:
                host, port = parse_authority(target)
            except ValueError as exc:
                raise HttpError(400, _target_error(target, exc)) from None
            leftover = conn.trailing_data[0]
            # h11 bounds only incomplete heads; one that arrived whole is checked here.
            if received - len(leftover) > max_header_bytes:
                raise HttpError(431, "request headers too large")
            headers = _header_dict(
                (k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in event.headers
            )
            return ConnectRequest(host, port, headers, bytes(leftover))
        raise HttpError(400, "unexpected HTTP event")


@dataclass(frozen=True)
class ResponseHead:
    status: int
    reason: str
    leftover: bytes
    #: A refusal's body (its reason, as our agents and proxies write it), at most
    #: MAX_DETAIL bytes; empty for a 200 and for peers that give no reason (Go).
    body: bytes = b""


#: The 200s agents answer a CONNECT with (ours, and the Go reference's), whole in the
#: first read: h11 parses each as (200, its reason, what follows), so they skip it
#: (an h11 connection per tunnel cost ~50 us of the proxy's new-connection path).
_PLAIN_200S = (
    (response_bytes(200), REASONS[200]),
    (b"HTTP/1.1 200 OK\r\n\r\n", "OK"),
)


async def read_response_head(
    stream: trio.abc.ReceiveStream, authority: str, max_header_bytes: int = 16384
) -> ResponseHead:
    """Read the answer to a CONNECT for ``authority`` that was already sent.

    Raises HttpError(502) when the peer's answer is not HTTP.
    """
    first = bytes(await stream.receive_some(65536))
    for plain, reason in _PLAIN_200S:
        if first.startswith(plain):
            return ResponseHead(200, reason, first[len(plain) :])
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_header_bytes)
    # h11 must see the request to know what the answer responds to.
    conn.send(h11.Request(method="CONNECT", target=authority, headers=[("Host", authority)]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(first)
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise HttpError(
                502, f"upstream answered something that is not HTTP: {_h11_text(exc)}"
            ) from None
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            conn.receive_data(bytes(data))
            continue
        if isinstance(event, h11.Response):
            reason = safe_text(event.reason.decode("latin-1"))
            if event.status_code == 200:
                return ResponseHead(200, reason, bytes(conn.trailing_data[0]))
            body = await _read_body(conn, stream)
            return ResponseHead(event.status_code, reason, b"", body)
        if isinstance(event, h11.ConnectionClosed):
            raise HttpError(502, "upstream closed before answering")
        if isinstance(event, h11.InformationalResponse):
            continue
        raise HttpError(502, "unexpected answer from upstream")


async def _read_body(conn: h11.Connection, stream: trio.abc.ReceiveStream) -> bytes:
    """The body of a refusal, up to MAX_DETAIL bytes; whatever arrived if it breaks off.

    The caller bounds the time: a peer that sends no body and keeps the stream open
    costs at most the caller's deadline, and the answer's status stands either way.
    """
    body = b""
    try:
        while len(body) < MAX_DETAIL:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(bytes(data))
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            else:
                break  # EndOfMessage, or the peer closed
    except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    return body[:MAX_DETAIL]


async def request_tunnel(
    stream: trio.abc.Stream, host: str, port: int, extra: Sequence[tuple[str, str]] = ()
) -> ResponseHead:
    """Send the reference's CONNECT on ``stream`` and read the answer head.

    Raises HttpError(502) when the answer is not HTTP; the status is the caller's to judge.
    """
    await stream.send_all(connect_request_bytes(host, port, extra))
    return await read_response_head(stream, format_authority(host, port))
