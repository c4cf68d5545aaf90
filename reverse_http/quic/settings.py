"""Typed QUIC settings, and their translation into aioquic configurations."""

from __future__ import annotations

import functools
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ..tlsfiles import (
    ClientAuthority,
    TlsConfigError,
    load_client_authority,
    load_key_pair,
    present,
)
from .admission import AdmissionSettings
from .pmtu import BASE_DATAGRAM_SIZE, DEFAULT_MAX_DATAGRAM_SIZE

#: The congestion controller of ours (implemented in ``congestion``, which loads aioquic).
CAPPED_RENO = "capped-reno"
#: What ``TransportSettings.congestion_control`` may name (aioquic ships cubic and reno).
CONGESTION_CONTROLS = ("cubic", "reno", CAPPED_RENO)
#: The initial congestion window in packets, and its bounds.
DEFAULT_INITIAL_WINDOW = 32
INITIAL_WINDOW_RANGE = (2, 1000)

if TYPE_CHECKING:
    # aioquic (its TLS stack pulls in cryptography and service_identity) is imported where a
    # configuration is built, not here: the typed CLI config imports these dataclasses for
    # every command.
    from aioquic.quic.configuration import QuicConfiguration

__all__ = [
    "DEFAULT_ALPN",
    "AdmissionSettings",
    "ClientCertVerifier",
    "ClientTls",
    "ServerSettings",
    "ServerTls",
    "TlsConfigError",
    "TransportSettings",
    "certificate_alert",
    "client_configuration",
    "client_verifier",
    "server_configuration",
]

DEFAULT_ALPN = "reverse-http-proto"


@dataclass(frozen=True)
class TransportSettings:
    """Knobs shared by both ends of a connection.

    Windows bound memory: a stream buffers at most ``stream_receive_window`` bytes
    the application has not read, and at most ``stream_send_buffer`` bytes the peer
    has not acknowledged.
    """

    alpn: tuple[str, ...] = (DEFAULT_ALPN,)
    #: Largest UDP payload path MTU discovery probes for (the interface's MTU, or an
    #: ICMP message, may stop it lower). Connections start at 1200 bytes, which every
    #: path carries; with discovery off every datagram is this size from the start.
    max_datagram_size: int = DEFAULT_MAX_DATAGRAM_SIZE
    pmtu_discovery: bool = True
    #: aioquic's Cubic: no window cap, so long fat links fill (``capped-reno`` caps the
    #: window at ``congestion_window_cap``; ``reno`` is plain NewReno).
    congestion_control: str = "cubic"
    #: Upper bound of the congestion window for ``capped-reno``; must exceed the path's BDP.
    congestion_window_cap: int = 1024 * 1024
    #: Packets the congestion window starts at, and restarts at after an idle period
    #: (quic-go's 32; RFC 9002 and aioquic: 10, which costs a long path a round trip
    #: and a half of slow start). Lower it for paths with very small buffers.
    initial_congestion_window: int = DEFAULT_INITIAL_WINDOW
    #: Datagrams sent back to back before pacing applies (aioquic: 16).
    pacing_burst_packets: int = 64
    #: A stream's first receive window; it doubles, up to ``stream_receive_window_max``,
    #: while the reader keeps up with a path whose bandwidth-delay product needs more.
    stream_receive_window: int = 512 * 1024
    stream_receive_window_max: int = 6 * 1024 * 1024
    #: Unacknowledged bytes one stream may hold before ``send_all`` waits; it follows the
    #: congestion window (twice it), up to ``stream_send_buffer_max``.
    stream_send_buffer: int = 1024 * 1024
    stream_send_buffer_max: int = 6 * 1024 * 1024
    #: Unread bytes one connection buffers across all its streams (MAX_DATA follows reads).
    connection_receive_window: int = 16 * 1024 * 1024
    #: Unacknowledged bytes one connection holds across all its streams.
    connection_send_buffer: int = 16 * 1024 * 1024
    #: Streams the peer may have open at once (aioquic hard-codes 128).
    max_concurrent_streams: int = 16384
    #: Stream opens that may wait while the peer's stream limit is reached.
    max_pending_stream_opens: int = 8192
    #: As quic-go's default, an idle timeout: a handshake ends after this long without a
    #: packet from the peer (and after 3x this in any case); a dead backend behind a UDP
    #: LB costs at most this per try.
    handshake_timeout: float = 5.0
    idle_timeout: float = 30.0
    #: PING after this long without hearing from the peer; keeps NAT bindings alive.
    keepalive_interval: float = 10.0
    #: Declare the peer dead after this long without any packet from it; 0 disables.
    #: As long as the idle timeout: connections and their tunnels live through an
    #: outage of up to 30 s (three lost keepalives); a restarted proxy is noticed at
    #: once anyway, by its stateless reset.
    liveness_timeout: float = 30.0
    #: Time a graceful close waits for unacknowledged stream data.
    close_drain_timeout: float = 5.0
    socket_buffer_size: int = 4 * 1024 * 1024
    #: NSS key log file (for Wireshark); never enable in production.
    secrets_log_path: Path | None = None

    def __post_init__(self) -> None:
        if not 1200 <= self.max_datagram_size <= 16000:
            raise ValueError("max datagram size must be between 1200 and 16000 bytes")
        low, high = INITIAL_WINDOW_RANGE
        if not low <= self.initial_congestion_window <= high:
            raise ValueError(f"initial congestion window must be {low}-{high} packets")
        if self.keepalive_interval <= 0:
            raise ValueError("keepalive interval must be positive")
        if self.liveness_timeout < 0 or self.idle_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if self.stream_receive_window < 16384 or self.stream_send_buffer < 16384:
            raise ValueError("stream windows must be at least 16 KiB")
        if (
            self.connection_receive_window < self.stream_receive_window
            or self.connection_send_buffer < self.stream_send_buffer
        ):
            raise ValueError("connection windows must be at least the stream windows")

    @property
    def stream_receive_window_limit(self) -> int:
        """How far a stream's receive window may grow: never past the connection's."""
        grown = min(self.stream_receive_window_max, self.connection_receive_window)
        return max(self.stream_receive_window, grown)

    @property
    def stream_send_buffer_limit(self) -> int:
        """How far a stream's send buffer may grow: never past the connection's."""
        return max(
            self.stream_send_buffer, min(self.stream_send_buffer_max, self.connection_send_buffer)
        )

    @property
    def pmtu_ceiling(self) -> int | None:
        """Where path MTU discovery stops; None when it is off."""
        return self.max_datagram_size if self.pmtu_discovery else None

    @property
    def probe_after(self) -> float:
        """Silence after which we PING: often enough to keep NAT and liveness honest."""
        if self.liveness_timeout:
            return min(self.keepalive_interval, self.liveness_timeout / 2)
        return self.keepalive_interval

    @property
    def server_probe_after(self) -> float:
        """The server PINGs only clients that are quieter than ours ever are (a Go agent
        keeps alive every 10 s): our agents' PINGs keep both ends alive at half the cost."""
        if self.liveness_timeout:
            return min(self.keepalive_interval * 1.5, self.liveness_timeout * 0.8)
        return self.keepalive_interval * 1.5


@dataclass(frozen=True)
class ServerTls:
    cert_file: Path
    key_file: Path
    #: Clients must present a certificate signed by this CA (mutual TLS).
    client_ca_file: Path | None = None
    #: PEM CRLs signed by the client CA; a revoked client is refused at handshake.
    client_crl_file: Path | None = None

    def __post_init__(self) -> None:
        if self.client_crl_file is not None and self.client_ca_file is None:
            raise ValueError("a client CRL needs the client CA")

    @property
    def files(self) -> list[Path]:
        """Every file behind this material (what a reload re-reads)."""
        return present(self.cert_file, self.key_file, self.client_ca_file, self.client_crl_file)


@dataclass(frozen=True)
class ClientTls:
    #: None means the system trust store.
    root_ca_file: Path | None = None
    #: Expected server name; None means the host we dial.
    server_name: str | None = None
    insecure_skip_verify: bool = False
    cert_file: Path | None = None
    key_file: Path | None = None


@dataclass(frozen=True)
class ServerSettings:
    tls: ServerTls
    transport: TransportSettings = field(default_factory=TransportSettings)
    #: Retry under load, limits on handshakes in progress (Initial floods).
    admission: AdmissionSettings = field(default_factory=AdmissionSettings)
    #: Key of the stateless reset tokens; None derives it from the TLS private key file,
    #: so a restarted proxy, or another one sharing the key, can reset our connections.
    stateless_reset_key: bytes | None = None


def _base_configuration(t: TransportSettings, *, is_client: bool) -> QuicConfiguration:
    from aioquic.quic.configuration import QuicConfiguration

    from .congestion import algorithm_name

    cfg = QuicConfiguration(
        is_client=is_client,
        alpn_protocols=list(t.alpn),
        max_datagram_size=BASE_DATAGRAM_SIZE if t.pmtu_discovery else t.max_datagram_size,
        congestion_control_algorithm=algorithm_name(
            t.congestion_control, t.congestion_window_cap, t.initial_congestion_window
        ),
        idle_timeout=t.idle_timeout,
        max_data=t.connection_receive_window,
        max_stream_data=t.stream_receive_window,
    )
    if t.secrets_log_path is not None:
        cfg.secrets_log_file = t.secrets_log_path.open("a")
    return cfg


def server_configuration(s: ServerSettings) -> QuicConfiguration:
    cfg = _base_configuration(s.transport, is_client=False)
    _load_chain(cfg, s.tls.cert_file, s.tls.key_file)
    if s.tls.client_ca_file is not None:
        _load_ca(cfg, s.tls.client_ca_file)
        cfg.verify_mode = ssl.CERT_REQUIRED
    return cfg


def client_configuration(
    t: TransportSettings, tls: ClientTls, server_name: str
) -> QuicConfiguration:
    cfg = _base_configuration(t, is_client=True)
    cfg.server_name = tls.server_name or server_name
    if tls.insecure_skip_verify:
        cfg.verify_mode = ssl.CERT_NONE
    else:
        cfg.verify_mode = ssl.CERT_REQUIRED
        if tls.root_ca_file is not None:
            _load_ca(cfg, tls.root_ca_file)
        else:
            system = ssl.get_default_verify_paths()
            if system.cafile or system.capath:
                cfg.load_verify_locations(cafile=system.cafile, capath=system.capath)
    if tls.cert_file is not None:
        if tls.key_file is None:
            raise TlsConfigError("a client certificate needs its key file")
        _load_chain(cfg, tls.cert_file, tls.key_file)
    return cfg


def _load_chain(cfg: QuicConfiguration, cert: Path, key: Path) -> None:
    """What ``cfg.load_cert_chain`` does, but a key that is not the certificate's is refused
    (aioquic would take it and fail every handshake with ``decrypt_error``)."""
    chain, private_key = load_key_pair(cert, key)
    cfg.certificate = chain[0]
    cfg.certificate_chain = chain[1:]
    cfg.private_key = private_key


#: QUIC's CRYPTO_ERROR range: 0x100 + the TLS alert (RFC 9001, 4.8).
_CRYPTO_ERROR: Final = 0x100
#: The TLS alerts that refuse a certificate (RFC 8446, 6.2).
_CERTIFICATE_ALERTS: Final[dict[int, str]] = {
    42: "bad_certificate",
    43: "unsupported_certificate",
    44: "certificate_revoked",
    45: "certificate_expired",
    46: "certificate_unknown",
    48: "unknown_ca",
    116: "certificate_required",
}
#: OpenSSL verification errors that mean "not issued by the client CA" (x509_vfy.h):
#: unable to get issuer (2, 20), self-signed (18, 19), cannot verify the leaf (21),
#: signature failure (7: a CA of the same name, but not ours).
_UNKNOWN_ISSUER: Final = frozenset({2, 7, 18, 19, 20, 21})


def certificate_alert(error_code: int) -> str | None:
    """The certificate alert a transport close with ``error_code`` carries, e.g.
    ``unknown_ca``; None for any other code."""
    return _CERTIFICATE_ALERTS.get(error_code - _CRYPTO_ERROR)


class ClientCertVerifier:
    """Checks an agent's certificate during the handshake: chain to the client CA, dates,
    and revocation. Raises a TLS alert, which aioquic sends as the connection's close.

    The alerts are the Go reference's (crypto/tls): ``certificate_required`` without a
    certificate, ``unknown_ca`` when the client CA did not issue it,
    ``certificate_expired`` out of its dates, ``bad_certificate`` otherwise, revoked
    included (its reason phrase says so).
    """

    def __init__(self, authority: ClientAuthority) -> None:
        self.authority = authority

    def __call__(self, cert: Any, chain: list[Any]) -> None:
        from aioquic import tls as aioquic_tls

        if cert is None:
            raise _alert("certificate_required", "client certificate required")
        try:
            aioquic_tls.verify_certificate(
                certificate=cert, chain=chain, cadata=self.authority.ca_pem
            )
        except aioquic_tls.AlertBadCertificate as exc:
            # aioquic drops OpenSSL's error code; the store error it came from has it
            errors: object = getattr(exc.__context__, "errors", None)
            unknown = isinstance(errors, list) and bool(errors) and errors[0] in _UNKNOWN_ISSUER
            description = "unknown_ca" if unknown else "bad_certificate"
            raise _alert(description, f"client certificate rejected: {exc}") from None
        except aioquic_tls.Alert as exc:
            exc.args = (f"client certificate rejected: {exc}",)
            raise
        problem = self.authority.revocation_problem(cert)
        if problem is not None:
            raise _alert("bad_certificate", f"client certificate rejected: {problem}")


@functools.cache
def _alert_class(description: str) -> type[Exception]:
    """An aioquic TLS alert carrying ``description``, made on first use (lazy aioquic)."""
    from aioquic import tls as aioquic_tls

    return type(
        f"Alert_{description}",
        (aioquic_tls.Alert,),
        {"description": aioquic_tls.AlertDescription[description]},
    )


def _alert(description: str, message: str) -> Exception:
    return _alert_class(description)(message)


def client_verifier(s: ServerTls) -> ClientCertVerifier | None:
    """The verifier of agents' certificates (mutual TLS); None without a client CA."""
    if s.client_ca_file is None:
        return None
    return ClientCertVerifier(load_client_authority(s.client_ca_file, s.client_crl_file))


def _load_ca(cfg: QuicConfiguration, ca: Path) -> None:
    if not ca.is_file():
        raise TlsConfigError(f"{ca}: no such file")
    try:
        cfg.load_verify_locations(cafile=str(ca))
    except (OSError, ValueError, ssl.SSLError) as exc:
        raise TlsConfigError(f"{ca}: cannot load CA certificates: {exc}") from None
