"""Metrics and health over real HTTP: known values in, exact values out of a parsed scrape."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import prometheus_client
import pytest
import trio
from prometheus_client.openmetrics import parser as openmetrics_parser
from prometheus_client.parser import text_string_to_metric_families

from reverse_http import metrics as metrics_module
from reverse_http.errors import ConfigError
from reverse_http.metrics import (
    OTHER_AGENT,
    STORE_ERROR_KINDS,
    STORE_OPS,
    AgentMetrics,
    DaemonMetrics,
    Health,
    LbMetrics,
    ProxyMetrics,
    serve_metrics,
)
from reverse_http.quic.connection import CloseInfo

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@asynccontextmanager
async def serving(metrics: DaemonMetrics, health: Health | None = None) -> AsyncIterator[str]:
    """serve_metrics on a kernel-chosen loopback port; yields its base URL."""
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_metrics, "127.0.0.1", 0, metrics, health or Health())
        yield f"http://127.0.0.1:{port}"
        nursery.cancel_scope.cancel()


async def get(url: str, method: str = "GET") -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        return await client.request(method, url)


async def scrape(base: str) -> Samples:
    response = await get(base + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == prometheus_client.CONTENT_TYPE_LATEST
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get(("reverse_http_" + name, frozenset(labels.items())))


def agents_of(samples: Samples, name: str) -> dict[str, float]:
    return {
        dict(labels)["agent"]: v
        for (n, labels), v in samples.items()
        if n == "reverse_http_" + name
    }


async def test_scrape_shows_exact_values() -> None:
    m = ProxyMetrics()
    for agent in ("a", "b", "c"):
        m.agent_connected(agent)
    m.agent_disconnected("a", "liveness")
    m.agent_disconnected("x", "auth_failed")  # never connected: gauge untouched
    m.agent_disconnected("b", "no-such-reason")  # folded into "error"
    for _ in range(4):
        m.session_started()
    m.session_finished(200, up=100, down=250, setup_seconds=0.003)
    m.session_finished(200, up=5, down=7, setup_seconds=0.2)
    m.session_finished(502, up=0, down=0, setup_seconds=None)
    m.session_finished(418, up=0, down=0, setup_seconds=None)
    for _ in range(4):
        m.session_started()
    m.session_finished(0, up=0, down=0, setup_seconds=None)
    m.store_error()
    m.store_error()
    m.store_error("set", "invalid_key")
    m.store_error("no-such-op", "no-such-kind")  # folded into the defaults

    async with serving(m) as base:
        s = await scrape(base)

    assert value(s, "agents_connected") == 1
    assert value(s, "agent_connects_total") == 3
    assert value(s, "agent_disconnects_total", reason="liveness") == 1
    assert value(s, "agent_disconnects_total", reason="auth_failed") == 1
    assert value(s, "agent_disconnects_total", reason="error") == 1
    assert value(s, "agent_disconnects_total", reason="closed") == 0
    reasons = {dict(lb)["reason"] for (n, lb) in s if n.endswith("agent_disconnects_total")}
    assert reasons == set(metrics_module.DISCONNECT_REASONS)
    assert value(s, "connect_sessions_active") == 3
    assert value(s, "connect_sessions_total", status="200") == 2
    assert value(s, "connect_sessions_total", status="502") == 1
    assert value(s, "connect_sessions_total", status="other") == 2
    assert value(s, "connect_sessions_total", status="418") is None
    assert value(s, "relay_bytes_total", direction="up") == 105
    assert value(s, "relay_bytes_total", direction="down") == 257
    assert value(s, "connect_setup_seconds_count") == 2
    assert value(s, "connect_setup_seconds_sum") == pytest.approx(0.203)
    assert value(s, "connect_setup_seconds_bucket", le="0.0025") == 0
    assert value(s, "connect_setup_seconds_bucket", le="0.005") == 1
    assert value(s, "connect_setup_seconds_bucket", le="0.1") == 1
    assert value(s, "connect_setup_seconds_bucket", le="0.25") == 2
    assert value(s, "connect_setup_seconds_bucket", le="10.0") == 2
    assert value(s, "connect_setup_seconds_bucket", le="+Inf") == 2
    assert value(s, "connect_setup_seconds_bucket", le="0.0005") == 0
    assert value(s, "store_errors_total", op="set", kind="unavailable") == 3
    assert value(s, "store_errors_total", op="set", kind="invalid_key") == 1
    assert value(s, "store_errors_total", op="refresh", kind="unavailable") == 0
    store_labels = {lb for (n, lb) in s if n.endswith("store_errors_total")}
    assert len(store_labels) == len(STORE_OPS) * len(STORE_ERROR_KINDS)


def test_gauges_never_go_negative() -> None:
    m = ProxyMetrics()
    m.session_finished(200, up=0, down=0, setup_seconds=None)
    m.agent_disconnected("ghost", "closed")
    s = text_string_to_metric_families(m.exposition().decode())
    flat = {x.name: x.value for f in s for x in f.samples}
    assert flat["reverse_http_connect_sessions_active"] == 0
    assert flat["reverse_http_agents_connected"] == 0


async def test_quic_gauges_per_agent() -> None:
    m = ProxyMetrics()
    m.agent_connected("edge-1")
    m.update_quic("edge-1", rtt=0.025, cwnd=14720, lost=3)
    m.update_quic("edge-1", rtt=0.5, cwnd=30000, lost=4)
    async with serving(m) as base:
        s = await scrape(base)
    assert agents_of(s, "quic_rtt_seconds") == {"edge-1": 0.5}
    assert agents_of(s, "quic_congestion_window_bytes") == {"edge-1": 30000}
    assert agents_of(s, "quic_lost_packets_total") == {"edge-1": 4}


async def test_agent_label_cardinality_is_bounded() -> None:
    m = ProxyMetrics()
    assert m.max_agent_labels == 100
    for i in range(150):
        m.agent_connected(f"agent-{i}")
        m.update_quic(f"agent-{i}", rtt=0.25 if i % 2 else 0.75, cwnd=1000 * i, lost=i)
    async with serving(m) as base:
        s = await scrape(base)

    assert value(s, "agents_connected") == 150
    for name in ("quic_rtt_seconds", "quic_congestion_window_bytes", "quic_lost_packets_total"):
        series = agents_of(s, name)
        assert OTHER_AGENT in series
        named = set(series) - {OTHER_AGENT}
        assert len(named) == 100
        assert named == {f"agent-{i}" for i in range(100)}
    overflow = range(100, 150)
    assert agents_of(s, "quic_rtt_seconds")[OTHER_AGENT] == 0.5  # mean of 25x0.25, 25x0.75
    assert agents_of(s, "quic_congestion_window_bytes")[OTHER_AGENT] == sum(
        1000 * i for i in overflow
    )
    assert agents_of(s, "quic_lost_packets_total")[OTHER_AGENT] == sum(overflow)
    assert agents_of(s, "quic_lost_packets_total")["agent-42"] == 42

    # An update from an agent already in "_other" replaces its share of the gauges;
    # losses are a counter: a lower count (a new connection) adds nothing, a higher one
    # only its increase.
    m.update_quic("agent-149", rtt=0.75, cwnd=0, lost=0)
    m.update_quic("agent-148", rtt=0.25, cwnd=1000 * 148, lost=150)
    s = await _local_scrape(m)
    assert agents_of(s, "quic_lost_packets_total")[OTHER_AGENT] == sum(overflow) + 2
    assert agents_of(s, "quic_congestion_window_bytes")[OTHER_AGENT] == sum(
        1000 * i for i in range(100, 149)
    )


async def _local_scrape(m: ProxyMetrics) -> Samples:
    async with serving(m) as base:
        return await scrape(base)


async def test_forget_removes_series_and_promotes_from_other() -> None:
    m = ProxyMetrics(max_agent_labels=2)
    for agent, lost in (("a", 1), ("b", 2), ("c", 3), ("d", 4)):
        m.agent_connected(agent)
        m.update_quic(agent, rtt=0.5, cwnd=100, lost=lost)
    s = await _local_scrape(m)
    assert agents_of(s, "quic_lost_packets_total") == {"a": 1, "b": 2, OTHER_AGENT: 7}

    # "replaced": the same id lives on over a newer connection, so its series stay.
    m.agent_connected("a")
    m.agent_disconnected("a", "replaced")
    s = await _local_scrape(m)
    assert agents_of(s, "quic_lost_packets_total") == {"a": 1, "b": 2, OTHER_AGENT: 7}
    assert value(s, "agents_connected") == 4

    # A named agent leaves: its series go, the oldest "_other" agent takes the slot;
    # the "_other" loss counter never goes back while it exists.
    m.agent_disconnected("a", "closed")
    s = await _local_scrape(m)
    assert agents_of(s, "quic_lost_packets_total") == {"b": 2, "c": 3, OTHER_AGENT: 7}
    assert agents_of(s, "quic_rtt_seconds") == {"b": 0.5, "c": 0.5, OTHER_AGENT: 0.5}

    # The last "_other" agent leaves: the aggregate series goes too.
    m.agent_disconnected("d", "closed")
    m.forget_agent("d")  # idempotent
    s = await _local_scrape(m)
    assert agents_of(s, "quic_lost_packets_total") == {"b": 2, "c": 3}

    m.agent_disconnected("b", "idle_timeout")
    m.agent_disconnected("c", "shutdown")
    s = await _local_scrape(m)
    for name in ("quic_rtt_seconds", "quic_congestion_window_bytes", "quic_lost_packets_total"):
        assert agents_of(s, name) == {}
    assert value(s, "agents_connected") == 0


def test_agent_named_like_the_aggregate_is_aggregated() -> None:
    m = ProxyMetrics()
    m.update_quic(OTHER_AGENT, rtt=0.5, cwnd=10, lost=1)
    m.update_quic("real", rtt=0.5, cwnd=20, lost=2)
    families = text_string_to_metric_families(m.exposition().decode())
    lost = {
        x.labels["agent"]: x.value
        for f in families
        for x in f.samples
        if x.name == "reverse_http_quic_lost_packets_total"
    }
    assert lost == {OTHER_AGENT: 1, "real": 2}


@pytest.mark.parametrize(
    ("info", "label"),
    [
        (CloseInfo(0, "client connection closed", True, "application"), "closed"),
        (CloseInfo(0, "", False, "application"), "closed"),
        (CloseInfo(409, "closing old connection", False, "application"), "replaced"),
        (CloseInfo(500, "bad token", False, "application"), "auth_failed"),
        (CloseInfo(400, "empty agent id", False, "application"), "auth_failed"),
        (CloseInfo(0, "proxy server shutdown", False, "application"), "shutdown"),
        (CloseInfo(0, "no packet from peer for 5s", False, "liveness"), "liveness"),
        (CloseInfo(0, "handshake timeout", False, "handshake-timeout"), "liveness"),
        (CloseInfo(0, "Idle timeout", False, "idle-timeout"), "idle_timeout"),
        (CloseInfo(0, "", True, "transport"), "closed"),
        (CloseInfo(0x0A, "PROTOCOL_VIOLATION", True, "transport"), "error"),
        (CloseInfo(7, "whatever", True, "application"), "error"),
        (CloseInfo(0, "", False, "something-new"), "error"),
        (CloseInfo(0, "", False, "shutdown"), "shutdown"),
    ],
)
def test_disconnect_reason(info: CloseInfo, label: str) -> None:
    got = ProxyMetrics.disconnect_reason(info.kind, info.error_code, info.by_peer, info.reason)
    assert got == label
    assert got in metrics_module.DISCONNECT_REASONS


def test_close_codes_match_the_daemons() -> None:
    """metrics.py repeats these to avoid import cycles; they must not drift apart."""
    from reverse_http.agent import client
    from reverse_http.proxy import agents, server

    assert agents.CODE_REPLACED == client.CODE_REPLACED == metrics_module._CODE_REPLACED
    assert server.CODE_AUTH_FAILURE == metrics_module._CODE_AUTH_FAILURE
    assert server.CODE_EMPTY_AGENT_ID == metrics_module._CODE_EMPTY_AGENT_ID
    assert server.REASON_SHUTDOWN == metrics_module._REASON_SHUTDOWN
    assert server.CODE_SHUTDOWN == 0


async def test_healthz_and_readyz_flip_with_checks() -> None:
    health = Health()
    assert health.alive
    assert health.status() == (True, {})
    store_ok = True

    def boom() -> bool:
        raise RuntimeError("check crashed")

    health.add_check("listeners", lambda: True)
    health.add_check("store", lambda: store_ok)
    async with serving(ProxyMetrics(), health) as base:
        r = await get(base + "/healthz")
        assert (r.status_code, r.text) == (200, "ok\n")
        assert r.headers["connection"] == "close"
        r = await get(base + "/readyz")
        assert (r.status_code, r.text) == (200, "ready\n")

        store_ok = False
        r = await get(base + "/readyz")
        assert r.status_code == 503
        assert r.text == "not ready\nfailing: store\n"
        assert health.status() == (False, {"listeners": True, "store": False})
        r = await get(base + "/healthz")
        assert r.status_code == 200  # alive even when not ready

        health.add_check("crashy", boom)
        r = await get(base + "/readyz")
        assert r.status_code == 503
        assert r.text == "not ready\nfailing: store\nfailing: crashy\n"

        health.remove_check("crashy")
        store_ok = True
        r = await get(base + "/readyz")
        assert (r.status_code, r.text) == (200, "ready\n")


async def test_not_found_and_method_not_allowed() -> None:
    async with serving(ProxyMetrics()) as base:
        r = await get(base + "/nope")
        assert r.status_code == 404
        r = await get(base + "/")
        assert r.status_code == 404
        for method in ("POST", "PUT", "DELETE"):
            r = await get(base + "/metrics", method)
            assert r.status_code == 405
            assert r.headers["allow"] == "GET, HEAD"
        r = await get(base + "/metrics", "HEAD")
        assert r.status_code == 200
        assert r.content == b""
        assert int(r.headers["content-length"]) > 0
        r = await get(base + "/metrics?debug=1")
        assert r.status_code == 200
        assert "reverse_http_agents_connected 0.0" in r.text


async def raw_exchange(port: int, data: bytes, *, close_write: bool = False) -> bytes:
    """Send ``data`` on a plain socket and read until the server closes."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            if data:
                await stream.send_all(data)
            if close_write:
                await stream.send_eof()
            answer = b""
            while chunk := await stream.receive_some(65536):
                answer += chunk
            return answer


async def test_bad_clients_do_not_stop_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_module, "HEAD_TIMEOUT", 1.0)
    m = ProxyMetrics()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_metrics, "127.0.0.1", 0, m, Health())
        base = f"http://127.0.0.1:{port}"

        # Silent clients hold a connection each; others are answered meanwhile.
        silent: list[bytes] = []

        async def hold() -> None:
            silent.append(await raw_exchange(port, b""))

        async with trio.open_nursery() as idle:
            for _ in range(3):
                idle.start_soon(hold)
            await trio.sleep(0.1)
            with trio.fail_after(0.9):
                assert (await get(base + "/healthz")).status_code == 200
        assert len(silent) == 3
        assert all(a.startswith(b"HTTP/1.1 408 ") for a in silent)

        garbage = await raw_exchange(port, b"\x00\x01\x02 not http at all\r\n\r\n")
        assert garbage.startswith(b"HTTP/1.1 400 ")
        assert (await get(base + "/healthz")).status_code == 200

        huge = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10000 + b"\r\n\r\n"
        too_big = await raw_exchange(port, huge)
        assert too_big.startswith(b"HTTP/1.1 431 ")
        endless = await raw_exchange(port, huge[:-4], close_write=True)  # never finished
        assert endless.startswith(b"HTTP/1.1 431 ")

        # Half a request, then the client gives up: no answer, no harm.
        assert await raw_exchange(port, b"GET /metr", close_write=True) == b""
        assert await raw_exchange(port, b"", close_write=True) == b""

        # Connect and reset at once.
        sock = trio.socket.socket()
        await sock.connect(("127.0.0.1", port))
        sock.close()

        ok = await raw_exchange(port, b"GET /healthz HTTP/1.0\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200 ")
        assert ok.endswith(b"\r\n\r\nok\n")
        r = await get(base + "/metrics")
        assert r.status_code == 200
        nursery.cancel_scope.cancel()


async def test_bind_failure_is_a_config_error() -> None:
    async with serving(ProxyMetrics()) as base:
        port = int(base.rsplit(":", 1)[1])
        with pytest.raises(ConfigError) as caught:
            await serve_metrics("127.0.0.1", port, ProxyMetrics(), Health())
        assert str(caught.value) == (
            f"--metrics.listen-address 127.0.0.1:{port}: address already in use"
        )


def test_registries_are_private() -> None:
    first, second = ProxyMetrics(), ProxyMetrics()
    first.store_error()
    assert first.registry is not second.registry
    assert first.registry is not prometheus_client.REGISTRY
    sample = b'reverse_http_store_errors_total{kind="unavailable",op="set"}'
    assert sample + b" 1.0" in first.exposition()
    assert sample + b" 0.0" in second.exposition()
    labels = {"kind": "unavailable", "op": "set"}
    global_value = prometheus_client.REGISTRY.get_sample_value
    assert global_value("reverse_http_store_errors_total", labels) is None


async def test_a_failing_collection_is_a_500_not_a_dead_server() -> None:
    class Broken(ProxyMetrics):
        def exposition(self) -> bytes:
            raise RuntimeError("collector exploded")

    async with serving(Broken()) as base:
        r = await get(base + "/metrics")
        assert r.status_code == 500
        r = await get(base + "/healthz")
        assert r.status_code == 200


async def get_with(url: str, accept: str) -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        return await client.get(url, headers={"Accept": accept})


async def test_openmetrics_on_request_text_format_otherwise() -> None:
    m = ProxyMetrics()
    m.session_started()
    m.session_finished(200, up=10, down=20, setup_seconds=0.01)
    prometheus_accept = (
        "application/openmetrics-text;version=1.0.0;q=0.5,"
        "application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.1"
    )
    async with serving(m) as base:
        om = await get_with(base + "/metrics", prometheus_accept)
        text = await get_with(base + "/metrics", "text/plain")
        refused = await get_with(base + "/metrics", "application/openmetrics-text;q=0")
    assert om.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert om.text.endswith("# EOF\n")
    families = {f.name: f for f in openmetrics_parser.text_string_to_metric_families(om.text)}
    sessions = families["reverse_http_connect_sessions"]
    assert sessions.type == "counter"
    # OpenMetrics: the creation time belongs to the counter's own family
    assert {s.name for s in sessions.samples} == {
        "reverse_http_connect_sessions_total",
        "reverse_http_connect_sessions_created",
    }
    for response in (text, refused):
        assert response.headers["content-type"] == prometheus_client.CONTENT_TYPE_LATEST
        assert "# EOF" not in response.text
        # 0.0.4: a counter is its _total series only, no _created gauge beside it
        assert "_created" not in response.text
        assert 'reverse_http_connect_sessions_total{status="200"} 1.0' in response.text


def test_wants_openmetrics() -> None:
    assert metrics_module.wants_openmetrics("application/openmetrics-text")
    assert metrics_module.wants_openmetrics("text/plain, Application/OpenMetrics-Text; q=0.2")
    assert not metrics_module.wants_openmetrics("application/openmetrics-text; q=0")
    assert not metrics_module.wants_openmetrics("application/openmetrics-text; q=x")
    assert not metrics_module.wants_openmetrics("text/plain;version=0.0.4, */*")
    assert not metrics_module.wants_openmetrics("")


PROC_STAT = Path("/proc/self/stat")


@pytest.mark.skipif(not PROC_STAT.exists(), reason="process metrics come from /proc")
@pytest.mark.parametrize("make", [ProxyMetrics, LbMetrics, AgentMetrics])
async def test_every_daemon_exports_process_metrics(make: type[DaemonMetrics]) -> None:
    async with serving(make()) as base:
        s = await scrape(base)
    flat = {name: v for (name, labels), v in s.items() if not labels}
    rss = flat["process_resident_memory_bytes"]
    assert 10 * 2**20 < rss < 4 * 2**30  # a Python process with trio: tens of MiB
    assert flat["process_virtual_memory_bytes"] >= rss
    # listing /proc/self/fd opens one more; the scrape's own sockets come and go
    assert abs(flat["process_open_fds"] - len(os.listdir("/proc/self/fd"))) <= 8
    assert 0 < flat["process_cpu_seconds_total"] < time.process_time() + 1
    assert abs(flat["process_start_time_seconds"] - (time.time() - _uptime())) < 5


def _uptime() -> float:
    """Seconds since this process started, from /proc (as the collector reads it)."""
    ticks = os.sysconf("SC_CLK_TCK")
    start = int(PROC_STAT.read_text().rsplit(")", 1)[1].split()[19]) / ticks
    boot_uptime = float(Path("/proc/uptime").read_text().split()[0])
    return boot_uptime - start


def test_each_daemon_has_its_own_set() -> None:
    def names(m: DaemonMetrics) -> set[str]:
        return {f.name for f in m.registry.collect() if f.name.startswith("reverse_http_")}

    proxy, lb, agent = names(ProxyMetrics()), names(LbMetrics()), names(AgentMetrics())
    assert "reverse_http_agents_connected" in proxy
    assert "reverse_http_agent_replacements" in proxy
    # the LB holds no agent connections: no agent or QUIC series there
    assert not {n for n in lb if "agent" in n or "quic" in n}
    assert {"reverse_http_lb_route_lookups", "reverse_http_lb_upstream_dial_seconds"} <= lb
    assert {"reverse_http_store_errors", "reverse_http_connect_sessions"} <= lb
    # the agent: its own tunnels, no copy of the proxy's series
    assert not agent & (
        proxy
        - {
            "reverse_http_build_info",
            "reverse_http_quic_rtt_seconds",
            "reverse_http_quic_congestion_window_bytes",
            "reverse_http_quic_lost_packets",
        }
    )
    assert {
        "reverse_http_agent_sessions_opened",
        "reverse_http_agent_sessions_failed",
        "reverse_http_agent_dial_seconds",
        "reverse_http_agent_relay_bytes",
        "reverse_http_agent_reconnects",
        "reverse_http_agent_replaced",
        "reverse_http_agent_connection_state",
    } <= agent


async def test_agent_counts_losses_across_connections() -> None:
    m = AgentMetrics()
    live = {"rtt_seconds": 0.02, "congestion_window_bytes": 14000.0, "lost_packets": 3.0}
    m.attempt()
    m.connected(lambda: live)
    async with serving(m) as base:
        s = await scrape(base)
        assert value(s, "quic_rtt_seconds") == 0.02
        assert value(s, "quic_lost_packets_total") == 3
        assert value(s, "agent_connection_state", state="connected") == 1
        m.disconnected(dict(live, lost_packets=5.0))
        m.was_replaced()
        m.attempt()
        s = await scrape(base)
        assert value(s, "quic_rtt_seconds") is None  # no connection, no RTT
        assert value(s, "quic_lost_packets_total") == 5
        assert value(s, "agent_connection_state", state="connecting") == 1
        assert value(s, "agent_connection_state", state="connected") == 0
        assert value(s, "agent_replaced_total") == 1
        assert value(s, "agent_reconnects_total") == 1
        m.connected(lambda: dict(live, lost_packets=1.0))
        s = await scrape(base)
        assert value(s, "quic_lost_packets_total") == 6
        assert value(s, "agent_connections_total") == 2
