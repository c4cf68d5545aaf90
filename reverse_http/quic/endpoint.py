"""One UDP socket, one receive task, and batched non-blocking sends.

The socket is a plain non-blocking stdlib socket waited on with
``trio.lowlevel.wait_readable``/``wait_writable``: about three times the packet
rate of ``trio.socket`` for the same work. Datagrams are handed to a
synchronous dispatch callback; nothing here knows about QUIC.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

log = logging.getLogger(__name__)
#: Where the quic layer reports handling that raised (a bug costing one datagram or
#: connection: here, in the driver and in the server); rate-limited by
#: ``reverse_http.logs`` so that no sender can write the log at packet rate.
crash_log = logging.getLogger("reverse_http.quic.crash")

Dispatch = Callable[[bytes, Any], None]

#: Datagrams read per wake-up before other tasks get a turn.
RECV_BATCH = 512
#: Datagrams queued while the socket buffer is full; beyond this they are dropped
#: (as the kernel would) and the loss is left to QUIC's recovery.
MAX_BACKLOG = 8192
SOL_UDP = 17
UDP_SEGMENT = 103
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65000
MAX_UDP_PAYLOAD = 65535
#: A batch whose datagrams came within this of the previous batch's end (plus the hold
#: before it) shows datagrams arriving densely: the next batch may be held back.
DENSE_GAP = 0.001
#: After a batch serviced a connection that allows no hold, none for this long.
NO_HOLD_PERIOD = 0.1
#: Send errors are logged at most this often (seconds); the rest are counted.
SEND_ERROR_LOG_INTERVAL = 60.0
#: Linux socket options (not all are in Python's socket module).
IP_MTU_DISCOVER, IP_PMTUDISC_DO, IP_MTU = 10, 2, 14
IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO, IPV6_MTU = 23, 2, 24


class ReceiveHold:
    """When to wait a little before reading the socket again (receive coalescing).

    A paced sender on a long path spreads its datagrams out (20 Mbit/s: one every
    0.6 ms), so each wakes the loop alone and pays for a service, an ACK and a relay
    write of its own. While datagrams come densely, waiting ``allowance`` (what the
    connections serviced allow, a small fraction of their RTT) before reading again
    lets each wake-up take several. Never after a lull (the first datagram of a
    request is read at once) nor while a connection that allows no wait is active.
    """

    __slots__ = ("_ended", "_held", "_no_hold_until")

    def __init__(self) -> None:
        self._ended = -math.inf
        self._held = 0.0
        self._no_hold_until = -math.inf

    def after_batch(self, started: float, ended: float, allowance: float) -> float:
        """Seconds to wait before the next read, for a batch read from ``started`` to
        ``ended`` whose connections allow ``allowance``."""
        dense = started - self._ended <= self._held + DENSE_GAP
        self._ended = ended
        hold = 0.0
        if allowance <= 0:
            self._no_hold_until = ended + NO_HOLD_PERIOD
        elif dense and ended >= self._no_hold_until:
            hold = allowance
        self._held = hold
        return hold


class UdpEndpoint:
    def __init__(
        self, sock: socket.socket, *, connected_peer: Any = None, gso: bool = True
    ) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._connected_peer = connected_peer
        self._write_lock = trio.Lock()
        self._backlog: deque[tuple[bytes, Any, int]] = deque()
        self._backlog_ready = trio.Event()
        self.datagrams_received = 0
        self.datagrams_sent = 0
        self.send_errors = 0
        self.backlog_dropped = 0
        #: Sends refused with EMSGSIZE (the datagram exceeds the path MTU).
        self.too_big_errors = 0
        self._too_big: list[int] = []
        self._errors_logged_at = -math.inf
        self._errors_unlogged = 0
        self._gso = gso and sys.platform == "linux"

    @classmethod
    def bind(cls, host: str, port: int, buffer_size: int) -> UdpEndpoint:
        """Bind a server socket; an empty host means dual-stack on all addresses."""
        if host in ("", "::", "*"):
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            try:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                sock.bind(("::", port))
            except OSError:
                sock.close()
                if host != "":
                    raise
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.bind(("0.0.0.0", port))
        else:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.bind((host, port))
            except OSError:
                sock.close()
                raise
        set_buffer_sizes(sock, buffer_size)
        set_dont_fragment(sock)
        return cls(sock)

    @classmethod
    def connected(cls, family: int, peer: Any, buffer_size: int) -> UdpEndpoint:
        """A client socket bound to one peer, so ICMP errors and strangers are filtered."""
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            set_buffer_sizes(sock, buffer_size)
            set_dont_fragment(sock)
            sock.connect(peer)
        except OSError:
            sock.close()
            raise
        return cls(sock, connected_peer=peer)

    @property
    def local_address(self) -> Any:
        return self._sock.getsockname()

    def close(self) -> None:
        self._sock.close()

    async def run(
        self,
        dispatch: Dispatch,
        after_batch: Callable[[], None],
        hold: Callable[[], float] | None = None,
        after_first: Callable[[], None] | None = None,
    ) -> None:
        """Receive (``after_batch`` once per batch read) and flush the send backlog.

        ``hold``, called after each batch, says how long the connections it serviced
        allow the next read to wait (see :class:`ReceiveHold`); ``after_first``, see
        :meth:`receive_loop`."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._backlog_loop)
            await self.receive_loop(dispatch, after_batch, hold, after_first)

    async def receive_loop(
        self,
        dispatch: Dispatch,
        after_batch: Callable[[], None] | None = None,
        hold: Callable[[], float] | None = None,
        after_first: Callable[[], None] | None = None,
    ) -> None:
        """Read batches of datagrams into ``dispatch``; ``after_batch`` after each.

        ``after_first`` runs after the first datagram of a wake-up, before the next
        read: a request's datagram usually comes alone, and its bytes then go on
        (the driver services its connection, the stream's sink writes them) before
        the read that finds the socket empty, not after it (one syscall earlier per
        relayed hop). In a burst it is one more service per wake-up.
        """
        sock = self._sock
        peer = self._connected_peer
        policy = ReceiveHold()
        held = False
        while True:
            if not held:
                await trio.lowlevel.wait_readable(sock)
            held = False
            started = trio.current_time()
            count = 0
            for _ in range(RECV_BATCH):
                try:
                    data, addr = sock.recvfrom(MAX_UDP_PAYLOAD)
                except BlockingIOError:
                    break
                except OSError as exc:
                    # ICMP errors (port unreachable...) surface here; they are not fatal.
                    log.debug("udp receive error ignored: %s", exc)
                    continue
                self.datagrams_received += 1
                count += 1
                try:
                    dispatch(data, peer if peer is not None else addr)
                    if count == 1 and after_first is not None:
                        after_first()
                except Exception:
                    crash_log.exception("dropping a datagram that crashed its handler")
            if not count:
                continue  # nothing came during a hold: wait for readability
            if after_batch is not None:
                after_batch()
            if hold is not None and count < RECV_BATCH:
                wait = policy.after_batch(started, trio.current_time(), hold())
                if wait > 0:
                    await trio.sleep(wait)
                    held = True  # read at once: what came meanwhile is queued

    def send_nowait(self, datagrams: list[tuple[bytes, Any]]) -> list[int]:
        """Send in order without blocking; what the socket refuses waits in a backlog.

        Returns the sizes the kernel refused as too big for the path (``EMSGSIZE``), for
        the connection's path MTU discovery.
        """
        too_big: list[int] = []
        self._too_big = too_big
        for payload, addr, segment in self._batches(datagrams):
            if self._backlog or not self._try_send(payload, addr, segment):
                if len(self._backlog) >= MAX_BACKLOG:
                    self.backlog_dropped += 1
                    continue
                self._backlog.append((payload, addr, segment))
                self._backlog_ready.set()
        self._too_big = []
        return too_big

    async def _backlog_loop(self) -> None:
        backlog = self._backlog
        while True:
            await self._backlog_ready.wait()
            self._backlog_ready = trio.Event()
            while backlog:
                payload, addr, segment = backlog[0]
                if not self._try_send(payload, addr, segment):
                    await trio.lowlevel.wait_writable(self._sock)
                    continue
                backlog.popleft()

    def _batches(self, datagrams: list[tuple[bytes, Any]]) -> list[tuple[bytes, Any, int]]:
        """Runs of equal-sized datagrams to one peer, joined for one GSO write each."""
        out: list[tuple[bytes, Any, int]] = []
        i, n = 0, len(datagrams)
        while i < n:
            data, addr = datagrams[i]
            j = i + 1
            if self._gso:
                size = len(data)
                limit = min(n, i + GSO_MAX_SEGMENTS, i + GSO_MAX_BYTES // max(size, 1))
                while j < limit and datagrams[j][1] == addr and len(datagrams[j][0]) == size:
                    j += 1
                if j < n and j < limit and datagrams[j][1] == addr and len(datagrams[j][0]) < size:
                    j += 1
            if j - i > 1:
                out.append((b"".join(d for d, _ in datagrams[i:j]), addr, len(data)))
            else:
                out.append((data, addr, 0))
            i = j
        return out

    def _try_send(self, data: bytes, addr: Any, segment: int = 0, retry: bool = True) -> bool:
        """One (GSO) write; False when the socket buffer is full."""
        sock = self._sock
        dest = None if self._connected_peer is not None else addr
        try:
            if segment:
                cmsg = [(SOL_UDP, UDP_SEGMENT, segment.to_bytes(2, sys.byteorder))]
                if dest is None:
                    sock.sendmsg([data], cmsg)
                else:
                    sock.sendmsg([data], cmsg, 0, dest)
            elif dest is None:
                sock.send(data)
            else:
                sock.sendto(data, dest)
        except BlockingIOError:
            return False
        except OSError as exc:
            if segment and exc.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT):
                # No GSO here (old kernel, no checksum offload): send one by one.
                self._gso = False
                for k in range(0, len(data), segment):
                    if not self._try_send(data[k : k + segment], addr):
                        self._backlog.append((data[k:], addr, segment))
                        self._backlog_ready.set()
                        return True
                return True
            if exc.errno == errno.EMSGSIZE:
                if segment:
                    # A batch with a segment too big for the path: send it packet by
                    # packet, so that smaller ones still go and each refusal is reported.
                    for k in range(0, len(data), segment):
                        if not self._try_send(data[k : k + segment], addr):
                            self._backlog.append((data[k:], addr, segment))
                            self._backlog_ready.set()
                            break
                    return True
                self.too_big_errors += 1
                limit = self._path_payload_limit()
                if retry and limit is not None and len(data) <= limit:
                    # A connected socket reports an ICMP "too big" for an earlier, larger
                    # datagram on the next send, whatever its size: this one fits.
                    self._too_big.append(limit + 1)
                    return self._try_send(data, addr, retry=False)
                self._too_big.append(len(data))
            # EMSGSIZE, ECONNREFUSED, ENETUNREACH...: QUIC treats it as loss.
            self.send_errors += 1
            if exc.errno in (errno.EMSGSIZE, errno.ECONNREFUSED):
                # Expected: path MTU discovery's probes; a peer that went away (ICMP).
                log.debug("udp send of %d bytes to %s failed: %s", len(data), addr, exc)
            else:
                self._report_send_error(exc, addr)
        self.datagrams_sent += 1
        return True

    def _path_payload_limit(self) -> int | None:
        """The largest UDP payload the kernel's path MTU for a connected socket allows."""
        if self._connected_peer is None:
            return None
        sock = self._sock
        ipv6 = sock.family == socket.AF_INET6
        try:
            mtu = sock.getsockopt(
                socket.IPPROTO_IPV6 if ipv6 else socket.IPPROTO_IP, IPV6_MTU if ipv6 else IP_MTU
            )
        except OSError:
            return None
        return int(mtu) - (48 if ipv6 else 28)

    def _report_send_error(self, exc: OSError, addr: Any) -> None:
        """One warning per :data:`SEND_ERROR_LOG_INTERVAL`, with the count since the last."""
        now = time.monotonic()
        if now - self._errors_logged_at < SEND_ERROR_LOG_INTERVAL:
            self._errors_unlogged += 1
            return
        more = (
            f" ({self._errors_unlogged} more since the last report)"
            if self._errors_unlogged
            else ""
        )
        log.warning("udp send to %s failed: %s%s", addr, exc.strerror or exc, more)
        self._errors_logged_at = now
        self._errors_unlogged = 0


def set_dont_fragment(sock: socket.socket) -> None:
    """Set DF on every datagram: path MTU discovery needs the kernel to refuse
    (``EMSGSIZE``) or the path to drop what is too big, never to fragment it."""
    options = [(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)]
    if sock.family == socket.AF_INET6:
        options.append((socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO))
    for level, name, value in options:
        # not Linux, or an IPv6-only socket refusing the IPv4 option
        with contextlib.suppress(OSError):
            sock.setsockopt(level, name, value)


_warned_buffer_cap = False


def set_buffer_sizes(sock: socket.socket, size: int) -> None:
    global _warned_buffer_cap
    for opt, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):
        # SO_RCVBUFFORCE/SO_SNDBUFFORCE pass net.core.*mem_max when privileged.
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, size)
            except OSError:
                continue
        got = sock.getsockopt(socket.SOL_SOCKET, opt)
        # Linux reports twice the requested size when it granted it.
        if got < size and not _warned_buffer_cap:
            _warned_buffer_cap = True
            name = "rmem_max" if opt == socket.SO_RCVBUF else "wmem_max"
            log.warning(
                "kernel capped the UDP socket buffer at %d bytes (asked %d); "
                "raise net.core.%s for fewer drops under load",
                got // 2,
                size,
                name,
            )
