"""Observability: Prometheus metrics, health state, and a tiny HTTP endpoint for both.

:class:`Metrics` owns a private :class:`~prometheus_client.CollectorRegistry` (never the
global one) so several daemons can live in one process, as they do in the tests.
Every label has a bounded set of values: time series are a resource Prometheus pays
for, and a label fed from user input (status codes, agent ids) must not grow
without limit.

:func:`serve_metrics` answers ``/metrics``, ``/healthz`` and ``/readyz`` over plain
HTTP/1.1, one request per connection. It is deliberately small: scrapers and probes
send one short GET and read the answer, so anything unusual is refused quickly.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
from collections.abc import Callable

import h11
import prometheus_client
import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .accepting import accept_forever
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
#: Every value ``store_errors_total{op}`` can take (route store operations).
STORE_OPS = frozenset({"get", "set", "refresh", "delete"})
#: Every value ``store_errors_total{kind}`` can take: the store did not answer, or the
#: agent id cannot be a store key (nothing was sent).
STORE_ERROR_KINDS = frozenset({"unavailable", "invalid_key"})
#: Every value ``lb_routes_refused_total{reason}`` can take: a route value that is no
#: address, or one naming a proxy outside ``--http-connector.allowed-proxies``.
ROUTE_REFUSALS = frozenset({"malformed", "not_allowed"})
#: Every value ``lb_routes_reclaimed_total{action}`` can take (see ``RouteStore.reclaim``).
ROUTE_RECLAIMS = frozenset({"delete", "lease", "unlease"})
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


class Metrics:
    """The metric families of one daemon, and the methods its call sites use.

    Per-agent QUIC gauges carry an ``agent`` label for at most ``max_agent_labels``
    agents at once; further agents are folded into ``agent="_other"`` (mean RTT,
    summed congestion window and lost packets) so a fleet of thousands of agents
    costs a bounded number of series.
    """

    def __init__(self, *, max_agent_labels: int = 100) -> None:
        if max_agent_labels < 0:
            raise ValueError("max_agent_labels must be >= 0")
        self.registry = CollectorRegistry(auto_describe=True)
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
        self.quic_rtt = Gauge(
            PREFIX + "quic_rtt_seconds",
            "Smoothed RTT of an agent connection.",
            ["agent"],
            registry=r,
        )
        self.quic_cwnd = Gauge(
            PREFIX + "quic_congestion_window_bytes",
            "Congestion window of an agent connection.",
            ["agent"],
            registry=r,
        )
        self.quic_lost = Gauge(
            PREFIX + "quic_lost_packets",
            "Packets declared lost on an agent connection so far.",
            ["agent"],
            registry=r,
        )
        self.store_errors = Counter(
            PREFIX + "store_errors_total",
            "Failed route store operations, by operation and kind of failure.",
            ["op", "kind"],
            registry=r,
        )
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
        # Pre-create the bounded label values so dashboards see zeros, not gaps.
        for reason in sorted(DISCONNECT_REASONS):
            self.agent_disconnects.labels(reason)
        for direction in ("up", "down"):
            self.relay_bytes.labels(direction)
        for op in sorted(STORE_OPS):
            for kind in sorted(STORE_ERROR_KINDS):
                self.store_errors.labels(op, kind)
        for reason in sorted(ROUTE_REFUSALS):
            self.routes_refused.labels(reason)
        for action in sorted(ROUTE_RECLAIMS):
            self.routes_reclaimed.labels(action)
        self._connected = 0
        self._active = 0
        #: Agents that have their own label value.
        self._named: set[str] = set()
        #: Agents folded into "_other", with their last (rtt, cwnd, lost), oldest first.
        self._overflow: dict[str, tuple[float, float, float]] = {}
        self._other_sums = (0.0, 0.0, 0.0)

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

    def agent_disconnected(self, agent_id: str, reason_label: str) -> None:
        """A connection from ``agent_id`` ended; ``reason_label`` from :meth:`disconnect_reason`.

        "auth_failed" connections never counted as connected, so the gauge is left
        alone for them. "replaced" keeps the agent's QUIC series: the same id is still
        connected over the newer connection, which keeps updating them.
        """
        if reason_label not in DISCONNECT_REASONS:
            reason_label = "error"
        self.agent_disconnects.labels(reason_label).inc()
        if reason_label != "auth_failed":
            self._connected = max(0, self._connected - 1)
            self.agents_connected.set(self._connected)
        if reason_label != "replaced":
            self.forget_agent(agent_id)

    def update_quic(self, agent_id: str, rtt: float, cwnd: float, lost: float) -> None:
        """Record the current QUIC stats of the connection from ``agent_id``."""
        if agent_id in self._named:
            self._set_named(agent_id, rtt, cwnd, lost)
        elif (
            agent_id not in self._overflow
            and agent_id != OTHER_AGENT
            and len(self._named) < self.max_agent_labels
        ):
            self._named.add(agent_id)
            self._set_named(agent_id, rtt, cwnd, lost)
        else:
            self._drop_overflow(agent_id)
            self._overflow[agent_id] = (rtt, cwnd, lost)
            s_rtt, s_cwnd, s_lost = self._other_sums
            self._other_sums = (s_rtt + rtt, s_cwnd + cwnd, s_lost + lost)
            self._refresh_other()

    def forget_agent(self, agent_id: str) -> None:
        """Remove the agent's QUIC series (or its share of "_other"); idempotent.

        A freed label slot goes to the longest-waiting agent in "_other", so named
        series stay as useful as the bound allows.
        """
        if agent_id in self._named:
            self._named.discard(agent_id)
            for gauge in (self.quic_rtt, self.quic_cwnd, self.quic_lost):
                _remove(gauge, agent_id)
            promoted = next((a for a in self._overflow if a != OTHER_AGENT), None)
            if promoted is not None:
                values = self._overflow[promoted]
                self._drop_overflow(promoted)
                self._named.add(promoted)
                self._set_named(promoted, *values)
                self._refresh_other()
        elif agent_id in self._overflow:
            self._drop_overflow(agent_id)
            self._refresh_other()

    def _set_named(self, agent_id: str, rtt: float, cwnd: float, lost: float) -> None:
        self.quic_rtt.labels(agent_id).set(rtt)
        self.quic_cwnd.labels(agent_id).set(cwnd)
        self.quic_lost.labels(agent_id).set(lost)

    def _drop_overflow(self, agent_id: str) -> None:
        old = self._overflow.pop(agent_id, None)
        if old is not None:
            s = self._other_sums
            self._other_sums = (s[0] - old[0], s[1] - old[1], s[2] - old[2])

    def _refresh_other(self) -> None:
        if not self._overflow:
            # Running sums would keep float residue; start clean next time.
            self._other_sums = (0.0, 0.0, 0.0)
            for gauge in (self.quic_rtt, self.quic_cwnd, self.quic_lost):
                _remove(gauge, OTHER_AGENT)
            return
        s_rtt, s_cwnd, s_lost = self._other_sums
        self.quic_rtt.labels(OTHER_AGENT).set(s_rtt / len(self._overflow))
        self.quic_cwnd.labels(OTHER_AGENT).set(s_cwnd)
        self.quic_lost.labels(OTHER_AGENT).set(s_lost)

    # --- CONNECT sessions -----------------------------------------------------------

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

    # --- store --------------------------------------------------------------------

    def store_error(self, op: str = "get", kind: str = "unavailable") -> None:
        """A route store operation failed; the caller logs the details.

        The defaults are the LB server's only case: a route lookup the store did not
        answer. Unknown values are counted under the defaults, so the label set stays fixed.
        """
        self.store_errors.labels(
            op if op in STORE_OPS else "get", kind if kind in STORE_ERROR_KINDS else "unavailable"
        ).inc()

    def route_refused(self, reason: str) -> None:
        """The LB server read a route it will not dial (``reason`` in ROUTE_REFUSALS)."""
        self.routes_refused.labels(reason if reason in ROUTE_REFUSALS else "malformed").inc()

    def route_reclaimed(self, action: str) -> None:
        """The LB server changed a foreign route entry (``action`` in ROUTE_RECLAIMS)."""
        if action in ROUTE_RECLAIMS:
            self.routes_reclaimed.labels(action).inc()

    def exposition(self) -> bytes:
        """The registry in Prometheus text format, as ``/metrics`` serves it."""
        return prometheus_client.generate_latest(self.registry)


def _remove(gauge: Gauge, agent: str) -> None:
    with contextlib.suppress(KeyError):
        gauge.remove(agent)


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
    metrics: Metrics,
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


async def _connection(stream: trio.SocketStream, metrics: Metrics, health: Health) -> None:
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
    stream: trio.SocketStream, metrics: Metrics, health: Health
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
    return _route(method, path, metrics, health)


def _route(method: str, path: str, metrics: Metrics, health: Health) -> bytes:
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
            exposition = metrics.exposition()
        except Exception:
            log.exception("metrics endpoint: collecting the metrics failed")
            return _response(500, "collecting the metrics failed\n", head_only)
        return _response(
            200, exposition, head_only, content_type=prometheus_client.CONTENT_TYPE_LATEST
        )
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
