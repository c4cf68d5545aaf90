"""Many idle agents on one proxy: memory and CPU per agent, connect time, reconnect storm.

    python bench/agents.py [--agents 1000,5000,10000] [--ramp 100] [--idle-window 20]
                           [--storm-agents 5000] [--gen-procs 0] [--generator python|go]

One ``reverse-http proxy`` (loopback, metrics on). The agents are the project's own
``run_agent`` with an ``AgentConfig`` built in Python (distinct noauth ids,
``handle_signals=False``), many per load-generator process ("swarm"); a swarm
starts its agents at ``--ramp`` agents/s and writes its state to a JSON file.
With ``--gen-procs 0`` (default) M <= 5000 agents run in one swarm process and
more in two (the ramp is split between them).

``--generator go`` runs the swarm as the clean-room Go peer's ``swarm`` mode instead
(tests/go_peer/swarm.go, quic-go; built once and cached like the interop tests'
peer): one process for any M by default, each agent its own QUIC connection and UDP
socket with the agent's keepalive (10 s), idle timeout (30 s) and reconnect backoff
(0.5 s doubling to 30 s, jittered), serving tunnel streams, each agent from its own
loopback address (``--source-ips``; the proxy bounds handshakes in progress per
source address, 64, so agents all from 127.0.0.1 measure that bound, not a fleet). A Python swarm of
thousands of agents saturates its own core before the proxy does; the Go one does
not, so the storm then measures the proxy. Without Go or its modules it exits with
the reason.

For every M (fresh proxy each): proxy VmRSS before the agents and with all M
connected (KiB per agent), proxy CPU over ``--idle-window`` seconds with all M
idle (cores per 1000 agents), and the time until the proxy's
``reverse_http_agents_connected`` gauge shows M. That window starts 3 s after all are
up, while quic-go agents still search the path MTU (a padded probe datagram with each
keepalive for about their first minute); ``--settle S`` adds a second window S seconds
after all were up (settled/1000), the idle cost once that is over.

Reconnect storm (M = ``--storm-agents``): SIGKILL the proxy, restart it on the same
ports, and measure the time until all agents are connected again. Meanwhile a
CONNECT + GET of a tiny file starts every 50 ms through the first agent that
reconnected; their failures and latency are reported, and whether any agent's
reconnect loop ended. The storm needs all M connected first (else it is skipped).

Each agent pings every 10 s (the default keepalive) and the proxy just acknowledges;
the load generators' CPU is printed next to the proxy's, and the CPU timeline printed
for a row that does not come up tells which side ran out.
``--quick`` is the small preset `nox -s bench` uses.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
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
    basic_auth,
    code_under_test,
    free_ports,
    get_through,
    percentile,
    proxy_args,
    raise_nofile,
    start_nginx,
    udp_counters,
    udp_socket_drops,
    wait_port,
)

GAUGE = "reverse_http_agents_connected"
TINY = 128
PROBE_EVERY = 0.05
PROBE_TIMEOUT = 15.0


# ------------------------------------------------------------------------ swarm


async def swarm(args: argparse.Namespace) -> None:
    """Run ``args.count`` agents; write their state to ``args.status`` every 250 ms."""
    from reverse_http.agent.client import AgentHandle, run_agent
    from reverse_http.config import AgentConfig, AgentCredentials
    from reverse_http.quic.settings import ClientTls

    handles: list[AgentHandle] = []
    ids: list[str] = []
    exited = 0
    errors: Counter[str] = Counter()
    mark: list[int] = []
    mark_seq = 0
    t_start = trio.current_time()
    ramp_done: float | None = None

    async def one(agent_id: str, task_status: trio.TaskStatus[AgentHandle]) -> None:
        nonlocal exited
        config = AgentConfig(
            credentials=AgentCredentials(type="noauth", agent_id=agent_id),
            server_host="127.0.0.1",
            server_port=args.port,
            tls=ClientTls(root_ca_file=Path(args.ca)),
        )
        try:
            await run_agent(config, handle_signals=False, task_status=task_status)
        except Exception as exc:
            errors[f"{type(exc).__name__}: {exc}"[:200]] += 1
        finally:
            exited += 1

    # handle.connection is set before authentication: a connection counts as
    # "connected" here only once ``connects`` went up while it was the current one
    auth_conn: list[object] = []
    auth_count: list[int] = []

    def write_status() -> None:
        while len(auth_conn) < len(handles):
            auth_conn.append(None)
            auth_count.append(0)
        for i, h in enumerate(handles):
            if h.connects != auth_count[i]:
                auth_count[i] = h.connects
                auth_conn[i] = h.connection
        connected = [h.is_connected and h.connection is auth_conn[i] for i, h in enumerate(handles)]
        since = [
            i for i, h in enumerate(handles[: len(mark)]) if h.connects > mark[i] and connected[i]
        ]
        state = {
            "pid": os.getpid(),
            "started": len(handles),
            "connected": sum(connected),
            "quic_open": sum(h.is_connected for h in handles),
            "ever_connected": sum(1 for h in handles if h.connects),
            "connects_total": sum(h.connects for h in handles),
            "exited": exited,
            "errors": dict(errors.most_common(5)),
            "mark_seq": mark_seq,
            "reconnected_since_mark": len(since),
            "ever_since_mark": sum(
                1 for i, h in enumerate(handles[: len(mark)]) if h.connects > mark[i]
            ),
            "first_since_mark": ids[since[0]] if since else None,
            "ramp_s": ramp_done,
            "cpu_s": time.process_time(),
            "uptime_s": trio.current_time() - t_start,
        }
        tmp = args.status + ".tmp"
        Path(tmp).write_text(json.dumps(state))
        os.replace(tmp, args.status)

    async def reporter() -> None:
        while True:
            write_status()
            await trio.sleep(0.25)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reporter)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGUSR1) as sigs:

            async def signals() -> None:
                nonlocal mark, mark_seq
                async for signum in sigs:
                    if signum == signal.SIGUSR1:
                        mark = [h.connects for h in handles]
                        mark_seq += 1
                        write_status()
                    else:
                        nursery.cancel_scope.cancel()

            nursery.start_soon(signals)
            tick = 0.01
            per_tick = max(1, round(args.ramp * tick)) if args.ramp > 0 else args.count
            next_at = trio.current_time()
            for i in range(args.count):
                agent_id = f"{args.prefix}{i}"
                ids.append(agent_id)
                handles.append(await nursery.start(one, agent_id))
                if (i + 1) % per_tick == 0:
                    next_at += tick
                    await trio.sleep_until(next_at)
            ramp_done = trio.current_time() - t_start
            write_status()
            await trio.sleep_forever()  # the signal receiver must stay open


# ------------------------------------------------------------------ orchestrator


@dataclass
class Swarms:
    daemons: list[Daemon]
    status_files: list[Path]
    counts: list[int]

    def status(self) -> list[dict[str, Any]]:
        out = []
        for path in self.status_files:
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                out.append({})
        return out

    def total(self, key: str) -> int:
        return sum(int(s.get(key) or 0) for s in self.status())

    def cpu(self) -> float:
        return sum(d.cpu_seconds() for d in self.daemons)

    def alive(self) -> bool:
        return all(d.alive for d in self.daemons)


def start_swarms(
    children: Children,
    workdir: Path,
    n: int,
    procs: int,
    ramp: float,
    udp: int,
    ca: Path,
    tag: str,
    go_binary: Path | None = None,
    source_ips: int | None = None,
) -> Swarms:
    """``procs`` load generators for ``n`` agents: Python swarms, or Go ones with ``go_binary``."""
    counts = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
    daemons, files = [], []
    for i, count in enumerate(counts):
        status = workdir / f"swarm-{tag}-{i}.json"
        status.unlink(missing_ok=True)
        files.append(status)
        if go_binary is not None:
            argv = [
                str(go_binary),
                "swarm",
                "-server",
                f"127.0.0.1:{udp}",
                "-root-ca",
                str(ca),
                "-count",
                str(count),
                "-ramp",
                str(ramp / procs),
                "-status",
                str(status),
                "-prefix",
                f"bench-{tag}-{i}-",
                "-source-ips",
                str(count if source_ips is None else source_ips),
            ]
            daemons.append(
                children.start(Daemon(f"swarm{i}", argv, workdir / "logs" / f"swarm-{tag}-{i}.log"))
            )
            continue
        daemons.append(
            children.start(
                Daemon(
                    f"swarm{i}",
                    [
                        sys.executable,
                        __file__,
                        "--swarm",
                        "--port",
                        str(udp),
                        "--ca",
                        str(ca),
                        "--count",
                        str(count),
                        "--ramp",
                        str(ramp / procs),
                        "--status",
                        str(status),
                        "--prefix",
                        f"bench-{tag}-{i}-",
                    ],
                    workdir / "logs" / f"swarm-{tag}-{i}.log",
                )
            )
        )
    return Swarms(daemons, files, counts)


def cpu_timeline(
    samples: list[tuple[float, int | None, float, float]], lines: int = 3, per_line: int = 6
) -> list[str]:
    """About ``lines * per_line`` buckets of the connect phase: gauge and CPU shares."""
    if len(samples) < 2:
        return []
    width = max(1.0, samples[-1][0] / (lines * per_line))
    cells = []
    start = samples[0]
    for sample in samples[1:]:
        if sample[0] - start[0] >= width or sample is samples[-1]:
            dt = sample[0] - start[0]
            g = "-" if sample[1] is None else str(sample[1])
            cells.append(
                f"{sample[0]:.0f}: {g}, {100 * (sample[2] - start[2]) / dt:.0f}%, "
                f"{100 * (sample[3] - start[3]) / dt:.0f}%"
            )
            start = sample
    return [" | ".join(cells[i : i + per_line]) for i in range(0, len(cells), per_line)]


def swarm_summary(swarms: Swarms) -> list[str]:
    """One line per load generator: agents started/ever connected/connected, CPU share."""
    out = []
    for i, s in enumerate(swarms.status()):
        up = float(s.get("uptime_s") or 0)
        share = 100 * float(s.get("cpu_s") or 0) / up if up else float("nan")
        out.append(
            f"generator {i}: started {s.get('started')}/{swarms.counts[i]}, ever connected "
            f"{s.get('ever_connected')}, connected now {s.get('connected')}, connects "
            f"{s.get('connects_total')}, CPU {share:.0f}% of a core over {up:.0f} s"
        )
    return out


def gauge(port: int) -> int | None:
    """The proxy's connected-agents gauge, None when the endpoint does not answer."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/metrics")
            body = conn.getresponse().read().decode()
        finally:
            conn.close()
    except (OSError, http.client.HTTPException):
        return None
    for line in body.splitlines():
        if line.startswith(GAUGE + " "):
            return int(float(line.split()[1]))
    return None


@dataclass
class Proxy:
    children: Children
    workdir: Path
    certs: Any
    udp: int
    http: int
    metrics: int
    daemon: Daemon | None = None
    starts: int = 0

    def start(self) -> Daemon:
        self.starts += 1
        log = self.workdir / "logs" / f"proxy-{self.udp}-{self.starts}.log"
        self.daemon = self.children.start(
            Daemon("proxy", proxy_args(self.certs, self.udp, self.http, self.metrics), log)
        )
        wait_port(self.http, proc=self.daemon)
        wait_port(self.metrics, proc=self.daemon)
        return self.daemon

    def stop(self) -> None:
        if self.daemon is not None:
            self.children.stop(self.daemon)

    def kill(self) -> None:
        if self.daemon is not None:
            self.daemon.kill()
            self.children.stop(self.daemon)


def wait_connected(
    proxy: Proxy,
    swarms: Swarms,
    want: int,
    timeout: float,
    key: str = "connected",
    timeline: list[tuple[float, int | None, float, float]] | None = None,
) -> tuple[float | None, int]:
    """Poll the gauge (and the swarms) until ``want`` agents are connected; (seconds, last).

    ``timeline`` gets (seconds, gauge, proxy CPU s, generators' CPU s) about every second.
    """
    t0 = time.monotonic()
    last = 0
    next_sample = 0.0
    assert proxy.daemon is not None
    while time.monotonic() - t0 < timeout:
        g = gauge(proxy.metrics)
        ours = swarms.total(key)
        last = g if g is not None else last
        now = time.monotonic() - t0
        if timeline is not None and now >= next_sample:
            timeline.append((now, g, proxy.daemon.cpu_seconds(), swarms.cpu()))
            next_sample = now + 1.0
        if g is not None and g >= want and ours >= want:
            return time.monotonic() - t0, g
        if not proxy.daemon.alive:
            raise RuntimeError(f"proxy exited:\n{proxy.daemon.log_tail()}")
        if not swarms.alive():
            raise RuntimeError(
                "a swarm process exited:\n"
                + "\n".join(d.log_tail() for d in swarms.daemons if not d.alive)
            )
        time.sleep(0.25)
    return None, last


@dataclass
class Row:
    m: int
    procs: int
    ramp_s: float = float("nan")
    connect_s: float | None = None
    connected: int = 0
    rss0: float = float("nan")
    rssm: float = float("nan")
    hwm: float = float("nan")
    cores: float = float("nan")
    swarm_cores: float = float("nan")
    #: Proxy cores over a second idle window ``--settle`` s after all were up (nan: none).
    cores_settled: float = float("nan")
    connected_after_window: int | None = None
    exited: int = 0
    drops_connect: int = 0
    drops_idle: int = 0
    proxy_drops: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def kib_per_agent(self) -> float:
        return (self.rssm - self.rss0) / self.m if self.connect_s is not None else float("nan")

    @property
    def cores_per_1000(self) -> float:
        return self.cores / (self.m / 1000) if self.connect_s is not None else float("nan")

    @property
    def settled_per_1000(self) -> float:
        return self.cores_settled / (self.m / 1000) if self.connect_s is not None else float("nan")


@dataclass
class Storm:
    m: int
    reconnect_s: float | None = None
    connected: int = 0
    exited: int = 0
    never: int = 0
    sent: int = 0
    ok: int = 0
    tally: Tally = field(default_factory=Tally)
    latencies: list[float] = field(default_factory=list)
    probe_agent: str | None = None
    skipped: bool = False
    drops: int = 0
    proxy_cores: float = float("nan")
    gen_cores: float = float("nan")
    timeline: list[tuple[int, int | None]] = field(default_factory=list)
    proxy_drops: int | None = None
    first_reconnect_s: float | None = None
    notes: list[str] = field(default_factory=list)


def run_m(
    children: Children,
    workdir: Path,
    certs: Any,
    m: int,
    args: argparse.Namespace,
    target: str,
    storm: bool,
) -> tuple[Row, Storm | None]:
    procs = args.gen_procs or (1 if m <= 5000 or args.go_binary else 2)
    row = Row(m, procs)
    (udp,) = free_ports(1, socket.SOCK_DGRAM)
    http, metrics = free_ports(2)
    proxy = Proxy(children, workdir, certs, udp, http, metrics)
    daemon = proxy.start()
    swarms: Swarms | None = None
    storm_result: Storm | None = None
    try:
        time.sleep(2)
        row.rss0 = daemon.status_kib("VmRSS")
        drops0 = udp_counters().get("RcvbufErrors", 0)
        swarms = start_swarms(
            children,
            workdir,
            m,
            procs,
            args.ramp,
            udp,
            certs.ca_cert,
            str(m),
            args.go_binary,
            args.source_ips,
        )
        budget = m / args.ramp + args.connect_timeout
        timeline: list[tuple[float, int | None, float, float]] = []
        row.connect_s, row.connected = wait_connected(proxy, swarms, m, budget, timeline=timeline)
        all_up = time.monotonic()
        row.ramp_s = max((s.get("ramp_s") or float("nan")) for s in swarms.status())
        if row.connect_s is None:
            row.notes.append(
                f"only {row.connected} of {m} connected after {budget:.0f} s; "
                "per-agent figures are n/a"
            )
            row.notes += swarm_summary(swarms)
            row.notes.append("while connecting (t s: gauge, proxy %CPU, generators %CPU):")
            row.notes += cpu_timeline(timeline)
        time.sleep(3)  # let handshakes' garbage go
        drops1 = udp_counters().get("RcvbufErrors", 0)
        row.drops_connect = drops1 - drops0
        row.rssm = daemon.status_kib("VmRSS")
        cpu0, swarm0, t0 = daemon.cpu_seconds(), swarms.cpu(), time.monotonic()
        time.sleep(args.idle_window)
        dt = time.monotonic() - t0
        row.cores = (daemon.cpu_seconds() - cpu0) / dt
        row.swarm_cores = (swarms.cpu() - swarm0) / dt
        if args.settle > 0 and row.connect_s is not None:
            time.sleep(max(0.0, all_up + args.settle - time.monotonic()))
            cpu0, t0 = daemon.cpu_seconds(), time.monotonic()
            time.sleep(args.idle_window)
            row.cores_settled = (daemon.cpu_seconds() - cpu0) / (time.monotonic() - t0)
        row.connected_after_window = gauge(metrics)
        row.drops_idle = udp_counters().get("RcvbufErrors", 0) - drops1
        row.proxy_drops = udp_socket_drops(udp)
        row.hwm = daemon.status_kib("VmHWM")
        row.exited = swarms.total("exited")
        if storm and row.connect_s is None:
            storm_result = Storm(m, skipped=True)
            storm_result.notes.append("skipped: not all agents were connected to begin with")
        elif storm:
            storm_result = reconnect_storm(proxy, swarms, m, args, target)
    finally:
        if swarms is not None:
            for d in swarms.daemons:
                children.stop(d)
        proxy.stop()
    for d in [proxy.daemon] if proxy.daemon else []:
        lines = d.log_lines_matching(("error", "traceback", "critical"), limit=5)
        if lines:
            (storm_result.notes if storm_result else row.notes).append(
                f"proxy log {d.log.name}:\n      " + "\n      ".join(lines)
            )
    return row, storm_result


def reconnect_storm(
    proxy: Proxy, swarms: Swarms, m: int, args: argparse.Namespace, target: str
) -> Storm:
    result = Storm(m)
    seq = max(int(s.get("mark_seq") or 0) for s in swarms.status())
    for d in swarms.daemons:
        d.proc.send_signal(signal.SIGUSR1)  # type: ignore[union-attr]
    deadline = time.monotonic() + 10
    while min(int(s.get("mark_seq") or 0) for s in swarms.status()) <= seq:
        if time.monotonic() > deadline:
            raise RuntimeError("swarms did not take the mark")
        time.sleep(0.05)
    old = proxy.daemon
    proxy.kill()
    t0 = time.monotonic()
    proxy.start()
    started_s = time.monotonic() - t0
    result.notes.append(
        f"old proxy pid {old.pid if old else '?'} SIGKILLed; new one listening after "
        f"{started_s:.2f} s"
    )
    drops0 = udp_counters().get("RcvbufErrors", 0)
    assert proxy.daemon is not None
    cpu0, gen0, w0 = proxy.daemon.cpu_seconds(), swarms.cpu(), time.monotonic()
    trio.run(_storm_watch, proxy, swarms, m, args, target, t0, result)
    wall = time.monotonic() - w0
    result.proxy_cores = (proxy.daemon.cpu_seconds() - cpu0) / wall
    result.gen_cores = (swarms.cpu() - gen0) / wall
    result.drops = udp_counters().get("RcvbufErrors", 0) - drops0
    result.proxy_drops = udp_socket_drops(proxy.udp)
    if result.reconnect_s is None:
        result.notes += swarm_summary(swarms)
    result.exited = swarms.total("exited")
    result.never = m - swarms.total("ever_since_mark")
    errors: Counter[str] = Counter()
    for s in swarms.status():
        errors.update(s.get("errors") or {})
    for e, n in errors.items():
        result.notes.append(f"{n} agents' run_agent raised: {e}")
    for key, what in (
        ("connect_errors", "connection attempts failed"),
        ("disconnects", "authenticated connections ended"),
    ):
        kinds: Counter[str] = Counter()
        for s in swarms.status():
            kinds.update(s.get(key) or {})
        for e, n in kinds.most_common(5):
            result.notes.append(f"{n} {what} (Go swarm, whole run): {e}")
    return result


async def _storm_watch(
    proxy: Proxy,
    swarms: Swarms,
    m: int,
    args: argparse.Namespace,
    target: str,
    t0: float,
    result: Storm,
) -> None:
    all_done = trio.Event()

    async def probe(agent_id: str) -> None:
        state = [""]
        start = time.perf_counter()
        # longer than the proxy's 10 s agent dial timeout, so its answer is seen
        with trio.move_on_after(PROBE_TIMEOUT) as scope:
            try:
                await get_through(proxy.http, target, "/tiny", TINY, state, basic_auth(agent_id))
                result.ok += 1
                result.latencies.append((time.perf_counter() - start) * 1000)
            except Failure as exc:
                result.tally.add(exc.reason)
        if scope.cancelled_caught:
            result.tally.add(f"timeout ({PROBE_TIMEOUT:g} s) in {state[0]}")

    async def prober(nursery: trio.Nursery) -> None:
        while result.probe_agent is None:
            for s in swarms.status():
                if s.get("first_since_mark"):
                    result.probe_agent = s["first_since_mark"]
                    result.first_reconnect_s = time.monotonic() - t0
                    break
            else:
                if all_done.is_set():
                    return
                await trio.sleep(0.05)
        next_at = trio.current_time()
        while not all_done.is_set():
            result.sent += 1
            nursery.start_soon(probe, result.probe_agent)
            next_at += PROBE_EVERY
            await trio.sleep_until(next_at)

    async def watcher() -> None:
        next_sample = 0.0
        while time.monotonic() - t0 < args.storm_timeout:
            g = await trio.to_thread.run_sync(gauge, proxy.metrics)
            back = swarms.total("reconnected_since_mark")
            result.connected = g or 0
            if time.monotonic() - t0 >= next_sample:
                result.timeline.append((round(time.monotonic() - t0), g))
                next_sample += args.storm_timeout / 18
            if g is not None and g >= m and back >= m:
                result.reconnect_s = time.monotonic() - t0
                break
            await trio.sleep(0.25)
        all_done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watcher)
        nursery.start_soon(prober, nursery)


# ------------------------------------------------------------------------ output


def fmt(v: float | int | None, spec: str) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and v != v:
        return "n/a"
    return format(v, spec)


def print_rows(rows: list[Row], ramp: float, window: float, settle: float = 0.0) -> None:
    print()
    print(f"idle agents on one proxy (ramp {ramp:g} agents/s, idle window {window:g} s)")
    settled = f" {'settled/1000':>12}" if settle > 0 else ""
    head = (
        f"  {'agents':>7} {'gen procs':>9} {'ramp s':>7} {'all up s':>8} {'RSS 0 MiB':>9} "
        f"{'RSS M MiB':>9} {'KiB/agent':>9} {'peak MiB':>8} {'proxy cores':>11} "
        f"{'cores/1000':>10}{settled} {'gen cores':>9} {'up after':>8} {'loops ended':>11} "
        f"{'UDP drops':>18}"
    )
    print(head)
    for r in rows:
        drops = f"{r.drops_connect}/{r.drops_idle}/{fmt(r.proxy_drops, 'd')}"
        settled_cell = f"{fmt(r.settled_per_1000, '.3f'):>12} " if settle > 0 else ""
        print(
            f"  {r.m:>7} {r.procs:>9} {fmt(r.ramp_s, '.1f'):>7} {fmt(r.connect_s, '.1f'):>8} "
            f"{fmt(r.rss0 / 1024, '.1f'):>9} {fmt(r.rssm / 1024, '.1f'):>9} "
            f"{fmt(r.kib_per_agent, '.1f'):>9} {fmt(r.hwm / 1024, '.1f'):>8} "
            f"{fmt(r.cores, '.3f'):>11} {fmt(r.cores_per_1000, '.3f'):>10} {settled_cell}"
            f"{fmt(r.swarm_cores, '.2f'):>9} {fmt(r.connected_after_window, 'd'):>8} "
            f"{r.exited:>11} {drops:>18}"
        )
        for note in r.notes:
            print(f"    [{r.m}] {note}")
    print(
        "  (all up s: from the first agent's start until the gauge shows M, ramp included;"
        " up after: gauge after the idle window; gen cores: load generators' CPU;"
        " UDP drops: kernel RcvbufErrors while connecting / during the idle window /"
        " on the proxy's socket over its life)"
    )
    if settle > 0:
        print(
            f"  (cores/1000: the idle window right after all were up, while quic-go agents"
            f" still probe the path MTU with their keepalives; settled/1000: a window"
            f" {settle:g} s after all were up, once those probes are over)"
        )


def print_storm(s: Storm) -> None:
    print()
    print(f"reconnect storm: {s.m} agents, proxy SIGKILLed and restarted on the same ports")
    if s.skipped:
        for note in s.notes:
            print(f"  {note}")
        return
    print(
        f"  time until all reconnected (s)      {fmt(s.reconnect_s, '.1f')}"
        + ("" if s.reconnect_s is not None else f"  (gauge at {s.connected})")
    )
    print(f"  first agent back after (s)          {fmt(s.first_reconnect_s, '.2f')}")
    print(f"  agents never authenticated again    {s.never}")
    print(
        "  gauge over time (s:agents)          "
        + " ".join(f"{t}:{'-' if g is None else g}" for t, g in s.timeline)
    )
    print(f"  agents whose run_agent ended        {s.exited}")
    print(
        f"  UDP datagrams dropped (RcvbufErrors) {s.drops}, on the proxy's socket {s.proxy_drops}"
    )
    print(
        f"  proxy / generator CPU (cores)       {fmt(s.proxy_cores, '.2f')} / "
        f"{fmt(s.gen_cores, '.2f')}"
    )
    print(f"  probes (CONNECT+GET every {PROBE_EVERY * 1000:.0f} ms via {s.probe_agent})")
    print(f"    sent / ok / failed                {s.sent} / {s.ok} / {s.tally.total}")
    print(
        f"    latency p50 / p99 (ms)            {fmt(percentile(s.latencies, 50), '.1f')} / "
        f"{fmt(percentile(s.latencies, 99), '.1f')}"
    )
    for line in s.tally.lines("      "):
        print(line)
    for note in s.notes:
        print(f"  {note}")


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int_list, default=[1000, 5000, 10000])
    parser.add_argument("--ramp", type=float, default=100, help="agents started per second")
    parser.add_argument("--idle-window", type=float, default=20)
    parser.add_argument(
        "--settle",
        type=float,
        default=0,
        help="also measure the proxy's CPU over a second idle window this many seconds "
        "after all agents were up (0: none). quic-go agents probe the path MTU with "
        "each keepalive for about their first 60 s; the first window, right after the "
        "ramp, measures that start-up too",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=120,
        help="seconds beyond the ramp for all agents to connect",
    )
    parser.add_argument("--storm-agents", type=int, default=5000, help="0: no storm")
    parser.add_argument("--storm-timeout", type=float, default=180)
    parser.add_argument(
        "--gen-procs",
        type=int,
        default=0,
        help="load-generator processes (0: one Go swarm, or Python: 1 up to 5000 agents, else 2)",
    )
    parser.add_argument(
        "--generator",
        choices=("python", "go"),
        default="python",
        help="load generator: Python run_agent swarms, or the Go peer's swarm mode (quic-go)",
    )
    parser.add_argument(
        "--source-ips",
        type=int,
        default=None,
        help="go: loopback source addresses the agents spread over, from 127.16.0.1 "
        "(default: one per agent, as a fleet's hosts; 0: all from 127.0.0.1, where the "
        "proxy's per-source handshake limit binds)",
    )
    parser.add_argument("--workdir", type=Path, default=None)
    # the load generator itself
    parser.add_argument("--swarm", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ca", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--status", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default="bench-", help=argparse.SUPPRESS)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small preset for `nox -s bench`: --agents 200,500 --storm-agents 500 "
        "--idle-window 10 --storm-timeout 60 (explicit options still win)",
    )
    if "--quick" in sys.argv[1:]:
        parser.set_defaults(agents=[200, 500], storm_agents=500, idle_window=10, storm_timeout=60)
    args = parser.parse_args()
    nofile = raise_nofile()
    if args.swarm:
        import logging

        logging.basicConfig(
            level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        trio.run(swarm, args)
        return

    from reverse_http.devcerts import make_dev_certs

    args.go_binary = None
    if args.generator == "go":
        from tests.go_peer import GoBuildFailed, GoUnavailable, build_binary

        try:
            build = build_binary()
        except (GoUnavailable, GoBuildFailed) as exc:
            sys.exit(f"--generator go: {exc}")
        args.go_binary = build.binary
        how = "cached" if build.cached else f"built in {build.seconds:.0f} s"
        print(f"Go load generator {build.binary} ({how})", flush=True)

    ms = list(args.agents)
    storm_alone = args.storm_agents and args.storm_agents not in ms
    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-agents-")))
        else:
            workdir = args.workdir.resolve()
            workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "logs").mkdir(exist_ok=True)
        children = stack.enter_context(Children())
        certs = make_dev_certs(workdir / "certs")
        _, nginx_port = start_nginx(children, workdir / "nginx", {"tiny": TINY})
        target = f"127.0.0.1:{nginx_port}"
        print(
            f"agents benchmark: RLIMIT_NOFILE {nofile}; reverse_http from {code_under_test()}; "
            f"{args.generator} load generator"
        )
        sys.stdout.flush()
        rows: list[Row] = []
        storms: list[Storm] = []
        for m in ms:
            row, storm = run_m(
                children, workdir, certs, m, args, target, storm=m == args.storm_agents
            )
            rows.append(row)
            storms += [storm] if storm else []
            print(f"  ... {m} agents done", flush=True)
        if storm_alone:
            _, storm = run_m(children, workdir, certs, args.storm_agents, args, target, storm=True)
            storms += [storm] if storm else []
        print_rows(rows, args.ramp, args.idle_window, args.settle)
        for s in storms:
            print_storm(s)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
