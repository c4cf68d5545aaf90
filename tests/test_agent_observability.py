"""The agent's own metrics, its refusals' reasons in the proxy's 503, duplicate agent ids.

Everything runs for real: proxy and agents in this process over loopback QUIC,
TCP destinations, /metrics scraped over HTTP.
"""

from __future__ import annotations

import itertools
import logging
import socket
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from conftest import free_port
from reverse_http.agent import client
from reverse_http.agent.client import (
    REPLACED_INITIAL_BACKOFF,
    REPLACED_MAX_BACKOFF,
    AgentHandle,
)
from reverse_http.agent.tunnel import dial_failure, dial_tcp
from reverse_http.config import ListenAddress
from reverse_http.devcerts import CertFiles
from reverse_http.proxy.connect import _why
from reverse_http.wire.http import ResponseHead
from tests.tunnel_helpers import (
    agent_config,
    allow,
    echo_target,
    noauth,
    open_connect,
    scrape,
    tunnel,
)


async def answer(port: int, destination: str) -> tuple[int, str]:
    """The proxy's whole answer to a CONNECT that is refused: (status, body)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            f"CONNECT {destination} HTTP/1.1\r\nHost: {destination}\r\n"
            f"Proxy-Authorization: {noauth()}\r\n\r\n".encode()
        )
        data = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(4096):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body.decode()


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on: connecting is refused."""
    return free_port()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A listener whose accept queue is full: a further connect hangs (SYNs dropped)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port))
    yield port
    filler.close()
    listener.close()


async def test_agent_metrics_and_503_reasons_after_real_traffic(
    certs: CertFiles, closed_port: int, silent_port: int
) -> None:
    mport = free_port()
    agent_overrides = {
        "metrics_listen": ListenAddress("127.0.0.1", mport),
        "dial_timeout": 0.5,
        "host_whitelist": allow("127.0.0.1", "*.invalid"),
    }
    sizes = (1000, 20_000, 300_000)
    async with echo_target() as target, tunnel(certs, agent_overrides=agent_overrides) as t:
        for size in sizes:
            payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
            r = await open_connect(t.http_port, f"127.0.0.1:{target.port}", noauth())
            assert r.stream is not None
            async with r.stream:
                await r.stream.send_all(payload)
                await r.stream.send_eof()
                got = b""
                while chunk := await r.stream.receive_some():
                    got += chunk
            assert got == payload

        # each refusal's reason, as the agent saw it, reaches the client in the 503
        refused = await answer(t.http_port, f"127.0.0.1:{closed_port}")
        assert refused == (
            503,
            f"agent could not reach 127.0.0.1:{closed_port}: connection refused\n",
        )
        timeout = await answer(t.http_port, f"127.0.0.1:{silent_port}")
        assert timeout == (
            503,
            f"agent could not reach 127.0.0.1:{silent_port}: timed out after 0.5s\n",
        )
        status, body = await answer(t.http_port, "no-such-host.invalid:80")
        assert status == 503
        assert body.startswith("agent could not reach no-such-host.invalid:80: cannot resolve")
        denied = await answer(t.http_port, "10.1.2.3:80")
        assert denied == (403, "destination 10.1.2.3:80 is not allowed by the agent\n")

        # the agent counts a tunnel when it ends: wait until all seven are in
        with trio.fail_after(10):
            while True:
                m = await trio.to_thread.run_sync(scrape, mport)
                opened = m[("reverse_http_agent_sessions_opened_total", ())]
                if opened >= 7 and m[("reverse_http_agent_sessions_active", ())] == 0:
                    break
                await trio.sleep(0.05)

    def failed(reason: str) -> float:
        return m[("reverse_http_agent_sessions_failed_total", (("reason", reason),))]

    assert opened == 7
    assert [failed(r) for r in ("refused", "timeout", "dns", "not_allowed")] == [1, 1, 1, 1]
    assert failed("unreachable") == failed("error") == failed("bad_request") == 0
    # exactly the payloads: the CONNECT and its answer are not tunnel bytes
    assert m[("reverse_http_agent_relay_bytes_total", (("direction", "up"),))] == sum(sizes)
    assert m[("reverse_http_agent_relay_bytes_total", (("direction", "down"),))] == sum(sizes)
    # one successful dial per transfer; loopback dials take well under 100 ms
    assert m[("reverse_http_agent_dial_seconds_count", ())] == 3
    assert m[("reverse_http_agent_dial_seconds_bucket", (("le", "0.1"),))] == 3
    assert 0 < m[("reverse_http_agent_dial_seconds_sum", ())] < 0.3
    assert m[("reverse_http_agent_connection_state", (("state", "connected"),))] == 1
    assert m[("reverse_http_agent_connection_state", (("state", "backoff"),))] == 0
    assert m[("reverse_http_agent_connections_total", ())] == 1
    assert m[("reverse_http_agent_reconnects_total", ())] == 0
    assert m[("reverse_http_agent_replaced_total", ())] == 0
    assert 0 < m[("reverse_http_quic_rtt_seconds", ())] < 1
    assert m[("reverse_http_quic_congestion_window_bytes", ())] > 1000
    # loopback carries the ceiling: path MTU discovery raised the size from 1200
    assert m[("reverse_http_quic_datagram_size_bytes", ())] == 1452
    assert m[("reverse_http_quic_lost_packets_total", ())] >= 0
    assert m[("process_resident_memory_bytes", ())] > 0
    # nothing of the proxy's set on the agent
    assert not [
        n for (n, _) in m if n.startswith(("reverse_http_agents_", "reverse_http_connect_"))
    ]


def test_a_go_agent_that_gives_no_reason_still_gets_a_sensible_503() -> None:
    assert _why(ResponseHead(503, "Service Unavailable", b"")) == (
        "503 Service Unavailable (the agent gave no reason)"
    )
    assert _why(ResponseHead(503, "Service Unavailable", b"", b"dial [::1]:80: refused\n")) == (
        "refused"
    )
    assert _why(ResponseHead(502, "Bad Gateway", b"", b"something else")) == "something else"


# --- duplicate agent ids ---------------------------------------------------------------


async def test_replaced_agent_backs_off_exponentially_up_to_the_cap(
    certs: CertFiles, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    """The reconnect loop alone, every connection replaced: delays double to the cap,
    and a connection that held the id past the cap starts the series again."""
    handle = AgentHandle(config=agent_config(certs, 4242))
    attempts: list[float] = []
    lives = iter([0.0] * 10 + [REPLACED_MAX_BACKOFF + 1] + [0.0] * 100)

    async def replaced_at_once(
        h: AgentHandle, _state: object, _target: str, _closes: object
    ) -> None:
        attempts.append(trio.current_time())
        await trio.sleep(next(lives))
        h.replaced = True

    monkeypatch.setattr(client, "_one_connection", replaced_at_once)
    with trio.move_on_after(5000):
        await client._reconnect_forever(handle)
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    expected = [min(REPLACED_INITIAL_BACKOFF * 2**k, REPLACED_MAX_BACKOFF) for k in range(10)]
    for gap, full in zip(gaps[:10], expected, strict=True):
        assert full / 2 <= gap <= full  # jitter: half to all of the step
    assert gaps[10] >= REPLACED_MAX_BACKOFF + 1  # the long-lived one
    assert gaps[10] - (REPLACED_MAX_BACKOFF + 1) <= REPLACED_INITIAL_BACKOFF  # reset
    assert handle.replacements in (len(attempts) - 1, len(attempts))
    counted = handle.metrics.registry.get_sample_value("reverse_http_agent_replaced_total")
    assert counted == handle.replacements


async def test_two_agents_with_one_id_slow_down_and_say_so(
    certs: CertFiles, caplog: pytest.LogCaptureFixture
) -> None:
    """Against a real proxy: the flap is logged on both sides and counted, and slows.

    With the old 0.5 s reconnect backoff the two agents replaced each other at least 4
    more times within 3 s of the first replacement; now at most twice (asserted: 3).
    """
    caplog.set_level(logging.WARNING)
    async with tunnel(certs, agent_ids=("4711",)) as t:
        first = t.agents[0]
        second = await t.start_agent(agent_config(certs, t.agent_port, "4711"))
        with trio.fail_after(10):
            while first.replacements + second.replacements == 0:
                await trio.sleep(0.01)
        await trio.sleep(3.0)  # the measurement window, not a synchronisation
        replacements = first.replacements + second.replacements
        # one id, however many connections authenticated as it: one agent connected
        gauge = t.proxy.metrics.registry.get_sample_value("reverse_http_agents_connected")
        assert gauge == 1
    assert 1 <= replacements <= 3, replacements
    proxy_lines = [
        r for r in caplog.records if r.name == "reverse_http.proxy.agents" and r.levelno == 30
    ]
    agent_lines = [
        r for r in caplog.records if r.name == "reverse_http.agent.client" and r.levelno == 30
    ]
    assert proxy_lines and agent_lines
    line = proxy_lines[0].getMessage()
    fields = proxy_lines[0].__dict__["fields"]
    assert fields["address"] != fields["replaced_address"]
    assert fields["address"] in line and fields["replaced_address"] in line
    assert "two agents share this id" in line
    said = agent_lines[0].getMessage()
    assert "another connection authenticated as agent 4711" in said
    assert "replaced 1 time(s), reconnecting in" in said
    counted = t.proxy.metrics.registry.get_sample_value("reverse_http_agent_replacements_total")
    assert counted is not None and counted >= replacements - 1


async def test_dial_failures_are_classified_through_happy_eyeballs(closed_port: int) -> None:
    """A name dials every address it resolves to: refused everywhere is still 'refused'."""
    results = {}
    for host in ("localhost", "127.0.0.1", "no-such-host.invalid"):
        with pytest.raises(OSError) as failed:
            await dial_tcp(host, closed_port)
        results[host] = dial_failure(failed.value)[0]
    assert results == {
        "localhost": "refused",
        "127.0.0.1": "refused",
        "no-such-host.invalid": "dns",
    }


def test_a_certificate_alert_from_the_proxy_is_named_as_such(certs: CertFiles) -> None:
    """A transport close carrying a certificate alert (CRYPTO_ERROR 0x100 + alert) is
    "proxy refused our client certificate", whichever way it reached the agent: in the
    connect's ConnectionError, or as the connection's end while authenticating."""
    from dataclasses import replace

    from reverse_http.quic import CloseInfo, ConnectionError

    config = agent_config(certs, 1)
    required = CloseInfo(0x174, "", True, "transport")
    assert client._certificate_refusal((ConnectionError(required),), [], config) == (
        "proxy refused our client certificate (none configured: see"
        " --agent-client.tls.file.cert and .key): TLS alert certificate_required (code 0x174)"
    )
    with_cert = replace(config, tls=replace(config.tls, cert_file=certs.cert, key_file=certs.key))
    revoked = CloseInfo(
        0x12A, "client certificate rejected: certificate 01 is revoked", True, "transport"
    )
    group = (ExceptionGroup("attempt", [trio.BrokenResourceError("connection closed")]),)
    assert client._certificate_refusal(group, [revoked], with_cert) == (
        f"proxy refused our client certificate ({certs.cert}): TLS alert bad_certificate"
        " (code 0x12a): client certificate rejected: certificate 01 is revoked"
    )
    # not a certificate alert, ours rather than the peer's, an application close: None
    for info in (
        CloseInfo(0x128, "", True, "transport"),  # handshake_failure
        CloseInfo(0x174, "", False, "transport"),
        CloseInfo(0x174, "", True, "application"),
    ):
        assert client._certificate_refusal((ConnectionError(info),), [info], config) is None
