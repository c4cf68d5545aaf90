"""Start-up time: from exec of ``reverse-http`` to the moment a daemon is useful.

* proxy (development certificates, and with TLS files): its HTTP proxy port accepts TCP;
* agent: its metrics port accepts TCP, and ``/readyz`` answers 200 (connected to a proxy
  started beforehand);
* lb (over a memcached started here): its HTTP proxy port accepts TCP.

Each is started ``--runs`` times; the first run of each is reported apart ("cold": the
page cache may still lack the modules). Prints a table and asserts nothing.
``python bench/startup.py [--runs N]``
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

if str(Path(__file__).resolve().parent.parent) not in sys.path:
    sys.path.append(str(Path(__file__).resolve().parent.parent))  # PYTHONPATH may override

import reverse_http
from bench._common import free_ports, reverse_http_exe, wait_port
from reverse_http.devcerts import make_dev_certs

EXE = reverse_http_exe()
DEADLINE = 20.0


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=0.5) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def timed(argv: Sequence[str], probes: dict[str, Callable[[], bool]]) -> dict[str, float]:
    """Seconds from exec until each probe first succeeds (polled every millisecond)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen: dict[str, float] = {}
    try:
        while len(seen) < len(probes):
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise SystemExit(f"{argv[len(EXE)]} exited {proc.returncode}: {err[-500:]}")
            if time.perf_counter() - start > DEADLINE:
                raise SystemExit(f"{argv[len(EXE)]}: not ready after {DEADLINE} s")
            for name, probe in probes.items():
                if name not in seen and probe():
                    seen[name] = time.perf_counter() - start
            time.sleep(0.001)
    finally:
        proc.terminate()
        proc.wait(10)
    return seen


def bytecode_note() -> str:
    """Whether the daemons start from cached bytecode: with PYTHONDONTWRITEBYTECODE and no
    ``__pycache__`` (a fresh checkout) each start compiles our modules again (~0.1-0.3 s),
    which an installed wheel never does."""
    if os.environ.get("PYTHONPYCACHEPREFIX"):
        return f"bytecode cached in {os.environ['PYTHONPYCACHEPREFIX']}"
    cached = (Path(reverse_http.__file__).parent / "__pycache__").is_dir()
    if sys.flags.dont_write_bytecode and not cached:
        return "no bytecode cache: our modules compiled on every start"
    return "bytecode cached in __pycache__"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    results: dict[str, list[float]] = {}

    def record(label: str, seen: dict[str, float]) -> None:
        for name, t in seen.items():
            results.setdefault(f"{label}: {name}", []).append(t)

    with tempfile.TemporaryDirectory() as tmp:
        certs = make_dev_certs(Path(tmp))
        cert, key = certs.cert, certs.key
        for tls in (False, True):
            for _ in range(runs):
                (http,), (quic,) = free_ports(1), free_ports(1, socket.SOCK_DGRAM)
                argv = [
                    *EXE,
                    "proxy",
                    f"--http-proxy.listen-address=127.0.0.1:{http}",
                    f"--agent-server.listen-address=127.0.0.1:{quic}",
                ]
                if tls:
                    argv += [
                        f"--agent-server.tls.file.cert={cert}",
                        f"--agent-server.tls.file.key={key}",
                    ]
                label = "proxy (TLS files)" if tls else "proxy (dev certs)"
                record(label, timed(argv, {"http port accepts": lambda p=http: accepts(p)}))

        (http,), (quic,) = free_ports(1), free_ports(1, socket.SOCK_DGRAM)
        proxy = subprocess.Popen(
            [
                *EXE,
                "proxy",
                f"--http-proxy.listen-address=127.0.0.1:{http}",
                f"--agent-server.listen-address=127.0.0.1:{quic}",
                f"--agent-server.tls.file.cert={cert}",
                f"--agent-server.tls.file.key={key}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_port(http, DEADLINE)
            for i in range(runs):
                (metrics,) = free_ports(1)
                argv = [
                    *EXE,
                    "agent",
                    f"--agent-client.server-address=127.0.0.1:{quic}",
                    "--agent-client.tls.insecure-skip-verify",
                    f"--auth.noauth.agent-id=bench-{i}",
                    f"--metrics.listen-address=127.0.0.1:{metrics}",
                ]
                record(
                    "agent",
                    timed(
                        argv,
                        {
                            "metrics port accepts": lambda p=metrics: accepts(p),
                            "/readyz 200 (connected)": lambda p=metrics: ready(p),
                        },
                    ),
                )
        finally:
            proxy.terminate()
            proxy.wait(10)

        (mc_port,) = free_ports(1)
        memcached = subprocess.Popen(
            ["memcached", "-p", str(mc_port), "-l", "127.0.0.1", "-U", "0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(runs):
                (http,) = free_ports(1)
                argv = [
                    *EXE,
                    "lb",
                    f"--http-proxy.listen-address=127.0.0.1:{http}",
                    f"--store.memcached.address=127.0.0.1:{mc_port}",
                ]
                record(
                    "lb (memcached)", timed(argv, {"http port accepts": lambda p=http: accepts(p)})
                )
        finally:
            memcached.terminate()
            memcached.wait(10)

    print(f"start-up to listening, {runs} runs each (seconds); {bytecode_note()}")
    print(f"{'daemon: point':48} {'cold':>6} {'warm min':>9} {'warm med':>9} {'warm max':>9}")
    for name, times in results.items():
        warm = times[1:] or times
        print(
            f"{name:48} {times[0]:6.3f} {min(warm):9.3f} "
            f"{statistics.median(warm):9.3f} {max(warm):9.3f}"
        )


if __name__ == "__main__":
    main()
