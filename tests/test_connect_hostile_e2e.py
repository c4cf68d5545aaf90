"""Hostile CONNECTs and agent ids against the real proxy and LB, over real sockets.

What the security review asked for: a malformed credentials line is named, never
echoed (answer or log); nothing a peer sends can forge a log line or flood it;
two Proxy-Authorization headers are refused instead of one silently winning.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
import trio

from conftest import Memcached
from reverse_http.config import LbConfig, ListenAddress, LogConfig, StoreConfig
from reverse_http.devcerts import CertFiles
from reverse_http.lb.server import run_lb
from reverse_http.logs import reset_logging, setup_logging
from tests.tunnel_helpers import LOOPBACK, basic, echo_target, noauth, open_connect, tunnel

PASSWORD = "s3cr3t-passw0rd-4711"
#: base64 of "4711:s3cr3t-passw0rd-4711": what must never come back.
CREDENTIALS = basic("4711", PASSWORD).removeprefix("Basic ")
#: Sent without a scheme, it is what the authenticator would call the scheme.
BARE_TOKEN = "s3cr3tT0ken4711"
FORGED_USER = "evil\r\n2026-01-01T00:00:00.000Z INFO  reverse_http.access: CONNECT forged"
SHOWN_USER = "evil\\r\\n2026-01-01T00:00:00.000Z INFO  reverse_http.access: CONNECT forged"


class LogSink(io.StringIO):
    """The daemons' log output; a test waits for a line instead of sleeping."""

    def __init__(self) -> None:
        super().__init__()
        self._written = trio.Event()

    def write(self, text: str) -> int:
        count = super().write(text)
        self._written.set()
        return count

    def lines(self) -> list[str]:
        return self.getvalue().splitlines()

    async def wait_for(self, wanted: Callable[[list[str]], bool]) -> list[str]:
        with trio.fail_after(15):
            while True:
                self._written = trio.Event()
                lines = self.lines()
                if wanted(lines):
                    return lines
                await self._written.wait()

    async def access_lines(self, count: int) -> list[str]:
        def access(lines: list[str]) -> list[str]:
            return [line for line in lines if "reverse_http.access" in line]

        return access(await self.wait_for(lambda lines: len(access(lines)) >= count))


@pytest.fixture(params=["text", "json"])
def sink(request: pytest.FixtureRequest) -> Iterator[LogSink]:
    logs = LogSink()
    setup_logging(LogConfig(level="info", format=request.param), logs)
    yield logs
    reset_logging()


@asynccontextmanager
async def front_end(
    kind: str, certs: CertFiles, request: pytest.FixtureRequest
) -> AsyncIterator[int]:
    """The client port of a proxy (with agent 4711) or of an LB server (real memcached)."""
    if kind == "proxy":
        async with tunnel(certs) as t:
            yield t.http_port
        return
    memcached: Memcached = request.getfixturevalue("memcached")
    store = StoreConfig(
        type="memcached", memcached_addresses=(memcached.address,), memcached_timeout=0.5
    )
    async with trio.open_nursery() as nursery:
        lb = await nursery.start(
            run_lb, LbConfig(http_listen=ListenAddress(LOOPBACK, 0), store=store)
        )
        yield lb.http_port
        nursery.cancel_scope.cancel()


@dataclass
class Answer:
    status: int
    body: bytes


async def exchange(port: int, raw: bytes) -> Answer:
    """Send ``raw`` and read the answer to its end: a refusal closes the connection."""
    data = b""
    with trio.fail_after(10):
        async with await trio.open_tcp_stream(LOOPBACK, port) as stream:
            await stream.send_all(raw)
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return Answer(int(head.split(b" ", 2)[1]), body)


def connect_head(*lines: str, target: str = "example.com:443") -> bytes:
    return (
        "\r\n".join([f"CONNECT {target} HTTP/1.1", f"Host: {target}", *lines]) + "\r\n\r\n"
    ).encode("latin-1")


def leaks(secret: str, text: str) -> bool:
    """Any 8 characters of ``secret`` in a row show up in ``text``."""
    return any(secret[i : i + 8] in text for i in range(len(secret) - 7))


FRONT_ENDS = pytest.mark.parametrize("kind", ["proxy", "lb"])


@FRONT_ENDS
async def test_malformed_credentials_are_named_never_echoed(
    kind: str, certs: CertFiles, sink: LogSink, request: pytest.FixtureRequest
) -> None:
    cut = len(CREDENTIALS) // 2
    refusals = [
        (
            connect_head(f"Proxy-Authorization : Basic {CREDENTIALS}"),
            b"malformed header line (Proxy-Authorization)\n",
        ),
        (
            connect_head(f"Proxy-Authorization: Basic {CREDENTIALS[:cut]}\0{CREDENTIALS[cut:]}"),
            b"malformed header line (Proxy-Authorization)\n",
        ),
        (
            connect_head(f"proxy-authorization: Basic {CREDENTIALS}\x0b"),
            b"malformed header line (proxy-authorization)\n",
        ),
        (
            connect_head(f"Proxy-Authorization: Basic {CREDENTIALS}\r\n \x0c"),
            b"malformed header line (Proxy-Authorization)\n",
        ),
        (
            connect_head(target=f"4711:{PASSWORD}@example.com:443"),
            b"CONNECT target must not contain user info\n",
        ),
        (
            connect_head(f"Proxy-Authorization: {BARE_TOKEN}"),
            b"proxy authentication failed: unsupported auth scheme: unrecognized\n",
        ),
    ]
    async with front_end(kind, certs, request) as port:
        answers = [await exchange(port, head) for head, _ in refusals]
        access = await sink.access_lines(len(refusals))
    assert [(a.status, a.body) for a in answers] == [
        (407 if b"authentication" in body else 400, body) for _, body in refusals
    ]
    assert len(access) == len(refusals)
    for line, (_, body) in zip(access, refusals, strict=True):
        assert body.decode().strip() in line
    output = sink.getvalue()
    assert not leaks(CREDENTIALS, output)
    assert PASSWORD not in output
    assert BARE_TOKEN not in output


@FRONT_ENDS
async def test_two_proxy_authorization_headers_are_refused(
    kind: str, certs: CertFiles, sink: LogSink, request: pytest.FixtureRequest
) -> None:
    """The first would reach agent 4711, the second agent 4712: neither may be guessed."""
    async with echo_target() as target, front_end(kind, certs, request) as port:
        dest = f"127.0.0.1:{target.port}"
        both = [f"Proxy-Authorization: {noauth('4711')}", f"Proxy-Authorization: {noauth('4712')}"]
        plain = connect_head(*both, target=dest)
        unusual = plain.replace(b"Host: ", b"Host:\t")
        answers = [await exchange(port, head) for head in (plain, unusual)]
        access = await sink.access_lines(2)
        dialled = target.connections
        single = await open_connect(port, dest, noauth("4711"))
        if single.stream is not None:
            await single.stream.aclose()
    refused = Answer(400, b"duplicate Proxy-Authorization header\n")
    assert answers == [refused, refused]
    assert all(
        "-> 400" in line and "duplicate Proxy-Authorization header" in line for line in access
    )
    assert dialled == 0
    assert single.status == (200 if kind == "proxy" else 503)


@FRONT_ENDS
async def test_newline_in_an_agent_id_cannot_forge_a_log_line(
    kind: str, certs: CertFiles, sink: LogSink, request: pytest.FixtureRequest
) -> None:
    """Refused at authentication (invalid id) or looked up and not found: one line either way."""
    async with front_end(kind, certs, request) as port:
        answer = await exchange(port, connect_head(f"Proxy-Authorization: {noauth(FORGED_USER)}"))
        (line,) = await sink.access_lines(1)
    assert answer.status in {407, 503}
    assert SHOWN_USER[:12].encode() in answer.body
    assert answer.body.endswith(b"\n")
    assert answer.body[:-1].decode().isprintable()
    assert [line for line in sink.lines() if "evil" in line] == [line]
    assert not any(line.startswith("2026-01-01") for line in sink.lines())
    if line.startswith("{"):
        record = json.loads(line)
        assert record["status"] == answer.status
        assert SHOWN_USER[:12] in record["msg"]
    else:
        assert f"-> {answer.status} " in line
        assert SHOWN_USER[:12] in line


async def test_huge_agent_id_is_logged_cut(certs: CertFiles, sink: LogSink) -> None:
    """An agent authenticating with a 1 MiB noauth id must not write a 1 MiB log line."""
    huge = "a" * (1 << 20)

    def verdicts(lines: list[str]) -> list[str]:
        return [
            line
            for line in lines
            if "reverse_http.proxy.server" in line
            and ("connected from" in line or "refused" in line)
        ]

    async with tunnel(certs, agent_ids=(huge,), wait_connected=False):
        lines = await sink.wait_for(verdicts)
    assert max(len(line) for line in lines) < 2048
    assert "a" * 257 not in sink.getvalue()
    (verdict,) = verdicts(lines)
    assert "a" * 256 + f"...[{(1 << 20) - 256} more] connected from" in verdict or (
        "refused" in verdict
    )
