"""The tunnel over emulated WAN links, side by side with ``ssh -R`` (and pproxy) on the same link.

Two network namespaces joined by ``bench/linkemu`` (a userspace link emulator over
TUN: delay, seeded loss, rate with a drop-tail queue of one BDP, path MTU with or
without ICMP, outages). Side A (the client side) runs curl and the public end of
each tunnel; side B (the agent side) runs nginx and the private end:

* ours: ``reverse-http proxy`` on A (agent server on 10.201.0.1, HTTP proxy on A's
  loopback), ``reverse-http agent`` on B; curl ``-p -x`` CONNECTs to B's nginx.
* ssh: ``sshd -D -e -f <temp config>`` on A (throwaway host and user keys),
  ``ssh -N -R 127.0.0.1:F:127.0.0.1:<nginx>`` from B; curl GETs A's port F. TCP
  congestion control is the kernel's default (``net.ipv4.tcp_congestion_control``).
* pproxy (when installed): public ``-l http:// -r http+quic+in://10.201.0.1`` on A,
  private ``-l http+quic+in://`` on B, the same curl command as ours.

Every (link, tunnel) pair gets a fresh emulator and fresh daemons, so the drop
counters are that transfer's. Sizes follow the link rate (about 4 s of transfer
at the link rate) and every curl has a timeout: a stalled transfer shows as its
partial rate with ``partial`` in the table. CPU is the user+system seconds of the
tunnel's processes (sshd's per-connection children included) per MiB moved; the notes
under the table split it by process (proxy and agent: receiver and sender of the
download) and give the packets the link carried each way (a_to_b: mostly ACKs).
The notes also give curl's time to the first byte and the rate over the second half
of the bytes (the body read here through a pipe and timed): the link's utilisation
once the start-up (request round trips, slow start) is over, which MB/s over the whole
transfer cannot show on a long path (docs/wan.md).

The outage row: a download on the 50 ms / 100 Mbit/s link, the link down for 10 s
two seconds in, and a new request sent three seconds into the outage; the table
says whether the download finished intact and how the new request was answered.

Needs root, ``ip``, ``gcc``, nginx, curl and OpenSSH (client and server). Prints a
table; ``--json FILE`` writes every number. ``--rows`` picks rows by number.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parent.parent) not in sys.path:
    sys.path.append(str(Path(__file__).resolve().parent.parent))  # PYTHONPATH may override

from bench._common import (
    CLK_TCK,
    Children,
    Daemon,
    code_under_test,
    free_ports,
    reverse_http_exe,
    start_nginx,
    wait_port,
    wait_tunnel_ready,
)
from bench.linkemu import ADDR_A, Link, LinkSpec, build, build_tcpcc, drops, namespaces, netns
from bench.linkemu import unavailable as linkemu_unavailable
from reverse_http.devcerts import CertFiles, make_dev_certs

MIB = 1 << 20
TINY = 128
KINDS = ("ours", "ssh", "pproxy")
ORDER = ("ours", "ssh", "ssh-bbr", "pproxy")
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


@dataclass(frozen=True)
class Row:
    spec: LinkSpec
    outage: bool = False

    def label(self) -> str:
        return self.spec.label() + (", 10 s outage" if self.outage else "")

    def size(self, scale: float) -> int:
        """About 4 s at the link rate (3 s on the outage row), 4 to 64 MiB."""
        rate = self.spec.rate_mbit * 1e6 / 8 if self.spec.rate_mbit else 100e6
        size = int(rate * 4 * scale)
        if self.outage:
            size = int(rate * 3 * scale)
        return max(4 * MIB, min(64 * MIB, size // MIB * MIB))

    def timeout(self, size: int) -> float:
        rate = self.spec.rate_mbit * 1e6 / 8 if self.spec.rate_mbit else 100e6
        return max(25.0, 5 * size / rate) + (20.0 if self.outage else 0.0)


ROWS = (
    Row(LinkSpec(rtt_ms=2, rate_mbit=1000)),
    Row(LinkSpec(rtt_ms=50, rate_mbit=100)),
    Row(LinkSpec(rtt_ms=100, rate_mbit=50, loss=0.005)),
    Row(LinkSpec(rtt_ms=50, rate_mbit=100, path_mtu=1280)),
    Row(LinkSpec(rtt_ms=50, rate_mbit=100, path_mtu=1280, icmp=False)),
    Row(LinkSpec(rtt_ms=200, rate_mbit=20)),
    Row(LinkSpec(rtt_ms=50, rate_mbit=100), outage=True),
)


@dataclass
class Result:
    kind: str
    row: str
    size: int
    ok: bool = False
    code: str = ""
    got: int = 0
    seconds: float = float("nan")
    mbps: float = float("nan")
    cpu_s: float = float("nan")
    cpu_s_per_mib: float = float("nan")
    #: CPU seconds per MiB of each tunnel process (proxy and agent, sshd and ssh...).
    cpu_by_process: dict[str, float] = field(default_factory=dict)
    link_mbit: float = 0.0  # the row's rate limit (0: none)
    drops: dict[str, int] = field(default_factory=dict)
    #: Packets the link forwarded each way (a_to_b: curl's side to the agent's).
    forwarded: dict[str, int] = field(default_factory=dict)
    queue_peak_kib: float = 0.0
    new_request: str = ""
    #: Until the first byte of the answer (curl's time_starttransfer).
    first_byte_s: float = float("nan")
    #: MB/s over the second half of the bytes (after the start-up; see ``timed_curl``).
    second_half_mbps: float = float("nan")
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------- processes


def tree_cpu(pids: list[int]) -> float:
    """CPU seconds of ``pids`` and all their descendants that are still running."""
    parent: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parent[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    total = 0.0
    for pid, cpu in times.items():
        p = pid
        while p > 1:
            if p in pids:
                total += cpu
                break
            p = parent.get(p, 0)
    return total


def curl(args: list[str], timeout: float) -> tuple[str, int, float]:
    """(HTTP code or curl's error, bytes received, seconds) of one curl run. A refused
    CONNECT shows the proxy's status with curl's exit code (56)."""
    cmd = ["curl", "-sS", "-o", "/dev/null", "-m", f"{timeout:.0f}"]
    cmd += ["-w", "%{http_code} %{size_download} %{time_total} %{http_connect}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 15)
    parts = proc.stdout.split()
    code, got, secs, connect = [*parts, "000", "0", "nan", "000"][:4]
    if proc.returncode != 0:
        code = f"curl exit {proc.returncode}"
        if connect not in ("000", "200"):
            code = f"CONNECT answered {connect} ({code})"
    return code, int(got), float(secs)


@dataclass
class Timed:
    """One download, timed: curl's result and when the bytes arrived."""

    code: str
    got: int
    seconds: float
    #: curl's time_starttransfer: until the first byte of the answer (the CONNECT and
    #: request round trips, and the server's turn).
    first_byte_s: float
    #: MB/s over the second half of the bytes: the link's utilisation once the start-up
    #: (request round trips, slow start and its overshoot) is over.
    second_half_mbps: float


def timed_curl(args: list[str], size: int, timeout: float) -> Timed:
    """:func:`curl` with the body read here (through a pipe) to time its progress."""
    cmd = ["curl", "-sS", "-o", "-", "-m", f"{timeout:.0f}"]
    fmt = "%{http_code} %{size_download} %{time_total} %{http_connect} %{time_starttransfer}"
    cmd += ["-w", "%{stderr}\\n" + fmt, *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    fd, total, half = proc.stdout.fileno(), 0, (size + 1) // 2
    at_half: tuple[float, int] | None = None
    last = time.monotonic()
    while chunk := os.read(fd, 1 << 16):
        last = time.monotonic()
        total += len(chunk)
        if at_half is None and total >= half:
            at_half = (last, total)
    err = proc.stderr.read().decode(errors="replace")
    proc.wait(timeout + 15)
    lines = err.strip().splitlines() or [""]
    parts = lines[-1].split()
    code, got, secs, connect, first = [*parts, "000", "0", "nan", "000", "nan"][:5]
    if proc.returncode != 0:
        code = f"curl exit {proc.returncode}"
        if connect not in ("000", "200"):
            code = f"CONNECT answered {connect} ({code})"
    rate = float("nan")
    if at_half is not None and last > at_half[0]:
        rate = (total - at_half[1]) / (last - at_half[0]) / 1e6
    return Timed(code, int(got), float(secs), float(first), rate)


class Tunnel:
    """One tunnel across the link: its processes and the curl arguments that reach nginx."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.daemons: list[Daemon] = []
        self.curl_prefix: list[str] = []
        self.base_url = ""

    def alive(self) -> bool:
        return all(d.alive for d in self.daemons)

    def cpu(self) -> float:
        return tree_cpu([d.pid for d in self.daemons])

    def cpu_by_process(self) -> dict[str, float]:
        return {d.name: tree_cpu([d.pid]) for d in self.daemons}

    def curl_args(self, path: str) -> list[str]:
        return [*self.curl_prefix, self.base_url + path]

    def log_tails(self) -> list[str]:
        return [f"{d.name} log tail:\n{d.log_tail(8)}" for d in self.daemons]


@dataclass
class Env:
    children: Children
    workdir: Path
    certs: CertFiles
    emu: Path
    ns_a: str
    ns_b: str
    nginx_port: int
    ssh_key: Path | None
    tcpcc: Path | None


def start_tunnel(kind: str, env: Env, stamp: str) -> Tunnel:
    t = Tunnel(kind)
    logs = env.workdir / "logs"
    logs.mkdir(exist_ok=True)
    target = f"127.0.0.1:{env.nginx_port}"
    with netns(env.ns_a):
        (udp,) = free_ports(1, socket.SOCK_DGRAM)
        (http,) = free_ports(1)
    if kind == "ours":
        with netns(env.ns_a):
            proxy = env.children.start(
                Daemon(
                    "proxy",
                    [
                        *reverse_http_exe(),
                        "proxy",
                        f"--agent-server.listen-address={ADDR_A}:{udp}",
                        f"--agent-server.tls.file.cert={env.certs.cert}",
                        f"--agent-server.tls.file.key={env.certs.key}",
                        f"--http-proxy.listen-address=127.0.0.1:{http}",
                        "--log.level=warn",
                    ],
                    logs / f"{stamp}-proxy.log",
                )
            )
            t.daemons.append(proxy)
            wait_port(http, proc=proxy)
        with netns(env.ns_b):
            t.daemons.append(
                env.children.start(
                    Daemon(
                        "agent",
                        [
                            *reverse_http_exe(),
                            "agent",
                            f"--agent-client.server-address={ADDR_A}:{udp}",
                            f"--agent-client.tls.file.root-ca={env.certs.ca_cert}",
                            "--auth.noauth.agent-id=bench",
                            "--log.level=warn",
                        ],
                        logs / f"{stamp}-agent.log",
                    )
                )
            )
        t.curl_prefix = ["-p", "-x", f"http://127.0.0.1:{http}", "-U", "bench:noauth"]
        t.base_url = f"http://{target}"
    elif kind == "pproxy":
        pproxy = [sys.executable, "-m", "pproxy"]
        scheme = "http+quic+in"
        with netns(env.ns_a):
            public = env.children.start(
                Daemon(
                    "pproxy-public",
                    [
                        *pproxy,
                        "-l",
                        f"http://127.0.0.1:{http}",
                        "-r",
                        f"{scheme}://{ADDR_A}:{udp}",
                        "--ssl",
                        f"{env.certs.cert},{env.certs.key}",
                    ],
                    logs / f"{stamp}-pproxy-public.log",
                )
            )
            t.daemons.append(public)
            wait_port(http, proc=public)
        with netns(env.ns_b):
            (dummy,) = free_ports(1)
            t.daemons.append(
                env.children.start(
                    Daemon(
                        "pproxy-private",
                        [
                            *pproxy,
                            "-l",
                            f"{scheme}://{ADDR_A}:{udp}",
                            "-l",
                            f"http://127.0.0.1:{dummy}",
                        ],
                        logs / f"{stamp}-pproxy-private.log",
                    )
                )
            )
        t.curl_prefix = ["-p", "-x", f"http://127.0.0.1:{http}"]
        t.base_url = f"http://{target}"
    else:
        assert env.ssh_key is not None
        sshd_port, fwd = http, free_ports(2)[1]
        conf = write_sshd_config(env.workdir / "ssh", sshd_port, env.ssh_key)
        assert env.tcpcc is not None
        cc = {"LD_PRELOAD": str(env.tcpcc), "TCPCC": "bbr" if kind == "ssh-bbr" else "cubic"}
        with netns(env.ns_a):
            sshd = env.children.start(
                Daemon(
                    "sshd", [SSHD, "-D", "-e", "-f", str(conf)], logs / f"{stamp}-sshd.log", env=cc
                )
            )
            t.daemons.append(sshd)
        with netns(env.ns_b):
            t.daemons.append(
                env.children.start(
                    Daemon(
                        "ssh",
                        [
                            "ssh",
                            "-N",
                            "-F",
                            "/dev/null",
                            "-i",
                            str(env.ssh_key),
                            "-p",
                            str(sshd_port),
                            "-o",
                            "StrictHostKeyChecking=no",
                            "-o",
                            "UserKnownHostsFile=/dev/null",
                            "-o",
                            "ExitOnForwardFailure=yes",
                            "-o",
                            "ConnectionAttempts=30",
                            "-o",
                            "BatchMode=yes",
                            "-o",
                            "ServerAliveInterval=0",
                            "-R",
                            f"127.0.0.1:{fwd}:{target}",
                            f"root@{ADDR_A}",
                        ],
                        logs / f"{stamp}-ssh.log",
                        env=cc,
                    )
                )
            )
        t.base_url = f"http://127.0.0.1:{fwd}"
    wait_ready(t, env)
    return t


def row_kinds(row: Row, kinds: list[str]) -> list[str]:
    """The lossy row also runs ssh with BBR (the issue compares against both)."""
    if row.spec.loss and "ssh" in kinds:
        at = kinds.index("ssh") + 1
        return [*kinds[:at], "ssh-bbr", *kinds[at:]]
    return kinds


def wait_ready(t: Tunnel, env: Env, timeout: float = 40.0) -> None:
    """Poll a tiny GET through the tunnel (from side A) until it works."""
    with netns(env.ns_a):
        if t.kind in ("ours", "pproxy"):
            wait_tunnel_ready(
                int(t.curl_prefix[2].rsplit(":", 1)[1]),
                t.base_url.removeprefix("http://"),
                "/tiny",
                TINY,
                timeout,
                t.alive,
            )
            return
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if not t.alive():
                break
            code, got, _ = curl(t.curl_args("/tiny"), 5)
            if code == "200" and got == TINY:
                return
            last = code
            time.sleep(0.1)
    tails = "\n".join(t.log_tails())
    raise RuntimeError(f"{t.kind} tunnel not ready ({last or 'a process exited'}):\n{tails}")


def write_sshd_config(directory: Path, port: int, user_key: Path) -> Path:
    host_key = directory / "host_key"
    if not host_key.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True
        )
    conf = directory / f"sshd-{port}.conf"
    conf.write_text(
        f"""Port {port}
ListenAddress {ADDR_A}
HostKey {host_key}
AuthorizedKeysFile {user_key}.pub
PidFile {directory}/sshd-{port}.pid
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding yes
GatewayPorts no
ClientAliveInterval 0
UseDNS no
"""
    )
    return conf


def make_ssh_key(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    key = directory / "user_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    return key


# ----------------------------------------------------------------- the rows


def run_one(row: Row, kind: str, env: Env, scale: float) -> Result:
    size = row.size(scale)
    res = Result(kind=kind, row=row.label(), size=size, link_mbit=row.spec.rate_mbit)
    stamp = f"{kind}-{time.monotonic_ns()}"
    (env.workdir / "logs").mkdir(exist_ok=True)
    log = env.workdir / "logs" / f"{stamp}-linkemu.log"
    link = Link(env.emu, env.ns_a, env.ns_b, row.spec, log)
    tunnel: Tunnel | None = None
    try:
        tunnel = start_tunnel(kind, env, stamp)
        cpu0 = tunnel.cpu()
        each0 = tunnel.cpu_by_process()
        timeout = row.timeout(size)
        with netns(env.ns_a):
            if row.outage:
                outage_transfer(row, tunnel, link, size, timeout, res)
            else:
                t = timed_curl(tunnel.curl_args(f"/bulk{size}"), size, timeout)
                res.code, res.got, res.seconds = t.code, t.got, t.seconds
                res.first_byte_s, res.second_half_mbps = t.first_byte_s, t.second_half_mbps
        res.cpu_s = tunnel.cpu() - cpu0
        each = {k: v - each0[k] for k, v in tunnel.cpu_by_process().items()}
        res.ok = res.code == "200" and res.got == size
        if res.seconds == res.seconds and res.seconds > 0:
            res.mbps = res.got / res.seconds / 1e6
        if res.got:
            res.cpu_s_per_mib = res.cpu_s / (res.got / MIB)
            res.cpu_by_process = {k: v / (res.got / MIB) for k, v in each.items()}
        if not tunnel.alive():
            res.notes.append("a tunnel process exited:\n" + "\n".join(tunnel.log_tails()))
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        res.code = "setup failed"
        res.notes.append(str(exc))
    finally:
        if tunnel is not None:
            for d in reversed(tunnel.daemons):
                env.children.stop(d)
        counters = link.stop()
        res.drops = {k: v for k, v in drops(counters).items() if v}
        res.forwarded = {
            side: counters[side].get("forwarded", 0)
            for side in ("a_to_b", "b_to_a")
            if side in counters
        }
        res.queue_peak_kib = (
            max(counters.get(side, {}).get("queue_peak_bytes", 0) for side in ("a_to_b", "b_to_a"))
            / 1024
        )
    return res


def outage_transfer(
    row: Row, tunnel: Tunnel, link: Link, size: int, timeout: float, res: Result
) -> None:
    """A download with the link down for 10 s from t=2 s; a new request at t=5 s."""
    out = tempfile.NamedTemporaryFile(  # noqa: SIM115 (curl writes it; read after)
        prefix="wan-curl-", suffix=".txt", delete=False
    )
    cmd = ["curl", "-sS", "-o", "/dev/null", "-m", f"{timeout:.0f}"]
    cmd += ["-w", "%{http_code} %{size_download} %{time_total}", *tunnel.curl_args(f"/bulk{size}")]
    bulk = subprocess.Popen(cmd, stdout=out, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2)  # the schedule of the experiment, not synchronisation
        link.outage()
        t_down = time.monotonic()
        time.sleep(3)
        answer: dict[str, Any] = {}

        def new_request() -> None:
            answer["r"] = curl(tunnel.curl_args("/tiny"), 30)

        th = threading.Thread(target=new_request, daemon=True)
        th.start()
        time.sleep(max(0.0, 10 - (time.monotonic() - t_down)))
        link.outage()
        th.join(40)
        bulk.wait(timeout + 15)
        out.close()
        parts = Path(out.name).read_text().split()
        code, got, secs = [*parts, "000", "0", "nan"][:3]
        res.code = code if bulk.returncode == 0 else f"curl exit {bulk.returncode}"
        res.got, res.seconds = int(got), float(secs)
        if "r" in answer:
            c, g, s = answer["r"]
            res.new_request = f"{c} after {s:.1f} s ({g} bytes)"
        else:
            res.new_request = "no answer"
    finally:
        if bulk.poll() is None:
            bulk.kill()
            bulk.wait()
        with contextlib.suppress(OSError):
            os.unlink(out.name)


# ----------------------------------------------------------------- the table


def print_table(results: list[Result], kinds: list[str]) -> None:
    rows: dict[str, dict[str, Result]] = {}
    for r in results:
        rows.setdefault(r.row, {})[r.kind] = r
    width = max(len(label) for label in rows)
    head = f"{'link':{width}}"
    for k in kinds:
        head += f" | {k + ' MB/s':>12} {'drops':>6} {'CPU-s/MiB':>9}"
    print(head)
    print("-" * len(head))
    for label, by_kind in rows.items():
        line = f"{label:{width}}"
        for k in kinds:
            r = by_kind.get(k)
            if r is None:
                line += f" | {'-':>12} {'-':>6} {'-':>9}"
                continue
            mark = "" if r.ok else "*"
            rate = "no tunnel" if r.code == "setup failed" else f"{r.mbps:.2f}"
            line += f" | {rate:>11}{mark:1} {sum(r.drops.values()):>6} {r.cpu_s_per_mib:>9.3f}"
        print(line)
    print("  * partial or failed transfer, or no tunnel within 40 s (see below)")
    for label, by_kind in rows.items():
        for k, r in by_kind.items():
            extra = []
            if not r.ok:
                extra.append(f"{r.code}, {r.got / MIB:.1f} of {r.size / MIB:.0f} MiB")
            if r.ok and r.link_mbit:
                extra.append(f"{r.mbps * 8 / r.link_mbit:.0%} of the link rate")
            if r.ok and r.first_byte_s == r.first_byte_s:
                extra.append(f"first byte after {r.first_byte_s:.2f} s")
            if r.ok and r.second_half_mbps == r.second_half_mbps:
                half = f"second half of the bytes at {r.second_half_mbps:.2f} MB/s"
                if r.link_mbit:
                    half += f" ({r.second_half_mbps * 8 / r.link_mbit:.0%} of the link)"
                extra.append(half)
            if r.new_request:
                extra.append(f"new request during the outage: {r.new_request}")
            if r.drops:
                extra.append("drops " + ", ".join(f"{k2} {v}" for k2, v in r.drops.items()))
            extra.append(f"queue peak {r.queue_peak_kib:.0f} KiB")
            if r.cpu_by_process:
                each = ", ".join(f"{k2} {v:.3f}" for k2, v in r.cpu_by_process.items())
                extra.append(f"CPU-s/MiB {each}")
            if r.forwarded:
                each = ", ".join(f"{k2} {v}" for k2, v in r.forwarded.items())
                extra.append(f"packets {each}")
            print(f"  {label} / {k}: " + "; ".join(extra))
            for note in r.notes:
                print("    " + note.replace("\n", "\n    "))
    cpu = {k: {r.row: r.cpu_s_per_mib for r in results if r.kind == k} for k in kinds}
    slow, fast = ROWS[5].label(), ROWS[1].label()
    for k in kinds:
        a, b = cpu[k].get(slow), cpu[k].get(fast)
        if a and b and a == a and b == b:
            print(f"  CPU per MiB {k}: {slow} {a:.3f} s, {fast} {b:.3f} s: {a / b:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", default="", help="row numbers, comma-separated (default: all)")
    parser.add_argument("--tunnels", default=",".join(KINDS), help="ours,ssh,pproxy")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply transfer sizes")
    parser.add_argument("--json", type=Path, help="write every result here")
    args = parser.parse_args()
    why = linkemu_unavailable()
    if why:
        sys.exit(f"bench/wan.py: the link emulator cannot run here: {why}")
    kinds = [k.strip() for k in args.tunnels.split(",") if k.strip()]
    for k in kinds:
        if k not in KINDS:
            sys.exit(f"bench/wan.py: --tunnels: unknown tunnel {k!r} (one of {', '.join(KINDS)})")
    if "ssh" in kinds and (shutil.which("ssh") is None or not Path(SSHD).exists()):
        print("ssh -R skipped: OpenSSH client or server missing (apt-get install openssh-server)")
        kinds.remove("ssh")
    if "pproxy" in kinds:
        import importlib.util

        if importlib.util.find_spec("pproxy") is None:
            print("pproxy skipped: not installed (pip install pproxy aioquic)")
            kinds.remove("pproxy")
    picked = [ROWS[int(i) - 1] for i in args.rows.split(",") if i.strip()] or list(ROWS)
    emu = build()
    print(f"code under test: {code_under_test()}")
    cc = Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()
    print(f"ssh -R over TCP cubic (ssh-bbr: BBR; the machine's default is {cc})")
    print(f"load: {Path('/proc/loadavg').read_text().strip()}")
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="wan-bench-") as tmp, Children() as children:
        workdir = Path(tmp)
        with namespaces("wan") as (ns_a, ns_b):
            certs = make_dev_certs(workdir / "certs", ["localhost", "127.0.0.1", ADDR_A])
            ssh_key = make_ssh_key(workdir / "ssh") if "ssh" in kinds else None
            tcpcc = build_tcpcc() if "ssh" in kinds else None
            sizes = {f"bulk{row.size(args.scale)}": row.size(args.scale) for row in picked}
            with netns(ns_b):
                _, nginx_port = start_nginx(children, workdir / "nginx", {"tiny": TINY, **sizes})
            env = Env(children, workdir, certs, emu, ns_a, ns_b, nginx_port, ssh_key, tcpcc)
            for row in picked:
                for kind in row_kinds(row, kinds):
                    r = run_one(row, kind, env, args.scale)
                    results.append(r)
                    print(
                        f"  {r.row} / {kind}: {r.mbps:.2f} MB/s, {r.code}, "
                        f"{r.got / MIB:.1f} MiB in {r.seconds:.1f} s (first byte "
                        f"{r.first_byte_s:.2f} s, second half {r.second_half_mbps:.2f} MB/s), "
                        f"CPU {r.cpu_s:.2f} s"
                        + (f", new request: {r.new_request}" if r.new_request else ""),
                        flush=True,
                    )
    print()
    print_table(results, [k for k in ORDER if any(r.kind == k for r in results)])
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    main()
