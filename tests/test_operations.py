"""What operators rely on: systemd notifications, metrics, readiness, graceful drain."""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import trio

from conftest import Memcached, free_port, free_ports
from reverse_http.config import ListenAddress
from reverse_http.devcerts import CertFiles
from tests.ha_cluster import reverse_http_exe, wait_tcp
from tests.tunnel_helpers import basic, echo_target, noauth, open_connect, scrape, tunnel


class NotifySocket:
    """The test's own NOTIFY_SOCKET: collects what a daemon tells systemd."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def wait_for(self, needle: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not any(needle in m for m in self.messages):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {needle!r} in {self.messages}")
            with contextlib.suppress(TimeoutError):
                self.messages.append(self.sock.recv(4096).decode())

    def close(self) -> None:
        self.sock.close()


def start(args: list[str], notify: NotifySocket, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="400000")
    return subprocess.Popen(
        [*reverse_http_exe(), *args], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )


def proxy_args(certs: CertFiles, udp: int, http: int, *extra: str) -> list[str]:
    return [
        "proxy",
        f"--agent-server.listen-address=127.0.0.1:{udp}",
        f"--agent-server.tls.file.cert={certs.cert}",
        f"--agent-server.tls.file.key={certs.key}",
        f"--http-proxy.listen-address=127.0.0.1:{http}",
        *extra,
    ]


def agent_args(certs: CertFiles, udp: int, agent_id: str = "4711") -> list[str]:
    return [
        "agent",
        f"--agent-client.server-address=127.0.0.1:{udp}",
        f"--agent-client.tls.file.root-ca={certs.ca_cert}",
        f"--auth.noauth.agent-id={agent_id}",
    ]


def ordered(messages: list[str], *needles: str) -> bool:
    """Every needle appears, in this order."""
    positions = []
    for needle in needles:
        found = [i for i, m in enumerate(messages) if needle in m]
        if not found:
            return False
        positions.append(found[0])
    return positions == sorted(positions)


def test_daemons_notify_systemd_in_order(
    certs: CertFiles, memcached: Memcached, tmp_path: Path
) -> None:
    udp = free_port(socket.SOCK_DGRAM)
    http, lb_port = free_ports(2)
    sockets = {name: NotifySocket(tmp_path / f"{name}.sock") for name in ("proxy", "agent", "lb")}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        procs["proxy"] = start(proxy_args(certs, udp, http), sockets["proxy"], tmp_path / "p.log")
        sockets["proxy"].wait_for("READY=1")
        wait_tcp(http)  # READY means the listeners are bound
        procs["agent"] = start(agent_args(certs, udp), sockets["agent"], tmp_path / "a.log")
        sockets["agent"].wait_for("READY=1")  # only once authenticated
        procs["lb"] = start(
            [
                "lb",
                f"--http-proxy.listen-address=127.0.0.1:{lb_port}",
                f"--store.memcached.address={memcached.address}",
            ],
            sockets["lb"],
            tmp_path / "l.log",
        )
        sockets["lb"].wait_for("READY=1")
        wait_tcp(lb_port)
        for name in ("lb", "agent", "proxy"):
            sockets[name].wait_for("WATCHDOG=1")
            procs[name].send_signal(signal.SIGTERM)
            sockets[name].wait_for("STOPPING=1")
            assert procs[name].wait(timeout=20) == 0, (tmp_path / f"{name[0]}.log").read_text()
            assert ordered(sockets[name].messages, "READY=1", "STOPPING=1"), sockets[name].messages
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
        for s in sockets.values():
            s.close()


async def test_metrics_count_known_traffic_exactly(certs: CertFiles) -> None:
    mport = free_port()
    async with (
        echo_target() as target,
        tunnel(certs, proxy_overrides={"metrics_listen": ListenAddress("127.0.0.1", mport)}) as t,
    ):
        dest = f"127.0.0.1:{target.port}"
        for payload in (b"a" * 1000, b"b" * 2000, b"c" * 3000):
            r = await open_connect(t.http_port, dest, noauth())
            assert r.stream is not None
            async with r.stream:
                await r.stream.send_all(payload)
                await r.stream.send_eof()
                got = b""
                while chunk := await r.stream.receive_some():
                    got += chunk
                assert got == payload
        assert (await open_connect(t.http_port, dest, None)).status == 407
        assert (await open_connect(t.http_port, dest, basic("nobody", "x"))).status == 503
        # sessions are counted when they end: wait until all five are in
        with trio.fail_after(10):
            while True:
                m = await trio.to_thread.run_sync(scrape, mport)
                if (
                    sum(v for (n, _), v in m.items() if n == "reverse_http_connect_sessions_total")
                    >= 5
                ):
                    break
                await trio.sleep(0.05)
    assert m[("reverse_http_connect_sessions_total", (("status", "200"),))] == 3
    assert m[("reverse_http_connect_sessions_total", (("status", "407"),))] == 1
    assert m[("reverse_http_connect_sessions_total", (("status", "503"),))] == 1
    assert m[("reverse_http_relay_bytes_total", (("direction", "up"),))] == 6000
    assert m[("reverse_http_relay_bytes_total", (("direction", "down"),))] == 6000
    assert m[("reverse_http_agents_connected", ())] == 1
    assert m[("reverse_http_agent_connects_total", ())] == 1
    assert m[("reverse_http_connect_setup_seconds_count", ())] == 3
    assert m[("reverse_http_connect_sessions_active", ())] == 0


async def test_agent_readiness_follows_its_proxy(certs: CertFiles) -> None:
    from reverse_http.proxy.server import run_proxy
    from tests.tunnel_helpers import agent_config, proxy_config

    mport = free_port()

    def readyz() -> int:
        try:
            return httpx.get(f"http://127.0.0.1:{mport}/readyz", timeout=2).status_code
        except httpx.HTTPError:
            return 0

    async def wait_ready(want: int) -> None:
        with trio.fail_after(20):
            while await trio.to_thread.run_sync(readyz) != want:
                await trio.sleep(0.05)

    async with trio.open_nursery() as n:
        proxy = await n.start(run_proxy, proxy_config(certs))
        port = proxy.agent_port
        from reverse_http.agent.client import run_agent

        agent = await n.start(
            run_agent,
            agent_config(certs, port, metrics_listen=ListenAddress("127.0.0.1", mport)),
        )
        await wait_ready(200)
        healthz = await trio.to_thread.run_sync(
            lambda: httpx.get(f"http://127.0.0.1:{mport}/healthz", timeout=2).status_code
        )
        assert healthz == 200
        proxy.shutdown()
        await proxy.wait_stopped()
        await wait_ready(503)
        await n.start(run_proxy, proxy_config(certs, agent_listen=ListenAddress("127.0.0.1", port)))
        await wait_ready(200)
        assert agent.connects == 2
        n.cancel_scope.cancel()


def open_session_via_proxy(
    certs: CertFiles, tmp_path: Path, target: int, grace: str
) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes], NotifySocket, socket.socket, bytes]:
    """Proxy and agent processes, and one CONNECT session to ``target`` through them."""
    udp, http = free_port(socket.SOCK_DGRAM), free_port()
    notify = NotifySocket(tmp_path / "n.sock")
    proxy = start(
        proxy_args(certs, udp, http, f"--shutdown-grace-period={grace}"), notify, tmp_path / "p.log"
    )
    agent = start(agent_args(certs, udp), NotifySocket(tmp_path / "a.sock"), tmp_path / "a.log")
    auth = base64.b64encode(b"4711:noauth").decode()
    try:
        notify.wait_for("READY=1")
        deadline = time.monotonic() + 20
        while True:
            client = socket.create_connection(("127.0.0.1", http), timeout=10)
            client.sendall(
                f"CONNECT 127.0.0.1:{target} HTTP/1.1\r\nHost: x\r\n"
                f"Proxy-Authorization: Basic {auth}\r\n\r\n".encode()
            )
            head = client.recv(4096)
            if head.startswith(b"HTTP/1.1 200"):
                return proxy, agent, notify, client, head
            client.close()  # the agent is not connected yet
            assert time.monotonic() < deadline, head
            time.sleep(0.1)
    except BaseException:
        for p in (proxy, agent):
            p.kill()
        raise


def test_sigterm_drains_running_sessions_and_refuses_new_ones(
    certs: CertFiles, tmp_path: Path
) -> None:
    """A download running at SIGTERM completes; a new CONNECT gets 503; exit code 0."""
    size = 8 * 1024 * 1024
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    target = srv.getsockname()[1]
    release = threading.Event()

    def slow_source() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.sendall(b"x" * (size // 2))
            release.wait(20)  # the second half only after SIGTERM
            conn.sendall(b"x" * (size - size // 2))

    threading.Thread(target=slow_source, daemon=True).start()
    proxy, agent, notify, client, head = open_session_via_proxy(certs, tmp_path, target, "20s")
    http = int(client.getpeername()[1])
    try:
        got = len(head.split(b"\r\n\r\n", 1)[1])
        while got < size // 2:
            got += len(client.recv(65536))
        proxy.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1")
        # a new client during the drain is told 503
        with socket.create_connection(("127.0.0.1", http), timeout=10) as late:
            late.sendall(b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: x\r\n\r\n")
            assert late.recv(4096).startswith(b"HTTP/1.1 503")
        release.set()
        while chunk := client.recv(65536):
            got += len(chunk)
        client.close()
        assert got == size
        assert proxy.wait(timeout=20) == 0, (tmp_path / "p.log").read_text()
    finally:
        release.set()
        for p in (proxy, agent):
            if p.poll() is None:
                p.kill()
        srv.close()


@pytest.mark.parametrize("daemon", ["proxy", "agent", "lb"])
def test_metrics_flag_is_accepted_by_every_daemon(daemon: str) -> None:
    done = subprocess.run(
        [*reverse_http_exe(), daemon, "--help"], capture_output=True, text=True, check=True
    )
    assert "--metrics.listen-address" in done.stdout


def test_second_sigterm_exits_at_once(certs: CertFiles, tmp_path: Path) -> None:
    """During a long drain (a session holds it open), a second signal ends the process."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    target = srv.getsockname()[1]
    proxy, agent, notify, client, _ = open_session_via_proxy(certs, tmp_path, target, "60s")
    try:
        proxy.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1")
        assert proxy.poll() is None  # draining: the open session keeps it alive
        start_second = time.monotonic()
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(timeout=10)
        assert time.monotonic() - start_second < 5
        client.close()
    finally:
        for p in (proxy, agent):
            if p.poll() is None:
                p.kill()
        srv.close()
