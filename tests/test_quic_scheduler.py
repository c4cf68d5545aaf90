"""The sans-IO core without sockets or tasks: two ``TunnelQuicConnection`` objects
exchange datagrams by hand on a fake clock.

Packet scheduling (streams visited per packet, fairness, fresh streams first),
consumption-driven flow control per stream and per connection, stream-count
credit, and close.
"""

from __future__ import annotations

from collections import defaultdict

import pytest
from aioquic.buffer import Buffer
from aioquic.quic import events
from aioquic.quic.packet import pull_quic_header

from reverse_http.devcerts import CertFiles
from reverse_http.quic import TransportSettings
from reverse_http.quic.protocol import TURN_BYTES, TunnelQuicConnection
from reverse_http.quic.settings import client_configuration, server_configuration
from tests.quic_helpers import client_tls, server_settings

CLIENT_ADDR = ("127.0.0.1", 50000)
SERVER_ADDR = ("127.0.0.1", 4242)


class Wire:
    """Client and server connections and a fake clock; datagrams move only in
    :meth:`step`, and the server side records what its application received."""

    def __init__(
        self,
        certs: CertFiles,
        client_t: TransportSettings | None = None,
        server_t: TransportSettings | None = None,
    ) -> None:
        self.now = 1000.0
        ct = client_t or TransportSettings()
        self.server_t = server_t or TransportSettings()
        self.settings = server_settings(certs, self.server_t)
        self.client = TunnelQuicConnection(
            configuration=client_configuration(ct, client_tls(certs), "localhost"),
            stream_receive_window=ct.stream_receive_window,
            connection_receive_window=ct.connection_receive_window,
            max_concurrent_streams=ct.max_concurrent_streams,
        )
        self.server: TunnelQuicConnection | None = None
        self.client.connect(SERVER_ADDR, now=self.now)
        #: bytes the server side received per stream, and whether it saw FIN
        self.received: dict[int, int] = defaultdict(int)
        self.finished: set[int] = set()
        #: (stream id, bytes) of every data event, in arrival order, for fairness checks
        self.arrivals: list[tuple[int, int]] = []
        #: datagrams sent by the client in the last step()
        self.client_datagrams = 0
        #: the server application reads (and reports consumption) as data arrives
        self.server_reads = True
        self.client_events: list[events.QuicEvent] = []
        self.run_until(lambda: self.server is not None and self.handshake_done())
        self.settle()  # HANDSHAKE_DONE delivered: both sides use 1-RTT only

    def handshake_done(self) -> bool:
        return any(isinstance(e, events.HandshakeCompleted) for e in self.client_events)

    def _make_server(self, first: bytes) -> TunnelQuicConnection:
        header = pull_quic_header(Buffer(data=first), host_cid_length=8)
        t = self.server_t
        return TunnelQuicConnection(
            configuration=server_configuration(self.settings),
            original_destination_connection_id=header.destination_cid,
            stream_receive_window=t.stream_receive_window,
            connection_receive_window=t.connection_receive_window,
            max_concurrent_streams=t.max_concurrent_streams,
        )

    def step(self, max_client_datagrams: int | None = None) -> int:
        """Move one batch each way; returns the number of datagrams moved."""
        out = self.client.datagrams_to_send(now=self.now)
        if max_client_datagrams is not None:
            # The rest are "lost"; aioquic's recovery resends them.
            out = out[:max_client_datagrams]
        self.client_datagrams = len(out)
        for data, _ in out:
            if self.server is None:
                self.server = self._make_server(data)
            self.server.receive_datagram(data, CLIENT_ADDR, now=self.now)
        moved = len(out)
        if self.server is not None:
            self._server_events()
            back = self.server.datagrams_to_send(now=self.now)
            for data, _ in back:
                self.client.receive_datagram(data, SERVER_ADDR, now=self.now)
            moved += len(back)
        while (event := self.client.next_event()) is not None:
            self.client_events.append(event)
        return moved

    def _server_events(self) -> None:
        assert self.server is not None
        while (event := self.server.next_event()) is not None:
            if isinstance(event, events.StreamDataReceived):
                n = len(event.data)
                self.received[event.stream_id] += n
                if n:
                    self.arrivals.append((event.stream_id, n))
                if event.end_stream:
                    self.finished.add(event.stream_id)
                if self.server_reads and n:
                    self.server.consumed(event.stream_id, n)

    def next_timer(self) -> float:
        timers = [self.client.get_timer()]
        if self.server is not None:
            timers.append(self.server.get_timer())
        return min((t for t in timers if t is not None), default=self.now + 3600)

    def advance(self) -> None:
        """Jump the clock to the next timer of either side and handle it."""
        self.now = max(self.now + 0.001, self.next_timer())
        for conn in (self.client, self.server):
            if conn is not None:
                timer = conn.get_timer()
                if timer is not None and timer <= self.now:
                    conn.handle_timer(self.now)

    def run_until(self, done: object, limit: int = 100_000) -> None:
        assert callable(done)
        for _ in range(limit):
            if done():
                return
            if not self.step():
                self.advance()
        raise AssertionError("condition not reached")

    def settle(self, rounds: int = 2000) -> None:
        """Exchange until both sides are quiet: nothing to send, and no timer due
        within a second (idle timeouts are not part of settling)."""
        for _ in range(rounds):
            if not self.step():
                if self.next_timer() > self.now + 1:
                    return
                self.advance()
        raise AssertionError("never settled")

    def open_streams(self, count: int, first_bytes: bytes = b"x") -> list[int]:
        ids = []
        for _ in range(count):
            sid = self.client.get_next_available_stream_id()
            self.client.send_stream_data(sid, first_bytes)
            ids.append(sid)
        return ids


def visited_per_packet(wire: Wire, bulk: int, size: int) -> float:
    wire.client.send_stream_data(bulk, b"b" * size)
    visited0 = wire.client.streams_visited
    packets = 0
    while wire.received[bulk] < size + 1:
        moved = wire.step()
        packets += wire.client_datagrams
        if not moved:
            wire.advance()
    return (wire.client.streams_visited - visited0) / packets


def test_streams_visited_per_packet_do_not_depend_on_idle_streams(certs: CertFiles) -> None:
    per_packet = {}
    for idle in (10, 2000):
        wire = Wire(certs)
        ids = wire.open_streams(idle + 1)
        wire.run_until(lambda w=wire, n=idle + 1: len(w.received) == n)  # type: ignore[misc]
        per_packet[idle] = visited_per_packet(wire, ids[-1], 2 * 1024 * 1024)
    # One busy stream: about one visit per packet, whether 10 or 2000 streams idle.
    assert per_packet[10] <= 1.5
    assert per_packet[2000] <= 1.5
    assert abs(per_packet[2000] - per_packet[10]) < 0.25


def test_two_busy_streams_share_the_packets_fairly(certs: CertFiles) -> None:
    wire = Wire(certs)
    a, b = wire.open_streams(2, b"")
    size = 4 * 1024 * 1024
    wire.client.send_stream_data(a, b"a" * size)
    wire.client.send_stream_data(b, b"b" * size)
    wire.run_until(lambda: wire.received[a] + wire.received[b] >= size)
    # Halfway through, each stream has had close to half of what was delivered.
    share = wire.received[a] / (wire.received[a] + wire.received[b])
    assert 0.4 <= share <= 0.6, share
    # and they take turns of about TURN_BYTES: longer runs would be unfair bursts,
    # one frame per turn would wake the peer's reader once per packet per stream
    runs: list[int] = []
    previous = None
    for sid, n in wire.arrivals:
        if sid == previous:
            runs[-1] += n
        else:
            runs.append(n)
        previous = sid
    assert max(runs) <= TURN_BYTES + 1500
    middle = sorted(runs)[len(runs) // 2]
    assert middle >= TURN_BYTES - 1500, middle


def test_a_new_stream_is_not_queued_behind_bulk_data(certs: CertFiles) -> None:
    wire = Wire(certs)
    (bulk,) = wire.open_streams(1)
    wire.run_until(lambda: wire.received[bulk] == 1)
    wire.client.send_stream_data(bulk, b"b" * (8 * 1024 * 1024))
    # bulk transfer under way (past its fresh start), its queue well ahead of the newcomer
    wire.run_until(lambda: wire.received[bulk] > 256 * 1024)
    (fresh,) = wire.open_streams(1, b"CONNECT 10.0.0.1:80 HTTP/1.1\r\n\r\n")
    while True:  # the very next datagram the client sends carries it
        wire.step(max_client_datagrams=1)
        if wire.client_datagrams:
            break
        wire.advance()
    assert wire.received[fresh] > 0


def test_receive_credit_follows_consumption(certs: CertFiles) -> None:
    window = 64 * 1024
    t = TransportSettings(stream_receive_window=window, connection_receive_window=window * 4)
    wire = Wire(certs, server_t=t)
    wire.server_reads = False
    (sid,) = wire.open_streams(1, b"")
    wire.client.send_stream_data(sid, b"z" * (1024 * 1024))
    wire.settle()
    assert wire.received[sid] == window  # the reader stopped: so did the sender
    assert wire.server is not None
    wire.server.consumed(sid, window)
    wire.settle()
    assert wire.received[sid] == 2 * window


def test_connection_window_bounds_unread_data_across_streams(certs: CertFiles) -> None:
    window = 64 * 1024
    t = TransportSettings(stream_receive_window=window, connection_receive_window=window * 4)
    wire = Wire(certs, server_t=t)
    wire.server_reads = False
    ids = wire.open_streams(16, b"")
    for sid in ids:
        wire.client.send_stream_data(sid, b"q" * window)
    wire.settle()
    # 16 streams could take 16 windows; the connection grants only 4 unread.
    assert sum(wire.received.values()) == 4 * window
    # streams blocked on the connection window resume when the reader catches up
    assert wire.server is not None
    for sid in ids:
        if wire.received[sid]:
            wire.server.consumed(sid, wire.received[sid])
    wire.settle()
    assert sum(wire.received.values()) == 8 * window


def test_dropped_data_returns_connection_credit(certs: CertFiles) -> None:
    window = 64 * 1024
    t = TransportSettings(stream_receive_window=window, connection_receive_window=window)
    wire = Wire(certs, server_t=t)
    wire.server_reads = False
    (first,) = wire.open_streams(1, b"")
    wire.client.send_stream_data(first, b"r" * window)
    wire.settle()
    assert wire.received[first] == window
    # the peer resets the stream: what it sent can never be read; the credit returns
    wire.client.reset_stream(first, 0x10C)
    wire.settle()
    assert wire.server is not None
    wire.server.released(window)
    (second,) = wire.open_streams(1, b"")
    wire.client.send_stream_data(second, b"s" * window)
    wire.settle()
    assert wire.received[second] == window


def test_stream_count_credit_returns_as_streams_finish(certs: CertFiles) -> None:
    t = TransportSettings(max_concurrent_streams=8)
    wire = Wire(certs, server_t=t)
    ids = []
    while wire.client.can_open_stream():
        ids += wire.open_streams(1, b"")
        wire.client.send_stream_data(ids[-1], b"hi", end_stream=True)
    assert len(ids) == 8
    wire.settle()
    assert not wire.client.can_open_stream()
    # the server finishes each stream: credit for new ones comes back
    assert wire.server is not None
    for sid in ids:
        wire.server.send_stream_data(sid, b"", end_stream=True)
    wire.settle()
    assert wire.client.can_open_stream()
    assert wire.server.open_stream_count == 0
    assert wire.client.open_stream_count == 0


def test_send_accounting_counts_unacknowledged_bytes(certs: CertFiles) -> None:
    wire = Wire(certs)
    a, b = wire.open_streams(2, b"")
    wire.client.send_stream_data(a, b"1" * 100_000)
    wire.client.send_stream_data(b, b"2" * 50_000)
    assert wire.client.unacked_bytes == 150_000
    assert wire.client.stream_unacked(a) == 100_000
    wire.client.reset_stream(b, 0x10C)  # never acknowledged now: not counted
    assert wire.client.unacked_bytes == 100_000
    wire.settle()
    assert wire.client.unacked_bytes == 0
    assert wire.client.stream_unacked(a) == 0


def test_lost_packets_are_resent(certs: CertFiles) -> None:
    wire = Wire(certs)
    (sid,) = wire.open_streams(1, b"")
    size = 512 * 1024
    wire.client.send_stream_data(sid, b"l" * size, end_stream=True)
    for _ in range(30):
        wire.step(max_client_datagrams=3)  # most of each burst is lost
    wire.run_until(lambda: sid in wire.finished)
    assert wire.received[sid] == size


@pytest.mark.parametrize("by", ["client", "server"])
def test_close_reaches_the_peer(certs: CertFiles, by: str) -> None:
    wire = Wire(certs)
    assert wire.server is not None
    closer = wire.client if by == "client" else wire.server
    other = wire.server if by == "client" else wire.client
    closer.close(error_code=409, reason_phrase="closing old connection")
    wire.run_until(lambda: other.close_event is not None)
    assert other.close_event is not None
    assert (other.close_event.error_code, other.close_event.reason_phrase) == (
        409,
        "closing old connection",
    )
    assert other.closed_by_peer and not closer.closed_by_peer
