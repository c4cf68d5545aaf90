"""The tunnel under many concurrent clients, side by side with pproxy's reverse QUIC tunnel.

    python bench/scale.py [--sessions 1000,10000] [--idle 0,100,1000,10000] [--tries 300]
                          [--bulk-mib 128] [--ramp 10000] [--scenarios a,b,c]

Both tunnels run in the same invocation, one after the other, each against the
same nginx (one worker, loopback) and the same client code:

* ours:   ``reverse-http proxy`` + ``reverse-http agent`` (QUIC, agent id "bench").
* pproxy: public side ``pproxy -l http://H:TCP -r http+quic+in://H:UDP --ssl cert,key``,
  private side ``pproxy -l http+quic+in://H:UDP -l http://H:DUMMY``. The private
  side dials the public side over QUIC and keeps ``--pproxy-in`` streams waiting;
  each client CONNECT on the public side takes one of them. The extra ``-l`` on the
  private side only keeps its event loop running: pproxy 2.7.9 fails to print the
  backward listener ("'ProxyBackward' object has no attribute 'sockets'") and, with
  no other server, returns from main() at once. pproxy ignores Proxy-Authorization.
  Known pproxy limits that show in the tables: one QUIC connection with aioquic's
  fixed 128 concurrent bidirectional streams (more sessions wait, and pproxy's
  public side gives a waiting CONNECT up after 60 s); with ``+in`` once, streams are
  handed over one at a time; tunnels idle for ~60 s are closed.

Scenarios (fresh proxy and agent for every row, so peak RSS and CPU belong to it):

a. N sessions started at once (``--ramp`` sessions/s; 0: no ramp), each CONNECT +
   ``GET /file64k`` (Connection: close), byte count and Content-Length checked.
b. 128 MiB bulk download (curl) while K idle sessions (CONNECT done, to a helper
   process that holds TCP connections) are open through the same agent.
c. Latency: new-connection GET of a tiny file (TCP connect, CONNECT, GET, whole
   response) and keep-alive GET round trips over one tunnel, sequentially.

The client side is this one trio process (raw sockets); its CPU share is printed,
a value near 100 % means the client, not the tunnel, was the limit. The machine has
2 cores for client, proxy, agent and nginx. Kernel counters per row (ListenOverflows:
SYNs dropped at a full accept queue; TCPAbortOnData; UDP RcvbufErrors) and the peak
accept queue of the proxy, nginx and hold listeners (sampled every second) tell
where connections waited. ``--quick`` is the small preset `nox -s bench` uses.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
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
    ListenQueues,
    Tally,
    agent_args,
    code_under_test,
    free_ports,
    get_request,
    get_through,
    hold_server,
    open_tunnel,
    percentile,
    proxy_args,
    raise_nofile,
    read_response,
    side_by_side,
    start_nginx,
    tcp_ext_counters,
    udp_counters,
    wait_port,
    wait_tunnel_ready,
)
from reverse_http.devcerts import CertFiles, make_dev_certs

SMALL = 64 * 1024
TINY = 128
NAMES = ("ours", "pproxy")
PROBLEM_WORDS = ("error", "traceback", "exception", "critical", "fatal", "failed")
#: pproxy 2.7.9 prints these at every start in reverse QUIC mode (see the module docstring).
KNOWN_NOISE = ("Start server failed", "has no attribute 'sockets'")


# ---------------------------------------------------------------------- tunnels


@dataclass
class Tunnel:
    kind: str
    proxy: Daemon
    agent: Daemon
    http_port: int
    cpu0: tuple[float, float] = (0.0, 0.0)
    notes: list[str] = field(default_factory=list)

    def alive(self) -> bool:
        return self.proxy.alive and self.agent.alive

    def cpu(self) -> tuple[float, float]:
        return self.proxy.cpu_seconds(), self.agent.cpu_seconds()


def start_tunnel(
    kind: str, children: Children, workdir: Path, certs: CertFiles, target: str, pproxy_in: int
) -> Tunnel:
    (udp,) = free_ports(1, socket.SOCK_DGRAM)
    http, dummy = free_ports(2)
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    stamp = f"{kind}-{time.monotonic_ns()}"
    if kind == "ours":
        proxy = children.start(
            Daemon("proxy", proxy_args(certs, udp, http), logs / f"{stamp}-proxy.log")
        )
        wait_port(http, proc=proxy)
        agent = children.start(Daemon("agent", agent_args(certs, udp), logs / f"{stamp}-agent.log"))
    else:
        scheme = "http+quic" + "+in" * pproxy_in
        pproxy = [sys.executable, "-m", "pproxy"]
        proxy = children.start(
            Daemon(
                "pproxy-public",
                [
                    *pproxy,
                    "-l",
                    f"http://127.0.0.1:{http}",
                    "-r",
                    f"{scheme}://127.0.0.1:{udp}",
                    "--ssl",
                    f"{certs.cert},{certs.key}",
                ],
                logs / f"{stamp}-proxy.log",
            )
        )
        wait_port(http, proc=proxy)
        agent = children.start(
            Daemon(
                "pproxy-private",
                [*pproxy, "-l", f"{scheme}://127.0.0.1:{udp}", "-l", f"http://127.0.0.1:{dummy}"],
                logs / f"{stamp}-agent.log",
            )
        )
    tunnel = Tunnel(kind, proxy, agent, http)
    try:
        wait_tunnel_ready(http, target, "/tiny", TINY, 30, tunnel.alive)
    except BaseException:
        stop_tunnel(children, tunnel)
        raise
    tunnel.cpu0 = tunnel.cpu()
    return tunnel


def stop_tunnel(children: Children, tunnel: Tunnel) -> None:
    children.stop(tunnel.agent)
    children.stop(tunnel.proxy)


def finish_row(children: Children, tunnel: Tunnel, target: str, result: dict[str, Any]) -> None:
    """Resource use, a health probe after the load, crash notes; then stop the tunnel."""
    cpu = tunnel.cpu()
    result["proxy_cpu"] = cpu[0] - tunnel.cpu0[0]
    result["agent_cpu"] = cpu[1] - tunnel.cpu0[1]
    result["proxy_hwm"] = tunnel.proxy.status_kib("VmHWM") / 1024
    result["agent_hwm"] = tunnel.agent.status_kib("VmHWM") / 1024
    notes: list[str] = []
    for d in (tunnel.proxy, tunnel.agent):
        if not d.alive:
            assert d.proc is not None
            notes.append(f"{d.name} EXITED (rc {d.proc.returncode}); log tail:\n{d.log_tail(15)}")
    if tunnel.alive():
        try:
            wait_tunnel_ready(tunnel.http_port, target, "/tiny", TINY, 10, tunnel.alive)
            result["healthy_after"] = "yes"
        except RuntimeError as exc:
            result["healthy_after"] = "NO"
            notes.append(f"no GET worked for 10 s after the load: {exc}")
    else:
        result["healthy_after"] = "exited"
    stop_tunnel(children, tunnel)
    for d in (tunnel.proxy, tunnel.agent):
        lines = d.log_lines_matching(PROBLEM_WORDS, limit=6, ignore=KNOWN_NOISE)
        if lines:
            notes.append(f"{d.name} log ({d.log.name}):\n      " + "\n      ".join(lines))
    result["notes"] = notes


def run_row(
    kind: str,
    env: Env,
    load: Callable[..., Awaitable[dict[str, Any]]],
    *args: Any,
) -> dict[str, Any]:
    tunnel = start_tunnel(kind, env.children, env.workdir, env.certs, env.target, env.pproxy_in)
    try:
        cpu0 = time.process_time()
        t0 = time.monotonic()
        tcp0, udp0 = tcp_ext_counters(), udp_counters()
        listeners = {"proxy": tunnel.http_port, "nginx": env.nginx_port, "hold": env.hold_port}
        with ListenQueues(listeners) as queues:
            result = trio.run(load, tunnel.http_port, *args)
        result["accept_queue_peaks"] = queues.peaks
        result["client_cpu_pct"] = 100 * (time.process_time() - cpu0) / (time.monotonic() - t0)
        tcp1, udp1 = tcp_ext_counters(), udp_counters()
        for key, new, old in (
            ("listen_overflows", tcp1, tcp0),
            ("abort_on_data", tcp1, tcp0),
            ("udp_drops", udp1, udp0),
        ):
            name = {
                "listen_overflows": "ListenOverflows",
                "abort_on_data": "TCPAbortOnData",
                "udp_drops": "RcvbufErrors",
            }[key]
            result[key] = new.get(name, 0) - old.get(name, 0)
    except BaseException:
        stop_tunnel(env.children, tunnel)
        raise
    finish_row(env.children, tunnel, env.target, result)
    return result


@dataclass
class Env:
    children: Children
    workdir: Path
    certs: CertFiles
    target: str  # nginx host:port
    hold: str  # hold server host:port
    pproxy_in: int

    @property
    def nginx_port(self) -> int:
        return int(self.target.rsplit(":", 1)[1])

    @property
    def hold_port(self) -> int:
        return int(self.hold.rsplit(":", 1)[1])


# -------------------------------------------------------------------- scenarios


async def ramped(
    nursery: trio.Nursery, n: int, ramp: float, fn: Callable[[], Awaitable[None]]
) -> None:
    """Start ``n`` tasks at ``ramp`` per second (every 10 ms a batch; 0: all at once)."""
    tick = 0.01
    per_tick = n if ramp <= 0 else max(1, round(ramp * tick))
    started = 0
    next_at = trio.current_time()
    while started < n:
        for _ in range(min(per_tick, n - started)):
            nursery.start_soon(fn)
            started += 1
        if started < n:
            next_at += tick
            await trio.sleep_until(next_at)


async def concurrent(
    proxy_port: int, target: str, n: int, ramp: float, session_timeout: float
) -> dict[str, Any]:
    tally = Tally()
    times: list[float] = []

    async def session() -> None:
        state = [""]
        t0 = time.perf_counter()
        with trio.move_on_after(session_timeout) as scope:
            try:
                await get_through(proxy_port, target, "/file64k", SMALL, state)
                times.append(time.perf_counter() - t0)
            except Failure as exc:
                tally.add(exc.reason)
            except Exception as exc:
                tally.add(f"unexpected {type(exc).__name__} in {state[0]}")
        if scope.cancelled_caught:
            tally.add(f"timeout ({session_timeout:g} s) in {state[0]}")

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        await ramped(nursery, n, ramp, session)
    wall = time.perf_counter() - t0
    return {
        "ok": len(times),
        "failed": tally.total,
        "tally": tally,
        "wall": wall,
        "p50": percentile(times, 50) * 1000,
        "p99": percentile(times, 99) * 1000,
        "MBps": len(times) * SMALL / wall / 1e6,
    }


def _still_open(stream: trio.SocketStream) -> bool:
    """Neither EOF nor an error waiting on the socket (peeked on a dup of its descriptor)."""
    with socket.fromfd(stream.socket.fileno(), socket.AF_INET, socket.SOCK_STREAM) as dup:
        try:
            return dup.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
        except BlockingIOError:
            return True
        except OSError:
            return False


async def bulk_with_idle(
    proxy_port: int,
    target: str,
    hold: str,
    k: int,
    bulk_size: int,
    ramp: float,
    idle_timeout: float,
    bulk_timeout: float,
) -> dict[str, Any]:
    tally = Tally()
    idle: list[trio.SocketStream] = []

    async def open_idle() -> None:
        state = [""]
        with trio.move_on_after(idle_timeout) as scope:
            try:
                idle.append(await open_tunnel(proxy_port, hold, state))
            except Failure as exc:
                tally.add(exc.reason)
        if scope.cancelled_caught:
            tally.add(f"timeout ({idle_timeout:g} s) in {state[0]}")

    try:
        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            await ramped(nursery, k, ramp, open_idle)
        open_s = time.perf_counter() - t0
        cmd = [
            "curl",
            "-sS",
            "-p",
            "-x",
            f"http://bench:noauth@127.0.0.1:{proxy_port}",
            "-o",
            "/dev/null",
            "--max-time",
            f"{bulk_timeout:g}",
            "-w",
            "%{http_connect} %{http_code} %{size_download} %{time_total} %{time_starttransfer}",
            f"http://{target}/file-bulk",
        ]
        done = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False)
        connect_code, code, size, secs, first = done.stdout.decode().split()
        got, secs_f, first_f = int(size), float(secs), float(first)
        ok = done.returncode == 0 and code == "200" and got == bulk_size
        error = (
            ""
            if ok
            else (
                f"curl rc {done.returncode}, CONNECT {connect_code}, GET {code}, {got} bytes: "
                + done.stderr.decode(errors="replace").strip()[:160]
            )
        )
        still = sum(_still_open(s) for s in idle)
    finally:
        for s in idle:
            s.socket.close()
    return {
        "idle_ok": len(idle),
        "idle_failed": tally.total,
        "tally": tally,
        "open_s": open_s,
        "MBps": got / secs_f / 1e6 if ok and secs_f > 0 else float("nan"),
        "ttfb": first_f if first_f > 0 else float("nan"),
        "stream_MBps": got / (secs_f - first_f) / 1e6
        if ok and secs_f > first_f > 0
        else float("nan"),
        "bulk_error": error,
        "still_open": still,
    }


async def latency(proxy_port: int, target: str, tries: int) -> dict[str, Any]:
    tally = Tally()
    fresh: list[float] = []
    for _ in range(tries):
        t0 = time.perf_counter()
        state = [""]
        with trio.move_on_after(10) as scope:
            try:
                await get_through(proxy_port, target, "/tiny", TINY, state)
                fresh.append((time.perf_counter() - t0) * 1000)
            except Failure as exc:
                tally.add("new connection: " + exc.reason)
        if scope.cancelled_caught:
            tally.add(f"new connection: timeout in {state[0]}")
    rtt: list[float] = []
    with trio.move_on_after(max(30.0, tries * 1.0)) as scope:
        try:
            stream = await open_tunnel(proxy_port, target)
            async with stream:
                buf = bytearray()
                request = get_request(target, "/tiny", close=False)
                for _ in range(tries):
                    t0 = time.perf_counter()
                    await stream.send_all(request)
                    await read_response(stream, buf, TINY, until_close=False)
                    rtt.append((time.perf_counter() - t0) * 1000)
        except Failure as exc:
            tally.add("keep-alive: " + exc.reason)
        except (trio.BrokenResourceError, OSError) as exc:
            tally.add(f"keep-alive: connection error {type(exc).__name__}")
    if scope.cancelled_caught:
        tally.add("keep-alive: timeout")
    return {
        "fresh_n": len(fresh),
        "fresh_p50": percentile(fresh, 50),
        "fresh_p99": percentile(fresh, 99),
        "rtt_n": len(rtt),
        "rtt_p50": percentile(rtt, 50),
        "rtt_p99": percentile(rtt, 99),
        "failed": tally.total,
        "tally": tally,
    }


# ----------------------------------------------------------------------- output


def resource_rows(r: dict[str, dict[str, Any]]) -> list[tuple[str, object, object, str]]:
    a, b = r.get("ours", {}), r.get("pproxy", {})
    return [
        ("proxy peak RSS (MiB)", a.get("proxy_hwm"), b.get("proxy_hwm"), ".1f"),
        ("agent peak RSS (MiB)", a.get("agent_hwm"), b.get("agent_hwm"), ".1f"),
        ("proxy CPU (s)", a.get("proxy_cpu"), b.get("proxy_cpu"), ".2f"),
        ("agent CPU (s)", a.get("agent_cpu"), b.get("agent_cpu"), ".2f"),
        ("client CPU (% of a core)", a.get("client_cpu_pct"), b.get("client_cpu_pct"), ".0f"),
        ("healthy after (a GET works)", a.get("healthy_after"), b.get("healthy_after"), ""),
        (
            "kernel: listen queue overflows",
            a.get("listen_overflows"),
            b.get("listen_overflows"),
            "d",
        ),
        ("kernel: RSTs, unread data", a.get("abort_on_data"), b.get("abort_on_data"), "d"),
        ("kernel: UDP rcvbuf drops", a.get("udp_drops"), b.get("udp_drops"), "d"),
        *(
            (
                f"peak accept queue, {name}",
                a.get("accept_queue_peaks", {}).get(name),
                b.get("accept_queue_peaks", {}).get(name),
                "d",
            )
            for name in ("proxy", "nginx", "hold")
        ),
    ]


def details(label: str, r: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    for kind, res in r.items():
        tally: Tally | None = res.get("tally")
        if tally is not None and tally.total:
            out.append(f"  {label} {kind}: failures by reason")
            out += tally.lines("    ")
        if res.get("bulk_error"):
            out.append(f"  {label} {kind}: bulk download failed: {res['bulk_error']}")
        for note in res.get("notes", []):
            out.append(f"  {label} {kind}: {note}")
    return out


def print_table(title: str, rows: list[tuple[str, object, object, str]], extra: list[str]) -> None:
    print()
    print(side_by_side(title, rows, NAMES))
    for line in extra:
        print(line)
    sys.stdout.flush()


# ------------------------------------------------------------------------- main


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sessions",
        type=int_list,
        default=[1000, 10000],
        help="scenario a: concurrent sessions per row (default 1000,10000)",
    )
    parser.add_argument(
        "--idle",
        type=int_list,
        default=[0, 100, 1000, 10000],
        help="scenario b: idle sessions per row (default 0,100,1000,10000)",
    )
    parser.add_argument("--tries", type=int, default=300, help="scenario c: tries (300)")
    parser.add_argument("--bulk-mib", type=int, default=128)
    parser.add_argument(
        "--ramp",
        type=float,
        default=10000,
        help="sessions started per second in a and b (0: all at once)",
    )
    parser.add_argument("--timeout", type=float, default=60, help="a: per-session timeout (s)")
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=30,
        help="b: time for one idle session to get its 200 (s)",
    )
    parser.add_argument("--bulk-timeout", type=float, default=90, help="b: curl --max-time (s)")
    parser.add_argument(
        "--pproxy-in",
        type=int,
        default=1,
        help="pproxy: backward streams kept waiting ('+in' repeated; default 1)",
    )
    parser.add_argument("--scenarios", default="a,b,c")
    parser.add_argument("--tunnels", default="ours,pproxy")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep nginx files and daemon logs here (default: a temp dir)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small preset for `nox -s bench`: --sessions 200 --idle 0,100 --tries 100 "
        "--bulk-mib 32 (explicit options still win)",
    )
    if "--quick" in sys.argv[1:]:
        parser.set_defaults(sessions=[200], idle=[0, 100], tries=100, bulk_mib=32)
    args = parser.parse_args()
    kinds = [k for k in args.tunnels.split(",") if k in NAMES]
    if "pproxy" in kinds and importlib.util.find_spec("pproxy") is None:
        print(
            "pproxy is not installed in this environment (pip install pproxy aioquic): "
            "running our tunnel only"
        )
        kinds.remove("pproxy")
    scenarios = set(args.scenarios.split(","))
    nofile = raise_nofile()

    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-scale-")))
        else:
            workdir = args.workdir.resolve()
            workdir.mkdir(parents=True, exist_ok=True)
        children = stack.enter_context(Children())
        certs = make_dev_certs(workdir / "certs")
        _, nginx_port = start_nginx(
            children,
            workdir / "nginx",
            {"tiny": TINY, "file64k": SMALL, "file-bulk": args.bulk_mib << 20},
        )
        hold_port = stack.enter_context(hold_server(children, workdir))
        env = Env(
            children,
            workdir,
            certs,
            f"127.0.0.1:{nginx_port}",
            f"127.0.0.1:{hold_port}",
            args.pproxy_in,
        )
        print(
            f"scale benchmark: RLIMIT_NOFILE {nofile}, ramp {args.ramp:g} sessions/s, "
            f"pproxy backward streams {args.pproxy_in}; client = 1 trio process"
        )
        print(f"  reverse_http from {code_under_test()}")
        print(
            f"  ours:   reverse-http proxy + agent; pproxy: public -l http:// -r "
            f"http+quic{'+in' * args.pproxy_in}://, private -l http+quic"
            f"{'+in' * args.pproxy_in}:// (QUIC reverse mode)"
        )
        sys.stdout.flush()

        if "a" in scenarios:
            for n in args.sessions:
                r = {
                    k: run_row(k, env, concurrent, env.target, n, args.ramp, args.timeout)
                    for k in kinds
                }
                a, b = r.get("ours", {}), r.get("pproxy", {})
                rows = [
                    ("sessions ok", a.get("ok"), b.get("ok"), "d"),
                    ("failures", a.get("failed"), b.get("failed"), "d"),
                    ("wall time (s)", a.get("wall"), b.get("wall"), ".2f"),
                    ("session p50 (ms)", a.get("p50"), b.get("p50"), ".1f"),
                    ("session p99 (ms)", a.get("p99"), b.get("p99"), ".1f"),
                    ("goodput (MB/s)", a.get("MBps"), b.get("MBps"), ".1f"),
                    *resource_rows(r),
                ]
                ramp = "all at once" if args.ramp <= 0 else f"ramp {args.ramp:g}/s"
                print_table(
                    f"(a) {n} concurrent sessions, one GET of 64 KiB each ({ramp}, "
                    f"timeout {args.timeout:g} s)",
                    rows,
                    details(f"[a N={n}]", r),
                )

        if "b" in scenarios:
            base: dict[str, float] = {}
            for k in args.idle:
                r = {
                    kind: run_row(
                        kind,
                        env,
                        bulk_with_idle,
                        env.target,
                        env.hold,
                        k,
                        args.bulk_mib << 20,
                        args.ramp,
                        args.idle_timeout,
                        args.bulk_timeout,
                    )
                    for kind in kinds
                }
                if k == args.idle[0]:
                    base = {kind: res["MBps"] for kind, res in r.items()}
                for kind, res in r.items():
                    b0 = base.get(kind, float("nan"))
                    res["vs_k0"] = res["MBps"] / b0 if b0 == b0 and b0 else float("nan")
                a, b = r.get("ours", {}), r.get("pproxy", {})
                rows = [
                    ("idle sessions open", a.get("idle_ok"), b.get("idle_ok"), "d"),
                    ("idle sessions failed", a.get("idle_failed"), b.get("idle_failed"), "d"),
                    ("time to open idle (s)", a.get("open_s"), b.get("open_s"), ".2f"),
                    (f"bulk {args.bulk_mib} MiB (MB/s)", a.get("MBps"), b.get("MBps"), ".1f"),
                    ("  time to first byte (s)", a.get("ttfb"), b.get("ttfb"), ".2f"),
                    ("  MB/s after first byte", a.get("stream_MBps"), b.get("stream_MBps"), ".1f"),
                    (f"  vs K={args.idle[0]}", a.get("vs_k0"), b.get("vs_k0"), ".2f"),
                    ("idle still open after bulk", a.get("still_open"), b.get("still_open"), "d"),
                    *resource_rows(r),
                ]
                print_table(
                    f"(b) bulk download of {args.bulk_mib} MiB with K={k} idle sessions",
                    rows,
                    details(f"[b K={k}]", r),
                )

        if "c" in scenarios:
            r = {k: run_row(k, env, latency, env.target, args.tries) for k in kinds}
            a, b = r.get("ours", {}), r.get("pproxy", {})
            rows = [
                ("new-connection GET p50 (ms)", a.get("fresh_p50"), b.get("fresh_p50"), ".2f"),
                ("new-connection GET p99 (ms)", a.get("fresh_p99"), b.get("fresh_p99"), ".2f"),
                ("keep-alive GET p50 (ms)", a.get("rtt_p50"), b.get("rtt_p50"), ".2f"),
                ("keep-alive GET p99 (ms)", a.get("rtt_p99"), b.get("rtt_p99"), ".2f"),
                ("failures", a.get("failed"), b.get("failed"), "d"),
                *resource_rows(r),
            ]
            print_table(
                f"(c) latency, {args.tries} sequential tries each of a {TINY}-byte GET",
                rows,
                details("[c]", r),
            )


if __name__ == "__main__":
    main()
