"""End-to-end tunnel benchmark: real daemons in their own processes, real curl.

    python bench/tunnel.py [--size-mib 256] [--connects 200] [--parallel 100]

1. Bulk: curl downloads SIZE through the tunnel, and directly, in the same run.
2. Setup latency: p50/p99 of sequential new CONNECTs (TCP connect -> "200" read).
3. Parallel: N sessions of 1 MiB each at once.
Peak RSS (VmHWM) of proxy and agent is reported too.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reverse_http.devcerts import make_dev_certs

AUTH = "Basic " + __import__("base64").b64encode(b"bench:noauth").decode()


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


async def _sink_target(stream: trio.SocketStream, size: int) -> None:
    """Sends ``size`` bytes to whoever connects, then closes."""
    block = bytes(65536)
    try:
        left = size
        while left:
            n = min(left, len(block))
            await stream.send_all(block[:n])
            left -= n
        await stream.aclose()
    except trio.BrokenResourceError:
        pass


async def _quiet_target(stream: trio.SocketStream) -> None:
    async with stream:
        try:
            while await stream.receive_some(4096):
                pass
        except trio.BrokenResourceError:
            pass


async def _connect_once(proxy_port: int, dest: str) -> trio.SocketStream:
    stream = await trio.open_tcp_stream("127.0.0.1", proxy_port)
    await stream.send_all(
        f"CONNECT {dest} HTTP/1.1\r\nHost: {dest}\r\nProxy-Authorization: {AUTH}\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise RuntimeError("proxy closed")
        head += chunk
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.decode(errors="replace"))
    return stream


async def latency_and_parallel(proxy_port: int, connects: int, parallel: int) -> dict[str, float]:
    results: dict[str, float] = {}
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, host="127.0.0.1"),
            lambda s: _sink_target(s, 1 << 20),
            0,
        )
        dest = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        # latency against a quiet target: it accepts and waits for the client to leave
        quiet = await nursery.start(
            functools.partial(trio.serve_tcp, host="127.0.0.1"), _quiet_target, 0
        )
        quiet_dest = f"127.0.0.1:{quiet[0].socket.getsockname()[1]}"
        samples = []
        for _ in range(connects):
            t0 = time.perf_counter()
            stream = await _connect_once(proxy_port, quiet_dest)
            samples.append((time.perf_counter() - t0) * 1000)
            await stream.aclose()
        samples.sort()
        results["p50_ms"] = statistics.median(samples)
        results["p99_ms"] = samples[min(len(samples) - 1, int(len(samples) * 0.99))]

        async def session() -> None:
            stream = await _connect_once(proxy_port, dest)
            got = 0
            while chunk := await stream.receive_some(65536):
                got += len(chunk)
            assert got == 1 << 20, got
            await stream.aclose()

        t0 = time.perf_counter()
        async with trio.open_nursery() as sessions:
            for _ in range(parallel):
                sessions.start_soon(session)
        elapsed = time.perf_counter() - t0
        results["parallel_s"] = elapsed
        results["parallel_MBps"] = parallel * (1 << 20) / elapsed / 1e6
        nursery.cancel_scope.cancel()
    return results


def curl_time(url: str, proxy: str | None) -> float:
    cmd = ["curl", "-sS", "-f", "-o", "/dev/null", "-w", "%{time_total}"]
    if proxy:
        cmd += ["-p", "-x", proxy]
    out = subprocess.run([*cmd, url], check=True, capture_output=True, text=True).stdout
    return float(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--connects", type=int, default=200)
    parser.add_argument("--parallel", type=int, default=100)
    args = parser.parse_args()
    exe = shutil.which("reverse-http") or sys.exit("reverse-http is not installed")
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        certs = make_dev_certs(tmp / "certs")
        blob = tmp / "www" / "blob.bin"
        blob.parent.mkdir()
        with blob.open("wb") as f:
            f.truncate(args.size_mib * 1024 * 1024)
        web_port, agent_port, http_port = (
            free_port(socket.SOCK_STREAM),
            free_port(socket.SOCK_DGRAM),
            free_port(socket.SOCK_STREAM),
        )
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        try:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "http.server",
                        str(web_port),
                        "-b",
                        "127.0.0.1",
                        "-d",
                        str(blob.parent),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            proxy = subprocess.Popen(
                [
                    exe,
                    "proxy",
                    f"--agent-server.listen-address=127.0.0.1:{agent_port}",
                    f"--agent-server.tls.file.cert={certs.cert}",
                    f"--agent-server.tls.file.key={certs.key}",
                    f"--http-proxy.listen-address=127.0.0.1:{http_port}",
                    "--log.level=warn",
                ],
                env=env,
            )
            procs.append(proxy)
            wait_port(http_port)
            agent = subprocess.Popen(
                [
                    exe,
                    "agent",
                    f"--agent-client.server-address=127.0.0.1:{agent_port}",
                    f"--agent-client.tls.file.root-ca={certs.ca_cert}",
                    "--auth.noauth.agent-id=bench",
                    "--log.level=warn",
                ],
                env=env,
            )
            procs.append(agent)
            wait_port(web_port)
            url = f"http://127.0.0.1:{web_port}/blob.bin"
            proxy_url = f"http://bench:noauth@127.0.0.1:{http_port}"
            deadline = time.monotonic() + 15
            while True:  # until the agent is connected
                try:
                    curl_time(f"http://127.0.0.1:{web_port}/", proxy_url)
                    break
                except subprocess.CalledProcessError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            size_mb = args.size_mib * 1024 * 1024 / 1e6
            direct = curl_time(url, None)
            tunneled = curl_time(url, proxy_url)
            lat = trio.run(latency_and_parallel, http_port, args.connects, args.parallel)
            print(
                f"tunnel benchmark ({args.size_mib} MiB bulk, {args.connects} connects, "
                f"{args.parallel} x 1 MiB parallel)"
            )
            print(f"  bulk direct          {size_mb / direct:8.1f} MB/s")
            print(f"  bulk through tunnel  {size_mb / tunneled:8.1f} MB/s")
            print(f"  CONNECT setup p50    {lat['p50_ms']:8.2f} ms")
            print(f"  CONNECT setup p99    {lat['p99_ms']:8.2f} ms")
            print(
                f"  {args.parallel} parallel 1 MiB   {lat['parallel_s']:8.2f} s "
                f"({lat['parallel_MBps']:.1f} MB/s)"
            )
            print(f"  peak RSS proxy       {peak_rss_mib(proxy.pid):8.1f} MiB")
            print(f"  peak RSS agent       {peak_rss_mib(agent.pid):8.1f} MiB")
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()


if __name__ == "__main__":
    main()
