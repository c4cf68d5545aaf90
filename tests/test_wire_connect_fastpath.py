"""The CONNECT fast path answers exactly as the h11 parser does and is taken for plain heads;
neither ever quotes a credential back, and two Proxy-Authorization headers are refused."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from itertools import pairwise

import h11
import pytest
import trio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from reverse_http.allowlist import AllowList
from reverse_http.auth.authenticator import Authenticator
from reverse_http.logs import JsonFormatter, TextFormatter
from reverse_http.safetext import safe_text
from reverse_http.session import SessionPolicy, Upstream, handle_client
from reverse_http.wire.http import (
    ConnectRequest,
    HttpError,
    _parse_simple_connect,
    _read_connect_request_h11,
    connect_request_bytes,
    read_connect_request,
)

Reader = Callable[[trio.abc.ReceiveStream, int], Awaitable[ConnectRequest | None]]
Outcome = tuple[object, ...]

TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
CURL_HEAD = (
    b"CONNECT example.com:443 HTTP/1.1\r\n"
    b"Host: example.com:443\r\n"
    b"Proxy-Authorization: Basic dXNlcjpwYXNzd29yZA==\r\n"
    b"User-Agent: curl/7.88.1\r\n"
    b"Proxy-Connection: Keep-Alive\r\n"
    b"\r\n"
)


class ChunkStream(trio.abc.ReceiveStream):
    """Hands out ``chunks`` one per read (split to ``max_bytes``), then EOF forever."""

    def __init__(self, chunks: Sequence[bytes]) -> None:
        self._chunks = [c for c in chunks if c]
        self.reads = 0

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        self.reads += 1
        if not self._chunks:
            return b""
        chunk = self._chunks.pop(0)
        if max_bytes is not None and len(chunk) > max_bytes:
            chunk, rest = chunk[:max_bytes], chunk[max_bytes:]
            self._chunks.insert(0, rest)
        return chunk

    async def aclose(self) -> None:
        pass


async def outcome(reader: Reader, chunks: Sequence[bytes], max_header_bytes: int) -> Outcome:
    stream = ChunkStream(chunks)
    try:
        result = await reader(stream, max_header_bytes)
    except HttpError as exc:
        return ("error", exc.status, exc.detail, stream.reads)
    return ("ok", result, stream.reads)


def both(chunks: Sequence[bytes], max_header_bytes: int) -> tuple[Outcome, Outcome]:
    async def run() -> tuple[Outcome, Outcome]:
        new = await outcome(read_connect_request, chunks, max_header_bytes)
        old = await outcome(_read_connect_request_h11, chunks, max_header_bytes)
        return new, old

    return trio.run(run)


def decided_by_fast_path(data: bytes, max_header_bytes: int) -> bool:
    """The fast path answered: with a request or a refusal (two Proxy-Authorization)."""
    try:
        return _parse_simple_connect(data, max_header_bytes) is not None
    except HttpError:
        return True


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = sorted({min(max(c, 0), len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in pairwise(points)]


# -- strategies ---------------------------------------------------------------

latin1 = st.characters(max_codepoint=0xFF)
good_targets = st.sampled_from(
    ["example.com:443", "a:1", "10.0.0.1:8080", "[::1]:22", "[2001:db8::1]:443", "host.:65535"]
)
bad_targets = st.one_of(
    st.sampled_from(
        [
            "example.com",
            ":80",
            "a:0",
            "a:65536",
            "a:+1",
            "a:0x10",
            "[::1",
            "[::1]",
            "::1:80",
            "[fe80::1%eth0]:1",
            "a b:1",
            "a:1 ",
            "",
            "*",
            "/",
            "http://a:1/",
            "1.2.3:80",
            "a:\x7f1",
            "caf\xe9:1",
            "a:1\t",
        ]
    ),
    st.text(latin1, max_size=12),
)
odd_methods = st.sampled_from(["connect", "Connect", "GET", "CONNECTX", "CONNECT ", " CONNECT", ""])
odd_versions = st.sampled_from(
    [
        "HTTP/2.0",
        "HTTP/0.9",
        "http/1.1",
        "HTTP/11",
        "HTTP/1.1 ",
        "HTTP/1.1\t",
        "HTTP/1.x",
        "",
        "HTTP/1.1\x00",
        " HTTP/1.1",
    ]
)
plain_names = st.one_of(
    st.sampled_from(
        [
            "Proxy-Authorization",
            "User-Agent",
            "Proxy-Connection",
            "Connection",
            "Upgrade",
            "Expect",
            "X-Forwarded-For",
            "X-Agent",
        ]
    ),
    st.text(alphabet=TCHARS, min_size=1, max_size=10),
).filter(lambda n: n.lower() not in {"host", "content-length", "transfer-encoding"})
plain_values = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30)
odd_names = st.one_of(
    st.sampled_from(
        [
            "Host",
            "HOST",
            "Content-Length",
            "content-length",
            "Transfer-Encoding",
            "X Y",
            " X",
            "X ",
            "",
            "X\x00",
            "\xe9",
            "X\tY",
            "X:Y",
        ]
    ),
    st.text(latin1, max_size=6),
)
odd_values = st.one_of(
    st.sampled_from(
        [
            "keep-alive",
            "close",
            "chunked",
            "gzip, chunked",
            "0",
            "5",
            "5, 5",
            "5, 6",
            "-1",
            "100-continue",
            "h2c",
            "  padded  ",
            "a  b",
            "\tx",
            "x\t",
            "a\tb",
            "\x01",
            "\x7f",
            "\x00",
            "caf\xe9",
            "\x85",
            "a\rb",
            "a\nb",
            "a\r\nb",
            "a\r\n b",
            "a\r\n\tb",
            "\x0b",
            "\x0c",
        ]
    ),
    st.binary(max_size=6).map(lambda b: b.decode("latin-1")),
)
huge_values = st.sampled_from([1000, 16300, 17000, 70000]).map(lambda n: "v" * n)
line_ends = st.sampled_from([b"\n", b"\r", b"\r\r\n", b"\n\r", b" \r\n", b"\r\n\r\n"])
folds = st.sampled_from([b" folded", b"\tfolded", b"  ", b" ", b"\t"])
leftovers = st.one_of(
    st.just(b""),
    st.binary(max_size=16),
    st.just(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
    st.just(CURL_HEAD),
)
MUTATIONS = [
    "method",
    "target",
    "version",
    "header",
    "huge",
    "drop host",
    "extra host",
    "line end",
    "fold",
    "end",
    "byte",
    "truncate",
]


@st.composite
def head_cases(draw: st.DrawFn) -> tuple[list[bytes], int]:
    """A plain head with a few targeted mutations, its chunking, and a limit near its size."""
    method, version = "CONNECT", draw(st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]))
    target = draw(good_targets)
    fields = [(draw(st.sampled_from(["Host", "host", "HOST"])), target)]
    fields += draw(st.lists(st.tuples(plain_names, plain_values), max_size=5))
    mutations = draw(st.lists(st.sampled_from(MUTATIONS), max_size=3))
    for mutation in mutations:
        at = draw(st.integers(0, len(fields)))
        if mutation == "method":
            method = draw(odd_methods)
        elif mutation == "target":
            target = draw(bad_targets)
        elif mutation == "version":
            version = draw(odd_versions)
        elif mutation == "header":
            fields.insert(
                at,
                draw(
                    st.tuples(
                        st.one_of(plain_names, odd_names), st.one_of(plain_values, odd_values)
                    )
                ),
            )
        elif mutation == "huge":
            fields.insert(at, (draw(plain_names), draw(huge_values)))
        elif mutation == "drop host":
            fields = [f for f in fields if f[0].lower() != "host"]
        elif mutation == "extra host":
            fields.insert(at, ("Host", draw(st.one_of(good_targets, plain_values))))
    spaces = draw(
        st.lists(st.sampled_from(["", " ", "  "]), min_size=len(fields), max_size=len(fields))
    )
    lines = [f"{method} {target} {version}".encode("latin-1")]
    lines += [f"{k}:{sp}{v}".encode("latin-1") for (k, v), sp in zip(fields, spaces, strict=True)]
    ends = [b"\r\n"] * len(lines)
    terminator = b"\r\n"
    for mutation in mutations:
        if mutation == "line end":
            ends[draw(st.integers(0, len(ends) - 1))] = draw(line_ends)
        elif mutation == "fold":
            at = draw(st.integers(1, len(lines)))
            lines.insert(at, draw(folds))
            ends.insert(at, b"\r\n")
        elif mutation == "end":
            terminator = draw(st.sampled_from([b"\n", b"", b"\r", b" \r\n", b"\t\r\n"]))
    head = b"".join(line + end for line, end in zip(lines, ends, strict=True)) + terminator
    for mutation in mutations:
        at = draw(st.integers(0, len(head)))
        if mutation == "byte":
            byte = bytes([draw(st.integers(0, 255))])
            kind = draw(st.sampled_from(["insert", "replace", "delete"]))
            if kind == "insert":
                head = head[:at] + byte + head[at:]
            elif kind == "replace":
                head = head[:at] + byte + head[at + 1 :]
            else:
                head = head[:at] + head[at + 1 :]
        elif mutation == "truncate":
            head = head[:at]
    data = head + draw(leftovers)
    cuts = draw(
        st.one_of(st.just([]), st.just([]), st.lists(st.integers(0, len(data)), max_size=4))
    )
    limit = draw(
        st.one_of(
            st.just(16 * 1024),
            st.integers(-2, 2).map(lambda d: max(1, len(head) + d)),
            st.sampled_from([1, 16, 64, 64 * 1024]),
        )
    )
    return split(data, cuts), limit


@st.composite
def simple_heads(draw: st.DrawFn) -> bytes:
    """Heads the fast path is meant to take: plain ASCII, one Host, no framing headers,
    at most one Proxy-Authorization."""
    target = draw(good_targets)
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0"]))
    fields = [("Host", target)] if version == "HTTP/1.1" or draw(st.booleans()) else []
    extra = draw(st.lists(st.tuples(plain_names, plain_values), max_size=8))
    credentials = [f for f in extra if f[0].lower() == "proxy-authorization"]
    fields += [f for f in extra if f not in credentials[1:]]
    lines = [f"CONNECT {target} {version}"] + [f"{k}: {v}" for k, v in fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


# -- properties ---------------------------------------------------------------

PROPERTY = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(head_cases())
def test_same_answer_as_h11(case: tuple[list[bytes], int]) -> None:
    chunks, limit = case
    new, old = both(chunks, limit)
    assert new == old
    fast = bool(chunks) and decided_by_fast_path(chunks[0], limit)
    event("fast path" if fast else f"h11: {new[0]} {new[1] if new[0] == 'error' else ''}")


@settings(max_examples=500, deadline=None)
@given(simple_heads(), leftovers)
def test_plain_heads_take_the_fast_path(head: bytes, leftover: bytes) -> None:
    fast = _parse_simple_connect(head + leftover, 16 * 1024)
    assert fast is not None
    new, old = both([head + leftover], 16 * 1024)
    assert new == old == ("ok", fast, 1)
    assert fast.leftover == leftover


# -- examples ----------------------------------------------------------------

MAX = 16 * 1024


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (CURL_HEAD, None),
        (b"CONNECT a:1 HTTP/1.0\r\n\r\n", None),
        (b"CONNECT a:1 HTTP/2.0\r\nHost: a:1\r\n\r\n", None),
        (b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nX: y\r\n  folded\r\n\r\n", None),
        (b"CONNECT a:1 HTTP/1.1\r\n folded\r\nHost: a:1\r\n\r\n", 400),
        (b"CONNECT a:1 HTTP/1.1\nHost: a:1\n\n", None),
        (b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\n\r\n", None),
        (b"CONNECT a:1 HTTP/1.1\r\nHost:\ta:1\t\r\n\r\n", None),
        (b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nX: a\x01b\r\n\r\n", None),
        (b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nX: a\x00b\r\n\r\n", 400),
        (b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nX: caf\xe9\r\n\r\n", None),
        (b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nX : y\r\n\r\n", 400),
        (b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nContent-Length: 0\r\n\r\n", None),
        (
            b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            400,
        ),
        (b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
        (b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nTransfer-Encoding: chunked\r\n\r\n", None),
        (b"CONNECT a:1 HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nhost: a:1\r\n\r\n", 400),
        (b"connect a:1 HTTP/1.1\r\nHost: a:1\r\n\r\n", 405),
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 405),
        (b"CONNECT a HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"CONNECT [::1 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"CONNECT a:1  HTTP/1.1\r\nHost: a:1\r\n\r\n", 400),
        (b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nX: " + b"v" * MAX + b"\r\n\r\n", 431),
        (b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),
        (b"\r\n\r\n", 400),
    ],
)
@pytest.mark.parametrize("pieces", [1, 3])
def test_unusual_heads_answer_as_h11(data: bytes, status: int | None, pieces: int) -> None:
    chunks = split(data, [len(data) * i // pieces for i in range(1, pieces)])
    new, old = both(chunks, MAX)
    assert new == old
    if status is None:
        assert new[0] == "ok"
    else:
        assert new[:2] == ("error", status)


def test_silent_close_is_none() -> None:
    assert both([], MAX) == (("ok", None, 1), ("ok", None, 1))


def test_whole_head_over_the_limit_is_431() -> None:
    head = connect_request_bytes("example.com", 443)
    fits, fits_h11 = both([head + b"tunnel"], len(head))
    assert fits == fits_h11
    assert fits[0] == "ok"
    too_big, too_big_h11 = both([head + b"tunnel"], len(head) - 1)
    assert too_big == too_big_h11 == ("error", 431, "request headers too large", 1)


# -- the fast path is taken ----------------------------------------------------


class H11Used(Exception):
    pass


@pytest.fixture
def no_h11(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> h11.Connection:
        raise H11Used

    monkeypatch.setattr(h11, "Connection", refuse)


@pytest.mark.parametrize(
    ("head", "host", "port", "headers"),
    [
        (
            connect_request_bytes("example.com", 443),
            "example.com",
            443,
            {"host": "example.com:443", "proxy-connection": "keep-alive"},
        ),
        (
            connect_request_bytes("::1", 8080, [("X-Agent", "a1"), ("Proxy-Authorization", "k")]),
            "::1",
            8080,
            {
                "host": "[::1]:8080",
                "x-agent": "a1",
                "proxy-authorization": "k",
                "proxy-connection": "keep-alive",
            },
        ),
        (
            CURL_HEAD,
            "example.com",
            443,
            {
                "host": "example.com:443",
                "proxy-authorization": "Basic dXNlcjpwYXNzd29yZA==",
                "user-agent": "curl/7.88.1",
                "proxy-connection": "Keep-Alive",
            },
        ),
    ],
)
async def test_fast_path_taken(
    no_h11: None, head: bytes, host: str, port: int, headers: dict[str, str]
) -> None:
    send, receive = trio.testing.memory_stream_pair()
    await send.send_all(head + b"\x16\x03\x01")
    request = await read_connect_request(receive, MAX)
    assert request == ConnectRequest(host, port, headers, b"\x16\x03\x01")


async def test_unusual_head_needs_h11(no_h11: None) -> None:
    with pytest.raises(H11Used):
        await read_connect_request(
            ChunkStream([b"CONNECT a:1 HTTP/1.1\r\nHost:\ta:1\r\n\r\n"]), MAX
        )


# -- credentials are never quoted back -------------------------------------------

SECRET = "c2VjcmV0OnBhc3N3b3JkMTIz"


def head_with(*lines: bytes, target: bytes = b"a:1") -> bytes:
    return (
        b"CONNECT "
        + target
        + b" HTTP/1.1\r\nHost: a:1\r\n"
        + b"".join(line + b"\r\n" for line in lines)
        + b"\r\n"
    )


@pytest.mark.parametrize(
    ("line", "detail"),
    [
        (b"Proxy-Authorization : Basic " + SECRET.encode(), "(Proxy-Authorization)"),
        (b"Proxy-Authorization\t: Basic " + SECRET.encode(), "(Proxy-Authorization)"),
        (b"proxy-authorization: Basic c2Vj\x00" + SECRET.encode(), "(proxy-authorization)"),
        (b"Proxy-Authorization: Basic \x0b" + SECRET.encode(), "(Proxy-Authorization)"),
        (b"Proxy-Authorization: Basic " + SECRET.encode() + b"\x0c", "(Proxy-Authorization)"),
        (b"Proxy-Authorization: Basic c2V\r" + SECRET.encode(), "(Proxy-Authorization)"),
        (b"Proxy-Authorization: Basic\r\n " + SECRET.encode() + b"\x00", "(Proxy-Authorization)"),
        (b"X-Token's: " + SECRET.encode() + b"\x00", ""),
        (b"Basic " + SECRET.encode(), ""),
        (b"Basic " + SECRET.encode() + b" is: here", ""),
    ],
)
@pytest.mark.parametrize("pieces", [1, 3])
def test_malformed_header_line_is_named_not_quoted(line: bytes, detail: str, pieces: int) -> None:
    data = head_with(line)
    new, old = both(split(data, [len(data) * i // pieces for i in range(1, pieces)]), MAX)
    assert new == old
    assert new[:3] == ("error", 400, f"malformed header line {detail}".rstrip())


def test_malformed_request_line_is_not_quoted() -> None:
    new, old = both([b"CONNECT a\x00:1 HTTP/1.1\r\nHost: a:1\r\n\r\n"], MAX)
    assert new == old
    assert new[:3] == ("error", 400, "malformed request line")


def test_target_with_user_info_is_not_quoted() -> None:
    new, old = both([head_with(target=f"user:{SECRET}@a:1".encode())], MAX)
    assert new == old
    assert new[:3] == ("error", 400, "CONNECT target must not contain user info")


def test_bad_target_is_quoted_bounded() -> None:
    new, old = both([head_with(target=b"x" * 8000 + b":1")], MAX)
    assert new == old
    assert new[:2] == ("error", 400)
    detail = new[2]
    assert isinstance(detail, str)
    assert re.fullmatch(r"CONNECT target 'x{240}\.\.\.\[\d+ more\]", detail)


@pytest.mark.parametrize(
    "lines",
    [
        [b"Proxy-Authorization: Basic YTph", b"Proxy-Authorization: Basic Yjpi"],
        [b"Proxy-Authorization: Basic YTph", b"proxy-authorization: Basic YTph"],
        [b"Proxy-Authorization:", b"X: y", b"PROXY-AUTHORIZATION: Basic YTph"],
    ],
)
@pytest.mark.parametrize("path", ["fast", "h11"])
def test_two_proxy_authorization_headers_are_refused(lines: list[bytes], path: str) -> None:
    """Which of two credentials counts would be a guess (Go takes the first, we took the last)."""
    data = head_with(*lines)
    if path == "h11":
        data = data.replace(b"Host: a:1", b"Host:\ta:1")
    assert decided_by_fast_path(data, MAX) is (path == "fast")
    refused = ("error", 400, "duplicate Proxy-Authorization header", 1)
    assert both([data], MAX) == (refused, refused)


# -- credentials never leak, whatever the head looks like ------------------------------

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
#: Not st.text: that would also try strings from our own source, which messages do contain.
secrets = st.lists(st.sampled_from(B64), min_size=16, max_size=40).map("".join)
auth_names = st.sampled_from(["Proxy-Authorization", "proxy-authorization", "PROXY-AUTHORIZATION"])
separators = st.sampled_from([":", ": ", ":  ", " : ", " :", "\t:", ":\t", "  :  "])
schemes = st.sampled_from(["Basic ", "basic ", "Basic  ", "Bearer ", ""])
CONTROL_BYTES = [b"\x00", b"\x01", b"\x0b", b"\x0c", b"\x1b", b"\x7f", b"\x85", b"\xff"]
bad_bytes = st.sampled_from(
    [*CONTROL_BYTES, b"\r", b"\n", b"\r\n", b"\n\n", b" ", b"\t", b":", b"="]
)


@st.composite
def credential_heads(draw: st.DrawFn) -> tuple[list[bytes], str]:
    """A CONNECT with a secret in Proxy-Authorization, often in a line the parser refuses."""
    secret = draw(secrets)
    value = (draw(schemes) + secret).encode()
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(value)))
        value = value[:at] + draw(bad_bytes) + value[at:]
    if draw(st.booleans()):
        at = draw(st.integers(0, len(value)))
        value = value[:at] + b"\r\n" + draw(folds) + value[at:]
    credential = draw(auth_names).encode() + draw(separators).encode() + value
    target = draw(st.one_of(good_targets, st.just(f"u:{secret}@example.com:443")))
    lines = [f"Host: {target}".encode()]
    lines += [f"{k}: {v}".encode() for k, v in draw(st.lists(st.tuples(plain_names, plain_values)))]
    lines.insert(draw(st.integers(0, len(lines))), credential)
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), f"Proxy-Authorization: {secret}".encode())
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]))
    head = b"CONNECT " + target.encode() + b" " + version + b"\r\n"
    head += b"".join(line + b"\r\n" for line in lines) + b"\r\n"
    if draw(st.integers(0, 4)) == 0:
        head = head[: draw(st.integers(1, len(head)))]
    cuts = draw(st.one_of(st.just([]), st.lists(st.integers(0, len(head)), max_size=3)))
    return split(head, cuts), secret


def leaks(secret: str, text: str) -> bool:
    """Any 8 characters of ``secret`` in a row show up in ``text``."""
    return any(secret[i : i + 8] in text for i in range(len(secret) - 7))


@PROPERTY
@given(credential_heads())
def test_parser_errors_never_quote_credentials(case: tuple[list[bytes], str]) -> None:
    chunks, secret = case
    new, old = both(chunks, MAX)
    assert new == old
    if new[0] == "error":
        assert isinstance(new[2], str)
        assert not leaks(secret, new[2]), new[2]
        assert new[2].isprintable()
    event(f"{new[0]} {new[1] if new[0] == 'error' else ''}")


async def _no_upstream(agent_id: str, request: ConnectRequest, authorization: str) -> Upstream:
    raise HttpError(503, f"agent {safe_text(agent_id)} is not connected")


async def serve_once(chunks: Sequence[bytes]) -> bytes:
    """One session of the proxy's front end over memory streams; the whole answer.

    The server may answer before it has read everything, as over TCP.
    """
    client, server = trio.testing.memory_stream_pair()
    policy = SessionPolicy(
        authenticator=Authenticator(None), allow=AllowList.parse([]), open_upstream=_no_upstream
    )
    answer = b""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(handle_client, server, policy, "192.0.2.1:5000")
        with contextlib.suppress(trio.BrokenResourceError):
            for chunk in chunks:
                await client.send_all(chunk)
            await client.send_eof()
        while data := await client.receive_some():
            answer += data
    return answer


@contextmanager
def access_log() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """The access log in both formats while the block runs."""
    text, js = io.StringIO(), io.StringIO()
    handlers = [logging.StreamHandler(text), logging.StreamHandler(js)]
    handlers[0].setFormatter(TextFormatter())
    handlers[1].setFormatter(JsonFormatter())
    logger = logging.getLogger("reverse_http.access")
    level = logger.level
    logger.setLevel(logging.INFO)
    for handler in handlers:
        logger.addHandler(handler)
    try:
        yield text, js
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
        logger.setLevel(level)


@PROPERTY
@given(credential_heads())
def test_answers_and_access_log_never_quote_credentials(case: tuple[list[bytes], str]) -> None:
    chunks, secret = case
    with access_log() as (text, js):
        answer = trio.run(serve_once, chunks)
    assert answer.startswith(b"HTTP/1.1 ")
    status = int(answer.split(b" ", 2)[1])
    assert status in {400, 405, 407, 431, 503}
    assert not leaks(secret, answer.decode("utf-8", "replace")), answer
    (line,) = text.getvalue().splitlines()
    assert f"-> {status} " in line
    assert not leaks(secret, line), line
    assert line.isprintable()
    record = json.loads(js.getvalue())
    assert record["status"] == status
    assert not leaks(secret, js.getvalue())
    event(str(status))
