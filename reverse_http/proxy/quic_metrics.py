"""The agent server's defences against floods, as Prometheus metrics.

Read from the :class:`~reverse_http.quic.QuicServer`'s counters at scrape time, so
the receive loop pays nothing per dropped datagram. Labels are the fixed
``DROP_REASONS``.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..metrics import PREFIX
from ..quic import QuicServer
from ..quic.admission import DROP_REASONS


class AgentServerCollector:
    """``quic_retries_sent_total``, ``quic_initials_dropped_total{reason}``,
    ``quic_handshakes_pending``, ``quic_handshakes_waiting``,
    ``quic_handshakes_admitted_after_wait_total``, ``quic_handshake_waits_expired_total``,
    ``quic_stateless_resets_sent_total``,
    ``quic_udp_send_errors_total{reason}``, ``quic_memory_releases_total`` and
    ``quic_memory_released_bytes_total``."""

    def __init__(self, server: QuicServer) -> None:
        self._server = server

    def collect(self) -> Iterator[Metric]:
        s = self._server
        yield _counter(
            "quic_retries_sent",
            "Retry packets sent to new agent connections (address validation under load).",
            s.retries_sent,
        )
        dropped = CounterMetricFamily(
            PREFIX + "quic_initials_dropped",
            "Initials of new agent connections dropped without keeping state, by reason.",
            labels=["reason"],
        )
        counts = s.initials_dropped
        for reason in DROP_REASONS:
            dropped.add_metric([reason], counts.get(reason, 0))
        yield dropped
        yield _counter(
            "quic_stateless_resets_sent",
            "Stateless resets sent for packets of connections this proxy does not know.",
            s.resets_sent,
        )
        yield GaugeMetricFamily(
            PREFIX + "quic_handshakes_pending",
            "Agent connections in handshake right now.",
            value=s.handshakes_pending,
        )
        yield GaugeMetricFamily(
            PREFIX + "quic_handshakes_waiting",
            "Address-validated agent Initials waiting for a handshake slot right now.",
            value=s.handshakes_waiting,
        )
        yield _counter(
            "quic_handshakes_admitted_after_wait",
            "Agent handshakes started from the waiting room, in arrival order.",
            s.handshakes_admitted_after_wait,
        )
        yield _counter(
            "quic_handshake_waits_expired",
            "Waiting agent Initials given up because they waited too long (the agent's "
            "own handshake timeout would have ended them).",
            s.handshake_waits_expired,
        )
        endpoint = s.endpoint
        send_errors = CounterMetricFamily(
            PREFIX + "quic_udp_send_errors",
            "UDP sends the kernel refused: too_big is EMSGSIZE (the datagram exceeds the "
            "path MTU; path MTU discovery reacts to it), other is anything else.",
            labels=["reason"],
        )
        send_errors.add_metric(["too_big"], endpoint.too_big_errors)
        send_errors.add_metric(["other"], endpoint.send_errors - endpoint.too_big_errors)
        yield send_errors
        yield _counter(
            "quic_memory_releases",
            "Times the agent server released what a load episode left (cached Initial "
            "keys, the C heap's free pages), 5 s after the last new connection's Initial.",
            s.memory_releases,
        )
        yield _counter(
            "quic_memory_released_bytes",
            "Resident bytes those releases gave back to the operating system.",
            s.memory_released_bytes,
        )


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    """An unlabelled counter (``<name>_total``) read from the server at scrape time."""
    return CounterMetricFamily(PREFIX + name, documentation, value=value)


def watch_agent_server(registry: CollectorRegistry, server: QuicServer) -> None:
    registry.register(AgentServerCollector(server))
