"""Which new connections the agent server takes on (sans-IO: every call gets ``now``).

A handshake costs the server milliseconds of CPU and a connection's memory, a
forged Initial costs its sender one datagram. So, for a new connection's Initial:

- **Retry under load.** While handshakes in progress or the rate of new Initials are
  above a threshold (or always, when configured), a client without a token gets a
  stateless Retry, without its Initial being decrypted: only a client that receives
  at its source address comes back, one round trip later. Below the thresholds
  nobody pays that round trip, and the Initial must decrypt and carry a ClientHello
  (see :mod:`.initial`); so must one with a valid token, when its handshake starts.
- **Tokens** (:class:`RetryTokens`): AES-GCM under a per-process key, bound to the
  client's address and port, the original and the Retry connection IDs, valid 30 s.
- **Limits on handshakes in progress**, per source (an IPv4 address, an IPv6 /64)
  and in total. Beyond them an Initial with a valid token waits in a bounded queue
  (:class:`WaitingRoom`) and is admitted in arrival order as handshakes finish; other
  Initials are dropped and their clients resend. A reconnect storm then costs each
  client one wait, not lost Initials, retransmission backoff and handshake timeouts.
- **Attack logs are summaries**: one WARN per interval with what was dropped and
  sent, never a line per packet.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import struct
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

#: Every reason an Initial for a new connection is dropped (``initials_dropped[reason]``).
DROP_REASONS = (
    "too_small",  # a datagram below 1200 bytes cannot open a connection (RFC 9000 14.1)
    "undecryptable",  # no Initial that decrypts with its DCID's keys, or no ClientHello
    "invalid_token",  # a token we did not issue to this address, or expired
    "source_limit",  # the source has max_pending_per_source handshakes in progress
    "global_limit",  # max_pending_handshakes handshakes in progress
    "busy",  # more new connections in one receive batch than handshakes_per_batch
)

#: Seconds without a new connection's Initial after which a load episode is over.
QUIET_AFTER_LOAD = 5.0
#: Seconds between two releases at least (trimming the heap costs a few milliseconds).
RELEASE_INTERVAL = 10.0


@dataclass(frozen=True)
class AdmissionSettings:
    """Thresholds of :class:`Admission`; the defaults take a fleet of thousands of
    agents reconnecting at once (with Retry) and refuse no ordinary start-up."""

    #: Retry every new connection, whatever the load.
    retry: bool = False
    #: Retry while at least this many handshakes are in progress.
    retry_pending_threshold: int = 16
    #: Retry while new Initials arrive faster than this many per second.
    retry_initial_rate: float = 100.0
    #: Handshakes in progress in total; Initials beyond wait or are dropped. A handshake
    #: costs milliseconds of CPU: too many at once and none finishes in time.
    max_pending_handshakes: int = 128
    #: Handshakes in progress from one source (IPv4 address, IPv6 /64).
    max_pending_per_source: int = 64
    #: Handshakes started per receive batch (new connections after the batch's
    #: established traffic, and waiting clients, also those the admit loop starts for
    #: freed slots); further Initials are dropped and the clients resend them. Each
    #: start is 2-3 ms of CPU, during which the socket is not read: in a reconnect
    #: storm the receive queue, full of retransmitted Initials, then delays and drops
    #: the packets that would finish the handshakes already started.
    handshakes_per_batch: int = 8
    #: At most one attack summary per this many seconds.
    log_interval: float = 10.0
    #: Address-validated Initials (a valid Retry token) waiting for a handshake slot;
    #: beyond this they are dropped ("busy"). About 1.3 KB each.
    max_waiting_handshakes: int = 4096
    #: Seconds an address-validated Initial may wait for a slot; later, its client
    #: (5 s handshake timeouts are common) could not finish a handshake started now.
    max_wait: float = 2.5

    def __post_init__(self) -> None:
        for name in (
            "retry_pending_threshold",
            "max_pending_handshakes",
            "max_pending_per_source",
            "handshakes_per_batch",
            "max_waiting_handshakes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.retry_initial_rate <= 0 or self.log_interval <= 0 or self.max_wait <= 0:
            raise ValueError("retry_initial_rate, log_interval and max_wait must be positive")


def source_key(addr: Any) -> str:
    """What one source is: an IPv4 address, or the /64 of an IPv6 one (a single host
    owns a /64, and picks any address in it)."""
    host = str(addr[0])
    if ":" not in host or host.startswith("::ffff:"):
        return host
    try:
        return str(ipaddress.IPv6Network((host.split("%", 1)[0], 64), strict=False))
    except ValueError:
        return host


class RateMeter:
    """Events per second over the last second (two fixed windows, interpolated)."""

    def __init__(self, now: float, window: float = 1.0) -> None:
        self._window = window
        self._start = now
        self._current = 0
        self._previous = 0

    def _roll(self, now: float) -> None:
        elapsed = now - self._start
        if elapsed < self._window:
            return
        if elapsed < 2 * self._window:
            self._previous, self._current = self._current, 0
            self._start += self._window
        else:
            self._previous = self._current = 0
            self._start = now

    def add(self, now: float) -> None:
        self._roll(now)
        self._current += 1

    def rate(self, now: float) -> float:
        self._roll(now)
        left = 1.0 - (now - self._start) / self._window
        return (self._previous * left + self._current) / self._window


class TokenBucket:
    """At most ``rate`` events per second, bursts of up to ``rate``."""

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self._level = rate
        self._at = now

    def take(self, now: float) -> bool:
        self._level = min(self.rate, self._level + (now - self._at) * self.rate)
        self._at = now
        if self._level < 1:
            return False
        self._level -= 1
        return True


class AttackLog:
    """Counts what floods cause; one WARN per ``interval`` summarises the counts."""

    def __init__(self, interval: float, now: float, logger: logging.Logger = log) -> None:
        self.interval = interval
        self._log = logger
        self._counts: Counter[str] = Counter()
        self._since = now
        self._next = now

    def note(self, what: str, now: float) -> None:
        self._counts[what] += 1
        if now >= self._next:
            self.flush(now)

    def flush(self, now: float) -> None:
        """Log the counts gathered since the last line, if any and if the interval is over."""
        if not self._counts or now < self._next:
            return
        parts = ", ".join(f"{what} {n}" for what, n in sorted(self._counts.items()))
        self._log.warning(
            "agent server under load, last %.1fs: %s", max(now - self._since, 0.0), parts
        )
        self._counts.clear()
        self._since = now
        self._next = now + self.interval


T = TypeVar("T")
#: Seconds a given-up attempt is remembered (a Retry token's lifetime, aioquic's).
GIVEN_UP_MEMORY = 30.0


class WaitingRoom(Generic[T]):
    """Initials waiting for a handshake slot, first come first served, one place per
    connection attempt (keyed by its destination CID, which its retransmissions share).

    A place is given up once it has waited ``max_wait`` seconds: by then its client is
    near its handshake timeout, and a handshake started that late fails and holds a
    slot for nothing (first come first served with no such bound serves only the dead
    once the queue is long). A given-up attempt does not queue again; its client
    dials anew after its timeout.
    """

    def __init__(self, limit: int, max_wait: float, per_source: int) -> None:
        self.limit = limit
        self.max_wait = max_wait
        self.per_source = per_source
        self._places: OrderedDict[bytes, tuple[T, float, str]] = OrderedDict()
        self._sources: Counter[str] = Counter()
        #: Attempts given up, with when (forgotten after a token's lifetime, bounded).
        self._given_up: OrderedDict[bytes, float] = OrderedDict()
        #: Places given up because they waited too long.
        self.expired = 0

    def __len__(self) -> int:
        return len(self._places)

    def __contains__(self, key: bytes) -> bool:
        return key in self._places

    def gave_up(self, key: bytes) -> bool:
        """Whether the attempt ``key`` was given up (its retransmissions are dropped)."""
        return key in self._given_up

    def forget_given_up(self) -> None:
        """A fresh table of given-up attempts (a load episode is over; see
        Admission.forget_episode)."""
        self._given_up = OrderedDict()

    def wait(self, key: bytes, item: T, source: str, now: float) -> bool:
        """Queue ``item`` from ``source`` (or refresh the place ``key`` holds); False when
        the room is full or ``source`` holds ``per_source`` places already."""
        if key in self._places:
            return True
        if key in self._given_up or len(self._places) >= self.limit:
            return False
        if self._sources[source] >= self.per_source:
            return False
        self._places[key] = (item, now, source)
        self._sources[source] += 1
        return True

    def peek(self, now: float) -> T | None:
        """The longest-waiting item still in time (those ahead of it are given up)."""
        self.expire(now)
        places = self._places
        return next(iter(places.values()))[0] if places else None

    def expire(self, now: float) -> None:
        """Give up the places that waited past ``max_wait`` (places are in arrival
        order: they are the first ones), also when no datagram came to admit any:
        the waiting gauge counts clients waiting now."""
        places = self._places
        given_up = self._given_up
        while given_up:
            key, at = next(iter(given_up.items()))
            if now - at < GIVEN_UP_MEMORY and len(given_up) <= self.limit:
                break
            given_up.popitem(last=False)
        while places:
            key, (_, arrived, _) = next(iter(places.items()))
            if now - arrived <= self.max_wait:
                return
            self.pop()
            given_up[key] = now
            self.expired += 1

    def pop(self) -> T:
        """Remove the head (what :meth:`peek` returned)."""
        item, _, source = self._places.popitem(last=False)[1]
        left = self._sources[source] - 1
        if left > 0:
            self._sources[source] = left
        else:
            del self._sources[source]
        return item


class RetryMemory:
    """The Retry sent for each recent first Initial, by its destination CID and address.

    A client retransmits its first Initial while our Retry is on its way (in a storm the
    receive queue delays everything); such a retransmission needs neither decryption
    nor a new token, at most the same Retry again, at most every ``resend_after``
    seconds. Bounded: ``limit`` entries, each forgotten ``ttl`` seconds after its Retry.
    """

    def __init__(self, limit: int = 4096, ttl: float = 5.0, resend_after: float = 0.5) -> None:
        self.limit = limit
        self.ttl = ttl
        self.resend_after = resend_after
        self._sent: OrderedDict[bytes, tuple[Any, bytes, float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sent)

    def clear(self) -> None:
        """Forget every Retry, with a fresh table (an emptied dict keeps its grown one)."""
        self._sent = OrderedDict()

    def remember(self, dcid: bytes, addr: Any, packet: bytes, now: float) -> None:
        """Remember the Retry just sent; a CID remembered again (another address) moves
        to the end, so the table stays in Retry order for :meth:`_prune`, and replaces
        its entry without evicting another."""
        self._prune(now)
        sent = self._sent
        if sent.pop(dcid, None) is None and len(sent) >= self.limit:
            sent.popitem(last=False)
        sent[dcid] = (addr, packet, now, now)

    def recall(self, dcid: bytes, addr: Any, now: float) -> bytes | None:
        """None when no Retry went to this first Initial (from this address) lately; else
        the Retry to send again, or b"" when it went too recently to repeat."""
        self._prune(now)
        entry = self._sent.get(dcid)
        if entry is None or entry[0] != addr:
            return None
        _, packet, first, last = entry
        if now - last < self.resend_after:
            return b""
        self._sent[dcid] = (addr, packet, first, now)
        return packet

    def _prune(self, now: float) -> None:
        sent = self._sent
        while sent and now - next(iter(sent.values()))[2] > self.ttl:
            sent.popitem(last=False)


#: Seconds a Retry token is valid (RFC 9000 8.1.4: clients return it at once).
TOKEN_LIFETIME = 30.0
_NONCE = 12


class RetryTokens:
    """Retry tokens: ``nonce | AES-GCM(issued_ms | original DCID)``, with the client's
    address and the Retry's source CID (the client's next DCID) as associated data, so a
    token opens only from that address, under that CID.

    What aioquic's ``QuicRetryTokenHandler`` does, without its per-token parsing of the
    address with :mod:`ipaddress` and its Buffer building and reading: one token is
    created and one or more validated per client in a reconnect storm, and that handler
    was a tenth of the proxy's CPU in one.
    """

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(AESGCM.generate_key(bit_length=128))

    @staticmethod
    def _bound_to(addr: Any, cid: bytes) -> bytes:
        return b"%s|%d|%s" % (str(addr[0]).encode(), addr[1], cid)

    def create(self, addr: Any, odcid: bytes, retry_scid: bytes, now: float) -> bytes:
        nonce = os.urandom(_NONCE)
        plain = struct.pack("!Q", int(now * 1000)) + odcid
        return nonce + self._aead.encrypt(nonce, plain, self._bound_to(addr, retry_scid))

    def validate(self, addr: Any, dcid: bytes, token: bytes, now: float) -> bytes | None:
        """The original destination CID, or None (not ours, another address or CID,
        expired)."""
        from cryptography.exceptions import InvalidTag

        if len(token) < _NONCE + 8 + 16:
            return None
        try:
            plain = self._aead.decrypt(token[:_NONCE], token[_NONCE:], self._bound_to(addr, dcid))
        except InvalidTag:
            return None
        (issued_ms,) = struct.unpack_from("!Q", plain)
        if now - issued_ms / 1000 > TOKEN_LIFETIME:
            return None
        return plain[8:]


class Admission:
    """The state behind admission decisions: handshakes in progress, per source and in
    total, the rate of new Initials, Retry tokens, and counters of what was refused."""

    def __init__(self, settings: AdmissionSettings, now: float) -> None:
        self.settings = settings
        # cryptography is imported there, not at module level: the settings above are
        # part of the typed CLI config, which must not load it for every command.
        self.tokens = RetryTokens()
        self.pending = 0
        self._per_source: dict[str, int] = {}
        self._initials = RateMeter(now)
        self.log = AttackLog(settings.log_interval, now)
        self.dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.retries_sent = 0
        self.waiting: WaitingRoom[Any] = WaitingRoom(
            settings.max_waiting_handshakes, settings.max_wait, settings.max_pending_per_source
        )
        #: Handshakes started from the waiting room.
        self.admitted_after_wait = 0
        self.recent_retries = RetryMemory()
        #: Retries sent again for a retransmitted first Initial (not counted as sent).
        self.retries_repeated = 0
        self._last_initial = now
        self._settled = True
        self._released_at = -RELEASE_INTERVAL

    def _busy(self, now: float) -> None:
        self._last_initial = now
        self._settled = False

    def load_is_over(self, now: float) -> bool:
        """True once per load episode (a flood, a reconnect storm: new connections'
        Initials, admitted or not), when none came for :data:`QUIET_AFTER_LOAD` seconds,
        no handshake is in progress (a flood's half-open ones end at their handshake
        timeout) and the last release is :data:`RELEASE_INTERVAL` ago: the moment to
        drop what the episode left behind (cached Initial keys, the heap's free pages)."""
        if self._settled or self.pending or now - self._last_initial < QUIET_AFTER_LOAD:
            return False
        if self.waiting.peek(now) is not None:
            return False
        if now - self._released_at < RELEASE_INTERVAL:
            return False
        self._settled = True
        self._released_at = now
        return True

    def forget_episode(self) -> None:
        """Fresh tables for what a load episode filled, once it is over (load_is_over):
        nothing prunes them without new Initials, and an emptied dict keeps its grown
        table. A flood of real Initials left 4096 remembered Retries (~0.4 KiB each, all
        expired by then) resident for good."""
        self.recent_retries.clear()
        self.waiting.forget_given_up()
        self._per_source = dict(self._per_source)

    def initial_seen(self, now: float) -> None:
        """A new connection's Initial decrypted (counted towards the Initial rate)."""
        self._initials.add(now)
        self._busy(now)

    def retry_required(self, now: float) -> bool:
        s = self.settings
        return (
            s.retry
            or self.pending >= s.retry_pending_threshold
            or self._initials.rate(now) > s.retry_initial_rate
        )

    def limit_reached(self, source: str) -> str | None:
        """The drop reason when one more handshake from ``source`` is too many, else None."""
        if self.pending >= self.settings.max_pending_handshakes:
            return "global_limit"
        if self._per_source.get(source, 0) >= self.settings.max_pending_per_source:
            return "source_limit"
        return None

    def started(self, source: str) -> None:
        self.pending += 1
        self._per_source[source] = self._per_source.get(source, 0) + 1

    def finished(self, source: str) -> None:
        """A handshake from ``source`` completed or failed (pairs with :meth:`started`)."""
        self.pending -= 1
        left = self._per_source.get(source, 0) - 1
        if left > 0:
            self._per_source[source] = left
        else:
            self._per_source.pop(source, None)

    def pending_from(self, source: str) -> int:
        return self._per_source.get(source, 0)

    def drop(self, reason: str, now: float) -> None:
        self.dropped[reason] += 1
        self._busy(now)
        self.log.note(f"initials dropped ({reason})", now)

    def retry_sent(self, now: float) -> None:
        self.retries_sent += 1
        self._busy(now)  # also for an Initial answered without decrypting it
        self.log.note("retries sent", now)

    def create_token(self, addr: Any, odcid: bytes, retry_scid: bytes, now: float) -> bytes:
        return self.tokens.create(addr, odcid, retry_scid, now)

    def validate_token(self, addr: Any, dcid: bytes, token: bytes, now: float) -> bytes | None:
        """The original destination CID a valid token was issued for; None when the token
        is not ours, not this address's, not for this CID, or expired."""
        return self.tokens.validate(addr, dcid, token, now)
