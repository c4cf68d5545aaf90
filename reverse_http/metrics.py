"""Observability: Prometheus metrics, health state, and a tiny HTTP endpoint for both.

Each daemon has its own metric set, built on :class:`DaemonMetrics`:

* :class:`ProxyMetrics`: agents, CONNECT sessions, per-agent QUIC stats, store errors;
* :class:`AgentMetrics`: the agent's own tunnels (opened, active, failed by reason),
  its dials to the destinations, bytes each way, reconnects, connection state and
  the QUIC stats of its one connection;
* :class:`LbMetrics`: CONNECT sessions, route look-ups by result, store errors and the
  dials to the owning proxies.

Every set owns a private :class:`~prometheus_client.CollectorRegistry` (never the
global one) so several daemons can live in one process, as they do in the tests, and
carries the ``process_*`` metrics (memory, CPU, file descriptors, start time; read
from /proc at scrape time, so they cost nothing in between). Every label has a
bounded set of values: time series are a resource Prometheus pays for, and a label
fed from user input (status codes, agent ids) must not grow without limit.

``/metrics`` speaks OpenMetrics to scrapers that ask for it (``Accept:
application/openmetrics-text``, with ``# EOF``) and the Prometheus text format 0.0.4
otherwise; in the latter a counter is one ``*_total`` series, without the ``*_created``
twin prometheus_client adds (Prometheus does not read it there).

:func:`serve_metrics` answers ``/metrics``, ``/healthz`` and ``/readyz`` over plain
HTTP/1.1, one request per connection. It is deliberately small: scrapers and probes
send one short GET and read the answer, so anything unusual is refused quickly.
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Callable, Iterable, Iterator

import h11
import prometheus_client
import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics import exposition as openmetrics

from .accepting import accept_forever
from .buildinfo import build_info
from .errors import ConfigError
from .netaddr import format_address

log = logging.getLogger(__name__)

PREFIX = "reverse_http_"

#: Every value ``agent_disconnects_total{reason}`` can take.
DISCONNECT_REASONS = frozenset(
    {"closed", "replaced", "liveness", "idle_timeout", "auth_failed", "shutdown", "error"}
)
#: Status codes the session code answers with; anything else is counted as "other".
SESSION_STATUSES = frozenset({200, 400, 403, 405, 407, 408, 431, 502, 503, 504})
#: Every value ``store_errors_total{op}`` can take on a proxy (route registrations).
STORE_OPS = frozenset({"set", "refresh", "delete"})
#: Every value ``store_errors_total{op}`` can take on an LB server: route look-ups,
#: reclaiming foreign entries, and the health probe.
LB_STORE_OPS = frozenset({"get", "reclaim", "ping"})
#: Every value ``store_errors_total{kind}`` can take: the store did not answer, or the
#: agent id cannot be a store key (nothing was sent).
STORE_ERROR_KINDS = frozenset({"unavailable", "invalid_key"})
#: Every value ``lb_route_lookups_total{result}`` can take.
ROUTE_LOOKUP_RESULTS = frozenset({"found", "missing", "malformed", "not_allowed", "store_error"})
#: Every value ``lb_routes_refused_total{reason}`` can take: a route value that is no
#: address, or one naming a proxy outside ``--http-connector.allowed-proxies``.
ROUTE_REFUSALS = frozenset({"malformed", "not_allowed"})
#: Every value ``lb_routes_reclaimed_total{action}`` can take (see ``RouteStore.reclaim``).
ROUTE_RECLAIMS = frozenset({"delete", "lease", "unlease"})
#: Every value ``agent_sessions_failed_total{reason}`` can take: why the agent did not
#: open a tunnel the proxy asked for (see agent/tunnel.py).
AGENT_FAILURES = frozenset(
    {"not_allowed", "refused", "timeout", "dns", "unreachable", "bad_request", "error"}
)
#: The states ``agent_connection_state{state}`` reports (exactly one is 1).
AGENT_STATES = ("connecting", "connected", "backoff")
#: Label value that aggregates agents beyond ``max_agent_labels``.
OTHER_AGENT = "_other"

# Close codes and reasons the proxy and agent use on the QUIC connection (see
# proxy/agents.py, proxy/server.py, agent/client.py). Repeated here rather than
# imported so that this module stays importable from anywhere without cycles;
# tests/test_metrics.py checks they still agree.
_CODE_REPLACED = 409
_CODE_AUTH_FAILURE = 500
_CODE_EMPTY_AGENT_ID = 400
_REASON_SHUTDOWN = "proxy server shutdown"

#: Connection setup from 0.5 ms (loopback) to 10 s (a far, lossy agent).
SETUP_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
#: TCP dials (agent -> destination, LB -> proxy): loopback to a far, slow host.
DIAL_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip

_OPENMETRICS = "application/openmetrics-text"
#: Families whose ``*_created`` samples the 0.0.4 text format would print as a gauge.
_CREATED_TYPES = frozenset({"counter", "histogram", "summary", "gaugehistogram"})


def wants_openmetrics(accept: str) -> bool:
    """Whether an ``Accept`` header asks for OpenMetrics (with a q above 0)."""
    for item in accept.split(","):
        media, *params = (p.strip() for p in item.split(";"))
        if media.lower() != _OPENMETRICS:
            continue
        q = next((p[2:] for p in params if p.lower().startswith("q=")), "1")
        try:
            if float(q) > 0:
                return True
        except ValueError:
            continue
    return False


class _WithoutCreated:
    """A registry's families minus the ``*_created`` samples, for the 0.0.4 text format."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            if family.type in _CREATED_TYPES:
                created = family.name + "_created"
                family.samples = [s for s in family.samples if s.name != created]
            yield family


class _BuildInfoCollector:
    """``build_info``, looked up at the first scrape: in a git checkout that runs
    ``git log`` (~30 ms), which a daemon need not wait for before it listens."""

    NAME = PREFIX + "build_info"
    HELP = "Always 1; the labels say which build runs (as version -V shows it)."

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self.NAME, self.HELP, labels=["version", "commit"])

    def collect(self) -> Iterator[Metric]:
        build = build_info()
        family = GaugeMetricFamily(self.NAME, self.HELP, labels=["version", "commit"])
        family.add_metric([build.version, build.commit], 1)
        yield family


class DaemonMetrics:
    """A private registry with the ``process_*`` metrics, and its exposition."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        self.registry.register(_BuildInfoCollector())

    def exposition(self) -> bytes:
        """The registry in Prometheus text format 0.0.4 (no ``*_created`` series)."""
        return prometheus_client.generate_latest(_WithoutCreated(self.registry))

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """(body, content type) for a scrape that sent ``accept``: OpenMetrics or 0.0.4."""
        if wants_openmetrics(accept):
            body = openmetrics.generate_latest(self.registry)  # type: ignore[no-untyped-call]
            return body, openmetrics.CONTENT_TYPE_LATEST
        return self.exposition(), prometheus_client.CONTENT_TYPE_LATEST


class SessionMetrics(DaemonMetrics):
    """Client CONNECT sessions, as the proxy and the LB server both serve them."""

    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.sessions_active = Gauge(
            PREFIX + "connect_sessions_active", "CONNECT sessions in progress.", registry=r
        )
        self.sessions_total = Counter(
            PREFIX + "connect_sessions_total",
            "CONNECT sessions finished, by the HTTP status answered.",
            ["status"],
            registry=r,
        )
        self.relay_bytes = Counter(
            PREFIX + "relay_bytes_total",
            "Bytes relayed; up = client to target, down = target to client.",
            ["direction"],
            registry=r,
        )
        self.connect_setup = Histogram(
            PREFIX + "connect_setup_seconds",
            "From the CONNECT request to the 200 answer (upstream stream opened).",
            buckets=SETUP_BUCKETS,
            registry=r,
        )
        for direction in ("up", "down"):
            self.relay_bytes.labels(direction)
        self._active = 0

    def session_started(self) -> None:
        """A client connection was accepted (pair with :meth:`session_finished`)."""
        self._active += 1
        self.sessions_active.set(self._active)

    def session_finished(
        self, status: int, up: int, down: int, setup_seconds: float | None
    ) -> None:
        """A session ended with HTTP ``status`` (0: none sent) after relaying the bytes.

        ``setup_seconds`` is None when no tunnel was set up (nothing to observe).
        """
        self._active = max(0, self._active - 1)
        self.sessions_active.set(self._active)
        label = str(status) if status in SESSION_STATUSES else "other"
        self.sessions_total.labels(label).inc()
        if up > 0:
            self.relay_bytes.labels("up").inc(up)
        if down > 0:
            self.relay_bytes.labels("down").inc(down)
        if setup_seconds is not None and setup_seconds >= 0:
            self.connect_setup.observe(setup_seconds)


def _store_errors(registry: CollectorRegistry, ops: Iterable[str]) -> Counter:
    counter = Counter(
        PREFIX + "store_errors_total",
        "Failed route store operations, by operation and kind of failure.",
        ["op", "kind"],
        registry=registry,
    )
    for op in sorted(ops):
        for kind in sorted(STORE_ERROR_KINDS):
            counter.labels(op, kind)
    return counter


class _AgentQuicCollector:
    """The proxy's per-agent QUIC series, built at scrape time from the last stats."""

    def __init__(self, owner: ProxyMetrics) -> None:
        self._owner = owner

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        return iter(self._families())

    def _families(self) -> list[Metric]:
        o = self._owner
        rtt = GaugeMetricFamily(
            PREFIX + "quic_rtt_seconds", "Smoothed RTT of an agent connection.", labels=["agent"]
        )
        cwnd = GaugeMetricFamily(
            PREFIX + "quic_congestion_window_bytes",
            "Congestion window of an agent connection.",
            labels=["agent"],
        )
        lost = CounterMetricFamily(
            PREFIX + "quic_lost_packets",
            "Packets declared lost on an agent's connection (a new connection starts at 0).",
            labels=["agent"],
        )
        for agent_id, (r, c, lo) in o._named.items():
            rtt.add_metric([agent_id], r)
            cwnd.add_metric([agent_id], c)
            lost.add_metric([agent_id], lo)
        if o._overflow:
            rtts = [v[0] for v in o._overflow.values()]
            rtt.add_metric([OTHER_AGENT], sum(rtts) / len(rtts))
            cwnd.add_metric([OTHER_AGENT], sum(v[1] for v in o._overflow.values()))
            lost.add_metric([OTHER_AGENT], o._other_lost)
        return [rtt, cwnd, lost]


class ProxyMetrics(SessionMetrics):
    """The proxy's metric set.

    Per-agent QUIC series carry an ``agent`` label for at most ``max_agent_labels``
    agents at once; further agents are folded into ``agent="_other"`` (mean RTT,
    summed congestion window, lost packets counted from the time they joined it) so a
    fleet of thousands of agents costs a bounded number of series.
    """

    def __init__(self, *, max_agent_labels: int = 100) -> None:
        if max_agent_labels < 0:
            raise ValueError("max_agent_labels must be >= 0")
        super().__init__()
        self.max_agent_labels = max_agent_labels
        r = self.registry
        self.agents_connected = Gauge(
            PREFIX + "agents_connected", "Agents connected right now.", registry=r
        )
        self.agent_connects = Counter(
            PREFIX + "agent_connects_total", "Agent connections accepted.", registry=r
        )
        self.agent_disconnects = Counter(
            PREFIX + "agent_disconnects_total",
            "Agent connections ended, by reason.",
            ["reason"],
            registry=r,
        )
        self.agent_replacements = Counter(
            PREFIX + "agent_replacements_total",
            "Agent connections closed because a connection with the same agent id "
            "authenticated (409): a reconnect, or two agents sharing one id.",
            registry=r,
        )
        self.store_errors = _store_errors(r, STORE_OPS)
        for reason in sorted(DISCONNECT_REASONS):
            self.agent_disconnects.labels(reason)
        self._connected = 0
        #: Agents that have their own label value, with their last (rtt, cwnd, lost).
        self._named: dict[str, tuple[float, float, float]] = {}
        #: Agents folded into "_other", with their last (rtt, cwnd, lost), oldest first.
        self._overflow: dict[str, tuple[float, float, float]] = {}
        #: Losses counted into "_other" (a counter: never decreases while it exists).
        self._other_lost = 0.0
        r.register(_AgentQuicCollector(self))

    # --- agents -------------------------------------------------------------------

    @staticmethod
    def disconnect_reason(kind: str, error_code: int, by_peer: bool, reason: str) -> str:
        """Map a QUIC ``CloseInfo`` (kind, error_code, by_peer, reason) to a bounded label.

        ``kind`` may also be one of the labels itself, for call sites that know better
        (e.g. a shutdown that cancels before any close frame). Unknown cases are
        "error" so the label set never grows.
        """
        label = kind.replace("-", "_")
        if label in DISCONNECT_REASONS:
            return label
        if kind in ("liveness", "handshake-timeout"):
            return "liveness"
        if kind == "application":
            if error_code == _CODE_REPLACED:
                return "replaced"
            if error_code in (_CODE_AUTH_FAILURE, _CODE_EMPTY_AGENT_ID):
                return "auth_failed"
            if error_code == 0:
                return "shutdown" if reason == _REASON_SHUTDOWN else "closed"
            return "error"
        if kind == "transport" and error_code == 0:
            # NO_ERROR in a transport CONNECTION_CLOSE: an orderly close by the stack.
            return "closed"
        return "error"

    def agent_connected(self, agent_id: str) -> None:
        """An agent authenticated and registered (call once per connection)."""
        self._connected += 1
        self.agents_connected.set(self._connected)
        self.agent_connects.inc()

    def agents_registered(self, count: int) -> None:
        """The registry's own count of agents (one per id). Connection events alone can
        over-count: an agent that gave up on a slow handshake and reconnected may have
        two connections authenticated here for a while."""
        self._connected = count
        self.agents_connected.set(count)

    def agent_disconnected(self, agent_id: str, reason_label: str) -> None:
        """A connection from ``agent_id`` ended; ``reason_label`` from :meth:`disconnect_reason`.

        "auth_failed" connections never counted as connected, so the gauge is left
        alone for them. "replaced" keeps the agent's QUIC series: the same id is still
        connected over the newer connection, which keeps updating them.
        """
        if reason_label not in DISCONNECT_REASONS:
            reason_label = "error"
        self.agent_disconnects.labels(reason_label).inc()
        if reason_label == "replaced":
            self.agent_replacements.inc()
        if reason_label != "auth_failed":
            self._connected = max(0, self._connected - 1)
            self.agents_connected.set(self._connected)
        if reason_label != "replaced":
            self.forget_agent(agent_id)

    def update_quic(self, agent_id: str, rtt: float, cwnd: float, lost: float) -> None:
        """Record the current QUIC stats of the connection from ``agent_id``.

        ``lost`` is the connection's count so far; a smaller one than last time means a
        new connection, whose losses start from zero.
        """
        if agent_id in self._named or (
            agent_id not in self._overflow
            and agent_id != OTHER_AGENT
            and len(self._named) < self.max_agent_labels
        ):
            self._named[agent_id] = (rtt, cwnd, lost)
        else:
            old = self._overflow.pop(agent_id, None)
            seen = old[2] if old is not None and lost >= old[2] else 0.0
            self._other_lost += lost - seen
            self._overflow[agent_id] = (rtt, cwnd, lost)

    def forget_agent(self, agent_id: str) -> None:
        """Remove the agent's QUIC series (or its share of "_other"); idempotent.

        A freed label slot goes to the longest-waiting agent in "_other", so named
        series stay as useful as the bound allows.
        """
        if self._named.pop(agent_id, None) is not None:
            promoted = next(iter(self._overflow), None)
            if promoted is not None:
                self._named[promoted] = self._overflow.pop(promoted)
        else:
            self._overflow.pop(agent_id, None)
        if not self._overflow:
            self._other_lost = 0.0

    # --- store --------------------------------------------------------------------

    def store_error(self, op: str = "set", kind: str = "unavailable") -> None:
        """A route store operation failed; the caller logs the details.

        Unknown values are counted under the defaults, so the label set stays fixed.
        """
        self.store_errors.labels(
            op if op in STORE_OPS else "set", kind if kind in STORE_ERROR_KINDS else "unavailable"
        ).inc()


class LbMetrics(SessionMetrics):
    """The LB server's metric set: sessions, route look-ups, store, dials to proxies."""

    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.route_lookups = Counter(
            PREFIX + "lb_route_lookups_total",
            "Route look-ups for a CONNECT, by result.",
            ["result"],
            registry=r,
        )
        self.store_errors = _store_errors(r, LB_STORE_OPS)
        self.routes_refused = Counter(
            PREFIX + "lb_routes_refused_total",
            "Routes read from the store that the LB server would not dial, by reason.",
            ["reason"],
            registry=r,
        )
        self.routes_reclaimed = Counter(
            PREFIX + "lb_routes_reclaimed_total",
            "Foreign route entries the LB server deleted, leased or unleased.",
            ["action"],
            registry=r,
        )
        self.upstream_dial = Histogram(
            PREFIX + "lb_upstream_dial_seconds",
            "Connecting to the owning proxy (TCP, and TLS with --http-connector.tls.enable).",
            buckets=DIAL_BUCKETS,
            registry=r,
        )
        for result in sorted(ROUTE_LOOKUP_RESULTS):
            self.route_lookups.labels(result)
        for reason in sorted(ROUTE_REFUSALS):
            self.routes_refused.labels(reason)
        for action in sorted(ROUTE_RECLAIMS):
            self.routes_reclaimed.labels(action)

    def route_lookup(self, result: str) -> None:
        """A CONNECT looked its agent's route up (``result`` in ROUTE_LOOKUP_RESULTS)."""
        if result in ROUTE_LOOKUP_RESULTS:
            self.route_lookups.labels(result).inc()

    def store_error(self, op: str = "get", kind: str = "unavailable") -> None:
        """A store operation failed (default: a route look-up the store did not answer)."""
        self.store_errors.labels(
            op if op in LB_STORE_OPS else "get",
            kind if kind in STORE_ERROR_KINDS else "unavailable",
        ).inc()

    def route_refused(self, reason: str) -> None:
        """The LB server read a route it will not dial (``reason`` in ROUTE_REFUSALS)."""
        self.routes_refused.labels(reason if reason in ROUTE_REFUSALS else "malformed").inc()

    def route_reclaimed(self, action: str) -> None:
        """The LB server changed a foreign route entry (``action`` in ROUTE_RECLAIMS)."""
        if action in ROUTE_RECLAIMS:
            self.routes_reclaimed.labels(action).inc()

    def upstream_dialled(self, seconds: float) -> None:
        """A connection to a proxy was set up in ``seconds``."""
        self.upstream_dial.observe(seconds)


#: What the agent reads from its live connection: ``Connection.stats()``, or None.
QuicStats = Callable[[], "dict[str, float] | None"]


class _OwnQuicCollector:
    """The agent's QUIC series, read from its connection at scrape time."""

    def __init__(self, owner: AgentMetrics) -> None:
        self._owner = owner

    def describe(self) -> Iterator[Metric]:
        return iter(self._families(None))

    def collect(self) -> Iterator[Metric]:
        try:
            stats = self._owner.quic_stats() if self._owner.quic_stats is not None else None
        except Exception:  # a connection going away mid-scrape: report no connection
            stats = None
        return iter(self._families(stats))

    def _families(self, stats: dict[str, float] | None) -> list[Metric]:
        o = self._owner
        rtt = GaugeMetricFamily(
            PREFIX + "quic_rtt_seconds", "Smoothed RTT of the connection to the proxy."
        )
        cwnd = GaugeMetricFamily(
            PREFIX + "quic_congestion_window_bytes",
            "Congestion window of the connection to the proxy.",
        )
        lost = CounterMetricFamily(
            PREFIX + "quic_lost_packets",
            "Packets declared lost on the connections to the proxy, all of them.",
        )
        size = GaugeMetricFamily(
            PREFIX + "quic_datagram_size_bytes",
            "UDP payload size the connection to the proxy uses (found by path MTU discovery).",
        )
        current = 0.0
        if stats is not None:
            rtt.add_metric([], stats.get("rtt_seconds", 0.0))
            cwnd.add_metric([], stats.get("congestion_window_bytes", 0.0))
            size.add_metric([], stats.get("datagram_size_bytes", 0.0))
            current = stats.get("lost_packets", 0.0)
        lost.add_metric([], o._lost_before + current)
        return [rtt, cwnd, lost, size]


class AgentMetrics(DaemonMetrics):
    """The agent's metric set: its tunnels, dials, bytes, connection and QUIC stats.

    Directions as on the proxy: up = proxy (client) to destination, down = back.
    """

    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.sessions_opened = Counter(
            PREFIX + "agent_sessions_opened_total",
            "Tunnel streams the proxy opened to this agent.",
            registry=r,
        )
        self.sessions_active = Gauge(
            PREFIX + "agent_sessions_active", "Tunnels in progress.", registry=r
        )
        self.sessions_failed = Counter(
            PREFIX + "agent_sessions_failed_total",
            "Tunnels the agent could not open, by reason.",
            ["reason"],
            registry=r,
        )
        self.dial = Histogram(
            PREFIX + "agent_dial_seconds",
            "Successful TCP dials to a destination.",
            buckets=DIAL_BUCKETS,
            registry=r,
        )
        self.relay_bytes = Counter(
            PREFIX + "agent_relay_bytes_total",
            "Bytes relayed; up = proxy to destination, down = destination to proxy.",
            ["direction"],
            registry=r,
        )
        self.connects = Counter(
            PREFIX + "agent_connections_total",
            "Connections to the proxy that authenticated.",
            registry=r,
        )
        self.reconnects = Counter(
            PREFIX + "agent_reconnects_total",
            "Connection attempts after the first one (after a failure or a lost connection).",
            registry=r,
        )
        self.replaced = Counter(
            PREFIX + "agent_replaced_total",
            "Connections the proxy closed because another agent with the same id connected.",
            registry=r,
        )
        self.state = Gauge(
            PREFIX + "agent_connection_state",
            "The agent's connection to the proxy: 1 for the current state.",
            ["state"],
            registry=r,
        )
        for reason in sorted(AGENT_FAILURES):
            self.sessions_failed.labels(reason)
        for direction in ("up", "down"):
            self.relay_bytes.labels(direction)
        self.set_state("connecting")
        self._active = 0
        self._attempts = 0
        #: Reads the live connection's stats at scrape time (the agent sets it).
        self.quic_stats: QuicStats | None = None
        #: Losses of the connections that ended, so the counter never goes back.
        self._lost_before = 0.0
        r.register(_OwnQuicCollector(self))

    def set_state(self, state: str) -> None:
        for name in AGENT_STATES:
            self.state.labels(name).set(1 if name == state else 0)

    def attempt(self) -> None:
        """A connection attempt starts (every one after the first is a reconnect)."""
        self._attempts += 1
        if self._attempts > 1:
            self.reconnects.inc()
        self.set_state("connecting")

    def connected(self, stats: QuicStats) -> None:
        """Authenticated; ``stats`` reads the connection's QUIC stats."""
        self.connects.inc()
        self.quic_stats = stats
        self.set_state("connected")

    def disconnected(self, final: dict[str, float] | None) -> None:
        """The connection ended (``final``: its last stats); the agent waits to retry."""
        if final is not None:
            self._lost_before += final.get("lost_packets", 0.0)
        self.quic_stats = None
        self.set_state("backoff")

    def was_replaced(self) -> None:
        """The proxy closed our connection for another one with our agent id (409)."""
        self.replaced.inc()

    def session_started(self) -> None:
        self.sessions_opened.inc()
        self._active += 1
        self.sessions_active.set(self._active)

    def session_finished(self, failure: str | None, up: int = 0, down: int = 0) -> None:
        """A tunnel ended; ``failure`` (in AGENT_FAILURES) when it never opened."""
        self._active = max(0, self._active - 1)
        self.sessions_active.set(self._active)
        if failure is not None:
            self.sessions_failed.labels(failure if failure in AGENT_FAILURES else "error").inc()
        if up > 0:
            self.relay_bytes.labels("up").inc(up)
        if down > 0:
            self.relay_bytes.labels("down").inc(down)

    def dialled(self, seconds: float) -> None:
        self.dial.observe(seconds)


class Health:
    """Liveness and readiness, as probes see them on ``/healthz`` and ``/readyz``.

    Alive means the process runs its event loop (it answered at all). Ready means
    every registered check passes, e.g. "listeners bound" or "store reachable"; a
    check that raises counts as failing rather than breaking the probe.
    """

    def __init__(self) -> None:
        self._checks: dict[str, Callable[[], bool]] = {}

    @property
    def alive(self) -> bool:
        return True

    def add_check(self, name: str, fn: Callable[[], bool]) -> None:
        """Register (or replace) the readiness check called ``name``."""
        self._checks[name] = fn

    def remove_check(self, name: str) -> None:
        self._checks.pop(name, None)

    def status(self) -> tuple[bool, dict[str, bool]]:
        """(ready, {check name: passed}); with no checks the daemon is ready."""
        results: dict[str, bool] = {}
        for name, fn in list(self._checks.items()):
            try:
                results[name] = bool(fn())
            except Exception:
                log.warning("readiness check %s raised", name, exc_info=True)
                results[name] = False
        return all(results.values()), results


# --- HTTP endpoint -------------------------------------------------------------------

#: Time a client gets to send its request head; scrapers send it at once.
HEAD_TIMEOUT = 5.0
#: Time to write the answer to a slow reader before giving up on it.
SEND_TIMEOUT = 10.0
MAX_HEAD = 8 * 1024

_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}
_TEXT = "text/plain; charset=utf-8"


async def serve_metrics(
    host: str,
    port: int,
    metrics: DaemonMetrics,
    health: Health,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` until cancelled.

    ``host`` "" means every address. Reports the bound port (useful with port 0)
    through ``task_status``; a bind failure is a :class:`ConfigError` naming the flag.
    """
    try:
        listeners = await trio.open_tcp_listeners(port, host=host or None)
    except OSError as exc:
        where = format_address((host, port))
        raise ConfigError(f"--metrics.listen-address {where}: {_os_reason(exc)}") from None
    bound = int(listeners[0].socket.getsockname()[1])
    log.info("metrics and health on %s", format_address((host, bound)))
    try:
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(
                    accept_forever,
                    listener,
                    nursery,
                    functools.partial(_connection, metrics=metrics, health=health),
                    "metrics",
                )
            task_status.started(bound)
    finally:
        with trio.CancelScope(shield=True):
            for listener in listeners:
                await listener.aclose()


async def _connection(stream: trio.SocketStream, metrics: DaemonMetrics, health: Health) -> None:
    """One request, one answer, close; whatever goes wrong stays in this task."""
    try:
        async with stream:
            response = await _read_and_route(stream, metrics, health)
            if response is not None:
                with trio.move_on_after(SEND_TIMEOUT):
                    await stream.send_all(response)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass  # the client went away; nothing to tell it
    except Exception:
        log.exception("metrics endpoint: unexpected error on one connection")


async def _read_and_route(
    stream: trio.SocketStream, metrics: DaemonMetrics, health: Health
) -> bytes | None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    request: h11.Request | None = None
    received = 0
    try:
        with trio.move_on_after(HEAD_TIMEOUT) as timer:
            while request is None:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(MAX_HEAD)
                    if not data:
                        return None  # closed before (or in the middle of) a request
                    received += len(data)
                    conn.receive_data(data)
                elif isinstance(event, h11.Request):
                    request = event
                else:
                    return None  # ConnectionClosed and the like: nobody to answer
    except h11.RemoteProtocolError as exc:
        status = exc.error_status_hint if exc.error_status_hint in _REASONS else 400
        return _response(status, f"{_REASONS[status].decode()}\n", head_only=False)
    if timer.cancelled_caught or request is None:
        return _response(408, "request timeout\n", head_only=False)
    # h11 only limits a head still incomplete; one that arrived whole is measured here.
    if received - len(conn.trailing_data[0]) > MAX_HEAD:
        return _response(431, "request head too large\n", head_only=False)
    method = request.method.decode("ascii", "replace")
    path = request.target.decode("ascii", "replace").split("?", 1)[0]
    accept = b",".join(v for k, v in request.headers if k == b"accept").decode("latin-1")
    return _route(method, path, metrics, health, accept)


def _route(method: str, path: str, metrics: DaemonMetrics, health: Health, accept: str) -> bytes:
    """Known paths first (404 otherwise), then the method (405 unless GET or HEAD)."""
    if path not in ("/metrics", "/healthz", "/readyz"):
        return _response(404, "not found\n", head_only=method == "HEAD")
    if method not in ("GET", "HEAD"):
        return _response(
            405, "method not allowed\n", head_only=False, extra=[("Allow", "GET, HEAD")]
        )
    head_only = method == "HEAD"
    if path == "/metrics":
        try:
            exposition, content_type = metrics.render(accept)
        except Exception:
            log.exception("metrics endpoint: collecting the metrics failed")
            return _response(500, "collecting the metrics failed\n", head_only)
        return _response(200, exposition, head_only, content_type=content_type)
    if path == "/healthz":
        return _response(200, "ok\n", head_only)
    ready, checks = health.status()
    if ready:
        return _response(200, "ready\n", head_only)
    failing = "".join(f"failing: {name}\n" for name, ok in checks.items() if not ok)
    return _response(503, "not ready\n" + failing, head_only)


def _response(
    status: int,
    body: str | bytes,
    head_only: bool,
    *,
    content_type: str = _TEXT,
    extra: list[tuple[str, str]] | None = None,
) -> bytes:
    payload = body.encode("utf-8") if isinstance(body, str) else body
    headers = [
        ("Content-Type", content_type),
        ("Content-Length", str(len(payload))),
        ("Cache-Control", "no-store"),
        ("Connection", "close"),
        *(extra or []),
    ]
    head = f"HTTP/1.1 {status} ".encode() + _REASONS[status] + b"\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers).encode("latin-1") + b"\r\n"
    return head if head_only else head + payload


def _os_reason(exc: OSError) -> str:
    """The same wording as the other listeners (frontend.os_reason), without importing it."""
    if exc.errno == errno.EADDRINUSE:
        return "address already in use"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    return exc.strerror or str(exc)
