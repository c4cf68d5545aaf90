"""SIGHUP never ends a daemon (issue 13, defect 2): every daemon, every mode, real processes.

Under systemd ``ExecReload=`` and logrotate-style tooling send SIGHUP to everything; each
daemon must log the reload and keep serving.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from conftest import Memcached, free_port, free_ports
from reverse_http.devcerts import CertFiles
from tests.ha_cluster import Daemon, reverse_http_exe, wait_tcp
from tests.tunnel_helpers import echo_server, noauth, tunnel


def connect_echo(
    port: int, target: int, agent_id: str, ca: Path | None = None, timeout: float = 20
) -> bytes:
    """CONNECT through the proxy/LB at ``port`` (TLS with ``ca``) until the tunnel answers;
    returns what the echo target sent back for one payload."""
    deadline = time.monotonic() + timeout
    last = b""
    while time.monotonic() < deadline:
        try:
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        except ConnectionRefusedError as exc:  # not listening yet
            last = str(exc).encode()
            time.sleep(0.05)
            continue
        sock: socket.socket = raw
        if ca is not None:
            sock = ssl.create_default_context(cafile=str(ca)).wrap_socket(
                raw, server_hostname="localhost"
            )
        with sock:
            sock.sendall(
                f"CONNECT 127.0.0.1:{target} HTTP/1.1\r\nHost: 127.0.0.1:{target}\r\n"
                f"Proxy-Authorization: {noauth(agent_id)}\r\n\r\n".encode()
            )
            head = b""
            while b"\r\n\r\n" not in head and (chunk := sock.recv(4096)):
                head += chunk
            if head.startswith(b"HTTP/1.1 200"):
                sock.sendall(b"still serving")
                got = b""
                while len(got) < len(b"still serving") and (chunk := sock.recv(4096)):
                    got += chunk
                return got
            last = head
        time.sleep(0.1)  # the agent is not connected (or its route not stored) yet
    raise AssertionError(f"no tunnel through port {port}: {last!r}")


def wait_log(daemon: Daemon, needle: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while needle not in daemon.log():
        assert daemon.proc is not None and daemon.proc.poll() is None, daemon.log()
        assert time.monotonic() < deadline, (
            f"no {needle!r} in the {daemon.name} log:\n{daemon.log()}"
        )
        time.sleep(0.05)


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        d.stop()


def test_sighup_reloads_and_never_kills_any_daemon(
    certs: CertFiles, memcached: Memcached, tmp_path: Path, daemons: list[Daemon]
) -> None:
    exe = reverse_http_exe()
    srv, target = echo_server()
    udp_files, udp_dev = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    http_files, http_dev, lb_plain, lb_tls = free_ports(4)

    def run(name: str, *args: str) -> Daemon:
        d = Daemon(name, [*exe, *args], tmp_path)
        d.start()
        daemons.append(d)
        return d

    proxy_files = run(
        "proxy-tls-files",
        "proxy",
        f"--agent-server.listen-address=127.0.0.1:{udp_files}",
        f"--agent-server.tls.file.cert={certs.cert}",
        f"--agent-server.tls.file.key={certs.key}",
        f"--http-proxy.listen-address=127.0.0.1:{http_files}",
        "--store.type=memcached",
        f"--store.memcached.address={memcached.address}",
        f"--store.http-proxy-address=127.0.0.1:{http_files}",
    )
    devcert_tmp = tmp_path / "tmp"
    devcert_tmp.mkdir()
    proxy_dev = Daemon(
        "proxy-dev-certs",
        ["env", f"TMPDIR={devcert_tmp}", *exe, "proxy"],
        tmp_path,
    )
    proxy_dev.args += [
        f"--agent-server.listen-address=127.0.0.1:{udp_dev}",
        f"--http-proxy.listen-address=127.0.0.1:{http_dev}",
    ]
    proxy_dev.start()
    daemons.append(proxy_dev)
    wait_tcp(http_files)
    wait_tcp(http_dev)
    agent = run(
        "agent",
        "agent",
        f"--agent-client.server-address=127.0.0.1:{udp_files}",
        f"--agent-client.tls.file.root-ca={certs.ca_cert}",
        "--auth.noauth.agent-id=4711",
    )
    agent_dev = run(
        "agent-dev",
        "agent",
        f"--agent-client.server-address=127.0.0.1:{udp_dev}",
        "--agent-client.tls.insecure-skip-verify",
        "--auth.noauth.agent-id=4712",
    )
    lb_args = [
        "lb",
        f"--store.memcached.address={memcached.address}",
        "--http-connector.allowed-proxies=127.0.0.1/32",
    ]
    lb = run("lb-plain", *lb_args, f"--http-proxy.listen-address=127.0.0.1:{lb_plain}")
    lb_with_tls = run(
        "lb-tls",
        *lb_args,
        f"--http-proxy.listen-address=127.0.0.1:{lb_tls}",
        "--http-proxy.tls.enable",
        f"--http-proxy.tls.file.cert={certs.cert}",
        f"--http-proxy.tls.file.key={certs.key}",
    )
    try:
        # everything serves before the signal...
        assert connect_echo(http_files, target, "4711") == b"still serving"
        assert connect_echo(http_dev, target, "4712") == b"still serving"
        assert connect_echo(lb_plain, target, "4711") == b"still serving"
        assert connect_echo(lb_tls, target, "4711", ca=certs.ca_cert) == b"still serving"

        for d in daemons:
            d.signal(signal.SIGHUP)
        wait_log(proxy_files, "agent server TLS: loaded new TLS material")
        wait_log(proxy_dev, "reload: nothing to re-read")
        wait_log(agent, "received SIGHUP")
        wait_log(agent_dev, "received SIGHUP")
        wait_log(lb, "reload: nothing to re-read")
        wait_log(lb_with_tls, "http-proxy TLS: loaded new TLS material")

        # ...and after it: no daemon died, each still carries a tunnel end to end
        assert connect_echo(http_files, target, "4711") == b"still serving"
        assert connect_echo(http_dev, target, "4712") == b"still serving"
        assert connect_echo(lb_plain, target, "4711") == b"still serving"
        assert connect_echo(lb_tls, target, "4711", ca=certs.ca_cert) == b"still serving"
        for d in daemons:
            assert d.proc is not None and d.proc.poll() is None, (d.name, d.log())
        # the agents kept their connections: a reload is not a reconnect
        assert agent.log().count("connected to proxy") == 1, agent.log()
        # and SIGTERM still drains and exits cleanly after a SIGHUP
        for d in daemons:
            d.signal(signal.SIGTERM)
        for d in daemons:
            assert d.wait(timeout=20) == 0, (d.name, d.log())
        # the throwaway development certificates were made there, and are gone
        assert "throwaway development certificate" in proxy_dev.log()
        assert list(devcert_tmp.iterdir()) == []
    finally:
        srv.close()


async def test_one_receiver_serves_every_daemon_in_the_process(
    certs: CertFiles, caplog: pytest.LogCaptureFixture
) -> None:
    """trio gives a signal to the newest receiver only, and closing receivers out of order
    restores the default action (SIGHUP: terminate) while others still run: daemons in
    one process share one receiver, installed while any of them runs."""
    caplog.set_level(logging.INFO, "reverse_http.daemon")
    before = signal.getsignal(signal.SIGHUP)
    async with tunnel(certs) as t:
        agent = t.agents[0]
        os.kill(os.getpid(), signal.SIGHUP)
        await _logged(caplog, "reloading the proxy's files")
        await _logged(caplog, "reloading the agent's files")
        # the proxy (whose receiver came first) ends; the agent still gets SIGHUP
        t.proxy.shutdown()
        await t.proxy.wait_stopped()
        assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, signal.SIG_IGN)
        caplog.clear()
        os.kill(os.getpid(), signal.SIGHUP)
        await _logged(caplog, "reloading the agent's files")
        assert "proxy's files" not in caplog.text
        agent.stop()
        await agent.wait_stopped()
        # nobody left: the process's own handler is back
        assert signal.getsignal(signal.SIGHUP) == before


async def _logged(caplog: pytest.LogCaptureFixture, needle: str) -> None:
    with trio.fail_after(10):
        while needle not in caplog.text:
            await trio.sleep(0.01)
