"""Helpers shared by bench/scale.py and bench/agents.py (not a benchmark itself).

Processes: :class:`Daemon` starts a child with its output in a log file, reads its
CPU seconds and memory from /proc, and stops it (SIGTERM, then SIGKILL). Every child
gets PR_SET_PDEATHSIG, so even a SIGKILLed benchmark leaves nothing behind, and
:class:`Children` stops whatever is still running when its ``with`` block ends.

Clients: :func:`open_tunnel` (TCP connect + CONNECT + "200"), :func:`read_response`
(one HTTP/1.1 response), both raising :class:`Failure` with a short, countable reason.

``python bench/_common.py hold PORT`` runs a TCP server that accepts connections
and holds them open (the target of idle sessions).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import errno
import functools
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    # appended, not prepended: PYTHONPATH=<a checkout> benchmarks that checkout instead
    sys.path.append(str(ROOT))
AUTH = "Basic " + base64.b64encode(b"bench:noauth").decode()
CLK_TCK = os.sysconf("SC_CLK_TCK")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


# ----------------------------------------------------------------- the machine


def raise_nofile(target: int = 1 << 18) -> int:
    """Raise RLIMIT_NOFILE (inherited by children) to ``target``, or at least to the hard limit.

    Raising the hard limit needs root with CAP_SYS_RESOURCE; without it the soft
    limit goes up to the hard one only.
    """
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if os.geteuid() == 0 and hard < target:
        try:
            nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
        except OSError:
            nr_open = target
        want = max(hard, min(target, nr_open))
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (ValueError, OSError):
            pass
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_ports(n: int, kind: int = socket.SOCK_STREAM) -> list[int]:
    """``n`` distinct free loopback ports (all bound at once, so no duplicates)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, kind)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_port(port: int, timeout: float = 20.0, proc: Daemon | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive:
            raise RuntimeError(f"{proc.name} exited early:\n{proc.log_tail()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def udp_counters() -> dict[str, int]:
    """The kernel's UDP counters (/proc/net/snmp): RcvbufErrors counts datagrams dropped
    because a socket's receive buffer was full."""
    try:
        lines = [ln.split() for ln in Path("/proc/net/snmp").read_text().splitlines()]
    except OSError:
        return {}
    rows = [ln for ln in lines if ln and ln[0] == "Udp:"]
    if len(rows) < 2:
        return {}
    return {k: int(v) for k, v in zip(rows[0][1:], rows[1][1:], strict=False)}


def tcp_ext_counters() -> dict[str, int]:
    """TcpExt counters of /proc/net/netstat (ListenOverflows, TCPAbortOnData, ...)."""
    try:
        lines = [ln.split() for ln in Path("/proc/net/netstat").read_text().splitlines()]
    except OSError:
        return {}
    rows = [ln for ln in lines if ln and ln[0] == "TcpExt:"]
    if len(rows) < 2:
        return {}
    return {k: int(v) for k, v in zip(rows[0][1:], rows[1][1:], strict=False)}


class ListenQueues:
    """Samples the accept queues of loopback TCP listeners (/proc/net/tcp) in a thread.

    ``peaks[name]`` is the longest queue seen; a queue at the listen backlog means
    SYNs are being dropped there (kernel ListenOverflows).
    """

    def __init__(self, ports: dict[str, int], every: float = 1.0) -> None:
        self.ports = {f"0100007F:{port:04X}": name for name, port in ports.items()}
        self.peaks = dict.fromkeys(ports, 0)
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ListenQueues:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                with open("/proc/net/tcp") as f:
                    next(f)
                    for line in f:
                        cols = line.split(None, 5)
                        if cols[3] == "0A" and cols[1] in self.ports:
                            queue = int(cols[4].split(":")[1], 16)
                            name = self.ports[cols[1]]
                            self.peaks[name] = max(self.peaks[name], queue)
            except (OSError, StopIteration, IndexError, ValueError):
                pass


def udp_socket_drops(port: int) -> int | None:
    """Datagrams dropped on the UDP socket bound to 127.0.0.1:``port`` (/proc/net/udp)."""
    want = f"0100007F:{port:04X}"
    try:
        lines = Path("/proc/net/udp").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        cols = line.split()
        if len(cols) > 12 and cols[1] == want:
            return int(cols[-1])
    return None


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN when there are no samples."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


# --------------------------------------------------------------------- children


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z? ")


class Daemon:
    """One child process with its stdout and stderr in ``log``."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        log: Path,
        *,
        env: dict[str, str] | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.args = [str(a) for a in args]
        self.log = log
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.stop_signal = stop_signal
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                preexec_fn=_die_with_parent,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def cpu_seconds(self) -> float:
        """utime + stime of the process itself (children not included)."""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return float("nan")
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def status_kib(self, field: str) -> float:
        """A ``Vm*`` line of /proc/<pid>/status in KiB (VmRSS, VmHWM)."""
        try:
            lines = Path(f"/proc/{self.pid}/status").read_text().splitlines()
        except OSError:
            return float("nan")
        for line in lines:
            if line.startswith(field + ":"):
                return float(line.split()[1])
        return float("nan")

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def log_lines_matching(
        self, words: Sequence[str], limit: int = 10, ignore: Sequence[str] = ()
    ) -> list[str]:
        """Lines of the log with any of ``words`` (case-insensitive), distinct, first ``limit``."""
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return []
        seen: Counter[str] = Counter()
        for line in text:
            low = line.lower()
            if any(w in low for w in words) and not any(i in line for i in ignore):
                seen[_TIMESTAMP.sub("", line)[:300]] += 1
        return [f"{n}x {line}" if n > 1 else line for line, n in seen.most_common(limit)]


class Children(contextlib.AbstractContextManager["Children"]):
    """Every daemon started through it is stopped when the ``with`` block ends.

    SIGTERM to the benchmark becomes SystemExit so that the block really ends.
    """

    def __init__(self) -> None:
        self.daemons: list[Daemon] = []
        self._old: Any = None

    def __enter__(self) -> Children:
        self._old = signal.signal(signal.SIGTERM, _sigterm)
        return self

    def start(self, daemon: Daemon) -> Daemon:
        self.daemons.append(daemon)
        return daemon.start()

    def stop(self, daemon: Daemon) -> None:
        daemon.stop()
        with contextlib.suppress(ValueError):
            self.daemons.remove(daemon)

    def __exit__(self, *exc: object) -> None:
        for daemon in reversed(self.daemons):
            with contextlib.suppress(Exception):
                daemon.stop()
        self.daemons.clear()
        signal.signal(signal.SIGTERM, self._old)


def _sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


# ------------------------------------------------------------------ our daemons


def code_under_test() -> str:
    """Where reverse_http is imported from (children inherit PYTHONPATH), and its commit."""
    import reverse_http

    where = Path(reverse_http.__file__).resolve().parent.parent
    commit = where / "COMMIT"
    if commit.exists():
        rev = commit.read_text().strip()[:12]
    else:
        try:
            rev = (
                subprocess.run(
                    ["git", "-C", str(where), "describe", "--always", "--dirty"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                ).stdout.strip()
                or "?"
            )
        except (OSError, subprocess.TimeoutExpired):
            rev = "?"
    return f"{where} ({rev})"


def reverse_http_exe() -> list[str]:
    exe = shutil.which("reverse-http")
    return [exe] if exe else [sys.executable, "-m", "reverse_http.cli.main"]


def proxy_args(
    certs: Any, udp_port: int, http_port: int, metrics_port: int | None = None
) -> list[str]:
    args = [
        *reverse_http_exe(),
        "proxy",
        f"--agent-server.listen-address=127.0.0.1:{udp_port}",
        f"--agent-server.tls.file.cert={certs.cert}",
        f"--agent-server.tls.file.key={certs.key}",
        f"--http-proxy.listen-address=127.0.0.1:{http_port}",
        "--log.level=warn",
    ]
    if metrics_port is not None:
        args.append(f"--metrics.listen-address=127.0.0.1:{metrics_port}")
    return args


def agent_args(certs: Any, udp_port: int, agent_id: str = "bench") -> list[str]:
    return [
        *reverse_http_exe(),
        "agent",
        f"--agent-client.server-address=127.0.0.1:{udp_port}",
        f"--agent-client.tls.file.root-ca={certs.ca_cert}",
        f"--auth.noauth.agent-id={agent_id}",
        "--log.level=warn",
    ]


# ------------------------------------------------------------------------ nginx


def start_nginx(children: Children, workdir: Path, files: dict[str, int]) -> tuple[Daemon, int]:
    """nginx (one worker, loopback) serving ``files`` (name -> size) from ``workdir/www``."""
    workdir.mkdir(parents=True, exist_ok=True)
    www = workdir / "www"
    www.mkdir(exist_ok=True)
    for name, size in files.items():
        path = www / name
        if size <= 1 << 20:
            path.write_bytes(os.urandom(size))
        else:
            with path.open("wb") as f:
                f.truncate(size)  # sparse: the page cache serves it without disk reads
    # workers run as nobody when we are root: they must reach and read the files
    tmp_root = Path(tempfile.gettempdir())
    for p in (*workdir.parents, workdir, www):
        if p != tmp_root and tmp_root in p.parents:
            p.chmod(p.stat().st_mode | 0o755)
    for path in www.iterdir():
        path.chmod(0o644)
    port = free_ports(1)[0]
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    conf = workdir / "nginx.conf"
    # As root, the workers stay root: pytest makes /tmp/pytest-of-<user> private again
    # whenever any session starts, which would lock nobody-workers out mid-run (403).
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf.write_text(
        f"""{user}worker_processes 1;
worker_rlimit_nofile {nofile};
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{
    worker_connections {max(32768, nofile)};
    multi_accept on;
}}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {www};
    }}
}}
"""
    )
    daemon = children.start(
        Daemon(
            "nginx",
            [
                NGINX,
                "-e",
                str(workdir / "nginx-error.log"),
                "-p",
                str(workdir),
                "-c",
                str(conf),
                "-g",
                "daemon off;",
            ],
            workdir / "nginx.out",
            stop_signal=signal.SIGQUIT,
        )
    )
    wait_port(port, proc=daemon)
    return daemon, port


# ---------------------------------------------------------------------- clients


class Failure(Exception):
    """A session failed; ``reason`` is short and free of ports, for counting."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, OSError) and cause.errno is not None:
        return errno.errorcode.get(cause.errno, str(cause.errno))
    return type(exc).__name__


async def read_head(
    stream: trio.abc.ReceiveStream, buf: bytearray, limit: int = 65536
) -> bytes | None:
    """Read until the end of an HTTP head; None on EOF first. Leaves the rest in ``buf``."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = bytes(buf[: end + 4])
            del buf[: end + 4]
            return head
        if len(buf) > limit:
            raise Failure("head too large")
        chunk = await stream.receive_some(65536)
        if not chunk:
            return None
        buf += chunk


def content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return None


def status_line(head: bytes) -> str:
    return head.split(b"\r\n", 1)[0].decode("latin-1")


def basic_auth(agent_id: str) -> str:
    return "Basic " + base64.b64encode(f"{agent_id}:noauth".encode()).decode()


async def open_tunnel(
    proxy_port: int, dest: str, state: list[str] | None = None, auth: str = AUTH
) -> trio.SocketStream:
    """TCP connect to the proxy, CONNECT ``dest``, wait for the 200; :class:`Failure` else.

    ``state[0]`` is kept up to date with the phase (for timeout reasons).
    """
    st = state if state is not None else [""]
    st[0] = "tcp connect to proxy"
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", proxy_port)
    except OSError as exc:
        raise Failure(f"tcp connect to proxy: {os_reason(exc)}") from None
    try:
        st[0] = "CONNECT"
        await stream.send_all(
            f"CONNECT {dest} HTTP/1.1\r\nHost: {dest}\r\n"
            f"Proxy-Authorization: {auth}\r\n\r\n".encode()
        )
        buf = bytearray()
        head = await read_head(stream, buf)
        if head is None:
            raise Failure("CONNECT: proxy closed without an answer")
        if not head.startswith(b"HTTP/1.1 200") and not head.startswith(b"HTTP/1.0 200"):
            body = bytes(buf)
            length = content_length(head)
            with trio.move_on_after(2):
                while (length is None or len(body) < length) and len(body) < 4096:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        break
                    body += chunk
            text = body[:120].decode("utf-8", "replace").strip().replace("\n", " ")
            raise Failure(f"CONNECT answered {status_line(head)!r} body {text!r}")
        if buf:
            raise Failure("CONNECT: bytes after the 200 before our request")
        return stream
    except Failure:
        await stream.aclose()
        raise
    except (trio.BrokenResourceError, OSError) as exc:
        await stream.aclose()
        raise Failure(f"{st[0]}: connection error {os_reason(exc)}") from None
    except BaseException:
        await stream.aclose()
        raise


async def read_response(
    stream: trio.abc.ReceiveStream, buf: bytearray, expect: int, *, until_close: bool
) -> int:
    """One response to a GET; checks status 200, Content-Length == ``expect`` and the body size.

    Returns the body size. ``until_close``: read to EOF (Connection: close), else
    exactly Content-Length bytes (keep-alive).
    """
    head = await read_head(stream, buf)
    if head is None:
        raise Failure("GET: closed before the response head")
    if not head.startswith(b"HTTP/1.1 200"):
        raise Failure(f"GET answered {status_line(head)!r}")
    length = content_length(head)
    if length != expect:
        raise Failure(f"GET: Content-Length {length}, expected {expect}")
    got = len(buf)
    buf.clear()
    while until_close or got < length:
        chunk = await stream.receive_some(1 << 18)
        if not chunk:
            break
        got += len(chunk)
    if got < length:
        raise Failure("GET: short body")
    if got > length:
        raise Failure("GET: body longer than Content-Length")
    return got


def get_request(host: str, path: str, *, close: bool) -> bytes:
    conn = "close" if close else "keep-alive"
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: {conn}\r\n\r\n".encode()


async def get_through(
    proxy_port: int,
    dest: str,
    path: str,
    size: int,
    state: list[str] | None = None,
    auth: str = AUTH,
) -> None:
    """New connection: CONNECT, GET ``path`` with Connection: close, read to close."""
    st = state if state is not None else [""]
    stream = await open_tunnel(proxy_port, dest, st, auth)
    async with stream:
        try:
            st[0] = "GET"
            await stream.send_all(get_request(dest, path, close=True))
            await read_response(stream, bytearray(), size, until_close=True)
        except (trio.BrokenResourceError, OSError) as exc:
            raise Failure(f"GET: connection error {os_reason(exc)}") from None


def wait_tunnel_ready(
    proxy_port: int,
    dest: str,
    path: str,
    size: int,
    timeout: float,
    alive: Callable[[], bool] = lambda: True,
) -> float:
    """Retry a GET through the tunnel until it works; returns the seconds it took."""
    t0 = time.monotonic()
    last = ""
    while time.monotonic() - t0 < timeout:
        if not alive():
            raise RuntimeError(f"a tunnel daemon exited (last error: {last})")
        try:
            with_timeout = functools.partial(
                _bounded, get_through, 5.0, proxy_port, dest, path, size
            )
            trio.run(with_timeout)
            return time.monotonic() - t0
        except Failure as exc:
            last = exc.reason
        time.sleep(0.1)
    raise RuntimeError(f"tunnel on {proxy_port} not ready after {timeout}s: {last}")


async def _bounded(fn: Callable[..., Any], seconds: float, *args: Any) -> Any:
    with trio.move_on_after(seconds):
        return await fn(*args)
    raise Failure("timeout")


class Tally:
    """Failure reasons, counted."""

    def __init__(self) -> None:
        self.reasons: Counter[str] = Counter()

    def add(self, reason: str) -> None:
        self.reasons[reason] += 1

    @property
    def total(self) -> int:
        return sum(self.reasons.values())

    def lines(self, indent: str = "    ", limit: int = 8) -> list[str]:
        return [f"{indent}{n:6d}  {r}" for r, n in self.reasons.most_common(limit)]


# ----------------------------------------------------------------------- tables


def fmt(value: object, spec: str = ".1f") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        return format(value, spec)
    return str(value)


def side_by_side(
    title: str, rows: Sequence[tuple[str, object, object, str]], names: tuple[str, str]
) -> str:
    """A table: metric | ours | theirs | ours/theirs (ratio where both are numbers)."""
    width = max(24, *(len(r[0]) for r in rows)) if rows else 24
    out = [title, f"  {'':{width}} {names[0]:>14} {names[1]:>14} {'ratio':>8}"]
    for label, a, b, spec in rows:
        ratio = "-"
        if isinstance(a, int | float) and isinstance(b, int | float) and b and a == a and b == b:
            ratio = f"{a / b:.2f}"
        out.append(f"  {label:{width}} {fmt(a, spec):>14} {fmt(b, spec):>14} {ratio:>8}")
    return "\n".join(out)


# ---------------------------------------------------------------- hold server


async def _hold(stream: trio.SocketStream) -> None:
    async with stream:
        with contextlib.suppress(trio.BrokenResourceError, OSError):
            while await stream.receive_some(4096):
                pass


async def _hold_main(port: int) -> None:
    await trio.serve_tcp(_hold, port, host="127.0.0.1", backlog=65535)


@contextlib.contextmanager
def hold_server(children: Children, workdir: Path) -> Iterator[int]:
    """A helper process that accepts TCP connections and holds them until the peer leaves."""
    port = free_ports(1)[0]
    daemon = children.start(
        Daemon("hold", [sys.executable, __file__, "hold", str(port)], workdir / "hold.log")
    )
    wait_port(port, proc=daemon)
    try:
        yield port
    finally:
        children.stop(daemon)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "hold":
        raise_nofile()
        with contextlib.suppress(KeyboardInterrupt):
            trio.run(_hold_main, int(sys.argv[2]))
    else:
        sys.exit("usage: python bench/_common.py hold PORT")
