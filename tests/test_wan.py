"""The tunnel over an emulated WAN link: 16 MiB through real daemons arrive intact.

Two network namespaces joined by the userspace link emulator of ``bench/linkemu``
(50 ms RTT, 1% loss each way): the proxy and curl on side A, the agent and nginx on
side B. Needs root, /dev/net/tun, ``ip`` and ``gcc``; skipped with the reason when
any of them is missing.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench._common import (
    AUTH,
    Children,
    Daemon,
    free_ports,
    start_nginx,
    wait_port,
    wait_tunnel_ready,
)
from bench.linkemu import (
    ADDR_A,
    ADDR_B,
    Link,
    LinkSpec,
    build,
    drops,
    namespaces,
    netns,
    unavailable,
)
from reverse_http.devcerts import make_dev_certs

WHY_NOT = unavailable()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(WHY_NOT is not None, reason=f"WAN link emulator: {WHY_NOT}"),
]

SIZE = 16 << 20
#: below this many bytes/s for 10 s a transfer counts as stalled; a loss-bound
#: window at 50 ms and 1% loss moves about 300 KB/s
STALL_BPS = 30_000
TIMEOUT = 90  # about 60 s today (a loss-bound window), headroom for a loaded machine
TINY = 128
IP_MTU_DISCOVER, IP_PMTUDISC_DO, IP_MTU = 10, 2, 14  # <linux/in.h>; Python 3.11 lacks them
SO_RCVBUFFORCE = 33
CLI = [sys.executable, "-c", "from reverse_http.cli import main; main()"]


@pytest.fixture(scope="session")
def linkemu_exe() -> Path:
    """Compiled once per source version (cached in the temp dir across runs)."""
    return build()


@dataclass
class Wan:
    link: Link
    ns_a: str
    proxy_port: int
    target: str
    blob: bytes
    proxy: Daemon
    agent: Daemon
    out: Path
    ns_b: str
    agent_metrics: int  # the agent's /metrics port, on side B's loopback
    curl: subprocess.Popen[bytes] | None = None

    def start_download(self, timeout: float) -> None:
        """curl on side A through the proxy; waited for by :meth:`finish`."""
        cmd = ["curl", "-sS", "-f", "-m", str(timeout), "-o", str(self.out)]
        # a stalled transfer fails in 10 s instead of at the timeout
        cmd += ["--speed-limit", str(STALL_BPS), "--speed-time", "10"]
        cmd += ["-p", "-x", f"http://127.0.0.1:{self.proxy_port}", "-U", "bench:noauth"]
        with netns(self.ns_a):
            self.curl = subprocess.Popen(
                [*cmd, f"http://{self.target}/blob.bin"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )

    def finish(self) -> tuple[int, str, dict[str, Any]]:
        """curl's exit code and error, and the link's counters at that moment."""
        assert self.curl is not None
        _, err = self.curl.communicate(timeout=TIMEOUT + 10)
        return self.curl.returncode, err.decode(errors="replace").strip(), self.link.snapshot()


@contextlib.contextmanager
def _wan(exe: Path, tmp: Path, spec: LinkSpec, tag: str) -> Iterator[Wan]:
    with namespaces(tag) as (ns_a, ns_b), Children() as children:
        link = Link(exe, ns_a, ns_b, spec, tmp / "linkemu.log")
        try:
            certs = make_dev_certs(tmp / "certs", ["localhost", ADDR_A])
            blob = os.urandom(SIZE)
            with netns(ns_b):
                _, nginx_port = start_nginx(children, tmp / "nginx", {"tiny": TINY})
            (tmp / "nginx" / "www" / "blob.bin").write_bytes(blob)
            (tmp / "nginx" / "www" / "blob.bin").chmod(0o644)
            target = f"127.0.0.1:{nginx_port}"
            with netns(ns_a):
                udp, http = free_ports(1, socket.SOCK_DGRAM)[0], free_ports(1)[0]
                proxy = children.start(
                    Daemon(
                        "proxy",
                        [
                            *CLI,
                            "proxy",
                            f"--agent-server.listen-address={ADDR_A}:{udp}",
                            f"--agent-server.tls.file.cert={certs.cert}",
                            f"--agent-server.tls.file.key={certs.key}",
                            f"--http-proxy.listen-address=127.0.0.1:{http}",
                        ],
                        tmp / "proxy.log",
                    )
                )
                wait_port(http, proc=proxy)
            with netns(ns_b):
                metrics = free_ports(1)[0]
                agent = children.start(
                    Daemon(
                        "agent",
                        [
                            *CLI,
                            "agent",
                            f"--agent-client.server-address={ADDR_A}:{udp}",
                            f"--agent-client.tls.file.root-ca={certs.ca_cert}",
                            "--auth.noauth.agent-id=bench",
                            f"--metrics.listen-address=127.0.0.1:{metrics}",
                        ],
                        tmp / "agent.log",
                    )
                )
            with netns(ns_a):
                wait_tunnel_ready(
                    http,
                    target,
                    "/tiny",
                    TINY,
                    30,
                    lambda: proxy.alive and agent.alive,
                )
            yield Wan(link, ns_a, http, target, blob, proxy, agent, tmp / "got.bin", ns_b, metrics)
            children.stop(agent)  # while the link is up: a clean close, no lingering
            children.stop(proxy)
        finally:
            link.stop()


SPECS = {
    "mtu1500": LinkSpec(rtt_ms=50, loss=0.01, seed=7),
    "mtu1280": LinkSpec(rtt_ms=50, loss=0.01, path_mtu=1280, icmp=True, seed=7),
}


@pytest.fixture(scope="module")
def wans(linkemu_exe: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Wan]]:
    """Both links at once, both downloads started together (loss-bound, they use little
    CPU), so the module takes one transfer's time instead of two."""
    with contextlib.ExitStack() as stack:
        started: dict[str, Wan] = {}
        for name, spec in SPECS.items():
            tmp = tmp_path_factory.mktemp(f"wan-{name}")
            started[name] = stack.enter_context(_wan(linkemu_exe, tmp, spec, name))
        for wan in started.values():
            wan.start_download(TIMEOUT)
        yield started
        for wan in started.values():
            if wan.curl is not None and wan.curl.poll() is None:
                wan.curl.kill()
                wan.curl.wait()


def _check_intact(wan: Wan) -> dict[str, int]:
    code, err, counters = wan.finish()
    assert code == 0, (
        f"curl: {err} after {wan.out.stat().st_size if wan.out.exists() else 0} "
        f"of {SIZE} bytes; link drops {drops(counters)}\nproxy:\n{wan.proxy.log_tail()}\n"
        f"agent:\n{wan.agent.log_tail()}"
    )
    got = wan.out.read_bytes()
    assert len(got) == SIZE
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(wan.blob).hexdigest()
    # the link really was lossy: the transfer survived losses, not a clean path
    assert drops(counters).get("loss", 0) > 0
    return drops(counters)


def test_16mib_intact_over_50ms_1pct_loss(wans: dict[str, Wan]) -> None:
    _check_intact(wans["mtu1500"])


def test_16mib_intact_over_50ms_1pct_loss_path_mtu_1280(wans: dict[str, Wan]) -> None:
    """Before path MTU discovery (96d566a) this stalled after about 110 KiB."""
    dropped = _check_intact(wans["mtu1280"])
    # the path really was narrower than what the sender tried (its probes up to 1452)
    assert dropped.get("mtu", 0) > 0


# ------------------------------------------------ NAT rebinding mid-transfer

NAT_SPEC = LinkSpec(rtt_ms=50, rate_mbit=50, seed=7)  # 16 MiB take at least 2.7 s
NAT_TIMEOUT = 30


def _agent_metric(wan: Wan, name: str) -> float:
    """One unlabelled sample from the agent's /metrics (scraped on side B's loopback)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    url = f"http://127.0.0.1:{wan.agent_metrics}/metrics"
    with netns(wan.ns_b), opener.open(url, timeout=5) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in the agent's /metrics")


def _recv_head(sock: socket.socket, buf: bytearray) -> bytes:
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response head; got {bytes(buf)[:200]!r}"
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    buf[:] = rest
    return head


def _keepalive_get(sock: socket.socket, buf: bytearray, wan: Wan) -> bytes:
    """GET /tiny on an open tunnel (keep-alive); the body."""
    sock.sendall(f"GET /tiny HTTP/1.1\r\nHost: {wan.target}\r\n\r\n".encode())
    head = _recv_head(sock, buf)
    assert head.startswith(b"HTTP/1.1 200"), head
    while len(buf) < TINY:
        chunk = sock.recv(65536)
        assert chunk, "the tunnel closed in the middle of a response"
        buf += chunk
    body, buf[:] = bytes(buf[:TINY]), buf[TINY:]
    return body


class _Upload:
    """``data`` from side A through the tunnel to a TCP sink on side B's loopback (the
    proxy sends, the agent receives: the other direction from the download's). The
    sink answers the SHA-256 of what it got once the uploader shuts down its side."""

    def __init__(self, wan: Wan, data: bytes) -> None:
        self.data, self.received, self.digest, self.error = data, 0, "", ""
        self._limit, self._moved = 0, threading.Condition()
        with netns(wan.ns_b):
            self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(NAT_TIMEOUT)
        dest = f"127.0.0.1:{self._server.getsockname()[1]}"
        with netns(wan.ns_a):
            self._client = socket.create_connection(("127.0.0.1", wan.proxy_port), timeout=10)
        self._client.sendall(
            f"CONNECT {dest} HTTP/1.1\r\nHost: {dest}\r\n"
            f"Proxy-Authorization: {AUTH}\r\n\r\n".encode()
        )
        assert _recv_head(self._client, bytearray()).startswith(b"HTTP/1.1 200")
        self._client.settimeout(NAT_TIMEOUT)
        self._threads = [
            threading.Thread(target=self._catch, args=(f,), daemon=True)
            for f in (self._sink, self._send)
        ]
        for thread in self._threads:
            thread.start()

    def _catch(self, body: Any) -> None:
        try:
            body()
        except Exception as exc:  # reported by join()
            self.error = self.error or f"{body.__name__}: {exc!r}"

    def _sink(self) -> None:
        conn, _ = self._server.accept()
        with conn:
            conn.settimeout(NAT_TIMEOUT)
            h = hashlib.sha256()
            while chunk := conn.recv(1 << 20):
                self.received += len(chunk)
                h.update(chunk)
            conn.sendall(h.hexdigest().encode())

    def allow(self, limit: int) -> None:
        """Let the uploader send the first ``limit`` bytes (it never sends more)."""
        with self._moved:
            self._limit = max(self._limit, min(limit, len(self.data)))
            self._moved.notify()

    def _send(self) -> None:
        view, sent = memoryview(self.data), 0
        while sent < len(self.data):
            with self._moved:
                if not self._moved.wait_for(lambda done=sent: self._limit > done, NAT_TIMEOUT):
                    raise TimeoutError(f"never allowed past {sent} bytes")
                limit = self._limit
            self._client.sendall(view[sent:limit])
            sent = limit
        self._client.shutdown(socket.SHUT_WR)
        answer = bytearray()
        while chunk := self._client.recv(100):
            answer += chunk
        self.digest = answer.decode()

    def join(self) -> None:
        for thread in self._threads:
            thread.join(NAT_TIMEOUT)
        self._client.close()
        self._server.close()
        assert not self.error, f"upload: {self.error} after {self.received} bytes"
        assert not any(t.is_alive() for t in self._threads), f"upload stuck at {self.received}"


@pytest.fixture
def nat_wan(linkemu_exe: Path, tmp_path: Path) -> Iterator[Wan]:
    with _wan(linkemu_exe, tmp_path, NAT_SPEC, "nat") as wan:
        try:
            yield wan
        finally:
            if wan.curl is not None and wan.curl.poll() is None:
                wan.curl.kill()
                wan.curl.wait()


def test_nat_rebinding_mid_transfer_keeps_the_connection_and_its_streams(
    nat_wan: Wan,
) -> None:
    """Side B's NAT mapping changes twice during a 16 MiB download and a 16 MiB upload
    (the agent's source port moves by 1000 each time, replies to the old port are
    lost): both transfers and a keep-alive tunnel opened before survive, on the agent's
    first connection."""
    wan = nat_wan
    tiny = (wan.out.parent / "nginx" / "www" / "tiny").read_bytes()
    with netns(wan.ns_a):
        side = socket.create_connection(("127.0.0.1", wan.proxy_port), timeout=10)
    with side:
        side.sendall(
            f"CONNECT {wan.target} HTTP/1.1\r\nHost: {wan.target}\r\n"
            f"Proxy-Authorization: {AUTH}\r\n\r\n".encode()
        )
        buf = bytearray()
        assert _recv_head(side, buf).startswith(b"HTTP/1.1 200")
        assert _keepalive_get(side, buf, wan) == tiny

        # the upload stays within 2 MiB + 1.2x the download's progress until both rebinds
        # are done, so it is still in flight at the second however fast the link carries
        # it (a rebind stalls an upload for about 1.5 s, a download not)
        upload = _Upload(wan, wan.blob[::-1])
        upload.allow(2 << 20)
        wan.start_download(NAT_TIMEOUT)
        assert wan.curl is not None
        deadline = time.monotonic() + NAT_TIMEOUT
        uploaded_at_rebind = []
        for rebinds, at in enumerate((4 << 20, 10 << 20)):  # rebind at 4 MiB, then at 10
            while not wan.out.exists() or wan.out.stat().st_size < at:
                if wan.out.exists():
                    upload.allow((2 << 20) + wan.out.stat().st_size * 6 // 5)
                if wan.curl.poll() is not None:
                    _, err = wan.curl.communicate()
                    pytest.fail(
                        f"curl ended (exit {wan.curl.returncode}: {err.decode().strip()}) "
                        f"before {at} bytes, after {rebinds} rebind(s)\n"
                        f"proxy:\n{wan.proxy.log_tail()}\nagent:\n{wan.agent.log_tail()}"
                    )
                assert time.monotonic() < deadline, f"fewer than {at} bytes in {NAT_TIMEOUT} s"
                time.sleep(0.005)  # polling the output file's size, bounded by the deadline
            wan.link.rebind()
            uploaded_at_rebind.append(upload.received)
        upload.allow(len(upload.data))
        code, err, counters = wan.finish()
        got = wan.out.read_bytes() if wan.out.exists() else b""
        assert code == 0, (
            f"curl: {err} after {len(got)} of {SIZE} bytes; link {counters}\n"
            f"proxy:\n{wan.proxy.log_tail()}\nagent:\n{wan.agent.log_tail()}"
        )
        assert len(got) == SIZE
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(wan.blob).hexdigest()
        # the tunnel opened before both rebinds still carries requests
        assert _keepalive_get(side, buf, wan) == tiny
        upload.join()
    # the upload was in flight at both rebinds and arrived intact
    assert 0 < uploaded_at_rebind[0] <= uploaded_at_rebind[1] < len(upload.data), uploaded_at_rebind
    assert upload.received == len(upload.data)
    assert upload.digest == hashlib.sha256(upload.data).hexdigest()
    # both rebinds happened, and the proxy answered the agent at its new port
    assert counters["nat_shift"] == 2000
    assert counters["b_to_a"]["nat_rewritten"] > 0
    assert counters["a_to_b"]["nat_rewritten"] > 0
    # ... on the same connection: no reconnect
    assert _agent_metric(wan, "reverse_http_agent_connections_total") == 1
    assert _agent_metric(wan, "reverse_http_agent_reconnects_total") == 0


AGENT_KEEPALIVE = 10.0  # the agent PINGs after this much silence (--quic.keepalive-interval)


def _connect_status(wan: Wan) -> tuple[str, float]:
    """One CONNECT + GET /tiny through the proxy: the GET's status, or the CONNECT's when
    that was refused ("000": no answer), and the seconds it took."""
    cmd = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_connect} %{http_code}", "-m", "15"]
    cmd += ["-p"]
    cmd += ["-x", f"http://127.0.0.1:{wan.proxy_port}", "-U", "bench:noauth"]
    with netns(wan.ns_a):
        t0 = time.monotonic()
        done = subprocess.run([*cmd, f"http://{wan.target}/tiny"], capture_output=True, text=True)
    connect, get = [*done.stdout.split(), "000", "000"][:2]
    return (get if connect == "200" else connect), time.monotonic() - t0


def test_nat_rebinding_while_idle_heals_with_the_agents_next_keepalive(nat_wan: Wan) -> None:
    """The mapping changes while the agent is idle: the proxy can only learn the new port
    from the agent's next packet (its keepalive), so until then new CONNECTs get a fast
    503 ("agent has been silent"), never a hang; after it they work again on the same
    connection. Measured: 503s for about 7 s, then 200, 10 s after the agent's last packet."""
    wan = nat_wan
    assert _connect_status(wan)[0] == "200"
    # the scenario: an agent quiet for longer than the proxy's silence threshold (2 s)
    time.sleep(3)
    wan.link.rebind()
    rebound = time.monotonic()
    attempts: list[tuple[float, str, float]] = []
    while not attempts or attempts[-1][1] != "200":
        since = time.monotonic() - rebound
        assert since < AGENT_KEEPALIVE + 5, f"no 200 after the agent's keepalive: {attempts}"
        code, took = _connect_status(wan)
        attempts.append((round(since, 2), code, round(took, 2)))
        # every answer is quick: a refusal within the proof-of-life wait (1 s), not a hang
        assert code in ("200", "503") and took < 3, attempts
    counters = wan.link.snapshot()
    assert counters["nat_shift"] == 1000 and counters["a_to_b"]["nat_rewritten"] > 0
    assert _agent_metric(wan, "reverse_http_agent_connections_total") == 1
    assert _agent_metric(wan, "reverse_http_agent_reconnects_total") == 0


# ------------------------------------------------ the emulator itself, over UDP


@pytest.fixture
def pair(linkemu_exe: Path) -> Iterator[tuple[str, str]]:
    with namespaces("emu") as names:
        yield names


@contextlib.contextmanager
def _udp(ns: str, addr: str, port: int = 0) -> Iterator[socket.socket]:
    with netns(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((addr, port))
        s.settimeout(2)
        yield s
    finally:
        s.close()


def _link(exe: Path, pair: tuple[str, str], tmp: Path, spec: LinkSpec) -> Link:
    return Link(exe, pair[0], pair[1], spec, tmp / "linkemu.log")


def test_linkemu_delays_by_the_rtt_and_rebinds_b_ports(
    linkemu_exe: Path, pair: tuple[str, str], tmp_path: Path
) -> None:
    with (
        _link(linkemu_exe, pair, tmp_path, LinkSpec(rtt_ms=40)) as link,
        _udp(pair[0], ADDR_A) as a,
        _udp(pair[1], ADDR_B) as b,
    ):
        b_port = b.getsockname()[1]
        rtts = []
        for i in range(5):
            t0 = time.monotonic()
            b.sendto(b"ping%d" % i, a.getsockname())
            data, peer = a.recvfrom(100)
            a.sendto(data, peer)
            assert b.recvfrom(100)[0] == data
            rtts.append(time.monotonic() - t0)
        assert peer == (ADDR_B, b_port)
        assert min(rtts) >= 0.040  # never early
        assert min(rtts) < 0.040 + 0.5  # and not stuck
        link.rebind()  # a NAT in the middle forgets its mapping
        deadline = time.monotonic() + 5
        while True:
            b.sendto(b"after", a.getsockname())
            data, peer = a.recvfrom(100)
            if peer[1] != b_port or time.monotonic() > deadline:
                break
        assert peer == (ADDR_B, (b_port + 1000) % 65536)  # a new source port ...
        a.sendto(b"reply", peer)
        assert b.recvfrom(100) == (b"reply", a.getsockname())  # ... mapped back to b
    assert link.counters["b_to_a"]["nat_rewritten"] >= 1


def test_linkemu_outage_drops_everything_until_toggled_back(
    linkemu_exe: Path, pair: tuple[str, str], tmp_path: Path
) -> None:
    with (
        _link(linkemu_exe, pair, tmp_path, LinkSpec(rtt_ms=2)) as link,
        _udp(pair[0], ADDR_A) as a,
        _udp(pair[1], ADDR_B) as b,
    ):
        link.outage()
        deadline = time.monotonic() + 5
        while link.snapshot()["b_to_a"]["drop_outage"] == 0:
            assert time.monotonic() < deadline, "the outage never started"
            b.sendto(b"lost", a.getsockname())
        a.settimeout(0.2)
        with pytest.raises(TimeoutError):
            a.recvfrom(100)
        link.outage()
        a.settimeout(2)
        deadline = time.monotonic() + 5
        while True:
            b.sendto(b"back", a.getsockname())
            with contextlib.suppress(TimeoutError):
                a.settimeout(0.2)
                if a.recvfrom(100)[0] == b"back":
                    break
            assert time.monotonic() < deadline, "the link never came back"
    assert link.counters["outages"] == 1


def test_linkemu_loss_is_about_the_probability_asked_for(
    linkemu_exe: Path, pair: tuple[str, str], tmp_path: Path
) -> None:
    with (
        _link(linkemu_exe, pair, tmp_path, LinkSpec(loss=0.1, seed=3)) as link,
        _udp(pair[0], ADDR_A) as a,
        _udp(pair[1], ADDR_B) as b,
    ):
        a.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)  # holds all 2000
        for i in range(2000):
            b.sendto(b"%d" % i, a.getsockname())
            if i % 100 == 99:
                time.sleep(0.001)  # pacing, so that no socket buffer overflows
        a.settimeout(0.5)
        got = 0
        with contextlib.suppress(TimeoutError):
            while True:
                a.recvfrom(100)
                got += 1
    lost = link.counters["b_to_a"]["drop_loss"]
    assert 120 < lost < 280  # 10% of 2000 (+ the odd IPv6 packet of the kernel's)
    assert got == 2000 - lost


@pytest.mark.parametrize("icmp", [True, False], ids=["icmp", "black-hole"])
def test_linkemu_path_mtu_answers_with_icmp_or_black_holes(
    linkemu_exe: Path, pair: tuple[str, str], tmp_path: Path, icmp: bool
) -> None:
    spec = LinkSpec(rtt_ms=2, path_mtu=1280, icmp=icmp)
    with (
        _link(linkemu_exe, pair, tmp_path, spec) as link,
        _udp(pair[0], ADDR_A) as a,
        _udp(pair[1], ADDR_B) as b,
    ):
        b.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        b.connect(a.getsockname())
        b.send(b"x" * (1280 - 28))  # exactly the path MTU: passes
        assert len(a.recvfrom(2000)[0]) == 1280 - 28
        big = b"y" * (1400 - 28)
        learned = False
        deadline = time.monotonic() + 1  # ICMP is back after one 2 ms round trip
        while time.monotonic() < deadline and not learned:
            try:
                b.send(big)
            except OSError as exc:
                assert exc.errno == errno.EMSGSIZE
                learned = True
            time.sleep(0.01)  # the ICMP answer's round trip, bounded by the deadline
        assert learned == icmp
        assert b.getsockopt(socket.IPPROTO_IP, IP_MTU) == (1280 if icmp else 1500)
    counters = link.counters["b_to_a"]
    assert counters["drop_mtu"] >= 1
    assert (counters["icmp_sent"] >= 1) == icmp


def test_linkemu_rate_serialises_and_the_queue_drops_its_tail(
    linkemu_exe: Path, pair: tuple[str, str], tmp_path: Path
) -> None:
    # 8 Mbit/s: a 1000-byte IP packet takes 1 ms; the queue holds 20 of them
    spec = LinkSpec(rtt_ms=2, rate_mbit=8, queue_bytes=20_000)
    with (
        _link(linkemu_exe, pair, tmp_path, spec) as link,
        _udp(pair[0], ADDR_A) as a,
        _udp(pair[1], ADDR_B) as b,
    ):
        a.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
        payload = b"z" * (1000 - 28)
        for _ in range(200):  # a burst far faster than 1 ms per packet
            b.sendto(payload, a.getsockname())
        arrivals = []
        a.settimeout(0.5)
        with contextlib.suppress(TimeoutError):
            while True:
                a.recvfrom(2000)
                arrivals.append(time.monotonic())
    counters = link.counters["b_to_a"]
    assert counters["drop_queue"] > 100
    # everything not dropped arrived (forwarded also counts the kernel's own IPv6 packets)
    assert counters["forwarded"] - 3 <= len(arrivals) <= counters["forwarded"]
    assert len(arrivals) >= 200 - counters["drop_queue"] - 3
    assert counters["queue_peak_bytes"] <= 20_000
    # what got through left the bottleneck one packet per millisecond
    assert arrivals[-1] - arrivals[0] >= (len(arrivals) - 1) * 0.001 * 0.9
