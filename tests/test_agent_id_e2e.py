"""The security finding end to end: one agent id memcached cannot store must not
take route registration down for every agent on that proxy.

Reproduction (before the fix): a proxy with ``--store.type=memcached``, an agent
with the noauth id ``bad id``, then an agent ``good``: ``good`` answered 503 through
the LB server forever and the proxy's ``/readyz`` turned 503.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import trio
from jose import jwt as jose_jwt

from conftest import Memcached, free_ports
from reverse_http.auth.jwt import issue_token
from reverse_http.auth.keys import generate_private_key, public_key_of, public_key_to_pem
from reverse_http.config import AgentConfig, AgentCredentials
from reverse_http.devcerts import CertFiles
from reverse_http.quic import CloseInfo, connect
from reverse_http.wire.auth import AUTH_TIMEOUT, encode_message
from tests.ha_cluster import Daemon, reverse_http_exe, wait_tcp
from tests.test_ha_nginx import connect_status, echo_server
from tests.tunnel_helpers import (
    LOOPBACK,
    agent_config,
    basic,
    echo_target,
    jwt_proxy_auth,
    noauth,
    open_connect,
    tunnel,
)

REFUSAL = "invalid agent id 'bad id': a space at position 4 is not allowed"


def eventually(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def readyz(port: int) -> int:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code
    except httpx.HTTPError:
        return 0


@pytest.mark.integration
def test_bad_agent_id_is_refused_and_good_agents_stay_reachable(
    certs: CertFiles, memcached: Memcached, tmp_path: Path
) -> None:
    udp = free_ports(1, kind=socket.SOCK_DGRAM)[0]
    http, lb_port, metrics = free_ports(3)
    logs = tmp_path / "logs"
    logs.mkdir()
    store = ["--store.type=memcached", f"--store.memcached.address={memcached.address}"]
    proxy = Daemon(
        "proxy",
        [
            *reverse_http_exe(),
            "proxy",
            f"--agent-server.listen-address=127.0.0.1:{udp}",
            f"--agent-server.tls.file.key={certs.key}",
            f"--agent-server.tls.file.cert={certs.cert}",
            f"--http-proxy.listen-address=127.0.0.1:{http}",
            f"--metrics.listen-address=127.0.0.1:{metrics}",
            "--auth.type=noauth",
            *store,
            "--shutdown-grace-period=1s",
        ],
        logs,
    )
    lb = Daemon(
        "lb",
        [
            *reverse_http_exe(),
            "lb",
            f"--http-proxy.listen-address=127.0.0.1:{lb_port}",
            "--auth.type=noauth",
            *store,
        ],
        logs,
    )

    def agent(agent_id: str) -> Daemon:
        return Daemon(
            f"agent-{agent_id.replace(' ', '_')}",
            [
                *reverse_http_exe(),
                "agent",
                f"--agent-client.server-address=localhost:{udp}",
                f"--agent-client.tls.file.root-ca={certs.ca_cert}",
                f"--auth.noauth.agent-id={agent_id}",
            ],
            logs,
        )

    bad, good = agent("bad id"), agent("good")
    daemons = [proxy, lb, bad, good]
    srv, target = echo_server()
    try:
        proxy.start()
        lb.start()
        for port in (http, lb_port, metrics):
            wait_tcp(port)
        assert readyz(metrics) == 200
        bad.start()
        eventually(lambda: REFUSAL in proxy.log(), "the proxy did not refuse 'bad id'")
        eventually(lambda: REFUSAL in bad.log(), "the agent was not told why")
        good.start()
        eventually(
            lambda: connect_status(lb_port, "good", target, timeout=3) == 200,
            "'good' is not reachable through the LB server",
        )
        # the bad agent keeps retrying (and keeps being refused): nothing degrades
        refusals = proxy.log().count(REFUSAL)
        eventually(lambda: proxy.log().count(REFUSAL) > refusals, "no retry", timeout=40)
        assert readyz(metrics) == 200
        assert connect_status(lb_port, "good", target) == 200
        assert connect_status(lb_port, "bad id", target) == 407
    finally:
        srv.close()
        for daemon in reversed(daemons):
            daemon.stop()
    # refused with the reference's close code for an auth failure, and the reason
    assert "proxy localhost" in bad.log() and "refused authentication" in bad.log()
    assert "agent good connected" in proxy.log()
    assert "Traceback" not in proxy.log() + lb.log()


async def test_jwt_agent_with_a_bad_id_is_refused_with_the_reason(
    certs: CertFiles, tmp_path: Path
) -> None:
    key = generate_private_key("ES256")
    public = tmp_path / "public.pem"
    public.write_bytes(public_key_to_pem(public_key_of(key)))
    # what `auth jwt token` now refuses to mint, signed with the proxy's key anyway
    bad = jose_jwt.encode({"agent_id": "bad id", "role": "agent"}, key, algorithm="ES256")
    good = issue_token(key, "good", "agent")
    async with (
        echo_target() as target,
        tunnel(certs, agent_ids=(), proxy_overrides={"auth": jwt_proxy_auth(public)}) as t,
    ):
        refused = await t.start_agent(
            agent_config(certs, t.agent_port, credentials=AgentCredentials("jwt", token=bad))
        )
        accepted = await t.start_agent(
            agent_config(certs, t.agent_port, credentials=AgentCredentials("jwt", token=good))
        )
        with trio.fail_after(10):
            await accepted.connected.wait()
            while "refused authentication" not in refused.last_state:
                await trio.sleep(0.02)
        assert REFUSAL in refused.last_state
        assert not refused.connected.is_set()
        assert t.proxy.registry.agent_ids() == ["good"]
        client = issue_token(key, "good", "client")
        result = await open_connect(t.http_port, f"127.0.0.1:{target.port}", basic("good", client))
        assert result.status == 200 and result.stream is not None
        await result.stream.aclose()


async def test_client_naming_a_bad_id_gets_407_with_the_reason_logged(
    certs: CertFiles, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "reverse_http.access")
    async with echo_target() as target, tunnel(certs) as t:
        dest = f"127.0.0.1:{target.port}"
        result = await open_connect(t.http_port, dest, noauth("bad id"))
        assert result.status == 407
        assert b"Proxy-Authenticate: Basic" in result.head
        assert (await open_connect(t.http_port, dest, noauth("x" * 200))).status == 407
        assert (await open_connect(t.http_port, dest, noauth())).status == 200
    lines = [r.getMessage() for r in caplog.records if "-> 407" in r.getMessage()]
    assert len(lines) == 2, lines
    assert "invalid agent id 'bad id' in proxy authorization: a space at position 4" in lines[0]
    assert "200 characters long, at most 128" in lines[1]


async def auth_close(port: int, token: bytes, config: AgentConfig) -> CloseInfo:
    """Authenticate raw, as any agent (Go or Python) would; how did the proxy close?"""
    async with trio.open_nursery() as nursery:
        conn = await connect(nursery, LOOPBACK, port, config.transport, config.tls)
        stream = await conn.open_stream()
        await stream.send_all(encode_message(token))
        with trio.fail_after(AUTH_TIMEOUT + 2):
            info = await conn.wait_closed()
        nursery.cancel_scope.cancel()
    return info


async def test_the_reference_close_codes(certs: CertFiles) -> None:
    async with tunnel(certs, agent_ids=()) as t:
        config = agent_config(certs, t.agent_port)
        refused = await auth_close(t.agent_port, b"bad id", config)
        assert (refused.error_code, refused.by_peer) == (500, True)
        assert refused.reason.startswith(REFUSAL)
        empty = await auth_close(t.agent_port, b"", config)
        assert (empty.error_code, empty.reason, empty.by_peer) == (400, "empty agent id", True)
        too_long = await auth_close(t.agent_port, b"x" * 129, config)
        assert too_long.error_code == 500 and "129 characters long" in too_long.reason
        assert t.proxy.registry.agent_ids() == []
