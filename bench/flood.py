"""UDP floods at the agent port: do established agents keep serving, do new ones get in?

    python bench/flood.py [--duration 20] [--junk-rate 20000] [--initial-rate 2000]
                          [--agents 4] [--request-rate 20] [--quick]

Two floods, each against a fresh ``reverse-http proxy`` process (loopback, metrics on)
with ``--agents`` established agents (``reverse-http agent`` processes) and an nginx
target:

- **junk**: random datagrams (random bytes, long headers of version 1 with random
  types and connection IDs, unknown versions below and above 1200 bytes, short
  headers) at ``--junk-rate`` per second;
- **initials**: real, decryptable client Initials carrying a real ClientHello, each
  with a fresh destination connection ID (one captured ClientHello, re-encrypted
  under every new DCID's Initial keys), at ``--initial-rate`` per second.

The flood generator is its own process, sending from 64 loopback source addresses
(127.0.1.x: a distributed flood, so the per-source limit alone cannot stop it), bounded
in count (rate x duration) and in time. While it runs, CONNECT + GET requests
(``--request-rate`` per second, each its own TCP connection, 5 s timeout) go through
the established agents; two seconds into the flood a new agent process starts and
the time until the proxy counts it as connected is measured (a run without a flood
gives the baseline, which is mostly the agent's Python start-up).

Reported per flood: requests ok/failed and latency, new-agent connect time, proxy
VmRSS before, peak and 10 s after the flood, proxy CPU, datagrams the generator
sent, and the proxy's own counters (Retries sent, Initials dropped by reason,
handshakes in progress). Targets (issue 11): >= 99% of requests succeed, a new agent
connects within 5 s, RSS grows <= 64 MiB and falls back (10 s after the flood, within
4 MiB of before: the proxy drops what a flood left, such as remembered Retries, and
trims the C heap 5 s after the last new connection's Initial; the "release" line shows the
proxy's ``quic_memory_releases_total`` and ``quic_memory_released_bytes_total`` at the
end of the cooldown). The machine's load
(``uptime``) is printed: other work on the same cores changes every number.
``--quick`` is the short preset `nox -s bench` uses.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

if str(Path(__file__).resolve().parent.parent) not in sys.path:
    sys.path.append(str(Path(__file__).resolve().parent.parent))  # PYTHONPATH may override

from bench._common import (
    Children,
    Daemon,
    Failure,
    Tally,
    agent_args,
    basic_auth,
    code_under_test,
    free_ports,
    get_through,
    percentile,
    proxy_args,
    start_nginx,
    wait_port,
)

SOURCES = [f"127.0.1.{i}" for i in range(1, 65)]
FILE_SIZE = 1024
REQUEST_TIMEOUT = 5.0
NEW_AGENT_AFTER = 2.0
COOLDOWN = 10.0
RSS_LIMIT_MIB = 64.0
#: RSS "fell back" when, COOLDOWN seconds after the flood, it is within this of before.
FALLBACK_MIB = 4.0
GAUGE = "reverse_http_agents_connected"


# --------------------------------------------------------------------- generator


def _client_hello() -> tuple[bytes, bytes]:
    """The CRYPTO payload (a ClientHello) of one real aioquic client Initial, and the
    source CID its transport parameters name (the server checks they agree)."""
    from aioquic.buffer import Buffer  # type: ignore[attr-defined]
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection
    from aioquic.quic.crypto import CryptoPair
    from aioquic.quic.packet import pull_quic_header

    from reverse_http.quic import DEFAULT_ALPN

    quic = QuicConnection(
        configuration=QuicConfiguration(is_client=True, alpn_protocols=[DEFAULT_ALPN])
    )
    quic.connect(("127.0.0.1", 4242), now=0.0)
    data = quic.datagrams_to_send(now=0.0)[0][0]
    buf = Buffer(data=data)
    header = pull_quic_header(buf, host_cid_length=8)
    pair = CryptoPair()
    pair.setup_initial(cid=header.destination_cid, is_client=False, version=header.version)
    _, payload, _ = pair.decrypt_packet(data[: header.packet_length], buf.tell(), 0)
    frames = Buffer(data=payload)
    while True:
        frame_type = frames.pull_uint_var()
        if frame_type == 0x06:  # CRYPTO
            offset, length = frames.pull_uint_var(), frames.pull_uint_var()
            assert offset == 0
            return bytes(frames.pull_bytes(length)), bytes(header.source_cid)
        if frame_type not in (0x00, 0x01):
            raise RuntimeError(f"unexpected frame {frame_type:#x} in a client Initial")


class InitialFactory:
    """Valid client Initials with fresh DCIDs: the same ClientHello under new keys."""

    def __init__(self) -> None:
        from aioquic.quic.packet import QuicProtocolVersion

        self.hello, self.scid = _client_hello()
        self.version = QuicProtocolVersion.VERSION_1

    def make(self) -> bytes:
        from aioquic.quic.crypto import CryptoPair
        from aioquic.quic.packet import QuicFrameType, QuicPacketType
        from aioquic.quic.packet_builder import QuicPacketBuilder

        dcid, scid = os.urandom(8), self.scid
        pair = CryptoPair()
        pair.setup_initial(cid=dcid, is_client=True, version=self.version)
        builder = QuicPacketBuilder(
            host_cid=scid,
            peer_cid=dcid,
            version=self.version,
            is_client=True,
            max_datagram_size=1200,
        )
        builder.start_packet(QuicPacketType.INITIAL, pair)
        room = builder.remaining_flight_space - 8
        buf = builder.start_frame(QuicFrameType.CRYPTO, capacity=room)
        buf.push_uint_var(0)
        buf.push_uint16(0x4000 | len(self.hello))
        buf.push_bytes(self.hello)
        buf.push_bytes(bytes(room - 3 - len(self.hello)))  # PADDING
        datagrams, _ = builder.flush()
        return bytes(datagrams[0])


def _junk(rng: random.Random) -> bytes:
    kind = rng.randrange(5)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 1400))
    if kind == 1:  # version 1 long header, random type, CIDs and body
        return (
            bytes([0xC0 | rng.randrange(64)])
            + b"\x00\x00\x00\x01\x08"
            + rng.randbytes(8)
            + b"\x08"
            + rng.randbytes(rng.randrange(8, 1300))
        )
    if kind == 2:  # Initial-shaped, full size, undecryptable
        return (
            b"\xc0\x00\x00\x00\x01\x08"
            + rng.randbytes(8)
            + b"\x08"
            + rng.randbytes(8)
            + (b"\x00\x44\xb0" + rng.randbytes(1200))
        )
    if kind == 3:  # unknown version, below or above 1200 bytes
        return b"\xc0" + rng.randbytes(4) + b"\x08" + rng.randbytes(9 + rng.choice((40, 1200)))
    return bytes([0x40 | rng.randrange(64)]) + rng.randbytes(rng.randrange(20, 1300))


def generate(kind: str, port: int, rate: float, duration: float, report: Path) -> None:
    """Send ``rate`` datagrams per second for ``duration`` seconds (count-bounded too)."""
    rng = random.Random(4711)
    factory = InitialFactory() if kind == "initials" else None
    pool = [] if factory is not None else [_junk(rng) for _ in range(8192)]
    socks = []
    for host in SOURCES:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # answers are dropped
        s.bind((host, 0))
        socks.append(s)
    total = int(rate * duration)
    dest = ("127.0.0.1", port)
    sent = refused = 0
    start = time.monotonic()
    deadline = start + duration + 2.0
    while sent + refused < total and time.monotonic() < deadline:
        due = min(total, int((time.monotonic() - start) * rate) + 1)
        while sent + refused < due:
            i = sent + refused
            data = factory.make() if factory is not None else pool[rng.randrange(len(pool))]
            try:
                socks[i % len(socks)].sendto(data, dest)
                sent += 1
            except OSError:  # a full socket buffer: the datagram is lost, as on a wire
                refused += 1
        time.sleep(0.001)
    elapsed = time.monotonic() - start
    report.write_text(f"{sent} {refused} {elapsed:.2f}\n")


# ------------------------------------------------------------------- the phases


@dataclass
class Result:
    name: str
    ok: int = 0
    failures: Tally = field(default_factory=Tally)
    latencies: list[float] = field(default_factory=list)
    new_agent_seconds: float | None = None
    handshakes: list[float] = field(default_factory=list)
    handshake_failures: int = 0
    rss_before: float = 0.0
    rss_peak: float = 0.0
    rss_after: float = 0.0
    cpu: float = 0.0
    sent: str = "-"
    counters: dict[str, float] = field(default_factory=dict)
    #: The proxy's counters at the end of the cooldown (the memory release comes then).
    counters_after: dict[str, float] = field(default_factory=dict)


def scrape(port: int) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    except (OSError, http.client.HTTPException):
        return {}
    finally:
        conn.close()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(reverse_http_(?:quic_\w+|agents_connected)(?:\{[^}]*\})?) (\S+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


async def request_loop(
    result: Result, http_port: int, dest: str, agents: list[str], rate: float, stop: trio.Event
) -> None:
    async def one(agent: str) -> None:
        t0 = time.monotonic()
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                await get_through(http_port, dest, "/small", FILE_SIZE, auth=basic_auth(agent))
            result.ok += 1
            result.latencies.append(time.monotonic() - t0)
        except trio.TooSlowError:
            result.failures.add(f"timeout after {REQUEST_TIMEOUT:g}s")
        except Failure as exc:
            result.failures.add(exc.reason)

    async with trio.open_nursery() as nursery:
        i = 0
        while not stop.is_set():
            nursery.start_soon(one, agents[i % len(agents)])
            i += 1
            await trio.sleep(1 / rate)


async def probe_handshakes(result: Result, udp: int, ca: Path, stop: trio.Event) -> None:
    """A QUIC handshake (the agents' own client) once a second: the transport's share of
    a new agent's connect time, without the agent process's start-up."""
    from reverse_http.quic import ClientTls, TransportSettings, connect

    tls = ClientTls(root_ca_file=ca, server_name="localhost")
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            async with trio.open_nursery() as nursery:
                with trio.fail_after(REQUEST_TIMEOUT):
                    conn = await connect(nursery, "127.0.0.1", udp, TransportSettings(), tls)
                result.handshakes.append(time.monotonic() - t0)
                conn.abort_now()
                nursery.cancel_scope.cancel()
        except Exception:
            result.handshake_failures += 1
        await trio.sleep(1.0)


async def watch_rss(proxy: Daemon, result: Result, stop: trio.Event) -> None:
    while not stop.is_set():
        result.rss_peak = max(result.rss_peak, proxy.status_kib("VmRSS"))
        await trio.sleep(0.25)


def run_phase(
    name: str, args: argparse.Namespace, certs: Any, nginx_port: int, workdir: Path
) -> Result:
    result = Result(name)
    udp = free_ports(1, socket.SOCK_DGRAM)[0]
    http_port, metrics = free_ports(2)
    with Children() as children:
        proxy = children.start(
            Daemon(
                "proxy",
                proxy_args(certs, udp, http_port, metrics),
                workdir / f"{name}-proxy.log",
            )
        )
        wait_port(metrics, proc=proxy)
        ids = [f"flood-{i}" for i in range(args.agents)]
        for agent_id in ids:
            children.start(
                Daemon(
                    agent_id, agent_args(certs, udp, agent_id), workdir / f"{name}-{agent_id}.log"
                )
            )
        deadline = time.monotonic() + 30
        while scrape(metrics).get(GAUGE, 0) < len(ids):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: agents did not connect:\n{proxy.log_tail()}")
            time.sleep(0.1)
        time.sleep(1.0)
        result.rss_before = proxy.status_kib("VmRSS")
        cpu0 = proxy.cpu_seconds()
        report = workdir / f"{name}-generator.txt"

        async def main() -> None:
            stop = trio.Event()
            dest = f"127.0.0.1:{nginx_port}"
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    request_loop, result, http_port, dest, ids, args.request_rate, stop
                )
                nursery.start_soon(watch_rss, proxy, result, stop)
                nursery.start_soon(probe_handshakes, result, udp, certs.ca_cert, stop)
                generator = None
                if name != "baseline":
                    rate = args.junk_rate if name == "junk" else args.initial_rate
                    generator = children.start(
                        Daemon(
                            "generator",
                            [
                                sys.executable,
                                __file__,
                                "--generate",
                                name,
                                "--port",
                                str(udp),
                                "--rate",
                                str(rate),
                                "--duration",
                                str(args.duration),
                                "--report",
                                str(report),
                            ],
                            workdir / f"{name}-generator.log",
                        )
                    )
                await trio.sleep(NEW_AGENT_AFTER)
                before = scrape(metrics).get(GAUGE, 0)
                t0 = time.monotonic()
                children.start(
                    Daemon("new", agent_args(certs, udp, "flood-new"), workdir / f"{name}-new.log")
                )
                while time.monotonic() - t0 < 30:
                    got = await trio.to_thread.run_sync(scrape, metrics)
                    if got.get(GAUGE, 0) > before:
                        result.new_agent_seconds = time.monotonic() - t0
                        break
                    await trio.sleep(0.05)
                end = t0 - NEW_AGENT_AFTER + args.duration
                await trio.sleep(max(0.0, end - time.monotonic()))
                if generator is not None:
                    await trio.to_thread.run_sync(generator.proc.wait)  # type: ignore[union-attr]
                stop.set()

        trio.run(main)
        result.cpu = proxy.cpu_seconds() - cpu0
        result.counters = scrape(metrics)
        time.sleep(COOLDOWN)
        result.rss_after = proxy.status_kib("VmRSS")
        result.counters_after = scrape(metrics)
        if report.exists():
            sent, refused, elapsed = report.read_text().split()
            result.sent = f"{int(sent):,} in {elapsed}s ({int(refused):,} not sent: buffer full)"
        if not proxy.alive:
            raise RuntimeError(f"{name}: the proxy died:\n{proxy.log_tail()}")
    return result


def print_result(r: Result, args: argparse.Namespace) -> None:
    total = r.ok + r.failures.total
    share = 100 * r.ok / total if total else float("nan")
    growth = (r.rss_peak - r.rss_before) / 1024
    back = (r.rss_after - r.rss_before) / 1024

    def verdict(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    print(f"\n{r.name}: flood {r.sent}" if r.name != "baseline" else "\nbaseline (no flood)")
    print(
        f"  requests      {r.ok}/{total} ok ({share:.2f}%)  [{verdict(share >= 99)}: >= 99%]"
        f"  p50 {1000 * percentile(r.latencies, 50):.0f} ms"
        f"  p99 {1000 * percentile(r.latencies, 99):.0f} ms"
    )
    for line in r.failures.lines():
        print("  " + line)
    new = r.new_agent_seconds
    print(
        f"  new agent     {'never' if new is None else f'{new:.2f} s'} from process start"
        f"  [{verdict(new is not None and new <= 5)}: <= 5 s];"
        f" QUIC handshakes p50 {1000 * percentile(r.handshakes, 50):.0f} ms,"
        f" max {1000 * max(r.handshakes, default=float('nan')):.0f} ms,"
        f" {r.handshake_failures} failed of {len(r.handshakes) + r.handshake_failures}"
    )
    print(
        f"  proxy RSS     {r.rss_before / 1024:.1f} MiB before, peak +{growth:.1f} MiB,"
        f" {COOLDOWN:g} s after +{back:.1f} MiB  [{verdict(growth <= RSS_LIMIT_MIB)}: <= 64 MiB;"
        f" {'fell back' if back <= FALLBACK_MIB else 'did NOT fall back'}:"
        f" {verdict(back <= FALLBACK_MIB)}: within {FALLBACK_MIB:g} MiB of before]"
    )
    releases = r.counters_after.get("reverse_http_quic_memory_releases_total")
    released = r.counters_after.get("reverse_http_quic_memory_released_bytes_total", 0.0)
    print(
        "  release       "
        + (
            "not exported (older proxy)"
            if releases is None
            else f"{releases:.0f} after the flood, {released / 2**20:.1f} MiB given back"
        )
    )
    print(f"  proxy CPU     {r.cpu:.1f} s over the flood ({r.cpu / args.duration:.2f} cores)")
    interesting = {
        k.removeprefix("reverse_http_quic_"): v
        for k, v in r.counters.items()
        if k.startswith("reverse_http_quic_") and v and "agent=" not in k
    }
    print("  proxy counted " + (", ".join(f"{k} {v:,.0f}" for k, v in interesting.items()) or "-"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument("--junk-rate", type=float, default=20000)
    parser.add_argument("--initial-rate", type=float, default=2000)
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--request-rate", type=float, default=20)
    parser.add_argument("--phases", default="baseline,junk,initials")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="5 s floods")
    parser.add_argument("--generate", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        generate(args.generate, args.port, args.rate, args.duration, args.report)
        return
    if args.quick:
        args.duration = 5.0

    from reverse_http.devcerts import make_dev_certs

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="reverse-http-flood-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"code under test: {code_under_test()}")
    print(f"load: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    print(
        f"{args.agents} agents, {args.request_rate:g} CONNECT+GET/s, floods of {args.duration:g} s:"
        f" junk {args.junk_rate:g}/s, real Initials {args.initial_rate:g}/s; logs in {workdir}"
    )
    certs = make_dev_certs(workdir / "certs")
    with Children() as children:
        _, nginx_port = start_nginx(children, workdir / "nginx", {"small": FILE_SIZE})
        for name in args.phases.split(","):
            print_result(run_phase(name, args, certs, nginx_port, workdir), args)
    print(f"\nload: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")


if __name__ == "__main__":
    main()
