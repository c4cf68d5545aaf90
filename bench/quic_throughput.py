"""QUIC bulk throughput over loopback: two processes, one or several streams.

Usage: python bench/quic_throughput.py [--size-mib 256] [--mds 1200,1452,9000] [--streams 1,8]

The server process sinks every stream and answers with the byte count; the
client measures wall time to the last answer. CPU seconds of both processes are
taken from getrusage, so "CPU s/GB" covers sender and receiver.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reverse_http.devcerts import make_dev_certs
from reverse_http.quic import (
    ClientTls,
    Connection,
    QuicStream,
    ServerSettings,
    ServerTls,
    TransportSettings,
    connect,
    serve_quic,
)

CHUNK = 256 * 1024


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def serve(cert: Path, key: Path, mds: int) -> None:
    settings = ServerSettings(
        tls=ServerTls(cert_file=cert, key_file=key),
        transport=TransportSettings(max_datagram_size=mds),
    )

    async def sink(stream: QuicStream) -> None:
        total = 0
        while data := await stream.receive_some(CHUNK):
            total += len(data)
        await stream.send_all(total.to_bytes(8, "big"))
        await stream.aclose()

    async def handler(conn: Connection) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                nursery.start_soon(sink, await conn.accept_stream())

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_quic, handler, "127.0.0.1", 0, settings)
        print(json.dumps({"port": server.local_address[1]}), flush=True)
        await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
        print(json.dumps({"cpu": cpu_seconds()}), flush=True)
        nursery.cancel_scope.cancel()


async def send_streams(port: int, ca: Path, mds: int, streams: int, size: int) -> float:
    transport = TransportSettings(max_datagram_size=mds)
    block = bytes(CHUNK)
    per_stream = size // streams

    async def one(conn: Connection) -> None:
        stream = await conn.open_stream()
        left = per_stream
        while left:
            n = min(left, CHUNK)
            await stream.send_all(block[:n])
            left -= n
        await stream.send_eof()
        answer = b""
        while data := await stream.receive_some():
            answer += data
        assert int.from_bytes(answer, "big") == per_stream, answer
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        conn = await connect(
            nursery,
            "127.0.0.1",
            port,
            transport,
            ClientTls(root_ca_file=ca, server_name="localhost"),
        )
        start = time.perf_counter()
        async with trio.open_nursery() as inner:
            for _ in range(streams):
                inner.start_soon(one, conn)
        elapsed = time.perf_counter() - start
        await conn.close()
        nursery.cancel_scope.cancel()
    return elapsed


def run_case(certs_dir: Path, mds: int, streams: int, size: int) -> dict[str, float]:
    certs = make_dev_certs(certs_dir)
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(certs.cert), str(certs.key), str(mds)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None and server.stdin is not None
    port = json.loads(server.stdout.readline())["port"]
    cpu0 = cpu_seconds()
    elapsed = trio.run(send_streams, port, certs.ca_cert, mds, streams, size)
    client_cpu = cpu_seconds() - cpu0
    server.stdin.close()
    server_cpu = json.loads(server.stdout.readline())["cpu"]
    server.wait(timeout=10)
    gb = size / 1e9
    return {
        "mds": mds,
        "streams": streams,
        "MB/s": size / elapsed / 1e6,
        "client CPU s/GB": client_cpu / gb,
        "server CPU s/GB": server_cpu / gb,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        trio.run(serve, Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--mds", default="1200,1452,9000")
    parser.add_argument("--streams", default="1,8")
    args = parser.parse_args()
    size = args.size_mib * 1024 * 1024
    print(f"QUIC throughput, {args.size_mib} MiB over loopback")
    print(f"{'mds':>6} {'streams':>8} {'MB/s':>8} {'client CPU s/GB':>16} {'server CPU s/GB':>16}")
    with tempfile.TemporaryDirectory() as tmp:
        for mds in (int(m) for m in args.mds.split(",")):
            for streams in (int(s) for s in args.streams.split(",")):
                r = run_case(Path(tmp), mds, streams, size)
                print(
                    f"{r['mds']:>6} {r['streams']:>8} {r['MB/s']:>8.1f} "
                    f"{r['client CPU s/GB']:>16.1f} {r['server CPU s/GB']:>16.1f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
