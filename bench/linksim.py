"""One download over a simulated long fat link, in virtual time: no root, no sockets, no lock.

Two ``TunnelQuicConnection``s (the QUIC client sends, as the agent does in
``bench/wan.py``) joined in memory by a drop-tail bottleneck (rate, queue bytes,
seeded loss) and a one-way delay each way, under ``trio.testing.MockClock``: each
endpoint reads what has arrived, services its connection once per read and waits
its receive hold (``endpoint.ReceiveHold``) like the real endpoint. CPU costs
nothing here, so the result is what the protocol alone allows: slow start, pacing,
drops at the queue and the loss response, deterministic for a given input.

On the 200 ms / 20 Mbit/s row of ``bench/wan.py`` it gave the same share of the link
as the emulated run once that run's two request round trips are added (83 % here, 76 %
there for 9 MiB); it does not show what CPU time adds (the 50 ms / 100 Mbit/s row's
drops come from the processes' scheduling there, none here). A few seconds per run:
the tool for trying congestion-control changes before ``bench/wan.py``.

    python bench/linksim.py --rtt-ms 200 --rate-mbit 20 --size-mib 9 --trace
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
import trio.testing

if str(Path(__file__).resolve().parent.parent) not in sys.path:
    sys.path.append(str(Path(__file__).resolve().parent.parent))  # PYTHONPATH may override

from aioquic.buffer import Buffer
from aioquic.quic.packet import pull_quic_header

from reverse_http.devcerts import make_dev_certs
from reverse_http.quic import Connection, TransportSettings
from reverse_http.quic.driver import Driver
from reverse_http.quic.endpoint import ReceiveHold
from reverse_http.quic.protocol import TunnelQuicConnection
from reverse_http.quic.settings import (
    ClientTls,
    ServerSettings,
    ServerTls,
    client_configuration,
    server_configuration,
)

CLIENT = ("10.201.0.2", 50000)
SERVER = ("10.201.0.1", 4242)
MIB = 1 << 20

Wire = trio.MemorySendChannel[tuple[float, bytes]]


class Link:
    """Both directions: client -> server through the bottleneck, the other way not
    rate-limited (ACKs), each with half the RTT of delay."""

    def __init__(self, rtt: float, rate: float, queue: int, loss: float, seed: int) -> None:
        self.delay = rtt / 2
        self.rate = rate
        self.queue = queue
        self.loss = loss
        self.random = random.Random(seed)
        self.busy_until = 0.0
        self.drops = {"queue": 0, "loss": 0}
        self.queue_peak = 0.0
        #: Batches the sender handed to the link (one per service that sent).
        self.sends = 0

    @property
    def dropped(self) -> int:
        return sum(self.drops.values())

    def forward(self, wire: Wire) -> Callable[[list[tuple[bytes, Any]]], list[int]]:
        def send(datagrams: list[tuple[bytes, Any]]) -> list[int]:
            now = trio.current_time()
            self.sends += 1
            for data, _ in datagrams:
                backlog = max(0.0, self.busy_until - now) * self.rate
                if backlog + len(data) > self.queue:
                    self.drops["queue"] += 1
                    continue
                if self.loss and self.random.random() < self.loss:
                    self.drops["loss"] += 1
                    continue
                self.queue_peak = max(self.queue_peak, backlog + len(data))
                self.busy_until = max(now, self.busy_until) + len(data) / self.rate
                wire.send_nowait((self.busy_until + self.delay, data))
            return []

        return send

    def backward(self, wire: Wire) -> Callable[[list[tuple[bytes, Any]]], list[int]]:
        def send(datagrams: list[tuple[bytes, Any]]) -> list[int]:
            due = trio.current_time() + self.delay
            for data, _ in datagrams:
                wire.send_nowait((due, data))
            return []

        return send


class Reader:
    """One endpoint's receive loop: all that has arrived, one service, the hold."""

    def __init__(self, driver: Driver, peer: Any) -> None:
        self.driver = driver
        self.peer = peer
        self.conn: Connection | None = None
        self.wakeups = 0
        self.datagrams = 0

    async def run(
        self,
        wire: trio.MemoryReceiveChannel[tuple[float, bytes]],
        make: Callable[[bytes], Connection] | None = None,
    ) -> None:
        pending: list[tuple[float, bytes]] = []
        policy = ReceiveHold()
        while True:
            if not pending:
                pending.append(await wire.receive())
            if pending[0][0] > trio.current_time():
                await trio.sleep_until(pending[0][0])
            started = trio.current_time()
            while True:
                try:
                    pending.append(wire.receive_nowait())
                except trio.WouldBlock:
                    break
            batch = [p for p in pending if p[0] <= started]
            pending = [p for p in pending if p[0] > started]
            self.wakeups += 1
            for _, data in batch:
                if self.conn is None and make is not None:
                    self.conn = make(data)
                if self.conn is not None:
                    self.datagrams += 1
                    self.conn.datagram_received(data, self.peer, started)
            self.driver.flush()
            hold = policy.after_batch(started, trio.current_time(), self.driver.take_hold())
            if hold:
                await trio.sleep(hold)


async def download(args: argparse.Namespace) -> dict[str, Any]:
    certs = make_dev_certs(Path(tempfile.mkdtemp(prefix="linksim-")))
    t = TransportSettings()
    if args.initial_window:
        t = TransportSettings(initial_congestion_window=args.initial_window)
    server_settings = ServerSettings(
        tls=ServerTls(cert_file=certs.cert, key_file=certs.key), transport=t
    )
    rate = args.rate_mbit * 1e6 / 8
    rtt = args.rtt_ms / 1000
    queue = args.queue_bytes or max(64 * 1024, int(rate * rtt))
    path = Link(rtt, rate, queue, args.loss, args.seed)
    to_server, from_client = trio.open_memory_channel[tuple[float, bytes]](math.inf)
    to_client, from_server = trio.open_memory_channel[tuple[float, bytes]](math.inf)
    client_driver = Driver(path.forward(to_server))
    server_driver = Driver(path.backward(to_client))
    client_reader = Reader(client_driver, SERVER)
    server_reader = Reader(server_driver, CLIENT)
    server_made = trio.Event()

    def make_server(first: bytes) -> Connection:
        header = pull_quic_header(Buffer(data=first), host_cid_length=8)
        quic = TunnelQuicConnection.for_transport(
            server_configuration(server_settings),
            t,
            original_destination_connection_id=header.destination_cid,
        )
        server_made.set()
        return Connection(quic, t, server_driver, CLIENT)

    samples: list[tuple[float, float, float, int]] = []
    result: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        for task in (client_driver.run, server_driver.run):
            nursery.start_soon(task)
        nursery.start_soon(client_reader.run, from_server)
        nursery.start_soon(server_reader.run, from_client, make_server)
        quic = TunnelQuicConnection.for_transport(
            client_configuration(
                t, ClientTls(root_ca_file=certs.ca_cert, server_name="localhost"), "localhost"
            ),
            t,
        )
        client = Connection(quic, t, client_driver, SERVER)
        client_reader.conn = client
        quic.connect(SERVER, now=trio.current_time())
        client_driver.touch(client)
        client_driver.flush()
        await client.wait_handshake()
        await server_made.wait()
        server = server_reader.conn
        assert server is not None
        await server.wait_handshake()
        await trio.sleep(1.0)  # past the path MTU probes, as a tunnel that is ready
        theirs = await server.open_stream()
        await theirs.send_all(b"GET")
        mine = await client.accept_stream()
        await mine.receive_some()
        stats = client.quic.stats
        start = trio.current_time()
        size = int(args.size_mib * MIB)

        async def sample() -> None:
            while True:
                now = stats()
                cwnd, inflight = now["congestion_window_bytes"], now["bytes_in_flight"]
                samples.append((trio.current_time() - start, cwnd, inflight, path.dropped))
                await trio.sleep(0.1)

        nursery.start_soon(sample)
        nursery.start_soon(mine.send_all, b"x" * size)
        got = 0
        while got < size:
            got += len(await theirs.receive_some())
        seconds = trio.current_time() - start
        result = {
            "seconds": seconds,
            "mbps": size / seconds / 1e6,
            "link_share": size / seconds / rate,
            "drops": dict(path.drops),
            "lost": int(stats()["lost_packets"]),
            "queue_peak_kib": path.queue_peak / 1024,
            "sender_sends": path.sends,
            "sender_reads": client_reader.wakeups,
            "receiver_reads": server_reader.wakeups,
            "receiver_datagrams": server_reader.datagrams,
            "acks": client_reader.datagrams,
            "samples": samples,
            "queue": queue,
        }
        client.abort_now()
        server.abort_now()
        nursery.cancel_scope.cancel()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rtt-ms", type=float, default=200)
    ap.add_argument("--rate-mbit", type=float, default=20)
    ap.add_argument("--size-mib", type=float, default=9)
    ap.add_argument("--queue-bytes", type=int, default=0, help="0: one BDP (at least 64 KiB)")
    ap.add_argument("--loss", type=float, default=0.0, help="random loss at the bottleneck")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--initial-window", type=int, default=0, help="packets (0: the default)")
    ap.add_argument("--trace", action="store_true", help="window and drops every 100 ms")
    args = ap.parse_args()
    r = trio.run(download, args, clock=trio.testing.MockClock(autojump_threshold=0))
    print(
        f"{args.rtt_ms:g} ms / {args.rate_mbit:g} Mbit/s, queue {r['queue']} B, "
        f"{args.size_mib:g} MiB: {r['seconds']:.3f} s, {r['mbps']:.2f} MB/s "
        f"({r['link_share']:.0%} of the link), drops {r['drops']}, lost {r['lost']}, "
        f"queue peak {r['queue_peak_kib']:.0f} KiB"
    )
    print(
        f"  sender: {r['sender_sends']} sends, {r['sender_reads']} reads of "
        f"{r['acks']} datagrams; receiver: {r['receiver_reads']} reads of "
        f"{r['receiver_datagrams']} datagrams"
    )
    if args.trace:
        for at, cwnd, inflight, drops in r["samples"]:
            kb = f"cwnd {cwnd / 1e3:6.0f} kB  in flight {inflight / 1e3:6.0f} kB"
            print(f"  {at:5.2f} s  {kb}  drops {drops}")


if __name__ == "__main__":
    main()
