"""HA failover with real processes behind real nginx load balancers (UDP and TCP).

Recovery times are printed (run with ``-s`` to see them) and bounded loosely;
the targets (SIGTERM < 5 s, SIGKILL < 10 s) are tracked in the closing notes.
"""

from __future__ import annotations

import base64
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Memcached
from reverse_http.devcerts import CertFiles
from tests.ha_cluster import Cluster, Daemon, reverse_http_exe
from tests.tunnel_helpers import echo_server

pytestmark = pytest.mark.integration


def connect_status(port: int, agent_id: str, target: int, timeout: float = 5.0) -> int:
    """CONNECT through the proxy/LB at ``port`` and echo one line; 0 on transport failure."""
    auth = base64.b64encode(f"{agent_id}:noauth".encode()).decode()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(
                f"CONNECT 127.0.0.1:{target} HTTP/1.1\r\nHost: 127.0.0.1:{target}\r\n"
                f"Proxy-Authorization: Basic {auth}\r\n\r\n".encode()
            )
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = s.recv(4096)
                if not chunk:
                    return 0
                head += chunk
            status = int(head.split()[1])
            if status != 200:
                return status
            s.sendall(b"ping\n")
            got = head.split(b"\r\n\r\n", 1)[1]
            while len(got) < 5:
                chunk = s.recv(4096)
                if not chunk:
                    return 0
                got += chunk
            return 200 if got == b"ping\n" else -1
    except OSError:
        return 0


@pytest.fixture
def cluster(certs: CertFiles, memcached: Memcached, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(certs, memcached, tmp_path)
    try:
        c.start(n_agents=0)
        yield c
    finally:
        c.stop()


def wait_status(
    port: int,
    agent_id: str,
    target: int,
    want: int,
    timeout: float,
    forbid_200_for: tuple[str, int] | None = None,
) -> float:
    """Poll until a CONNECT gives ``want``; returns the seconds it took."""
    start = time.monotonic()
    while True:
        if connect_status(port, agent_id, target, timeout=3) == want:
            return time.monotonic() - start
        if forbid_200_for is not None:
            other_agent, other_target = forbid_200_for
            assert connect_status(port, other_agent, other_target, timeout=3) != 200
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"no {want} for agent {agent_id} within {timeout}s")
        time.sleep(0.1)


def start_agent_with_allow(cluster: Cluster, agent_id: str, target: int) -> Daemon:
    agent = Daemon(
        f"agent-{agent_id}",
        [
            *reverse_http_exe(),
            "agent",
            f"--agent-client.server-address=localhost:{cluster.udp_lb_port}",
            f"--agent-client.tls.file.root-ca={cluster.certs.ca_cert}",
            f"--auth.noauth.agent-id={agent_id}",
            f"--agent-client.host-whitelist=127.0.0.1:{target}",
            "--log.level=debug",
        ],
        cluster.workdir / "logs",
    )
    agent.start()
    cluster.agents.append(agent)
    return agent


def owner_index(cluster: Cluster, agent_id: str) -> int:
    with socket.create_connection(("127.0.0.1", cluster.memcached.port), timeout=2) as s:
        s.sendall(f"get {agent_id}\r\n".encode())
        data = b""
        while not data.endswith(b"END\r\n"):
            data += s.recv(4096)
    lines = data.split(b"\r\n")
    if not lines[0].startswith(b"VALUE"):
        return -1
    address = lines[1].decode()
    ports = [f"127.0.0.1:{p}" for p in cluster.proxy_http_ports]
    return ports.index(address) if address in ports else -1


def test_traffic_flows_through_both_lb_servers(cluster: Cluster) -> None:
    srv, target = echo_server()
    with srv:
        cluster.start_agent("4711")
        wait_status(cluster.tcp_lb_port, "4711", target, 200, timeout=20)
        statuses = [connect_status(cluster.tcp_lb_port, "4711", target) for _ in range(20)]
    assert statuses == [200] * 20, cluster.logs()
    for lb in cluster.lbs:
        assert "CONNECT 127.0.0.1" in lb.log(), f"{lb.name} served nothing"


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_owner_proxy_dies_and_traffic_recovers(cluster: Cluster, how: str) -> None:
    srv1, t1 = echo_server()
    srv2, t2 = echo_server()
    with srv1, srv2:
        start_agent_with_allow(cluster, "4711", t1)
        start_agent_with_allow(cluster, "4712", t2)
        wait_status(cluster.tcp_lb_port, "4711", t1, 200, timeout=20)
        wait_status(cluster.tcp_lb_port, "4712", t2, 200, timeout=20)
        owner = owner_index(cluster, "4711")
        assert owner in (0, 1), cluster.logs()
        cluster.proxies[owner].signal(getattr(signal, how))
        recovery = wait_status(
            cluster.tcp_lb_port,
            "4711",
            t1,
            200,
            timeout=40,
            # all along, a client of 4712 never reaches 4711's target
            forbid_200_for=("4712", t1),
        )
        print(f"\nrecovery after {how} of the owning proxy: {recovery:.2f}s")
        # a draining proxy (SIGTERM) still serves its agents for a while, so the first
        # 200 may come before the agent moved: the route must move, then still serve
        deadline = time.monotonic() + 30
        while owner_index(cluster, "4711") != 1 - owner:
            assert time.monotonic() < deadline, cluster.logs()
            time.sleep(0.05)
        wait_status(cluster.tcp_lb_port, "4711", t1, 200, timeout=20)
        assert cluster.proxies[owner].wait(timeout=15) in (0, -signal.SIGKILL)
        (cluster.workdir / f"recovery-{how}.txt").write_text(f"{recovery:.3f}\n")
        assert recovery < 30, cluster.logs()


def test_memcached_restart_keeps_direct_traffic_and_reregisters(
    cluster: Cluster, memcached: Memcached
) -> None:
    srv, target = echo_server()
    with srv:
        cluster.start_agent("4711")
        cluster.start_agent("4712")
        wait_status(cluster.tcp_lb_port, "4711", target, 200, timeout=20)
        wait_status(cluster.tcp_lb_port, "4712", target, 200, timeout=20)
        owners = {a: owner_index(cluster, a) for a in ("4711", "4712")}
        memcached.kill()
        for agent_id, owner in owners.items():
            port = cluster.proxy_http_ports[owner]
            assert connect_status(port, agent_id, target) == 200
        # without routes the LBs answer 503, they do not hang or crash
        assert connect_status(cluster.tcp_lb_port, "4711", target) == 503
        memcached.start()
        deadline = time.monotonic() + 30
        while any(owner_index(cluster, a) != o for a, o in owners.items()):
            assert time.monotonic() < deadline, cluster.logs()
            time.sleep(0.1)
        wait_status(cluster.tcp_lb_port, "4711", target, 200, timeout=20)
