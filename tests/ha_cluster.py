"""A whole HA cluster of real processes on loopback, as the deployment docs describe it.

memcached; two proxies behind an nginx UDP load balancer; two LB servers behind
an nginx TCP load balancer; agents dialling the UDP LB. Every daemon is the
installed ``reverse-http`` executable started with reference-style flags.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import Memcached, free_port, free_ports
from reverse_http.devcerts import CertFiles

NGINX_STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")


def reverse_http_exe() -> list[str]:
    exe = shutil.which("reverse-http")
    return [exe] if exe else [sys.executable, "-m", "reverse_http.cli.main"]


def wait_tcp(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on tcp {port}")


@dataclass
class Daemon:
    name: str
    args: list[str]
    log_dir: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.log_dir / f"{self.name}.log").open("ab")
        self.proc = subprocess.Popen(
            self.args, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ)
        )

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 15) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        path = self.log_dir / f"{self.name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


@dataclass
class Nginx:
    conf: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(binary).exists() or not NGINX_STREAM_MODULE.exists():
            pytest.skip(
                "nginx with the stream module is not installed (nginx, libnginx-mod-stream)"
            )
        self.proc = subprocess.Popen(
            [binary, "-p", str(self.conf.parent), "-c", str(self.conf), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def nginx_conf(
    directory: Path, udp_port: int, proxies: list[int], tcp_port: int, lbs: list[int]
) -> Path:
    """The reference's two nginx configs in one: UDP for agents, TCP for clients."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "logs").mkdir(exist_ok=True)
    udp_servers = "\n".join(
        f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=10s;" for p in proxies
    )
    tcp_servers = "\n".join(f"        server 127.0.0.1:{p};" for p in lbs)
    conf = directory / "nginx.conf"
    conf.write_text(
        f"""load_module {NGINX_STREAM_MODULE};
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/logs/error.log info;
events {{ worker_connections 4096; }}
stream {{
    upstream proxy-servers {{
{udp_servers}
    }}
    server {{
        listen 127.0.0.1:{udp_port} udp;
        proxy_pass proxy-servers;
        proxy_timeout 1m;
    }}
    upstream lb-servers {{
{tcp_servers}
    }}
    server {{
        listen 127.0.0.1:{tcp_port};
        proxy_pass lb-servers;
        proxy_connect_timeout 2s;
    }}
}}
"""
    )
    return conf


@dataclass
class Cluster:
    certs: CertFiles
    memcached: Memcached
    workdir: Path
    udp_lb_port: int = field(default_factory=lambda: free_port(socket.SOCK_DGRAM))
    tcp_lb_port: int = field(default_factory=free_port)
    proxies: list[Daemon] = field(default_factory=list)
    proxy_http_ports: list[int] = field(default_factory=list)
    proxy_udp_ports: list[int] = field(default_factory=list)
    lbs: list[Daemon] = field(default_factory=list)
    agents: list[Daemon] = field(default_factory=list)
    nginx: Nginx | None = None

    def proxy_args(self, i: int) -> list[str]:
        http, udp = self.proxy_http_ports[i], self.proxy_udp_ports[i]
        return [
            *reverse_http_exe(),
            "proxy",
            f"--agent-server.listen-address=127.0.0.1:{udp}",
            f"--agent-server.tls.file.key={self.certs.key}",
            f"--agent-server.tls.file.cert={self.certs.cert}",
            f"--http-proxy.listen-address=127.0.0.1:{http}",
            "--auth.type=noauth",
            "--store.type=memcached",
            f"--store.http-proxy-address=127.0.0.1:{http}",
            f"--store.memcached.address={self.memcached.address}",
            "--shutdown-grace-period=2s",
            "--log.level=debug",
        ]

    def start(self, n_agents: int = 1) -> None:
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        # every TCP port at once: daemons bind some time after the choice, and two
        # separate picks may otherwise hand the same port to two of them
        tcp = free_ports(5)
        self.tcp_lb_port = tcp[4]
        lb_ports = tcp[2:4]
        udp = free_ports(3, socket.SOCK_DGRAM)
        self.udp_lb_port = udp[2]
        for i in range(2):
            self.proxy_http_ports.append(tcp[i])
            self.proxy_udp_ports.append(udp[i])
            proxy = Daemon(f"proxy-{i + 1}", self.proxy_args(i), logs)
            proxy.start()
            self.proxies.append(proxy)
        for i, port in enumerate(lb_ports):
            lb = Daemon(
                f"lb-{i + 1}",
                [
                    *reverse_http_exe(),
                    "lb",
                    f"--http-proxy.listen-address=127.0.0.1:{port}",
                    "--auth.type=noauth",
                    "--store.type=memcached",
                    f"--store.memcached.address={self.memcached.address}",
                    "--log.level=debug",
                ],
                logs,
            )
            lb.start()
            self.lbs.append(lb)
        self.nginx = Nginx(
            nginx_conf(
                self.workdir / "nginx",
                self.udp_lb_port,
                self.proxy_udp_ports,
                self.tcp_lb_port,
                lb_ports,
            )
        )
        self.nginx.start()
        for port in [*self.proxy_http_ports, *lb_ports, self.tcp_lb_port]:
            wait_tcp(port)
        for daemon in [*self.proxies, *self.lbs]:
            assert daemon.proc is not None and daemon.proc.poll() is None, daemon.log()
        for i in range(n_agents):
            self.start_agent(str(4711 + i))

    def start_agent(self, agent_id: str) -> Daemon:
        agent = Daemon(
            f"agent-{agent_id}",
            [
                *reverse_http_exe(),
                "agent",
                f"--agent-client.server-address=localhost:{self.udp_lb_port}",
                f"--agent-client.tls.file.root-ca={self.certs.ca_cert}",
                f"--auth.noauth.agent-id={agent_id}",
                "--log.level=debug",
            ],
            self.workdir / "logs",
        )
        agent.start()
        self.agents.append(agent)
        return agent

    def stop(self) -> None:
        for d in [*self.agents, *self.lbs, *self.proxies]:
            d.stop()
        if self.nginx is not None:
            self.nginx.stop()

    def logs(self) -> str:
        return "\n".join(
            f"===== {d.name}\n{d.log()[-4000:]}" for d in [*self.proxies, *self.lbs, *self.agents]
        )
