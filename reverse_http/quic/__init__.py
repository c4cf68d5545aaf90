"""QUIC transport: aioquic's sans-IO connection driven from trio UDP sockets."""

from .client import connect
from .connection import CloseInfo, Connection, ConnectionError, StreamLimitError
from .server import QuicServer, serve_quic
from .settings import (
    DEFAULT_ALPN,
    AdmissionSettings,
    ClientTls,
    ServerSettings,
    ServerTls,
    TlsConfigError,
    TransportSettings,
)
from .stream import QuicStream

__all__ = [
    "DEFAULT_ALPN",
    "AdmissionSettings",
    "ClientTls",
    "CloseInfo",
    "Connection",
    "ConnectionError",
    "QuicServer",
    "QuicStream",
    "ServerSettings",
    "ServerTls",
    "StreamLimitError",
    "TlsConfigError",
    "TransportSettings",
    "connect",
    "serve_quic",
]
