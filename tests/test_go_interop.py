"""Live interop with Go: our daemons against the clean-room Go peer (tests/go_peer/).

Every test runs real processes over real loopback sockets: our ``reverse-http proxy`` /
``agent`` executables, the Go peer built with quic-go v0.46.0 and golang-jwt v5.3.0 (the
Go reference's versions and QUIC settings), a threaded HTTP target and curl as the
client. The mixes are "Go agent -> our proxy" and "our agent -> Go proxy". What the peer
does and does not cover: docs/interop.md.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import free_ports
from reverse_http.auth.keys import load_private_key
from reverse_http.devcerts import CertFiles
from tests.go_peer import Process, ProcessGroup, build_go_peer
from tests.ha_cluster import reverse_http_exe, wait_tcp
from tests.quic_helpers import pattern

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed"),
]

GO_VECTORS = Path(__file__).parent / "data" / "go-reference-jwt"
BIG = 50 * 1024 * 1024
HELLO = b"hello from the target\n"


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def go_peer() -> Path:
    build = build_go_peer()
    how = "cached" if build.cached else f"built in {build.seconds:.1f}s"
    print(f"\n[go-peer] {build.binary} ({how})", file=sys.stderr)
    return build.binary


@cache
def payload(size: int) -> bytes:
    return pattern(size, 42)


class _TargetHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = payload(int(self.path[7:])) if self.path.startswith("/bytes/") else HELLO
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        view = memoryview(body)
        try:
            for i in range(0, len(body), 1 << 20):
                self.wfile.write(view[i : i + (1 << 20)])
        except OSError:
            pass

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def target() -> Iterator[int]:
    """A threaded HTTP server on loopback: GET /bytes/N -> N pattern bytes, else HELLO."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TargetHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@dataclass(frozen=True)
class Keys:
    """A public key and agent/client tokens for agents 4711 and 4712."""

    name: str
    public: Path
    private: Path
    tokens: dict[str, str]  # "agent-4711" -> JWT

    def token(self, role: str, agent_id: str) -> str:
        return self.tokens[f"{role}-{agent_id}"]


def go_reference_keys() -> Keys:
    tokens = {
        f"{role}-{agent}": (GO_VECTORS / f"auth-{role}-jwt-{agent}.b64").read_text().strip()
        for role in ("agent", "client")
        for agent in ("4711", "4712")
    }
    return Keys(
        "ES256 (Go reference)",
        GO_VECTORS / "auth-key-public.pem",
        GO_VECTORS / "auth-key-private.pem",
        tokens,
    )


def mint_keys(program: list[str], directory: Path, algo: str, name: str) -> Keys:
    """A key pair and agent/client tokens for 4711 and 4712, minted by ``program auth``:
    ours, or the Go reference's (their ``auth`` commands take the same flags)."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = hashlib.sha256(" ".join(program).encode()).hexdigest()[:8] + f"-{algo}"
    private, public = directory / f"{stem}.pem", directory / f"{stem}.pub.pem"
    auth = [*program, "auth"]
    subprocess.run([*auth, "key", "private", "--algo", algo, "-o", str(private)], check=True)
    subprocess.run([*auth, "key", "public", "-i", str(private), "-o", str(public)], check=True)
    tokens = {}
    for role in ("agent", "client"):
        for agent in ("4711", "4712"):
            mint = ["jwt", "token", "--agent-id", agent, "--role", role, "-i", str(private)]
            done = subprocess.run(
                [*auth, *mint, "-o", "-"], check=True, capture_output=True, text=True
            )
            tokens[f"{role}-{agent}"] = done.stdout.strip()
    return Keys(name, public, private, tokens)


@pytest.fixture(scope="module")
def rsa_keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    directory = tmp_path_factory.mktemp("rs256")
    return mint_keys(reverse_http_exe(), directory, "RS256", "RS256 (reverse-http auth)")


@pytest.fixture(params=["go-es256", "cli-rs256"])
def keys(request: pytest.FixtureRequest) -> Keys:
    if request.param == "go-es256":
        return go_reference_keys()
    rsa: Keys = request.getfixturevalue("rsa_keys")
    return rsa


def token_file(directory: Path, name: str, token: str) -> Path:
    """A token file as ``echo $TOKEN > file`` writes it: with a trailing newline."""
    path = directory / name
    path.write_text(token + "\n")
    return path


def curl(
    http_port: int,
    user: str,
    password: str,
    url: str,
    *extra: str,
    timeout: float = 20,
    text: bool = True,
) -> subprocess.CompletedProcess[Any]:
    return subprocess.run(
        [
            "curl",
            "-sS",
            "-p",
            "-x",
            f"http://127.0.0.1:{http_port}",
            "--proxy-user",
            f"{user}:{password}",
            "--max-time",
            str(timeout),
            *extra,
            url,
        ],
        capture_output=True,
        text=text,
        timeout=timeout + 10,
    )


def connect_status(http_port: int, user: str, password: str, target: str) -> int:
    """The status of curl's CONNECT through the proxy (0: no answer)."""
    done = curl(
        http_port, user, password, f"http://{target}/", "-o", os.devnull, "-w", "%{http_connect}"
    )
    return int(done.stdout or 0)


def connect_answer(http_port: int, user: str, target: str) -> tuple[int, str]:
    """(status, body) of a refused CONNECT, read until the proxy closes."""
    auth = base64.b64encode(f"{user}:noauth".encode()).decode()
    with socket.create_connection(("127.0.0.1", http_port), timeout=20) as s:
        s.sendall(
            f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
            f"Proxy-Authorization: Basic {auth}\r\n\r\n".encode()
        )
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body.decode()


def fetch(
    http_port: int, user: str, password: str, url: str, *, logs: ProcessGroup | None = None
) -> bytes:
    """GET ``url`` through the proxy's tunnel. On a failure the message carries curl's
    trace (what came back after the CONNECT) and, given ``logs``, the daemons' logs."""
    with tempfile.TemporaryDirectory(prefix="curl-") as tmp:
        trace = Path(tmp) / "trace"
        done = curl(
            http_port,
            user,
            password,
            url,
            "-f",
            "--trace-ascii",
            str(trace),
            "--trace-time",
            text=False,
        )
        if done.returncode != 0:
            text = trace.read_text(errors="replace") if trace.exists() else "(no trace)"
            daemons = ""
            if logs is not None:
                tunnels_ended(logs)
                daemons = f"\n{logs.logs()}"
            raise AssertionError(
                f"curl exited {done.returncode}: {done.stderr.decode(errors='replace')}"
                f"\n===== curl --trace-ascii\n{text[-6000:]}{daemons}"
            )
    return done.stdout


def tunnels_ended(logs: ProcessGroup, timeout: float = 5.0) -> None:
    """Wait (with a deadline) until each Go proxy logged tunnel-done for every tunnel it
    opened: that event says how each direction began (a failure message wants it)."""
    deadline = time.monotonic() + timeout
    proxies = [p for p in logs.processes if p.name.startswith("go-proxy")]
    while time.monotonic() < deadline:
        if all(len(p.events("tunnel")) <= len(p.events("tunnel-done")) for p in proxies):
            return
        time.sleep(0.05)


# ------------------------------------------------------------------ processes


@dataclass
class OurProxy:
    process: Process
    agent_port: int
    http_port: int
    metrics_port: int


@dataclass
class GoProxy:
    process: Process
    agent_port: int
    http_port: int


@dataclass
class Env(ProcessGroup):
    """Starts our daemons and Go peers for one test; stops them all at its end."""

    certs: CertFiles
    go: Path

    def our_proxy(self, *auth: str, ports: tuple[int, int, int] | None = None) -> OurProxy:
        """Our proxy on fresh ports, or on ``ports`` (udp, http, metrics) to restart one."""
        if ports is None:
            http, metrics = free_ports(2)
            (udp,) = free_ports(1, socket.SOCK_DGRAM)
        else:
            udp, http, metrics = ports
        process = self.start(
            "our-proxy",
            [
                *reverse_http_exe(),
                "proxy",
                f"--agent-server.listen-address=127.0.0.1:{udp}",
                f"--agent-server.tls.file.key={self.certs.key}",
                f"--agent-server.tls.file.cert={self.certs.cert}",
                f"--http-proxy.listen-address=127.0.0.1:{http}",
                f"--metrics.listen-address=127.0.0.1:{metrics}",
                *(auth or ("--auth.type=noauth",)),
                "--shutdown-grace-period=1s",
                "--log.level=debug",
            ],
        )
        wait_tcp(metrics)
        deadline = time.monotonic() + 15
        while httpx.get(f"http://127.0.0.1:{metrics}/readyz", timeout=2).status_code != 200:
            assert process.running() and time.monotonic() < deadline, process.log()
            time.sleep(0.02)
        wait_tcp(http)
        return OurProxy(process, udp, http, metrics)

    def go_proxy(self, *args: str) -> GoProxy:
        process = self.start(
            "go-proxy",
            [
                str(self.go),
                "proxy",
                "-cert",
                str(self.certs.cert),
                "-key",
                str(self.certs.key),
                *list(args),
            ],
        )
        ready = process.wait_event("ready", timeout=10)
        return GoProxy(
            process, int(ready["agent"].rsplit(":", 1)[1]), int(ready["http"].rsplit(":", 1)[1])
        )

    def our_agent(self, agent_port: int, *auth: str, name: str = "our-agent") -> Process:
        return self.start(
            name,
            [
                *reverse_http_exe(),
                "agent",
                f"--agent-client.server-address=127.0.0.1:{agent_port}",
                f"--agent-client.tls.file.root-ca={self.certs.ca_cert}",
                *auth,
                "--log.level=debug",
            ],
        )

    def go_agent(self, agent_port: int, *args: str, name: str = "go-agent") -> Process:
        return self.start(
            name,
            [
                str(self.go),
                "agent",
                "-server",
                f"127.0.0.1:{agent_port}",
                "-root-ca",
                str(self.certs.ca_cert),
                *args,
            ],
        )


@pytest.fixture
def env(certs: CertFiles, go_peer: Path) -> Iterator[Env]:
    # logs live in a short temporary path, readable in failure messages
    with tempfile.TemporaryDirectory(prefix="go-interop-") as workdir:
        environment = Env(certs, go_peer, workdir=Path(workdir))
        try:
            yield environment
        finally:
            environment.stop()
        environment.assert_no_traceback("our-")


def noauth_agent(agent_id: str = "4711") -> tuple[str, ...]:
    return ("--auth.type=noauth", f"--auth.noauth.agent-id={agent_id}")


def our_agent_connected(agent: Process, count: int = 1) -> None:
    agent.wait_for("connected to proxy 127.0.0.1:", count=count)


# ------------------------------------------------------------------ control


def test_go_peer_against_itself(env: Env, target: int, tmp_path: Path) -> None:
    """The control for every mix below, and what the Go stack accepts: a JWT read from
    a file that ends in a newline (golang-jwt's base64 decoder skips CR/LF)."""
    keys = go_reference_keys()
    proxy = env.go_proxy("-auth", "jwt", "-public-key", str(keys.public))
    agent_token = token_file(tmp_path, "agent.jwt", keys.token("agent", "4711"))
    first = env.go_agent(proxy.agent_port, "-token-file", str(agent_token))
    first.wait_event("authenticated")
    client = keys.token("client", "4711")
    assert fetch(proxy.http_port, "4711", client, f"http://127.0.0.1:{target}/", logs=env) == HELLO
    assert connect_status(proxy.http_port, "4711", keys.token("client", "4712"), "x:1") == 407
    second = env.go_agent(proxy.agent_port, "-token", keys.token("agent", "4711"))
    second.wait_event("authenticated")
    closed = first.wait_event("closed")
    assert (closed["code"], closed["remote"], closed["reason"]) == (
        "409",
        "true",
        "closing old connection",
    )
    assert first.wait_exit() == 0


# ------------------------------------------------------------------ noauth


def test_go_agent_our_proxy_noauth(env: Env, target: int) -> None:
    proxy = env.our_proxy()
    agent = env.go_agent(proxy.agent_port, "-agent-id", "4711", "-allow", "127.0.0.1")
    agent.wait_event("authenticated")
    proxy.process.wait_for("agent 4711 connected")

    assert (
        fetch(proxy.http_port, "4711", "noauth", f"http://127.0.0.1:{target}/", logs=env) == HELLO
    )
    tunnel = agent.wait_event("tunnel", target=f"127.0.0.1:{target}")
    assert tunnel["stream"] != "0"  # stream 0 is the agent's auth stream
    # the Go agent's 403 (allow-list) and 503 (dial failure) as our proxy answers them
    (closed_port,) = free_ports(1)
    assert connect_status(proxy.http_port, "4711", "noauth", f"localhost:{target}") == 403
    agent.wait_event("tunnel-refused", target=f"localhost:{target}", status="403")
    assert connect_status(proxy.http_port, "4711", "noauth", f"127.0.0.1:{closed_port}") == 503
    agent.wait_event("tunnel-refused", target=f"127.0.0.1:{closed_port}", status="503")
    # a Go agent sends no reason with its 503: our proxy's answer says so
    assert connect_answer(proxy.http_port, "4711", f"127.0.0.1:{closed_port}") == (
        503,
        f"agent could not reach 127.0.0.1:{closed_port}: 503 Service Unavailable "
        "(the agent gave no reason)\n",
    )
    assert connect_status(proxy.http_port, "4712", "noauth", f"127.0.0.1:{target}") == 503

    # an empty noauth agent id: close code 400, as the reference's proxy does
    empty = env.go_agent(proxy.agent_port, "-agent-id", "")
    refused = empty.wait_event("auth-refused")
    assert (refused["code"], refused["remote"], refused["reason"]) == (
        "400",
        "true",
        "empty agent id",
    )
    assert empty.wait_exit() == 3

    proxy.process.stop()  # SIGTERM: agents are told with code 0
    closed = agent.wait_event("closed")
    assert (closed["code"], closed["reason"]) == ("0", "proxy server shutdown")


def test_our_agent_go_proxy_noauth(env: Env, target: int) -> None:
    proxy = env.go_proxy()
    agent = env.our_agent(
        proxy.agent_port, *noauth_agent(), "--agent-client.host-whitelist=127.0.0.1"
    )
    our_agent_connected(agent)
    proxy.process.wait_event("agent-connected", agent="4711")

    assert (
        fetch(proxy.http_port, "4711", "noauth", f"http://127.0.0.1:{target}/", logs=env) == HELLO
    )
    proxy.process.wait_event("tunnel-done", agent="4711")
    # our agent's 403 and 503 reach the Go proxy as non-200 answers: it says 503
    (closed_port,) = free_ports(1)
    assert connect_status(proxy.http_port, "4711", "noauth", f"localhost:{target}") == 503
    proxy.process.wait_event("client-refused", reason="agent answered 403 Forbidden")
    assert connect_status(proxy.http_port, "4711", "noauth", f"127.0.0.1:{closed_port}") == 503
    refusals = [e["reason"] for e in proxy.process.events("client-refused")]
    assert any(r.startswith("agent answered 503") for r in refusals), refusals
    assert connect_status(proxy.http_port, "4712", "noauth", f"127.0.0.1:{target}") == 503
    assert connect_status(proxy.http_port, "", "noauth", f"127.0.0.1:{target}") == 407

    proxy.process.stop()
    agent.wait_for("proxy 127.0.0.1:")
    agent.wait_for("is shutting down")


# ------------------------------------------------------------------ JWT


def test_jwt_go_agent_our_proxy(env: Env, target: int, keys: Keys, tmp_path: Path) -> None:
    """The Go agent reads its token file as is, newline included (as the reference's
    ``file:`` does); our proxy used to refuse that as 'malformed token'."""
    proxy = env.our_proxy("--auth.type=jwt", f"--auth.jwt.public-key={keys.public}")
    agent_token = token_file(tmp_path, "agent.jwt", keys.token("agent", "4711"))
    agent = env.go_agent(proxy.agent_port, "-token-file", str(agent_token))
    agent.wait_event("authenticated")
    proxy.process.wait_for("agent 4711 connected")

    url = f"http://127.0.0.1:{target}/"
    assert fetch(proxy.http_port, "4711", keys.token("client", "4711"), url, logs=env) == HELLO
    dest = f"127.0.0.1:{target}"
    assert connect_status(proxy.http_port, "4711", keys.token("client", "4712"), dest) == 407
    assert connect_status(proxy.http_port, "4711", keys.token("agent", "4711"), dest) == 407
    assert connect_status(proxy.http_port, "4711", "noauth", dest) == 407


def test_jwt_our_agent_go_proxy(env: Env, target: int, keys: Keys, tmp_path: Path) -> None:
    proxy = env.go_proxy("-auth", "jwt", "-public-key", str(keys.public))
    agent_token = token_file(tmp_path, "agent.jwt", keys.token("agent", "4711"))
    agent = env.our_agent(
        proxy.agent_port, "--auth.type=jwt", f"--auth.jwt.token=file:{agent_token}"
    )
    our_agent_connected(agent)
    proxy.process.wait_event("agent-connected", agent="4711")

    url = f"http://127.0.0.1:{target}/"
    assert fetch(proxy.http_port, "4711", keys.token("client", "4711"), url, logs=env) == HELLO
    dest = f"127.0.0.1:{target}"
    assert connect_status(proxy.http_port, "4711", keys.token("client", "4712"), dest) == 407
    assert connect_status(proxy.http_port, "4711", keys.token("agent", "4711"), dest) == 407


def empty_id_agent_token() -> str:
    """A validly signed agent token without agent_id (our CLI refuses to mint one)."""
    from jose import jwt as jose_jwt

    now = int(time.time())
    claims = {"role": "agent", "iss": "reverse-http", "exp": now + 600, "nbf": now, "iat": now}
    private = load_private_key(GO_VECTORS / "auth-key-private.pem")
    return str(jose_jwt.encode(claims, private, algorithm="ES256"))


def test_auth_failures_go_agent_our_proxy(env: Env, rsa_keys: Keys) -> None:
    go_keys = go_reference_keys()
    proxy = env.our_proxy("--auth.type=jwt", f"--auth.jwt.public-key={go_keys.public}")

    def refusal(token: str) -> tuple[str, str, str]:
        agent = env.go_agent(proxy.agent_port, "-token", token)
        event = agent.wait_event("auth-refused")
        assert agent.wait_exit() == 3
        return event["code"], event["remote"], event["reason"]

    assert refusal(go_keys.token("client", "4711")) == ("500", "true", "wrong role: expected agent")
    assert refusal(rsa_keys.token("agent", "4711")) == (
        "500",
        "true",
        "algorithm not allowed: RS256",
    )
    assert refusal("not-a-jwt") == ("500", "true", "malformed token")
    # no agent_id in a valid token: 400 "empty agent id", as the reference's proxy decides
    assert refusal(empty_id_agent_token()) == ("400", "true", "empty agent id")


def test_auth_failures_our_agent_go_proxy(env: Env) -> None:
    go_keys = go_reference_keys()
    proxy = env.go_proxy("-auth", "jwt", "-public-key", str(go_keys.public))

    wrong_role = env.our_agent(
        proxy.agent_port, "--auth.type=jwt", f"--auth.jwt.token={go_keys.token('client', '4711')}"
    )
    event = proxy.process.wait_event("agent-refused", code="500")
    assert event["reason"].startswith("role mismatch"), event
    wrong_role.wait_for(f"refused authentication: {event['reason']}")
    wrong_role.stop()

    empty = env.our_agent(
        proxy.agent_port, "--auth.type=jwt", f"--auth.jwt.token={empty_id_agent_token()}"
    )
    proxy.process.wait_event("agent-refused", code="400", reason="empty agent id")
    empty.wait_for("refused authentication: empty agent id")


# ------------------------------------------------------------------ replacement


def test_replacement_at_our_proxy(env: Env, target: int) -> None:
    """A Go agent is replaced by our agent with the same id: it gets 409."""
    proxy = env.our_proxy()
    go_agent = env.go_agent(proxy.agent_port, "-agent-id", "4711")
    go_agent.wait_event("authenticated")
    proxy.process.wait_for("agent 4711 connected")
    ours = env.our_agent(proxy.agent_port, *noauth_agent())
    our_agent_connected(ours)
    closed = go_agent.wait_event("closed")
    assert (closed["code"], closed["remote"], closed["reason"]) == (
        "409",
        "true",
        "closing old connection",
    )
    assert go_agent.wait_exit() == 0
    assert (
        fetch(proxy.http_port, "4711", "noauth", f"http://127.0.0.1:{target}/", logs=env) == HELLO
    )
    # and the other way round: a second Go agent replaces ours
    second = env.go_agent(proxy.agent_port, "-agent-id", "4711")
    second.wait_event("authenticated")
    ours.wait_for("another connection authenticated as agent 4711")


def test_replacement_at_go_proxy(env: Env, target: int) -> None:
    """Our agent is replaced by a Go agent at the Go proxy, then (reconnecting) replaces it."""
    proxy = env.go_proxy()
    ours = env.our_agent(proxy.agent_port, *noauth_agent())
    our_agent_connected(ours)
    go_agent = env.go_agent(proxy.agent_port, "-agent-id", "4711")
    go_agent.wait_event("authenticated")
    ours.wait_for("another connection authenticated as agent 4711")
    proxy.process.wait_event("agent-replaced", agent="4711")
    # our agent retries with backoff and takes the id back: now the Go agent gets 409
    closed = go_agent.wait_event("closed", timeout=20)
    assert (closed["code"], closed["remote"], closed["reason"]) == (
        "409",
        "true",
        "closing old connection",
    )
    our_agent_connected(ours, count=2)
    assert (
        fetch(proxy.http_port, "4711", "noauth", f"http://127.0.0.1:{target}/", logs=env) == HELLO
    )


# ------------------------------------------------------------------ swarm


def swarm_state(
    path: Path, done: Callable[[dict[str, Any]], bool], timeout: float = 15
) -> dict[str, Any]:
    """The swarm's status file once ``done`` holds for it (polled with a deadline)."""
    deadline = time.monotonic() + timeout
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            state = json.loads(path.read_text())
            if done(state):
                return state
        time.sleep(0.05)
    raise AssertionError(f"swarm state never matched: {state}")


def test_go_swarm_reconnects_to_restarted_proxy(env: Env, target: int, tmp_path: Path) -> None:
    """The load generator of bench/agents.py --generator go: 20 quic-go agents from 20
    loopback addresses connect, serve CONNECTs, and all come back (counted after the
    SIGUSR1 mark) when our proxy is restarted on the same ports."""
    proxy = env.our_proxy()
    status = tmp_path / "swarm.json"
    swarm = env.start(
        "go-swarm",
        [
            str(env.go),
            "swarm",
            "-server",
            f"127.0.0.1:{proxy.agent_port}",
            "-root-ca",
            str(env.certs.ca_cert),
            "-count",
            "20",
            "-ramp",
            "0",
            "-status",
            str(status),
            "-prefix",
            "s-",
            "-source-ips",
            "20",
        ],
    )
    up = swarm_state(status, lambda s: s["connected"] == 20)
    assert (up["started"], up["ever_connected"], up["exited"]) == (20, 20, 0)
    assert fetch(proxy.http_port, "s-7", "noauth", f"http://127.0.0.1:{target}/", logs=env) == HELLO
    sources = set(re.findall(r"agent s-\d+ connected from (127\.16\.0\.\d+)", proxy.process.log()))
    assert len(sources) == 20, proxy.process.log()[-3000:]
    assert swarm.proc is not None
    swarm.proc.send_signal(signal.SIGUSR1)
    marked = swarm_state(status, lambda s: s["mark_seq"] == 1)
    assert marked["reconnected_since_mark"] == 0 and marked["first_since_mark"] is None

    proxy.process.stop()  # SIGTERM: every agent is closed with code 0, then reconnects
    again = env.our_proxy(ports=(proxy.agent_port, proxy.http_port, proxy.metrics_port))
    back = swarm_state(status, lambda s: s["reconnected_since_mark"] == 20, timeout=20)
    assert back["ever_since_mark"] == 20 and back["connects_total"] == 40
    assert back["disconnects"] == {'application close 0 "proxy server shutdown"': 20}
    first = back["first_since_mark"]
    assert first is not None and first.startswith("s-")
    assert fetch(again.http_port, first, "noauth", f"http://127.0.0.1:{target}/", logs=env) == HELLO


# ------------------------------------------------------------------ bulk


@pytest.mark.parametrize("mix", ["go-agent-our-proxy", "our-agent-go-proxy"])
def test_50_mib_download(env: Env, target: int, mix: str, tmp_path: Path) -> None:
    if mix == "go-agent-our-proxy":
        proxy: OurProxy | GoProxy = env.our_proxy()
        env.go_agent(proxy.agent_port, "-agent-id", "4711").wait_event("authenticated")
        proxy.process.wait_for("agent 4711 connected")
    else:
        proxy = env.go_proxy()
        our_agent_connected(env.our_agent(proxy.agent_port, *noauth_agent()))
        proxy.process.wait_event("agent-connected", agent="4711")
    out = tmp_path / "download.bin"
    started = time.monotonic()
    done = curl(
        proxy.http_port,
        "4711",
        "noauth",
        f"http://127.0.0.1:{target}/bytes/{BIG}",
        "-f",
        "-o",
        str(out),
        timeout=60,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr + env.logs()
    print(f"\n[{mix}] 50 MiB in {elapsed:.2f}s ({BIG / elapsed / 1e6:.1f} MB/s)", file=sys.stderr)
    assert out.stat().st_size == BIG
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(payload(BIG)).digest()
