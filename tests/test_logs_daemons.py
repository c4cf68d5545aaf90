"""Real daemons' logs (issue 13 defect 7): no aioquic chatter, the agent structured too."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

from conftest import free_port
from reverse_http.devcerts import CertFiles
from tests.ha_cluster import reverse_http_exe, wait_tcp
from tests.test_operations import agent_args, proxy_args
from tests.tunnel_helpers import echo_server


def connect_through(port: int, destination: str, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        auth = "NDcxMTpub2F1dGg="  # base64("4711:noauth")
        s.sendall(
            f"CONNECT {destination} HTTP/1.1\r\nHost: {destination}\r\n"
            f"Proxy-Authorization: Basic {auth}\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        assert head.startswith(b"HTTP/1.1 200"), head
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
        return got


def wait_for_line(path: Path, needle: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while needle not in path.read_text():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {needle!r} in {path}:\n{path.read_text()}")
        time.sleep(0.02)


def test_daemon_logs_are_their_own_and_structured(certs: CertFiles, tmp_path: Path) -> None:
    udp, http = free_port(socket.SOCK_DGRAM), free_port()
    proxy_log, agent_log = tmp_path / "proxy.log", tmp_path / "agent.log"
    listener, target = echo_server()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(
            subprocess.Popen(
                [*reverse_http_exe(), *proxy_args(certs, udp, http)],
                stdout=subprocess.DEVNULL,
                stderr=proxy_log.open("wb"),
            )
        )
        wait_tcp(http)
        procs.append(
            subprocess.Popen(
                [*reverse_http_exe(), *agent_args(certs, udp), "--log.format=json"],
                stdout=subprocess.DEVNULL,
                stderr=agent_log.open("wb"),
            )
        )
        wait_for_line(agent_log, "connected to proxy")
        for size in (10, 100_000):
            payload = b"z" * size
            assert connect_through(http, f"127.0.0.1:{target}", payload) == payload
        wait_for_line(proxy_log, "CONNECT 127.0.0.1")
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            assert p.wait(timeout=20) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        listener.close()
    proxy_text, agent_text = proxy_log.read_text(), agent_log.read_text()
    for text in (proxy_text, agent_text):
        # aioquic's INFO lines (a reset per CONNECT, handshake steps) stay out at info
        assert "reset by peer" not in text
        assert " quic: " not in text and '"logger": "quic"' not in text
        assert "ALPN negotiated" not in text
    # the agent's lines: one JSON object each, its state changes with fields
    records = [json.loads(line) for line in agent_text.splitlines()]
    connected = [r for r in records if r.get("event") == "connected"]
    assert len(connected) == 1, records
    assert connected[0]["proxy"] == f"127.0.0.1:{udp}"
    assert connected[0]["level"] == "INFO"
    assert connected[0]["logger"] == "reverse_http.agent.client"
    assert connected[0]["msg"] == f"connected to proxy 127.0.0.1:{udp} as agent 4711"
    # the proxy's access lines carry key=value fields
    access = [line for line in proxy_text.splitlines() if "reverse_http.access" in line]
    assert len(access) == 2
    assert all("status=200" in line and "agent_id=4711" in line for line in access)
    assert any("bytes_up=100000" in line for line in access)
